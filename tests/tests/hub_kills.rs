//! The hub killed (SIGKILL, as in a power cut) again and again at random moments
//! while four sites stream their records: at the end every event each site
//! recorded is at the hub exactly once and in order, the hub's batch projections
//! agree with the logs they are derived from, and no batch is stuck.

use carrel_tests::scenario::*;
use carrel_tests::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SITES: [&str; 4] = ["site-k1", "site-k2", "site-k3", "site-k4"];
const KILLS: usize = 24;

/// Sets of step ids and test ids in a batch's events as the hub stores them.
async fn completed_in_log(
    hub_db: &sqlx::SqlitePool,
    batch_id: &str,
) -> (BTreeSet<String>, BTreeSet<String>, i64) {
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT kind, json_extract(body, '$.kind.step_id'), json_extract(body, '$.kind.test_id') \
         FROM site_events WHERE batch_id = ? ORDER BY site_id, seq",
    )
    .bind(batch_id)
    .fetch_all(hub_db)
    .await
    .expect("batch events");
    let mut steps = BTreeSet::new();
    let mut tests = BTreeSet::new();
    let mut qc_events = 0;
    for (kind, step, test) in rows {
        match kind.as_str() {
            "step_completed" => {
                steps.insert(step.expect("step id"));
            }
            "qc_result" => {
                tests.insert(test.expect("test id"));
                qc_events += 1;
            }
            _ => {}
        }
    }
    (steps, tests, qc_events)
}

fn string_set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hub_killed_at_random_moments_loses_nothing_duplicates_nothing_and_strands_no_batch() {
    let seed: u64 = std::env::var("CARREL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (CARREL_TEST_SEED={seed} repeats this run's kill times)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut hub = Hub::start().await;
    add_people(&hub);
    let mut agents = Vec::new();
    for site in SITES {
        let token = hub.add_site(site);
        // About 37 s of manufacturing per batch.
        let mut agent = Agent::enroll(&hub, site, &token)
            .expect("enroll")
            .with_time_compression(25_000.0);
        // A short backoff cap, so that a site is back within a second of each restart.
        agent.configure(&["reconnect_max_ms"], 1_000.into());
        agent.start();
        agents.push(agent);
    }
    let mut orders: Vec<(String, String)> = SITES
        .iter()
        .enumerate()
        .map(|(i, site)| create_order(&hub, site, &format!("P-60{i:02}")))
        .collect();

    let started = Instant::now();
    let mut downtime = Duration::ZERO;
    for kill in 1..=KILLS {
        // Up for a random while (sometimes hardly at all, mid-start), then killed.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1_500))).await;
        hub.kill();
        let down = Duration::from_millis(rng.gen_range(0..600));
        tokio::time::sleep(down).await;
        downtime += down;
        hub.restart().await;
        if kill == KILLS / 3 {
            // A second batch per site, ordered between kills, so that commands are
            // replicated across the later kills too.
            for (i, site) in SITES.iter().enumerate() {
                orders.push(create_order(&hub, site, &format!("P-61{i:02}")));
            }
        }
    }
    println!(
        "{KILLS} kills in {:?} ({downtime:?} down, plus restarts)",
        started.elapsed()
    );

    // No batch is stuck: every one completes, at the site and at the hub.
    for (order_id, _) in &orders {
        wait_order_state(&hub, order_id, "awaiting_release", Duration::from_secs(120)).await;
    }
    let hub_db = hub.db().await;
    let mut events_checked = 0;
    for agent in &agents {
        events_checked += assert_hub_has_the_site_log(&hub, agent, Duration::from_secs(30)).await;
        let agent_db = agent.db().await;
        for (_, batch_id) in &orders {
            let local = site_batch_state(&agent_db, batch_id).await;
            if !local.is_empty() {
                assert_eq!(
                    local, "awaiting_release",
                    "batch {batch_id} at {}",
                    agent.site_id
                );
            }
        }
        // Each order reached its site once.
        assert_eq!(
            count(&agent_db, "SELECT COUNT(*) FROM batches").await,
            2,
            "{}",
            agent.site_id
        );
        let (issued, acked): (i64, i64) = sqlx::query_as(
            "SELECT last_command_seq, acked_command_seq FROM sites WHERE site_id = ?",
        )
        .bind(&agent.site_id)
        .fetch_one(&hub_db)
        .await
        .expect("cursors");
        assert_eq!((issued, acked), (2, 2), "{}", agent.site_id);
    }

    // The projections agree with the logs they derive from.
    for (order_id, batch_id) in &orders {
        let (state, progress): (String, String) =
            sqlx::query_as("SELECT state, progress FROM batches WHERE batch_id = ?")
                .bind(batch_id)
                .fetch_one(&hub_db)
                .await
                .expect("batch");
        let progress: Value = serde_json::from_str(&progress).expect("progress JSON");
        let (steps, tests, qc_events) = completed_in_log(&hub_db, batch_id).await;
        assert_eq!(
            steps.len(),
            8,
            "every step of the recipe completed in the log"
        );
        assert_eq!(
            string_set(&progress["steps_completed"]),
            steps,
            "order {order_id}"
        );
        assert_eq!(
            string_set(&progress["tests_recorded"]),
            tests,
            "order {order_id}"
        );
        assert_eq!(state, "awaiting_release", "order {order_id}");
        let qc_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM qc_results WHERE batch_id = ?")
            .bind(batch_id)
            .fetch_one(&hub_db)
            .await
            .expect("qc rows");
        assert_eq!(
            qc_rows, qc_events,
            "one evaluation per QC record, order {order_id}"
        );
        // ordered -> accepted -> in process -> awaiting release, each once.
        let changes: Vec<(String, String)> = sqlx::query_as(
            "SELECT old_value, new_value FROM audit_log WHERE action = 'batch.state_changed' AND batch_id = ? ORDER BY position",
        )
        .bind(batch_id)
        .fetch_all(&hub_db)
        .await
        .expect("state changes");
        let path: Vec<&str> = changes.iter().map(|(_, new)| new.as_str()).collect();
        assert_eq!(
            path,
            ["accepted", "in_process", "awaiting_release"],
            "order {order_id}"
        );
    }
    // The audit trail survived every kill unbroken.
    let verify = hub.cli_ok("admin", &["audit", "verify"], None);
    assert!(
        verify.to_lowercase().contains("audit chain intact"),
        "{verify}"
    );

    let reconnects: usize = agents
        .iter()
        .map(|a| occurrences(&a.log(), "link to the hub up"))
        .sum();
    println!(
        "survived {KILLS} hub kills: {events_checked} events from {} sites checked at the hub, once each and in order; \
         {} batches complete; {reconnects} site links opened; nothing lost",
        SITES.len(),
        orders.len()
    );
}

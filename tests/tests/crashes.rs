//! Crashes with real processes: the agent and the hub are killed with SIGKILL while
//! a batch runs, and every event still ends up at the hub exactly once, in order.

use carrel_tests::proxy::{Fault, Proxy};
use carrel_tests::*;
use rand::Rng;
use std::time::Duration;

const PHYSICIAN: (&str, &str) = ("dr.crash", "physician-password-1");

async fn last_seq(db: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
        .fetch_one(db)
        .await
        .expect("last seq")
}

/// Whether the agent has started `step` and not completed it.
async fn step_running(db: &sqlx::SqlitePool, step: &str) -> bool {
    let started: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE kind = 'step_started' AND json_extract(body, '$.kind.step_id') = ?",
    )
    .bind(step)
    .fetch_one(db)
    .await
    .expect("count");
    let completed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE kind = 'step_completed' AND json_extract(body, '$.kind.step_id') = ?",
    )
    .bind(step)
    .fetch_one(db)
    .await
    .expect("count");
    started > 0 && completed == 0
}

fn create_order(hub: &Hub, patient: &str) -> (String, String) {
    let date = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    let order = hub.cli_json(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            patient,
            "--site",
            "site-a",
            "--collection-date",
            &date,
        ],
        None,
    );
    (
        str_field(&order, "order_id").to_owned(),
        str_field(&order, "batch_id").to_owned(),
    )
}

async fn wait_awaiting_release(hub: &Hub, order_id: &str) {
    eventually(
        Duration::from_secs(120),
        "the batch to await release",
        || {
            let shown = order_show(hub, PHYSICIAN.0, order_id);
            async move { (str_field(&shown, "state") == "awaiting_release").then_some(()) }
        },
    )
    .await;
}

/// Waits until the hub holds as many events as the site, then compares them.
async fn assert_hub_has_the_site_log(hub: &Hub, agent: &Agent) -> usize {
    let agent_db = agent.db().await;
    let hub_db = hub.db().await;
    let site_log = agent_events(&agent_db).await;
    let hub_log = eventually(Duration::from_secs(30), "the hub to catch up", || {
        let hub_db = hub_db.clone();
        let want = site_log.len();
        async move {
            let log = hub_events(&hub_db, "site-a").await;
            (log.len() >= want).then_some(log)
        }
    })
    .await;
    assert_same_log(&hub_log, &site_log);
    site_log.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_mid_step_resumes_and_every_event_arrives_once() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-a");
    // About 14 s of manufacturing, 10 s of it in the expansion step.
    let mut agent = Agent::enroll(&hub, "site-a", &token)
        .expect("enroll")
        .with_time_compression(60_000.0);
    agent.start();
    let (order_id, _batch_id) = create_order(&hub, "P-2001");

    let db = agent.db().await;
    eventually(
        Duration::from_secs(60),
        "the expansion step to start",
        || {
            let db = db.clone();
            async move { step_running(&db, "expansion").await.then_some(()) }
        },
    )
    .await;
    for kill in 1..=3 {
        let before = last_seq(&db).await;
        eventually(
            Duration::from_secs(30),
            "more samples to be recorded",
            || {
                let db = db.clone();
                async move { (last_seq(&db).await >= before + 2).then_some(()) }
            },
        )
        .await;
        agent.kill();
        println!(
            "agent killed (kill {kill}) at site seq {}",
            last_seq(&db).await
        );
        agent.start();
    }
    wait_awaiting_release(&hub, &order_id).await;
    let moved = assert_hub_has_the_site_log(&hub, &agent).await;
    println!("events moved site -> hub: {moved}");

    // Each step completed exactly once; the interrupted one was resumed and the
    // interruption is on the record as a deviation.
    let completions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT json_extract(body, '$.kind.step_id'), COUNT(*) FROM events WHERE kind = 'step_completed' GROUP BY 1",
    )
    .fetch_all(&db)
    .await
    .expect("completions");
    assert_eq!(
        completions.len(),
        8,
        "every step of the recipe, once: {completions:?}"
    );
    assert!(completions.iter().all(|(_, n)| *n == 1), "{completions:?}");
    let resumed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE kind = 'step_started' AND json_extract(body, '$.kind.resumed') = 1",
    )
    .fetch_one(&db)
    .await
    .expect("resumed");
    assert!(resumed >= 1, "at least one kill landed mid-step");
    let interruptions: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE kind = 'deviation_raised' AND json_extract(body, '$.kind.deviation_id') LIKE '%RESTART'",
    )
    .fetch_one(&db)
    .await
    .expect("deviations");
    assert!(interruptions >= 1);
    // The QC results were recorded once each.
    let qc: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'qc_result'")
        .fetch_one(&db)
        .await
        .expect("qc");
    assert_eq!(qc, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_killed_while_the_site_keeps_recording_then_everything_arrives_in_order() {
    let mut hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-a");
    let mut agent = Agent::enroll(&hub, "site-a", &token)
        .expect("enroll")
        .with_time_compression(60_000.0);
    agent.start();
    let (order_id, _) = create_order(&hub, "P-3001");
    let db = agent.db().await;
    eventually(Duration::from_secs(60), "manufacturing to start", || {
        let db = db.clone();
        async move { step_running(&db, "activation").await.then_some(()) }
    })
    .await;

    for outage in 1..=2 {
        hub.kill();
        let at_kill = last_seq(&db).await;
        // The site goes on manufacturing and recording with the hub gone.
        eventually(
            Duration::from_secs(30),
            "the site to record while the hub is down",
            || {
                let db = db.clone();
                async move { (last_seq(&db).await >= at_kill + 3).then_some(()) }
            },
        )
        .await;
        let acked: i64 = sqlx::query_scalar("SELECT hub_acked_event_seq FROM link_state")
            .fetch_one(&db)
            .await
            .expect("acked");
        assert!(
            acked <= at_kill,
            "nothing recorded after the kill can have been acknowledged"
        );
        println!(
            "hub down (outage {outage}): site recorded {} events meanwhile",
            last_seq(&db).await - at_kill
        );
        hub.restart().await;
    }
    wait_awaiting_release(&hub, &order_id).await;
    let moved = assert_hub_has_the_site_log(&hub, &agent).await;
    println!("events moved site -> hub: {moved}");
    assert!(agent.is_running());
}

/// Checks the hub's copy of the site's log is a hash chain: each event names the
/// SHA-256 of the one before, as stored.
async fn assert_chain_intact(hub_db: &sqlx::SqlitePool, site_id: &str) -> usize {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT seq, json_extract(body, '$.prev_sha256'), sha256 FROM site_events WHERE site_id = ? ORDER BY seq",
    )
    .bind(site_id)
    .fetch_all(hub_db)
    .await
    .expect("hub events");
    let mut prev = carrel_proto::event::GENESIS_SHA256.to_owned();
    for (seq, names, sha256) in &rows {
        assert_eq!(names, &prev, "event {seq} does not follow the one before");
        prev = sha256.clone();
    }
    rows.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_again_and_again_while_its_backlog_streams_sends_each_event_once() {
    const KILLS: usize = 8;
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-a");
    // Many small records, in small messages, so that a backlog takes many messages.
    let mut agent = Agent::enroll(&hub, "site-a", &token)
        .expect("enroll")
        .with_time_compression(60_000.0);
    agent.configure(&["simulator", "sample_interval_hours"], 0.5.into());
    agent.configure(&["events_per_message"], 10.into());
    let proxy = Proxy::start(hub.addr());
    agent.dial(&proxy.url());
    agent.start();
    let (order_id, _) = create_order(&hub, "P-2101");
    let db = agent.db().await;
    let hub_db = hub.db().await;
    eventually(
        Duration::from_secs(60),
        "the expansion step to start",
        || {
            let db = db.clone();
            async move { step_running(&db, "expansion").await.then_some(()) }
        },
    )
    .await;

    // Cut off while manufacturing goes on: a backlog builds up at the site.
    proxy.set(Fault::BlackHole);
    let cut_at = last_seq(&db).await;
    eventually(Duration::from_secs(60), "a backlog of 150 events", || {
        let db = db.clone();
        async move { (last_seq(&db).await >= cut_at + 150).then_some(()) }
    })
    .await;

    // The link comes back thin, so the backlog streams slowly, and the agent is
    // killed again and again while it does.
    proxy.set(Fault::Throttle(12_000));
    let mut mid_send = 0;
    let mut rng = rand::thread_rng();
    for kill in 1..=KILLS {
        let wait = Duration::from_millis(rng.gen_range(600..1_800));
        tokio::time::sleep(wait - Duration::from_millis(150)).await;
        let (up_before, _) = proxy.bytes();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (up_now, _) = proxy.bytes();
        let hub_has = carrel_tests::scenario::hub_acked(&hub_db, "site-a").await;
        agent.kill();
        let recorded = last_seq(&db).await;
        let site_acked: i64 = sqlx::query_scalar("SELECT hub_acked_event_seq FROM link_state")
            .fetch_one(&db)
            .await
            .expect("acked");
        assert!(
            site_acked <= carrel_tests::scenario::hub_acked(&hub_db, "site-a").await,
            "the site holds an acknowledgement the hub never gave"
        );
        let sending = up_now > up_before && hub_has < recorded;
        if sending {
            mid_send += 1;
        }
        println!(
            "kill {kill}: site recorded {recorded}, hub had {hub_has}{}",
            if sending {
                ", bytes on their way up"
            } else {
                ""
            }
        );
        agent.start();
    }
    assert!(
        mid_send * 2 >= KILLS,
        "only {mid_send} of {KILLS} kills landed while events were streaming"
    );

    proxy.set(Fault::None);
    wait_awaiting_release(&hub, &order_id).await;
    let moved = assert_hub_has_the_site_log(&hub, &agent).await;
    assert_eq!(assert_chain_intact(&hub_db, "site-a").await, moved);
    println!(
        "{KILLS} kills survived ({mid_send} while the backlog was streaming, {} connections through the proxy); \
         {moved} events at the hub once each, in order, hash chain intact",
        proxy.connections()
    );
}

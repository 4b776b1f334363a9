//! Crashes with real processes: the agent and the hub are killed with SIGKILL while
//! a batch runs, and every event still ends up at the hub exactly once, in order.

use carrel_tests::*;
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

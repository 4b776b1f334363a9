//! Steps the fault and abuse tests share: people and orders at the hub, and what
//! a site's log and the hub's copy of it hold.

use crate::{agent_events, assert_same_log, eventually, hub_events, order_show, str_field};
use crate::{Agent, Hub};
use std::time::Duration;

pub const PHYSICIAN: (&str, &str) = ("dr.fault", "physician-password-1");
pub const QA: (&str, &str) = ("qa.fault", "qa-password-123456");

/// Adds the physician and the QA person the scenarios use, signed in for the CLI.
pub fn add_people(hub: &Hub) {
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
}

/// Orders a batch at `site`; returns (order id, batch id).
pub fn create_order(hub: &Hub, site: &str, patient: &str) -> (String, String) {
    create_order_as(hub, PHYSICIAN.0, site, patient)
}

/// Orders a batch at `site` as `physician` (signed in for the CLI), for collection
/// in three days; returns (order id, batch id).
pub fn create_order_as(hub: &Hub, physician: &str, site: &str, patient: &str) -> (String, String) {
    let date = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    let order = hub.cli_json(
        physician,
        &[
            "order",
            "create",
            "--patient",
            patient,
            "--site",
            site,
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

/// The order's state as the hub shows it to its physician.
pub fn order_state(hub: &Hub, order_id: &str) -> String {
    str_field(&order_show(hub, PHYSICIAN.0, order_id), "state").to_owned()
}

/// Waits until the hub shows the order in `state`.
pub async fn wait_order_state(hub: &Hub, order_id: &str, state: &str, timeout: Duration) {
    eventually(timeout, &format!("order {order_id} to be {state}"), || {
        let now = order_state(hub, order_id);
        async move { (now == state).then_some(()) }
    })
    .await;
}

/// QA signs release of a batch awaiting it: the record as the hub has it now, each
/// exception (if any) justified.
pub fn sign_release(hub: &Hub, batch_id: &str) {
    let record = hub.cli_json(QA.0, &["release", "show", batch_id], None);
    let sha = record["record_sha256"]
        .as_str()
        .expect("record_sha256")
        .to_owned();
    let exceptions = record["exceptions"].as_array().map_or(0, Vec::len);
    let justifications: Vec<String> = (1..=exceptions)
        .map(|i| format!("reviewed in this test scenario (exception {i})"))
        .collect();
    // A result that may follow release still outstanding makes it conditional.
    let conditional = record["outstanding_results"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    let mut args = vec![
        "release",
        "sign",
        batch_id,
        "--meaning",
        if conditional {
            "released-conditionally"
        } else {
            "released"
        },
        "--record-sha256",
        &sha,
        "--user",
        QA.0,
        "--acknowledge-signature-meaning",
    ];
    for j in &justifications {
        args.extend(["--justification", j.as_str()]);
    }
    hub.cli_ok(QA.0, &args, Some(QA.1));
}

pub async fn count(db: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The last seq of an agent's own log.
pub async fn last_seq(agent_db: &sqlx::SqlitePool) -> i64 {
    count(agent_db, "SELECT COALESCE(MAX(seq), 0) FROM events").await
}

/// How far the hub has acknowledged a site's log.
pub async fn hub_acked(hub_db: &sqlx::SqlitePool, site_id: &str) -> i64 {
    sqlx::query_scalar("SELECT acked_event_seq FROM sites WHERE site_id = ?")
        .bind(site_id)
        .fetch_one(hub_db)
        .await
        .expect("site cursor")
}

/// Whether the agent has started `step` of `batch_id` and not completed it.
pub async fn step_running(agent_db: &sqlx::SqlitePool, batch_id: &str, step: &str) -> bool {
    let count = |kind: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM events WHERE batch_id = ? AND kind = ? AND json_extract(body, '$.kind.step_id') = ?",
        )
        .bind(batch_id)
        .bind(kind)
        .bind(step)
        .fetch_one(agent_db)
    };
    let started = count("step_started").await.expect("count");
    let completed = count("step_completed").await.expect("count");
    started > 0 && completed == 0
}

/// Waits until `step` of `batch_id` is running at the agent.
pub async fn wait_step_running(
    agent_db: &sqlx::SqlitePool,
    batch_id: &str,
    step: &str,
    timeout: Duration,
) {
    eventually(timeout, &format!("step {step} to run at the site"), || {
        let db = agent_db.clone();
        async move { step_running(&db, batch_id, step).await.then_some(()) }
    })
    .await;
}

/// The batch's state in the agent's own store.
pub async fn site_batch_state(agent_db: &sqlx::SqlitePool, batch_id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM batches WHERE batch_id = ?")
        .bind(batch_id)
        .fetch_optional(agent_db)
        .await
        .expect("batch state")
        .unwrap_or_default()
}

/// Waits until `text` occurs in a process's log more than `before` times; returns
/// how long that took.
pub async fn wait_log(
    what: &str,
    read: impl Fn() -> String,
    text: &str,
    before: usize,
    timeout: Duration,
) -> Duration {
    let started = std::time::Instant::now();
    eventually(timeout, &format!("{what} to log {text:?}"), || {
        let n = occurrences(&read(), text);
        async move { (n > before).then_some(()) }
    })
    .await;
    started.elapsed()
}

/// Waits until the hub holds as many events of the site as the site itself, then
/// checks they are the same, once each, in order. Returns how many there are.
pub async fn assert_hub_has_the_site_log(hub: &Hub, agent: &Agent, timeout: Duration) -> usize {
    let agent_db = agent.db().await;
    let hub_db = hub.db().await;
    let site_log = agent_events(&agent_db).await;
    let hub_log = eventually(
        timeout,
        &format!(
            "the hub to hold the {} events of {}",
            site_log.len(),
            agent.site_id
        ),
        || {
            let hub_db = hub_db.clone();
            let want = site_log.len();
            let site_id = agent.site_id.clone();
            async move {
                let log = hub_events(&hub_db, &site_id).await;
                (log.len() >= want).then_some(log)
            }
        },
    )
    .await;
    assert_same_log(&hub_log, &site_log);
    agent_db.close().await;
    hub_db.close().await;
    site_log.len()
}

/// Occurrences of `text` in a log.
pub fn occurrences(log: &str, text: &str) -> usize {
    log.matches(text).count()
}

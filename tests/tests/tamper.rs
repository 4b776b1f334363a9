//! Tamper evidence: the hub's audit trail is append-only and hash-chained, and
//! `carrel-hub audit verify` names the first entry that was changed, removed or
//! inserted behind the hub's back.

use carrel_tests::*;
use std::process::Output;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `audit verify` against a copy of the hub's database after `tamper` ran on it.
async fn verify_after(hub: &Hub, tamper: &str) -> Output {
    let copy = tempfile::tempdir().expect("tempdir");
    let data = copy.path().join("data");
    std::fs::create_dir_all(data.join("pki")).expect("dirs");
    for file in ["hub.db", "hub.db-wal", "hub.db-shm"] {
        let from = hub.data_dir().join(file);
        if from.exists() {
            std::fs::copy(&from, data.join(file)).expect("copy database");
        }
    }
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(
            hub.data_dir().join("pki").join(file),
            data.join("pki").join(file),
        )
        .expect("copy CA");
    }
    if !tamper.is_empty() {
        use sqlx::sqlite::SqliteConnectOptions;
        let pool = sqlx::SqlitePool::connect_with(
            SqliteConnectOptions::new().filename(data.join("hub.db")),
        )
        .await
        .expect("open copy");
        // What someone with write access to the file would do: drop the guards first.
        for statement in [
            "DROP TRIGGER audit_log_no_update",
            "DROP TRIGGER audit_log_no_delete",
            tamper,
        ] {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .expect(statement);
        }
        pool.close().await;
    }
    std::process::Command::new(binary("carrel-hub"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit verify")
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_detects_a_changed_a_removed_and_an_inserted_entry() {
    let hub = Hub::start().await;
    hub.add_user("dr.t", "physician", "physician-password-1");
    hub.add_user("qa.t", "qa", "qa-password-12345");
    hub.add_site("site-t");
    let _ = hub.login("dr.t", "wrong-password-xx").await;
    let db = hub.db().await;
    let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&db)
        .await
        .expect("count");
    assert!(
        entries >= 6,
        "users, sign-ins, the site and the recipe are audited: {entries}"
    );

    // The database itself refuses changes to audit entries.
    let writable = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(hub.data_dir().join("hub.db")),
    )
    .await
    .expect("open");
    let refused = sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE position = 2")
        .execute(&writable)
        .await;
    assert!(refused
        .expect_err("append-only")
        .to_string()
        .contains("append-only"));
    let refused = sqlx::query("DELETE FROM audit_log WHERE position = 2")
        .execute(&writable)
        .await;
    assert!(refused.is_err());
    writable.close().await;

    let out = verify_after(&hub, "").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("Audit chain intact: {entries} entries")),
        "{}",
        text(&out)
    );

    let out = verify_after(
        &hub,
        "UPDATE audit_log SET new_value = 'Mallory (admin)' WHERE position = 3",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("BROKEN at entry 3: the entry was altered"),
        "{}",
        text(&out)
    );

    let out = verify_after(&hub, "DELETE FROM audit_log WHERE position = 4").await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("BROKEN at entry 4: the entry is missing"),
        "{}",
        text(&out)
    );

    let out = verify_after(
        &hub,
        "INSERT INTO audit_log (position, at, actor, action, object, batch_id, old_value, new_value, reason, prev_sha256, sha256) \
         SELECT MAX(position) + 1, '2026-11-27T00:00:00.000000Z', 'mallory', 'release.signed', 'batch/x', NULL, '', 'released', '', \
         (SELECT sha256 FROM audit_log ORDER BY position DESC LIMIT 1), 'forged' FROM audit_log",
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "BROKEN at entry {}: the entry was altered",
            entries + 1
        )),
        "{}",
        text(&out)
    );

    // Renumbering to make room in the middle breaks the links instead.
    let out = verify_after(
        &hub,
        "INSERT INTO audit_log (position, at, actor, action, object, batch_id, old_value, new_value, reason, prev_sha256, sha256) \
         SELECT 2, at, 'mallory', action, object, batch_id, old_value, new_value, reason, prev_sha256, sha256 FROM audit_log WHERE position = 2 \
         ON CONFLICT (position) DO UPDATE SET actor = 'mallory'",
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("BROKEN at entry 2"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_log_altered_after_the_fact_is_refused_by_the_hub() {
    let mut hub = Hub::start().await;
    hub.add_user("dr.s", "physician", "physician-password-1");
    let token = hub.add_site("site-s");
    let mut agent = Agent::enroll(&hub, "site-s", &token)
        .expect("enroll")
        .with_time_compression(30_000.0);
    agent.start();
    let date = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    hub.cli_ok(
        "dr.s",
        &[
            "order",
            "create",
            "--patient",
            "P-5001",
            "--site",
            "site-s",
            "--collection-date",
            &date,
        ],
        None,
    );
    let site_db = agent.db().await;
    let hub_db = hub.db().await;
    let acked = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT acked_event_seq FROM sites WHERE site_id = 'site-s'")
                .fetch_one(&hub_db)
                .await
                .expect("cursor");
        n
    };
    eventually(
        std::time::Duration::from_secs(30),
        "some events at the hub",
        || async { (acked().await >= 3).then_some(()) },
    )
    .await;

    // The hub goes away; the site records more; then someone edits a record the
    // hub has not received yet, and the agent comes back.
    hub.kill();
    let at_kill: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(&site_db)
        .await
        .expect("seq");
    eventually(
        std::time::Duration::from_secs(30),
        "the site to record offline",
        || {
            let site_db = site_db.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM events")
                    .fetch_one(&site_db)
                    .await
                    .expect("seq");
                (n >= at_kill + 4).then_some(())
            }
        },
    )
    .await;
    agent.kill();
    let hub_had = acked().await;
    let victim = hub_had + 1;
    let writable = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(agent.data_dir().join("agent.db")),
    )
    .await
    .expect("open agent db");
    sqlx::query(
        "UPDATE events SET body = json_set(body, '$.recorded_by', 'mallory') WHERE seq = ?",
    )
    .bind(victim)
    .execute(&writable)
    .await
    .expect("tamper");
    writable.close().await;
    hub.restart().await;
    agent.start();

    eventually(
        std::time::Duration::from_secs(30),
        "the hub to refuse the altered log",
        || {
            let log = hub.log();
            async move { log.contains("breaks the site's hash chain").then_some(()) }
        },
    )
    .await;
    let now_acked = acked().await;
    assert!(
        now_acked <= victim,
        "nothing after the altered record is accepted ({now_acked} > {victim})"
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM site_events WHERE site_id = 'site-s' AND seq > ?")
            .bind(victim)
            .fetch_one(&hub.db().await)
            .await
            .expect("count");
    assert_eq!(stored, 0);
}

/// The hub's newest audit entry, and the last one site `site_id` witnessed (as the
/// hub keeps it).
async fn head_and_witness(db: &sqlx::SqlitePool, site_id: &str) -> (i64, Option<i64>) {
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM audit_log")
        .fetch_one(db)
        .await
        .expect("head");
    let witness: Option<i64> =
        sqlx::query_scalar("SELECT position FROM audit_witnesses WHERE site_id = ?")
            .bind(site_id)
            .fetch_optional(db)
            .await
            .expect("witness");
    (head, witness)
}

/// Runs a `carrel-hub` command on the hub machine (its data directory).
fn on_hub_machine(hub: &Hub, args: &[&str]) -> Output {
    std::process::Command::new(binary("carrel-hub"))
        .args(args)
        .arg("--data-dir")
        .arg(hub.data_dir())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run carrel-hub")
}

/// Waits until the site has witnessed the trail's head as it stands (nothing new is
/// written meanwhile: the batch waits for QA).
async fn wait_witnessed(hub: &Hub, site_id: &str) -> i64 {
    let db = hub.db().await;
    eventually(
        std::time::Duration::from_secs(30),
        "the site to witness the head of the audit trail",
        || {
            let db = db.clone();
            async move {
                let (head, witness) = head_and_witness(&db, site_id).await;
                (witness == Some(head)).then_some(head)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_tail_or_an_older_backup_is_found_by_a_site_and_holds_the_hub() {
    use carrel_tests::scenario::{create_order, wait_order_state, PHYSICIAN};
    let mut hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-w");
    let mut agent = Agent::enroll(&hub, "site-w", &token)
        .expect("enroll")
        .with_time_compression(200_000.0);
    agent.start();
    let backups = tempfile::tempdir().expect("tempdir");
    let early = backups.path().join("early.db");
    let out = on_hub_machine(&hub, &["backup", "--to", early.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let (order_id, _) = create_order(&hub, "site-w", "P-WIT-1");
    wait_order_state(
        &hub,
        &order_id,
        "awaiting_release",
        std::time::Duration::from_secs(90),
    )
    .await;
    let head = wait_witnessed(&hub, "site-w").await;
    assert!(head > 20, "the order's records are audited: {head}");
    let out = on_hub_machine(&hub, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("witnessed by site site-w"),
        "{}",
        text(&out)
    );

    // The logs refuse changes as the audit trail does.
    {
        let writable = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(hub.data_dir().join("hub.db")),
        )
        .await
        .expect("open");
        for statement in [
            "DELETE FROM site_events",
            "UPDATE site_events SET body = '{}'",
            "DELETE FROM hub_commands",
            "UPDATE hub_commands SET body = '{}'",
        ] {
            let refused = sqlx::query(statement).execute(&writable).await;
            assert!(
                refused
                    .expect_err(statement)
                    .to_string()
                    .contains("append-only"),
                "{statement}"
            );
        }
        writable.close().await;
    }

    // Someone with the database file removes the newest 10 entries (dropping the
    // guard first). The chain still holds; the site's witness does not.
    hub.stop();
    {
        use sqlx::sqlite::SqliteConnectOptions;
        let pool = sqlx::SqlitePool::connect_with(
            SqliteConnectOptions::new().filename(hub.data_dir().join("hub.db")),
        )
        .await
        .expect("open");
        for statement in [
            "DROP TRIGGER audit_log_no_delete".to_owned(),
            format!("DELETE FROM audit_log WHERE position > {}", head - 10),
        ] {
            sqlx::query(&statement)
                .execute(&pool)
                .await
                .expect("tamper");
        }
        pool.close().await;
    }
    let out = on_hub_machine(&hub, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Audit chain intact"), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("site site-w witnessed audit entry {head}")),
        "{}",
        text(&out)
    );
    // The hub starts, and refuses people until an administrator acknowledges.
    hub.restart().await;
    let refused = hub.login(PHYSICIAN.0, PHYSICIAN.1).await.expect_err("held");
    assert_eq!(
        refused.code(),
        tonic::Code::Unavailable,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("site-w witnessed"),
        "{}",
        refused.message()
    );
    let out = on_hub_machine(&hub, &["audit", "acknowledge", "--reason", "ok"]);
    assert!(!out.status.success(), "a reason of a few words is required");
    let out = on_hub_machine(
        &hub,
        &[
            "audit",
            "acknowledge",
            "--reason",
            "tail deleted by a test; the site's records are intact",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    eventually(
        std::time::Duration::from_secs(10),
        "the hub to serve people again",
        || {
            let hub = &hub;
            async move { hub.login(PHYSICIAN.0, PHYSICIAN.1).await.ok() }
        },
    )
    .await;

    // Now the hub's database is put back from the early backup: the site, which
    // witnessed far more, finds it out when it connects.
    wait_witnessed(&hub, "site-w").await;
    hub.stop();
    let out = std::process::Command::new(binary("carrel-hub"))
        .args([
            "restore",
            "--from",
            early.to_str().expect("utf-8"),
            "--force",
            "--data-dir",
        ])
        .arg(hub.data_dir())
        .env("RUST_LOG", "warn")
        .output()
        .expect("restore");
    assert!(out.status.success(), "{}", text(&out));
    hub.restart().await;
    let held = eventually(
        std::time::Duration::from_secs(30),
        "the site's witness to hold the hub",
        || {
            let hub = &hub;
            async move {
                match hub.login(PHYSICIAN.0, PHYSICIAN.1).await {
                    Err(status) if status.code() == tonic::Code::Unavailable => Some(status),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(held.message().contains("site-w"), "{}", held.message());
    let out = on_hub_machine(&hub, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("site site-w witnessed"),
        "{}",
        text(&out)
    );
    agent.kill();
}

//! Cases of one backend only: several PostgreSQL hubs over one database, the
//! database refusing changes to the audit log, opening an unreachable server, and
//! each backend's schema upgrades.

use crate::backends::*;
use crate::fixtures::*;
use carrel_hub::audit::NewEntry;
use carrel_hub::model::{BatchState, NewOrder, Role, SiteStatus};
use carrel_hub::store::postgres::{Options as PgOptions, PgStore};
use carrel_hub::store::sqlite::SqliteStore;
use carrel_hub::store::{Error, Store};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// Two stores over one database stand for two hub processes: nothing in one process
/// serialises them, only the database does.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_hubs_sharing_a_database_keep_every_log_gapless() {
    let database = fresh_postgres_database().await;
    let hubs: [Arc<dyn Store>; 2] = [
        open_postgres_at(&database).await,
        open_postgres_at(&database).await,
    ];
    let recipe = seed(&*hubs[0]).await;

    // Orders from both hubs at once, for two sites, each from its own facility so
    // that only the site's command log and the audit chain are shared; and entries
    // audited on their own meanwhile.
    let mut placing = tokio::task::JoinSet::new();
    let mut auditing = tokio::task::JoinSet::new();
    for i in 0..16 {
        let hub = hubs[i % 2].clone();
        let order = NewOrder {
            facility: format!("G{}", 1000 + i),
            ..new_order(if i % 4 < 2 { SITE_A } else { SITE_B })
        };
        placing.spawn(async move { hub.create_order(&order, now()).await });
        let hub = hubs[(i + 1) % 2].clone();
        auditing.spawn(async move {
            hub.audit(&NewEntry::new(
                QA,
                carrel_hub::audit::Action::UserSignInFailed,
                carrel_hub::audit::Object::User(QA.into()),
            ))
            .await
        });
    }
    let mut orders = Vec::new();
    while let Some(placed) = placing.join_next().await {
        orders.push(placed.expect("task").expect("create order"));
    }
    while let Some(audited) = auditing.join_next().await {
        audited.expect("task").expect("audit");
    }
    let mut cois: Vec<&str> = orders.iter().map(|o| o.coi.as_str()).collect();
    cois.sort_unstable();
    cois.dedup();
    assert_eq!(cois.len(), 16, "every order has its own COI");
    for site_id in [SITE_A, SITE_B] {
        let seqs: Vec<u64> = commands(&*hubs[1], site_id)
            .await
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, (1..=8).collect::<Vec<u64>>(), "{site_id}");
        let site = hubs[0].site(site_id).await.expect("site");
        assert_eq!(site.last_command_seq, 8, "{site_id}");
    }

    // A site reconnects to the other hub while the first is still storing the same
    // events: they are stored once.
    let order = orders
        .iter()
        .find(|o| o.site_id == SITE_A)
        .expect("an order at site A");
    let mut log = SiteLog::new();
    let events = complete_record(&mut log, order, &recipe);
    let sent = received(&events);
    let (first, second) = tokio::join!(
        hubs[0].ingest_events(SITE_A, &sent, now()),
        hubs[1].ingest_events(SITE_A, &sent, now()),
    );
    let (first, second) = (first.expect("ingest"), second.expect("ingest"));
    let all = events.len() as u64;
    assert_eq!((first.acked_event_seq, second.acked_event_seq), (all, all));
    assert_eq!(first.new_events + second.new_events, events.len());
    assert_eq!(stored_events(&*hubs[1], order.batch_id).await, events);
    assert_eq!(
        state_of(&*hubs[0], order.batch_id).await,
        BatchState::AwaitingRelease
    );

    // One audit chain, written by both.
    let entries = hubs[0].audit_entries(None).await.expect("audit");
    for action in ["order.created", "user.sign_in_failed"] {
        let count = entries.iter().filter(|e| e.action == action).count();
        assert_eq!(count, 16, "{action}");
    }
    let intact = hubs[1]
        .verify_audit()
        .await
        .expect("read audit")
        .expect("the chain holds");
    assert_eq!(intact.entries, entries.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_audit_log_refuses_changes() {
    let database = fresh_postgres_database().await;
    let store = open_postgres_at(&database).await;
    add_user(&*store, QA, Role::Qa).await;
    let mut conn = database.connect().await.expect("connect");
    for statement in [
        "UPDATE audit_log SET reason = 'forged'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let error = conn
            .execute(statement)
            .await
            .expect_err(statement)
            .to_string();
        assert!(error.contains("append-only"), "{statement}: {error}");
    }
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::UserCreated)
            .await
            .expect("count"),
        1
    );
    let intact = store
        .verify_audit()
        .await
        .expect("read audit")
        .expect("the chain holds");
    assert_eq!(intact.entries, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_logs_and_signatures_refuse_changes() {
    let database = fresh_postgres_database().await;
    let store = open_postgres_at(&database).await;
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    store
        .sign_release(&signature(&order, QA, hash), false, now())
        .await
        .expect("sign");
    let mut conn = database.connect().await.expect("connect");
    for statement in [
        "UPDATE site_events SET body = '{}'",
        "DELETE FROM site_events",
        "TRUNCATE site_events CASCADE",
        "UPDATE hub_commands SET body = '{}'",
        "DELETE FROM hub_commands",
        "UPDATE signatures SET meaning = 'rejected'",
        "DELETE FROM signatures",
        "TRUNCATE signatures",
    ] {
        let error = conn
            .execute(statement)
            .await
            .expect_err(statement)
            .to_string();
        assert!(error.contains("append-only"), "{statement}: {error}");
    }
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures.len(), 1);
    assert_eq!(record.events.len() as u64, log.next_seq - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_refuses_a_database_whose_schema_is_newer() {
    let database = fresh_postgres_database().await;
    open_postgres_at(&database).await.close().await;
    let mut conn = database.connect().await.expect("connect");
    conn.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29991231000000, 'from a newer carrel-hub', TRUE, '\\x00', 0)",
    )
    .await
    .expect("record a migration this binary does not have");

    match PgStore::connect(database.clone(), &PgOptions::default()).await {
        Ok(_) => panic!("a database with a newer schema was opened"),
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains("newer"), "{message}");
            assert!(message.contains("29991231000000"), "{message}");
            assert!(message.contains("upgrade"), "{message}");
        }
        Err(other) => panic!("expected FailedPrecondition, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_unreachable_server_is_named_without_its_password() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("postgres://carrel:s3cret@127.0.0.1:{port}/carrel");
    let options = PgOptions {
        acquire_timeout: std::time::Duration::from_secs(1),
        ..PgOptions::default()
    };
    let started = std::time::Instant::now();
    let error = match PgStore::connect(
        PgConnectOptions::from_str(&url).expect("a valid URL"),
        &options,
    )
    .await
    {
        Ok(_) => panic!("connected to a port nothing listens on"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains(&format!("postgres://carrel@127.0.0.1:{port}/carrel")),
        "{error}"
    );
    assert!(!error.contains("s3cret"), "{error}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "gave up after {:?}, not within the acquire timeout",
        started.elapsed()
    );
}

/// A database made by the previous release (every migration but the site lifecycle
/// one, which rebuilds the sites table) is upgraded on open, and every row that refers
/// to a site still refers to it.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_upgrade_rebuilds_the_sites_table_and_keeps_what_refers_to_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old_migrations = dir.path().join("migrations");
    std::fs::create_dir(&old_migrations).expect("mkdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&shipped).expect("read migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "20261127080000" {
            std::fs::copy(&path, old_migrations.join(&name)).expect("copy");
        }
    }
    let path = dir.path().join("hub.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let mut conn = options.connect().await.expect("create the old database");
        sqlx::migrate::Migrator::new(old_migrations.as_path())
            .await
            .expect("old migrations")
            .run_direct(&mut conn)
            .await
            .expect("apply the old schema");
        for sql in [
            "INSERT INTO sites (site_id, name, status, cert_sha256, acked_event_seq, created_at) \
             VALUES ('site-old', 'Old site', 'suspended', 'cert-old', 1, '2026-11-01T00:00:00.000000Z')",
            "INSERT INTO site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) \
             VALUES ('site-old', 1, 'e1', 'b1', 'batch_accepted', '2026-11-01T00:00:00.000000Z', \
                     '2026-11-01T00:00:00.000000Z', '{}', 'h1')",
            "INSERT INTO site_links (site_id, holder, generation, claimed_at) \
             VALUES ('site-old', 'hub-1', 3, '2026-11-01T00:00:00.000000Z')",
        ] {
            conn.execute(sql).await.expect("seed the old database");
        }
        conn.close().await.expect("close");
    }

    let store = open_sqlite_at(&path).await;
    let site = store.site("site-old").await.expect("the site survived");
    assert_eq!(site.status, SiteStatus::Suspended);
    assert_eq!(site.cert_sha256.as_deref(), Some("cert-old"));
    assert_eq!((site.cert_not_after, site.cert_ca_sha256), (None, None));
    assert_eq!(site.acked_event_seq, 1);
    assert_eq!(
        store.site_link_generation("site-old").await.expect("link"),
        3,
        "the row referring to the site is intact"
    );
    // The new status is allowed by the rebuilt table.
    let ceased = store
        .set_site_status("site-old", SiteStatus::Ceased, ADMIN, "retired")
        .await
        .expect("cease");
    assert_eq!(ceased.status, SiteStatus::Ceased);
}

/// A flood of site messages arriving together is committed in bounded groups, so
/// the first sites are acknowledged after one group, not after all of it; every
/// request is answered with its own acknowledgement.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_commits_a_flood_in_bounded_groups() {
    use carrel_hub::store::sqlite::GROUP_EVENTS;
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = open_sqlite_at(&dir.path().join("hub.db")).await;
    let recipe = seed(&*store).await;
    const SITES: usize = 12;
    const PER_SITE: u64 = 1_000;
    let mut messages = Vec::new();
    for i in 0..SITES {
        let site_id = format!("flood-{i}");
        add_active_site(&*store, &site_id).await;
        qualify(&*store, &site_id, RECIPE_ID, 1, None).await;
        let order = store
            .create_order(&new_order(&site_id), now())
            .await
            .expect("order");
        let mut log = SiteLog::new();
        let mut events = vec![log.record(order.batch_id, accepted(&order, &recipe))];
        while events.len() < PER_SITE as usize {
            events.push(log.record(order.batch_id, step_started("receipt")));
        }
        messages.push((site_id, received(&events)));
    }
    let before = store.ingest_counts();
    // Every site's message is queued before any commit can take the lock: the
    // requests start together on the runtime's threads.
    let start = Arc::new(tokio::sync::Barrier::new(SITES));
    let mut flood = tokio::task::JoinSet::new();
    for (site_id, events) in messages {
        let (store, start) = (store.clone(), start.clone());
        flood.spawn(async move {
            start.wait().await;
            store.ingest_events(&site_id, &events, now()).await
        });
    }
    while let Some(done) = flood.join_next().await {
        let done = done.expect("join").expect("ingest");
        assert_eq!(done.acked_event_seq, PER_SITE);
        assert_eq!(done.new_events as u64, PER_SITE);
    }
    let after = store.ingest_counts();
    let total = SITES as u64 * PER_SITE;
    assert_eq!(after.events - before.events, total);
    assert_eq!(after.requests - before.requests, SITES as u64);
    let commits = after.commits - before.commits;
    assert!(
        commits >= total.div_ceil(GROUP_EVENTS as u64),
        "{total} events in {commits} commits: a group holds at most {GROUP_EVENTS}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_refuses_a_database_whose_schema_is_newer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hub.db");
    open_sqlite_at(&path).await.close().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .expect("connect");
    conn.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29991231000000, 'from a newer carrel-hub', 1, x'00', 0)",
    )
    .await
    .expect("record a migration this binary does not have");
    conn.close().await.expect("close");
    match SqliteStore::open(&path).await {
        Ok(_) => panic!("a database with a newer schema was opened"),
        Err(Error::FailedPrecondition(message)) => {
            assert!(message.contains("newer"), "{message}");
            assert!(message.contains("29991231000000"), "{message}");
        }
        Err(other) => panic!("expected FailedPrecondition, got {other:?}"),
    }
}

/// The migration that brings site qualifications carries over each site and
/// product that had orders before it, as "carried over" (no person signed), so an
/// upgraded hub keeps taking the orders it took; a site without orders gets none.
async fn assert_carried_over(store: &dyn Store) {
    let carried = store.site_qualifications(None).await.expect("list");
    let carried: Vec<_> = carried
        .iter()
        .map(|q| {
            (
                q.site_id.as_str(),
                q.recipe_id.as_str(),
                q.qualified_by.as_str(),
                q.in_force(),
            )
        })
        .collect();
    assert_eq!(carried, [(SITE_A, RECIPE_ID, "system", true)]);
    // QA signs it again as it is (not refused as a repeat): the carried-over row
    // stays, withdrawn, beside QA's.
    store
        .qualify_site(&qualification(SITE_A, RECIPE_ID, 1, None))
        .await
        .expect("QA signs the carried-over qualification");
    let rows = store.site_qualifications(Some(SITE_A)).await.expect("list");
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().any(|q| q.qualified_by == QA && q.in_force()));
    store
        .create_order(&new_order(SITE_A), now())
        .await
        .expect("site-a keeps taking orders");
    assert_refused!(
        store.create_order(&new_order(SITE_B), now()).await,
        Error::Invalid
    );
}

/// Undoes the qualifications migration on an open database, as if it was made by
/// the hub before it.
const UNDO_QUALIFICATIONS: [&str; 2] = [
    "DROP TABLE site_qualifications",
    "DELETE FROM _sqlx_migrations WHERE version = 20261206030000",
];

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_upgrade_carries_over_the_sites_products() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hub.db");
    let store = open_sqlite_at(&path).await;
    seed(&*store).await;
    order_at(&*store, SITE_A).await;
    store.close().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .expect("connect");
    for statement in UNDO_QUALIFICATIONS {
        conn.execute(statement).await.expect(statement);
    }
    conn.close().await.expect("close");
    assert_carried_over(&*open_sqlite_at(&path).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_upgrade_carries_over_the_sites_products() {
    let database = fresh_postgres_database().await;
    let store = open_postgres_at(&database).await;
    seed(&*store).await;
    order_at(&*store, SITE_A).await;
    store.close().await;
    let mut conn = database.connect().await.expect("connect");
    for statement in UNDO_QUALIFICATIONS {
        conn.execute(statement).await.expect(statement);
    }
    conn.close().await.expect("close");
    assert_carried_over(&*open_postgres_at(&database).await).await;
}

/// The SQLite writer keeps measures back for a moment (`sqlite/ingest.rs`,
/// `Deferred`), and a hub that stops loses what it kept. Here the database is left
/// as such a stop leaves it: the measures written so far undone, and
/// `measures_through` behind the events. At open they are made again from the
/// stored records, the same as before, and a second open does not count them again.
#[tokio::test]
async fn sqlite_measures_lost_when_the_hub_stops_are_made_again_at_open_once() {
    use crate::analytics::{a_batch_starting_expansion, measured, samples};
    use carrel_proto::recipe::{Outcome, QcValue};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.db");
    let store = open_sqlite_at(&path).await;
    let (order, mut a, mut events) = a_batch_starting_expansion(&*store).await;
    for i in 0..20 {
        let hours = f64::from(i);
        events.push(a.record(
            order.batch_id,
            samples(&[(hours, 37.0 + f64::from(i % 3) * 0.4), (hours + 0.5, 37.1)]),
        ));
    }
    events.push(a.record(
        order.batch_id,
        qc_result("viability", QcValue::Numeric(92.0), Outcome::Pass),
    ));
    for message in events.chunks(3) {
        ingest(&*store, SITE_A, message).await;
    }
    let before = measured(&*store, order.batch_id).await;
    assert_eq!(before.0[0].run.n, 40, "{:?}", before.0);
    assert_eq!(before.1.len(), 1);
    assert!(!before.2.is_empty());
    store.close().await;
    drop(store);

    let raw = || async {
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .expect("open the file")
    };
    let mut conn = raw().await;
    for sql in [
        "DELETE FROM batch_measures",
        "DELETE FROM batch_trajectories",
        "UPDATE sites SET measures_through = 4",
    ] {
        conn.execute(sql).await.expect("leave it as a stop would");
    }
    conn.close().await.expect("close");

    // Records 1 to 4 (the acceptance, the step's start, two of samples) are
    // counted as measured: only what lies after them is made again.
    let store = open_sqlite_at(&path).await;
    let (temperature, viability, trajectory) = measured(&*store, order.batch_id).await;
    assert_eq!(temperature.len(), 1);
    assert_eq!(temperature[0].run.n, 36, "{temperature:?}");
    assert_eq!(viability, before.1);
    assert_eq!(
        trajectory.iter().map(|(_, _, p)| p.n).sum::<u64>(),
        before.2.iter().map(|(_, _, p)| p.n).sum::<u64>() - 4
    );
    store.close().await;
    drop(store);

    // Made again once: the next open finds nothing behind.
    let store = open_sqlite_at(&path).await;
    let again = measured(&*store, order.batch_id).await;
    assert_eq!(again.0[0].run.n, 36);
    assert_eq!(again.1, viability);
    assert_eq!(again.2, trajectory);
    let mut conn = raw().await;
    let (through, acked): (i64, i64) =
        sqlx::query_as("SELECT measures_through, acked_event_seq FROM sites WHERE site_id = ?")
            .bind(SITE_A)
            .fetch_one(&mut conn)
            .await
            .expect("site");
    assert_eq!((through, acked), (events.len() as i64, events.len() as i64));
    conn.close().await.expect("close");
}

/// Two stores over one SQLite file: the second, opening, makes the measures the
/// first still keeps back from the stored records; the first then finds them made
/// (`measures_through` moved) and drops its own. Each sample counts once.
#[tokio::test]
async fn sqlite_measures_kept_back_by_one_store_and_made_by_another_count_once() {
    use crate::analytics::{a_batch_starting_expansion, measured, samples};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.db");
    let first = open_sqlite_at(&path).await;
    let (order, mut a, mut events) = a_batch_starting_expansion(&*first).await;
    events.push(a.record(order.batch_id, samples(&[(0.0, 37.0), (1.0, 37.2)])));
    events.push(a.record(order.batch_id, samples(&[(2.0, 37.1)])));
    ingest(&*first, SITE_A, &events).await;
    // The first keeps these measures back for up to a second; the second opens
    // meanwhile.
    let second = open_sqlite_at(&path).await;
    for store in [&first, &second] {
        let (temperature, _, trajectory) = measured(&**store, order.batch_id).await;
        assert_eq!(temperature.len(), 1);
        assert_eq!(temperature[0].run.n, 3, "{temperature:?}");
        assert_eq!(trajectory.iter().map(|(_, _, p)| p.n).sum::<u64>(), 3);
    }
}

/// With no more events and nobody reading, the SQLite writer writes the measures
/// it keeps back on its own, about a second after they were committed.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_measures_kept_back_are_written_on_their_own() {
    use crate::analytics::{a_batch_starting_expansion, samples};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.db");
    let store = open_sqlite_at(&path).await;
    let (order, mut a, mut events) = a_batch_starting_expansion(&*store).await;
    events.push(a.record(order.batch_id, samples(&[(0.0, 37.0), (1.0, 37.2)])));
    ingest(&*store, SITE_A, &events).await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .expect("open the file");
    let started = std::time::Instant::now();
    loop {
        let (rows, through): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM batch_measures), \
                    (SELECT measures_through FROM sites WHERE site_id = ?)",
        )
        .bind(SITE_A)
        .fetch_one(&mut conn)
        .await
        .expect("read");
        if (rows, through) == (1, 3) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the measures were not written on their own: {rows} rows, measured through {through}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    conn.close().await.expect("close");
}

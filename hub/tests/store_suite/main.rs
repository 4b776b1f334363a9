//! The shared test suite of the hub's [`Store`] interface.
//!
//! Every case is an `async fn case_*(store: Arc<dyn Store>)`: it seeds what it needs
//! through the store's own methods, calls the method under test and asserts on what is
//! stored afterwards (rows, cursors, state), never only on "no error". The cases know
//! nothing about the backend. `store_cases!` at the bottom runs each of them against a
//! fresh SQLite file and against a fresh PostgreSQL database; `scripts/test` starts the
//! throw-away PostgreSQL server they use and names it in `CARREL_TEST_POSTGRES_URL`.

use carrel_hub::audit::NewEntry;
use carrel_hub::record::record_sha256;
use carrel_hub::schedule::Capacity;
use carrel_hub::store::postgres::{Options as PgOptions, PgStore};
use carrel_hub::store::sqlite::SqliteStore;
use carrel_hub::store::{
    BatchState, Error, Ingested, IssuedCert, NewOrder, Order, QcRecord, Received, Role, Signature,
    Site, SiteStatus, Store, StoredEvent, User,
};
use carrel_proto::coi::Coi;
use carrel_proto::event::{
    CommandKind, EventKind, HubCommand, ReleaseMeaning, SiteEvent, GENESIS_SHA256,
};
use carrel_proto::recipe::{Outcome, QcTest, QcValue, Recipe};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use uuid::Uuid;

// ---------------------------------------------------------------------------------
// Fixtures: the people, sites, orders and site events the cases are made of.
// ---------------------------------------------------------------------------------

const PHYSICIAN: &str = "dr-lee";
const QA: &str = "qa-ana";
/// Records every site event in these tests (`recorded_by`).
const TECHNICIAN: &str = "tech-tom";
const SITE_A: &str = "site-a";
const SITE_B: &str = "site-b";
const RECIPE_ID: &str = "cd19-car-t";
/// Who the store is told made administrative changes (audited).
const ADMIN: &str = "admin-ada";

/// Now, to the microsecond the store keeps, so a time read back compares equal.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn shipped_recipe() -> Recipe {
    Recipe::from_toml(include_str!("../../recipes/cd19-car-t.v1.toml"))
        .expect("the shipped recipe is valid")
}

/// Publishes the shipped recipe and adds a physician, a QA reviewer, a technician and
/// two active sites. Returns the recipe.
async fn seed(store: &dyn Store) -> Recipe {
    let recipe = shipped_recipe();
    store
        .publish_recipe(&recipe)
        .await
        .expect("publish the shipped recipe");
    for (username, role) in [
        (PHYSICIAN, Role::Physician),
        (QA, Role::Qa),
        (TECHNICIAN, Role::Technician),
    ] {
        add_user(store, username, role).await;
    }
    add_active_site(store, SITE_A).await;
    add_active_site(store, SITE_B).await;
    recipe
}

async fn add_user(store: &dyn Store, username: &str, role: Role) {
    store
        .add_user(
            &User {
                username: username.into(),
                full_name: format!("{username} (test)"),
                role,
                disabled: false,
                password_hash: "x".into(),
            },
            ADMIN,
        )
        .await
        .expect("add user");
}

/// A certificate as the hub's CA would have issued it (the store keeps only these facts).
fn cert(sha256: &str) -> IssuedCert {
    IssuedCert {
        sha256: sha256.into(),
        not_after: now() + Duration::days(730),
        ca_sha256: "ca-1".into(),
    }
}

/// Registers a site and enrolls it with its token, which makes it active.
async fn add_active_site(store: &dyn Store, site_id: &str) -> Site {
    let token = format!("token-{site_id}");
    store
        .add_site(site_id, site_id, &token, now() + Duration::hours(1), ADMIN)
        .await
        .expect("add site");
    let site = store
        .complete_enrollment(site_id, &token, &cert(&format!("cert-{site_id}")), now())
        .await
        .expect("enroll site");
    assert_eq!(
        site.status,
        SiteStatus::Active,
        "enrollment activates a site"
    );
    site
}

fn new_order(site_id: &str) -> NewOrder {
    NewOrder {
        patient_pseudonym: "PAT-0001".into(),
        recipe_id: RECIPE_ID.into(),
        site_id: site_id.into(),
        requested_collection_date: "2026-12-01".into(),
        physician: PHYSICIAN.into(),
        facility: "G1234".into(),
    }
}

async fn order_at(store: &dyn Store, site_id: &str) -> Order {
    store
        .create_order(&new_order(site_id), now())
        .await
        .expect("create order")
}

thread_local! {
    /// The hash of the last event made with each seq in this test (each test runs on
    /// its own thread), so that `event(n, ..)` links to `event(n - 1, ..)` the way a
    /// site's hash-chained log does.
    static LAST_HASH_BY_SEQ: std::cell::RefCell<std::collections::HashMap<u64, String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A site event with the given seq, chained to the last event made with seq - 1.
fn event(seq: u64, batch_id: Uuid, kind: EventKind) -> SiteEvent {
    let prev_sha256 = LAST_HASH_BY_SEQ.with(|m| {
        m.borrow()
            .get(&(seq.wrapping_sub(1)))
            .cloned()
            .unwrap_or_else(|| GENESIS_SHA256.to_owned())
    });
    let event = SiteEvent {
        seq,
        event_id: Uuid::new_v4(),
        recorded_at: Utc::now(),
        batch_id,
        recorded_by: TECHNICIAN.into(),
        prev_sha256,
        kind,
    };
    LAST_HASH_BY_SEQ.with(|m| m.borrow_mut().insert(seq, event.sha256()));
    event
}

/// One site's event log as its agent writes it: consecutive seqs from 1, each
/// event carrying the hash of the one before.
struct SiteLog {
    next_seq: u64,
    last_sha256: String,
}

impl SiteLog {
    fn new() -> SiteLog {
        SiteLog {
            next_seq: 1,
            last_sha256: GENESIS_SHA256.to_owned(),
        }
    }

    fn record(&mut self, batch_id: Uuid, kind: EventKind) -> SiteEvent {
        let mut recorded = event(self.next_seq, batch_id, kind);
        recorded.prev_sha256 = self.last_sha256.clone();
        self.last_sha256 = recorded.sha256();
        self.next_seq += 1;
        recorded
    }
}

fn accepted(order: &Order, recipe: &Recipe) -> EventKind {
    EventKind::BatchAccepted {
        coi: order.coi.clone(),
        recipe_id: recipe.id.clone(),
        recipe_version: recipe.version,
        recipe_sha256: recipe.sha256(),
    }
}

fn step_started(step_id: &str) -> EventKind {
    EventKind::StepStarted {
        step_id: step_id.into(),
        instrument_id: "sim-1".into(),
        resumed: false,
    }
}

fn step_completed(step_id: &str) -> EventKind {
    EventKind::StepCompleted {
        step_id: step_id.into(),
        process_hours: 1.0,
    }
}

fn qc_result(test_id: &str, value: QcValue, site_outcome: Outcome) -> EventKind {
    EventKind::QcResult {
        test_id: test_id.into(),
        value,
        unit: "%".into(),
        method: "test method".into(),
        site_outcome,
        retest_of: None,
    }
}

fn deviation(step_id: &str) -> EventKind {
    EventKind::DeviationRaised {
        deviation_id: "DEV-1".into(),
        step_id: step_id.into(),
        description: "label reprinted".into(),
        classification: "minor".into(),
    }
}

/// A result that meets the test's specification.
fn passing_value(test: &QcTest) -> QcValue {
    match test.spec.accepted.first() {
        Some(text) => QcValue::Text(text.clone()),
        None => QcValue::Numeric(test.spec.min.or(test.spec.max).unwrap_or(0.0)),
    }
}

/// The tests that must be recorded before release.
fn release_gating_tests(recipe: &Recipe) -> Vec<&QcTest> {
    recipe
        .all_tests()
        .filter(|t| !t.may_follow_release)
        .collect()
}

/// A matching scan of the order's label at a custody checkpoint.
fn matched_scan(order: &Order, checkpoint_id: &str) -> EventKind {
    EventKind::CustodyScan {
        checkpoint_id: checkpoint_id.into(),
        expected_coi: order.coi.clone(),
        scanned_coi: order.coi.clone(),
        verifiers: vec![TECHNICIAN.into(), "tech-two".into()],
        matched: true,
        location: "clean room 1".into(),
    }
}

/// A complete batch record: accepted, every custody checkpoint passed, every step
/// started and completed, every test that gates release recorded with a passing result.
fn complete_record(log: &mut SiteLog, order: &Order, recipe: &Recipe) -> Vec<SiteEvent> {
    let mut events = vec![log.record(order.batch_id, accepted(order, recipe))];
    for step in &recipe.steps {
        if let Some(checkpoint) = &step.custody_checkpoint {
            events.push(log.record(order.batch_id, matched_scan(order, &checkpoint.id)));
        }
        events.push(log.record(order.batch_id, step_started(&step.id)));
        events.push(log.record(order.batch_id, step_completed(&step.id)));
    }
    for test in release_gating_tests(recipe) {
        let kind = qc_result(&test.id, passing_value(test), Outcome::Pass);
        events.push(log.record(order.batch_id, kind));
    }
    events
}

/// Events as a site link hands them to the store (decoded and hashed).
fn received(events: &[SiteEvent]) -> Vec<Received> {
    events.iter().cloned().map(Received::new).collect()
}

async fn ingest(store: &dyn Store, site_id: &str, events: &[SiteEvent]) -> Ingested {
    store
        .ingest_events(site_id, &received(events), now())
        .await
        .expect("ingest site events")
}

/// The site events stored for a batch, as the site sent them.
async fn stored_events(store: &dyn Store, batch_id: Uuid) -> Vec<SiteEvent> {
    store
        .batch_events(batch_id)
        .await
        .expect("read batch events")
        .into_iter()
        .map(|stored| stored.event)
        .collect()
}

async fn state_of(store: &dyn Store, batch_id: Uuid) -> BatchState {
    store
        .order_by_batch(batch_id)
        .await
        .expect("read order")
        .state
}

async fn commands(store: &dyn Store, site_id: &str) -> Vec<HubCommand> {
    store
        .commands_after(site_id, 0, 100)
        .await
        .expect("read commands")
}

/// SHA-256 of the batch record as QA reviews it now.
async fn reviewed_sha256(store: &dyn Store, batch_id: Uuid) -> String {
    let record = store.batch_record(batch_id).await.expect("batch record");
    record_sha256(&record.order, &record.recipe.sha256, &record.events)
}

fn signature(order: &Order, signer: &str, record_sha256: String) -> Signature {
    Signature {
        signature_id: Uuid::new_v4(),
        batch_id: order.batch_id,
        signer: signer.into(),
        signer_name: format!("{signer} (test)"),
        meaning: ReleaseMeaning::Released,
        record_sha256,
        reason: "record reviewed, all results within specification".into(),
        signed_at: now(),
    }
}

/// Everything a refused call must leave as it was, for one site and one of its batches.
#[derive(Debug, PartialEq)]
struct Snapshot {
    site: Site,
    events: Vec<StoredEvent>,
    order: Order,
    qc: Vec<QcRecord>,
    commands: Vec<HubCommand>,
}

async fn snapshot(store: &dyn Store, site_id: &str, batch_id: Uuid) -> Snapshot {
    let mut site = store.site(site_id).await.expect("read site");
    // When the site last called is bookkeeping, not a record; repeats may update it.
    site.last_contact_at = None;
    let record = store.batch_record(batch_id).await.expect("batch record");
    Snapshot {
        site,
        events: record.events,
        order: record.order,
        qc: record.qc,
        commands: commands(store, site_id).await,
    }
}

/// Asserts that a store call was refused with the given `Error` variant.
macro_rules! assert_refused {
    ($call:expr, $variant:path) => {
        match $call {
            Err($variant(_)) => {}
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}

// ---------------------------------------------------------------------------------
// 1. Ingesting site events (invariant 3: append-only log replicated by cursor).
// ---------------------------------------------------------------------------------

async fn case_ingest_stores_consecutive_events_and_advances_cursor(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();

    let first = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
    ];
    let done = ingest(&*store, SITE_A, &first).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 2,
            new_events: 2
        }
    );
    assert_eq!(store.site(SITE_A).await.expect("site").acked_event_seq, 2);
    assert_eq!(stored_events(&*store, order.batch_id).await, first);

    let second = vec![log.record(order.batch_id, step_completed("receipt"))];
    let done = ingest(&*store, SITE_A, &second).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 3,
            new_events: 1
        }
    );
    let site = store.site(SITE_A).await.expect("site");
    assert_eq!(site.acked_event_seq, 3);
    assert!(site.last_contact_at.is_some(), "ingest records contact");
    let stored = store.batch_events(order.batch_id).await.expect("events");
    assert!(stored.iter().all(|s| s.site_id == SITE_A));
    let expected: Vec<SiteEvent> = first.into_iter().chain(second).collect();
    assert_eq!(stored_events(&*store, order.batch_id).await, expected);
    assert_eq!(
        store.site(SITE_B).await.expect("site").acked_event_seq,
        0,
        "cursors are per site"
    );
}

async fn case_ingest_accepts_identical_repeats_and_changes_nothing(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let sent = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
        log.record(order.batch_id, step_completed("receipt")),
    ];
    ingest(&*store, SITE_A, &sent).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    // The site reconnects and sends everything again (it never saw our ack).
    let done = ingest(&*store, SITE_A, &sent).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 3,
            new_events: 0
        }
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    // Repeats followed by a new event: only the new one is stored.
    let next = log.record(order.batch_id, step_started("selection"));
    let resent = vec![sent[1].clone(), sent[2].clone(), next.clone()];
    let done = ingest(&*store, SITE_A, &resent).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 4,
            new_events: 1
        }
    );
    let expected: Vec<SiteEvent> = sent.into_iter().chain([next]).collect();
    assert_eq!(stored_events(&*store, order.batch_id).await, expected);
}

async fn case_ingest_refuses_a_changed_repeat(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let sent = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
    ];
    ingest(&*store, SITE_A, &sent).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    let mut changed = sent[1].clone();
    changed.kind = step_started("selection");
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(std::slice::from_ref(&changed)), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    // A changed repeat also takes the new events of the same call down with it.
    let new = log.record(order.batch_id, step_completed("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[changed, new]), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert_eq!(stored_events(&*store, order.batch_id).await, sent);
}

async fn case_ingest_refuses_a_gap_and_stores_nothing_of_the_call(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let first = event(1, order.batch_id, accepted(&order, &recipe));
    ingest(&*store, SITE_A, std::slice::from_ref(&first)).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_eq!(before.order.state, BatchState::Accepted);

    // Seqs 2 and 3 are valid; 5 skips 4. The call is atomic: none of it is stored.
    let two = event(2, order.batch_id, step_started("receipt"));
    let three = event(3, order.batch_id, step_completed("receipt"));
    let five = event(5, order.batch_id, step_started("selection"));
    assert_refused!(
        store
            .ingest_events(
                SITE_A,
                &received(&[two.clone(), three.clone(), five]),
                now()
            )
            .await,
        Error::Protocol
    );
    let after = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_eq!(after, before);
    assert_eq!(after.site.acked_event_seq, 1);
    assert_eq!(
        after.order.state,
        BatchState::Accepted,
        "the projection of the refused events was not kept either"
    );

    // A call that starts past the cursor is a gap too.
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(std::slice::from_ref(&three)), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    // The site can still send the right thing afterwards.
    let done = ingest(&*store, SITE_A, &[two.clone(), three.clone()]).await;
    assert_eq!(done.acked_event_seq, 3);
    assert_eq!(
        stored_events(&*store, order.batch_id).await,
        vec![first, two, three]
    );
}

async fn case_ingest_refuses_events_for_another_sites_batch(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order_a = order_at(&*store, SITE_A).await;
    let order_b = order_at(&*store, SITE_B).await;
    let before_a = snapshot(&*store, SITE_A, order_a.batch_id).await;
    let before_b = snapshot(&*store, SITE_B, order_b.batch_id).await;

    // Site B writes about site A's batch, alone and after a valid event of its own.
    let intrusion = event(1, order_a.batch_id, accepted(&order_a, &recipe));
    assert_refused!(
        store
            .ingest_events(SITE_B, &received(std::slice::from_ref(&intrusion)), now())
            .await,
        Error::PermissionDenied
    );
    let own = event(1, order_b.batch_id, accepted(&order_b, &recipe));
    let intrusion = event(2, order_a.batch_id, step_started("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_B, &received(&[own, intrusion]), now())
            .await,
        Error::PermissionDenied
    );

    assert_eq!(snapshot(&*store, SITE_A, order_a.batch_id).await, before_a);
    assert_eq!(snapshot(&*store, SITE_B, order_b.batch_id).await, before_b);
    assert!(stored_events(&*store, order_a.batch_id).await.is_empty());
    assert!(stored_events(&*store, order_b.batch_id).await.is_empty());
}

async fn case_ingest_refuses_events_for_a_batch_never_ordered(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    let stranger = Uuid::new_v4();

    let alone = event(1, stranger, step_started("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(std::slice::from_ref(&alone)), now())
            .await,
        Error::PermissionDenied
    );
    let own = event(1, order.batch_id, accepted(&order, &recipe));
    let after_own = event(2, stranger, step_started("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[own, after_own]), now())
            .await,
        Error::PermissionDenied
    );

    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert!(stored_events(&*store, order.batch_id).await.is_empty());
    let stranger_events = store.batch_events(stranger).await.expect("read events");
    assert!(stranger_events.is_empty(), "{stranger_events:?}");
}

// ---------------------------------------------------------------------------------
// 2. Projections derived in the same transaction (invariant 4).
// ---------------------------------------------------------------------------------

async fn case_batch_awaits_release_exactly_when_its_record_is_complete(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let batch = order.batch_id;
    let mut log = SiteLog::new();
    assert_eq!(order.state, BatchState::Ordered);

    ingest(
        &*store,
        SITE_A,
        &[log.record(batch, accepted(&order, &recipe))],
    )
    .await;
    assert_eq!(state_of(&*store, batch).await, BatchState::Accepted);

    for step in &recipe.steps {
        if let Some(checkpoint) = &step.custody_checkpoint {
            ingest(
                &*store,
                SITE_A,
                &[log.record(batch, matched_scan(&order, &checkpoint.id))],
            )
            .await;
        }
        ingest(
            &*store,
            SITE_A,
            &[log.record(batch, step_started(&step.id))],
        )
        .await;
        let current = store.order_by_batch(batch).await.expect("order");
        assert_eq!(current.state, BatchState::InProcess);
        assert_eq!(current.current_step.as_deref(), Some(step.id.as_str()));
        ingest(
            &*store,
            SITE_A,
            &[log.record(batch, step_completed(&step.id))],
        )
        .await;
    }
    let all_steps_done = store.order_by_batch(batch).await.expect("order");
    assert_eq!(
        all_steps_done.state,
        BatchState::InProcess,
        "steps done, tests missing"
    );
    let step_ids: Vec<&str> = all_steps_done
        .progress
        .steps_completed
        .iter()
        .map(String::as_str)
        .collect();
    let mut expected_steps: Vec<&str> = recipe.steps.iter().map(|s| s.id.as_str()).collect();
    expected_steps.sort_unstable();
    assert_eq!(step_ids, expected_steps);

    let tests = release_gating_tests(&recipe);
    let (last, before_last) = tests.split_last().expect("the recipe has release tests");
    for test in before_last {
        let kind = qc_result(&test.id, passing_value(test), Outcome::Pass);
        ingest(&*store, SITE_A, &[log.record(batch, kind)]).await;
        assert_eq!(
            state_of(&*store, batch).await,
            BatchState::InProcess,
            "test {} recorded, {} still missing",
            test.id,
            last.id
        );
    }
    let kind = qc_result(&last.id, passing_value(last), Outcome::Pass);
    ingest(&*store, SITE_A, &[log.record(batch, kind)]).await;

    let complete = store.order_by_batch(batch).await.expect("order");
    assert_eq!(complete.state, BatchState::AwaitingRelease);
    assert_eq!(complete.current_step, None);
    assert!(complete.progress.exceptions.is_empty());
    assert!(
        !complete.progress.tests_recorded.contains("sterility"),
        "sterility may follow release and was not needed"
    );
    let record = store.batch_record(batch).await.expect("batch record");
    assert_eq!(record.qc.len(), tests.len());
    assert!(record.qc.iter().all(|q| q.hub_outcome == Outcome::Pass));
    assert_eq!(
        store
            .list_orders(None, Some(BatchState::AwaitingRelease))
            .await
            .expect("list orders")
            .iter()
            .map(|o| o.order_id)
            .collect::<Vec<_>>(),
        vec![order.order_id]
    );
}

async fn case_out_of_spec_result_is_kept_and_flagged(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let batch = order.batch_id;
    let mut log = SiteLog::new();
    let viability = QcValue::Numeric(55.0); // spec: min 70
    let cd3 = QcValue::Numeric(50.0); // spec: min 70
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(batch, accepted(&order, &recipe)),
            log.record(
                batch,
                qc_result("viability", viability.clone(), Outcome::OutOfSpecification),
            ),
            // The site calls this one a pass; the hub's own evaluation decides.
            log.record(batch, qc_result("cd3", cd3.clone(), Outcome::Pass)),
        ],
    )
    .await;

    let record = store.batch_record(batch).await.expect("batch record");
    assert_eq!(record.qc.len(), 2);
    let (oos, disputed) = (&record.qc[0], &record.qc[1]);
    assert_eq!(
        (oos.site_seq, oos.test_id.as_str(), &oos.value),
        (2, "viability", &viability)
    );
    assert_eq!(oos.hub_outcome, Outcome::OutOfSpecification);
    assert_eq!(oos.site_outcome, Outcome::OutOfSpecification);
    assert!(!oos.reason.is_empty(), "an OOS result says why");
    assert_eq!(
        (
            disputed.site_seq,
            disputed.hub_outcome,
            disputed.site_outcome
        ),
        (3, Outcome::OutOfSpecification, Outcome::Pass)
    );
    assert_eq!(record.order.progress.exceptions, vec![2, 3]);
    assert_eq!(
        record.order.progress.anomalies.len(),
        1,
        "the disagreement is an anomaly: {:?}",
        record.order.progress.anomalies
    );
}

// ---------------------------------------------------------------------------------
// 3. Orders and the hub command log.
// ---------------------------------------------------------------------------------

async fn case_order_queues_a_batch_order_command(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    assert_eq!(order.state, BatchState::Ordered);
    assert_eq!(
        (order.recipe_id.as_str(), order.recipe_version),
        (RECIPE_ID, 1)
    );
    assert_eq!(store.order(order.order_id).await.expect("order"), order);

    let queued = commands(&*store, SITE_A).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let command = &queued[0];
    assert_eq!((command.seq, command.batch_id), (1, order.batch_id));
    let stored_recipe = store.recipe(RECIPE_ID, 1).await.expect("stored recipe");
    match &command.kind {
        CommandKind::BatchOrder {
            order_id,
            coi,
            patient_pseudonym,
            requested_collection_date,
            recipe_id,
            recipe_version,
            recipe_json,
            recipe_sha256,
        } => {
            assert_eq!(*order_id, order.order_id);
            assert_eq!(*coi, order.coi);
            assert_eq!(patient_pseudonym, "PAT-0001");
            assert_eq!(requested_collection_date, "2026-12-01");
            assert_eq!((recipe_id.as_str(), *recipe_version), (RECIPE_ID, 1));
            assert_eq!(*recipe_json, stored_recipe.canonical_json);
            assert_eq!(*recipe_sha256, recipe.sha256());
            let shipped = Recipe::from_json(recipe_json).expect("the shipped JSON is a recipe");
            assert_eq!(
                shipped.sha256(),
                *recipe_sha256,
                "the SHA-256 matches the JSON"
            );
        }
        other => panic!("expected a batch order, got {other:?}"),
    }
    assert_eq!(store.site(SITE_A).await.expect("site").last_command_seq, 1);
    assert!(
        commands(&*store, SITE_B).await.is_empty(),
        "command logs are per site"
    );
}

async fn case_successive_orders_get_distinct_valid_cois(store: Arc<dyn Store>) {
    seed(&*store).await;
    let orders = [
        order_at(&*store, SITE_A).await,
        order_at(&*store, SITE_A).await,
        order_at(&*store, SITE_B).await,
    ];
    let mut cois: Vec<&str> = orders.iter().map(|o| o.coi.as_str()).collect();
    for coi in &cois {
        let parsed = Coi::parse(coi).expect("a valid COI");
        assert!(parsed.as_str().starts_with("G1234"), "{coi}");
    }
    cois.sort_unstable();
    cois.dedup();
    assert_eq!(cois.len(), 3, "every order has its own COI");

    let seqs = |cmds: Vec<HubCommand>| cmds.iter().map(|c| c.seq).collect::<Vec<_>>();
    assert_eq!(seqs(commands(&*store, SITE_A).await), vec![1, 2]);
    assert_eq!(seqs(commands(&*store, SITE_B).await), vec![1]);
    let after_first = store.commands_after(SITE_A, 1, 10).await.expect("commands");
    assert_eq!(seqs(after_first), vec![2]);
    let limited = store.commands_after(SITE_A, 0, 1).await.expect("commands");
    assert_eq!(seqs(limited), vec![1]);
}

async fn case_command_acks_are_bounded_by_what_was_issued(store: Arc<dyn Store>) {
    seed(&*store).await;
    order_at(&*store, SITE_A).await;
    order_at(&*store, SITE_A).await;
    let acked = |site: Site| (site.last_command_seq, site.acked_command_seq);
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 0));

    assert_refused!(store.ack_commands(SITE_A, 3).await, Error::Protocol);
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 0));

    store.ack_commands(SITE_A, 1).await.expect("ack 1");
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 1));
    store.ack_commands(SITE_A, 2).await.expect("ack 2");
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 2));

    // A late, lower ack (e.g. from an old connection) never moves the cursor back;
    // whether it is refused or ignored is up to the backend.
    let _ = store.ack_commands(SITE_A, 1).await;
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 2));
}

async fn case_refused_orders_create_nothing(store: Arc<dyn Store>) {
    seed(&*store).await;
    let existing = order_at(&*store, SITE_A).await;
    store
        .add_site(
            "site-pending",
            "not enrolled",
            "token-pending",
            now() + Duration::hours(1),
            ADMIN,
        )
        .await
        .expect("add pending site");
    add_active_site(&*store, "site-suspended").await;
    let suspended = store
        .set_site_status("site-suspended", SiteStatus::Suspended, ADMIN, "inspection")
        .await
        .expect("suspend site");
    assert_eq!(suspended.status, SiteStatus::Suspended);

    assert_refused!(
        store.create_order(&new_order("site-unknown"), now()).await,
        Error::Invalid
    );
    assert_refused!(
        store
            .create_order(&new_order("site-suspended"), now())
            .await,
        Error::FailedPrecondition
    );
    assert_refused!(
        store.create_order(&new_order("site-pending"), now()).await,
        Error::FailedPrecondition
    );
    let unknown_product = NewOrder {
        recipe_id: "no-such-product".into(),
        ..new_order(SITE_A)
    };
    assert_refused!(
        store.create_order(&unknown_product, now()).await,
        Error::Invalid
    );

    let orders = store.list_orders(None, None).await.expect("list orders");
    assert_eq!(
        orders.iter().map(|o| o.order_id).collect::<Vec<_>>(),
        vec![existing.order_id]
    );
    assert_eq!(commands(&*store, SITE_A).await.len(), 1);
    for site_id in ["site-pending", "site-suspended"] {
        assert!(commands(&*store, site_id).await.is_empty(), "{site_id}");
        let site = store.site(site_id).await.expect("site");
        assert_eq!(site.last_command_seq, 0, "{site_id}");
    }
    assert_eq!(store.site(SITE_A).await.expect("site").last_command_seq, 1);
}

// ---------------------------------------------------------------------------------
// 4. Cancelling an order.
// ---------------------------------------------------------------------------------

async fn case_cancel_stops_a_batch_in_process(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(order.batch_id, accepted(&order, &recipe)),
            log.record(order.batch_id, step_started("receipt")),
        ],
    )
    .await;
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::InProcess
    );

    let cancelled = store
        .cancel_order(order.order_id, "patient too ill", PHYSICIAN, now())
        .await
        .expect("cancel");
    assert_eq!(cancelled.state, BatchState::Cancelled);
    assert_eq!(cancelled.current_step, None);
    assert_eq!(
        store.order(order.order_id).await.expect("order").state,
        BatchState::Cancelled
    );
    let queued = commands(&*store, SITE_A).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!((queued[1].seq, queued[1].batch_id), (2, order.batch_id));
    assert_eq!(
        queued[1].kind,
        CommandKind::CancelBatch {
            reason: "patient too ill".into(),
            cancelled_by: PHYSICIAN.into(),
        }
    );

    assert_refused!(
        store
            .cancel_order(order.order_id, "again", PHYSICIAN, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(commands(&*store, SITE_A).await.len(), 2);
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Cancelled
    );
}

// ---------------------------------------------------------------------------------
// 5. Release: an e-signature bound to the record as reviewed.
// ---------------------------------------------------------------------------------

async fn case_release_needs_a_complete_record(store: Arc<dyn Store>) {
    seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    assert_refused!(
        store
            .sign_release(&signature(&order, QA, hash), now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert!(record.signatures.is_empty());
    assert_eq!(record.order.state, BatchState::Ordered);
}

async fn case_release_is_bound_to_the_record_as_reviewed(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::AwaitingRelease
    );

    // QA reviews, then the site records one more thing before QA signs.
    let stale = reviewed_sha256(&*store, order.batch_id).await;
    ingest(
        &*store,
        SITE_A,
        &[log.record(order.batch_id, deviation("formulation"))],
    )
    .await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_refused!(
        store
            .sign_release(&signature(&order, QA, stale.clone()), now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert!(store
        .batch_record(order.batch_id)
        .await
        .expect("record")
        .signatures
        .is_empty());

    let current = reviewed_sha256(&*store, order.batch_id).await;
    assert_ne!(current, stale);
    let signed = signature(&order, QA, current.clone());
    let released = store
        .sign_release(&signed, now())
        .await
        .expect("sign release");
    assert_eq!(released.state, BatchState::Released);
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Released
    );
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures, vec![signed.clone()]);

    let queued = commands(&*store, SITE_A).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!((queued[1].seq, queued[1].batch_id), (2, order.batch_id));
    assert_eq!(
        queued[1].kind,
        CommandKind::ReleaseDecision {
            signature_id: signed.signature_id,
            meaning: ReleaseMeaning::Released,
            signer: QA.into(),
            signer_name: signed.signer_name.clone(),
            signed_at: signed.signed_at,
            record_sha256: current.clone(),
            reason: signed.reason.clone(),
        }
    );

    // A second signature on a released batch is refused.
    assert_refused!(
        store
            .sign_release(&signature(&order, QA, current), now())
            .await,
        Error::FailedPrecondition
    );
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures, vec![signed]);
    assert_eq!(commands(&*store, SITE_A).await.len(), 2);
}

async fn case_an_operator_may_not_release_their_own_batch(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    // TECHNICIAN recorded this batch's events.
    assert_refused!(
        store
            .sign_release(&signature(&order, TECHNICIAN, hash.clone()), now())
            .await,
        Error::PermissionDenied
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert!(store
        .batch_record(order.batch_id)
        .await
        .expect("record")
        .signatures
        .is_empty());
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::AwaitingRelease
    );

    // The same record signed by someone independent goes through.
    store
        .sign_release(&signature(&order, QA, hash), now())
        .await
        .expect("independent QA signs");
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Released
    );
}

/// The decision queued for the site carries the signature exactly as the hub keeps it.
async fn case_release_decision_matches_the_stored_signature(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    // A signing time with digits below the microsecond, as `Utc::now()` gives on
    // Linux (the release service signs with `Utc::now()`).
    let mut signed = signature(&order, QA, hash);
    signed.signed_at = now() + Duration::nanoseconds(789);
    store
        .sign_release(&signed, now())
        .await
        .expect("sign release");

    let kept = store
        .batch_record(order.batch_id)
        .await
        .expect("record")
        .signatures;
    assert_eq!(kept.len(), 1);
    let queued = commands(&*store, SITE_A).await;
    let sent = match &queued.last().expect("a queued command").kind {
        CommandKind::ReleaseDecision {
            signature_id,
            signed_at,
            ..
        } => (*signature_id, *signed_at),
        other => panic!("expected a release decision, got {other:?}"),
    };
    // The hub's copy and the site's copy of one signature carry the same time, even
    // when the caller's clock has nanoseconds the store does not keep.
    assert_eq!(
        sent,
        (kept[0].signature_id, kept[0].signed_at),
        "the site's copy of the signature differs from the hub's"
    );
}

// ---------------------------------------------------------------------------------
// 6. Site enrollment tokens.
// ---------------------------------------------------------------------------------

async fn case_expired_enrollment_token_is_refused(store: Arc<dyn Store>) {
    let expired_at = now() - Duration::minutes(1);
    store
        .add_site("site-late", "late", "token-late", expired_at, ADMIN)
        .await
        .expect("add site");

    // Before its expiry the token was good, so expiry is what refuses it.
    let earlier = expired_at - Duration::minutes(5);
    let site = store
        .site_for_token("token-late", earlier)
        .await
        .expect("token valid before expiry");
    assert_eq!(site.site_id, "site-late");

    assert_refused!(
        store.site_for_token("token-late", now()).await,
        Error::PermissionDenied
    );
    assert_refused!(
        store
            .complete_enrollment("site-late", "token-late", &cert("cert-late"), now())
            .await,
        Error::PermissionDenied
    );
    let site = store.site("site-late").await.expect("site");
    assert_eq!(site.status, SiteStatus::Pending);
    assert_eq!(site.cert_sha256, None);
}

async fn case_enrollment_token_works_once(store: Arc<dyn Store>) {
    store
        .add_site(
            "site-new",
            "new",
            "token-new",
            now() + Duration::hours(1),
            ADMIN,
        )
        .await
        .expect("add site");
    let pending = store
        .site_for_token("token-new", now())
        .await
        .expect("token is valid");
    assert_eq!(
        (pending.site_id.as_str(), pending.status),
        ("site-new", SiteStatus::Pending)
    );

    let enrolled = store
        .complete_enrollment("site-new", "token-new", &cert("cert-1"), now())
        .await
        .expect("enroll");
    assert_eq!(enrolled.status, SiteStatus::Active);
    assert_eq!(enrolled.cert_sha256.as_deref(), Some("cert-1"));

    assert_refused!(
        store
            .complete_enrollment("site-new", "token-new", &cert("cert-2"), now())
            .await,
        Error::PermissionDenied
    );
    assert_refused!(
        store.site_for_token("token-new", now()).await,
        Error::PermissionDenied
    );
    let site = store.site("site-new").await.expect("site");
    assert_eq!(
        site.cert_sha256.as_deref(),
        Some("cert-1"),
        "the second attempt did not replace the certificate"
    );
    assert_eq!(site.status, SiteStatus::Active);
}

async fn case_adding_a_site_twice_is_refused(store: Arc<dyn Store>) {
    let expires = now() + Duration::hours(1);
    store
        .add_site("site-dup", "First", "token-1", expires, ADMIN)
        .await
        .expect("add site");
    assert_refused!(
        store
            .add_site("site-dup", "Second", "token-2", expires, ADMIN)
            .await,
        Error::AlreadyExists
    );

    let sites = store.list_sites().await.expect("list sites");
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].name, "First");
    assert_refused!(
        store.site_for_token("token-2", now()).await,
        Error::PermissionDenied
    );
    let site = store
        .site_for_token("token-1", now())
        .await
        .expect("the first token still works");
    assert_eq!(site.site_id, "site-dup");
}

// ---------------------------------------------------------------------------------
// 7. Sessions.
// ---------------------------------------------------------------------------------

async fn case_sessions_expire_and_end(store: Arc<dyn Store>) {
    add_user(&*store, PHYSICIAN, Role::Physician).await;
    add_user(&*store, QA, Role::Qa).await;
    let start = now();
    store
        .create_session("session-1", PHYSICIAN, start + Duration::hours(1))
        .await
        .expect("create session");
    store
        .create_session("session-2", QA, start + Duration::hours(1))
        .await
        .expect("create session");

    let user = store
        .session_user("session-1", start)
        .await
        .expect("live session");
    assert_eq!(
        (user.username.as_str(), user.role),
        (PHYSICIAN, Role::Physician)
    );
    assert_refused!(
        store
            .session_user("session-1", start + Duration::hours(2))
            .await,
        Error::NotFound
    );
    assert_refused!(
        store.session_user("session-unknown", start).await,
        Error::NotFound
    );

    store
        .delete_session("session-1")
        .await
        .expect("delete session");
    assert_refused!(
        store.session_user("session-1", start).await,
        Error::NotFound
    );
    let other = store
        .session_user("session-2", start)
        .await
        .expect("other sessions live on");
    assert_eq!(other.username, QA);
}

// ---------------------------------------------------------------------------------
// 8. Recipes: published versions are immutable.
// ---------------------------------------------------------------------------------

async fn case_recipe_versions_are_immutable(store: Arc<dyn Store>) {
    let recipe = shipped_recipe();
    store.publish_recipe(&recipe).await.expect("publish");
    store
        .publish_recipe(&recipe)
        .await
        .expect("publishing the same document again is fine");
    assert_eq!(store.list_recipes().await.expect("list").len(), 1);

    let mut changed = recipe.clone();
    changed.title = "Changed after publication".into();
    assert_refused!(
        store.publish_recipe(&changed).await,
        Error::FailedPrecondition
    );
    let stored = store.recipe(RECIPE_ID, 1).await.expect("v1");
    assert_eq!(stored.sha256, recipe.sha256());
    assert_eq!(stored.recipe.title, recipe.title);
    assert_eq!(store.list_recipes().await.expect("list").len(), 1);

    // The change is welcome as a new version.
    changed.version = 2;
    store.publish_recipe(&changed).await.expect("publish v2");
    let latest = store.latest_recipe(RECIPE_ID).await.expect("latest");
    assert_eq!(
        (latest.recipe.version, latest.sha256.as_str()),
        (2, changed.sha256().as_str())
    );
    let v1 = store.recipe(RECIPE_ID, 1).await.expect("v1");
    assert_eq!(v1.sha256, recipe.sha256());
}

// ---------------------------------------------------------------------------------
// 9. Durability: what was committed is there after the store is closed and reopened.
// ---------------------------------------------------------------------------------

/// `reopen` closes the store it is given and opens the same database again.
async fn case_data_survives_reopening(
    store: Arc<dyn Store>,
    reopen: impl AsyncFnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let sent = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
        log.record(order.batch_id, step_completed("receipt")),
    ];
    ingest(&*store, SITE_A, &sent).await;
    store.ack_commands(SITE_A, 1).await.expect("ack");
    store
        .create_session("session-1", QA, now() + Duration::hours(1))
        .await
        .expect("session");
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_eq!(
        (
            before.site.acked_event_seq,
            before.site.last_command_seq,
            before.site.acked_command_seq
        ),
        (3, 1, 1)
    );

    let store = reopen(store).await;

    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert_eq!(stored_events(&*store, order.batch_id).await, sent);
    assert_eq!(
        store.recipe(RECIPE_ID, 1).await.expect("recipe").sha256,
        recipe.sha256()
    );
    assert_eq!(store.user(QA).await.expect("user").role, Role::Qa);
    assert_eq!(
        store
            .session_user("session-1", now())
            .await
            .expect("session")
            .username,
        QA
    );
    assert_eq!(
        store.site(SITE_B).await.expect("site").status,
        SiteStatus::Active
    );

    // The cursors carry on where they were: repeats are repeats, the next seq is 4.
    let next = log.record(order.batch_id, step_started("selection"));
    let resent: Vec<SiteEvent> = sent.iter().cloned().chain([next]).collect();
    let done = ingest(&*store, SITE_A, &resent).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 4,
            new_events: 1
        }
    );
    let second = order_at(&*store, SITE_A).await;
    assert_ne!(second.coi, order.coi, "COI serials carry on too");
    let seqs: Vec<u64> = commands(&*store, SITE_A)
        .await
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

// ---------------------------------------------------------------------------------
// Site lifecycle and certificate renewal.
// ---------------------------------------------------------------------------------

async fn case_suspending_a_site_flags_its_running_batches_for_qa(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let running = order_at(&*store, SITE_A).await;
    let waiting = order_at(&*store, SITE_A).await;
    let elsewhere = order_at(&*store, SITE_B).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(running.batch_id, accepted(&running, &recipe)),
            log.record(running.batch_id, step_started("receipt")),
        ],
    )
    .await;
    let audited_before = store.audit_count("batch.flagged").await.expect("count");
    let anomalies_before = store
        .order(running.order_id)
        .await
        .expect("order")
        .progress
        .anomalies
        .len();

    let site = store
        .set_site_status(
            SITE_A,
            SiteStatus::Suspended,
            ADMIN,
            "inspection finding 12",
        )
        .await
        .expect("suspend");
    assert_eq!(site.status, SiteStatus::Suspended);

    let flagged = store.order(running.order_id).await.expect("order");
    assert_eq!(
        flagged.state,
        BatchState::InProcess,
        "suspension decides nothing"
    );
    assert_eq!(
        flagged.progress.anomalies.len(),
        anomalies_before + 1,
        "{:?}",
        flagged.progress
    );
    let flag = flagged.progress.anomalies.last().expect("the flag");
    assert!(flag.contains("site suspended"), "{flag}");
    assert!(flag.contains("inspection finding 12"), "{flag}");
    assert!(flag.contains("QA decision"), "{flag}");
    for untouched in [waiting.order_id, elsewhere.order_id] {
        let order = store.order(untouched).await.expect("order");
        assert!(
            order.progress.anomalies.is_empty(),
            "a batch not running at the suspended site is not flagged: {:?}",
            order.progress
        );
    }
    assert_eq!(
        store.audit_count("batch.flagged").await.expect("count"),
        audited_before + 1
    );
    assert_eq!(store.audit_count("site.suspended").await.expect("count"), 1);
}

async fn case_a_site_ceases_only_when_its_batches_are_closed_and_for_good(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[log.record(order.batch_id, accepted(&order, &recipe))],
    )
    .await;

    // An open batch keeps the site from ceasing; the refusal names it and changes nothing.
    let refused = store
        .set_site_status(SITE_A, SiteStatus::Ceased, ADMIN, "programme closed")
        .await
        .expect_err("an open batch blocks cessation");
    match &refused {
        Error::FailedPrecondition(why) => {
            assert!(why.contains(&order.batch_id.to_string()), "{why}")
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert_eq!(
        store.site(SITE_A).await.expect("site").status,
        SiteStatus::Active
    );
    assert_eq!(store.audit_count("site.ceased").await.expect("count"), 0);

    store
        .cancel_order(order.order_id, "site closing", PHYSICIAN, now())
        .await
        .expect("cancel");
    let ceased = store
        .set_site_status(SITE_A, SiteStatus::Ceased, ADMIN, "programme closed")
        .await
        .expect("cease");
    assert_eq!(ceased.status, SiteStatus::Ceased);
    assert_eq!(store.audit_count("site.ceased").await.expect("count"), 1);

    // Final: no resume, no suspend, no orders; its records are still there.
    for to in [
        SiteStatus::Active,
        SiteStatus::Suspended,
        SiteStatus::Ceased,
    ] {
        assert_refused!(
            store.set_site_status(SITE_A, to, ADMIN, "try again").await,
            Error::FailedPrecondition
        );
    }
    assert_refused!(
        store.create_order(&new_order(SITE_A), now()).await,
        Error::FailedPrecondition
    );
    assert_eq!(
        store
            .batch_events(order.batch_id)
            .await
            .expect("events")
            .len(),
        1,
        "a ceased site's records stay readable"
    );
    assert!(store.verify_audit().await.expect("read").is_ok());
}

async fn case_a_renewed_certificate_replaces_the_old_one_when_first_used(store: Arc<dyn Store>) {
    seed(&*store).await;
    let before = store.site(SITE_A).await.expect("site");
    assert_eq!(before.cert_ca_sha256.as_deref(), Some("ca-1"));
    assert!(before.cert_not_after.is_some());

    let renewed = IssuedCert {
        sha256: "cert-renewed".into(),
        not_after: now() + Duration::days(800),
        ca_sha256: "ca-2".into(),
    };
    let pending = store
        .record_renewed_certificate(SITE_A, &renewed, now())
        .await
        .expect("record renewal");
    // Until the site uses it, both are good: the old one is still the site's.
    assert_eq!(pending.cert_sha256, before.cert_sha256);
    assert_eq!(pending.pending_cert_sha256.as_deref(), Some("cert-renewed"));

    assert_refused!(
        store
            .promote_pending_certificate(SITE_A, "cert-other", now())
            .await,
        Error::FailedPrecondition
    );
    let promoted = store
        .promote_pending_certificate(SITE_A, "cert-renewed", now())
        .await
        .expect("promote");
    assert_eq!(promoted.cert_sha256.as_deref(), Some("cert-renewed"));
    assert_eq!(promoted.cert_ca_sha256.as_deref(), Some("ca-2"));
    assert_eq!(promoted.cert_not_after, Some(renewed.not_after));
    assert_eq!(promoted.pending_cert_sha256, None);
    assert_eq!(
        store
            .audit_count("site.certificate_issued")
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        store
            .audit_count("site.certificate_replaced")
            .await
            .expect("count"),
        1
    );

    // A suspended site gets no new certificate.
    store
        .set_site_status(SITE_B, SiteStatus::Suspended, ADMIN, "audit")
        .await
        .expect("suspend");
    assert_refused!(
        store
            .record_renewed_certificate(SITE_B, &renewed, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(
        store.site(SITE_B).await.expect("site").pending_cert_sha256,
        None
    );
}

async fn case_one_message_may_repeat_and_correct_its_own_records(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let first = log.record(order.batch_id, accepted(&order, &recipe));
    let correction = log.record(
        order.batch_id,
        EventKind::Correction {
            corrects_seq: 1,
            reason: "typed the wrong lot".into(),
            field: "note".into(),
            new_value: "lot 7".into(),
        },
    );
    // The first record twice (a resend inside one message), then a correction of it.
    let ingested = ingest(&*store, SITE_A, &[first.clone(), first.clone(), correction]).await;
    assert_eq!((ingested.acked_event_seq, ingested.new_events), (2, 2));
    let stored = store.order(order.order_id).await.expect("order");
    assert!(
        stored
            .progress
            .anomalies
            .iter()
            .all(|a| !a.contains("not a record of this batch")),
        "the correction found the record it corrects in the same message: {:?}",
        stored.progress
    );
    assert_eq!(
        store.audit_count("record.corrected").await.expect("count"),
        1
    );

    // A changed repeat inside one message is refused, and nothing of it is stored.
    let next = log.record(order.batch_id, step_started("collection"));
    let mut changed = next.clone();
    changed.recorded_by = "someone-else".into();
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[next, changed]), now())
            .await,
        Error::Protocol
    );
    assert_eq!(store.site(SITE_A).await.expect("site").acked_event_seq, 2);
}

async fn case_concurrent_ingests_commit_together_and_a_refused_one_changes_nothing(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let sites: Vec<String> = (0..8).map(|i| format!("site-g{i}")).collect();
    let mut orders = Vec::new();
    for site in &sites {
        add_active_site(&*store, site).await;
        orders.push(order_at(&*store, site).await);
    }
    // A message whose first event is good and changes its batch's state (audited),
    // then leaves a gap: refused whole, its audit entries with it, and the entries
    // of the messages committed with it still chain without them.
    let late = "site-g8".to_owned();
    add_active_site(&*store, &late).await;
    let late_order = order_at(&*store, &late).await;
    let mut late_log = SiteLog::new();
    let good = late_log.record(late_order.batch_id, accepted(&late_order, &recipe));
    late_log.record(late_order.batch_id, step_started("collection"));
    let after_gap = late_log.record(late_order.batch_id, step_started("receipt"));
    // Every site sends its first event at the same moment, and two sites send a
    // message with a gap: the SQLite backend commits whatever arrives together in one
    // transaction, each message in a savepoint of its own. The half-good message
    // goes second, so that it is not alone in its group (the first caller finds the
    // write lock free and commits alone) and messages follow it in the same group.
    let mut tasks = Vec::new();
    let mut half_good = None;
    for (i, (site, order)) in sites.iter().zip(&orders).enumerate() {
        let event = SiteLog::new().record(order.batch_id, accepted(order, &recipe));
        let (shared, site) = (store.clone(), site.clone());
        tasks.push(tokio::spawn(async move {
            shared
                .ingest_events(&site, &received(&[event]), now())
                .await
        }));
        if i == 0 {
            let (store, site) = (store.clone(), late.clone());
            let events = [good.clone(), after_gap.clone()];
            half_good = Some(tokio::spawn(async move {
                store.ingest_events(&site, &received(&events), now()).await
            }));
        }
    }
    let half_good = half_good.expect("spawned");
    let mut gap_log = SiteLog::new();
    gap_log.record(orders[0].batch_id, accepted(&orders[0], &recipe));
    gap_log.record(orders[0].batch_id, step_started("collection"));
    let gap = gap_log.record(orders[0].batch_id, step_started("receipt"));
    let refused = {
        let (store, site) = (store.clone(), sites[0].clone());
        tokio::spawn(async move { store.ingest_events(&site, &received(&[gap]), now()).await })
    };
    for task in tasks {
        let ingested = task
            .await
            .expect("task")
            .expect("a valid message is stored");
        assert_eq!(ingested.acked_event_seq, 1);
    }
    assert_refused!(refused.await.expect("task"), Error::Protocol);
    assert_refused!(half_good.await.expect("task"), Error::Protocol);
    for (site, order) in sites.iter().zip(&orders) {
        assert_eq!(store.site(site).await.expect("site").acked_event_seq, 1);
        let events = store.batch_events(order.batch_id).await.expect("events");
        assert_eq!(events.len(), 1, "site {site}: {events:?}");
    }
    assert_eq!(store.site(&late).await.expect("site").acked_event_seq, 0);
    assert!(store
        .batch_events(late_order.batch_id)
        .await
        .expect("events")
        .is_empty());
    assert_eq!(
        store.order(late_order.order_id).await.expect("order").state,
        BatchState::Ordered,
        "the refused message's state change is not kept"
    );
    assert_eq!(
        store
            .audit_count("site_events.replicated")
            .await
            .expect("count"),
        8
    );
    assert!(store.verify_audit().await.expect("read").is_ok());
}

// ---------------------------------------------------------------------------------
// 11. Scheduling: capacity, atomic booking, re-planning, the vein-to-vein clock.
// ---------------------------------------------------------------------------------

/// A capacity with `slots` collection slots a day and `systems` processing systems,
/// open every day from 00:00 to 23:00 (so any date can be booked).
fn capacity(slots: u32, systems: u32) -> Capacity {
    let mut capacity = Capacity::example();
    capacity.working_days = (0..7)
        .filter_map(|d| chrono::Weekday::try_from(d).ok())
        .collect();
    capacity.opens = chrono::NaiveTime::MIN;
    capacity.closes = chrono::NaiveTime::from_hms_opt(23, 0, 0).expect("valid time");
    capacity.collection_slots_per_day = slots;
    capacity
        .instruments
        .insert("closed-processing-system".into(), systems);
    capacity
}

fn order_for(site_id: &str, patient: &str, date: chrono::NaiveDate) -> NewOrder {
    NewOrder {
        patient_pseudonym: patient.into(),
        requested_collection_date: date.to_string(),
        ..new_order(site_id)
    }
}

async fn case_concurrent_bookings_of_the_last_slot_give_one_success(store: Arc<dyn Store>) {
    seed(&*store).await;
    store
        .set_capacity(SITE_A, &capacity(1, 8), ADMIN, now())
        .await
        .expect("declare capacity");
    let date = now().date_naive() + Duration::days(5);
    // Eight physicians book the one slot of the day at the same moment.
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_order(&order_for(SITE_A, &format!("PAT-{i:04}"), date), now())
                .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let booked: Vec<&Order> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(booked.len(), 1, "exactly one booking wins: {results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        match refused {
            Error::Unavailable(why) => assert!(
                why.contains(&format!("every collection slot on {date} is taken")),
                "{why}"
            ),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    // The losers left nothing behind: one order, one booking, one slot held.
    assert_eq!(
        store.list_orders(None, None).await.expect("orders").len(),
        1
    );
    let bookings = store.bookings(SITE_A).await.expect("bookings");
    assert_eq!(bookings.len(), 1);
    assert_eq!(
        (bookings[0].order_id, bookings[0].collection_date),
        (booked[0].order_id, date)
    );
    let audit = store
        .audit_entries(Some(booked[0].batch_id))
        .await
        .expect("audit");
    assert!(
        audit[0]
            .reason
            .contains(&format!("booked collection slot 1 on {date}")),
        "{:?}",
        audit[0]
    );
}

async fn case_cancelling_frees_a_slot_and_rescheduling_moves_it(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let mut declared = capacity(1, 8);
    let date = now().date_naive() + Duration::days(5);
    declared.closures.push(carrel_hub::schedule::Closure {
        from: date + Duration::days(20),
        to: date + Duration::days(22),
        reason: "clean-room requalification".into(),
    });
    store
        .set_capacity(SITE_A, &declared, ADMIN, now())
        .await
        .expect("declare");
    let first = store
        .create_order(&order_for(SITE_A, "PAT-0001", date), now())
        .await
        .expect("book");
    assert_refused!(
        store
            .create_order(&order_for(SITE_A, "PAT-0002", date), now())
            .await,
        Error::Unavailable
    );
    store
        .cancel_order(first.order_id, "patient unwell", PHYSICIAN, now())
        .await
        .expect("cancel");
    assert!(
        store.bookings(SITE_A).await.expect("bookings").is_empty(),
        "cancel frees the booking"
    );
    let second = store
        .create_order(&order_for(SITE_A, "PAT-0002", date), now())
        .await
        .expect("the freed slot books");

    // Moving it: to a closed day is refused and changes nothing; to a free day moves
    // it, audited, and frees the old slot.
    let before = store
        .booking(second.order_id)
        .await
        .expect("read")
        .expect("booked");
    let closed = date + Duration::days(21);
    match store
        .reschedule_order(second.order_id, closed, "patient asked", PHYSICIAN, now())
        .await
    {
        Err(Error::Unavailable(why)) => {
            assert!(why.contains("clean-room requalification"), "{why}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(
        store.booking(second.order_id).await.expect("read"),
        Some(before.clone())
    );
    let later = date + Duration::days(2);
    let moved = store
        .reschedule_order(second.order_id, later, "patient asked", PHYSICIAN, now())
        .await
        .expect("reschedule");
    assert_eq!(moved.collection_date, later);
    let booked = store.booked(SITE_A).await.expect("booked");
    assert!(!booked.slots.contains_key(&date) && booked.slots.contains_key(&later));
    let audit = store
        .audit_entries(Some(second.batch_id))
        .await
        .expect("audit");
    let entry = audit
        .iter()
        .find(|e| e.action == "order.rescheduled")
        .expect("audited");
    assert_eq!(
        (entry.old_value.as_str(), entry.new_value.as_str()),
        (
            format!("{date} slot 1").as_str(),
            format!("{later} slot 1").as_str()
        )
    );

    // Once the collection has started, the date cannot move.
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(second.batch_id, accepted(&second, &recipe)),
            log.record(second.batch_id, step_started("collection")),
        ],
    )
    .await;
    assert_refused!(
        store
            .reschedule_order(
                second.order_id,
                later + Duration::days(1),
                "late",
                PHYSICIAN,
                now()
            )
            .await,
        Error::FailedPrecondition
    );
}

/// Records the given steps of a booking as the site would: started and completed as
/// booked (`completed`), or only started (`running`).
fn on_plan(
    log: &mut SiteLog,
    order: &Order,
    recipe: &Recipe,
    booking: &carrel_hub::schedule::Booking,
    completed: &[&str],
    running: Option<&str>,
) -> Vec<SiteEvent> {
    let mut events = vec![log.record(order.batch_id, accepted(order, recipe))];
    for step in &booking.steps {
        if completed.contains(&step.step_id.as_str()) || running == Some(step.step_id.as_str()) {
            let mut started = log.record(order.batch_id, step_started(&step.step_id));
            // Site clocks stamp nanoseconds; the hub keeps microseconds.
            started.recorded_at = step.planned_start + Duration::nanoseconds(789);
            *log = resign(log, &mut started);
            events.push(started);
        }
        if completed.contains(&step.step_id.as_str()) {
            let mut done = log.record(order.batch_id, step_completed(&step.step_id));
            done.recorded_at = step.planned_end + Duration::nanoseconds(789);
            *log = resign(log, &mut done);
            events.push(done);
        }
    }
    events
}

/// After changing an event that was just recorded, chains the log to its new hash.
fn resign(log: &SiteLog, event: &mut SiteEvent) -> SiteLog {
    SiteLog {
        next_seq: log.next_seq,
        last_sha256: event.sha256(),
    }
}

async fn case_a_batch_running_long_pushes_the_bookings_behind_it(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let real_now = now();
    let past = real_now - Duration::days(12);
    store
        .set_capacity(SITE_A, &capacity(1, 1), ADMIN, past)
        .await
        .expect("declare");
    let shared = carrel_hub::grpc::Shared::new(
        store.clone(),
        carrel_hub::Config::default(),
        Arc::new(carrel_hub::pki::Ca::create("test CA").expect("CA")),
        tokio_util::sync::CancellationToken::new(),
    );
    // Twelve days ago, A, B and C were booked one behind the other on the site's one
    // processing system.
    let mut orders = Vec::new();
    for patient in ["PAT-A", "PAT-B", "PAT-C"] {
        let booked = store.booked(SITE_A).await.expect("booked");
        let plan = carrel_hub::schedule::propose(
            SITE_A,
            &capacity(1, 1),
            &recipe,
            &booked,
            past.date_naive(),
            past,
            1,
        )
        .pop()
        .expect("a date is free");
        let order = store
            .create_order(&order_for(SITE_A, patient, plan.collection_date), past)
            .await
            .expect("book");
        orders.push(order);
    }
    let booking = |i: usize| {
        let store = store.clone();
        let order_id = orders[i].order_id;
        async move {
            store
                .booking(order_id)
                .await
                .expect("read")
                .expect("booked")
        }
    };
    let (a, b, c) = (booking(0).await, booking(1).await, booking(2).await);
    // A ran on plan until expansion, which has been running for days past its plan.
    // B was collected and received on plan, and waits for the processing system.
    let mut log = SiteLog::new();
    let done_a = [
        "collection",
        "receipt",
        "selection",
        "activation",
        "transduction",
    ];
    ingest(
        &*store,
        SITE_A,
        &on_plan(
            &mut log,
            &orders[0],
            &recipe,
            &a,
            &done_a,
            Some("expansion"),
        ),
    )
    .await;
    ingest(
        &*store,
        SITE_A,
        &on_plan(
            &mut log,
            &orders[1],
            &recipe,
            &b,
            &["collection", "receipt"],
            None,
        ),
    )
    .await;

    // Two hub processes re-plan at the same moment: each delay is announced once.
    let replica = carrel_hub::grpc::Shared::new(
        store.clone(),
        carrel_hub::Config::default(),
        Arc::new(carrel_hub::pki::Ca::create("test CA").expect("CA")),
        tokio_util::sync::CancellationToken::new(),
    );
    let (done, other) = tokio::join!(
        carrel_hub::service::schedule::replan_all(&shared, real_now),
        carrel_hub::service::schedule::replan_all(&replica, real_now),
    );
    let (done, other) = (done.expect("replan"), other.expect("replan"));
    assert_eq!(done.delays + other.delays, 3, "{done:?} {other:?}");
    assert!(done.moved == 3 || other.moved == 3, "{done:?} {other:?}");
    let (a2, b2, c2) = (booking(0).await, booking(1).await, booking(2).await);
    let a_end = a2.expected_end();
    assert_eq!(
        a_end,
        real_now + Duration::hours(6),
        "A's harvest and formulation follow now"
    );
    let selection = |b: &carrel_hub::schedule::Booking| {
        b.steps
            .iter()
            .find(|s| s.step_id == "selection")
            .expect("step")
            .expected_start
    };
    assert_eq!(selection(&b2), a_end, "B's selection waits for A");
    assert_eq!(
        selection(&c2),
        b2.expected_end(),
        "C's selection waits for B"
    );
    assert_eq!(
        c2.steps[0].expected_start, c.steps[0].planned_start,
        "C's collection stays booked"
    );

    let delayed = |batch_id: Uuid| {
        let store = store.clone();
        async move {
            store
                .audit_entries(Some(batch_id))
                .await
                .expect("audit")
                .into_iter()
                .filter(|e| e.action == "order.delayed")
                .collect::<Vec<_>>()
        }
    };
    let a_delay = delayed(orders[0].batch_id).await;
    assert!(
        a_delay.len() == 1 && a_delay[0].reason.contains("step expansion"),
        "{a_delay:?}"
    );
    let b_delay = delayed(orders[1].batch_id).await;
    assert!(
        b_delay.len() == 1 && b_delay[0].reason.contains(&orders[0].batch_id.to_string()),
        "B names A: {b_delay:?}"
    );
    let c_delay = delayed(orders[2].batch_id).await;
    assert!(
        c_delay.len() == 1 && c_delay[0].reason.contains(&orders[1].batch_id.to_string()),
        "C names B: {c_delay:?}"
    );

    // Nothing new: nothing moves and nothing is announced again.
    let again = carrel_hub::service::schedule::replan_all(&shared, real_now)
        .await
        .expect("replan");
    assert_eq!((again.moved, again.delays), (0, 0));

    // C's physician moves C's collection to the first date that fits now: C is on plan again.
    let record = store
        .batch_record(orders[2].batch_id)
        .await
        .expect("record");
    let before = carrel_hub::clock::clock(&record, Some(&c2), &Default::default(), real_now);
    assert!(before.delay.is_some());
    let mut others = store.bookings(SITE_A).await.expect("bookings");
    others.retain(|b| b.order_id != orders[2].order_id);
    let free = carrel_hub::schedule::propose(
        SITE_A,
        &capacity(1, 1),
        &recipe,
        &carrel_hub::store::schedule::booked_from(&others),
        real_now.date_naive(),
        real_now,
        1,
    )
    .pop()
    .expect("a date is free");
    let moved = store
        .reschedule_order(
            orders[2].order_id,
            free.collection_date,
            "delayed behind B",
            PHYSICIAN,
            real_now,
        )
        .await
        .expect("reschedule");
    assert!(selection(&moved) >= b2.expected_end());
    // A re-planning pass that read C before the move cannot write its old plan over
    // the new booking, nor announce a delay for it.
    let stale = carrel_hub::schedule::Moved {
        order_id: orders[2].order_id,
        steps: c2
            .steps
            .iter()
            .map(|s| (s.step_id.clone(), s.expected_start, s.expected_end))
            .collect(),
        cause: "stale".into(),
    };
    let notice = carrel_hub::store::schedule::DelayNotice {
        replaces: None,
        expected_release: real_now + Duration::days(30),
        planned_release: real_now,
        reason: "stale".into(),
    };
    assert!(!store
        .store_replan(&c2, &stale, Some(&notice), real_now)
        .await
        .expect("store"));
    assert_eq!(booking(2).await, moved);
    let after = carrel_hub::clock::clock(&record, Some(&moved), &Default::default(), real_now);
    assert_eq!(
        (after.delay.clone(), after.expected_release),
        (None, after.planned_release),
        "{after:?}"
    );
    let third = carrel_hub::service::schedule::replan_all(&shared, real_now)
        .await
        .expect("replan");
    assert_eq!(third.moved, 0, "the new booking fits");
}

async fn case_the_clock_reads_milestones_from_the_record(store: Arc<dyn Store>) {
    use carrel_hub::clock::{clock, summarize, Milestone};
    let recipe = seed(&*store).await;
    let mut log = SiteLog::new();
    let mut clocks = Vec::new();
    // Requested a few days from now, so the plan is ahead of the records whenever
    // this runs.
    let requested = now().date_naive() + Duration::days(4);
    for i in 0..2 {
        let order = store
            .create_order(&order_for(SITE_A, &format!("PAT-{i:04}"), requested), now())
            .await
            .expect("create order");
        let mut events = complete_record(&mut log, &order, &recipe);
        ingest(&*store, SITE_A, &events).await;
        let sha = reviewed_sha256(&*store, order.batch_id).await;
        store
            .sign_release(&signature(&order, QA, sha), now())
            .await
            .expect("sign");
        let bedside: Vec<SiteEvent> = recipe
            .bedside_checkpoints
            .iter()
            .map(|c| log.record(order.batch_id, matched_scan(&order, &c.id)))
            .collect();
        ingest(&*store, SITE_A, &bedside).await;
        events.extend(bedside);
        let record = store.batch_record(order.batch_id).await.expect("record");
        let at = |pick: &dyn Fn(&EventKind) -> bool| {
            events
                .iter()
                .rev()
                .find(|e| pick(&e.kind))
                .map(|e| e.recorded_at.trunc_subsecs(6))
                .expect("event")
        };
        let c = clock(&record, None, &Default::default(), now());
        let collected = at(
            &|k| matches!(k, EventKind::StepCompleted { step_id, .. } if step_id == "collection"),
        );
        let infused = at(
            &|k| matches!(k, EventKind::CustodyScan { checkpoint_id, .. } if checkpoint_id == "infusion"),
        );
        assert_eq!(
            c.milestone(Milestone::Ordered).actual,
            Some(order.created_at)
        );
        assert_eq!(c.milestone(Milestone::Collection).actual, Some(collected));
        assert_eq!(
            c.milestone(Milestone::ManufacturingEnd).actual,
            Some(at(
                &|k| matches!(k, EventKind::StepCompleted { step_id, .. } if step_id == "formulation")
            ))
        );
        assert_eq!(
            c.milestone(Milestone::Release).actual,
            Some(record.signatures[0].signed_at)
        );
        assert_eq!(c.milestone(Milestone::Infusion).actual, Some(infused));
        assert_eq!(c.vein_to_vein, Some(infused - collected));
        // Planned from the requested date (no booking): collection at 08:00 plus 3 h.
        assert_eq!(
            c.milestone(Milestone::Collection).planned,
            requested.and_hms_opt(11, 0, 0).expect("time").and_utc()
        );
        assert_eq!((c.released_on_time, c.delay.clone()), (Some(true), None));
        clocks.push(c);
    }
    let summary = summarize(&clocks);
    let mut spans: Vec<Duration> = clocks.iter().filter_map(|c| c.vein_to_vein).collect();
    spans.sort();
    assert_eq!(
        (
            summary.orders,
            summary.open,
            summary.released,
            summary.released_on_time
        ),
        (2, 0, 2, 2)
    );
    assert_eq!(summary.median_vein_to_vein, Some((spans[0] + spans[1]) / 2));
    assert_eq!(summary.on_time_share(), Some(1.0));
}

async fn case_two_bookings_racing_for_the_last_instrument_give_one_success(store: Arc<dyn Store>) {
    seed(&*store).await;
    // Plenty of slots, one processing system: orders on two different days would
    // both need it for most of the same nine days.
    store
        .set_capacity(SITE_B, &capacity(8, 1), ADMIN, now())
        .await
        .expect("declare capacity");
    let day = now().date_naive() + Duration::days(5);
    let attempts = [day, day + Duration::days(1)].map(|date| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_order(&order_for(SITE_B, &format!("PAT-{date}"), date), now())
                .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let refused = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("one refused");
    assert!(
        matches!(refused, Error::Unavailable(why) if why.contains("every closed-processing-system is booked")),
        "{refused:?}"
    );
    assert_eq!(store.bookings(SITE_B).await.expect("bookings").len(), 1);
}

async fn case_a_capacity_that_breaks_bookings_or_misses_open_orders_is_refused(
    store: Arc<dyn Store>,
) {
    seed(&*store).await;
    // An order placed before the site declared its capacity holds instruments the
    // hub knows nothing of: declaring is refused until it is past manufacturing.
    let unbooked = order_at(&*store, SITE_A).await;
    match store
        .set_capacity(SITE_A, &capacity(2, 4), ADMIN, now())
        .await
    {
        Err(Error::FailedPrecondition(why)) => {
            assert!(why.contains(&unbooked.order_id.to_string()), "{why}")
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert_eq!(store.capacity(SITE_A).await.expect("read"), None);
    store
        .cancel_order(unbooked.order_id, "entered twice", PHYSICIAN, now())
        .await
        .expect("cancel");
    store
        .set_capacity(SITE_A, &capacity(2, 4), ADMIN, now())
        .await
        .expect("declare once nothing is unbooked");

    // A closure over a booked collection is refused, naming the order; the capacity
    // stays as it was.
    let date = now().date_naive() + Duration::days(6);
    let booked = store
        .create_order(&order_for(SITE_A, "PAT-0009", date), now())
        .await
        .expect("book");
    let mut closing = capacity(2, 4);
    closing.closures.push(carrel_hub::schedule::Closure {
        from: date,
        to: date,
        reason: "inspection".into(),
    });
    match store.set_capacity(SITE_A, &closing, ADMIN, now()).await {
        Err(Error::FailedPrecondition(why)) => {
            assert!(why.contains(&booked.coi) && why.contains("closed"), "{why}")
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert_eq!(
        store.capacity(SITE_A).await.expect("read"),
        Some(capacity(2, 4))
    );
    let changes = store
        .audit_count("site.capacity_changed")
        .await
        .expect("count");
    assert_eq!(changes, 1, "only the accepted declaration is audited");
}

// ---------------------------------------------------------------------------------
// Backends.
// ---------------------------------------------------------------------------------

/// One `#[tokio::test]` per case, each on a fresh store from `$open`, which returns
/// a guard (kept alive for the test) and the store.
macro_rules! store_cases {
    ($backend:ident, $open:ident: $($case:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    let (_guard, store) = super::$open().await;
                    super::$case(store).await;
                }
            )+
        }
    };
}

async fn open_sqlite_at(path: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(path)
            .await
            .expect("open the SQLite store"),
    )
}

async fn open_sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_sqlite_at(&dir.path().join("hub.db")).await;
    (dir, store)
}

/// The PostgreSQL server the suite runs against. Without one the suite fails rather
/// than skips: a skipped backend would pass without having been tested.
fn postgres_server() -> PgConnectOptions {
    let url = std::env::var("CARREL_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "CARREL_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts \
             a throw-away PostgreSQL and sets it (or set it to a server where this user may \
             CREATE DATABASE)"
        )
    });
    PgConnectOptions::from_str(&url).expect("CARREL_TEST_POSTGRES_URL is a postgres:// URL")
}

/// A new, empty database on the test server (one per case; the server is thrown away
/// after the run, and the databases with it).
async fn fresh_postgres_database() -> PgConnectOptions {
    let server = postgres_server();
    let name = format!("carrel_test_{}", Uuid::new_v4().simple());
    let mut admin = server
        .connect()
        .await
        .expect("connect to CARREL_TEST_POSTGRES_URL (started by scripts/test?)");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create a test database");
    admin.close().await.expect("close the admin connection");
    server.database(&name)
}

async fn open_postgres_at(database: &PgConnectOptions) -> Arc<PgStore> {
    Arc::new(
        PgStore::connect(database.clone(), &PgOptions::default())
            .await
            .expect("open the PostgreSQL store"),
    )
}

async fn open_postgres() -> ((), Arc<dyn Store>) {
    let store = open_postgres_at(&fresh_postgres_database().await).await;
    ((), store)
}

// ---------------------------------------------------------------------------------
// 10. Tamper evidence: the site's hash-chained log, the hub's audit trail.
// ---------------------------------------------------------------------------------

async fn case_site_log_must_be_a_hash_chain(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let first = log.record(order.batch_id, accepted(&order, &recipe));
    ingest(&*store, SITE_A, std::slice::from_ref(&first)).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    // The next event names a previous hash that is not event 1's: a site log edited
    // after the fact. Refused, and nothing of it is stored.
    let mut forged = log.record(order.batch_id, step_started("collection"));
    forged.prev_sha256 = "ab".repeat(32);
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[forged]), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
}

async fn case_changes_are_audited_in_one_chain(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let sha = reviewed_sha256(&*store, order.batch_id).await;
    store
        .sign_release(&signature(&order, QA, sha), now())
        .await
        .expect("sign");

    let actions: Vec<String> = store
        .audit_entries(Some(order.batch_id))
        .await
        .expect("audit")
        .into_iter()
        .map(|e| format!("{} {}", e.actor, e.action))
        .collect();
    assert_eq!(
        actions,
        vec![
            format!("{PHYSICIAN} order.created"),
            format!("{SITE_A} batch.state_changed"),
            format!("{SITE_A} batch.state_changed"),
            format!("{SITE_A} batch.state_changed"),
            format!("{QA} release.signed"),
        ],
        "ordered -> accepted -> in_process -> awaiting_release, then the signature"
    );
    let all = store.audit_entries(None).await.expect("audit");
    assert!(all
        .iter()
        .any(|e| e.action == "site_events.replicated" && e.actor == SITE_A));
    assert!(all
        .iter()
        .any(|e| e.action == "user.created" && e.actor == ADMIN));
    let intact = store
        .verify_audit()
        .await
        .expect("read audit")
        .expect("the chain holds");
    assert_eq!(intact.entries, all.len() as u64);
    assert_eq!(intact.head_sha256, all.last().expect("entries").sha256);
}

async fn case_custody_mismatch_is_an_exception_and_audited(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let mismatch = EventKind::CustodyScan {
        checkpoint_id: "collection".into(),
        expected_coi: order.coi.clone(),
        scanned_coi: "G123426999999X".into(),
        verifiers: vec![TECHNICIAN.into(), "tech-two".into()],
        matched: false,
        location: "apheresis unit".into(),
    };
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(order.batch_id, accepted(&order, &recipe)),
            log.record(order.batch_id, mismatch),
        ],
    )
    .await;
    let current = store.order_by_batch(order.batch_id).await.expect("order");
    assert_eq!(current.progress.exceptions, vec![2]);
    assert!(current.progress.checkpoints_passed.is_empty());
    assert_eq!(
        store.audit_count("custody.mismatch").await.expect("count"),
        1
    );
}

async fn case_the_newest_link_claim_wins(store: Arc<dyn Store>) {
    seed(&*store).await;
    assert_eq!(
        store
            .site_link_generation(SITE_A)
            .await
            .expect("generation"),
        0
    );
    let first = store.claim_site_link(SITE_A, "hub-1").await.expect("claim");
    let second = store.claim_site_link(SITE_A, "hub-2").await.expect("claim");
    assert!(second > first, "a newer claim supersedes the older one");
    assert_eq!(
        store
            .site_link_generation(SITE_A)
            .await
            .expect("generation"),
        second
    );
    assert_eq!(
        store
            .site_link_generation(SITE_B)
            .await
            .expect("generation"),
        0,
        "claims are per site"
    );
}

async fn case_failed_sign_ins_count_until_a_success(store: Arc<dyn Store>) {
    seed(&*store).await;
    let fail = || {
        carrel_hub::audit::NewEntry::new(
            PHYSICIAN,
            "user.sign_in_failed",
            format!("user/{PHYSICIAN}"),
        )
        .reason("wrong password")
    };
    for _ in 0..3 {
        store.audit(&fail()).await.expect("audit");
    }
    let an_hour_ago = now() - Duration::hours(1);
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, an_hour_ago)
            .await
            .expect("count"),
        3
    );
    assert_eq!(
        store
            .sign_in_failures_since(QA, an_hour_ago)
            .await
            .expect("count"),
        0,
        "per user"
    );
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, now() + Duration::hours(1))
            .await
            .expect("count"),
        0,
        "only inside the window"
    );
    // A successful sign-in starts the count again.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .create_session(
            "session-after-failures",
            PHYSICIAN,
            now() + Duration::hours(1),
        )
        .await
        .expect("session");
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, an_hour_ago)
            .await
            .expect("count"),
        0
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.audit(&fail()).await.expect("audit");
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, an_hour_ago)
            .await
            .expect("count"),
        1
    );
}

store_cases!(sqlite, open_sqlite:
    case_two_bookings_racing_for_the_last_instrument_give_one_success,
    case_a_capacity_that_breaks_bookings_or_misses_open_orders_is_refused,
    case_concurrent_bookings_of_the_last_slot_give_one_success,
    case_cancelling_frees_a_slot_and_rescheduling_moves_it,
    case_a_batch_running_long_pushes_the_bookings_behind_it,
    case_the_clock_reads_milestones_from_the_record,
    case_ingest_stores_consecutive_events_and_advances_cursor,
    case_ingest_accepts_identical_repeats_and_changes_nothing,
    case_ingest_refuses_a_changed_repeat,
    case_ingest_refuses_a_gap_and_stores_nothing_of_the_call,
    case_ingest_refuses_events_for_another_sites_batch,
    case_ingest_refuses_events_for_a_batch_never_ordered,
    case_batch_awaits_release_exactly_when_its_record_is_complete,
    case_out_of_spec_result_is_kept_and_flagged,
    case_order_queues_a_batch_order_command,
    case_successive_orders_get_distinct_valid_cois,
    case_command_acks_are_bounded_by_what_was_issued,
    case_refused_orders_create_nothing,
    case_cancel_stops_a_batch_in_process,
    case_release_needs_a_complete_record,
    case_release_is_bound_to_the_record_as_reviewed,
    case_an_operator_may_not_release_their_own_batch,
    case_release_decision_matches_the_stored_signature,
    case_expired_enrollment_token_is_refused,
    case_enrollment_token_works_once,
    case_adding_a_site_twice_is_refused,
    case_sessions_expire_and_end,
    case_recipe_versions_are_immutable,
    case_site_log_must_be_a_hash_chain,
    case_changes_are_audited_in_one_chain,
    case_custody_mismatch_is_an_exception_and_audited,
    case_the_newest_link_claim_wins,
    case_failed_sign_ins_count_until_a_success,
    case_suspending_a_site_flags_its_running_batches_for_qa,
    case_a_site_ceases_only_when_its_batches_are_closed_and_for_good,
    case_a_renewed_certificate_replaces_the_old_one_when_first_used,
    case_concurrent_ingests_commit_together_and_a_refused_one_changes_nothing,
    case_one_message_may_repeat_and_correct_its_own_records,
);

store_cases!(postgres, open_postgres:
    case_two_bookings_racing_for_the_last_instrument_give_one_success,
    case_a_capacity_that_breaks_bookings_or_misses_open_orders_is_refused,
    case_concurrent_bookings_of_the_last_slot_give_one_success,
    case_cancelling_frees_a_slot_and_rescheduling_moves_it,
    case_a_batch_running_long_pushes_the_bookings_behind_it,
    case_the_clock_reads_milestones_from_the_record,
    case_ingest_stores_consecutive_events_and_advances_cursor,
    case_ingest_accepts_identical_repeats_and_changes_nothing,
    case_ingest_refuses_a_changed_repeat,
    case_ingest_refuses_a_gap_and_stores_nothing_of_the_call,
    case_ingest_refuses_events_for_another_sites_batch,
    case_ingest_refuses_events_for_a_batch_never_ordered,
    case_batch_awaits_release_exactly_when_its_record_is_complete,
    case_out_of_spec_result_is_kept_and_flagged,
    case_order_queues_a_batch_order_command,
    case_successive_orders_get_distinct_valid_cois,
    case_command_acks_are_bounded_by_what_was_issued,
    case_refused_orders_create_nothing,
    case_cancel_stops_a_batch_in_process,
    case_release_needs_a_complete_record,
    case_release_is_bound_to_the_record_as_reviewed,
    case_an_operator_may_not_release_their_own_batch,
    case_release_decision_matches_the_stored_signature,
    case_expired_enrollment_token_is_refused,
    case_enrollment_token_works_once,
    case_adding_a_site_twice_is_refused,
    case_sessions_expire_and_end,
    case_recipe_versions_are_immutable,
    case_site_log_must_be_a_hash_chain,
    case_changes_are_audited_in_one_chain,
    case_custody_mismatch_is_an_exception_and_audited,
    case_the_newest_link_claim_wins,
    case_failed_sign_ins_count_until_a_success,
    case_suspending_a_site_flags_its_running_batches_for_qa,
    case_a_site_ceases_only_when_its_batches_are_closed_and_for_good,
    case_a_renewed_certificate_replaces_the_old_one_when_first_used,
    case_concurrent_ingests_commit_together_and_a_refused_one_changes_nothing,
    case_one_message_may_repeat_and_correct_its_own_records,
);

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_case_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hub.db");
    let first = open_sqlite_at(&path).await;
    let handed_out: Arc<dyn Store> = first.clone();
    case_data_survives_reopening(handed_out, async move |store: Arc<dyn Store>| {
        drop(store);
        first.close().await;
        drop(first);
        let reopened: Arc<dyn Store> = open_sqlite_at(&path).await;
        reopened
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_case_data_survives_reopening() {
    let database = fresh_postgres_database().await;
    let first = open_postgres_at(&database).await;
    let handed_out: Arc<dyn Store> = first.clone();
    case_data_survives_reopening(handed_out, async move |store: Arc<dyn Store>| {
        drop(store);
        first.close().await;
        drop(first);
        let reopened: Arc<dyn Store> = open_postgres_at(&database).await;
        reopened
    })
    .await;
}

// ---------------------------------------------------------------------------------
// 11. PostgreSQL: several hubs over one database, and opening one.
// ---------------------------------------------------------------------------------

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
                "user.sign_in_failed",
                format!("user/{QA}"),
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
    assert_eq!(store.audit_count("user.created").await.expect("count"), 1);
    let intact = store
        .verify_audit()
        .await
        .expect("read audit")
        .expect("the chain holds");
    assert_eq!(intact.entries, 1);
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

// ---------------------------------------------------------------------------------
// Notifications: the notifier turns audit entries into outbox rows once; the outbox
// records delivery attempts, backoff and requeues.
// ---------------------------------------------------------------------------------

use carrel_hub::notify::{Channel, Kind, NewSubscription, OutboxEntry, OutboxState};
use carrel_hub::store::notify::OutboxFilter;
use std::collections::BTreeSet;

async fn subscribe(
    store: &dyn Store,
    owner: &str,
    kinds: &[Kind],
    site_id: Option<&str>,
) -> carrel_hub::notify::Subscription {
    store
        .subscribe(
            &NewSubscription {
                owner: owner.into(),
                kinds: kinds.iter().copied().collect::<BTreeSet<_>>(),
                channel: Channel::Webhook {
                    url: format!("https://receiver.example/{owner}"),
                    secret: "test-secret".into(),
                },
                site_id: site_id.map(str::to_owned),
            },
            now(),
        )
        .await
        .expect("subscribe")
}

/// Runs the notifier until it has read the whole audit trail, `limit` entries a pass.
async fn notify_all(store: &dyn Store, limit: u32) -> usize {
    let mut queued = 0;
    loop {
        let pass = store
            .run_notifier(limit, now())
            .await
            .expect("notifier pass");
        queued += pass.queued;
        if pass.entries == 0 {
            return queued;
        }
    }
}

/// A subscription's notifications, oldest first.
async fn outbox_of(store: &dyn Store, subscription_id: Uuid) -> Vec<OutboxEntry> {
    let mut rows = store
        .outbox(&OutboxFilter {
            subscription_id: Some(subscription_id),
            ..OutboxFilter::default()
        })
        .await
        .expect("outbox");
    rows.reverse();
    rows
}

fn kinds_of(rows: &[OutboxEntry]) -> Vec<Kind> {
    rows.iter().map(|r| r.kind).collect()
}

async fn case_notifier_queues_each_happening_once(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let qa = subscribe(&*store, QA, &Kind::ALL, None).await;
    let physician = subscribe(
        &*store,
        PHYSICIAN,
        &[Kind::AwaitingRelease, Kind::Released, Kind::Delayed],
        None,
    )
    .await;

    // Order 1 runs to release; order 2 is accepted and has a deviation and an
    // out-of-specification result (the site called it a pass: the hub decides).
    let first = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &first, &recipe)).await;
    let sha = reviewed_sha256(&*store, first.batch_id).await;
    store
        .sign_release(&signature(&first, QA, sha), now())
        .await
        .expect("sign");
    let second = order_at(&*store, SITE_A).await;
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(second.batch_id, accepted(&second, &recipe)),
            log.record(second.batch_id, deviation("selection")),
            log.record(
                second.batch_id,
                qc_result("viability", QcValue::Numeric(20.0), Outcome::Pass),
            ),
        ],
    )
    .await;
    // The scheduling side records delays as `order.delayed`.
    store
        .audit(
            &NewEntry::new("hub", "order.delayed", format!("order/{}", first.order_id))
                .batch(first.batch_id)
                .value("2026-12-24T10:00:00Z")
                .reason("incubator fault"),
        )
        .await
        .expect("audit a delay");

    // Small passes: the cursor moves in steps, each with its rows.
    let queued = notify_all(&*store, 3).await;
    let qa_rows = outbox_of(&*store, qa.subscription_id).await;
    assert_eq!(
        kinds_of(&qa_rows),
        vec![
            Kind::OrderDispatched,
            Kind::AwaitingRelease,
            Kind::CellsReceived,
            Kind::Released,
            Kind::OrderDispatched,
            Kind::Deviation,
            Kind::OutOfSpecification,
            Kind::Delayed,
        ]
    );
    let physician_rows = outbox_of(&*store, physician.subscription_id).await;
    assert_eq!(
        kinds_of(&physician_rows),
        vec![Kind::AwaitingRelease, Kind::Released, Kind::Delayed]
    );
    assert_eq!(queued, qa_rows.len() + physician_rows.len());
    assert!(qa_rows
        .iter()
        .all(|r| r.state == OutboxState::Pending && r.attempts == 0));
    assert_eq!(qa_rows[0].coi.as_deref(), Some(first.coi.as_str()));
    assert_eq!(qa_rows[4].batch_id, Some(second.batch_id));
    // The payload names ids, never the patient's pseudonym.
    assert!(qa_rows[0].payload.contains(&first.coi));
    assert!(!qa_rows
        .iter()
        .any(|r| r.payload.contains(&first.patient_pseudonym)
            || r.summary.contains(&first.patient_pseudonym)));

    // Running again reads nothing new and queues nothing twice.
    assert_eq!(notify_all(&*store, 100).await, 0);
    assert_eq!(outbox_of(&*store, qa.subscription_id).await, qa_rows);

    // A subscription made later hears only of later happenings.
    let late = subscribe(&*store, QA, &[Kind::Delayed], None).await;
    assert_eq!(notify_all(&*store, 100).await, 0);
    assert!(outbox_of(&*store, late.subscription_id).await.is_empty());
}

async fn case_a_physicians_subscription_matches_only_their_orders(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    add_user(&*store, "dr-other", Role::Physician).await;
    let mine = subscribe(&*store, PHYSICIAN, &Kind::ALL, None).await;
    let theirs = subscribe(&*store, "dr-other", &Kind::ALL, None).await;
    let site_b_only = subscribe(&*store, QA, &[Kind::OrderDispatched], Some(SITE_B)).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[log.record(order.batch_id, accepted(&order, &recipe))],
    )
    .await;
    store
        .touch_site(SITE_B, now() - Duration::minutes(30))
        .await
        .expect("touch");
    store
        .check_site_links(std::time::Duration::from_secs(60), now())
        .await
        .expect("check links");
    notify_all(&*store, 100).await;

    assert_eq!(
        kinds_of(&outbox_of(&*store, mine.subscription_id).await),
        vec![Kind::OrderDispatched],
        "the ordering physician hears of their order, not of a site's link"
    );
    assert!(outbox_of(&*store, theirs.subscription_id).await.is_empty());
    assert!(outbox_of(&*store, site_b_only.subscription_id)
        .await
        .is_empty());
}

async fn case_deliveries_back_off_fail_and_can_be_requeued(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let sub = subscribe(&*store, QA, &[Kind::OrderDispatched, Kind::Deviation], None).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(order.batch_id, accepted(&order, &recipe)),
            log.record(order.batch_id, deviation("receipt")),
        ],
    )
    .await;
    notify_all(&*store, 100).await;
    let rows = outbox_of(&*store, sub.subscription_id).await;
    assert_eq!(
        kinds_of(&rows),
        vec![Kind::OrderDispatched, Kind::Deviation]
    );
    let (first, second) = (rows[0].notification_id, rows[1].notification_id);
    let lease = std::time::Duration::from_secs(60);

    // Only the oldest pending notification of a subscription is handed out, and a
    // claimed one is not handed out again while its lease runs.
    let t0 = now();
    let claimed = store.claim_deliveries(10, lease, t0).await.expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|d| d.entry.notification_id)
            .collect::<Vec<_>>(),
        vec![first]
    );
    assert!(
        matches!(claimed[0].channel, Channel::Webhook { ref secret, .. } if secret == "test-secret")
    );
    assert!(store
        .claim_deliveries(10, lease, t0)
        .await
        .expect("claim")
        .is_empty());

    // A failed attempt is retried at the time given, not before.
    let retry_at = t0 + Duration::seconds(5);
    store
        .delivery_failed(first, "webhook answered 500", Some(retry_at), t0)
        .await
        .expect("record failure");
    let entry = store.outbox_entry(first).await.expect("entry");
    assert_eq!(
        (entry.state, entry.attempts, entry.next_attempt_at),
        (OutboxState::Pending, 1, retry_at)
    );
    assert_eq!(entry.last_error.as_deref(), Some("webhook answered 500"));
    assert!(store
        .claim_deliveries(10, lease, t0 + Duration::seconds(4))
        .await
        .expect("claim")
        .is_empty());
    let again = store
        .claim_deliveries(10, lease, t0 + Duration::seconds(6))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry.notification_id, first);

    // Attempts used up: failed, counted, and the next one of the subscription is due.
    store
        .delivery_failed(first, "no answer within 100 ms", None, t0)
        .await
        .expect("record failure");
    let entry = store.outbox_entry(first).await.expect("entry");
    assert_eq!((entry.state, entry.attempts), (OutboxState::Failed, 2));
    let counts = store.outbox_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.failed), (1, 1));
    let next = store
        .claim_deliveries(10, lease, t0 + Duration::seconds(7))
        .await
        .expect("claim");
    assert_eq!(next[0].entry.notification_id, second);
    store
        .delivery_succeeded(second, t0 + Duration::seconds(7))
        .await
        .expect("record success");
    let delivered = store.outbox_entry(second).await.expect("entry");
    assert_eq!(
        (delivered.state, delivered.attempts),
        (OutboxState::Delivered, 1)
    );
    assert_eq!(delivered.delivered_at, Some(t0 + Duration::seconds(7)));

    // Requeue: only a failed one, audited, attempts start over.
    assert_refused!(
        store.requeue(second, ADMIN, now()).await,
        Error::FailedPrecondition
    );
    let requeued = store.requeue(first, ADMIN, now()).await.expect("requeue");
    assert_eq!(
        (requeued.state, requeued.attempts),
        (OutboxState::Pending, 0)
    );
    assert_eq!(
        store
            .audit_count("notification.requeued")
            .await
            .expect("count"),
        1
    );
    let claimed = store
        .claim_deliveries(10, lease, now() + Duration::seconds(1))
        .await
        .expect("claim");
    assert_eq!(claimed[0].entry.notification_id, first);
    // The requeue's own audit entry is not a notification.
    assert_eq!(notify_all(&*store, 100).await, 0);

    // Ending the subscription drops what it still owed.
    store
        .unsubscribe(sub.subscription_id, QA, now())
        .await
        .expect("unsubscribe");
    let entry = store.outbox_entry(first).await.expect("entry");
    assert_eq!(entry.state, OutboxState::Failed);
    assert_eq!(entry.last_error.as_deref(), Some("unsubscribed"));
    assert_refused!(
        store.subscription(sub.subscription_id).await,
        Error::NotFound
    );
    assert_refused!(
        store.requeue(first, ADMIN, now()).await,
        Error::FailedPrecondition
    );
}

async fn case_a_site_link_down_is_reported_once_per_outage(store: Arc<dyn Store>) {
    seed(&*store).await;
    let sub = subscribe(
        &*store,
        QA,
        &[Kind::SiteLinkDown, Kind::SiteLinkRestored],
        Some(SITE_A),
    )
    .await;
    let down_after = std::time::Duration::from_secs(300);
    store
        .touch_site(SITE_A, now() - Duration::minutes(10))
        .await
        .expect("touch");
    // Site B never connected: not down, never up.
    assert_eq!(
        store
            .check_site_links(down_after, now())
            .await
            .expect("check"),
        vec![SITE_A.to_owned()]
    );
    assert!(store
        .check_site_links(down_after, now())
        .await
        .expect("check")
        .is_empty());
    assert_eq!(store.audit_count("site.link_down").await.expect("count"), 1);

    store.touch_site(SITE_A, now()).await.expect("touch");
    assert_eq!(
        store
            .check_site_links(down_after, now())
            .await
            .expect("check"),
        vec![SITE_A.to_owned()]
    );
    assert_eq!(
        store
            .audit_count("site.link_restored")
            .await
            .expect("count"),
        1
    );
    assert!(store
        .check_site_links(down_after, now())
        .await
        .expect("check")
        .is_empty());
    notify_all(&*store, 100).await;
    let rows = outbox_of(&*store, sub.subscription_id).await;
    assert_eq!(
        kinds_of(&rows),
        vec![Kind::SiteLinkDown, Kind::SiteLinkRestored]
    );
    assert_eq!(rows[0].site_id.as_deref(), Some(SITE_A));
}

async fn case_concurrent_notifiers_and_workers_queue_and_claim_each_once(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let mut subscriptions = Vec::new();
    for _ in 0..4 {
        subscriptions.push(subscribe(&*store, QA, &[Kind::OrderDispatched], None).await);
    }
    let mut log = SiteLog::new();
    for _ in 0..5 {
        let order = order_at(&*store, SITE_A).await;
        ingest(
            &*store,
            SITE_A,
            &[log.record(order.batch_id, accepted(&order, &recipe))],
        )
        .await;
    }
    // Two notifiers (as in two hub processes) at once, one entry a pass.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { notify_all(&*store, 1).await })
        })
        .collect();
    let mut queued = 0;
    for run in runs {
        queued += run.await.expect("notifier task");
    }
    assert_eq!(queued, 4 * 5);
    for subscription in &subscriptions {
        assert_eq!(
            outbox_of(&*store, subscription.subscription_id).await.len(),
            5
        );
    }

    // Two workers at once: each due head is handed to one of them only.
    let at = now();
    let claims: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_deliveries(10, std::time::Duration::from_secs(60), at)
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.extend(
            claim
                .await
                .expect("claim task")
                .into_iter()
                .map(|d| d.entry.notification_id),
        );
    }
    let distinct: BTreeSet<_> = claimed.iter().collect();
    assert_eq!(claimed.len(), 4, "one head per subscription: {claimed:?}");
    assert_eq!(distinct.len(), 4);
}

store_cases!(sqlite_notify, open_sqlite:
    case_notifier_queues_each_happening_once,
    case_a_physicians_subscription_matches_only_their_orders,
    case_deliveries_back_off_fail_and_can_be_requeued,
    case_a_site_link_down_is_reported_once_per_outage,
    case_concurrent_notifiers_and_workers_queue_and_claim_each_once,
);

store_cases!(postgres_notify, open_postgres:
    case_notifier_queues_each_happening_once,
    case_a_physicians_subscription_matches_only_their_orders,
    case_deliveries_back_off_fail_and_can_be_requeued,
    case_a_site_link_down_is_reported_once_per_outage,
    case_concurrent_notifiers_and_workers_queue_and_claim_each_once,
);

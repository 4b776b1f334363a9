//! Fixtures: the people, sites, orders and site events the cases are made of, and
//! what the cases check them with.

use carrel_hub::model::{
    BatchState, IssuedCert, NewOrder, Order, QcRecord, Role, Signature, Site, SiteStatus,
    StoredEvent, User,
};
use carrel_hub::record::record_sha256;
use carrel_hub::store::{Ingested, Received, Store};
use carrel_proto::event::{
    EventKind, HubCommand, Identity, ReleaseMeaning, SiteEvent, GENESIS_SHA256,
};
use carrel_proto::recipe::{Outcome, QcTest, QcValue, Recipe};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use uuid::Uuid;

pub const PHYSICIAN: &str = "dr-lee";
pub const QA: &str = "qa-ana";
/// Records every site event in these tests (`recorded_by`).
pub const TECHNICIAN: &str = "tech-tom";
pub const SITE_A: &str = "site-a";
pub const SITE_B: &str = "site-b";
pub const RECIPE_ID: &str = "cd19-car-t";
/// Who the store is told made administrative changes (audited).
pub const ADMIN: &str = "admin-ada";

/// Now, to the microsecond the store keeps, so a time read back compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn shipped_recipe() -> Recipe {
    Recipe::from_toml(include_str!("../../recipes/cd19-car-t.v1.toml"))
        .expect("the shipped recipe is valid")
}

/// Publishes the shipped recipe and adds a physician, a QA reviewer, a technician and
/// two active sites. Returns the recipe.
pub async fn seed(store: &dyn Store) -> Recipe {
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
    qualify(store, SITE_A, RECIPE_ID, 1, None).await;
    qualify(store, SITE_B, RECIPE_ID, 1, None).await;
    recipe
}

/// QA's qualification of a site for versions `min`..=`max` (`None`: and later) of
/// a product, as signed now.
pub fn qualification(
    site_id: &str,
    recipe_id: &str,
    min: u32,
    max: Option<u32>,
) -> carrel_hub::model::Qualification {
    carrel_hub::model::Qualification {
        site_id: site_id.into(),
        recipe_id: recipe_id.into(),
        min_version: min,
        max_version: max,
        qualified_by: QA.into(),
        qualified_name: format!("{QA} (test)"),
        qualified_at: now(),
        meaning: carrel_hub::model::QUALIFICATION_MEANING.into(),
        reason: "Process qualification run PQ-17, report QR-0042".into(),
        withdrawn: None,
    }
}

/// Qualifies a site for a product (see [`qualification`]).
pub async fn qualify(
    store: &dyn Store,
    site_id: &str,
    recipe_id: &str,
    min: u32,
    max: Option<u32>,
) {
    store
        .qualify_site(&qualification(site_id, recipe_id, min, max))
        .await
        .expect("qualify the site");
}

pub async fn add_user(store: &dyn Store, username: &str, role: Role) {
    store
        .add_user(
            &User {
                username: username.into(),
                full_name: format!("{username} (test)"),
                role,
                disabled: false,
                password_hash: "x".into(),
                signature_acknowledged_at: None,
            },
            ADMIN,
        )
        .await
        .expect("add user");
}

/// A certificate as the hub's CA would have issued it (the store keeps only these facts).
pub fn cert(sha256: &str) -> IssuedCert {
    IssuedCert {
        sha256: sha256.into(),
        not_after: now() + Duration::days(730),
        ca_sha256: "ca-1".into(),
    }
}

/// Registers a site and enrolls it with its token, which makes it active.
pub async fn add_active_site(store: &dyn Store, site_id: &str) -> Site {
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

pub fn new_order(site_id: &str) -> NewOrder {
    NewOrder {
        patient_pseudonym: "PAT-0001".into(),
        recipe_id: RECIPE_ID.into(),
        site_id: site_id.into(),
        requested_collection_date: "2026-12-01".into(),
        physician: PHYSICIAN.into(),
        facility: "G1234".into(),
        request_id: None,
        entered_by: None,
    }
}

pub async fn order_at(store: &dyn Store, site_id: &str) -> Order {
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
pub fn event(seq: u64, batch_id: Uuid, kind: EventKind) -> SiteEvent {
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
        // A name as sites typed it before sign-in there.
        identity: Identity::Unverified,
        kind,
    };
    LAST_HASH_BY_SEQ.with(|m| m.borrow_mut().insert(seq, event.sha256()));
    event
}

/// One site's event log as its agent writes it: consecutive seqs from 1, each
/// event carrying the hash of the one before.
pub struct SiteLog {
    pub next_seq: u64,
    pub last_sha256: String,
}

impl SiteLog {
    pub fn new() -> SiteLog {
        SiteLog {
            next_seq: 1,
            last_sha256: GENESIS_SHA256.to_owned(),
        }
    }

    pub fn record(&mut self, batch_id: Uuid, kind: EventKind) -> SiteEvent {
        self.record_as(batch_id, TECHNICIAN, Identity::Unverified, kind)
    }

    /// A record made by `by`, whom the site knew as `identity` says.
    pub fn record_as(
        &mut self,
        batch_id: Uuid,
        by: &str,
        identity: Identity,
        kind: EventKind,
    ) -> SiteEvent {
        let mut recorded = event(self.next_seq, batch_id, kind);
        recorded.recorded_by = by.into();
        recorded.identity = identity;
        recorded.prev_sha256 = self.last_sha256.clone();
        self.last_sha256 = recorded.sha256();
        self.next_seq += 1;
        recorded
    }
}

pub fn accepted(order: &Order, recipe: &Recipe) -> EventKind {
    EventKind::BatchAccepted {
        coi: order.coi.clone(),
        recipe_id: recipe.id.clone(),
        recipe_version: recipe.version,
        recipe_sha256: recipe.sha256(),
    }
}

pub fn step_started(step_id: &str) -> EventKind {
    EventKind::StepStarted {
        step_id: step_id.into(),
        instrument_id: "sim-1".into(),
        resumed: false,
    }
}

pub fn step_completed(step_id: &str) -> EventKind {
    EventKind::StepCompleted {
        step_id: step_id.into(),
        process_hours: 1.0,
    }
}

pub fn qc_result(test_id: &str, value: QcValue, site_outcome: Outcome) -> EventKind {
    EventKind::QcResult {
        test_id: test_id.into(),
        value,
        unit: "%".into(),
        method: "test method".into(),
        site_outcome,
        retest_of: None,
    }
}

pub fn deviation(step_id: &str) -> EventKind {
    EventKind::DeviationRaised {
        deviation_id: "DEV-1".into(),
        step_id: step_id.into(),
        description: "label reprinted".into(),
        classification: "minor".into(),
    }
}

/// A result that meets the test's specification.
pub fn passing_value(test: &QcTest) -> QcValue {
    match test.spec.accepted.first() {
        Some(text) => QcValue::Text(text.clone()),
        None => QcValue::Numeric(test.spec.min.or(test.spec.max).unwrap_or(0.0)),
    }
}

/// The tests that must be recorded before release.
pub fn release_gating_tests(recipe: &Recipe) -> Vec<&QcTest> {
    recipe
        .all_tests()
        .filter(|t| !t.may_follow_release)
        .collect()
}

/// A matching scan of the order's label at a custody checkpoint.
pub fn matched_scan(order: &Order, checkpoint_id: &str) -> EventKind {
    EventKind::CustodyScan {
        checkpoint_id: checkpoint_id.into(),
        expected_coi: order.coi.clone(),
        scanned_coi: order.coi.clone(),
        verifiers: vec![TECHNICIAN.into(), "tech-two".into()],
        matched: true,
        location: "clean room 1".into(),
        // At the bedside the patient's wristband is scanned first.
        wristband: matches!(checkpoint_id, "handover" | "infusion")
            .then(|| order.patient_pseudonym.clone()),
    }
}

/// A complete batch record: accepted, every custody checkpoint passed, every step
/// started and completed, every test recorded with a passing result (those that
/// may follow release last, so the batch awaits release before them).
pub fn complete_record(log: &mut SiteLog, order: &Order, recipe: &Recipe) -> Vec<SiteEvent> {
    let mut events = record_before_late_results(log, order, recipe);
    for test in recipe.all_tests().filter(|t| t.may_follow_release) {
        let kind = qc_result(&test.id, passing_value(test), Outcome::Pass);
        events.push(log.record(order.batch_id, kind));
    }
    events
}

/// A batch record complete for review with the results that may follow release
/// (sterility) still outstanding: a release now is conditional.
pub fn record_before_late_results(
    log: &mut SiteLog,
    order: &Order,
    recipe: &Recipe,
) -> Vec<SiteEvent> {
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
pub fn received(events: &[SiteEvent]) -> Vec<Received> {
    events.iter().cloned().map(Received::new).collect()
}

pub async fn ingest(store: &dyn Store, site_id: &str, events: &[SiteEvent]) -> Ingested {
    store
        .ingest_events(site_id, &received(events), now())
        .await
        .expect("ingest site events")
}

/// The site events stored for a batch, as the site sent them.
pub async fn stored_events(store: &dyn Store, batch_id: Uuid) -> Vec<SiteEvent> {
    store
        .batch_events(batch_id)
        .await
        .expect("read batch events")
        .into_iter()
        .map(|stored| stored.event)
        .collect()
}

pub async fn state_of(store: &dyn Store, batch_id: Uuid) -> BatchState {
    store
        .order_by_batch(batch_id)
        .await
        .expect("read order")
        .state
}

pub async fn commands(store: &dyn Store, site_id: &str) -> Vec<HubCommand> {
    store
        .commands_after(site_id, 0, 100)
        .await
        .expect("read commands")
}

/// SHA-256 of the batch record as QA reviews it now.
pub async fn reviewed_sha256(store: &dyn Store, batch_id: Uuid) -> String {
    let record = store.batch_record(batch_id).await.expect("batch record");
    record_sha256(&record.order, &record.recipe.sha256, &record.events)
}

pub fn signature(order: &Order, signer: &str, record_sha256: String) -> Signature {
    Signature {
        signature_id: Uuid::new_v4(),
        batch_id: order.batch_id,
        signer: signer.into(),
        signer_name: format!("{signer} (test)"),
        meaning: ReleaseMeaning::Released,
        record_sha256,
        reason: "record reviewed, all results within specification".into(),
        signed_at: now(),
        justifications: Vec::new(),
        outstanding_tests: Vec::new(),
    }
}

/// Everything a refused call must leave as it was, for one site and one of its batches.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub site: Site,
    pub events: Vec<StoredEvent>,
    pub order: Order,
    pub qc: Vec<QcRecord>,
    pub commands: Vec<HubCommand>,
}

pub async fn snapshot(store: &dyn Store, site_id: &str, batch_id: Uuid) -> Snapshot {
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

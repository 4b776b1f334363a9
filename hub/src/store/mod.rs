//! The hub's store: what we keep, and why it is durable.
//!
//! What we store:
//! - per site, the **site event log** exactly as the site recorded it (canonical JSON,
//!   keyed by `(site_id, seq)`) and the **hub command log** the hub issued to it;
//! - the cursors of both logs (what the hub has committed, what the site has acknowledged);
//! - projections derived from those logs: orders, batch state, the hub's own evaluation
//!   of QC results, release signatures;
//! - recipes (immutable versions), users, sessions, sites and their enrollment state.
//!
//! Why it is durable: every method that changes anything does so in one database
//! transaction, committed before it returns. A site event and the projection it changes
//! are written in the same transaction (invariant 4), so the state never disagrees with
//! the log, and an acknowledgement is only sent after `ingest_events` has returned.
//!
//! [`Store`] is the one interface callers use; [`sqlite::SqliteStore`] is the embedded
//! backend, [`postgres::PgStore`] the one several hub processes can share. Both have
//! the same semantics, checked by one test suite (`hub/tests/store_suite.rs`).

pub mod notify;
pub mod postgres;
pub mod schedule;
pub mod sqlite;

pub use notify::NotifyStore;

use crate::batch::Projection;
use async_trait::async_trait;
use carrel_proto::event::{HubCommand, SiteEvent};
use carrel_proto::recipe::{Outcome, QcValue, Recipe};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use uuid::Uuid;

/// Store errors. Each one says what is wrong in words a caller can pass on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request is well formed but the stored state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The input itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The caller is not allowed to touch this record.
    #[error("{0}")]
    PermissionDenied(String),
    /// The collection slot or instrument time asked for is not free (or the date
    /// cannot be booked at all); the message says why.
    #[error("{0}")]
    Unavailable(String),
    /// A replicated log was sent out of order or with changed content.
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// An error of the SQLite library where the store calls it without sqlx (the
    /// ingest path of the SQLite backend).
    #[error("database: {0}")]
    Engine(String),
    /// The database could not do what it must to keep a commit (an I/O error, such
    /// as a failed fsync): what is on disk may differ from what it said it holds.
    /// The hub stops rather than go on as if committed ([`failure`]).
    #[error("the database failed: {0}")]
    Failed(String),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        if !is_io_error(&error) {
            return Error::Database(error);
        }
        let why = format!(
            "{error}; a commit may not be on disk although the database was told to keep it"
        );
        failure().fail(&why);
        Error::Failed(why)
    }
}

/// SQLite's SQLITE_IOERR family (SQLITE_IOERR_FSYNC for a failed fsync, say): the
/// disk did not do what SQLite asked, so a transaction may be lost or half-written.
/// PostgreSQL handles a failed fsync itself (the server stops and recovers from its
/// write-ahead log), so its errors are not classified here.
fn is_io_error(error: &sqlx::Error) -> bool {
    const SQLITE_IOERR: i32 = 10;
    error
        .as_database_error()
        .filter(|db| db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some())
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_IOERR)
}

/// A failure of the store that makes it unsafe to go on: after a failed fsync the
/// kernel may have dropped the pages it could not write, so a later fsync that
/// succeeds proves nothing about them (PostgreSQL panics on a failed fsync for the
/// same reason). Once failed, the store takes no more writes and the hub stops; at
/// the next start the database recovers what really was committed, and the sites
/// send again what the hub did not acknowledge.
///
/// One per process: the hub serves one store, and the failure is the disk's.
#[derive(Debug, Default)]
pub struct Failure {
    reason: std::sync::OnceLock<String>,
    failed: tokio_util::sync::CancellationToken,
}

impl Failure {
    fn fail(&self, why: &str) {
        if self.reason.set(why.to_owned()).is_ok() {
            tracing::error!(error = %why, "the hub's store failed: no more writes are taken");
        }
        self.failed.cancel();
    }

    /// Why the store failed, if it has.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    /// Resolves when the store fails; returns why.
    pub async fn wait(&self) -> &str {
        self.failed.cancelled().await;
        self.reason().unwrap_or("unknown")
    }
}

/// This process's store failure (see [`Failure`]).
pub fn failure() -> &'static Failure {
    static FAILURE: std::sync::OnceLock<Failure> = std::sync::OnceLock::new();
    FAILURE.get_or_init(Failure::default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Physician,
    Qa,
    Technician,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Qa => "qa",
            Role::Technician => "technician",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "physician" => Some(Role::Physician),
            "qa" => Some(Role::Qa),
            "technician" => Some(Role::Technician),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub username: String,
    pub full_name: String,
    pub role: Role,
    pub disabled: bool,
    pub password_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteStatus {
    Pending,
    Active,
    Suspended,
    /// Retired from the network for good: no connections, no orders, records kept.
    Ceased,
}

impl SiteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteStatus::Pending => "pending",
            SiteStatus::Active => "active",
            SiteStatus::Suspended => "suspended",
            SiteStatus::Ceased => "ceased",
        }
    }

    fn parse(text: &str) -> Result<SiteStatus> {
        match text {
            "pending" => Ok(SiteStatus::Pending),
            "active" => Ok(SiteStatus::Active),
            "suspended" => Ok(SiteStatus::Suspended),
            "ceased" => Ok(SiteStatus::Ceased),
            other => Err(Error::Corrupt(format!("unknown site status {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub site_id: String,
    pub name: String,
    pub status: SiteStatus,
    pub cert_sha256: Option<String>,
    /// Expiry of the site's certificate (unknown for sites enrolled before it was kept).
    pub cert_not_after: Option<DateTime<Utc>>,
    /// Fingerprint of the CA that issued it (unknown likewise).
    pub cert_ca_sha256: Option<String>,
    /// A renewed certificate issued over the link that the site has not used yet.
    /// Both it and `cert_sha256` are accepted until the site connects with it.
    pub pending_cert_sha256: Option<String>,
    pub acked_event_seq: u64,
    pub last_command_seq: u64,
    pub acked_command_seq: u64,
    pub last_contact_at: Option<DateTime<Utc>>,
}

impl Site {
    /// The site can still connect, and the certificate it holds was not issued by the
    /// CA with fingerprint `ca_sha256` (during a CA rotation: it has yet to renew).
    pub fn holds_certificate_of_another_ca(&self, ca_sha256: &str) -> bool {
        self.status != SiteStatus::Ceased
            && self.cert_sha256.is_some()
            && self.cert_ca_sha256.as_deref() != Some(ca_sha256)
    }
}

/// A certificate the hub's CA issued to a site, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCert {
    pub sha256: String,
    pub not_after: DateTime<Utc>,
    /// The issuing CA's fingerprint.
    pub ca_sha256: String,
}

/// A stored recipe version.
#[derive(Debug, Clone)]
pub struct StoredRecipe {
    pub recipe: Recipe,
    pub sha256: String,
    pub canonical_json: String,
}

/// Lifecycle state of a batch, derived from its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchState {
    Ordered,
    Accepted,
    InProcess,
    AwaitingRelease,
    Released,
    Rejected,
    Cancelled,
    /// Released product handed over for infusion.
    HandedOver,
    /// Infusion confirmed at the bedside: the chain of identity is closed.
    Infused,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Ordered => "ordered",
            BatchState::Accepted => "accepted",
            BatchState::InProcess => "in_process",
            BatchState::AwaitingRelease => "awaiting_release",
            BatchState::Released => "released",
            BatchState::Rejected => "rejected",
            BatchState::Cancelled => "cancelled",
            BatchState::HandedOver => "handed_over",
            BatchState::Infused => "infused",
        }
    }

    pub fn parse(text: &str) -> Option<BatchState> {
        Some(match text {
            "ordered" => BatchState::Ordered,
            "accepted" => BatchState::Accepted,
            "in_process" => BatchState::InProcess,
            "awaiting_release" => BatchState::AwaitingRelease,
            "released" => BatchState::Released,
            "rejected" => BatchState::Rejected,
            "cancelled" => BatchState::Cancelled,
            "handed_over" => BatchState::HandedOver,
            "infused" => BatchState::Infused,
            _ => return None,
        })
    }

    /// No further manufacturing happens in this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchState::Released | BatchState::Rejected | BatchState::Cancelled
        )
    }
}

impl BatchState {
    /// Nothing more will happen to this batch at its site.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            BatchState::Rejected | BatchState::Cancelled | BatchState::Infused
        )
    }

    /// The site holds the patient's cells and is manufacturing or awaiting release.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            BatchState::Accepted | BatchState::InProcess | BatchState::AwaitingRelease
        )
    }
}

/// A batch of a site that is not closed (see [`BatchState::is_closed`]), as a
/// lifecycle move sees it.
pub(crate) struct OpenBatch {
    pub batch_id: Uuid,
    pub state: BatchState,
    /// The stored progress (JSON).
    progress: String,
}

impl OpenBatch {
    /// The batch from its stored state and progress, when it is not closed.
    pub(crate) fn from_stored(
        batch_id: Uuid,
        state: &str,
        progress: String,
    ) -> Result<Option<OpenBatch>> {
        let state = BatchState::parse(state)
            .ok_or_else(|| Error::Corrupt(format!("unknown batch state {state:?}")))?;
        Ok((!state.is_closed()).then_some(OpenBatch {
            batch_id,
            state,
            progress,
        }))
    }

    /// The progress (JSON) to store when the batch's site is suspended while it runs:
    /// flagged for a QA decision.
    pub(crate) fn flagged_for_suspension(
        &self,
        actor: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<String> {
        let mut progress: Progress = serde_json::from_str(&self.progress)
            .map_err(|e| Error::Corrupt(format!("batch {} progress: {e}", self.batch_id)))?;
        progress.anomalies.push(format!(
            "site suspended while this batch was running ({} by {actor}: {reason}); QA decision required",
            at.format("%Y-%m-%d %H:%M UTC")
        ));
        json_text(&progress)
    }
}

/// Checks a move of a site's lifecycle and names its audit action.
pub(crate) fn site_transition(
    site: &Site,
    to: SiteStatus,
    open_batches: &[OpenBatch],
) -> Result<&'static str> {
    let id = &site.site_id;
    let from = site.status;
    match (from, to) {
        (SiteStatus::Ceased, _) => Err(Error::FailedPrecondition(format!(
            "site {id:?} has ceased; a ceased site cannot change again (its records stay readable)"
        ))),
        (SiteStatus::Pending | SiteStatus::Active, SiteStatus::Suspended) => Ok("site.suspended"),
        (SiteStatus::Suspended, SiteStatus::Active) => Ok("site.resumed"),
        (_, SiteStatus::Ceased) => match open_batches {
            [] => Ok("site.ceased"),
            open => Err(Error::FailedPrecondition(format!(
                "site {id:?} still has {} open batch(es) ({}); each must be infused, rejected or cancelled before the site can cease",
                open.len(),
                open.iter()
                    .map(|b| format!("{} {}", b.batch_id, b.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
        (from, to) if from == to => Err(Error::FailedPrecondition(format!(
            "site {id:?} is already {}",
            to.as_str()
        ))),
        (SiteStatus::Pending, SiteStatus::Active) => Err(Error::FailedPrecondition(format!(
            "site {id:?} has not enrolled yet; it becomes active when its agent enrolls"
        ))),
        (from, to) => Err(Error::FailedPrecondition(format!(
            "site {id:?} cannot go from {} to {}",
            from.as_str(),
            to.as_str()
        ))),
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the batch projection remembers besides its state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub steps_completed: BTreeSet<String>,
    /// Custody checkpoints passed with a matching scan.
    #[serde(default)]
    pub checkpoints_passed: BTreeSet<String>,
    pub tests_recorded: BTreeSet<String>,
    /// Site seqs of records QA must see first (alarms, deviations, OOS, corrections, anomalies).
    pub exceptions: Vec<u64>,
    /// Things the hub noticed that the site did not report as such.
    pub anomalies: Vec<String>,
}

/// An order with its batch projection, as people see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub order_id: Uuid,
    pub batch_id: Uuid,
    pub coi: String,
    pub patient_pseudonym: String,
    pub recipe_id: String,
    pub recipe_version: u32,
    pub site_id: String,
    pub requested_collection_date: String,
    pub physician: String,
    pub created_at: DateTime<Utc>,
    pub state: BatchState,
    pub current_step: Option<String>,
    pub progress: Progress,
    pub decision_recorded: bool,
    pub updated_at: DateTime<Utc>,
}

/// A new order, validated by the caller.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub patient_pseudonym: String,
    pub recipe_id: String,
    pub site_id: String,
    pub requested_collection_date: String,
    pub physician: String,
    /// Facility identification number used in COI identifiers.
    pub facility: String,
}

/// A site event as stored at the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub site_id: String,
    pub event: SiteEvent,
    pub received_at: DateTime<Utc>,
}

/// The hub's evaluation of one QC result.
#[derive(Debug, Clone, PartialEq)]
pub struct QcRecord {
    pub site_seq: u64,
    pub test_id: String,
    pub value: QcValue,
    pub hub_outcome: Outcome,
    pub site_outcome: Outcome,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub signature_id: Uuid,
    pub batch_id: Uuid,
    pub signer: String,
    pub signer_name: String,
    pub meaning: carrel_proto::event::ReleaseMeaning,
    pub record_sha256: String,
    pub reason: String,
    pub signed_at: DateTime<Utc>,
}

/// Everything the batch record is made of.
#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub order: Order,
    pub recipe: StoredRecipe,
    pub events: Vec<StoredEvent>,
    pub qc: Vec<QcRecord>,
    pub signatures: Vec<Signature>,
    pub audit: Vec<crate::audit::Entry>,
}

/// A site event as received, with the canonical JSON that is stored as its body and
/// the hash of that JSON, both computed once by the link that received it. The
/// store's writer is one at a time for every site; what can be done before it, in
/// each site's own task, is not done there.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    event: SiteEvent,
    body: String,
    sha256: String,
}

impl Received {
    pub fn new(event: SiteEvent) -> Received {
        let body = event.canonical_json();
        let sha256 = carrel_proto::event::body_sha256(&body);
        Received {
            event,
            body,
            sha256,
        }
    }

    pub fn event(&self) -> &SiteEvent {
        &self.event
    }

    /// The event's canonical JSON (what the site hashed).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// SHA-256 (hex) of [`Received::body`]: what the next event names as previous.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl From<SiteEvent> for Received {
    fn from(event: SiteEvent) -> Received {
        Received::new(event)
    }
}

/// Result of storing a batch of site events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// Highest seq now committed for the site (the ack to send).
    pub acked_event_seq: u64,
    /// How many of the events were new (the rest were repeats of stored ones).
    pub new_events: usize,
}

/// Something another hub process did that this one should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// New commands were appended to this site's log.
    Commands(String),
    /// Another process claimed this site's live link.
    LinkClaimed(String),
}

/// The one interface to the hub's persistent state.
#[async_trait]
pub trait Store: schedule::ScheduleStore + notify::NotifyStore + Send + Sync + 'static {
    // -- recipes --
    /// Publishes a recipe version; publishing the same document again is a no-op, a
    /// different document under an existing version is refused.
    async fn publish_recipe(&self, recipe: &Recipe) -> Result<()>;
    async fn recipe(&self, recipe_id: &str, version: u32) -> Result<StoredRecipe>;
    async fn latest_recipe(&self, recipe_id: &str) -> Result<StoredRecipe>;
    async fn list_recipes(&self) -> Result<Vec<StoredRecipe>>;

    // -- people --
    /// Adds a user; `actor` is who added them (audited).
    async fn add_user(&self, user: &User, actor: &str) -> Result<()>;
    async fn user(&self, username: &str) -> Result<User>;
    async fn list_users(&self) -> Result<Vec<User>>;
    async fn create_session(
        &self,
        token_sha256: &str,
        username: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
    /// The user of a live session, or `NotFound` when unknown or expired.
    async fn session_user(&self, token_sha256: &str, now: DateTime<Utc>) -> Result<User>;
    async fn delete_session(&self, token_sha256: &str) -> Result<()>;

    // -- audit trail --
    /// Appends an entry on its own (for happenings that change no other record, such
    /// as a failed sign-in). Changes made by the other methods are audited by them,
    /// in the same transaction.
    async fn audit(&self, entry: &crate::audit::NewEntry) -> Result<()>;
    /// Entries in position order; only those of one batch when `batch_id` is given.
    async fn audit_entries(&self, batch_id: Option<Uuid>) -> Result<Vec<crate::audit::Entry>>;
    async fn audit_count(&self, action: &str) -> Result<u64>;
    /// Failed sign-ins recorded for `username` after `since` and after its last
    /// successful sign-in (for locking an account under a password-guessing attack).
    async fn sign_in_failures_since(&self, username: &str, since: DateTime<Utc>) -> Result<u64>;
    /// Walks the whole chain.
    async fn verify_audit(&self) -> Result<Result<crate::audit::Intact, crate::audit::Broken>>;

    // -- sites and enrollment --
    async fn add_site(
        &self,
        site_id: &str,
        name: &str,
        token_sha256: &str,
        token_expires_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<Site>;
    /// The site an unused, unexpired enrollment token belongs to.
    async fn site_for_token(&self, token_sha256: &str, now: DateTime<Utc>) -> Result<Site>;
    /// Uses the token up and records the certificate issued with it; fails if the
    /// token was used meanwhile.
    async fn complete_enrollment(
        &self,
        site_id: &str,
        token_sha256: &str,
        cert: &IssuedCert,
        now: DateTime<Utc>,
    ) -> Result<Site>;
    async fn site(&self, site_id: &str) -> Result<Site>;
    async fn list_sites(&self) -> Result<Vec<Site>>;
    /// Moves a site through its lifecycle, audited with the reason:
    /// suspend (from pending or active; its running batches are flagged for a QA
    /// decision), resume (suspended to active), cease (final; refused while any of
    /// its batches is still open). Any other move is refused.
    async fn set_site_status(
        &self,
        site_id: &str,
        status: SiteStatus,
        actor: &str,
        reason: &str,
    ) -> Result<Site>;
    /// Records a certificate renewed over the site's link as pending: it becomes the
    /// site's certificate when the site first connects with it.
    async fn record_renewed_certificate(
        &self,
        site_id: &str,
        cert: &IssuedCert,
        now: DateTime<Utc>,
    ) -> Result<Site>;
    /// The site connected with its pending certificate: it replaces the old one,
    /// which is no longer accepted.
    async fn promote_pending_certificate(
        &self,
        site_id: &str,
        cert_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Site>;
    async fn touch_site(&self, site_id: &str, now: DateTime<Utc>) -> Result<()>;

    // -- the two logs --
    /// Stores site events in one transaction with the projections they change.
    /// Repeats of stored events are accepted and skipped; a gap, a changed repeat or a
    /// record for another site's batch refuses the whole batch and stores nothing.
    async fn ingest_events(
        &self,
        site_id: &str,
        events: &[Received],
        now: DateTime<Utc>,
    ) -> Result<Ingested>;
    async fn commands_after(
        &self,
        site_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<HubCommand>>;
    /// Records that the site committed every command up to `seq`.
    async fn ack_commands(&self, site_id: &str, seq: u64) -> Result<()>;

    // -- operations --
    /// Writes a consistent copy of the whole database to `path` while the hub runs
    /// (SQLite); a backend with its own tools (PostgreSQL: pg_dump) refuses and says so.
    async fn backup_to(&self, path: &std::path::Path) -> Result<()>;

    // -- live links (several hub processes on one database) --
    /// Claims the live link of a site for `holder` (a hub process). The newest claim
    /// wins: any earlier one is superseded. Returns the claim's generation.
    async fn claim_site_link(&self, site_id: &str, holder: &str) -> Result<u64>;
    /// The generation of the site's current claim (0 when never claimed).
    async fn site_link_generation(&self, site_id: &str) -> Result<u64>;
    /// Notifications from other hub processes sharing the database, when the backend
    /// has them (PostgreSQL LISTEN/NOTIFY); `None` for a single-process backend.
    async fn notifications(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Notification>>>;

    // -- orders and release --
    async fn create_order(&self, order: &NewOrder, now: DateTime<Utc>) -> Result<Order>;
    async fn order(&self, order_id: Uuid) -> Result<Order>;
    async fn order_by_batch(&self, batch_id: Uuid) -> Result<Order>;
    /// Orders, newest first; only one physician's when `physician` is given.
    async fn list_orders(
        &self,
        physician: Option<&str>,
        state: Option<BatchState>,
    ) -> Result<Vec<Order>>;
    async fn cancel_order(
        &self,
        order_id: Uuid,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Order>;
    async fn batch_events(&self, batch_id: Uuid) -> Result<Vec<StoredEvent>>;
    async fn batch_record(&self, batch_id: Uuid) -> Result<BatchRecord>;
    /// Stores a signature, moves the batch to its final state and queues the decision
    /// for the site, in one transaction; refused unless the batch awaits release and
    /// its record still hashes to `signature.record_sha256`.
    async fn sign_release(&self, signature: &Signature, now: DateTime<Utc>) -> Result<Order>;
}

// -- shared by the backends: the text forms both of them store --

/// A time as stored and hashed: RFC 3339, UTC, microseconds (`2026-11-27T10:00:00.123456Z`).
pub(crate) fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A value stored as JSON text.
fn json_text<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A sequence number or version as the databases store it (signed 64-bit).
fn i64_of(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Invalid(format!("{v} is too large")))
}

fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::OutOfSpecification => "out_of_specification",
    }
}

fn parse_outcome(text: &str) -> Result<Outcome> {
    match text {
        "pass" => Ok(Outcome::Pass),
        "out_of_specification" => Ok(Outcome::OutOfSpecification),
        other => Err(Error::Corrupt(format!("unknown QC outcome {other:?}"))),
    }
}

/// Where a site event stands against the hub's cursor for its site.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// At or below the cursor: must repeat the stored record exactly.
    Repeat,
    /// The next one.
    Next,
}

/// Checks a site event's seq against the cursor (the highest seq stored): seq 0
/// and gaps are refused. Shared by both backends' ingest.
fn place(event: &SiteEvent, cursor: u64) -> Result<Placement> {
    if event.seq == 0 {
        return Err(Error::Protocol(
            "event seq 0: a site log starts at 1".into(),
        ));
    }
    if event.seq <= cursor {
        return Ok(Placement::Repeat);
    }
    if event.seq != cursor + 1 {
        return Err(Error::Protocol(format!(
            "event seq {} leaves a gap: the hub has everything up to {cursor}, the next must be {}",
            event.seq,
            cursor + 1
        )));
    }
    Ok(Placement::Next)
}

/// A repeated event must be what is stored under its seq (`stored`, the body).
fn check_repeat(site_id: &str, received: &Received, stored: Option<&str>) -> Result<()> {
    let event = received.event();
    match stored {
        Some(body) if body == received.body() => Ok(()),
        Some(_) => Err(Error::Protocol(format!(
            "event seq {} is already stored with different content; a record cannot be changed, send a correction instead",
            event.seq
        ))),
        None => Err(missing_below_cursor(site_id, event.seq)),
    }
}

/// The order an event's batch belongs to (`found`, looked up by batch), which must
/// be one the hub placed at this site.
fn check_batch_of_site(site_id: &str, event: &SiteEvent, found: Option<Order>) -> Result<Order> {
    let order = found.ok_or_else(|| {
        Error::PermissionDenied(format!(
            "event seq {} is for batch {}, which the hub never ordered",
            event.seq, event.batch_id
        ))
    })?;
    if order.site_id != site_id {
        return Err(Error::PermissionDenied(format!(
            "event seq {} is for batch {}, which belongs to another site",
            event.seq, event.batch_id
        )));
    }
    Ok(order)
}

/// The event must name `expected_prev`, the hash of the site's previous event.
fn check_chain(event: &SiteEvent, expected_prev: &str) -> Result<()> {
    if event.prev_sha256 != expected_prev {
        return Err(Error::Protocol(format!(
            "event seq {} breaks the site's hash chain: it names {} as the previous event's hash, \
             but event {} hashes to {expected_prev}; the site's log was altered",
            event.seq,
            event.prev_sha256,
            event.seq - 1
        )));
    }
    Ok(())
}

/// The error for a site event missing below the cursor.
fn missing_below_cursor(site_id: &str, seq: u64) -> Error {
    Error::Corrupt(format!(
        "site {site_id} event {seq} is missing below the cursor"
    ))
}

/// The projection an order's batch is in, to apply further records to.
fn projection_of(order: &Order) -> Projection {
    Projection {
        state: order.state,
        current_step: order.current_step.clone(),
        progress: order.progress.clone(),
        decision_recorded: order.decision_recorded,
    }
}

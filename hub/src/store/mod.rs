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
//! the same semantics, checked by one test suite (`hub/tests/store_suite/`, one case list run on every backend).

pub mod analytics;
pub mod backend;
pub mod deviations;
mod ingest;
pub use ingest::Counts as IngestCounts;
pub mod notify;
pub mod postgres;
mod qualifications;
mod recipe_changes;
mod rows;
pub mod schedule;
pub mod sqlite;
mod system;
mod transactions;

pub use notify::NotifyStore;
pub use transactions::{dry_run_refusal, AccountChange, GUARDED_ROLES, RESET_PENDING};

use crate::model::{
    BatchRecord, BatchState, IssuedCert, NewOrder, Order, Refusal, Signature, Site, SiteStatus,
    StoredEvent, StoredRecipe, User,
};
use crate::schedule::{Booking, Capacity, Moved};
use async_trait::async_trait;
use carrel_proto::event::{HubCommand, SiteEvent};
use carrel_proto::recipe::{Outcome, Recipe};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use schedule::DelayNotice;
use serde::Serialize;
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

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::FailedPrecondition(why) => Error::FailedPrecondition(why),
            Refusal::Invalid(why) => Error::Invalid(why),
            Refusal::PermissionDenied(why) => Error::PermissionDenied(why),
        }
    }
}

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

/// Recipe versions by (id, version), kept in memory: a published version never
/// changes, so a version read once is never read again. Shared by a backend's
/// connections (cloning shares it).
///
/// Ingest plans every message against its batches' recipes, so the writers take
/// them shared ([`RecipeCache::shared`]): a recipe is a few kilobytes of steps
/// and tests, and copying it once per message was about 4 % of the SQLite
/// writer's time in the durable-ingest benchmark.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecipeCache(std::sync::Arc<std::sync::Mutex<Recipes>>);

/// The recipes kept, by (id, version).
type Recipes = std::collections::HashMap<(String, u32), std::sync::Arc<StoredRecipe>>;

impl RecipeCache {
    pub(crate) fn get(&self, recipe_id: &str, version: u32) -> Option<StoredRecipe> {
        self.shared(recipe_id, version)
            .map(|found| (*found).clone())
    }

    pub(crate) fn shared(
        &self,
        recipe_id: &str,
        version: u32,
    ) -> Option<std::sync::Arc<StoredRecipe>> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&(recipe_id.to_owned(), version)).cloned()
    }

    /// Keeps a recipe under the id it is stored by, which for a dry run's copy of
    /// a draft (`<product>~dry-run-<n>`) is not its document's id.
    pub(crate) fn keep(
        &self,
        recipe_id: &str,
        version: u32,
        stored: StoredRecipe,
    ) -> std::sync::Arc<StoredRecipe> {
        let stored = std::sync::Arc::new(stored);
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert((recipe_id.to_owned(), version), stored.clone());
        stored
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
///
/// The methods that change anything are written here, once, as one transaction
/// ([`transactions`]) on the backend's primitives ([`backend::WriteTx`]), and so are
/// the reads that need one snapshot ([`backend::ReadTx`]); a backend implements the
/// other reads, [`backend::Reads::read`] and [`backend::Writes::write`].
pub trait Store:
    backend::Reads
    + backend::Writes
    + schedule::ScheduleStore
    + notify::NotifyStore
    + Send
    + Sync
    + 'static
{
    // -- recipes --
    /// Publishes a recipe version; publishing the same document again is a no-op, a
    /// different document under an existing version is refused.
    async fn publish_recipe(&self, recipe: &Recipe) -> Result<()> {
        transactions::publish_recipe(self.write().await?, recipe, Utc::now()).await
    }
    async fn recipe(&self, recipe_id: &str, version: u32) -> Result<StoredRecipe> {
        self.read().await?.recipe(recipe_id, version).await
    }
    /// The version of a product new orders pin now: the newest that is not retired
    /// and is effective (from its publication, or its approved date); `NotFound`
    /// when there is none.
    async fn latest_recipe(&self, recipe_id: &str) -> Result<StoredRecipe>;
    async fn list_recipes(&self) -> Result<Vec<StoredRecipe>>;

    // -- people --
    /// Adds a user; `actor` is who added them (audited).
    async fn add_user(&self, user: &User, actor: &str) -> Result<()> {
        transactions::add_user(self.write().await?, user, actor, Utc::now()).await
    }
    async fn user(&self, username: &str) -> Result<User>;
    async fn list_users(&self) -> Result<Vec<User>>;
    async fn create_session(
        &self,
        token_sha256: &str,
        username: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let tx = self.write().await?;
        transactions::create_session(tx, token_sha256, username, expires_at, Utc::now()).await
    }
    /// Assigns a person to a site and sends the site their entry; returns the site's
    /// new directory version. Assigning again re-sends it (and unlocks them there).
    async fn assign_user_to_site(&self, username: &str, site_id: &str, actor: &str) -> Result<u64> {
        transactions::assign_user_to_site(self.write().await?, username, site_id, actor, Utc::now())
            .await
    }
    /// Removes a person from a site; returns the site's new directory version.
    async fn remove_user_from_site(
        &self,
        username: &str,
        site_id: &str,
        actor: &str,
    ) -> Result<u64> {
        transactions::remove_user_from_site(
            self.write().await?,
            username,
            site_id,
            actor,
            Utc::now(),
        )
        .await
    }
    /// Disables or enables a user, at the hub and at every site they work at;
    /// returns those sites with their new directory versions.
    async fn set_user_disabled(
        &self,
        username: &str,
        disabled: bool,
        reason: &str,
        actor: &str,
    ) -> Result<Vec<(String, u64)>> {
        transactions::set_user_disabled(
            self.write().await?,
            username,
            disabled,
            reason,
            actor,
            Utc::now(),
        )
        .await
    }
    /// Changes an account (password, role, a reset) and sends the person's entry to
    /// every site they work at; returns those sites with their new directory versions.
    async fn change_account(
        &self,
        username: &str,
        change: &AccountChange,
        reason: &str,
        actor: &str,
    ) -> Result<Vec<(String, u64)>> {
        transactions::change_account(
            self.write().await?,
            username,
            change,
            reason,
            actor,
            Utc::now(),
        )
        .await
    }
    /// Asks for a role change; `true` when it waits for a second administrator
    /// ([`transactions::request_role_grant`]).
    async fn request_role_grant(
        &self,
        username: &str,
        role: crate::model::Role,
        reason: &str,
        actor: &str,
    ) -> Result<bool> {
        transactions::request_role_grant(
            self.write().await?,
            username,
            role,
            reason,
            actor,
            Utc::now(),
        )
        .await
    }
    /// A second administrator approves the grant waiting for `username`.
    async fn approve_role_grant(
        &self,
        username: &str,
        reason: &str,
        approver: &str,
    ) -> Result<(crate::model::Role, Vec<(String, u64)>)> {
        transactions::approve_role_grant(
            self.write().await?,
            username,
            reason,
            approver,
            Utc::now(),
        )
        .await
    }
    /// Role grants waiting for a second administrator.
    async fn pending_role_grants(&self) -> Result<Vec<backend::RoleGrant>> {
        let mut tx = self.write().await?;
        tx.pending_role_grants(None).await
    }
    /// Issues (or replaces) a person's bedside badge, sent to every site they work at;
    /// returns those sites with their new directory versions.
    async fn issue_badge(
        &self,
        username: &str,
        badge_id: &str,
        pin_hash: &str,
        actor: &str,
    ) -> Result<Vec<(String, u64)>> {
        transactions::issue_badge(
            self.write().await?,
            username,
            badge_id,
            pin_hash,
            actor,
            Utc::now(),
        )
        .await
    }
    // -- per-site product authorisation --
    /// Records QA's signed qualification of a site for a product (replacing the one
    /// in force for them); audited.
    async fn qualify_site(&self, qualification: &crate::model::Qualification) -> Result<()> {
        qualifications::qualify(self.write().await?, qualification).await
    }
    /// Withdraws a site's qualification in force for a product; audited.
    async fn withdraw_site_qualification(
        &self,
        site_id: &str,
        recipe_id: &str,
        withdrawal: &crate::model::StatusChange,
    ) -> Result<()> {
        qualifications::withdraw(self.write().await?, site_id, recipe_id, withdrawal).await
    }
    /// Qualifications, withdrawn ones too (one site's or all).
    async fn site_qualifications(
        &self,
        site_id: Option<&str>,
    ) -> Result<Vec<crate::model::Qualification>> {
        self.read().await?.site_qualifications(site_id).await
    }
    // -- recipes under change control --
    /// Saves a draft of a new recipe version by its author (an edit takes a
    /// submitted draft back to a draft); audited.
    async fn save_recipe_draft(
        &self,
        recipe: &carrel_proto::recipe::Recipe,
        author: &str,
    ) -> Result<crate::model::recipe_change::RecipeDraft> {
        recipe_changes::save_draft(self.write().await?, recipe, author, Utc::now()).await
    }
    /// The author's signed submission of a draft as read (`signature.sha256`).
    async fn submit_recipe(
        &self,
        recipe_id: &str,
        version: u32,
        signature: &crate::model::recipe_change::DraftSignature,
    ) -> Result<crate::model::recipe_change::RecipeDraft> {
        recipe_changes::submit(
            self.write().await?,
            recipe_id,
            version,
            signature,
            Utc::now(),
        )
        .await
    }
    /// Another QA person's signed approval; the version is published, effective
    /// from `effective_from`.
    async fn approve_recipe(
        &self,
        recipe_id: &str,
        version: u32,
        signature: &crate::model::recipe_change::DraftSignature,
        effective_from: DateTime<Utc>,
    ) -> Result<crate::model::recipe_change::RecipeDraft> {
        recipe_changes::approve(
            self.write().await?,
            recipe_id,
            version,
            signature,
            effective_from,
            Utc::now(),
        )
        .await
    }
    /// Sends a draft as it is now to the hub's simulator site for a dry run: the
    /// dry-run batch's order and the SHA-256 of the draft text it runs (`facility`
    /// numbers its COI). Refused when the simulator site was not heard from since
    /// `heard_since`. Audited.
    async fn dry_run_draft(
        &self,
        recipe_id: &str,
        version: u32,
        by: &str,
        facility: &str,
        heard_since: DateTime<Utc>,
    ) -> Result<(Order, String)> {
        recipe_changes::dry_run(
            self.write().await?,
            recipe_id,
            version,
            by,
            facility,
            heard_since,
            Utc::now(),
        )
        .await
    }
    /// Retires a published version, with a reason.
    async fn retire_recipe(
        &self,
        recipe_id: &str,
        version: u32,
        reason: &str,
        by: &str,
    ) -> Result<()> {
        recipe_changes::retire(
            self.write().await?,
            recipe_id,
            version,
            reason,
            by,
            Utc::now(),
        )
        .await
    }
    /// A draft; `None` when the version was never drafted.
    async fn recipe_draft(
        &self,
        recipe_id: &str,
        version: u32,
    ) -> Result<Option<crate::model::recipe_change::RecipeDraft>> {
        self.read().await?.recipe_draft(recipe_id, version).await
    }
    async fn recipe_drafts(&self) -> Result<Vec<crate::model::recipe_change::RecipeDraft>> {
        self.read().await?.recipe_drafts().await
    }
    /// (effective from, retired at) of a published version.
    async fn recipe_dates(
        &self,
        recipe_id: &str,
        version: u32,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
        self.read().await?.recipe_dates(recipe_id, version).await
    }

    // -- process analytics --
    /// Writes the measures of stored site events that the backend keeps back for
    /// a moment (SQLite's writer does, `sqlite/ingest.rs`), so that what is read
    /// next counts every stored event. Every read of measures below calls it
    /// first. PostgreSQL writes measures with their events: nothing to do.
    async fn fold_measures(&self) -> Result<()> {
        Ok(())
    }
    /// The stored measures of one attribute of a product, in the order the batches
    /// were placed.
    async fn batch_measures(
        &self,
        product_id: &str,
        attribute: &str,
    ) -> Result<Vec<crate::model::analytics::measure::Stored>> {
        self.fold_measures().await?;
        self.read()
            .await?
            .batch_measures(product_id, attribute)
            .await
    }
    /// The attributes measured of a product's batches, with their unit.
    async fn measure_attributes(&self, product_id: &str) -> Result<Vec<(String, String)>> {
        self.fold_measures().await?;
        self.read().await?.measure_attributes(product_id).await
    }
    /// The products whose batches have measures.
    async fn measured_products(&self) -> Result<Vec<String>> {
        self.fold_measures().await?;
        self.read().await?.measured_products().await
    }
    /// A batch's trajectory points: `(attribute, bin hours, point)`.
    async fn batch_trajectory(
        &self,
        batch_id: Uuid,
    ) -> Result<Vec<(String, f64, crate::model::analytics::golden::Point)>> {
        self.fold_measures().await?;
        self.read().await?.batch_trajectory(batch_id).await
    }
    /// The released batches' bin means of one attribute of a product, in bins
    /// `bin_hours` wide: `(batch, bin, mean)`.
    async fn released_trajectories(
        &self,
        product_id: &str,
        attribute: &str,
        bin_hours: f64,
    ) -> Result<Vec<(Uuid, u32, f64)>> {
        self.fold_measures().await?;
        self.read()
            .await?
            .released_trajectories(product_id, attribute, bin_hours)
            .await
    }
    /// The baseline in force for a product (the latest chosen), if any.
    async fn analytics_baseline(
        &self,
        product_id: &str,
    ) -> Result<Option<crate::model::analytics::measure::Baseline>> {
        Ok(self
            .read()
            .await?
            .analytics_baselines(product_id)
            .await?
            .pop())
    }
    /// Chooses a product's baseline (audited); see [`analytics::choose_baseline`].
    async fn choose_baseline(
        &self,
        choice: &analytics::BaselineChoice<'_>,
    ) -> Result<crate::model::analytics::measure::Baseline> {
        self.fold_measures().await?;
        analytics::choose_baseline(self.write().await?, choice, Utc::now()).await
    }

    /// Once per database: makes the measures of the batches whose records were
    /// stored before measures were kept (an upgrade), batch by batch from their
    /// records, before the hub serves. Answers how many batches it went through, or
    /// `None` when this was done before.
    async fn backfill_measures(&self) -> Result<Option<usize>> {
        // A batch's measures are replaced whole: none may be kept back for later.
        self.fold_measures().await?;
        if !analytics::needs_backfill(self.write().await?).await? {
            return Ok(None);
        }
        let orders = self.list_orders(None, None).await?;
        for order in &orders {
            // One batch that cannot be done (a record that no longer reads) must
            // not keep the hub from starting: it is left off the charts, and said.
            if let Err(e) = analytics::backfill_batch(self.write().await?, order.batch_id).await {
                tracing::error!(batch_id = %order.batch_id, error = %e, "could not make this batch's analytics measures from its record; the charts leave it out");
            }
        }
        analytics::backfilled(self.write().await?, Utc::now()).await?;
        Ok(Some(orders.len()))
    }

    /// Keeps new trend signals; see [`analytics::record_trend_signal`].
    /// One transaction per signal, so no two sites are locked together; a batch
    /// that cannot be found is logged and skipped.
    async fn record_trend_signals(
        &self,
        signals: &[crate::model::analytics::trend::TrendSignal],
    ) -> Result<usize> {
        let mut new = 0;
        for signal in signals {
            match analytics::record_trend_signal(self.write().await?, signal, Utc::now()).await {
                Ok(true) => new += 1,
                Ok(false) => {}
                Err(Error::NotFound(what)) => {
                    tracing::warn!(%what, batch_id = %signal.batch_id, "a trend signal's batch was not found; skipped")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(new)
    }

    // -- deviations --
    /// The deviations of a batch, or of every batch, oldest first.
    async fn deviations(
        &self,
        batch_id: Option<Uuid>,
    ) -> Result<Vec<crate::model::deviation::Deviation>> {
        let mut tx = self.read().await?;
        let events = tx.deviation_events(batch_id).await?;
        let rows = tx.deviation_rows(batch_id).await?;
        let notes = tx.deviation_notes(batch_id).await?;
        Ok(crate::model::deviation::register(&events, &rows, &notes))
    }
    /// Raises a deviation at the hub (audited); `Invalid` for a classification,
    /// description or step that does not hold.
    async fn raise_deviation(
        &self,
        new: &deviations::NewDeviation,
    ) -> Result<crate::model::deviation::Deviation> {
        deviations::raise(self.write().await?, new, Utc::now()).await
    }
    /// Adds an investigation note to an open deviation (audited).
    async fn add_deviation_note(
        &self,
        batch_id: Uuid,
        deviation_id: &str,
        text: &str,
        author: &str,
    ) -> Result<crate::model::deviation::Deviation> {
        deviations::add_note(
            self.write().await?,
            batch_id,
            deviation_id,
            text,
            author,
            Utc::now(),
        )
        .await
    }
    /// Closes an open deviation with QA's signed root cause (audited); a closed one
    /// is refused.
    async fn close_deviation(
        &self,
        batch_id: Uuid,
        deviation_id: &str,
        closure: &crate::model::deviation::Closure,
    ) -> Result<crate::model::deviation::Deviation> {
        deviations::close(
            self.write().await?,
            batch_id,
            deviation_id,
            closure,
            Utc::now(),
        )
        .await
    }

    // -- system accounts (integration engines at the FHIR door) --
    /// Makes a system account for the physicians it names (each a physician's account,
    /// not disabled), audited as done by `account.created_by`; `AlreadyExists` when
    /// the client id is taken.
    async fn add_system_account(
        &self,
        account: &crate::model::SystemAccount,
    ) -> Result<crate::model::SystemAccount> {
        system::add_system_account(self.write().await?, account, Utc::now()).await
    }
    /// A system account; `NotFound` when unknown.
    async fn system_account(&self, client_id: &str) -> Result<crate::model::SystemAccount> {
        self.read().await?.system_account(client_id).await
    }
    async fn list_system_accounts(&self) -> Result<Vec<crate::model::SystemAccount>> {
        self.read().await?.system_accounts().await
    }
    /// Adds physicians to and removes them from an account's scope, with a reason.
    async fn change_system_scope(
        &self,
        client_id: &str,
        add: &[String],
        remove: &[String],
        reason: &str,
        actor: &str,
    ) -> Result<crate::model::SystemAccount> {
        system::change_system_scope(
            self.write().await?,
            client_id,
            add,
            remove,
            reason,
            actor,
            Utc::now(),
        )
        .await
    }
    /// Disables (ending its tokens) or enables a system account, with a reason.
    async fn set_system_account_disabled(
        &self,
        client_id: &str,
        disabled: bool,
        reason: &str,
        actor: &str,
    ) -> Result<crate::model::SystemAccount> {
        system::set_system_account_disabled(
            self.write().await?,
            client_id,
            disabled,
            reason,
            actor,
            Utc::now(),
        )
        .await
    }
    /// Replaces a system account's secret hash; its tokens end.
    async fn rotate_system_secret(
        &self,
        client_id: &str,
        secret_hash: &str,
        reason: &str,
        actor: &str,
    ) -> Result<crate::model::SystemAccount> {
        system::rotate_system_secret(
            self.write().await?,
            client_id,
            secret_hash,
            reason,
            actor,
            Utc::now(),
        )
        .await
    }
    /// Keeps an access token of a system account (refused when it is disabled).
    async fn issue_system_token(
        &self,
        client_id: &str,
        token_sha256: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        system::issue_system_token(
            self.write().await?,
            client_id,
            token_sha256,
            expires_at,
            Utc::now(),
        )
        .await
    }
    /// The system account holding a live access token; `NotFound` when the token
    /// is unknown or expired.
    async fn system_token_account(
        &self,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<crate::model::SystemAccount> {
        let mut tx = self.read().await?;
        let client_id = tx
            .system_token_client(token_sha256, now)
            .await?
            .ok_or_else(|| Error::NotFound("access token".into()))?;
        tx.system_account(&client_id).await
    }
    /// The site's directory commands, in seq order.
    async fn site_directory(&self, site_id: &str) -> Result<Vec<HubCommand>> {
        self.read().await?.site_directory(site_id).await
    }
    /// The user of a live session, or `NotFound` when unknown or expired.
    async fn session_user(&self, token_sha256: &str, now: DateTime<Utc>) -> Result<User>;
    async fn delete_session(&self, token_sha256: &str) -> Result<()> {
        transactions::delete_session(self.write().await?, token_sha256, Utc::now()).await
    }

    // -- audit trail --
    /// Appends an entry on its own (for happenings that change no other record, such
    /// as a failed sign-in). Changes made by the other methods are audited by them,
    /// in the same transaction.
    async fn audit(&self, entry: &crate::audit::NewEntry) -> Result<()> {
        transactions::audit(self.write().await?, entry, Utc::now()).await
    }
    /// Entries in position order; only those of one batch when `batch_id` is given.
    async fn audit_entries(&self, batch_id: Option<Uuid>) -> Result<Vec<crate::audit::Entry>> {
        let trail = self.read().await?.audit_trail(batch_id).await?;
        Ok(trail.into_iter().map(|(entry, _)| entry).collect())
    }
    async fn audit_count(&self, action: crate::audit::Action) -> Result<u64>;
    /// Whether `username` may try to sign in (or sign) from `source` in the window
    /// starting at `window_start`, given the failures counted there.
    async fn sign_in_gate(
        &self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
        limits: FailureLimits,
    ) -> Result<Gate> {
        transactions::sign_in_gate(self.read().await?, username, source, window_start, limits).await
    }
    /// Counts a failed sign-in or signing; audits a lock or throttle as it begins.
    async fn count_sign_in_failure(
        &self,
        username: &str,
        source: &str,
        window: (DateTime<Utc>, DateTime<Utc>),
        limits: FailureLimits,
    ) -> Result<Gate> {
        transactions::count_sign_in_failure(
            self.write().await?,
            username,
            source,
            window.0,
            window.1,
            limits,
            Utc::now(),
        )
        .await
    }
    /// Writes the counts of ended windows of failed sign-ins into the audit trail.
    async fn report_sign_in_failures(&self, window: chrono::Duration) -> Result<usize> {
        transactions::report_sign_in_failures(self.write().await?, window, Utc::now()).await
    }
    /// When a session first signed, if it has.
    async fn session_signed_at(&self, token_sha256: &str) -> Result<Option<DateTime<Utc>>> {
        self.read().await?.session_signed_at(token_sha256).await
    }
    async fn mark_session_signed(&self, token_sha256: &str) -> Result<()> {
        transactions::mark_session_signed(self.write().await?, token_sha256, Utc::now()).await
    }
    /// Keeps (once) that `username` acknowledged the meaning of their electronic
    /// signature, in the words of `statement`; returns the user as now stored.
    async fn acknowledge_signature(&self, username: &str, statement: &str) -> Result<User> {
        transactions::acknowledge_signature(self.write().await?, username, statement, Utc::now())
            .await
    }
    /// The newest audit entry: (position, hash).
    async fn audit_head(&self) -> Result<Option<(u64, String)>> {
        self.read().await?.audit_head().await
    }
    /// Checks a head a site witnessed against the trail ([`transactions::check_witness`]).
    async fn check_witness(
        &self,
        site_id: &str,
        position: u64,
        sha256: &str,
    ) -> Result<Option<crate::audit::Finding>> {
        transactions::check_witness(self.write().await?, site_id, position, sha256, Utc::now())
            .await
    }
    /// Checks every kept witness against the trail (at start, and `audit verify`):
    /// returns the findings open after that.
    async fn check_witnesses(&self) -> Result<Vec<crate::audit::Finding>> {
        let witnesses = self.read().await?.audit_witnesses().await?;
        for (site_id, position, sha256, _) in witnesses {
            self.check_witness(&site_id, position, &sha256).await?;
        }
        self.read().await?.audit_findings(true).await
    }
    /// Integrity findings; only open ones when `open`.
    async fn audit_findings(&self, open: bool) -> Result<Vec<crate::audit::Finding>> {
        self.read().await?.audit_findings(open).await
    }
    /// The latest head each site witnessed: (site, position, hash, when).
    async fn audit_witnesses(&self) -> Result<Vec<(String, u64, String, DateTime<Utc>)>> {
        self.read().await?.audit_witnesses().await
    }
    /// An administrator acknowledges the open findings, with a reason.
    async fn acknowledge_findings(
        &self,
        by: &str,
        reason: &str,
    ) -> Result<Vec<crate::audit::Finding>> {
        transactions::acknowledge_findings(self.write().await?, by, reason, Utc::now()).await
    }
    /// Walks the whole chain.
    async fn verify_audit(&self) -> Result<Result<crate::audit::Intact, crate::audit::Broken>> {
        Ok(crate::audit::verify(
            self.read().await?.audit_trail(None).await?,
        ))
    }

    // -- sites and enrollment --
    async fn add_site(
        &self,
        site_id: &str,
        name: &str,
        token_sha256: &str,
        token_expires_at: DateTime<Utc>,
        actor: &str,
    ) -> Result<Site> {
        let tx = self.write().await?;
        transactions::add_site(
            tx,
            site_id,
            name,
            token_sha256,
            token_expires_at,
            actor,
            Utc::now(),
        )
        .await
    }
    /// The site an unused, unexpired enrollment token belongs to.
    async fn site_for_token(&self, token_sha256: &str, now: DateTime<Utc>) -> Result<Site> {
        match self.site_holding_token(token_sha256).await? {
            None => Err(Error::PermissionDenied(
                "enrollment token is unknown or was already used".into(),
            )),
            Some((site, Some(expires))) if expires > now => Ok(site),
            Some(_) => Err(Error::PermissionDenied(
                "enrollment token has expired".into(),
            )),
        }
    }
    /// The site holding an enrollment token, with when the token expires.
    async fn site_holding_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<(Site, Option<DateTime<Utc>>)>>;
    /// Uses the token up and records the certificate issued with it; fails if the
    /// token was used meanwhile.
    async fn complete_enrollment(
        &self,
        site_id: &str,
        token_sha256: &str,
        cert: &IssuedCert,
        now: DateTime<Utc>,
    ) -> Result<Site> {
        let tx = self.write().await?;
        transactions::complete_enrollment(tx, site_id, token_sha256, cert, now).await
    }
    async fn site(&self, site_id: &str) -> Result<Site> {
        self.read().await?.site(site_id).await
    }
    async fn list_sites(&self) -> Result<Vec<Site>>;
    /// The site link protocol version the site's agent last spoke ("" if unknown).
    async fn site_protocol(&self, site_id: &str) -> Result<String> {
        self.read().await?.site_protocol(site_id).await
    }
    /// Keeps the site link protocol version the site's agent spoke in its Hello.
    async fn note_site_protocol(&self, site_id: &str, version: &str) -> Result<()> {
        let mut tx = self.write().await?;
        tx.set_site_protocol(site_id, version).await?;
        tx.commit().await
    }
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
    ) -> Result<Site> {
        let tx = self.write().await?;
        transactions::set_site_status(tx, site_id, status, actor, reason, Utc::now()).await
    }
    /// Records a certificate renewed over the site's link as pending: it becomes the
    /// site's certificate when the site first connects with it.
    async fn record_renewed_certificate(
        &self,
        site_id: &str,
        cert: &IssuedCert,
        now: DateTime<Utc>,
    ) -> Result<Site> {
        let tx = self.write().await?;
        transactions::record_renewed_certificate(tx, site_id, cert, now).await
    }
    /// The site connected with its pending certificate: it replaces the old one,
    /// which is no longer accepted.
    async fn promote_pending_certificate(
        &self,
        site_id: &str,
        cert_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Site> {
        let tx = self.write().await?;
        transactions::promote_pending_certificate(tx, site_id, cert_sha256, now).await
    }
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
    /// What this process's writer of site events has committed since the store was
    /// opened (transactions, requests, new events), as it counted them.
    fn ingest_counts(&self) -> ingest::Counts;
    async fn commands_after(
        &self,
        site_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<HubCommand>>;
    /// Records that the site committed every command up to `seq`.
    async fn ack_commands(&self, site_id: &str, seq: u64) -> Result<()> {
        transactions::ack_commands(self.write().await?, site_id, seq).await
    }

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

    // -- scheduling (reads in [`schedule::ScheduleStore`]) --
    /// Declares or replaces a site's capacity, audited with the old and new document.
    /// Refused, and nothing changed, while the site has open orders placed without a
    /// booking (their instrument time would be unaccounted for), or when the site's
    /// bookings would not fit the new capacity ([`schedule::conflicts`]).
    async fn set_capacity(
        &self,
        site_id: &str,
        capacity: &Capacity,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let tx = self.write().await?;
        transactions::set_capacity(tx, site_id, capacity, actor, now).await
    }
    /// Moves an order's collection to `date` (the earliest free slot that day), in one
    /// transaction: refused, and nothing changed, unless the order is booked, its
    /// collection has not started, and the new date is free.
    async fn reschedule_order(
        &self,
        order_id: Uuid,
        date: NaiveDate,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Booking> {
        let tx = self.write().await?;
        transactions::reschedule_order(tx, order_id, date, reason, by, now).await
    }
    /// Stores re-planned expected times of a booking; with a notice, also audits the
    /// delay (`order.delayed`) and remembers the release announced. Nothing is
    /// changed unless the booking is still active and as `seen` (not rescheduled
    /// meanwhile). Returns whether the notice was recorded (not when another process
    /// announced first).
    async fn store_replan(
        &self,
        seen: &Booking,
        moved: &Moved,
        notice: Option<&DelayNotice>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let tx = self.write().await?;
        transactions::store_replan(tx, seen, moved, notice, now).await
    }
    /// Frees what a booking holds (its batch was decided, cancelled or closed); the
    /// booking stays readable for the order's clock.
    async fn release_booking(&self, order_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write().await?;
        tx.release_booking(order_id, now).await?;
        tx.commit().await
    }

    // -- orders and release --
    async fn create_order(&self, order: &NewOrder, now: DateTime<Utc>) -> Result<Order> {
        transactions::create_order(self.write().await?, order, now).await
    }
    async fn order(&self, order_id: Uuid) -> Result<Order> {
        self.order_by(backend::OrderKey::Order(order_id)).await
    }
    async fn order_by_batch(&self, batch_id: Uuid) -> Result<Order> {
        self.order_by(backend::OrderKey::Batch(batch_id)).await
    }
    /// An order with its batch, by order id or batch id; `NotFound` when unknown.
    async fn order_by(&self, key: backend::OrderKey) -> Result<Order> {
        self.read().await?.order(key).await
    }
    /// Orders for patients (not dry runs), newest first; only one physician's when
    /// `physician` is given.
    async fn list_orders(
        &self,
        physician: Option<&str>,
        state: Option<BatchState>,
    ) -> Result<Vec<Order>>;
    /// The dry runs of a product's draft version, oldest first, each with the
    /// SHA-256 of the draft text it ran (dry runs are not in [`Self::list_orders`]).
    async fn dry_runs_of(&self, product: &str, version: u32) -> Result<Vec<(Order, String)>>;
    /// The orders of a patient for a product that are still open (not infused,
    /// rejected or cancelled), oldest first.
    async fn open_orders_of_patient(
        &self,
        patient_pseudonym: &str,
        recipe_id: &str,
    ) -> Result<Vec<Order>>;
    /// The order a physician's request (its one-time key) placed, if it did.
    async fn order_of_request(&self, physician: &str, request_id: Uuid) -> Result<Option<Uuid>>;
    async fn cancel_order(
        &self,
        order_id: Uuid,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Order> {
        transactions::cancel_order(self.write().await?, order_id, reason, by, now).await
    }
    async fn batch_events(&self, batch_id: Uuid) -> Result<Vec<StoredEvent>> {
        self.read().await?.events_of_batch(batch_id).await
    }
    /// Everything recorded of a batch, read from one snapshot so the parts agree.
    async fn batch_record(&self, batch_id: Uuid) -> Result<BatchRecord> {
        let mut snapshot = self.read().await?;
        let order = snapshot.order(backend::OrderKey::Batch(batch_id)).await?;
        Ok(BatchRecord {
            recipe: (snapshot.recipe(&order.recipe_id, order.recipe_version)).await?,
            events: snapshot.events_of_batch(batch_id).await?,
            qc: snapshot.qc_of_batch(batch_id).await?,
            signatures: snapshot.signatures_of_batch(batch_id).await?,
            change_reviews: snapshot.change_reviews_of_batch(batch_id).await?,
            follow_up_closures: snapshot.follow_up_closures(Some(batch_id)).await?,
            audit: (snapshot.audit_trail(Some(batch_id)).await?)
                .into_iter()
                .map(|(entry, _)| entry)
                .collect(),
            directory: snapshot.site_directory(&order.site_id).await?,
            order,
        })
    }
    /// Stores a signature, moves the batch to its final state and queues the decision
    /// for the site, in one transaction; refused unless the batch awaits release and
    /// its record still hashes to `signature.record_sha256`, the signer made or
    /// verified none of its records, and (unless `accept_simulated`) no record of it
    /// was made by a simulator's operators.
    async fn sign_release(
        &self,
        signature: &Signature,
        accept_simulated: bool,
        now: DateTime<Utc>,
    ) -> Result<Order> {
        transactions::sign_release(self.write().await?, signature, accept_simulated, now).await
    }
    /// Stores a QA person's signed review of the records that arrived after the
    /// batch's decision; refused unless some await review and the record still
    /// hashes to `review.record_sha256`.
    async fn review_change(&self, review: &crate::model::ChangeReview) -> Result<Order> {
        transactions::review_change(self.write().await?, review, Utc::now()).await
    }
    /// Completes a conditional release with QA's signature (see
    /// [`transactions::complete_release`]).
    async fn complete_release(
        &self,
        signature: &Signature,
        accept_simulated: bool,
    ) -> Result<Order> {
        transactions::complete_release(self.write().await?, signature, accept_simulated, Utc::now())
            .await
    }
    /// Closes a patient follow-up with QA's signature.
    async fn close_follow_up(&self, closure: &crate::model::FollowUpClosure) -> Result<Order> {
        transactions::close_follow_up(self.write().await?, closure, Utc::now()).await
    }
    /// Patient follow-ups: every batch's (open ones only unless `all`), oldest first.
    async fn follow_ups(&self, all: bool) -> Result<Vec<crate::model::FollowUp>> {
        let mut orders = Vec::new();
        for state in [
            BatchState::Released,
            BatchState::HandedOver,
            BatchState::Infused,
        ] {
            orders.extend(self.list_orders(None, Some(state)).await?);
        }
        // Read after the orders: a closure signed meanwhile is found with its mark.
        let closures = self.read().await?.follow_up_closures(None).await?;
        let mut found = Vec::new();
        {
            for order in orders {
                for mark in &order.progress.follow_ups {
                    if mark.closed && !all {
                        continue;
                    }
                    let closure = closures
                        .iter()
                        .find(|c| c.batch_id == order.batch_id && c.site_seq == mark.site_seq)
                        .cloned();
                    found.push(crate::model::FollowUp {
                        order: order.clone(),
                        mark: mark.clone(),
                        closure,
                    });
                }
            }
        }
        found.sort_by_key(|f| (f.mark.opened_at, f.order.batch_id, f.mark.site_seq));
        Ok(found)
    }
}

/// The row of `sign_in_failures` that counts every failure of a source.
pub(crate) const ANY_USER: &str = "*";

/// What the failures counted so far allow, before a password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// This user name from this source has failed too often in this window.
    UserLocked(u64),
    /// This source has failed too often in this window, for any user names.
    SourceThrottled(u64),
}

/// Limits of failed sign-ins per window.
#[derive(Debug, Clone, Copy)]
pub struct FailureLimits {
    pub per_user_and_source: u64,
    pub per_source: u64,
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

//! What a database backend supplies to the store: the reads of one transaction
//! ([`ReadTx`], also a read-only snapshot) and the primitives of one write
//! transaction ([`WriteTx`]), each a statement or two of the backend's own SQL.
//!
//! No rule lives here. Who may do what, in which state, and what is audited is
//! decided once, in [`super::transactions`], over these primitives; a backend only
//! says how to read and write its tables. A backend that adds a primitive adds it
//! here and in every backend; a new transaction is written once, in
//! `transactions.rs`, with a case in the store suite (`hub/tests/store_suite`) that
//! runs on every backend.

use super::Result;
use crate::audit::{Entry, NewEntry};
use crate::model::deviation::{Closure, DeviationRow, Note as DeviationNote};
use crate::model::notification::happening::{self, Happening, OrderFacts, SiteEventFacts};
use crate::model::notification::{OutboxEntry, Subscription};
use crate::model::recipe_change::RecipeDraft;
use crate::model::{
    BatchState, ChangeReview, IssuedCert, Order, Progress, Projection, QcRecord, Qualification,
    Role, Signature, Site, SiteStatus, StatusChange, StoredEvent, StoredRecipe, SystemAccount,
    User,
};
use crate::schedule::{Booking, Capacity, Plan};
use async_trait::async_trait;
use carrel_proto::event::HubCommand;
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Which id an order is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    Order(Uuid),
    Batch(Uuid),
}

impl OrderKey {
    /// The column of `orders` this id is kept in.
    pub fn column(self) -> &'static str {
        match self {
            OrderKey::Order(_) => "order_id",
            OrderKey::Batch(_) => "batch_id",
        }
    }

    pub fn id(self) -> Uuid {
        match self {
            OrderKey::Order(id) | OrderKey::Batch(id) => id,
        }
    }

    /// What was not found, in the words of a `NotFound` error.
    pub fn not_found(self) -> super::Error {
        match self {
            OrderKey::Order(id) => super::Error::NotFound(format!("order {id}")),
            OrderKey::Batch(id) => super::Error::NotFound(format!("batch {id}")),
        }
    }
}

/// The reads of one transaction: of a read-only snapshot ([`Reads::read`]), where
/// every read sees the same committed state, or of a write transaction.
#[async_trait]
pub trait ReadTx: Send {
    /// The site; `NotFound` when unknown.
    async fn site(&mut self, site_id: &str) -> Result<Site>;
    /// The site link protocol version the site's agent last spoke ("" if unknown).
    async fn site_protocol(&mut self, site_id: &str) -> Result<String>;
    /// The order with its batch projection; `NotFound` when unknown.
    async fn order(&mut self, key: OrderKey) -> Result<Order>;
    /// A published recipe version; `NotFound` when unknown.
    async fn recipe(&mut self, recipe_id: &str, version: u32) -> Result<StoredRecipe>;
    /// The site events of a batch, in the order they are hashed into its record.
    async fn events_of_batch(&mut self, batch_id: Uuid) -> Result<Vec<StoredEvent>>;
    /// The QC results of a batch, in the site's order.
    async fn qc_of_batch(&mut self, batch_id: Uuid) -> Result<Vec<QcRecord>>;
    /// The release signatures of a batch, oldest first.
    async fn signatures_of_batch(&mut self, batch_id: Uuid) -> Result<Vec<Signature>>;
    /// The audit trail in position order (only one batch's entries when `batch_id`
    /// is given), each entry with its time as it was hashed.
    async fn audit_trail(&mut self, batch_id: Option<Uuid>) -> Result<Vec<(Entry, String)>>;
    /// The site's directory commands (`person_updated`), in seq order: the history
    /// of who could act at the site, version by version.
    async fn site_directory(&mut self, site_id: &str) -> Result<Vec<HubCommand>>;
    /// QA's signed reviews of records that arrived after a batch's decision, oldest first.
    async fn change_reviews_of_batch(&mut self, batch_id: Uuid) -> Result<Vec<ChangeReview>>;
    /// QA's closures of patient follow-ups (of one batch, or of every batch), oldest first.
    async fn follow_up_closures(
        &mut self,
        batch_id: Option<Uuid>,
    ) -> Result<Vec<crate::model::FollowUpClosure>>;
    /// A recipe version under change control; `None` when never drafted.
    async fn recipe_draft(&mut self, recipe_id: &str, version: u32) -> Result<Option<RecipeDraft>>;
    /// Every recipe version under change control, by product and version.
    async fn recipe_drafts(&mut self) -> Result<Vec<RecipeDraft>>;
    /// Sites' product qualifications, withdrawn ones too (one site's, or every
    /// site's), by site, product and time qualified.
    async fn site_qualifications(&mut self, site_id: Option<&str>) -> Result<Vec<Qualification>>;
    /// (effective from, retired at) of a published version; `NotFound` when unknown.
    async fn recipe_dates(
        &mut self,
        recipe_id: &str,
        version: u32,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>)>;
    /// The charted measures of one attribute of a product (not the ambiguous), in
    /// the order the batches were placed (dry runs have none).
    async fn batch_measures(
        &mut self,
        product_id: &str,
        attribute: &str,
    ) -> Result<Vec<crate::model::analytics::measure::Stored>>;
    /// The attributes a product's batches have measures of, with their unit.
    async fn measure_attributes(&mut self, product_id: &str) -> Result<Vec<(String, String)>>;
    /// The products with measures.
    async fn measured_products(&mut self) -> Result<Vec<String>>;
    /// The baselines chosen for a product, oldest first.
    async fn analytics_baselines(
        &mut self,
        product_id: &str,
    ) -> Result<Vec<crate::model::analytics::measure::Baseline>>;
    /// The batches of a product with measures placed in `from..to`, in order.
    async fn measured_batches(
        &mut self,
        product_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Uuid>>;
    /// A batch's trajectory points: `(attribute, bin hours, point)`, by attribute
    /// and bin.
    async fn batch_trajectory(
        &mut self,
        batch_id: Uuid,
    ) -> Result<Vec<(String, f64, crate::model::analytics::golden::Point)>>;
    /// The released batches' (released, handed over or infused) means of one
    /// attribute of a product in bins `bin_hours` wide: `(batch, bin, mean)`.
    async fn released_trajectories(
        &mut self,
        product_id: &str,
        attribute: &str,
        bin_hours: f64,
    ) -> Result<Vec<(Uuid, u32, f64)>>;
    /// The site's `deviation_raised` records (of one batch, or of every batch), in
    /// site and seq order.
    async fn deviation_events(&mut self, batch_id: Option<Uuid>) -> Result<Vec<StoredEvent>>;
    /// The hub's deviation rows (of one batch, or all).
    async fn deviation_rows(&mut self, batch_id: Option<Uuid>) -> Result<Vec<DeviationRow>>;
    /// Investigation notes (of one batch, or all), oldest first.
    async fn deviation_notes(&mut self, batch_id: Option<Uuid>) -> Result<Vec<DeviationNote>>;
    /// A system account with the physicians it acts for; `NotFound` when unknown.
    async fn system_account(&mut self, client_id: &str) -> Result<SystemAccount>;
    /// Every system account, by client id.
    async fn system_accounts(&mut self) -> Result<Vec<SystemAccount>>;
    /// The client id holding this live (unexpired) access token, if any.
    async fn system_token_client(
        &mut self,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>>;
    /// When a live session first signed, if it has.
    async fn session_signed_at(&mut self, token_sha256: &str) -> Result<Option<DateTime<Utc>>>;
    /// Failures counted for (user name, source) in the window starting at
    /// `window_start`, and whether the lock they reached has been audited.
    async fn sign_in_failures(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<(u64, bool)>;
    /// The hash of the audit entry at `position`, if there is one.
    async fn audit_sha_at(&mut self, position: u64) -> Result<Option<String>>;
    /// The newest audit entry: (position, hash).
    async fn audit_head(&mut self) -> Result<Option<(u64, String)>>;
    /// The latest head each site witnessed that the trail agreed with:
    /// (site, position, hash, when reported).
    async fn audit_witnesses(&mut self) -> Result<Vec<(String, u64, String, DateTime<Utc>)>>;
    /// Integrity findings, oldest first; only those not yet acknowledged when `open`.
    async fn audit_findings(&mut self, open: bool) -> Result<Vec<crate::audit::Finding>>;
    /// The notifier's position in the audit trail, as committed (not locked; see
    /// [`WriteTx::notifier_cursor`]).
    async fn notifier_position(&mut self) -> Result<u64>;
    /// Up to `limit` audit entries after `position`, in order.
    async fn audit_after(&mut self, position: u64, limit: u32) -> Result<Vec<Entry>>;
    /// Live subscriptions of people who can still sign in, with their role.
    async fn subscribers(&mut self) -> Result<Vec<(Subscription, Role)>>;
    /// The facts an audit entry's happenings need ([`happening::needs`]).
    async fn happening_facts(
        &mut self,
        needs: happening::Needs,
    ) -> Result<(Option<OrderFacts>, Vec<SiteEventFacts>)>;
}

/// A request to grant the qa or admin role, waiting for a second administrator.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleGrant {
    pub grant_id: Uuid,
    pub username: String,
    pub role: Role,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub reason: String,
}

/// A read-only snapshot as the store's provided reads take it; dropped, it ends.
pub type Snapshot<'a> = Box<dyn ReadTx + 'a>;

/// Where the store gets a read-only snapshot of the backend.
#[async_trait]
pub trait Reads: Send + Sync {
    async fn read(&self) -> Result<Snapshot<'_>>;
}

/// One write transaction of a backend. Dropped without [`WriteTx::commit`], it rolls
/// back and nothing of it is kept.
///
/// Isolation: SQLite holds its one writer for the whole transaction; PostgreSQL
/// runs at READ COMMITTED and locks a site's row ([`WriteTx::lock_site`]) before
/// anything of the site (its logs, cursors, batches) is read to be changed.
#[async_trait]
pub trait WriteTx: ReadTx {
    // -- reads inside the transaction (besides those of [`ReadTx`]) --

    /// The site, locked until the transaction ends; `NotFound` when unknown.
    async fn lock_site(&mut self, site_id: &str) -> Result<Site>;
    /// The order, read after locking its site, so nothing else changes its batch or
    /// its site's logs until this transaction ends.
    async fn lock_order(&mut self, key: OrderKey) -> Result<Order> {
        let unlocked = self.order(key).await?;
        self.lock_site(&unlocked.site_id).await?;
        self.order(key).await
    }
    /// The version of a product new orders pin now: the newest not retired and
    /// effective (from publication, or from its approved date), if any.
    async fn latest_recipe(&mut self, recipe_id: &str) -> Result<Option<StoredRecipe>>;
    /// The SHA-256 a recipe version was published with, if it was.
    async fn recipe_sha256(&mut self, recipe_id: &str, version: u32) -> Result<Option<String>>;
    /// How many dry runs of a product's drafts there have been (their copies).
    async fn dry_run_copies(&mut self, product: &str) -> Result<u32>;
    /// Every batch of a site with its state and progress.
    async fn batches_of_site(&mut self, site_id: &str)
        -> Result<Vec<(Uuid, BatchState, Progress)>>;
    /// The capacity a site declared, if any.
    async fn capacity(&mut self, site_id: &str) -> Result<Option<Capacity>>;
    /// The active bookings of a site.
    async fn site_bookings(&mut self, site_id: &str) -> Result<Vec<Booking>>;
    /// An order's booking, and whether it is still active.
    async fn order_booking(&mut self, order_id: Uuid) -> Result<Option<(Booking, bool)>>;
    /// Open orders of a site that hold no booking: (order id, COI).
    async fn unbooked_open_orders(&mut self, site_id: &str) -> Result<Vec<(Uuid, String)>>;
    /// The notifier's position in the audit trail, locked until the transaction
    /// ends (one notifier at a time).
    async fn notifier_cursor(&mut self) -> Result<u64>;
    /// A notification of the outbox; `NotFound` when unknown.
    async fn outbox_entry(&mut self, notification_id: Uuid) -> Result<OutboxEntry>;
    /// Whether a subscription is live (not ended).
    async fn subscription_live(&mut self, subscription_id: Uuid) -> Result<bool>;

    // -- writes --

    /// Inserts a recipe version; `false` when that version is already stored.
    async fn insert_recipe(
        &mut self,
        recipe: &Recipe,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Keeps a dry run's frozen copy of a draft under `copy_id`
    /// (`<product>~dry-run-<n>`), never listed as a product nor pinned by a
    /// patient's order.
    async fn insert_dry_run_copy(
        &mut self,
        copy_id: &str,
        recipe: &Recipe,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Inserts a user; `false` when the user name is taken.
    async fn insert_user(&mut self, user: &User, now: DateTime<Utc>) -> Result<bool>;
    /// The user, locked until the transaction ends; `NotFound` when unknown.
    async fn lock_user(&mut self, username: &str) -> Result<User>;
    /// Sets whether a user is disabled; disabling ends their sessions.
    async fn set_user_disabled(&mut self, username: &str, disabled: bool) -> Result<()>;
    /// Replaces a user's password hash.
    async fn set_user_password(&mut self, username: &str, password_hash: &str) -> Result<()>;
    async fn set_user_role(&mut self, username: &str, role: Role) -> Result<()>;
    /// A pending password reset of the user: (SHA-256 of the code, expiry).
    async fn password_reset_of(
        &mut self,
        username: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>>;
    /// Sets (or, with `None`, clears) a user's pending password reset.
    async fn set_password_reset(
        &mut self,
        username: &str,
        reset: Option<(&str, DateTime<Utc>)>,
    ) -> Result<()>;
    /// Ends every session of a user.
    async fn delete_sessions_of(&mut self, username: &str) -> Result<()>;
    /// Administrators who can sign in (not disabled).
    async fn count_active_admins(&mut self) -> Result<u64>;
    /// Role grants waiting for a second administrator, oldest first (of one user, or all).
    async fn pending_role_grants(&mut self, username: Option<&str>) -> Result<Vec<RoleGrant>>;
    async fn insert_role_grant(&mut self, grant: &RoleGrant) -> Result<()>;
    /// Marks a grant decided (approved) by `by`.
    async fn decide_role_grant(
        &mut self,
        grant_id: Uuid,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// The user's bedside badge: (badge id, PIN hash), if the hub issued one.
    async fn badge_of(&mut self, username: &str) -> Result<Option<(String, String)>>;
    /// Issues (or replaces) a user's badge; `false` when the badge id is taken.
    async fn set_badge(
        &mut self,
        username: &str,
        badge_id: &str,
        pin_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// The order a physician's request with this one-time key placed, if any.
    async fn order_of_request(&mut self, physician: &str, request_id: Uuid)
        -> Result<Option<Uuid>>;
    /// Keeps which order a physician's request placed.
    async fn insert_order_request(
        &mut self,
        physician: &str,
        request_id: Uuid,
        order_id: Uuid,
    ) -> Result<()>;
    /// The sites a user is assigned to, by id.
    async fn sites_of_user(&mut self, username: &str) -> Result<Vec<String>>;
    /// Assigns a user to a site (`true`) or removes the assignment (`false`);
    /// returns whether anything changed.
    async fn set_user_site(
        &mut self,
        username: &str,
        site_id: &str,
        assigned: bool,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Whether the measures of batches stored before measures were kept were made.
    async fn analytics_backfilled(&mut self) -> Result<bool>;
    async fn mark_analytics_backfilled(&mut self, now: DateTime<Utc>) -> Result<()>;
    /// Replaces a batch's measures with `rows` and its trajectory with `points`
    /// (made from its whole record).
    async fn replace_measures(
        &mut self,
        order: &Order,
        rows: &[crate::model::analytics::measure::Row],
        points: &[(String, f64, crate::model::analytics::golden::Point)],
    ) -> Result<()>;
    /// Keeps a trend signal unless it is kept already; true when it was new.
    async fn insert_trend_signal(
        &mut self,
        signal: &crate::model::analytics::trend::TrendSignal,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Records QA's choice of a baseline (never changed).
    async fn insert_analytics_baseline(
        &mut self,
        baseline: &crate::model::analytics::measure::Baseline,
    ) -> Result<()>;
    /// Records a qualification (in force: the caller withdrew the one it replaces).
    async fn insert_site_qualification(&mut self, qualification: &Qualification) -> Result<()>;
    /// Withdraws the qualification in force of a site for a product; `false` when
    /// there is none.
    async fn withdraw_site_qualification(
        &mut self,
        site_id: &str,
        recipe_id: &str,
        withdrawal: &StatusChange,
    ) -> Result<bool>;
    /// Saves a draft (inserted, or replacing the one of the same product and version).
    async fn save_recipe_draft(&mut self, draft: &RecipeDraft) -> Result<()>;
    /// Sets from when a published version is effective.
    async fn set_recipe_effective(
        &mut self,
        recipe_id: &str,
        version: u32,
        from: DateTime<Utc>,
    ) -> Result<()>;
    /// Retires a published version: no new order pins it.
    async fn retire_recipe(
        &mut self,
        recipe_id: &str,
        version: u32,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Keeps the hub's row of a deviation unless there is one already; `false` when
    /// there was.
    async fn insert_deviation_row(&mut self, row: &DeviationRow) -> Result<bool>;
    /// Records QA's closure on the deviation's row.
    async fn close_deviation_row(
        &mut self,
        batch_id: Uuid,
        deviation_id: &str,
        closure: &Closure,
    ) -> Result<()>;
    async fn insert_deviation_note(&mut self, note: &DeviationNote) -> Result<()>;
    /// The system account, locked until the transaction ends; `NotFound` when unknown.
    async fn lock_system_account(&mut self, client_id: &str) -> Result<SystemAccount>;
    /// Inserts a system account and its physicians; `false` when the client id is taken.
    async fn insert_system_account(&mut self, account: &SystemAccount) -> Result<bool>;
    /// Sets whether a system account is disabled; disabling ends its access tokens.
    async fn set_system_account_disabled(&mut self, client_id: &str, disabled: bool) -> Result<()>;
    /// Replaces a system account's secret hash and ends its access tokens.
    async fn set_system_account_secret(&mut self, client_id: &str, secret_hash: &str)
        -> Result<()>;
    /// Puts a physician in a system account's scope (`true`) or takes them out;
    /// returns whether anything changed.
    async fn set_system_scope(
        &mut self,
        client_id: &str,
        physician: &str,
        in_scope: bool,
    ) -> Result<bool>;
    /// Drops expired access tokens and keeps a new one.
    async fn insert_system_token(
        &mut self,
        token_sha256: &str,
        client_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Drops expired sessions and starts one.
    async fn insert_session(
        &mut self,
        token_sha256: &str,
        username: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Ends a session; returns whose it was, if it existed.
    async fn delete_session(&mut self, token_sha256: &str) -> Result<Option<String>>;
    /// Inserts a pending site with its enrollment token; `false` when the id is taken.
    async fn insert_site(
        &mut self,
        site_id: &str,
        name: &str,
        token_sha256: &str,
        token_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// In one statement: if the site holds this unexpired token, uses it up, records
    /// the certificate (dropping any pending one) and makes a pending site active.
    /// `false` when the token is unknown, expired or used.
    async fn enroll_site(
        &mut self,
        site_id: &str,
        token_sha256: &str,
        cert: &IssuedCert,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Sets a site's status with who set it, when and why; a ceased site's enrollment
    /// token is dropped.
    async fn set_site_status(
        &mut self,
        site_id: &str,
        status: SiteStatus,
        change: &StatusChange,
    ) -> Result<()>;
    async fn set_pending_certificate(&mut self, site_id: &str, cert: &IssuedCert) -> Result<()>;
    /// The pending certificate becomes the site's; the old one is dropped.
    async fn promote_pending_certificate(&mut self, site_id: &str) -> Result<()>;
    /// Raises the site's acknowledged command seq to `seq` (never lowers it).
    async fn ack_commands(&mut self, site_id: &str, seq: u64) -> Result<()>;
    /// Allocates the next COI serial of a facility and year (1, 2, ...).
    async fn next_coi_serial(&mut self, facility: &str, year: i32) -> Result<i64>;
    /// Inserts an order and its batch (state and progress from `order`).
    async fn insert_order(&mut self, order: &Order) -> Result<()>;
    /// Sets a site's capacity document (JSON), kept with who set it.
    async fn set_capacity(
        &mut self,
        site_id: &str,
        document: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Inserts an order's booking and its planned steps.
    async fn insert_booking(
        &mut self,
        order_id: Uuid,
        site_id: &str,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Moves an order's booking to the plan's date and slot (and the order's
    /// requested collection date with it), replacing its steps; a release date
    /// announced for the old plan is forgotten.
    async fn move_booking(&mut self, order_id: Uuid, plan: &Plan, now: DateTime<Utc>)
        -> Result<()>;
    /// Sets when a booked step is now expected.
    async fn set_expected(
        &mut self,
        order_id: Uuid,
        step_id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<()>;
    /// Records the release time announced for an order, only if the one announced
    /// before is still `replaces`; `false` when another was announced meanwhile.
    async fn announce_release(
        &mut self,
        order_id: Uuid,
        expected: DateTime<Utc>,
        replaces: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Frees an order's booking, if it has one.
    async fn release_booking(&mut self, order_id: Uuid, now: DateTime<Utc>) -> Result<()>;
    /// Stores a subscription (with its webhook secret, if any).
    async fn insert_subscription(
        &mut self,
        subscription: &Subscription,
        secret: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Ends a live subscription and marks its undelivered notifications failed;
    /// returns how many were dropped, or `None` when it is not live.
    async fn end_subscription(
        &mut self,
        subscription_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>>;
    /// Queues a notification of a happening for a subscription; `false` when that
    /// subscription already has one for the happening's source.
    async fn queue_notification(
        &mut self,
        notification_id: Uuid,
        subscription: &Subscription,
        happening: &Happening,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Puts a happening of an order in `recipient`'s console notification list;
    /// `false` when it is there already.
    async fn deliver_to_inbox(
        &mut self,
        inbox_id: Uuid,
        recipient: &str,
        happening: &Happening,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    async fn set_notifier_cursor(&mut self, position: u64) -> Result<()>;
    /// Records, once per outage, each active site not heard from since
    /// `silent_since`; returns those newly recorded with when they were last heard.
    async fn mark_links_down(
        &mut self,
        silent_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>>;
    /// Forgets the outage of each recorded site heard from since; returns them with
    /// when they were last heard.
    async fn mark_links_restored(&mut self) -> Result<Vec<(String, Option<DateTime<Utc>>)>>;
    /// Puts a notification back in the queue, due now, with its attempts reset.
    async fn requeue_notification(
        &mut self,
        notification_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn save_projection(
        &mut self,
        batch_id: Uuid,
        projection: &Projection,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Replaces a batch's progress only.
    async fn set_progress(
        &mut self,
        batch_id: Uuid,
        progress: &Progress,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn insert_signature(&mut self, signature: &Signature) -> Result<()>;
    async fn insert_change_review(&mut self, review: &ChangeReview) -> Result<()>;
    /// Keeps the site link protocol version the site's agent spoke in its Hello.
    async fn set_site_protocol(&mut self, site_id: &str, version: &str) -> Result<()>;
    async fn insert_follow_up_closure(
        &mut self,
        closure: &crate::model::FollowUpClosure,
    ) -> Result<()>;
    /// Keeps the latest head a site witnessed (that the trail agrees with).
    async fn set_audit_witness(
        &mut self,
        site_id: &str,
        position: u64,
        sha256: &str,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Forgets what a site witnessed (after its finding was acknowledged).
    async fn forget_audit_witness(&mut self, site_id: &str) -> Result<()>;
    /// Records a finding; `false` when the same (site, position, hash) was found before.
    async fn insert_audit_finding(&mut self, finding: &crate::audit::Finding) -> Result<bool>;
    /// Marks every open finding acknowledged.
    async fn acknowledge_audit_findings(
        &mut self,
        by: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Notes that a session signed (the first time only).
    async fn mark_session_signed(&mut self, token_sha256: &str, now: DateTime<Utc>) -> Result<()>;
    /// Notes when a user acknowledged what their electronic signature means.
    async fn set_signature_acknowledged(&mut self, username: &str, at: DateTime<Utc>)
        -> Result<()>;
    /// Counts one more failure for (user name, source) in the window; returns the count.
    async fn bump_sign_in_failures(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<u64>;
    /// Notes that the lock of (user name, source) in the window was audited.
    async fn set_sign_in_lock_audited(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<()>;
    /// Windows that began before `before` whose counts are not yet in the audit trail:
    /// (user name, source, window start, failures), oldest first, at most `limit`.
    async fn unreported_sign_in_failures(
        &mut self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, String, DateTime<Utc>, u64)>>;
    /// Marks a window's count as audited.
    async fn set_sign_in_failures_reported(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<()>;
    /// Forgets reported windows that began before `before`.
    async fn forget_sign_in_failures(&mut self, before: DateTime<Utc>) -> Result<()>;
    /// Appends a command to a site's log and raises its last command seq to it (the
    /// caller has locked the site and chosen the seq); the site's link hears of it
    /// at commit, in whichever hub process holds it.
    async fn insert_command(&mut self, site_id: &str, command: &HubCommand) -> Result<()>;
    /// Appends an entry to the audit trail, chained after the entries committed
    /// before this transaction and those appended in it.
    async fn audit(&mut self, entry: NewEntry, now: DateTime<Utc>) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A write transaction as the store's transactions take it.
pub type Tx<'a> = Box<dyn WriteTx + 'a>;

/// Where the store's transactions get a write transaction of the backend.
#[async_trait]
pub trait Writes: Send + Sync {
    /// A write transaction, refused once the store has failed ([`super::failure`]).
    async fn write(&self) -> Result<Tx<'_>>;
}

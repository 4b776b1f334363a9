//! The PostgreSQL backend of [`Store`]: production, and several hub processes over
//! one database.
//!
//! What we store is what the SQLite backend stores: the same tables with the same
//! meaning (`migrations/postgres`), and the same semantics, checked by the same test
//! suite. Why it is durable: every method that changes anything does so in one
//! transaction, and returns after PostgreSQL has committed it (with the server's
//! `synchronous_commit`, on by default: the commit record is flushed to its WAL).
//!
//! Several processes may write at once, so writers are serialised by the database,
//! never by a lock in this process. Transactions run at READ COMMITTED and take, in
//! this order (one order everywhere, so writers never deadlock):
//! 1. the row of the site whose logs, cursors or batches they change
//!    (`SELECT ... FROM sites WHERE site_id = $1 FOR UPDATE`): one writer per site;
//! 2. the row of the COI serial they allocate (`INSERT ... ON CONFLICT DO UPDATE`);
//! 3. at commit, the audit chain: a transaction-scoped advisory lock, then the head
//!    of the chain is read and the transaction's entries appended after it. Entries
//!    are collected until then, so the one global lock is held only for the append
//!    and the commit.
//!
//! Reads that must agree with each other (a batch record) run in one REPEATABLE READ
//! snapshot.

use super::backend::{OrderKey, ReadTx, WriteTx};
use super::ingest as plan;
use super::*;
use crate::audit::{self, NewEntry};
use chrono::SubsecRound;
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Executor, PgConnection, PgPool, Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

mod schedule;
mod write;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Key of the advisory lock that serialises appends to the audit chain. Any constant
/// works as long as every hub uses the same one; this is "carrelau" in ASCII.
const AUDIT_CHAIN_LOCK: i64 = 0x6361_7272_656c_6175;

/// How the store uses the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most connections this process opens. The server's `max_connections` is shared
    /// by every hub replica (and anything else using it).
    pub max_connections: u32,
    /// How long a call waits for a free connection, and opening the store for the
    /// server to answer.
    pub acquire_timeout: Duration,
    /// Longest one statement may run (or wait for a lock) before the server cancels it.
    pub statement_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    /// Recipes are immutable once published, so they are cached by (id, version).
    recipes: RecipeCache,
    /// Site-event transactions committed by this process.
    ingest_counters: plan::Counters,
}

/// A time as stored: to the microsecond, cut the way [`ts`] cuts it, so the text an
/// audit entry was hashed with is the text its stored time formats to.
fn stored(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// Where a database is, for messages: never its password.
fn describe(options: &PgConnectOptions) -> String {
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    match options.get_socket() {
        Some(dir) => format!("postgres://{user}@/{database} (socket {})", dir.display()),
        None => format!(
            "postgres://{user}@{}:{}/{database}",
            options.get_host(),
            options.get_port()
        ),
    }
}

fn connect_error(database: &str, timeout: Duration, error: sqlx::Error) -> Error {
    let (kind, why) = match error {
        sqlx::Error::PoolTimedOut => (
            std::io::ErrorKind::TimedOut,
            format!(
                "no connection within {} s: the server refused or did not answer; is PostgreSQL running and reachable from here?",
                timeout.as_secs_f32()
            ),
        ),
        other => (std::io::ErrorKind::Other, other.to_string()),
    };
    Error::Database(sqlx::Error::Io(std::io::Error::new(
        kind,
        format!("cannot connect to {database}: {why}"),
    )))
}

fn migrate_error(error: MigrateError) -> Error {
    let newest_known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match error {
        MigrateError::VersionMissing(version) if version > newest_known => {
            Error::FailedPrecondition(format!(
                "the database schema is newer than this carrel-hub (migration {version}, this binary knows up to {newest_known}); upgrade the binary"
            ))
        }
        other => Error::Migrate(other),
    }
}

/// PostgreSQL keeps ids as `uuid`, times as `timestamptz` (to the microsecond, see
/// [`stored`]) and flags as `boolean`.
impl rows::Columns for PgRow {
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        match self.try_get::<i64, _>(column) {
            Ok(value) => Ok(value),
            Err(_) => Ok(i64::from(self.try_get::<i32, _>(column)?)),
        }
    }
    fn flag(&self, column: &str) -> Result<bool> {
        Ok(self.try_get(column)?)
    }
    fn real(&self, column: &str) -> Result<f64> {
        Ok(self.try_get(column)?)
    }
    fn uuid(&self, column: &str) -> Result<Uuid> {
        Ok(self.try_get(column)?)
    }
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>> {
        Ok(self.try_get(column)?)
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        Ok(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.try_get(column)?)
    }
    fn time_text(&self, column: &str) -> Result<String> {
        Ok(ts(self.time(column)?))
    }
    fn date(&self, column: &str) -> Result<chrono::NaiveDate> {
        Ok(self.try_get(column)?)
    }
}

const ORDER_COLUMNS: &str =
    "o.order_id, o.batch_id, o.coi, o.patient_pseudonym, o.recipe_id, o.recipe_version, \
     o.site_id, o.requested_collection_date, o.physician, o.created_at, o.dry_run, \
     b.state, b.current_step, b.progress::text AS progress, b.decision_recorded, b.updated_at \
     FROM orders o JOIN batches b ON b.batch_id = o.batch_id";

/// LISTEN/NOTIFY channel: a site's command log grew (payload: site id).
const COMMANDS_CHANNEL: &str = "carrel_commands";
/// LISTEN/NOTIFY channel: a site's live link was claimed (payload: site id).
const LINKS_CHANNEL: &str = "carrel_links";

/// A transaction: a write transaction (READ COMMITTED) with the audit entries it
/// will append, or a read-only snapshot (REPEATABLE READ), which appends none.
struct PgTx<'a> {
    store: &'a PgStore,
    tx: Transaction<'static, Postgres>,
    audit: Vec<(NewEntry, DateTime<Utc>)>,
}

impl PgTx<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Audits a change of this transaction; appended to the chain at commit.
    fn audit(&mut self, entry: NewEntry, now: DateTime<Utc>) {
        self.audit.push((entry, now));
    }

    /// Appends the audit entries after the head of the chain, then commits. The
    /// advisory lock is held until the commit, so the next appender (in any process)
    /// reads a head that includes these entries.
    async fn commit(mut self) -> Result<()> {
        if !self.audit.is_empty() {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_CHAIN_LOCK)
                .execute(&mut *self.tx)
                .await?;
            let last: Option<(i64, String)> = sqlx::query_as(
                "SELECT position, sha256 FROM audit_log ORDER BY position DESC LIMIT 1",
            )
            .fetch_optional(&mut *self.tx)
            .await?;
            let (mut position, mut prev) = match last {
                Some((position, sha)) => (
                    u64::try_from(position)
                        .map_err(|_| Error::Corrupt("audit position is negative".into()))?
                        + 1,
                    sha,
                ),
                None => (1, audit::GENESIS.to_owned()),
            };
            for (entry, now) in &self.audit {
                let at = stored(*now);
                let sha = audit::entry_sha256(&prev, position, &ts(at), entry);
                sqlx::query(
                    "INSERT INTO audit_log (position, at, actor, action, object, batch_id, old_value, new_value, reason, prev_sha256, sha256) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(i64_of(position)?)
                .bind(at)
                .bind(&entry.actor)
                .bind(entry.action.as_str())
                .bind(&entry.object)
                .bind(entry.batch_id)
                .bind(&entry.old_value)
                .bind(&entry.new_value)
                .bind(&entry.reason)
                .bind(&prev)
                .bind(&sha)
                .execute(&mut *self.tx)
                .await?;
                prev = sha;
                position += 1;
            }
        }
        self.tx.commit().await?;
        Ok(())
    }
}

impl PgStore {
    /// Connects to a `postgres://` (or `postgresql://`) URL with default [`Options`]
    /// and brings the schema up to date.
    pub async fn open(url: &str) -> Result<PgStore> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Invalid(format!("database URL: {e}")))?;
        Self::connect(connect, &Options::default()).await
    }

    /// Connects and runs the embedded migrations (several hubs starting at once take
    /// turns: sqlx holds an advisory lock while migrating).
    pub async fn connect(connect: PgConnectOptions, options: &Options) -> Result<PgStore> {
        let database = describe(&connect);
        let set_timeout = format!(
            "SET statement_timeout = {}",
            options.statement_timeout.as_millis()
        );
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _| {
                let set_timeout = set_timeout.clone();
                Box::pin(async move {
                    conn.execute(set_timeout.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(connect)
            .await
            .map_err(|e| connect_error(&database, options.acquire_timeout, e))?;
        MIGRATOR.run(&pool).await.map_err(migrate_error)?;
        Ok(PgStore {
            pool,
            recipes: RecipeCache::default(),
            ingest_counters: plan::Counters::default(),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<PgTx<'_>> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        Ok(PgTx {
            store: self,
            tx,
            audit: Vec::new(),
        })
    }

    /// The site, locked until the transaction ends: the one writer of its logs,
    /// cursors and batch projections.
    async fn lock_site(conn: &mut PgConnection, site_id: &str) -> Result<Site> {
        let row = sqlx::query("SELECT * FROM sites WHERE site_id = $1 FOR UPDATE")
            .bind(site_id)
            .fetch_optional(conn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("site {site_id:?}")))?;
        rows::site(&row)
    }
}

#[async_trait]
impl backend::Writes for PgStore {
    async fn write(&self) -> Result<backend::Tx<'_>> {
        Ok(Box::new(self.begin_write().await?))
    }
}

#[async_trait]
impl backend::Reads for PgStore {
    async fn read(&self) -> Result<backend::Snapshot<'_>> {
        // One snapshot for every read, so the parts of a record agree.
        let tx = (self.pool)
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        Ok(Box::new(PgTx {
            store: self,
            tx,
            audit: Vec::new(),
        }))
    }
}

#[async_trait]
impl Store for PgStore {
    fn ingest_counts(&self) -> super::ingest::Counts {
        self.ingest_counters.counts()
    }

    async fn latest_recipe(&self, recipe_id: &str) -> Result<StoredRecipe> {
        let row = sqlx::query(
            "SELECT sha256, document FROM recipes WHERE recipe_id = $1 AND retired_at IS NULL AND dry_run_of IS NULL \
             AND (effective_from IS NULL OR effective_from <= $2) ORDER BY version DESC LIMIT 1",
        )
        .bind(recipe_id)
        .bind(stored(Utc::now()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("product (recipe) {recipe_id:?}")))?;
        rows::recipe(&row)
    }

    async fn list_recipes(&self) -> Result<Vec<StoredRecipe>> {
        sqlx::query(
            "SELECT sha256, document FROM recipes WHERE dry_run_of IS NULL ORDER BY published_at, recipe_id COLLATE \"C\", version",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::recipe)
        .collect()
    }

    async fn user(&self, username: &str) -> Result<User> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {username:?}")))?;
        rows::user(&row)
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY username COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::user)
            .collect()
    }

    async fn session_user(&self, token_sha256: &str, now: DateTime<Utc>) -> Result<User> {
        let row = sqlx::query(
            "SELECT u.* FROM sessions s JOIN users u ON u.username = s.username \
             WHERE s.token_sha256 = $1 AND s.expires_at > $2",
        )
        .bind(token_sha256)
        .bind(stored(now))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound("session".into()))?;
        rows::user(&row)
    }

    async fn audit_count(&self, action: crate::audit::Action) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = $1")
            .bind(action.as_str())
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(n).map_err(|_| Error::Corrupt("negative count".into()))
    }

    async fn site_holding_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<(Site, Option<DateTime<Utc>>)>> {
        sqlx::query("SELECT * FROM sites WHERE token_sha256 = $1")
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| {
                Ok((
                    rows::site(&row)?,
                    rows::Columns::opt_time(&row, "token_expires_at")?,
                ))
            })
            .transpose()
    }

    async fn list_sites(&self) -> Result<Vec<Site>> {
        sqlx::query("SELECT * FROM sites ORDER BY site_id COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::site)
            .collect()
    }

    async fn touch_site(&self, site_id: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE sites SET last_contact_at = $1 WHERE site_id = $2")
            .bind(stored(now))
            .bind(site_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ingest_events(
        &self,
        site_id: &str,
        events: &[Received],
        now: DateTime<Utc>,
    ) -> Result<Ingested> {
        let mut w = self.begin_write().await?;
        let cursor = Self::lock_site(w.conn(), site_id).await?.acked_event_seq;
        let needs = plan::needs(cursor, events);
        let mut found = plan::Found::default();
        for row in sqlx::query(
            "SELECT seq, body, sha256, batch_id FROM site_events WHERE site_id = $1 AND seq = ANY($2)",
        )
        .bind(site_id)
        .bind(
            needs
                .stored_bodies
                .iter()
                .chain(&needs.chain_head)
                .chain(&needs.correction_targets)
                .map(|&seq| i64_of(seq))
                .collect::<Result<Vec<_>>>()?,
        )
        .fetch_all(w.conn())
        .await?
        {
            let seq = rows::Columns::count(&row, "seq")?;
            if needs.stored_bodies.contains(&seq) {
                found.stored_bodies.insert(seq, row.try_get("body")?);
            }
            if needs.chain_head == Some(seq) {
                found.chain_head = Some(row.try_get("sha256")?);
            }
            if needs.correction_targets.contains(&seq) {
                found.correction_targets.insert(seq, row.try_get("batch_id")?);
            }
        }
        for batch_id in needs.batches {
            match w.order(OrderKey::Batch(batch_id)).await {
                Ok(order) => {
                    let recipe = match self.recipes.shared(&order.recipe_id, order.recipe_version) {
                        Some(shared) => shared,
                        None => std::sync::Arc::new(
                            w.recipe(&order.recipe_id, order.recipe_version).await?,
                        ),
                    };
                    found.orders.insert(batch_id, (order, recipe));
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let plan = plan::plan(site_id, cursor, events, &found)?;
        // One statement for the message's events (arrays unnested into rows), not
        // a round trip to the server per event.
        if !plan.events.is_empty() {
            let events: Vec<_> = plan.events.iter().map(|r| r.event()).collect();
            sqlx::query(
                "INSERT INTO site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) \
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::uuid[], $4::uuid[], $5::text[], $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[])",
            )
            .bind(site_id)
            .bind(events.iter().map(|e| i64_of(e.seq)).collect::<Result<Vec<_>>>()?)
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.batch_id).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.kind.name()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| stored(e.recorded_at)).collect::<Vec<_>>())
            .bind(vec![stored(now); events.len()])
            .bind(plan.events.iter().map(|r| r.body()).collect::<Vec<_>>())
            .bind(plan.events.iter().map(|r| r.sha256()).collect::<Vec<_>>())
            .execute(w.conn())
            .await?;
        }
        for (batch_id, qc) in &plan.qc {
            sqlx::query(
                "INSERT INTO qc_results (batch_id, site_id, site_seq, test_id, value, hub_outcome, site_outcome, reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(batch_id)
            .bind(site_id)
            .bind(i64_of(qc.site_seq)?)
            .bind(&qc.test_id)
            .bind(json_text(&qc.value)?)
            .bind(rows::outcome_text(qc.hub_outcome))
            .bind(rows::outcome_text(qc.site_outcome))
            .bind(&qc.reason)
            .execute(w.conn())
            .await?;
        }
        for measures in &plan.measures {
            write_measures(w.conn(), measures).await?;
        }
        for (batch_id, projection) in &plan.projections {
            w.save_projection(*batch_id, projection, now).await?;
        }
        for entry in plan.audit {
            w.audit.push((entry, now));
        }
        sqlx::query(
            "UPDATE sites SET acked_event_seq = $1, last_contact_at = $2 WHERE site_id = $3",
        )
        .bind(i64_of(plan.ingested.acked_event_seq)?)
        .bind(stored(now))
        .bind(site_id)
        .execute(w.conn())
        .await?;
        w.commit().await?;
        self.ingest_counters
            .committed(1, plan.ingested.new_events as u64);
        Ok(plan.ingested)
    }

    async fn commands_after(
        &self,
        site_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<HubCommand>> {
        sqlx::query(
            "SELECT body FROM hub_commands WHERE site_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(site_id)
        .bind(i64_of(after_seq)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let body: String = row.try_get("body")?;
            serde_json::from_str(&body).map_err(|e| Error::Corrupt(format!("hub command: {e}")))
        })
        .collect()
    }

    async fn backup_to(&self, _path: &std::path::Path) -> Result<()> {
        Err(Error::FailedPrecondition(
            "a PostgreSQL store is backed up with PostgreSQL's own tools: pg_dump -Fc (or pg_basebackup with WAL archiving); see deploy/README.md".into(),
        ))
    }

    async fn claim_site_link(&self, site_id: &str, holder: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO site_links (site_id, holder, generation, claimed_at) VALUES ($1, $2, 1, now()) \
             ON CONFLICT (site_id) DO UPDATE SET holder = $2, generation = site_links.generation + 1, claimed_at = now() \
             RETURNING generation",
        )
        .bind(site_id)
        .bind(holder)
        .fetch_one(&mut *tx)
        .await?;
        // Delivered at commit to every replica listening, so the old holder closes now
        // rather than at its next heartbeat.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(LINKS_CHANNEL)
            .bind(site_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        u64::try_from(generation).map_err(|_| Error::Corrupt("negative link generation".into()))
    }

    async fn site_link_generation(&self, site_id: &str) -> Result<u64> {
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM site_links WHERE site_id = $1")
                .bind(site_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(generation.unwrap_or(0).max(0) as u64)
    }

    async fn notifications(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Notification>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([COMMANDS_CHANNEL, LINKS_CHANNEL])
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        let site = notification.payload().to_owned();
                        let message = if notification.channel() == LINKS_CHANNEL {
                            Notification::LinkClaimed(site)
                        } else {
                            Notification::Commands(site)
                        };
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // PgListener reconnects on the next recv; what was announced
                        // meanwhile is picked up by the links' periodic checks.
                        tracing::warn!(error = %e, "lost the database notification channel; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }

    async fn list_orders(
        &self,
        physician: Option<&str>,
        state: Option<BatchState>,
    ) -> Result<Vec<Order>> {
        sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} WHERE ($1::text IS NULL OR o.physician = $1) \
             AND ($2::text IS NULL OR b.state = $2) AND NOT o.dry_run \
             ORDER BY o.created_at DESC, o.order_id DESC"
        ))
        .bind(physician)
        .bind(state.map(|s| s.as_str()))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::order)
        .collect()
    }
    async fn dry_runs_of(&self, product: &str, version: u32) -> Result<Vec<(Order, String)>> {
        let rows = sqlx::query(&format!(
            "SELECT r.sha256, {ORDER_COLUMNS} JOIN recipes r ON r.recipe_id = o.recipe_id AND r.version = o.recipe_version \
             WHERE r.dry_run_of = $1 AND r.version = $2 ORDER BY o.created_at, o.order_id"
        ))
        .bind(product)
        .bind(i64::from(version))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((rows::order(row)?, row.try_get::<String, _>("sha256")?)))
            .collect()
    }
    async fn open_orders_of_patient(
        &self,
        patient_pseudonym: &str,
        recipe_id: &str,
    ) -> Result<Vec<Order>> {
        sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} WHERE o.patient_pseudonym = $1 AND o.recipe_id = $2 \
             AND b.state NOT IN ('infused', 'rejected', 'cancelled') ORDER BY o.created_at, o.order_id"
        ))
        .bind(patient_pseudonym)
        .bind(recipe_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::order)
        .collect()
    }

    async fn order_of_request(&self, physician: &str, request_id: Uuid) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT order_id FROM order_requests WHERE physician = $1 AND request_id = $2",
        )
        .bind(physician)
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_described_without_its_password() {
        let options = PgConnectOptions::from_str("postgres://hub:s3cret@db.example:6543/carrel")
            .expect("a valid URL");
        assert_eq!(describe(&options), "postgres://hub@db.example:6543/carrel");
        let options =
            PgConnectOptions::from_str("postgresql://hub@db.example/carrel?password=s3cret")
                .expect("a valid URL");
        let described = describe(&options);
        assert!(!described.contains("s3cret"), "{described}");
        assert!(described.contains("db.example"), "{described}");
    }

    #[test]
    fn a_stored_time_formats_to_the_text_that_was_hashed() {
        let now = Utc::now();
        assert_eq!(ts(stored(now)), ts(now));
        let before_2000 = DateTime::parse_from_rfc3339("1999-12-31T23:59:59.999999999Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(ts(stored(before_2000)), "1999-12-31T23:59:59.999999Z");
    }
}

/// [`NotifyStore`](super::NotifyStore) on this backend.
mod notify;

/// Writes a batch's measure updates: a run of samples is merged after the stored
/// run as [`measure::Run::then`] does; a QC result is applied as
/// [`measure::QcState::then`] does.
///
/// [`measure::Run::then`]: crate::model::analytics::measure::Run::then
/// [`measure::QcState::then`]: crate::model::analytics::measure::QcState::then
async fn write_measures(conn: &mut sqlx::PgConnection, m: &plan::Measures) -> Result<()> {
    use crate::model::analytics::measure::Update;
    for update in m.updates.updates() {
        match update {
            Update::Extend {
                attribute,
                unit,
                run,
            } => {
                sqlx::query(
                    "INSERT INTO batch_measures AS m (batch_id, attribute, product_id, site_id, batch_at, unit, n, sum, min, max, first_hours, last_hours, last_out, out_of_range_hours) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                     ON CONFLICT (batch_id, attribute) DO UPDATE SET \
                       n = m.n + excluded.n, sum = m.sum + excluded.sum, \
                       min = LEAST(m.min, excluded.min), max = GREATEST(m.max, excluded.max), \
                       out_of_range_hours = m.out_of_range_hours + excluded.out_of_range_hours \
                         + CASE WHEN m.last_out THEN GREATEST(0.0, excluded.first_hours - m.last_hours) ELSE 0.0 END, \
                       last_hours = excluded.last_hours, last_out = excluded.last_out",
                )
                .bind(m.batch_id)
                .bind(attribute)
                .bind(&m.product_id)
                .bind(&m.site_id)
                .bind(stored(m.batch_at))
                .bind(unit)
                .bind(i64_of(run.n)?)
                .bind(run.sum)
                .bind(run.min)
                .bind(run.max)
                .bind(run.first_hours)
                .bind(run.last_hours)
                .bind(run.last_out)
                .bind(run.out_of_range_hours)
                .execute(&mut *conn)
                .await?;
            }
            Update::Result {
                attribute,
                unit,
                value,
                seq,
                retest_of,
            } => {
                let v = value.unwrap_or(0.0);
                sqlx::query(
                    "INSERT INTO batch_measures AS m (batch_id, attribute, product_id, site_id, batch_at, unit, n, sum, min, max, first_hours, last_hours, last_out, out_of_range_hours, seq, retest_of, ambiguous) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8, 0.0, 0.0, FALSE, 0.0, $9, $10, FALSE) \
                     ON CONFLICT (batch_id, attribute) DO UPDATE SET \
                       n = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN excluded.n ELSE m.n END, \
                       sum = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN excluded.sum ELSE m.sum END, \
                       min = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN excluded.min ELSE m.min END, \
                       max = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN excluded.max ELSE m.max END, \
                       unit = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN excluded.unit ELSE m.unit END, \
                       retest_of = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN excluded.retest_of ELSE m.retest_of END, \
                       ambiguous = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN FALSE ELSE TRUE END, \
                       seq = CASE WHEN NOT m.ambiguous AND excluded.retest_of = m.seq THEN excluded.seq ELSE m.seq END",
                )
                .bind(m.batch_id)
                .bind(attribute)
                .bind(&m.product_id)
                .bind(&m.site_id)
                .bind(stored(m.batch_at))
                .bind(unit)
                .bind(i64::from(value.is_some()))
                .bind(v)
                .bind(i64_of(*seq)?)
                .bind(retest_of.map(i64_of).transpose()?)
                .execute(&mut *conn)
                .await?;
            }
            Update::Binned {
                attribute,
                bin_hours,
                point,
            } => {
                sqlx::query(
                    "INSERT INTO batch_trajectories AS t (batch_id, attribute, bin, product_id, bin_hours, n, sum) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (batch_id, attribute, bin) DO UPDATE SET \
                       n = t.n + excluded.n, sum = t.sum + excluded.sum",
                )
                .bind(m.batch_id)
                .bind(attribute)
                .bind(i64::from(point.bin))
                .bind(&m.product_id)
                .bind(bin_hours)
                .bind(i64_of(point.n)?)
                .bind(point.sum)
                .execute(&mut *conn)
                .await?;
            }
            Update::Corrected { seq } => {
                // A corrected result no longer clearly counts.
                sqlx::query(
                    "UPDATE batch_measures SET ambiguous = TRUE \
                     WHERE batch_id = $1 AND attribute LIKE 'qc/%' AND seq = $2",
                )
                .bind(m.batch_id)
                .bind(i64_of(*seq)?)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

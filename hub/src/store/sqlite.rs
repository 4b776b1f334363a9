//! The embedded SQLite backend of [`Store`].
//!
//! One file in WAL mode with `synchronous=FULL`: a transaction is on disk (fsynced)
//! when `commit` returns. Writers are serialised by an async mutex inside the process
//! (SQLite has one writer at a time anyway, and taking the lock up front avoids
//! deadlocking read-to-write upgrades); readers run concurrently from the pool.
//! Everything goes through sqlx except the hot path, site events, whose group
//! commits run on a connection of their own with rusqlite (`ingest.rs` says why).

use super::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Sqlite, SqlitePool, Transaction};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex as SyncMutex;
use std::time::Duration;
use tokio::sync::Mutex;

mod ingest;
mod schedule;
mod write;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Most events in one group commit. Under a flood (every site sending at once) the
/// queue can hold hundreds of thousands of events; committing them all in one
/// transaction would hold every acknowledgement until the last row is written.
/// Bounded, the first acknowledgements go out after one transaction of a few tens
/// of milliseconds, and a person's write waits for one group at most. Large enough
/// that the commit's fixed cost (one fsync) is spread over thousands of rows: the
/// raw limit (`carrel-bench`, figure 1) stops growing past about 1,000 rows per
/// transaction.
pub const GROUP_EVENTS: usize = 4_000;

/// The requests at the front of the queue up to [`GROUP_EVENTS`] events between
/// them; always the first one, however large (a site's run is at most
/// `MAX_EVENTS_PER_MESSAGE` events).
fn take_group(queue: &mut VecDeque<IngestRequest>) -> Vec<IngestRequest> {
    let mut group = Vec::new();
    let mut events = 0;
    while let Some(next) = queue.front() {
        if !group.is_empty() && events + next.events.len() > GROUP_EVENTS {
            break;
        }
        events += next.events.len();
        group.extend(queue.pop_front());
    }
    group
}

/// Site events waiting for the committer (see `SqliteStore::group_commit`).
#[derive(Default)]
struct IngestQueue {
    state: SyncMutex<Queued>,
    /// Told when a request is queued or the store closes.
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct Queued {
    requests: VecDeque<IngestRequest>,
    closed: bool,
}

/// Closes the queue when the store is dropped: the committer thread ends, and what
/// is still queued is answered with an error (its senders are dropped).
struct CloseQueue(Arc<IngestQueue>);

impl Drop for CloseQueue {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        state.requests.clear();
        self.0.ready.notify_all();
    }
}

/// The committer, a thread of its own: commits what the site links queue, one
/// bounded group after another, each under the write lock (a person's write waits
/// for one group at most).
///
/// Not a task on the runtime: under load (a thousand links decoding messages) a
/// task that takes the write lock and waits for a blocking commit spends its
/// cooperative budget and is sent to the back of a run queue thousands of tasks
/// long at every step; the writer then stood idle about 40 % of the time with
/// requests queued (measured with `carrel-bench --only live`).
///
/// When no requests come, it writes the measures the writer keeps back once they
/// are due ([`ingest::FOLD_EVERY`]).
fn commit_groups(queue: Arc<IngestQueue>, write_lock: Arc<Mutex<()>>, writer: Arc<ingest::Writer>) {
    loop {
        let group = {
            let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if state.closed {
                    return;
                }
                if !state.requests.is_empty() {
                    break Some(take_group(&mut state.requests));
                }
                state = match writer.fold_due_in() {
                    None => queue.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                    Some(due) if due.is_zero() => break None,
                    Some(due) => {
                        queue
                            .ready
                            .wait_timeout(state, due)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
        };
        let _w = write_lock.blocking_lock();
        match group {
            Some(group) => commit_group(&writer, group),
            None => {
                if let Err(e) = writer.fold() {
                    tracing::error!(error = %e, "could not write the measures of stored site events; they are kept and tried again in a second");
                }
            }
        }
    }
}

/// Commits one group of queued requests and answers each; the caller holds the
/// write lock.
fn commit_group(writer: &ingest::Writer, group: Vec<IngestRequest>) {
    let (requests, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|r| {
            let request = ingest::Request {
                site_id: r.site_id,
                events: r.events,
                now: r.now,
            };
            (request, r.reply)
        })
        .unzip();
    let outcome = match failure().reason() {
        Some(why) => Err(Error::Failed(why.to_owned())),
        // The whole transaction on this thread (see `ingest.rs`); a panic in it
        // fails this group, not the committer.
        None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer.commit_group(&requests)
        }))
        .unwrap_or_else(|_| Err(Error::Corrupt("the group commit stopped".into()))),
    };
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let why = e.to_string();
            tracing::error!(error = %why, requests = replies.len(), "a group commit of site events failed; none of it is acknowledged");
            for reply in replies {
                let error = match &e {
                    Error::Failed(why) => Error::Failed(why.clone()),
                    _ => Error::Engine(format!("the commit of these events failed: {why}")),
                };
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// One site's events waiting for the next group commit.
struct IngestRequest {
    site_id: String,
    events: Vec<Received>,
    now: DateTime<Utc>,
    reply: tokio::sync::oneshot::Sender<Result<Ingested>>,
}

pub struct SqliteStore {
    pool: SqlitePool,
    /// Held by every write transaction, the committer's group commits included.
    write_lock: Arc<Mutex<()>>,
    ingest: Arc<IngestQueue>,
    /// Ends the committer thread when the store is dropped.
    #[allow(dead_code)]
    close_queue: CloseQueue,
    /// The connection group commits run on (see `ingest.rs`).
    writer: Arc<ingest::Writer>,
    /// Recipes are immutable once published, so they are cached by (id, version).
    recipes: RecipeCache,
    /// Stops the background checkpoints when the store is dropped.
    #[allow(dead_code)]
    checkpointer: tokio_util::sync::DropGuard,
}

/// How often the write-ahead log is copied back into the database file. Each
/// checkpoint copies the pages changed since the last and syncs the database file
/// beside the writer's own syncs of the log; every 250 ms it put a stall of about
/// 200 ms into the p99 of site acknowledgements at 1,000 live sites and 10 % of
/// capacity (`carrel-bench` figure 8: p99 200 ms, 15 ms every 2 s), and a page
/// changed in every commit (a site's cursor, a batch's projection) was copied eight
/// times as often. At 30,000 events/s the log grows to some tens of megabytes
/// between checkpoints.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(2_000);

/// Copies the write-ahead log back into the database file every
/// [`CHECKPOINT_EVERY`], on a connection of its own, so that no commit waits for it.
/// SQLite's automatic checkpoint would run inside the commit that crosses 1000 WAL
/// pages, and a site's acknowledgement would wait for a few megabytes to be copied
/// and synced. PASSIVE never blocks writers or readers; what it cannot copy yet (a
/// reader still needs an older page) it copies next time, so the log stays small
/// and a restart replays little. A failure to write is a store failure like any
/// other ([`failure`]).
async fn checkpoint_in_background(pool: SqlitePool, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        if pool.is_closed() || failure().reason().is_some() {
            return;
        }
        let done = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
            .map_err(Error::from);
        if let Err(e) = done {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "checkpointing the write-ahead log failed; trying again");
        }
    }
}

/// A database written by a newer carrel-hub is refused rather than misread.
fn migrate_error(error: sqlx::migrate::MigrateError) -> Error {
    let newest_known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match error {
        sqlx::migrate::MigrateError::VersionMissing(version) if version > newest_known => {
            Error::FailedPrecondition(format!(
                "the database schema is newer than this carrel-hub (migration {version}, this binary knows up to {newest_known}); upgrade the binary"
            ))
        }
        other => Error::Migrate(other),
    }
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::Corrupt(format!("timestamp {text:?}: {e}")))
}

fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| Error::Corrupt(format!("id {text:?}: {e}")))
}

/// SQLite keeps ids and times as text (RFC 3339, see [`ts`]) and flags as integers.
impl rows::Columns for SqliteRow {
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool> {
        Ok(self.try_get::<i64, _>(column)? != 0)
    }
    fn real(&self, column: &str) -> Result<f64> {
        Ok(self.try_get(column)?)
    }
    fn uuid(&self, column: &str) -> Result<Uuid> {
        parse_uuid(&self.text(column)?)
    }
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>> {
        self.opt_text(column)?
            .as_deref()
            .map(parse_uuid)
            .transpose()
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        parse_ts(&self.text(column)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        self.opt_text(column)?.as_deref().map(parse_ts).transpose()
    }
    fn time_text(&self, column: &str) -> Result<String> {
        self.text(column)
    }
    fn date(&self, column: &str) -> Result<chrono::NaiveDate> {
        let text = self.text(column)?;
        chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map_err(|e| Error::Corrupt(format!("{column} {text:?}: {e}")))
    }
}

const ORDER_COLUMNS: &str =
    "o.order_id, o.batch_id, o.coi, o.patient_pseudonym, o.recipe_id, o.recipe_version, \
     o.site_id, o.requested_collection_date, o.physician, o.created_at, o.dry_run, \
     b.state, b.current_step, b.progress, b.decision_recorded, b.updated_at \
     FROM orders o JOIN batches b ON b.batch_id = o.batch_id";

/// The site event log: nearly all of a grown database, and only ever appended to.
const EVENT_LOG: &str = "site_events";

/// The size up to which [`SqliteStore::open`] checks the whole database before it
/// returns (see [`SqliteStore::open_checking`]).
pub const CHECK_BEFORE_SERVING_BYTES: u64 = 1 << 30;

/// `PRAGMA quick_check` of the whole file, or of one table and its indexes.
async fn quick_check(conn: &mut sqlx::SqliteConnection, table: Option<&str>) -> Result<()> {
    let sql = match table {
        Some(table) => format!("PRAGMA quick_check(\"{table}\")"),
        None => "PRAGMA quick_check".to_owned(),
    };
    let check: String = sqlx::query_scalar(&sql).fetch_one(&mut *conn).await?;
    if check != "ok" {
        return Err(Error::Corrupt(format!(
            "database integrity check failed: {check}"
        )));
    }
    Ok(())
}

/// `PRAGMA foreign_key_check` of the whole file, or of the references one table holds.
async fn foreign_key_check(conn: &mut sqlx::SqliteConnection, table: Option<&str>) -> Result<()> {
    let sql = match table {
        Some(table) => format!("PRAGMA foreign_key_check(\"{table}\")"),
        None => "PRAGMA foreign_key_check".to_owned(),
    };
    let dangling = sqlx::query(&sql).fetch_all(&mut *conn).await?;
    if let Some(row) = dangling.first() {
        let table: String = row.try_get(0)?;
        return Err(Error::Corrupt(format!(
            "{} rows reference missing rows (first in table {table})",
            dangling.len()
        )));
    }
    Ok(())
}

/// SQLITE_CORRUPT or SQLITE_NOTADB: the file is damaged.
fn is_corruption(error: &sqlx::Error) -> bool {
    const SQLITE_CORRUPT: i32 = 11;
    const SQLITE_NOTADB: i32 = 26;
    error
        .as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_CORRUPT | SQLITE_NOTADB))
}

/// The checks of the whole file that a big database leaves until after start (see
/// [`SqliteStore::open_checking`]). A damage found fails the store ([`failure`]),
/// which stops the hub; stops quietly when the store is dropped first.
async fn check_in_background(
    options: SqliteConnectOptions,
    stop: tokio_util::sync::CancellationToken,
) {
    let started = std::time::Instant::now();
    let check = async {
        let mut conn = options.connect().await?;
        quick_check(&mut conn, None).await?;
        foreign_key_check(&mut conn, Some(EVENT_LOG)).await?;
        conn.close().await?;
        Ok::<_, Error>(())
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        outcome = check => match outcome {
            Ok(()) => tracing::info!(
                secs = started.elapsed().as_secs_f64(),
                "integrity check of the whole database passed"
            ),
            Err(Error::Corrupt(why)) => failure().fail(&why),
            // SQLite may also answer a damaged page with an error instead of rows.
            Err(Error::Database(e)) if is_corruption(&e) => {
                failure().fail(&format!("database integrity check failed: {e}"))
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the integrity check of the whole database could not run; it runs again at the next start"
            ),
        },
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the embedded
    /// migrations; checks the whole file first when it is up to
    /// [`CHECK_BEFORE_SERVING_BYTES`].
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        Self::open_checking(path, CHECK_BEFORE_SERVING_BYTES).await
    }

    /// Opens the database file as [`SqliteStore::open`] does. A damaged database is
    /// refused before anything is written to it: a file up to `check_before`
    /// bytes is checked whole (`PRAGMA quick_check`, `foreign_key_check`) before this
    /// returns. In a bigger one every table but the site event log is checked
    /// before, and the whole file right after, in the background: the log is nearly
    /// all of a grown database (checking 10 million events takes about six seconds
    /// here), and while the check runs it is only appended to, at pages SQLite
    /// checks as it reads them. A damage the background check finds fails the
    /// store ([`failure`]), which stops the hub.
    pub async fn open_checking(path: &Path, check_before: u64) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::open_with(options, check_before).await
    }

    async fn open_with(options: SqliteConnectOptions, check_before: u64) -> Result<SqliteStore> {
        // Integrity check and migrations on a connection of their own, with foreign
        // keys off: a migration may rebuild a table that other rows reference (the
        // procedure SQLite documents for changes ALTER TABLE cannot make), which must
        // not delete or reject those rows. Foreign keys are checked once it is done.
        let mut conn = options.clone().foreign_keys(false).connect().await?;
        let size: i64 = sqlx::query_scalar(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .fetch_one(&mut conn)
        .await?;
        let whole_now = u64::try_from(size).unwrap_or(0) <= check_before;
        // Every table but the event log, when that is left for later.
        let tables: Vec<String> = if whole_now {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name <> ? ORDER BY name",
            )
            .bind(EVENT_LOG)
            .fetch_all(&mut conn)
            .await?
        };
        if whole_now {
            quick_check(&mut conn, None).await?;
        } else {
            for table in &tables {
                quick_check(&mut conn, Some(table)).await?;
            }
        }
        MIGRATOR
            .run_direct(&mut conn)
            .await
            .map_err(migrate_error)?;
        if whole_now {
            foreign_key_check(&mut conn, None).await?;
        } else {
            for table in &tables {
                foreign_key_check(&mut conn, Some(table)).await?;
            }
        }
        conn.close().await?;
        // Checkpoints run in the background (see `checkpoint_in_background`), not
        // inside whichever commit crosses SQLite's threshold.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        let recipes = RecipeCache::default();
        let writer = Arc::new(ingest::Writer::open(
            options.get_filename(),
            recipes.clone(),
        )?);
        let recovered = {
            let writer = writer.clone();
            tokio::task::spawn_blocking(move || writer.recover())
                .await
                .map_err(|e| Error::Engine(format!("making the measures kept back: {e}")))??
        };
        if recovered > 0 {
            tracing::info!(
                events = recovered,
                "made the measures of site events stored before the hub stopped, from their records"
            );
        }
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(checkpoint_in_background(pool.clone(), stop.clone()));
        let write_lock = Arc::new(Mutex::new(()));
        let ingest = Arc::new(IngestQueue::default());
        {
            let (ingest, write_lock, writer) = (ingest.clone(), write_lock.clone(), writer.clone());
            std::thread::Builder::new()
                .name("sqlite-committer".into())
                .spawn(move || commit_groups(ingest, write_lock, writer))
                .map_err(|e| Error::Engine(format!("starting the group committer: {e}")))?;
        }
        if !whole_now {
            tracing::info!(
                bytes = size,
                "database bigger than sqlite_check_before_serving_mib: all but the site event log checked; the whole file is checked now, while serving"
            );
            tokio::spawn(check_in_background(options.clone(), stop.clone()));
        }
        Ok(SqliteStore {
            pool,
            write_lock,
            close_queue: CloseQueue(ingest.clone()),
            ingest,
            writer,
            recipes,
            checkpointer: stop.drop_guard(),
        })
    }

    /// Group commit: site links that ingest at the same time share one durable
    /// transaction. Each caller queues its request and waits for its answer; one
    /// committer thread ([`commit_groups`]) takes the requests at the front of the
    /// queue, up to [`GROUP_EVENTS`] events between them (always at least one
    /// request), runs each in a savepoint of its own (a refused request rolls back
    /// alone and changes nothing), commits once, and answers them all. Nothing is
    /// answered before the commit returned, and a failed commit (a full disk, an
    /// fsync error) fails every request in it.
    async fn group_commit(
        &self,
        site_id: &str,
        events: &[Received],
        now: DateTime<Utc>,
    ) -> Result<Ingested> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut state = self.ingest.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.closed {
                return Err(Error::Engine(
                    "the store is closed; these events were not committed".into(),
                ));
            }
            state.requests.push_back(IngestRequest {
                site_id: site_id.to_owned(),
                events: events.to_vec(),
                now,
                reply,
            });
        }
        self.ingest.ready.notify_one();
        answer.await.unwrap_or_else(|_| {
            Err(Error::Corrupt(
                "the group commit holding these events was interrupted before it answered; send them again".into(),
            ))
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl backend::Writes for SqliteStore {
    async fn write(&self) -> Result<backend::Tx<'_>> {
        Ok(Box::new(self.begin_write().await?))
    }
}

#[async_trait]
impl backend::Reads for SqliteStore {
    async fn read(&self) -> Result<backend::Snapshot<'_>> {
        // A deferred transaction reads one snapshot of the WAL and takes no lock.
        Ok(Box::new(write::SqliteTx {
            store: self,
            _lock: None,
            tx: self.pool.begin().await?,
        }))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn ingest_counts(&self) -> super::ingest::Counts {
        self.writer.counters.counts()
    }

    /// Writes the measures the writer keeps back (`ingest.rs`, `Deferred`), after
    /// the group commit in progress.
    async fn fold_measures(&self) -> Result<()> {
        if self.writer.fold_due_in().is_none() {
            return Ok(());
        }
        let _w = self.write_lock.lock().await;
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || writer.fold())
            .await
            .map_err(|e| Error::Engine(format!("writing the measures kept back: {e}")))?
    }

    async fn latest_recipe(&self, recipe_id: &str) -> Result<StoredRecipe> {
        let row = sqlx::query(
            "SELECT sha256, document FROM recipes WHERE recipe_id = ? AND retired_at IS NULL AND dry_run_of IS NULL \
             AND (effective_from IS NULL OR effective_from <= ?) ORDER BY version DESC LIMIT 1",
        )
        .bind(recipe_id)
        .bind(ts(Utc::now()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("product (recipe) {recipe_id:?}")))?;
        rows::recipe(&row)
    }

    async fn list_recipes(&self) -> Result<Vec<StoredRecipe>> {
        sqlx::query(
            "SELECT sha256, document FROM recipes WHERE dry_run_of IS NULL ORDER BY published_at, recipe_id, version",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::recipe)
        .collect()
    }

    async fn user(&self, username: &str) -> Result<User> {
        let row = sqlx::query("SELECT * FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {username:?}")))?;
        rows::user(&row)
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::user)
            .collect()
    }

    async fn session_user(&self, token_sha256: &str, now: DateTime<Utc>) -> Result<User> {
        let row = sqlx::query(
            "SELECT u.* FROM sessions s JOIN users u ON u.username = s.username WHERE s.token_sha256 = ? AND s.expires_at > ?",
        )
        .bind(token_sha256)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound("session".into()))?;
        rows::user(&row)
    }

    async fn audit_count(&self, action: crate::audit::Action) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = ?")
            .bind(action.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn site_holding_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<(Site, Option<DateTime<Utc>>)>> {
        sqlx::query("SELECT * FROM sites WHERE token_sha256 = ?")
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
        sqlx::query("SELECT * FROM sites ORDER BY site_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::site)
            .collect()
    }

    async fn touch_site(&self, site_id: &str, now: DateTime<Utc>) -> Result<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query("UPDATE sites SET last_contact_at = ? WHERE site_id = ?")
            .bind(ts(now))
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
        self.group_commit(site_id, events, now).await
    }

    async fn commands_after(
        &self,
        site_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<HubCommand>> {
        sqlx::query(
            "SELECT body FROM hub_commands WHERE site_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(site_id)
        .bind(i64_of(after_seq)?)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let body: String = row.try_get("body")?;
            serde_json::from_str(&body).map_err(|e| Error::Corrupt(format!("hub command: {e}")))
        })
        .collect()
    }

    async fn backup_to(&self, path: &Path) -> Result<()> {
        if path.exists() {
            return Err(Error::AlreadyExists(format!(
                "backup file {}",
                path.display()
            )));
        }
        // The copy holds password hashes and the whole record: only the hub's
        // user may read it, whatever the umask. The file is made empty with that
        // mode first (VACUUM INTO fills an empty file), so it is never readable by
        // others, not even for a moment.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::Invalid(format!("backup file {}: {e}", path.display())))?;
        }
        // VACUUM INTO writes a transactionally consistent copy from one read
        // snapshot, without stopping writers (WAL).
        let copied = sqlx::query("VACUUM INTO ?")
            .bind(path.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await;
        if let Err(e) = copied {
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
        Ok(())
    }

    async fn claim_site_link(&self, site_id: &str, holder: &str) -> Result<u64> {
        let _w = self.write_lock.lock().await;
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO site_links (site_id, holder, generation, claimed_at) VALUES (?1, ?2, 1, ?3) \
             ON CONFLICT (site_id) DO UPDATE SET holder = ?2, generation = site_links.generation + 1, claimed_at = ?3 \
             RETURNING generation",
        )
        .bind(site_id)
        .bind(holder)
        .bind(ts(Utc::now()))
        .fetch_one(&self.pool)
        .await?;
        Ok(generation as u64)
    }

    async fn site_link_generation(&self, site_id: &str) -> Result<u64> {
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM site_links WHERE site_id = ?")
                .bind(site_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(generation.unwrap_or(0) as u64)
    }

    async fn notifications(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Notification>>> {
        // One process owns a SQLite file: there is nobody else to hear from.
        Ok(None)
    }

    async fn list_orders(
        &self,
        physician: Option<&str>,
        state: Option<BatchState>,
    ) -> Result<Vec<Order>> {
        sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} WHERE (?1 IS NULL OR o.physician = ?1) AND (?2 IS NULL OR b.state = ?2) \
             AND o.dry_run = 0 ORDER BY o.created_at DESC, o.order_id DESC"
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
             WHERE r.dry_run_of = ?1 AND r.version = ?2 ORDER BY o.created_at, o.order_id"
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
            "SELECT {ORDER_COLUMNS} WHERE o.patient_pseudonym = ?1 AND o.recipe_id = ?2 \
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
        let found: Option<String> = sqlx::query_scalar(
            "SELECT order_id FROM order_requests WHERE physician = ? AND request_id = ?",
        )
        .bind(physician)
        .bind(request_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        found
            .map(|id| {
                Uuid::parse_str(&id).map_err(|e| Error::Corrupt(format!("order id {id:?}: {e}")))
            })
            .transpose()
    }
}

/// [`NotifyStore`](super::NotifyStore) on this backend.
mod notify;

#[cfg(test)]
mod tests {
    use super::*;

    /// The first error of opening `path` and checking it.
    async fn open_and_check(path: &Path) -> Option<sqlx::Error> {
        let mut conn = match SqliteConnectOptions::new().filename(path).connect().await {
            Ok(conn) => conn,
            Err(e) => return Some(e),
        };
        sqlx::query_scalar::<_, String>("PRAGMA quick_check")
            .fetch_one(&mut conn)
            .await
            .err()
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_corruption_and_a_timeout_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.db");
        std::fs::write(&path, [0x5a; 8192]).expect("write");
        let error = open_and_check(&path)
            .await
            .expect("a file that is not a database is refused");
        assert!(is_corruption(&error), "{error}");
        assert!(!is_corruption(&sqlx::Error::PoolTimedOut));
    }

    fn queued(sizes: &[usize]) -> VecDeque<IngestRequest> {
        let event = carrel_proto::event::SiteEvent {
            seq: 1,
            event_id: uuid::Uuid::nil(),
            recorded_at: Utc::now(),
            batch_id: uuid::Uuid::nil(),
            recorded_by: "tech".into(),
            prev_sha256: String::new(),
            identity: Default::default(),
            kind: carrel_proto::event::EventKind::StepStarted {
                step_id: "receipt".into(),
                instrument_id: "sim-1".into(),
                resumed: false,
            },
        };
        sizes
            .iter()
            .map(|&n| IngestRequest {
                site_id: format!("site-{n}"),
                events: vec![Received::new(event.clone()); n],
                now: Utc::now(),
                reply: tokio::sync::oneshot::channel().0,
            })
            .collect()
    }

    fn sizes(group: &[IngestRequest]) -> Vec<usize> {
        group.iter().map(|r| r.events.len()).collect()
    }

    #[test]
    fn a_group_takes_the_front_of_the_queue_up_to_its_bound() {
        // A flood: every request of 1,000 events; a group holds four, in order.
        let mut queue = queued(&[1_000; 10]);
        let first = take_group(&mut queue);
        assert_eq!(sizes(&first), [1_000; 4]);
        assert_eq!(queue.len(), 6, "the rest waits for the next holder");
        // A request that would cross the bound waits, even if a smaller one behind it
        // would fit: requests are committed in the order they came.
        let mut queue = queued(&[3_000, 1_500, 10]);
        assert_eq!(sizes(&take_group(&mut queue)), [3_000]);
        assert_eq!(sizes(&take_group(&mut queue)), [1_500, 10]);
        assert!(take_group(&mut queue).is_empty());
        // One request larger than the bound still goes, alone.
        let mut queue = queued(&[GROUP_EVENTS + 1, 1]);
        assert_eq!(sizes(&take_group(&mut queue)), [GROUP_EVENTS + 1]);
    }
}

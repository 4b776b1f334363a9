//! The site agent's local store: what we keep, and why it is durable.
//!
//! What we store: the site's own **event log** (seq 1, 2, 3... without gaps), every
//! **hub command** the site has committed (by the hub's seq), and the **local batch
//! projection** derived from both, in the same transaction as the record it derives
//! from. A committed command changes a batch only through the event the site records
//! for it (a cancellation, a release decision); [`crate::projection`] says what each
//! event does. Everything the site records goes here first, then to the hub
//! (invariant 2).
//!
//! Why it is durable: SQLite in WAL mode with `synchronous=FULL`, so a record is on
//! disk when `append` or `apply_command` returns; only then is it shown, acted on, or
//! acknowledged to the hub. Writers are serialised in-process.

pub use crate::projection::BatchState;
use crate::projection::{Projection, RecordProgress};
use carrel_proto::event::{
    CommandKind, EventKind, HubCommand, Identity, ReleaseMeaning, SiteEvent, GENESIS_SHA256,
};
use carrel_proto::people::PersonStatus;
use carrel_proto::recipe::Recipe;
use carrel_proto::suspension::Suspension;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::path::Path;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// An exclusive `flock` on `<store>.migrate-lock` beside the store, held while the
/// returned file is open (see [`Store::open`]). A separate file: opening and closing the database file itself
/// outside SQLite would drop SQLite's own POSIX locks on it in this process.
async fn migration_turn(store: &Path) -> Result<std::fs::File> {
    let mut name = store.as_os_str().to_owned();
    name.push(".migrate-lock");
    let path = std::path::PathBuf::from(name);
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| Error::Database(sqlx::Error::Io(std::io::Error::other(e))))?
    .map_err(|e| Error::Database(sqlx::Error::Io(e)))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    /// The hub sent a command out of order or changed one already committed.
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("the local disk is full: {0}; nothing new can be recorded until space is freed")]
    DiskFull(String),
    #[error("local database: {0}")]
    Database(sqlx::Error),
    /// An error of the connection that reads the log for the link (see [`Reader`]).
    #[error("local database: {0}")]
    Read(String),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            // SQLITE_FULL (13): the database or disk is full.
            if db.code().as_deref() == Some("13") {
                return Error::DiskFull(db.message().to_owned());
            }
        }
        Error::Database(e)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Read(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq)]
pub struct LocalBatch {
    pub batch_id: Uuid,
    pub order_id: Uuid,
    pub coi: String,
    pub patient_pseudonym: String,
    pub recipe_id: String,
    pub recipe_version: u32,
    pub recipe_json: String,
    pub recipe_sha256: String,
    pub state: BatchState,
    pub current_step: Option<String>,
    pub decision: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Who makes a record, and how the site knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct By {
    pub name: String,
    pub identity: Identity,
}

impl By {
    /// The agent's own records (an instrument, a hub command applied).
    pub fn agent() -> By {
        By {
            name: "agent".into(),
            identity: Identity::Agent,
        }
    }

    /// One of the simulator's operators (dev mode): not a person.
    pub fn simulated(name: &str) -> By {
        By {
            name: name.into(),
            identity: Identity::Simulated,
        }
    }

    /// A person who signed in, as the directory at `directory_version` knows them.
    pub fn person(username: &str, directory_version: u64) -> By {
        By {
            name: username.into(),
            identity: Identity::Authenticated { directory_version },
        }
    }
}

/// One person of the site's copy of the hub's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub username: String,
    pub full_name: String,
    pub role: String,
    pub password_verifier: String,
    /// The bedside badge the hub issued (empty: none), and its PIN's verifier.
    pub badge_id: String,
    pub pin_verifier: String,
    pub status: PersonStatus,
    /// The directory version (command seq) of this person's entry.
    pub directory_version: u64,
    /// Failed sign-ins since the last success.
    pub failures: u32,
    pub locked_at: Option<DateTime<Utc>>,
}

/// What a failed sign-in did to the person's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub failures: u32,
    /// This failure locked the person (and was recorded as a site event).
    pub locked_now: bool,
}

/// What applying a hub command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored now.
    New,
    /// Already stored with the same content (a resend after a reconnect).
    Repeat,
}

pub struct Store {
    pool: SqlitePool,
    reader: Reader,
    /// The directory holding the database, for asking how much room is left.
    dir: std::path::PathBuf,
    write_lock: Mutex<()>,
    /// Woken whenever an event is appended (the link sends it).
    appended: Notify,
    /// Woken whenever a command changed a batch (the executor looks again).
    batches_changed: Notify,
}

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::Corrupt(format!("timestamp {text:?}: {e}")))
}

fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| Error::Corrupt(format!("id {text:?}: {e}")))
}

fn batch_from_row(row: &SqliteRow) -> Result<LocalBatch> {
    Ok(LocalBatch {
        batch_id: parse_uuid(&row.try_get::<String, _>("batch_id")?)?,
        order_id: parse_uuid(&row.try_get::<String, _>("order_id")?)?,
        coi: row.try_get("coi")?,
        patient_pseudonym: row.try_get("patient_pseudonym")?,
        recipe_id: row.try_get("recipe_id")?,
        recipe_version: u32::try_from(row.try_get::<i64, _>("recipe_version")?)
            .map_err(|_| Error::Corrupt("recipe version out of range".into()))?,
        recipe_json: row.try_get("recipe_json")?,
        recipe_sha256: row.try_get("recipe_sha256")?,
        state: parse_state(&row.try_get::<String, _>("state")?)?,
        current_step: row.try_get("current_step")?,
        decision: row.try_get("decision")?,
        updated_at: parse_ts(&row.try_get::<String, _>("updated_at")?)?,
    })
}

fn parse_state(text: &str) -> Result<BatchState> {
    BatchState::parse(text).ok_or_else(|| Error::Corrupt(format!("unknown batch state {text:?}")))
}

fn parse_decision(text: Option<String>) -> Result<Option<ReleaseMeaning>> {
    text.map(|text| {
        ReleaseMeaning::parse(&text)
            .ok_or_else(|| Error::Corrupt(format!("unknown release decision {text:?}")))
    })
    .transpose()
}

fn event_from_body(body: &str) -> Result<SiteEvent> {
    serde_json::from_str(body).map_err(|e| Error::Corrupt(format!("event: {e}")))
}

/// A read-only connection of its own for the event log, which the link reads
/// back in chunks of up to a message (1,000 events) to send them. Through sqlx
/// each row is handed from the connection's thread to the async task on its own;
/// here the rows are read and parsed on one blocking thread and handed over once.
/// WAL lets it read while the pool writes.
#[derive(Clone)]
struct Reader(std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>);

impl Reader {
    fn open(path: &Path) -> Result<Reader> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(Reader(std::sync::Arc::new(std::sync::Mutex::new(conn))))
    }

    /// Blocking: run it off the async threads.
    fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<SiteEvent>> {
        let conn = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement =
            conn.prepare_cached("SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT ?")?;
        let mut rows = statement.query(rusqlite::params![
            i64::try_from(seq).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])?;
        let mut events = Vec::with_capacity(limit.min(1_000));
        while let Some(row) = rows.next()? {
            let body = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            events.push(event_from_body(body)?);
        }
        Ok(events)
    }
}

impl Store {
    pub async fn open(path: &Path) -> Result<Store> {
        // Two processes opening a store at once (`run`, and `status` a moment later,
        // on a new store) take turns until it is checked and migrated: otherwise both
        // would switch it to WAL and apply the migrations, and one would fail
        // ("database is locked", or a table the other just made).
        let turn = migration_turn(path).await?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A write that fails half-way (the disk is full, say) can leave the
            // connection believing it is still in a transaction that SQLite has
            // already rolled back; such a connection refuses every later BEGIN
            // ("non-zero transaction depth"), so it is closed instead of reused.
            // A connection released inside a transaction has a rollback queued (by
            // the dropped transaction); the ping waits for it before the depth is
            // read again. At depth 0 nothing is queued (a BEGIN whose caller gave
            // up before its answer is rolled back by sqlx's worker before it takes
            // the next command), so the common case costs no round trip to the
            // connection's thread.
            .after_release(|conn, _| {
                Box::pin(async move {
                    use sqlx::{Connection, Database, TransactionManager};
                    let depth_of = |conn: &SqliteConnection| {
                        <Sqlite as Database>::TransactionManager::get_transaction_depth(conn)
                    };
                    if depth_of(conn) == 0 {
                        return Ok(true);
                    }
                    conn.ping().await?;
                    let depth = depth_of(conn);
                    if depth > 0 {
                        tracing::warn!(
                            depth,
                            "closing a database connection left inside a failed transaction"
                        );
                    }
                    Ok(depth == 0)
                })
            })
            .connect_with(options)
            .await?;
        let check: String = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_one(&pool)
            .await?;
        if check != "ok" {
            return Err(Error::Corrupt(format!(
                "database integrity check failed: {check}"
            )));
        }
        MIGRATOR.run(&pool).await?;
        Self::complete_records(&pool).await?;
        drop(turn);
        let reader = Reader::open(path)?;
        Ok(Store {
            pool,
            reader,
            dir: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned(),
            write_lock: Mutex::new(()),
            appended: Notify::new(),
            batches_changed: Notify::new(),
        })
    }

    /// Moves each batch under way whose record is already complete to awaiting
    /// release. Appends do that with the completing event; an agent before them did
    /// it in a write of its own after the last result, and may have stopped between
    /// the two, leaving such a batch in its store.
    async fn complete_records(pool: &SqlitePool) -> Result<()> {
        let under_way = "SELECT batch_id FROM batches WHERE state IN ('accepted', 'in_process')";
        let any: Option<String> = sqlx::query_scalar(under_way).fetch_optional(pool).await?;
        if any.is_none() {
            return Ok(());
        }
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let under_way: Vec<String> = sqlx::query_scalar(under_way).fetch_all(&mut *tx).await?;
        let now = Utc::now();
        for batch_id in under_way {
            let batch_id = parse_uuid(&batch_id)?;
            let Some(mut projection) = Self::projection_in(&mut tx, batch_id).await? else {
                continue;
            };
            let before = projection.clone();
            if let (Some(recipe), record) = Self::recipe_and_record_in(&mut tx, batch_id).await? {
                projection.complete(&recipe, &record);
            }
            if projection != before {
                tracing::info!(%batch_id, "the batch record is complete: awaiting release");
                Self::set_projection_in(&mut tx, batch_id, &projection, now).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Bytes left for new records on the file system holding the database (what
    /// this process may still write there).
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Where the database lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resolves after the next append.
    pub async fn appended(&self) {
        self.appended.notified().await
    }

    /// Resolves after the next command that changed a batch.
    pub async fn batches_changed(&self) {
        self.batches_changed.notified().await
    }

    async fn append_in(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: Uuid,
        by: &By,
        kind: EventKind,
        now: DateTime<Utc>,
    ) -> Result<SiteEvent> {
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, sha256 FROM events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut **tx)
                .await?;
        let (seq, prev_sha256) = match last {
            Some((seq, sha)) => (seq as u64 + 1, sha),
            None => (1, GENESIS_SHA256.to_owned()),
        };
        let event = SiteEvent {
            seq,
            event_id: Uuid::now_v7(),
            recorded_at: now,
            batch_id,
            recorded_by: by.name.clone(),
            prev_sha256,
            identity: by.identity,
            kind,
        };
        sqlx::query("INSERT INTO events (seq, event_id, batch_id, kind, recorded_at, body, sha256) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(event.seq as i64)
            .bind(event.event_id.to_string())
            .bind(batch_id.to_string())
            .bind(event.kind.name())
            .bind(ts(now))
            .bind(event.canonical_json())
            .bind(event.sha256())
            .execute(&mut **tx)
            .await?;
        Self::project_in(tx, &event).await?;
        Ok(event)
    }

    /// Where a batch stands, as its row says, if the site has its order.
    async fn projection_in(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: Uuid,
    ) -> Result<Option<Projection>> {
        let row: Option<(String, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT state, current_step, decision FROM batches WHERE batch_id = ?")
                .bind(batch_id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
        row.map(|(state, current_step, decision)| {
            Ok(Projection {
                state: parse_state(&state)?,
                current_step,
                decision: parse_decision(decision)?,
            })
        })
        .transpose()
    }

    /// The recipe the batch's order pinned (None if the site cannot read it or it is
    /// not the one pinned: the executor runs no other), and its record so far.
    async fn recipe_and_record_in(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: Uuid,
    ) -> Result<(Option<Recipe>, RecordProgress)> {
        let (recipe_json, recipe_sha256): (String, String) =
            sqlx::query_as("SELECT recipe_json, recipe_sha256 FROM batches WHERE batch_id = ?")
                .bind(batch_id.to_string())
                .fetch_one(&mut **tx)
                .await?;
        let recipe = Recipe::from_json(&recipe_json)
            .ok()
            .filter(|r| r.sha256() == recipe_sha256);
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM events WHERE batch_id = ? AND kind IN (?, ?) ORDER BY seq",
        )
        .bind(batch_id.to_string())
        .bind(RecordProgress::EVENT_KINDS[0])
        .bind(RecordProgress::EVENT_KINDS[1])
        .fetch_all(&mut **tx)
        .await?;
        let mut record = RecordProgress::default();
        for body in &bodies {
            record.apply(&event_from_body(body)?.kind);
        }
        Ok((recipe, record))
    }

    /// Writes a batch's projection to its row.
    async fn set_projection_in(
        tx: &mut Transaction<'_, Sqlite>,
        batch_id: Uuid,
        projection: &Projection,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE batches SET state = ?, current_step = ?, decision = ?, updated_at = ? WHERE batch_id = ?",
        )
        .bind(projection.state.as_str())
        .bind(projection.current_step.as_deref())
        .bind(projection.decision.map(ReleaseMeaning::as_str))
        .bind(ts(at))
        .bind(batch_id.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Applies a just-appended event to its batch's row (the local projection), in
    /// the same transaction. The recipe and the record so far are read back only for
    /// the few events whose effect depends on them.
    async fn project_in(tx: &mut Transaction<'_, Sqlite>, event: &SiteEvent) -> Result<()> {
        if event.is_site_wide() {
            return Ok(());
        }
        let Some(mut projection) = Self::projection_in(tx, event.batch_id).await? else {
            return Ok(());
        };
        let before = projection.clone();
        if projection.needs_recipe(&event.kind) {
            let (recipe, record) = Self::recipe_and_record_in(tx, event.batch_id).await?;
            projection.apply(&event.kind, recipe.as_ref(), &record);
        } else {
            projection.apply(&event.kind, None, &RecordProgress::default());
        }
        if projection != before {
            Self::set_projection_in(tx, event.batch_id, &projection, event.recorded_at).await?;
        }
        Ok(())
    }

    /// Records an event (committed and fsynced when this returns), and moves its
    /// batch's local state as the event says, in the same transaction.
    pub async fn append(&self, batch_id: Uuid, by: &By, kind: EventKind) -> Result<SiteEvent> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let event = Self::append_in(&mut tx, batch_id, by, kind, Utc::now()).await?;
        tx.commit().await?;
        self.appended.notify_one();
        Ok(event)
    }

    /// A write transaction holding SQLite's write lock from the start, so that a
    /// command-line tool writing to the same file at the same moment waits instead
    /// of failing half-way.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Commits a hub command and its effects in one transaction. Idempotent by seq:
    /// a repeat with the same content is accepted, a gap or changed content refused.
    pub async fn apply_command(&self, command: &HubCommand) -> Result<Applied> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM commands")
            .fetch_one(&mut *tx)
            .await?;
        let last = last as u64;
        // The link's one rule for both logs: the next seq is committed, one at or
        // below the cursor must repeat what is stored, anything else is refused.
        let placed = carrel_proto::link::place(command.seq, last)
            .map_err(|e| Error::Protocol(format!("hub command {}: {e}", command.seq)))?;
        if placed == carrel_proto::link::Placement::Repeat {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT body FROM commands WHERE seq = ?")
                    .bind(command.seq as i64)
                    .fetch_optional(&mut *tx)
                    .await?;
            return match stored {
                Some(body) if body == command.canonical_json() => Ok(Applied::Repeat),
                Some(_) => Err(Error::Protocol(format!(
                    "hub command {} differs from the one committed earlier under that seq",
                    command.seq
                ))),
                None => Err(Error::Corrupt(format!(
                    "command {} missing below the cursor",
                    command.seq
                ))),
            };
        }
        let now = Utc::now();
        sqlx::query("INSERT INTO commands (seq, command_id, batch_id, kind, body, received_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(command.seq as i64)
            .bind(command.command_id.to_string())
            .bind(command.batch_id.to_string())
            .bind(command.kind.name())
            .bind(command.canonical_json())
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        let batch_id = command.batch_id.to_string();
        match &command.kind {
            CommandKind::BatchOrder {
                order_id,
                coi,
                patient_pseudonym,
                recipe_id,
                recipe_version,
                recipe_json,
                recipe_sha256,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO batches (batch_id, order_id, coi, patient_pseudonym, recipe_id, recipe_version, recipe_json, \
                     recipe_sha256, state, current_step, decision, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?) \
                     ON CONFLICT (batch_id) DO NOTHING",
                )
                .bind(&batch_id)
                .bind(order_id.to_string())
                .bind(coi)
                .bind(patient_pseudonym)
                .bind(recipe_id)
                .bind(*recipe_version as i64)
                .bind(recipe_json)
                .bind(recipe_sha256)
                .bind(Projection::ordered().state.as_str())
                .bind(ts(now))
                .execute(&mut *tx)
                .await?;
            }
            CommandKind::CancelBatch { reason, .. } => {
                let cancellable = Self::projection_in(&mut tx, command.batch_id)
                    .await?
                    .is_some_and(|p| p.cancellable());
                if cancellable {
                    Self::append_in(
                        &mut tx,
                        command.batch_id,
                        &By::agent(),
                        EventKind::BatchCancelled {
                            reason: reason.clone(),
                            command_seq: command.seq,
                        },
                        now,
                    )
                    .await?;
                }
            }
            CommandKind::ReleaseDecision {
                signature_id,
                meaning,
                ..
            } => {
                Self::append_in(
                    &mut tx,
                    command.batch_id,
                    &By::agent(),
                    EventKind::ReleaseDecisionRecorded {
                        signature_id: *signature_id,
                        meaning: *meaning,
                        command_seq: command.seq,
                    },
                    now,
                )
                .await?;
            }
            CommandKind::PersonUpdated {
                username,
                full_name,
                role,
                password_verifier,
                status,
                badge_id,
                pin_verifier,
            } => {
                // A new entry from the hub replaces the person's row and lifts a
                // lock (the hub re-sends the entry to unlock someone).
                sqlx::query(
                    "INSERT INTO people (username, full_name, role, password_verifier, status, directory_version, failures, locked_at, badge_id, pin_verifier) \
                     VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, ?) \
                     ON CONFLICT (username) DO UPDATE SET full_name = excluded.full_name, role = excluded.role, \
                     password_verifier = excluded.password_verifier, status = excluded.status, \
                     directory_version = excluded.directory_version, failures = 0, locked_at = NULL, \
                     badge_id = excluded.badge_id, pin_verifier = excluded.pin_verifier",
                )
                .bind(username.to_lowercase())
                .bind(full_name)
                .bind(role)
                .bind(password_verifier)
                .bind(status.as_str())
                .bind(command.seq as i64)
                .bind(badge_id)
                .bind(pin_verifier)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.appended.notify_one();
        self.batches_changed.notify_one();
        Ok(Applied::New)
    }

    /// A person of the site's directory, by user name (any case).
    pub async fn person(&self, username: &str) -> Result<Option<Person>> {
        self.person_where("username = ?", &username.trim().to_lowercase())
            .await
    }

    /// The person a bedside badge was issued to (as the scanner typed it, any case).
    pub async fn person_by_badge(&self, badge_id: &str) -> Result<Option<Person>> {
        let badge = badge_id.trim().to_uppercase();
        if badge.is_empty() {
            return Ok(None);
        }
        self.person_where("badge_id = ?", &badge).await
    }

    async fn person_where(&self, condition: &str, value: &str) -> Result<Option<Person>> {
        let row = sqlx::query(&format!(
            "SELECT username, full_name, role, password_verifier, status, directory_version, failures, locked_at, \
             badge_id, pin_verifier FROM people WHERE {condition}"
        ))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let status: String = row.try_get("status")?;
            Ok(Person {
                username: row.try_get("username")?,
                full_name: row.try_get("full_name")?,
                role: row.try_get("role")?,
                password_verifier: row.try_get("password_verifier")?,
                badge_id: row.try_get("badge_id")?,
                pin_verifier: row.try_get("pin_verifier")?,
                status: PersonStatus::parse(&status)
                    .ok_or_else(|| Error::Corrupt(format!("person status {status:?}")))?,
                directory_version: row.try_get::<i64, _>("directory_version")? as u64,
                failures: row.try_get::<i64, _>("failures")? as u32,
                locked_at: row
                    .try_get::<Option<String>, _>("locked_at")?
                    .map(|t| parse_ts(&t))
                    .transpose()?,
            })
        })
        .transpose()
    }

    /// The site's directory version: the seq of the last directory command applied
    /// (0 before the hub sent any).
    pub async fn directory_version(&self) -> Result<u64> {
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(directory_version), 0) FROM people")
                .fetch_one(&self.pool)
                .await?;
        Ok(version as u64)
    }

    /// Counts a failed sign-in of a person of the directory. The failure that reaches
    /// `lock_after` locks them here and records it (a site-wide event the hub
    /// audits), in the same transaction.
    pub async fn sign_in_failed(&self, username: &str, lock_after: u32) -> Result<Failed> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let username = username.trim().to_lowercase();
        let row: Option<(i64, Option<String>)> = sqlx::query_as(
            "UPDATE people SET failures = failures + 1 WHERE username = ? RETURNING failures, locked_at",
        )
        .bind(&username)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((failures, locked_at)) = row else {
            return Err(Error::NotFound(format!("person {username}")));
        };
        let failures = failures as u32;
        let locked_now = locked_at.is_none() && failures >= lock_after;
        let now = Utc::now();
        if locked_now {
            sqlx::query("UPDATE people SET locked_at = ? WHERE username = ?")
                .bind(ts(now))
                .bind(&username)
                .execute(&mut *tx)
                .await?;
            Self::append_in(
                &mut tx,
                Uuid::nil(),
                &By::agent(),
                EventKind::PersonLocked {
                    username: username.clone(),
                    failures,
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        if locked_now {
            self.appended.notify_one();
        }
        Ok(Failed {
            failures,
            locked_now,
        })
    }

    /// A successful sign-in clears the count of failures.
    pub async fn sign_in_succeeded(&self, username: &str) -> Result<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query("UPDATE people SET failures = 0 WHERE username = ? AND locked_at IS NULL")
            .bind(username.trim().to_lowercase())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn last_event_seq(&self) -> Result<u64> {
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(last as u64)
    }

    pub async fn last_command_seq(&self) -> Result<u64> {
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM commands")
            .fetch_one(&self.pool)
            .await?;
        Ok(last as u64)
    }

    /// Keeps a head of the hub's audit trail the hub sent (when it differs from the
    /// last one kept).
    pub async fn witness_audit_head(&self, position: u64, sha256: &str) -> Result<()> {
        if self
            .last_witnessed_audit_head()
            .await?
            .as_ref()
            .map(|(p, s)| (*p, s.as_str()))
            == Some((position, sha256))
        {
            return Ok(());
        }
        let _w = self.write_lock.lock().await;
        sqlx::query("INSERT INTO audit_witness (position, sha256, received_at) VALUES (?, ?, ?)")
            .bind(position as i64)
            .bind(sha256)
            .bind(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The last head of the hub's audit trail this site witnessed.
    pub async fn last_witnessed_audit_head(&self) -> Result<Option<(u64, String)>> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT position, sha256 FROM audit_witness ORDER BY received DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(p, s)| (p as u64, s)))
    }

    /// The events after `seq`, in order, at most `limit`.
    pub async fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<SiteEvent>> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.events_after(seq, limit))
            .await
            .map_err(|e| Error::Read(format!("reading the log stopped: {e}")))?
    }

    pub async fn batch_events(&self, batch_id: Uuid) -> Result<Vec<SiteEvent>> {
        sqlx::query("SELECT body FROM events WHERE batch_id = ? ORDER BY seq")
            .bind(batch_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| event_from_body(&row.try_get::<String, _>("body")?))
            .collect()
    }

    pub async fn batch(&self, batch_id: Uuid) -> Result<LocalBatch> {
        let row = sqlx::query("SELECT * FROM batches WHERE batch_id = ?")
            .bind(batch_id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {batch_id}")))?;
        batch_from_row(&row)
    }

    pub async fn batches(&self) -> Result<Vec<LocalBatch>> {
        sqlx::query("SELECT * FROM batches ORDER BY updated_at DESC")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(batch_from_row)
            .collect()
    }

    pub async fn active_batches(&self) -> Result<Vec<LocalBatch>> {
        sqlx::query("SELECT * FROM batches WHERE state IN ('ordered', 'accepted', 'in_process') ORDER BY batch_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(batch_from_row)
            .collect()
    }

    /// Writes a consistent copy of the store to `path` while the agent runs.
    pub async fn backup_to(&self, path: &Path) -> Result<()> {
        if path.exists() {
            return Err(Error::Protocol(format!(
                "{} exists; choose a new backup file",
                path.display()
            )));
        }
        // The copy holds the site's record and its people's verifiers: readable by
        // the agent's user only, from the moment it exists (VACUUM INTO fills an
        // empty file).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::Protocol(format!("backup file {}: {e}", path.display())))?;
        }
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

    /// Records how far the hub has acknowledged our log.
    pub async fn set_hub_acked(&self, seq: u64) -> Result<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query(
            "UPDATE link_state SET hub_acked_event_seq = MAX(hub_acked_event_seq, ?), last_contact_at = ? WHERE id = 1",
        )
        .bind(seq as i64)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The hub's word that this site is suspended, kept until the hub accepts the
    /// link again (`None`: not suspended as far as the site knows).
    pub async fn suspension(&self) -> Result<Option<Suspension>> {
        let row = sqlx::query(
            "SELECT suspended_by, suspended_at, suspension_reason FROM link_state WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        let by: Option<String> = row.try_get("suspended_by")?;
        let at: Option<String> = row.try_get("suspended_at")?;
        match (by, at) {
            (Some(by), Some(at)) => Ok(Some(Suspension {
                by,
                at: parse_ts(&at)?,
                reason: row
                    .try_get::<Option<String>, _>("suspension_reason")?
                    .unwrap_or_default(),
            })),
            _ => Ok(None),
        }
    }

    /// Keeps (or, with `None`, clears) the hub's word that this site is suspended.
    pub async fn set_suspension(&self, suspension: Option<&Suspension>) -> Result<()> {
        let _w = self.write_lock.lock().await;
        sqlx::query(
            "UPDATE link_state SET suspended_by = ?, suspended_at = ?, suspension_reason = ? WHERE id = 1",
        )
        .bind(suspension.map(|s| s.by.clone()))
        .bind(suspension.map(|s| ts(s.at)))
        .bind(suspension.map(|s| s.reason.clone()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn hub_acked(&self) -> Result<u64> {
        let seq: i64 =
            sqlx::query_scalar("SELECT hub_acked_event_seq FROM link_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(seq as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::event::HubCommand;

    fn order(seq: u64, batch_id: Uuid) -> HubCommand {
        HubCommand {
            seq,
            command_id: Uuid::new_v4(),
            issued_at: Utc::now(),
            batch_id,
            kind: CommandKind::BatchOrder {
                order_id: Uuid::new_v4(),
                coi: "G123426000001X".into(),
                patient_pseudonym: "P-1".into(),
                requested_collection_date: "2026-12-01".into(),
                recipe_id: "r".into(),
                recipe_version: 1,
                recipe_json: "{}".into(),
                recipe_sha256: "00".into(),
            },
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("agent.db"))
            .await
            .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn events_get_consecutive_seqs_and_survive_reopen() {
        let (dir, store) = store().await;
        let batch = Uuid::new_v4();
        store.apply_command(&order(1, batch)).await.expect("order");
        for i in 0..5 {
            let e = store
                .append(
                    batch,
                    &By::agent(),
                    EventKind::StepCompleted {
                        step_id: format!("s{i}"),
                        process_hours: 1.0,
                    },
                )
                .await
                .expect("append");
            assert_eq!(e.seq, i + 1);
        }
        store.close().await;
        let store = Store::open(&dir.path().join("agent.db"))
            .await
            .expect("reopen");
        assert_eq!(store.last_event_seq().await.expect("seq"), 5);
        let after = store.events_after(3, 10).await.expect("after");
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[tokio::test]
    async fn events_after_reads_in_order_within_the_limit() {
        let (_dir, store) = store().await;
        let batch = Uuid::new_v4();
        let mut appended = Vec::new();
        for i in 0..1_203u32 {
            let kind = EventKind::StepCompleted {
                step_id: format!("step \"{i}\"\nline two"),
                process_hours: f64::from(i),
            };
            appended.push(
                store
                    .append(batch, &By::agent(), kind)
                    .await
                    .expect("append"),
            );
        }
        let all = store.events_after(0, usize::MAX >> 1).await.expect("all");
        assert_eq!(all, appended, "every event, as recorded, in order");
        let some = store.events_after(2, 1_100).await.expect("some");
        assert_eq!(some.len(), 1_100);
        assert_eq!(some.first().map(|e| e.seq), Some(3));
        assert_eq!(some.last().map(|e| e.seq), Some(1_102));
        assert!(store
            .events_after(1_203, 10)
            .await
            .expect("none")
            .is_empty());
        // The log is read on a connection of its own: what is appended after a
        // read is seen by the next one.
        let later = store
            .append(
                batch,
                &By::agent(),
                EventKind::StepCompleted {
                    step_id: "later".into(),
                    process_hours: 1.0,
                },
            )
            .await
            .expect("append");
        assert_eq!(
            store.events_after(1_203, 10).await.expect("later"),
            vec![later]
        );
    }

    #[tokio::test]
    async fn a_stored_event_that_is_not_an_event_is_reported_as_corrupt() {
        let (_dir, store) = store().await;
        let batch = Uuid::new_v4();
        let kind = EventKind::StepCompleted {
            step_id: "s".into(),
            process_hours: 1.0,
        };
        store
            .append(batch, &By::agent(), kind)
            .await
            .expect("append");
        sqlx::query("UPDATE events SET body = '{\"seq\": 1' WHERE seq = 1")
            .execute(&store.pool)
            .await
            .expect("damage");
        match store.events_after(0, 10).await {
            Err(Error::Corrupt(why)) => assert!(why.starts_with("event:"), "{why}"),
            other => panic!("expected a corrupt-data error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn commands_apply_once_and_refuse_gaps_and_changes() {
        let (_dir, store) = store().await;
        let batch = Uuid::new_v4();
        let first = order(1, batch);
        assert_eq!(
            store.apply_command(&first).await.expect("new"),
            Applied::New
        );
        assert_eq!(
            store.apply_command(&first).await.expect("repeat"),
            Applied::Repeat
        );
        assert!(matches!(
            store.apply_command(&order(3, Uuid::new_v4())).await,
            Err(Error::Protocol(_))
        ));
        let mut changed = first.clone();
        changed.command_id = Uuid::new_v4();
        assert!(matches!(
            store.apply_command(&changed).await,
            Err(Error::Protocol(_))
        ));
        assert_eq!(store.batches().await.expect("batches").len(), 1);
        assert_eq!(store.last_command_seq().await.expect("seq"), 1);
    }

    const RECIPE: &str = include_str!("../../hub/recipes/cd19-car-t.v1.toml");

    /// An order for the example recipe.
    fn real_order(seq: u64, batch_id: Uuid) -> (HubCommand, Recipe) {
        let recipe = Recipe::from_toml(RECIPE).expect("recipe");
        let mut command = order(seq, batch_id);
        if let CommandKind::BatchOrder {
            recipe_id,
            recipe_version,
            recipe_json,
            recipe_sha256,
            ..
        } = &mut command.kind
        {
            *recipe_id = recipe.id.clone();
            *recipe_version = recipe.version;
            *recipe_json = recipe.to_canonical_json();
            *recipe_sha256 = recipe.sha256();
        }
        (command, recipe)
    }

    /// Every event of the batch's record, as the executor records them: accepted,
    /// each step started, sampled and completed, then every test.
    fn record_of(recipe: &Recipe) -> Vec<EventKind> {
        let mut kinds = vec![EventKind::BatchAccepted {
            coi: "G123426000001X".into(),
            recipe_id: recipe.id.clone(),
            recipe_version: recipe.version,
            recipe_sha256: recipe.sha256(),
        }];
        for step in &recipe.steps {
            kinds.push(EventKind::StepStarted {
                step_id: step.id.clone(),
                instrument_id: "sim".into(),
                resumed: false,
            });
            kinds.push(EventKind::ProcessSamples {
                step_id: step.id.clone(),
                samples: vec![],
            });
            kinds.push(EventKind::StepCompleted {
                step_id: step.id.clone(),
                process_hours: step.duration_hours,
            });
        }
        for test in recipe.all_tests() {
            kinds.push(EventKind::QcResult {
                test_id: test.id.clone(),
                value: carrel_proto::recipe::QcValue::Numeric(1.0),
                unit: String::new(),
                method: String::new(),
                site_outcome: carrel_proto::recipe::Outcome::Pass,
                retest_of: None,
            });
        }
        kinds
    }

    #[tokio::test]
    async fn the_state_moves_with_the_append_that_completes_the_record() {
        let (_dir, store) = store().await;
        let batch = Uuid::new_v4();
        let (command, recipe) = real_order(1, batch);
        store.apply_command(&command).await.expect("order");
        let last_due = recipe
            .all_tests()
            .filter(|t| !t.may_follow_release)
            .last()
            .expect("a test due before release")
            .id
            .clone();
        let mut awaiting_from = None;
        for kind in record_of(&recipe) {
            let completes =
                matches!(&kind, EventKind::QcResult { test_id, .. } if *test_id == last_due);
            let event = store
                .append(batch, &By::agent(), kind)
                .await
                .expect("append");
            let row = store.batch(batch).await.expect("batch");
            // The row is what the whole fold of the log says, after every append.
            let folded = crate::projection::fold(
                Some(&recipe),
                &store.batch_events(batch).await.expect("events"),
            );
            assert_eq!(row.state, folded.state, "after seq {}", event.seq);
            assert_eq!(
                row.current_step, folded.current_step,
                "after seq {}",
                event.seq
            );
            if completes {
                assert_eq!(
                    row.state,
                    BatchState::AwaitingRelease,
                    "with the completing result"
                );
                assert_eq!(
                    ts(row.updated_at),
                    ts(event.recorded_at),
                    "moved by that append"
                );
                awaiting_from = Some(event.seq);
            } else if awaiting_from.is_none() {
                assert!(
                    row.state.is_active(),
                    "seq {} is {:?}",
                    event.seq,
                    row.state
                );
            }
        }
        assert!(awaiting_from.is_some());
        assert_eq!(
            store.batch(batch).await.expect("batch").state,
            BatchState::AwaitingRelease
        );
        assert!(store.active_batches().await.expect("active").is_empty());

        let release = HubCommand {
            seq: 2,
            command_id: Uuid::new_v4(),
            issued_at: Utc::now(),
            batch_id: batch,
            kind: CommandKind::ReleaseDecision {
                signature_id: Uuid::new_v4(),
                meaning: ReleaseMeaning::Released,
                signer: "qp".into(),
                signer_name: "Q. P.".into(),
                signed_at: Utc::now(),
                record_sha256: "00".into(),
                reason: String::new(),
                outstanding_tests: Vec::new(),
            },
        };
        store.apply_command(&release).await.expect("release");
        let row = store.batch(batch).await.expect("batch");
        assert_eq!(row.state, BatchState::Released);
        assert_eq!(row.decision.as_deref(), Some("released"));
        let events = store.batch_events(batch).await.expect("events");
        assert!(matches!(
            events.last().map(|e| &e.kind),
            Some(EventKind::ReleaseDecisionRecorded { command_seq: 2, .. })
        ));
        // A cancel after the decision stops nothing and records nothing.
        let cancel = HubCommand {
            seq: 3,
            command_id: Uuid::new_v4(),
            issued_at: Utc::now(),
            batch_id: batch,
            kind: CommandKind::CancelBatch {
                reason: "too late".into(),
                cancelled_by: "dr".into(),
            },
        };
        store.apply_command(&cancel).await.expect("cancel");
        assert_eq!(
            store.batch(batch).await.expect("batch").state,
            BatchState::Released
        );
        assert_eq!(
            store.batch_events(batch).await.expect("events").len(),
            events.len()
        );
    }

    #[tokio::test]
    async fn a_complete_record_left_under_way_awaits_release_when_the_store_opens() {
        let (dir, store) = store().await;
        let batch = Uuid::new_v4();
        let (command, recipe) = real_order(1, batch);
        store.apply_command(&command).await.expect("order");
        for kind in record_of(&recipe) {
            store
                .append(batch, &By::agent(), kind)
                .await
                .expect("append");
        }
        // As an agent that moved the state in a write of its own left it when it
        // stopped before that write.
        sqlx::query("UPDATE batches SET state = 'in_process'")
            .execute(&store.pool)
            .await
            .expect("set back");
        store.close().await;
        let store = Store::open(&dir.path().join("agent.db"))
            .await
            .expect("reopen");
        assert_eq!(
            store.batch(batch).await.expect("batch").state,
            BatchState::AwaitingRelease
        );
    }

    #[tokio::test]
    async fn cancellation_stops_the_batch_and_is_recorded_once() {
        let (_dir, store) = store().await;
        let batch = Uuid::new_v4();
        store.apply_command(&order(1, batch)).await.expect("order");
        let cancel = HubCommand {
            seq: 2,
            command_id: Uuid::new_v4(),
            issued_at: Utc::now(),
            batch_id: batch,
            kind: CommandKind::CancelBatch {
                reason: "patient too ill".into(),
                cancelled_by: "dr".into(),
            },
        };
        store.apply_command(&cancel).await.expect("cancel");
        store.apply_command(&cancel).await.expect("repeat");
        assert_eq!(
            store.batch(batch).await.expect("batch").state,
            BatchState::Cancelled
        );
        let events = store.batch_events(batch).await.expect("events");
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0].kind,
            EventKind::BatchCancelled { command_seq: 2, .. }
        ));
        assert!(store.active_batches().await.expect("active").is_empty());
    }
}

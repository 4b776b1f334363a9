//! Site events into the SQLite file: the transaction of a group commit, run whole
//! on one thread with a connection of its own.
//!
//! Why not through sqlx like the rest of this backend: sqlx runs each statement on
//! its connection's own thread and hands every result back to the async task, two
//! thread wake-ups per statement. Storing a message of events takes about a dozen
//! statements (the site's cursor, the order, the chain head, the rows, the
//! projection, the audit entry), and `perf` on the benchmark
//! (`carrel-bench --only ingest`) showed a third of the CPU in those wake-ups. Here
//! a group of requests costs one hand-off to a blocking thread, statements are
//! prepared once and cached, and the semantics are those [`Store::ingest_events`]
//! documents.

use super::super::ingest as plan;
use super::super::rows;
use super::super::*;
use crate::audit::{self, NewEntry};
use crate::model::analytics::measure::{Pending, QcState};
use crate::model::{Order, StoredRecipe};
use rusqlite::{
    params, CachedStatement, Connection, OptionalExtension, ToSql, Transaction, TransactionBehavior,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One site's events in a group commit.
pub(super) struct Request {
    pub site_id: String,
    pub events: Vec<Received>,
    pub now: DateTime<Utc>,
}

impl From<rusqlite::Error> for Error {
    /// SQLite's I/O errors (a failed fsync, say) fail the store as sqlx's do
    /// ([`failure`]); the message keeps SQLite's extended code.
    fn from(error: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(code, message) = &error {
            let text = message.clone().unwrap_or_else(|| code.to_string());
            let text = format!("(code: {}) {text}", code.extended_code);
            if code.code == rusqlite::ErrorCode::SystemIoFailure {
                let why = format!(
                    "{text}; a commit may not be on disk although the database was told to keep it"
                );
                failure().fail(&why);
                return Error::Failed(why);
            }
            return Error::Engine(text);
        }
        Error::Engine(error.to_string())
    }
}

/// The connection that writes site events.
pub(super) struct Writer {
    conn: Mutex<Connection>,
    recipes: RecipeCache,
    /// Measures of committed events not written yet; locked after `conn`.
    deferred: Mutex<Deferred>,
    /// Transactions committed, counted here where they are.
    pub counters: plan::Counters,
}

impl Writer {
    /// Opens the database file the pool uses, with the same settings: WAL,
    /// `synchronous=FULL`, foreign keys, and no automatic checkpoint (the store
    /// checkpoints in the background).
    pub fn open(path: &Path, recipes: RecipeCache) -> Result<Writer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; \
             PRAGMA cache_size = -65536;",
        )?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Writer {
            conn: Mutex::new(conn),
            recipes,
            deferred: Mutex::default(),
            counters: plan::Counters::default(),
        })
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, Deferred> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long until the measures kept back are due to be written (zero: now);
    /// `None` when there are none.
    pub fn fold_due_in(&self) -> Option<Duration> {
        self.deferred().due_in()
    }

    /// Writes the measures kept back ([`Deferred`]) in a transaction of their own.
    /// Blocking, under the store's write lock. When it fails they stay kept back.
    pub fn fold(&self) -> Result<()> {
        if let Some(why) = failure().reason() {
            return Err(Error::Failed(why.to_owned()));
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut deferred = self.deferred();
        if deferred.is_empty() {
            return Ok(());
        }
        let folding = std::mem::take(&mut *deferred);
        let written = (|| -> Result<bool> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !write_deferred(&tx, &folding)? {
                return Ok(false);
            }
            tx.commit()?;
            Ok(true)
        })();
        match written {
            Ok(true) => Ok(()),
            Ok(false) => {
                folding.dropped();
                Ok(())
            }
            Err(e) => {
                *deferred = folding.again_later();
                Err(e)
            }
        }
    }

    /// At open, before any ingest: makes and writes the measures of the events
    /// stored after each site's `measures_through` (kept back when the hub
    /// stopped), from their stored records, as ingest would have. Answers how many
    /// events it went through.
    pub fn recover(&self) -> Result<u64> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let behind: Vec<(String, i64, i64)> = tx
            .prepare(
                "SELECT site_id, measures_through, acked_event_seq FROM sites \
                 WHERE acked_event_seq > measures_through ORDER BY site_id",
            )?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut recovered = Deferred::default();
        let mut events = 0;
        for (site_id, from, through) in behind {
            let mut batches: HashMap<Uuid, Option<(Order, std::sync::Arc<StoredRecipe>, Pending)>> =
                HashMap::new();
            let mut statement = tx.prepare(
                "SELECT seq, body FROM site_events WHERE site_id = ? AND seq > ? AND seq <= ? ORDER BY seq",
            )?;
            let mut rows = statement.query(params![site_id, from, through])?;
            while let Some(row) = rows.next()? {
                events += 1;
                let seq: i64 = row.get(0)?;
                let body: String = row.get(1)?;
                let event: carrel_proto::event::SiteEvent =
                    serde_json::from_str(&body).map_err(|e| {
                        Error::Corrupt(format!("site {site_id:?} record {seq} does not read: {e}"))
                    })?;
                if event.is_site_wide() {
                    continue;
                }
                let batch = match batches.entry(event.batch_id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let found = match order_of_batch(&tx, event.batch_id)? {
                            Some(order) if !order.dry_run => {
                                let recipe =
                                    self.recipe(&tx, &order.recipe_id, order.recipe_version)?;
                                Some((order, recipe, Pending::default()))
                            }
                            _ => None,
                        };
                        e.insert(found)
                    }
                };
                if let Some((_, recipe, pending)) = batch {
                    pending.add(event.seq, &event.kind, &recipe.recipe);
                }
            }
            let measures = batches
                .into_values()
                .flatten()
                .filter(|(_, _, pending)| !pending.is_empty())
                .map(|(order, _, pending)| plan::Measures::new(&order, pending))
                .collect();
            recovered.add(&site_id, from as u64, through as u64, measures);
        }
        if !recovered.is_empty() {
            write_deferred(&tx, &recovered)?;
            tx.commit()?;
        }
        Ok(events)
    }

    /// Stores every request in one transaction, each in a savepoint of its own (a
    /// refused request rolls back alone and changes nothing), and commits once.
    /// Blocking: run it off the async threads. The outer error is a failure of the
    /// transaction itself (BEGIN or COMMIT), which answers every request.
    pub fn commit_group(&self, group: &[Request]) -> Result<Vec<Result<Ingested>>> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(group.len());
        // The audit trail's head, carried from one request to the next.
        let mut audit_head = None;
        // What the stored requests add to the measures kept back.
        let mut measured = Vec::new();
        for request in group {
            let mut savepoint = tx.savepoint()?;
            let mut head = audit_head.clone();
            match self.ingest(&savepoint, &mut head, request) {
                Ok(Stored {
                    cursor,
                    ingested,
                    measures,
                }) => {
                    savepoint.commit()?;
                    audit_head = head;
                    if ingested.new_events > 0 {
                        measured.push((
                            &request.site_id,
                            cursor,
                            ingested.acked_event_seq,
                            measures,
                        ));
                    }
                    results.push(Ok(ingested));
                }
                Err(e @ Error::Failed(_)) => return Err(e),
                Err(e) => {
                    savepoint.rollback()?;
                    savepoint.commit()?;
                    results.push(Err(e));
                }
            }
        }
        // The measures kept back, when due, go into this transaction.
        let mut deferred = self.deferred();
        let mut folding =
            (deferred.due_in() == Some(Duration::ZERO)).then(|| std::mem::take(&mut *deferred));
        let mut folded = false;
        if let Some(f) = &folding {
            match fold_into(&mut tx, f) {
                Ok(true) => folded = true,
                Ok(false) => {
                    f.dropped();
                    folding = None;
                }
                Err(e @ Error::Failed(_)) => {
                    *deferred = folding.take().expect("folding").again_later();
                    return Err(e);
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not write the measures of stored site events; they are kept and tried again in a second");
                }
            }
        }
        let committed = tx.commit();
        if !folded || committed.is_err() {
            if let Some(f) = folding {
                *deferred = f.again_later();
            }
        }
        committed?;
        for (site_id, cursor, through, measures) in measured {
            deferred.add(site_id, cursor, through, measures);
        }
        drop(deferred);
        // A group whose every request was refused wrote nothing that lasts: not
        // counted as a durable commit.
        let stored = results.iter().filter_map(|r| r.as_ref().ok());
        let requests = stored.clone().count() as u64;
        if requests > 0 {
            self.counters
                .committed(requests, stored.map(|i| i.new_events as u64).sum());
        }
        Ok(results)
    }

    /// One site's events, as [`Store::ingest_events`] describes: what the plan
    /// ([`super::super::ingest`]) needs is read, and what it decides is written.
    fn ingest(
        &self,
        tx: &Connection,
        audit_head: &mut Option<(u64, String)>,
        request: &Request,
    ) -> Result<Stored> {
        let Request {
            site_id,
            events,
            now,
        } = request;
        let (site_id, now) = (site_id.as_str(), *now);
        let cursor: u64 = tx
            .prepare_cached("SELECT acked_event_seq FROM sites WHERE site_id = ?")?
            .query_row([site_id], |row| row.get::<_, i64>(0))
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("site {site_id:?}")))?
            .try_into()
            .map_err(|_| Error::Corrupt(format!("site {site_id:?} has a negative cursor")))?;
        let needs = plan::needs(cursor, events);
        let mut found = plan::Found::default();
        let event_column = |column: &str, seq: u64| -> Result<Option<String>> {
            let sql = format!("SELECT {column} FROM site_events WHERE site_id = ? AND seq = ?");
            Ok(tx
                .prepare_cached(&sql)?
                .query_row(params![site_id, i64_of(seq)?], |row| row.get(0))
                .optional()?)
        };
        for seq in needs.stored_bodies {
            if let Some(body) = event_column("body", seq)? {
                found.stored_bodies.insert(seq, body);
            }
        }
        if let Some(seq) = needs.chain_head {
            found.chain_head = event_column("sha256", seq)?;
        }
        for seq in needs.correction_targets {
            if let Some(batch) = event_column("batch_id", seq)? {
                found
                    .correction_targets
                    .insert(seq, super::parse_uuid(&batch)?);
            }
        }
        for batch_id in needs.batches {
            if let Some(order) = order_of_batch(tx, batch_id)? {
                let recipe = self.recipe(tx, &order.recipe_id, order.recipe_version)?;
                found.orders.insert(batch_id, (order, recipe));
            }
        }
        let plan = plan::plan(site_id, cursor, events, &found)?;
        let received_at = ts(now);
        // Each statement is taken from the connection's cache once per message, not
        // once per row (see [`Statements`]).
        let mut insert_event = Statements::default();
        for received in &plan.events {
            let event = received.event();
            insert_event.get(
                tx,
                "INSERT INTO site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                site_id,
                i64_of(event.seq)?,
                event.event_id.to_string(),
                event.batch_id.to_string(),
                event.kind.name(),
                ts(event.recorded_at),
                received_at,
                received.body(),
                received.sha256(),
            ])?;
        }
        let mut insert_qc = Statements::default();
        for (batch_id, qc) in &plan.qc {
            insert_qc.get(
                tx,
                "INSERT INTO qc_results (batch_id, site_id, site_seq, test_id, value, hub_outcome, site_outcome, reason) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                batch_id.to_string(),
                site_id,
                i64_of(qc.site_seq)?,
                qc.test_id,
                json_text(&qc.value)?,
                rows::outcome_text(qc.hub_outcome),
                rows::outcome_text(qc.site_outcome),
                qc.reason,
            ])?;
        }
        for (batch_id, p) in &plan.projections {
            tx.prepare_cached(
                "UPDATE batches SET state = ?, current_step = ?, progress = ?, decision_recorded = ?, updated_at = ? WHERE batch_id = ?",
            )?
            .execute(params![
                p.state.as_str(),
                p.current_step.as_deref(),
                json_text(&p.progress)?,
                p.decision_recorded as i64,
                received_at,
                batch_id.to_string(),
            ])?;
        }
        let mut audit = Audit {
            tx,
            head: audit_head,
            now,
        };
        for entry in &plan.audit {
            audit.append(entry)?;
        }
        tx.prepare_cached(
            "UPDATE sites SET acked_event_seq = ?, last_contact_at = ? WHERE site_id = ?",
        )?
        .execute(params![
            i64_of(plan.ingested.acked_event_seq)?,
            received_at,
            site_id
        ])?;
        Ok(Stored {
            cursor,
            ingested: plan.ingested,
            measures: plan.measures,
        })
    }

    fn recipe(
        &self,
        tx: &Connection,
        recipe_id: &str,
        version: u32,
    ) -> Result<std::sync::Arc<StoredRecipe>> {
        if let Some(found) = self.recipes.shared(recipe_id, version) {
            return Ok(found);
        }
        let stored = tx
            .prepare_cached(
                "SELECT sha256, document FROM recipes WHERE recipe_id = ? AND version = ?",
            )?
            .query(params![recipe_id, i64::from(version)])?
            .next()?
            .map(|row| rows::recipe(&Row(row)))
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("recipe {recipe_id} v{version}")))?;
        Ok(self.recipes.keep(recipe_id, version, stored))
    }
}

/// The order of a batch, with its batch's projection.
fn order_of_batch(tx: &Connection, batch_id: Uuid) -> Result<Option<Order>> {
    let sql = format!("SELECT {} WHERE o.batch_id = ?", super::ORDER_COLUMNS);
    let mut statement = tx.prepare_cached(&sql)?;
    let mut rows = statement.query([batch_id.to_string()])?;
    rows.next()?.map(|row| rows::order(&Row(row))).transpose()
}

/// A row of the writer's connection, read as the sqlx rows are ([`rows::Columns`]).
struct Row<'a, 'r>(&'a rusqlite::Row<'r>);

impl rows::Columns for Row<'_, '_> {
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.0.get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.0.get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.0.get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool> {
        Ok(self.int(column)? != 0)
    }
    fn real(&self, column: &str) -> Result<f64> {
        Ok(self.0.get(column)?)
    }
    fn uuid(&self, column: &str) -> Result<Uuid> {
        super::parse_uuid(&self.text(column)?)
    }
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>> {
        self.opt_text(column)?
            .as_deref()
            .map(super::parse_uuid)
            .transpose()
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        super::parse_ts(&self.text(column)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>> {
        self.opt_text(column)?
            .as_deref()
            .map(super::parse_ts)
            .transpose()
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

/// Appends to the audit trail inside the transaction, keeping its head (position
/// and hash) so that consecutive entries of a group read it once.
struct Audit<'a> {
    tx: &'a Connection,
    head: &'a mut Option<(u64, String)>,
    now: DateTime<Utc>,
}

impl Audit<'_> {
    fn append(&mut self, entry: &NewEntry) -> Result<()> {
        let (last, prev) = match self.head.take() {
            Some(head) => head,
            None => self
                .tx
                .prepare_cached(
                    "SELECT position, sha256 FROM audit_log ORDER BY position DESC LIMIT 1",
                )?
                .query_row([], |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)))
                .optional()?
                .unwrap_or_else(|| (0, audit::GENESIS.to_owned())),
        };
        let position = last + 1;
        let at = ts(self.now);
        let sha = audit::entry_sha256(&prev, position, &at, entry);
        self.tx
            .prepare_cached(
                "INSERT INTO audit_log (position, at, actor, action, object, batch_id, old_value, new_value, reason, prev_sha256, sha256) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                i64_of(position)?,
                at,
                entry.actor,
                entry.action.as_str(),
                entry.object,
                entry.batch_id.map(|b| b.to_string()),
                entry.old_value,
                entry.new_value,
                entry.reason,
                prev,
                sha,
            ])?;
        *self.head = Some((position, sha));
        Ok(())
    }
}

/// What a stored request changed: the site's cursor before it and after it, and
/// what its events add to the measures.
struct Stored {
    cursor: u64,
    ingested: Ingested,
    measures: Vec<plan::Measures>,
}

/// How long the measures of committed site events may be kept back before they
/// are written (see [`Deferred`]).
pub const FOLD_EVERY: Duration = Duration::from_secs(1);

/// The measure updates of committed site events not written yet, merged per
/// batch. The writer adds each stored message's ([`Writer::commit_group`]) and
/// writes them at most [`FOLD_EVERY`] later: in the transaction of a later group
/// commit, in one of their own when no events come ([`Writer::fold`]), or before
/// anything reads the measures (`SqliteStore::fold_measures`), so a reader never
/// sees measures behind the events.
///
/// Why not in the events' own transaction: live sites send one or two records a
/// message, and each record of samples cost its message a run and a bin upsert per
/// parameter. Durable ingest (`carrel-bench --only ingest`, 100 sites) was 7 %
/// lower than before analytics were kept, with the writer thread spending 15 %
/// more per event. Kept back for a second, a batch's samples are merged into one
/// row per attribute and one per bin.
///
/// Nothing is lost when the hub stops: `sites.measures_through`, the highest seq
/// of each site whose measures are written, moves in the transaction that writes
/// them, and at open the writer makes the measures of the events after it from the
/// stored records ([`Writer::recover`]). Nothing is counted twice: it moves only
/// from the value this writer left (compare and set), so measures that another
/// writer of the file has already made from the records are dropped here.
///
/// PostgreSQL writes measures with their events: its writers are the replicas
/// that hold each site's link, one transaction per message.
#[derive(Debug, Default)]
struct Deferred {
    batches: Vec<plan::Measures>,
    /// Where each batch is in `batches`.
    index: HashMap<Uuid, usize>,
    /// Each site with events here: (its `measures_through` before them, the
    /// highest seq among them).
    sites: HashMap<String, (u64, u64)>,
    /// When the first of them was committed.
    since: Option<Instant>,
}

impl Deferred {
    /// A stored message of `site_id` that moved its cursor from `from` to
    /// `through`, with what it adds to its batches' measures.
    fn add(&mut self, site_id: &str, from: u64, through: u64, measures: Vec<plan::Measures>) {
        self.since.get_or_insert_with(Instant::now);
        match self.sites.get_mut(site_id) {
            Some((_, last)) => *last = through,
            None => {
                self.sites.insert(site_id.to_owned(), (from, through));
            }
        }
        for m in measures {
            match self.index.get(&m.batch_id) {
                Some(&at) => self.batches[at].updates.append(m.updates),
                None => {
                    self.index.insert(m.batch_id, self.batches.len());
                    self.batches.push(m);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// These, after a failure to write them: due again [`FOLD_EVERY`] from now, so
    /// that a lasting failure is tried once a second, not at every commit.
    fn again_later(mut self) -> Deferred {
        self.since = Some(Instant::now());
        self
    }

    fn due_in(&self) -> Option<Duration> {
        self.since
            .map(|since| FOLD_EVERY.saturating_sub(since.elapsed()))
    }

    /// Said when another writer had already made these measures.
    fn dropped(&self) {
        tracing::warn!(
            sites = self.sites.len(),
            batches = self.batches.len(),
            "measures kept back were already made from the stored records by another writer of this database; these are dropped"
        );
    }
}

/// Writes `deferred`'s measures and moves each of its sites' `measures_through`
/// from where it found it; answers false, having moved none that counts, when one
/// had moved (the caller rolls back).
fn write_deferred(tx: &Connection, deferred: &Deferred) -> Result<bool> {
    write_measures(tx, &deferred.batches)?;
    let mut statement = tx.prepare_cached(
        "UPDATE sites SET measures_through = ? WHERE site_id = ? AND measures_through = ?",
    )?;
    for (site_id, (from, through)) in &deferred.sites {
        if statement.execute(params![i64_of(*through)?, site_id, i64_of(*from)?])? != 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// [`write_deferred`] in a savepoint of `tx`, rolled back unless it wrote.
fn fold_into(tx: &mut Transaction<'_>, deferred: &Deferred) -> Result<bool> {
    let savepoint = tx.savepoint()?;
    if !write_deferred(&savepoint, deferred)? {
        return Ok(false);
    }
    savepoint.commit()?;
    Ok(true)
}

/// Writes the measure updates of batches (at most one [`plan::Measures`] a
/// batch: those [`Deferred`] kept back): a run of samples is merged after the
/// stored run as [`measure::Run::then`] does; a QC result is
/// applied as [`measure::QcState::then`] does.
///
/// Runs and trajectory bins are written many rows to a statement: [`Pending`]
/// leaves at most one of each (batch, attribute, bin), SQLite applies the rows of
/// a multi-row upsert one after another all the same, and they touch only `step/`
/// rows, which no QC result or correction does. A batch's second of samples of
/// five parameters so costs a few statements, not two per record. QC results and
/// corrections are applied one by one, in order.
///
/// [`measure::Run::then`]: crate::model::analytics::measure::Run::then
/// [`measure::QcState::then`]: crate::model::analytics::measure::QcState::then
fn write_measures(tx: &Connection, all: &[plan::Measures]) -> Result<()> {
    use crate::model::analytics::measure::{Run, Update};
    let mut statements = MeasureStatements::default();
    use carrel_proto::golden::Point;
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|m| (m.batch_id.to_string(), ts(m.batch_at)))
        .collect();
    let mut runs: Vec<(&plan::Measures, &String, &String, &String, &String, &Run)> = Vec::new();
    let mut bins: Vec<(&plan::Measures, &String, &String, f64, &Point)> = Vec::new();
    for (m, (batch_id, batch_at)) in all.iter().zip(&keys) {
        for update in m.updates.updates() {
            match update {
                Update::Extend {
                    attribute,
                    unit,
                    run,
                } => runs.push((m, batch_id, batch_at, attribute, unit, run)),
                Update::Binned {
                    attribute,
                    bin_hours,
                    point,
                } => bins.push((m, batch_id, attribute, *bin_hours, point)),
                Update::Result { .. } | Update::Corrected { .. } => {}
            }
        }
    }
    for chunk in runs.chunks(ROWS_PER_STATEMENT) {
        static RUNS: ManyRows = ManyRows::new(
            "INSERT INTO batch_measures (batch_id, attribute, product_id, site_id, batch_at, unit, n, sum, min, max, first_hours, last_hours, last_out, out_of_range_hours) VALUES ",
            14,
            " ON CONFLICT (batch_id, attribute) DO UPDATE SET \
               n = n + excluded.n, sum = sum + excluded.sum, \
               min = min(min, excluded.min), max = max(max, excluded.max), \
               out_of_range_hours = out_of_range_hours + excluded.out_of_range_hours \
                 + CASE WHEN last_out = 1 THEN max(0.0, excluded.first_hours - last_hours) ELSE 0.0 END, \
               last_hours = excluded.last_hours, last_out = excluded.last_out",
        );
        let mut statement = tx.prepare_cached(RUNS.sql(chunk.len()))?;
        let mut at = 0;
        for (m, batch_id, batch_at, attribute, unit, run) in chunk {
            at = bind(
                &mut statement,
                at,
                &[
                    batch_id,
                    attribute,
                    &m.product_id,
                    &m.site_id,
                    batch_at,
                    unit,
                    &i64_of(run.n)?,
                    &run.sum,
                    &run.min,
                    &run.max,
                    &run.first_hours,
                    &run.last_hours,
                    &(run.last_out as i64),
                    &run.out_of_range_hours,
                ],
            )?;
        }
        statement.raw_execute()?;
    }
    for chunk in bins.chunks(ROWS_PER_STATEMENT) {
        static BINS: ManyRows = ManyRows::new(
            "INSERT INTO batch_trajectories (batch_id, attribute, bin, product_id, bin_hours, n, sum) VALUES ",
            7,
            " ON CONFLICT (batch_id, attribute, bin) DO UPDATE SET \
               n = n + excluded.n, sum = sum + excluded.sum",
        );
        let mut statement = tx.prepare_cached(BINS.sql(chunk.len()))?;
        let mut at = 0;
        for (m, batch_id, attribute, bin_hours, point) in chunk {
            at = bind(
                &mut statement,
                at,
                &[
                    batch_id,
                    attribute,
                    &i64::from(point.bin),
                    &m.product_id,
                    bin_hours,
                    &i64_of(point.n)?,
                    &point.sum,
                ],
            )?;
        }
        statement.raw_execute()?;
    }
    for (m, (batch_id, batch_at)) in all.iter().zip(&keys) {
        // A message's results of one test, up to a correction, as one upsert.
        let mut results: Vec<Results> = Vec::new();
        for update in m.updates.updates() {
            match update {
                Update::Result {
                    attribute,
                    unit,
                    value,
                    seq,
                    retest_of,
                } => match results.iter_mut().find(|r| r.attribute == attribute) {
                    Some(r) => r.then(unit, *value, *seq, *retest_of),
                    None => results.push(Results::first(attribute, unit, *value, *seq, *retest_of)),
                },
                Update::Corrected { seq } => {
                    for r in results.drain(..) {
                        r.write(tx, &mut statements, m, batch_id, batch_at)?;
                    }
                    // A corrected result no longer clearly counts.
                    statements
                        .corrected
                        .get(
                            tx,
                            "UPDATE batch_measures SET ambiguous = 1 \
                             WHERE batch_id = ? AND attribute LIKE 'qc/%' AND seq = ?",
                        )?
                        .execute(params![batch_id, i64_of(*seq)?])?;
                }
                Update::Extend { .. } | Update::Binned { .. } => {}
            }
        }
        for r in results {
            r.write(tx, &mut statements, m, batch_id, batch_at)?;
        }
    }
    Ok(())
}

/// Consecutive results of one QC test in a message (no correction between them),
/// applied as one upsert: what [`QcState::then`] makes of them depends on the
/// stored state only through the first. If the first applies (no row yet, or the
/// stored result is clear and the first retests it), the state after it is the
/// first result's own, and the rest follow from it here; otherwise the test is
/// ambiguous for good and the stored values stay. A catching-up site sends many
/// results of a test in one message.
///
struct Results<'a> {
    attribute: &'a str,
    /// What the first result retests: whether it applies to the stored state.
    first_retest_of: Option<u64>,
    /// The state after all of them, given that the first applies, with the unit
    /// and retest of the result it holds.
    state: QcState,
    unit: &'a str,
    retest_of: Option<u64>,
}

impl<'a> Results<'a> {
    fn first(
        attribute: &'a str,
        unit: &'a str,
        value: Option<f64>,
        seq: u64,
        retest_of: Option<u64>,
    ) -> Self {
        Results {
            attribute,
            first_retest_of: retest_of,
            state: QcState::then(None, value, seq, retest_of),
            unit,
            retest_of,
        }
    }

    fn then(&mut self, unit: &'a str, value: Option<f64>, seq: u64, retest_of: Option<u64>) {
        self.state = QcState::then(Some(self.state), value, seq, retest_of);
        if !self.state.ambiguous {
            (self.unit, self.retest_of) = (unit, retest_of);
        }
    }

    fn write<'c>(
        &self,
        tx: &'c Connection,
        statements: &mut MeasureStatements<'c>,
        m: &plan::Measures,
        batch_id: &str,
        batch_at: &str,
    ) -> Result<()> {
        let v = self.state.value.unwrap_or(0.0);
        statements
            .result
            .get(
                tx,
                "INSERT INTO batch_measures (batch_id, attribute, product_id, site_id, batch_at, unit, n, sum, min, max, first_hours, last_hours, last_out, out_of_range_hours, seq, retest_of, ambiguous) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8, 0.0, 0.0, 0, 0.0, ?9, ?10, ?11) \
                 ON CONFLICT (batch_id, attribute) DO UPDATE SET \
                   n = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.n ELSE n END, \
                   sum = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.sum ELSE sum END, \
                   min = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.min ELSE min END, \
                   max = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.max ELSE max END, \
                   unit = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.unit ELSE unit END, \
                   retest_of = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.retest_of ELSE retest_of END, \
                   ambiguous = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.ambiguous ELSE 1 END, \
                   seq = CASE WHEN ambiguous = 0 AND ?12 = seq THEN excluded.seq ELSE seq END",
            )?
            .execute(params![
                batch_id,
                self.attribute,
                m.product_id,
                m.site_id,
                batch_at,
                self.unit,
                i64::from(self.state.value.is_some()),
                v,
                i64_of(self.state.seq)?,
                self.retest_of.map(i64_of).transpose()?,
                i64::from(self.state.ambiguous),
                self.first_retest_of.map(i64_of).transpose()?,
            ])?;
        Ok(())
    }
}

/// Rows of runs or bins in one statement at most (14 parameters a row at most,
/// well under SQLite's limit of 32,766).
const ROWS_PER_STATEMENT: usize = 32;

/// A statement of `head`, then 1 to [`ROWS_PER_STATEMENT`] groups of `columns`
/// placeholders, then `tail`; each text made once, at first use (making it per
/// message was about 3 % of the writer's time in the durable-ingest benchmark).
struct ManyRows {
    head: &'static str,
    columns: usize,
    tail: &'static str,
    texts: std::sync::OnceLock<Vec<String>>,
}

impl ManyRows {
    const fn new(head: &'static str, columns: usize, tail: &'static str) -> ManyRows {
        ManyRows {
            head,
            columns,
            tail,
            texts: std::sync::OnceLock::new(),
        }
    }

    /// The text for `rows` rows (1 to [`ROWS_PER_STATEMENT`]).
    fn sql(&self, rows: usize) -> &str {
        let texts = self.texts.get_or_init(|| {
            let row = format!("({})", vec!["?"; self.columns].join(", "));
            (1..=ROWS_PER_STATEMENT)
                .map(|n| {
                    format!(
                        "{}{}{}",
                        self.head,
                        vec![row.as_str(); n].join(", "),
                        self.tail
                    )
                })
                .collect()
        });
        &texts[rows - 1]
    }
}

/// Binds `values` to the parameters after the `at`-th; returns the last bound.
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    at: usize,
    values: &[&dyn ToSql],
) -> Result<usize> {
    for (i, value) in values.iter().enumerate() {
        statement.raw_bind_parameter(at + i + 1, value)?;
    }
    Ok(at + values.len())
}

/// A statement of the writer, taken from the connection's statement cache when it
/// is first needed and kept for the rest of a message.
///
/// rusqlite's cache finds a statement by hashing its whole SQL text, and the
/// measure upserts are long: `perf` on the catch-up figure (`carrel-bench --only
/// catch-up`) showed a tenth of the writer thread's time in that lookup when it was
/// done once per row.
#[derive(Default)]
struct Statements<'c>(Option<CachedStatement<'c>>);

impl<'c> Statements<'c> {
    fn get(&mut self, tx: &'c Connection, sql: &str) -> Result<&mut CachedStatement<'c>> {
        let statement = match self.0.take() {
            Some(statement) => statement,
            None => tx.prepare_cached(sql)?,
        };
        Ok(self.0.insert(statement))
    }
}

/// The statements of [`write_measures`] that are applied one update at a time.
#[derive(Default)]
struct MeasureStatements<'c> {
    result: Statements<'c>,
    corrected: Statements<'c>,
}

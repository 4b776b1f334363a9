//! The seven measurements. Each function measures one repetition of one figure and
//! returns plain numbers; `main` repeats them, summarises and prints the table.

use crate::fleet::{self, Chain, Hub, Site};
use crate::sqlprofile::SqlProfile;
use crate::stats;
use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- 1. raw limit

/// What the disk and SQLite allow for our records, written as the hub's writer
/// writes them: the hub's own schema (made by opening a hub store on a scratch
/// file: same table, primary key, index and triggers), rusqlite with the writer's
/// settings (WAL, `synchronous=FULL`, foreign keys on, no automatic checkpoint, a
/// PASSIVE checkpoint every `CHECKPOINT_EVERY` from another connection, as the hub
/// runs them),
/// and the writer's own INSERT statement, prepared once. Beside it, the bare
/// `fdatasync` rate of a file in the same directory.
pub struct Raw {
    /// The best rows per second over the transaction sizes tried.
    pub rows_per_sec: f64,
    /// The transaction size that gave it.
    pub best_rows_per_txn: u64,
    /// (rows per transaction, rows per second) for each size tried.
    pub by_size: Vec<(u64, f64)>,
    /// One row per transaction: durable commits per second.
    pub commits_per_sec: f64,
    /// 4 KiB written and `fdatasync`ed, per second: the disk alone.
    pub fdatasyncs_per_sec: f64,
}

/// Transaction sizes the raw limit tries (1 is the single-row commit rate).
const RAW_TXN_SIZES: [u64; 4] = [10, 100, 1_000, 10_000];

pub async fn raw_limit(
    dir: &Path,
    rep: usize,
    rows: u64,
    single_commits: u64,
) -> anyhow::Result<Raw> {
    let path = dir.join(format!("raw-limit-{rep}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // The hub's schema, by the hub's own migrations.
    carrel_hub::store::sqlite::SqliteStore::open(&path)
        .await
        .map_err(|e| anyhow::anyhow!("making the raw-limit database: {e}"))?
        .close()
        .await;
    let fsync_file = dir.join(format!("raw-fdatasync-{rep}"));
    tokio::task::spawn_blocking(move || -> anyhow::Result<Raw> {
        let fdatasyncs_per_sec = fdatasync_rate(&fsync_file, single_commits.max(50))?;
        let conn = rusqlite::Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; \
             PRAGMA cache_size = -65536;",
        )?;
        let site = format!("raw-{rep}");
        conn.execute(
            "INSERT INTO sites (site_id, name, status, created_at) VALUES (?1, ?1, 'active', ?2)",
            rusqlite::params![site, fleet::ts(Utc::now())],
        )?;
        // The hub's background checkpoints, on their own connection.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer = {
            let stop = stop.clone();
            let path = path.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let conn = rusqlite::Connection::open(&path)?;
                conn.busy_timeout(Duration::from_secs(10))?;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(carrel_hub::store::sqlite::CHECKPOINT_EVERY);
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                }
                Ok(())
            })
        };
        let mut chain = Chain::new(uuid::Uuid::now_v7(), "G123426000001X");
        let mut write = |count: u64, per_txn: u64| -> anyhow::Result<f64> {
            let now = Utc::now();
            let prepared: Vec<fleet::Row> = (0..count).map(|_| chain.next_row(now)).collect();
            let started = Instant::now();
            for txn in prepared.chunks(per_txn as usize) {
                let tx = conn.unchecked_transaction()?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )?;
                    for row in txn {
                        let event = &row.event;
                        insert.execute(rusqlite::params![
                            site,
                            event.seq as i64,
                            event.event_id.to_string(),
                            event.batch_id.to_string(),
                            event.kind.name(),
                            fleet::ts(event.recorded_at),
                            fleet::ts(now),
                            row.body,
                            row.sha256,
                        ])?;
                    }
                }
                tx.commit()?;
            }
            Ok(count as f64 / started.elapsed().as_secs_f64())
        };
        let commits_per_sec = write(single_commits, 1)?;
        let mut by_size = Vec::new();
        for size in RAW_TXN_SIZES {
            // Small transactions are bounded by commits: fewer rows keep them short.
            let count = rows.min(size * single_commits.max(50) * 4).max(size);
            by_size.push((size, write(count, size)?));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        checkpointer
            .join()
            .map_err(|_| anyhow::anyhow!("the checkpointer panicked"))??;
        let (best_rows_per_txn, rows_per_sec) = by_size
            .iter()
            .copied()
            .fold((0, 0.0), |best, (size, rate)| if rate > best.1 { (size, rate) } else { best });
        Ok(Raw {
            rows_per_sec,
            best_rows_per_txn,
            by_size,
            commits_per_sec,
            fdatasyncs_per_sec,
        })
    })
    .await
    .context("raw limit thread")?
}

/// Writes 4 KiB and calls `fdatasync` `count` times on a file: syncs per second.
fn fdatasync_rate(path: &Path, count: u64) -> anyhow::Result<f64> {
    use std::io::{Seek, Write};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    for _ in 0..count {
        file.seek(std::io::SeekFrom::Start(0))?;
        file.write_all(&block)?;
        file.sync_data()?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    Ok(rate)
}

// ---------------------------------------------------------- 2. durable ingest

pub struct Ingest {
    pub events_per_sec: f64,
    pub events: u64,
    pub secs: f64,
    /// Durable transactions the hub's writer committed (a group commit is one).
    pub commits: u64,
    /// Sites' messages those transactions held.
    pub requests: u64,
    /// Flush requests the hub's disk completed in the window (`stats::disk_flushes`).
    pub disk_flushes: Option<u64>,
    pub cpu_secs: f64,
    pub cpu_by_threads: Value,
    pub sql: Option<Value>,
}

/// Every site records `events_per_site` events as fast as the hub takes them, with
/// at most `outstanding` recorded but unacknowledged; measures acknowledged events
/// per second until all are acknowledged or `max` has passed.
pub async fn ingest(
    hub: &Hub,
    sites: Vec<Site>,
    events_per_site: u64,
    outstanding: u64,
    max: Duration,
    profile: Option<&SqlProfile>,
) -> anyhow::Result<(Vec<Site>, Ingest)> {
    let links: Vec<_> = sites.iter().map(|s| s.link.clone()).collect();
    let acked_before: Vec<u64> = sites.iter().map(|s| s.acked()).collect();
    let counts_before = hub.ingest_counts();
    let flushes_before = stats::disk_flushes(&hub.config.data_dir);
    let cpu_before = stats::cpu_time(None)?;
    let threads_before = stats::cpu_by_thread_group();
    if let Some(p) = profile {
        p.reset();
    }
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut producers = JoinSet::new();
    let mut targets = Vec::new();
    for mut site in sites {
        let last = site.store.last_event_seq().await?;
        let target = last + events_per_site;
        targets.push(target);
        let stop = stop.clone();
        producers.spawn(async move {
            let mut link = site.link.clone();
            let mut seq = last;
            while seq < target && !stop.is_cancelled() {
                let acked = link.borrow_and_update().hub_acked_event_seq;
                if seq.saturating_sub(acked) >= outstanding {
                    tokio::select! {
                        changed = link.changed() => if changed.is_err() { break },
                        _ = stop.cancelled() => break,
                    }
                    continue;
                }
                seq = site.append_next().await?.seq;
            }
            anyhow::Ok(site)
        });
    }
    let deadline = started + max;
    let mut finished = None;
    while Instant::now() < deadline {
        if links
            .iter()
            .zip(&targets)
            .all(|(l, t)| l.borrow().hub_acked_event_seq >= *t)
        {
            finished = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ended = finished.unwrap_or_else(Instant::now);
    let acked: u64 = links
        .iter()
        .zip(&acked_before)
        .map(|(l, before)| l.borrow().hub_acked_event_seq - before)
        .sum();
    let cpu = stats::cpu_time(None)?.saturating_sub(cpu_before);
    let threads_after = stats::cpu_by_thread_group();
    let counts = hub.ingest_counts();
    let disk_flushes = flushes_before
        .zip(stats::disk_flushes(&hub.config.data_dir))
        .map(|(before, after)| after.saturating_sub(before));
    let commits = counts.commits - counts_before.commits;
    let requests = counts.requests - counts_before.requests;
    let sql = profile.map(|p| p.hub_report(acked, commits));
    stop.cancel();
    let mut sites = Vec::new();
    while let Some(done) = producers.join_next().await {
        sites.push(done.context("producer panicked")??);
    }
    sites.sort_by(|a, b| a.site_id.cmp(&b.site_id));
    drain(&sites, Duration::from_secs(300)).await?;
    let secs = ended.duration_since(started).as_secs_f64();
    Ok((
        sites,
        Ingest {
            events_per_sec: acked as f64 / secs,
            events: acked,
            secs,
            commits,
            requests,
            disk_flushes,
            cpu_secs: cpu.as_secs_f64(),
            cpu_by_threads: stats::cpu_delta(&threads_before, &threads_after),
            sql,
        },
    ))
}

/// Every site records `events_per_site` events while its link is down, then all
/// links come up at once: the hub's ingest rate when sites send full messages
/// (the agent sends up to 200 events per message when it has a backlog), so the
/// simulated sites' own recording costs nothing during the measurement.
pub async fn ingest_recorded(
    hub: &Hub,
    mut sites: Vec<Site>,
    events_per_site: u64,
    max: Duration,
) -> anyhow::Result<(Vec<Site>, Ingest)> {
    for site in &mut sites {
        site.pause_link().await;
    }
    let mut targets = Vec::new();
    for site in &mut sites {
        site.record_offline(events_per_site).await?;
        targets.push(site.store.last_event_seq().await?);
    }
    let counts_before = hub.ingest_counts();
    let flushes_before = stats::disk_flushes(&hub.config.data_dir);
    let cpu_before = stats::cpu_time(None)?;
    let threads_before = stats::cpu_by_thread_group();
    let started = Instant::now();
    for site in &mut sites {
        site.resume_link(&hub.url)?;
    }
    let deadline = started + max;
    let mut finished = None;
    while Instant::now() < deadline {
        if sites.iter().zip(&targets).all(|(s, t)| s.acked() >= *t) {
            finished = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ended = finished.unwrap_or_else(Instant::now);
    let acked: u64 = sites
        .iter()
        .zip(&targets)
        .map(|(s, t)| s.acked().min(*t).saturating_sub(t - events_per_site))
        .sum();
    let cpu = stats::cpu_time(None)?.saturating_sub(cpu_before);
    let threads_after = stats::cpu_by_thread_group();
    let counts = hub.ingest_counts();
    let disk_flushes = flushes_before
        .zip(stats::disk_flushes(&hub.config.data_dir))
        .map(|(before, after)| after.saturating_sub(before));
    let commits = counts.commits - counts_before.commits;
    let requests = counts.requests - counts_before.requests;
    drain(&sites, Duration::from_secs(300)).await?;
    let secs = ended.duration_since(started).as_secs_f64();
    Ok((
        sites,
        Ingest {
            events_per_sec: acked as f64 / secs,
            events: acked,
            secs,
            commits,
            requests,
            disk_flushes,
            cpu_secs: cpu.as_secs_f64(),
            cpu_by_threads: stats::cpu_delta(&threads_before, &threads_after),
            sql: None,
        },
    ))
}

/// Waits until the hub has acknowledged everything every site recorded.
pub async fn drain(sites: &[Site], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for site in sites {
        let last = site.store.last_event_seq().await?;
        let mut link = site.link.clone();
        while link.borrow_and_update().hub_acked_event_seq < last {
            if tokio::time::timeout_at(deadline.into(), link.changed())
                .await
                .is_err()
            {
                bail!(
                    "site {} still has {} events unacknowledged after {timeout:?}",
                    site.site_id,
                    last - link.borrow().hub_acked_event_seq
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- 3. latency

pub struct LatencyRep {
    /// From each event's intended time to the acknowledgement (or the deadline).
    pub events: Vec<Duration>,
    pub orders: Vec<Duration>,
    /// Events still unacknowledged when the drain deadline passed (each counted in
    /// `events` at the deadline).
    pub unacked: usize,
    pub offered_per_sec: f64,
    /// Acknowledgements that arrived within the measured window (not the drain).
    pub acked_per_sec: f64,
}

/// Sites record events at `rate` events/s in total (open loop, evenly spread, each
/// site with its own phase) for `duration`. Each event's latency runs from the time
/// it was due at that rate, not from when the site got round to it, to the hub's
/// acknowledgement observed at the site: a stall delays the events behind it and
/// they count the stall (coordinated omission corrected). An event not acknowledged
/// by the drain deadline counts as acknowledged at the deadline. Meanwhile orders
/// are created every `order_every`, and each one's time from commit at the hub to
/// commit at the site.
pub async fn latency(
    hub: &Arc<Hub>,
    sites: Vec<Site>,
    rate: f64,
    duration: Duration,
    order_every: Duration,
) -> anyhow::Result<(Vec<Site>, LatencyRep)> {
    let n = sites.len().max(1) as f64;
    let period = Duration::from_secs_f64(n / rate.max(1.0));
    let started = Instant::now();
    let end = started + duration;
    let drain_deadline = end + Duration::from_secs(60);
    let stores: Vec<(String, Arc<carrel_site_agent::store::Store>)> = sites
        .iter()
        .map(|s| (s.site_id.clone(), s.store.clone()))
        .collect();
    let mut tasks = JoinSet::new();
    for (i, mut site) in sites.into_iter().enumerate() {
        // (seq, when it was due), in seq order.
        let pending: Arc<Mutex<VecDeque<(u64, Instant)>>> = Default::default();
        // The watcher: pops what each acknowledgement covers.
        let watcher = {
            let pending = pending.clone();
            let mut link = site.link.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut in_window = 0usize;
                let mut producing_done = false;
                loop {
                    let acked = link.borrow_and_update().hub_acked_event_seq;
                    let now = Instant::now();
                    {
                        let mut queue = pending.lock().unwrap_or_else(|p| p.into_inner());
                        while queue.front().is_some_and(|(seq, _)| *seq <= acked) {
                            if let Some((_, due)) = queue.pop_front() {
                                seen.push(now.saturating_duration_since(due));
                                if now <= end {
                                    in_window += 1;
                                }
                            }
                        }
                        if producing_done && queue.is_empty() {
                            return (seen, 0, in_window);
                        }
                        if now >= end {
                            producing_done = true;
                            if queue.is_empty() {
                                return (seen, 0, in_window);
                            }
                        }
                    }
                    let wait = if producing_done { drain_deadline } else { end };
                    match tokio::time::timeout_at(wait.into(), link.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) if producing_done => break,
                        Err(_) => producing_done = true,
                    }
                }
                // What never came back counts at the deadline, not as nothing.
                let queue = pending.lock().unwrap_or_else(|p| p.into_inner());
                seen.extend(
                    queue
                        .iter()
                        .map(|(_, due)| drain_deadline.saturating_duration_since(*due)),
                );
                (seen, queue.len(), in_window)
            })
        };
        tasks.spawn(async move {
            // Spread the sites' phases over one period.
            let offset = period.mul_f64((i as f64 * 0.618_034) % 1.0);
            let mut ticker = tokio::time::interval_at((started + offset).into(), period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut recorded = 0u64;
            loop {
                // The time this event was due at the offered rate (a late tick
                // fires at once and still says when it was due).
                let due = ticker.tick().await.into_std();
                if due >= end {
                    break;
                }
                let event = site.append_next().await?;
                recorded += 1;
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((event.seq, due));
            }
            let (seen, left, in_window) = watcher.await.context("watcher panicked")?;
            anyhow::Ok((site, seen, left, recorded, in_window))
        });
    }
    // Orders, round robin over the sites, while the events flow.
    let mut orders = JoinSet::new();
    let mut next = 0usize;
    while Instant::now() + order_every < end {
        let (site_id, store) = stores[next % stores.len()].clone();
        next += 1;
        let hub = hub.clone();
        orders.spawn(async move {
            let order = hub.order(&site_id).await?;
            let committed = Instant::now();
            fleet::wait_for_batch(&store, order.batch_id, Duration::from_secs(60)).await?;
            anyhow::Ok(committed.elapsed())
        });
        tokio::time::sleep(order_every).await;
    }
    let mut order_latencies = Vec::new();
    while let Some(done) = orders.join_next().await {
        order_latencies.push(done.context("order task panicked")??);
    }
    let mut sites = Vec::new();
    let mut events = Vec::new();
    let mut unacked = 0;
    let mut recorded = 0;
    let mut acked_count = 0;
    while let Some(done) = tasks.join_next().await {
        let (site, seen, left, count, in_window) = done.context("site task panicked")??;
        sites.push(site);
        events.extend(seen);
        unacked += left;
        recorded += count;
        acked_count += in_window;
    }
    sites.sort_by(|a, b| a.site_id.cmp(&b.site_id));
    drain(&sites, Duration::from_secs(300)).await?;
    Ok((
        sites,
        LatencyRep {
            events,
            orders: order_latencies,
            unacked,
            offered_per_sec: recorded as f64 / duration.as_secs_f64(),
            acked_per_sec: acked_count as f64 / duration.as_secs_f64(),
        },
    ))
}

// ---------------------------------------------------------------- 4. idle sites

/// Registers and enrolls `count` idle sites (`concurrency` at a time), each into its
/// own directory; returns their ids and directories.
pub async fn enroll_idle(
    hub: &Arc<Hub>,
    dir: &Path,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    enroll_idle_named(hub, dir, "idle", count, concurrency).await
}

/// As [`enroll_idle`], the sites named `<prefix>-00000`, ...
pub async fn enroll_idle_named(
    hub: &Arc<Hub>,
    dir: &Path,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let site_id = format!("{prefix}-{i:05}");
        let site_dir = dir.join(&site_id);
        let hub = hub.clone();
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            hub.enroll(&site_id, &site_dir).await?;
            anyhow::Ok((site_id, site_dir))
        });
    }
    let mut sites = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        sites.push(done.context("enrollment task panicked")??);
    }
    sites.sort();
    Ok(sites)
}

pub struct Idle {
    pub connected: f64,
    pub rss_per_site_kib: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub child: Value,
}

/// A `carrel-hub serve` process on an existing data directory, killed on drop.
struct HubProcess {
    child: tokio::process::Child,
    pid: u32,
    url: String,
}

impl HubProcess {
    /// Stops the hub as an operator does (SIGTERM), so it checkpoints its WAL and
    /// the next hub on this database starts from a clean file instead of
    /// replaying this one's log while it is measured; kills it after 60 s.
    async fn stop(mut self) {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok()
                && tokio::time::timeout(Duration::from_secs(60), self.child.wait())
                    .await
                    .is_ok()
            {
                return;
            }
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// When a hub's database is over `sqlite_check_before_serving_mib`, the whole-file
/// integrity check runs after it starts serving (ten seconds on the live figure's
/// 5 GB database), which a figure measuring the steady state must not include.
#[derive(Clone, Copy, PartialEq)]
enum WholeFileCheck {
    /// The hub's own setting, as an operator runs it (the restart figure).
    AsConfigured,
    /// The whole file checked before serving, so it is done before measuring.
    BeforeServing,
}

async fn serve_hub(data_dir: &Path, check: WholeFileCheck) -> anyhow::Result<HubProcess> {
    let addr_file = data_dir.join("hub.addr");
    let _ = std::fs::remove_file(&addr_file);
    let log = std::fs::File::create(data_dir.join("hub-process.log"))?;
    let mut command = tokio::process::Command::new(sibling_binary("carrel-hub")?);
    if check == WholeFileCheck::BeforeServing {
        // 1 TiB: every database here is checked whole before serving.
        command.env("CARREL_HUB_SQLITE_CHECK_BEFORE_SERVING_MIB", "1048576");
    }
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("CARREL_HUB_CONSOLE_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting carrel-hub serve")?;
    let pid = child.id().context("hub pid")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            if text.ends_with('\n') {
                return Ok(HubProcess {
                    child,
                    pid,
                    url: format!("https://{}", text.trim()),
                });
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "carrel-hub serve exited with {status}:\n{}",
                std::fs::read_to_string(data_dir.join("hub-process.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("carrel-hub serve did not start within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts a fresh `carrel-hub serve` process on the data directory where the idle
/// sites were enrolled, connects every idle site at once from a child process,
/// holds them for `window`, and reads the hub process's resident memory before and
/// after. A fresh process per repetition, so memory freed by an earlier one cannot
/// hide what the connections take.
pub async fn idle(hub_data_dir: &Path, list: &Path, window: Duration) -> anyhow::Result<Idle> {
    let hub = serve_hub(hub_data_dir, WholeFileCheck::BeforeServing).await?;
    // Let the start settle (recipes published, pools opened) before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = stats::rss_kib(Some(hub.pid))?;
    let exe = std::env::current_exe().context("locating carrel-bench")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("idle-fleet")
        .arg("--hub")
        .arg(&hub.url)
        .arg("--list")
        .arg(list)
        .arg("--window")
        .arg(window.as_secs_f64().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the idle fleet")?;
    let stdout = child.stdout.take().context("idle fleet stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut result = None;
    while let Some(line) = lines.next_line().await? {
        if let Some(json) = line.strip_prefix("result ") {
            result = Some(serde_json::from_str::<Value>(json).context("idle fleet result")?);
            break;
        }
    }
    let mut child_result = result.context("the idle fleet ended without a result")?;
    let rss_after_kib = stats::rss_kib(Some(hub.pid))?;
    let hub_cpu_secs = stats::cpu_time(Some(hub.pid))?.as_secs_f64();
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.write_all(b"done\n").await;
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    hub.stop().await;
    child_result["hub_rss_before_kib"] = json!(rss_before_kib);
    child_result["hub_rss_after_kib"] = json!(rss_after_kib);
    child_result["hub_cpu_secs"] = json!(hub_cpu_secs);
    let connected = child_result["connected"].as_f64().unwrap_or(0.0);
    Ok(Idle {
        connected,
        rss_per_site_kib: (rss_after_kib as f64 - rss_before_kib as f64) / connected.max(1.0),
        rss_before_kib,
        rss_after_kib,
        child: child_result,
    })
}

// ------------------------------------------------------------- 8. live capacity

/// One run of the live fleet (`live.rs`) against a fresh `carrel-hub serve`
/// process on the database its sites were enrolled in: the child's result, with the
/// hub process's CPU seconds and resident memory added.
pub async fn live(
    hub_data_dir: &Path,
    list: &Path,
    rate: f64,
    events_per_message: u64,
    duration: Duration,
    max_events_per_site: u64,
) -> anyhow::Result<Value> {
    let hub = serve_hub(hub_data_dir, WholeFileCheck::BeforeServing).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = stats::cpu_time(Some(hub.pid))?;
    let exe = std::env::current_exe().context("locating carrel-bench")?;
    let output = tokio::process::Command::new(exe)
        .arg("live-fleet")
        .arg("--hub")
        .arg(&hub.url)
        .arg("--list")
        .arg(list)
        .arg("--rate")
        .arg(rate.to_string())
        .arg("--events-per-message")
        .arg(events_per_message.to_string())
        .arg("--duration")
        .arg(duration.as_secs_f64().to_string())
        .arg("--max-events-per-site")
        .arg(max_events_per_site.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running the live fleet")?;
    let hub_cpu_secs = stats::cpu_time(Some(hub.pid))?
        .saturating_sub(cpu_before)
        .as_secs_f64();
    let hub_rss_kib = stats::rss_kib(Some(hub.pid))?;
    hub.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(json) = stdout.lines().find_map(|l| l.strip_prefix("result ")) else {
        bail!(
            "the live fleet ended without a result ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let mut result: Value = serde_json::from_str(json).context("live fleet result")?;
    result["hub_cpu_secs"] = json!(hub_cpu_secs);
    result["hub_rss_kib"] = json!(hub_rss_kib);
    Ok(result)
}

/// Enrolls `count` live sites at an in-process hub on `hub_dir` and orders a batch
/// for each; writes the list the live fleet reads (directory, batch, COI).
pub async fn enroll_live(
    hub: &Arc<Hub>,
    dir: &Path,
    prefix: &str,
    count: usize,
    list: &Path,
) -> anyhow::Result<()> {
    let sites = enroll_idle_named(hub, dir, prefix, count, 16).await?;
    let mut text = String::new();
    for (site_id, site_dir) in sites {
        let order = hub.order(&site_id).await?;
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            site_dir.display(),
            order.batch_id,
            order.coi
        ));
    }
    std::fs::write(list, text)?;
    Ok(())
}

// ---------------------------------------------------------------- 5. catch-up

pub struct CatchUp {
    pub events_per_sec: f64,
    pub secs: f64,
    pub first_ack_ms: f64,
    pub generate_secs: f64,
    /// CPU seconds of each thread group while it drained (`stats::cpu_by_thread_group`).
    pub cpu_by_threads: serde_json::Value,
}

/// A new site records `backlog` events while its link is down, then connects;
/// measures the drain.
pub async fn catch_up(hub: &Hub, dir: &Path, rep: usize, backlog: u64) -> anyhow::Result<CatchUp> {
    let site_id = format!("backlog-{rep}");
    let site_dir = dir.join(&site_id);
    // Enrolled, ordered, and the order committed at the site over the real link.
    let site = Site::create(hub, &site_id, &site_dir).await?;
    let (batch_id, coi) = (site.batch_id, site.coi.clone());
    site.stop().await;
    // Offline: the backlog, written in the agent's own schema in large transactions
    // (a million single appends would spend minutes in fsync before the measurement).
    let generate = Instant::now();
    let pool = fleet::open_pool(&site_dir.join("agent.db"), false).await?;
    let mut chain = Chain::new(batch_id, &coi);
    fleet::bulk_insert(&pool, "events", None, &mut chain, backlog, 10_000).await?;
    pool.close().await;
    let generate_secs = generate.elapsed().as_secs_f64();
    let store = Arc::new(carrel_site_agent::store::Store::open(&site_dir.join("agent.db")).await?);
    let threads_before = stats::cpu_by_thread_group();
    let started = Instant::now();
    let (mut link, stop, task) = fleet::start_link(&hub.url, &site_dir, store.clone())?;
    let mut first_ack = None;
    let deadline = started + Duration::from_secs(900);
    loop {
        let acked = link.borrow_and_update().hub_acked_event_seq;
        if acked > 0 && first_ack.is_none() {
            first_ack = Some(started.elapsed());
        }
        if acked >= backlog {
            break;
        }
        if tokio::time::timeout_at(deadline.into(), link.changed())
            .await
            .is_err()
        {
            bail!(
                "the backlog of {backlog} events did not drain within 900 s ({acked} acknowledged)"
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_by_threads = stats::cpu_delta(&threads_before, &stats::cpu_by_thread_group());
    stop.cancel();
    let _ = task.await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&site_dir);
    Ok(CatchUp {
        events_per_sec: backlog as f64 / secs,
        secs,
        first_ack_ms: first_ack.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        generate_secs,
        cpu_by_threads,
    })
}

// ---------------------------------------------------------------- 6. footprint

pub struct Sampled {
    pub cpu_percent: f64,
    pub rss_kib: u64,
    pub rss_max_kib: u64,
}

/// CPU share and resident memory of a process over `window`, sampled every 100 ms.
pub async fn sample_process(pid: u32, window: Duration) -> anyhow::Result<Sampled> {
    let cpu_before = stats::cpu_time(Some(pid))?;
    let started = Instant::now();
    let mut rss_max_kib = 0;
    let mut rss_kib = 0;
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_kib = stats::rss_kib(Some(pid))?;
        rss_max_kib = rss_max_kib.max(rss_kib);
    }
    let cpu = stats::cpu_time(Some(pid))?.saturating_sub(cpu_before);
    Ok(Sampled {
        cpu_percent: 100.0 * cpu.as_secs_f64() / started.elapsed().as_secs_f64(),
        rss_kib,
        rss_max_kib,
    })
}

/// CPU share and resident memory of a process while `going` says so (asked once a
/// second, at most `max`), memory read every `every`: for a batch, from its order
/// until manufacturing is over, through the whole expansion step.
pub async fn sample_while<F, Fut>(
    pid: u32,
    every: Duration,
    max: Duration,
    mut going: F,
) -> anyhow::Result<(Sampled, usize, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let cpu_before = stats::cpu_time(Some(pid))?;
    let started = Instant::now();
    let (mut rss_kib, mut rss_max_kib, mut samples) = (0, 0, 0);
    let mut asked = Instant::now();
    while started.elapsed() < max {
        tokio::time::sleep(every).await;
        rss_kib = stats::rss_kib(Some(pid))?;
        rss_max_kib = rss_max_kib.max(rss_kib);
        samples += 1;
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            if !going().await? {
                break;
            }
        }
    }
    let cpu = stats::cpu_time(Some(pid))?.saturating_sub(cpu_before);
    let secs = started.elapsed().as_secs_f64();
    Ok((
        Sampled {
            cpu_percent: 100.0 * cpu.as_secs_f64() / secs,
            rss_kib,
            rss_max_kib,
        },
        samples,
        secs,
    ))
}

/// A real `carrel-site-agent run` process, enrolled at the hub.
pub struct AgentProcess {
    pub site_id: String,
    pub child: tokio::process::Child,
    pub pid: u32,
}

pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating carrel-bench")?;
    let path = exe
        .parent()
        .context("carrel-bench has no directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it with the benchmark, e.g. \
             `cargo build --release --bin carrel-bench --bin carrel-site-agent --bin carrel-hub`",
            path.display()
        );
    }
    Ok(path)
}

pub async fn start_agent(
    hub: &Hub,
    dir: &Path,
    site_id: &str,
    time_compression: f64,
) -> anyhow::Result<AgentProcess> {
    hub.enroll(site_id, dir).await?;
    let mut config = carrel_site_agent::Config {
        data_dir: dir.to_owned(),
        hub: hub.url.clone(),
        console_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..carrel_site_agent::Config::default()
    };
    config.simulator.auto_scan = true;
    config.simulator.time_compression = time_compression;
    carrel_site_agent::write_config(&config)?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let child = tokio::process::Command::new(sibling_binary("carrel-site-agent")?)
        .args(["run", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting carrel-site-agent")?;
    let pid = child.id().context("agent pid")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hub.shared.links.is_connected(site_id) {
        if Instant::now() > deadline {
            bail!(
                "carrel-site-agent did not connect within 60 s:\n{}",
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(AgentProcess {
        site_id: site_id.to_owned(),
        child,
        pid,
    })
}

// ---------------------------------------------------------------- 7. restart

/// Events per request when filling the restart database: a full agent message.
const FILL_MESSAGE_EVENTS: u64 = 200;

/// Fills a stopped hub's SQLite database with `events` site events the way a live
/// hub stores them: through the hub's own ingest transaction
/// (`Store::ingest_events`, the call the site link makes for each message), in
/// 200-event requests from every site at once, so the group commit, the hash-chain
/// check, the `site_events` rows, the QC results, the batch projections, the audit
/// entry per request and the sites' cursors are exactly what a real ingest run
/// leaves. Only the network is skipped. The events are the benchmark's mix (one QC
/// result in ten) on each site's real batch. Returns events per second written.
pub async fn fill_by_ingest(
    db: &Path,
    sites: &[(String, uuid::Uuid, String)],
    events: u64,
) -> anyhow::Result<f64> {
    use carrel_hub::store::Store;
    let store = Arc::new(
        carrel_hub::store::sqlite::SqliteStore::open(db)
            .await
            .map_err(|e| anyhow::anyhow!("opening the restart database: {e}"))?,
    );
    let started = Instant::now();
    let per_site = events / sites.len().max(1) as u64;
    let mut left = events;
    let mut writers = JoinSet::new();
    for (i, (site_id, batch_id, coi)) in sites.iter().enumerate() {
        let count = if i + 1 == sites.len() { left } else { per_site };
        left -= count;
        let (store, site_id, batch_id, coi) =
            (store.clone(), site_id.clone(), *batch_id, coi.clone());
        writers.spawn(async move {
            let mut chain = Chain::new(batch_id, &coi);
            let mut sent = 0;
            while sent < count {
                let n = FILL_MESSAGE_EVENTS.min(count - sent);
                let now = Utc::now();
                let message: Vec<_> = (0..n).map(|_| chain.next_received(now)).collect();
                let ingested = store
                    .ingest_events(&site_id, &message, now)
                    .await
                    .map_err(|e| anyhow::anyhow!("ingesting for {site_id}: {e}"))?;
                sent += n;
                if ingested.acked_event_seq != sent {
                    bail!(
                        "{site_id}: the hub acknowledged {} after {sent} events",
                        ingested.acked_event_seq
                    );
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.context("a fill task panicked")??;
    }
    let secs = started.elapsed().as_secs_f64();
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().await,
        Err(_) => bail!("the restart database is still in use"),
    }
    // As a stopped hub leaves it: the WAL folded into the file.
    let conn = rusqlite::Connection::open(db)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(events as f64 / secs)
}

/// Rows in each table of a hub database that the checks before serving read:
/// what the restart figure started on.
pub fn table_rows(db: &Path) -> anyhow::Result<Value> {
    let conn = rusqlite::Connection::open(db)?;
    let mut rows = serde_json::Map::new();
    for table in [
        "site_events",
        "audit_log",
        "qc_results",
        "batches",
        "orders",
    ] {
        let count: Option<i64> = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .ok();
        rows.insert(table.into(), json!(count));
    }
    Ok(Value::Object(rows))
}

/// Starts a hub on an existing data directory and times it until a gRPC health
/// check over TLS answers SERVING; then stops it.
/// Restart as an operator sees it: from exec of a new `carrel-hub serve` process to
/// its health check answering SERVING over TLS, with the database's pages first
/// dropped from the page cache (`posix_fadvise(DONTNEED)` on `hub.db` and its WAL,
/// after an fsync so that nothing dirty stays). Returns the seconds and whether the
/// cache was dropped for every file.
pub async fn time_process_start(data_dir: &Path) -> anyhow::Result<(f64, bool)> {
    // In a child process: closing a descriptor of the database here would drop every
    // POSIX lock this process holds on it, under any SQLite connection of an
    // in-process hub still open on the file ("How To Corrupt An SQLite Database
    // File", 2.2), and a stale connection without its locks can checkpoint over
    // the new process's writes. A 10-million-event run was damaged that way.
    let files: Vec<PathBuf> = ["hub.db", "hub.db-wal", "hub.db-shm"]
        .iter()
        .map(|name| data_dir.join(name))
        .filter(|path| path.exists())
        .collect();
    let dropped = tokio::process::Command::new(std::env::current_exe()?)
        .arg("drop-page-cache")
        .args(&files)
        .status()
        .await
        .context("running carrel-bench drop-page-cache")?;
    let cold = match dropped.code() {
        Some(0) => true,
        Some(3) => false,
        _ => bail!("carrel-bench drop-page-cache failed ({dropped})"),
    };
    let started = Instant::now();
    let hub = serve_hub(data_dir, WholeFileCheck::AsConfigured).await?;
    let ca = std::fs::read_to_string(data_dir.join("pki/ca.crt"))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("127.0.0.1");
    let channel = tonic::transport::Endpoint::from_shared(hub.url.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .context("connecting to the new hub process")?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = started + Duration::from_secs(300);
    let secs = loop {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "carrel.v1.SiteLinkService".into(),
            })
            .await?
            .into_inner();
        if answer.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break started.elapsed().as_secs_f64();
        }
        if Instant::now() > deadline {
            bail!(
                "the new hub process answered health status {} for 300 s",
                answer.status
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    hub.stop().await;
    Ok((secs, cold))
}

/// `carrel-bench drop-page-cache FILE...`: asks the kernel to forget the files'
/// cached pages (after an fsync, so that nothing dirty stays). Exit 0 when it did for
/// every file, 3 when the kernel would not for one. Run as a child process (see
/// `time_process_start`).
pub fn drop_page_cache(files: &[PathBuf]) -> anyhow::Result<std::process::ExitCode> {
    let mut all = true;
    for path in files {
        // A WAL may be gone by now (its last connection closed): nothing to drop.
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        file.sync_all()?;
        all &= rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).is_ok();
    }
    Ok(if all {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    })
}

pub async fn time_start(runtime: &tokio::runtime::Handle, data_dir: &Path) -> anyhow::Result<f64> {
    let config = fleet::hub_config(data_dir);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = fleet::start_server(runtime, config, shutdown.clone()).await?;
    let ca = std::fs::read_to_string(data_dir.join("pki/ca.crt"))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("127.0.0.1");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", running.addr))?
        .tls_config(tls)?
        .connect()
        .await
        .context("connecting to the restarted hub")?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "carrel.v1.SiteLinkService".into(),
        })
        .await?
        .into_inner();
    let secs = started.elapsed().as_secs_f64();
    if answer.status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        bail!("the restarted hub answered health status {}", answer.status);
    }
    drop(health);
    shutdown.cancel();
    runtime
        .spawn(running.wait())
        .await
        .context("hub task panicked")??;
    Ok(secs)
}

//! `carrel-bench`: the fleet benchmark (issue 7). It starts a real hub in-process
//! (SQLite in WAL mode with `synchronous=FULL`, real TLS) and drives simulated sites
//! over real mutual-TLS gRPC: every site is enrolled for real, records its events in
//! its own real agent store first, and replicates them with the real agent link.
//! It prints one table (and `--json FILE`) of seven figures measured in the same run:
//! the disk's raw limit, durable ingest, latency at half load, idle connections,
//! catch-up, the agent's footprint and the hub's restart time.
//!
//! It is not a load generator for other hubs, and it changes nothing outside its
//! temporary directories. `docs/benchmark.md` says how to run it and what each
//! figure means.
#![forbid(unsafe_code)]

#[path = "carrel_bench/analytics.rs"]
mod analytics;
#[path = "carrel_bench/figures.rs"]
mod figures;
#[path = "carrel_bench/fleet.rs"]
mod fleet;
#[path = "carrel_bench/idle.rs"]
mod idle;
#[path = "carrel_bench/live.rs"]
mod live;
#[path = "carrel_bench/postgres.rs"]
mod postgres;
#[path = "carrel_bench/sqlprofile.rs"]
mod sqlprofile;
#[path = "carrel_bench/stats.rs"]
mod stats;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fleet::{Hub, Site};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
#[command(
    name = "carrel-bench",
    about = "Fleet benchmark: a real hub, simulated sites over real mutual-TLS gRPC, one table"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Sites streaming events (figures 2 and 3). Default 100; 5 with --quick.
    #[arg(long)]
    sites: Option<usize>,
    /// Events each site records per durable-ingest repetition (each repetition also
    /// ends after 20 s). Default 1000; 200 with --quick.
    #[arg(long)]
    events: Option<u64>,
    /// Seconds of each latency repetition at half the maximum rate. Default 10; 2 with --quick.
    #[arg(long)]
    duration: Option<f64>,
    /// Offer this many events/s in the latency figure instead of half the durable
    /// ingest median (which is also what it uses when ingest is not measured: 500).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Idle sites connected at once (figure 4). Default 10000; 50 with --quick.
    #[arg(long)]
    idle_sites: Option<usize>,
    /// Events recorded offline by the catch-up site (figure 5). Default 1000000 (the
    /// issue's figure; about 20 s per repetition here, half of it writing the backlog);
    /// 20000 with --quick.
    #[arg(long)]
    backlog: Option<u64>,
    /// Events stored when the hub restarts (figure 7). Default 2000000 (the issue's
    /// 10000000 writes an 11 GB database in over two minutes); 100000 with --quick.
    #[arg(long)]
    restart_events: Option<u64>,
    /// Live sites in figure 8's capacity runs (comma-separated). Default 100,1000
    /// (10000 enrolls 10,000 more sites per run: add it for the full table);
    /// 10 with --quick.
    #[arg(long, value_delimiter = ',')]
    live_sites: Vec<usize>,
    /// Repetitions of each figure. Default 3; 1 with --quick.
    #[arg(long)]
    reps: Option<usize>,
    /// A small run that checks the benchmark works (CI smoke test), not timings.
    #[arg(long)]
    quick: bool,
    /// Released batches of history for the analytics figure (10), about 200
    /// process readings each. Default 5000; 60 with --quick.
    #[arg(long)]
    analytics_batches: Option<usize>,
    /// Sites the analytics history is spread over. Default 20; 3 with --quick.
    #[arg(long)]
    analytics_sites: Option<usize>,
    /// Charts asked for through each door in the analytics figure. Default 200; 20
    /// with --quick.
    #[arg(long)]
    analytics_requests: Option<usize>,
    /// Also write the table as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only these figures (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Process seconds per real second of the footprint agent's simulated instrument.
    #[arg(long, default_value_t = 3600.0)]
    agent_time_compression: f64,
    /// Where the hub's database and the scratch tables go (the disk being measured).
    /// Default: the system temp directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the simulated sites keep their stores. Default: /dev/shm when present, so
    /// the sites' own fsyncs (each site has its own disk in reality) leave the hub's
    /// disk to the hub.
    #[arg(long)]
    site_dir: Option<PathBuf>,
    /// Report where the hub's SQL time goes during durable ingest (slows it a little).
    #[arg(long)]
    sql_profile: bool,
    /// Keep the work directories (hub database, site stores) for a closer look.
    #[arg(long)]
    keep: bool,
    /// A PostgreSQL server for figure 9 (`postgres://USER@HOST:PORT/DATABASE`, a user
    /// who may CREATE DATABASE: scratch databases are made there and dropped at the
    /// end). Without one, figure 9 is skipped with a message.
    #[arg(long, env = "CARREL_BENCH_POSTGRES_URL")]
    postgres: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (internal) The idle fleet of figure 4, run as a child process.
    #[command(hide = true)]
    IdleFleet(idle::Args),
    /// (internal) The live fleet of figure 8, run as a child process.
    #[command(hide = true)]
    LiveFleet(live::Args),
    /// (internal) Drops files from the page cache, in a process of its own (figure 7).
    #[command(hide = true)]
    DropPageCache { files: Vec<PathBuf> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Figure {
    Raw,
    Ingest,
    Latency,
    Idle,
    CatchUp,
    Footprint,
    Restart,
    Live,
    Postgres,
    Analytics,
}

/// The run's parameters, after --quick and the flags.
#[derive(Debug, Clone)]
struct Params {
    sites: usize,
    events: u64,
    duration: Duration,
    idle_sites: usize,
    backlog: u64,
    restart_events: u64,
    reps: usize,
    quick: bool,
    raw_rows: u64,
    raw_single_commits: u64,
    outstanding: u64,
    ingest_max: Duration,
    order_every: Duration,
    idle_window: Duration,
    live_sites: Vec<usize>,
    live_duration: Duration,
    footprint_window: Duration,
    restart_sites: usize,
    agent_time_compression: f64,
}

impl Params {
    fn from(cli: &Cli) -> Params {
        let q = cli.quick;
        Params {
            sites: cli.sites.unwrap_or(if q { 5 } else { 100 }).max(1),
            events: cli.events.unwrap_or(if q { 200 } else { 1_000 }).max(1),
            duration: Duration::from_secs_f64(
                cli.duration.unwrap_or(if q { 2.0 } else { 10.0 }).max(0.5),
            ),
            idle_sites: cli.idle_sites.unwrap_or(if q { 50 } else { 10_000 }).max(1),
            backlog: cli
                .backlog
                .unwrap_or(if q { 20_000 } else { 1_000_000 })
                .max(1),
            restart_events: cli
                .restart_events
                .unwrap_or(if q { 100_000 } else { 2_000_000 }),
            reps: cli.reps.unwrap_or(if q { 1 } else { 3 }).max(1),
            quick: q,
            raw_rows: if q { 20_000 } else { 200_000 },
            raw_single_commits: if q { 50 } else { 300 },
            // A site records the next event as soon as an acknowledgement leaves it
            // fewer than this many outstanding (a closed loop that keeps every site
            // busy without building a backlog that takes long to drain).
            outstanding: 20,
            ingest_max: Duration::from_secs(if q { 60 } else { 20 }),
            order_every: Duration::from_millis(if q { 200 } else { 50 }),
            idle_window: Duration::from_secs(if q { 6 } else { 12 }),
            live_sites: if !cli.live_sites.is_empty() {
                cli.live_sites.clone()
            } else if q {
                vec![10]
            } else {
                vec![100, 1000]
            },
            live_duration: Duration::from_secs(if q { 2 } else { 10 }),
            footprint_window: Duration::from_secs(if q { 1 } else { 5 }),
            restart_sites: if q { 2 } else { 10 },
            agent_time_compression: cli.agent_time_compression,
        }
    }

    fn json(&self) -> Value {
        json!({
            "sites": self.sites, "events_per_site": self.events,
            "latency_duration_secs": self.duration.as_secs_f64(),
            "idle_sites": self.idle_sites, "backlog": self.backlog,
            "restart_events": self.restart_events, "reps": self.reps, "quick": self.quick,
            "raw_rows": self.raw_rows, "outstanding_per_site": self.outstanding,
            "order_every_ms": self.order_every.as_millis() as u64,
            "idle_window_secs": self.idle_window.as_secs_f64(),
            "live_sites": self.live_sites, "live_duration_secs": self.live_duration.as_secs_f64(),
            "agent_time_compression": self.agent_time_compression,
            "mean_event_bytes": fleet::mean_event_bytes(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

/// One line of the table.
struct Row {
    /// The figure's key in `--json`'s `figures`, with its unit in the name.
    key: String,
    figure: u8,
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
    target: Option<Target>,
}

impl Row {
    fn new(key: impl Into<String>, figure: u8, name: impl Into<String>, unit: &'static str) -> Row {
        Row {
            key: key.into(),
            figure,
            name: name.into(),
            unit,
            samples: Vec::new(),
            target: None,
        }
    }

    fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    fn met(&self) -> Option<bool> {
        let median = stats::summary(&self.samples).median;
        self.target.map(|t| match t {
            Target::AtLeast(v) => median >= v,
            Target::AtMost(v) => median <= v,
        })
    }

    fn json(&self) -> Value {
        let s = stats::summary(&self.samples);
        json!({
            "key": self.key, "figure": self.figure, "name": self.name, "unit": self.unit,
            "median": finite(s.median), "min": finite(s.min), "max": finite(s.max),
            "samples": self.samples.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
            "target": self.target.map(|t| match t {
                Target::AtLeast(v) => json!({"at_least": v}),
                Target::AtMost(v) => json!({"at_most": v}),
            }),
            "met": self.met(),
        })
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1_000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(rows: &[Row], reps: usize) {
    println!();
    println!(
        "{:<2} {:<40} {:>11} {:>11} {:>11} {:<9} {:<12} met",
        "#",
        "figure",
        if reps > 1 { "median" } else { "value" },
        "min",
        "max",
        "unit",
        "target",
    );
    for row in rows {
        let s = stats::summary(&row.samples);
        let target = match row.target {
            Some(Target::AtLeast(v)) => format!(">= {}", fmt_value(v)),
            Some(Target::AtMost(v)) => format!("<= {}", fmt_value(v)),
            None => String::new(),
        };
        let met = match row.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:<2} {:<40} {:>11} {:>11} {:>11} {:<9} {:<12} {}",
            row.figure,
            row.name,
            fmt_value(s.median),
            fmt_value(s.min),
            fmt_value(s.max),
            row.unit,
            target,
            met
        );
    }
}

/// Raises the soft open-files limit to the hard one: every connected site is a
/// socket on each side.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("warning: cannot raise the open-files limit: {e}");
            0
        }
    }
}

/// A count for a figure's key: 10000000 is "10m", 100000 is "100k".
fn short_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn progress(text: impl AsRef<str>) {
    eprintln!("[carrel-bench] {}", text.as_ref());
}

fn init_tracing(profile: Option<sqlprofile::SqlProfile>) {
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::prelude::*;
    let logs = std::env::var_os("RUST_LOG").map(|_| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::from_default_env())
    });
    let profile = profile
        .map(|p| p.with_filter(Targets::new().with_target("sqlx::query", tracing::Level::DEBUG)));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(profile)
        .try_init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::IdleFleet(args)) => idle::run(args),
        Some(Command::LiveFleet(args)) => live::run(args),
        Some(Command::DropPageCache { files }) => {
            return figures::drop_page_cache(&files).unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            })
        }
        None => bench(cli),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench(cli: Cli) -> anyhow::Result<()> {
    let profile = cli.sql_profile.then(sqlprofile::SqlProfile::default);
    init_tracing(profile.clone());
    let fd_limit = raise_fd_limit();
    // The hub runs on its own runtime (threads `hub-rt`), the simulated sites on
    // another (`fleet-rt`), so the CPU each side uses can be told apart.
    let hub_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hub-rt")
        .enable_all()
        .build()?;
    let fleet_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fleet-rt")
        .enable_all()
        .build()?;
    let handle = hub_runtime.handle().clone();
    let result = fleet_runtime.block_on(run(cli, handle, profile, fd_limit));
    fleet_runtime.shutdown_timeout(Duration::from_secs(5));
    hub_runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

fn wants(cli: &Cli, figure: Figure) -> bool {
    cli.only.is_empty() || cli.only.contains(&figure)
}

async fn create_sites(hub: &Arc<Hub>, dir: &Path, count: usize) -> anyhow::Result<Vec<Site>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let hub = hub.clone();
        let gate = gate.clone();
        let site_id = format!("site-{i:04}");
        let site_dir = dir.join(&site_id);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Site::create(&hub, &site_id, &site_dir).await
        });
    }
    let mut sites = Vec::new();
    while let Some(done) = tasks.join_next().await {
        sites.push(done.context("site setup panicked")??);
    }
    sites.sort_by(|a, b| a.site_id.cmp(&b.site_id));
    Ok(sites)
}

/// Figure 9: a raw limit on a scratch database, then a hub on another one with
/// `p.sites` enrolled sites: ingest with a backlog, latency at `rate` (what figure 3
/// offered SQLite) and a catch-up of `p.backlog` events, as figures 2, 3 and 5
/// measure them on SQLite.
async fn postgres_figures(
    server: &mut postgres::Server,
    p: &Params,
    hub_runtime: &tokio::runtime::Handle,
    work: &Path,
    site_root: &Path,
    rate: f64,
) -> anyhow::Result<(Vec<Row>, Value)> {
    let mut insert = Row::new(
        "postgres_raw_insert_rows_per_s",
        9,
        format!(
            "PostgreSQL raw: INSERT, {} rows each",
            postgres::INSERT_ROWS
        ),
        "rows/s",
    );
    let mut copy = Row::new(
        "postgres_raw_copy_rows_per_s",
        9,
        "PostgreSQL raw: COPY",
        "rows/s",
    );
    let mut single = Row::new(
        "postgres_raw_single_row_commits_per_s",
        9,
        "PostgreSQL raw: single-row commits",
        "commits/s",
    );
    let mut backlog = Row::new(
        "postgres_backlog_ingest_events_per_s",
        9,
        "PostgreSQL ingest, sites with a backlog",
        "events/s",
    );
    let mut backlog_ratio = Row::new(
        "postgres_backlog_ingest_ratio_to_raw_percent",
        9,
        "PostgreSQL backlog ingest / raw (best)",
        "%",
    );
    let mut per_commit = Row::new(
        "postgres_backlog_events_per_commit",
        9,
        "PostgreSQL events per commit, backlog",
        "events",
    );
    let mut raw_details = Vec::new();
    let mut ingest_details = Vec::new();
    for rep in 0..p.reps {
        let url = server.scratch("raw").await?;
        let raw = postgres::raw_limit(&url, p.raw_rows, p.raw_single_commits).await?;
        progress(format!(
            "PostgreSQL raw limit rep {rep}: INSERT {:.0} rows/s, COPY {:.0} rows/s, {:.0} single-row commits/s",
            raw.insert_rows_per_sec, raw.copy_rows_per_sec, raw.commits_per_sec
        ));
        insert.samples.push(raw.insert_rows_per_sec);
        copy.samples.push(raw.copy_rows_per_sec);
        single.samples.push(raw.commits_per_sec);
        raw_details.push(json!({
            "insert_rows_per_s": raw.insert_rows_per_sec, "copy_rows_per_s": raw.copy_rows_per_sec,
            "single_row_commits_per_s": raw.commits_per_sec,
            "rows_per_insert": postgres::INSERT_ROWS, "rows_per_txn": postgres::TXN_ROWS,
        }));
    }
    let url = server.scratch("hub").await?;
    let hub = Arc::new(Hub::start_on(hub_runtime, &work.join("postgres-hub"), Some(url)).await?);
    progress(format!(
        "enrolling {} streaming sites on the PostgreSQL hub",
        p.sites
    ));
    let mut sites = create_sites(&hub, &site_root.join("postgres"), p.sites).await?;
    for rep in 0..p.reps {
        let (back, r) = figures::ingest_recorded(&hub, sites, p.events, p.ingest_max).await?;
        sites = back;
        progress(format!(
            "PostgreSQL ingest with a backlog rep {rep}: {:.0} events/s ({} events in {:.2} s, {} commits)",
            r.events_per_sec, r.events, r.secs, r.commits
        ));
        backlog.samples.push(r.events_per_sec);
        // Against the better of the two ways of writing the rows raw.
        if let (Some(a), Some(b)) = (insert.samples.get(rep), copy.samples.get(rep)) {
            backlog_ratio
                .samples
                .push(100.0 * r.events_per_sec / a.max(*b));
        }
        per_commit
            .samples
            .push(r.events as f64 / r.commits.max(1) as f64);
        ingest_details.push(json!({
            "events": r.events, "secs": r.secs, "commits": r.commits, "requests": r.requests,
            "process_cpu_secs": r.cpu_secs, "cpu_secs_by_threads": r.cpu_by_threads,
        }));
    }
    let name = |what: &str| format!("PostgreSQL event->ack {what} (at {rate:.0}/s)");
    let mut p50 = Row::new("postgres_event_ack_p50_ms", 9, name("p50"), "ms");
    let mut p99 = Row::new("postgres_event_ack_p99_ms", 9, name("p99"), "ms");
    let mut p999 = Row::new("postgres_event_ack_p99_9_ms", 9, name("p99.9"), "ms");
    let mut max = Row::new("postgres_event_ack_max_ms", 9, name("max"), "ms");
    let mut order_p99 = Row::new(
        "postgres_order_site_p99_ms",
        9,
        "PostgreSQL order->site p99",
        "ms",
    );
    let mut latency_details = Vec::new();
    for rep in 0..p.reps {
        let (back, mut lat) =
            figures::latency(&hub, sites, rate, p.duration, p.order_every).await?;
        sites = back;
        let events = stats::latency(&mut lat.events);
        let orders = stats::latency(&mut lat.orders);
        progress(format!(
            "PostgreSQL latency rep {rep} at {rate:.0} events/s: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms ({} events, {} unacknowledged at the deadline); order->site p99 {:.2} ms",
            events.p50, events.p99, events.p999, events.max, events.count, lat.unacked, orders.p99
        ));
        p50.samples.push(events.p50);
        p99.samples.push(events.p99);
        p999.samples.push(events.p999);
        max.samples.push(events.max);
        order_p99.samples.push(orders.p99);
        latency_details.push(json!({
            "rate_target_per_sec": rate, "acked_in_window_per_sec": lat.acked_per_sec,
            "unacked_at_deadline": lat.unacked, "event_to_ack": events.json(),
            "order_to_site": orders.json(),
        }));
    }
    for site in sites {
        site.stop().await;
    }
    let mut catch_up = Row::new(
        "postgres_catch_up_events_per_s",
        9,
        format!("PostgreSQL catch-up, {} events backlog", p.backlog),
        "events/s",
    );
    let mut catch_details = Vec::new();
    for rep in 0..p.reps {
        let c = figures::catch_up(&hub, site_root, rep, p.backlog).await?;
        progress(format!(
            "PostgreSQL catch-up rep {rep}: {:.0} events/s ({:.2} s)",
            c.events_per_sec, c.secs
        ));
        catch_up.samples.push(c.events_per_sec);
        catch_details.push(json!({"secs": c.secs, "first_ack_ms": c.first_ack_ms}));
    }
    hub.stop().await?;
    Ok((
        vec![
            insert,
            copy,
            single,
            backlog,
            backlog_ratio,
            per_commit,
            p50,
            p99,
            p999,
            max,
            order_p99,
            catch_up,
        ],
        json!({
            "raw_limit": raw_details, "ingest_with_backlog": ingest_details,
            "latency": latency_details, "catch_up": catch_details,
        }),
    ))
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn run(
    cli: Cli,
    hub_runtime: tokio::runtime::Handle,
    profile: Option<sqlprofile::SqlProfile>,
    fd_limit: u64,
) -> anyhow::Result<()> {
    let p = Params::from(&cli);
    let run_started = Instant::now();
    let work = match &cli.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&work)?;
    let disk = tempfile::Builder::new()
        .prefix("carrel-bench-")
        .tempdir_in(&work)
        .with_context(|| format!("a work directory in {}", work.display()))?;
    let site_base = match &cli.site_dir {
        Some(dir) => dir.clone(),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => disk.path().to_owned(),
    };
    std::fs::create_dir_all(&site_base)?;
    let site_root = tempfile::Builder::new()
        .prefix("carrel-bench-sites-")
        .tempdir_in(&site_base)?;
    progress(format!(
        "hub and scratch tables in {}, site stores in {}; {p:?}",
        disk.path().display(),
        site_root.path().display()
    ));

    let mut details = serde_json::Map::new();
    details.insert("fd_limit".into(), json!(fd_limit));
    let mut rows: Vec<Row> = Vec::new();
    let hub = Arc::new(Hub::start(&hub_runtime, &disk.path().join("hub")).await?);

    // ---- 1, 2, 3: a fleet of streaming sites.
    let mut raw_rows = Row::new(
        "raw_limit_rows_per_s",
        1,
        "raw limit (writer's INSERT, best size)",
        "rows/s",
    );
    let mut raw_commits = Row::new(
        "raw_single_row_commits_per_s",
        1,
        "raw single-row commits",
        "commits/s",
    );
    let mut raw_fdatasync = Row::new(
        "disk_fdatasync_per_s",
        1,
        "disk: 4 KiB write + fdatasync",
        "syncs/s",
    );
    let mut ingest_row = Row::new(
        "ingest_events_per_s",
        2,
        format!("durable ingest, {} sites", p.sites),
        "events/s",
    );
    let mut ratio_row = Row::new(
        "ingest_ratio_to_raw_percent",
        2,
        "durable ingest / raw limit",
        "%",
    )
    .target(Target::AtLeast(40.0));
    // Counted by the hub's writer: durable transactions, however many sites'
    // messages each group commit held.
    let mut per_commit_row = Row::new(
        "ingest_events_per_commit",
        2,
        "events per durable commit",
        "events",
    );
    let mut requests_per_commit_row = Row::new(
        "ingest_messages_per_commit",
        2,
        "site messages per durable commit",
        "messages",
    );
    // The disk's own count of the syncs it did (all processes on the hub's disk;
    // the simulated sites are on tmpfs): /proc/<pid>/io counts no syncs.
    let mut flushes_row = Row::new(
        "ingest_disk_flushes_per_s",
        2,
        "disk flushes/s during ingest (device)",
        "flushes/s",
    );
    let mut flushes_per_commit_row = Row::new(
        "ingest_disk_flushes_per_commit",
        2,
        "disk flushes per durable commit",
        "flushes",
    );
    // A catch-up of recorded events in 200-event messages: not the live case, so
    // not held against the live target.
    let mut recorded_row = Row::new(
        "backlog_ingest_events_per_s",
        2,
        "ingest, sites with a backlog",
        "events/s",
    );
    let mut recorded_ratio = Row::new(
        "backlog_ingest_ratio_to_raw_percent",
        2,
        "ingest with a backlog / raw limit",
        "%",
    );
    let mut recorded_per_commit = Row::new(
        "backlog_events_per_commit",
        2,
        "events per durable commit, backlog",
        "events",
    );
    let load = match cli.latency_rate {
        Some(rate) => format!("at {rate:.0}/s"),
        None => "half load".to_owned(),
    };
    let mut ev_p50 = Row::new(
        "event_ack_p50_ms",
        3,
        format!("event->ack p50 ({load})"),
        "ms",
    );
    let mut ev_p99 = Row::new(
        "event_ack_p99_ms",
        3,
        format!("event->ack p99 ({load})"),
        "ms",
    )
    .target(Target::AtMost(10.0));
    let mut ev_p999 = Row::new(
        "event_ack_p99_9_ms",
        3,
        format!("event->ack p99.9 ({load})"),
        "ms",
    );
    let mut ev_max = Row::new(
        "event_ack_max_ms",
        3,
        format!("event->ack max ({load})"),
        "ms",
    );
    let mut or_p50 = Row::new("order_site_p50_ms", 3, "order->site p50", "ms");
    let mut or_p99 =
        Row::new("order_site_p99_ms", 3, "order->site p99", "ms").target(Target::AtMost(20.0));
    let mut or_max = Row::new("order_site_max_ms", 3, "order->site max", "ms");
    // The rate figure 3 offered, offered again to PostgreSQL in figure 9.
    let mut latency_rate = None;
    let streaming =
        wants(&cli, Figure::Raw) || wants(&cli, Figure::Ingest) || wants(&cli, Figure::Latency);
    if streaming {
        let mut sites = if wants(&cli, Figure::Ingest) || wants(&cli, Figure::Latency) {
            progress(format!("enrolling {} streaming sites", p.sites));
            create_sites(&hub, &site_root.path().join("streaming"), p.sites).await?
        } else {
            Vec::new()
        };
        let mut ingest_details = Vec::new();
        let mut recorded_details = Vec::new();
        let mut raw_details = Vec::new();
        for rep in 0..p.reps {
            let raw = if wants(&cli, Figure::Raw) || wants(&cli, Figure::Ingest) {
                let raw =
                    figures::raw_limit(disk.path(), rep, p.raw_rows, p.raw_single_commits).await?;
                progress(format!(
                    "raw limit rep {rep}: {:.0} rows/s (best, {}-row transactions; by size {:?}), {:.0} single-row commits/s, {:.0} fdatasync/s",
                    raw.rows_per_sec, raw.best_rows_per_txn, raw.by_size, raw.commits_per_sec, raw.fdatasyncs_per_sec
                ));
                raw_rows.samples.push(raw.rows_per_sec);
                raw_commits.samples.push(raw.commits_per_sec);
                raw_fdatasync.samples.push(raw.fdatasyncs_per_sec);
                raw_details.push(json!({
                    "best_rows_per_txn": raw.best_rows_per_txn,
                    "rows_per_s_by_txn_rows": raw.by_size.iter().map(|(size, rate)| (size.to_string(), json!(rate))).collect::<serde_json::Map<_, _>>(),
                    "single_row_commits_per_s": raw.commits_per_sec,
                    "fdatasync_per_s": raw.fdatasyncs_per_sec,
                }));
                Some(raw)
            } else {
                None
            };
            if wants(&cli, Figure::Ingest) {
                let (back, ingest) = figures::ingest(
                    &hub,
                    sites,
                    p.events,
                    p.outstanding,
                    p.ingest_max,
                    profile.as_ref(),
                )
                .await?;
                sites = back;
                progress(format!(
                    "ingest rep {rep}: {:.0} events/s ({} events in {:.2} s, {} commits, {:?} disk flushes, {:.2} CPU-s)",
                    ingest.events_per_sec, ingest.events, ingest.secs, ingest.commits, ingest.disk_flushes, ingest.cpu_secs
                ));
                ingest_row.samples.push(ingest.events_per_sec);
                if let Some(raw) = &raw {
                    ratio_row
                        .samples
                        .push(100.0 * ingest.events_per_sec / raw.rows_per_sec);
                }
                per_commit_row
                    .samples
                    .push(ingest.events as f64 / ingest.commits.max(1) as f64);
                requests_per_commit_row
                    .samples
                    .push(ingest.requests as f64 / ingest.commits.max(1) as f64);
                if let Some(flushes) = ingest.disk_flushes {
                    flushes_row.samples.push(flushes as f64 / ingest.secs);
                    flushes_per_commit_row
                        .samples
                        .push(flushes as f64 / ingest.commits.max(1) as f64);
                }
                ingest_details.push(json!({
                    "events": ingest.events, "secs": ingest.secs, "commits": ingest.commits,
                    "requests": ingest.requests, "disk_flushes": ingest.disk_flushes,
                    "commits_per_sec": ingest.commits as f64 / ingest.secs,
                    "process_cpu_secs": ingest.cpu_secs,
                    "process_cpu_us_per_event": ingest.cpu_secs * 1e6 / ingest.events.max(1) as f64,
                    "cpu_secs_by_threads": ingest.cpu_by_threads,
                    "hub_sql": ingest.sql,
                }));
                if let Some(sql) = &ingest.sql {
                    progress(format!(
                        "SQL profile rep {rep}: {}",
                        serde_json::to_string_pretty(sql)?
                    ));
                }
                let (back, recorded) =
                    figures::ingest_recorded(&hub, sites, p.events, p.ingest_max).await?;
                sites = back;
                progress(format!(
                    "ingest with a backlog rep {rep}: {:.0} events/s ({} events in {:.2} s, {} commits, {:.2} CPU-s)",
                    recorded.events_per_sec, recorded.events, recorded.secs, recorded.commits, recorded.cpu_secs
                ));
                recorded_row.samples.push(recorded.events_per_sec);
                if let Some(raw) = &raw {
                    recorded_ratio
                        .samples
                        .push(100.0 * recorded.events_per_sec / raw.rows_per_sec);
                }
                recorded_per_commit
                    .samples
                    .push(recorded.events as f64 / recorded.commits.max(1) as f64);
                recorded_details.push(json!({
                    "events": recorded.events, "secs": recorded.secs, "commits": recorded.commits,
                    "requests": recorded.requests, "disk_flushes": recorded.disk_flushes,
                    "process_cpu_secs": recorded.cpu_secs,
                    "process_cpu_us_per_event": recorded.cpu_secs * 1e6 / recorded.events.max(1) as f64,
                    "cpu_secs_by_threads": recorded.cpu_by_threads,
                }));
            }
        }
        details.insert("raw_limit".into(), json!(raw_details));
        details.insert("ingest".into(), json!(ingest_details));
        details.insert("ingest_with_backlog".into(), json!(recorded_details));
        if wants(&cli, Figure::Latency) {
            let max_rate = match stats::summary(&ingest_row.samples).median {
                m if m.is_finite() && m > 0.0 => m,
                _ => 1_000.0,
            };
            let rate = cli.latency_rate.unwrap_or(max_rate / 2.0).max(1.0);
            latency_rate = Some(rate);
            let mut latency_details = Vec::new();
            for rep in 0..p.reps {
                let (back, mut lat) =
                    figures::latency(&hub, sites, rate, p.duration, p.order_every).await?;
                sites = back;
                let events = stats::latency(&mut lat.events);
                let orders = stats::latency(&mut lat.orders);
                progress(format!(
                    "latency rep {rep} at {rate:.0} events/s offered ({:.0} recorded/s, {:.0} acknowledged/s in the window): event->ack from the intended time p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms ({} events, {} unacknowledged, counted at the deadline); order->site p50 {:.2} p99 {:.2} max {:.2} ms ({} orders)",
                    lat.offered_per_sec, lat.acked_per_sec, events.p50, events.p99, events.p999, events.max, events.count, lat.unacked,
                    orders.p50, orders.p99, orders.max, orders.count
                ));
                ev_p50.samples.push(events.p50);
                ev_p99.samples.push(events.p99);
                ev_p999.samples.push(events.p999);
                ev_max.samples.push(events.max);
                or_p50.samples.push(orders.p50);
                or_p99.samples.push(orders.p99);
                or_max.samples.push(orders.max);
                latency_details.push(json!({
                    "rate_target_per_sec": rate, "recorded_per_sec": lat.offered_per_sec,
                    "acked_in_window_per_sec": lat.acked_per_sec, "unacked_at_deadline": lat.unacked,
                    "event_to_ack": events.json(), "order_to_site": orders.json(),
                }));
            }
            details.insert("latency".into(), json!(latency_details));
        }
        for site in sites {
            site.stop().await;
        }
    }
    let raw_median = stats::summary(&raw_rows.samples).median;
    if wants(&cli, Figure::Raw) || wants(&cli, Figure::Ingest) {
        rows.extend([raw_rows, raw_commits, raw_fdatasync]);
    }
    if wants(&cli, Figure::Ingest) {
        rows.extend([
            ingest_row,
            ratio_row,
            per_commit_row,
            requests_per_commit_row,
            flushes_row,
            flushes_per_commit_row,
            recorded_row,
            recorded_ratio,
            recorded_per_commit,
        ]);
    }
    if wants(&cli, Figure::Latency) {
        rows.extend([ev_p50, ev_p99, ev_p999, ev_max, or_p50, or_p99, or_max]);
    }

    // ---- 5: catch-up.
    if wants(&cli, Figure::CatchUp) {
        let mut row = Row::new(
            "catch_up_events_per_s",
            5,
            format!("catch-up, {} events backlog", p.backlog),
            "events/s",
        )
        .target(Target::AtLeast(100_000.0));
        let mut catch_details = Vec::new();
        for rep in 0..p.reps {
            let c = figures::catch_up(&hub, site_root.path(), rep, p.backlog).await?;
            progress(format!(
                "catch-up rep {rep}: {:.0} events/s ({:.2} s; first ack after {:.1} ms; backlog written in {:.1} s; CPU-s by threads {})",
                c.events_per_sec, c.secs, c.first_ack_ms, c.generate_secs, c.cpu_by_threads
            ));
            row.samples.push(c.events_per_sec);
            catch_details.push(json!({
                "secs": c.secs, "first_ack_ms": c.first_ack_ms, "generate_secs": c.generate_secs,
                "cpu_secs_by_threads": c.cpu_by_threads,
            }));
        }
        details.insert("catch_up".into(), json!(catch_details));
        rows.push(row);
    }

    // ---- 9: the PostgreSQL backend, beside its own raw limit.
    if wants(&cli, Figure::Postgres) {
        match &cli.postgres {
            None => progress(
                "figure 9 (PostgreSQL) skipped: no server configured (--postgres URL or CARREL_BENCH_POSTGRES_URL)",
            ),
            Some(url) => {
                let mut server = postgres::Server::connect(url).await?;
                let rate = latency_rate.or(cli.latency_rate).unwrap_or(500.0);
                let measured = postgres_figures(
                    &mut server,
                    &p,
                    &hub_runtime,
                    disk.path(),
                    site_root.path(),
                    rate,
                )
                .await;
                server.drop_scratch().await?;
                let (pg_rows, pg_details) = measured?;
                rows.extend(pg_rows);
                details.insert("postgres".into(), pg_details);
            }
        }
    }

    // ---- 4: idle sites, against a separate hub process (see figures::idle).
    if wants(&cli, Figure::Idle) {
        progress(format!("enrolling {} idle sites", p.idle_sites));
        let idle_dir = disk.path().join("idle-hub");
        let idle_hub = Arc::new(Hub::start(&hub_runtime, &idle_dir).await?);
        let enroll_started = Instant::now();
        let idle_sites =
            figures::enroll_idle(&idle_hub, &site_root.path().join("idle"), p.idle_sites, 16)
                .await?;
        let enroll_secs = enroll_started.elapsed().as_secs_f64();
        let heartbeat_ms = idle_hub.config.heartbeat_interval_ms;
        idle_hub.stop().await?;
        drop(idle_hub);
        progress(format!(
            "enrolled {} idle sites in {enroll_secs:.1} s",
            idle_sites.len()
        ));
        let list = site_root.path().join("idle-sites.txt");
        let text: String = idle_sites
            .iter()
            .map(|(_, dir)| format!("{}\n", dir.display()))
            .collect();
        std::fs::write(&list, text)?;
        let mut connected = Row::new(
            "idle_sites_connected",
            4,
            "idle sites connected at once",
            "sites",
        )
        .target(Target::AtLeast(p.idle_sites as f64));
        let mut total = Row::new("idle_hub_rss_mib", 4, "hub RSS, all connected", "MiB")
            .target(Target::AtMost(1024.0));
        let mut per_site = Row::new(
            "idle_hub_kib_per_site",
            4,
            "hub memory per connected site",
            "KiB",
        );
        let mut gap = Row::new(
            "idle_heartbeat_gap_max_ms",
            4,
            format!("heartbeat gap max (interval {} s)", heartbeat_ms / 1000),
            "ms",
        )
        .target(Target::AtMost(f64::from(heartbeat_ms) + 1_000.0));
        let mut lost = Row::new("idle_links_lost", 4, "idle links lost or silent", "links")
            .target(Target::AtMost(0.0));
        let mut idle_details = Vec::new();
        for rep in 0..p.reps {
            let r = figures::idle(&idle_dir, &list, p.idle_window).await?;
            progress(format!(
                "idle rep {rep}: {} connected, hub RSS {} -> {} KiB ({:.1} KiB/site); fleet: {}",
                r.connected, r.rss_before_kib, r.rss_after_kib, r.rss_per_site_kib, r.child
            ));
            connected.samples.push(r.connected);
            total.samples.push(r.rss_after_kib as f64 / 1024.0);
            per_site.samples.push(r.rss_per_site_kib);
            gap.samples
                .push(r.child["heartbeat_gap_max_ms"].as_f64().unwrap_or(f64::NAN));
            lost.samples.push(
                r.child["lost"].as_f64().unwrap_or(0.0)
                    + r.child["failed"].as_f64().unwrap_or(0.0)
                    + r.child["sites_without_heartbeat_in_window"]
                        .as_f64()
                        .unwrap_or(0.0),
            );
            idle_details.push(r.child);
        }
        details.insert(
            "idle".into(),
            json!({"enroll_secs": enroll_secs, "reps": idle_details}),
        );
        rows.extend([connected, total, per_site, gap, lost]);
    }

    // ---- 8: the hub's own capacity under live load (see live.rs).
    if wants(&cli, Figure::Live) {
        let live_dir = disk.path().join("live-hub");
        let live_hub = Arc::new(Hub::start(&hub_runtime, &live_dir).await?);
        // Each run needs sites whose logs start empty: a set per run.
        let mut runs = Vec::new();
        for &n in &p.live_sites {
            for per_message in [1u64, 10] {
                runs.push((n, per_message, None));
            }
        }
        // The target is stated at 1,000 live sites: the ratio to the raw limit and the
        // latency runs are at that fleet when it is measured, else at the largest.
        let largest = p.live_sites.iter().copied().max().unwrap_or(0);
        let target_fleet = if p.live_sites.contains(&1000) {
            1000
        } else {
            largest
        };
        // Then the latency with 1-event messages at half that fleet's capacity
        // (the target), and at a tenth and a quarter of it (where the knee is).
        let fractions: &[f64] = if p.quick { &[0.5] } else { &[0.5, 0.1, 0.25] };
        for &fraction in fractions {
            runs.push((target_fleet, 1, Some(fraction)));
        }
        let mut lists = Vec::new();
        for (i, (n, _, _)) in runs.iter().enumerate() {
            progress(format!(
                "enrolling and ordering for {n} live sites (run {i})"
            ));
            let list = site_root.path().join(format!("live-{i}.txt"));
            figures::enroll_live(
                &live_hub,
                &site_root.path().join("live"),
                &format!("live{i}"),
                *n,
                &list,
            )
            .await?;
            lists.push(list);
        }
        live_hub.stop().await?;
        drop(live_hub);
        let mut live_details = Vec::new();
        let mut capacity_of_target = f64::NAN;
        for ((n, per_message, latency), list) in runs.into_iter().zip(&lists) {
            let rate = match latency {
                Some(fraction) => (capacity_of_target * fraction).max(1.0),
                None => 0.0,
            };
            // The events made ahead are bounded over the whole fleet (memory): more
            // than the hub acknowledges in the window at these rates.
            let budget: u64 = if p.quick { 100_000 } else { 600_000 };
            let per_site = (budget / n.max(1) as u64).max(100);
            let r = figures::live(
                &live_dir,
                list,
                rate,
                per_message,
                p.live_duration,
                per_site,
            )
            .await?;
            // Capacity: the whole fleet's events over the time to the last
            // acknowledgement (the hub is busy throughout; see live.rs). With an
            // offered rate, what was acknowledged within the window.
            let acked = match latency {
                Some(_) => r["acked_in_window_events_per_s"].as_f64(),
                None => r["acked_until_last_events_per_s"].as_f64(),
            }
            .unwrap_or(f64::NAN);
            progress(format!(
                "live {n} sites, {per_message}-event messages{}: {acked:.0} events/s acknowledged; {r}",
                if latency.is_some() { format!(", offered {rate:.0}/s") } else { String::new() }
            ));
            // "half_capacity", or "10_percent_capacity" and the like.
            let share = |fraction: f64| {
                if fraction == 0.5 {
                    "half_capacity".to_owned()
                } else {
                    format!("{:.0}_percent_capacity", fraction * 100.0)
                }
            };
            let named = |fraction: f64| {
                if fraction == 0.5 {
                    "half capacity".to_owned()
                } else {
                    format!("{:.0} % of capacity", fraction * 100.0)
                }
            };
            let key = match latency {
                Some(f) => format!("live_{n}_sites_{}_event_ack_p99_ms", share(f)),
                None if per_message == 1 => format!("live_capacity_{n}_sites_events_per_s"),
                None => {
                    format!("live_capacity_{n}_sites_{per_message}_event_messages_events_per_s")
                }
            };
            match latency {
                Some(fraction) => {
                    let p99 = r["event_ack"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
                    let mut row = Row::new(
                        key,
                        8,
                        format!("live {n} sites at {}, ack p99", named(fraction)),
                        "ms",
                    );
                    if fraction == 0.5 {
                        row = row.target(Target::AtMost(50.0));
                    }
                    row.samples.push(p99);
                    rows.push(row);
                    for (suffix, name, field) in [
                        ("p50", "p50", "p50_ms"),
                        ("p99_9", "p99.9", "p99_9_ms"),
                        ("max", "max", "max_ms"),
                    ] {
                        let key =
                            format!("live_{n}_sites_{}_event_ack_{suffix}_ms", share(fraction));
                        let mut row = Row::new(
                            key,
                            8,
                            format!("live {n} sites at {}, ack {name}", named(fraction)),
                            "ms",
                        );
                        row.samples
                            .push(r["event_ack"][field].as_f64().unwrap_or(f64::NAN));
                        rows.push(row);
                    }
                }
                None => {
                    let mut row = Row::new(
                        key,
                        8,
                        format!("live capacity, {n} sites, {per_message}-event messages"),
                        "events/s",
                    );
                    row.samples.push(acked);
                    rows.push(row);
                    if n == target_fleet && per_message == 1 {
                        capacity_of_target = acked;
                        let mut ratio = Row::new(
                            "live_capacity_ratio_to_raw_percent",
                            8,
                            format!("live capacity, {n} sites / raw limit"),
                            "%",
                        )
                        .target(Target::AtLeast(40.0));
                        ratio.samples.push(100.0 * acked / raw_median);
                        rows.push(ratio);
                    }
                }
            }
            live_details.push(r);
        }
        details.insert("live".into(), json!(live_details));
    }

    // ---- 6: the agent's footprint.
    if wants(&cli, Figure::Footprint) {
        let mut idle_rss =
            Row::new("agent_idle_rss_mib", 6, "agent idle RSS", "MiB").target(Target::AtMost(30.0));
        let mut idle_cpu = Row::new("agent_idle_cpu_percent", 6, "agent idle CPU", "%")
            .target(Target::AtMost(1.0));
        let mut batch_rss = Row::new(
            "agent_batch_rss_max_mib",
            6,
            format!(
                "agent RSS max, a whole batch (x{})",
                p.agent_time_compression
            ),
            "MiB",
        );
        let mut batch_cpu = Row::new(
            "agent_batch_cpu_percent",
            6,
            format!("agent CPU, a whole batch (x{})", p.agent_time_compression),
            "%",
        );
        let dir = disk.path().join("footprint-agent");
        let mut agent =
            figures::start_agent(&hub, &dir, "footprint", p.agent_time_compression).await?;
        tokio::time::sleep(Duration::from_secs(if p.quick { 1 } else { 3 })).await;
        for rep in 0..p.reps {
            let s = figures::sample_process(agent.pid, p.footprint_window).await?;
            progress(format!(
                "agent idle rep {rep}: {:.2} % CPU, {} KiB RSS",
                s.cpu_percent, s.rss_kib
            ));
            idle_rss.samples.push(s.rss_kib as f64 / 1024.0);
            idle_cpu.samples.push(s.cpu_percent);
        }
        // A whole batch's manufacturing (the expansion step is 168 of its 232
        // process hours), memory read every minute of process time; one batch is
        // minutes of wall time, so one repetition. `--quick` samples its first second.
        let batch_reps = if p.quick { p.reps } else { 1 };
        for rep in 0..batch_reps {
            let order = hub.order(&agent.site_id).await?;
            let every = Duration::from_secs_f64((60.0 / p.agent_time_compression).max(0.01));
            let max = if p.quick {
                p.footprint_window
            } else {
                Duration::from_secs(900)
            };
            let store = hub.shared.store.clone();
            let order_id = order.order_id;
            let (s, samples, secs) = figures::sample_while(agent.pid, every, max, || {
                let store = store.clone();
                async move {
                    let state = store.order(order_id).await?.state;
                    Ok(state.is_active())
                }
            })
            .await?;
            let state = hub.shared.store.order(order.order_id).await?.state;
            progress(format!(
                "agent batch rep {rep}: {:.2} % CPU, {} KiB RSS (max {}) over {secs:.1} s ({samples} samples), batch {state}",
                s.cpu_percent, s.rss_kib, s.rss_max_kib
            ));
            batch_rss.samples.push(s.rss_max_kib as f64 / 1024.0);
            batch_cpu.samples.push(s.cpu_percent);
            if state.is_active() {
                hub.cancel(order.order_id).await?;
            }
        }
        let _ = agent.child.start_kill();
        let _ = agent.child.wait().await;
        rows.extend([idle_rss, idle_cpu, batch_rss, batch_cpu]);
    }
    hub.stop().await?;

    // ---- 10: process analytics over a history of released batches.
    if wants(&cli, Figure::Analytics) {
        let q = p.quick;
        let batches = cli
            .analytics_batches
            .unwrap_or(if q { 60 } else { 5_000 })
            .max(1);
        let sites = cli.analytics_sites.unwrap_or(if q { 3 } else { 20 }).max(1);
        let requests = cli
            .analytics_requests
            .unwrap_or(if q { 20 } else { 200 })
            .max(1);
        progress(format!(
            "analytics: seeding {batches} released batches over {sites} sites"
        ));
        let f = analytics::run(
            &hub_runtime,
            disk.path(),
            &site_root.path().join("analytics"),
            sites,
            batches,
            requests,
        )
        .await?;
        progress(format!(
            "analytics: {} batches of {} readings seeded in {:.1} s",
            f.batches, f.readings_per_batch, f.seed_secs
        ));
        let percentile = |v: &[f64], q: f64| -> f64 {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]
        };
        let label = format!("{} batches, {sites} sites", f.batches);
        let mut seeded = Row::new(
            "analytics_history_batches_per_s",
            10,
            format!("analytics history seeded, {label}"),
            "batches/s",
        );
        seeded
            .samples
            .push(f.batches as f64 / f.seed_secs.max(1e-9));
        let mut api_p50 = Row::new("analytics_api_p50_ms", 10, "analytics API chart p50", "ms");
        api_p50.samples.push(percentile(&f.api_ms, 0.5));
        let mut api_p95 = Row::new(
            "analytics_api_p95_ms",
            10,
            format!("analytics API chart p95, {label}"),
            "ms",
        )
        .target(Target::AtMost(200.0));
        api_p95.samples.push(percentile(&f.api_ms, 0.95));
        let mut page_p50 = Row::new(
            "analytics_page_p50_ms",
            10,
            "analytics chart page p50",
            "ms",
        );
        page_p50.samples.push(percentile(&f.page_ms, 0.5));
        let mut page_p95 = Row::new(
            "analytics_page_p95_ms",
            10,
            format!("analytics chart page p95, {label}"),
            "ms",
        )
        .target(Target::AtMost(200.0));
        page_p95.samples.push(percentile(&f.page_ms, 0.95));
        details.insert(
            "analytics".into(),
            json!({
                "batches": f.batches, "sites": sites, "readings_per_batch": f.readings_per_batch,
                "seed_secs": f.seed_secs, "api_ms": f.api_ms, "page_ms": f.page_ms,
            }),
        );
        rows.extend([seeded, api_p50, api_p95, page_p50, page_p95]);
    }

    // ---- 7: restart.
    if wants(&cli, Figure::Restart) {
        let restart_dir = disk.path().join("restart-hub");
        let restart_hub = Hub::start(&hub_runtime, &restart_dir).await?;
        let mut batches = Vec::new();
        for i in 0..p.restart_sites {
            let site_id = format!("stored-{i:03}");
            restart_hub
                .enroll(&site_id, &site_root.path().join(&site_id))
                .await?;
            let order = restart_hub.order(&site_id).await?;
            batches.push((site_id, order.batch_id, order.coi));
        }
        restart_hub.stop().await?;
        drop(restart_hub);
        let mut empty = Row::new("restart_empty_s", 7, "hub start to serving, empty", "s");
        let mut empty_cold = Row::new(
            "restart_empty_cold_process_s",
            7,
            "hub exec to SERVING, empty, cold",
            "s",
        );
        for _ in 0..p.reps {
            empty
                .samples
                .push(figures::time_start(&hub_runtime, &restart_dir).await?);
            let (secs, cold) = figures::time_process_start(&restart_dir).await?;
            if !cold {
                progress("the page cache could not be dropped for the restart database: the cold figures are warm");
            }
            empty_cold.samples.push(secs);
        }
        progress(format!(
            "ingesting {} events into the restart hub's database (the hub's own ingest transaction, 200-event requests from {} sites)",
            p.restart_events, p.restart_sites
        ));
        let fill_rate =
            figures::fill_by_ingest(&restart_dir.join("hub.db"), &batches, p.restart_events)
                .await?;
        let db_bytes = std::fs::metadata(restart_dir.join("hub.db"))
            .map(|m| m.len())
            .unwrap_or(0);
        let table_rows = figures::table_rows(&restart_dir.join("hub.db"))?;
        progress(format!(
            "ingested at {fill_rate:.0} events/s; database {} MiB; rows {table_rows}",
            db_bytes >> 20
        ));
        let count = short_count(p.restart_events);
        let mut full = Row::new(
            format!("restart_{count}_s"),
            7,
            format!("hub start to serving, {} events", p.restart_events),
            "s",
        );
        let mut full_cold = Row::new(
            format!("restart_{count}_cold_s"),
            7,
            format!("hub exec to SERVING, {} events, cold", p.restart_events),
            "s",
        )
        .target(Target::AtMost(2.0));
        for rep in 0..p.reps {
            let secs = figures::time_start(&hub_runtime, &restart_dir).await?;
            let (cold_secs, cold) = figures::time_process_start(&restart_dir).await?;
            progress(format!(
                "restart rep {rep}: serving after {secs:.3} s in process (warm); a new process {cold_secs:.3} s from exec ({})",
                if cold { "page cache dropped" } else { "page cache NOT dropped" }
            ));
            full.samples.push(secs);
            full_cold.samples.push(cold_secs);
        }
        details.insert(
            "restart".into(),
            json!({"fill_events_per_sec": fill_rate, "database_bytes": db_bytes, "table_rows": table_rows}),
        );
        rows.extend([empty, full, empty_cold, full_cold]);
    }

    if cli.keep {
        progress(format!(
            "kept {} and {}",
            disk.keep().display(),
            site_root.keep().display()
        ));
    }
    print_table(&rows, p.reps);
    let total_secs = run_started.elapsed().as_secs_f64();
    println!(
        "\n({} repetition(s) each; whole run {total_secs:.0} s)",
        p.reps
    );
    if let Some(path) = &cli.json {
        let report = json!({
            "commit": git_commit(),
            "params": p.json(),
            // One key per figure (its median), units in the key.
            "figures": rows
                .iter()
                .map(|r| (r.key.clone(), finite(stats::summary(&r.samples).median)))
                .collect::<serde_json::Map<_, _>>(),
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "details": Value::Object(details),
            "run_secs": total_secs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

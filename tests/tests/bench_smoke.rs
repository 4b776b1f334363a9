//! The fleet benchmark's smoke test: `carrel-bench --quick` runs every figure on a
//! small fleet, prints every row of the table, and the hub really acknowledged
//! events (in process, and as a process of its own under the live fleet). It checks that the benchmark works, not how fast anything is.

use carrel_tests::binary;
use std::process::Command;

/// Every row `carrel-bench` prints, by the start of its label.
const ROWS: &[&str] = &[
    "raw limit",
    "raw single-row commits",
    "disk: 4 KiB write + fdatasync",
    "durable ingest, 5 sites",
    "durable ingest / raw limit",
    "events per durable commit",
    "site messages per durable commit",
    "disk flushes/s during ingest (device)",
    "disk flushes per durable commit",
    "ingest, sites with a backlog",
    "ingest with a backlog / raw limit",
    "events per durable commit, backlog",
    "event->ack p50",
    "event->ack p99",
    "event->ack p99.9",
    "event->ack max",
    "order->site p50",
    "order->site p99",
    "order->site max",
    "catch-up,",
    "idle sites connected at once",
    "hub RSS, all connected",
    "hub memory per connected site",
    "heartbeat gap max",
    "idle links lost",
    "agent idle RSS",
    "agent idle CPU",
    "agent RSS max, a whole batch",
    "agent CPU, a whole batch",
    "live capacity, 10 sites, 1-event messages",
    "live capacity, 10 sites / raw limit",
    "live capacity, 10 sites, 10-event messages",
    "live 10 sites at half capacity, ack p99",
    "live 10 sites at half capacity, ack p50",
    "live 10 sites at half capacity, ack p99.9",
    "live 10 sites at half capacity, ack max",
    "hub start to serving, empty",
    "hub start to serving, 100000 events",
    "hub exec to SERVING, empty, cold",
    "hub exec to SERVING, 100000 events, cold",
    "analytics history seeded, 60 batches, 3 sites",
    "analytics API chart p50",
    "analytics API chart p95, 60 batches, 3 sites",
    "analytics chart page p50",
    "analytics chart page p95, 60 batches, 3 sites",
];

/// Figure 9's rows, printed when a PostgreSQL server is given (`scripts/test` starts
/// one and sets `CARREL_TEST_POSTGRES_URL`).
const POSTGRES_ROWS: &[&str] = &[
    "PostgreSQL raw: INSERT",
    "PostgreSQL raw: COPY",
    "PostgreSQL raw: single-row commits",
    "PostgreSQL ingest, sites with a backlog",
    "PostgreSQL backlog ingest / raw (best)",
    "PostgreSQL events per commit, backlog",
    "PostgreSQL event->ack p50",
    "PostgreSQL event->ack p99",
    "PostgreSQL event->ack p99.9",
    "PostgreSQL event->ack max",
    "PostgreSQL order->site p99",
    "PostgreSQL catch-up,",
];

#[test]
fn quick_benchmark_prints_every_figure_and_acknowledges_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let postgres = std::env::var("CARREL_TEST_POSTGRES_URL").ok();
    let mut bench = Command::new(binary("carrel-bench"));
    match &postgres {
        Some(url) => bench.arg("--postgres").arg(url),
        None => bench.env_remove("CARREL_BENCH_POSTGRES_URL"),
    };
    let expected: Vec<&str> = match &postgres {
        Some(_) => ROWS.iter().chain(POSTGRES_ROWS).copied().collect(),
        None => ROWS.to_vec(),
    };
    let out = bench
        .arg("--quick")
        .arg("--json")
        .arg(&json_path)
        .arg("--work-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run carrel-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "carrel-bench --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for row in &expected {
        assert!(
            stdout
                .lines()
                .any(|line| line.get(3..).is_some_and(|l| l.starts_with(row))),
            "no table row {row:?} in:\n{stdout}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON written"))
            .expect("JSON parses");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), expected.len(), "one JSON row per table row");
    let median = |prefix: &str| {
        rows.iter()
            .find(|r| r["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .and_then(|r| r["median"].as_f64())
            .unwrap_or_else(|| panic!("no numeric median for {prefix:?} in {report}"))
    };
    assert!(
        median("durable ingest, 5 sites") > 0.0,
        "the hub acknowledged no events"
    );
    assert!(median("ingest, sites with a backlog") > 0.0);
    assert!(
        median("catch-up,") > 0.0,
        "the backlog was not acknowledged"
    );
    assert!(median("raw limit") > 0.0);
    assert_eq!(
        median("idle sites connected at once"),
        50.0,
        "every idle site connected"
    );
    assert!(
        median("agent idle RSS") > 0.0,
        "the agent process was measured"
    );
    assert!(median("hub start to serving, 100000 events") > 0.0);
    assert!(median("hub exec to SERVING, 100000 events, cold") > 0.0);
    // One key per figure, units in the key; commits as the hub's writer counted them.
    let figures = report["figures"].as_object().expect("figures");
    assert_eq!(
        figures.len(),
        expected.len(),
        "one key per figure: {figures:?}"
    );
    let figure = |key: &str| {
        figures
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("no figure {key:?} in {figures:?}"))
    };
    assert!(figure("raw_limit_rows_per_s") > 0.0);
    assert!(figure("disk_fdatasync_per_s") > 0.0);
    // A commit holds at least one site message, and each message at least one event.
    let messages = figure("ingest_messages_per_commit");
    assert!(messages >= 1.0, "{messages}");
    assert!(figure("ingest_events_per_commit") >= messages);
    assert!(figure("event_ack_p99_9_ms") >= figure("event_ack_p99_ms"));
    // The live fleet's hub (a process of its own) acknowledged events.
    assert!(figure("live_capacity_10_sites_events_per_s") > 0.0);
    assert!(figure("live_capacity_10_sites_10_event_messages_events_per_s") > 0.0);
    assert!(figure("live_10_sites_half_capacity_event_ack_p99_ms") > 0.0);
    assert_eq!(
        report["details"]["live"][0]["connected"].as_u64(),
        Some(10),
        "every live site connected"
    );
    // Capacity runs count every event the fleet sent, up to the last acknowledgement.
    let live = &report["details"]["live"][0];
    assert_eq!(live["acked_events"], live["sent_events"], "{live}");
    assert!(live["last_ack_secs"].as_f64().expect("last ack") > 0.0);
    // The stopped hub's database was filled by the hub's own ingest: QC results,
    // projections and audit entries, not only events.
    let restart = &report["details"]["restart"]["table_rows"];
    assert_eq!(restart["site_events"].as_u64(), Some(100_000), "{restart}");
    assert!(restart["qc_results"].as_u64() > Some(0), "{restart}");
    assert!(restart["audit_log"].as_u64() > Some(0), "{restart}");
    if postgres.is_some() {
        assert!(figure("postgres_raw_copy_rows_per_s") > 0.0);
        assert!(figure("postgres_raw_insert_rows_per_s") > 0.0);
        assert!(figure("postgres_backlog_ingest_events_per_s") > 0.0);
        assert!(figure("postgres_catch_up_events_per_s") > 0.0);
        assert!(figure("postgres_event_ack_p99_ms") > 0.0);
    }
    let acked = report["details"]["latency"][0]["event_to_ack"]["count"]
        .as_u64()
        .expect("latency count");
    assert!(acked > 0, "no acknowledgement observed at half load");
}

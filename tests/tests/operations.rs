//! Operations with real processes: Prometheus metrics that move with the work, and
//! backups taken while the hub and a site are busy, restored and verified, and the
//! consoles' protective headers and host check as curl sees them.

use carrel_tests::*;
use std::time::Duration;

const PHYSICIAN: (&str, &str) = ("dr.ops", "physician-password-1");

/// Scrapes `url` over HTTPS trusting the hub CA (or plain HTTP for the site console).
async fn scrape(url: &str, ca: Option<&std::path::Path>) -> String {
    let mut args = vec!["-sS", "--max-time", "5"];
    let ca_arg;
    if let Some(ca) = ca {
        ca_arg = ca.display().to_string();
        args.extend(["--cacert", &ca_arg]);
    }
    args.push(url);
    let out = tokio::process::Command::new("curl")
        .args(&args)
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "scraping {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of a metric line `name{labels} value` (or `name value`).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_the_work_and_a_backup_taken_under_load_restores_intact() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-o");
    let mut agent = Agent::enroll(&hub, "site-o", &token)
        .expect("enroll")
        .with_time_compression(20_000.0);
    agent.start();
    let console =
        std::fs::read_to_string(hub.data_dir().join("console.addr")).expect("console addr");
    let hub_metrics = format!("https://{}/metrics", console.trim());
    let site_console =
        std::fs::read_to_string(agent.data_dir().join("console.addr")).expect("site console");
    let site_metrics = format!("http://{}/metrics", site_console.trim());
    let ca = hub.ca_cert();

    let before = scrape(&hub_metrics, Some(&ca)).await;
    assert_eq!(
        value(&before, "carrel_hub_site_events_total{site=\"site-o\"}"),
        0.0
    );
    assert_eq!(
        value(&before, "carrel_hub_batches{state=\"in_process\"}"),
        0.0
    );
    let failed_before = value(&before, "carrel_hub_failed_sign_ins_total");
    assert!(hub.login(PHYSICIAN.0, "not-the-password").await.is_err());

    let date = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    hub.cli_ok(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            "P-4001",
            "--site",
            "site-o",
            "--collection-date",
            &date,
        ],
        None,
    );
    let during = eventually(Duration::from_secs(30), "events at the hub", || {
        let url = hub_metrics.clone();
        let ca = ca.clone();
        async move {
            let text = scrape(&url, Some(&ca)).await;
            (value(&text, "carrel_hub_site_events_total{site=\"site-o\"}") >= 5.0).then_some(text)
        }
    })
    .await;
    assert_eq!(value(&during, "carrel_hub_sites_connected"), 1.0);
    assert_eq!(
        value(&during, "carrel_hub_failed_sign_ins_total"),
        failed_before + 1.0
    );
    assert!(value(&during, "carrel_hub_event_commit_seconds_count") >= 1.0);
    // The writer's own counts: every stored event in some commit, and no commit
    // without a request (one group commit may hold several).
    let commits = value(&during, "carrel_hub_ingest_commits_total");
    let requests = value(&during, "carrel_hub_ingest_requests_total");
    let events = value(&during, "carrel_hub_ingest_events_total");
    assert!(
        commits >= 1.0 && requests >= commits,
        "{commits} {requests}"
    );
    assert!(
        events >= value(&during, "carrel_hub_site_events_total{site=\"site-o\"}"),
        "{events}"
    );
    // The site's certificate from enrollment: two years ahead, nothing expiring soon.
    let expiry = value(
        &during,
        "carrel_hub_site_certificate_expiry_seconds{site=\"site-o\"}",
    );
    assert!(
        expiry > 700.0 * 86_400.0 && expiry <= 730.0 * 86_400.0,
        "{expiry}"
    );
    assert_eq!(value(&during, "carrel_hub_certificates_expiring"), 0.0);
    assert_eq!(value(&during, "carrel_hub_sites_on_previous_ca"), 0.0);
    let site = scrape(&site_metrics, None).await;
    assert_eq!(value(&site, "carrel_agent_link_up"), 1.0);
    assert!(value(&site, "carrel_agent_events_recorded_total") >= 5.0);

    // A backup while the site streams: everything acknowledged before it began is in it.
    let db = hub.db().await;
    let acked_before: i64 =
        sqlx::query_scalar("SELECT acked_event_seq FROM sites WHERE site_id = 'site-o'")
            .fetch_one(&db)
            .await
            .expect("cursor");
    let backups = tempfile::tempdir().expect("tempdir");
    let backup = backups.path().join("hub.backup.db");
    let out = hub.cli(
        "admin",
        &["backup", "--to", backup.to_str().expect("utf-8")],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hub.cli(
        "admin",
        &["backup", "--to", backup.to_str().expect("utf-8")],
        None,
    );
    assert!(!out.status.success(), "a backup never overwrites a file");
    let site_backup = backups.path().join("site.backup.db");
    let out = agent.cli(
        &["backup", "--to", site_backup.to_str().expect("utf-8")],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both copies hold password hashes: only their owner may read them, whatever
    // the umask of whoever made them.
    {
        use std::os::unix::fs::PermissionsExt;
        for copy in [&backup, &site_backup] {
            let mode = std::fs::metadata(copy)
                .expect("backup")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}: {mode:o}", copy.display());
        }
    }

    // The effective configuration can be shown without its secrets.
    let dumped = std::process::Command::new(binary("carrel-hub"))
        .args(["serve", "--dump-config"])
        .env("CARREL_HUB_CONFIG", hub.config_path())
        .env(
            "CARREL_HUB_DATABASE",
            "postgres://carrel:db-s3cret@db.example:5432/carrel",
        )
        .output()
        .expect("dump config");
    let text = String::from_utf8_lossy(&dumped.stdout);
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(
        text.contains("postgres://carrel:***@db.example:5432/carrel"),
        "{text}"
    );
    assert!(!text.contains("db-s3cret"), "{text}");

    // Restore into a fresh data directory: checked, then in place.
    let restored = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(binary("carrel-hub"))
        .args([
            "restore",
            "--from",
            backup.to_str().expect("utf-8"),
            "--data-dir",
        ])
        .arg(restored.path())
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain intact"));
    let restored_db = open_read_only(&restored.path().join("hub.db")).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM site_events WHERE site_id = 'site-o'")
            .fetch_one(&restored_db)
            .await
            .expect("count");
    assert!(
        stored >= acked_before,
        "acknowledged before the backup: {acked_before}, in it: {stored}"
    );
    let out = std::process::Command::new(binary("carrel-hub"))
        .args(["audit", "verify", "--data-dir"])
        .arg(restored.path())
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A damaged backup is refused and changes nothing.
    let damaged = backups.path().join("damaged.db");
    let mut bytes = std::fs::read(&backup).expect("read");
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4096] {
        *b = 0x5a;
    }
    std::fs::write(&damaged, bytes).expect("write");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(binary("carrel-hub"))
        .args([
            "restore",
            "--from",
            damaged.to_str().expect("utf-8"),
            "--data-dir",
        ])
        .arg(elsewhere.path())
        .output()
        .expect("restore");
    assert!(!out.status.success(), "a damaged backup must be refused");
    assert!(!elsewhere.path().join("hub.db").exists());
    let out = std::process::Command::new(binary("carrel-hub"))
        .args([
            "restore",
            "--from",
            backup.to_str().expect("utf-8"),
            "--data-dir",
        ])
        .arg(restored.path())
        .output()
        .expect("restore");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "an existing store is not replaced without --force"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_reach_an_otlp_collector_when_one_is_configured() {
    let collector = carrel_tests::otlp::Collector::start().await;
    let mut hub = Hub::start().await;
    // Without an endpoint nothing is exported.
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(collector.spans().is_empty(), "{:?}", collector.spans());

    let mut config = std::fs::read_to_string(hub.config_path()).expect("config");
    config.push_str(&format!("otlp_endpoint = \"{}\"\n", collector.endpoint));
    std::fs::write(hub.config_path(), config).expect("config");
    hub.restart().await;
    assert!(hub.log().contains("exporting traces over OTLP"));
    let token = hub.add_site("site-t");
    let mut agent = Agent::enroll(&hub, "site-t", &token)
        .expect("enroll")
        .with_time_compression(20_000.0);
    agent.start();
    hub.cli_ok(
        PHYSICIAN.0,
        &["login", "--user", PHYSICIAN.0],
        Some(PHYSICIAN.1),
    );

    // A site link's span ends when the link does: the agent stops, the hub notices.
    let _ = eventually(Duration::from_secs(30), "the link to be up", || {
        let up = hub.log().contains("site link open");
        async move { up.then_some(()) }
    })
    .await;
    agent.kill();
    let spans = eventually(
        Duration::from_secs(30),
        "the hub's spans at the collector",
        || {
            let spans = collector.spans();
            async move {
                let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                (names.contains(&"enroll")
                    && names.contains(&"site_link")
                    && names.contains(&"login"))
                .then_some(spans)
            }
        },
    )
    .await;
    assert!(spans.iter().all(|s| s.service == "carrel-hub"), "{spans:?}");
    assert!(spans.iter().all(|s| s.trace_id.len() == 16));
    println!("OTLP: {} spans received", spans.len());
}

/// `curl -si` of a URL: the status line and headers (lower-cased) and the body.
async fn curl_head_and_body(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5"])
        .args(args)
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and body");
    (head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn both_consoles_forbid_framing_and_the_site_console_answers_only_to_its_own_name() {
    let hub = Hub::start().await;
    scenario::add_people(&hub);
    let token = hub.add_site("site-h");
    let mut agent = Agent::enroll(&hub, "site-h", &token).expect("enroll");
    agent.configure(&["simulator", "auto_scan"], false.into());
    agent.start();
    let site_console = read_console(&agent.data_dir().join("console.addr")).await;
    let hub_console = read_console(&hub.data_dir().join("console.addr")).await;
    let ca = hub.ca_cert().display().to_string();

    let (head, _) =
        curl_head_and_body(&["--cacert", &ca, &format!("https://{hub_console}/login")]).await;
    assert!(head.starts_with("http/"), "{head}");
    for expected in [
        "frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "strict-transport-security: max-age=",
        "cache-control: no-store",
    ] {
        assert!(
            head.contains(expected),
            "hub console lacks {expected:?}:\n{head}"
        );
    }

    // Without a session: the sign-in page, and nothing else.
    let (head, _) = curl_head_and_body(&[&format!("http://{site_console}/")]).await;
    assert!(head.starts_with("http/1.1 303"), "{head}");
    assert!(
        !head.contains("set-cookie"),
        "no session is handed out: {head}"
    );
    assert!(head.contains("location: /signin?"), "{head}");
    let (_, body) = curl_head_and_body(&["-L", &format!("http://{site_console}/")]).await;
    assert!(body.contains("Sign in to use the site console"), "{body}");
    assert!(!body.contains("Batches at this site"), "{body}");
    for expected in [
        "frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "cache-control: no-store",
    ] {
        assert!(
            head.contains(expected),
            "site console lacks {expected:?}:\n{head}"
        );
    }

    // A form sent without a session records nothing.
    let (_, batch) = scenario::create_order(&hub, "site-h", "P-8401");
    eventually(Duration::from_secs(30), "the batch at the site", || {
        let db = agent.db();
        let batch = batch.clone();
        async move {
            let found: Option<String> =
                sqlx::query_scalar("SELECT state FROM batches WHERE batch_id = ?")
                    .bind(&batch)
                    .fetch_optional(&db.await)
                    .await
                    .ok()
                    .flatten();
            found.filter(|s| s != "ordered").map(|_| ())
        }
    })
    .await;
    let events = |db: sqlx::SqlitePool| async move {
        scenario::count(&db, "SELECT COUNT(*) FROM events WHERE kind = 'qc_result'").await
    };
    let before = events(agent.db().await).await;
    let (head, body) = curl_head_and_body(&[
        "-d",
        "csrf=x&submission=y&test=viability&value=91",
        &format!("http://{site_console}/batches/{batch}/qc"),
    ])
    .await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(body.contains("Nothing was recorded"), "{body}");
    assert_eq!(events(agent.db().await).await, before, "nothing recorded");

    // DNS rebinding: a page of another name that resolves to the console.
    let (head, body) = curl_head_and_body(&[
        "-H",
        "Host: attacker.example",
        &format!("http://{site_console}/"),
    ])
    .await;
    assert!(head.starts_with("http/1.1 421"), "{head}");
    assert!(body.contains("does not answer to the host name"), "{body}");
    assert!(!body.contains("Batches at this site"));
}

async fn read_console(path: &std::path::Path) -> String {
    eventually(Duration::from_secs(20), "the console address", || async {
        let text = std::fs::read_to_string(path).ok()?;
        let text = text.trim().to_owned();
        (!text.is_empty()).then_some(text)
    })
    .await
}

/// A site whose hub was away long enough for its backoff to reach the cap comes back
/// within that cap (`reconnect_max_ms`, 5 s by default) of the hub answering again,
/// not after the backoff of a long outage (it was 30 s, and sites took up to 14 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_site_reconnects_within_five_seconds_of_its_hub_returning() {
    let mut hub = Hub::start().await;
    let token = hub.add_site("site-r");
    // The agent's own defaults: the test sets no reconnect settings.
    let mut agent = Agent::enroll(&hub, "site-r", &token).expect("enroll");
    agent.start();
    let connected = |hub: &Hub| {
        let console =
            std::fs::read_to_string(hub.data_dir().join("console.addr")).expect("console addr");
        let url = format!("https://{}/metrics", console.trim());
        let ca = hub.ca_cert();
        async move { value(&scrape(&url, Some(&ca)).await, "carrel_hub_sites_connected") }
    };
    eventually(Duration::from_secs(30), "the site connected", || async {
        (connected(&hub).await == 1.0).then_some(())
    })
    .await;
    // Away for 25 s: 200 ms doubling reaches any cap under 25 s.
    hub.kill();
    tokio::time::sleep(Duration::from_secs(25)).await;
    hub.restart().await;
    let back = std::time::Instant::now();
    eventually(Duration::from_secs(30), "the site reconnected", || async {
        (connected(&hub).await == 1.0).then_some(())
    })
    .await;
    let after = back.elapsed();
    assert!(
        after < Duration::from_secs(7),
        "the site took {after:?} to reconnect after the hub returned:\n{}",
        agent.log()
    );
}

//! Several hub replicas on one PostgreSQL: a site moves between replicas without
//! losing or repeating a record, and a command created on one replica reaches a site
//! connected to another promptly (LISTEN/NOTIFY, not polling).
//!
//! Needs `CARREL_TEST_POSTGRES_URL` (scripts/test starts a throw-away PostgreSQL).

use carrel_proto::pb;
use carrel_tests::*;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One `carrel-hub serve` replica on the shared database and CA.
struct Replica {
    name: &'static str,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Replica {
    fn new(root: &Path, name: &'static str, database: &str) -> Replica {
        let port = free_port();
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("replica dir");
        let config = dir.join("hub.toml");
        // Heartbeats are slow on purpose: a command must not wait for the next one.
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nconsole_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ndatabase = \"{database}\"\n\
                 ca_cert = \"{}\"\nca_key = \"{}\"\nheartbeat_interval_ms = 5000\nheartbeat_timeout_ms = 15000\n\
                 accept_simulated_people = true\n",
                dir.join("data").display(),
                root.join("pki/ca.crt").display(),
                root.join("pki/ca.key").display(),
            ),
        )
        .expect("config");
        Replica {
            name,
            log: dir.join("hub.log"),
            config,
            port,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let addr_file = self.config.with_file_name("data").join("hub.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        self.child = Some(
            Command::new(binary("carrel-hub"))
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info,sqlx=warn,h2=warn")
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start carrel-hub"),
        );
        let name = self.name;
        eventually(
            Duration::from_secs(30),
            &format!("replica {name} to serve"),
            || {
                let ready = addr_file.exists();
                async move { ready.then_some(()) }
            },
        )
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(binary("carrel-hub"))
            .args(args)
            .env("CARREL_HUB_CONFIG", &self.config)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("carrel-hub");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    async fn channel(&self, root: &Path) -> tonic::transport::Channel {
        let pem = std::fs::read_to_string(root.join("pki/ca.crt")).expect("CA");
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("url")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                    .domain_name("127.0.0.1"),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }

    async fn token(&self, root: &Path, user: &str, password: &str) -> String {
        pb::auth_service_client::AuthServiceClient::new(self.channel(root).await)
            .login(pb::LoginRequest {
                username: user.into(),
                password: password.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .token
    }

    async fn site_connected(&self, root: &Path, admin: &str) -> bool {
        let Ok(channel) = tokio::time::timeout(Duration::from_secs(2), self.channel(root)).await
        else {
            return false;
        };
        pb::admin_service_client::AdminServiceClient::new(channel)
            .list_sites(authed(admin, pb::ListSitesRequest {}))
            .await
            .map(|r| {
                r.into_inner()
                    .sites
                    .iter()
                    .any(|s| s.site_id == "site-f" && s.connected)
            })
            .unwrap_or(false)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- replica {} log ----\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

async fn fresh_database() -> String {
    let base = std::env::var("CARREL_TEST_POSTGRES_URL")
        .expect("CARREL_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL");
    let name = format!("carrel_failover_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("database in the URL");
    format!("{prefix}/{name}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_fails_over_between_replicas_and_commands_cross_replicas() {
    let database = fresh_database().await;
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let mut a = Replica::new(root, "a", &database);
    let mut b = Replica::new(root, "b", &database);
    a.start().await; // creates the shared CA
    b.start().await;
    a.cli(
        &[
            "user",
            "add",
            "dr.f",
            "--role",
            "physician",
            "--full-name",
            "Dr F",
        ],
        "physician-password-1\n",
    );
    a.cli(
        &["user", "add", "qa.f", "--role", "qa", "--full-name", "Q F"],
        "qa-password-12345\n",
    );
    a.cli(
        &[
            "user",
            "add",
            "admin.f",
            "--role",
            "admin",
            "--full-name",
            "A F",
        ],
        "admin-password-12\n",
    );
    let out = a.cli(&["site", "add", "site-f", "--name", "Failover"], "");
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("carrel1."))
        .expect("token")
        .to_owned();

    // The site enrolls with replica A and knows B as a second address.
    let agent_dir = tempfile::tempdir().expect("agent dir");
    let enrolled = enroll_at(&a.url(), &token, agent_dir.path()).expect("enroll");
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    // Simulated operators pass the custody checkpoints.
    let config_path = agent_dir.path().join("agent.toml");
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config_path).expect("agent.toml")).expect("toml");
    config
        .entry("simulator")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("table")
        .insert("auto_scan".into(), true.into());
    std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("write");
    let agent_log = agent_dir.path().join("agent.log");
    let log = std::fs::File::create(&agent_log).expect("log");
    let mut agent = Command::new(binary("carrel-site-agent"))
        .args(["run", "--data-dir"])
        .arg(agent_dir.path())
        .env("CARREL_AGENT_HUBS", b.url())
        .env("CARREL_AGENT_TIME_COMPRESSION", "40000")
        .env("CARREL_AGENT_HEARTBEAT_TIMEOUT_MS", "15000")
        .env("CARREL_AGENT_CONSOLE_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info,sqlx=warn,h2=warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("agent");

    let admin = a.token(root, "admin.f", "admin-password-12").await;
    eventually(
        Duration::from_secs(30),
        "the site to connect to replica A",
        || async { a.site_connected(root, &admin).await.then_some(()) },
    )
    .await;

    // QA qualifies the site for the product (signed), through replica A.
    let qa = a.token(root, "qa.f", "qa-password-12345").await;
    pb::release_service_client::ReleaseServiceClient::new(a.channel(root).await)
        .qualify_site(authed(
            &qa,
            pb::QualifySiteRequest {
                site_id: "site-f".into(),
                product: "cd19-car-t".into(),
                reason: "Qualification run PQ-F1 for the failover test".into(),
                username: "qa.f".into(),
                password: "qa-password-12345".into(),
                acknowledge_signature_meaning: true,
                ..Default::default()
            },
        ))
        .await
        .expect("qualify site-f");

    let physician = a.token(root, "dr.f", "physician-password-1").await;
    let date = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let order = pb::order_service_client::OrderServiceClient::new(a.channel(root).await)
        .create_order(authed(
            &physician,
            pb::CreateOrderRequest {
                patient_pseudonym: "P-8001".into(),
                product: "cd19-car-t".into(),
                site_id: "site-f".into(),
                requested_collection_date: date,
                request_id: String::new(),
                confirm_second_order: false,
            },
        ))
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order");
    let agent_db = open_read_only(&agent_dir.path().join("agent.db")).await;
    eventually(
        Duration::from_secs(30),
        "manufacturing to be under way",
        || {
            let db = agent_db.clone();
            async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'step_completed'")
                        .fetch_one(&db)
                        .await
                        .ok()?;
                (n >= 2).then_some(())
            }
        },
    )
    .await;

    // Replica A dies mid-batch; the site resumes on B from its cursor.
    a.kill();
    let killed = Instant::now();
    let admin_b = b.token(root, "admin.f", "admin-password-12").await;
    eventually(
        Duration::from_secs(30),
        "the site to resume on replica B",
        || async { b.site_connected(root, &admin_b).await.then_some(()) },
    )
    .await;
    let failover = killed.elapsed();
    println!(
        "failover: replica killed -> site stream resumed on the other replica in {} ms",
        failover.as_millis()
    );

    let physician_b = b.token(root, "dr.f", "physician-password-1").await;
    let order_id = order.order_id.clone();
    eventually(
        Duration::from_secs(90),
        "the batch to await release",
        || {
            let channel = b.channel(root);
            let token = physician_b.clone();
            let order_id = order_id.clone();
            async move {
                let shown = pb::order_service_client::OrderServiceClient::new(channel.await)
                    .get_order(authed(&token, pb::GetOrderRequest { order_id }))
                    .await
                    .ok()?
                    .into_inner()
                    .order?;
                (shown.state == pb::BatchState::AwaitingRelease as i32).then_some(())
            }
        },
    )
    .await;

    // Every event exactly once, in order, in the shared database.
    let pg = sqlx::PgPool::connect(&database).await.expect("connect");
    let site_log = agent_events(&agent_db).await;
    let hub_log: Vec<(i64, String)> = eventually(
        Duration::from_secs(30),
        "the hub to hold the site's whole log",
        || {
            let pg = pg.clone();
            let want = site_log.len();
            async move {
                let log: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT seq, body FROM site_events WHERE site_id = 'site-f' ORDER BY seq",
                )
                .fetch_all(&pg)
                .await
                .ok()?;
                (log.len() >= want).then_some(log)
            }
        },
    )
    .await;
    assert_same_log(&hub_log, &site_log);
    println!("events checked across the fail-over: {}", site_log.len());

    // A comes back; the site stays on B. QA signs on A; the decision reaches the site
    // through B at once, not at B's next heartbeat (5 s).
    a.start().await;
    let qa = a.token(root, "qa.f", "qa-password-12345").await;
    let mut release = pb::release_service_client::ReleaseServiceClient::new(a.channel(root).await);
    let record = release
        .get_batch_record(authed(
            &qa,
            pb::GetBatchRecordRequest {
                batch_id: order.batch_id.clone(),
            },
        ))
        .await
        .expect("record")
        .into_inner()
        .record
        .expect("record");
    assert!(
        b.site_connected(root, &admin_b).await,
        "the site is still on replica B"
    );
    let signed = Instant::now();
    release
        .sign_release(authed(
            &qa,
            pb::SignReleaseRequest {
                batch_id: order.batch_id.clone(),
                meaning: pb::ReleaseMeaning::Released as i32,
                password: "qa-password-12345".into(),
                record_sha256: record.record_sha256,
                reason: String::new(),
                username: "qa.f".into(),
                acknowledge_signature_meaning: true,
                justifications: Vec::new(),
                outstanding_tests: Vec::new(),
            },
        ))
        .await
        .expect("sign");
    let batch_id = order.batch_id.clone();
    eventually(
        Duration::from_secs(10),
        "the decision to reach the site",
        || {
            let db = agent_db.clone();
            let batch_id = batch_id.clone();
            async move {
                let decision: Option<String> =
                    sqlx::query_scalar("SELECT decision FROM batches WHERE batch_id = ?")
                        .bind(batch_id)
                        .fetch_one(&db)
                        .await
                        .ok()?;
                (decision.as_deref() == Some("released")).then_some(())
            }
        },
    )
    .await;
    let delay = signed.elapsed();
    println!(
        "command signed on replica A reached the site on replica B in {} ms",
        delay.as_millis()
    );
    assert!(
        delay < Duration::from_millis(2500),
        "the decision took {delay:?}: it waited for a heartbeat instead of the database notification"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

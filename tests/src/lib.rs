//! Harness for Carrel's end-to-end tests: starts the real `carrel-hub` and
//! `carrel-site-agent` binaries as processes, each in its own temporary directory
//! with its own config, certificates made by the hub for this test, and free ports.
//! Processes are killed when their handle is dropped.
//!
//! The binaries are found next to the test executable (`target/<profile>/`); build
//! them first, which `cargo test --workspace` does.

pub mod dev;
pub mod otlp;
pub mod peers;
pub mod proxy;
pub mod raw_link;
pub mod scenario;
pub mod webhook;

use anyhow::{bail, Context};
use carrel_proto::pb;
use serde_json::Value;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The password of the hub administrator the harness adds ([`Hub::ensure_admin`]).
pub const ADMIN_PASSWORD: &str = "hub-operator-password-1";

/// The QA person the harness signs site qualifications with ([`Hub::qualify`]).
pub const SITE_QA: (&str, &str) = ("qa.sites", "qa-sites-password-1");

/// The products the hub ships, which [`Hub::add_site`] qualifies each site for.
pub const SHIPPED_PRODUCTS: [&str; 2] = ["cd19-car-t", "bcma-car-t"];

/// Path of one of the workspace's binaries.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Runs `command` (a `carrel-hub`) as a client of the hub at `url` with its CA
/// and a session token file, `stdin` typed in (a password, say).
pub fn run_cli(
    mut command: Command,
    url: &str,
    ca_cert: &Path,
    token_file: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut child = command
        .args(args)
        .env("CARREL_ADDR", url)
        .env("CARREL_CA_CERT", ca_cert)
        .env("CARREL_TOKEN_FILE", token_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run carrel-hub");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input
            .write_all(format!("{text}\n").as_bytes())
            .expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("carrel-hub output")
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// A `carrel-hub serve` process and everything needed to talk to it.
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Hub {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("hub.toml")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir().join("pki/ca.crt")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("hub.log")
    }

    /// The hub's gRPC address, for a proxy to forward to.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts a hub on a free port with fast heartbeats, and waits until it serves.
    pub async fn start() -> Hub {
        Self::start_with("").await
    }

    /// Starts a hub as [`Hub::start`] does, with `extra` (TOML lines) added to its
    /// config file, e.g. `"max_message_bytes = 65536\n"`.
    pub async fn start_with(extra: &str) -> Hub {
        let dir = tempfile::Builder::new()
            .prefix("carrel-hub-test-")
            .tempdir()
            .expect("tempdir");
        let mut hub = Hub {
            dir,
            port: 0,
            child: None,
        };
        // A free port is found by binding and releasing it, so a process started in
        // parallel can take it first: then another port is tried.
        for attempt in 1..=5 {
            hub.port = free_port();
            // Test sites run simulators whose operators are not people: a test hub
            // releases their work unless a test says otherwise.
            let simulated = if extra.contains("accept_simulated_people") {
                ""
            } else {
                "accept_simulated_people = true\n"
            };
            let config = format!(
                "listen = \"127.0.0.1:{}\"\nconsole_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nheartbeat_interval_ms = 300\nheartbeat_timeout_ms = 2000\naudit_witness_interval_secs = 1\n{simulated}{extra}",
                hub.port,
                hub.dir.path().join("data").display()
            );
            std::fs::write(hub.config_path(), config).expect("hub config");
            match hub.spawn().await {
                Ok(()) => return hub,
                Err(log) if log.contains("Address already in use") && attempt < 5 => continue,
                Err(log) => panic!("carrel-hub did not start:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Starts the process on the configured port; the log when it exits instead.
    async fn spawn(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.data_dir().join("hub.addr"));
        let child = Command::new(binary("carrel-hub"))
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info,carrel_hub=debug,sqlx=warn,h2=warn")
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&self.log_path()))
            .spawn()
            .expect("start carrel-hub");
        self.child = Some(child);
        let addr_file = self.data_dir().join("hub.addr");
        let log = self.log_path();
        let child = self.child.as_mut().expect("just set");
        let outcome = eventually(Duration::from_secs(30), "the hub to serve", || {
            let exited = child.try_wait().ok().flatten();
            let ready = addr_file.exists();
            let log = log.clone();
            async move {
                if let Some(status) = exited {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    return Some(Err(format!("carrel-hub exited with {status}:\n{text}")));
                }
                ready.then_some(Ok(()))
            }
        })
        .await;
        if outcome.is_err() {
            self.child = None;
        }
        outcome
    }

    /// The process id of the running hub.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for the hub process to exit on its own; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no flush, as in a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the hub again on the same port and data.
    pub async fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; another process may hold it briefly.
        for attempt in 1..=20 {
            match self.spawn().await {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") && attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(log) => panic!("carrel-hub did not restart:\n{log}"),
            }
        }
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL): the orderly stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `carrel-hub` with this hub's address and CA, and the token file of `user`.
    pub fn cli(&self, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
        self.cli_env(user, args, stdin, &[])
    }

    /// [`Hub::cli`] with more environment variables (`TZ`, say).
    pub fn cli_env(
        &self,
        user: &str,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> Output {
        let mut command = Command::new(binary("carrel-hub"));
        command
            .envs(env.iter().copied())
            .env("CARREL_HUB_CONFIG", self.config_path());
        run_cli(
            command,
            &self.url(),
            &self.ca_cert(),
            &self.dir.path().join(format!("token-{user}")),
            args,
            stdin,
        )
    }

    /// Runs a CLI command that must succeed; returns its standard output.
    pub fn cli_ok(&self, user: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli(user, args, stdin);
        assert!(
            out.status.success(),
            "carrel-hub {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command with `--json` that must succeed; returns the parsed output.
    pub fn cli_json(&self, user: &str, args: &[&str], stdin: Option<&str>) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.cli_ok(user, &args, stdin);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("carrel-hub {args:?} printed no JSON ({e}): {text}"))
    }

    /// Adds a user on the hub machine and signs them in for later CLI calls.
    pub fn add_user(&self, username: &str, role: &str, password: &str) {
        self.cli_ok(
            username,
            &[
                "user",
                "add",
                username,
                "--role",
                role,
                "--full-name",
                &format!("Test {username}"),
            ],
            Some(password),
        );
        self.cli_ok(username, &["login", "--user", username], Some(password));
    }

    /// Adds the hub's administrator (`admin`, [`ADMIN_PASSWORD`]) once, signed in for
    /// later CLI calls as "admin".
    pub fn ensure_admin(&self) {
        if !self.dir.path().join("token-admin").exists() {
            self.add_user("admin", "admin", ADMIN_PASSWORD);
        }
    }

    /// Adds a person who works at `site_id`: a hub user with `role`, assigned to the
    /// site by the admin through the API (the site gets their directory entry over
    /// its link), and signed in at the hub for later CLI calls.
    pub fn add_person(&self, username: &str, role: &str, password: &str, site_id: &str) {
        self.add_user(username, role, password);
        self.assign(username, site_id);
    }

    /// Assigns an existing user to a site (or sends their entry again).
    pub fn assign(&self, username: &str, site_id: &str) {
        self.ensure_admin();
        self.cli_ok(
            "admin",
            &["user", "assign", username, "--site", site_id],
            None,
        );
    }

    /// Registers a site, qualifies it for every shipped product (as QA does, with a
    /// signature: [`Hub::qualify`]) and returns its one-time enrollment token.
    pub fn add_site(&self, site_id: &str) -> String {
        let token = self.register_site(site_id);
        for product in SHIPPED_PRODUCTS {
            self.qualify(site_id, product);
        }
        token
    }

    /// Qualifies a site for a product (its version in force and later ones),
    /// signed by the harness's own QA person ([`SITE_QA`], added once).
    pub fn qualify(&self, site_id: &str, product: &str) {
        if !self
            .dir
            .path()
            .join(format!("token-{}", SITE_QA.0))
            .exists()
        {
            self.add_user(SITE_QA.0, "qa", SITE_QA.1);
        }
        self.cli_ok(
            SITE_QA.0,
            &[
                "site",
                "qualify",
                site_id,
                product,
                "--reason",
                "Qualified by the test harness for this test",
                "--user",
                SITE_QA.0,
                "--acknowledge-signature-meaning",
            ],
            Some(SITE_QA.1),
        );
    }

    /// Registers a site without qualifying it for any product; returns its one-time
    /// enrollment token.
    pub fn register_site(&self, site_id: &str) -> String {
        let out = self.cli_ok(
            "admin",
            &[
                "site",
                "add",
                site_id,
                "--name",
                &format!("Test site {site_id}"),
            ],
            None,
        );
        out.lines()
            .find(|l| l.starts_with("carrel1."))
            .unwrap_or_else(|| panic!("no token in: {out}"))
            .trim()
            .to_owned()
    }

    /// A TLS channel to the hub without a client certificate (as people connect).
    pub async fn channel(&self) -> Channel {
        self.channel_from(None).await
    }

    /// A channel whose connection comes from `local` (an address of this machine,
    /// such as 127.0.0.2), as a client elsewhere on the network would.
    pub async fn channel_from(&self, local: Option<std::net::IpAddr>) -> Channel {
        let pem = std::fs::read_to_string(self.ca_cert()).expect("CA certificate");
        Endpoint::from_shared(self.url())
            .expect("url")
            .local_address(local)
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(pem))
                    .domain_name("127.0.0.1"),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect to hub")
    }

    /// Signs in over the API and returns the session token.
    pub async fn login(&self, username: &str, password: &str) -> Result<String, tonic::Status> {
        pb::auth_service_client::AuthServiceClient::new(self.channel().await)
            .login(pb::LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner().token)
    }

    /// Opens the hub's SQLite database read-only, for checking what is stored.
    pub async fn db(&self) -> sqlx::SqlitePool {
        open_read_only(&self.data_dir().join("hub.db")).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// On a failing test, show the end of a process's log, since its directory goes away.
fn show_log_if_panicking(what: &str, path: &Path) {
    if std::thread::panicking() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!(
            "---- last lines of the {what} log ({}) ----",
            path.display()
        );
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
        show_log_if_panicking("hub", &self.log_path());
    }
}

/// Adds `authorization: Bearer` to a request.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

pub async fn open_read_only(path: &Path) -> sqlx::SqlitePool {
    use sqlx::sqlite::SqliteConnectOptions;
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// A `carrel-site-agent` process with its own data directory.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub site_id: String,
    child: Option<Child>,
    time_compression: f64,
    /// Where the log goes when it must not share the data directory's disk.
    log_dir: Option<tempfile::TempDir>,
}

impl Agent {
    /// Enrolls a new site agent with `token`. Fails if enrollment fails.
    pub fn enroll(hub: &Hub, site_id: &str, token: &str) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("carrel-agent-test-")
            .tempdir()?;
        Self::enroll_into_dir(hub, site_id, token, dir, None)
    }

    /// Enrolls a new site agent whose data directory is made inside `parent` (a
    /// small file system of the test's own, say), with its log kept elsewhere so
    /// that it can still say what happens when that file system is full.
    pub fn enroll_in(
        hub: &Hub,
        site_id: &str,
        token: &str,
        parent: &Path,
    ) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("carrel-agent-test-")
            .tempdir_in(parent)?;
        let log_dir = tempfile::Builder::new()
            .prefix("carrel-agent-log-")
            .tempdir()?;
        Self::enroll_into_dir(hub, site_id, token, dir, Some(log_dir))
    }

    fn enroll_into_dir(
        hub: &Hub,
        site_id: &str,
        token: &str,
        dir: tempfile::TempDir,
        log_dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Agent> {
        let out = enroll_into(hub, token, dir.path())?;
        if !out.status.success() {
            bail!(
                "enrollment failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let agent = Agent {
            dir,
            site_id: site_id.to_owned(),
            child: None,
            time_compression: 100_000.0,
            log_dir,
        };
        // Simulated operators pass the manufacturing custody checkpoints, unless a
        // test scans itself (`configure(&["simulator", "auto_scan"], false.into())`).
        agent.configure(&["simulator", "auto_scan"], true.into());
        Ok(agent)
    }

    /// Points the agent at `url` instead of the hub's own address (a proxy), with a
    /// short reconnect backoff so that a healed link is used again quickly.
    pub fn dial(&self, url: &str) {
        self.configure(&["hub"], url.into());
        self.configure(&["reconnect_max_ms"], 1_000.into());
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        match &self.log_dir {
            Some(dir) => dir.path().join("agent.log"),
            None => self.dir.path().join("agent.log"),
        }
    }

    /// Process seconds per real second for the simulated instrument.
    pub fn with_time_compression(mut self, value: f64) -> Agent {
        self.time_compression = value;
        self
    }

    /// Sets one value in the agent's config file, e.g. `&["simulator", "faults", "contamination"]`.
    pub fn configure(&self, path: &[&str], value: toml::Value) {
        let file = self.data_dir().join("agent.toml");
        let text = std::fs::read_to_string(&file).expect("agent.toml written at enrollment");
        let mut doc: toml::Table = toml::from_str(&text).expect("agent.toml parses");
        let (last, parents) = path.split_last().expect("a non-empty path");
        let mut table = &mut doc;
        for key in parents {
            table = table
                .entry(key.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("a table");
        }
        table.insert(last.to_string(), value);
        std::fs::write(&file, toml::to_string(&doc).expect("toml")).expect("write agent.toml");
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let starts_before = self.log().matches("site agent running").count();
        let child = Command::new(binary("carrel-site-agent"))
            .args(["run", "--data-dir"])
            .arg(self.data_dir())
            .env(
                "CARREL_AGENT_TIME_COMPRESSION",
                self.time_compression.to_string(),
            )
            .env("CARREL_AGENT_HEARTBEAT_TIMEOUT_MS", "2000")
            .env("CARREL_AGENT_CONSOLE_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info,carrel_site_agent=debug,sqlx=warn,h2=warn")
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&self.log_path()))
            .spawn()
            .expect("start carrel-site-agent");
        self.child = Some(child);
        // Fail fast, with the log, when the agent cannot start.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.log().matches("site agent running").count() > starts_before {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("carrel-site-agent exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "carrel-site-agent did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, mid-whatever-it-was-doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub async fn db(&self) -> sqlx::SqlitePool {
        open_read_only(&self.data_dir().join("agent.db")).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        show_log_if_panicking(&format!("agent {}", self.site_id), &self.log_path());
    }
}

impl Agent {
    /// Waits until the site's directory holds `username` with `status` ("active",
    /// "disabled", "removed"): the hub's directory command has been applied.
    pub async fn wait_for_person(&self, username: &str, status: &str) {
        let db = self.db().await;
        eventually(
            Duration::from_secs(30),
            &format!("{username} to be {status} in the site's directory"),
            || {
                let db = db.clone();
                async move {
                    let found: Option<String> =
                        sqlx::query_scalar("SELECT status FROM people WHERE username = ?")
                            .bind(username)
                            .fetch_optional(&db)
                            .await
                            .ok()
                            .flatten();
                    (found.as_deref() == Some(status)).then_some(())
                }
            },
        )
        .await;
    }

    /// Waits until the site has recorded QA's decision `meaning` ("released",
    /// "released_conditionally", "release_completed", ...) for the batch.
    pub async fn wait_for_decision(&self, batch_id: &str, meaning: &str) {
        let db = self.db().await;
        eventually(
            Duration::from_secs(30),
            &format!("the site to record {meaning} for batch {batch_id}"),
            || {
                let db = db.clone();
                async move {
                    let found: Option<String> =
                        sqlx::query_scalar("SELECT decision FROM batches WHERE batch_id = ?")
                            .bind(batch_id)
                            .fetch_optional(&db)
                            .await
                            .ok()
                            .flatten();
                    (found.as_deref() == Some(meaning)).then_some(())
                }
            },
        )
        .await;
    }

    /// Runs a `carrel-site-agent` command on this agent's data directory, with `stdin`.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(binary("carrel-site-agent"))
            .args(args)
            .env("CARREL_AGENT_DATA_DIR", self.data_dir())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run carrel-site-agent");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("carrel-site-agent output")
    }
}

/// Runs `carrel-site-agent enroll` into `dir`.
pub fn enroll_into(hub: &Hub, token: &str, dir: &Path) -> anyhow::Result<Output> {
    enroll_at(&hub.url(), token, dir)
}

/// Runs `carrel-site-agent enroll` against the hub at `url`, the token typed on
/// standard input as an operator would paste it.
pub fn enroll_at(url: &str, token: &str, dir: &Path) -> anyhow::Result<Output> {
    let mut child = Command::new(binary("carrel-site-agent"))
        .args(["enroll", "--hub", url, "--token-file", "-", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run carrel-site-agent enroll")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{token}\n").as_bytes())?;
    child
        .wait_with_output()
        .context("carrel-site-agent enroll output")
}

/// The ordered (seq, body) rows of a site's event log as the hub stores it.
pub async fn hub_events(hub: &sqlx::SqlitePool, site_id: &str) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT seq, body FROM site_events WHERE site_id = ? ORDER BY seq")
        .bind(site_id)
        .fetch_all(hub)
        .await
        .expect("hub events")
}

/// The ordered (seq, body) rows of the agent's own event log.
pub async fn agent_events(agent: &sqlx::SqlitePool) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT seq, body FROM events ORDER BY seq")
        .fetch_all(agent)
        .await
        .expect("agent events")
}

/// The agent's own log, as (seq, JSON body).
pub async fn site_log(agent: &Agent) -> Vec<(i64, Value)> {
    agent_events(&agent.db().await)
        .await
        .into_iter()
        .map(|(seq, body)| (seq, serde_json::from_str(&body).expect("JSON event")))
        .collect()
}

/// The kinds of the records of one type in a site log, in order.
pub fn of_type<'a>(log: &'a [(i64, Value)], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    log.iter()
        .map(|(_, e)| &e["kind"])
        .filter(move |k| k["type"] == kind)
}

/// Checks that the hub holds exactly the site's log: same seqs 1..=n, same content.
pub fn assert_same_log(hub: &[(i64, String)], site: &[(i64, String)]) {
    let seqs: Vec<i64> = hub.iter().map(|(s, _)| *s).collect();
    let expected: Vec<i64> = (1..=site.len() as i64).collect();
    assert_eq!(
        seqs,
        expected,
        "hub must hold seqs 1..={} once each, in order",
        site.len()
    );
    for ((hub_seq, hub_body), (site_seq, site_body)) in hub.iter().zip(site) {
        assert_eq!(hub_seq, site_seq);
        assert_eq!(
            hub_body, site_body,
            "event {hub_seq} differs between hub and site"
        );
    }
}

/// An order's fields as `carrel-hub order show --json` prints them.
pub fn order_show(hub: &Hub, user: &str, order_id: &str) -> Value {
    hub.cli_json(user, &["order", "show", order_id], None)
}

pub fn str_field<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {field:?} in {value}"))
}

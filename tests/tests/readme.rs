//! The README's "Running a real hub and a real site", run as written: every shell
//! command of that section, in the order it gives them, against the real
//! `carrel-hub` and `carrel-site-agent` processes, once on SQLite and once on
//! PostgreSQL. The commands are read from `README.md` itself, so a step that stops
//! working, or a command the README adds without this test knowing what it should do,
//! fails here.
//!
//! What an operator would do around the commands, the test does too, and says so:
//! it edits the copied `hub.toml` as the comment asks (listen, data_dir,
//! server_names, and free ports), puts the token `site add` printed in `token.txt`,
//! runs `serve` and `run` in the background, types the passwords at the prompts, and
//! waits for the order to reach the site before working on it there. Paths under
//! `/etc/carrel` and `/var/lib` live in a temporary directory, and
//! `hub.example.org:7443` is the test hub's loopback address.

use carrel_tests::{binary, free_port};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECTION: &str = "## Running a real hub and a real site";
/// Every person's password in this session (12+ characters, as the hub asks).
const PASSWORD: &str = "readme-operator-pass-2026";
/// The bedside badge's PIN.
const PIN: &str = "246810";

/// The shell commands of the README's section, comments removed, in order.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let start = readme.find(SECTION).expect("the README has the section") + SECTION.len();
    let rest = &readme[start..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if in_block {
            let command = strip_comment(line).trim();
            if !command.is_empty() {
                commands.push(command.to_owned());
            }
        }
    }
    commands
}

/// The line up to a `#` that starts a shell comment (at the start or after a blank,
/// outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut after_blank = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && after_blank => return &line[..i],
            None => {}
        }
        after_blank = c.is_whitespace();
    }
    line
}

/// `text` with each whole word `word` (not part of a longer name) replaced.
fn replace_word(text: &str, word: &str, by: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_name) || after.is_some_and(is_name) {
            out.push_str(word);
        } else {
            out.push_str(by);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

/// An operator's machine: a root for `/etc/carrel`, `/var/lib`, the working
/// directory (with `target/release` and `deploy/`) and HOME; the shell environment
/// the README's `export` set; the values earlier commands printed.
struct Session {
    root: tempfile::TempDir,
    env: BTreeMap<String, String>,
    values: Vec<(&'static str, String)>,
    hub_port: u16,
    database: Option<String>,
    hub: Option<Child>,
    agent: Option<Child>,
    transcript: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        for child in [self.hub.as_mut(), self.agent.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Session {
    fn new(database: Option<String>) -> Session {
        let root = tempfile::tempdir().expect("tempdir");
        let release = root.path().join("target/release");
        std::fs::create_dir_all(&release).expect("target/release");
        for name in ["carrel-hub", "carrel-site-agent"] {
            std::os::unix::fs::symlink(binary(name), release.join(name)).expect("link binary");
        }
        std::fs::create_dir_all(root.path().join("deploy")).expect("deploy");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hub.example.toml"),
            root.path().join("deploy/hub.example.toml"),
        )
        .expect("copy the example config");
        for dir in ["etc/carrel", "var/lib", "home"] {
            std::fs::create_dir_all(root.path().join(dir)).expect("dirs");
        }
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_owned(),
            format!("{}:/usr/local/bin:/usr/bin:/bin", release.display()),
        );
        env.insert(
            "HOME".to_owned(),
            root.path().join("home").display().to_string(),
        );
        // The agent's console on a port of its own (7445 may be another test's).
        env.insert(
            "CARREL_AGENT_CONSOLE_LISTEN".to_owned(),
            format!("127.0.0.1:{}", free_port()),
        );
        if let Some(url) = &database {
            env.insert("CARREL_HUB_DATABASE".to_owned(), url.clone());
        }
        Session {
            root,
            env,
            values: Vec::new(),
            hub_port: free_port(),
            database,
            hub: None,
            agent: None,
            transcript: String::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// The command as it runs here: paths under the session's root, the test hub's
    /// address, and the values earlier commands printed in place of their names.
    fn here(&self, command: &str) -> String {
        let root = self.root.path().display();
        let mut text = command
            .replace("/etc/carrel/", &format!("{root}/etc/carrel/"))
            .replace("/var/lib/", &format!("{root}/var/lib/"))
            .replace(
                "hub.example.org:7443",
                &format!("127.0.0.1:{}", self.hub_port),
            );
        for (name, value) in &self.values {
            text = replace_word(&text, name, value);
        }
        text
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn shell(&self, command: &str) -> Command {
        let mut shell = Command::new("bash");
        shell
            .arg("-c")
            .arg(command)
            .current_dir(self.root.path())
            .env_clear()
            .envs(&self.env);
        shell
    }

    /// Runs `command` (already made local) with `input` on standard input.
    fn run(&mut self, command: &str, input: &str) -> Output {
        let mut child = self
            .shell(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bash");
        // A command that ends without reading all its input (it refused at once)
        // closes the pipe first: that is its answer, not the harness's failure.
        match child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
        {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
            _ => {}
        }
        let out = child.wait_with_output().expect("wait");
        self.transcript.push_str(&format!(
            "$ {command}\n{}{}[exit {}]\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status
        ));
        out
    }

    fn background(&mut self, command: &str, log: &str) -> Child {
        let log = std::fs::File::create(self.path(log)).expect("log file");
        self.transcript
            .push_str(&format!("$ {command} &   (in the background)\n"));
        self.shell(&format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start a background command")
    }

    fn fail(&self, what: &str) -> ! {
        let tail = |name: &str| {
            let log = std::fs::read_to_string(self.path(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        panic!(
            "{what}\n--- the session so far ---\n{}\n--- hub.log (end) ---\n{}\n--- agent.log (end) ---\n{}",
            self.transcript,
            tail("hub.log"),
            tail("agent.log")
        );
    }

    /// Edits the copied hub.toml as the README's comment asks: listen, data_dir,
    /// server_names (and the console on a free port).
    fn edit_hub_toml(&self) {
        let path = self.path("etc/carrel/hub.toml");
        let text = std::fs::read_to_string(&path).expect("hub.toml copied");
        let data_dir = self.path("var/lib/carrel-hub");
        let edited: String = text
            .lines()
            .map(|line| {
                if line.starts_with("listen =") {
                    format!("listen = \"127.0.0.1:{}\"", self.hub_port)
                } else if line.starts_with("console_listen =") {
                    format!("console_listen = \"127.0.0.1:{}\"", free_port())
                } else if line.starts_with("data_dir =") {
                    format!("data_dir = \"{}\"", data_dir.display())
                } else if line.starts_with("server_names =") {
                    "server_names = [\"localhost\", \"127.0.0.1\"]".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .map(|line| line + "\n")
            .collect();
        std::fs::write(&path, edited).expect("edit hub.toml");
    }

    fn wait_for_hub(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.hub_port)).is_err() {
            if let Some(status) = self.hub.as_mut().and_then(|h| h.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(self.path("hub.log")).unwrap_or_default();
                self.fail(&format!("the hub exited ({status}):\n{log}"));
            }
            if Instant::now() > deadline {
                self.fail("the hub did not listen within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The site's own view (`status --json`), as the operator would look.
    fn site_status(&mut self) -> Value {
        let command =
            self.here("carrel-site-agent status --json --data-dir /var/lib/carrel-site-agent");
        let out = self.run(&command, "");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Waits until the batch is at the site (the people assigned before it are too:
    /// commands reach a site in order).
    fn wait_for_batch_at_site(&mut self) {
        let batch = self.value("BATCH").expect("a batch").to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.site_status();
            let there = status["batches"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["batch_id"] == batch.as_str()));
            if there {
                return;
            }
            if Instant::now() > deadline {
                self.fail("the order did not reach the site within 60 s");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until the hub acknowledged every record the site made.
    fn wait_for_site_replicated(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.site_status();
            if status["events_waiting"] == 0 && status["events_recorded"].as_u64() > Some(0) {
                return;
            }
            if Instant::now() > deadline {
                self.fail("the site's records did not reach the hub within 60 s");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Remembers what the command printed that later commands name.
    fn remember(&mut self, command: &str, stdout: &str) {
        if command.contains("site add") {
            let token = stdout
                .lines()
                .skip_while(|l| !l.starts_with("One-time enrollment token"))
                .nth(1)
                .unwrap_or_else(|| self.fail("site add printed no token"))
                .trim()
                .to_owned();
            std::fs::write(self.path("token.txt"), format!("{token}\n")).expect("token.txt");
        }
        if command.contains("order create") {
            let field = |prefix: &str| {
                stdout.lines().find_map(|l| {
                    l.trim_start()
                        .strip_prefix(prefix)
                        .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
                })
            };
            let order = field("Order ").unwrap_or_else(|| self.fail("no order id printed"));
            let batch = field("batch ").unwrap_or_else(|| self.fail("no batch id printed"));
            let coi = field("COI ").unwrap_or_else(|| self.fail("no COI printed"));
            self.values.push(("ORDER_ID", order));
            self.values.push(("BATCH_ID", batch.clone()));
            self.values.push(("BATCH", batch));
            self.values.push(("COI", coi));
        }
        if command.contains("release show") {
            let sha = stdout
                .lines()
                .find_map(|l| l.strip_prefix("Record SHA-256 "))
                .unwrap_or_else(|| self.fail("release show printed no record SHA-256"))
                .trim()
                .to_owned();
            self.values.push(("SHA", sha));
        }
    }

    /// What the operator types at the command's prompts.
    fn typed(&self, command: &str) -> String {
        if command.contains("user badge") {
            format!("{PIN}\n{PIN}\n")
        } else if command.contains("carrel-site-agent scan") {
            // Both people's passwords, then the bag's label as the scanner types it.
            format!(
                "{PASSWORD}\n{PASSWORD}\n{}\n",
                self.value("COI").unwrap_or_default()
            )
        } else if command.contains("release sign")
            || command.contains("release review-change")
            || command.contains("site qualify")
        {
            // Their user name, password, and "yes" to the meaning of a first signature.
            format!("qa.grace\n{PASSWORD}\nyes\n")
        } else {
            format!("{PASSWORD}\n{PASSWORD}\n")
        }
    }
}

/// What a README command must do in this session, where the batch is ordered and at
/// the site but not made (manufacturing takes the simulator minutes and a
/// technician's scans at every checkpoint): `None` is success (exit 0); otherwise
/// the words its refusal must carry.
fn refusal_expected(command: &str) -> Option<&'static str> {
    if command.contains("release sign") {
        // The correction above is an exception of the record; a release despite it
        // needs a justification, which a prompt asks for at a terminal.
        Some("justification")
    } else if command.contains("release review-change") {
        Some("decision")
    } else {
        None
    }
}

/// Runs the README's section, as written, in a new session.
fn run_the_readme(database: Option<String>) -> Session {
    let mut s = Session::new(database);
    let commands = readme_commands();
    assert!(
        commands.len() > 20,
        "the README section has its commands: {commands:?}"
    );
    for command in &commands {
        if command == "cargo build --release" {
            // The harness built the binaries this session links to.
            continue;
        }
        if let Some(assignments) = command.strip_prefix("export ") {
            for pair in assignments.split_whitespace() {
                let (name, value) = pair.split_once('=').expect("NAME=value");
                let value = s.here(value);
                s.env.insert(name.to_owned(), value);
            }
            continue;
        }
        if command.contains("--batch BATCH") {
            s.wait_for_batch_at_site();
        }
        if command.contains("release show") {
            // QA reviews the record once the site's records have reached the hub.
            s.wait_for_site_replicated();
        }
        let local = s.here(command);
        if command.contains("carrel-hub serve") {
            s.hub = Some(s.background(&local, "hub.log"));
            s.wait_for_hub();
            continue;
        }
        if command.contains("carrel-site-agent run") {
            s.agent = Some(s.background(&local, "agent.log"));
            continue;
        }
        let input = s.typed(command);
        let out = s.run(&local, &input);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        match refusal_expected(command) {
            None if !out.status.success() => {
                s.fail(&format!("the README command `{command}` failed"))
            }
            Some(words) if out.status.success() || !stderr.contains(words) => s.fail(&format!(
                "`{command}` should have been refused with words about {words:?}"
            )),
            _ => {}
        }
        assert!(
            !stderr.contains("panicked"),
            "`{command}` panicked:\n{stderr}"
        );
        s.remember(command, &stdout);
        if command.starts_with("cp deploy/hub.example.toml") {
            s.edit_hub_toml();
        }
    }
    s
}

/// What the session left, checked where it is kept: the hub's and the site's records.
fn check_the_session(s: &mut Session) {
    // The order, made by the physician the README adds, reached the site.
    let status = s.site_status();
    assert_eq!(status["site_id"], "site-a", "{status}");
    let batch = s.value("BATCH").expect("batch").to_owned();
    assert!(
        status["batches"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["batch_id"] == batch.as_str())),
        "{status}"
    );
    // The collection scan by two people was recorded at the site as a match, by them.
    let command = s.here(
        "carrel-site-agent events --json --batch BATCH --data-dir /var/lib/carrel-site-agent",
    );
    let out = s.run(&command, "");
    let records: Value = serde_json::from_slice(&out.stdout).expect("events --json");
    let scans: Vec<&Value> = records
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r.to_string().contains("custody_scan") || r.to_string().contains("CustodyScan"))
        .collect();
    assert!(
        scans.iter().any(|r| {
            let text = r.to_string();
            text.contains("tech.tom") && text.contains("tech.ann") && text.contains("collection")
        }),
        "no collection scan by tech.tom and tech.ann in {records}"
    );
    // `release list` names batches by what `release show` takes, and `release show`
    // takes the order's id too.
    let command = s.here("carrel-hub login --user qa.grace");
    assert!(s.run(&command, &format!("{PASSWORD}\n")).status.success());
    let command = s.here("carrel-hub release show ORDER_ID");
    let out = s.run(&command, "");
    let shown = String::from_utf8_lossy(&out.stdout);
    let batch_line = format!("Batch {batch} ");
    assert!(shown.starts_with(&batch_line), "{shown}");
    let command = s.here("carrel-hub release list");
    let out = s.run(&command, "");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.starts_with("BATCH"), "{listed}");
    // The archive copy the README exported holds this batch, and verifies.
    let command = s.here("carrel-hub release verify-export --json batch-record/");
    let out = s.run(&command, "");
    let verified: Value = serde_json::from_slice(&out.stdout).expect("verify-export --json");
    assert!(out.status.success(), "{verified}");
    assert_eq!(verified["intact"], true, "{verified}");
    assert!(
        verified.to_string().contains(&format!("batch {batch}")),
        "{verified}"
    );
    // The admin commands run on the hub machine name the operating-system account
    // from the process's uid, though this shell has no USER or LOGNAME.
    let command = s.here("carrel-hub audit list --config /etc/carrel/hub.toml");
    let out = s.run(&command, "");
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{audit}");
    assert!(!audit.contains("os-user:unknown"), "{audit}");
    assert!(audit.contains("os-user:"), "{audit}");
    // The last leaver command left tech.tom enabled, and the site knows.
    assert!(audit.contains("tech.tom"), "{audit}");
    // Output piped into `head` ends quietly, as Unix tools do. The reader here is
    // gone before the command starts (`true` exits at once; the command waits
    // 0.3 s), so its first write meets a closed pipe however short the output is:
    // 141 is what a shell reports for a tool stopped by the closed pipe; a panic
    // would be 101 with a backtrace.
    for command in [
        "carrel-site-agent events --data-dir /var/lib/carrel-site-agent",
        "carrel-hub audit list --config /etc/carrel/hub.toml",
        "carrel-hub site list",
        "carrel-site-agent status --data-dir /var/lib/carrel-site-agent",
        "carrel-hub release list",
    ] {
        let local = s.here(&format!(
            "(sleep 0.3; exec {command}) | true; echo \"exit ${{PIPESTATUS[0]}}\" >&2"
        ));
        let out = s.run(&local, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("exit 141"), "`{command}`: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "`{command}`: {stderr}"
        );
    }
    // And into `head -1`, as the README shows it: one line, status 0 or 141.
    let command = "carrel-hub audit list --config /etc/carrel/hub.toml | head -1";
    let local = s.here(&format!("{command}; echo \"exit ${{PIPESTATUS[0]}}\" >&2"));
    let out = s.run(&local, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exit 0") || stderr.contains("exit 141"),
        "`{command}`: {stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // The configuration dump never shows the database password, however the URL
    // carries it.
    let command = s.here(
        "CARREL_HUB_DATABASE='postgres://carrel:s3cret@db.example.org/carrel?password=s3cret' \
         carrel-hub serve --dump-config --config /etc/carrel/hub.toml",
    );
    let out = s.run(&command, "");
    let dumped = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{dumped}");
    assert!(dumped.contains("database = "), "{dumped}");
    assert!(!dumped.contains("s3cret"), "{dumped}");
}

#[test]
fn the_readme_production_path_runs_as_written_on_sqlite() {
    let mut s = run_the_readme(None);
    assert!(s.path("var/lib/carrel-hub/hub.db").exists());
    check_the_session(&mut s);
}

#[test]
fn the_readme_production_path_runs_as_written_on_postgres() {
    let base = std::env::var("CARREL_TEST_POSTGRES_URL").expect(
        "CARREL_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL",
    );
    let name = format!("carrel_readme_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to CARREL_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create the session's database");
    });
    let (prefix, _) = base.rsplit_once('/').expect("a database in the URL");
    let url = format!("{prefix}/{name}");
    let mut s = run_the_readme(Some(url));
    assert!(s.database.is_some());
    assert!(
        !s.path("var/lib/carrel-hub/hub.db").exists(),
        "the hub used PostgreSQL, not a SQLite file"
    );
    check_the_session(&mut s);
}

#[test]
fn the_comment_stripper_and_the_placeholders_leave_the_rest_alone() {
    assert_eq!(
        strip_comment(r#"carrel-hub order create --date "$(date -d '+14 days' +%F)"   # a date"#),
        r#"carrel-hub order create --date "$(date -d '+14 days' +%F)"   "#
    );
    assert_eq!(strip_comment("# only a comment"), "");
    assert_eq!(strip_comment("echo a#b"), "echo a#b");
    assert_eq!(
        replace_word("show BATCH_ID and BATCH, not XBATCH", "BATCH", "b-1"),
        "show BATCH_ID and b-1, not XBATCH"
    );
}

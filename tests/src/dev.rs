//! `carrel-hub dev` as a process, for tests of what it sets up (its demo users and
//! sites, its simulated history): started on free ports in its own directory, read
//! from what it prints, and killed when dropped.

use super::{binary, run_cli};
use std::path::PathBuf;
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

pub struct DevNetwork {
    pub dir: tempfile::TempDir,
    child: tokio::process::Child,
    /// What it prints, line by line, after the welcome.
    lines: mpsc::UnboundedReceiver<String>,
    /// `host:port` of the hub's gRPC API.
    pub grpc: String,
    /// `https://host:port` of the web console.
    pub console: String,
    /// Everything it printed up to saying it was up.
    pub welcome: String,
}

impl DevNetwork {
    /// Starts `carrel-hub dev` with `args` (besides its ports and directory) and
    /// waits until it says it is up.
    pub async fn start(args: &[&str]) -> DevNetwork {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(binary("carrel-hub"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--console-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start carrel-hub dev");
        // Read all it prints (so it never blocks on a full pipe), and pass it on.
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = DevNetwork {
            dir,
            child,
            lines,
            grpc: String::new(),
            console: String::new(),
            welcome: String::new(),
        };
        dev.welcome = dev
            .wait_for("Ctrl-C stops everything", Duration::from_secs(120))
            .await
            .join("\n");
        let url_after = |label: &str| -> String {
            dev.welcome
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no {label:?} line in:\n{}", dev.welcome))
                .to_owned()
        };
        dev.console = url_after("console");
        dev.grpc = url_after("hub").trim_start_matches("https://").to_owned();
        dev
    }

    /// The lines it prints from now until one contains `text` (that one included);
    /// fails the test with what it printed if none does within `timeout`.
    pub async fn wait_for(&mut self, text: &str, timeout: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(timeout, async {
            while let Some(line) = self.lines.recv().await {
                let done = line.contains(text);
                seen.push(line);
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(found, Ok(true)),
            "carrel-hub dev never printed {text:?}; it printed:\n{}",
            seen.join("\n")
        );
        seen
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("hub").join("pki").join("ca.crt")
    }

    /// Runs `carrel-hub` against this network as `user` (its own token file).
    pub fn cli(&self, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
        run_cli(
            std::process::Command::new(binary("carrel-hub")),
            &format!("https://{}", self.grpc),
            &self.ca_cert(),
            &self.dir.path().join(format!("token-{user}")),
            args,
            stdin,
        )
    }

    /// Signs `user` in for later [`DevNetwork::cli`] calls.
    pub fn login(&self, user: &str, password: &str) {
        let out = self.cli(user, &["login", "--user", user], Some(password));
        assert!(
            out.status.success(),
            "login {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a CLI command that must succeed; returns its standard output.
    pub fn cli_ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.cli(user, args, None);
        assert!(
            out.status.success(),
            "carrel-hub {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command that must fail; returns what it said on standard error.
    pub fn cli_refused(&self, user: &str, args: &[&str]) -> String {
        let out = self.cli(user, args, None);
        assert!(
            !out.status.success(),
            "carrel-hub {args:?} should have been refused: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Stops it as an operator would (SIGTERM) and answers how it exited.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stops within 30 s")
            .expect("exit status")
    }

    /// Stops it at once (SIGKILL).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

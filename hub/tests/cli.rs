//! The `carrel-hub` binary's command line: configuration checks, clear refusals,
//! and the operator commands that work on the hub machine's store.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carrel-hub"))
}

fn with_stdin(mut command: Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("output")
}

#[test]
fn example_config_parses() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/hub.example.toml");
    let out = hub()
        .args(["serve", "--dump-config", "--config", example])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("listen = \"0.0.0.0:7443\""));
}

#[test]
fn bad_config_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, "facility = \"12345\"\n").expect("write");
    let out = hub()
        .args(["serve", "--dump-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("facility \"12345\""));
}

#[test]
fn user_and_site_add_work_on_the_store_and_refuse_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let mut add = hub();
    add.args([
        "user",
        "add",
        "qa.one",
        "--role",
        "qa",
        "--full-name",
        "Q One",
        "--data-dir",
        data,
    ]);
    let out = with_stdin(add, "long-enough-password\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut again = hub();
    again.args([
        "user",
        "add",
        "qa.one",
        "--role",
        "qa",
        "--full-name",
        "Q One",
        "--data-dir",
        data,
    ]);
    let out = with_stdin(again, "long-enough-password\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let mut weak = hub();
    weak.args([
        "user",
        "add",
        "qa.two",
        "--role",
        "qa",
        "--full-name",
        "Q Two",
        "--data-dir",
        data,
    ]);
    let out = with_stdin(weak, "short\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12 characters"));

    let out = hub()
        .args(["site", "add", "site-a", "--name", "A", "--data-dir", data])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("carrel1.")),
        "{stdout}"
    );

    let out = hub()
        .args(["site", "add", "Site A!", "--name", "A", "--data-dir", data])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lower-case letters"));
}

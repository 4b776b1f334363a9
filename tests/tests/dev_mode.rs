//! `carrel-hub dev`, the README's first command, as a new user runs it: it comes up,
//! its simulated sites enroll and manufacture, a demo batch reaches QA release, and
//! it stops cleanly on SIGTERM.

use carrel_tests::binary;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_brings_a_demo_batch_to_qa_release_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(binary("carrel-hub"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
            "--demo-orders",
            "2",
            "--time-compression",
            "300000",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start carrel-hub dev");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let done = line.contains("first batch awaiting QA release");
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
        "no batch reached QA release; output:\n{}",
        seen.join("\n")
    );
    let text = seen.join("\n");
    for expected in [
        "Carrel dev network is up",
        "console    https://127.0.0.1:",
        "site consoles (technicians): site-a http://127.0.0.1:",
        "dr.ada",
        "qa.grace",
        "carrel-hub release list",
        "site-a",
        "site-b",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert_eq!(text.matches("Demo order ").count(), 2);
    // Both simulated sites enrolled with the hub's CA and got a certificate.
    for site in ["site-a", "site-b"] {
        assert!(
            dir.path().join(site).join("site.crt").exists(),
            "{site} enrolled"
        );
    }

    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stops within 30 s")
        .expect("exit status");
    assert!(exit.success(), "clean exit on SIGTERM, got {exit}");
}

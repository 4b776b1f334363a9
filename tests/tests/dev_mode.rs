//! `carrel-hub dev`, the README's first command, as a new user runs it: it comes up,
//! its simulated sites enroll and manufacture, a demo batch reaches QA release, and
//! it stops cleanly on SIGTERM.

use carrel_tests::dev::DevNetwork;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_brings_a_demo_batch_to_qa_release_and_stops_cleanly() {
    let mut dev = DevNetwork::start(&["--demo-orders", "2", "--time-compression", "300000"]).await;
    let after = dev
        .wait_for("first batch awaiting QA release", Duration::from_secs(90))
        .await;
    let text = format!("{}\n{}", dev.welcome, after.join("\n"));
    for expected in [
        "Carrel dev network is up",
        "console    https://127.0.0.1:",
        "site consoles (technicians): site-a http://127.0.0.1:",
        "dr.ada",
        "qa.grace",
        "carrel-hub release list",
        "site-a",
        "site-b",
        // A simulated history for the analytics pages, at sites of its own.
        "Seeded a simulated history for analytics: 160 past batches of cd19-car-t",
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
            dev.dir.path().join(site).join("site.crt").exists(),
            "{site} enrolled"
        );
    }
    let exit = dev.terminate().await;
    assert!(exit.success(), "clean exit on SIGTERM, got {exit}");
}

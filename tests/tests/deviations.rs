//! Deviations as a workflow: a technician raises one by hand at the site (the site
//! CLI, signed in), it reaches the hub as the site's record, and a major one stops
//! the batch's release until QA has investigated it (a note) and closed it with a
//! signed root cause and CAPA reference; every step is on the audit trail, and what
//! does not hold is refused with the reason and changes nothing.

use carrel_tests::scenario::{self, QA};
use carrel_tests::*;
use serde_json::Value;
use std::time::Duration;

const TOM: (&str, &str) = ("tech.tom", "tom-password-123");

fn raise(
    agent: &Agent,
    batch: &str,
    classification: &str,
    description: &str,
) -> std::process::Output {
    agent.cli(
        &[
            "deviation",
            "--batch",
            batch,
            "--classification",
            classification,
            "--description",
            description,
            "--step",
            "expansion",
            "--user",
            TOM.0,
        ],
        &format!("{}\n", TOM.1),
    )
}

fn deviations(hub: &Hub, batch: &str) -> Vec<Value> {
    hub.cli_json(QA.0, &["deviation", "list", "--batch", batch], None)
        .as_array()
        .expect("list")
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_deviation_at_the_site_stops_release_until_qa_closes_it() {
    let hub = Hub::start().await;
    scenario::add_people(&hub);
    let token = hub.add_site("site-d");
    let mut agent = Agent::enroll(&hub, "site-d", &token)
        .expect("enroll")
        .with_time_compression(200_000.0);
    agent.start();
    hub.add_person(TOM.0, "technician", TOM.1, "site-d");
    agent.wait_for_person(TOM.0, "active").await;
    let (order_id, batch) = scenario::create_order(&hub, "site-d", "P-8801");
    scenario::wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;

    // Refused at the site with the reason; nothing recorded.
    let out = raise(
        &agent,
        &batch,
        "serious",
        "the incubator door was left open overnight",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("minor, major or critical"));
    let out = raise(&agent, &batch, "major", "door open");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 4 words"));
    assert!(deviations(&hub, &batch).is_empty());

    // The technician raises a major deviation, in their name.
    let out = raise(
        &agent,
        &batch,
        "major",
        "the incubator door was found open for 40 minutes during expansion",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = eventually(Duration::from_secs(30), "the deviation at the hub", || {
        let list = deviations(&hub, &batch);
        async move { (!list.is_empty()).then_some(list) }
    })
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    let deviation = &found[0];
    let id = deviation["deviation_id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("MAN-1-"), "{id}");
    assert_eq!(deviation["raised_by"], TOM.0);
    assert_eq!(deviation["origin"], "site");
    assert_eq!(deviation["status"], "open");
    assert_eq!(deviation["classification"], "major");

    // Release is refused while it is open; the batch stays awaiting release.
    let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
    let sha = record["record_sha256"].as_str().expect("sha").to_owned();
    let exceptions = record["exceptions"].as_array().map_or(0, Vec::len);
    let mut args = vec![
        "release",
        "sign",
        &batch,
        "--meaning",
        "released",
        "--record-sha256",
        &sha,
        "--user",
        QA.0,
        "--acknowledge-signature-meaning",
    ];
    let justifications: Vec<String> = (1..=exceptions)
        .map(|i| format!("reviewed in this test scenario (exception {i})"))
        .collect();
    for j in &justifications {
        args.extend(["--justification", j.as_str()]);
    }
    let refused = hub.cli(QA.0, &args, Some(QA.1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        said.contains(&format!("open deviation(s) {id} (major)")),
        "{said}"
    );
    assert_eq!(scenario::order_state(&hub, &order_id), "awaiting_release");

    // Closing needs a root cause; a note needs words; both refused, nothing stored.
    let no_cause = hub.cli(
        QA.0,
        &[
            "deviation",
            "close",
            &batch,
            &id,
            "--root-cause",
            "n/a",
            "--user",
            QA.0,
        ],
        Some(QA.1),
    );
    assert!(String::from_utf8_lossy(&no_cause.stderr).contains("root cause"));
    let short = hub.cli(
        QA.0,
        &["deviation", "note", &batch, &id, "--text", "ok"],
        None,
    );
    assert!(!short.status.success());
    assert_eq!(
        deviations(&hub, &batch)[0]["notes"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    // QA investigates and closes it with a signature; then the batch is released.
    hub.cli_ok(
        QA.0,
        &[
            "deviation",
            "note",
            &batch,
            &id,
            "--text",
            "Door sensor log reviewed: 38 minutes open, temperature stayed in range",
        ],
        None,
    );
    let closed = hub.cli_json(
        QA.0,
        &[
            "deviation",
            "close",
            &batch,
            &id,
            "--root-cause",
            "Door latch worn; the alarm was muted during cleaning",
            "--capa",
            "CAPA-2026-117",
            "--user",
            QA.0,
            "--acknowledge-signature-meaning",
        ],
        Some(QA.1),
    );
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["closed_by"], QA.0);
    assert_eq!(closed["capa_ref"], "CAPA-2026-117");
    assert_eq!(closed["notes"].as_array().map(Vec::len), Some(1));
    let again = hub.cli(
        QA.0,
        &[
            "deviation",
            "close",
            &batch,
            &id,
            "--root-cause",
            "Closing it a second time here",
            "--user",
            QA.0,
        ],
        Some(QA.1),
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("closed already"));
    scenario::sign_release(&hub, &batch);
    assert_eq!(scenario::order_state(&hub, &order_id), "released");

    // The trail names who did each step.
    let trail = hub.cli_ok("admin", &["audit", "list", "--batch", &batch], None);
    for (action, who) in [("deviation.note_added", QA.0), ("deviation.closed", QA.0)] {
        assert!(
            trail.lines().any(|l| l.contains(action) && l.contains(who)),
            "{action} by {who}:\n{trail}"
        );
    }
    agent.kill();
}

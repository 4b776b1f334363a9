//! Master batch records under change control, through the CLI as QA people use it:
//! a new version is drafted from TOML (a broken one is refused with the reason), its
//! changes are shown, it is dry-run on the hub's simulator site (a whole batch whose
//! record is kept like any other and is never released), its author submits it with
//! a signature, the author may not approve it, another QA person does, and the next
//! order pins it while an order placed before keeps the version it pinned.

use carrel_tests::scenario::{self, QA};
use carrel_tests::*;
use serde_json::Value;

const SECOND_QA: (&str, &str) = ("qa.second", "second-qa-password-1");

fn sign(
    hub: &Hub,
    who: (&str, &str),
    what: &str,
    sha: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "recipe",
        what,
        "cd19-car-t",
        "2",
        "--sha256",
        sha,
        "--user",
        who.0,
        "--acknowledge-signature-meaning",
        "--json",
    ];
    args.extend_from_slice(extra);
    hub.cli(who.0, &args, Some(who.1))
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draft_is_dry_run_then_approved_by_a_second_person_and_pinned_by_the_next_order() {
    let hub = Hub::start_with("dry_run_simulator = true\n").await;
    scenario::add_people(&hub);
    hub.add_user(SECOND_QA.0, "qa", SECOND_QA.1);
    let token = hub.add_site("site-m");
    let mut agent = Agent::enroll(&hub, "site-m", &token).expect("enroll");
    agent.start();
    let (first_order, _) = scenario::create_order(&hub, "site-m", "P-9101");
    let work = tempfile::tempdir().expect("temp dir");
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hub/recipes/cd19-car-t.v1.toml"),
    )
    .expect("shipped recipe");

    // A draft that breaks a rule is refused with the reason; nothing is kept.
    let broken = work.path().join("broken.toml");
    std::fs::write(
        &broken,
        shipped.replacen("version = 1", "version = 2\nsurprise = true", 1),
    )
    .expect("write");
    let out = hub.cli(
        QA.0,
        &["recipe", "draft", broken.to_str().expect("path")],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("surprise"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = hub.cli_json(QA.0, &["recipe", "list"], None);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // The draft: collection takes 4 hours instead of 3; the diff says so.
    let v2 = work.path().join("v2.toml");
    std::fs::write(
        &v2,
        shipped.replacen("version = 1", "version = 2", 1).replacen(
            "duration_hours = 3.0",
            "duration_hours = 4.0",
            1,
        ),
    )
    .expect("write");
    let draft = hub.cli_json(QA.0, &["recipe", "draft", v2.to_str().expect("path")], None);
    assert_eq!(draft["state"], "draft");
    assert_eq!(draft["in_force_version"], 1);
    let changes = draft["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["what"], "step collection");
    assert!(
        changes[0]["after"]
            .as_str()
            .is_some_and(|a| a.contains("4 h")),
        "{changes:?}"
    );
    let sha = draft["sha256"].as_str().expect("sha").to_owned();

    // Before approval, the draft is dry-run on the hub's own simulator site (a real
    // site agent inside the hub process, over its mutual-TLS link): a whole batch.
    let run = hub.cli_json(
        QA.0,
        &["recipe", "dry-run", "cd19-car-t", "2", "--wait"],
        None,
    );
    assert_eq!(run["state"], "awaiting_release", "{run}");
    assert_eq!(run["recipe_sha256"], sha.as_str());
    assert_eq!(run["copy"], "cd19-car-t~dry-run-1");
    let batch = run["batch_id"].as_str().expect("batch").to_owned();
    // Its record is shown like any other, marked as a dry run: every step and
    // release test of v2, made by the simulator.
    let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
    assert_eq!(record["order"]["dry_run"], true, "{record}");
    assert_eq!(record["order"]["site_id"], "dry-run");
    let entries = record["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["kind"] == "batch accepted"
            && e["summary"].as_str().is_some_and(|s| s.contains("v2"))),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["summary"]
            .as_str()
            .is_some_and(|s| s.contains("after 4.0 h"))),
        "the collection step ran the draft's 4 hours: {entries:?}"
    );
    assert_eq!(
        record["qc"].as_array().map(Vec::len),
        Some(10),
        "every release test of the recipe: {record}"
    );
    // Never released, and not in QA's release queue.
    let refused = hub.cli(
        QA.0,
        &[
            "release",
            "sign",
            &batch,
            "--meaning",
            "released",
            "--record-sha256",
            record["record_sha256"].as_str().expect("sha"),
            "--user",
            QA.0,
            "--acknowledge-signature-meaning",
        ],
        Some(QA.1),
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("a dry run is never released"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let queue = hub.cli_json(QA.0, &["release", "list"], None);
    assert!(
        !queue.to_string().contains(&batch),
        "a dry run is not in the release queue: {queue}"
    );
    // Its archive copy says so too, and verifies like any other.
    let archive = work.path().join("dry-run-archive");
    let archive = archive.to_str().expect("path");
    hub.cli_ok(QA.0, &["release", "export", &batch, "--out", archive], None);
    let exported: Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("dry-run-archive/record.json"))
            .expect("record.json"),
    )
    .expect("JSON");
    assert_eq!(exported["dry_run"], true);
    assert!(hub
        .cli_ok(QA.0, &["release", "verify-export", archive], None)
        .contains("INTACT"));
    // The simulator site takes no patient's order and is qualified for nothing.
    let date = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    let refused = hub.cli(
        scenario::PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            "P-9199",
            "--site",
            "dry-run",
            "--collection-date",
            &date,
        ],
        None,
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("takes no patient's order"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let refused = hub.cli(
        QA.0,
        &[
            "site",
            "qualify",
            "dry-run",
            "cd19-car-t",
            "--reason",
            "Qualification run PQ-1 passed, report QR-0001",
            "--user",
            QA.0,
            "--acknowledge-signature-meaning",
        ],
        Some(QA.1),
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not qualified"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let shown = hub.cli_json(QA.0, &["recipe", "show", "cd19-car-t", "2"], None);
    assert_eq!(shown["dry_runs"][0]["batch_id"], batch.as_str(), "{shown}");
    assert_eq!(shown["dry_runs"][0]["of_current_draft"], true);

    // Submitted by its author; the author may not approve; the second QA person does.
    let submitted = json_of(&sign(&hub, QA, "submit", &sha, &[]));
    assert_eq!(submitted["state"], "submitted");
    let refused = sign(&hub, QA, "approve", &sha, &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("may not approve"));
    let approved = json_of(&sign(&hub, SECOND_QA, "approve", &sha, &[]));
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["approved_by"], SECOND_QA.0);

    // The next order pins v2; the first keeps v1.
    let (second_order, _) = scenario::create_order(&hub, "site-m", "P-9102");
    let version =
        |order: &str| order_show(&hub, scenario::PHYSICIAN.0, order)["recipe_version"].clone();
    assert_eq!(version(&second_order), 2);
    assert_eq!(version(&first_order), 1);
    let trail = hub.cli_ok("admin", &["audit", "list"], None);
    for (action, who) in [
        ("recipe.dry_run", QA.0),
        ("recipe.submitted", QA.0),
        ("recipe.approved", SECOND_QA.0),
    ] {
        assert!(
            trail.lines().any(|l| l.contains(action) && l.contains(who)),
            "{action} by {who}:\n{trail}"
        );
    }
    agent.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_products_are_made_side_by_side_each_to_its_own_recipe() {
    let hub = Hub::start().await;
    scenario::add_people(&hub);
    let token = hub.add_site("site-p");
    let mut agent = Agent::enroll(&hub, "site-p", &token)
        .expect("enroll")
        .with_time_compression(200_000.0);
    agent.start();
    let date = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    let order = |patient: &str, product: &str| {
        let o = hub.cli_json(
            scenario::PHYSICIAN.0,
            &[
                "order",
                "create",
                "--patient",
                patient,
                "--site",
                "site-p",
                "--collection-date",
                &date,
                "--product",
                product,
            ],
            None,
        );
        (
            str_field(&o, "order_id").to_owned(),
            str_field(&o, "batch_id").to_owned(),
        )
    };
    let (cd19, cd19_batch) = order("P-9201", "cd19-car-t");
    let (bcma, bcma_batch) = order("P-9202", "bcma-car-t");
    for id in [&cd19, &bcma] {
        scenario::wait_order_state(
            &hub,
            id,
            "awaiting_release",
            std::time::Duration::from_secs(120),
        )
        .await;
    }
    let tests_of = |batch: &str| -> Vec<String> {
        let record = hub.cli_json(QA.0, &["release", "show", batch], None);
        let mut ids: Vec<String> = record["qc"]
            .as_array()
            .expect("qc")
            .iter()
            .map(|q| q["test_id"].as_str().expect("test").to_owned())
            .collect();
        ids.sort();
        ids
    };
    let (a, b) = (tests_of(&cd19_batch), tests_of(&bcma_batch));
    assert!(
        a.contains(&"cd3".to_owned()) && !a.contains(&"potency".to_owned()),
        "{a:?}"
    );
    assert!(
        b.contains(&"potency".to_owned()) && !b.contains(&"cd3".to_owned()),
        "{b:?}"
    );
    let steps = |order: &str| order_show(&hub, scenario::PHYSICIAN.0, order)["product"].clone();
    assert_eq!(steps(&cd19), "cd19-car-t");
    assert_eq!(steps(&bcma), "bcma-car-t");
    // Both are released, each to its own record.
    scenario::sign_release(&hub, &cd19_batch);
    scenario::sign_release(&hub, &bcma_batch);
    assert_eq!(scenario::order_state(&hub, &bcma), "released");
    assert_eq!(scenario::order_state(&hub, &cd19), "released");
    agent.kill();
}

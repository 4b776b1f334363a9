//! Chain of identity and custody with real processes: technicians scan labels at
//! each checkpoint (no simulated operators here), signing in at the site with their
//! own passwords; a mismatch is a hard stop that QA sees first, two-person
//! verification is enforced, and a bedside match after release (the patient's
//! wristband, then the bag) closes the chain.

use carrel_proto::coi::Coi;
use carrel_tests::*;
use std::process::Output;
use std::time::Duration;

const PHYSICIAN: (&str, &str) = ("dr.coi", "physician-password-1");
const QA: (&str, &str) = ("qa.coi", "qa-password-12345");

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn site_count(agent: &Agent, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&agent.db().await)
        .await
        .expect(sql)
}

/// Waits until the agent waits at `checkpoint` (it says so in its log).
async fn wait_at_checkpoint(agent: &Agent, checkpoint: &str) {
    let needle = format!("checkpoint={checkpoint} ");
    eventually(
        Duration::from_secs(60),
        &format!("the batch to wait at {checkpoint}"),
        || {
            let found = agent
                .log()
                .lines()
                .any(|l| l.contains("waiting for the label scan") && l.contains(&needle));
            async move { found.then_some(()) }
        },
    )
    .await;
}

/// Each person's password in these tests.
fn password_of(username: &str) -> String {
    if username == PHYSICIAN.0 {
        return PHYSICIAN.1.to_owned();
    }
    format!("{}-password-1", username.to_lowercase().replace('.', "-"))
}

/// Adds people who work at `site_id` (a physician may be added already, then only
/// assigned) and waits until the site's directory has them.
async fn people_at(hub: &Hub, agent: &Agent, site_id: &str, people: &[(&str, &str)]) {
    for (username, role) in people {
        hub.add_person(username, role, &password_of(username), site_id);
    }
    for (username, _) in people {
        agent.wait_for_person(username, "active").await;
    }
}

/// A scan at the command line: the first person records it, the others verify; each
/// types their password (one line each on standard input), then the label is read.
fn scan(agent: &Agent, batch: &str, checkpoint: &str, label: &str, people: &[&str]) -> Output {
    let passwords: Vec<String> = people.iter().map(|p| password_of(p)).collect();
    scan_typing(agent, batch, checkpoint, None, label, people, &passwords)
}

/// A scan at the bedside: the patient's wristband first, then the bag's label.
fn bedside(
    agent: &Agent,
    batch: &str,
    checkpoint: &str,
    wristband: &str,
    label: &str,
    people: &[&str],
) -> Output {
    let passwords: Vec<String> = people.iter().map(|p| password_of(p)).collect();
    scan_typing(
        agent,
        batch,
        checkpoint,
        Some(wristband),
        label,
        people,
        &passwords,
    )
}

fn scan_typing(
    agent: &Agent,
    batch: &str,
    checkpoint: &str,
    wristband: Option<&str>,
    label: &str,
    people: &[&str],
    passwords: &[String],
) -> Output {
    let mut args = vec![
        "scan",
        "--batch",
        batch,
        "--checkpoint",
        checkpoint,
        "--location",
        "clean room 2",
        "--user",
        people[0],
    ];
    for v in &people[1..] {
        args.push("--second-user");
        args.push(v);
    }
    let mut stdin = String::new();
    for password in passwords {
        stdin.push_str(password);
        stdin.push('\n');
    }
    if let Some(wristband) = wristband {
        stdin.push_str(&format!("{wristband}\r\n"));
    }
    stdin.push_str(&format!("{label}\r\n"));
    agent.cli(&args, &stdin)
}

/// A QC result or correction at the command line, as `user` (password on stdin).
fn as_person(agent: &Agent, user: &str, args: &[&str]) -> Output {
    let mut args = args.to_vec();
    args.extend(["--user", user]);
    agent.cli(&args, &format!("{}\n", password_of(user)))
}

#[tokio::test(flavor = "multi_thread")]
async fn custody_scans_gate_every_step_and_a_bedside_match_closes_the_chain() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-c");
    let mut agent = Agent::enroll(&hub, "site-c", &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    agent.configure(&["simulator", "auto_scan"], false.into());
    agent.start();
    hub.assign(PHYSICIAN.0, "site-c");
    people_at(
        &hub,
        &agent,
        "site-c",
        &[
            ("tech.a", "technician"),
            ("tech.b", "technician"),
            ("nurse.n", "technician"),
        ],
    )
    .await;
    agent.wait_for_person(PHYSICIAN.0, "active").await;
    let date = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let order = hub.cli_json(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            "P-9001",
            "--site",
            "site-c",
            "--collection-date",
            &date,
        ],
        None,
    );
    let other = hub.cli_json(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            "P-9002",
            "--site",
            "site-c",
            "--collection-date",
            &date,
        ],
        None,
    );
    let order_id = str_field(&order, "order_id").to_owned();
    let batch = str_field(&order, "batch_id").to_owned();
    let coi = Coi::parse(str_field(&order, "coi")).expect("COI");
    let other_coi = str_field(&other, "coi").to_owned();
    let label = coi.barcode_data();

    wait_at_checkpoint(&agent, "collection").await;
    let started = "SELECT COUNT(*) FROM events WHERE kind = 'step_started'";
    assert_eq!(
        site_count(&agent, started).await,
        0,
        "nothing starts before the first scan"
    );

    // Refusals that record nothing: unreadable label, wrong checkpoint, the same
    // person twice, too few verifiers.
    let scans = "SELECT COUNT(*) FROM events WHERE kind = 'custody_scan'";
    let cases = [
        (
            scan(
                &agent,
                &batch,
                "collection",
                "=G1234",
                &["tech.a", "tech.b"],
            ),
            "could not be read",
        ),
        (
            scan(&agent, &batch, "receipt", &label, &["tech.a", "tech.b"]),
            "waits at checkpoint \"collection\"",
        ),
        (
            scan(&agent, &batch, "collection", &label, &["tech.a", "TECH.A"]),
            "named twice",
        ),
        (
            scan(&agent, &batch, "collection", &label, &["tech.a"]),
            "needs 2 verifier(s), 1 given",
        ),
        (
            scan_typing(
                &agent,
                &batch,
                "collection",
                None,
                &label,
                &["tech.a", "tech.b"],
                &[password_of("tech.a"), "not-their-password".into()],
            ),
            "wrong password for tech.b",
        ),
        (
            scan(
                &agent,
                &batch,
                "collection",
                &label,
                &["tech.a", "someone.else"],
            ),
            "no one called \"someone.else\" works at this site",
        ),
    ];
    for (out, words) in cases {
        assert!(!out.status.success());
        assert!(
            text(&out).contains(words),
            "expected {words:?} in {}",
            text(&out)
        );
    }
    assert_eq!(site_count(&agent, scans).await, 0);

    // Another patient's bag: a hard stop, recorded.
    let out = scan(
        &agent,
        &batch,
        "collection",
        &other_coi,
        &["tech.a", "tech.b"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("MISMATCH"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        site_count(&agent, started).await,
        0,
        "a mismatch does not start the step"
    );

    // The right bag, scanned as the scanner types it (AIM prefix, CR LF), two people.
    for checkpoint in ["collection", "receipt", "manufacturing-start", "fill"] {
        wait_at_checkpoint(&agent, checkpoint).await;
        let out = scan(
            &agent,
            &batch,
            checkpoint,
            &format!("]C0{label}"),
            &["tech.a", "tech.b"],
        );
        assert!(out.status.success(), "{checkpoint}: {}", text(&out));
        assert!(text(&out).contains("MATCH"));
    }

    // QA sees the mismatch first, and it is in the batch's audit trail.
    let shown = eventually(Duration::from_secs(60), "the record to be complete", || {
        let shown = order_show(&hub, PHYSICIAN.0, &order_id);
        async move { (shown["state"] == "awaiting_release").then_some(shown) }
    })
    .await;
    assert_eq!(str_field(&shown, "state"), "awaiting_release");
    // Not released yet: the bedside refuses the product.
    let out = bedside(&agent, &batch, "handover", "P-9001", &label, &["nurse.n"]);
    assert!(text(&out).contains("awaits QA release"), "{}", text(&out));
    // Each record names the person who signed in, with the full name the hub knows.
    let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
    assert!(
        record["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["by"] == "Test tech.a (tech.a) and Test tech.b (tech.b)"),
        "{record}"
    );

    let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
    let first = &record["exceptions"][0];
    assert_eq!(str_field(first, "kind"), "custody MISMATCH", "{record}");
    assert!(str_field(first, "summary").contains(&other_coi));
    let audit: Vec<&str> = record["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .map(|a| str_field(a, "action"))
        .collect();
    assert!(audit.contains(&"custody.mismatch"), "{audit:?}");
    assert!(audit.contains(&"order.created"));
    let sha = str_field(&record, "record_sha256").to_owned();
    // Releasing despite the mismatch needs a written justification of it.
    let out = hub.cli(
        QA.0,
        &[
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
        ],
        Some(QA.1),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("justification"), "{}", text(&out));
    let justifications: Vec<String> = record["exceptions"]
        .as_array()
        .expect("exceptions")
        .iter()
        .enumerate()
        .map(|(i, _)| {
            format!(
                "exception {} investigated: the right bag was found and scanned",
                i + 1
            )
        })
        .collect();
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
    for j in &justifications {
        args.extend(["--justification", j.as_str()]);
    }
    let signed = hub.cli_json(QA.0, &args, Some(QA.1));
    assert_eq!(
        signed["justifications"].as_array().map(Vec::len),
        Some(justifications.len()),
        "{signed}"
    );
    assert!(
        str_field(&signed["justifications"][0], "exception").contains("custody MISMATCH"),
        "{signed}"
    );

    // Bedside: hand-over, then the infusion with the wrong patient's label (stop),
    // then the right one with two people.
    eventually(
        Duration::from_secs(30),
        "the release to reach the site",
        || {
            let shown = order_show(&hub, PHYSICIAN.0, &order_id);
            async move { (shown["decision_recorded_at_site"] == true).then_some(()) }
        },
    )
    .await;
    // A suspended site hands nothing over, and says who suspended it and why; the
    // site keeps the reason while it cannot reach the hub, and forgets it only when
    // the hub accepts its link again.
    hub.ensure_admin();
    let scans = "SELECT COUNT(*) FROM events WHERE kind = 'custody_scan'";
    let before = site_count(&agent, scans).await;
    hub.cli_ok(
        "admin",
        &[
            "site",
            "suspend",
            "site-c",
            "--reason",
            "Clean room failed its particle count; requalify before any hand-over.",
        ],
        None,
    );
    let suspended = "SELECT COUNT(*) FROM link_state WHERE suspended_by = 'admin' \
                     AND suspension_reason LIKE 'Clean room failed%'";
    eventually(
        Duration::from_secs(30),
        "the site to learn it is suspended",
        || {
            let agent = &agent;
            async move { (site_count(agent, suspended).await == 1).then_some(()) }
        },
    )
    .await;
    let out = bedside(&agent, &batch, "handover", "P-9001", &label, &["nurse.n"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("suspended by admin")
            && text(&out).contains("Clean room failed its particle count")
            && text(&out).contains("hand-over to the patient is refused"),
        "{}",
        text(&out)
    );
    assert_eq!(
        site_count(&agent, scans).await,
        before,
        "a refusal records nothing"
    );
    let listed = hub.cli("admin", &["site", "list"], None);
    assert!(
        text(&listed).contains("by admin on") && text(&listed).contains("Clean room failed"),
        "{}",
        text(&listed)
    );
    hub.cli_ok(
        "admin",
        &[
            "site",
            "resume",
            "site-c",
            "--reason",
            "Requalified: particle counts within limits.",
        ],
        None,
    );
    let cleared = "SELECT COUNT(*) FROM link_state WHERE suspended_by IS NULL";
    eventually(
        Duration::from_secs(30),
        "the site to be accepted again",
        || {
            let agent = &agent;
            async move { (site_count(agent, cleared).await == 1).then_some(()) }
        },
    )
    .await;

    let out = bedside(
        &agent,
        &batch,
        "infusion",
        "P-9001",
        &label,
        &["nurse.n", "dr.coi"],
    );
    assert!(
        text(&out).contains("waits at checkpoint \"handover\""),
        "{}",
        text(&out)
    );
    // The patient is scanned first: without the wristband nothing is compared.
    let before = site_count(&agent, scans).await;
    let out = bedside(&agent, &batch, "handover", "", &label, &["nurse.n"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("scan the patient's wristband first"),
        "{}",
        text(&out)
    );
    // The other patient's wristband and bag agree with each other: this was the
    // wrong batch to scan against, and it says which one to open.
    let out = bedside(
        &agent,
        &batch,
        "handover",
        "P-9002",
        &other_coi,
        &["nurse.n"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("both for patient P-9002")
            && text(&out).contains("open that patient's batch"),
        "{}",
        text(&out)
    );
    assert_eq!(
        site_count(&agent, scans).await,
        before,
        "refusals record nothing"
    );
    let out = bedside(
        &agent,
        &batch,
        "handover",
        "]C0P-9001",
        &coi.eye_readable(),
        &["nurse.n"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The right bag at the wrong patient's bed: a hard stop.
    let out = bedside(
        &agent,
        &batch,
        "infusion",
        "P-9002",
        &label,
        &["nurse.n", "dr.coi"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = bedside(
        &agent,
        &batch,
        "infusion",
        "P-9001",
        &other_coi,
        &["nurse.n", "dr.coi"],
    );
    assert_eq!(out.status.code(), Some(3));
    // The wristband's COI barcode names the patient as well as the pseudonym does.
    let out = bedside(
        &agent,
        &batch,
        "infusion",
        &format!("]C0{label}"),
        &coi.to_string().to_lowercase(),
        &["nurse.n", "dr.coi"],
    );
    assert!(out.status.success(), "{}", text(&out));

    let closed = eventually(
        Duration::from_secs(30),
        "the chain of identity to close at the hub",
        || {
            let shown = order_show(&hub, PHYSICIAN.0, &order_id);
            async move { (shown["state"] == "infused").then_some(shown) }
        },
    )
    .await;
    let timeline: Vec<String> = closed["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|t| str_field(t, "what").to_owned())
        .collect();
    assert_eq!(
        timeline.iter().filter(|w| *w == "custody MISMATCH").count(),
        3,
        "{timeline:?}"
    );
    assert_eq!(timeline.last().map(String::as_str), Some("custody scan"));
    let agent_state: String = sqlx::query_scalar("SELECT state FROM batches WHERE batch_id = ?")
        .bind(&batch)
        .fetch_one(&agent.db().await)
        .await
        .expect("state");
    assert_eq!(agent_state, "infused");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrections_keep_the_original_and_an_oos_result_is_only_retested() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-d");
    let mut agent = Agent::enroll(&hub, "site-d", &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    agent.start();
    people_at(
        &hub,
        &agent,
        "site-d",
        &[("tech.a", "technician"), ("lab.l", "technician")],
    )
    .await;
    let date = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let order = hub.cli_json(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            "P-9101",
            "--site",
            "site-d",
            "--collection-date",
            &date,
        ],
        None,
    );
    let order_id = str_field(&order, "order_id").to_owned();
    let batch = str_field(&order, "batch_id").to_owned();
    eventually(Duration::from_secs(60), "the record to be complete", || {
        let shown = order_show(&hub, PHYSICIAN.0, &order_id);
        async move { (shown["state"] == "awaiting_release").then_some(()) }
    })
    .await;
    let db = agent.db().await;
    let step_seq: i64 = sqlx::query_scalar(
        "SELECT seq FROM events WHERE kind = 'step_completed' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .expect("a step record");
    let step_seq = step_seq.to_string();

    // A correction needs a reason; with one, it is a new record pointing at the old.
    let out = as_person(
        &agent,
        "tech.a",
        &[
            "correct", "--seq", &step_seq, "--field", "operator", "--value", "tech.b", "--reason",
            " ",
        ],
    );
    assert!(text(&out).contains("needs a reason"), "{}", text(&out));
    let out = as_person(
        &agent,
        "tech.a",
        &[
            "correct",
            "--seq",
            &step_seq,
            "--field",
            "operator",
            "--value",
            "tech.b",
            "--reason",
            "wrong badge scanned",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Endotoxin already has the simulator's result: a second one must say which
    // result it retests, and records nothing until it does.
    let first_seq: i64 = sqlx::query_scalar(
        "SELECT seq FROM events WHERE kind = 'qc_result' AND body LIKE '%\"endotoxin\"%' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .expect("the simulator's endotoxin result");
    let results_before: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'qc_result'")
            .fetch_one(&db)
            .await
            .expect("count");
    let endotoxin = [
        "qc",
        "--batch",
        &batch,
        "--test",
        "endotoxin",
        "--value",
        "0.9",
    ];
    let out = as_person(&agent, "lab.l", &endotoxin);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("already has a result (record {first_seq}: "))
            && text(&out).contains(&format!("--retest-of {first_seq}")),
        "{}",
        text(&out)
    );
    let results_after: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'qc_result'")
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(results_after, results_before, "nothing recorded");

    // An out-of-specification result cannot be corrected, only retested.
    let first = first_seq.to_string();
    let out = as_person(
        &agent,
        "lab.l",
        &[endotoxin.as_slice(), &["--retest-of", &first]].concat(),
    );
    assert!(
        text(&out).contains("OUT OF SPECIFICATION"),
        "{}",
        text(&out)
    );
    let oos_seq: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE kind = 'qc_result'")
        .fetch_one(&db)
        .await
        .expect("oos seq");
    let oos_seq = oos_seq.to_string();
    let out = as_person(
        &agent,
        "lab.l",
        &[
            "correct", "--seq", &oos_seq, "--field", "value", "--value", "0.1", "--reason", "typo",
        ],
    );
    assert!(
        text(&out).contains("never corrected or overwritten"),
        "{}",
        text(&out)
    );
    let out = as_person(
        &agent,
        "lab.l",
        &[
            "qc",
            "--batch",
            &batch,
            "--test",
            "endotoxin",
            "--value",
            "abc",
        ],
    );
    assert!(text(&out).contains("is not a number"), "{}", text(&out));
    let out = as_person(
        &agent,
        "lab.l",
        &[
            "qc",
            "--batch",
            &batch,
            "--test",
            "endotoxin",
            "--value",
            "0.12",
            "--retest-of",
            &oos_seq,
        ],
    );
    assert!(
        text(&out).contains("within specification"),
        "{}",
        text(&out)
    );

    // At the hub: the correction, the OOS result and its retest are all there, the
    // correction and the OOS result among the exceptions, the correction's reason
    // in the audit trail.
    let record = eventually(
        Duration::from_secs(30),
        "the hub to receive the manual records",
        || {
            let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
            async move { (record["qc"].as_array().map(Vec::len) == Some(12)).then_some(record) }
        },
    )
    .await;
    let kinds: Vec<&str> = record["exceptions"]
        .as_array()
        .expect("exceptions")
        .iter()
        .map(|e| str_field(e, "kind"))
        .collect();
    assert!(kinds.contains(&"correction"), "{kinds:?}");
    assert!(kinds.contains(&"QC result"), "{kinds:?}");
    let endotoxin: Vec<&str> = record["qc"]
        .as_array()
        .expect("qc")
        .iter()
        .filter(|q| q["test_id"] == "endotoxin")
        .map(|q| str_field(q, "hub_outcome"))
        .collect();
    assert_eq!(
        endotoxin,
        vec!["pass", "out_of_specification", "pass"],
        "original, OOS, retest: none overwritten"
    );
    let counts: Vec<&str> = record["qc"]
        .as_array()
        .expect("qc")
        .iter()
        .filter(|q| q["test_id"] == "endotoxin")
        .map(|q| str_field(q, "counts"))
        .collect();
    assert_eq!(
        counts,
        vec!["retested", "retested", "reportable"],
        "the last retest is the reportable value"
    );
    assert!(
        !record["exceptions"]
            .as_array()
            .expect("exceptions")
            .iter()
            .any(|e| str_field(e, "kind").contains("without a retest link")),
        "linked retests are no repeat"
    );
    let corrected = record["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .find(|a| a["action"] == "record.corrected")
        .expect("the correction is audited");
    assert_eq!(str_field(corrected, "reason"), "wrong badge scanned");
    assert_eq!(str_field(corrected, "actor"), "tech.a");
}

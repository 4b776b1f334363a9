//! The end-to-end slice with real processes: enrollment, an order reaching QA
//! release, the decision recorded at the site, and both logs identical at the end.

use carrel_proto::coi::Coi;
use carrel_tests::*;
use std::time::Duration;

const PHYSICIAN: (&str, &str) = ("dr.who", "physician-password-1");
const QA: (&str, &str) = ("qa.one", "qa-password-123");

fn collection_date() -> String {
    (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string()
}

/// A hub with a physician, a QA user and one enrolled, running site.
async fn network(site_id: &str, time_compression: f64) -> (Hub, Agent) {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site(site_id);
    let mut agent = Agent::enroll(&hub, site_id, &token)
        .expect("enrollment")
        .with_time_compression(time_compression);
    agent.start();
    (hub, agent)
}

fn create_order(hub: &Hub, patient: &str, site_id: &str) -> serde_json::Value {
    hub.cli_json(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            patient,
            "--site",
            site_id,
            "--collection-date",
            &collection_date(),
        ],
        None,
    )
}

async fn wait_for_state(
    hub: &Hub,
    order_id: &str,
    state: &str,
    timeout: Duration,
) -> serde_json::Value {
    eventually(timeout, &format!("order {order_id} to be {state}"), || {
        let shown = order_show(hub, PHYSICIAN.0, order_id);
        async move { (str_field(&shown, "state") == state).then_some(shown) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_gives_the_site_a_certificate_and_a_token_works_once() {
    let hub = Hub::start().await;
    let token = hub.add_site("site-a");
    let agent = Agent::enroll(&hub, "site-a", &token).expect("first enrollment succeeds");

    // The certificate names the site, and the hub recorded that certificate.
    let pem = std::fs::read_to_string(agent.data_dir().join("site.crt")).expect("site certificate");
    let der = carrel_site_agent::tls::certs_from_pem(&pem)
        .expect("PEM")
        .remove(0);
    assert_eq!(
        carrel_proto::enrollment::site_id_of(der.as_ref()).as_deref(),
        Some("site-a")
    );
    let db = hub.db().await;
    let (status, cert_sha): (String, Option<String>) =
        sqlx::query_as("SELECT status, cert_sha256 FROM sites WHERE site_id = 'site-a'")
            .fetch_one(&db)
            .await
            .expect("site row");
    assert_eq!(status, "active");
    assert_eq!(
        cert_sha.as_deref(),
        Some(carrel_site_agent::tls::fingerprint(der.as_ref()).as_str())
    );

    // The same token again is refused, and nothing is written to the second directory.
    let second = tempfile::tempdir().expect("tempdir");
    let out = enroll_into(&hub, &token, second.path()).expect("run enroll");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already used"), "{stderr}");
    assert!(!second.path().join("site.crt").exists());
    assert!(!second.path().join("site.key").exists());

    // A malformed token is refused before anything is sent.
    let out = enroll_into(&hub, "carrel1.nonsense", second.path()).expect("run enroll");
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed"));

    // A token that pins another CA: the agent refuses the hub during the TLS handshake,
    // so the token stays usable for the real hub.
    let token_b = hub.add_site("site-b");
    let mut parts: Vec<&str> = token_b.split('.').collect();
    let other_ca = "0".repeat(64);
    parts[2] = &other_ca;
    let out = enroll_into(&hub, &parts.join("."), second.path()).expect("run enroll");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not present the CA"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Agent::enroll(&hub, "site-b", &token_b).expect("the real token still works");

    let refused: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'site.enrollment_refused'",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(
        refused, 1,
        "the reused token is logged as a refused enrollment"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn order_reaches_release_and_the_site_records_the_decision() {
    let (hub, agent) = network("site-a", 200_000.0).await;
    let order = create_order(&hub, "P-1001", "site-a");
    let order_id = str_field(&order, "order_id").to_owned();
    let batch_id = str_field(&order, "batch_id").to_owned();
    Coi::parse(str_field(&order, "coi")).expect("the order carries a valid COI");
    assert_eq!(str_field(&order, "state"), "ordered");

    wait_for_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;

    // QA reviews the record: every QC result evaluated at the hub, nothing exceptional.
    let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let sha = str_field(&record, "record_sha256").to_owned();
    let qc = record["qc"].as_array().expect("qc results");
    assert_eq!(qc.len(), 10, "2 in-process + 8 release tests");
    assert!(qc.iter().all(|q| q["hub_outcome"] == "pass"), "{qc:?}");
    assert!(record["exceptions"]
        .as_array()
        .expect("exceptions")
        .is_empty());

    // A wrong password makes no signature and is logged.
    let out = hub.cli(
        QA.0,
        &[
            "release",
            "sign",
            &batch_id,
            "--meaning",
            "released",
            "--record-sha256",
            &sha,
            "--user",
            QA.0,
            "--acknowledge-signature-meaning",
        ],
        Some("not-my-password"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));
    let db = hub.db().await;
    let signatures: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signatures")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(signatures, 0);
    let failed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'release.signing_failed'",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(failed, 1);
    assert_eq!(
        str_field(&order_show(&hub, PHYSICIAN.0, &order_id), "state"),
        "awaiting_release"
    );

    // The signature, with its manifestation.
    let signed = hub.cli_json(
        QA.0,
        &[
            "release",
            "sign",
            &batch_id,
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
    let manifestation = str_field(&signed, "manifestation");
    assert!(
        manifestation.starts_with("Released by Test qa.one (qa.one) on "),
        "{manifestation}"
    );
    assert_eq!(str_field(&signed, "record_sha256"), sha);

    // The decision reaches the site, which records it and replicates the record back.
    let shown = eventually(
        Duration::from_secs(30),
        "the site to record the decision",
        || {
            let shown = order_show(&hub, PHYSICIAN.0, &order_id);
            async move { (shown["decision_recorded_at_site"] == true).then_some(shown) }
        },
    )
    .await;
    assert_eq!(str_field(&shown, "state"), "released");
    let agent_db = agent.db().await;
    let (state, decision): (String, Option<String>) =
        sqlx::query_as("SELECT state, decision FROM batches WHERE batch_id = ?")
            .bind(&batch_id)
            .fetch_one(&agent_db)
            .await
            .expect("local batch");
    assert_eq!(
        (state.as_str(), decision.as_deref()),
        ("released", Some("released"))
    );

    // Signing again is an invalid transition.
    let now = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let out = hub.cli(
        QA.0,
        &[
            "release",
            "sign",
            &batch_id,
            "--meaning",
            "rejected",
            "--reason",
            "again",
            "--record-sha256",
            str_field(&now, "record_sha256"),
            "--user",
            QA.0,
        ],
        Some(QA.1),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not awaiting release") && stderr.contains("FailedPrecondition"),
        "{stderr}"
    );

    // Both logs are the same, record for record.
    let site_log = agent_events(&agent_db).await;
    let hub_log = eventually(
        Duration::from_secs(10),
        "the hub to hold the whole site log",
        || {
            let db = db.clone();
            let want = site_log.len();
            async move {
                let log = hub_events(&db, "site-a").await;
                (log.len() == want).then_some(log)
            }
        },
    )
    .await;
    assert_same_log(&hub_log, &site_log);
    println!("events moved site -> hub: {}", site_log.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_at_the_site_reach_qa_as_exceptions_and_qa_rejects() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-f");
    let mut agent = Agent::enroll(&hub, "site-f", &token)
        .expect("enrollment")
        .with_time_compression(200_000.0);
    agent.configure(&["simulator", "faults", "contamination"], true.into());
    agent.configure(
        &["simulator", "faults", "alarm_at_step"],
        "activation".into(),
    );
    agent.start();
    let order = create_order(&hub, "P-6001", "site-f");
    let order_id = str_field(&order, "order_id").to_owned();
    let batch_id = str_field(&order, "batch_id").to_owned();
    wait_for_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;

    let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let oos: Vec<&str> = record["qc"]
        .as_array()
        .expect("qc")
        .iter()
        .filter(|q| q["hub_outcome"] == "out_of_specification")
        .map(|q| q["test_id"].as_str().expect("test id"))
        .collect();
    assert_eq!(
        oos,
        vec!["sterility", "endotoxin"],
        "contamination fails exactly these at the hub too"
    );
    let exceptions: Vec<String> = record["exceptions"]
        .as_array()
        .expect("exceptions")
        .iter()
        .map(|e| str_field(e, "kind").to_owned())
        .collect();
    for kind in ["instrument alarm", "deviation raised", "QC result"] {
        assert!(
            exceptions.iter().any(|k| k == kind),
            "{kind} missing from exceptions {exceptions:?}"
        );
    }

    let out = hub.cli(
        QA.0,
        &["release", "sign", &batch_id, "--meaning", "rejected"],
        Some(QA.1),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("a rejection needs a reason"));
    // Signed as a person at a terminal does: the CLI shows the exceptions and the
    // hash, and asks to confirm, for the user name, the password, and (at this
    // person's first signature) the acknowledgement of what it means.
    let out = hub.cli(
        QA.0,
        &[
            "release",
            "sign",
            &batch_id,
            "--meaning",
            "rejected",
            "--reason",
            "sterility failed (growth detected)",
        ],
        Some(&format!("yes\n{}\n{}\nyes", QA.0, QA.1)),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("exception 1:"), "{said}");
    assert!(said.contains(str_field(&record, "record_sha256")), "{said}");
    assert!(said.contains("legally binding equivalent"), "{said}");
    eventually(
        Duration::from_secs(30),
        "the site to record the rejection",
        || {
            let shown = order_show(&hub, PHYSICIAN.0, &order_id);
            async move {
                (shown["decision_recorded_at_site"] == true && shown["state"] == "rejected")
                    .then_some(())
            }
        },
    )
    .await;
    let decision: Option<String> =
        sqlx::query_scalar("SELECT decision FROM batches WHERE batch_id = ?")
            .bind(&batch_id)
            .fetch_one(&agent.db().await)
            .await
            .expect("local batch");
    assert_eq!(decision.as_deref(), Some("rejected"));
}

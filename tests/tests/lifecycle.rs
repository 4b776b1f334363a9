//! A site's life at the control site, with real processes: the hub CA rotated while a
//! batch runs (each site renews its certificate over its link and keeps working), a
//! suspension that flags the running batch for QA, and a site that ceases for good
//! while its records stay readable and verifiable.

use carrel_proto::pb::hub_message;
use carrel_tests::raw_link::{hello, Credentials, OpenError, RawLink};
use carrel_tests::scenario::*;
use carrel_tests::*;
use std::time::Duration;

const ADMIN: (&str, &str) = ("admin.life", "admin-password-1234");

fn fingerprint_of_pem(pem: &str) -> String {
    let certs = carrel_site_agent::tls::certs_from_pem(pem).expect("PEM");
    carrel_site_agent::tls::fingerprint(certs[0].as_ref())
}

fn pem_count(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_rotation_renews_site_certificates_over_the_link_while_a_batch_runs() {
    let mut hub = Hub::start().await;
    add_people(&hub);
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    let token = hub.add_site("site-r");
    let mut agent = Agent::enroll(&hub, "site-r", &token)
        .expect("enroll")
        .with_time_compression(15_000.0);
    agent.configure(&["reconnect_max_ms"], 1_000.into());
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-r", "P-7001");
    wait_order_state(&hub, &order_id, "in_process", Duration::from_secs(30)).await;
    let hub_db = hub.db().await;
    let old_ca = std::fs::read_to_string(hub.ca_cert()).expect("CA");
    let old_identity = Credentials::of_agent(agent.data_dir());
    let old_cert_sha = fingerprint_of_pem(&old_identity.cert_pem);

    // Rotate on the hub machine and restart the hub with both CAs.
    let out = hub.cli_ok(ADMIN.0, &["ca", "rotate"], None);
    assert!(out.contains("New hub CA"), "{out}");
    hub.restart().await;
    let new_ca_sha = fingerprint_of_pem(&std::fs::read_to_string(hub.ca_cert()).expect("CA"));
    assert_ne!(new_ca_sha, fingerprint_of_pem(&old_ca));

    // The site (trusting only the old CA) still verifies the hub, is asked to renew,
    // renews over its link and reconnects with a certificate of the new CA.
    let renewed_sha = eventually(
        Duration::from_secs(30),
        "the site to use a certificate of the new CA",
        || {
            let db = hub_db.clone();
            let new_ca = new_ca_sha.clone();
            async move {
                let row: (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
                    "SELECT cert_sha256, cert_ca_sha256, pending_cert_sha256 FROM sites WHERE site_id = 'site-r'",
                )
                .fetch_one(&db)
                .await
                .ok()?;
                (row.1.as_deref() == Some(new_ca.as_str()) && row.2.is_none()).then_some(row.0?)
            }
        },
    )
    .await;
    assert_ne!(renewed_sha, old_cert_sha);
    let identity = Credentials::of_agent(agent.data_dir());
    assert_eq!(fingerprint_of_pem(&identity.cert_pem), renewed_sha);
    assert_eq!(
        pem_count(&identity.ca_pem),
        2,
        "the site trusts both CAs during the overlap"
    );
    assert!(agent.log().contains("site certificate renewed"));
    assert_eq!(
        count(
            &hub_db,
            "SELECT COUNT(*) FROM audit_log WHERE action IN ('ca.rotated', 'site.certificate_issued', 'site.certificate_replaced')"
        )
        .await,
        3
    );

    // The old certificate is no longer the site's.
    match RawLink::open_with(&hub, &old_identity, hello()).await {
        Ok(mut link) => match link.next().await {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::PermissionDenied);
                assert!(
                    status.message().contains("not the one issued"),
                    "{status:?}"
                );
            }
            Ok(message) => panic!("the replaced certificate was accepted: {message:?}"),
        },
        Err(OpenError::Status(status)) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}")
        }
        Err(other) => panic!("expected a refusal by the hub, got {other:?}"),
    }

    // The batch never stopped: it reaches QA, is released, and the site hears of it.
    wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;
    sign_release(&hub, &batch_id);
    let agent_db = agent.db().await;
    eventually(
        Duration::from_secs(30),
        "the release to reach the site",
        || {
            let db = agent_db.clone();
            let batch = batch_id.clone();
            async move { (site_batch_state(&db, &batch).await == "released").then_some(()) }
        },
    )
    .await;
    let checked = assert_hub_has_the_site_log(&hub, &agent, Duration::from_secs(30)).await;

    // Every site renewed: the previous CA is retired, and the site still connects.
    let status = hub.cli_ok(ADMIN.0, &["ca", "status"], None);
    assert!(status.contains("site-r"), "{status}");
    assert!(status.contains("current CA"), "{status}");
    hub.cli_ok(ADMIN.0, &["ca", "retire-previous"], None);
    let opened = occurrences(&hub.log(), "site link open");
    hub.restart().await;
    wait_log(
        "the hub",
        || hub.log(),
        "site link open",
        opened,
        Duration::from_secs(30),
    )
    .await;
    // A certificate of the retired CA fails at the handshake now.
    match RawLink::open_with(&hub, &old_identity, hello()).await {
        Err(OpenError::Connect(_)) => {}
        Err(OpenError::Status(status)) => assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Unauthenticated
            ),
            "{status:?}"
        ),
        Ok(mut link) => {
            let answer = link.next().await;
            assert!(
                answer.is_err(),
                "a certificate of the retired CA was accepted: {answer:?}"
            );
        }
    }
    println!(
        "CA rotation: site renewed over its link while its batch ran; {checked} events checked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn suspension_flags_the_running_batch_and_a_ceased_site_keeps_its_records() {
    let hub = Hub::start().await;
    add_people(&hub);
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    let token = hub.add_site("site-c");
    let mut agent = Agent::enroll(&hub, "site-c", &token)
        .expect("enroll")
        .with_time_compression(20_000.0);
    agent.configure(&["reconnect_max_ms"], 1_000.into());
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-c", "P-7002");
    wait_order_state(&hub, &order_id, "in_process", Duration::from_secs(30)).await;
    let hub_db = hub.db().await;

    hub.cli_ok(
        ADMIN.0,
        &[
            "site",
            "suspend",
            "site-c",
            "--reason",
            "sterility breach in suite 2",
        ],
        None,
    );
    // The running batch carries the suspension in its record, for QA to decide on.
    let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let text = record["exceptions"].to_string();
    assert!(
        text.contains("site suspended while this batch was running"),
        "{text}"
    );
    assert!(text.contains("sterility breach in suite 2"), "{text}");

    // The site is told who suspended it and why when its link is refused; the step
    // under way goes on, the next one does not start.
    let refused = eventually(
        Duration::from_secs(30),
        "the site to hold its next step",
        || {
            let log = agent.log();
            async move {
                log.lines()
                    .find(|l| l.contains("step not started: this site is suspended by admin"))
                    .map(str::to_owned)
            }
        },
    )
    .await;
    assert!(refused.contains("sterility breach in suite 2"), "{refused}");
    let steps_started = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM events WHERE kind = 'step_started'")
            .fetch_one(&agent.db().await)
            .await
            .expect("count")
    };
    let held = steps_started().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        steps_started().await,
        held,
        "no step starts while suspended"
    );

    // Ceasing is refused while the batch is open, and says which batch.
    let out = hub.cli(
        ADMIN.0,
        &["site", "cease", "site-c", "--reason", "programme closed"],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open batch"), "{stderr}");
    // Named by its COI, as people know it; never by the internal batch id.
    let coi = order_show(&hub, PHYSICIAN.0, &order_id)["coi"]
        .as_str()
        .expect("coi")
        .to_owned();
    assert!(stderr.contains(&format!("COI {coi}")), "{stderr}");
    assert!(!stderr.contains(&batch_id), "{stderr}");

    // Cancelled, the batch closes; then the site ceases for good.
    hub.cli_ok(
        PHYSICIAN.0,
        &[
            "order",
            "cancel",
            &order_id,
            "--reason",
            "the site is closing its programme",
        ],
        None,
    );
    hub.cli_ok(
        ADMIN.0,
        &["site", "cease", "site-c", "--reason", "programme closed"],
        None,
    );
    let listed = hub.cli_json(ADMIN.0, &["site", "list"], None);
    let site = listed
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["site_id"] == "site-c")
        .expect("the ceased site is still listed");
    assert_eq!(site["status"], "SITE_STATUS_CEASED");
    let resumed = hub.cli(
        ADMIN.0,
        &["site", "resume", "site-c", "--reason", "changed our mind"],
        None,
    );
    assert!(!resumed.status.success(), "a ceased site cannot be resumed");
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("ceased"));

    // It can no longer connect, and says why.
    eventually(
        Duration::from_secs(15),
        "the agent to be refused as ceased",
        || {
            let n = occurrences(&agent.log(), "has ceased");
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    match RawLink::open(&hub, agent.data_dir(), hello()).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(status.message().contains("has ceased"), "{status:?}");
        }
        Ok(mut link) => match link.next().await {
            Err(status) => assert_eq!(status.code(), tonic::Code::PermissionDenied),
            Ok(message) => match message.body {
                Some(hub_message::Body::Welcome(_)) => panic!("a ceased site was welcomed"),
                other => panic!("unexpected {other:?}"),
            },
        },
    }
    // Its records stay readable and the audit trail verifies.
    let shown = order_show(&hub, PHYSICIAN.0, &order_id);
    assert_eq!(str_field(&shown, "state"), "cancelled");
    let verify = hub.cli_ok(ADMIN.0, &["audit", "verify"], None);
    assert!(verify.contains("intact"), "{verify}");
    assert_eq!(
        count(
            &hub_db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'site.ceased' AND reason = 'programme closed'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &hub_db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'batch.flagged'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_request_is_answered_with_the_reason_and_changes_nothing() {
    let hub = Hub::start().await;
    let token = hub.add_site("site-q");
    let agent = Agent::enroll(&hub, "site-q", &token).expect("enroll");
    let db = hub.db().await;
    let (link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    let mut link = link;
    link.send(carrel_proto::pb::site_message::Body::CertificateRequest(
        carrel_proto::pb::CertificateRequest {
            csr_pem: "not a certificate signing request".into(),
        },
    ))
    .await;
    let answer = loop {
        match link
            .next()
            .await
            .expect("an answer, the link stays up")
            .body
        {
            Some(hub_message::Body::CertificateIssued(issued)) => break issued,
            Some(hub_message::Body::EventAck(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(answer.certificate_pem.is_empty());
    assert!(
        answer.error.contains("signing request is not valid"),
        "{answer:?}"
    );
    let pending: Option<String> =
        sqlx::query_scalar("SELECT pending_cert_sha256 FROM sites WHERE site_id = 'site-q'")
            .fetch_one(&db)
            .await
            .expect("site");
    assert_eq!(pending, None, "nothing was issued");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'site.certificate_issued'"
        )
        .await,
        0
    );
    // The link is still up: a heartbeat is answered in kind.
    link.send(carrel_proto::pb::site_message::Body::Heartbeat(
        carrel_proto::pb::Heartbeat {
            sent_at_unix_ms: 1,
            audit_head: None,
        },
    ))
    .await;
    assert!(link.inbound.message().await.expect("still up").is_some());
}

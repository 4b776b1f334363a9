//! Hostile and broken input from the network: certificates that are not the
//! hub's to accept, a site suspended while connected, messages too big or too
//! many, and fields that are unknown or missing. Each is refused with a clear
//! status, at the right moment, and changes nothing that is stored.

use carrel_proto::enrollment::SITE_URI_PREFIX;
use carrel_proto::event::EventKind;
use carrel_proto::pb;
use carrel_proto::pb::{hub_message, site_event, site_message};
use carrel_tests::raw_link::{events_body, hello, Credentials, OpenError, RawLink, SiteLog};
use carrel_tests::scenario::*;
use carrel_tests::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::time::{Duration, Instant};
use tonic::Code;
use uuid::Uuid;

const ADMIN: (&str, &str) = ("admin.fault", "admin-password-1234");

fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, words: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} ({words}), got {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(
                status.message().contains(words),
                "{:?} should mention {words:?}",
                status.message()
            );
        }
    }
}

/// A client certificate naming `site_id` as the hub's CA would, signed by `issuer`.
fn site_certificate(
    site_id: &str,
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
    valid: (i32, i32),
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, site_id);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Carrel site");
    params.subject_alt_names = vec![SanType::URI(
        format!("{SITE_URI_PREFIX}{site_id}")
            .try_into()
            .expect("ia5"),
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Valid from January 1st `valid.0` years from now to January 1st `valid.1` years from now.
    let year = chrono::Datelike::year(&chrono::Utc::now());
    params.not_before = rcgen::date_time_ymd(year + valid.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + valid.1, 1, 1);
    let cert = params
        .signed_by(&key, issuer, issuer_key)
        .expect("sign the certificate");
    (cert.pem(), key.serialize_pem())
}

/// The hub's own CA, as a test with access to its data directory can load it.
fn hub_ca(hub: &Hub) -> (rcgen::Certificate, KeyPair) {
    let pem = std::fs::read_to_string(hub.ca_cert()).expect("CA certificate");
    let key = KeyPair::from_pem(
        &std::fs::read_to_string(hub.data_dir().join("pki/ca.key")).expect("CA key"),
    )
    .expect("CA key");
    let issuer = CertificateParams::from_ca_cert_pem(&pem)
        .expect("CA params")
        .self_signed(&key)
        .expect("CA issuer");
    (issuer, key)
}

/// Does the TLS handshake with the hub with these credentials, then reads what
/// the hub sends first: its HTTP/2 settings when it accepted the certificate, or
/// the TLS alert with which it refused it (in TLS 1.3 the server judges the
/// client's certificate after the client has finished its side of the handshake,
/// so the refusal arrives as the first thing read).
async fn handshake(hub: &Hub, credentials: &Credentials) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = carrel_site_agent::tls::mtls_config(
        &credentials.ca_pem,
        &credentials.cert_pem,
        &credentials.key_pem,
    )
    .expect("TLS config");
    let tcp = tokio::net::TcpStream::connect(hub.addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut first)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Err("closed".into()),
        // An HTTP/2 frame header whose type is SETTINGS (4).
        Ok(Ok(_)) if first[3] == 4 => Ok(()),
        Ok(Ok(_)) => Err(format!("unexpected first bytes {first:?}")),
    }
}

/// Tries Sync with these credentials; returns how it was refused.
async fn refusal(hub: &Hub, credentials: &Credentials) -> String {
    match RawLink::open_with(hub, credentials, hello()).await {
        Err(OpenError::Connect(e)) => format!("connection refused: {e}"),
        Err(OpenError::Status(status)) => format!("{:?}: {}", status.code(), status.message()),
        Ok(mut link) => match link.next().await {
            Ok(message) => panic!("the hub accepted the link: {message:?}"),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_from_another_ca_expired_or_not_issued_to_the_site_are_refused() {
    let hub = Hub::start().await;
    let token = hub.add_site("site-a");
    let agent = Agent::enroll(&hub, "site-a", &token).expect("enroll"); // the test is the site
    let real = Credentials::of_agent(agent.data_dir());
    let db = hub.db().await;

    // The real credentials work (so what follows is refused for its certificate).
    let (link, welcome) = RawLink::hello(&hub, agent.data_dir()).await;
    assert_eq!(welcome.site_id, "site-a");
    drop(link);
    let contact: Option<String> =
        sqlx::query_scalar("SELECT last_contact_at FROM sites WHERE site_id = 'site-a'")
            .fetch_one(&db)
            .await
            .expect("contact");

    assert_eq!(
        handshake(&hub, &real).await,
        Ok(()),
        "the real certificate passes TLS"
    );

    // Another CA, with the same name as the hub's, issuing a certificate for site-a.
    let foreign_key = KeyPair::generate().expect("key");
    let mut foreign = CertificateParams::default();
    foreign
        .distinguished_name
        .push(DnType::CommonName, "Carrel hub CA");
    foreign.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    foreign.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let foreign = foreign.self_signed(&foreign_key).expect("foreign CA");
    let (cert_pem, key_pem) = site_certificate("site-a", &foreign, &foreign_key, (-1, 2));
    let from_another_ca = Credentials {
        ca_pem: real.ca_pem.clone(),
        cert_pem,
        key_pem,
    };
    let refused = handshake(&hub, &from_another_ca)
        .await
        .expect_err("refused");
    println!("another CA: {refused}");
    assert!(refused.contains("UnknownCA"), "{refused}");

    // Signed by the hub's own CA, but expired.
    let (issuer, issuer_key) = hub_ca(&hub);
    let (cert_pem, key_pem) = site_certificate("site-a", &issuer, &issuer_key, (-3, 0));
    let expired = Credentials {
        ca_pem: real.ca_pem.clone(),
        cert_pem,
        key_pem,
    };
    let refused = handshake(&hub, &expired).await.expect_err("refused");
    println!("expired: {refused}");
    assert!(refused.contains("CertificateExpired"), "{refused}");

    // Signed by the hub's CA and valid, but not the certificate issued to site-a at
    // its enrollment (a stolen CA key, or a leftover of an earlier enrollment):
    // through the handshake, refused at the first message.
    let (cert_pem, key_pem) = site_certificate("site-a", &issuer, &issuer_key, (-1, 2));
    let not_issued = Credentials {
        ca_pem: real.ca_pem.clone(),
        cert_pem,
        key_pem,
    };
    assert_eq!(handshake(&hub, &not_issued).await, Ok(()));
    let refused = refusal(&hub, &not_issued).await;
    println!("not issued to the site: {refused}");
    assert!(
        refused.starts_with("PermissionDenied")
            && refused.contains("not the one issued to site \"site-a\""),
        "{refused}"
    );
    // A certificate of the hub's CA for a site the hub does not know.
    let (cert_pem, key_pem) = site_certificate("site-zz", &issuer, &issuer_key, (-1, 2));
    let unknown_site = Credentials {
        ca_pem: real.ca_pem.clone(),
        cert_pem,
        key_pem,
    };
    let refused = refusal(&hub, &unknown_site).await;
    assert!(
        refused.starts_with("PermissionDenied")
            && refused.contains("site \"site-zz\" is not registered"),
        "{refused}"
    );
    // Both are refusals of authority, and audited under the site the certificate names.
    for (site, words) in [
        ("site-a", "not the one issued to site \"site-a\""),
        ("site-zz", "is not registered at this hub"),
    ] {
        let audited: Vec<String> = sqlx::query_scalar(
            "SELECT reason FROM audit_log WHERE action = 'site.link_refused' AND actor = ?",
        )
        .bind(site)
        .fetch_all(&db)
        .await
        .expect("audit");
        assert_eq!(audited.len(), 1, "{site}: {audited:?}");
        assert!(
            audited[0].contains(words) && audited[0].contains("certificate sha256 "),
            "{audited:?}"
        );
    }
    // Through the gRPC client too, the first two never reach an RPC.
    for credentials in [&from_another_ca, &expired] {
        let refused = refusal(&hub, credentials).await;
        assert!(
            [
                "Unknown:",
                "Cancelled:",
                "Unavailable:",
                "connection refused"
            ]
            .iter()
            .any(|w| refused.starts_with(w)),
            "a transport failure, not an answer of the service: {refused}"
        );
    }

    // None of them counted as contact from the site, or stored anything.
    let after: Option<String> =
        sqlx::query_scalar("SELECT last_contact_at FROM sites WHERE site_id = 'site-a'")
            .fetch_one(&db)
            .await
            .expect("contact");
    assert_eq!(after, contact);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM site_events").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_site_is_cut_off_at_once_refused_until_resumed_and_loses_nothing() {
    let hub = Hub::start().await;
    add_people(&hub);
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    let token = hub.add_site("site-x");
    let mut agent = Agent::enroll(&hub, "site-x", &token)
        .expect("enroll")
        .with_time_compression(40_000.0);
    agent.configure(&["reconnect_max_ms"], 1_000.into());
    agent.start();
    let (order_id, _) = create_order(&hub, "site-x", "P-9001");
    wait_order_state(&hub, &order_id, "in_process", Duration::from_secs(30)).await;
    let hub_db = hub.db().await;
    let agent_db = agent.db().await;

    let lost = occurrences(&agent.log(), "link to the hub lost");
    let opened = occurrences(&hub.log(), "site link open");
    let suspended_at = Instant::now();
    hub.cli_ok(
        ADMIN.0,
        &[
            "site",
            "suspend",
            "site-x",
            "--reason",
            "certificate reported stolen",
        ],
        None,
    );
    wait_log(
        "the agent",
        || agent.log(),
        "link to the hub lost",
        lost,
        Duration::from_secs(10),
    )
    .await;
    // An upper bound: it includes running the CLI and polling the log.
    let cut_off = suspended_at.elapsed();
    assert!(
        cut_off <= Duration::from_secs(2),
        "the live stream was closed {cut_off:?} after the suspension"
    );
    let acked = hub_acked(&hub_db, "site-x").await;
    let seq = last_seq(&agent_db).await;

    // Reconnections are refused, and say why; the site keeps recording.
    eventually(
        Duration::from_secs(15),
        "reconnections to be refused",
        || {
            let n = occurrences(&agent.log(), "is suspended");
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    assert!(last_seq(&agent_db).await > seq, "the site keeps recording");
    assert_eq!(
        hub_acked(&hub_db, "site-x").await,
        acked,
        "nothing is taken from a suspended site"
    );
    assert_eq!(
        occurrences(&hub.log(), "site link open"),
        opened,
        "no link of the suspended site was opened"
    );
    let refused = agent
        .log()
        .lines()
        .rfind(|l| l.contains("is suspended"))
        .unwrap_or_default()
        .to_owned();
    // The site is told who suspended it and why, and keeps it.
    assert!(refused.contains("certificate reported stolen"), "{refused}");
    assert_eq!(
        count(
            &agent_db,
            "SELECT COUNT(*) FROM link_state WHERE suspension_reason = 'certificate reported stolen'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &hub_db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'site.suspended' AND reason = 'certificate reported stolen'"
        )
        .await,
        1
    );

    // Resumed: everything recorded meanwhile arrives, once.
    hub.cli_ok(
        ADMIN.0,
        &[
            "site",
            "resume",
            "site-x",
            "--reason",
            "certificate recovered",
        ],
        None,
    );
    wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(60)).await;
    let moved = assert_hub_has_the_site_log(&hub, &agent, Duration::from_secs(30)).await;
    println!(
        "suspension: live stream closed {cut_off:?} after it; {} reconnections refused; {moved} events checked after resuming",
        occurrences(&agent.log(), "is suspended")
    );
}

/// A valid first event for `order`'s batch.
fn accepted(log: &mut SiteLog, batch_id: Uuid, coi: &str) -> pb::SiteEvent {
    pb::SiteEvent::from(&log.event(
        batch_id,
        chrono::Utc::now(),
        EventKind::BatchAccepted {
            coi: coi.into(),
            recipe_id: "cd19-car-t".into(),
            recipe_version: 1,
            recipe_sha256: "x".into(),
        },
    ))
}

async fn order_for(hub: &Hub, site: &str) -> (Uuid, String, String) {
    let (order_id, batch_id) = create_order(hub, site, "P-9101");
    let shown = order_show(hub, PHYSICIAN.0, &order_id);
    (
        Uuid::parse_str(&batch_id).expect("batch id"),
        str_field(&shown, "coi").to_owned(),
        order_id,
    )
}

/// Counts of every table a refused message could have touched.
async fn stored(db: &sqlx::SqlitePool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "site_events",
        "hub_commands",
        "orders",
        "batches",
        "qc_results",
        "signatures",
        "users",
    ] {
        counts.push(count(db, &format!("SELECT COUNT(*) FROM {table}")).await);
    }
    counts.push(count(db, "SELECT COALESCE(SUM(acked_event_seq), 0) FROM sites").await);
    counts
}

/// The hub's configured `max_message_bytes` in these tests: a quarter of tonic's
/// default (4 MiB), so that a message the default would take shows the setting applies.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// `template` with `grow` set to as many bytes as make `encoded_len` exactly `size`.
fn sized<T: Clone>(
    template: &T,
    size: usize,
    grow: impl Fn(&mut T, String),
    encoded_len: impl Fn(&T) -> usize,
) -> T {
    let mut n = size;
    for _ in 0..8 {
        let mut message = template.clone();
        grow(&mut message, "x".repeat(n));
        let len = encoded_len(&message);
        if len == size {
            return message;
        }
        n = (n + size).checked_sub(len).expect("room for the field");
    }
    panic!("cannot make a message of exactly {size} bytes");
}

/// The same counts, of what belongs to one site (others may be busy meanwhile).
async fn stored_at(db: &sqlx::SqlitePool, site: &str) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in ["site_events", "hub_commands", "batches", "qc_results"] {
        counts.push(
            count(
                db,
                &format!("SELECT COUNT(*) FROM {table} WHERE site_id = '{site}'"),
            )
            .await,
        );
    }
    for sql in [
        "SELECT COUNT(*) FROM users",
        "SELECT COUNT(*) FROM signatures",
        "SELECT COUNT(*) FROM orders",
    ] {
        counts.push(count(db, sql).await);
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_get_a_clear_status_and_store_nothing() {
    use prost::Message;
    let hub = Hub::start_with(&format!("max_message_bytes = {MAX_MESSAGE_BYTES}\n")).await;
    add_people(&hub);
    let token = hub.add_site("site-o");
    let agent = Agent::enroll(&hub, "site-o", &token).expect("enroll");
    let (batch_id, coi, _) = order_for(&hub, "site-o").await;
    let db = hub.db().await;
    let before = stored(&db).await;

    // More events in one message than the hub takes (in fewer bytes than it takes).
    let mut log = SiteLog::default();
    let first = accepted(&mut log, batch_id, &coi);
    let many: Vec<pb::SiteEvent> = (1..=1_001)
        .map(|seq| pb::SiteEvent {
            seq,
            ..first.clone()
        })
        .collect();
    let many_len = pb::SiteMessage {
        body: Some(events_body(many.clone())),
    }
    .encoded_len();
    assert!(many_len < MAX_MESSAGE_BYTES, "{many_len} bytes");
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    link.send(events_body(many)).await;
    assert_refused(
        link.next().await,
        Code::InvalidArgument,
        "1001 events in one message; at most 1000",
    );

    // One byte over the configured limit (and far below tonic's default of 4 MiB):
    // a site message of one event with a long field.
    let site_message = |event: &pb::SiteEvent| pb::SiteMessage {
        body: Some(events_body(vec![event.clone()])),
    };
    let event_of = |size: usize| {
        sized(
            &first,
            size,
            |event, text| event.recorded_by = text,
            |event| site_message(event).encoded_len(),
        )
    };
    let over = event_of(MAX_MESSAGE_BYTES + 1);
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    link.send(events_body(vec![over])).await;
    let status = link.next().await.expect_err("refused");
    println!(
        "site message of max_message_bytes + 1: {:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(
        status.message().contains("too large")
            && status
                .message()
                .contains(&format!("found {} bytes", MAX_MESSAGE_BYTES + 1))
            && status.message().contains(&MAX_MESSAGE_BYTES.to_string()),
        "names the size and the limit: {}",
        status.message()
    );

    // A 5 MB message: over tonic's default as well.
    let mut huge = first.clone();
    huge.recorded_by = "x".repeat(5 * 1024 * 1024);
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    link.send(events_body(vec![huge])).await;
    assert_refused(link.next().await, Code::OutOfRange, "too large");

    // The same limit on the people's API: one byte over is refused before it is
    // read; at the limit the request is read, and refused for what it says.
    let physician = hub.login(PHYSICIAN.0, PHYSICIAN.1).await.expect("login");
    let mut orders = pb::order_service_client::OrderServiceClient::new(hub.channel().await)
        .max_encoding_message_size(8 * MAX_MESSAGE_BYTES);
    let form = pb::CreateOrderRequest {
        patient_pseudonym: String::new(),
        product: "cd19-car-t".into(),
        site_id: "site-o".into(),
        requested_collection_date: "2099-01-01".into(),
        request_id: String::new(),
        confirm_second_order: false,
    };
    let order_of = |size: usize| {
        sized(
            &form,
            size,
            |form, text| form.patient_pseudonym = text,
            |form| form.encoded_len(),
        )
    };
    let status = orders
        .create_order(authed(&physician, order_of(MAX_MESSAGE_BYTES + 1)))
        .await
        .expect_err("refused");
    println!(
        "order of max_message_bytes + 1: {:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    assert_refused(
        orders
            .create_order(authed(&physician, order_of(MAX_MESSAGE_BYTES)))
            .await,
        Code::InvalidArgument,
        "The patient pseudonym must be 3 to 64",
    );
    assert_eq!(stored(&db).await, before, "nothing stored");

    // The hub is none the worse: the same site's record of exactly max_message_bytes
    // goes in.
    let at_limit = event_of(MAX_MESSAGE_BYTES);
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    link.send(events_body(vec![at_limit.clone()])).await;
    link.expect_ack(1).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM site_events").await, 1);
    let recorded_by: String = sqlx::query_scalar(
        "SELECT json_extract(body, '$.recorded_by') FROM site_events WHERE site_id = 'site-o'",
    )
    .fetch_one(&db)
    .await
    .expect("stored event");
    assert_eq!(recorded_by, at_limit.recorded_by);
}

/// The message rate limit the flood test configures.
const RATE: u32 = 50;
const BURST: u32 = 100;

fn heartbeat(n: u64) -> pb::SiteMessage {
    pb::SiteMessage {
        body: Some(site_message::Body::Heartbeat(pb::Heartbeat {
            sent_at_unix_ms: n,
            audit_head: None,
        })),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_heartbeats_changes_nothing_and_the_hub_stays_responsive() {
    let hub = Hub::start_with(&format!(
        "site_link_max_messages_per_second = {RATE}\nsite_link_message_burst = {BURST}\n"
    ))
    .await;
    add_people(&hub);
    let token = hub.add_site("site-f");
    let agent = Agent::enroll(&hub, "site-f", &token).expect("enroll");
    let (_, _, order_id) = order_for(&hub, "site-f").await;
    // Another site, manufacturing and replicating all along.
    let token = hub.add_site("site-g");
    let mut other = Agent::enroll(&hub, "site-g", &token)
        .expect("enroll")
        .with_time_compression(40_000.0);
    other.start();
    let (other_order, _) = create_order(&hub, "site-g", "P-9111");
    let physician = hub.login(PHYSICIAN.0, PHYSICIAN.1).await.expect("login");
    let db = hub.db().await;
    let other_db = other.db().await;
    wait_order_state(&hub, &other_order, "in_process", Duration::from_secs(30)).await;
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    let before = stored_at(&db, "site-f").await;
    let site_f_audit =
        "SELECT COUNT(*) FROM audit_log WHERE actor = 'site-f' OR object = 'site/site-f'";
    let audit_before = count(&db, site_f_audit).await;
    let site_before: (i64, i64, Option<String>) = sqlx::query_as(
        "SELECT acked_event_seq, acked_command_seq, last_contact_at FROM sites WHERE site_id = 'site-f'",
    )
    .fetch_one(&db)
    .await
    .expect("site");

    // Within the limit: more messages than the burst, at a rate below the limit,
    // and the link is still served.
    let paced_rate = RATE * 3 / 5;
    let paced = 3 * BURST / 2;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / paced_rate);
    for n in 0..u64::from(paced) {
        ticker.tick().await;
        link.out
            .send(heartbeat(n))
            .await
            .expect("the link takes a paced heartbeat");
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match link.inbound.message().await {
                Ok(Some(pb::HubMessage {
                    body: Some(hub_message::Body::Heartbeat(_)),
                })) => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("the stream ended".to_owned()),
                Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    })
    .await;
    assert_eq!(
        answer,
        Ok(Ok(())),
        "{paced} heartbeats at {paced_rate}/s (burst {BURST}, limit {RATE}/s) are served"
    );

    // A flood: the link is closed, saying which limit it broke.
    let flood_for = Duration::from_secs(5);
    let out = link.out.clone();
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut sent: u64 = 0;
        while started.elapsed() < flood_for {
            match tokio::time::timeout(Duration::from_secs(1), out.send(heartbeat(sent))).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
        }
        sent
    });
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match link.inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the flooded link ends within 10 s")
    .expect("with a status");
    println!("flooded link: {:?}: {}", closed.code(), closed.message());
    assert_eq!(
        closed.code(),
        Code::ResourceExhausted,
        "{}",
        closed.message()
    );
    assert!(
        closed.message().contains(&format!(
            "site_link_max_messages_per_second = {RATE}, site_link_message_burst = {BURST}"
        )),
        "names the limit: {}",
        closed.message()
    );

    // Meanwhile the hub answers health checks and people, and the other site's
    // records keep arriving on its own link.
    let other_acked = hub_acked(&db, "site-g").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(hub.channel().await);
    let mut orders = pb::order_service_client::OrderServiceClient::new(hub.channel().await);
    let mut slowest = Duration::ZERO;
    let mut checks = 0;
    let started = Instant::now();
    while started.elapsed() < flood_for {
        let asked = Instant::now();
        let status = tokio::time::timeout(
            Duration::from_secs(2),
            health.check(tonic_health::pb::HealthCheckRequest {
                service: "carrel.v1.SiteLinkService".into(),
            }),
        )
        .await
        .expect("a health answer within 2 s during the flood")
        .expect("health check")
        .into_inner()
        .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        orders
            .get_order(authed(
                &physician,
                pb::GetOrderRequest {
                    order_id: order_id.clone(),
                },
            ))
            .await
            .expect("the order during the flood");
        slowest = slowest.max(asked.elapsed());
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = flood.await.expect("flood");
    assert!(
        sent > u64::from(BURST),
        "the flood got only {sent} heartbeats out"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "the slowest answer during the flood took {slowest:?}"
    );
    assert!(
        hub_acked(&db, "site-g").await > other_acked,
        "the other site's events kept arriving"
    );
    assert_eq!(
        occurrences(&other.log(), "link to the hub lost"),
        0,
        "the other site's link was never cut"
    );
    assert!(last_seq(&other_db).await > 0);

    // Nothing of the flooding site changed.
    assert_eq!(stored_at(&db, "site-f").await, before);
    assert_eq!(count(&db, site_f_audit).await, audit_before);
    let site_after: (i64, i64, Option<String>) = sqlx::query_as(
        "SELECT acked_event_seq, acked_command_seq, last_contact_at FROM sites WHERE site_id = 'site-f'",
    )
    .fetch_one(&db)
    .await
    .expect("site");
    assert_eq!(site_after, site_before);
    println!(
        "heartbeat flood: {paced} paced heartbeats served; the flooder pushed {sent} heartbeats in {flood_for:?} and its link was closed \
         ({RATE}/s, burst {BURST}); {checks} health checks and order reads answered, slowest {slowest:?}; \
         the other site went on replicating; nothing stored"
    );
}

/// Sends one malformed event on a fresh link and expects InvalidArgument naming `field`.
async fn refused_event(hub: &Hub, agent: &Agent, event: pb::SiteEvent, field: &str) {
    let (mut link, _) = RawLink::hello(hub, agent.data_dir()).await;
    link.send(events_body(vec![event])).await;
    assert_refused(link.next().await, Code::InvalidArgument, field);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_enum_values_and_missing_fields_are_refused_naming_the_field() {
    let hub = Hub::start().await;
    add_people(&hub);
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    let token = hub.add_site("site-e");
    let agent = Agent::enroll(&hub, "site-e", &token).expect("enroll");
    let (batch_id, coi, _) = order_for(&hub, "site-e").await;
    let db = hub.db().await;
    let before = stored(&db).await;

    let mut log = SiteLog::default();
    let good = accepted(&mut log, batch_id, &coi);
    let with = |kind: site_event::Kind| pb::SiteEvent {
        kind: Some(kind),
        ..good.clone()
    };
    let mut tried = 0;
    let cases: Vec<(pb::SiteEvent, &str)> = vec![
        (
            with(site_event::Kind::InstrumentAlarm(pb::InstrumentAlarm {
                step_id: "expansion".into(),
                instrument_id: "sim".into(),
                code: "TEMP".into(),
                message: "hot".into(),
                severity: 99,
            })),
            "instrument_alarm.severity: must be warning or critical",
        ),
        (
            with(site_event::Kind::QcResult(pb::QcResultRecorded {
                test_id: "sterility".into(),
                value: Some(pb::qc_result_recorded::Value::Text("negative".into())),
                site_outcome: 42,
                ..Default::default()
            })),
            "qc_result.site_outcome: must be pass or out of specification",
        ),
        (
            with(site_event::Kind::ReleaseDecisionRecorded(
                pb::ReleaseDecisionRecorded {
                    signature_id: Uuid::new_v4().to_string(),
                    meaning: 7,
                    command_seq: 1,
                },
            )),
            "release_decision_recorded.meaning: 7 is not a release meaning",
        ),
        (
            with(site_event::Kind::QcResult(pb::QcResultRecorded {
                test_id: "sterility".into(),
                value: None,
                site_outcome: pb::QcOutcome::Pass as i32,
                ..Default::default()
            })),
            "qc_result.value: is required",
        ),
        (
            with(site_event::Kind::StepStarted(pb::StepStarted {
                step_id: String::new(),
                instrument_id: "sim".into(),
                resumed: false,
            })),
            "step_started.step_id: is required",
        ),
        (
            pb::SiteEvent {
                kind: None,
                ..good.clone()
            },
            "kind: is required",
        ),
        (
            pb::SiteEvent {
                recorded_at: None,
                ..good.clone()
            },
            "recorded_at: is required",
        ),
        (
            pb::SiteEvent {
                batch_id: String::new(),
                ..good.clone()
            },
            "batch_id: \"\" is not a UUID",
        ),
        (
            pb::SiteEvent {
                recorded_by: " ".into(),
                ..good.clone()
            },
            "recorded_by: is required",
        ),
        (
            pb::SiteEvent {
                prev_sha256: String::new(),
                ..good.clone()
            },
            "prev_sha256: must be the 64-hex-digit SHA-256",
        ),
    ];
    for (event, field) in cases {
        refused_event(&hub, &agent, event, &format!("event seq 1: {field}")).await;
        tried += 1;
    }

    // The people's API.
    let physician = hub.login(PHYSICIAN.0, PHYSICIAN.1).await.expect("login");
    let qa = hub.login(QA.0, QA.1).await.expect("login");
    let admin = hub.login(ADMIN.0, ADMIN.1).await.expect("login");
    let mut orders = pb::order_service_client::OrderServiceClient::new(hub.channel().await);
    let mut release = pb::release_service_client::ReleaseServiceClient::new(hub.channel().await);
    let mut admin_api = pb::admin_service_client::AdminServiceClient::new(hub.channel().await);
    assert_refused(
        orders
            .list_orders(authed(&physician, pb::ListOrdersRequest { state: 99 }))
            .await,
        Code::InvalidArgument,
        "not a batch state",
    );
    assert_refused(
        release
            .sign_release(authed(
                &qa,
                pb::SignReleaseRequest {
                    batch_id: batch_id.to_string(),
                    meaning: 7,
                    password: QA.1.into(),
                    record_sha256: "0".repeat(64),
                    reason: String::new(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "meaning must be released, rejected, released conditionally or release completed",
    );
    assert_refused(
        admin_api
            .add_user(authed(
                &admin,
                pb::AddUserRequest {
                    username: "someone".into(),
                    full_name: "Some One".into(),
                    role: 9,
                    password: "a-long-enough-password".into(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "role must be physician, qa, technician or admin",
    );
    let form = |product: &str, site: &str| pb::CreateOrderRequest {
        patient_pseudonym: "P-9201".into(),
        product: product.into(),
        site_id: site.into(),
        requested_collection_date: "2099-01-01".into(),
        request_id: String::new(),
        confirm_second_order: false,
    };
    assert_refused(
        orders
            .create_order(authed(&physician, form("", "site-e")))
            .await,
        Code::InvalidArgument,
        "Choose the product",
    );
    assert_refused(
        orders
            .create_order(authed(&physician, form("cd19-car-t", "")))
            .await,
        Code::InvalidArgument,
        "Choose the treating site",
    );
    assert_refused(
        release
            .get_batch_record(authed(
                &qa,
                pb::GetBatchRecordRequest {
                    batch_id: String::new(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "batch_id",
    );
    assert_refused(
        admin_api
            .suspend_site(authed(
                &admin,
                pb::SuspendSiteRequest {
                    site_id: "site-e".into(),
                    reason: String::new(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "Say why you suspend this site",
    );
    tried += 7;
    assert_eq!(stored(&db).await, before, "nothing stored");
    let site: String = sqlx::query_scalar("SELECT status FROM sites WHERE site_id = 'site-e'")
        .fetch_one(&db)
        .await
        .expect("site");
    assert_eq!(site, "active");
    println!("{tried} messages with unknown enum values or missing fields refused, each naming its field");
}

/// The hub commits event messages that wait for it together; a bad message among
/// them must not cost the good ones before it, and gets its own answer.
#[tokio::test(flavor = "multi_thread")]
async fn messages_sent_back_to_back_are_kept_up_to_a_bad_one_which_alone_is_refused() {
    let hub = Hub::start().await;
    add_people(&hub);
    let token = hub.add_site("site-b2b");
    let agent = Agent::enroll(&hub, "site-b2b", &token).expect("enroll");
    let (batch_id, coi, _) = order_for(&hub, "site-b2b").await;
    let db = hub.db().await;
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    let mut log = SiteLog::default();
    let mut good = vec![accepted(&mut log, batch_id, &coi)];
    for _ in 0..39 {
        good.push(pb::SiteEvent::from(&log.event(
            batch_id,
            chrono::Utc::now(),
            EventKind::StepStarted {
                step_id: "collection".into(),
                instrument_id: "sim".into(),
                resumed: true,
            },
        )));
    }
    // After the 40 good ones, one that skips a seq; all sent without waiting.
    let mut gap = pb::SiteEvent::from(&log.event(
        batch_id,
        chrono::Utc::now(),
        EventKind::StepStarted {
            step_id: "collection".into(),
            instrument_id: "sim".into(),
            resumed: true,
        },
    ));
    gap.seq += 1;
    for event in good {
        link.send(events_body(vec![event])).await;
    }
    link.send(events_body(vec![gap])).await;

    let mut highest_ack = 0;
    let refusal = loop {
        match link.next().await {
            Ok(pb::HubMessage {
                body: Some(hub_message::Body::EventAck(ack)),
            }) => {
                assert!(ack.seq > highest_ack, "acknowledgements go forward");
                highest_ack = ack.seq;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::InvalidArgument, "{refusal:?}");
    assert!(refusal.message().contains("gap"), "{refusal:?}");
    assert_eq!(highest_ack, 40, "every good event was acknowledged");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM site_events WHERE site_id = 'site-b2b'"
        )
        .await,
        40
    );
}

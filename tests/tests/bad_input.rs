//! Bad input, over the real API and the real site link: each refusal has the right
//! gRPC code and a message naming the problem, and changes nothing that was stored.

use carrel_proto::pb;
use carrel_proto::pb::{hub_message, site_message};
use carrel_tests::raw_link::RawLink;
use carrel_tests::*;
use tonic::Code;

const ALICE: (&str, &str) = ("dr.alice", "alice-password-1");
const BOB: (&str, &str) = ("dr.bob", "bob-password-12");
const QA: (&str, &str) = ("qa.quinn", "quinn-password-1");

fn tomorrow() -> String {
    (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string()
}

fn order_request(site: &str, product: &str, date: &str, patient: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        patient_pseudonym: patient.into(),
        product: product.into(),
        site_id: site.into(),
        requested_collection_date: date.into(),
        request_id: String::new(),
        confirm_second_order: false,
    }
}

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

async fn count(db: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect(sql)
}

#[tokio::test(flavor = "multi_thread")]
async fn user_facing_api_refuses_bad_requests_and_stores_nothing() {
    let hub = Hub::start().await;
    hub.add_user(ALICE.0, "physician", ALICE.1);
    hub.add_user(BOB.0, "physician", BOB.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-a");
    let _agent = Agent::enroll(&hub, "site-a", &token).expect("enroll");
    hub.add_site("site-pending");
    let alice = hub.login(ALICE.0, ALICE.1).await.expect("alice");
    let bob = hub.login(BOB.0, BOB.1).await.expect("bob");
    let qa = hub.login(QA.0, QA.1).await.expect("qa");
    let mut orders = pb::order_service_client::OrderServiceClient::new(hub.channel().await);
    let mut release = pb::release_service_client::ReleaseServiceClient::new(hub.channel().await);
    let date = tomorrow();

    let bad = [
        (
            order_request("site-x", "cd19-car-t", &date, "P-1"),
            Code::InvalidArgument,
            "site \"site-x\" is not known",
        ),
        (
            order_request("site-a", "cd22", &date, "P-1"),
            Code::InvalidArgument,
            "product (recipe) \"cd22\"",
        ),
        (
            order_request("site-a", "cd19-car-t", "2026-13-01", "P-1"),
            Code::InvalidArgument,
            "is not a date",
        ),
        (
            order_request("site-a", "cd19-car-t", "2001-01-01", "P-1"),
            Code::InvalidArgument,
            "in the past",
        ),
        (
            order_request("site-a", "cd19-car-t", &date, "John Smith"),
            Code::InvalidArgument,
            "pseudonym",
        ),
        (
            order_request("site-pending", "cd19-car-t", &date, "P-1"),
            Code::FailedPrecondition,
            "is pending",
        ),
        (
            pb::CreateOrderRequest {
                request_id: "twice".into(),
                ..order_request("site-a", "cd19-car-t", &date, "P-1")
            },
            Code::InvalidArgument,
            "request_id \"twice\" is not a UUID",
        ),
    ];
    for (request, code, words) in bad {
        assert_refused(
            orders.create_order(authed(&alice, request)).await,
            code,
            words,
        );
    }
    assert_refused(
        orders
            .create_order(tonic::Request::new(order_request(
                "site-a",
                "cd19-car-t",
                &date,
                "P-1",
            )))
            .await,
        Code::Unauthenticated,
        "sign in first",
    );
    assert_refused(
        orders
            .create_order(authed(
                "forged-token",
                order_request("site-a", "cd19-car-t", &date, "P-1"),
            ))
            .await,
        Code::Unauthenticated,
        "expired",
    );
    assert_refused(
        orders
            .create_order(authed(
                &qa,
                order_request("site-a", "cd19-car-t", &date, "P-1"),
            ))
            .await,
        Code::PermissionDenied,
        "needs the role physician",
    );
    let db = hub.db().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM hub_commands").await, 0);

    // Wrong password: refused, and recorded.
    assert_refused(
        hub.login(ALICE.0, "guess-guess-guess").await,
        Code::Unauthenticated,
        "wrong password",
    );
    assert_refused(
        hub.login("nobody", "guess-guess-guess").await,
        Code::Unauthenticated,
        "wrong password",
    );
    // Counted per user name and source; the audit trail gets the count when the
    // window ends (and a lock as it begins), not one entry per attempt.
    assert_eq!(
        count(
            &db,
            "SELECT COALESCE(SUM(failures), 0) FROM sign_in_failures WHERE username IN ('dr.alice', 'nobody') AND source = '127.0.0.1'"
        )
        .await,
        2
    );

    // A physician sees only their own orders.
    let order = orders
        .create_order(authed(
            &alice,
            order_request("site-a", "cd19-car-t", &date, "P-42"),
        ))
        .await
        .expect("alice orders")
        .into_inner()
        .order
        .expect("order");
    assert_refused(
        orders
            .get_order(authed(
                &bob,
                pb::GetOrderRequest {
                    order_id: order.order_id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    let bobs = orders
        .list_orders(authed(&bob, pb::ListOrdersRequest { state: 0 }))
        .await
        .expect("list");
    assert!(bobs.into_inner().orders.is_empty());

    // A second open order for the same patient and product is held until the
    // prescriber confirms it; the refusal names the open order, and stores nothing.
    assert_refused(
        orders
            .create_order(authed(
                &bob,
                order_request("site-a", "cd19-car-t", &date, "P-42"),
            ))
            .await,
        Code::InvalidArgument,
        &format!(
            "Patient P-42 already has an open order for cd19-car-t: COI {} at site site-a, placed by another physician",
            order.coi
        ),
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 1);
    let second = orders
        .create_order(authed(
            &bob,
            pb::CreateOrderRequest {
                confirm_second_order: true,
                ..order_request("site-a", "cd19-car-t", &date, "P-42")
            },
        ))
        .await
        .expect("a confirmed second order")
        .into_inner()
        .order
        .expect("order");
    assert_ne!(second.coi, order.coi);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 2);
    assert_refused(
        orders
            .get_order(authed(
                &alice,
                pb::GetOrderRequest {
                    order_id: "not-a-uuid".into(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "not a valid id",
    );
    assert_refused(
        orders
            .cancel_order(authed(
                &alice,
                pb::CancelOrderRequest {
                    order_id: order.order_id.clone(),
                    reason: " ".into(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "Say why you cancel this order",
    );

    // Release: only for a complete record, only with a well-formed hash.
    let sign = |sha: &str| pb::SignReleaseRequest {
        batch_id: order.batch_id.clone(),
        meaning: pb::ReleaseMeaning::Released as i32,
        password: QA.1.into(),
        record_sha256: sha.into(),
        reason: String::new(),
        ..Default::default()
    };
    assert_refused(
        release.sign_release(authed(&qa, sign("abc"))).await,
        Code::InvalidArgument,
        "64-hex-digit",
    );
    assert_refused(
        release
            .sign_release(authed(&qa, sign(&"0".repeat(64))))
            .await,
        Code::FailedPrecondition,
        "not awaiting release",
    );
    assert_refused(
        release
            .sign_release(authed(&alice, sign(&"0".repeat(64))))
            .await,
        Code::PermissionDenied,
        "role qa",
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM signatures").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM hub_commands").await, 2);

    // Each refusal left a log line with the RPC, the code and the reason.
    let log = hub.log();
    let refused = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .count();
    assert!(refused >= 15, "{refused} refusals logged:\n{log}");
    assert!(log.contains("rpc=/carrel.v1.OrderService/CreateOrder code=InvalidArgument reason=site \"site-x\" is not known to the hub"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_answer_generic_grpc_tools() {
    let hub = Hub::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(hub.channel().await);
    for service in ["", "carrel.v1.OrderService", "carrel.v1.SiteLinkService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(hub.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "carrel.v1.SiteLinkService",
        "carrel.v1.OrderService",
        "carrel.v1.ReleaseService",
        "carrel.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

fn accepted(seq: u64, batch_id: &str, coi: &str) -> pb::SiteEvent {
    pb::SiteEvent {
        seq,
        event_id: uuid::Uuid::new_v4().to_string(),
        recorded_at: Some(prost_types_now()),
        batch_id: batch_id.into(),
        recorded_by: "agent".into(),
        prev_sha256: carrel_proto::event::GENESIS_SHA256.into(),
        identity: None,
        kind: Some(pb::site_event::Kind::BatchAccepted(pb::BatchAccepted {
            coi: coi.into(),
            recipe_id: "cd19-car-t".into(),
            recipe_version: 1,
            recipe_sha256: "x".into(),
        })),
    }
}

fn prost_types_now() -> prost_types::Timestamp {
    let now = chrono::Utc::now();
    prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: now.timestamp_subsec_nanos() as i32,
    }
}

fn events(list: Vec<pb::SiteEvent>) -> site_message::Body {
    site_message::Body::Events(pb::SiteEventBatch { events: list })
}

#[tokio::test(flavor = "multi_thread")]
async fn site_link_refuses_protocol_violations_and_stores_nothing_of_them() {
    let hub = Hub::start().await;
    hub.add_user(ALICE.0, "physician", ALICE.1);
    let token = hub.add_site("site-a");
    let agent = Agent::enroll(&hub, "site-a", &token).expect("enroll"); // never started: the test is the site
    let alice = hub.login(ALICE.0, ALICE.1).await.expect("alice");
    let order = pb::order_service_client::OrderServiceClient::new(hub.channel().await)
        .create_order(authed(
            &alice,
            order_request("site-a", "cd19-car-t", &tomorrow(), "P-7"),
        ))
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order");
    let db = hub.db().await;
    let stored = || async { count(&db, "SELECT COUNT(*) FROM site_events").await };

    // Without a client certificate there is no site.
    let sync = pb::site_link_service_client::SiteLinkServiceClient::new(hub.channel().await)
        .sync(tokio_stream::iter(Vec::<pb::SiteMessage>::new()))
        .await;
    assert_refused(sync, Code::Unauthenticated, "client certificate");

    // The first message must be Hello.
    let mut link = RawLink::open(
        &hub,
        agent.data_dir(),
        site_message::Body::Heartbeat(pb::Heartbeat::default()),
    )
    .await
    .expect("open");
    assert_refused(
        link.next().await,
        Code::InvalidArgument,
        "first message on Sync must be Hello",
    );

    // A Hello claiming commands the hub never issued.
    let hello = site_message::Body::Hello(pb::Hello {
        protocol_version: carrel_proto::protocol::current(),
        agent_version: "t".into(),
        acked_command_seq: 99,
        last_event_seq: 0,
        witnessed_audit_head: None,
    });
    let mut link = RawLink::open(&hub, agent.data_dir(), hello)
        .await
        .expect("open");
    assert_refused(
        link.next().await,
        Code::FailedPrecondition,
        "hub issued only 1 commands",
    );

    // A gap: seq 2 before seq 1. Nothing stored.
    let (mut link, welcome) = RawLink::hello(&hub, agent.data_dir()).await;
    assert_eq!(welcome.acked_event_seq, 0);
    link.send(events(vec![accepted(2, &order.batch_id, &order.coi)]))
        .await;
    assert_refused(link.next().await, Code::InvalidArgument, "leaves a gap");
    assert_eq!(stored().await, 0);

    // A good event is acknowledged; the same seq with other content is refused.
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    let first = accepted(1, &order.batch_id, &order.coi);
    link.send(events(vec![first.clone()])).await;
    match link.next().await.expect("ack").body {
        Some(hub_message::Body::EventAck(ack)) => assert_eq!(ack.seq, 1),
        other => panic!("expected an ack, got {other:?}"),
    }
    link.send(events(vec![first.clone()])).await;
    match link.next().await.expect("ack of the repeat").body {
        Some(hub_message::Body::EventAck(ack)) => {
            assert_eq!(ack.seq, 1, "a repeat is acknowledged, not stored again")
        }
        other => panic!("expected an ack, got {other:?}"),
    }
    let mut changed = first.clone();
    changed.recorded_by = "someone-else".into();
    link.send(events(vec![changed])).await;
    assert_refused(
        link.next().await,
        Code::InvalidArgument,
        "different content",
    );
    assert_eq!(stored().await, 1);
    let body: String = sqlx::query_scalar("SELECT body FROM site_events WHERE seq = 1")
        .fetch_one(&db)
        .await
        .expect("row");
    assert!(body.contains("\"recorded_by\":\"agent\""));

    // Another site's (or no one's) batch, a malformed event, a message without a body.
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    link.send(events(vec![accepted(
        2,
        &uuid::Uuid::new_v4().to_string(),
        &order.coi,
    )]))
    .await;
    assert_refused(link.next().await, Code::PermissionDenied, "never ordered");
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    let mut malformed = accepted(2, &order.batch_id, &order.coi);
    malformed.event_id = "nope".into();
    link.send(events(vec![malformed])).await;
    assert_refused(
        link.next().await,
        Code::InvalidArgument,
        "event seq 2: event_id",
    );
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    let _ = link.out.send(pb::SiteMessage { body: None }).await;
    assert_refused(link.next().await, Code::InvalidArgument, "without a body");
    assert_eq!(stored().await, 1);
    let acked: i64 =
        sqlx::query_scalar("SELECT acked_event_seq FROM sites WHERE site_id = 'site-a'")
            .fetch_one(&db)
            .await
            .expect("cursor");
    assert_eq!(acked, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_site_link_accepts_one_minor_protocol_version_apart_and_refuses_more() {
    let hub = Hub::start().await;
    let token = hub.add_site("site-v");
    let agent = Agent::enroll(&hub, "site-v", &token).expect("enroll");
    let hello = |version: &str| {
        site_message::Body::Hello(pb::Hello {
            protocol_version: version.into(),
            agent_version: "test".into(),
            acked_command_seq: 0,
            last_event_seq: 0,
            witnessed_audit_head: None,
        })
    };
    // The next minor version (a newer agent) still works.
    let (major, minor) = carrel_proto::protocol::VERSION;
    let mut link = RawLink::open(
        &hub,
        agent.data_dir(),
        hello(&format!("{major}.{}", minor + 1)),
    )
    .await
    .expect("open");
    match link.next().await.expect("welcome").body {
        Some(hub_message::Body::Welcome(w)) => {
            assert_eq!(w.protocol_version, carrel_proto::protocol::current())
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    drop(link);
    for version in [format!("{major}.{}", minor + 2), format!("{}.0", major + 1)] {
        let mut link = RawLink::open(&hub, agent.data_dir(), hello(&version))
            .await
            .expect("open");
        assert_refused(
            link.next().await,
            Code::FailedPrecondition,
            "upgrade the older side",
        );
    }
}

/// A site takes orders only for the products (and versions) QA qualified it for
/// with a signature: an order for anything else is refused with the reason and
/// stores nothing; a qualification refused (wrong password, not QA, no reason, an
/// unknown product, the same one twice) stores nothing either; a withdrawal stops
/// new orders again.
#[tokio::test(flavor = "multi_thread")]
async fn an_order_for_a_product_the_site_is_not_qualified_for_is_refused_until_qa_signs() {
    let hub = Hub::start().await;
    hub.add_user(ALICE.0, "physician", ALICE.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.register_site("site-q");
    let _agent = Agent::enroll(&hub, "site-q", &token).expect("enroll");
    let alice = hub.login(ALICE.0, ALICE.1).await.expect("alice");
    let qa = hub.login(QA.0, QA.1).await.expect("qa");
    let mut orders = pb::order_service_client::OrderServiceClient::new(hub.channel().await);
    let mut release = pb::release_service_client::ReleaseServiceClient::new(hub.channel().await);
    let db = hub.db().await;
    let date = tomorrow();

    assert_refused(
        orders
            .create_order(authed(&alice, order_request("site-q", "cd19-car-t", &date, "P-1")))
            .await,
        Code::InvalidArgument,
        "product cd19-car-t is not one site site-q is qualified to make (it is qualified for no product yet)",
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 0);
    // Nor does the scheduler propose a date there for it.
    let mut schedule = pb::schedule_service_client::ScheduleServiceClient::new(hub.channel().await);
    let propose = || pb::ProposeCollectionRequest {
        product: "cd19-car-t".into(),
        site_id: "site-q".into(),
        from: date.clone(),
        other_sites: false,
        count: 1,
    };
    assert_refused(
        schedule.propose_collection(authed(&alice, propose())).await,
        Code::InvalidArgument,
        "not one site site-q is qualified to make",
    );

    let qualify = |product: &str, reason: &str, password: &str| pb::QualifySiteRequest {
        site_id: "site-q".into(),
        product: product.into(),
        reason: reason.into(),
        username: QA.0.into(),
        password: password.into(),
        acknowledge_signature_meaning: true,
        ..Default::default()
    };
    const REASON: &str = "Process qualification runs PQ-1 to PQ-3 passed, report QR-0007";
    assert_refused(
        release
            .qualify_site(authed(
                &qa,
                qualify("cd19-car-t", REASON, "wrong-password-1"),
            ))
            .await,
        Code::Unauthenticated,
        "wrong password",
    );
    assert_refused(
        release
            .qualify_site(authed(&alice, qualify("cd19-car-t", REASON, ALICE.1)))
            .await,
        Code::PermissionDenied,
        "",
    );
    assert_refused(
        release
            .qualify_site(authed(&qa, qualify("cd19-car-t", "ok", QA.1)))
            .await,
        Code::InvalidArgument,
        "too short",
    );
    assert_refused(
        release
            .qualify_site(authed(&qa, qualify("cd22", REASON, QA.1)))
            .await,
        Code::InvalidArgument,
        "\"cd22\" is not published",
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM site_qualifications").await,
        0
    );

    let signed = release
        .qualify_site(authed(&qa, qualify("cd19-car-t", REASON, QA.1)))
        .await
        .expect("qualify")
        .into_inner();
    assert_eq!(
        (
            signed.versions.as_str(),
            signed.qualified_by.as_str(),
            signed.in_force
        ),
        ("v1 and later", QA.0, true)
    );
    // Sent twice, it is refused: one signature is recorded.
    assert_refused(
        release
            .qualify_site(authed(&qa, qualify("cd19-car-t", REASON, QA.1)))
            .await,
        Code::FailedPrecondition,
        "already qualified",
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM site_qualifications").await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'site.qualified'"
        )
        .await,
        1
    );

    orders
        .create_order(authed(
            &alice,
            order_request("site-q", "cd19-car-t", &date, "P-1"),
        ))
        .await
        .expect("a qualified product is ordered");
    assert_refused(
        orders
            .create_order(authed(
                &alice,
                order_request("site-q", "bcma-car-t", &date, "P-2"),
            ))
            .await,
        Code::InvalidArgument,
        "it is qualified for cd19-car-t",
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 1);

    // Withdrawn through the CLI, as QA: new orders are refused again.
    let out = hub.cli(
        QA.0,
        &[
            "site",
            "withdraw-qualification",
            "site-q",
            "cd19-car-t",
            "--reason",
            "Clean room excursion, CAPA-17 open",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_refused(
        orders
            .create_order(authed(
                &alice,
                order_request("site-q", "cd19-car-t", &date, "P-3"),
            ))
            .await,
        Code::InvalidArgument,
        "qualified for no product yet",
    );
    let listed = hub.cli_json(QA.0, &["site", "qualifications", "site-q"], None);
    assert_eq!(listed[0]["in_force"], false, "{listed}");
    assert_eq!(
        listed[0]["withdrawn_reason"],
        "Clean room excursion, CAPA-17 open"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 1);
}

//! A site whose clock is minutes off: the hub orders a site's records by the site's
//! log (seq), never by the site's clock; it keeps the site's stamp as the site made
//! it next to its own time of receipt; and what people read says the clock was off.
//!
//! There is no clock to turn in a test process, so the test is the site: it speaks
//! the site link with an enrolled site's real credentials and stamps its records
//! ten minutes ahead and ten minutes behind.

use carrel_proto::event::EventKind;
use carrel_proto::pb;
use carrel_tests::raw_link::{events_body, RawLink, SiteLog};
use carrel_tests::scenario::*;
use carrel_tests::*;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

fn step_started(step: &str) -> EventKind {
    EventKind::StepStarted {
        step_id: step.into(),
        instrument_id: "sim-cps-01".into(),
        resumed: false,
    }
}

fn parse(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_clock_minutes_off_does_not_reorder_the_record_and_is_noted() {
    let hub = Hub::start().await;
    add_people(&hub);
    let token = hub.add_site("site-c");
    let agent = Agent::enroll(&hub, "site-c", &token).expect("enroll"); // never started: the test is the site
    let physician = hub
        .login(PHYSICIAN.0, PHYSICIAN.1)
        .await
        .expect("physician");
    let qa = hub.login(QA.0, QA.1).await.expect("qa");
    let mut orders = pb::order_service_client::OrderServiceClient::new(hub.channel().await);
    let order = orders
        .create_order(authed(
            &physician,
            pb::CreateOrderRequest {
                patient_pseudonym: "P-8001".into(),
                product: "cd19-car-t".into(),
                site_id: "site-c".into(),
                requested_collection_date: (Utc::now() + Duration::days(2))
                    .format("%Y-%m-%d")
                    .to_string(),
                request_id: String::new(),
                confirm_second_order: false,
            },
        ))
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order");
    let batch_id = Uuid::parse_str(&order.batch_id).expect("batch id");
    let recipe_sha256: String = sqlx::query_scalar(
        "SELECT r.sha256 FROM recipes r JOIN orders o ON o.recipe_id = r.recipe_id AND o.recipe_version = r.version WHERE o.batch_id = ?",
    )
    .bind(&order.batch_id)
    .fetch_one(&hub.db().await)
    .await
    .expect("recipe hash");

    let now = Utc::now();
    let ahead = now + Duration::minutes(10);
    let behind = now - Duration::minutes(10);
    let mut log = SiteLog::default();
    let sent = vec![
        log.event(
            batch_id,
            ahead,
            EventKind::BatchAccepted {
                coi: order.coi.clone(),
                recipe_id: "cd19-car-t".into(),
                recipe_version: 1,
                recipe_sha256,
            },
        ),
        log.event(batch_id, behind, step_started("collection")),
        log.event(
            batch_id,
            ahead + Duration::seconds(30),
            EventKind::StepCompleted {
                step_id: "collection".into(),
                process_hours: 3.0,
            },
        ),
        log.event(batch_id, now, step_started("receipt")),
        // The clock jumps back ten minutes between two records.
        log.event(
            batch_id,
            now - Duration::minutes(10),
            EventKind::StepCompleted {
                step_id: "receipt".into(),
                process_hours: 1.0,
            },
        ),
        log.event(
            batch_id,
            now + Duration::seconds(1),
            step_started("selection"),
        ),
    ];
    let before = Utc::now();
    let (mut link, _) = RawLink::hello(&hub, agent.data_dir()).await;
    link.send(events_body(
        sent[..3].iter().map(pb::SiteEvent::from).collect(),
    ))
    .await;
    link.expect_ack(3).await;
    link.send(events_body(
        sent[3..].iter().map(pb::SiteEvent::from).collect(),
    ))
    .await;
    link.expect_ack(6).await;
    let after = Utc::now();

    // Stored in the site's order, with the site's stamps as sent and the hub's own
    // time of receipt beside them.
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT seq, recorded_at, received_at FROM site_events WHERE site_id = 'site-c' ORDER BY rowid",
    )
    .fetch_all(&hub.db().await)
    .await
    .expect("rows");
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>(),
        "stored in seq order"
    );
    let mut last_received = before - Duration::seconds(1);
    for ((seq, recorded, received), event) in rows.iter().zip(&sent) {
        let (recorded, received) = (parse(recorded), parse(received));
        assert_eq!(
            (recorded - event.recorded_at).num_milliseconds(),
            0,
            "seq {seq} keeps the site's stamp"
        );
        assert!(
            received >= before - Duration::seconds(1) && received <= after + Duration::seconds(1),
            "seq {seq} was received at {received} by the hub's clock, between {before} and {after}"
        );
        assert!(received >= last_received, "receipt times follow seq");
        last_received = received;
    }
    let skews: Vec<i64> = rows
        .iter()
        .map(|(_, recorded, received)| {
            ((parse(recorded) - parse(received)).num_seconds() as f64 / 60.0).round() as i64
        })
        .collect();
    assert_eq!(
        skews[0], 10,
        "the stored times show the site ten minutes ahead"
    );
    assert_eq!(skews[1], -10, "and ten minutes behind");

    // The projection follows the log, not the clock: collection and receipt done,
    // selection under way.
    let shown = orders
        .get_order(authed(
            &physician,
            pb::GetOrderRequest {
                order_id: order.order_id.clone(),
            },
        ))
        .await
        .expect("order")
        .into_inner();
    let state = shown.order.as_ref().expect("order");
    assert_eq!(state.state, pb::BatchState::InProcess as i32);
    assert_eq!(state.current_step, "selection");

    // The batch record QA reviews lists the records in log order, with the site's
    // stamps.
    let record = pb::release_service_client::ReleaseServiceClient::new(hub.channel().await)
        .get_batch_record(authed(
            &qa,
            pb::GetBatchRecordRequest {
                batch_id: order.batch_id.clone(),
            },
        ))
        .await
        .expect("record")
        .into_inner()
        .record
        .expect("record");
    assert_eq!(
        record
            .entries
            .iter()
            .map(|e| e.site_seq)
            .collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(
        record.entries[0].recorded_at.as_ref().map(|t| t.seconds),
        Some(ahead.timestamp())
    );

    // The physician's timeline: the order first, then the site's records in log
    // order, each skewed one marked as such.
    let lines: Vec<String> = shown
        .timeline
        .iter()
        .map(|t| format!("{} | {} | {}", t.source, t.what, t.detail))
        .collect();
    let whats: Vec<&str> = shown.timeline.iter().map(|t| t.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "order created",
            "batch accepted",
            "step started",
            "step completed",
            "step started",
            "step completed",
            "step started"
        ],
        "{lines:#?}"
    );
    let details: Vec<&str> = shown.timeline.iter().map(|t| t.detail.as_str()).collect();
    assert!(
        details[1].contains("[site clock ahead: stamped 10 min after the hub received it]"),
        "{lines:#?}"
    );
    assert!(
        details[2].starts_with("Apheresis collection")
            && details[2].contains("[site clock behind: stamped"),
        "{lines:#?}"
    );
    assert!(details[3].contains("[site clock ahead"), "{lines:#?}");
    assert!(
        !details[4].contains("site clock"),
        "an on-time record is not flagged: {lines:#?}"
    );
    assert!(details[5].contains("site clock"), "{lines:#?}");
    assert!(!details[6].contains("site clock"), "{lines:#?}");
    assert_eq!(
        shown.timeline[1].at.as_ref().map(|t| t.seconds),
        Some(ahead.timestamp()),
        "the site's stamp is shown as the site made it"
    );
    println!("clock skew: 6 records stamped up to 10 min ahead and behind, stored and shown in log order, 4 flagged");
}

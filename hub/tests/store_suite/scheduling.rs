//! Scheduling: capacity, atomic booking, re-planning, the vein-to-vein clock.

use crate::fixtures::*;
use carrel_hub::model::{NewOrder, Order};
use carrel_hub::schedule::Capacity;
use carrel_hub::store::{Error, Store};
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::recipe::Recipe;
use chrono::{Duration, SubsecRound};
use std::sync::Arc;
use uuid::Uuid;

/// A capacity with `slots` collection slots a day and `systems` processing systems,
/// open every day from 00:00 to 23:00 (so any date can be booked).
fn capacity(slots: u32, systems: u32) -> Capacity {
    let mut capacity = Capacity::example();
    capacity.working_days = (0..7)
        .filter_map(|d| chrono::Weekday::try_from(d).ok())
        .collect();
    capacity.opens = chrono::NaiveTime::MIN;
    capacity.closes = chrono::NaiveTime::from_hms_opt(23, 0, 0).expect("valid time");
    capacity.collection_slots_per_day = slots;
    capacity
        .instruments
        .insert("closed-processing-system".into(), systems);
    capacity
}

fn order_for(site_id: &str, patient: &str, date: chrono::NaiveDate) -> NewOrder {
    NewOrder {
        patient_pseudonym: patient.into(),
        requested_collection_date: date.to_string(),
        ..new_order(site_id)
    }
}

pub async fn case_concurrent_bookings_of_the_last_slot_give_one_success(store: Arc<dyn Store>) {
    seed(&*store).await;
    store
        .set_capacity(SITE_A, &capacity(1, 8), ADMIN, now())
        .await
        .expect("declare capacity");
    let date = now().date_naive() + Duration::days(5);
    // Eight physicians book the one slot of the day at the same moment.
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_order(&order_for(SITE_A, &format!("PAT-{i:04}"), date), now())
                .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let booked: Vec<&Order> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(booked.len(), 1, "exactly one booking wins: {results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        match refused {
            Error::Unavailable(why) => assert!(
                why.contains(&format!("every collection slot on {date} is taken")),
                "{why}"
            ),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    // The losers left nothing behind: one order, one booking, one slot held.
    assert_eq!(
        store.list_orders(None, None).await.expect("orders").len(),
        1
    );
    let bookings = store.bookings(SITE_A).await.expect("bookings");
    assert_eq!(bookings.len(), 1);
    assert_eq!(
        (bookings[0].order_id, bookings[0].collection_date),
        (booked[0].order_id, date)
    );
    let audit = store
        .audit_entries(Some(booked[0].batch_id))
        .await
        .expect("audit");
    assert!(
        audit[0]
            .reason
            .contains(&format!("booked collection slot 1 on {date}")),
        "{:?}",
        audit[0]
    );
}

pub async fn case_two_bookings_racing_for_the_last_instrument_give_one_success(
    store: Arc<dyn Store>,
) {
    seed(&*store).await;
    // Plenty of slots, one processing system: orders on two different days would
    // both need it for most of the same nine days.
    store
        .set_capacity(SITE_B, &capacity(8, 1), ADMIN, now())
        .await
        .expect("declare capacity");
    let day = now().date_naive() + Duration::days(5);
    let attempts = [day, day + Duration::days(1)].map(|date| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_order(&order_for(SITE_B, &format!("PAT-{date}"), date), now())
                .await
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let refused = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("one refused");
    assert!(
        matches!(refused, Error::Unavailable(why) if why.contains("every closed-processing-system is booked")),
        "{refused:?}"
    );
    assert_eq!(store.bookings(SITE_B).await.expect("bookings").len(), 1);
}

pub async fn case_cancelling_frees_a_slot_and_rescheduling_moves_it(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let mut declared = capacity(1, 8);
    let date = now().date_naive() + Duration::days(5);
    declared.closures.push(carrel_hub::schedule::Closure {
        from: date + Duration::days(20),
        to: date + Duration::days(22),
        reason: "clean-room requalification".into(),
    });
    store
        .set_capacity(SITE_A, &declared, ADMIN, now())
        .await
        .expect("declare");
    let first = store
        .create_order(&order_for(SITE_A, "PAT-0001", date), now())
        .await
        .expect("book");
    assert_refused!(
        store
            .create_order(&order_for(SITE_A, "PAT-0002", date), now())
            .await,
        Error::Unavailable
    );
    store
        .cancel_order(first.order_id, "patient unwell", PHYSICIAN, now())
        .await
        .expect("cancel");
    assert!(
        store.bookings(SITE_A).await.expect("bookings").is_empty(),
        "cancel frees the booking"
    );
    let second = store
        .create_order(&order_for(SITE_A, "PAT-0002", date), now())
        .await
        .expect("the freed slot books");

    // Moving it: to a closed day is refused and changes nothing; to a free day moves
    // it, audited, and frees the old slot.
    let before = store
        .booking(second.order_id)
        .await
        .expect("read")
        .expect("booked");
    let closed = date + Duration::days(21);
    match store
        .reschedule_order(second.order_id, closed, "patient asked", PHYSICIAN, now())
        .await
    {
        Err(Error::Unavailable(why)) => {
            assert!(why.contains("clean-room requalification"), "{why}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(
        store.booking(second.order_id).await.expect("read"),
        Some(before.clone())
    );
    let later = date + Duration::days(2);
    let moved = store
        .reschedule_order(second.order_id, later, "patient asked", PHYSICIAN, now())
        .await
        .expect("reschedule");
    assert_eq!(moved.collection_date, later);
    let booked = store.booked(SITE_A).await.expect("booked");
    assert!(!booked.slots.contains_key(&date) && booked.slots.contains_key(&later));
    let audit = store
        .audit_entries(Some(second.batch_id))
        .await
        .expect("audit");
    let entry = audit
        .iter()
        .find(|e| e.action == "order.rescheduled")
        .expect("audited");
    assert_eq!(
        (entry.old_value.as_str(), entry.new_value.as_str()),
        (
            format!("{date} slot 1").as_str(),
            format!("{later} slot 1").as_str()
        )
    );

    // Once the collection has started, the date cannot move.
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(second.batch_id, accepted(&second, &recipe)),
            log.record(second.batch_id, step_started("collection")),
        ],
    )
    .await;
    assert_refused!(
        store
            .reschedule_order(
                second.order_id,
                later + Duration::days(1),
                "late",
                PHYSICIAN,
                now()
            )
            .await,
        Error::FailedPrecondition
    );
}

pub async fn case_a_capacity_that_breaks_bookings_or_misses_open_orders_is_refused(
    store: Arc<dyn Store>,
) {
    seed(&*store).await;
    // An order placed before the site declared its capacity holds instruments the
    // hub knows nothing of: declaring is refused until it is past manufacturing.
    let unbooked = order_at(&*store, SITE_A).await;
    match store
        .set_capacity(SITE_A, &capacity(2, 4), ADMIN, now())
        .await
    {
        Err(Error::FailedPrecondition(why)) => {
            assert!(why.contains(&unbooked.order_id.to_string()), "{why}")
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert_eq!(store.capacity(SITE_A).await.expect("read"), None);
    store
        .cancel_order(unbooked.order_id, "entered twice", PHYSICIAN, now())
        .await
        .expect("cancel");
    store
        .set_capacity(SITE_A, &capacity(2, 4), ADMIN, now())
        .await
        .expect("declare once nothing is unbooked");

    // A closure over a booked collection is refused, naming the order; the capacity
    // stays as it was.
    let date = now().date_naive() + Duration::days(6);
    let booked = store
        .create_order(&order_for(SITE_A, "PAT-0009", date), now())
        .await
        .expect("book");
    let mut closing = capacity(2, 4);
    closing.closures.push(carrel_hub::schedule::Closure {
        from: date,
        to: date,
        reason: "inspection".into(),
    });
    match store.set_capacity(SITE_A, &closing, ADMIN, now()).await {
        Err(Error::FailedPrecondition(why)) => {
            assert!(why.contains(&booked.coi) && why.contains("closed"), "{why}")
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert_eq!(
        store.capacity(SITE_A).await.expect("read"),
        Some(capacity(2, 4))
    );
    let changes = store
        .audit_count(carrel_hub::audit::Action::SiteCapacityChanged)
        .await
        .expect("count");
    assert_eq!(changes, 1, "only the accepted declaration is audited");
}

/// Records the given steps of a booking as the site would: started and completed as
/// booked (`completed`), or only started (`running`).
fn on_plan(
    log: &mut SiteLog,
    order: &Order,
    recipe: &Recipe,
    booking: &carrel_hub::schedule::Booking,
    completed: &[&str],
    running: Option<&str>,
) -> Vec<SiteEvent> {
    let mut events = vec![log.record(order.batch_id, accepted(order, recipe))];
    for step in &booking.steps {
        if completed.contains(&step.step_id.as_str()) || running == Some(step.step_id.as_str()) {
            let mut started = log.record(order.batch_id, step_started(&step.step_id));
            // Site clocks stamp nanoseconds; the hub keeps microseconds.
            started.recorded_at = step.planned_start + Duration::nanoseconds(789);
            *log = resign(log, &mut started);
            events.push(started);
        }
        if completed.contains(&step.step_id.as_str()) {
            let mut done = log.record(order.batch_id, step_completed(&step.step_id));
            done.recorded_at = step.planned_end + Duration::nanoseconds(789);
            *log = resign(log, &mut done);
            events.push(done);
        }
    }
    events
}

/// After changing an event that was just recorded, chains the log to its new hash.
fn resign(log: &SiteLog, event: &mut SiteEvent) -> SiteLog {
    SiteLog {
        next_seq: log.next_seq,
        last_sha256: event.sha256(),
    }
}

pub async fn case_a_batch_running_long_pushes_the_bookings_behind_it(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let real_now = now();
    let past = real_now - Duration::days(12);
    store
        .set_capacity(SITE_A, &capacity(1, 1), ADMIN, past)
        .await
        .expect("declare");
    let shared = carrel_hub::app::Hub::new(
        store.clone(),
        carrel_hub::Config::default(),
        Arc::new(carrel_hub::pki::Ca::create("test CA").expect("CA")),
        tokio_util::sync::CancellationToken::new(),
    );
    // Twelve days ago, A, B and C were booked one behind the other on the site's one
    // processing system.
    let mut orders = Vec::new();
    for patient in ["PAT-A", "PAT-B", "PAT-C"] {
        let booked = store.booked(SITE_A).await.expect("booked");
        let plan = carrel_hub::schedule::propose(
            SITE_A,
            &capacity(1, 1),
            &recipe,
            &booked,
            past.date_naive(),
            past,
            1,
        )
        .pop()
        .expect("a date is free");
        let order = store
            .create_order(&order_for(SITE_A, patient, plan.collection_date), past)
            .await
            .expect("book");
        orders.push(order);
    }
    let booking = |i: usize| {
        let store = store.clone();
        let order_id = orders[i].order_id;
        async move {
            store
                .booking(order_id)
                .await
                .expect("read")
                .expect("booked")
        }
    };
    let (a, b, c) = (booking(0).await, booking(1).await, booking(2).await);
    // A ran on plan until expansion, which has been running for days past its plan.
    // B was collected and received on plan, and waits for the processing system.
    let mut log = SiteLog::new();
    let done_a = [
        "collection",
        "receipt",
        "selection",
        "activation",
        "transduction",
    ];
    ingest(
        &*store,
        SITE_A,
        &on_plan(
            &mut log,
            &orders[0],
            &recipe,
            &a,
            &done_a,
            Some("expansion"),
        ),
    )
    .await;
    ingest(
        &*store,
        SITE_A,
        &on_plan(
            &mut log,
            &orders[1],
            &recipe,
            &b,
            &["collection", "receipt"],
            None,
        ),
    )
    .await;

    // Two hub processes re-plan at the same moment: each delay is announced once.
    let replica = carrel_hub::app::Hub::new(
        store.clone(),
        carrel_hub::Config::default(),
        Arc::new(carrel_hub::pki::Ca::create("test CA").expect("CA")),
        tokio_util::sync::CancellationToken::new(),
    );
    let (done, other) = tokio::join!(
        carrel_hub::service::schedule::replan_all(&shared, real_now),
        carrel_hub::service::schedule::replan_all(&replica, real_now),
    );
    let (done, other) = (done.expect("replan"), other.expect("replan"));
    assert_eq!(done.delays + other.delays, 3, "{done:?} {other:?}");
    assert!(done.moved == 3 || other.moved == 3, "{done:?} {other:?}");
    let (a2, b2, c2) = (booking(0).await, booking(1).await, booking(2).await);
    let a_end = a2.expected_end();
    assert_eq!(
        a_end,
        real_now + Duration::hours(6),
        "A's harvest and formulation follow now"
    );
    let selection = |b: &carrel_hub::schedule::Booking| {
        b.steps
            .iter()
            .find(|s| s.step_id == "selection")
            .expect("step")
            .expected_start
    };
    assert_eq!(selection(&b2), a_end, "B's selection waits for A");
    assert_eq!(
        selection(&c2),
        b2.expected_end(),
        "C's selection waits for B"
    );
    assert_eq!(
        c2.steps[0].expected_start, c.steps[0].planned_start,
        "C's collection stays booked"
    );

    let delayed = |batch_id: Uuid| {
        let store = store.clone();
        async move {
            store
                .audit_entries(Some(batch_id))
                .await
                .expect("audit")
                .into_iter()
                .filter(|e| e.action == "order.delayed")
                .collect::<Vec<_>>()
        }
    };
    let a_delay = delayed(orders[0].batch_id).await;
    assert!(
        a_delay.len() == 1 && a_delay[0].reason.contains("step expansion"),
        "{a_delay:?}"
    );
    let b_delay = delayed(orders[1].batch_id).await;
    assert!(
        b_delay.len() == 1 && b_delay[0].reason.contains(&orders[0].batch_id.to_string()),
        "B names A: {b_delay:?}"
    );
    let c_delay = delayed(orders[2].batch_id).await;
    assert!(
        c_delay.len() == 1 && c_delay[0].reason.contains(&orders[1].batch_id.to_string()),
        "C names B: {c_delay:?}"
    );

    // Nothing new: nothing moves and nothing is announced again.
    let again = carrel_hub::service::schedule::replan_all(&shared, real_now)
        .await
        .expect("replan");
    assert_eq!((again.moved, again.delays), (0, 0));

    // C's physician moves C's collection to the first date that fits now: C is on plan again.
    let record = store
        .batch_record(orders[2].batch_id)
        .await
        .expect("record");
    let before = carrel_hub::clock::clock(&record, Some(&c2), &Default::default(), real_now);
    assert!(before.delay.is_some());
    let mut others = store.bookings(SITE_A).await.expect("bookings");
    others.retain(|b| b.order_id != orders[2].order_id);
    let free = carrel_hub::schedule::propose(
        SITE_A,
        &capacity(1, 1),
        &recipe,
        &carrel_hub::store::schedule::booked_from(&others),
        real_now.date_naive(),
        real_now,
        1,
    )
    .pop()
    .expect("a date is free");
    let moved = store
        .reschedule_order(
            orders[2].order_id,
            free.collection_date,
            "delayed behind B",
            PHYSICIAN,
            real_now,
        )
        .await
        .expect("reschedule");
    assert!(selection(&moved) >= b2.expected_end());
    // A re-planning pass that read C before the move cannot write its old plan over
    // the new booking, nor announce a delay for it.
    let stale = carrel_hub::schedule::Moved {
        order_id: orders[2].order_id,
        steps: c2
            .steps
            .iter()
            .map(|s| (s.step_id.clone(), s.expected_start, s.expected_end))
            .collect(),
        cause: "stale".into(),
    };
    let notice = carrel_hub::store::schedule::DelayNotice {
        replaces: None,
        expected_release: real_now + Duration::days(30),
        planned_release: real_now,
        reason: "stale".into(),
    };
    assert!(!store
        .store_replan(&c2, &stale, Some(&notice), real_now)
        .await
        .expect("store"));
    assert_eq!(booking(2).await, moved);
    let after = carrel_hub::clock::clock(&record, Some(&moved), &Default::default(), real_now);
    assert_eq!(
        (after.delay.clone(), after.expected_release),
        (None, after.planned_release),
        "{after:?}"
    );
    let third = carrel_hub::service::schedule::replan_all(&shared, real_now)
        .await
        .expect("replan");
    assert_eq!(third.moved, 0, "the new booking fits");
}

pub async fn case_the_clock_reads_milestones_from_the_record(store: Arc<dyn Store>) {
    use carrel_hub::clock::{clock, summarize, Milestone};
    let recipe = seed(&*store).await;
    let mut log = SiteLog::new();
    let mut clocks = Vec::new();
    // Requested a few days from now, so the plan is ahead of the records whenever
    // this runs.
    let requested = now().date_naive() + Duration::days(4);
    for i in 0..2 {
        let order = store
            .create_order(&order_for(SITE_A, &format!("PAT-{i:04}"), requested), now())
            .await
            .expect("create order");
        let mut events = complete_record(&mut log, &order, &recipe);
        ingest(&*store, SITE_A, &events).await;
        let sha = reviewed_sha256(&*store, order.batch_id).await;
        store
            .sign_release(&signature(&order, QA, sha), false, now())
            .await
            .expect("sign");
        let bedside: Vec<SiteEvent> = recipe
            .bedside_checkpoints
            .iter()
            .map(|c| log.record(order.batch_id, matched_scan(&order, &c.id)))
            .collect();
        ingest(&*store, SITE_A, &bedside).await;
        events.extend(bedside);
        let record = store.batch_record(order.batch_id).await.expect("record");
        let at = |pick: &dyn Fn(&EventKind) -> bool| {
            events
                .iter()
                .rev()
                .find(|e| pick(&e.kind))
                .map(|e| e.recorded_at.trunc_subsecs(6))
                .expect("event")
        };
        let c = clock(&record, None, &Default::default(), now());
        let collected =
            at(&|k| matches!(k, EventKind::StepStarted { step_id, .. } if step_id == "collection"));
        let infused = at(
            &|k| matches!(k, EventKind::CustodyScan { checkpoint_id, .. } if checkpoint_id == "infusion"),
        );
        assert_eq!(
            c.milestone(Milestone::Ordered).actual,
            Some(order.created_at)
        );
        assert_eq!(c.milestone(Milestone::Collection).actual, Some(collected));
        assert_eq!(
            c.milestone(Milestone::ManufacturingEnd).actual,
            Some(at(
                &|k| matches!(k, EventKind::StepCompleted { step_id, .. } if step_id == "formulation")
            ))
        );
        assert_eq!(
            c.milestone(Milestone::Release).actual,
            Some(record.signatures[0].signed_at)
        );
        assert_eq!(c.milestone(Milestone::Infusion).actual, Some(infused));
        assert_eq!(c.vein_to_vein, Some(infused - collected));
        // Planned from the requested date (no booking): the collection starts at 08:00.
        assert_eq!(
            c.milestone(Milestone::Collection).planned,
            requested.and_hms_opt(8, 0, 0).expect("time").and_utc()
        );
        assert_eq!((c.released_on_time, c.delay.clone()), (Some(true), None));
        clocks.push(c);
    }
    let summary = summarize(&clocks);
    let mut spans: Vec<Duration> = clocks.iter().filter_map(|c| c.vein_to_vein).collect();
    spans.sort();
    assert_eq!(
        (
            summary.orders,
            summary.open,
            summary.released,
            summary.released_on_time
        ),
        (2, 0, 2, 2)
    );
    assert_eq!(summary.median_vein_to_vein, Some((spans[0] + spans[1]) / 2));
    assert_eq!(summary.on_time_share(), Some(1.0));
}

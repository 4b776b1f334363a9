//! The two logs: the site's hash-chained event log, replicated to the hub by cursor
//! (invariant 3: append-only), with the projections derived in the same transaction
//! (invariant 4); and the hub's command log, acknowledged by the site.

use crate::fixtures::*;
use carrel_hub::model::{BatchState, Site};
use carrel_hub::store::{Error, Ingested, Store};
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::recipe::{Outcome, QcValue};
use std::sync::Arc;
use uuid::Uuid;

pub async fn case_ingest_stores_consecutive_events_and_advances_cursor(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();

    let first = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
    ];
    let done = ingest(&*store, SITE_A, &first).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 2,
            new_events: 2
        }
    );
    assert_eq!(store.site(SITE_A).await.expect("site").acked_event_seq, 2);
    assert_eq!(stored_events(&*store, order.batch_id).await, first);

    let second = vec![log.record(order.batch_id, step_completed("receipt"))];
    let done = ingest(&*store, SITE_A, &second).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 3,
            new_events: 1
        }
    );
    let site = store.site(SITE_A).await.expect("site");
    assert_eq!(site.acked_event_seq, 3);
    assert!(site.last_contact_at.is_some(), "ingest records contact");
    let stored = store.batch_events(order.batch_id).await.expect("events");
    assert!(stored.iter().all(|s| s.site_id == SITE_A));
    let expected: Vec<SiteEvent> = first.into_iter().chain(second).collect();
    assert_eq!(stored_events(&*store, order.batch_id).await, expected);
    assert_eq!(
        store.site(SITE_B).await.expect("site").acked_event_seq,
        0,
        "cursors are per site"
    );
}

pub async fn case_ingest_accepts_identical_repeats_and_changes_nothing(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let sent = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
        log.record(order.batch_id, step_completed("receipt")),
    ];
    ingest(&*store, SITE_A, &sent).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    // The site reconnects and sends everything again (it never saw our ack).
    let done = ingest(&*store, SITE_A, &sent).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 3,
            new_events: 0
        }
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    // Repeats followed by a new event: only the new one is stored.
    let next = log.record(order.batch_id, step_started("selection"));
    let resent = vec![sent[1].clone(), sent[2].clone(), next.clone()];
    let done = ingest(&*store, SITE_A, &resent).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 4,
            new_events: 1
        }
    );
    let expected: Vec<SiteEvent> = sent.into_iter().chain([next]).collect();
    assert_eq!(stored_events(&*store, order.batch_id).await, expected);
}

pub async fn case_the_writer_counts_its_commits_requests_and_new_events(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let before = store.ingest_counts();
    let sent = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
    ];
    ingest(&*store, SITE_A, &sent).await;
    // A repeat is a request and a commit, with no new event.
    ingest(&*store, SITE_A, &sent).await;
    // A refused request (a gap) commits nothing of its own.
    let mut ahead = SiteLog::new();
    for _ in 0..4 {
        ahead.record(order.batch_id, step_started("receipt"));
    }
    let gap = vec![ahead.record(order.batch_id, step_started("receipt"))];
    assert!(store
        .ingest_events(SITE_A, &received(&gap), now())
        .await
        .is_err());
    let after = store.ingest_counts();
    assert_eq!(after.events - before.events, 2);
    assert_eq!(after.requests - before.requests, 2);
    // One commit per stored request here (nothing else ingests at the same time;
    // a group commit of concurrent requests would be fewer).
    assert_eq!(after.commits - before.commits, 2);
}

pub async fn case_ingest_refuses_a_changed_repeat(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let sent = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
    ];
    ingest(&*store, SITE_A, &sent).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    let mut changed = sent[1].clone();
    changed.kind = step_started("selection");
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(std::slice::from_ref(&changed)), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    // A changed repeat also takes the new events of the same call down with it.
    let new = log.record(order.batch_id, step_completed("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[changed, new]), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert_eq!(stored_events(&*store, order.batch_id).await, sent);
}

pub async fn case_ingest_refuses_a_gap_and_stores_nothing_of_the_call(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let first = event(1, order.batch_id, accepted(&order, &recipe));
    ingest(&*store, SITE_A, std::slice::from_ref(&first)).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_eq!(before.order.state, BatchState::Accepted);

    // Seqs 2 and 3 are valid; 5 skips 4. The call is atomic: none of it is stored.
    let two = event(2, order.batch_id, step_started("receipt"));
    let three = event(3, order.batch_id, step_completed("receipt"));
    let five = event(5, order.batch_id, step_started("selection"));
    assert_refused!(
        store
            .ingest_events(
                SITE_A,
                &received(&[two.clone(), three.clone(), five]),
                now()
            )
            .await,
        Error::Protocol
    );
    let after = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_eq!(after, before);
    assert_eq!(after.site.acked_event_seq, 1);
    assert_eq!(
        after.order.state,
        BatchState::Accepted,
        "the projection of the refused events was not kept either"
    );

    // A call that starts past the cursor is a gap too.
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(std::slice::from_ref(&three)), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    // The site can still send the right thing afterwards.
    let done = ingest(&*store, SITE_A, &[two.clone(), three.clone()]).await;
    assert_eq!(done.acked_event_seq, 3);
    assert_eq!(
        stored_events(&*store, order.batch_id).await,
        vec![first, two, three]
    );
}

pub async fn case_ingest_refuses_events_for_another_sites_batch(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order_a = order_at(&*store, SITE_A).await;
    let order_b = order_at(&*store, SITE_B).await;
    let before_a = snapshot(&*store, SITE_A, order_a.batch_id).await;
    let before_b = snapshot(&*store, SITE_B, order_b.batch_id).await;

    // Site B writes about site A's batch, alone and after a valid event of its own.
    let intrusion = event(1, order_a.batch_id, accepted(&order_a, &recipe));
    assert_refused!(
        store
            .ingest_events(SITE_B, &received(std::slice::from_ref(&intrusion)), now())
            .await,
        Error::PermissionDenied
    );
    let own = event(1, order_b.batch_id, accepted(&order_b, &recipe));
    let intrusion = event(2, order_a.batch_id, step_started("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_B, &received(&[own, intrusion]), now())
            .await,
        Error::PermissionDenied
    );

    assert_eq!(snapshot(&*store, SITE_A, order_a.batch_id).await, before_a);
    assert_eq!(snapshot(&*store, SITE_B, order_b.batch_id).await, before_b);
    assert!(stored_events(&*store, order_a.batch_id).await.is_empty());
    assert!(stored_events(&*store, order_b.batch_id).await.is_empty());
}

pub async fn case_ingest_refuses_events_for_a_batch_never_ordered(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    let stranger = Uuid::new_v4();

    let alone = event(1, stranger, step_started("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(std::slice::from_ref(&alone)), now())
            .await,
        Error::PermissionDenied
    );
    let own = event(1, order.batch_id, accepted(&order, &recipe));
    let after_own = event(2, stranger, step_started("receipt"));
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[own, after_own]), now())
            .await,
        Error::PermissionDenied
    );

    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert!(stored_events(&*store, order.batch_id).await.is_empty());
    let stranger_events = store.batch_events(stranger).await.expect("read events");
    assert!(stranger_events.is_empty(), "{stranger_events:?}");
}

pub async fn case_site_log_must_be_a_hash_chain(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let first = log.record(order.batch_id, accepted(&order, &recipe));
    ingest(&*store, SITE_A, std::slice::from_ref(&first)).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    // The next event names a previous hash that is not event 1's: a site log edited
    // after the fact. Refused, and nothing of it is stored.
    let mut forged = log.record(order.batch_id, step_started("collection"));
    forged.prev_sha256 = "ab".repeat(32);
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[forged]), now())
            .await,
        Error::Protocol
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
}

pub async fn case_one_message_may_repeat_and_correct_its_own_records(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let first = log.record(order.batch_id, accepted(&order, &recipe));
    let correction = log.record(
        order.batch_id,
        EventKind::Correction {
            corrects_seq: 1,
            reason: "typed the wrong lot".into(),
            field: "note".into(),
            new_value: "lot 7".into(),
        },
    );
    // The first record twice (a resend inside one message), then a correction of it.
    let ingested = ingest(&*store, SITE_A, &[first.clone(), first.clone(), correction]).await;
    assert_eq!((ingested.acked_event_seq, ingested.new_events), (2, 2));
    let stored = store.order(order.order_id).await.expect("order");
    assert!(
        stored
            .progress
            .anomalies
            .iter()
            .all(|a| !a.contains("not a record of this batch")),
        "the correction found the record it corrects in the same message: {:?}",
        stored.progress
    );
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::RecordCorrected)
            .await
            .expect("count"),
        1
    );

    // A changed repeat inside one message is refused, and nothing of it is stored.
    let next = log.record(order.batch_id, step_started("collection"));
    let mut changed = next.clone();
    changed.recorded_by = "someone-else".into();
    assert_refused!(
        store
            .ingest_events(SITE_A, &received(&[next, changed]), now())
            .await,
        Error::Protocol
    );
    assert_eq!(store.site(SITE_A).await.expect("site").acked_event_seq, 2);
}

pub async fn case_concurrent_ingests_commit_together_and_a_refused_one_changes_nothing(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let sites: Vec<String> = (0..8).map(|i| format!("site-g{i}")).collect();
    let mut orders = Vec::new();
    for site in &sites {
        add_active_site(&*store, site).await;
        qualify(&*store, site, RECIPE_ID, 1, None).await;
        orders.push(order_at(&*store, site).await);
    }
    // A message whose first event is good and changes its batch's state (audited),
    // then leaves a gap: refused whole, its audit entries with it, and the entries
    // of the messages committed with it still chain without them.
    let late = "site-g8".to_owned();
    add_active_site(&*store, &late).await;
    qualify(&*store, &late, RECIPE_ID, 1, None).await;
    let late_order = order_at(&*store, &late).await;
    let mut late_log = SiteLog::new();
    let good = late_log.record(late_order.batch_id, accepted(&late_order, &recipe));
    late_log.record(late_order.batch_id, step_started("collection"));
    let after_gap = late_log.record(late_order.batch_id, step_started("receipt"));
    // Every site sends its first event at the same moment, and two sites send a
    // message with a gap: the SQLite backend commits whatever arrives together in one
    // transaction, each message in a savepoint of its own. The half-good message
    // goes second, so that it is not alone in its group (the first caller finds the
    // write lock free and commits alone) and messages follow it in the same group.
    let mut tasks = Vec::new();
    let mut half_good = None;
    for (i, (site, order)) in sites.iter().zip(&orders).enumerate() {
        let event = SiteLog::new().record(order.batch_id, accepted(order, &recipe));
        let (shared, site) = (store.clone(), site.clone());
        tasks.push(tokio::spawn(async move {
            shared
                .ingest_events(&site, &received(&[event]), now())
                .await
        }));
        if i == 0 {
            let (store, site) = (store.clone(), late.clone());
            let events = [good.clone(), after_gap.clone()];
            half_good = Some(tokio::spawn(async move {
                store.ingest_events(&site, &received(&events), now()).await
            }));
        }
    }
    let half_good = half_good.expect("spawned");
    let mut gap_log = SiteLog::new();
    gap_log.record(orders[0].batch_id, accepted(&orders[0], &recipe));
    gap_log.record(orders[0].batch_id, step_started("collection"));
    let gap = gap_log.record(orders[0].batch_id, step_started("receipt"));
    let refused = {
        let (store, site) = (store.clone(), sites[0].clone());
        tokio::spawn(async move { store.ingest_events(&site, &received(&[gap]), now()).await })
    };
    for task in tasks {
        let ingested = task
            .await
            .expect("task")
            .expect("a valid message is stored");
        assert_eq!(ingested.acked_event_seq, 1);
    }
    assert_refused!(refused.await.expect("task"), Error::Protocol);
    assert_refused!(half_good.await.expect("task"), Error::Protocol);
    for (site, order) in sites.iter().zip(&orders) {
        assert_eq!(store.site(site).await.expect("site").acked_event_seq, 1);
        let events = store.batch_events(order.batch_id).await.expect("events");
        assert_eq!(events.len(), 1, "site {site}: {events:?}");
    }
    assert_eq!(store.site(&late).await.expect("site").acked_event_seq, 0);
    assert!(store
        .batch_events(late_order.batch_id)
        .await
        .expect("events")
        .is_empty());
    assert_eq!(
        store.order(late_order.order_id).await.expect("order").state,
        BatchState::Ordered,
        "the refused message's state change is not kept"
    );
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteEventsReplicated)
            .await
            .expect("count"),
        8
    );
    assert!(store.verify_audit().await.expect("read").is_ok());
}

pub async fn case_batch_awaits_release_exactly_when_its_record_is_complete(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let batch = order.batch_id;
    let mut log = SiteLog::new();
    assert_eq!(order.state, BatchState::Ordered);

    ingest(
        &*store,
        SITE_A,
        &[log.record(batch, accepted(&order, &recipe))],
    )
    .await;
    assert_eq!(state_of(&*store, batch).await, BatchState::Accepted);

    for step in &recipe.steps {
        if let Some(checkpoint) = &step.custody_checkpoint {
            ingest(
                &*store,
                SITE_A,
                &[log.record(batch, matched_scan(&order, &checkpoint.id))],
            )
            .await;
        }
        ingest(
            &*store,
            SITE_A,
            &[log.record(batch, step_started(&step.id))],
        )
        .await;
        let current = store.order_by_batch(batch).await.expect("order");
        assert_eq!(current.state, BatchState::InProcess);
        assert_eq!(current.current_step.as_deref(), Some(step.id.as_str()));
        ingest(
            &*store,
            SITE_A,
            &[log.record(batch, step_completed(&step.id))],
        )
        .await;
    }
    let all_steps_done = store.order_by_batch(batch).await.expect("order");
    assert_eq!(
        all_steps_done.state,
        BatchState::InProcess,
        "steps done, tests missing"
    );
    let step_ids: Vec<&str> = all_steps_done
        .progress
        .steps_completed
        .iter()
        .map(String::as_str)
        .collect();
    let mut expected_steps: Vec<&str> = recipe.steps.iter().map(|s| s.id.as_str()).collect();
    expected_steps.sort_unstable();
    assert_eq!(step_ids, expected_steps);

    let tests = release_gating_tests(&recipe);
    let (last, before_last) = tests.split_last().expect("the recipe has release tests");
    for test in before_last {
        let kind = qc_result(&test.id, passing_value(test), Outcome::Pass);
        ingest(&*store, SITE_A, &[log.record(batch, kind)]).await;
        assert_eq!(
            state_of(&*store, batch).await,
            BatchState::InProcess,
            "test {} recorded, {} still missing",
            test.id,
            last.id
        );
    }
    let kind = qc_result(&last.id, passing_value(last), Outcome::Pass);
    ingest(&*store, SITE_A, &[log.record(batch, kind)]).await;

    let complete = store.order_by_batch(batch).await.expect("order");
    assert_eq!(complete.state, BatchState::AwaitingRelease);
    assert_eq!(complete.current_step, None);
    assert!(complete.progress.exceptions.is_empty());
    assert!(
        !complete.progress.tests_recorded.contains("sterility"),
        "sterility may follow release and was not needed"
    );
    let record = store.batch_record(batch).await.expect("batch record");
    assert_eq!(record.qc.len(), tests.len());
    assert!(record.qc.iter().all(|q| q.hub_outcome == Outcome::Pass));
    assert_eq!(
        store
            .list_orders(None, Some(BatchState::AwaitingRelease))
            .await
            .expect("list orders")
            .iter()
            .map(|o| o.order_id)
            .collect::<Vec<_>>(),
        vec![order.order_id]
    );
}

pub async fn case_out_of_spec_result_is_kept_and_flagged(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let batch = order.batch_id;
    let mut log = SiteLog::new();
    let viability = QcValue::Numeric(55.0); // spec: min 70
    let cd3 = QcValue::Numeric(50.0); // spec: min 70
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(batch, accepted(&order, &recipe)),
            log.record(
                batch,
                qc_result("viability", viability.clone(), Outcome::OutOfSpecification),
            ),
            // The site calls this one a pass; the hub's own evaluation decides.
            log.record(batch, qc_result("cd3", cd3.clone(), Outcome::Pass)),
        ],
    )
    .await;

    let record = store.batch_record(batch).await.expect("batch record");
    assert_eq!(record.qc.len(), 2);
    let (oos, disputed) = (&record.qc[0], &record.qc[1]);
    assert_eq!(
        (oos.site_seq, oos.test_id.as_str(), &oos.value),
        (2, "viability", &viability)
    );
    assert_eq!(oos.hub_outcome, Outcome::OutOfSpecification);
    assert_eq!(oos.site_outcome, Outcome::OutOfSpecification);
    assert!(!oos.reason.is_empty(), "an OOS result says why");
    assert_eq!(
        (
            disputed.site_seq,
            disputed.hub_outcome,
            disputed.site_outcome
        ),
        (3, Outcome::OutOfSpecification, Outcome::Pass)
    );
    assert_eq!(record.order.progress.exceptions, vec![2, 3]);
    assert_eq!(
        record.order.progress.anomalies.len(),
        1,
        "the disagreement is an anomaly: {:?}",
        record.order.progress.anomalies
    );
}

pub async fn case_custody_mismatch_is_an_exception_and_audited(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let mismatch = EventKind::CustodyScan {
        checkpoint_id: "collection".into(),
        expected_coi: order.coi.clone(),
        scanned_coi: "G123426999999X".into(),
        verifiers: vec![TECHNICIAN.into(), "tech-two".into()],
        matched: false,
        location: "apheresis unit".into(),
        wristband: None,
    };
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(order.batch_id, accepted(&order, &recipe)),
            log.record(order.batch_id, mismatch),
        ],
    )
    .await;
    let current = store.order_by_batch(order.batch_id).await.expect("order");
    assert_eq!(current.progress.exceptions, vec![2]);
    assert!(current.progress.checkpoints_passed.is_empty());
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::CustodyMismatch)
            .await
            .expect("count"),
        1
    );
}

pub async fn case_command_acks_are_bounded_by_what_was_issued(store: Arc<dyn Store>) {
    seed(&*store).await;
    order_at(&*store, SITE_A).await;
    order_at(&*store, SITE_A).await;
    let acked = |site: Site| (site.last_command_seq, site.acked_command_seq);
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 0));

    assert_refused!(store.ack_commands(SITE_A, 3).await, Error::Protocol);
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 0));

    store.ack_commands(SITE_A, 1).await.expect("ack 1");
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 1));
    store.ack_commands(SITE_A, 2).await.expect("ack 2");
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 2));

    // A late, lower ack (e.g. from an old connection) never moves the cursor back;
    // whether it is refused or ignored is up to the backend.
    let _ = store.ack_commands(SITE_A, 1).await;
    assert_eq!(acked(store.site(SITE_A).await.expect("site")), (2, 2));
}

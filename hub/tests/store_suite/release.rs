//! Release: an e-signature bound to the record as reviewed, by a QA person who took
//! no part in the batch at its site, and the decision queued for the site.

use crate::fixtures::*;
use carrel_hub::model::{BatchState, Role};
use carrel_hub::store::{Error, Store};
use carrel_proto::event::{CommandKind, EventKind, Identity, ReleaseMeaning};
use carrel_proto::recipe::Outcome;
use chrono::Duration;
use std::sync::Arc;

pub async fn case_release_needs_a_complete_record(store: Arc<dyn Store>) {
    seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    assert_refused!(
        store
            .sign_release(&signature(&order, QA, hash), false, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert!(record.signatures.is_empty());
    assert_eq!(record.order.state, BatchState::Ordered);
}

pub async fn case_release_is_bound_to_the_record_as_reviewed(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::AwaitingRelease
    );

    // QA reviews, then the site records one more thing before QA signs.
    let stale = reviewed_sha256(&*store, order.batch_id).await;
    ingest(
        &*store,
        SITE_A,
        &[log.record(order.batch_id, deviation("formulation"))],
    )
    .await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_refused!(
        store
            .sign_release(&signature(&order, QA, stale.clone()), false, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert!(store
        .batch_record(order.batch_id)
        .await
        .expect("record")
        .signatures
        .is_empty());

    let current = reviewed_sha256(&*store, order.batch_id).await;
    assert_ne!(current, stale);
    let signed = signature(&order, QA, current.clone());
    let released = store
        .sign_release(&signed, false, now())
        .await
        .expect("sign release");
    assert_eq!(released.state, BatchState::Released);
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Released
    );
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures, vec![signed.clone()]);

    let queued = commands(&*store, SITE_A).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!((queued[1].seq, queued[1].batch_id), (2, order.batch_id));
    assert_eq!(
        queued[1].kind,
        CommandKind::ReleaseDecision {
            signature_id: signed.signature_id,
            meaning: ReleaseMeaning::Released,
            signer: QA.into(),
            signer_name: signed.signer_name.clone(),
            signed_at: signed.signed_at,
            record_sha256: current.clone(),
            reason: signed.reason.clone(),
            outstanding_tests: Vec::new(),
        }
    );

    // A second signature on a released batch is refused.
    assert_refused!(
        store
            .sign_release(&signature(&order, QA, current), false, now())
            .await,
        Error::FailedPrecondition
    );
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures, vec![signed]);
    assert_eq!(commands(&*store, SITE_A).await.len(), 2);
}

/// A record made by a person who signed in at the site (with the directory version
/// the hub sent it).
fn authenticated(version: u64) -> Identity {
    Identity::Authenticated {
        directory_version: version,
    }
}

pub async fn case_a_qa_who_took_part_at_the_site_may_not_release_it(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    add_user(&*store, "qa-bea", Role::Qa).await;
    let order = order_at(&*store, SITE_A).await;
    store
        .assign_user_to_site(TECHNICIAN, SITE_A, ADMIN)
        .await
        .expect("assign the technician");
    let version = store
        .assign_user_to_site(QA, SITE_A, ADMIN)
        .await
        .expect("assign QA");
    // The technician scans; QA verifies (the site wrote their name in its own case).
    // The agent records the rest.
    let mut log = SiteLog::new();
    let batch = order.batch_id;
    let agent = |log: &mut SiteLog, kind| log.record_as(batch, "agent", Identity::Agent, kind);
    let mut events = vec![agent(&mut log, accepted(&order, &recipe))];
    for step in &recipe.steps {
        if let Some(checkpoint) = &step.custody_checkpoint {
            let mut scan = matched_scan(&order, &checkpoint.id);
            if let EventKind::CustodyScan { verifiers, .. } = &mut scan {
                *verifiers = vec![TECHNICIAN.into(), QA.to_uppercase()];
            }
            events.push(log.record_as(batch, TECHNICIAN, authenticated(version), scan));
        }
        events.push(agent(&mut log, step_started(&step.id)));
        events.push(agent(&mut log, step_completed(&step.id)));
    }
    for test in recipe.all_tests() {
        let kind = qc_result(&test.id, passing_value(test), Outcome::Pass);
        events.push(log.record_as(batch, TECHNICIAN, authenticated(version), kind));
    }
    ingest(&*store, SITE_A, &events).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    match store
        .sign_release(&signature(&order, QA, hash.clone()), false, now())
        .await
    {
        Err(Error::PermissionDenied(why)) => {
            assert!(why.contains("took part") && why.contains(QA), "{why}")
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::AwaitingRelease
    );
    // The review names the people with their full names, and finds nothing wrong.
    let review = carrel_hub::record::review(
        store.batch_record(order.batch_id).await.expect("record"),
        false,
    );
    assert!(review.exceptions.is_empty(), "{:?}", review.exceptions);
    assert!(review.entries.iter().any(|e| e.recorded_by
        == format!(
            "{TECHNICIAN} (test) ({TECHNICIAN}) and {QA} (test) ({})",
            QA.to_uppercase()
        )));

    // Another QA person, who took no part, signs the same record.
    store
        .sign_release(&signature(&order, "qa-bea", hash), false, now())
        .await
        .expect("independent QA signs");
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Released
    );
}

pub async fn case_a_name_typed_at_a_site_neither_bars_nor_clears_a_qa(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let mut events = complete_record(&mut log, &order, &recipe);
    // Before sign-in at sites, a technician typed the QA's name as the one who measured.
    let test = &release_gating_tests(&recipe)[0];
    events.push(log.record_as(
        order.batch_id,
        QA,
        Identity::Unverified,
        qc_result(&test.id, passing_value(test), Outcome::Pass),
    ));
    ingest(&*store, SITE_A, &events).await;
    let review = carrel_hub::record::review(
        store.batch_record(order.batch_id).await.expect("record"),
        false,
    );
    assert!(
        review.exceptions.iter().any(|e| matches!(e, carrel_hub::record::Exception::Anomaly(a) if a.contains("identity not verified"))),
        "{:?}",
        review.exceptions
    );
    let hash = review.record_sha256.clone();
    store
        .sign_release(&signature(&order, QA, hash), false, now())
        .await
        .expect("a typed name proves nothing: QA may sign");
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Released
    );
}

pub async fn case_simulated_operators_work_is_released_only_where_accepted(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let mut events = vec![log.record(order.batch_id, accepted(&order, &recipe))];
    for step in &recipe.steps {
        if let Some(checkpoint) = &step.custody_checkpoint {
            let mut scan = matched_scan(&order, &checkpoint.id);
            if let EventKind::CustodyScan { verifiers, .. } = &mut scan {
                *verifiers = vec!["sim-operator-1".into(), "sim-operator-2".into()];
            }
            events.push(log.record_as(order.batch_id, "sim-operator-1", Identity::Simulated, scan));
        }
        events.push(log.record(order.batch_id, step_started(&step.id)));
        events.push(log.record(order.batch_id, step_completed(&step.id)));
    }
    for test in recipe.all_tests() {
        let kind = qc_result(&test.id, passing_value(test), Outcome::Pass);
        events.push(log.record(order.batch_id, kind));
    }
    ingest(&*store, SITE_A, &events).await;
    // QA sees them as exceptions where they will not be released, and marked as
    // simulated everywhere.
    let simulated_exceptions = |accept: bool| {
        let store = store.clone();
        async move {
            let record = store.batch_record(order.batch_id).await.expect("record");
            let review = carrel_hub::record::review(record, accept);
            assert!(review
                .entries
                .iter()
                .any(|e| e.recorded_by == "sim-operator-1 and sim-operator-2 (simulated)"));
            review
                .exceptions
                .iter()
                .filter(|e| format!("{e:?}").contains("simulator's operator"))
                .count()
        }
    };
    assert!(simulated_exceptions(false).await > 0);
    assert_eq!(simulated_exceptions(true).await, 0);
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    match store
        .sign_release(&signature(&order, QA, hash.clone()), false, now())
        .await
    {
        Err(Error::FailedPrecondition(why)) => assert!(why.contains("simulator"), "{why}"),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::AwaitingRelease
    );
    store
        .sign_release(&signature(&order, QA, hash), true, now())
        .await
        .expect("a dev hub releases simulated work");
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Released
    );
}

/// The decision queued for the site carries the signature exactly as the hub keeps it.
pub async fn case_release_decision_matches_the_stored_signature(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    // A signing time with digits below the microsecond, as `Utc::now()` gives on
    // Linux (the release service signs with `Utc::now()`).
    let mut signed = signature(&order, QA, hash);
    signed.signed_at = now() + Duration::nanoseconds(789);
    store
        .sign_release(&signed, false, now())
        .await
        .expect("sign release");

    let kept = store
        .batch_record(order.batch_id)
        .await
        .expect("record")
        .signatures;
    assert_eq!(kept.len(), 1);
    let queued = commands(&*store, SITE_A).await;
    let sent = match &queued.last().expect("a queued command").kind {
        CommandKind::ReleaseDecision {
            signature_id,
            signed_at,
            ..
        } => (*signature_id, *signed_at),
        other => panic!("expected a release decision, got {other:?}"),
    };
    // The hub's copy and the site's copy of one signature carry the same time, even
    // when the caller's clock has nanoseconds the store does not keep.
    assert_eq!(
        sent,
        (kept[0].signature_id, kept[0].signed_at),
        "the site's copy of the signature differs from the hub's"
    );
}

pub async fn case_a_record_after_the_decision_marks_the_batch_until_qa_reviews_it(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    store
        .sign_release(&signature(&order, QA, hash), false, now())
        .await
        .expect("sign release");

    // The hand-over scan is what follows a release: no mark.
    ingest(
        &*store,
        SITE_A,
        &[log.record(order.batch_id, matched_scan(&order, "handover"))],
    )
    .await;
    let after = store.order_by_batch(order.batch_id).await.expect("order");
    assert_eq!(after.state, BatchState::HandedOver);
    assert!(after.progress.unreviewed_changes().is_empty());

    // A QC result that arrives now changes what QA signed.
    let test = &release_gating_tests(&recipe)[0];
    let late = log.record(
        order.batch_id,
        qc_result(&test.id, passing_value(test), Outcome::Pass),
    );
    ingest(&*store, SITE_A, std::slice::from_ref(&late)).await;
    let changed = store.order_by_batch(order.batch_id).await.expect("order");
    assert_eq!(changed.progress.unreviewed_changes(), vec![late.seq]);
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::BatchChangedAfterDecision)
            .await
            .expect("count"),
        1
    );

    // The review is bound to the record as it is now, and clears the mark.
    let review = |sha: String| carrel_hub::model::ChangeReview {
        review_id: uuid::Uuid::new_v4(),
        batch_id: order.batch_id,
        signer: QA.into(),
        signer_name: "Q A".into(),
        through_seq: 0,
        record_sha256: sha,
        comment: "the late result is within specification".into(),
        signed_at: now(),
    };
    assert_refused!(
        store.review_change(&review("0".repeat(64))).await,
        Error::FailedPrecondition
    );
    let current = reviewed_sha256(&*store, order.batch_id).await;
    let reviewed = store
        .review_change(&review(current.clone()))
        .await
        .expect("review");
    assert!(reviewed.progress.unreviewed_changes().is_empty());
    assert_eq!(reviewed.progress.changes_reviewed_through, late.seq);
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.change_reviews.len(), 1);
    assert_eq!(record.change_reviews[0].through_seq, late.seq);
    assert_refused!(
        store.review_change(&review(current)).await,
        Error::FailedPrecondition
    );
}

pub async fn case_an_open_major_deviation_stops_release_until_qa_closes_it(store: Arc<dyn Store>) {
    use carrel_hub::model::deviation::Closure;
    use carrel_hub::store::deviations::NewDeviation;
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let mut events = complete_record(&mut log, &order, &recipe);
    events.push(log.record(
        order.batch_id,
        EventKind::DeviationRaised {
            deviation_id: "MAN-1-abc".into(),
            step_id: "expansion".into(),
            description: "incubator door found open for forty minutes".into(),
            classification: "major".into(),
        },
    ));
    ingest(&*store, SITE_A, &events).await;
    let found = store
        .deviations(Some(order.batch_id))
        .await
        .expect("deviations");
    assert_eq!(found.len(), 1);
    assert!(found[0].blocks_release());

    // Release refused while it is open; nothing changes.
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_refused!(
        store
            .sign_release(&signature(&order, QA, hash.clone()), false, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    // Bad input changes nothing: an unknown deviation, a short note, no root cause.
    assert_refused!(
        store
            .add_deviation_note(order.batch_id, "MAN-9", "looked at the logs today", QA)
            .await,
        Error::NotFound
    );
    assert_refused!(
        store
            .add_deviation_note(order.batch_id, "MAN-1-abc", "ok", QA)
            .await,
        Error::Invalid
    );
    let closure = |root_cause: &str| Closure {
        root_cause: root_cause.into(),
        capa_ref: "CAPA-7".into(),
        closed_by: QA.into(),
        closed_by_name: "Q A".into(),
        closed_at: now(),
    };
    assert_refused!(
        store
            .close_deviation(order.batch_id, "MAN-1-abc", &closure(""))
            .await,
        Error::Invalid
    );
    let untouched = store.deviations(Some(order.batch_id)).await.expect("read");
    assert!(untouched[0].notes.is_empty() && untouched[0].is_open());

    // A note, then the closure; a second closure is refused.
    store
        .add_deviation_note(
            order.batch_id,
            "MAN-1-abc",
            "door sensor log shows 38 minutes open",
            QA,
        )
        .await
        .expect("note");
    let closed = store
        .close_deviation(
            order.batch_id,
            "MAN-1-abc",
            &closure("worn latch; alarm muted during cleaning"),
        )
        .await
        .expect("close");
    assert!(!closed.is_open());
    assert_eq!(closed.notes.len(), 1);
    assert_eq!(
        closed.closure.as_ref().map(|c| c.capa_ref.as_str()),
        Some("CAPA-7")
    );
    assert_refused!(
        store
            .close_deviation(
                order.batch_id,
                "MAN-1-abc",
                &closure("closing it a second time")
            )
            .await,
        Error::FailedPrecondition
    );

    // One raised at the hub blocks too, until closed; a minor one does not.
    let hub_raised = store
        .raise_deviation(&NewDeviation {
            batch_id: order.batch_id,
            step_id: String::new(),
            classification: "critical".into(),
            description: "the shipper's temperature logger is missing".into(),
            raised_by: QA.into(),
        })
        .await
        .expect("raise");
    assert_eq!(hub_raised.deviation_id, "HUB-1");
    assert_refused!(
        store
            .raise_deviation(&NewDeviation {
                batch_id: order.batch_id,
                step_id: "no-such-step".into(),
                classification: "minor".into(),
                description: "something about a step that is not there".into(),
                raised_by: QA.into(),
            })
            .await,
        Error::Invalid
    );
    assert_refused!(
        store
            .sign_release(&signature(&order, QA, hash.clone()), false, now())
            .await,
        Error::FailedPrecondition
    );
    store
        .close_deviation(
            order.batch_id,
            "HUB-1",
            &closure("logger found in the returns box, data complete"),
        )
        .await
        .expect("close");
    store
        .sign_release(&signature(&order, QA, hash), false, now())
        .await
        .expect("released once every major or critical deviation is closed");
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Released
    );
    for (action, n) in [
        (carrel_hub::audit::Action::DeviationRaised, 1),
        (carrel_hub::audit::Action::DeviationNoteAdded, 1),
        (carrel_hub::audit::Action::DeviationClosed, 2),
    ] {
        assert_eq!(
            store.audit_count(action).await.expect("count"),
            n,
            "{action}"
        );
    }
}

/// Signs as `signature` but with another meaning and named tests.
fn signed_as(
    order: &carrel_hub::model::Order,
    sha: String,
    meaning: ReleaseMeaning,
    tests: &[&str],
) -> carrel_hub::model::Signature {
    carrel_hub::model::Signature {
        meaning,
        outstanding_tests: tests.iter().map(|t| t.to_string()).collect(),
        ..signature(order, QA, sha)
    }
}

pub async fn case_a_conditional_release_names_what_is_outstanding_and_completes_with_a_signature(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    // The protocol version the site's agent last spoke is kept (the service refuses
    // a conditional release for an agent older than 1.4).
    assert_eq!(store.site_protocol(SITE_A).await.expect("protocol"), "");
    for spoken in ["1.4", "1.4", "1.3"] {
        store
            .note_site_protocol(SITE_A, spoken)
            .await
            .expect("note the protocol");
        assert_eq!(store.site_protocol(SITE_A).await.expect("protocol"), spoken);
    }
    assert_refused!(store.site_protocol("nowhere").await, Error::NotFound);
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &record_before_late_results(&mut log, &order, &recipe),
    )
    .await;
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::AwaitingRelease
    );
    let sha = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    // Sterility is outstanding: a plain release, a conditional one naming the wrong
    // test, and a "completion" are each refused, and change nothing.
    for refused in [
        signed_as(&order, sha.clone(), ReleaseMeaning::Released, &[]),
        signed_as(
            &order,
            sha.clone(),
            ReleaseMeaning::ReleasedConditionally,
            &["endotoxin"],
        ),
        signed_as(
            &order,
            sha.clone(),
            ReleaseMeaning::ReleasedConditionally,
            &[],
        ),
        signed_as(
            &order,
            sha.clone(),
            ReleaseMeaning::ReleaseCompleted,
            &["sterility"],
        ),
    ] {
        assert_refused!(
            store.sign_release(&refused, false, now()).await,
            Error::FailedPrecondition
        );
    }
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);

    let conditional = signed_as(
        &order,
        sha.clone(),
        ReleaseMeaning::ReleasedConditionally,
        &["sterility"],
    );
    let released = store
        .sign_release(&conditional, false, now())
        .await
        .expect("conditional release");
    assert_eq!(released.state, BatchState::Released);
    assert_eq!(
        released.progress.release_awaits.iter().collect::<Vec<_>>(),
        ["sterility"]
    );
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures.len(), 1);
    assert_eq!(
        record.signatures[0].meaning,
        ReleaseMeaning::ReleasedConditionally
    );
    assert_eq!(record.signatures[0].outstanding_tests, ["sterility"]);
    // The site is told, with what the release waits for.
    let sent = commands(&*store, SITE_A).await;
    match &sent.last().expect("a command").kind {
        CommandKind::ReleaseDecision {
            meaning,
            outstanding_tests,
            ..
        } => {
            assert_eq!(*meaning, ReleaseMeaning::ReleasedConditionally);
            assert_eq!(outstanding_tests, &["sterility"]);
        }
        other => panic!("expected the release decision, got {other:?}"),
    }

    // Not complete until the result is in.
    let too_early = signed_as(
        &order,
        reviewed_sha256(&*store, order.batch_id).await,
        ReleaseMeaning::ReleaseCompleted,
        &[],
    );
    assert_refused!(
        store.complete_release(&too_early, false).await,
        Error::FailedPrecondition
    );

    // The hand-over, then sterility within specification: what the release
    // expected, so not a change after the decision.
    let sterility = recipe.test("sterility").expect("sterility test");
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(order.batch_id, matched_scan(&order, "handover")),
            log.record(
                order.batch_id,
                qc_result("sterility", passing_value(sterility), Outcome::Pass),
            ),
        ],
    )
    .await;
    let arrived = store.order_by_batch(order.batch_id).await.expect("order");
    assert_eq!(arrived.state, BatchState::HandedOver);
    assert!(arrived.progress.unreviewed_changes().is_empty());
    assert!(arrived.progress.follow_ups.is_empty());

    // A product handed over for infusion cannot be cancelled.
    assert_refused!(
        store
            .cancel_order(order.order_id, "changed my mind", PHYSICIAN, now())
            .await,
        Error::FailedPrecondition
    );

    // Completion binds to the record as it is now, and names what it confirms.
    let stale = signed_as(
        &order,
        sha,
        ReleaseMeaning::ReleaseCompleted,
        &["sterility"],
    );
    assert_refused!(
        store.complete_release(&stale, false).await,
        Error::FailedPrecondition
    );
    let current = reviewed_sha256(&*store, order.batch_id).await;
    let unnamed = signed_as(
        &order,
        current.clone(),
        ReleaseMeaning::ReleaseCompleted,
        &[],
    );
    assert_refused!(
        store.complete_release(&unnamed, false).await,
        Error::FailedPrecondition
    );
    let completed = store
        .complete_release(
            &signed_as(
                &order,
                current.clone(),
                ReleaseMeaning::ReleaseCompleted,
                &["sterility"],
            ),
            false,
        )
        .await
        .expect("release completed");
    assert_eq!(
        completed.state,
        BatchState::HandedOver,
        "the product stays where it is"
    );
    assert!(completed.progress.release_awaits.is_empty());
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures.len(), 2);
    assert_eq!(
        record.signatures[1].meaning,
        ReleaseMeaning::ReleaseCompleted
    );
    assert_eq!(record.signatures[1].signer, QA);
    assert_eq!(record.signatures[1].outstanding_tests, ["sterility"]);
    match &commands(&*store, SITE_A)
        .await
        .last()
        .expect("a command")
        .kind
    {
        CommandKind::ReleaseDecision { meaning, .. } => {
            assert_eq!(*meaning, ReleaseMeaning::ReleaseCompleted)
        }
        other => panic!("expected the completion, got {other:?}"),
    }
    // Twice is refused.
    assert_refused!(
        store
            .complete_release(
                &signed_as(
                    &order,
                    current,
                    ReleaseMeaning::ReleaseCompleted,
                    &["sterility"],
                ),
                false,
            )
            .await,
        Error::FailedPrecondition
    );
}

pub async fn case_a_result_out_of_specification_after_release_opens_a_follow_up_qa_closes(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &record_before_late_results(&mut log, &order, &recipe),
    )
    .await;
    let sha = reviewed_sha256(&*store, order.batch_id).await;
    store
        .sign_release(
            &signed_as(
                &order,
                sha,
                ReleaseMeaning::ReleasedConditionally,
                &["sterility"],
            ),
            false,
            now(),
        )
        .await
        .expect("conditional release");

    // Sterility shows growth after release: the follow-up opens with the record.
    let growth = log.record(
        order.batch_id,
        qc_result(
            "sterility",
            carrel_proto::recipe::QcValue::Text("growth detected".into()),
            Outcome::OutOfSpecification,
        ),
    );
    ingest(&*store, SITE_A, std::slice::from_ref(&growth)).await;
    let after = store.order_by_batch(order.batch_id).await.expect("order");
    assert_eq!(after.progress.follow_ups.len(), 1);
    assert_eq!(after.progress.follow_ups[0].site_seq, growth.seq);
    assert_eq!(after.progress.follow_ups[0].test_id, "sterility");
    assert!(!after.progress.follow_ups[0].closed);
    assert_eq!(after.progress.unreviewed_changes(), vec![growth.seq]);
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::FollowUpOpened)
            .await
            .expect("count"),
        1
    );
    let open = store.follow_ups(false).await.expect("follow-ups");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].order.batch_id, order.batch_id);

    // The release can never be completed now.
    let current = reviewed_sha256(&*store, order.batch_id).await;
    assert_refused!(
        store
            .complete_release(
                &signed_as(
                    &order,
                    current,
                    ReleaseMeaning::ReleaseCompleted,
                    &["sterility"],
                ),
                false,
            )
            .await,
        Error::FailedPrecondition
    );

    // QA closes it with a signature; a second closure, or one of another record, is refused.
    let closure = |seq: u64| carrel_hub::model::FollowUpClosure {
        closure_id: uuid::Uuid::new_v4(),
        batch_id: order.batch_id,
        site_seq: seq,
        signer: QA.into(),
        signer_name: "Q A".into(),
        outcome: "physician informed; patient started on antibiotics, cultures taken".into(),
        signed_at: now(),
    };
    assert_refused!(
        store.close_follow_up(&closure(growth.seq + 7)).await,
        Error::NotFound
    );
    let closed = store
        .close_follow_up(&closure(growth.seq))
        .await
        .expect("close");
    assert!(closed.progress.follow_ups[0].closed);
    assert_refused!(
        store.close_follow_up(&closure(growth.seq)).await,
        Error::FailedPrecondition
    );
    assert!(store.follow_ups(false).await.expect("open").is_empty());
    let all = store.follow_ups(true).await.expect("all");
    assert_eq!(all.len(), 1);
    let signed = all[0].closure.as_ref().expect("closure kept");
    assert_eq!(signed.signer, QA);
    assert!(signed.outcome.contains("antibiotics"));
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::FollowUpClosed)
            .await
            .expect("count"),
        1
    );
}

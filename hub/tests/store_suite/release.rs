//! Release: an e-signature bound to the record as reviewed, by someone who did not
//! operate the batch, and the decision queued for the site.

use crate::fixtures::*;
use carrel_hub::model::BatchState;
use carrel_hub::store::{Error, Store};
use carrel_proto::event::{CommandKind, ReleaseMeaning};
use chrono::Duration;
use std::sync::Arc;

pub async fn case_release_needs_a_complete_record(store: Arc<dyn Store>) {
    seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    assert_refused!(
        store
            .sign_release(&signature(&order, QA, hash), now())
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
            .sign_release(&signature(&order, QA, stale.clone()), now())
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
        .sign_release(&signed, now())
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
        }
    );

    // A second signature on a released batch is refused.
    assert_refused!(
        store
            .sign_release(&signature(&order, QA, current), now())
            .await,
        Error::FailedPrecondition
    );
    let record = store.batch_record(order.batch_id).await.expect("record");
    assert_eq!(record.signatures, vec![signed]);
    assert_eq!(commands(&*store, SITE_A).await.len(), 2);
}

pub async fn case_an_operator_may_not_release_their_own_batch(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let hash = reviewed_sha256(&*store, order.batch_id).await;
    let before = snapshot(&*store, SITE_A, order.batch_id).await;

    // TECHNICIAN recorded this batch's events.
    assert_refused!(
        store
            .sign_release(&signature(&order, TECHNICIAN, hash.clone()), now())
            .await,
        Error::PermissionDenied
    );
    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert!(store
        .batch_record(order.batch_id)
        .await
        .expect("record")
        .signatures
        .is_empty());
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::AwaitingRelease
    );

    // The same record signed by someone independent goes through.
    store
        .sign_release(&signature(&order, QA, hash), now())
        .await
        .expect("independent QA signs");
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
        .sign_release(&signed, now())
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

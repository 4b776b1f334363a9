//! Operations: what was committed is there after the store is closed and reopened.

use crate::fixtures::*;
use carrel_hub::model::{Role, SiteStatus};
use carrel_hub::store::{Ingested, Store};
use carrel_proto::event::SiteEvent;
use chrono::Duration;
use std::sync::Arc;

/// `reopen` closes the store it is given and opens the same database again.
pub async fn case_data_survives_reopening(
    store: Arc<dyn Store>,
    reopen: impl AsyncFnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    let sent = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("receipt")),
        log.record(order.batch_id, step_completed("receipt")),
    ];
    ingest(&*store, SITE_A, &sent).await;
    store.ack_commands(SITE_A, 1).await.expect("ack");
    store
        .create_session("session-1", QA, now() + Duration::hours(1))
        .await
        .expect("session");
    let before = snapshot(&*store, SITE_A, order.batch_id).await;
    assert_eq!(
        (
            before.site.acked_event_seq,
            before.site.last_command_seq,
            before.site.acked_command_seq
        ),
        (3, 1, 1)
    );

    let store = reopen(store).await;

    assert_eq!(snapshot(&*store, SITE_A, order.batch_id).await, before);
    assert_eq!(stored_events(&*store, order.batch_id).await, sent);
    assert_eq!(
        store.recipe(RECIPE_ID, 1).await.expect("recipe").sha256,
        recipe.sha256()
    );
    assert_eq!(store.user(QA).await.expect("user").role, Role::Qa);
    assert_eq!(
        store
            .session_user("session-1", now())
            .await
            .expect("session")
            .username,
        QA
    );
    assert_eq!(
        store.site(SITE_B).await.expect("site").status,
        SiteStatus::Active
    );

    // The cursors carry on where they were: repeats are repeats, the next seq is 4.
    let next = log.record(order.batch_id, step_started("selection"));
    let resent: Vec<SiteEvent> = sent.iter().cloned().chain([next]).collect();
    let done = ingest(&*store, SITE_A, &resent).await;
    assert_eq!(
        done,
        Ingested {
            acked_event_seq: 4,
            new_events: 1
        }
    );
    let second = order_at(&*store, SITE_A).await;
    assert_ne!(second.coi, order.coi, "COI serials carry on too");
    let seqs: Vec<u64> = commands(&*store, SITE_A)
        .await
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

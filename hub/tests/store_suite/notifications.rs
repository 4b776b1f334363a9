//! Notifications: the notifier turns audit entries into outbox rows once; the outbox
//! records delivery attempts, backoff and requeues.

use crate::fixtures::*;
use carrel_hub::audit::NewEntry;
use carrel_hub::model::Role;
use carrel_hub::notify::{Channel, Kind, NewSubscription, OutboxEntry, OutboxState};
use carrel_hub::store::notify::OutboxFilter;
use carrel_hub::store::{Error, Store};
use carrel_proto::recipe::{Outcome, QcValue};
use chrono::Duration;
use std::collections::BTreeSet;
use std::sync::Arc;
use uuid::Uuid;

async fn subscribe(
    store: &dyn Store,
    owner: &str,
    kinds: &[Kind],
    site_id: Option<&str>,
) -> carrel_hub::notify::Subscription {
    store
        .subscribe(
            &NewSubscription {
                owner: owner.into(),
                kinds: kinds.iter().copied().collect::<BTreeSet<_>>(),
                channel: Channel::Webhook {
                    url: format!("https://receiver.example/{owner}"),
                    secret: "test-secret".into(),
                },
                site_id: site_id.map(str::to_owned),
            },
            now(),
        )
        .await
        .expect("subscribe")
}

/// Runs the notifier until it has read the whole audit trail, `limit` entries a pass.
async fn notify_all(store: &dyn Store, limit: u32) -> usize {
    let mut queued = 0;
    loop {
        let pass = store
            .run_notifier(limit, now())
            .await
            .expect("notifier pass");
        queued += pass.queued;
        if pass.entries == 0 {
            return queued;
        }
    }
}

/// A subscription's notifications, oldest first.
async fn outbox_of(store: &dyn Store, subscription_id: Uuid) -> Vec<OutboxEntry> {
    let mut rows = store
        .outbox(&OutboxFilter {
            subscription_id: Some(subscription_id),
            ..OutboxFilter::default()
        })
        .await
        .expect("outbox");
    rows.reverse();
    rows
}

fn kinds_of(rows: &[OutboxEntry]) -> Vec<Kind> {
    rows.iter().map(|r| r.kind).collect()
}

pub async fn case_notifier_queues_each_happening_once(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let qa = subscribe(&*store, QA, &Kind::ALL, None).await;
    let physician = subscribe(
        &*store,
        PHYSICIAN,
        &[Kind::AwaitingRelease, Kind::Released, Kind::Delayed],
        None,
    )
    .await;

    // Order 1 runs to release; order 2 is accepted and has a deviation and an
    // out-of-specification result (the site called it a pass: the hub decides).
    let first = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &first, &recipe)).await;
    let sha = reviewed_sha256(&*store, first.batch_id).await;
    store
        .sign_release(&signature(&first, QA, sha), false, now())
        .await
        .expect("sign");
    let second = order_at(&*store, SITE_A).await;
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(second.batch_id, accepted(&second, &recipe)),
            log.record(second.batch_id, deviation("selection")),
            log.record(
                second.batch_id,
                qc_result("viability", QcValue::Numeric(20.0), Outcome::Pass),
            ),
        ],
    )
    .await;
    // The scheduling side records delays as `order.delayed`.
    store
        .audit(
            &NewEntry::new(
                "hub",
                carrel_hub::audit::Action::OrderDelayed,
                carrel_hub::audit::Object::Order(first.order_id),
            )
            .batch(first.batch_id)
            .value("2026-12-24T10:00:00Z")
            .reason("incubator fault"),
        )
        .await
        .expect("audit a delay");

    // Small passes: the cursor moves in steps, each with its rows.
    let queued = notify_all(&*store, 3).await;
    let qa_rows = outbox_of(&*store, qa.subscription_id).await;
    assert_eq!(
        kinds_of(&qa_rows),
        vec![
            Kind::OrderDispatched,
            Kind::AwaitingRelease,
            Kind::CellsReceived,
            Kind::Released,
            Kind::OrderDispatched,
            Kind::Deviation,
            Kind::OutOfSpecification,
            Kind::Delayed,
        ]
    );
    let physician_rows = outbox_of(&*store, physician.subscription_id).await;
    assert_eq!(
        kinds_of(&physician_rows),
        vec![Kind::AwaitingRelease, Kind::Released, Kind::Delayed]
    );
    assert_eq!(queued, qa_rows.len() + physician_rows.len());
    assert!(qa_rows
        .iter()
        .all(|r| r.state == OutboxState::Pending && r.attempts == 0));
    assert_eq!(qa_rows[0].coi.as_deref(), Some(first.coi.as_str()));
    assert_eq!(qa_rows[4].batch_id, Some(second.batch_id));
    // The payload names ids, never the patient's pseudonym.
    assert!(qa_rows[0].payload.contains(&first.coi));
    assert!(!qa_rows
        .iter()
        .any(|r| r.payload.contains(&first.patient_pseudonym)
            || r.summary.contains(&first.patient_pseudonym)));

    // Running again reads nothing new and queues nothing twice.
    assert_eq!(notify_all(&*store, 100).await, 0);
    assert_eq!(outbox_of(&*store, qa.subscription_id).await, qa_rows);

    // A subscription made later hears only of later happenings.
    let late = subscribe(&*store, QA, &[Kind::Delayed], None).await;
    assert_eq!(notify_all(&*store, 100).await, 0);
    assert!(outbox_of(&*store, late.subscription_id).await.is_empty());
}

pub async fn case_a_physicians_subscription_matches_only_their_orders(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    add_user(&*store, "dr-other", Role::Physician).await;
    let mine = subscribe(&*store, PHYSICIAN, &Kind::ALL, None).await;
    let theirs = subscribe(&*store, "dr-other", &Kind::ALL, None).await;
    let site_b_only = subscribe(&*store, QA, &[Kind::OrderDispatched], Some(SITE_B)).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[log.record(order.batch_id, accepted(&order, &recipe))],
    )
    .await;
    store
        .touch_site(SITE_B, now() - Duration::minutes(30))
        .await
        .expect("touch");
    store
        .check_site_links(std::time::Duration::from_secs(60), now())
        .await
        .expect("check links");
    notify_all(&*store, 100).await;

    assert_eq!(
        kinds_of(&outbox_of(&*store, mine.subscription_id).await),
        vec![Kind::OrderDispatched],
        "the ordering physician hears of their order, not of a site's link"
    );
    assert!(outbox_of(&*store, theirs.subscription_id).await.is_empty());
    assert!(outbox_of(&*store, site_b_only.subscription_id)
        .await
        .is_empty());
}

pub async fn case_the_ordering_physician_finds_critical_news_in_the_console_list(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    add_user(&*store, "dr-other", Role::Physician).await;
    // Nobody subscribed to anything.
    let first = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &first, &recipe)).await;
    let sha = reviewed_sha256(&*store, first.batch_id).await;
    store
        .sign_release(&signature(&first, QA, sha), false, now())
        .await
        .expect("sign");
    let second = order_at(&*store, SITE_A).await;
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(second.batch_id, accepted(&second, &recipe)),
            log.record(second.batch_id, deviation("selection")),
            log.record(
                second.batch_id,
                qc_result("viability", QcValue::Numeric(20.0), Outcome::Pass),
            ),
        ],
    )
    .await;
    // An administrator cancels one order; the physician cancels another themself.
    let by_admin = order_at(&*store, SITE_A).await;
    store
        .cancel_order(
            by_admin.order_id,
            "patient moved to another hospital",
            ADMIN,
            now(),
        )
        .await
        .expect("cancel");
    let by_physician = order_at(&*store, SITE_A).await;
    store
        .cancel_order(by_physician.order_id, "ordered twice", PHYSICIAN, now())
        .await
        .expect("cancel");
    notify_all(&*store, 5).await;

    let inbox = store.inbox(PHYSICIAN, 100).await.expect("inbox");
    let mut kinds: Vec<Kind> = inbox.iter().map(|n| n.kind).collect();
    kinds.reverse();
    assert_eq!(
        kinds,
        vec![Kind::Deviation, Kind::OutOfSpecification, Kind::Cancelled],
        "critical news only, and not what the physician did themself: {inbox:#?}"
    );
    let cancelled = &inbox[0];
    assert_eq!(cancelled.order_id, Some(by_admin.order_id));
    assert_eq!(cancelled.coi.as_deref(), Some(by_admin.coi.as_str()));
    assert!(
        cancelled
            .summary
            .contains("patient moved to another hospital")
            && cancelled.summary.contains(ADMIN),
        "{}",
        cancelled.summary
    );
    assert!(inbox.iter().all(|n| n.read_at.is_none()));
    assert!(store
        .inbox("dr-other", 100)
        .await
        .expect("inbox")
        .is_empty());

    // The notifier reading the trail again adds nothing twice.
    notify_all(&*store, 100).await;
    assert_eq!(store.inbox(PHYSICIAN, 100).await.expect("inbox"), inbox);

    // Read one, then the rest; someone else cannot mark them.
    assert_eq!(store.inbox_unread(PHYSICIAN).await.expect("unread"), 3);
    assert_eq!(
        store
            .mark_inbox_read("dr-other", Some(inbox[1].inbox_id), now())
            .await
            .expect("mark"),
        0
    );
    assert_eq!(
        store
            .mark_inbox_read(PHYSICIAN, Some(inbox[1].inbox_id), now())
            .await
            .expect("mark"),
        1
    );
    assert_eq!(store.inbox_unread(PHYSICIAN).await.expect("unread"), 2);
    assert_eq!(
        store
            .mark_inbox_read(PHYSICIAN, None, now())
            .await
            .expect("mark"),
        2
    );
    assert_eq!(store.inbox_unread(PHYSICIAN).await.expect("unread"), 0);
    let read = store.inbox(PHYSICIAN, 100).await.expect("inbox");
    assert!(read.iter().all(|n| n.read_at.is_some()));
}

pub async fn case_deliveries_back_off_fail_and_can_be_requeued(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let sub = subscribe(&*store, QA, &[Kind::OrderDispatched, Kind::Deviation], None).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(order.batch_id, accepted(&order, &recipe)),
            log.record(order.batch_id, deviation("receipt")),
        ],
    )
    .await;
    notify_all(&*store, 100).await;
    let rows = outbox_of(&*store, sub.subscription_id).await;
    assert_eq!(
        kinds_of(&rows),
        vec![Kind::OrderDispatched, Kind::Deviation]
    );
    let (first, second) = (rows[0].notification_id, rows[1].notification_id);
    let lease = std::time::Duration::from_secs(60);

    // Only the oldest pending notification of a subscription is handed out, and a
    // claimed one is not handed out again while its lease runs.
    let t0 = now();
    let claimed = store.claim_deliveries(10, lease, t0).await.expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|d| d.entry.notification_id)
            .collect::<Vec<_>>(),
        vec![first]
    );
    assert!(
        matches!(claimed[0].channel, Channel::Webhook { ref secret, .. } if secret == "test-secret")
    );
    assert!(store
        .claim_deliveries(10, lease, t0)
        .await
        .expect("claim")
        .is_empty());

    // A failed attempt is retried at the time given, not before.
    let retry_at = t0 + Duration::seconds(5);
    store
        .delivery_failed(first, "webhook answered 500", Some(retry_at), t0)
        .await
        .expect("record failure");
    let entry = store.outbox_entry(first).await.expect("entry");
    assert_eq!(
        (entry.state, entry.attempts, entry.next_attempt_at),
        (OutboxState::Pending, 1, retry_at)
    );
    assert_eq!(entry.last_error.as_deref(), Some("webhook answered 500"));
    assert!(store
        .claim_deliveries(10, lease, t0 + Duration::seconds(4))
        .await
        .expect("claim")
        .is_empty());
    let again = store
        .claim_deliveries(10, lease, t0 + Duration::seconds(6))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry.notification_id, first);

    // Attempts used up: failed, counted, and the next one of the subscription is due.
    store
        .delivery_failed(first, "no answer within 100 ms", None, t0)
        .await
        .expect("record failure");
    let entry = store.outbox_entry(first).await.expect("entry");
    assert_eq!((entry.state, entry.attempts), (OutboxState::Failed, 2));
    let counts = store.outbox_counts().await.expect("counts");
    assert_eq!((counts.pending, counts.failed), (1, 1));
    let next = store
        .claim_deliveries(10, lease, t0 + Duration::seconds(7))
        .await
        .expect("claim");
    assert_eq!(next[0].entry.notification_id, second);
    store
        .delivery_succeeded(second, t0 + Duration::seconds(7))
        .await
        .expect("record success");
    let delivered = store.outbox_entry(second).await.expect("entry");
    assert_eq!(
        (delivered.state, delivered.attempts),
        (OutboxState::Delivered, 1)
    );
    assert_eq!(delivered.delivered_at, Some(t0 + Duration::seconds(7)));

    // Requeue: only a failed one, audited, attempts start over.
    assert_refused!(
        store.requeue(second, ADMIN, now()).await,
        Error::FailedPrecondition
    );
    let requeued = store.requeue(first, ADMIN, now()).await.expect("requeue");
    assert_eq!(
        (requeued.state, requeued.attempts),
        (OutboxState::Pending, 0)
    );
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::NotificationRequeued)
            .await
            .expect("count"),
        1
    );
    let claimed = store
        .claim_deliveries(10, lease, now() + Duration::seconds(1))
        .await
        .expect("claim");
    assert_eq!(claimed[0].entry.notification_id, first);
    // The requeue's own audit entry is not a notification.
    assert_eq!(notify_all(&*store, 100).await, 0);

    // Ending the subscription drops what it still owed.
    store
        .unsubscribe(sub.subscription_id, QA, now())
        .await
        .expect("unsubscribe");
    let entry = store.outbox_entry(first).await.expect("entry");
    assert_eq!(entry.state, OutboxState::Failed);
    assert_eq!(entry.last_error.as_deref(), Some("unsubscribed"));
    assert_refused!(
        store.subscription(sub.subscription_id).await,
        Error::NotFound
    );
    assert_refused!(
        store.requeue(first, ADMIN, now()).await,
        Error::FailedPrecondition
    );
}

pub async fn case_a_site_link_down_is_reported_once_per_outage(store: Arc<dyn Store>) {
    seed(&*store).await;
    let sub = subscribe(
        &*store,
        QA,
        &[Kind::SiteLinkDown, Kind::SiteLinkRestored],
        Some(SITE_A),
    )
    .await;
    let down_after = std::time::Duration::from_secs(300);
    store
        .touch_site(SITE_A, now() - Duration::minutes(10))
        .await
        .expect("touch");
    // Site B never connected: not down, never up.
    assert_eq!(
        store
            .check_site_links(down_after, now())
            .await
            .expect("check"),
        vec![SITE_A.to_owned()]
    );
    assert!(store
        .check_site_links(down_after, now())
        .await
        .expect("check")
        .is_empty());
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteLinkDown)
            .await
            .expect("count"),
        1
    );

    store.touch_site(SITE_A, now()).await.expect("touch");
    assert_eq!(
        store
            .check_site_links(down_after, now())
            .await
            .expect("check"),
        vec![SITE_A.to_owned()]
    );
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteLinkRestored)
            .await
            .expect("count"),
        1
    );
    assert!(store
        .check_site_links(down_after, now())
        .await
        .expect("check")
        .is_empty());
    notify_all(&*store, 100).await;
    let rows = outbox_of(&*store, sub.subscription_id).await;
    assert_eq!(
        kinds_of(&rows),
        vec![Kind::SiteLinkDown, Kind::SiteLinkRestored]
    );
    assert_eq!(rows[0].site_id.as_deref(), Some(SITE_A));
}

pub async fn case_concurrent_notifiers_and_workers_queue_and_claim_each_once(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let mut subscriptions = Vec::new();
    for _ in 0..4 {
        subscriptions.push(subscribe(&*store, QA, &[Kind::OrderDispatched], None).await);
    }
    let mut log = SiteLog::new();
    for _ in 0..5 {
        let order = order_at(&*store, SITE_A).await;
        ingest(
            &*store,
            SITE_A,
            &[log.record(order.batch_id, accepted(&order, &recipe))],
        )
        .await;
    }
    // Two notifiers (as in two hub processes) at once, one entry a pass.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { notify_all(&*store, 1).await })
        })
        .collect();
    let mut queued = 0;
    for run in runs {
        queued += run.await.expect("notifier task");
    }
    assert_eq!(queued, 4 * 5);
    for subscription in &subscriptions {
        assert_eq!(
            outbox_of(&*store, subscription.subscription_id).await.len(),
            5
        );
    }

    // Two workers at once: each due head is handed to one of them only.
    let at = now();
    let claims: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_deliveries(10, std::time::Duration::from_secs(60), at)
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.extend(
            claim
                .await
                .expect("claim task")
                .into_iter()
                .map(|d| d.entry.notification_id),
        );
    }
    let distinct: BTreeSet<_> = claimed.iter().collect();
    assert_eq!(claimed.len(), 4, "one head per subscription: {claimed:?}");
    assert_eq!(distinct.len(), 4);
}

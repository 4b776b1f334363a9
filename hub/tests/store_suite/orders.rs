//! Orders: each queues a batch order for its site with its own COI; refused orders
//! create nothing; a cancel stops a batch in process.

use crate::fixtures::*;
use carrel_hub::model::{BatchState, NewOrder, SiteStatus};
use carrel_hub::store::{Error, Store};
use carrel_proto::coi::Coi;
use carrel_proto::event::{CommandKind, HubCommand};
use carrel_proto::recipe::Recipe;
use chrono::Duration;
use std::sync::Arc;

pub async fn case_order_queues_a_batch_order_command(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    assert_eq!(order.state, BatchState::Ordered);
    assert_eq!(
        (order.recipe_id.as_str(), order.recipe_version),
        (RECIPE_ID, 1)
    );
    assert_eq!(store.order(order.order_id).await.expect("order"), order);

    let queued = commands(&*store, SITE_A).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let command = &queued[0];
    assert_eq!((command.seq, command.batch_id), (1, order.batch_id));
    let stored_recipe = store.recipe(RECIPE_ID, 1).await.expect("stored recipe");
    match &command.kind {
        CommandKind::BatchOrder {
            order_id,
            coi,
            patient_pseudonym,
            requested_collection_date,
            recipe_id,
            recipe_version,
            recipe_json,
            recipe_sha256,
        } => {
            assert_eq!(*order_id, order.order_id);
            assert_eq!(*coi, order.coi);
            assert_eq!(patient_pseudonym, "PAT-0001");
            assert_eq!(requested_collection_date, "2026-12-01");
            assert_eq!((recipe_id.as_str(), *recipe_version), (RECIPE_ID, 1));
            assert_eq!(*recipe_json, stored_recipe.canonical_json);
            assert_eq!(*recipe_sha256, recipe.sha256());
            let shipped = Recipe::from_json(recipe_json).expect("the shipped JSON is a recipe");
            assert_eq!(
                shipped.sha256(),
                *recipe_sha256,
                "the SHA-256 matches the JSON"
            );
        }
        other => panic!("expected a batch order, got {other:?}"),
    }
    assert_eq!(store.site(SITE_A).await.expect("site").last_command_seq, 1);
    assert!(
        commands(&*store, SITE_B).await.is_empty(),
        "command logs are per site"
    );
}

pub async fn case_successive_orders_get_distinct_valid_cois(store: Arc<dyn Store>) {
    seed(&*store).await;
    let orders = [
        order_at(&*store, SITE_A).await,
        order_at(&*store, SITE_A).await,
        order_at(&*store, SITE_B).await,
    ];
    let mut cois: Vec<&str> = orders.iter().map(|o| o.coi.as_str()).collect();
    for coi in &cois {
        let parsed = Coi::parse(coi).expect("a valid COI");
        assert!(parsed.as_str().starts_with("G1234"), "{coi}");
    }
    cois.sort_unstable();
    cois.dedup();
    assert_eq!(cois.len(), 3, "every order has its own COI");

    let seqs = |cmds: Vec<HubCommand>| cmds.iter().map(|c| c.seq).collect::<Vec<_>>();
    assert_eq!(seqs(commands(&*store, SITE_A).await), vec![1, 2]);
    assert_eq!(seqs(commands(&*store, SITE_B).await), vec![1]);
    let after_first = store.commands_after(SITE_A, 1, 10).await.expect("commands");
    assert_eq!(seqs(after_first), vec![2]);
    let limited = store.commands_after(SITE_A, 0, 1).await.expect("commands");
    assert_eq!(seqs(limited), vec![1]);
}

pub async fn case_refused_orders_create_nothing(store: Arc<dyn Store>) {
    seed(&*store).await;
    let existing = order_at(&*store, SITE_A).await;
    store
        .add_site(
            "site-pending",
            "not enrolled",
            "token-pending",
            now() + Duration::hours(1),
            ADMIN,
        )
        .await
        .expect("add pending site");
    add_active_site(&*store, "site-suspended").await;
    let suspended = store
        .set_site_status("site-suspended", SiteStatus::Suspended, ADMIN, "inspection")
        .await
        .expect("suspend site");
    assert_eq!(suspended.status, SiteStatus::Suspended);

    assert_refused!(
        store.create_order(&new_order("site-unknown"), now()).await,
        Error::Invalid
    );
    assert_refused!(
        store
            .create_order(&new_order("site-suspended"), now())
            .await,
        Error::FailedPrecondition
    );
    assert_refused!(
        store.create_order(&new_order("site-pending"), now()).await,
        Error::FailedPrecondition
    );
    let unknown_product = NewOrder {
        recipe_id: "no-such-product".into(),
        ..new_order(SITE_A)
    };
    assert_refused!(
        store.create_order(&unknown_product, now()).await,
        Error::Invalid
    );

    let orders = store.list_orders(None, None).await.expect("list orders");
    assert_eq!(
        orders.iter().map(|o| o.order_id).collect::<Vec<_>>(),
        vec![existing.order_id]
    );
    assert_eq!(commands(&*store, SITE_A).await.len(), 1);
    for site_id in ["site-pending", "site-suspended"] {
        assert!(commands(&*store, site_id).await.is_empty(), "{site_id}");
        let site = store.site(site_id).await.expect("site");
        assert_eq!(site.last_command_seq, 0, "{site_id}");
    }
    assert_eq!(store.site(SITE_A).await.expect("site").last_command_seq, 1);
}

pub async fn case_cancel_stops_a_batch_in_process(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(order.batch_id, accepted(&order, &recipe)),
            log.record(order.batch_id, step_started("receipt")),
        ],
    )
    .await;
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::InProcess
    );

    let cancelled = store
        .cancel_order(order.order_id, "patient too ill", PHYSICIAN, now())
        .await
        .expect("cancel");
    assert_eq!(cancelled.state, BatchState::Cancelled);
    assert_eq!(cancelled.current_step, None);
    assert_eq!(
        store.order(order.order_id).await.expect("order").state,
        BatchState::Cancelled
    );
    let queued = commands(&*store, SITE_A).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!((queued[1].seq, queued[1].batch_id), (2, order.batch_id));
    assert_eq!(
        queued[1].kind,
        CommandKind::CancelBatch {
            reason: "patient too ill".into(),
            cancelled_by: PHYSICIAN.into(),
        }
    );

    assert_refused!(
        store
            .cancel_order(order.order_id, "again", PHYSICIAN, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(commands(&*store, SITE_A).await.len(), 2);
    assert_eq!(
        state_of(&*store, order.batch_id).await,
        BatchState::Cancelled
    );
}

pub async fn case_an_order_request_sent_twice_places_one_order(store: Arc<dyn Store>) {
    seed(&*store).await;
    let key = uuid::Uuid::now_v7();
    let request = NewOrder {
        request_id: Some(key),
        ..new_order(SITE_A)
    };
    // A double click: both at once; then a reload of the answer.
    let (first, second) = tokio::join!(
        store.create_order(&request, now()),
        store.create_order(&request, now())
    );
    let first = first.expect("placed");
    assert_eq!(second.expect("answered").order_id, first.order_id);
    let again = store.create_order(&request, now()).await.expect("answered");
    assert_eq!(again.order_id, first.order_id);
    let orders = store.list_orders(None, None).await.expect("list orders");
    assert_eq!(orders.len(), 1, "one order for one request");
    assert_eq!(
        commands(&*store, SITE_A).await.len(),
        1,
        "one batch order sent"
    );

    // Another request (a new form) is another order.
    let next = store
        .create_order(
            &NewOrder {
                request_id: Some(uuid::Uuid::now_v7()),
                ..new_order(SITE_A)
            },
            now(),
        )
        .await
        .expect("a second order");
    assert_ne!(next.order_id, first.order_id);
    assert_eq!(store.list_orders(None, None).await.expect("list").len(), 2);
}

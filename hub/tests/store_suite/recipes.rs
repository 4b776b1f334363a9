//! Recipes: a published version is immutable.

use crate::fixtures::*;
use carrel_hub::store::{Error, Store};
use std::sync::Arc;

pub async fn case_recipe_versions_are_immutable(store: Arc<dyn Store>) {
    let recipe = shipped_recipe();
    store.publish_recipe(&recipe).await.expect("publish");
    store
        .publish_recipe(&recipe)
        .await
        .expect("publishing the same document again is fine");
    assert_eq!(store.list_recipes().await.expect("list").len(), 1);

    let mut changed = recipe.clone();
    changed.title = "Changed after publication".into();
    assert_refused!(
        store.publish_recipe(&changed).await,
        Error::FailedPrecondition
    );
    let stored = store.recipe(RECIPE_ID, 1).await.expect("v1");
    assert_eq!(stored.sha256, recipe.sha256());
    assert_eq!(stored.recipe.title, recipe.title);
    assert_eq!(store.list_recipes().await.expect("list").len(), 1);

    // The change is welcome as a new version.
    changed.version = 2;
    store.publish_recipe(&changed).await.expect("publish v2");
    let latest = store.latest_recipe(RECIPE_ID).await.expect("latest");
    assert_eq!(
        (latest.recipe.version, latest.sha256.as_str()),
        (2, changed.sha256().as_str())
    );
    let v1 = store.recipe(RECIPE_ID, 1).await.expect("v1");
    assert_eq!(v1.sha256, recipe.sha256());
}

fn signed(by: &str, sha256: &str) -> carrel_hub::model::recipe_change::DraftSignature {
    carrel_hub::model::recipe_change::DraftSignature {
        by: by.into(),
        name: format!("{by} (test)"),
        at: now(),
        sha256: sha256.into(),
    }
}

pub async fn case_a_new_version_is_drafted_submitted_approved_by_another_and_pinned_when_effective(
    store: Arc<dyn Store>,
) {
    use carrel_hub::model::recipe_change::DraftState;
    use chrono::Duration;
    let v1 = seed(&*store).await;
    const AUTHOR: &str = "qa-author";
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.steps[0].duration_hours += 1.0;

    // What breaks a rule, or changes a published version, is refused; nothing kept.
    let mut broken = v2.clone();
    broken.steps[1].id = broken.steps[0].id.clone();
    assert_refused!(
        store.save_recipe_draft(&broken, AUTHOR).await,
        Error::Invalid
    );
    assert_refused!(
        store.save_recipe_draft(&v1, AUTHOR).await,
        Error::FailedPrecondition
    );
    assert!(store.recipe_drafts().await.expect("drafts").is_empty());

    let draft = store.save_recipe_draft(&v2, AUTHOR).await.expect("draft");
    assert_eq!(draft.state(), DraftState::Draft);
    // Only the author submits, and what they read.
    assert_refused!(
        store
            .submit_recipe(RECIPE_ID, 2, &signed(QA, &draft.sha256))
            .await,
        Error::PermissionDenied
    );
    assert_refused!(
        store
            .submit_recipe(RECIPE_ID, 2, &signed(AUTHOR, &"0".repeat(64)))
            .await,
        Error::FailedPrecondition
    );
    store
        .submit_recipe(RECIPE_ID, 2, &signed(AUTHOR, &draft.sha256))
        .await
        .expect("submit");
    // Edited after submission: back to a draft, and not approvable as submitted.
    let mut edited = v2.clone();
    edited.title = "Edited after submission".into();
    let edited_draft = store
        .save_recipe_draft(&edited, AUTHOR)
        .await
        .expect("edit");
    assert_eq!(edited_draft.state(), DraftState::Draft);
    assert_refused!(
        store
            .approve_recipe(RECIPE_ID, 2, &signed(QA, &draft.sha256), now())
            .await,
        Error::FailedPrecondition
    );
    store
        .submit_recipe(RECIPE_ID, 2, &signed(AUTHOR, &edited_draft.sha256))
        .await
        .expect("submit again");
    // The author may not approve; another QA person does, effective tomorrow.
    assert_refused!(
        store
            .approve_recipe(RECIPE_ID, 2, &signed(AUTHOR, &edited_draft.sha256), now())
            .await,
        Error::PermissionDenied
    );
    let approved = store
        .approve_recipe(
            RECIPE_ID,
            2,
            &signed(QA, &edited_draft.sha256),
            now() + Duration::days(1),
        )
        .await
        .expect("approve");
    assert_eq!(approved.state(), DraftState::Approved);
    assert_eq!(
        store.recipe(RECIPE_ID, 2).await.expect("published").sha256,
        edited_draft.sha256
    );
    // Not yet in force: new orders still pin v1.
    assert_eq!(
        store
            .latest_recipe(RECIPE_ID)
            .await
            .expect("in force")
            .recipe
            .version,
        1
    );
    let first = order_at(&*store, SITE_A).await;
    assert_eq!(first.recipe_version, 1);

    // v3, effective at once: the next order pins it; the first keeps v1.
    let mut v3 = edited.clone();
    v3.version = 3;
    let d3 = store
        .save_recipe_draft(&v3, AUTHOR)
        .await
        .expect("draft v3");
    store
        .submit_recipe(RECIPE_ID, 3, &signed(AUTHOR, &d3.sha256))
        .await
        .expect("submit v3");
    store
        .approve_recipe(RECIPE_ID, 3, &signed(QA, &d3.sha256), now())
        .await
        .expect("approve v3");
    let second = store
        .create_order(
            &carrel_hub::model::NewOrder {
                patient_pseudonym: "PAT-0002".into(),
                ..new_order(SITE_A)
            },
            now(),
        )
        .await
        .expect("second order");
    assert_eq!(second.recipe_version, 3);
    assert_eq!(
        store
            .order(first.order_id)
            .await
            .expect("first")
            .recipe_version,
        1
    );

    // Retired: no longer pinned; retiring twice is refused.
    store
        .retire_recipe(RECIPE_ID, 3, "superseded by a corrected version", QA)
        .await
        .expect("retire");
    assert_eq!(
        store
            .latest_recipe(RECIPE_ID)
            .await
            .expect("in force")
            .recipe
            .version,
        1
    );
    assert_refused!(
        store.retire_recipe(RECIPE_ID, 3, "again", QA).await,
        Error::FailedPrecondition
    );
    for (action, n) in [
        (carrel_hub::audit::Action::RecipeDrafted, 3),
        (carrel_hub::audit::Action::RecipeSubmitted, 3),
        (carrel_hub::audit::Action::RecipeApproved, 2),
        (carrel_hub::audit::Action::RecipeRetired, 1),
    ] {
        assert_eq!(
            store.audit_count(action).await.expect("count"),
            n,
            "{action}"
        );
    }
}

/// Heard from since: the epoch (the simulator was heard from at some point).
const HEARD: chrono::DateTime<chrono::Utc> = chrono::DateTime::UNIX_EPOCH;

pub async fn case_a_draft_is_dry_run_on_the_simulator_site_and_never_released(
    store: Arc<dyn Store>,
) {
    use carrel_hub::model::recipe_change::DRY_RUN_SITE;
    use carrel_hub::model::BatchState;
    use carrel_proto::event::CommandKind;
    let v1 = seed(&*store).await;
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.steps[0].duration_hours += 1.0;
    let draft = store.save_recipe_draft(&v2, QA).await.expect("draft");

    // A hub without the simulator site refuses, and keeps nothing.
    assert_refused!(
        store.dry_run_draft(RECIPE_ID, 2, QA, "G1234", HEARD).await,
        Error::FailedPrecondition
    );
    add_active_site(&*store, DRY_RUN_SITE).await;
    // Registered but never heard from (no agent runs it): refused, nothing kept.
    assert_refused!(
        store.dry_run_draft(RECIPE_ID, 2, QA, "G1234", HEARD).await,
        Error::FailedPrecondition
    );
    store
        .touch_site(DRY_RUN_SITE, now())
        .await
        .expect("heard from");
    assert!(store
        .dry_runs_of(RECIPE_ID, 2)
        .await
        .expect("runs")
        .is_empty());
    assert!(commands(&*store, DRY_RUN_SITE).await.is_empty());
    assert_refused!(
        store.dry_run_draft(RECIPE_ID, 9, QA, "G1234", HEARD).await,
        Error::NotFound
    );

    // The dry run: an order at the simulator site, pinning a frozen copy of the
    // draft, sent with the draft's own document.
    let (run, ran) = store
        .dry_run_draft(RECIPE_ID, 2, QA, "G1234", HEARD)
        .await
        .expect("dry run");
    assert_eq!(ran, draft.sha256);
    assert!(run.dry_run);
    assert_eq!(run.site_id, DRY_RUN_SITE);
    assert_eq!(
        (run.recipe_id.as_str(), run.recipe_version),
        ("cd19-car-t~dry-run-1", 2)
    );
    let sent = commands(&*store, DRY_RUN_SITE).await;
    assert_eq!(sent.len(), 1);
    match &sent[0].kind {
        CommandKind::BatchOrder {
            recipe_sha256,
            recipe_json,
            ..
        } => {
            assert_eq!(recipe_sha256, &draft.sha256);
            let document = carrel_proto::recipe::Recipe::from_json(recipe_json).expect("recipe");
            assert_eq!(document, v2);
        }
        other => panic!("expected a batch order, got {other:?}"),
    }

    // The copy is no product: not listed, not in force, not orderable; nor is the
    // simulator site open to a patient's order.
    let products = store.list_recipes().await.expect("recipes");
    assert!(
        products.iter().all(|r| r.recipe.version == 1),
        "{products:?}"
    );
    assert_eq!(
        store
            .latest_recipe(RECIPE_ID)
            .await
            .expect("v1")
            .recipe
            .version,
        1
    );
    assert_refused!(
        store
            .create_order(
                &carrel_hub::model::NewOrder {
                    recipe_id: run.recipe_id.clone(),
                    ..new_order(SITE_A)
                },
                now(),
            )
            .await,
        Error::Invalid
    );
    assert_refused!(
        store.create_order(&new_order(DRY_RUN_SITE), now()).await,
        Error::Invalid
    );

    // Its record is made and kept like any batch's; it is out of the release queue
    // and never released.
    let mut log = SiteLog::new();
    let events = complete_record(&mut log, &run, &v2);
    ingest(&*store, DRY_RUN_SITE, &events).await;
    assert_eq!(
        state_of(&*store, run.batch_id).await,
        BatchState::AwaitingRelease
    );
    let queue = store
        .list_orders(None, Some(BatchState::AwaitingRelease))
        .await
        .expect("queue");
    assert!(queue.iter().all(|o| o.batch_id != run.batch_id));
    // Its numeric results are not charted with the product's batches.
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        carrel_proto::event::EventKind::QcResult {
            value: carrel_proto::recipe::QcValue::Numeric(_),
            ..
        }
    )));
    assert_eq!(
        store.measured_products().await.expect("products"),
        Vec::<String>::new()
    );
    let sha = reviewed_sha256(&*store, run.batch_id).await;
    assert_refused!(
        store
            .sign_release(&signature(&run, QA, sha), true, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(
        state_of(&*store, run.batch_id).await,
        BatchState::AwaitingRelease
    );
    assert!(store
        .batch_record(run.batch_id)
        .await
        .expect("record")
        .signatures
        .is_empty());
    assert_eq!(commands(&*store, DRY_RUN_SITE).await.len(), 1);
    // A finished dry run is over: suspending the simulator site flags nothing on it.
    let before = store.order_by_batch(run.batch_id).await.expect("order");
    store
        .set_site_status(
            DRY_RUN_SITE,
            carrel_hub::model::SiteStatus::Suspended,
            ADMIN,
            "Simulator maintenance window",
        )
        .await
        .expect("suspend");
    assert_eq!(
        store
            .order_by_batch(run.batch_id)
            .await
            .expect("order")
            .progress,
        before.progress
    );
    store
        .set_site_status(
            DRY_RUN_SITE,
            carrel_hub::model::SiteStatus::Active,
            ADMIN,
            "Simulator maintenance done",
        )
        .await
        .expect("resume");
    store
        .touch_site(DRY_RUN_SITE, now())
        .await
        .expect("heard from");

    // An edit after the dry run: the run keeps the text it ran; a second run runs
    // the new text.
    let mut edited = v2.clone();
    edited.title = "Edited after its dry run".into();
    let edited_draft = store.save_recipe_draft(&edited, QA).await.expect("edit");
    let (second, ran) = store
        .dry_run_draft(RECIPE_ID, 2, QA, "G1234", HEARD)
        .await
        .expect("second dry run");
    assert_eq!(ran, edited_draft.sha256);
    assert_eq!(second.recipe_id, "cd19-car-t~dry-run-2");
    let runs = store.dry_runs_of(RECIPE_ID, 2).await.expect("runs");
    let shas: Vec<(&str, &str)> = runs
        .iter()
        .map(|(o, sha)| (o.recipe_id.as_str(), sha.as_str()))
        .collect();
    assert_eq!(
        shas,
        [
            ("cd19-car-t~dry-run-1", draft.sha256.as_str()),
            ("cd19-car-t~dry-run-2", edited_draft.sha256.as_str())
        ]
    );

    // Approved (by another person), the version is published under the product's
    // own id; no copy stands in for it, and an approved version is not dry-run.
    store
        .submit_recipe(RECIPE_ID, 2, &signed(QA, &edited_draft.sha256))
        .await
        .expect("submit");
    store
        .approve_recipe(
            RECIPE_ID,
            2,
            &signed("qa-second", &edited_draft.sha256),
            now(),
        )
        .await
        .expect("approve");
    assert_eq!(
        store.recipe(RECIPE_ID, 2).await.expect("v2").sha256,
        edited_draft.sha256
    );
    assert_eq!(
        store
            .recipe("cd19-car-t~dry-run-1", 2)
            .await
            .expect("copy")
            .sha256,
        draft.sha256
    );
    assert_eq!(
        store
            .latest_recipe(RECIPE_ID)
            .await
            .expect("v2")
            .recipe
            .version,
        2
    );
    assert_refused!(
        store.dry_run_draft(RECIPE_ID, 2, QA, "G1234", HEARD).await,
        Error::FailedPrecondition
    );
}

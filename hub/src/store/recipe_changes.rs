//! The write transactions of master batch records under change control (draft,
//! submit, approve, retire), written once for every backend like those in
//! [`super::transactions`]. The signers' identities were proved by the caller.

use super::backend::OrderKey;
use super::backend::Tx;
use super::transactions::required_reason;
use super::transactions::{next_coi, place_order};
use super::{ts, Error, Result, StoredRecipe};
use crate::audit::{Action, NewEntry, Object};
use crate::model::recipe_change::{
    dry_run_copy_id, DraftSignature, DraftState, RecipeDraft, DRY_RUN_SITE,
};
use crate::model::{BatchState, Order, Progress, SiteStatus};
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, Utc};
use uuid::Uuid;

fn object(recipe_id: &str, version: u32) -> Object {
    Object::Recipe {
        id: recipe_id.to_owned(),
        version,
    }
}

async fn draft_of(tx: &mut Tx<'_>, recipe_id: &str, version: u32) -> Result<RecipeDraft> {
    tx.recipe_draft(recipe_id, version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("draft of recipe {recipe_id} v{version}")))
}

/// Saves a draft of a new version (or its author's edit of it, which takes a
/// submitted draft back to a draft).
pub(crate) async fn save_draft(
    mut tx: Tx<'_>,
    recipe: &Recipe,
    author: &str,
    now: DateTime<Utc>,
) -> Result<RecipeDraft> {
    recipe
        .validate()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    if tx
        .recipe_sha256(&recipe.id, recipe.version)
        .await?
        .is_some()
    {
        return Err(Error::FailedPrecondition(format!(
            "recipe {} v{} is published already; a change is a new version",
            recipe.id, recipe.version
        )));
    }
    if let Some(newer) = tx
        .latest_recipe(&recipe.id)
        .await?
        .filter(|r| r.recipe.version > recipe.version)
    {
        return Err(Error::Invalid(format!(
            "version {} is older than the published v{} of {}; a new version numbers higher",
            recipe.version, newer.recipe.version, recipe.id
        )));
    }
    if let Some(existing) = tx.recipe_draft(&recipe.id, recipe.version).await? {
        if existing.author != author {
            return Err(Error::PermissionDenied(format!(
                "the draft of {} v{} is {}'s; only its author edits it",
                recipe.id, recipe.version, existing.author
            )));
        }
        if existing.state() == DraftState::Approved {
            return Err(Error::FailedPrecondition(format!(
                "{} v{} is approved; a change is a new version",
                recipe.id, recipe.version
            )));
        }
    }
    let draft = RecipeDraft {
        recipe: recipe.clone(),
        sha256: recipe.sha256(),
        author: author.to_owned(),
        drafted_at: now,
        submitted: None,
        approved: None,
        effective_from: None,
    };
    tx.save_recipe_draft(&draft).await?;
    tx.audit(
        NewEntry::new(
            author,
            Action::RecipeDrafted,
            object(&recipe.id, recipe.version),
        )
        .value(draft.sha256.clone()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(draft)
}

/// The author signs the draft, as it is (`sha256`), as ready for approval.
pub(crate) async fn submit(
    mut tx: Tx<'_>,
    recipe_id: &str,
    version: u32,
    signature: &DraftSignature,
    now: DateTime<Utc>,
) -> Result<RecipeDraft> {
    let mut draft = draft_of(&mut tx, recipe_id, version).await?;
    if draft.state() != DraftState::Draft {
        return Err(Error::FailedPrecondition(format!(
            "{recipe_id} v{version} is {} already",
            draft.state().as_str()
        )));
    }
    if draft.author != signature.by {
        return Err(Error::PermissionDenied(format!(
            "{recipe_id} v{version} is {}'s draft; its author submits it",
            draft.author
        )));
    }
    if draft.sha256 != signature.sha256 {
        return Err(Error::FailedPrecondition(format!(
            "the draft changed since you read it (read {}, now {}); read it again before submitting",
            signature.sha256, draft.sha256
        )));
    }
    draft.submitted = Some(signature.clone());
    tx.save_recipe_draft(&draft).await?;
    tx.audit(
        NewEntry::new(
            &signature.by,
            Action::RecipeSubmitted,
            object(recipe_id, version),
        )
        .value(signature.sha256.clone()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(draft)
}

/// Another QA person approves the submitted draft as submitted: it is published,
/// effective from `effective_from`.
pub(crate) async fn approve(
    mut tx: Tx<'_>,
    recipe_id: &str,
    version: u32,
    signature: &DraftSignature,
    effective_from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<RecipeDraft> {
    let mut draft = draft_of(&mut tx, recipe_id, version).await?;
    let Some(submitted) = draft.submitted.clone().filter(|_| draft.approved.is_none()) else {
        return Err(Error::FailedPrecondition(format!(
            "{recipe_id} v{version} is {}, not submitted: only a submitted draft is approved (an edit after submission takes it back to a draft)",
            draft.state().as_str()
        )));
    };
    if signature.by == draft.author {
        return Err(Error::PermissionDenied(format!(
            "{} wrote {recipe_id} v{version} and may not approve it; another QA person must",
            draft.author
        )));
    }
    if signature.sha256 != submitted.sha256 || draft.sha256 != submitted.sha256 {
        return Err(Error::FailedPrecondition(format!(
            "the draft you reviewed ({}) is not the one submitted ({}); review the submitted version",
            signature.sha256, submitted.sha256
        )));
    }
    if !tx.insert_recipe(&draft.recipe, &draft.sha256, now).await? {
        return Err(Error::FailedPrecondition(format!(
            "recipe {recipe_id} v{version} is published already"
        )));
    }
    tx.set_recipe_effective(recipe_id, version, effective_from)
        .await?;
    draft.approved = Some(signature.clone());
    draft.effective_from = Some(effective_from);
    tx.save_recipe_draft(&draft).await?;
    tx.audit(
        NewEntry::new(
            &signature.by,
            Action::RecipeApproved,
            object(recipe_id, version),
        )
        .change(
            format!("submitted by {} ({})", submitted.by, submitted.sha256),
            format!("effective from {}", ts(effective_from)),
        ),
        now,
    )
    .await?;
    tx.audit(
        NewEntry::new(
            &signature.by,
            Action::RecipePublished,
            object(recipe_id, version),
        )
        .value(draft.sha256.clone()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(draft)
}

/// Retires a published version: new orders no longer pin it; running batches keep it.
pub(crate) async fn retire(
    mut tx: Tx<'_>,
    recipe_id: &str,
    version: u32,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let reason = required_reason(reason)?;
    let (_, retired) = tx.recipe_dates(recipe_id, version).await?;
    if let Some(at) = retired {
        return Err(Error::FailedPrecondition(format!(
            "{recipe_id} v{version} was retired on {}",
            at.format("%Y-%m-%d")
        )));
    }
    tx.retire_recipe(recipe_id, version, by, now).await?;
    tx.audit(
        NewEntry::new(by, Action::RecipeRetired, object(recipe_id, version)).reason(reason),
        now,
    )
    .await?;
    tx.commit().await
}

/// Sends a draft, as it is now, to the hub's simulator site for a dry run: a whole
/// batch made to a frozen copy of the draft (kept as `<product>~dry-run-<n>`, so a
/// later edit or approval does not change what the batch ran), recorded like any
/// other batch and marked as a dry run. It is never released, and is left out of
/// the queues, the schedule, site qualification and notifications.
pub(crate) async fn dry_run(
    mut tx: Tx<'_>,
    recipe_id: &str,
    version: u32,
    by: &str,
    facility: &str,
    heard_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Order, String)> {
    let site = match tx.lock_site(DRY_RUN_SITE).await {
        Err(Error::NotFound(_)) => {
            return Err(Error::FailedPrecondition(
                "this hub runs no simulator site for dry runs; set dry_run_simulator = true in the configuration of one hub replica".into(),
            ))
        }
        other => other?,
    };
    if site.status != SiteStatus::Active {
        return Err(Error::FailedPrecondition(format!(
            "the dry-run simulator site is {}, not active; nothing was started",
            site.status.as_str()
        )));
    }
    // A dry run sent to a simulator nobody runs would wait for ever.
    if site.last_contact_at.is_none_or(|at| at < heard_since) {
        return Err(Error::FailedPrecondition(format!(
            "the dry-run simulator site has not been heard from since {}; check that the hub replica with dry_run_simulator = true is running (its log says why the simulator is not)",
            site.last_contact_at
                .map_or_else(|| "it was registered".to_owned(), |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        )));
    }
    let draft = draft_of(&mut tx, recipe_id, version).await?;
    if draft.state() == DraftState::Approved {
        return Err(Error::FailedPrecondition(format!(
            "{recipe_id} v{version} is approved already; a dry run tries a draft before approval"
        )));
    }
    let n = tx.dry_run_copies(recipe_id).await? + 1;
    let copy_id = dry_run_copy_id(recipe_id, n);
    tx.insert_dry_run_copy(&copy_id, &draft.recipe, &draft.sha256, now)
        .await?;
    // What was just inserted, not read back: a read inside this transaction would
    // keep the copy in the recipe cache even if the transaction rolled back.
    let recipe = StoredRecipe {
        sha256: draft.sha256.clone(),
        canonical_json: draft.recipe.to_canonical_json(),
        recipe: draft.recipe.clone(),
    };
    let coi = next_coi(&mut tx, facility, now).await?;
    let order = Order {
        order_id: Uuid::now_v7(),
        batch_id: Uuid::now_v7(),
        coi: coi.to_string(),
        patient_pseudonym: format!("DRY-RUN-{n}"),
        recipe_id: copy_id.clone(),
        recipe_version: version,
        site_id: DRY_RUN_SITE.to_owned(),
        requested_collection_date: now.format("%Y-%m-%d").to_string(),
        physician: by.to_owned(),
        created_at: now,
        state: BatchState::Ordered,
        current_step: None,
        progress: Progress::default(),
        decision_recorded: false,
        updated_at: now,
        dry_run: true,
    };
    place_order(&mut tx, &order, &recipe, now).await?;
    tx.audit(
        NewEntry::new(by, Action::RecipeDryRun, object(recipe_id, version))
            .batch(order.batch_id)
            .value(format!(
                "dry run {n} of draft {} as {copy_id}: batch {}, COI {coi}",
                draft.sha256, order.batch_id
            )),
        now,
    )
    .await?;
    let order = tx.order(OrderKey::Order(order.order_id)).await?;
    tx.commit().await?;
    Ok((order, draft.sha256))
}

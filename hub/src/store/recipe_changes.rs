//! The write transactions of master batch records under change control (draft,
//! submit, approve, retire), written once for every backend like those in
//! [`super::transactions`]. The signers' identities were proved by the caller.

use super::backend::Tx;
use super::transactions::required_reason;
use super::{ts, Error, Result};
use crate::audit::{Action, NewEntry, Object};
use crate::model::recipe_change::{DraftSignature, DraftState, RecipeDraft};
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, Utc};

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

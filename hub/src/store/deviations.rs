//! The write transactions of deviations (raised at the hub, investigated, closed by
//! QA), written once for every backend like those in [`super::transactions`].

use super::backend::{OrderKey, Tx};
use super::{Error, Result};
use crate::audit::{Action, NewEntry, Object};
use crate::model::deviation::{
    self, register, Closure, Deviation, DeviationRow, Note, CLASSIFICATIONS, MIN_FINDING_CHARS,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The deviations of a batch, as the transaction sees them.
pub(crate) async fn of_batch(tx: &mut Tx<'_>, batch_id: Uuid) -> Result<Vec<Deviation>> {
    let events = tx.deviation_events(Some(batch_id)).await?;
    let rows = tx.deviation_rows(Some(batch_id)).await?;
    let notes = tx.deviation_notes(Some(batch_id)).await?;
    Ok(register(&events, &rows, &notes))
}

/// The deviation, open; its hub row kept (made from the site's record if needed).
async fn open_deviation(tx: &mut Tx<'_>, batch_id: Uuid, deviation_id: &str) -> Result<Deviation> {
    let found = of_batch(tx, batch_id)
        .await?
        .into_iter()
        .find(|d| d.deviation_id == deviation_id)
        .ok_or_else(|| Error::NotFound(format!("deviation {deviation_id} of batch {batch_id}")))?;
    if let Some(closure) = &found.closure {
        return Err(Error::FailedPrecondition(format!(
            "deviation {deviation_id} was closed by {} on {}; a closed deviation is not changed (raise a new one)",
            closure.closed_by,
            closure.closed_at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    tx.insert_deviation_row(&DeviationRow {
        batch_id,
        deviation_id: deviation_id.to_owned(),
        site_id: found.site_id.clone(),
        raised_at_hub: None,
        classification: found.classification.clone(),
        closure: None,
    })
    .await?;
    Ok(found)
}

/// What a person at the hub raises.
#[derive(Debug, Clone)]
pub struct NewDeviation {
    pub batch_id: Uuid,
    pub step_id: String,
    pub classification: String,
    pub description: String,
    pub raised_by: String,
}

/// Raises a deviation at the hub; its id is `HUB-` and its number among the batch's
/// deviations raised at the hub.
pub(crate) async fn raise(
    mut tx: Tx<'_>,
    new: &NewDeviation,
    now: DateTime<Utc>,
) -> Result<Deviation> {
    if !CLASSIFICATIONS.contains(&new.classification.as_str()) {
        return Err(Error::Invalid(format!(
            "classification {:?}: choose minor, major or critical",
            new.classification
        )));
    }
    if new.description.trim().chars().count() < MIN_FINDING_CHARS {
        return Err(Error::Invalid(format!(
            "describe what happened (at least {MIN_FINDING_CHARS} characters)"
        )));
    }
    let order = tx.lock_order(OrderKey::Batch(new.batch_id)).await?;
    if !new.step_id.is_empty() {
        let recipe = tx.recipe(&order.recipe_id, order.recipe_version).await?;
        if !recipe.recipe.steps.iter().any(|s| s.id == new.step_id) {
            return Err(Error::Invalid(format!(
                "step {:?} is not a step of {} v{}",
                new.step_id, order.recipe_id, order.recipe_version
            )));
        }
    }
    let at_hub = tx
        .deviation_rows(Some(new.batch_id))
        .await?
        .iter()
        .filter(|r| r.raised_at_hub.is_some())
        .count();
    let deviation_id = format!("HUB-{}", at_hub + 1);
    tx.insert_deviation_row(&DeviationRow {
        batch_id: new.batch_id,
        deviation_id: deviation_id.clone(),
        site_id: order.site_id.clone(),
        raised_at_hub: Some((
            new.raised_by.clone(),
            now,
            new.step_id.clone(),
            new.description.trim().to_owned(),
        )),
        classification: new.classification.clone(),
        closure: None,
    })
    .await?;
    tx.audit(
        NewEntry::new(
            &new.raised_by,
            Action::DeviationRaised,
            Object::Batch(new.batch_id),
        )
        .batch(new.batch_id)
        .value(format!(
            "{deviation_id} ({}): {}",
            new.classification,
            new.description.trim()
        )),
        now,
    )
    .await?;
    let raised = of_batch(&mut tx, new.batch_id)
        .await?
        .into_iter()
        .find(|d| d.deviation_id == deviation_id)
        .ok_or_else(|| Error::Corrupt(format!("deviation {deviation_id} just raised is gone")))?;
    tx.commit().await?;
    Ok(raised)
}

/// Adds an investigation note to an open deviation.
pub(crate) async fn add_note(
    mut tx: Tx<'_>,
    batch_id: Uuid,
    deviation_id: &str,
    text: &str,
    author: &str,
    now: DateTime<Utc>,
) -> Result<Deviation> {
    let text = text.trim();
    if text.chars().count() < MIN_FINDING_CHARS {
        return Err(Error::Invalid(format!(
            "a note says what was found or done (at least {MIN_FINDING_CHARS} characters)"
        )));
    }
    tx.lock_order(OrderKey::Batch(batch_id)).await?;
    open_deviation(&mut tx, batch_id, deviation_id).await?;
    tx.insert_deviation_note(&Note {
        note_id: Uuid::now_v7(),
        batch_id,
        deviation_id: deviation_id.to_owned(),
        author: author.to_owned(),
        written_at: now,
        text: text.to_owned(),
    })
    .await?;
    tx.audit(
        NewEntry::new(author, Action::DeviationNoteAdded, Object::Batch(batch_id))
            .batch(batch_id)
            .value(format!("{deviation_id}: {text}")),
        now,
    )
    .await?;
    finish(tx, batch_id, deviation_id).await
}

/// Closes an open deviation with QA's signed root cause and CAPA reference. The
/// signer's identity was proved by the caller.
pub(crate) async fn close(
    mut tx: Tx<'_>,
    batch_id: Uuid,
    deviation_id: &str,
    closure: &Closure,
    now: DateTime<Utc>,
) -> Result<Deviation> {
    if closure.root_cause.trim().chars().count() < MIN_FINDING_CHARS {
        return Err(Error::Invalid(format!(
            "a deviation is closed with its root cause (at least {MIN_FINDING_CHARS} characters)"
        )));
    }
    tx.lock_order(OrderKey::Batch(batch_id)).await?;
    let open = open_deviation(&mut tx, batch_id, deviation_id).await?;
    tx.close_deviation_row(batch_id, deviation_id, closure)
        .await?;
    tx.audit(
        NewEntry::new(
            &closure.closed_by,
            Action::DeviationClosed,
            Object::Batch(batch_id),
        )
        .batch(batch_id)
        .value(format!(
            "{deviation_id} ({}) closed; root cause: {}; CAPA: {}",
            open.classification,
            closure.root_cause.trim(),
            if closure.capa_ref.trim().is_empty() {
                "none"
            } else {
                closure.capa_ref.trim()
            }
        )),
        now,
    )
    .await?;
    finish(tx, batch_id, deviation_id).await
}

/// Commits and answers the deviation as it is now.
async fn finish(mut tx: Tx<'_>, batch_id: Uuid, deviation_id: &str) -> Result<Deviation> {
    let changed = of_batch(&mut tx, batch_id)
        .await?
        .into_iter()
        .find(|d| d.deviation_id == deviation_id)
        .ok_or_else(|| Error::Corrupt(format!("deviation {deviation_id} is gone")))?;
    tx.commit().await?;
    Ok(changed)
}

/// The refusal of a release while major or critical deviations are open.
pub(crate) async fn check_release(tx: &mut Tx<'_>, batch_id: Uuid) -> Result<()> {
    let open = deviation::blocking(&of_batch(tx, batch_id).await?);
    if open.is_empty() {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "the batch has open deviation(s) {}: a major or critical deviation must be investigated and closed by QA (root cause, CAPA) before the batch is released; it may be rejected",
        open.join(", ")
    )))
}

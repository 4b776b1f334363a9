//! Manual entries at the site: off-line QC results (and retests), and corrections.
//!
//! Records are never edited in place (ARCHITECTURE.md invariant 5). A correction is
//! a new record that points at the one it corrects, with a reason; both stay on the
//! record. An out-of-specification result is never corrected or overwritten: it can
//! only be followed by a retest, which is a new result pointing at it.

use crate::store::{self, LocalBatch, Store};
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::recipe::{Evaluation, Outcome, QcValue, Recipe};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("no record {0} at this site")]
    NoSuchRecord(u64),
    #[error(transparent)]
    Store(#[from] store::Error),
}

fn invalid(text: impl Into<String>) -> Error {
    Error::Invalid(text.into())
}

/// A QC result typed in by a technician.
pub struct ManualResult<'a> {
    pub batch: &'a LocalBatch,
    pub test_id: &'a str,
    pub value: &'a str,
    pub by: &'a str,
    /// The earlier result this retests.
    pub retest_of: Option<u64>,
}

/// Records a QC result against the batch's pinned specification; returns the record
/// and its evaluation (an out-of-specification result is recorded all the same).
pub async fn record_result(
    store: &Store,
    entry: ManualResult<'_>,
) -> Result<(SiteEvent, Evaluation), Error> {
    let batch = entry.batch;
    if entry.by.trim().is_empty() {
        return Err(invalid("who recorded the result is required"));
    }
    if matches!(
        batch.state,
        store::BatchState::Cancelled | store::BatchState::Ordered
    ) {
        return Err(invalid(format!(
            "batch {} is {}; no results can be recorded",
            batch.batch_id,
            batch.state.as_str()
        )));
    }
    let recipe =
        Recipe::from_json(&batch.recipe_json).map_err(|e| invalid(format!("recipe: {e}")))?;
    let test = recipe.test(entry.test_id).ok_or_else(|| {
        let ids: Vec<&str> = recipe.all_tests().map(|t| t.id.as_str()).collect();
        invalid(format!(
            "test {:?} is not in recipe {} v{}; its tests are {}",
            entry.test_id,
            recipe.id,
            recipe.version,
            ids.join(", ")
        ))
    })?;
    let value = if test.spec.accepted.is_empty() {
        let number: f64 = entry.value.trim().parse().map_err(|_| {
            invalid(format!(
                "{:?} is not a number; {} is measured in {}",
                entry.value, test.name, test.unit
            ))
        })?;
        if !number.is_finite() {
            return Err(invalid(format!("{:?} is not a finite number", entry.value)));
        }
        QcValue::Numeric(number)
    } else {
        let text = entry.value.trim();
        if text.is_empty() {
            return Err(invalid(format!("a result is required ({})", test.spec)));
        }
        QcValue::Text(text.to_owned())
    };
    if let Some(seq) = entry.retest_of {
        let original = record(store, seq).await?;
        let same_test = matches!(&original.kind, EventKind::QcResult { test_id, .. } if test_id == entry.test_id);
        if original.batch_id != batch.batch_id || !same_test {
            return Err(invalid(format!("record {seq} is not a {} result of this batch; a retest must point at the result it retests", test.id)));
        }
    }
    let evaluation = test.spec.evaluate(&value);
    let event = store
        .append(
            batch.batch_id,
            entry.by.trim(),
            EventKind::QcResult {
                test_id: test.id.clone(),
                value,
                unit: test.unit.clone(),
                method: test.method.clone(),
                site_outcome: evaluation.outcome,
                retest_of: entry.retest_of,
            },
        )
        .await?;
    Ok((event, evaluation))
}

async fn record(store: &Store, seq: u64) -> Result<SiteEvent, Error> {
    store
        .events_after(seq.saturating_sub(1), 1)
        .await?
        .into_iter()
        .find(|e| e.seq == seq)
        .ok_or(Error::NoSuchRecord(seq))
}

/// Records a correction of record `seq`: a new record, with a reason.
pub async fn correct(
    store: &Store,
    seq: u64,
    field: &str,
    new_value: &str,
    reason: &str,
    by: &str,
) -> Result<SiteEvent, Error> {
    if reason.trim().is_empty() {
        return Err(invalid("a correction needs a reason"));
    }
    if field.trim().is_empty() {
        return Err(invalid("say which field is corrected"));
    }
    if by.trim().is_empty() {
        return Err(invalid("who makes the correction is required"));
    }
    let original = record(store, seq).await?;
    match &original.kind {
        EventKind::QcResult {
            site_outcome: Outcome::OutOfSpecification,
            ..
        } => {
            return Err(invalid(format!(
                "record {seq} is an out-of-specification result, which is never corrected or overwritten; record a retest that points at it instead"
            )))
        }
        EventKind::CustodyScan { .. } => {
            return Err(invalid(format!("record {seq} is a custody scan; scan again instead of correcting it")))
        }
        EventKind::ReleaseDecisionRecorded { .. } | EventKind::BatchCancelled { .. } => {
            return Err(invalid(format!("record {seq} records a decision of the hub; it cannot be corrected at the site")))
        }
        _ => {}
    }
    Ok(store
        .append(
            original.batch_id,
            by.trim(),
            EventKind::Correction {
                corrects_seq: seq,
                reason: reason.trim().to_owned(),
                field: field.trim().to_owned(),
                new_value: new_value.to_owned(),
            },
        )
        .await?)
}

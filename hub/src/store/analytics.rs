//! The write transaction of process analytics: QA choosing a product's baseline,
//! written once for every backend like those in [`super::transactions`]. The
//! measures themselves are written at ingest ([`super::ingest`]).

use super::backend::Tx;
use super::transactions::required_reason;
use super::{Error, Result};
use crate::audit::{Action, NewEntry, Object};
use crate::model::analytics::measure::Baseline;
use chrono::{DateTime, Utc};

/// Fewest batches a baseline may hold: a moving range needs two. Twenty or more
/// is the usual advice (Montgomery, 7.4); fewer is allowed and shown as such.
pub const MIN_BASELINE_BATCHES: usize = 2;

/// What QA chooses as a product's baseline: the batches with results placed in
/// `from..to`, at most the `first` of them when given.
#[derive(Debug, Clone, Copy)]
pub struct BaselineChoice<'a> {
    pub product_id: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub first: Option<usize>,
    pub reason: &'a str,
    pub by: &'a str,
}

/// Chooses a product's baseline as `choice` says, fixed now (a batch placed in the
/// window later is not added), with QA's reason; audited. The limits of every chart
/// of the product come from it.
pub(crate) async fn choose_baseline(
    mut tx: Tx<'_>,
    choice: &BaselineChoice<'_>,
    now: DateTime<Utc>,
) -> Result<Baseline> {
    let BaselineChoice {
        product_id,
        from,
        to,
        first,
        reason,
        by,
    } = *choice;
    let reason = required_reason(reason)?;
    if from >= to {
        return Err(Error::Invalid(format!(
            "the baseline's window must end after it starts (from {} to {})",
            from.format("%Y-%m-%d %H:%M"),
            to.format("%Y-%m-%d %H:%M")
        )));
    }
    if tx.latest_recipe(product_id).await?.is_none() {
        return Err(Error::NotFound(format!("product {product_id:?}")));
    }
    let mut batches = tx.measured_batches(product_id, from, to).await?;
    if let Some(first) = first {
        batches.truncate(first);
    }
    if batches.len() < MIN_BASELINE_BATCHES {
        return Err(Error::FailedPrecondition(format!(
            "{} batch(es) of {product_id} with results were placed on or after {} and before {}; a baseline needs at least {MIN_BASELINE_BATCHES} (20 or more is usual)",
            batches.len(),
            from.format("%Y-%m-%d %H:%M UTC"),
            to.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    let baseline = Baseline {
        product_id: product_id.to_owned(),
        chosen_at: now,
        chosen_by: by.to_owned(),
        reason: reason.to_owned(),
        batches,
    };
    tx.insert_analytics_baseline(&baseline).await?;
    tx.audit(
        NewEntry::new(
            by,
            Action::AnalyticsBaselineChosen,
            Object::Product(product_id.to_owned()),
        )
        .value(format!(
            "{} batches placed on or after {} and before {}{}",
            baseline.batches.len(),
            from.format("%Y-%m-%d %H:%M UTC"),
            to.format("%Y-%m-%d %H:%M UTC"),
            first.map_or(String::new(), |n| format!(" (at most the first {n})"))
        ))
        .reason(reason),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(baseline)
}

/// Makes one batch's measures from its whole record, under its site's lock (so no
/// message of the site is ingested meanwhile); a dry run has none.
pub(crate) async fn backfill_batch(mut tx: Tx<'_>, batch_id: uuid::Uuid) -> Result<usize> {
    let order = tx.order(super::backend::OrderKey::Batch(batch_id)).await?;
    if order.dry_run {
        return Ok(0);
    }
    tx.lock_site(&order.site_id).await?;
    let recipe = tx.recipe(&order.recipe_id, order.recipe_version).await?;
    let events = tx.events_of_batch(batch_id).await?;
    let rows = crate::model::analytics::measure::rows_of(
        events.iter().map(|e| (e.event.seq, &e.event.kind)),
        &recipe.recipe,
    );
    let points = crate::model::analytics::measure::points_of(
        events.iter().map(|e| (e.event.seq, &e.event.kind)),
        &recipe.recipe,
    );
    tx.replace_measures(&order, &rows, &points).await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Whether the batches stored before measures were kept still need theirs.
pub(crate) async fn needs_backfill(mut tx: Tx<'_>) -> Result<bool> {
    Ok(!tx.analytics_backfilled().await?)
}

/// Marks the backfill done.
pub(crate) async fn backfilled(mut tx: Tx<'_>, now: DateTime<Utc>) -> Result<()> {
    if !tx.analytics_backfilled().await? {
        tx.mark_analytics_backfilled(now).await?;
    }
    tx.commit().await
}

/// Who the audit trail names for trend signals: the hub's own analysis, not a
/// person.
pub const TREND_ACTOR: &str = "system:analytics";

/// Keeps a trend signal unless it is kept already; answers whether it was new.
/// A signal on a batch still awaiting QA's decision is audited (a notification
/// kind) and added to the batch's exceptions for QA to justify at release; one
/// on a decided batch (found later, when a baseline changes or after an upgrade)
/// is kept for the record without either, so history does not flood QA.
pub(crate) async fn record_trend_signal(
    mut tx: Tx<'_>,
    signal: &crate::model::analytics::trend::TrendSignal,
    now: DateTime<Utc>,
) -> Result<bool> {
    use crate::model::BatchState;
    let mut order = tx
        .lock_order(super::backend::OrderKey::Batch(signal.batch_id))
        .await?;
    if order.dry_run || !tx.insert_trend_signal(signal, now).await? {
        return Ok(false);
    }
    let awaits_decision = matches!(
        order.state,
        BatchState::Ordered
            | BatchState::Accepted
            | BatchState::InProcess
            | BatchState::AwaitingRelease
    );
    if awaits_decision {
        if !order.progress.anomalies.contains(&signal.text) {
            order.progress.anomalies.push(signal.text.clone());
            tx.set_progress(order.batch_id, &order.progress, now)
                .await?;
        }
        tx.audit(
            NewEntry::new(
                TREND_ACTOR,
                Action::TrendSignal,
                Object::Batch(signal.batch_id),
            )
            .batch(signal.batch_id)
            .value(signal.text.clone())
            .reason("an exception in QA's review of the batch"),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

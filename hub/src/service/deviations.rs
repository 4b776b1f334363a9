//! Deviations as people work them, whichever door they come in by: QA sees every
//! deviation, raises one at the hub, writes investigation notes and closes it with a
//! signature (root cause and CAPA reference); a physician sees only that their
//! order's batch has deviations, not what they are.

use super::release::{acknowledge, prove, Proof, SignedOn, Signer};
use super::{field, require_role, Error};
use crate::app::Hub;
use crate::model::deviation::{Closure, Deviation, CLASSIFICATIONS, MIN_FINDING_CHARS};
use crate::model::{Order, Role, User};
use crate::store::deviations::NewDeviation;
use chrono::{SubsecRound, Utc};
use uuid::Uuid;

/// Who works deviations at the hub.
const QUALITY: [Role; 1] = [Role::Qa];

/// Whether `user` works deviations (the console links to them only then).
pub fn may_work(user: &User) -> bool {
    require_role(user, &QUALITY).is_ok()
}

/// Every deviation (only the open ones with `open_only`), newest first.
pub async fn list(hub: &Hub, user: &User, open_only: bool) -> Result<Vec<Deviation>, Error> {
    require_role(user, &QUALITY)?;
    let mut all = hub.store.deviations(None).await?;
    // A dry run's deviations belong to its record (shown there), not to the register
    // of deviations QA investigates and closes.
    all.retain(|d| d.site_id != crate::model::recipe_change::DRY_RUN_SITE);
    all.retain(|d| !open_only || d.is_open());
    all.reverse();
    Ok(all)
}

/// The deviations of one batch, oldest first (QA).
pub async fn of_batch(hub: &Hub, user: &User, batch_id: Uuid) -> Result<Vec<Deviation>, Error> {
    require_role(user, &QUALITY)?;
    hub.store.order_by_batch(batch_id).await?;
    Ok(hub.store.deviations(Some(batch_id)).await?)
}

/// One deviation of a batch (QA).
pub async fn one(
    hub: &Hub,
    user: &User,
    batch_id: Uuid,
    deviation_id: &str,
) -> Result<Deviation, Error> {
    of_batch(hub, user, batch_id)
        .await?
        .into_iter()
        .find(|d| d.deviation_id == deviation_id)
        .ok_or_else(|| {
            crate::store::Error::NotFound(format!("deviation {deviation_id} of batch {batch_id}"))
                .into()
        })
}

/// What anyone who may see the order is told: how many deviations its batch has, and
/// how many are still open (not what they are).
pub async fn counts(hub: &Hub, order: &Order) -> Result<(usize, usize), Error> {
    let all = hub.store.deviations(Some(order.batch_id)).await?;
    Ok((all.len(), all.iter().filter(|d| d.is_open()).count()))
}

/// Raises a deviation at the hub (QA), in the signed-in person's name.
pub async fn raise(
    hub: &Hub,
    user: &User,
    batch_id: Uuid,
    step_id: &str,
    classification: &str,
    description: &str,
) -> Result<Deviation, Error> {
    require_role(user, &QUALITY)?;
    let classification = classification.trim().to_ascii_lowercase();
    if !CLASSIFICATIONS.contains(&classification.as_str()) {
        return Err(field(
            "classification",
            "choose the classification: minor, major or critical",
        ));
    }
    if description.trim().chars().count() < MIN_FINDING_CHARS {
        return Err(field(
            "description",
            format!("describe what happened (at least {MIN_FINDING_CHARS} characters)"),
        ));
    }
    Ok(hub
        .store
        .raise_deviation(&NewDeviation {
            batch_id,
            step_id: step_id.trim().to_owned(),
            classification,
            description: description.trim().to_owned(),
            raised_by: user.username.clone(),
        })
        .await?)
}

/// Adds an investigation note (QA).
pub async fn note(
    hub: &Hub,
    user: &User,
    batch_id: Uuid,
    deviation_id: &str,
    text: &str,
) -> Result<Deviation, Error> {
    require_role(user, &QUALITY)?;
    if text.trim().chars().count() < MIN_FINDING_CHARS {
        return Err(field(
            "note",
            format!("a note says what was found or done (at least {MIN_FINDING_CHARS} characters)"),
        ));
    }
    Ok(hub
        .store
        .add_deviation_note(batch_id, deviation_id.trim(), text, &user.username)
        .await?)
}

/// QA's closure as entered.
pub struct CloseForm<'a> {
    pub batch_id: Uuid,
    pub deviation_id: &'a str,
    pub root_cause: &'a str,
    pub capa_ref: &'a str,
    pub proof: Proof<'a>,
}

/// Closes a deviation with QA's electronic signature: the root cause (required) and
/// the CAPA reference (empty: none needed); the signer proves their identity again,
/// as for a release.
pub async fn close(
    hub: &Hub,
    signer: &Signer<'_>,
    form: CloseForm<'_>,
) -> Result<Deviation, Error> {
    let user = signer.user;
    require_role(user, &QUALITY)?;
    if form.root_cause.trim().chars().count() < MIN_FINDING_CHARS {
        return Err(field(
            "root_cause",
            format!("a deviation is closed with its root cause (at least {MIN_FINDING_CHARS} characters)"),
        ));
    }
    // Refused before the password is asked for: an unknown or closed deviation.
    let current = one(hub, user, form.batch_id, form.deviation_id).await?;
    if !current.is_open() {
        return Err(crate::store::Error::FailedPrecondition(format!(
            "deviation {} is closed already",
            current.deviation_id
        ))
        .into());
    }
    prove(hub, signer, &form.proof, SignedOn::Batch(form.batch_id)).await?;
    acknowledge(hub, user, &form.proof).await?;
    let closed = hub
        .store
        .close_deviation(
            form.batch_id,
            form.deviation_id.trim(),
            &Closure {
                root_cause: form.root_cause.trim().to_owned(),
                capa_ref: form.capa_ref.trim().to_owned(),
                closed_by: user.username.clone(),
                closed_by_name: user.full_name.clone(),
                closed_at: Utc::now().trunc_subsecs(6),
            },
        )
        .await?;
    hub.store.mark_session_signed(signer.session).await?;
    tracing::info!(batch_id = %form.batch_id, deviation_id = form.deviation_id, signer = %user.username, "deviation closed");
    Ok(closed)
}

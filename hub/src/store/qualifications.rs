//! The write transactions of per-site product authorisation (qualify, withdraw),
//! written once for every backend like those in [`super::transactions`]. The
//! signer's identity was proved by the caller.

use super::backend::Tx;
use super::transactions::required_reason;
use super::{Error, Result};
use crate::audit::{Action, NewEntry, Object};
use crate::model::{Qualification, SiteStatus, StatusChange};

/// Records `qualification` (in force), withdrawing the one it replaces for the
/// same site and product. The site must exist and not have ceased; the product must
/// be published, and the range must name a version of it.
pub(crate) async fn qualify(mut tx: Tx<'_>, qualification: &Qualification) -> Result<()> {
    let q = qualification;
    required_reason(&q.reason)?;
    let site = match tx.lock_site(&q.site_id).await {
        Err(Error::NotFound(_)) => {
            return Err(Error::Invalid(format!(
                "site {:?} is not known to the hub",
                q.site_id
            )))
        }
        other => other?,
    };
    if site.status == SiteStatus::Ceased {
        return Err(Error::FailedPrecondition(format!(
            "site {} has ceased and takes no more orders",
            q.site_id
        )));
    }
    if q.min_version == 0 || q.max_version.is_some_and(|max| max < q.min_version) {
        return Err(Error::Invalid(format!(
            "versions from v{} to v{} are not a range: the first is 1 or more and the last no lower",
            q.min_version,
            q.max_version.unwrap_or_default()
        )));
    }
    let latest = tx.latest_recipe(&q.recipe_id).await?.ok_or_else(|| {
        Error::Invalid(format!(
            "product (recipe) {:?} is not published at the hub",
            q.recipe_id
        ))
    })?;
    if q.min_version > latest.recipe.version {
        return Err(Error::Invalid(format!(
            "{} has no v{} yet (v{} is in force); qualify the site for versions that exist",
            q.recipe_id, q.min_version, latest.recipe.version
        )));
    }
    let current = tx.site_qualifications(Some(&q.site_id)).await?;
    let in_force = current
        .iter()
        .find(|c| c.recipe_id == q.recipe_id && c.in_force());
    if let Some(same) = in_force.filter(|c| c.repeated_by(q)) {
        return Err(Error::FailedPrecondition(same.repeat_refusal()));
    }
    let replaced = StatusChange {
        by: q.qualified_by.clone(),
        at: q.qualified_at,
        reason: format!("replaced by the qualification for {}", q.versions()),
    };
    let replaced_versions = in_force.map(|c| c.versions());
    tx.withdraw_site_qualification(&q.site_id, &q.recipe_id, &replaced)
        .await?;
    tx.insert_site_qualification(q).await?;
    let entry = NewEntry::new(
        &q.qualified_by,
        Action::SiteQualified,
        Object::Site(q.site_id.clone()),
    )
    .reason(q.reason.clone());
    let entry = if let Some(before) = replaced_versions {
        entry.change(
            format!("{} {before}", q.recipe_id),
            format!("{} {}", q.recipe_id, q.versions()),
        )
    } else {
        entry.value(format!("{} {}", q.recipe_id, q.versions()))
    };
    tx.audit(entry, q.qualified_at).await?;
    tx.commit().await
}

/// Withdraws the qualification in force of a site for a product: no new order of
/// it is taken there; orders placed keep running.
pub(crate) async fn withdraw(
    mut tx: Tx<'_>,
    site_id: &str,
    recipe_id: &str,
    withdrawal: &StatusChange,
) -> Result<()> {
    required_reason(&withdrawal.reason)?;
    tx.lock_site(site_id).await?;
    if !tx
        .withdraw_site_qualification(site_id, recipe_id, withdrawal)
        .await?
    {
        return Err(Error::FailedPrecondition(format!(
            "site {site_id} has no qualification in force for {recipe_id}"
        )));
    }
    tx.audit(
        NewEntry::new(
            &withdrawal.by,
            Action::SiteQualificationWithdrawn,
            Object::Site(site_id.to_owned()),
        )
        .value(recipe_id.to_owned())
        .reason(withdrawal.reason.clone()),
        withdrawal.at,
    )
    .await?;
    tx.commit().await
}

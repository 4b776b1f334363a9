//! Per-site product authorisation, whichever door: QA qualifies a site for a
//! product (and a range of its versions) with an electronic signature; QA can
//! withdraw it with a reason. An order is taken only for a site and product version
//! that a qualification in force covers (the store checks it when the order is
//! placed); orders placed before a withdrawal keep running.

use super::release::{acknowledge, prove, Proof, SignedOn, Signer};
use super::{field, require_role, sentence_reason, Error};
use crate::app::Hub;
use crate::model::{Qualification, Role, SiteStatus, StatusChange, User, QUALIFICATION_MEANING};
use chrono::{SubsecRound, Utc};

/// Who qualifies sites and withdraws qualifications.
const QUALITY: [Role; 1] = [Role::Qa];

/// What QA asks for: a site, a product and the versions covered.
pub struct Request<'a> {
    pub site_id: &'a str,
    pub recipe_id: &'a str,
    /// The first version covered (0: the version in force now).
    pub from_version: u32,
    /// The last version covered (0: every later version too).
    pub to_version: u32,
    /// Why: the qualification run and its report's reference.
    pub reason: &'a str,
}

/// Qualifies a site for a product with the signer's signature, replacing the
/// qualification in force for them. Refused with the reason when the site or the
/// product is unknown, the range is empty or the signature fails.
pub async fn qualify(
    hub: &Hub,
    signer: &Signer<'_>,
    proof: Proof<'_>,
    request: &Request<'_>,
) -> Result<Qualification, Error> {
    let user = signer.user;
    require_role(user, &QUALITY)?;
    let site_id = request.site_id.trim();
    let recipe_id = request.recipe_id.trim();
    if site_id.is_empty() {
        return Err(field("site_id", "name the site to qualify"));
    }
    if site_id == crate::model::recipe_change::DRY_RUN_SITE {
        return Err(field(
            "site_id",
            "the dry-run simulator site makes no product for patients and is not qualified",
        ));
    }
    if recipe_id.is_empty() {
        return Err(field(
            "product",
            "name the product the site is qualified for",
        ));
    }
    let reason = sentence_reason(request.reason, "qualify this site")?;
    // The site and the versions are checked again, with the rest, in the store's
    // transaction; here so that a request that cannot be signed is refused before
    // the signer is asked to sign.
    match hub.store.site(site_id).await {
        Err(crate::store::Error::NotFound(_)) => {
            return Err(field(
                "site_id",
                format!("site {site_id:?} is not known to the hub"),
            ))
        }
        Ok(site) if site.status == SiteStatus::Ceased => {
            return Err(field(
                "site_id",
                format!("site {site_id} has ceased and takes no more orders"),
            ))
        }
        other => {
            other?;
        }
    }
    let latest = match hub.store.latest_recipe(recipe_id).await {
        Ok(r) => r.recipe.version,
        Err(crate::store::Error::NotFound(_)) => {
            return Err(field(
                "product",
                format!("product (recipe) {recipe_id:?} is not published at the hub"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let min_version = match request.from_version {
        0 => latest,
        v if v > latest => {
            return Err(field(
                "from_version",
                format!("{recipe_id} has no v{v} yet (v{latest} is in force); qualify the site for versions that exist"),
            ))
        }
        v => v,
    };
    let max_version = (request.to_version != 0).then_some(request.to_version);
    if max_version.is_some_and(|max| max < min_version) {
        return Err(field(
            "to_version",
            format!(
                "the last version covered (v{}) is lower than the first (v{min_version})",
                request.to_version
            ),
        ));
    }
    let qualification = Qualification {
        site_id: site_id.to_owned(),
        recipe_id: recipe_id.to_owned(),
        min_version,
        max_version,
        qualified_by: user.username.clone(),
        qualified_name: user.full_name.clone(),
        qualified_at: Utc::now().trunc_subsecs(6),
        meaning: QUALIFICATION_MEANING.to_owned(),
        reason,
        withdrawn: None,
    };
    // Sent twice (a double click, the back button), it is refused before a
    // second signature is asked for.
    if let Some(same) = hub
        .store
        .site_qualifications(Some(site_id))
        .await?
        .iter()
        .find(|c| c.repeated_by(&qualification))
    {
        return Err(Error::Store(crate::store::Error::FailedPrecondition(
            same.repeat_refusal(),
        )));
    }
    prove(hub, signer, &proof, SignedOn::Site(site_id.to_owned())).await?;
    acknowledge(hub, user, &proof).await?;
    hub.store
        .qualify_site(&qualification)
        .await
        .map_err(|e| match e {
            crate::store::Error::Invalid(m) if m.starts_with("site") => field("site_id", m),
            crate::store::Error::Invalid(m) if m.starts_with("product") => field("product", m),
            crate::store::Error::Invalid(m) if m.starts_with("versions") => {
                field("from_version", m)
            }
            crate::store::Error::Invalid(m) if m.contains(" has no v") => field("from_version", m),
            other => other.into(),
        })?;
    hub.store.mark_session_signed(signer.session).await?;
    tracing::info!(site = site_id, product = recipe_id, versions = %qualification.versions(), "site qualified");
    Ok(qualification)
}

/// Withdraws a site's qualification in force for a product (QA), with a reason:
/// no new order of it is taken there.
pub async fn withdraw(
    hub: &Hub,
    user: &User,
    site_id: &str,
    recipe_id: &str,
    reason: &str,
) -> Result<(), Error> {
    require_role(user, &QUALITY)?;
    let reason = sentence_reason(reason, "withdraw this qualification")?;
    let withdrawal = StatusChange {
        by: user.username.clone(),
        at: Utc::now().trunc_subsecs(6),
        reason,
    };
    hub.store
        .withdraw_site_qualification(site_id.trim(), recipe_id.trim(), &withdrawal)
        .await?;
    tracing::info!(
        site = site_id,
        product = recipe_id,
        "site qualification withdrawn"
    );
    Ok(())
}

/// Qualifications (one site's or every site's), withdrawn ones too: any signed-in
/// user may see what each site makes.
pub async fn list(
    hub: &Hub,
    _user: &User,
    site_id: Option<&str>,
) -> Result<Vec<Qualification>, Error> {
    Ok(hub
        .store
        .site_qualifications(site_id.map(str::trim).filter(|s| !s.is_empty()))
        .await?)
}

/// What each site is qualified to make now (site id to product ids): for the order
/// form and the administrator's list of sites. Any signed-in user may see it.
pub async fn products_by_site(
    hub: &Hub,
    _user: &User,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, Error> {
    let mut makes = std::collections::BTreeMap::<String, Vec<String>>::new();
    for q in hub.store.site_qualifications(None).await? {
        if q.in_force() {
            makes.entry(q.site_id).or_default().push(q.recipe_id);
        }
    }
    Ok(makes)
}

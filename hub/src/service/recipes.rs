//! Master batch records under change control, whichever door: QA drafts a new
//! recipe version (TOML, validated), sees what it changes against the version in
//! force, submits it with a signature; another QA person approves it with a
//! signature, effective from a date; a version can be retired. New orders pin the
//! version in force when they are placed; running batches keep theirs.

use super::release::{acknowledge, prove, Proof, SignedOn, Signer};
use super::{field, require_role, sentence_reason, Error};
use crate::app::Hub;
use crate::model::recipe_change::{diff, Change, DraftSignature, RecipeDraft};
use crate::model::{Order, Role, StoredRecipe, User};
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};

/// Who authors and approves recipe versions (never the same person for one version).
const QUALITY: [Role; 1] = [Role::Qa];

/// A draft with what it changes against the version new orders pin now (none: a
/// new product).
pub struct Reviewed {
    pub draft: RecipeDraft,
    pub in_force: Option<StoredRecipe>,
    pub changes: Vec<Change>,
    /// Its dry runs, oldest first.
    pub dry_runs: Vec<DryRun>,
}

/// A dry run of a draft: its batch's order, and the SHA-256 of the draft text it ran.
pub struct DryRun {
    pub order: Order,
    pub recipe_sha256: String,
}

impl DryRun {
    /// Whether it ran the draft as it is now (not a text since edited).
    pub fn of(&self, draft: &RecipeDraft) -> bool {
        self.recipe_sha256 == draft.sha256
    }
}

/// Checks a draft's TOML text without saving it (QA): the recipe, the version in
/// force and what the draft changes against it; refused with the reason when it does
/// not parse or breaks a rule. The recipe editor calls it as the author types.
pub async fn check(
    hub: &Hub,
    user: &User,
    toml: &str,
) -> Result<(Recipe, Option<StoredRecipe>, Vec<Change>), Error> {
    require_role(user, &QUALITY)?;
    let recipe = Recipe::from_toml(toml).map_err(|e| field("document", e.to_string()))?;
    let in_force = match hub.store.latest_recipe(&recipe.id).await {
        Ok(r) => Some(r),
        Err(crate::store::Error::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(current) = in_force
        .as_ref()
        .filter(|r| r.recipe.version >= recipe.version)
    {
        return Err(field(
            "document",
            format!(
                "version {} of {} is not new: v{} is in force; a change is a higher version",
                recipe.version, recipe.id, current.recipe.version
            ),
        ));
    }
    let changes = diff(in_force.as_ref().map(|r| &r.recipe), &recipe);
    Ok((recipe, in_force, changes))
}

/// The TOML of the version of a product in force, with its version number raised:
/// where a new draft starts from.
pub async fn next_version_toml(hub: &Hub, user: &User, recipe_id: &str) -> Result<String, Error> {
    require_role(user, &QUALITY)?;
    let mut recipe = hub.store.latest_recipe(recipe_id).await?.recipe;
    recipe.version += 1;
    toml::to_string(&recipe).map_err(|e| field("document", format!("cannot write TOML: {e}")))
}

/// Saves a draft from its TOML text (QA), refused with the reason when it does not
/// parse or breaks a rule (unknown field, duplicate step id, empty specification...).
pub async fn draft(hub: &Hub, user: &User, toml: &str) -> Result<Reviewed, Error> {
    require_role(user, &QUALITY)?;
    let recipe = Recipe::from_toml(toml).map_err(|e| field("document", e.to_string()))?;
    recipe
        .validate()
        .map_err(|e| field("document", e.to_string()))?;
    let saved = hub.store.save_recipe_draft(&recipe, &user.username).await?;
    tracing::info!(recipe = %recipe.id, version = recipe.version, "recipe drafted");
    review(hub, user, &saved.recipe.id, saved.recipe.version).await
}

/// A draft and its changes against the version in force (QA).
pub async fn review(
    hub: &Hub,
    user: &User,
    recipe_id: &str,
    version: u32,
) -> Result<Reviewed, Error> {
    require_role(user, &QUALITY)?;
    let draft = hub
        .store
        .recipe_draft(recipe_id, version)
        .await?
        .ok_or_else(|| {
            crate::store::Error::NotFound(format!("draft of recipe {recipe_id} v{version}"))
        })?;
    let in_force = match hub.store.latest_recipe(recipe_id).await {
        Ok(r) if r.recipe.version != version => Some(r),
        Ok(_) | Err(crate::store::Error::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let changes = diff(in_force.as_ref().map(|r| &r.recipe), &draft.recipe);
    let dry_runs = hub
        .store
        .dry_runs_of(recipe_id, version)
        .await?
        .into_iter()
        .map(|(order, recipe_sha256)| DryRun {
            order,
            recipe_sha256,
        })
        .collect();
    Ok(Reviewed {
        draft,
        in_force,
        changes,
        dry_runs,
    })
}

/// Sends the draft, as it is now, to the hub's simulator site for a dry run (QA):
/// a whole batch, recorded like any other, marked as a dry run and never released.
pub async fn dry_run(
    hub: &Hub,
    user: &User,
    recipe_id: &str,
    version: u32,
) -> Result<DryRun, Error> {
    require_role(user, &QUALITY)?;
    // Heard from as recently as a live link records its site's last contact (with
    // room for two heartbeats and a timeout): its agent runs somewhere.
    let quiet = hub.config.site_touch_every()
        + std::time::Duration::from_millis(
            2 * u64::from(hub.config.heartbeat_interval_ms)
                + u64::from(hub.config.heartbeat_timeout_ms),
        );
    let heard_since = Utc::now() - chrono::Duration::from_std(quiet).unwrap_or_default();
    let (order, recipe_sha256) = hub
        .store
        .dry_run_draft(
            recipe_id,
            version,
            &user.username,
            &hub.config.facility,
            heard_since,
        )
        .await?;
    hub.commands_added(&order.site_id, order.batch_id);
    tracing::info!(recipe = recipe_id, version, batch_id = %order.batch_id, "draft sent for a dry run");
    Ok(DryRun {
        order,
        recipe_sha256,
    })
}

/// Every version under change control (QA).
pub async fn drafts(hub: &Hub, user: &User) -> Result<Vec<RecipeDraft>, Error> {
    require_role(user, &QUALITY)?;
    Ok(hub.store.recipe_drafts().await?)
}

fn signature(user: &User, sha256: &str) -> Result<DraftSignature, Error> {
    let sha = sha256.trim().to_ascii_lowercase();
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(field(
            "sha256",
            "give the 64-hex-digit SHA-256 of the draft as you read it (recipe show)",
        ));
    }
    Ok(DraftSignature {
        by: user.username.clone(),
        name: user.full_name.clone(),
        at: Utc::now().trunc_subsecs(6),
        sha256: sha,
    })
}

/// The author submits the draft they read, with their signature.
pub async fn submit(
    hub: &Hub,
    signer: &Signer<'_>,
    proof: Proof<'_>,
    recipe_id: &str,
    version: u32,
    sha256: &str,
) -> Result<RecipeDraft, Error> {
    let user = signer.user;
    require_role(user, &QUALITY)?;
    let signed = signature(user, sha256)?;
    prove(
        hub,
        signer,
        &proof,
        SignedOn::Recipe(recipe_id.to_owned(), version),
    )
    .await?;
    acknowledge(hub, user, &proof).await?;
    let draft = hub.store.submit_recipe(recipe_id, version, &signed).await?;
    hub.store.mark_session_signed(signer.session).await?;
    Ok(draft)
}

/// When an approval takes effect: the start of the date given (UTC), or now.
fn effective(date: &str) -> Result<DateTime<Utc>, Error> {
    let date = date.trim();
    if date.is_empty() {
        return Ok(Utc::now().trunc_subsecs(6));
    }
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| {
        field(
            "effective_from",
            format!("{date:?} is not a date (YYYY-MM-DD)"),
        )
    })?;
    if day < Utc::now().date_naive() {
        return Err(field(
            "effective_from",
            format!("{day} is in the past; a version takes effect today or later"),
        ));
    }
    Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

/// Another QA person approves the submitted draft they reviewed, with their
/// signature, effective from a date (empty: at once).
pub async fn approve(
    hub: &Hub,
    signer: &Signer<'_>,
    proof: Proof<'_>,
    recipe_id: &str,
    version: u32,
    sha256: &str,
    effective_from: &str,
) -> Result<RecipeDraft, Error> {
    let user = signer.user;
    require_role(user, &QUALITY)?;
    let signed = signature(user, sha256)?;
    let from = effective(effective_from)?;
    prove(
        hub,
        signer,
        &proof,
        SignedOn::Recipe(recipe_id.to_owned(), version),
    )
    .await?;
    acknowledge(hub, user, &proof).await?;
    let draft = hub
        .store
        .approve_recipe(recipe_id, version, &signed, from)
        .await?;
    hub.store.mark_session_signed(signer.session).await?;
    tracing::info!(recipe = recipe_id, version, "recipe approved");
    Ok(draft)
}

/// Retires a published version (QA), with a reason.
pub async fn retire(
    hub: &Hub,
    user: &User,
    recipe_id: &str,
    version: u32,
    reason: &str,
) -> Result<(), Error> {
    require_role(user, &QUALITY)?;
    let reason = sentence_reason(reason, "retire this version")?;
    Ok(hub
        .store
        .retire_recipe(recipe_id, version, &reason, &user.username)
        .await?)
}

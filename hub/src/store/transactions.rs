//! The store's write transactions, each written once for every backend: what is
//! checked, what is written, and what is audited, in one transaction that commits
//! before the caller hears of it. The backends supply only the primitives
//! ([`WriteTx`]); [`super::Store`] runs these on a transaction of its backend.
//!
//! What each transaction promises is documented on the `Store` (or `NotifyStore`)
//! method that runs it; here is how. Each takes the transaction by value and
//! commits it last, so an early return (a refusal) drops it and nothing is kept.
//!
//! The site link's ingest is the one write not here: it is planned by the pure
//! [`super::ingest`] and executed by each backend on its fastest path.

use super::backend::{OrderKey, Tx};
use super::schedule::{self as schedule_store, booked_from, capacity_json, DelayNotice};
use super::{ts, Error, FailureLimits, Gate, Result, StoredRecipe, ANY_USER};
use crate::audit::{Action, NewEntry, Object};
use crate::model::notification::happening;
use crate::model::notification::{
    kinds_text, Channel, NewSubscription, NotifierPass, OutboxEntry, OutboxState, Subscription,
};
use crate::model::recipe_change::DRY_RUN_SITE;
use crate::model::{
    site_transition, BatchState, ChangeReview, IssuedCert, NewOrder, OpenBatch, Order, Progress,
    Role, Signature, Site, SiteStatus, StatusChange, User,
};
use crate::schedule::{Booked, Booking, Capacity, Moved, Plan};
use carrel_proto::coi::Coi;
use carrel_proto::event::{CommandKind, HubCommand, Identity, ReleaseMeaning};
use carrel_proto::people::{PersonStatus, SITE_ROLES};
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, Datelike, NaiveDate, SubsecRound, Utc};
use uuid::Uuid;

/// A reason for a change, which goes into the audit trail: required.
pub(crate) fn required_reason(reason: &str) -> Result<&str> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Error::Invalid(
            "a reason is required (it goes into the audit trail)".into(),
        ));
    }
    Ok(reason)
}

pub(crate) async fn publish_recipe(
    mut tx: Tx<'_>,
    recipe: &Recipe,
    now: DateTime<Utc>,
) -> Result<()> {
    recipe
        .validate()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let sha = recipe.sha256();
    // Inserting first (rather than looking first) is what makes two hubs that
    // publish at once agree: the second waits for the first and then finds its row.
    if !tx.insert_recipe(recipe, &sha, now).await? {
        let stored = tx.recipe_sha256(&recipe.id, recipe.version).await?;
        return match stored {
            Some(stored) if stored == sha => Ok(()),
            stored => Err(Error::FailedPrecondition(format!(
                "recipe {} v{} is already published with SHA-256 {}; a changed process needs a new version",
                recipe.id,
                recipe.version,
                stored.unwrap_or_default()
            ))),
        };
    }
    tx.audit(
        NewEntry::new(
            "system",
            Action::RecipePublished,
            Object::Recipe {
                id: recipe.id.clone(),
                version: recipe.version,
            },
        )
        .value(sha),
        now,
    )
    .await?;
    tx.commit().await
}

pub(crate) async fn add_user(
    mut tx: Tx<'_>,
    user: &User,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if !tx.insert_user(user, now).await? {
        return Err(Error::AlreadyExists(format!("user {:?}", user.username)));
    }
    tx.audit(
        NewEntry::new(
            actor,
            Action::UserCreated,
            Object::User(user.username.clone()),
        )
        .value(format!("{} ({})", user.full_name, user.role)),
        now,
    )
    .await?;
    tx.commit().await
}

/// A site's directory entry for a user, as it stands now (with their badge, if any).
async fn person_entry(tx: &mut Tx<'_>, user: &User, status: PersonStatus) -> Result<CommandKind> {
    let (badge_id, pin_verifier) = tx.badge_of(&user.username).await?.unwrap_or_default();
    Ok(CommandKind::PersonUpdated {
        username: user.username.clone(),
        full_name: user.full_name.clone(),
        role: user.role.as_str().to_owned(),
        password_verifier: user.password_hash.clone(),
        status,
        badge_id,
        pin_verifier,
    })
}

/// Sends a person's entry, as it stands now with `status`, to every site they work
/// at; returns those sites with their new directory versions.
async fn send_entry_to_their_sites(
    tx: &mut Tx<'_>,
    user: &User,
    status: PersonStatus,
    now: DateTime<Utc>,
) -> Result<Vec<(String, u64)>> {
    let mut versions = Vec::new();
    for site_id in tx.sites_of_user(&user.username).await? {
        let entry = person_entry(tx, user, status).await?;
        let command = append_command(tx, &site_id, Uuid::nil(), entry, now).await?;
        versions.push((site_id, command.seq));
    }
    Ok(versions)
}

/// Issues (or replaces) a person's bedside badge and sends it to every site they work
/// at; returns those sites with their new directory versions.
pub(crate) async fn issue_badge(
    mut tx: Tx<'_>,
    username: &str,
    badge_id: &str,
    pin_hash: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, u64)>> {
    let user = tx.lock_user(username).await?;
    if user.disabled {
        return Err(Error::FailedPrecondition(format!(
            "{username} is disabled; enable them before issuing a badge"
        )));
    }
    if !tx.set_badge(username, badge_id, pin_hash, now).await? {
        return Err(Error::AlreadyExists(format!("badge {badge_id:?}")));
    }
    let versions = send_entry_to_their_sites(&mut tx, &user, PersonStatus::Active, now).await?;
    tx.audit(
        NewEntry::new(
            actor,
            Action::UserBadgeIssued,
            Object::User(user.username.clone()),
        )
        .value(format!("badge {badge_id}"))
        .reason("a new badge replaces any earlier one at every site"),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(versions)
}

/// Assigns a person to a site and sends the site their entry (sent again when they
/// are assigned already: that lifts a lock at the site).
pub(crate) async fn assign_user_to_site(
    mut tx: Tx<'_>,
    username: &str,
    site_id: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<u64> {
    let user = tx.lock_user(username).await?;
    if !SITE_ROLES.contains(&user.role.as_str()) {
        return Err(Error::Invalid(format!(
            "{username} is a {} user; only {} work at sites",
            user.role,
            SITE_ROLES.join(", ")
        )));
    }
    if user.disabled {
        return Err(Error::FailedPrecondition(format!(
            "{username} is disabled; enable them before assigning them to a site"
        )));
    }
    let site = match tx.site(site_id).await {
        Err(Error::NotFound(_)) => {
            return Err(Error::Invalid(format!(
                "site {site_id:?} is not known to the hub"
            )))
        }
        other => other?,
    };
    if site.status == SiteStatus::Ceased {
        return Err(Error::FailedPrecondition(format!(
            "site {site_id} has ceased; no one can be assigned to it"
        )));
    }
    let new = tx.set_user_site(username, site_id, true, now).await?;
    let entry = person_entry(&mut tx, &user, PersonStatus::Active).await?;
    let command = append_command(&mut tx, site_id, Uuid::nil(), entry, now).await?;
    tx.audit(
        NewEntry::new(
            actor,
            Action::UserAssignedToSite,
            Object::User(user.username.clone()),
        )
        .value(format!("site {site_id}, directory version {}", command.seq))
        .reason(if new {
            "assigned"
        } else {
            "entry sent again (lifts a lock at the site)"
        }),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(command.seq)
}

/// Removes a person from a site; the site hears they no longer work there.
pub(crate) async fn remove_user_from_site(
    mut tx: Tx<'_>,
    username: &str,
    site_id: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<u64> {
    let user = tx.lock_user(username).await?;
    if !tx.set_user_site(username, site_id, false, now).await? {
        return Err(Error::FailedPrecondition(format!(
            "{username} is not assigned to site {site_id}"
        )));
    }
    let entry = person_entry(&mut tx, &user, PersonStatus::Removed).await?;
    let command = append_command(&mut tx, site_id, Uuid::nil(), entry, now).await?;
    tx.audit(
        NewEntry::new(
            actor,
            Action::UserRemovedFromSite,
            Object::User(user.username.clone()),
        )
        .value(format!("site {site_id}, directory version {}", command.seq)),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(command.seq)
}

/// Disables (or enables again) a user: their hub sessions end, and every site they
/// are assigned to hears it in the same transaction.
pub(crate) async fn set_user_disabled(
    mut tx: Tx<'_>,
    username: &str,
    disabled: bool,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, u64)>> {
    required_reason(reason)?;
    let mut user = tx.lock_user(username).await?;
    if user.disabled == disabled {
        return Err(Error::FailedPrecondition(format!(
            "{username} is already {}",
            if disabled { "disabled" } else { "enabled" }
        )));
    }
    if disabled && user.username.eq_ignore_ascii_case(actor) {
        return Err(Error::FailedPrecondition(
            "you may not disable your own account".into(),
        ));
    }
    tx.set_user_disabled(username, disabled).await?;
    user.disabled = disabled;
    let status = if disabled {
        PersonStatus::Disabled
    } else {
        PersonStatus::Active
    };
    let versions = send_entry_to_their_sites(&mut tx, &user, status, now).await?;
    let sites: Vec<&str> = versions.iter().map(|(site, _)| site.as_str()).collect();
    tx.audit(
        NewEntry::new(
            actor,
            if disabled {
                Action::UserDisabled
            } else {
                Action::UserEnabled
            },
            Object::User(user.username.clone()),
        )
        .value(if sites.is_empty() {
            "no site".to_owned()
        } else {
            format!("sent to sites {}", sites.join(", "))
        })
        .reason(reason.trim()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(versions)
}

/// Checks a head of the audit trail a site reports having witnessed. When the trail
/// agrees, the witness is kept (the site's latest); when it does not (the trail ends
/// before it, or holds another hash there), it is a finding, recorded and audited
/// once. Returns the finding when it is new or still open.
pub(crate) async fn check_witness(
    mut tx: Tx<'_>,
    site_id: &str,
    position: u64,
    sha256: &str,
    now: DateTime<Utc>,
) -> Result<Option<crate::audit::Finding>> {
    let finding = match tx.audit_sha_at(position).await? {
        Some(ours) if ours == sha256 => {
            tx.set_audit_witness(site_id, position, sha256, now).await?;
            tx.commit().await?;
            return Ok(None);
        }
        Some(ours) => format!(
            "site {site_id} witnessed audit entry {position} with hash {sha256}, but the trail holds {ours} there: it was rewritten, or an older backup was restored"
        ),
        None => {
            let ends = tx.audit_head().await?.map_or(0, |(p, _)| p);
            format!(
                "site {site_id} witnessed audit entry {position} (hash {sha256}), but the trail ends at entry {ends}: entries were removed, or an older backup was restored"
            )
        }
    };
    let finding = crate::audit::Finding {
        site_id: site_id.to_owned(),
        position,
        sha256: sha256.to_owned(),
        found_at: now.trunc_subsecs(6),
        detail: finding,
        acknowledged: None,
    };
    if tx.insert_audit_finding(&finding).await? {
        tx.audit(
            NewEntry::new(
                site_id,
                Action::AuditIntegrityFinding,
                Object::Site(site_id.to_owned()),
            )
            .value(finding.detail.clone()),
            now,
        )
        .await?;
        tx.commit().await?;
        return Ok(Some(finding));
    }
    let open = tx
        .audit_findings(true)
        .await?
        .into_iter()
        .find(|f| f.site_id == site_id && f.position == position && f.sha256 == sha256);
    tx.commit().await?;
    Ok(open)
}

/// Acknowledges every open finding (an administrator, with the reason they give):
/// the witnesses of the sites concerned are forgotten, so what they report next is
/// checked against the trail as it now is. Returns the findings acknowledged.
pub(crate) async fn acknowledge_findings(
    mut tx: Tx<'_>,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<crate::audit::Finding>> {
    if reason.trim().chars().count() < 10 {
        return Err(Error::Invalid(
            "say what was found and done about it (a reason of at least 10 characters)".into(),
        ));
    }
    let open = tx.audit_findings(true).await?;
    if open.is_empty() {
        return Err(Error::FailedPrecondition(
            "there is no open finding to acknowledge".into(),
        ));
    }
    tx.acknowledge_audit_findings(by, reason.trim(), now)
        .await?;
    for finding in &open {
        tx.forget_audit_witness(&finding.site_id).await?;
    }
    tx.audit(
        NewEntry::new(by, Action::AuditFindingsAcknowledged, Object::Ca)
            .value(
                open.iter()
                    .map(|f| f.detail.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
            .reason(reason.trim()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(open)
}

/// A change to an account, as [`change_account`] makes it.
#[derive(Debug, Clone)]
pub enum AccountChange {
    /// A new password hash the person chose (`after_reset`: with a reset code whose
    /// SHA-256 is given, checked here).
    Password {
        hash: String,
        reset_code_sha256: Option<String>,
    },
    Role(Role),
    /// A one-time reset: the old password stops working, the person's sessions end,
    /// and the code (its SHA-256 kept) lets them choose a new one until `expires_at`.
    Reset {
        code_sha256: String,
        expires_at: DateTime<Utc>,
    },
}

/// Checks a role change and makes it (the user's sessions end: what they may do
/// changed); returns its audit entry.
async fn apply_role(tx: &mut Tx<'_>, user: &mut User, role: Role, actor: &str) -> Result<NewEntry> {
    if user.username.eq_ignore_ascii_case(actor) {
        return Err(Error::FailedPrecondition(
            "you may not change your own role; another administrator must".into(),
        ));
    }
    if user.role == role {
        return Err(Error::FailedPrecondition(format!(
            "{} is a {role} already",
            user.username
        )));
    }
    tx.set_user_role(&user.username, role).await?;
    tx.delete_sessions_of(&user.username).await?;
    let old = user.role;
    user.role = role;
    Ok(NewEntry::new(
        actor,
        Action::UserRoleChanged,
        Object::User(user.username.clone()),
    )
    .change(old.as_str(), role.as_str()))
}

/// The roles whose grant needs a second administrator when the hub has two or more.
pub const GUARDED_ROLES: [Role; 2] = [Role::Qa, Role::Admin];

/// Asks for a role change: when it grants a guarded role and the hub has two or more
/// administrators, it is stored to wait for a second one (`true`); otherwise nothing
/// is stored (`false`) and the caller makes the change.
pub(crate) async fn request_role_grant(
    mut tx: Tx<'_>,
    username: &str,
    role: Role,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    required_reason(reason)?;
    let user = tx.lock_user(username).await?;
    if !GUARDED_ROLES.contains(&role) || tx.count_active_admins().await? < 2 {
        return Ok(false);
    }
    if user.username.eq_ignore_ascii_case(actor) {
        return Err(Error::FailedPrecondition(
            "you may not change your own role; another administrator must".into(),
        ));
    }
    if user.role == role {
        return Err(Error::FailedPrecondition(format!(
            "{username} is a {role} already"
        )));
    }
    if let Some(waiting) = tx.pending_role_grants(Some(&user.username)).await?.first() {
        return Err(Error::FailedPrecondition(format!(
            "{} asked to make {username} a {} already; a second administrator approves or the request stands",
            waiting.requested_by, waiting.role
        )));
    }
    let grant = super::backend::RoleGrant {
        grant_id: Uuid::now_v7(),
        username: user.username.clone(),
        role,
        requested_by: actor.to_owned(),
        requested_at: now.trunc_subsecs(6),
        reason: reason.trim().to_owned(),
    };
    tx.insert_role_grant(&grant).await?;
    tx.audit(
        NewEntry::new(
            actor,
            Action::UserRoleGrantRequested,
            Object::User(user.username.clone()),
        )
        .change(user.role.as_str(), role.as_str())
        .value(format!("{role}: waits for a second administrator"))
        .reason(reason.trim()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A second administrator approves a waiting role grant: the role changes (sessions
/// end, the sites hear of it) in the same transaction; returns the sites told.
pub(crate) async fn approve_role_grant(
    mut tx: Tx<'_>,
    username: &str,
    reason: &str,
    approver: &str,
    now: DateTime<Utc>,
) -> Result<(Role, Vec<(String, u64)>)> {
    let mut user = tx.lock_user(username).await?;
    let Some(grant) = tx.pending_role_grants(Some(&user.username)).await?.pop() else {
        return Err(Error::NotFound(format!(
            "a role grant waiting for {username}"
        )));
    };
    if grant.requested_by.eq_ignore_ascii_case(approver) {
        return Err(Error::PermissionDenied(format!(
            "you asked for this grant; another administrator than {approver} must approve it"
        )));
    }
    let entry = apply_role(&mut tx, &mut user, grant.role, &grant.requested_by).await?;
    tx.decide_role_grant(grant.grant_id, approver, now).await?;
    let status = if user.disabled {
        PersonStatus::Disabled
    } else {
        PersonStatus::Active
    };
    let versions = send_entry_to_their_sites(&mut tx, &user, status, now).await?;
    tx.audit(entry.reason(grant.reason.clone()), now).await?;
    tx.audit(
        NewEntry::new(
            approver,
            Action::UserRoleGrantApproved,
            Object::User(user.username.clone()),
        )
        .value(format!(
            "{} asked for by {}",
            grant.role, grant.requested_by
        ))
        .reason(reason.trim()),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((grant.role, versions))
}

/// The hash that stands in for a password while a reset is pending: no password
/// verifies against it, at the hub or at a site.
pub const RESET_PENDING: &str = "!reset-pending";

/// Changes an account and sends the person's entry, as it now stands, to every site
/// they work at, in one transaction, audited with `reason`; returns those sites.
pub(crate) async fn change_account(
    mut tx: Tx<'_>,
    username: &str,
    change: &AccountChange,
    reason: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, u64)>> {
    required_reason(reason)?;
    let mut user = tx.lock_user(username).await?;
    let entry = match change {
        AccountChange::Password {
            hash,
            reset_code_sha256,
        } => {
            if let Some(code) = reset_code_sha256 {
                match tx.password_reset_of(username).await? {
                    Some((sha, expires)) if &sha == code && expires > now => {}
                    _ => {
                        return Err(Error::PermissionDenied(
                            "the reset code is wrong, used or expired; ask an administrator for a new one".into(),
                        ))
                    }
                }
            }
            tx.set_user_password(username, hash).await?;
            tx.set_password_reset(username, None).await?;
            user.password_hash = hash.clone();
            NewEntry::new(
                actor,
                Action::UserPasswordChanged,
                Object::User(user.username.clone()),
            )
            .value(if reset_code_sha256.is_some() {
                "chosen by the person with a reset code"
            } else {
                "changed by the person"
            })
        }
        AccountChange::Role(role) => apply_role(&mut tx, &mut user, *role, actor).await?,
        AccountChange::Reset {
            code_sha256,
            expires_at,
        } => {
            tx.set_user_password(username, RESET_PENDING).await?;
            tx.set_password_reset(username, Some((code_sha256, *expires_at)))
                .await?;
            tx.delete_sessions_of(username).await?;
            user.password_hash = RESET_PENDING.to_owned();
            NewEntry::new(
                actor,
                Action::UserPasswordReset,
                Object::User(user.username.clone()),
            )
            .value(format!(
                "one-time reset code issued, valid until {}",
                ts(*expires_at)
            ))
        }
    };
    let status = if user.disabled {
        PersonStatus::Disabled
    } else {
        PersonStatus::Active
    };
    let versions = send_entry_to_their_sites(&mut tx, &user, status, now).await?;
    tx.audit(entry.reason(reason.trim()), now).await?;
    tx.commit().await?;
    Ok(versions)
}

pub(crate) async fn create_session(
    mut tx: Tx<'_>,
    token_sha256: &str,
    username: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.insert_session(token_sha256, username, expires_at, now)
        .await?;
    tx.audit(
        NewEntry::new(
            username,
            Action::UserSignedIn,
            Object::User(username.to_owned()),
        )
        .value(format!("session until {}", ts(expires_at))),
        now,
    )
    .await?;
    tx.commit().await
}

pub(crate) async fn delete_session(
    mut tx: Tx<'_>,
    token_sha256: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if let Some(username) = tx.delete_session(token_sha256).await? {
        tx.audit(
            NewEntry::new(
                &username,
                Action::UserSignedOut,
                Object::User(username.to_owned()),
            ),
            now,
        )
        .await?;
    }
    tx.commit().await
}

pub(crate) async fn audit(mut tx: Tx<'_>, entry: &NewEntry, now: DateTime<Utc>) -> Result<()> {
    tx.audit(entry.clone(), now).await?;
    tx.commit().await
}

pub(crate) async fn add_site(
    mut tx: Tx<'_>,
    site_id: &str,
    name: &str,
    token_sha256: &str,
    token_expires_at: DateTime<Utc>,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Site> {
    if !tx
        .insert_site(site_id, name, token_sha256, token_expires_at, now)
        .await?
    {
        return Err(Error::AlreadyExists(format!("site {site_id:?}")));
    }
    tx.audit(
        NewEntry::new(
            actor,
            Action::SiteRegistered,
            Object::Site(site_id.to_owned()),
        )
        .value(format!(
            "{name}; enrollment token valid until {}",
            ts(token_expires_at)
        )),
        now,
    )
    .await?;
    let site = tx.lock_site(site_id).await?;
    tx.commit().await?;
    Ok(site)
}

pub(crate) async fn complete_enrollment(
    mut tx: Tx<'_>,
    site_id: &str,
    token_sha256: &str,
    cert: &IssuedCert,
    now: DateTime<Utc>,
) -> Result<Site> {
    // One statement: of two enrollments with one token, the second finds it used.
    if !tx.enroll_site(site_id, token_sha256, cert, now).await? {
        return Err(Error::PermissionDenied(
            "enrollment token is unknown, expired or was already used".into(),
        ));
    }
    tx.audit(
        NewEntry::new(
            site_id,
            Action::SiteEnrolled,
            Object::Site(site_id.to_owned()),
        )
        .value(format!(
            "certificate {} valid until {}",
            cert.sha256,
            ts(cert.not_after)
        )),
        now,
    )
    .await?;
    let site = tx.lock_site(site_id).await?;
    tx.commit().await?;
    Ok(site)
}

pub(crate) async fn set_site_status(
    mut tx: Tx<'_>,
    site_id: &str,
    status: SiteStatus,
    actor: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Site> {
    let site = tx.lock_site(site_id).await?;
    let mut open: Vec<OpenBatch> = Vec::new();
    for (batch_id, state, progress) in tx.batches_of_site(site_id).await? {
        // A dry run whose record is complete is over (it is never released): it
        // neither holds the simulator site open nor is flagged by its suspension.
        if site_id == DRY_RUN_SITE && state == BatchState::AwaitingRelease {
            continue;
        }
        if let Some(mut batch) = OpenBatch::of(batch_id, state, progress) {
            // People name a batch by its COI, never by its internal id.
            batch.coi = tx.order(OrderKey::Batch(batch_id)).await?.coi;
            open.push(batch);
        }
    }
    let action = site_transition(&site, status, &open)?;
    let change = StatusChange {
        by: actor.to_owned(),
        at: now,
        reason: reason.to_owned(),
    };
    tx.set_site_status(site_id, status, &change).await?;
    if status == SiteStatus::Suspended {
        for batch in open.iter().filter(|b| b.state.is_running()) {
            let flagged = batch.flagged_for_suspension(actor, reason, now);
            tx.set_progress(batch.batch_id, &flagged, now).await?;
            tx.audit(
                NewEntry::new(actor, Action::BatchFlagged, Object::Batch(batch.batch_id))
                    .value(format!("{}: site {site_id} suspended", batch.state))
                    .reason(reason),
                now,
            )
            .await?;
        }
    }
    tx.audit(
        NewEntry::new(actor, action, Object::Site(site_id.to_owned()))
            .change(site.status.as_str(), status.as_str())
            .reason(reason),
        now,
    )
    .await?;
    let site = tx.lock_site(site_id).await?;
    tx.commit().await?;
    Ok(site)
}

pub(crate) async fn record_renewed_certificate(
    mut tx: Tx<'_>,
    site_id: &str,
    cert: &IssuedCert,
    now: DateTime<Utc>,
) -> Result<Site> {
    let site = tx.lock_site(site_id).await?;
    if site.status != SiteStatus::Active {
        return Err(Error::FailedPrecondition(format!(
            "site {site_id:?} is {}; only an active site renews its certificate",
            site.status.as_str()
        )));
    }
    tx.set_pending_certificate(site_id, cert).await?;
    tx.audit(
        NewEntry::new(
            site_id,
            Action::SiteCertificateIssued,
            Object::Site(site_id.to_owned()),
        )
        .value(format!(
            "certificate {} valid until {}",
            cert.sha256,
            ts(cert.not_after)
        )),
        now,
    )
    .await?;
    let site = tx.lock_site(site_id).await?;
    tx.commit().await?;
    Ok(site)
}

pub(crate) async fn promote_pending_certificate(
    mut tx: Tx<'_>,
    site_id: &str,
    cert_sha256: &str,
    now: DateTime<Utc>,
) -> Result<Site> {
    let site = tx.lock_site(site_id).await?;
    if site.pending_cert_sha256.as_deref() != Some(cert_sha256) {
        return Err(Error::FailedPrecondition(format!(
            "certificate {cert_sha256} is not the one renewed for site {site_id:?}"
        )));
    }
    tx.promote_pending_certificate(site_id).await?;
    tx.audit(
        NewEntry::new(
            site_id,
            Action::SiteCertificateReplaced,
            Object::Site(site_id.to_owned()),
        )
        .change(site.cert_sha256.as_deref().unwrap_or(""), cert_sha256),
        now,
    )
    .await?;
    let site = tx.lock_site(site_id).await?;
    tx.commit().await?;
    Ok(site)
}

pub(crate) async fn ack_commands(mut tx: Tx<'_>, site_id: &str, seq: u64) -> Result<()> {
    let site = tx.lock_site(site_id).await?;
    if seq > site.last_command_seq {
        return Err(Error::Protocol(format!(
            "site acknowledged command {seq}, but the hub issued only {} commands to it",
            site.last_command_seq
        )));
    }
    tx.ack_commands(site_id, seq).await?;
    tx.commit().await
}

/// Appends a command to a site's log (locking the site); returns it.
pub(crate) async fn append_command(
    tx: &mut Tx<'_>,
    site_id: &str,
    batch_id: Uuid,
    kind: CommandKind,
    now: DateTime<Utc>,
) -> Result<HubCommand> {
    let site = tx.lock_site(site_id).await?;
    let command = HubCommand {
        seq: site.last_command_seq + 1,
        command_id: Uuid::now_v7(),
        issued_at: now,
        batch_id,
        kind,
    };
    tx.insert_command(site_id, &command).await?;
    Ok(command)
}

/// The next chain-of-identity number of the facility this year.
pub(crate) async fn next_coi(tx: &mut Tx<'_>, facility: &str, now: DateTime<Utc>) -> Result<Coi> {
    let year = now.year();
    let serial = tx.next_coi_serial(facility, year).await?;
    if serial >= 1_000_000 {
        return Err(Error::FailedPrecondition(format!(
            "COI serials for facility {facility} in {year} are exhausted"
        )));
    }
    Coi::new(facility, year as u16, serial as u32)
        .map_err(|e| Error::Invalid(format!("facility id: {e}")))
}

/// Stores a new order with its batch and sends its site the order, with the
/// recipe document it pinned.
pub(crate) async fn place_order(
    tx: &mut Tx<'_>,
    order: &Order,
    recipe: &StoredRecipe,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.insert_order(order).await?;
    append_command(
        tx,
        &order.site_id,
        order.batch_id,
        CommandKind::BatchOrder {
            order_id: order.order_id,
            coi: order.coi.clone(),
            patient_pseudonym: order.patient_pseudonym.clone(),
            requested_collection_date: order.requested_collection_date.clone(),
            recipe_id: order.recipe_id.clone(),
            recipe_version: order.recipe_version,
            recipe_json: recipe.canonical_json.clone(),
            recipe_sha256: recipe.sha256.clone(),
        },
        now,
    )
    .await?;
    Ok(())
}

pub(crate) async fn create_order(
    mut tx: Tx<'_>,
    new: &NewOrder,
    now: DateTime<Utc>,
) -> Result<Order> {
    let site = match tx.lock_site(&new.site_id).await {
        Err(Error::NotFound(_)) => {
            return Err(Error::Invalid(format!(
                "site {:?} is not known to the hub",
                new.site_id
            )))
        }
        other => other?,
    };
    // A request sent again (under the site's lock, so after the first committed)
    // answers with the order it placed.
    if let Some(request_id) = new.request_id {
        if let Some(order_id) = tx.order_of_request(&new.physician, request_id).await? {
            tracing::info!(%order_id, %request_id, "order request repeated: nothing placed again");
            return tx.order(OrderKey::Order(order_id)).await;
        }
    }
    if site.site_id == DRY_RUN_SITE {
        return Err(Error::Invalid(format!(
            "site {DRY_RUN_SITE:?} is the hub's simulator for dry runs of draft recipes; it takes no patient's order"
        )));
    }
    if site.status != SiteStatus::Active {
        return Err(Error::FailedPrecondition(format!(
            "site {:?} is {} and cannot take orders",
            site.site_id,
            site.status.as_str()
        )));
    }
    let recipe = tx.latest_recipe(&new.recipe_id).await?.ok_or_else(|| {
        Error::Invalid(format!(
            "product (recipe) {:?} is not known to the hub",
            new.recipe_id
        ))
    })?;
    check_qualification(
        &mut tx,
        &new.site_id,
        &recipe.recipe.id,
        recipe.recipe.version,
    )
    .await?;
    let coi = next_coi(&mut tx, &new.facility, now).await?;
    let order = Order {
        order_id: Uuid::now_v7(),
        batch_id: Uuid::now_v7(),
        coi: coi.to_string(),
        patient_pseudonym: new.patient_pseudonym.clone(),
        recipe_id: recipe.recipe.id.clone(),
        recipe_version: recipe.recipe.version,
        site_id: new.site_id.clone(),
        requested_collection_date: new.requested_collection_date.clone(),
        physician: new.physician.clone(),
        created_at: now,
        state: BatchState::Ordered,
        current_step: None,
        progress: Progress::default(),
        decision_recorded: false,
        updated_at: now,
        dry_run: false,
    };
    place_order(&mut tx, &order, &recipe, now).await?;
    if let Some(request_id) = new.request_id {
        tx.insert_order_request(&new.physician, request_id, order.order_id)
            .await?;
    }
    let booked = book(
        &mut tx,
        order.order_id,
        &new.site_id,
        &recipe.recipe,
        &new.requested_collection_date,
        now,
    )
    .await?;
    // An order an integration engine entered names the engine as its actor, and
    // the physician it was placed for.
    let for_physician = match &new.entered_by {
        Some(_) => format!(", for physician {}", new.physician),
        None => String::new(),
    };
    tx.audit(
        NewEntry::new(
            new.entered_by.as_deref().unwrap_or(&new.physician),
            Action::OrderCreated,
            Object::Order(order.order_id),
        )
        .batch(order.batch_id)
        .value(format!(
            "COI {coi}, patient {}, site {}, recipe {} v{}, collection {}{for_physician}",
            new.patient_pseudonym,
            new.site_id,
            recipe.recipe.id,
            recipe.recipe.version,
            new.requested_collection_date
        ))
        .reason(schedule_store::booking_note(booked.as_ref())),
        now,
    )
    .await?;
    let order = tx.order(OrderKey::Order(order.order_id)).await?;
    tx.commit().await?;
    Ok(order)
}

pub(crate) async fn cancel_order(
    mut tx: Tx<'_>,
    order_id: Uuid,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Order> {
    let order = tx.lock_order(OrderKey::Order(order_id)).await?;
    if !order.state.cancellable() {
        return Err(Error::FailedPrecondition(format!(
            "order {order_id} is {}; only an order still in manufacturing can be cancelled (a finished batch is rejected by QA instead)",
            order.state
        )));
    }
    let mut projection = order.projection();
    projection.state = BatchState::Cancelled;
    projection.current_step = None;
    tx.save_projection(order.batch_id, &projection, now).await?;
    tx.release_booking(order_id, now).await?;
    append_command(
        &mut tx,
        &order.site_id,
        order.batch_id,
        CommandKind::CancelBatch {
            reason: reason.to_owned(),
            cancelled_by: by.to_owned(),
        },
        now,
    )
    .await?;
    tx.audit(
        NewEntry::new(by, Action::OrderCancelled, Object::Order(order_id))
            .batch(order.batch_id)
            .change(order.state.as_str(), BatchState::Cancelled.as_str())
            .reason(reason),
        now,
    )
    .await?;
    let order = tx.order(OrderKey::Order(order_id)).await?;
    tx.commit().await?;
    Ok(order)
}

/// Why a dry run's batch takes no release signature.
pub fn dry_run_refusal(order: &Order) -> String {
    format!(
        "batch {} is a dry run of a draft recipe ({} v{}) on the simulator; a dry run is never released",
        order.batch_id, order.recipe_id, order.recipe_version
    )
}

pub(crate) async fn sign_release(
    mut tx: Tx<'_>,
    signature: &Signature,
    accept_simulated: bool,
    now: DateTime<Utc>,
) -> Result<Order> {
    // Stored times keep microseconds; the copy sent to the site must be the same value.
    let signature = &Signature {
        signed_at: signature.signed_at.trunc_subsecs(6),
        ..signature.clone()
    };
    let order = tx.lock_order(OrderKey::Batch(signature.batch_id)).await?;
    if order.dry_run {
        return Err(Error::FailedPrecondition(dry_run_refusal(&order)));
    }
    if order.state != BatchState::AwaitingRelease {
        return Err(Error::FailedPrecondition(format!(
            "batch {} is {}, not awaiting release; only a batch whose record is complete can be released or rejected",
            order.batch_id, order.state
        )));
    }
    let recipe = tx.recipe(&order.recipe_id, order.recipe_version).await?;
    let events = tx.events_of_batch(order.batch_id).await?;
    let current = crate::record::record_sha256(&order, &recipe.sha256, &events);
    if current != signature.record_sha256 {
        return Err(Error::FailedPrecondition(format!(
            "the batch record changed since it was reviewed (reviewed {}, now {current}); review it again before signing",
            signature.record_sha256
        )));
    }
    check_signer(&events, signature, accept_simulated)?;
    // What the hub's own checks found is not in the record's hash: one that came
    // after the review (a suspension, a trend signal) must not be released over
    // unjustified.
    if signature.meaning.is_release() {
        if let Some(unseen) = order.progress.anomalies.iter().find(|a| {
            let text = crate::record::Exception::Anomaly((*a).clone()).text();
            !signature.justifications.iter().any(|j| j.exception == text)
        }) {
            return Err(Error::FailedPrecondition(format!(
                "the batch has an exception its release does not justify (hub check: {unseen}); review the record again before signing"
            )));
        }
    }
    crate::model::release::check_decision(
        &order,
        &recipe.recipe,
        signature.meaning,
        &signature.outstanding_tests,
    )
    .map_err(Error::FailedPrecondition)?;
    if signature.meaning.releases() {
        super::deviations::check_release(&mut tx, order.batch_id).await?;
    }
    // A conditional release names what is outstanding in the recipe's order.
    let signature = &Signature {
        outstanding_tests: match signature.meaning {
            ReleaseMeaning::ReleasedConditionally => {
                crate::model::release::outstanding(&order, &recipe.recipe)
            }
            _ => Vec::new(),
        },
        ..signature.clone()
    };
    sign_release_rest(tx, order, signature, now).await
}

/// Who may sign a release decision on a batch with these records: not a person who
/// took part in it at the site, and (unless `accept_simulated`, a hub in dev mode)
/// nobody when a simulator's operator made any of them.
fn check_signer(
    events: &[crate::model::StoredEvent],
    signature: &Signature,
    accept_simulated: bool,
) -> Result<()> {
    // Who took part is who signed in at the site; a name typed into a free field
    // before sign-in there proves nothing either way.
    if let Some(took_part) = events.iter().find(|e| {
        matches!(e.event.identity, Identity::Authenticated { .. })
            && e.event
                .people()
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&signature.signer))
    }) {
        let (what, _) = crate::record::describe(&took_part.event.kind);
        return Err(Error::PermissionDenied(format!(
            "{} took part in this batch (record {}: {what}, made or verified by them at the site) and may not sign its release; another QA person must",
            signature.signer, took_part.event.seq
        )));
    }
    if !accept_simulated {
        if let Some(simulated) = events
            .iter()
            .find(|e| e.event.identity == Identity::Simulated)
        {
            return Err(Error::FailedPrecondition(format!(
                "record {} of this batch was made by a site simulator's operator ({}), not by a person; only a hub in dev mode releases such a batch",
                simulated.event.seq, simulated.event.recorded_by
            )));
        }
    }
    Ok(())
}

/// The writes of [`sign_release`] once every check passed.
async fn sign_release_rest(
    mut tx: Tx<'_>,
    order: Order,
    signature: &Signature,
    now: DateTime<Utc>,
) -> Result<Order> {
    tx.insert_signature(signature).await?;
    let mut projection = order.projection();
    projection.state = if signature.meaning.releases() {
        BatchState::Released
    } else {
        BatchState::Rejected
    };
    projection.progress.release_awaits = signature.outstanding_tests.iter().cloned().collect();
    tx.save_projection(order.batch_id, &projection, now).await?;
    append_command(
        &mut tx,
        &order.site_id,
        order.batch_id,
        decision_command(signature),
        now,
    )
    .await?;
    tx.audit(
        NewEntry::new(
            &signature.signer,
            Action::ReleaseSigned,
            Object::Batch(order.batch_id),
        )
        .batch(order.batch_id)
        .change(order.state.as_str(), projection.state.as_str())
        .value(signed_value(signature))
        .reason(
            std::iter::once(signature.reason.clone())
                .filter(|r| !r.is_empty())
                .chain(signature.justifications.iter().map(|j| {
                    format!(
                        "exception \"{}\" justified: {}",
                        j.exception, j.justification
                    )
                }))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        now,
    )
    .await?;
    let order = tx.order(OrderKey::Batch(order.batch_id)).await?;
    tx.commit().await?;
    Ok(order)
}

/// The command that tells the site of a release signature.
fn decision_command(signature: &Signature) -> CommandKind {
    CommandKind::ReleaseDecision {
        signature_id: signature.signature_id,
        meaning: signature.meaning,
        signer: signature.signer.clone(),
        signer_name: signature.signer_name.clone(),
        signed_at: signature.signed_at,
        record_sha256: signature.record_sha256.clone(),
        reason: signature.reason.clone(),
        outstanding_tests: signature.outstanding_tests.clone(),
    }
}

/// The audit entry's new value for a release signature: its meaning first (the
/// notifier reads it), who signed, and the record it binds to.
fn signed_value(signature: &Signature) -> String {
    let tests = if signature.outstanding_tests.is_empty() {
        String::new()
    } else {
        format!(
            " ({} {})",
            match signature.meaning {
                ReleaseMeaning::ReleaseCompleted => "confirming",
                _ => "awaiting",
            },
            signature.outstanding_tests.join(", ")
        )
    };
    format!(
        "{}{tests} by {} ({}), signature {} on record {}",
        signature.meaning.as_str(),
        signature.signer_name,
        signature.signer,
        signature.signature_id,
        signature.record_sha256
    )
}

/// Completes a conditional release with QA's signature (meaning "release
/// completed"): refused unless every result the release waited for arrived within
/// specification ([`crate::model::release::check_completion`]) and the record still
/// hashes to what the signer reviewed. The batch keeps its state (it may be infused
/// already); its release no longer waits, and the site is told.
pub(crate) async fn complete_release(
    mut tx: Tx<'_>,
    signature: &Signature,
    accept_simulated: bool,
    now: DateTime<Utc>,
) -> Result<Order> {
    let order = tx.lock_order(OrderKey::Batch(signature.batch_id)).await?;
    if order.dry_run {
        return Err(Error::FailedPrecondition(dry_run_refusal(&order)));
    }
    let recipe = tx.recipe(&order.recipe_id, order.recipe_version).await?;
    let confirmed = crate::model::release::check_completion(&order, &recipe.recipe)
        .map_err(Error::FailedPrecondition)?;
    crate::model::release::check_named(&confirmed, &signature.outstanding_tests)
        .map_err(Error::FailedPrecondition)?;
    let events = tx.events_of_batch(order.batch_id).await?;
    let current = crate::record::record_sha256(&order, &recipe.sha256, &events);
    if current != signature.record_sha256 {
        return Err(Error::FailedPrecondition(format!(
            "the batch record changed since it was reviewed (reviewed {}, now {current}); review it again before signing",
            signature.record_sha256
        )));
    }
    check_signer(&events, signature, accept_simulated)?;
    super::deviations::check_release(&mut tx, order.batch_id).await?;
    let signature = &Signature {
        signed_at: signature.signed_at.trunc_subsecs(6),
        meaning: ReleaseMeaning::ReleaseCompleted,
        outstanding_tests: confirmed,
        justifications: Vec::new(),
        ..signature.clone()
    };
    tx.insert_signature(signature).await?;
    let mut progress = order.progress.clone();
    progress.release_awaits.clear();
    tx.set_progress(order.batch_id, &progress, now).await?;
    append_command(
        &mut tx,
        &order.site_id,
        order.batch_id,
        decision_command(signature),
        now,
    )
    .await?;
    tx.audit(
        NewEntry::new(
            &signature.signer,
            Action::ReleaseSigned,
            Object::Batch(order.batch_id),
        )
        .batch(order.batch_id)
        .value(signed_value(signature))
        .reason(signature.reason.clone()),
        now,
    )
    .await?;
    let order = tx.order(OrderKey::Batch(order.batch_id)).await?;
    tx.commit().await?;
    Ok(order)
}

/// Closes a patient follow-up with QA's signature: refused unless the batch has a
/// follow-up opened by that record and still open.
pub(crate) async fn close_follow_up(
    mut tx: Tx<'_>,
    closure: &crate::model::FollowUpClosure,
    now: DateTime<Utc>,
) -> Result<Order> {
    let order = tx.lock_order(OrderKey::Batch(closure.batch_id)).await?;
    let mut progress = order.progress.clone();
    let Some(mark) = progress
        .follow_ups
        .iter_mut()
        .find(|f| f.site_seq == closure.site_seq)
    else {
        return Err(Error::NotFound(format!(
            "follow-up of record {} of batch {}",
            closure.site_seq, order.batch_id
        )));
    };
    if mark.closed {
        return Err(Error::FailedPrecondition(format!(
            "the follow-up of record {} of batch {} is closed already; nothing changed",
            closure.site_seq, order.batch_id
        )));
    }
    mark.closed = true;
    let test_id = mark.test_id.clone();
    let closure = &crate::model::FollowUpClosure {
        signed_at: closure.signed_at.trunc_subsecs(6),
        ..closure.clone()
    };
    tx.insert_follow_up_closure(closure).await?;
    tx.set_progress(order.batch_id, &progress, now).await?;
    tx.audit(
        NewEntry::new(
            &closure.signer,
            Action::FollowUpClosed,
            Object::SiteEvent {
                site_id: order.site_id.clone(),
                seq: closure.site_seq,
            },
        )
        .batch(order.batch_id)
        .value(format!(
            "follow-up of {test_id} (record {}) closed by {} ({}), signature {}",
            closure.site_seq, closure.signer_name, closure.signer, closure.closure_id
        ))
        .reason(closure.outcome.clone()),
        now,
    )
    .await?;
    let order = tx.order(OrderKey::Batch(order.batch_id)).await?;
    tx.commit().await?;
    Ok(order)
}

/// A QA person's signed review of the records that arrived after a batch's release
/// decision: refused unless there are unreviewed ones and the record still hashes to
/// what they reviewed. Clears the batch's "changed after decision" mark up to
/// `review.through_seq`.
pub(crate) async fn review_change(
    mut tx: Tx<'_>,
    review: &ChangeReview,
    now: DateTime<Utc>,
) -> Result<Order> {
    let review = &ChangeReview {
        signed_at: review.signed_at.trunc_subsecs(6),
        ..review.clone()
    };
    let order = tx.lock_order(OrderKey::Batch(review.batch_id)).await?;
    let unreviewed = order.progress.unreviewed_changes();
    let Some(&last) = unreviewed.last() else {
        return Err(Error::FailedPrecondition(format!(
            "batch {} has no records that arrived after its decision and await review",
            order.batch_id
        )));
    };
    let recipe = tx.recipe(&order.recipe_id, order.recipe_version).await?;
    let events = tx.events_of_batch(order.batch_id).await?;
    let current = crate::record::record_sha256(&order, &recipe.sha256, &events);
    if current != review.record_sha256 {
        return Err(Error::FailedPrecondition(format!(
            "the batch record changed since it was reviewed (reviewed {}, now {current}); review it again before signing",
            review.record_sha256
        )));
    }
    let review = &ChangeReview {
        through_seq: last,
        ..review.clone()
    };
    tx.insert_change_review(review).await?;
    let mut progress = order.progress.clone();
    progress.changes_reviewed_through = last;
    tx.set_progress(order.batch_id, &progress, now).await?;
    tx.audit(
        NewEntry::new(
            &review.signer,
            Action::BatchChangeReviewed,
            Object::Batch(order.batch_id),
        )
        .batch(order.batch_id)
        .value(format!(
            "records {} reviewed by {} ({}), signature {} on record {}",
            unreviewed
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            review.signer_name,
            review.signer,
            review.review_id,
            review.record_sha256
        ))
        .reason(review.comment.clone()),
        now,
    )
    .await?;
    let order = tx.order(OrderKey::Batch(order.batch_id)).await?;
    tx.commit().await?;
    Ok(order)
}

/// Keeps, once, that a person acknowledged what their electronic signature means.
pub(crate) async fn acknowledge_signature(
    mut tx: Tx<'_>,
    username: &str,
    statement: &str,
    now: DateTime<Utc>,
) -> Result<User> {
    let user = tx.lock_user(username).await?;
    if user.signature_acknowledged_at.is_some() {
        return Ok(user);
    }
    tx.set_signature_acknowledged(username, now.trunc_subsecs(6))
        .await?;
    tx.audit(
        NewEntry::new(
            username,
            Action::UserSignatureAcknowledged,
            Object::User(username.to_owned()),
        )
        .value(statement),
        now,
    )
    .await?;
    let user = tx.lock_user(username).await?;
    tx.commit().await?;
    Ok(user)
}

/// Notes that a session made its first signature.
pub(crate) async fn mark_session_signed(
    mut tx: Tx<'_>,
    token_sha256: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.mark_session_signed(token_sha256, now).await?;
    tx.commit().await
}

/// Whether a sign-in (or signing) by `username` from `source` may be tried now.
pub(crate) async fn sign_in_gate(
    mut tx: super::backend::Snapshot<'_>,
    username: &str,
    source: &str,
    window_start: DateTime<Utc>,
    limits: FailureLimits,
) -> Result<Gate> {
    let (by_source, _) = tx.sign_in_failures(ANY_USER, source, window_start).await?;
    if by_source >= limits.per_source {
        return Ok(Gate::SourceThrottled(by_source));
    }
    let (by_user, _) = tx.sign_in_failures(username, source, window_start).await?;
    if by_user >= limits.per_user_and_source {
        return Ok(Gate::UserLocked(by_user));
    }
    Ok(Gate::Open)
}

/// Counts a failed sign-in (or signing) of `username` from `source`. The audit trail
/// hears of it only when a lock or throttle begins (once per window), and later as a
/// count per window ([`report_sign_in_failures`]): unauthenticated traffic adds a
/// bounded amount to it.
pub(crate) async fn count_sign_in_failure(
    mut tx: Tx<'_>,
    username: &str,
    source: &str,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    limits: FailureLimits,
    now: DateTime<Utc>,
) -> Result<Gate> {
    let by_source = tx
        .bump_sign_in_failures(ANY_USER, source, window_start)
        .await?;
    let by_user = tx
        .bump_sign_in_failures(username, source, window_start)
        .await?;
    let mut gate = Gate::Open;
    if by_user >= limits.per_user_and_source {
        gate = Gate::UserLocked(by_user);
        let (_, audited) = tx.sign_in_failures(username, source, window_start).await?;
        if !audited {
            tx.set_sign_in_lock_audited(username, source, window_start)
                .await?;
            tx.audit(
                NewEntry::new(
                    username,
                    Action::UserSignInLocked,
                    Object::User(username.to_owned()),
                )
                .value(format!("from {source} until {}", ts(window_end)))
                .reason(format!("{by_user} failed sign-ins from {source}")),
                now,
            )
            .await?;
        }
    }
    if by_source >= limits.per_source {
        gate = Gate::SourceThrottled(by_source);
        let (_, audited) = tx.sign_in_failures(ANY_USER, source, window_start).await?;
        if !audited {
            tx.set_sign_in_lock_audited(ANY_USER, source, window_start)
                .await?;
            tx.audit(
                NewEntry::new(
                    source,
                    Action::SourceSignInThrottled,
                    Object::Source(source.to_owned()),
                )
                .value(format!("sign-ins refused until {}", ts(window_end)))
                .reason(format!(
                    "{by_source} failed sign-ins from {source} for any user names"
                )),
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(gate)
}

/// Puts the counts of failed sign-ins of windows that ended before `now` into the
/// audit trail (one entry per user name and source and window), and forgets counts
/// older than a day. Returns how many entries it wrote.
pub(crate) async fn report_sign_in_failures(
    mut tx: Tx<'_>,
    window: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<usize> {
    let ended = tx.unreported_sign_in_failures(now - window, 500).await?;
    for (username, source, start, failures) in &ended {
        tx.set_sign_in_failures_reported(username, source, *start)
            .await?;
        if username == ANY_USER {
            continue;
        }
        tx.audit(
            NewEntry::new(
                username,
                Action::UserSignInFailuresCounted,
                Object::User(username.clone()),
            )
            .value(format!(
                "{failures} failed from {source} between {} and {}",
                ts(*start),
                ts(*start + window)
            )),
            now,
        )
        .await?;
    }
    tx.forget_sign_in_failures(now - chrono::Duration::days(1))
        .await?;
    tx.commit().await?;
    Ok(ended.len())
}

/// Books an order's collection inside the order's transaction, with its site
/// locked, so the feasibility check and the insert see the same bookings
/// ([`schedule_store::decide`]); `None` when the site declares no capacity.
async fn book(
    tx: &mut Tx<'_>,
    order_id: Uuid,
    site_id: &str,
    recipe: &Recipe,
    requested_date: &str,
    now: DateTime<Utc>,
) -> Result<Option<Plan>> {
    let capacity = tx.capacity(site_id).await?;
    let booked = match capacity {
        Some(_) => booked_from(&tx.site_bookings(site_id).await?),
        None => Booked::default(),
    };
    let Some(plan) = schedule_store::decide(
        site_id,
        capacity.as_ref(),
        recipe,
        &booked,
        requested_date,
        now,
    )?
    else {
        return Ok(None);
    };
    tx.insert_booking(order_id, site_id, &plan, now).await?;
    Ok(Some(plan))
}

pub(crate) async fn set_capacity(
    mut tx: Tx<'_>,
    site_id: &str,
    capacity: &Capacity,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    capacity.check().map_err(Error::Invalid)?;
    let site = tx.lock_site(site_id).await?;
    if site.status == SiteStatus::Ceased {
        return Err(Error::FailedPrecondition(format!(
            "site {site_id:?} has ceased; its capacity cannot change"
        )));
    }
    let old = tx.capacity(site_id).await?;
    let unbooked = tx.unbooked_open_orders(site_id).await?;
    let bookings = tx.site_bookings(site_id).await?;
    schedule_store::check_new_capacity(site_id, capacity, &bookings, &unbooked, now)?;
    let document = capacity_json(capacity)?;
    tx.set_capacity(site_id, &document, actor, now).await?;
    let old = old
        .as_ref()
        .map(capacity_json)
        .transpose()?
        .unwrap_or_default();
    tx.audit(
        NewEntry::new(
            actor,
            Action::SiteCapacityChanged,
            Object::SiteCapacity(site_id.to_owned()),
        )
        .change(old, document),
        now,
    )
    .await?;
    tx.commit().await
}

pub(crate) async fn reschedule_order(
    mut tx: Tx<'_>,
    order_id: Uuid,
    date: NaiveDate,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Booking> {
    let order = tx.lock_order(OrderKey::Order(order_id)).await?;
    let current = tx
        .order_booking(order_id)
        .await?
        .filter(|(_, active)| *active)
        .map(|(b, _)| b);
    schedule_store::check_reschedulable(&order, current.as_ref())?;
    let current = current.expect("checked above");
    let capacity = tx.capacity(&order.site_id).await?;
    let recipe = tx.recipe(&order.recipe_id, order.recipe_version).await?;
    let mut others = tx.site_bookings(&order.site_id).await?;
    others.retain(|b| b.order_id != order_id);
    let plan = schedule_store::decide(
        &order.site_id,
        capacity.as_ref(),
        &recipe.recipe,
        &booked_from(&others),
        &date.to_string(),
        now,
    )?
    .ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "site {:?} no longer declares its capacity; declare it before rescheduling",
            order.site_id
        ))
    })?;
    tx.move_booking(order_id, &plan, now).await?;
    tx.audit(
        NewEntry::new(by, Action::OrderRescheduled, Object::Order(order_id))
            .batch(order.batch_id)
            .change(
                format!("{} slot {}", current.collection_date, current.slot + 1),
                format!("{} slot {}", plan.collection_date, plan.slot + 1),
            )
            .reason(reason),
        now,
    )
    .await?;
    let booking = tx
        .order_booking(order_id)
        .await?
        .map(|(b, _)| b)
        .ok_or_else(|| Error::Corrupt(format!("booking of order {order_id} vanished")))?;
    tx.commit().await?;
    Ok(booking)
}

pub(crate) async fn store_replan(
    mut tx: Tx<'_>,
    seen: &Booking,
    moved: &Moved,
    notice: Option<&DelayNotice>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let order = tx.lock_order(OrderKey::Order(moved.order_id)).await?;
    let current = tx.order_booking(moved.order_id).await?;
    if !schedule_store::unchanged(current.as_ref(), seen) {
        return Ok(false);
    }
    for (step_id, start, end) in &moved.steps {
        tx.set_expected(moved.order_id, step_id, *start, *end)
            .await?;
    }
    let mut announced = false;
    if let Some(notice) = notice {
        // Only if nobody announced another release since the caller looked (the
        // site's lock orders two hub processes doing this at once).
        announced = tx
            .announce_release(
                moved.order_id,
                notice.expected_release,
                notice.replaces,
                now,
            )
            .await?;
    }
    if let Some(notice) = notice.filter(|_| announced) {
        tx.audit(
            NewEntry::new("hub", Action::OrderDelayed, Object::Order(moved.order_id))
                .batch(order.batch_id)
                .change(ts(notice.planned_release), ts(notice.expected_release))
                .reason(&notice.reason),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(announced)
}

pub(crate) async fn subscribe(
    mut tx: Tx<'_>,
    new: &NewSubscription,
    now: DateTime<Utc>,
) -> Result<Subscription> {
    if let Some(site_id) = &new.site_id {
        tx.lock_site(site_id).await?;
    }
    let subscription = Subscription {
        subscription_id: Uuid::now_v7(),
        owner: new.owner.clone(),
        kinds: new.kinds.clone(),
        channel: new.channel.clone(),
        site_id: new.site_id.clone(),
        created_at: now.trunc_subsecs(6),
    };
    let secret = match &new.channel {
        Channel::Webhook { secret, .. } => Some(secret.as_str()),
        Channel::Email { .. } => None,
    };
    tx.insert_subscription(&subscription, secret, now).await?;
    tx.audit(
        NewEntry::new(
            &new.owner,
            Action::NotificationSubscribed,
            Object::Subscription(subscription.subscription_id),
        )
        .value(format!(
            "{} {} for {}{}",
            new.channel.name(),
            new.channel.target(),
            kinds_text(&new.kinds),
            new.site_id
                .as_deref()
                .map(|s| format!(" at site {s}"))
                .unwrap_or_default()
        )),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(subscription)
}

pub(crate) async fn unsubscribe(
    mut tx: Tx<'_>,
    subscription_id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(dropped) = tx.end_subscription(subscription_id, now).await? else {
        return Err(Error::NotFound(format!("subscription {subscription_id}")));
    };
    tx.audit(
        NewEntry::new(
            actor,
            Action::NotificationUnsubscribed,
            Object::Subscription(subscription_id),
        )
        .value(format!("{dropped} undelivered notification(s) dropped")),
        now,
    )
    .await?;
    tx.commit().await
}

/// One pass of the notifier (see [`super::notify::NotifyStore::run_notifier`]).
///
/// The entries are read and turned into notifications from a read snapshot, outside
/// the write lock: reading the events of every site request the trail records
/// takes most of a pass, and held under the lock it kept the site events' group
/// commits waiting (with 1,000 live sites the notifier held the lock about 40 % of
/// the time, measured in `carrel-bench`'s figure 8). The write transaction then
/// checks that the cursor has not moved (another notifier took these entries),
/// drops what is meant for a subscription that ended meanwhile, queues the rest and
/// moves the cursor: an entry still becomes notifications exactly once.
pub(crate) async fn run_notifier<S>(
    store: &S,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<NotifierPass>
where
    S: super::backend::Reads + super::backend::Writes + ?Sized,
{
    let mut snapshot = store.read().await?;
    let cursor = snapshot.notifier_position().await?;
    let entries = snapshot.audit_after(cursor, limit).await?;
    let Some(last) = entries.last() else {
        return Ok(NotifierPass::default());
    };
    let last_position = last.position;
    let subscribers = snapshot.subscribers().await?;
    let mut inbox = Vec::new();
    let mut outbox = Vec::new();
    for entry in &entries {
        let (order, events) = snapshot.happening_facts(happening::needs(entry)).await?;
        for happening in happening::happenings(entry, order.as_ref(), &events) {
            // The ordering physician hears of critical news in the console whatever
            // they subscribed to (not of what they did themselves).
            if let Some(facts) = happening.order.as_ref().filter(|o| {
                happening.kind.is_critical()
                    && !o.physician.is_empty()
                    && o.physician != entry.actor
            }) {
                inbox.push((facts.physician.clone(), happening.clone()));
            }
            for (subscription, role) in &subscribers {
                if subscription.wants(*role, &happening) {
                    outbox.push((subscription.clone(), happening.clone()));
                }
            }
        }
    }
    drop(snapshot);

    let mut tx = store.write().await?;
    if tx.notifier_cursor().await? != cursor {
        // Another notifier (another hub process) took these entries meanwhile.
        return Ok(NotifierPass::default());
    }
    let live: std::collections::HashSet<Uuid> = tx
        .subscribers()
        .await?
        .iter()
        .map(|(subscription, _)| subscription.subscription_id)
        .collect();
    for (physician, happening) in &inbox {
        tx.deliver_to_inbox(Uuid::now_v7(), physician, happening, now)
            .await?;
    }
    let mut queued = 0;
    for (subscription, happening) in &outbox {
        if live.contains(&subscription.subscription_id)
            && tx
                .queue_notification(Uuid::now_v7(), subscription, happening, now)
                .await?
        {
            queued += 1;
        }
    }
    tx.set_notifier_cursor(last_position).await?;
    tx.commit().await?;
    Ok(NotifierPass {
        entries: entries.len(),
        queued,
    })
}

/// A site not heard from since this time is down.
pub(crate) fn silent_since(down_after: std::time::Duration, now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::from_std(down_after).unwrap_or_default()
}

/// Reports site links down and restored (see
/// [`super::notify::NotifyStore::check_site_links`]); returns the sites, sorted.
pub(crate) async fn check_site_links(
    mut tx: Tx<'_>,
    down_after: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let down = tx
        .mark_links_down(silent_since(down_after, now), now)
        .await?;
    let back = tx.mark_links_restored().await?;
    let mut changed = Vec::new();
    for (site_id, last_contact) in down {
        tx.audit(
            NewEntry::new(
                "hub",
                Action::SiteLinkDown,
                Object::Site(site_id.to_owned()),
            )
            .change(ts(last_contact), "")
            .reason(format!(
                "not heard from for more than {} s",
                down_after.as_secs()
            )),
            now,
        )
        .await?;
        changed.push(site_id);
    }
    for (site_id, last_contact) in back {
        tx.audit(
            NewEntry::new(
                "hub",
                Action::SiteLinkRestored,
                Object::Site(site_id.to_owned()),
            )
            .value(last_contact.map(ts).unwrap_or_default()),
            now,
        )
        .await?;
        changed.push(site_id);
    }
    changed.sort();
    tx.commit().await?;
    Ok(changed)
}

pub(crate) async fn requeue(
    mut tx: Tx<'_>,
    notification_id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<OutboxEntry> {
    let entry = tx.outbox_entry(notification_id).await?;
    if entry.state != OutboxState::Failed {
        return Err(Error::FailedPrecondition(format!(
            "notification {notification_id} is {}; only a failed one can be requeued",
            entry.state.as_str()
        )));
    }
    if !tx.subscription_live(entry.subscription_id).await? {
        return Err(Error::FailedPrecondition(format!(
            "notification {notification_id} belongs to subscription {}, which was ended",
            entry.subscription_id
        )));
    }
    tx.requeue_notification(notification_id, now).await?;
    tx.audit(
        NewEntry::new(
            actor,
            Action::NotificationRequeued,
            Object::Notification(notification_id),
        )
        .change(
            format!(
                "failed after {} attempt(s): {}",
                entry.attempts,
                entry.last_error.as_deref().unwrap_or("")
            ),
            "pending",
        ),
        now,
    )
    .await?;
    let entry = tx.outbox_entry(notification_id).await?;
    tx.commit().await?;
    Ok(entry)
}

/// Refuses an order for `version` of `recipe_id` at `site_id` unless a
/// qualification in force covers it, saying what the site is qualified for.
async fn check_qualification(
    tx: &mut Tx<'_>,
    site_id: &str,
    recipe_id: &str,
    version: u32,
) -> Result<()> {
    let all = tx.site_qualifications(Some(site_id)).await?;
    let in_force = all
        .iter()
        .find(|q| q.recipe_id == recipe_id && q.in_force());
    match in_force {
        Some(q) if q.covers(version) => Ok(()),
        Some(q) => Err(Error::Invalid(format!(
            "product {recipe_id} v{version} (the version in force) is not one site {site_id} is qualified for: \
             it is qualified for {}; QA qualifies the site for v{version} before it can be ordered there",
            q.versions()
        ))),
        None => {
            let products: Vec<String> = all
                .iter()
                .filter(|q| q.in_force())
                .map(|q| q.recipe_id.clone())
                .collect();
            let has = if products.is_empty() {
                "no product yet".to_owned()
            } else {
                products.join(", ")
            };
            Err(Error::Invalid(format!(
                "product {recipe_id} is not one site {site_id} is qualified to make (it is qualified for {has}); \
                 QA qualifies a site for a product with a signature"
            )))
        }
    }
}

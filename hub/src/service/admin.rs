//! Administration as people do it, whichever door they come in by (the gRPC
//! `AdminService`, the console's Sites and Users pages): registering sites, moving
//! them through their lifecycle, adding and listing users. The checks on names and
//! the enrollment token are [`crate::admin`]'s, shared with the command line; who
//! may do what is decided here.

use super::{field, require_role, Error};
use crate::admin::{self, Registered};
use crate::app::Hub;
use crate::model::{Role, Site, SiteStatus, User};

/// Who administers sites and users.
const ADMINS: [Role; 1] = [Role::Admin];
/// Who may see the network's sites and their links (QA follows them too).
const SITE_READERS: [Role; 2] = [Role::Admin, Role::Qa];

/// A refusal of [`crate::admin`]: an input that does not hold is an error of the
/// form as a whole (field `form`); what the store refuses stays the store's.
fn refusal(error: admin::Error) -> Error {
    match error {
        admin::Error::Invalid(why) => field("form", why),
        admin::Error::Auth(e) => field("password", e.to_string()),
        admin::Error::Store(e) => e.into(),
    }
}

/// The network's sites, for administrators and QA.
pub async fn sites(hub: &Hub, user: &User) -> Result<Vec<Site>, Error> {
    require_role(user, &SITE_READERS)?;
    Ok(hub.store.list_sites().await?)
}

/// The sites as an administrator manages them (the console's Sites page).
pub async fn sites_to_administer(hub: &Hub, user: &User) -> Result<Vec<Site>, Error> {
    require_role(user, &ADMINS)?;
    Ok(hub.store.list_sites().await?)
}

/// A site and the orders a change of its status touches: every order there that is
/// not closed (infused, rejected or cancelled), oldest first.
pub async fn site_impact(
    hub: &Hub,
    user: &User,
    site_id: &str,
) -> Result<(Site, Vec<crate::model::Order>), Error> {
    require_role(user, &ADMINS)?;
    let site = hub.store.site(site_id.trim()).await?;
    let mut open: Vec<_> = hub
        .store
        .list_orders(None, None)
        .await?
        .into_iter()
        .filter(|o| o.site_id == site.site_id && !o.state.is_closed())
        .collect();
    open.reverse();
    Ok((site, open))
}

/// Registers a site and makes its one-time enrollment token, valid for `ttl_secs`
/// (the configured `enrollment_ttl_secs` when `None`).
pub async fn register_site(
    hub: &Hub,
    user: &User,
    site_id: &str,
    name: &str,
    ttl_secs: Option<u32>,
) -> Result<Registered, Error> {
    require_role(user, &ADMINS)?;
    admin::register_site(
        hub.store.as_ref(),
        &hub.ca,
        site_id.trim(),
        name,
        ttl_secs.unwrap_or(hub.config.enrollment_ttl_secs),
        &user.username,
    )
    .await
    .map_err(refusal)
}

/// The hub's users, for administrators.
pub async fn users(hub: &Hub, user: &User) -> Result<Vec<User>, Error> {
    require_role(user, &ADMINS)?;
    Ok(hub.store.list_users().await?)
}

/// A user as an administrator enters them.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub full_name: &'a str,
    pub role: Role,
    pub password: &'a str,
}

/// Adds a user and, when no password was given (the way the console and the API
/// recommend), issues the one-time code with which the person chooses their own
/// password: the administrator never learns it. Returns the user and the code with
/// its expiry.
pub async fn add_user_with_code(
    hub: &Hub,
    user: &User,
    new: NewUser<'_>,
) -> Result<(User, Option<(String, chrono::DateTime<chrono::Utc>)>), Error> {
    let without_password = new.password.is_empty();
    let added = add_user(hub, user, new).await?;
    if !without_password {
        return Ok((added, None));
    }
    let code = reset_password(
        hub,
        user,
        &added.username,
        "new account: the person chooses their own password",
    )
    .await?;
    Ok((added, Some(code)))
}

/// Adds a user (administrators). On a hub with two or more administrators, a new qa
/// or admin account is refused here: add the person with another role and grant it
/// ([`change_role`]), which a second administrator approves.
pub async fn add_user(hub: &Hub, user: &User, new: NewUser<'_>) -> Result<User, Error> {
    require_role(user, &ADMINS)?;
    if crate::store::GUARDED_ROLES.contains(&new.role) {
        let admins = hub
            .store
            .list_users()
            .await?
            .iter()
            .filter(|u| u.role == Role::Admin && !u.disabled)
            .count();
        if admins >= 2 {
            return Err(field(
                "role",
                format!(
                    "this hub has {admins} administrators: the {} role is granted only with a second administrator's approval; add the person with another role, then grant it (Users page, or `carrel-hub user role`)",
                    new.role
                ),
            ));
        }
    }
    admin::add_user(
        hub.store.as_ref(),
        new.username.trim(),
        new.full_name,
        new.role,
        new.password,
        &user.username,
    )
    .await
    .map_err(refusal)
}

/// Assigns a person to a site (or sends their entry again, which unlocks them
/// there); returns the site's new directory version. The site's link is woken to
/// send it at once.
pub async fn assign_user_to_site(
    hub: &Hub,
    user: &User,
    username: &str,
    site_id: &str,
) -> Result<u64, Error> {
    require_role(user, &ADMINS)?;
    let version = hub
        .store
        .assign_user_to_site(username.trim(), site_id.trim(), &user.username)
        .await?;
    hub.links.notifier(site_id.trim()).notify_one();
    tracing::info!(username, site_id, version, by = %user.username, "person assigned to a site");
    Ok(version)
}

/// The person no longer works at the site; returns its new directory version.
pub async fn remove_user_from_site(
    hub: &Hub,
    user: &User,
    username: &str,
    site_id: &str,
) -> Result<u64, Error> {
    require_role(user, &ADMINS)?;
    let version = hub
        .store
        .remove_user_from_site(username.trim(), site_id.trim(), &user.username)
        .await?;
    hub.links.notifier(site_id.trim()).notify_one();
    tracing::warn!(username, site_id, version, by = %user.username, "person removed from a site");
    Ok(version)
}

/// Disables (or enables again) a user at the hub and at every site they work at;
/// returns those sites, whose links are woken to send the change at once.
pub async fn set_user_disabled(
    hub: &Hub,
    user: &User,
    username: &str,
    disabled: bool,
    reason: &str,
) -> Result<Vec<(String, u64)>, Error> {
    require_role(user, &ADMINS)?;
    if reason.trim().is_empty() {
        return Err(field(
            "reason",
            "a reason is required (it goes into the audit trail)",
        ));
    }
    let sites = hub
        .store
        .set_user_disabled(username.trim(), disabled, reason, &user.username)
        .await?;
    for (site, _) in &sites {
        hub.links.notifier(site).notify_one();
    }
    tracing::warn!(username, disabled, by = %user.username, ?sites, "user disabled or enabled");
    Ok(sites)
}

/// How long a password reset code works.
pub const RESET_VALID_HOURS: i64 = 24;

/// What became of a role change.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleChange {
    /// Made: the sites that heard of it.
    Changed(Vec<(String, u64)>),
    /// It grants qa or admin on a hub with two or more administrators: it waits for
    /// a second one to approve ([`approve_role`]).
    AwaitsApproval,
}

/// Changes a person's role (never one's own), with the reason the audit trail keeps.
/// Their sessions end (what they may do changed) and their sites hear of it. Granting
/// qa or admin needs a second administrator's approval when the hub has two or more.
pub async fn change_role(
    hub: &Hub,
    user: &User,
    username: &str,
    role: Role,
    reason: &str,
) -> Result<RoleChange, Error> {
    require_role(user, &ADMINS)?;
    if hub
        .store
        .request_role_grant(username.trim(), role, reason, &user.username)
        .await?
    {
        tracing::warn!(username, %role, by = %user.username, "role grant waits for a second administrator");
        return Ok(RoleChange::AwaitsApproval);
    }
    let sites = hub
        .store
        .change_account(
            username.trim(),
            &crate::store::AccountChange::Role(role),
            reason,
            &user.username,
        )
        .await?;
    super::wake(hub, &sites);
    tracing::warn!(username, %role, by = %user.username, "role changed");
    Ok(RoleChange::Changed(sites))
}

/// A second administrator approves the role grant waiting for `username`.
pub async fn approve_role(
    hub: &Hub,
    user: &User,
    username: &str,
    reason: &str,
) -> Result<(Role, Vec<(String, u64)>), Error> {
    require_role(user, &ADMINS)?;
    if reason.trim().is_empty() {
        return Err(field(
            "reason",
            "a reason is required (it goes into the audit trail)",
        ));
    }
    let (role, sites) = hub
        .store
        .approve_role_grant(username.trim(), reason, &user.username)
        .await?;
    super::wake(hub, &sites);
    tracing::warn!(username, %role, by = %user.username, "role grant approved");
    Ok((role, sites))
}

/// Role grants waiting for a second administrator.
pub async fn pending_role_grants(
    hub: &Hub,
    user: &User,
) -> Result<Vec<crate::store::backend::RoleGrant>, Error> {
    require_role(user, &ADMINS)?;
    Ok(hub.store.pending_role_grants().await?)
}

/// Resets a person's password: the old one stops working at once (at the hub and,
/// as soon as the entry arrives, at their sites), their sessions end, and the
/// returned one-time code, valid for [`RESET_VALID_HOURS`], lets them choose a new
/// password the administrator never learns. The code is shown once; only its
/// SHA-256 is kept.
pub async fn reset_password(
    hub: &Hub,
    user: &User,
    username: &str,
    reason: &str,
) -> Result<(String, chrono::DateTime<chrono::Utc>), Error> {
    require_role(user, &ADMINS)?;
    let code = crate::auth::new_secret();
    let expires_at = chrono::Utc::now() + chrono::Duration::hours(RESET_VALID_HOURS);
    let sites = hub
        .store
        .change_account(
            username.trim(),
            &crate::store::AccountChange::Reset {
                code_sha256: crate::auth::secret_sha256(&code),
                expires_at,
            },
            reason,
            &user.username,
        )
        .await?;
    super::wake(hub, &sites);
    tracing::warn!(username, by = %user.username, "password reset");
    Ok((code, expires_at))
}

/// Issues a person a bedside badge with the PIN they chose (replacing any earlier
/// badge at every site they work at); returns the badge id, to print as a barcode,
/// and the sites that hear of it.
pub async fn issue_badge(
    hub: &Hub,
    user: &User,
    username: &str,
    pin: &str,
) -> Result<(String, Vec<(String, u64)>), Error> {
    require_role(user, &ADMINS)?;
    let pin_hash = crate::auth::hash_pin(pin).map_err(|why| field("pin", why))?;
    let badge_id = crate::auth::new_badge_id();
    let sites = hub
        .store
        .issue_badge(username.trim(), &badge_id, &pin_hash, &user.username)
        .await?;
    for (site, _) in &sites {
        hub.links.notifier(site).notify_one();
    }
    tracing::info!(username, by = %user.username, "badge issued");
    Ok((badge_id, sites))
}

/// Moves a site through its lifecycle (suspend, resume, cease) for an administrator,
/// with the reason the audit trail keeps. A suspended or ceased site's live link is
/// closed at once.
pub async fn change_site_status(
    hub: &Hub,
    user: &User,
    site_id: &str,
    status: SiteStatus,
    reason: &str,
) -> Result<Site, Error> {
    require_role(user, &ADMINS)?;
    let what = match status {
        SiteStatus::Suspended => "suspend this site",
        SiteStatus::Ceased => "cease this site",
        _ => "resume this site",
    };
    let reason = super::sentence_reason(reason, what)?;
    let reason = reason.as_str();
    let site = hub
        .store
        .set_site_status(site_id.trim(), status, &user.username, reason)
        .await?;
    if status != SiteStatus::Active {
        hub.links.close(&site.site_id);
    }
    tracing::warn!(site_id = %site.site_id, status = status.as_str(), %reason, by = %user.username, "site status changed");
    Ok(site)
}

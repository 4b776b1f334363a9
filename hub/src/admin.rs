//! Administration shared by the API and the command line: registering sites (with
//! their one-time enrollment token) and adding users.

use crate::auth::{hash_password, new_secret, secret_sha256, EnrollmentToken};
use crate::model::{Role, Site, User};
use crate::pki::Ca;
use crate::store::{self, Store};
use chrono::{DateTime, Duration, Utc};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
}

/// A site id is what appears in certificates and logs: short, lower case, stable.
pub fn validate_site_id(site_id: &str) -> Result<(), Error> {
    let ok = (2..=40).contains(&site_id.len())
        && site_id.starts_with(|c: char| c.is_ascii_lowercase())
        && site_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "site id {site_id:?} must be 2 to 40 characters: lower-case letters, digits and '-', starting with a letter"
        )))
    }
}

pub fn validate_username(username: &str) -> Result<(), Error> {
    let ok = (2..=64).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "user name {username:?} must be 2 to 64 letters, digits, '.', '-', '_' or '@'"
        )))
    }
}

/// A registered site and the enrollment token to give its agent (shown once).
pub struct Registered {
    pub site: Site,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn register_site(
    store: &dyn Store,
    ca: &Ca,
    site_id: &str,
    name: &str,
    ttl_secs: u32,
    actor: &str,
) -> Result<Registered, Error> {
    validate_site_id(site_id)?;
    if site_id == crate::model::recipe_change::DRY_RUN_SITE
        && actor != crate::model::recipe_change::DRY_RUN_ACTOR
    {
        return Err(Error::Invalid(format!(
            "site id {site_id:?} is kept for the hub's dry-run simulator (dry_run_simulator = true); choose another"
        )));
    }
    if name.trim().is_empty() {
        return Err(Error::Invalid("a site needs a name".into()));
    }
    if ttl_secs == 0 || ttl_secs > 30 * 86_400 {
        return Err(Error::Invalid(
            "token lifetime must be between 1 second and 30 days".into(),
        ));
    }
    let token = EnrollmentToken {
        secret: new_secret(),
        ca_sha256: ca.fingerprint().to_owned(),
    };
    let expires_at = Utc::now() + Duration::seconds(i64::from(ttl_secs));
    let site = store
        .add_site(
            site_id,
            name.trim(),
            &secret_sha256(&token.secret),
            expires_at,
            actor,
        )
        .await?;
    tracing::info!(site_id, %expires_at, "site registered, waiting for enrollment");
    Ok(Registered {
        site,
        token: token.encode(),
        expires_at,
    })
}

pub async fn add_user(
    store: &dyn Store,
    username: &str,
    full_name: &str,
    role: Role,
    password: &str,
    actor: &str,
) -> Result<User, Error> {
    validate_username(username)?;
    if full_name.trim().is_empty() {
        return Err(Error::Invalid(
            "a full name is required: it is printed on every electronic signature".into(),
        ));
    }
    // Without a password the account waits for the person to choose one with a
    // one-time code (no password verifies against the placeholder).
    let password_hash = if password.is_empty() {
        crate::store::RESET_PENDING.to_owned()
    } else {
        crate::auth::check_password(password, username)?;
        hash_password(password)?
    };
    let user = User {
        username: username.to_owned(),
        full_name: full_name.trim().to_owned(),
        role,
        disabled: false,
        password_hash,
        signature_acknowledged_at: None,
    };
    store.add_user(&user, actor).await?;
    tracing::info!(username, role = %role, "user added");
    Ok(user)
}

//! System accounts: a hospital's integration engine (the interface engine in front
//! of its EHR) ordering through the FHIR door on behalf of physicians.
//!
//! An engine is not a person. It has no password, no site and no signature; an
//! administrator makes its account, names the physicians it may order for (its
//! scope), and hands its client secret (shown once) to the hospital. The engine
//! trades the secret for a short-lived access token at the token endpoint (OAuth 2
//! client credentials, RFC 6749 section 4.4), and then:
//! - places orders naming one of its physicians as requester: the order is that
//!   physician's (it is on their lists, their notifications, their one-time keys),
//!   and the audit trail names the engine as who entered it;
//! - sees the orders of its physicians, and only those.
//!
//! Taking a physician out of the scope, disabling the account or rotating its secret
//! takes effect at the engine's next request: tokens are checked against the stored
//! account every time, and disabling or rotating ends them.

use super::{
    bounded_username, failure_gate, field, password_matches, place_order, refuse_order_access,
    require_role, Error, OrderForm,
};
use crate::app::Hub;
use crate::auth::{hash_password, new_secret, secret_sha256};
use crate::model::{Order, Role, SystemAccount, User};
use crate::store;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

/// The longest an access token lives (shorter when people's sessions are).
pub const TOKEN_SECS: u32 = 3600;

/// What a failed token request says, whichever part was wrong.
pub const BAD_CLIENT: &str = "unknown client or wrong client secret";

/// A client id as an administrator chooses it: 3 to 64 lower-case letters, digits,
/// '-', '_' or '.'.
pub fn validate_client_id(text: &str) -> Result<String, Error> {
    let text = text.trim();
    let ok = (3..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(field(
            "client_id",
            format!("client id {text:?}: use 3 to 64 lower-case letters, digits, '-', '_' or '.' (such as st-elsewhere-ehr)"),
        ));
    }
    Ok(text.to_owned())
}

/// User names, trimmed, without empty ones.
fn names(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// A new client secret and its argon2 hash, made off the async workers.
async fn new_client_secret() -> Result<(String, String), Error> {
    let secret = new_secret();
    let copy = secret.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&copy))
        .await
        .map_err(|e| field("client_secret", format!("hashing failed: {e}")))?
        .map_err(|e| field("client_secret", e.to_string()))?;
    Ok((secret, hash))
}

/// Makes a system account for the physicians named (administrators); returns it
/// with its client secret, which is shown this once.
pub async fn add(
    hub: &Hub,
    admin: &User,
    client_id: &str,
    name: &str,
    physicians: &[String],
) -> Result<(SystemAccount, String), Error> {
    require_role(admin, &[Role::Admin])?;
    let client_id = validate_client_id(client_id)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(field(
            "name",
            "say what the engine is (up to 200 characters), such as \"St Elsewhere EHR interface engine\"",
        ));
    }
    let physicians = names(physicians);
    if physicians.is_empty() {
        return Err(field(
            "physicians",
            "name at least one physician the engine orders for",
        ));
    }
    let (secret, secret_hash) = new_client_secret().await?;
    let account = SystemAccount {
        client_id,
        name: name.to_owned(),
        secret_hash,
        disabled: false,
        created_by: admin.username.clone(),
        created_at: Utc::now(),
        physicians,
    };
    let stored = hub.store.add_system_account(&account).await?;
    tracing::info!(client_id = %stored.client_id, "system account added");
    Ok((stored, secret))
}

/// Every system account (administrators).
pub async fn list(hub: &Hub, admin: &User) -> Result<Vec<SystemAccount>, Error> {
    require_role(admin, &[Role::Admin])?;
    Ok(hub.store.list_system_accounts().await?)
}

/// Puts physicians in and takes them out of an account's scope (administrators).
pub async fn change_scope(
    hub: &Hub,
    admin: &User,
    client_id: &str,
    add: &[String],
    remove: &[String],
    reason: &str,
) -> Result<SystemAccount, Error> {
    require_role(admin, &[Role::Admin])?;
    Ok(hub
        .store
        .change_system_scope(
            client_id.trim(),
            &names(add),
            &names(remove),
            reason,
            &admin.username,
        )
        .await?)
}

/// Disables (its tokens end at once) or enables an account (administrators).
pub async fn set_disabled(
    hub: &Hub,
    admin: &User,
    client_id: &str,
    disabled: bool,
    reason: &str,
) -> Result<SystemAccount, Error> {
    require_role(admin, &[Role::Admin])?;
    Ok(hub
        .store
        .set_system_account_disabled(client_id.trim(), disabled, reason, &admin.username)
        .await?)
}

/// A new client secret for an account (administrators): the old one and every token
/// stop working. Returns the secret, shown this once.
pub async fn rotate_secret(
    hub: &Hub,
    admin: &User,
    client_id: &str,
    reason: &str,
) -> Result<(SystemAccount, String), Error> {
    require_role(admin, &[Role::Admin])?;
    let (secret, secret_hash) = new_client_secret().await?;
    let account = hub
        .store
        .rotate_system_secret(client_id.trim(), &secret_hash, reason, &admin.username)
        .await?;
    Ok((account, secret))
}

/// The token endpoint's work: an access token for a client that proved its secret,
/// from `source` (its address). Failures are counted per client id and source like
/// people's sign-ins, and lock the same way.
pub async fn issue_token(
    hub: &Hub,
    client_id: &str,
    secret: &str,
    source: &str,
) -> Result<(String, DateTime<Utc>, SystemAccount), Error> {
    if let Some(why) = hub.held() {
        return Err(Error::Held(why));
    }
    let client_id = client_id.trim();
    let key = bounded_username(&SystemAccount::actor_of(client_id));
    let (window, limits) = failure_gate(hub, &key, source).await?;
    let account = match validate_client_id(client_id) {
        Ok(id) => match hub.store.system_account(&id).await {
            Ok(account) => Some(account),
            Err(store::Error::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        Err(_) => None,
    };
    let usable = account.as_ref().filter(|a| !a.disabled);
    let ok = password_matches(secret, usable.map(|a| a.secret_hash.as_str())).await;
    let Some(account) = usable.filter(|_| ok).cloned() else {
        tracing::warn!(client_id, source, "failed token request");
        hub.store
            .count_sign_in_failure(&key, source, window, limits)
            .await?;
        return Err(Error::Unauthenticated(BAD_CLIENT.into()));
    };
    let token = new_secret();
    let secs = TOKEN_SECS.min(hub.config.session_ttl_secs);
    let expires_at = Utc::now() + Duration::seconds(i64::from(secs));
    hub.store
        .issue_system_token(&account.client_id, &secret_sha256(&token), expires_at)
        .await?;
    tracing::info!(client_id = %account.client_id, "access token issued");
    Ok((token, expires_at, account))
}

/// The system account of an access token; `None` when the token is no system
/// account's (it may be a person's session). Refused when the account is disabled
/// or the hub held.
pub async fn bearer_engine(hub: &Hub, token: &str) -> Result<Option<SystemAccount>, Error> {
    let account = match hub
        .store
        .system_token_account(&secret_sha256(token), Utc::now())
        .await
    {
        Ok(account) => account,
        Err(store::Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if account.disabled {
        return Err(Error::Unauthenticated(
            "this system account is disabled".into(),
        ));
    }
    if let Some(why) = hub.held() {
        return Err(Error::Held(why));
    }
    Ok(Some(account))
}

/// The physician an engine orders for: in its scope, a physician, able to sign in.
pub async fn physician_of(
    hub: &Hub,
    engine: &SystemAccount,
    physician: &str,
) -> Result<User, Error> {
    if !engine.physicians.iter().any(|p| p == physician) {
        return Err(Error::PermissionDenied(format!(
            "{} may not order for {physician}: the physicians it orders for are {}",
            engine.client_id,
            engine.physicians.join(", ")
        )));
    }
    let user = hub.store.user(physician).await?;
    if user.disabled {
        return Err(Error::PermissionDenied(format!(
            "{physician}'s account is disabled: no orders are placed in their name"
        )));
    }
    require_role(&user, &[Role::Physician])?;
    Ok(user)
}

/// Places an order for `physician` (in the engine's scope), exactly as the
/// physician would; the audit trail names the engine as who entered it.
pub async fn create_order(
    hub: &Hub,
    engine: &SystemAccount,
    physician: &str,
    form: &OrderForm,
) -> Result<Order, Error> {
    let user = physician_of(hub, engine, physician).await?;
    place_order(hub, &user, Some(engine.actor()), form).await
}

/// The orders of the engine's physicians, newest first.
pub async fn orders(hub: &Hub, engine: &SystemAccount) -> Result<Vec<Order>, Error> {
    let mut orders = Vec::new();
    for physician in &engine.physicians {
        orders.extend(hub.store.list_orders(Some(physician), None).await?);
    }
    orders.sort_by_key(|o| std::cmp::Reverse(o.created_at));
    Ok(orders)
}

/// The order, if one of the engine's physicians placed it; any other is reported as
/// not found (and the attempt audited), as for a physician.
pub async fn order(hub: &Hub, engine: &SystemAccount, order_id: Uuid) -> Result<Order, Error> {
    let order = hub.store.order(order_id).await?;
    if !engine.physicians.contains(&order.physician) {
        tracing::warn!(client_id = %engine.client_id, %order_id, "refused: an order outside the engine's scope");
        return Err(refuse_order_access(
            hub,
            &engine.actor(),
            order_id,
            format!(
                "{} asked for an order of a physician outside its scope",
                engine.client_id
            ),
        )
        .await);
    }
    Ok(order)
}

/// The order a request with this one-time key placed for one of the engine's
/// physicians, if any.
pub async fn order_of_request(
    hub: &Hub,
    engine: &SystemAccount,
    key: Uuid,
) -> Result<Option<Uuid>, Error> {
    for physician in &engine.physicians {
        if let Some(found) = hub.store.order_of_request(physician, key).await? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

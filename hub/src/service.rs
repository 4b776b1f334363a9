//! What people do, whichever door they come in by: the gRPC API ([`crate::grpc`])
//! and the web console ([`crate::console`]) both call these, so the rules (validation,
//! roles, Part 11 signing, audit) live in one place.
//!
//! This is the only place where roles are checked: a door authenticates the caller
//! (session cookie or bearer token) and passes the user here; whether that user's
//! role may do the thing is decided by the function it calls ([`require_role`] with
//! the roles named beside it). Where a page only shows or hides something by role,
//! it asks a `may_…` function here rather than comparing roles itself. The release
//! path is [`release`], administration [`admin`], scheduling [`schedule`].

use crate::app::Hub;
use crate::audit::{Action, NewEntry, Object};
use crate::auth::{new_secret, secret_sha256, verify_password};
use crate::model;
use crate::model::{NewOrder, Order, Role, User};
use crate::store;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use uuid::Uuid;

pub mod admin;
pub mod analytics;
pub mod deviations;
pub mod integration;
pub mod qualifications;
pub mod recipes;
pub mod release;
pub mod schedule;

/// Why a request was refused. `Field` names the input that is wrong, so a form can
/// show the message next to it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The hub serves nobody for now (an open audit integrity finding).
    #[error("{0}")]
    Held(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

fn field(field: &'static str, message: impl Into<String>) -> Error {
    Error::Field {
        field,
        message: message.into(),
    }
}

/// The fewest characters a reason for an irreversible or far-reaching change
/// (cancelling an order, moving its collection, suspending or ceasing a site) may
/// have: a sentence the people affected can act on, not "x" or "test".
pub const REASON_MIN_CHARS: usize = 15;

/// A reason given for `what` (e.g. "cancel this order"), trimmed, or the field error
/// that says what a reason must be.
pub fn sentence_reason(reason: &str, what: &str) -> Result<String, Error> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(field(
            "reason",
            format!("Say why you {what}: the reason goes into the audit trail and is shown to the people affected."),
        ));
    }
    if reason.chars().count() < REASON_MIN_CHARS || reason.split_whitespace().count() < 2 {
        return Err(field(
            "reason",
            format!(
                "\"{reason}\" is too short to say why you {what}; write it as a sentence (at least {REASON_MIN_CHARS} characters) that the people affected can act on."
            ),
        ));
    }
    Ok(reason.to_owned())
}

/// The same answer for an unknown user and a wrong password, so sign-in does not
/// reveal which user names exist.
pub const BAD_CREDENTIALS: &str = "unknown user or wrong password";

/// The longest user name the hub counts or audits (longer ones are cut): no user
/// name is longer ([`crate::admin::validate_username`]), and a stranger's input must
/// not grow the audit trail.
pub const MAX_USERNAME_CHARS: usize = 64;

/// A user name as failed sign-ins count and audit it: at most [`MAX_USERNAME_CHARS`].
pub fn bounded_username(username: &str) -> String {
    username.chars().take(MAX_USERNAME_CHARS).collect()
}

/// The window failed sign-ins are counted in now: (start, end).
pub fn failure_window(hub: &Hub) -> (DateTime<Utc>, DateTime<Utc>) {
    let secs = i64::from(hub.config.sign_in_lockout_secs);
    let now = Utc::now().timestamp();
    let start = DateTime::from_timestamp(now - now.rem_euclid(secs), 0).unwrap_or_default();
    (start, start + Duration::seconds(secs))
}

pub fn failure_limits(hub: &Hub) -> store::FailureLimits {
    store::FailureLimits {
        per_user_and_source: u64::from(hub.config.sign_in_max_failures),
        per_source: u64::from(hub.config.sign_in_source_max_failures),
    }
}

/// The failure window and limits of an attempt to sign in (or get a token) as `key`
/// from `source`, or the refusal when the failures counted there stop it.
async fn failure_gate(
    hub: &Hub,
    key: &str,
    source: &str,
) -> Result<((DateTime<Utc>, DateTime<Utc>), store::FailureLimits), Error> {
    let window = failure_window(hub);
    let limits = failure_limits(hub);
    let gate = hub
        .store
        .sign_in_gate(key, source, window.0, limits)
        .await?;
    if let Some(refused) = locked(gate, window.1) {
        tracing::warn!(key, source, "refused: too many failures");
        return Err(refused);
    }
    Ok((window, limits))
}

/// What a refused attempt says when the counts of failures stop it.
fn locked(gate: store::Gate, until: DateTime<Utc>) -> Option<Error> {
    let until = until.format("%H:%M UTC");
    match gate {
        store::Gate::Open => None,
        store::Gate::UserLocked(n) => Some(Error::Unauthenticated(format!(
            "too many failed attempts ({n}) for this user name from your address: try again after {until}, or ask an administrator"
        ))),
        store::Gate::SourceThrottled(n) => Some(Error::Unauthenticated(format!(
            "too many failed sign-ins ({n}) from your address: try again after {until}"
        ))),
    }
}

/// A hash nobody knows the password of, made once (the hub makes it at start, so
/// the first unknown user name is not answered later than the others).
pub fn unusable_hash() -> &'static str {
    static UNUSABLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    UNUSABLE
        .get_or_init(|| crate::auth::hash_password(&new_secret()).expect("hashing a random secret"))
}

/// Whether `password` matches `hash`, checked off the async workers (argon2 takes a
/// tenth of a second on purpose). Without a usable hash (an unknown or disabled
/// user) the same work is done against a hash nobody knows the password of, so the
/// answer takes as long for every user name.
async fn password_matches(password: &str, hash: Option<&str>) -> bool {
    let unusable = unusable_hash();
    // A hash that is no argon2 hash (a pending reset) verifies nothing, after the
    // same work.
    let hash = hash.filter(|h| argon2::PasswordHash::new(h).is_ok());
    let usable = hash.is_some();
    let hash = match hash {
        Some(hash) => hash.to_owned(),
        None => unusable.to_owned(),
    };
    let password = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    usable && matches
}

/// A new session for a user who proved their password, signing in from `source`
/// (the client's address). Failures are counted per user name and source; a lock
/// applies only to that source, and the audit trail gets the counts
/// ([`store::Store::count_sign_in_failure`]).
pub async fn sign_in(
    hub: &Hub,
    username: &str,
    password: &str,
    source: &str,
) -> Result<(String, DateTime<Utc>, User), Error> {
    let username = username.trim();
    if username.is_empty() || password.is_empty() {
        return Err(field("username", "user name and password are required"));
    }
    if let Some(why) = hub.held() {
        return Err(Error::Held(why));
    }
    let key = bounded_username(username);
    let (window, limits) = failure_gate(hub, &key, source).await?;
    // A name longer than any user's is nobody's; it is not looked up.
    let user = if key.len() == username.len() {
        match hub.store.user(username).await {
            Ok(user) => Some(user),
            Err(store::Error::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let usable = user.as_ref().filter(|u| !u.disabled);
    let ok = password_matches(password, usable.map(|u| u.password_hash.as_str())).await;
    let Some(user) = usable.filter(|_| ok).cloned() else {
        tracing::warn!(username = %key, source, "failed sign-in");
        hub.failed_sign_ins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hub.store
            .count_sign_in_failure(&key, source, window, limits)
            .await?;
        return Err(Error::Unauthenticated(BAD_CREDENTIALS.into()));
    };
    let token = new_secret();
    let expires_at = Utc::now() + Duration::seconds(i64::from(hub.config.session_ttl_secs));
    hub.store
        .create_session(&secret_sha256(&token), &user.username, expires_at)
        .await?;
    tracing::info!(username, role = %user.role, "signed in");
    Ok((token, expires_at, user))
}

/// The argon2id hash of a new password that passed the policy, made off the async
/// workers.
async fn hash_new_password(password: &str, username: &str) -> Result<String, Error> {
    crate::auth::check_password(password, username)
        .map_err(|e| field("new_password", e.to_string()))?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(|e| field("new_password", format!("hashing failed: {e}")))?
        .map_err(|e| field("new_password", e.to_string()))
}

/// Wakes the links of the sites that were sent a changed directory entry.
fn wake(hub: &Hub, sites: &[(String, u64)]) {
    for (site, _) in sites {
        hub.links.notifier(site).notify_one();
    }
}

/// A person changes their own password: the current one proves it is them (a wrong
/// one counts towards the lock, as at sign-in); the new one must pass the policy. The
/// new verifier reaches every site they work at.
pub async fn change_password(
    hub: &Hub,
    user: &User,
    current: &str,
    new: &str,
    source: &str,
) -> Result<(), Error> {
    let key = bounded_username(&user.username);
    let (window, limits) = failure_gate(hub, &key, source).await?;
    if !password_matches(current, Some(&user.password_hash)).await {
        hub.failed_sign_ins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hub.store
            .count_sign_in_failure(&key, source, window, limits)
            .await?;
        return Err(field(
            "current_password",
            "your current password is wrong: the password was not changed",
        ));
    }
    if current == new {
        return Err(field(
            "new_password",
            "the new password must differ from the current one",
        ));
    }
    let hash = hash_new_password(new, &user.username).await?;
    let sites = hub
        .store
        .change_account(
            &user.username,
            &store::AccountChange::Password {
                hash,
                reset_code_sha256: None,
            },
            "changed by the person",
            &user.username,
        )
        .await?;
    wake(hub, &sites);
    tracing::info!(username = %user.username, "password changed");
    Ok(())
}

/// A person whose password an administrator reset chooses a new one with the
/// one-time code. A wrong, used or expired code (or an unknown user name: the answer
/// is the same) counts towards the lock of that name from that source.
pub async fn complete_password_reset(
    hub: &Hub,
    username: &str,
    code: &str,
    new: &str,
    source: &str,
) -> Result<(), Error> {
    let username = username.trim();
    if username.is_empty() || code.trim().is_empty() {
        return Err(field("username", "user name and reset code are required"));
    }
    let key = bounded_username(username);
    let (window, limits) = failure_gate(hub, &key, source).await?;
    let hash = hash_new_password(new, username).await?;
    let change = store::AccountChange::Password {
        hash,
        reset_code_sha256: Some(secret_sha256(code.trim())),
    };
    match hub
        .store
        .change_account(username, &change, "password chosen after a reset", username)
        .await
    {
        Ok(sites) => {
            wake(hub, &sites);
            tracing::info!(username, "password chosen after a reset");
            Ok(())
        }
        Err(store::Error::PermissionDenied(_) | store::Error::NotFound(_)) => {
            hub.failed_sign_ins
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            hub.store
                .count_sign_in_failure(&key, source, window, limits)
                .await?;
            Err(Error::Unauthenticated(
                "unknown user, or the reset code is wrong, used or expired; ask an administrator for a new one".into(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Checks that `user` has one of `roles`.
pub fn require_role(user: &User, roles: &[Role]) -> Result<(), Error> {
    if roles.contains(&user.role) {
        return Ok(());
    }
    let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(Error::PermissionDenied(format!(
        "{} is a {}; this needs the role {}",
        user.username,
        user.role,
        allowed.join(" or ")
    )))
}

/// Who places orders.
const PRESCRIBERS: [Role; 1] = [Role::Physician];

/// Whether `user` may place orders (the console offers the order form only then).
pub fn may_order(user: &User) -> bool {
    require_role(user, &PRESCRIBERS).is_ok()
}

/// The sites an order can name, for the order form (physicians).
pub async fn order_sites(hub: &Hub, user: &User) -> Result<Vec<model::Site>, Error> {
    require_role(user, &PRESCRIBERS)?;
    let mut sites = hub.store.list_sites().await?;
    // The dry-run simulator takes no patient's order.
    sites.retain(|s| s.site_id != crate::model::recipe_change::DRY_RUN_SITE);
    Ok(sites)
}

/// The products an order can name, for the order form (physicians): each product
/// with a version in force, as (id, title), the product longest in use first.
pub async fn order_products(hub: &Hub, user: &User) -> Result<Vec<(String, String)>, Error> {
    require_role(user, &PRESCRIBERS)?;
    let mut ids: Vec<String> = Vec::new();
    for r in hub.store.list_recipes().await? {
        if !ids.contains(&r.recipe.id) {
            ids.push(r.recipe.id);
        }
    }
    let mut products = Vec::with_capacity(ids.len());
    for id in ids {
        match hub.store.latest_recipe(&id).await {
            Ok(r) => products.push((id, r.recipe.title)),
            Err(store::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(products)
}

/// An order as a physician fills it in.
#[derive(Debug, Clone, Default)]
pub struct OrderForm {
    pub patient_pseudonym: String,
    pub product: String,
    pub site_id: String,
    pub requested_collection_date: String,
    /// The request's one-time key (a UUID; empty: none): the same key again answers
    /// with the order it placed.
    pub request_id: String,
    /// The prescriber saw that the patient already has an open order for the
    /// product and means to place a second one.
    pub confirm_second_order: bool,
}

/// The user of a bearer token (the API's and the FHIR door's sessions): refused when
/// the session is unknown or expired, the account disabled, or the hub held.
pub async fn bearer_user(hub: &Hub, token: &str) -> Result<User, Error> {
    let user = match hub
        .store
        .session_user(&crate::auth::secret_sha256(token), Utc::now())
        .await
    {
        Ok(user) => user,
        Err(store::Error::NotFound(_)) => {
            return Err(Error::Unauthenticated(
                "session is unknown or has expired; sign in again".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if user.disabled {
        return Err(Error::Unauthenticated("this account is disabled".into()));
    }
    if let Some(why) = hub.held() {
        return Err(Error::Held(why));
    }
    Ok(user)
}

/// A patient pseudonym as every door takes it, trimmed.
pub fn validate_pseudonym(text: &str) -> Result<String, Error> {
    let text = text.trim();
    let ok = (3..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(field(
            "patient_pseudonym",
            "The patient pseudonym must be 3 to 64 letters, digits, '-', '_' or '.' (a pseudonym, never a name)",
        ));
    }
    Ok(text.to_owned())
}

/// Validates and stores an order, and wakes the site's link.
pub async fn create_order(hub: &Hub, user: &User, form: &OrderForm) -> Result<Order, Error> {
    require_role(user, &PRESCRIBERS)?;
    place_order(hub, user, None, form).await
}

/// Places an order for `user` (a prescriber), entered by them or, with
/// `entered_by`, by an integration engine in their name
/// ([`integration::create_order`]).
async fn place_order(
    hub: &Hub,
    user: &User,
    entered_by: Option<String>,
    form: &OrderForm,
) -> Result<Order, Error> {
    let patient_pseudonym = validate_pseudonym(&form.patient_pseudonym)?;
    if form.product.trim().is_empty() {
        return Err(field(
            "product",
            "Choose the product (a recipe id such as cd19-car-t)",
        ));
    }
    if form.site_id.trim().is_empty() {
        return Err(field("site_id", "Choose the treating site"));
    }
    let date = NaiveDate::parse_from_str(form.requested_collection_date.trim(), "%Y-%m-%d")
        .map_err(|_| {
            field(
                "requested_collection_date",
                format!(
                    "The collection date {:?} is not a date (YYYY-MM-DD)",
                    form.requested_collection_date
                ),
            )
        })?;
    // The date is the site's: "today" is today where the site is (UTC for a site
    // that declared no time zone).
    // An unknown site is said to be unknown where it is looked up to be placed.
    let today = match hub.store.capacity(form.site_id.trim()).await {
        Ok(Some(capacity)) => capacity.local_date(Utc::now()),
        Ok(None) | Err(store::Error::NotFound(_)) => Utc::now().date_naive(),
        Err(e) => return Err(e.into()),
    };
    if date < today {
        return Err(field(
            "requested_collection_date",
            format!("The collection date {date} is in the past (today is {today} at the site)"),
        ));
    }
    let horizon = today + Duration::days(crate::schedule::HORIZON_DAYS);
    if date > horizon {
        return Err(field(
            "requested_collection_date",
            format!(
                "The collection date {date} is more than {} days ahead (after {horizon})",
                crate::schedule::HORIZON_DAYS
            ),
        ));
    }
    let request_id = match form.request_id.trim() {
        "" => None,
        text => Some(Uuid::parse_str(text).map_err(|_| {
            field(
                "request_id",
                format!(
                    "request_id {text:?} is not a UUID; leave it empty or make a new one per order"
                ),
            )
        })?),
    };
    let new = NewOrder {
        patient_pseudonym,
        recipe_id: form.product.trim().to_owned(),
        site_id: form.site_id.trim().to_owned(),
        requested_collection_date: date.to_string(),
        physician: user.username.clone(),
        facility: hub.config.facility.clone(),
        request_id,
        entered_by,
    };
    // A second open order for the same patient and product is most often the same
    // order placed twice: it needs the prescriber's confirmation. A request sent
    // again finds the order it placed, not a warning about it.
    let repeated = match request_id {
        Some(key) => hub
            .store
            .order_of_request(&user.username, key)
            .await?
            .is_some(),
        None => false,
    };
    if !repeated && !form.confirm_second_order {
        let open = hub
            .store
            .open_orders_of_patient(&new.patient_pseudonym, &new.recipe_id)
            .await?;
        if let Some(first) = open.first() {
            let by = if first.physician == user.username {
                "by you".to_owned()
            } else {
                "by another physician".to_owned()
            };
            return Err(field(
                "confirm_second_order",
                format!(
                    "Patient {} already has an open order for {}: COI {} at site {}, placed {by} on {}, now {}. \
                     Check that this is not the same order twice; to place a second order anyway, confirm it.",
                    new.patient_pseudonym,
                    new.recipe_id,
                    first.coi,
                    first.site_id,
                    first.created_at.format("%Y-%m-%d"),
                    first.state.as_str().replace('_', " "),
                ),
            ));
        }
    }
    let order = match hub.store.create_order(&new, Utc::now()).await {
        // Which input an unknown site or product came from, for the form.
        Err(store::Error::Invalid(message)) if message.starts_with("site") => {
            return Err(field("site_id", message))
        }
        Err(store::Error::Invalid(message)) if message.starts_with("product") => {
            return Err(field("product", message))
        }
        // The date cannot be booked: say what is free instead.
        Err(store::Error::Unavailable(why)) => {
            return Err(schedule::with_next_free(
                hub,
                user,
                &new.recipe_id,
                &new.site_id,
                date,
                why,
            )
            .await)
        }
        other => other?,
    };
    tracing::info!(order_id = %order.order_id, batch_id = %order.batch_id, coi = %order.coi, "order created");
    hub.commands_added(&order.site_id, order.batch_id);
    Ok(order)
}

/// The order, if `user` may see it: a physician sees only their own (another's is
/// reported as not found, so its existence is not revealed).
/// The refusal is audited: an attempt to read another's patient is kept on record.
pub async fn visible_order(hub: &Hub, user: &User, order_id: Uuid) -> Result<Order, Error> {
    let order = hub.store.order(order_id).await?;
    if user.role == Role::Physician && order.physician != user.username {
        tracing::warn!(username = %user.username, %order_id, "refused: another physician's order");
        return Err(refuse_order_access(
            hub,
            &user.username,
            order_id,
            format!("{} asked for an order of another physician", user.username),
        )
        .await);
    }
    Ok(order)
}

/// Keeps a refused attempt to read an order on record, and answers as if the order
/// did not exist, so that its existence is not revealed.
async fn refuse_order_access(hub: &Hub, actor: &str, order_id: Uuid, why: String) -> Error {
    let entry =
        NewEntry::new(actor, Action::OrderAccessRefused, Object::Order(order_id)).reason(why);
    match hub.store.audit(&entry).await {
        Ok(()) => store::Error::NotFound(format!("order {order_id}")).into(),
        Err(e) => e.into(),
    }
}

/// Orders `user` may see, newest first.
pub async fn visible_orders(
    hub: &Hub,
    user: &User,
    state: Option<model::BatchState>,
) -> Result<Vec<Order>, Error> {
    let physician = (user.role == Role::Physician).then_some(user.username.as_str());
    Ok(hub.store.list_orders(physician, state).await?)
}

/// Cancels an order still in manufacturing.
pub async fn cancel_order(
    hub: &Hub,
    user: &User,
    order_id: Uuid,
    reason: &str,
) -> Result<Order, Error> {
    // QA stops a dry run of a draft (say, one its simulator will not finish).
    let dry_run_by_qa =
        user.role == Role::Qa && hub.store.order(order_id).await.is_ok_and(|o| o.dry_run);
    if !dry_run_by_qa {
        require_role(user, &[Role::Physician, Role::Admin])?;
    }
    let reason = sentence_reason(reason, "cancel this order")?;
    if !dry_run_by_qa {
        visible_order(hub, user, order_id).await?;
    }
    let order = hub
        .store
        .cancel_order(order_id, &reason, &user.username, Utc::now())
        .await?;
    tracing::info!(%order_id, "order cancelled");
    hub.commands_added(&order.site_id, order.batch_id);
    Ok(order)
}

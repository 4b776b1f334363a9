//! What people do with notifications, whichever door they come in by (gRPC, the
//! console): the rules on who may see and change which subscription live here.

use super::{Allowlist, Channel, Kind, NewSubscription, OutboxEntry, OutboxState, Subscription};
use crate::app::Hub;
use crate::model::{Role, User};
use crate::service::{require_role, Error};
use crate::store::notify::OutboxFilter;
use chrono::Utc;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Most notifications listed at once when the caller names no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 200;

/// Where a new subscription's notifications go, as a person gives it.
#[derive(Debug, Clone)]
pub enum Target {
    Email(String),
    Webhook(String),
}

/// Roles that may see everyone's subscriptions and notifications and requeue them.
const OVERSEERS: [Role; 2] = [Role::Qa, Role::Admin];

/// `user` may see everyone's subscriptions and notifications and requeue them.
pub fn oversees(user: &User) -> bool {
    OVERSEERS.contains(&user.role)
}

fn field(field: &'static str, message: impl Into<String>) -> Error {
    Error::Field {
        field,
        message: message.into(),
    }
}

/// Subscribes `user`; returns the subscription and, for a webhook, the secret the hub
/// signs its requests with (shown to the user once, here).
pub async fn subscribe(
    hub: &Hub,
    user: &User,
    kinds: &[String],
    target: Target,
    site_id: Option<&str>,
) -> Result<(Subscription, Option<String>), Error> {
    let kinds = kinds
        .iter()
        .flat_map(|k| k.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Kind::parse)
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|e| field("kinds", e.to_string()))?;
    let (channel, secret) = match target {
        Target::Email(address) => (
            Channel::Email {
                address: address.trim().to_owned(),
            },
            None,
        ),
        Target::Webhook(url) => {
            let secret = crate::auth::new_secret();
            (
                Channel::Webhook {
                    url: url.trim().to_owned(),
                    secret: secret.clone(),
                },
                Some(secret),
            )
        }
    };
    let new = NewSubscription {
        owner: user.username.clone(),
        kinds,
        channel,
        site_id: site_id
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    };
    let config = &hub.config.notifications;
    new.validate(
        config.allow_http_webhooks,
        Allowlist(&config.webhook_allowlist),
        config.smtp_url.is_some(),
    )
    .map_err(|e| {
        let name = match &new.channel {
            _ if matches!(e, super::Error::UnknownKind(_)) => "kinds",
            Channel::Email { .. } => "email",
            Channel::Webhook { .. } => "webhook_url",
        };
        field(name, e.to_string())
    })?;
    let subscription = hub.store.subscribe(&new, Utc::now()).await?;
    tracing::info!(subscription_id = %subscription.subscription_id, owner = %user.username, channel = new.channel.name(), "subscribed to notifications");
    Ok((subscription, secret))
}

/// The user's subscriptions, or everyone's when `all` and the user is QA or admin.
pub async fn subscriptions(hub: &Hub, user: &User, all: bool) -> Result<Vec<Subscription>, Error> {
    if all {
        require_role(user, &OVERSEERS)?;
    }
    let owner = (!all).then_some(user.username.as_str());
    Ok(hub.store.subscriptions(owner).await?)
}

/// Ends a subscription: the owner's own, or any for an admin.
pub async fn unsubscribe(hub: &Hub, user: &User, subscription_id: Uuid) -> Result<(), Error> {
    let subscription = hub.store.subscription(subscription_id).await?;
    if subscription.owner != user.username && user.role != Role::Admin {
        return Err(Error::PermissionDenied(format!(
            "subscription {subscription_id} belongs to {}; only they or an admin may end it",
            subscription.owner
        )));
    }
    hub.store
        .unsubscribe(subscription_id, &user.username, Utc::now())
        .await?;
    Ok(())
}

/// Notifications of the user's subscriptions, newest first, or everyone's when `all`
/// and the user is QA or admin.
pub async fn notifications(
    hub: &Hub,
    user: &User,
    all: bool,
    state: Option<OutboxState>,
    limit: u32,
) -> Result<Vec<OutboxEntry>, Error> {
    if all {
        require_role(user, &OVERSEERS)?;
    }
    let mut entries = hub
        .store
        .outbox(&OutboxFilter {
            owner: (!all).then(|| user.username.clone()),
            state,
            subscription_id: None,
            limit: if limit == 0 {
                DEFAULT_LIST_LIMIT
            } else {
                limit
            },
        })
        .await?;
    // Why a delivery failed (a refused connection, an unknown certificate issuer) says
    // something about the network behind the hub: administrators see it, and the log
    // keeps it; everyone else sees that it failed and what happens next.
    if user.role != Role::Admin {
        for entry in &mut entries {
            if entry.last_error.is_some() {
                entry.last_error = Some(match entry.state {
                    OutboxState::Pending => format!(
                        "delivery failed; next attempt at {}",
                        entry.next_attempt_at.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                    OutboxState::Failed => {
                        "delivery failed; no more attempts (an administrator can requeue it)"
                            .to_owned()
                    }
                    OutboxState::Delivered => "delivered after a failed attempt".to_owned(),
                });
            }
        }
    }
    Ok(entries)
}

/// Puts a failed notification back in the queue (QA and admins).
pub async fn requeue(hub: &Hub, user: &User, notification_id: Uuid) -> Result<OutboxEntry, Error> {
    require_role(user, &OVERSEERS)?;
    let entry = hub
        .store
        .requeue(notification_id, &user.username, Utc::now())
        .await?;
    tracing::info!(%notification_id, by = %user.username, "notification requeued");
    Ok(entry)
}

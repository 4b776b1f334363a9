//! Notifications: people subscribe to happenings (an order accepted by its site, a
//! COI mismatch, a batch awaiting release, a site link down...) and the hub tells
//! them by e-mail or by a signed webhook.
//!
//! Architecture invariant: **the audit trail is the only source.** The notifier
//! ([`run_notifier`]) reads the audit log after a durable cursor and, in the same
//! transaction that advances the cursor, queues one outbox row per matching
//! subscription (unique per subscription and source), so a happening is neither
//! lost nor queued twice. The delivery worker ([`deliver::run`]) sends due rows and
//! records the outcome in the outbox; deliveries are not audited (the notifier
//! would read its own output back).
//!
//! Delivery is at least once: a crash between sending and recording may send a
//! notification again, always with the same notification id (webhook header
//! `Carrel-Notification-Id`, e-mail `Message-ID`), so receivers can drop repeats.
//!
//! Content carries ids (COI, order, batch, site), never a patient's pseudonym.

pub mod deliver;
pub mod derive;
pub mod service;

use crate::model::Role;
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use derive::{Happening, OrderFacts};

/// `[notifications]` in the hub's config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// SMTP server for e-mail notifications: `smtp://host:port` (plain, for a relay on
    /// the same machine), `smtp://host:port?tls=required` (STARTTLS) or
    /// `smtps://host:port`; user and password may be given in the URL. E-mail
    /// subscriptions are refused while unset. Env: `CARREL_HUB_SMTP_URL`.
    pub smtp_url: Option<String>,
    /// Sender address of notification e-mail. Env: `CARREL_HUB_SMTP_FROM`.
    pub smtp_from: String,
    /// Accept `http://` webhook URLs (dev mode and tests only; outside them a
    /// webhook must be `https://`). Env: `CARREL_HUB_ALLOW_HTTP_WEBHOOKS`.
    pub allow_http_webhooks: bool,
    /// How often the notifier reads new audit entries and the worker looks for due
    /// deliveries, in milliseconds.
    pub poll_interval_ms: u64,
    /// Longest one delivery (an HTTP request, an SMTP conversation) may take.
    pub request_timeout_ms: u64,
    /// Delay before the first retry; it doubles with each failed attempt...
    pub retry_base_ms: u64,
    /// ...up to this.
    pub retry_max_ms: u64,
    /// Attempts after which a notification is marked failed (an admin can requeue it).
    pub max_attempts: u32,
    /// A site not heard from for this long has its link reported down (once per
    /// outage), and restored when it is heard from again.
    /// Env: `CARREL_HUB_LINK_DOWN_AFTER_SECS`.
    pub link_down_after_secs: u64,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            smtp_url: None,
            smtp_from: "carrel@localhost".into(),
            allow_http_webhooks: false,
            poll_interval_ms: 1_000,
            request_timeout_ms: 10_000,
            retry_base_ms: 5_000,
            retry_max_ms: 30 * 60 * 1_000,
            max_attempts: 12,
            link_down_after_secs: 600,
        }
    }
}

impl NotificationsConfig {
    pub fn apply_env(&mut self) -> Result<(), crate::config::Error> {
        let var = |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("CARREL_HUB_SMTP_URL") {
            self.smtp_url = Some(v);
        }
        if let Some(v) = var("CARREL_HUB_SMTP_FROM") {
            self.smtp_from = v;
        }
        if let Some(v) = var("CARREL_HUB_ALLOW_HTTP_WEBHOOKS") {
            self.allow_http_webhooks = v.parse().map_err(|e| crate::config::Error::Env {
                name: "CARREL_HUB_ALLOW_HTTP_WEBHOOKS",
                message: format!("{v:?}: {e}"),
            })?;
        }
        if let Some(v) = var("CARREL_HUB_LINK_DOWN_AFTER_SECS") {
            self.link_down_after_secs = v.parse().map_err(|e| crate::config::Error::Env {
                name: "CARREL_HUB_LINK_DOWN_AFTER_SECS",
                message: format!("{v:?}: {e}"),
            })?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), crate::config::Error> {
        let invalid = |m: String| Err(crate::config::Error::Invalid(format!("notifications: {m}")));
        if let Some(url) = &self.smtp_url {
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return invalid(format!(
                    "smtp_url {url:?} must start with smtp:// or smtps://"
                ));
            }
        }
        if check_email(&self.smtp_from).is_err() {
            return invalid(format!(
                "smtp_from {:?} is not an e-mail address",
                self.smtp_from
            ));
        }
        if self.poll_interval_ms == 0
            || self.request_timeout_ms == 0
            || self.retry_base_ms == 0
            || self.max_attempts == 0
            || self.link_down_after_secs == 0
        {
            return invalid("poll_interval_ms, request_timeout_ms, retry_base_ms, max_attempts and link_down_after_secs must be positive".into());
        }
        if self.retry_max_ms < self.retry_base_ms {
            return invalid("retry_max_ms must be at least retry_base_ms".into());
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn link_down_after(&self) -> Duration {
        Duration::from_secs(self.link_down_after_secs)
    }

    /// When to try again after `attempts` failed attempts; `None` once they are used up.
    pub fn retry_delay(&self, attempts: u32) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let doublings = attempts.saturating_sub(1).min(30);
        let delay = self.retry_base_ms.saturating_mul(1 << doublings);
        Some(Duration::from_millis(delay.min(self.retry_max_ms)))
    }
}

/// Notification errors: what a caller did wrong, in words they can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown notification kind {0:?}; known kinds: {known}", known = Kind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))]
    UnknownKind(String),
    #[error("{0}")]
    Invalid(String),
}

/// What a subscription can ask to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The site accepted the batch order (the batch moved from ordered to accepted).
    OrderDispatched,
    /// The patient's cells passed the custody scan at the site's `receipt` checkpoint.
    CellsReceived,
    /// A custody scan found a COI other than the expected one (a hard stop).
    CoiMismatch,
    /// The hub's evaluation of a QC result is out of specification.
    OutOfSpecification,
    /// The site raised a deviation.
    Deviation,
    AwaitingRelease,
    Released,
    Rejected,
    /// The expected release of an order moved later (`order.delayed`).
    Delayed,
    /// A site has not been heard from for longer than `link_down_after_secs`.
    SiteLinkDown,
    /// A site reported down was heard from again.
    SiteLinkRestored,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::OrderDispatched,
        Kind::CellsReceived,
        Kind::CoiMismatch,
        Kind::OutOfSpecification,
        Kind::Deviation,
        Kind::AwaitingRelease,
        Kind::Released,
        Kind::Rejected,
        Kind::Delayed,
        Kind::SiteLinkDown,
        Kind::SiteLinkRestored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderDispatched => "order_dispatched",
            Kind::CellsReceived => "cells_received",
            Kind::CoiMismatch => "coi_mismatch",
            Kind::OutOfSpecification => "out_of_specification",
            Kind::Deviation => "deviation",
            Kind::AwaitingRelease => "awaiting_release",
            Kind::Released => "released",
            Kind::Rejected => "rejected",
            Kind::Delayed => "delayed",
            Kind::SiteLinkDown => "site_link_down",
            Kind::SiteLinkRestored => "site_link_restored",
        }
    }

    pub fn parse(text: &str) -> Result<Kind, Error> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| Error::UnknownKind(text.to_owned()))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kinds as stored: comma-separated names.
pub fn kinds_text(kinds: &BTreeSet<Kind>) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn parse_kinds(text: &str) -> Result<BTreeSet<Kind>, Error> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Kind::parse)
        .collect()
}

/// Where a subscription's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    Email {
        address: String,
    },
    /// The secret is the HMAC-SHA256 key the hub signs each request with (its text is the key).
    Webhook {
        url: String,
        secret: String,
    },
}

impl Channel {
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Email { .. } => "email",
            Channel::Webhook { .. } => "webhook",
        }
    }

    pub fn target(&self) -> &str {
        match self {
            Channel::Email { address } => address,
            Channel::Webhook { url, .. } => url,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub subscription_id: Uuid,
    pub owner: String,
    pub kinds: BTreeSet<Kind>,
    pub channel: Channel,
    pub site_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Subscription {
    /// Whether this subscription, owned by someone in `owner_role`, wants `happening`.
    /// A physician's subscription only matches happenings of orders they placed
    /// (what they may see elsewhere in the hub), so never a site's link state.
    pub fn wants(&self, owner_role: Role, happening: &Happening) -> bool {
        if !self.kinds.contains(&happening.kind) {
            return false;
        }
        if let Some(site) = &self.site_id {
            if happening.site_id.as_deref() != Some(site.as_str()) {
                return false;
            }
        }
        match owner_role {
            Role::Physician => happening
                .order
                .as_ref()
                .is_some_and(|o| o.physician == self.owner),
            Role::Qa | Role::Admin | Role::Technician => true,
        }
    }
}

/// A subscription asked for, before the hub checks and stores it.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub owner: String,
    pub kinds: BTreeSet<Kind>,
    pub channel: Channel,
    pub site_id: Option<String>,
}

impl NewSubscription {
    /// Checks everything a caller gave; `allow_http` accepts `http://` webhooks.
    pub fn validate(&self, allow_http: bool, email_configured: bool) -> Result<(), Error> {
        if self.kinds.is_empty() {
            return Err(Error::Invalid(format!(
                "name at least one kind to subscribe to ({})",
                Kind::ALL.map(Kind::as_str).join(", ")
            )));
        }
        match &self.channel {
            Channel::Email { address } => {
                check_email(address)?;
                if !email_configured {
                    return Err(Error::Invalid(
                        "this hub has no SMTP server configured ([notifications] smtp_url), so it cannot send e-mail".into(),
                    ));
                }
            }
            Channel::Webhook { url, .. } => check_webhook_url(url, allow_http)?,
        }
        if let Some(site) = &self.site_id {
            if site.trim().is_empty() {
                return Err(Error::Invalid("the site filter is empty".into()));
            }
        }
        Ok(())
    }
}

/// A plain check of an e-mail address: one `@`, something on each side, no spaces,
/// angle brackets or separators (it goes into a mail header). A domain without a dot
/// (`localhost`) is allowed: the SMTP server decides what it delivers.
pub fn check_email(address: &str) -> Result<(), Error> {
    let bad = || Error::Invalid(format!("{address:?} is not an e-mail address"));
    let (local, domain) = address.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.is_empty()
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains('@')
        || address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
    {
        return Err(bad());
    }
    Ok(())
}

/// A webhook URL must be `https://host...` (or `http://` when allowed) and parse as a URI.
pub fn check_webhook_url(url: &str, allow_http: bool) -> Result<(), Error> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::Invalid(format!("webhook URL {url:?} does not parse: {e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => {
            return Err(Error::Invalid(format!(
                "webhook URL {url:?} is not https: notifications leave the hub only over TLS \
                 (http:// is accepted in dev mode, or with [notifications] allow_http_webhooks)"
            )))
        }
        _ => {
            return Err(Error::Invalid(format!(
                "webhook URL {url:?} must start with https://"
            )))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(Error::Invalid(format!("webhook URL {url:?} names no host")));
    }
    Ok(())
}

/// Delivery state of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Delivered,
    Failed,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<OutboxState> {
        match text {
            "pending" => Some(OutboxState::Pending),
            "delivered" => Some(OutboxState::Delivered),
            "failed" => Some(OutboxState::Failed),
            _ => None,
        }
    }
}

/// A queued notification and how its delivery went.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub notification_id: Uuid,
    pub subscription_id: Uuid,
    pub owner: String,
    /// `email` or `webhook`, and the address or URL.
    pub channel: String,
    pub target: String,
    pub source: String,
    pub kind: Kind,
    pub site_id: Option<String>,
    pub batch_id: Option<Uuid>,
    pub coi: Option<String>,
    pub summary: String,
    /// The JSON document sent (the webhook body; the e-mail carries it too).
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A due notification claimed by a worker, with where it goes.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub entry: OutboxEntry,
    pub channel: Channel,
}

/// What one pass of the notifier did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifierPass {
    /// Audit entries read (the cursor moved past them).
    pub entries: usize,
    /// Outbox rows queued.
    pub queued: usize,
}

/// Audit entries the notifier reads per transaction.
pub const NOTIFIER_BATCH: u32 = 200;

/// Tails the audit trail into the outbox, and watches site links, until `shutdown`.
pub async fn run_notifier(
    store: Arc<dyn Store>,
    config: NotificationsConfig,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(config.poll_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = store
            .check_site_links(config.link_down_after(), Utc::now())
            .await
        {
            tracing::warn!(error = %e, "checking site links for notifications failed; will retry");
        }
        // Catch up in bounded transactions, then wait for the next tick.
        loop {
            match store.run_notifier(NOTIFIER_BATCH, Utc::now()).await {
                Ok(pass) if pass.entries as u32 == NOTIFIER_BATCH => {
                    tracing::debug!(queued = pass.queued, "notifier caught up a batch");
                }
                Ok(pass) => {
                    if pass.queued > 0 {
                        tracing::info!(queued = pass.queued, "notifications queued");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notifier pass failed; will retry");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// The JSON document of a notification (webhook body, e-mail attachment of sorts).
pub fn payload(notification_id: Uuid, happening: &Happening) -> String {
    let order = happening.order.as_ref();
    serde_json::json!({
        "notification_id": notification_id,
        "kind": happening.kind.as_str(),
        "summary": happening.summary,
        "occurred_at": happening.at,
        "source": happening.source,
        "site_id": happening.site_id,
        "order_id": order.map(|o| o.order_id),
        "batch_id": order.map(|o| o.batch_id),
        "coi": order.map(|o| o.coi.clone()),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_maximum_then_stop() {
        let config = NotificationsConfig {
            retry_base_ms: 100,
            retry_max_ms: 500,
            max_attempts: 5,
            ..NotificationsConfig::default()
        };
        let delays: Vec<_> = (1..=5).map(|n| config.retry_delay(n)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            delays,
            vec![
                Some(ms(100)),
                Some(ms(200)),
                Some(ms(400)),
                Some(ms(500)),
                None
            ]
        );
    }

    #[test]
    fn addresses_and_urls_are_checked() {
        assert!(check_email("qa@clinic.test").is_ok());
        assert!(check_email("carrel@localhost").is_ok());
        for bad in [
            "qa at clinic",
            "@clinic.test",
            "qa@",
            "qa@.test",
            "a b@c.d",
            "<qa@c.d>",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_webhook_url("https://receiver.test/hook", false).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/hook", true).is_ok());
        let err = check_webhook_url("http://receiver.test/hook", false).expect_err("http");
        assert!(err.to_string().contains("is not https"), "{err}");
        assert!(check_webhook_url("ftp://receiver.test", true).is_err());
        assert!(check_webhook_url("https:///nohost", false).is_err());
    }

    #[test]
    fn kinds_parse_by_name_and_unknown_ones_are_named() {
        assert_eq!(
            parse_kinds("released, awaiting_release").expect("kinds"),
            BTreeSet::from([Kind::Released, Kind::AwaitingRelease])
        );
        let err = parse_kinds("released,relased").expect_err("typo");
        assert!(err.to_string().contains("\"relased\""), "{err}");
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()).expect("round trip"), kind);
        }
    }
}

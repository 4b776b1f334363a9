//! Notifications as the domain sees them: what people can subscribe to, where they
//! are told, and the outbox of notifications with their delivery state. The
//! happenings an audit entry records are derived in [`happening`].

pub mod happening;

use super::Role;
use chrono::{DateTime, Utc};
use happening::Happening;
use std::collections::BTreeSet;
use std::fmt;
use uuid::Uuid;

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
    /// A record arrived after a batch's release decision (a late QC result, a
    /// deviation, a correction): QA must review it.
    ChangedAfterDecision,
    /// The order was cancelled (`order.cancelled`), with the reason given.
    Cancelled,
    /// A result out of specification arrived after the batch was released (it may
    /// have been infused): a patient follow-up is open. The highest priority.
    FailedAfterRelease,
    /// A signal on a site's control chart of a QC result: the process may be
    /// drifting there (`analytics.trend_signal`).
    TrendSignal,
}

/// How urgently a notification must reach people: e-mail carries it in its
/// priority headers, a webhook in its payload and a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Normal,
    /// A patient may be at risk now: marked urgent in every channel.
    Highest,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Highest => "highest",
        }
    }
}

impl Kind {
    pub const ALL: [Kind; 15] = [
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
        Kind::ChangedAfterDecision,
        Kind::Cancelled,
        Kind::FailedAfterRelease,
        Kind::TrendSignal,
    ];

    pub fn priority(self) -> Priority {
        match self {
            Kind::FailedAfterRelease => Priority::Highest,
            _ => Priority::Normal,
        }
    }

    /// Happenings the physician who placed an order must hear of without asking:
    /// the notifier puts them in that physician's console notification list
    /// whether or not they subscribed and whether or not e-mail is configured.
    pub fn is_critical(self) -> bool {
        matches!(
            self,
            Kind::CoiMismatch
                | Kind::OutOfSpecification
                | Kind::Deviation
                | Kind::Rejected
                | Kind::Delayed
                | Kind::ChangedAfterDecision
                | Kind::Cancelled
                | Kind::FailedAfterRelease
        )
    }

    /// The kind in words, for people.
    pub fn label(self) -> &'static str {
        match self {
            Kind::OrderDispatched => "Order accepted by the site",
            Kind::CellsReceived => "Cells received",
            Kind::CoiMismatch => "Chain-of-identity mismatch",
            Kind::OutOfSpecification => "Result out of specification",
            Kind::Deviation => "Deviation",
            Kind::AwaitingRelease => "Awaiting QA release",
            Kind::Released => "Released",
            Kind::Rejected => "Rejected by QA",
            Kind::Delayed => "Delayed",
            Kind::SiteLinkDown => "Site link down",
            Kind::SiteLinkRestored => "Site link back up",
            Kind::ChangedAfterDecision => "Record changed after QA's decision",
            Kind::Cancelled => "Order cancelled",
            Kind::FailedAfterRelease => "Out of specification after release: patient follow-up",
            Kind::TrendSignal => "Trend signal in process analytics",
        }
    }

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
            Kind::ChangedAfterDecision => "changed_after_decision",
            Kind::Cancelled => "cancelled",
            Kind::FailedAfterRelease => "failed_after_release",
            Kind::TrendSignal => "trend_signal",
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
    pub fn validate(
        &self,
        allow_http: bool,
        allowlist: Allowlist<'_>,
        email_configured: bool,
    ) -> Result<(), Error> {
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
            Channel::Webhook { url, .. } => check_webhook_url(url, allow_http, allowlist)?,
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

/// Whether an address is one a webhook must not reach unless an administrator
/// listed it by itself: loopback, link-local, private, shared (CGNAT), unique-local
/// or unspecified, in IPv4 or IPv6 (also an IPv4 address mapped into IPv6).
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Where webhooks may go: the administrator's `[notifications] webhook_allowlist`.
/// An entry is a host (`hooks.example.org`, `10.1.2.3`), a subdomain wildcard
/// (`*.example.org`) or `*` (any host). An internal address (loopback, link-local,
/// private) or `localhost` is allowed only when listed by itself, never by a
/// wildcard.
#[derive(Debug, Clone, Copy)]
pub struct Allowlist<'a>(pub &'a [String]);

impl Allowlist<'_> {
    fn listed(&self, host: &str) -> bool {
        self.0.iter().any(|e| e.trim().eq_ignore_ascii_case(host))
    }

    fn matched(&self, host: &str) -> bool {
        self.listed(host)
            || self
                .0
                .iter()
                .map(|e| e.trim().to_ascii_lowercase())
                .any(|e| {
                    e == "*"
                        || e.strip_prefix("*.")
                            .is_some_and(|domain| host.ends_with(&format!(".{domain}")))
                })
    }

    fn shown(&self) -> String {
        if self.0.is_empty() {
            "empty".into()
        } else {
            self.0.join(", ")
        }
    }

    /// Whether a webhook may go to `host`, which is (or resolves to) an internal
    /// address when `internal`.
    pub fn permits(&self, host: &str, internal: bool) -> Result<(), Error> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if internal && !self.listed(&host) {
            return Err(Error::Invalid(format!(
                "webhook host {host} is an internal address (loopback, link-local or private):                  only an administrator can allow it, by listing it itself in the hub's webhook                  allow-list ([notifications] webhook_allowlist: {})",
                self.shown()
            )));
        }
        if !self.matched(&host) {
            return Err(Error::Invalid(format!(
                "webhook host {host} is not on the hub's webhook allow-list                  ([notifications] webhook_allowlist: {}); ask an administrator to add it",
                self.shown()
            )));
        }
        Ok(())
    }
}

/// Whether a URL's host, as written, is internal (an internal IP literal or `localhost`).
pub fn written_internal(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.to_ascii_lowercase().ends_with(".localhost")
        || bare.parse::<std::net::IpAddr>().is_ok_and(is_internal)
}

/// A webhook URL must be `https://host...` (or `http://` when allowed), parse as a
/// URI, and name a host the allow-list permits.
pub fn check_webhook_url(
    url: &str,
    allow_http: bool,
    allowlist: Allowlist<'_>,
) -> Result<(), Error> {
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
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(Error::Invalid(format!("webhook URL {url:?} names no host")));
    };
    allowlist.permits(host, written_internal(host))
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

/// A notification in a person's console notification list.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    pub inbox_id: Uuid,
    pub recipient: String,
    pub kind: Kind,
    pub site_id: Option<String>,
    pub order_id: Option<Uuid>,
    pub coi: Option<String>,
    pub summary: String,
    pub happened_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
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

/// The JSON document of a notification (webhook body, e-mail attachment of sorts).
pub fn payload(notification_id: Uuid, happening: &Happening) -> String {
    let order = happening.order.as_ref();
    serde_json::json!({
        "notification_id": notification_id,
        "kind": happening.kind.as_str(),
        "priority": happening.kind.priority().as_str(),
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

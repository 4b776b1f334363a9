//! The delivery worker: sends due outbox rows by webhook or e-mail and records how
//! it went. Each delivery runs in its own task under a timeout, so a slow or dead
//! receiver holds up only its own subscription (whose later notifications wait
//! behind it, keeping their order), never the others.
//!
//! A webhook is an HTTP POST of the JSON payload with these headers:
//! - `Carrel-Notification-Id`: the notification's id, the same on every attempt;
//! - `Carrel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over `"<t>.<body>"`,
//!   keyed with the subscription's secret (its text as shown at subscription).
//!
//! A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares
//! it in constant time, refuses a timestamp far from its clock (a replay), and drops
//! a notification id it has seen. Any 2xx answer counts as delivered.

use super::{
    is_internal, written_internal, Allowlist, Channel, Delivery, NotificationsConfig, Priority,
};
use crate::store::Store;
use bytes::Bytes;
use chrono::Utc;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Deliveries in flight at once (each its own task).
const MAX_IN_FLIGHT: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("notifications: smtp_url {url:?}: {why}")]
    Smtp { url: String, why: String },
    #[error("notifications: smtp_from {0:?} is not a mailbox")]
    From(String),
    #[error("notifications: TLS for webhooks: {0}")]
    Tls(String),
}

/// The header carrying the notification id.
pub const ID_HEADER: &str = "Carrel-Notification-Id";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Carrel-Signature";

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends notifications: an HTTPS client (server certificates verified against the
/// Mozilla roots of `webpki-roots`) and, when configured, an SMTP transport.
#[derive(Clone)]
pub struct Sender {
    config: NotificationsConfig,
    http: HttpsClient,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
}

impl Sender {
    pub fn new(config: &NotificationsConfig) -> Result<Sender, Error> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let smtp = match &config.smtp_url {
            None => None,
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| Error::Smtp {
                        url: url.clone(),
                        why: e.to_string(),
                    })?
                    .timeout(Some(config.request_timeout()))
                    .build();
                let from: Mailbox = config
                    .smtp_from
                    .parse()
                    .map_err(|_| Error::From(config.smtp_from.clone()))?;
                Some((transport, from))
            }
        };
        Ok(Sender {
            config: config.clone(),
            http,
            smtp,
        })
    }

    /// Sends one notification; the error says what went wrong, for `last_error`.
    pub async fn send(&self, delivery: &Delivery) -> Result<(), String> {
        let timeout = self.config.request_timeout();
        let attempt = async {
            match &delivery.channel {
                Channel::Webhook { url, secret } => self.post(delivery, url, secret).await,
                Channel::Email { address } => self.mail(delivery, address).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {} ms (request_timeout_ms)",
                timeout.as_millis()
            )),
        }
    }

    async fn post(&self, delivery: &Delivery, url: &str, secret: &str) -> Result<(), String> {
        if url.starts_with("http://") && !self.config.allow_http_webhooks {
            return Err(format!(
                "webhook URL {url} is not https and allow_http_webhooks is off"
            ));
        }
        self.check_destination(url).await?;
        let body = delivery.entry.payload.clone().into_bytes();
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "carrel-hub")
            .header(ID_HEADER, delivery.entry.notification_id.to_string())
            .header(PRIORITY_HEADER, delivery.entry.kind.priority().as_str())
            .header(
                SIGNATURE_HEADER,
                signature(secret, Utc::now().timestamp(), &body),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("webhook request to {url}: {e}"))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| describe_http_error(url, &e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook {url} answered {status}"))
        }
    }

    /// The allow-list again, at delivery (it may have changed since the subscription),
    /// with the host resolved: a name that resolves to an internal address is refused
    /// unless the name itself is listed.
    async fn check_destination(&self, url: &str) -> Result<(), String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("webhook URL {url}: {e}"))?;
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        let allowlist = Allowlist(&self.config.webhook_allowlist);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let internal = if written_internal(&host) {
            true
        } else {
            tokio::net::lookup_host((bare.as_str(), port))
                .await
                .map_err(|e| format!("webhook host {host} does not resolve: {e}"))?
                .any(|addr| is_internal(addr.ip()))
        };
        allowlist
            .permits(&host, internal)
            .map_err(|e| e.to_string())
    }

    async fn mail(&self, delivery: &Delivery, address: &str) -> Result<(), String> {
        let Some((transport, from)) = &self.smtp else {
            return Err("no SMTP server is configured ([notifications] smtp_url)".into());
        };
        let entry = &delivery.entry;
        let to: Mailbox = address
            .parse()
            .map_err(|e| format!("recipient {address:?}: {e}"))?;
        let text = format!(
            "{}\n\nKind: {}\nSite: {}\nCOI: {}\nBatch: {}\nNotification: {}\n\nSent by Carrel because of a subscription of {}.\n",
            entry.summary,
            entry.kind,
            entry.site_id.as_deref().unwrap_or("-"),
            entry.coi.as_deref().unwrap_or("-"),
            entry.batch_id.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            entry.notification_id,
            entry.owner,
        );
        let urgent = entry.kind.priority() == Priority::Highest;
        let mut message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(format!(
                "[Carrel]{} {}: {}",
                if urgent { " URGENT" } else { "" },
                entry.kind,
                entry.summary
            ))
            .message_id(Some(format!("<{}@carrel>", entry.notification_id)))
            .header(ContentType::TEXT_PLAIN);
        if urgent {
            // What mail readers sort and flag by: X-Priority 1 (highest),
            // Importance and Priority (RFC 2156).
            message = message
                .header(XPriorityHeader)
                .header(ImportanceHeader)
                .header(PriorityHeader);
        }
        let message = message
            .body(text)
            .map_err(|e| format!("building the e-mail: {e}"))?;
        transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// The header carrying a webhook's priority (`normal` or `highest`; the payload
/// says it too).
pub const PRIORITY_HEADER: &str = "x-carrel-priority";

/// The e-mail headers that mark a notification of the highest priority, each its
/// own type (lettre keys headers by type).
macro_rules! priority_header {
    ($name:ident, $header:literal, $value:literal) => {
        #[derive(Debug, Clone, Copy)]
        struct $name;
        impl lettre::message::header::Header for $name {
            fn name() -> lettre::message::header::HeaderName {
                lettre::message::header::HeaderName::new_from_ascii_str($header)
            }
            fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                Ok($name)
            }
            fn display(&self) -> lettre::message::header::HeaderValue {
                lettre::message::header::HeaderValue::new(Self::name(), $value.to_owned())
            }
        }
    };
}

priority_header!(XPriorityHeader, "X-Priority", "1 (Highest)");
priority_header!(ImportanceHeader, "Importance", "high");
priority_header!(PriorityHeader, "Priority", "urgent");

/// The chain of causes of a client error, which hyper keeps behind "client error".
fn describe_http_error(url: &str, error: &dyn std::error::Error) -> String {
    let mut text = format!("webhook {url}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Delivers due notifications until `shutdown`; in-flight ones finish (each is
/// bounded by the request timeout).
pub async fn run(
    store: Arc<dyn Store>,
    sender: Sender,
    config: NotificationsConfig,
    shutdown: CancellationToken,
) {
    // A claimed row is not claimed again until the lease ends: longer than an attempt.
    let lease = config.request_timeout() + Duration::from_secs(30);
    let mut ticker = tokio::time::interval(config.poll_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        }
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
        if room == 0 {
            continue;
        }
        let due = match store.claim_deliveries(room as u32, lease, Utc::now()).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "claiming notifications to deliver failed; will retry");
                continue;
            }
        };
        for delivery in due {
            let store = store.clone();
            let sender = sender.clone();
            let config = config.clone();
            in_flight.spawn(async move { deliver_one(&*store, &sender, &config, delivery).await });
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn deliver_one(
    store: &dyn Store,
    sender: &Sender,
    config: &NotificationsConfig,
    delivery: Delivery,
) {
    let id = delivery.entry.notification_id;
    let outcome = sender.send(&delivery).await;
    let now = Utc::now();
    let recorded = match &outcome {
        Ok(()) => {
            tracing::info!(notification_id = %id, kind = %delivery.entry.kind, channel = delivery.channel.name(), "notification delivered");
            store.delivery_succeeded(id, now).await
        }
        Err(why) => {
            let attempts = delivery.entry.attempts + 1;
            let retry_at = config
                .retry_delay(attempts)
                .map(|d| now + chrono::Duration::from_std(d).unwrap_or_default());
            match retry_at {
                Some(at) => {
                    tracing::warn!(notification_id = %id, attempts, error = %why, retry_at = %at, "notification not delivered; will retry")
                }
                None => {
                    tracing::error!(notification_id = %id, attempts, error = %why, "notification not delivered; attempts used up, marked failed")
                }
            }
            store.delivery_failed(id, why, retry_at, now).await
        }
    };
    if let Err(e) = recorded {
        // The lease runs out and the row is tried again: a receiver may get it twice
        // (same notification id), but it is not lost.
        tracing::warn!(notification_id = %id, error = %e, "recording a delivery outcome failed");
    }
}

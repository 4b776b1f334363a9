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
pub mod service;

use crate::store::Store;
use chrono::Utc;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

// The domain of notifications lives in the model (the store keeps it too); the
// settings in the hub's config.
pub use crate::config::NotificationsConfig;
/// How an audit entry becomes happenings (see [`crate::model::notification::happening`]).
pub use crate::model::notification::happening as derive;
pub use crate::model::notification::happening::{Happening, OrderFacts};
pub use crate::model::notification::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

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
        let list = ["receiver.test".to_owned(), "127.0.0.1".to_owned()];
        let allow = Allowlist(&list);
        assert!(check_webhook_url("https://receiver.test/hook", false, allow).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/hook", true, allow).is_ok());
        let err = check_webhook_url("http://receiver.test/hook", false, allow).expect_err("http");
        assert!(err.to_string().contains("is not https"), "{err}");
        assert!(check_webhook_url("ftp://receiver.test", true, allow).is_err());
        assert!(check_webhook_url("https:///nohost", false, allow).is_err());
        let err = check_webhook_url("https://elsewhere.test/hook", false, allow).expect_err("list");
        assert!(err.to_string().contains("allow-list"), "{err}");
    }

    #[test]
    fn internal_addresses_need_their_own_entry_on_the_allow_list() {
        let any = ["*".to_owned(), "*.example.org".to_owned()];
        let allow = Allowlist(&any);
        assert!(check_webhook_url("https://hooks.example.org/x", false, allow).is_ok());
        assert!(check_webhook_url("https://anything.test/x", false, allow).is_ok());
        for internal in [
            "https://127.0.0.1:1/",
            "https://10.1.2.3/",
            "https://172.20.0.5/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest",
            "https://100.64.0.1/",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00::5]/",
            "https://[::ffff:10.0.0.1]/",
            "https://localhost:22/",
            "https://0.0.0.0/",
        ] {
            let err = check_webhook_url(internal, false, allow).expect_err(internal);
            assert!(
                err.to_string().contains("internal address"),
                "{internal}: {err}"
            );
        }
        let listed = ["10.1.2.3".to_owned()];
        assert!(check_webhook_url("https://10.1.2.3/", false, Allowlist(&listed)).is_ok());
        assert!(check_webhook_url("https://8.8.8.8/", false, Allowlist(&any)).is_ok());
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

//! Prometheus metrics of the hub, served at `/metrics` on the console port.
//!
//! Most figures are read from the store when scraped (sites, cursors, batches by
//! state, release queue, failed sign-ins), so they are true across hub replicas and
//! cost nothing on the hot path. The commit latency of site events is measured where
//! it happens, in a fixed-bucket histogram.

use crate::grpc::Shared;
use crate::model::BatchState;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets, safe to update from any task.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// Escapes a label value for the text exposition format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of every hub metric.
pub async fn render(shared: &Shared) -> Result<String, crate::store::Error> {
    let store = &shared.store;
    let sites = store.list_sites().await?;
    let orders = store.list_orders(None, None).await?;
    let failed_sign_ins = store
        .audit_count(crate::audit::Action::UserSignInFailed)
        .await?;
    let outbox = store.outbox_counts().await?;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge(
        "carrel_hub_sites_connected",
        "Sites with a live link to this hub process.",
        "gauge",
        vec![(
            String::new(),
            sites
                .iter()
                .filter(|s| shared.links.is_connected(&s.site_id))
                .count() as f64,
        )],
    );
    gauge(
        "carrel_hub_site_events_total",
        "Site events committed at the hub, per site.",
        "counter",
        sites
            .iter()
            .map(|s| {
                (
                    format!("{{site=\"{}\"}}", label(&s.site_id)),
                    s.acked_event_seq as f64,
                )
            })
            .collect(),
    );
    gauge(
        "carrel_hub_commands_unacknowledged",
        "Hub commands issued to a site and not yet acknowledged by it (replication backlog).",
        "gauge",
        sites
            .iter()
            .map(|s| {
                (
                    format!("{{site=\"{}\"}}", label(&s.site_id)),
                    s.last_command_seq.saturating_sub(s.acked_command_seq) as f64,
                )
            })
            .collect(),
    );
    gauge(
        "carrel_hub_notifications",
        "Notifications waiting for delivery (pending) and given up after their attempts (failed; an admin can requeue them).",
        "gauge",
        vec![
            ("{state=\"pending\"}".into(), outbox.pending as f64),
            ("{state=\"failed\"}".into(), outbox.failed as f64),
        ],
    );
    let states = [
        BatchState::Ordered,
        BatchState::Accepted,
        BatchState::InProcess,
        BatchState::AwaitingRelease,
        BatchState::Released,
        BatchState::Rejected,
        BatchState::Cancelled,
        BatchState::HandedOver,
        BatchState::Infused,
    ];
    gauge(
        "carrel_hub_batches",
        "Batches by state.",
        "gauge",
        states
            .iter()
            .map(|state| {
                (
                    format!("{{state=\"{}\"}}", state.as_str()),
                    orders.iter().filter(|o| o.state == *state).count() as f64,
                )
            })
            .collect(),
    );
    gauge(
        "carrel_hub_release_queue",
        "Batches awaiting a QA release decision.",
        "gauge",
        vec![(
            String::new(),
            orders
                .iter()
                .filter(|o| o.state == BatchState::AwaitingRelease)
                .count() as f64,
        )],
    );
    gauge(
        "carrel_hub_failed_sign_ins_total",
        "Failed sign-ins (audit trail).",
        "counter",
        vec![(String::new(), failed_sign_ins as f64)],
    );
    let now = chrono::Utc::now();
    let seconds_left = |until: chrono::DateTime<chrono::Utc>| (until - now).num_seconds() as f64;
    gauge(
        "carrel_hub_site_certificate_expiry_seconds",
        "Seconds until each enrolled site's certificate expires (negative: expired).",
        "gauge",
        sites
            .iter()
            .filter(|s| s.status != crate::model::SiteStatus::Ceased)
            .filter_map(|s| {
                Some((
                    format!("{{site=\"{}\"}}", label(&s.site_id)),
                    seconds_left(s.cert_not_after?),
                ))
            })
            .collect(),
    );
    let window = chrono::Duration::days(i64::from(shared.config.certificate_warning_days));
    let ca_expires = shared.ca.not_after();
    let expiring = sites
        .iter()
        .filter(|s| s.status != crate::model::SiteStatus::Ceased)
        .filter_map(|s| s.cert_not_after)
        .chain(ca_expires)
        .filter(|until| *until - now < window)
        .count();
    gauge(
        "carrel_hub_certificates_expiring",
        "Certificates (sites' and the hub CA's) expiring within certificate_warning_days.",
        "gauge",
        vec![(String::new(), expiring as f64)],
    );
    gauge(
        "carrel_hub_ca_certificate_expiry_seconds",
        "Seconds until the hub CA's certificate expires.",
        "gauge",
        ca_expires
            .map(|until| vec![(String::new(), seconds_left(until))])
            .unwrap_or_default(),
    );
    gauge(
        "carrel_hub_sites_on_previous_ca",
        "Sites that can still connect holding a certificate the current CA did not issue (a CA rotation not yet finished).",
        "gauge",
        vec![(
            String::new(),
            sites
                .iter()
                .filter(|s| s.holds_certificate_of_another_ca(shared.ca.fingerprint()))
                .count() as f64,
        )],
    );
    shared.commit_latency.render(
        "carrel_hub_event_commit_seconds",
        "Time to commit one message of site events (and their projections) durably.",
        &mut out,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_observation_in_every_bucket_above_it() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(30));
        let mut out = String::new();
        h.render("x", "test", &mut out);
        assert!(out.contains("x_bucket{le=\"0.0005\"} 0"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2"), "{out}");
        assert!(out.contains("x_count 2"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}

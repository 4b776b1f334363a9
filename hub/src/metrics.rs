//! Prometheus metrics of the hub, served at `/metrics` on the console port.
//!
//! Most figures are read from the store when scraped (sites, cursors, batches by
//! state, release queue, failed sign-ins), so they are true across hub replicas and
//! cost nothing on the hot path. The commit latency of site events is measured where
//! it happens, in a fixed-bucket histogram.

use crate::app::Hub;
use crate::model::BatchState;
use std::fmt::Write;

/// Escapes a label value for the text exposition format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of every hub metric.
pub async fn render(hub: &Hub) -> Result<String, crate::store::Error> {
    let store = &hub.store;
    let sites = store.list_sites().await?;
    let orders = store.list_orders(None, None).await?;
    let failed_sign_ins = hub
        .failed_sign_ins
        .load(std::sync::atomic::Ordering::Relaxed);
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
                .filter(|s| hub.links.is_connected(&s.site_id))
                .count() as f64,
        )],
    );
    let ingest = store.ingest_counts();
    for (name, help, value) in [
        (
            "carrel_hub_ingest_commits_total",
            "Durable transactions that stored site events, committed by this hub process (a group commit is one).",
            ingest.commits,
        ),
        (
            "carrel_hub_ingest_requests_total",
            "Sites' messages of events stored by this hub process (several share a group commit).",
            ingest.requests,
        ),
        (
            "carrel_hub_ingest_events_total",
            "New site events stored by this hub process (repeats of stored events not counted).",
            ingest.events,
        ),
    ] {
        gauge(name, help, "counter", vec![(String::new(), value as f64)]);
    }
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
    let states = BatchState::ALL;
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
        "Failed sign-ins and signings answered by this hub process since it started.",
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
    let window = chrono::Duration::days(i64::from(hub.config.certificate_warning_days));
    let ca_expires = hub.ca.not_after();
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
                .filter(|s| s.holds_certificate_of_another_ca(hub.ca.fingerprint()))
                .count() as f64,
        )],
    );
    hub.commit_latency.render(
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
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}

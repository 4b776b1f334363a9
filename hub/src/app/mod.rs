//! The application state of one hub process: [`Hub`], what every door (the gRPC
//! API, the web console, `/metrics`, the background tasks) shares.
//!
//! It holds the store, the configuration, the CA, the live site links, the change
//! broadcast, the shutdown token, the instance id, the commit latency histogram and
//! the refusal throttle, and the few things done with them that are not a door's
//! business (waking a site's link, auditing refused requests, relaying what other
//! hub processes announce). It knows nothing of gRPC or HTML: turning errors into
//! `tonic::Status` and reading credentials from request metadata stay in
//! [`crate::grpc`]; the rules people meet live in [`crate::service`]. The doors
//! depend on this module, never the other way round.
//!
//! Named `app` rather than `hub`: the whole crate is the hub, and `hub::Hub` in a
//! folder called `hub/` would say nothing more.

mod latency;
mod links;

pub use latency::Histogram;
pub use links::Links;

use crate::pki::Ca;
use crate::store::{self, Store};
use crate::Config;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// State shared by every service of one hub process.
pub struct Hub {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub ca: Arc<Ca>,
    pub links: Links,
    /// Batch ids whose projection changed, for watchers.
    pub changes: broadcast::Sender<Uuid>,
    /// Cancelled when the hub shuts down, to end long-lived streams.
    pub shutdown: CancellationToken,
    /// Names this hub process when it claims a site's live link.
    pub instance_id: String,
    /// How long committing site events takes, for `/metrics`.
    pub commit_latency: Histogram,
    /// The head of the audit trail (position, hash), refreshed every second: sent to
    /// the sites to witness.
    pub audit_head: std::sync::Mutex<Option<(u64, String)>>,
    /// Open audit integrity findings: while there are any, people are refused.
    pub findings: std::sync::Mutex<Vec<crate::audit::Finding>>,
    /// Failed sign-ins and signings this process answered, for `/metrics` (the
    /// audit trail holds them as counts per window).
    pub failed_sign_ins: std::sync::atomic::AtomicU64,
    /// Refusals audited lately, so that a flood of them cannot fill the database.
    refusals: Mutex<crate::audit::Throttle>,
}

impl Hub {
    pub fn new(
        store: Arc<dyn Store>,
        config: Config,
        ca: Arc<Ca>,
        shutdown: CancellationToken,
    ) -> Arc<Hub> {
        let (changes, _) = broadcast::channel(1024);
        let window = std::time::Duration::from_secs(u64::from(config.audit_refusals_window_secs));
        Arc::new(Hub {
            refusals: Mutex::new(crate::audit::Throttle::new(window)),
            failed_sign_ins: std::sync::atomic::AtomicU64::new(0),
            audit_head: std::sync::Mutex::new(None),
            findings: std::sync::Mutex::new(Vec::new()),
            store,
            config,
            ca,
            links: Links::default(),
            changes,
            shutdown,
            instance_id: Uuid::new_v4().to_string(),
            commit_latency: Histogram::default(),
        })
    }

    /// Signs a site's CSR for the configured certificate lifetime.
    pub fn sign_site_csr(
        &self,
        csr_pem: &str,
        site_id: &str,
    ) -> Result<crate::pki::SiteCert, crate::pki::Error> {
        self.ca.sign_site_csr(
            csr_pem,
            site_id,
            chrono::Duration::days(i64::from(self.config.site_certificate_days)),
        )
    }

    /// Tells a site's live link (if any) that new commands are waiting, and watchers
    /// that the batch changed.
    pub fn commands_added(&self, site_id: &str, batch_id: Uuid) {
        self.links.notifier(site_id).notify_one();
        let _ = self.changes.send(batch_id);
    }
}

impl Hub {
    /// Audits a refused request of a site (or of an agent not yet enrolled): the
    /// first of its `kind` from `entry.actor` at once, those that follow within the
    /// window only counted ([`crate::audit::Throttle`]). A failure to write is
    /// logged; the request is refused all the same.
    pub async fn audit_refusal(&self, kind: &str, entry: crate::audit::NewEntry) {
        let key = format!("{}\u{0}{}\u{0}{kind}", entry.actor, entry.action);
        let admitted = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&key, &entry, std::time::Instant::now());
        if admitted {
            self.write_audit(&entry).await;
        }
    }

    /// Enters the counts of refusal windows that have ended (all of them when
    /// `all`, at shutdown).
    pub async fn audit_counted_refusals(&self, all: bool) {
        let mut now = std::time::Instant::now();
        if all {
            now +=
                std::time::Duration::from_secs(u64::from(self.config.audit_refusals_window_secs));
        }
        let due = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now);
        for entry in due {
            self.write_audit(&entry).await;
        }
    }

    /// Runs [`Hub::audit_counted_refusals`] every second until shutdown.
    pub fn audit_refusals_periodically(self: &Arc<Self>) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let window = chrono::Duration::seconds(i64::from(hub.config.sign_in_lockout_secs));
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = hub.shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        hub.audit_counted_refusals(false).await;
                        hub.refresh_integrity().await;
                        // Failed sign-ins reach the trail as one count per user
                        // name, source and window, once the window has ended.
                        if ticks.is_multiple_of(10) {
                            if let Err(e) = hub.store.report_sign_in_failures(window).await {
                                tracing::error!(error = %e, "cannot audit the counts of failed sign-ins");
                            }
                        }
                        ticks += 1;
                    }
                }
            }
            hub.audit_counted_refusals(true).await;
        });
    }

    /// Why people are refused now, if they are: the open integrity findings.
    pub fn held(&self) -> Option<String> {
        let findings = self.findings.lock().expect("findings lock");
        if findings.is_empty() {
            return None;
        }
        Some(format!(
            "the hub serves nobody until an administrator acknowledges an audit trail integrity finding on the hub machine \
             (`carrel-hub audit verify`, then `carrel-hub audit acknowledge --reason ...`): {}",
            findings
                .iter()
                .map(|f| f.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }

    /// The audit head to send to a site, as the protocol carries it.
    pub fn audit_head_pb(&self) -> Option<carrel_proto::pb::AuditHead> {
        self.audit_head
            .lock()
            .expect("audit head lock")
            .as_ref()
            .map(|(position, sha256)| carrel_proto::pb::AuditHead {
                position: *position,
                sha256: sha256.clone(),
            })
    }

    /// Reads the audit head and the open findings again (an acknowledgement is made
    /// by another process, on the hub machine).
    pub async fn refresh_integrity(&self) {
        match self.store.audit_head().await {
            Ok(head) => *self.audit_head.lock().expect("audit head lock") = head,
            Err(e) => tracing::error!(error = %e, "cannot read the audit head"),
        }
        match self.store.audit_findings(true).await {
            Ok(open) => *self.findings.lock().expect("findings lock") = open,
            Err(e) => tracing::error!(error = %e, "cannot read the audit integrity findings"),
        }
    }

    /// Checks a head a site says it witnessed; an open finding holds the hub.
    pub async fn witnessed(&self, site_id: &str, head: &carrel_proto::pb::AuditHead) {
        if head.sha256.is_empty() {
            return;
        }
        match self
            .store
            .check_witness(site_id, head.position, &head.sha256)
            .await
        {
            Ok(None) => {}
            Ok(Some(finding)) => {
                tracing::error!(site_id, position = head.position, detail = %finding.detail, "AUDIT TRAIL INTEGRITY FINDING: people are refused until an administrator acknowledges it");
                let mut open = self.findings.lock().expect("findings lock");
                if !open.iter().any(|f| f == &finding) {
                    open.push(finding);
                }
            }
            Err(e) => {
                tracing::error!(site_id, error = %e, "cannot check the site's witness of the audit trail")
            }
        }
    }

    async fn write_audit(&self, entry: &crate::audit::NewEntry) {
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!(error = %e, action = %entry.action, actor = %entry.actor, "cannot audit a refusal");
        }
    }
}

impl Hub {
    /// Relays what other hub processes on the same database announce (new commands
    /// for a site, a site's link claimed elsewhere) to this process's live links.
    pub async fn relay_notifications(self: &Arc<Self>) -> Result<(), store::Error> {
        let Some(mut notifications) = self.store.notifications().await? else {
            return Ok(());
        };
        let hub = self.clone();
        tokio::spawn(async move {
            while let Some(notification) = notifications.recv().await {
                match notification {
                    store::Notification::Commands(site)
                    | store::Notification::LinkClaimed(site) => {
                        hub.links.notifier(&site).notify_one();
                    }
                }
            }
        });
        Ok(())
    }
}

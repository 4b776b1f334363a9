//! `SiteLinkService`: enrollment, and the one bidirectional stream per site that
//! carries both replicated logs (invariant 3).
//!
//! Architecture invariant: the hub never dials a site; everything here answers a
//! connection the agent opened. A site is identified only by its client certificate
//! (invariant 7): the certificate must name the site and be the one issued to it at
//! its last enrollment, and the site must not be suspended.

use super::status;
use crate::app::Hub;
use crate::audit::{Action, NewEntry, Object};
use crate::auth::{secret_sha256, EnrollmentToken};
use crate::model;
use crate::model::SiteStatus;
use crate::pki;
use crate::store::{self, Received};
use carrel_proto::event::SiteEvent;
use carrel_proto::link::{HubEnd, HubInput, HubOutput, SiteRecord, Violation};
use carrel_proto::pb;
use carrel_proto::pb::{hub_message, site_message};
use carrel_proto::suspension::Suspension;
use chrono::Utc;
use futures_util::FutureExt;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct SiteLinkApi(pub Arc<Hub>);

fn issued(cert: &pki::SiteCert) -> model::IssuedCert {
    model::IssuedCert {
        sha256: cert.sha256.clone(),
        not_after: cert.not_after,
        ca_sha256: cert.ca_sha256.clone(),
    }
}

/// Most events accepted in one message; an agent sends smaller batches.
pub const MAX_EVENTS_PER_MESSAGE: usize = 1_000;
/// Most commands sent in one message.
const COMMANDS_PER_MESSAGE: u32 = 100;

/// How many messages a site may still send on its link: a token bucket that holds
/// at most `burst` and refills at `per_second`. Checking it costs nothing that
/// grows with the flood, so a site over its rate is cut off cheaply.
#[derive(Debug)]
struct Allowance {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Allowance {
    fn new(per_second: u32, burst: u32, now: Instant) -> Allowance {
        Allowance {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes one message's worth; false when the site is over its rate.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A site that passed identification, and whether it should renew its certificate.
struct Identified {
    site_id: String,
    renew: Option<String>,
}

/// Who is at the other end of the stream, from the TLS client certificate alone.
/// A certificate that names a site but is refused for it (the site is unknown,
/// suspended or ceased, or the certificate is not the one issued to it) is audited.
async fn identify_site<T>(hub: &Hub, request: &Request<T>) -> Result<Identified, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("Sync needs the site's client certificate; enroll the agent first")
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate presented"))?;
    let site_id = pki::site_id_of(leaf.as_ref()).ok_or_else(|| {
        Status::unauthenticated("the client certificate does not name a Carrel site")
    })?;
    let fingerprint = pki::fingerprint(leaf.as_ref());
    let (kind, refused) = match hub.store.site(&site_id).await {
        Err(store::Error::NotFound(_)) => (
            "unregistered",
            format!("site {site_id:?} is not registered at this hub"),
        ),
        Err(e) => return Err(status(e)),
        Ok(site) if site.status == SiteStatus::Suspended => {
            // The site is told who suspended it and why, so its technicians know.
            let suspension = match &site.status_change {
                Some(change) => Suspension::from(change),
                None => Suspension {
                    by: "an administrator".into(),
                    at: site.last_contact_at.unwrap_or_default(),
                    reason: "(no reason kept; see the hub's audit trail)".into(),
                },
            };
            let refusal = suspension.refusal(&site_id);
            audit_link_refusal(hub, &site_id, "suspended", refusal.message(), &fingerprint).await;
            return Err(refusal);
        }
        Ok(site) if site.status == SiteStatus::Ceased => (
            "ceased",
            format!(
                "site {site_id:?} has ceased; it can no longer connect (its records stay at the hub)"
            ),
        ),
        Ok(site) if site.pending_cert_sha256.as_deref() == Some(fingerprint.as_str()) => {
            // The first connection with a renewed certificate: from now on only it
            // is accepted.
            hub
                .store
                .promote_pending_certificate(&site_id, &fingerprint, Utc::now())
                .await
                .map_err(status)?;
            tracing::info!(%site_id, certificate = %fingerprint, "site now uses its renewed certificate");
            return Ok(identified(hub, site_id, leaf.as_ref()));
        }
        Ok(site) if site.cert_sha256.as_deref() != Some(fingerprint.as_str()) => (
            "certificate",
            format!(
                "this certificate is not the one issued to site {site_id:?} at its last enrollment or renewal"
            ),
        ),
        Ok(_) => return Ok(identified(hub, site_id, leaf.as_ref())),
    };
    audit_link_refusal(hub, &site_id, kind, &refused, &fingerprint).await;
    Err(Status::permission_denied(refused))
}

async fn audit_link_refusal(
    hub: &Hub,
    site_id: &str,
    kind: &str,
    refused: &str,
    fingerprint: &str,
) {
    hub.audit_refusal(
        kind,
        NewEntry::new(
            site_id,
            Action::SiteLinkRefused,
            Object::Site(site_id.to_owned()),
        )
        .reason(format!("{refused} (certificate sha256 {fingerprint})")),
    )
    .await;
}

/// An accepted site, told to renew when its certificate is near its end or the
/// hub's current CA did not issue it.
fn identified(hub: &Hub, site_id: String, leaf_der: &[u8]) -> Identified {
    let renew = pki::renewal_reason(
        leaf_der,
        &hub.ca,
        chrono::Duration::days(i64::from(hub.config.site_certificate_renew_days)),
        Utc::now(),
    );
    Identified { site_id, renew }
}

#[tonic::async_trait]
impl pb::site_link_service_server::SiteLinkService for SiteLinkApi {
    #[tracing::instrument(skip_all)]
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let req = request.into_inner();
        let token = EnrollmentToken::parse(&req.token).ok_or_else(|| {
            Status::invalid_argument(
                "the enrollment token is malformed (expected carrel1.<secret>.<ca-sha256>)",
            )
        })?;
        if token.ca_sha256 != self.0.ca.fingerprint() {
            let rotated =
                self.0.ca.previous_fingerprint().as_deref() == Some(token.ca_sha256.as_str());
            return Err(Status::failed_precondition(if rotated {
                "the enrollment token pins the hub CA from before its rotation; ask the hub's administrator for a new token"
            } else {
                "the enrollment token was issued by a different hub CA"
            }));
        }
        let token_sha = secret_sha256(&token.secret);
        let site = match self.0.store.site_for_token(&token_sha, Utc::now()).await {
            Ok(site) => site,
            Err(e) => {
                tracing::warn!(error = %e, "enrollment refused");
                let reason = e.to_string();
                self.0
                    .audit_refusal(
                        &reason,
                        NewEntry::new(
                            "unknown agent",
                            Action::SiteEnrollmentRefused,
                            Object::UnknownSite,
                        )
                        .reason(&reason),
                    )
                    .await;
                return Err(status(e));
            }
        };
        // Sign before using the token up, so a bad CSR leaves the token usable.
        let cert = self
            .0
            .sign_site_csr(&req.csr_pem, &site.site_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let site = self
            .0
            .store
            .complete_enrollment(&site.site_id, &token_sha, &issued(&cert), Utc::now())
            .await
            .map_err(status)?;
        tracing::info!(site_id = %site.site_id, "site enrolled");
        Ok(Response::new(pb::EnrollResponse {
            site_id: site.site_id,
            site_name: site.name,
            certificate_pem: cert.cert_pem,
            ca_certificate_pem: self.0.ca.trust_bundle(),
        }))
    }

    type SyncStream = ReceiverStream<Result<pb::HubMessage, Status>>;

    async fn golden_batch(
        &self,
        request: Request<pb::SiteGoldenBatchRequest>,
    ) -> Result<Response<pb::GetGoldenBatchResponse>, Status> {
        let Identified { site_id, .. } = identify_site(&self.0, &request).await?;
        let batch_id = super::parse_id("batch_id", &request.get_ref().batch_id)?;
        let order = match self.0.store.order_by_batch(batch_id).await {
            Ok(order) if order.site_id == site_id => order,
            // Another site's batch is answered as if it were not there.
            Ok(_) | Err(store::Error::NotFound(_)) => {
                return Err(Status::not_found(format!(
                    "site {site_id} has no batch {batch_id}"
                )))
            }
            Err(e) => return Err(status(e)),
        };
        let steps = crate::service::analytics::golden_of(
            &self.0,
            &order,
            crate::service::analytics::Steps::Recipe,
        )
        .await
        .map_err(super::service_status)?;
        Ok(Response::new(pb::GetGoldenBatchResponse {
            order_id: order.order_id.to_string(),
            batch_id: order.batch_id.to_string(),
            product_id: order.recipe_id.clone(),
            steps: steps
                .iter()
                .map(super::analytics::golden_step_to_pb)
                .collect(),
        }))
    }

    async fn sync(
        &self,
        request: Request<Streaming<pb::SiteMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let Identified { site_id, renew } = identify_site(&self.0, &request).await?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let hub = self.0.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("site_link", site_id = %site_id);
            let link = Link {
                hub,
                site_id: site_id.clone(),
                renew,
                tx: tx.clone(),
            };
            match tracing::Instrument::instrument(link.run(inbound), span.clone()).await {
                Ok(()) => tracing::info!(parent: &span, "site link closed"),
                Err(e) => {
                    tracing::warn!(parent: &span, code = ?e.code(), message = e.message(), "site link ended with an error");
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One live site link.
#[derive(Clone)]
struct Link {
    hub: Arc<Hub>,
    site_id: String,
    /// Why the site should renew its certificate, told in Welcome.
    renew: Option<String>,
    tx: mpsc::Sender<Result<pb::HubMessage, Status>>,
}

/// Removes the link from the registry however the session ends.
struct Registration<'a> {
    hub: &'a Hub,
    site_id: &'a str,
    generation: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.hub.links.release(self.site_id, self.generation);
    }
}

impl Link {
    async fn send(&self, body: hub_message::Body) -> Result<(), Status> {
        self.tx
            .send(Ok(pb::HubMessage { body: Some(body) }))
            .await
            .map_err(|_| Status::cancelled("the site went away"))
    }

    async fn run(self, mut inbound: Streaming<pb::SiteMessage>) -> Result<(), Status> {
        let config = &self.hub.config;
        let interval = Duration::from_millis(u64::from(config.heartbeat_interval_ms));
        let timeout = Duration::from_millis(u64::from(config.heartbeat_timeout_ms));
        let store = &self.hub.store;

        let hello = match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Hello within the heartbeat timeout",
                ))
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(pb::SiteMessage {
                body: Some(site_message::Body::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first message on Sync must be Hello",
                ))
            }
        };
        let (major, minor) = carrel_proto::protocol::check(&hello.protocol_version)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        // Kept so that a decision this agent could not read is refused, not sent.
        store
            .note_site_protocol(&self.site_id, &format!("{major}.{minor}"))
            .await
            .map_err(status)?;
        // What the site witnessed of the audit trail is checked first, before anything
        // else about its state (a hub restored from an older backup also refuses the
        // site's link below) and before it is sent the head as the trail now is.
        let mut witnessed = hello.witnessed_audit_head.clone();
        if let Some(head) = &witnessed {
            self.hub.witnessed(&self.site_id, head).await;
        }
        let (generation, closed) = self.hub.links.take_over(&self.site_id);
        let _registration = Registration {
            hub: &self.hub,
            site_id: &self.site_id,
            generation,
        };
        let site = store.site(&self.site_id).await.map_err(status)?;
        if hello.last_event_seq < site.acked_event_seq {
            tracing::error!(
                site_last = hello.last_event_seq,
                hub_acked = site.acked_event_seq,
                "the site has fewer events than the hub already stored: was its store restored from an old backup?"
            );
        }
        // The protocol's decisions (what to acknowledge and when, which commands to
        // send, when the link is lost or taken over) are the sans-IO end's; this
        // loop carries them out with the store and the stream.
        let mut end = HubEnd::new(timeout.as_millis() as u64);
        let base = Instant::now();
        let now = move || base.elapsed().as_millis() as u64;
        let mut inputs: VecDeque<Input> = VecDeque::from([Input::Core(HubInput::Hello {
            acked_command_seq: hello.acked_command_seq,
            last_event_seq: hello.last_event_seq,
            record: SiteRecord {
                acked_event_seq: site.acked_event_seq,
                last_command_seq: site.last_command_seq,
            },
            now: now(),
        })]);
        let notify = self.hub.links.notifier(&self.site_id);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // The site's last contact is recorded often enough for the link-down check
        // (notifications) to tell a quiet link from a lost one.
        let touch_every = config.site_touch_every();
        let mut last_touch = Instant::now();
        // The audit head goes to the site (and what it witnessed is checked) at most
        // this often: each new head is a write at the site and a check here.
        let witness_every = Duration::from_secs(u64::from(config.audit_witness_interval_secs));
        let mut last_witness = Instant::now();
        let mut last_checked = Instant::now();
        let mut allowance = Allowance::new(
            config.site_link_max_messages_per_second,
            config.site_link_message_burst,
            last_heard,
        );
        // Event runs are committed in a task of their own, one after another, so
        // that the link goes on receiving and decoding while a run commits (a site
        // catching up streams messages back to back). What arrives meanwhile is
        // committed as the next run. Each run's outcome comes back through `done`;
        // a refusal ends the link.
        let (done_tx, mut done) = mpsc::channel(1);
        let mut committing = Committing {
            busy: false,
            waiting: Run::default(),
            done: done_tx,
            last_commit: None,
            refusal: None,
        };
        // The commands read for sending, by the end's `ReadCommands`.
        let mut read: Vec<pb::HubCommand> = Vec::new();
        loop {
            // Each input is taken, and what the end asks for carried out, before the
            // next; an output that reads the store gives the end its next input.
            while let Some(input) = inputs.pop_front() {
                let input = match input {
                    Input::Core(input) => input,
                    Input::Events(batch) => {
                        // Decoded and hashed now, as the next run's; the end decides
                        // when the run commits.
                        let seqs = batch.events.iter().map(|e| e.seq).collect();
                        committing.waiting.push(batch);
                        HubInput::Events { seqs }
                    }
                    Input::Handle(message) => {
                        self.handle(message).await?;
                        continue;
                    }
                };
                let mut next = Vec::new();
                for output in end.handle(input).map_err(violation)? {
                    match output {
                        HubOutput::AckCommands { seq } => store
                            .ack_commands(&self.site_id, seq)
                            .await
                            .map_err(status)?,
                        HubOutput::Claim => {
                            // One live link per site across every hub process on
                            // this database: the newest connection claims it, and
                            // the holder of an older claim closes.
                            let claim = store
                                .claim_site_link(&self.site_id, &self.hub.instance_id)
                                .await
                                .map_err(status)?;
                            store
                                .touch_site(&self.site_id, Utc::now())
                                .await
                                .map_err(status)?;
                            next.push(HubInput::Claimed {
                                claim,
                                acked_event_seq: site.acked_event_seq,
                            });
                        }
                        HubOutput::Welcome { acked_event_seq } => {
                            tracing::info!(
                                agent_version = %hello.agent_version,
                                acked_command_seq = hello.acked_command_seq,
                                hub_acked_event_seq = acked_event_seq,
                                "site link open"
                            );
                            self.send(hub_message::Body::Welcome(pb::Welcome {
                                site_id: self.site_id.clone(),
                                acked_event_seq,
                                heartbeat_interval_ms: config.heartbeat_interval_ms,
                                protocol_version: carrel_proto::protocol::current(),
                                trusted_ca_pem: self.hub.ca.trust_bundle(),
                                renew_certificate: self.renew.is_some(),
                                max_message_bytes: config.max_message_bytes as u64,
                                audit_head: self.hub.audit_head_pb(),
                            }))
                            .await?;
                            if let Some(reason) = &self.renew {
                                tracing::info!(%reason, "asked the site to renew its certificate");
                            }
                        }
                        HubOutput::CommitEvents { .. } => committing.start(&self),
                        HubOutput::EventAck { seq } => {
                            self.send(hub_message::Body::EventAck(pb::EventAck { seq }))
                                .await?
                        }
                        HubOutput::ReadCommands { after } => {
                            let commands = store
                                .commands_after(&self.site_id, after, COMMANDS_PER_MESSAGE)
                                .await
                                .map_err(status)?;
                            // A full message may leave more behind it.
                            let full = commands.len() == COMMANDS_PER_MESSAGE as usize;
                            let seqs = commands.iter().map(|c| c.seq).collect();
                            read = commands.iter().map(pb::HubCommand::from).collect();
                            next.push(HubInput::CommandsRead { seqs, full });
                        }
                        HubOutput::Commands { .. } => {
                            self.send(hub_message::Body::Commands(pb::HubCommandBatch {
                                commands: std::mem::take(&mut read),
                            }))
                            .await?
                        }
                        HubOutput::CheckClaim => {
                            let claim = store
                                .site_link_generation(&self.site_id)
                                .await
                                .map_err(status)?;
                            next.push(HubInput::ClaimRead { claim });
                        }
                        HubOutput::Heartbeat => {
                            let audit_head = (last_witness.elapsed() >= witness_every)
                                .then(|| self.hub.audit_head_pb())
                                .flatten();
                            if audit_head.is_some() {
                                last_witness = Instant::now();
                            }
                            self.send(hub_message::Body::Heartbeat(pb::Heartbeat {
                                sent_at_unix_ms: Utc::now().timestamp_millis() as u64,
                                audit_head,
                            }))
                            .await?;
                        }
                        HubOutput::Close(why) => {
                            // A refused run: its own status (with its code) ends the
                            // link, after the acknowledgement of what came before.
                            return Err(committing
                                .refusal
                                .take()
                                .unwrap_or_else(|| violation(why)));
                        }
                    }
                }
                for input in next.into_iter().rev() {
                    inputs.push_front(Input::Core(input));
                }
            }
            // Enough waits for the next run: nothing more is read until the run being
            // committed is done.
            if committing.busy && committing.next_run_full() {
                let outcome = done.recv().await.unwrap_or_default();
                inputs.push_back(Input::Core(committing.finished(outcome)));
                // The hub was not listening while it waited for its own commit
                // (behind every other site's, under load): that silence is the
                // hub's, not the site's. Without this, a commit queued longer than
                // heartbeat_timeout_ms closed a live link ("nothing heard from the
                // site"): 695 of 10,000 flooding sites lost their links in the
                // benchmark.
                last_heard = Instant::now();
                end.heard(now());
                continue;
            }
            tokio::select! {
                Some(outcome) = done.recv() => inputs.push_back(Input::Core(committing.finished(outcome))),
                _ = closed.cancelled() => {
                    return Err(Status::aborted("link closed by the hub: another connection of this site took over, or the site was suspended"));
                }
                _ = self.hub.shutdown.cancelled() => {
                    // The hub may be stopping because a commit of another task (the
                    // notifier, a person's request) failed: the site is told that too.
                    return Err(match crate::store::failure().reason() {
                        Some(why) => Status::unavailable(format!(
                            "the hub's store failed and the hub is stopping; what it did not acknowledge is not kept: {why}"
                        )),
                        None => Status::unavailable("the hub is shutting down"),
                    });
                }
                _ = notify.notified() => {
                    // A command was added, or the link claimed, here or at another
                    // replica.
                    inputs.push_back(Input::Core(HubInput::ClaimRead {
                        claim: store.site_link_generation(&self.site_id).await.map_err(status)?,
                    }));
                    inputs.push_back(Input::Core(HubInput::CommandIssued));
                }
                _ = ticker.tick() => {
                    let site = store.site(&self.site_id).await.map_err(status)?;
                    if site.status != SiteStatus::Active {
                        return Err(Status::permission_denied(format!("site {:?} is {}", self.site_id, site.status.as_str())));
                    }
                    // A commit of the site's events sets its last contact too: no
                    // write of its own (one fsync, under the write lock) while it streams.
                    let touched = committing.last_commit.map_or(last_touch, |at| at.max(last_touch));
                    if touched.elapsed() >= touch_every && last_heard.elapsed() < touch_every {
                        store.touch_site(&self.site_id, Utc::now()).await.map_err(status)?;
                        last_touch = Instant::now();
                    }
                    inputs.push_back(Input::Core(HubInput::Tick { now: now() }));
                }
                message = inbound.message() => {
                    last_heard = Instant::now();
                    end.heard(now());
                    let Some(message) = message? else {
                        // The site closed its side: what it sent is still committed.
                        while committing.busy {
                            let outcome = done.recv().await.unwrap_or_default();
                            let input = committing.finished(outcome);
                            for output in end.handle(input).map_err(violation)? {
                                match output {
                                    HubOutput::Close(why) => {
                                        return Err(committing.refusal.take().unwrap_or_else(|| violation(why)))
                                    }
                                    HubOutput::CommitEvents { .. } => committing.start(&self),
                                    HubOutput::EventAck { seq } => {
                                        // The site may still read its stream.
                                        let _ = self.send(hub_message::Body::EventAck(pb::EventAck { seq })).await;
                                    }
                                    _ => {}
                                }
                            }
                        }
                        return Ok(());
                    };
                    let over_rate = || Status::resource_exhausted(format!(
                        "site {:?} sent messages faster than its link allows \
                         (site_link_max_messages_per_second = {}, site_link_message_burst = {}); \
                         the link is closed",
                        self.site_id,
                        config.site_link_max_messages_per_second,
                        config.site_link_message_burst
                    ));
                    if !allowance.take(last_heard) {
                        return Err(over_rate());
                    }
                    if let Some(site_message::Body::Heartbeat(beat)) = &message.body {
                        if beat.audit_head.is_some()
                            && beat.audit_head != witnessed
                            && last_checked.elapsed() >= witness_every
                        {
                            last_checked = Instant::now();
                            witnessed = beat.audit_head.clone();
                            if let Some(head) = &witnessed {
                                self.hub.witnessed(&self.site_id, head).await;
                            }
                        }
                    }
                    let first = match message.body {
                        Some(site_message::Body::Events(first)) => first,
                        Some(site_message::Body::CommandAck(ack)) => {
                            inputs.push_back(Input::Core(HubInput::CommandAck { seq: ack.seq }));
                            continue;
                        }
                        Some(site_message::Body::Heartbeat(_)) => {
                            inputs.push_back(Input::Core(HubInput::Heard));
                            continue;
                        }
                        body => {
                            inputs.push_back(Input::Handle(pb::SiteMessage { body }));
                            continue;
                        }
                    };
                    // Event messages the site sent meanwhile and that already wait here
                    // are taken together with this one: one run, one transaction and
                    // one acknowledgement for the lot.
                    let mut held = first.events.len();
                    inputs.push_back(Input::Events(first));
                    while held < MAX_EVENTS_PER_MESSAGE {
                        // Only what is already here: polled once, never waited for.
                        let Some(ready) = inbound.message().now_or_never() else {
                            break;
                        };
                        let Some(message) = ready? else { break };
                        if !allowance.take(Instant::now()) {
                            return Err(over_rate());
                        }
                        match message.body {
                            Some(site_message::Body::Events(more))
                                if held + more.events.len() <= MAX_EVENTS_PER_MESSAGE =>
                            {
                                held += more.events.len();
                                inputs.push_back(Input::Events(more));
                            }
                            Some(site_message::Body::Events(more)) => {
                                inputs.push_back(Input::Events(more));
                                break;
                            }
                            body => {
                                inputs.push_back(Input::Handle(pb::SiteMessage { body }));
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Signs a renewal CSR from the site. The new certificate is pending until the
    /// site connects with it; the old one is accepted until then, so a lost answer
    /// does not lock the site out. A bad request is answered, not fatal to the link.
    async fn renew_certificate(&self, csr_pem: &str) -> pb::CertificateIssued {
        let refused = |error: String| {
            tracing::warn!(%error, "certificate renewal refused");
            pb::CertificateIssued {
                error,
                ..Default::default()
            }
        };
        let cert = match self.hub.sign_site_csr(csr_pem, &self.site_id) {
            Ok(cert) => cert,
            Err(e) => return refused(e.to_string()),
        };
        if let Err(e) = self
            .hub
            .store
            .record_renewed_certificate(&self.site_id, &issued(&cert), Utc::now())
            .await
        {
            return refused(format!("the hub could not record the certificate: {e}"));
        }
        tracing::info!(certificate = %cert.sha256, not_after = %cert.not_after, "site certificate renewed");
        pb::CertificateIssued {
            certificate_pem: cert.cert_pem,
            trusted_ca_pem: self.hub.ca.trust_bundle(),
            error: String::new(),
        }
    }

    /// Commits the events of one or more consecutive messages of the site. Should
    /// the messages together be refused, each is taken on its own, in order, so
    /// that what comes before a bad message is kept (and acknowledged) as if it had
    /// come alone, and the bad one gets its own answer.
    async fn commit_run(&self, run: Run) -> Outcome {
        let Run {
            events,
            ends,
            malformed,
        } = run;
        let mut outcome = Outcome::default();
        // What came before a malformed message is kept as if it had come alone.
        if ends.len() > 1 {
            // A refusal here is not audited: the messages are taken again one by
            // one below, and the one refused then is.
            if let Ok(acked) = self.ingest(&events, false).await {
                outcome.acked = Some(acked);
                outcome.refused = malformed;
                return outcome;
            }
        }
        let mut start = 0;
        for end in ends {
            match self.ingest(&events[start..end], true).await {
                Ok(acked) => outcome.acked = Some(acked),
                Err(refused) => {
                    outcome.refused = Some(refused);
                    return outcome;
                }
            }
            start = end;
        }
        outcome.refused = malformed;
        outcome
    }
}

/// How a run's commit ended: the site's events the store holds up to `acked`
/// (when any message was committed), and the refusal that ends the link, if any.
struct Outcome {
    acked: Option<u64>,
    refused: Option<Status>,
}

impl Default for Outcome {
    fn default() -> Outcome {
        Outcome {
            acked: None,
            refused: Some(Status::internal(
                "committing these events stopped; send them again",
            )),
        }
    }
}

/// The events of consecutive messages of a site, decoded and hashed, with where
/// each message ends, and the error of a malformed message that ended the run.
#[derive(Default)]
struct Run {
    events: Vec<Received>,
    ends: Vec<usize>,
    malformed: Option<Status>,
}

impl Run {
    /// Adds one message's events. After a malformed message nothing more is taken:
    /// the link ends once what came before it is committed.
    fn push(&mut self, batch: pb::SiteEventBatch) {
        if self.malformed.is_some() {
            return;
        }
        if batch.events.len() > MAX_EVENTS_PER_MESSAGE {
            self.malformed = Some(Status::invalid_argument(format!(
                "{} events in one message; at most {MAX_EVENTS_PER_MESSAGE}",
                batch.events.len()
            )));
            return;
        }
        let start = self.events.len();
        self.events.reserve(batch.events.len());
        for wire in batch.events {
            let seq = wire.seq;
            match SiteEvent::try_from(wire) {
                Ok(event) => self.events.push(Received::new(event)),
                Err(e) => {
                    self.events.truncate(start);
                    self.malformed =
                        Some(Status::invalid_argument(format!("event seq {seq}: {e}")));
                    return;
                }
            }
        }
        self.ends.push(self.events.len());
    }
}

/// A link's event runs: the one being committed, and the next one, which takes the
/// messages that arrive meanwhile. Messages are decoded and their events hashed
/// as they arrive, in the link's task, while the run before them commits. When a
/// run starts and when it is done is the protocol end's decision (`CommitEvents`,
/// `EventsCommitted`); this holds the events.
struct Committing {
    /// A run is being committed; its outcome comes through `done`.
    busy: bool,
    waiting: Run,
    done: mpsc::Sender<Outcome>,
    /// When a run was last committed (which also records the site's last contact).
    last_commit: Option<Instant>,
    /// The refusal of the last run, which ends the link with its own status.
    refusal: Option<Status>,
}

impl Committing {
    /// Enough waits for the next run (or it ends with a malformed message): nothing
    /// more is read until the run being committed is done.
    fn next_run_full(&self) -> bool {
        self.waiting.malformed.is_some() || self.waiting.events.len() >= MAX_EVENTS_PER_MESSAGE
    }

    /// The outcome of the run being committed, as the protocol end's input.
    fn finished(&mut self, outcome: Outcome) -> HubInput {
        self.busy = false;
        match outcome.refused {
            Some(refused) => {
                let why = refused.message().to_owned();
                self.refusal = Some(refused);
                HubInput::EventsRefused {
                    acked_event_seq: outcome.acked,
                    why,
                }
            }
            None => {
                self.last_commit = Some(Instant::now());
                HubInput::EventsCommitted {
                    acked_event_seq: outcome.acked.unwrap_or_default(),
                }
            }
        }
    }

    /// Commits what waits, in a task of its own.
    fn start(&mut self, link: &Link) {
        let run = std::mem::take(&mut self.waiting);
        self.busy = true;
        let (link, done) = (link.clone(), self.done.clone());
        tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(link.commit_run(run))
                .catch_unwind()
                .await
                .unwrap_or_default();
            let _ = done.send(outcome).await;
        });
    }
}

/// What the link's loop takes next: an input of the protocol's end, a message of
/// the site's events (decoded into the next run as the end is told of it), or a
/// message handled here (a certificate request, or one that ends the link).
enum Input {
    Core(HubInput),
    Events(pb::SiteEventBatch),
    Handle(pb::SiteMessage),
}

/// The status a protocol violation ends the link with.
fn violation(v: Violation) -> Status {
    match v {
        Violation::Silent(ms) => {
            Status::deadline_exceeded(format!("nothing heard from the site for {ms} ms"))
        }
        Violation::ClaimLost => Status::aborted(v.to_string()),
        Violation::SiteAhead { .. } => Status::failed_precondition(v.to_string()),
        Violation::Refused(why) => Status::invalid_argument(why),
        v => Status::invalid_argument(v.to_string()),
    }
}

impl Link {
    /// Commits one run of the site's events: the site's events the store now holds
    /// (up to the seq returned). A refusal for authority reasons is audited when
    /// `audit` says so.
    async fn ingest(&self, events: &[Received], audit: bool) -> Result<u64, Status> {
        let store = &self.hub.store;
        let started = std::time::Instant::now();
        let ingested = match store.ingest_events(&self.site_id, events, Utc::now()).await {
            Ok(ingested) => ingested,
            // Records for a batch that is not the site's own: a matter of
            // authority, so it goes into the audit trail.
            Err(store::Error::PermissionDenied(why)) if audit => {
                self.hub
                    .audit_refusal(
                        "events",
                        NewEntry::new(
                            &self.site_id,
                            Action::SiteEventsRefused,
                            Object::Site(self.site_id.clone()),
                        )
                        .reason(&why),
                    )
                    .await;
                return Err(Status::permission_denied(why));
            }
            Err(store::Error::PermissionDenied(why)) => return Err(Status::permission_denied(why)),
            Err(e) => return Err(status(e)),
        };
        self.hub.commit_latency.observe(started.elapsed());
        tracing::debug!(
            acked = ingested.acked_event_seq,
            new = ingested.new_events,
            "events committed"
        );
        let batches: BTreeSet<_> = events.iter().map(|e| e.event().batch_id).collect();
        for batch_id in batches {
            let _ = self.hub.changes.send(batch_id);
        }
        Ok(ingested.acked_event_seq)
    }

    async fn handle(&self, message: pb::SiteMessage) -> Result<(), Status> {
        let store = &self.hub.store;
        match message.body {
            Some(site_message::Body::Events(_)) => Err(Status::internal(
                "event messages are committed in order by the link, not here",
            )),
            Some(site_message::Body::CommandAck(ack)) => store
                .ack_commands(&self.site_id, ack.seq)
                .await
                .map_err(status),
            Some(site_message::Body::Heartbeat(_)) => Ok(()),
            Some(site_message::Body::CertificateRequest(request)) => {
                let answer = self.renew_certificate(&request.csr_pem).await;
                self.send(hub_message::Body::CertificateIssued(answer))
                    .await
            }
            Some(site_message::Body::Hello(_)) => Err(Status::invalid_argument(
                "Hello was already received on this stream",
            )),
            None => Err(Status::invalid_argument(
                "a message without a body (unknown message type?)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Allowance;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn the_allowance_is_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut allowance = Allowance::new(10, 5, start);
        assert_eq!((0..5).filter(|_| allowance.take(start)).count(), 5);
        assert!(!allowance.take(start), "the burst is spent");
        // A tenth of a second later, one more; a second later, ten more, not fifteen.
        assert!(allowance.take(start + Duration::from_millis(100)));
        assert!(!allowance.take(start + Duration::from_millis(100)));
        let later = start + Duration::from_millis(1_100);
        assert_eq!((0..20).filter(|_| allowance.take(later)).count(), 5);
        let much_later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| allowance.take(much_later)).count(), 5);
    }
}

//! The link to the hub: one outbound mutual-TLS gRPC stream that replicates the
//! site's event log up and the hub's command log down (invariant 3).
//!
//! Architecture invariants: the agent dials, never listens for the hub; an event is
//! sent only after it is committed locally; a command is acknowledged only after it
//! is committed locally; after any disconnect both sides resume from the cursor the
//! other acknowledged, so nothing is lost and nothing is applied twice.

use crate::store::Store;
use crate::tls;
use carrel_proto::event::HubCommand;
use carrel_proto::link::{Limits, SiteEnd, SiteInput, SiteOutput, Violation};
use carrel_proto::pb;
use carrel_proto::pb::{hub_message, site_message};
use carrel_proto::suspension::Suspension;
use rand::Rng;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Events sent but not yet acknowledged, at most.
const WINDOW: u64 = 10_000;

/// How often, at most, the hub's acknowledgement is saved in the local store while
/// acknowledgements stream in (the link state others watch is updated on each).
const NOTE_ACKED_EVERY: Duration = Duration::from_secs(1);

/// What the hub reads at most in one message when its Welcome does not say.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The longest run of `events`, from the first, whose message stays within the
/// hub's `max_message_bytes`. An event too big to go alone is an error that names it
/// (the hub would refuse it, and the link could not get past it).
fn fit(
    mut events: Vec<pb::SiteEvent>,
    max_message_bytes: usize,
) -> Result<Vec<pb::SiteEvent>, Error> {
    use prost::Message;
    // The batch's own framing: a tag and a length for the batch and for each event.
    const FRAMING: usize = 1 + 10;
    let mut size = FRAMING;
    for (i, event) in events.iter().enumerate() {
        size += FRAMING + event.encoded_len();
        if size > max_message_bytes {
            if i == 0 {
                return Err(Error::Protocol(format!(
                    "event seq {} is {} bytes, more than the hub reads in one message ({max_message_bytes} bytes, \
                     its max_message_bytes); raise that setting at the hub",
                    event.seq,
                    event.encoded_len()
                )));
            }
            events.truncate(i);
            break;
        }
    }
    Ok(events)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("hub: {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("local store: {0}")]
    Store(#[from] crate::store::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("nothing heard from the hub for {0:?}")]
    Silent(Duration),
    #[error("site identity: {0}")]
    Identity(String),
    #[error("the hub refuses the link: this site is {}", .0.describe())]
    Suspended(Suspension),
}

/// How a session ended without an error.
enum Ended {
    Closed,
    /// The certificate was renewed: reconnect with it at once.
    Renewed,
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        if let Some(suspension) = Suspension::of(&s) {
            return Error::Suspended(suspension);
        }
        Error::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// What the rest of the agent can see of the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub connected: bool,
    pub hub_acked_event_seq: u64,
    pub last_error: Option<String>,
    /// The hub's word that this site is suspended (kept in the store too).
    pub suspended: Option<Suspension>,
}

/// Keeping the site's identity current over the link: the CA bundle the hub sends,
/// and certificate renewal (when the hub asks, or a third of the lifetime is left).
pub struct Renewal {
    data_dir: std::path::PathBuf,
    state: std::sync::Mutex<RenewalState>,
}

#[derive(Default)]
struct RenewalState {
    /// TLS with the identity as it now stands, once it changed since start.
    tls: Option<Arc<ClientConfig>>,
    last_attempt: Option<Instant>,
}

/// Renewals are not asked more often than this, whatever the hub says.
const RENEWAL_RETRY: Duration = Duration::from_secs(600);

impl Renewal {
    pub fn new(data_dir: std::path::PathBuf) -> Renewal {
        Renewal {
            data_dir,
            state: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RenewalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the hub's CA bundle; later connections trust it.
    fn trust(&self, pem: &str) -> Result<(), Error> {
        if pem.trim().is_empty() {
            return Ok(());
        }
        if crate::identity::store_trust_bundle(&self.data_dir, pem).map_err(identity_error)? {
            let identity =
                crate::identity::Identity::load(&self.data_dir).map_err(identity_error)?;
            self.lock().tls = Some(identity.tls().map_err(identity_error)?);
            tracing::info!("the hub's CA bundle changed; it is trusted from the next connection");
        }
        Ok(())
    }

    /// A CSR to send, when the certificate should be renewed now.
    fn request(&self, hub_asked: bool) -> Result<Option<String>, Error> {
        let identity = crate::identity::Identity::load(&self.data_dir).map_err(identity_error)?;
        let due = identity.due_for_renewal(chrono::Utc::now().timestamp());
        if !(hub_asked || due) {
            return Ok(None);
        }
        let mut state = self.lock();
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < RENEWAL_RETRY)
        {
            return Ok(None);
        }
        state.last_attempt = Some(Instant::now());
        tracing::info!(hub_asked, due, "renewing the site certificate");
        crate::identity::begin_renewal(&self.data_dir)
            .map(Some)
            .map_err(identity_error)
    }

    /// Takes the renewed certificate; the TLS to reconnect with.
    fn complete(&self, issued: &pb::CertificateIssued) -> Result<Arc<ClientConfig>, Error> {
        let identity = crate::identity::complete_renewal(
            &self.data_dir,
            &issued.certificate_pem,
            &issued.trusted_ca_pem,
        )
        .map_err(identity_error)?;
        let tls = identity.tls().map_err(identity_error)?;
        self.lock().tls = Some(tls.clone());
        Ok(tls)
    }
}

fn identity_error(e: crate::identity::Error) -> Error {
    Error::Identity(e.to_string())
}

pub struct Link {
    pub store: Arc<Store>,
    /// Hub addresses, tried in turn: when the link to one is lost, the next one is
    /// dialled (several hub replicas on one database).
    pub hubs: Vec<String>,
    pub tls: Arc<ClientConfig>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub heartbeat_timeout: Duration,
    pub events_per_message: usize,
    pub state: watch::Sender<LinkState>,
    /// The connection to the hub while the link is up, for the console's other
    /// calls (the golden batch); `None` while it is down.
    pub hub_channel: watch::Sender<Option<tonic::transport::Channel>>,
    /// Identity upkeep; `None` keeps the identity the link started with.
    pub renewal: Option<Renewal>,
}

impl Link {
    /// Keeps the link up until `shutdown`: reconnects with exponential backoff and jitter.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.reconnect_min;
        let mut next = 0;
        loop {
            let started = Instant::now();
            let hub = &self.hubs[next % self.hubs.len()];
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.session(hub, &shutdown) => result,
            };
            // A link that got as far as Welcome worked: the next failure starts the
            // backoff from the beginning.
            let was_up = self.state.borrow().connected;
            self.state.send_modify(|s| s.connected = false);
            self.hub_channel.send_replace(None);
            match result {
                Ok(Ended::Renewed) => {
                    tracing::info!("reconnecting with the renewed certificate");
                    backoff = self.reconnect_min;
                    continue;
                }
                Ok(Ended::Closed) => tracing::info!("link to the hub closed"),
                Err(Error::Suspended(suspension)) => {
                    // Kept, so that new steps and bedside hand-over stay refused while
                    // the hub cannot be reached, and the console says why.
                    tracing::warn!(%hub, suspended_by = %suspension.by, reason = %suspension.reason, "the hub refuses the link: this site is suspended");
                    if let Err(e) = self.store.set_suspension(Some(&suspension)).await {
                        tracing::error!(error = %e, "cannot keep the hub's suspension of this site");
                    }
                    next += 1;
                    let error = Error::Suspended(suspension.clone()).to_string();
                    self.state.send_modify(|s| {
                        s.last_error = Some(error);
                        s.suspended = Some(suspension);
                    });
                }
                Err(e) => {
                    tracing::warn!(%hub, error = %e, "link to the hub lost");
                    // Try the next replica; with one address this is the same hub.
                    next += 1;
                    self.state
                        .send_modify(|s| s.last_error = Some(e.to_string()));
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            if was_up || started.elapsed() > self.reconnect_max {
                backoff = self.reconnect_min;
            }
            // Another replica is worth trying at once; the backoff applies per round.
            if next % self.hubs.len() != 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.reconnect_min) => {}
                }
                continue;
            }
            let jitter = rand::thread_rng().gen_range(0.5..1.0);
            let delay = backoff.mul_f64(jitter);
            tracing::debug!(?delay, "reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            backoff = (backoff * 2).min(self.reconnect_max);
        }
    }

    /// Witnesses a head of the hub's audit trail: kept in the site's store when it
    /// differs from the last one, and reported from then on.
    async fn witness(
        &self,
        witnessed: &mut Option<(u64, String)>,
        sent: &pb::AuditHead,
    ) -> Result<(), Error> {
        let head = (sent.position, sent.sha256.clone());
        if sent.sha256.is_empty() || witnessed.as_ref() == Some(&head) {
            return Ok(());
        }
        self.store
            .witness_audit_head(sent.position, &sent.sha256)
            .await?;
        *witnessed = Some(head);
        Ok(())
    }

    /// Keeps the hub's acknowledgement for status and metrics. It is not needed for
    /// correctness (the hub's Welcome is the authority), so a failure to save it, for
    /// example on a full disk, must not stop replication of what is already recorded.
    async fn note_acked(&self, acked: u64) {
        if let Err(e) = self.store.set_hub_acked(acked).await {
            tracing::warn!(error = %e, acked, "cannot note the hub's acknowledgement locally; replication goes on");
        }
    }

    /// TLS with the site's identity as it now stands.
    fn tls(&self) -> Arc<ClientConfig> {
        self.renewal
            .as_ref()
            .and_then(|r| r.lock().tls.clone())
            .unwrap_or_else(|| self.tls.clone())
    }

    async fn session(&self, hub: &str, shutdown: &CancellationToken) -> Result<Ended, Error> {
        let channel = tls::connect(
            tls::Peer::Hub,
            hub,
            None,
            self.tls(),
            Duration::from_secs(5),
        )
        .await?;
        let mut client = pb::site_link_service_client::SiteLinkServiceClient::new(channel.clone());
        let (out, out_rx) = mpsc::channel::<pb::SiteMessage>(16);
        let send = |body| {
            let out = out.clone();
            async move {
                out.send(pb::SiteMessage { body: Some(body) })
                    .await
                    .map_err(|_| Error::Protocol("outbound stream closed".into()))
            }
        };
        let last_event_seq = self.store.last_event_seq().await?;
        // The protocol's decisions (what to send next, when to acknowledge, what to
        // refuse) are the sans-IO end's; this loop carries them out.
        let mut end = SiteEnd::new(
            last_event_seq,
            self.store.last_command_seq().await?,
            Limits {
                window: WINDOW,
                per_message: self.events_per_message as u64,
                silence_ms: self.heartbeat_timeout.as_millis() as u64,
            },
        );
        let base = Instant::now();
        let now = || base.elapsed().as_millis() as u64;
        let violation = |v: Violation| match v {
            Violation::Silent(_) => Error::Silent(self.heartbeat_timeout),
            v => Error::Protocol(v.to_string()),
        };
        // The last head of the hub's audit trail witnessed here: the hub checks it
        // against its trail before it sends a newer one.
        let mut witnessed = self.store.last_witnessed_audit_head().await?;
        let head = |w: &Option<(u64, String)>| {
            w.as_ref().map(|(position, sha256)| pb::AuditHead {
                position: *position,
                sha256: sha256.clone(),
            })
        };
        for output in end
            .handle(SiteInput::Opened { now: now() })
            .map_err(violation)?
        {
            if let SiteOutput::Hello {
                acked_command_seq,
                last_event_seq,
            } = output
            {
                send(site_message::Body::Hello(pb::Hello {
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    acked_command_seq,
                    protocol_version: carrel_proto::protocol::current(),
                    last_event_seq,
                    witnessed_audit_head: head(&witnessed),
                }))
                .await?;
            }
        }
        let mut inbound = client.sync(ReceiverStream::new(out_rx)).await?.into_inner();
        let welcome = match tokio::time::timeout(self.heartbeat_timeout, inbound.message()).await {
            Err(_) => return Err(Error::Silent(self.heartbeat_timeout)),
            Ok(message) => match message?.and_then(|m| m.body) {
                Some(hub_message::Body::Welcome(w)) => w,
                _ => return Err(violation(Violation::NoWelcome)),
            },
        };
        end.heard(now());
        carrel_proto::protocol::check(&welcome.protocol_version)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let mut outputs = end
            .handle(SiteInput::Welcome {
                acked_event_seq: welcome.acked_event_seq,
            })
            .map_err(violation)?;
        if let Some(sent) = &welcome.audit_head {
            self.witness(&mut witnessed, sent).await?;
        }
        self.hub_channel.send_replace(Some(channel));
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        let max_message_bytes = match welcome.max_message_bytes {
            0 => DEFAULT_MAX_MESSAGE_BYTES,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        // The hub accepted the link: whatever suspension the site knew of is over.
        if self.store.suspension().await?.is_some() {
            self.store.set_suspension(None).await?;
            tracing::info!("the hub accepted the link: this site is no longer suspended");
        }
        let acked = welcome.acked_event_seq;
        self.note_acked(acked).await;
        // What was last saved of the hub's acknowledgement, and when.
        let (mut noted, mut noted_at) = (acked, Instant::now());
        self.state.send_modify(|s| {
            s.connected = true;
            s.hub_acked_event_seq = acked;
            s.last_error = None;
            s.suspended = None;
        });
        tracing::info!(site_id = %welcome.site_id, hub_acked = acked, local_last = last_event_seq, "link to the hub up");
        tracing::info!(%hub, "connected");
        if let Some(renewal) = &self.renewal {
            renewal.trust(&welcome.trusted_ca_pem)?;
            if let Some(csr_pem) = renewal.request(welcome.renew_certificate)? {
                send(site_message::Body::CertificateRequest(
                    pb::CertificateRequest { csr_pem },
                ))
                .await?;
            }
        }

        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Commands received and not yet committed (the end asks to commit them).
        let mut received: Vec<HubCommand> = Vec::new();
        loop {
            // How far the local log goes, asked at every turn: records appended by
            // this process notify `appended`, but a command-line tool writing to the
            // same file cannot, and is sent within a heartbeat all the same.
            let logged = self.store.last_event_seq().await?;
            outputs.extend(
                end.handle(SiteInput::EventLogged { seq: logged })
                    .map_err(violation)?,
            );
            // Carry out what the end asked for; some outputs give it new inputs.
            let mut queue = std::collections::VecDeque::from(std::mem::take(&mut outputs));
            while let Some(output) = queue.pop_front() {
                let more = match output {
                    SiteOutput::SendEvents { after, limit } => {
                        let events = self.store.events_after(after, limit as usize).await?;
                        let events = fit(
                            events.into_iter().map(pb::SiteEvent::from).collect(),
                            max_message_bytes,
                        )?;
                        let last = events.last().map(|e| e.seq);
                        if last.is_some() {
                            send(site_message::Body::Events(pb::SiteEventBatch { events })).await?;
                        }
                        end.handle(SiteInput::EventsSent { last })
                    }
                    SiteOutput::Acked { seq } => {
                        self.state.send_modify(|s| s.hub_acked_event_seq = seq);
                        // Saved at most once a second (and on the next heartbeat):
                        // one durable write per acknowledgement would cost the site
                        // an fsync per message, and competes with recording.
                        if noted_at.elapsed() >= NOTE_ACKED_EVERY {
                            self.note_acked(seq).await;
                            (noted, noted_at) = (seq, Instant::now());
                        }
                        continue;
                    }
                    SiteOutput::CommitCommands { .. } => {
                        let mut last = 0;
                        for command in received.drain(..) {
                            let applied = self.store.apply_command(&command).await?;
                            tracing::info!(seq = command.seq, kind = command.kind.name(), batch_id = %command.batch_id, ?applied, "hub command committed");
                            last = command.seq;
                        }
                        end.handle(SiteInput::CommandsCommitted { last })
                    }
                    SiteOutput::CommandAck { seq } => {
                        send(site_message::Body::CommandAck(pb::CommandAck { seq })).await?;
                        continue;
                    }
                    SiteOutput::Heartbeat => {
                        send(site_message::Body::Heartbeat(pb::Heartbeat {
                            sent_at_unix_ms: chrono::Utc::now().timestamp_millis() as u64,
                            audit_head: head(&witnessed),
                        }))
                        .await?;
                        continue;
                    }
                    SiteOutput::Hello { .. } => continue,
                };
                queue.extend(more.map_err(violation)?);
            }
            let input = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Closed),
                // The next turn reads how far the log goes.
                _ = self.store.appended() => continue,
                _ = ticker.tick() => {
                    if let Some(acked) = end.acked().filter(|a| noted < *a) {
                        self.note_acked(acked).await;
                        (noted, noted_at) = (acked, Instant::now());
                    }
                    SiteInput::Tick { now: now() }
                }
                message = inbound.message() => {
                    end.heard(now());
                    let Some(message) = message? else { return Ok(Ended::Closed) };
                    match message.body {
                        Some(hub_message::Body::Commands(batch)) => {
                            let mut seqs = Vec::with_capacity(batch.commands.len());
                            for wire in batch.commands {
                                let seq = wire.seq;
                                let command = HubCommand::try_from(wire)
                                    .map_err(|e| Error::Protocol(format!("hub command {seq}: {e}")))?;
                                seqs.push(seq);
                                received.push(command);
                            }
                            SiteInput::Commands { seqs }
                        }
                        Some(hub_message::Body::EventAck(ack)) => SiteInput::EventAck { seq: ack.seq },
                        Some(hub_message::Body::Heartbeat(beat)) => {
                            if let Some(sent) = &beat.audit_head {
                                self.witness(&mut witnessed, sent).await?;
                            }
                            SiteInput::Heard
                        }
                        Some(hub_message::Body::CertificateIssued(issued)) => {
                            match &self.renewal {
                                Some(renewal) if issued.error.is_empty() => {
                                    renewal.complete(&issued)?;
                                    tracing::info!("site certificate renewed");
                                    return Ok(Ended::Renewed);
                                }
                                Some(_) => tracing::warn!(error = %issued.error, "the hub refused to renew the site certificate; the current one is kept"),
                                None => tracing::warn!("a certificate from the hub that this link did not ask for; ignored"),
                            }
                            SiteInput::Heard
                        }
                        Some(hub_message::Body::Welcome(_)) => SiteInput::Welcome { acked_event_seq: 0 },
                        None => return Err(Error::Protocol("a hub message without a body".into())),
                    }
                }
            };
            outputs = end.handle(input).map_err(violation)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn event(seq: u64, size: usize) -> pb::SiteEvent {
        pb::SiteEvent {
            seq,
            recorded_by: "x".repeat(size),
            ..Default::default()
        }
    }

    #[test]
    fn batches_fit_in_the_hubs_message_limit() {
        let events: Vec<_> = (1..=10).map(|seq| event(seq, 1_000)).collect();
        let fitted = fit(events.clone(), 3_500).expect("fits");
        assert_eq!(fitted.len(), 3);
        let message = pb::SiteMessage {
            body: Some(site_message::Body::Events(pb::SiteEventBatch {
                events: fitted,
            })),
        };
        assert!(message.encoded_len() <= 3_500);
        assert_eq!(fit(events.clone(), 1 << 20).expect("fits").len(), 10);
        let too_big = fit(events, 900).expect_err("one event is too big");
        assert!(too_big.to_string().contains("event seq 1 is"), "{too_big}");
    }
}

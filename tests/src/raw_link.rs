//! A hand-driven site link: the test speaks `SiteLinkService.Sync` itself, with a
//! site's real credentials (or forged ones), to send what a broken, hostile or
//! clock-skewed agent might.

use crate::Hub;
use carrel_proto::event::{EventKind, Identity, SiteEvent, GENESIS_SHA256};
use carrel_proto::pb;
use carrel_proto::pb::{hub_message, site_message};
use chrono::{DateTime, Utc};
use std::path::Path;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

/// The PEM credentials a site presents.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The CA the client trusts for the hub's certificate.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Credentials {
    /// The credentials an enrolled agent keeps in its data directory.
    pub fn of_agent(agent_dir: &Path) -> Credentials {
        let identity = carrel_site_agent::identity::Identity::load(agent_dir).expect("identity");
        Credentials {
            ca_pem: identity.ca_pem,
            cert_pem: identity.cert_pem,
            key_pem: identity.key_pem,
        }
    }
}

/// One open Sync stream.
pub struct RawLink {
    pub out: tokio::sync::mpsc::Sender<pb::SiteMessage>,
    pub inbound: tonic::Streaming<pb::HubMessage>,
}

/// Why a link could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The connection (TCP or the TLS handshake) failed.
    Connect(String),
    /// The hub answered the call with a status.
    Status(tonic::Status),
}

impl RawLink {
    /// Opens Sync with `credentials`, sending `first` as the first message.
    pub async fn open_with(
        hub: &Hub,
        credentials: &Credentials,
        first: site_message::Body,
    ) -> Result<RawLink, OpenError> {
        let tls = carrel_site_agent::tls::mtls_config(
            &credentials.ca_pem,
            &credentials.cert_pem,
            &credentials.key_pem,
        )
        .map_err(|e| OpenError::Connect(e.to_string()))?;
        let channel = carrel_site_agent::tls::connect(
            carrel_site_agent::tls::Peer::Hub,
            &hub.url(),
            None,
            tls,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| OpenError::Connect(format!("{e:?}")))?;
        let (out, rx) = tokio::sync::mpsc::channel(64);
        out.send(pb::SiteMessage { body: Some(first) })
            .await
            .expect("send");
        let inbound = pb::site_link_service_client::SiteLinkServiceClient::new(channel)
            .sync(ReceiverStream::new(rx))
            .await
            .map_err(OpenError::Status)?
            .into_inner();
        Ok(RawLink { out, inbound })
    }

    /// Opens Sync with an agent's real credentials.
    pub async fn open(
        hub: &Hub,
        agent_dir: &Path,
        first: site_message::Body,
    ) -> Result<RawLink, tonic::Status> {
        match Self::open_with(hub, &Credentials::of_agent(agent_dir), first).await {
            Ok(link) => Ok(link),
            Err(OpenError::Status(status)) => Err(status),
            Err(OpenError::Connect(e)) => panic!("cannot connect to the hub: {e}"),
        }
    }

    /// Opens Sync with Hello and returns the Welcome.
    pub async fn hello(hub: &Hub, agent_dir: &Path) -> (RawLink, pb::Welcome) {
        let mut link = RawLink::open(hub, agent_dir, hello()).await.expect("open");
        match link.next().await.expect("welcome").body {
            Some(hub_message::Body::Welcome(w)) => (link, w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub async fn send(&self, body: site_message::Body) {
        let _ = self.out.send(pb::SiteMessage { body: Some(body) }).await;
    }

    /// The next message that is not a heartbeat or a command batch.
    pub async fn next(&mut self) -> Result<pb::HubMessage, tonic::Status> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.inbound.message())
                .await
                .expect("an answer within 10 s")?
                .ok_or_else(|| tonic::Status::cancelled("stream ended"))?;
            if !matches!(
                message.body,
                Some(hub_message::Body::Heartbeat(_)) | Some(hub_message::Body::Commands(_))
            ) {
                return Ok(message);
            }
        }
    }

    /// Waits for the acknowledgement of event `seq`.
    pub async fn expect_ack(&mut self, seq: u64) {
        match self.next().await {
            Ok(pb::HubMessage {
                body: Some(hub_message::Body::EventAck(ack)),
            }) => assert_eq!(ack.seq, seq, "acknowledged seq"),
            other => panic!("expected the ack of {seq}, got {other:?}"),
        }
    }
}

pub fn hello() -> site_message::Body {
    site_message::Body::Hello(pb::Hello {
        protocol_version: carrel_proto::protocol::current(),
        agent_version: "test".into(),
        acked_command_seq: 0,
        last_event_seq: 0,
        witnessed_audit_head: None,
    })
}

pub fn events_body(list: Vec<pb::SiteEvent>) -> site_message::Body {
    site_message::Body::Events(pb::SiteEventBatch { events: list })
}

/// Builds a site's log as a real agent does: consecutive seqs, each event carrying
/// the SHA-256 of the one before, at whatever time the test says the site's clock
/// shows.
#[derive(Debug)]
pub struct SiteLog {
    next_seq: u64,
    prev_sha256: String,
    pub recorded_by: String,
    /// How the records say the site knew who made them.
    pub identity: Identity,
}

impl Default for SiteLog {
    fn default() -> Self {
        SiteLog {
            next_seq: 1,
            prev_sha256: GENESIS_SHA256.into(),
            recorded_by: "agent".into(),
            identity: Identity::Agent,
        }
    }
}

impl SiteLog {
    pub fn event(
        &mut self,
        batch_id: Uuid,
        recorded_at: DateTime<Utc>,
        kind: EventKind,
    ) -> SiteEvent {
        let event = SiteEvent {
            seq: self.next_seq,
            event_id: Uuid::now_v7(),
            recorded_at,
            batch_id,
            recorded_by: self.recorded_by.clone(),
            prev_sha256: self.prev_sha256.clone(),
            identity: self.identity,
            kind,
        };
        self.next_seq += 1;
        self.prev_sha256 = event.sha256();
        event
    }
}

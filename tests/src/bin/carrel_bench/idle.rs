//! Figure 4's fleet of idle sites, run in a child process (`carrel-bench idle-fleet`)
//! so that the hub's memory can be read from this process alone, and so each side
//! has its own file-descriptor budget (one TLS connection per site on each side).
//!
//! An idle site has nothing to replicate, so it needs no store: each one speaks the
//! real Sync protocol over its own mutual-TLS connection with its own certificate
//! (Hello, Welcome, heartbeats both ways), and notes when the hub's heartbeats
//! arrive. (The real `Link` keeps an agent store open, and the SQLite driver runs a
//! thread per connection: ten thousand of them in one process would measure thread
//! stacks, not the hub.)

use crate::stats;
use anyhow::Context;
use carrel_proto::pb;
use carrel_proto::pb::{hub_message, site_message};
use carrel_site_agent::{identity, tls};
use serde_json::json;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hub address (https://host:port).
    #[arg(long)]
    hub: String,
    /// File with one enrolled site data directory per line.
    #[arg(long)]
    list: PathBuf,
    /// Seconds to stay connected once every site is up, measuring heartbeats.
    #[arg(long)]
    window: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Streams that ended after they were up (refused, timed out, reset).
    lost: AtomicUsize,
}

/// Runs the idle fleet; prints `connected ...` once all sites are up, `result {json}`
/// after the window, then waits for a line (or EOF) on standard input and exits.
pub fn run(args: Args) -> anyhow::Result<()> {
    child_runtime("idle-fleet")?.block_on(fleet(args))
}

/// The runtime of a fleet child process (two workers, as many files as allowed).
pub fn child_runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    crate::raise_fd_limit();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// The non-empty lines of a fleet's list file.
pub fn list_lines(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

async fn fleet(args: Args) -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = list_lines(&args.list)?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let counters = Arc::new(Counters::default());
    let arrivals: Arc<Mutex<Vec<Vec<Instant>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); dirs.len()]));
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut up = Vec::new();
    for (index, dir) in dirs.into_iter().enumerate() {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        up.push(ready_rx);
        tokio::spawn(site(
            args.hub.clone(),
            dir,
            index,
            gate.clone(),
            counters.clone(),
            arrivals.clone(),
            stop.clone(),
            ready_tx,
        ));
    }
    for ready in up {
        let _ = ready.await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = counters.connected.load(Ordering::SeqCst);
    println!(
        "connected {connected} failed {} secs {connect_secs:.2}",
        counters.failed.load(Ordering::SeqCst)
    );
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.window)).await;
    let window_end = Instant::now();
    let mut gaps = Vec::new();
    let mut silent = 0usize;
    {
        let arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
        for site in arrivals.iter() {
            let inside: Vec<Instant> = site
                .iter()
                .copied()
                .filter(|t| *t >= window_start && *t <= window_end)
                .collect();
            if inside.is_empty() {
                silent += 1;
            }
            // The window's edges count: a site that hears nothing for the whole
            // window has one gap as long as the window, not none.
            let points: Vec<Instant> = std::iter::once(window_start)
                .chain(inside)
                .chain(std::iter::once(window_end))
                .collect();
            gaps.extend(points.windows(2).map(|w| w[1].duration_since(w[0])));
        }
    }
    let heartbeats = gaps.len();
    let gap = stats::latency(&mut gaps);
    let result = json!({
        "sites": arrivals.lock().map(|a| a.len()).unwrap_or(0),
        "connected": connected,
        "failed": counters.failed.load(Ordering::SeqCst),
        "lost": counters.lost.load(Ordering::SeqCst),
        "connect_secs": connect_secs,
        "window_secs": window_end.duration_since(window_start).as_secs_f64(),
        "heartbeat_gaps": heartbeats,
        "heartbeat_gap_p50_ms": gap.p50,
        "heartbeat_gap_p99_ms": gap.p99,
        "heartbeat_gap_max_ms": gap.max,
        "sites_without_heartbeat_in_window": silent,
        "client_rss_kib": stats::rss_kib(None).unwrap_or(0),
    });
    println!("result {result}");
    // Stay connected until the parent has read the hub's memory.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await;
    stop.cancel();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn site(
    hub: String,
    dir: PathBuf,
    index: usize,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
    arrivals: Arc<Mutex<Vec<Vec<Instant>>>>,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let permit = gate.acquire_owned().await;
    let opened = open(&hub, &dir, "carrel-bench-idle").await;
    drop(permit);
    let (out, mut inbound, interval) = match opened {
        Ok(link) => {
            counters.connected.fetch_add(1, Ordering::SeqCst);
            link
        }
        Err(e) => {
            if counters.failed.fetch_add(1, Ordering::SeqCst) < 5 {
                eprintln!("idle site {}: {e:#}", dir.display());
            }
            let _ = ready.send(());
            return;
        }
    };
    let _ = ready.send(());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                let beat = pb::SiteMessage { body: Some(site_message::Body::Heartbeat(pb::Heartbeat {
                    sent_at_unix_ms: chrono::Utc::now().timestamp_millis() as u64,
                    audit_head: None,
                })) };
                if out.send(beat).await.is_err() {
                    counters.lost.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            message = inbound.message() => match message {
                Ok(Some(pb::HubMessage { body: Some(hub_message::Body::Heartbeat(_)) })) => {
                    let now = Instant::now();
                    if let Ok(mut all) = arrivals.lock() {
                        all[index].push(now);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    counters.lost.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

pub type Open = (
    mpsc::Sender<pb::SiteMessage>,
    tonic::Streaming<pb::HubMessage>,
    Duration,
);

/// One site's TLS connection (its own certificate) and Sync stream, up to Welcome:
/// the stream's sender, the hub's messages and the heartbeat interval.
pub async fn open(hub: &str, dir: &std::path::Path, agent_version: &str) -> anyhow::Result<Open> {
    let identity = identity::Identity::load(dir)?;
    let config = tls::mtls_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    let channel = tls::connect(tls::Peer::Hub, hub, None, config, Duration::from_secs(60)).await?;
    let mut client = pb::site_link_service_client::SiteLinkServiceClient::new(channel);
    let (out, out_rx) = mpsc::channel(4);
    out.send(pb::SiteMessage {
        body: Some(site_message::Body::Hello(pb::Hello {
            protocol_version: carrel_proto::protocol::current(),
            agent_version: agent_version.into(),
            acked_command_seq: 0,
            last_event_seq: 0,
            witnessed_audit_head: None,
        })),
    })
    .await
    .context("queueing Hello")?;
    let mut inbound = client.sync(ReceiverStream::new(out_rx)).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(120), inbound.message()).await {
        Ok(Ok(Some(pb::HubMessage {
            body: Some(hub_message::Body::Welcome(welcome)),
        }))) => {
            let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
            Ok((out, inbound, interval))
        }
        Ok(Ok(other)) => anyhow::bail!("expected Welcome, got {other:?}"),
        Ok(Err(status)) => anyhow::bail!("Sync refused: {status}"),
        Err(_) => anyhow::bail!("no Welcome within 120 s"),
    }
}

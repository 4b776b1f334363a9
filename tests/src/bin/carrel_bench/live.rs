//! The hub's own capacity under live load, run in a child process (`carrel-bench
//! live-fleet`) so that the hub, a `carrel-hub serve` process of its own, has its
//! CPU to itself and the load generator's cost is not counted against it.
//!
//! Each live site speaks the real Sync protocol over its own mutual-TLS connection
//! with its own certificate (Hello, Welcome, heartbeats), and sends its batch's
//! events, made before the measurement starts (hash-chained, in the realistic mix
//! the other figures use) in messages of `--events-per-message`. Like an agent, a
//! site never has more than the agent's window (10,000 events) sent and
//! unacknowledged; it keeps no store (the sites' disks are not the hub's).
//!
//! Two modes: `--rate 0` sends as fast as acknowledgements allow (the capacity);
//! a positive `--rate` (events per second over all sites) sends open loop, each
//! message at the time it is due, and each event's latency runs from that time to
//! the acknowledgement covering it (coordinated omission corrected); events still
//! unacknowledged at the drain deadline count at the deadline.

use crate::fleet::Chain;
use crate::{idle, stats};
use carrel_proto::pb;
use carrel_proto::pb::{hub_message, site_message};
use serde_json::json;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The agent's window of sent, unacknowledged events (`site-agent/src/link.rs`).
const WINDOW: u64 = 10_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hub address (https://host:port).
    #[arg(long)]
    hub: String,
    /// File with one live site per line: data directory, batch id, COI (tab-separated).
    #[arg(long)]
    list: PathBuf,
    /// Events per second over all sites; 0: as fast as acknowledgements allow.
    #[arg(long)]
    rate: f64,
    /// Events in each message.
    #[arg(long)]
    events_per_message: u64,
    /// Seconds of sending.
    #[arg(long)]
    duration: f64,
    /// At most this many events per site are made (bounds memory in the capacity mode).
    #[arg(long, default_value_t = 20_000)]
    max_events_per_site: u64,
    /// Seconds to wait for the last acknowledgements after sending stops.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    failed: AtomicUsize,
    lost: AtomicUsize,
    sent: AtomicU64,
    acked_in_window: AtomicU64,
    acked: AtomicU64,
    /// Microseconds from the start to the last acknowledgement any site received.
    last_ack_us: AtomicU64,
}

/// A line of the list: a site's directory, its batch and COI.
struct LiveSite {
    dir: PathBuf,
    batch_id: uuid::Uuid,
    coi: String,
}

/// Runs the live fleet; prints `result {json}` and exits.
pub fn run(args: Args) -> anyhow::Result<()> {
    idle::child_runtime("live-fleet")?.block_on(fleet(args))
}

async fn fleet(args: Args) -> anyhow::Result<()> {
    let sites: Vec<LiveSite> = idle::list_lines(&args.list)?
        .iter()
        .map(|line| {
            let mut parts = line.split('\t');
            let (Some(dir), Some(batch), Some(coi)) = (parts.next(), parts.next(), parts.next())
            else {
                anyhow::bail!("a live site line is directory, batch id, COI: {line:?}");
            };
            Ok(LiveSite {
                dir: PathBuf::from(dir),
                batch_id: batch.parse()?,
                coi: coi.to_owned(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let n = sites.len().max(1) as u64;
    let per_message = args.events_per_message.max(1);
    // Events each site makes: what the rate needs over the duration, or the cap.
    let per_site = if args.rate > 0.0 {
        ((args.rate * args.duration / n as f64).ceil() as u64).max(per_message)
    } else {
        args.max_events_per_site
    };
    let per_site = per_site.div_ceil(per_message) * per_message;
    let made = Instant::now();
    let now = chrono::Utc::now();
    let messages: Vec<Vec<pb::SiteMessage>> = sites
        .iter()
        .map(|site| {
            let mut chain = Chain::new(site.batch_id, &site.coi);
            let events: Vec<pb::SiteEvent> = (0..per_site)
                .map(|_| pb::SiteEvent::from(&chain.next_row(now).event))
                .collect();
            events
                .chunks(per_message as usize)
                .map(|chunk| pb::SiteMessage {
                    body: Some(site_message::Body::Events(pb::SiteEventBatch {
                        events: chunk.to_vec(),
                    })),
                })
                .collect()
        })
        .collect();
    let make_secs = made.elapsed().as_secs_f64();

    let counters = Arc::new(Counters::default());
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let stop = CancellationToken::new();
    let mut up = Vec::new();
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = tokio::task::JoinSet::new();
    // Messages per second per site in the open-loop mode.
    let message_period = (args.rate > 0.0)
        .then(|| Duration::from_secs_f64(n as f64 * per_message as f64 / args.rate));
    let duration = Duration::from_secs_f64(args.duration);
    let drain = Duration::from_secs_f64(args.drain);
    for (index, (site, messages)) in sites.into_iter().zip(messages).enumerate() {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        up.push(ready_rx);
        let phase = message_period
            .map(|p| p.mul_f64((index as f64 * 0.618_034) % 1.0))
            .unwrap_or_default();
        tasks.spawn(live_site(LiveTask {
            hub: args.hub.clone(),
            dir: site.dir,
            messages,
            per_message,
            period: message_period,
            phase,
            duration,
            drain,
            gate: gate.clone(),
            counters: counters.clone(),
            latencies: latencies.clone(),
            stop: stop.clone(),
            ready: ready_tx,
            go: go_rx.clone(),
        }));
    }
    for ready in up {
        let _ = ready.await;
    }
    // Everyone connected: start together.
    let cpu_before = stats::cpu_time(None)?;
    let start = Instant::now() + Duration::from_millis(200);
    let _ = go_tx.send(Some(start));
    while tasks.join_next().await.is_some() {}
    stop.cancel();
    let cpu = stats::cpu_time(None)?.saturating_sub(cpu_before);
    let mut samples = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    let latency = stats::latency(&mut samples);
    let acked_in_window = counters.acked_in_window.load(Ordering::SeqCst);
    let acked = counters.acked.load(Ordering::SeqCst);
    let last_ack_secs = counters.last_ack_us.load(Ordering::SeqCst) as f64 / 1e6;
    let result = json!({
        "sites": n,
        "connected": counters.connected.load(Ordering::SeqCst),
        "failed": counters.failed.load(Ordering::SeqCst),
        "lost": counters.lost.load(Ordering::SeqCst),
        "events_per_message": per_message,
        "rate_offered_events_per_s": args.rate,
        "events_made_per_site": per_site,
        "make_secs": make_secs,
        "sent_events": counters.sent.load(Ordering::SeqCst),
        "acked_in_window": acked_in_window,
        "acked_in_window_events_per_s": acked_in_window as f64 / args.duration,
        "acked_events": acked,
        "last_ack_secs": last_ack_secs,
        // Every site sends from the start as fast as its window allows, so the hub has
        // work queued from the first second to the last acknowledgement: what it
        // acknowledged over that time is the rate it sustains (in-window counts miss
        // the events the hub had read and hashed but not yet committed at the end).
        "acked_until_last_events_per_s": if last_ack_secs > 0.0 { acked as f64 / last_ack_secs } else { 0.0 },
        "event_ack": latency.json(),
        "generator_cpu_secs": cpu.as_secs_f64(),
    });
    println!("result {result}");
    Ok(())
}

fn heartbeat_message() -> pb::SiteMessage {
    pb::SiteMessage {
        body: Some(site_message::Body::Heartbeat(pb::Heartbeat {
            sent_at_unix_ms: chrono::Utc::now().timestamp_millis() as u64,
            audit_head: None,
        })),
    }
}

struct LiveTask {
    hub: String,
    dir: PathBuf,
    messages: Vec<pb::SiteMessage>,
    per_message: u64,
    period: Option<Duration>,
    phase: Duration,
    duration: Duration,
    drain: Duration,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::watch::Receiver<Option<Instant>>,
}

async fn live_site(mut task: LiveTask) {
    let permit = task.gate.acquire_owned().await;
    let opened = idle::open(&task.hub, &task.dir, "carrel-bench-live").await;
    drop(permit);
    let (out, mut inbound, heartbeat) = match opened {
        Ok(link) => {
            task.counters.connected.fetch_add(1, Ordering::SeqCst);
            link
        }
        Err(e) => {
            if task.counters.failed.fetch_add(1, Ordering::SeqCst) < 5 {
                eprintln!("live site {}: {e:#}", task.dir.display());
            }
            let _ = task.ready.send(());
            return;
        }
    };
    let _ = task.ready.send(());
    // Heartbeats from the Welcome on, as an agent sends them: connecting 10,000
    // sites takes about 20 s, and a site silent that long while it waits for the
    // others is closed by the hub (heartbeat_timeout_ms), which the run would
    // then count as a link the hub lost under load.
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = loop {
        if let Some(start) = *task.go.borrow_and_update() {
            break start;
        }
        tokio::select! {
            changed = task.go.changed() => if changed.is_err() { return },
            _ = beat.tick() => if out.send(heartbeat_message()).await.is_err() {
                task.counters.lost.fetch_add(1, Ordering::SeqCst);
                return;
            },
        }
    };
    let end = start + task.duration;
    let deadline = end + task.drain;
    // (last seq of a message, when it was due, events in it), in order.
    let mut pending: VecDeque<(u64, Instant, u64)> = VecDeque::new();
    let mut seen = Vec::new();
    let (mut sent, mut acked, mut next) = (0u64, 0u64, 0usize);
    tokio::time::sleep_until((start + task.phase).into()).await;
    loop {
        let now = Instant::now();
        let sending = now < end && next < task.messages.len();
        if !sending && pending.is_empty() {
            break;
        }
        if now >= deadline {
            break;
        }
        // When the next message is due (open loop), or now (as fast as acks allow).
        let due = task
            .period
            .map_or(now, |p| start + task.phase + p * next as u32);
        let may_send = sending && sent - acked + task.per_message <= WINDOW && due < end;
        let wake = if may_send { due.max(now) } else { deadline };
        tokio::select! {
            _ = task.stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake.into()), if may_send => {
                if out.send(task.messages[next].clone()).await.is_err() {
                    task.counters.lost.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                next += 1;
                sent += task.per_message;
                task.counters.sent.fetch_add(task.per_message, Ordering::Relaxed);
                pending.push_back((sent, due, task.per_message));
            }
            _ = tokio::time::sleep_until(deadline.into()), if !may_send => break,
            _ = beat.tick() => {
                if out.send(heartbeat_message()).await.is_err() {
                    task.counters.lost.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
            message = inbound.message() => match message {
                Ok(Some(pb::HubMessage { body: Some(hub_message::Body::EventAck(ack)) })) => {
                    let now = Instant::now();
                    acked = acked.max(ack.seq);
                    while pending.front().is_some_and(|(last, _, _)| *last <= acked) {
                        if let Some((_, due, count)) = pending.pop_front() {
                            let waited = now.saturating_duration_since(due);
                            seen.extend(std::iter::repeat_n(waited, count as usize));
                            if now <= end {
                                task.counters.acked_in_window.fetch_add(count, Ordering::Relaxed);
                            }
                            task.counters.acked.fetch_add(count, Ordering::Relaxed);
                            let at = now.saturating_duration_since(start).as_micros() as u64;
                            task.counters.last_ack_us.fetch_max(at, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    task.counters.lost.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
    // What never came back counts at the deadline.
    for (_, due, count) in pending {
        seen.extend(std::iter::repeat_n(
            deadline.saturating_duration_since(due),
            count as usize,
        ));
    }
    task.latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(seen);
}

//! A TCP proxy of the tests' own, put between a site agent and the hub to break the
//! network on purpose: black-hole it, delay it, throttle it, cut connections in the
//! middle of a message, or leave connections half-open (open, but silent).
//!
//! It runs on its own thread and runtime, so a test that blocks (waiting on a child
//! process, say) never stalls the network it is testing. Settings change through a
//! [`Proxy`] handle and apply at once to open connections as well as new ones.
//!
//! The proxy only moves bytes; TLS passes through it end to end, so the agent and
//! the hub still authenticate each other as they would on a real network.

use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the network does to the bytes passing through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Everything passes, as fast as it comes.
    None,
    /// A partition: nothing passes in either direction, on open connections and new
    /// ones. New connections are accepted and then hold, as a dropping firewall
    /// would leave them; what was in flight passes if the link heals before either
    /// end gives up on the connection (as TCP retransmission would deliver it).
    BlackHole,
    /// Each chunk is held this long before it is passed on (each direction).
    Delay(Duration),
    /// At most this many bytes per second pass, in each direction.
    Throttle(u64),
}

#[derive(Debug, Clone)]
struct Settings {
    fault: Fault,
    /// Connections with an id below this pass nothing, ever again, and are never
    /// closed by the proxy: half-open, as after a peer's power cut or a NAT that
    /// forgot the flow.
    frozen_below: u64,
    /// Connections with an id below this are reset (RST) now.
    cut_below: u64,
    /// Each connection is reset after passing a number of bytes towards the
    /// upstream drawn from this range, so that it is cut mid-message.
    cut_after: Option<(u64, u64)>,
}

/// Counters, for asserting that the proxy really was in the path.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    cut: AtomicU64,
    cut_mid_message: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A running proxy. Dropping it closes every connection and stops the proxy.
pub struct Proxy {
    port: u16,
    settings: watch::Sender<Settings>,
    next_id: Arc<AtomicU64>,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port that forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("proxy address").port();
        let (settings, settings_rx) = watch::channel(Settings {
            fault: Fault::None,
            frozen_below: 0,
            cut_below: 0,
            cut_after: None,
        });
        let next_id = Arc::new(AtomicU64::new(0));
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let thread = {
            let next_id = next_id.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("proxy runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(std_listener).expect("listener");
                        let accept =
                            accept_loop(listener, upstream, settings_rx, next_id, counters);
                        tokio::select! {
                            _ = accept => {}
                            _ = stop_rx => {}
                        }
                    });
                    // Dropping the runtime drops every connection task and its sockets.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })
                .expect("proxy thread")
        };
        Proxy {
            port,
            settings,
            next_id,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address an agent should dial: `https://127.0.0.1:<port>` (the hub's
    /// certificate names 127.0.0.1).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Sets what the network does from now on.
    pub fn set(&self, fault: Fault) {
        self.settings.send_modify(|s| s.fault = fault);
    }

    /// Every connection open now stops passing bytes, in both directions, and stays
    /// open; new connections are not affected.
    pub fn half_open(&self) {
        let below = self.next_id.load(Ordering::SeqCst);
        self.settings.send_modify(|s| s.frozen_below = below);
    }

    /// Resets every connection open now (the peers see ECONNRESET, mid-stream).
    pub fn cut_all(&self) {
        let below = self.next_id.load(Ordering::SeqCst);
        self.settings.send_modify(|s| s.cut_below = below);
    }

    /// From now on, each new connection is reset after passing between `min` and
    /// `max` bytes towards the upstream (so in the middle of a message); `None`
    /// stops cutting.
    pub fn cut_after(&self, range: Option<(u64, u64)>) {
        self.settings.send_modify(|s| s.cut_after = range);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections the proxy has reset so far.
    pub fn cuts(&self) -> u64 {
        self.counters.cut.load(Ordering::SeqCst)
    }

    /// Connections reset after part of what the agent was sending had passed.
    pub fn mid_message_cuts(&self) -> u64 {
        self.counters.cut_mid_message.load(Ordering::SeqCst)
    }

    /// Bytes passed towards the upstream and back.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.counters.bytes_up.load(Ordering::SeqCst),
            self.counters.bytes_down.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    settings: watch::Receiver<Settings>,
    next_id: Arc<AtomicU64>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::SeqCst);
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let cut_after = settings
            .borrow()
            .cut_after
            .map(|(min, max)| rand::thread_rng().gen_range(min..=max.max(min)));
        tokio::spawn(connection(
            id,
            client,
            upstream,
            settings.clone(),
            cut_after,
            counters.clone(),
        ));
    }
}

/// Whether connection `id` may pass bytes now.
fn open(settings: &Settings, id: u64) -> bool {
    settings.fault != Fault::BlackHole && id >= settings.frozen_below
}

/// Resolves when connection `id` must be reset.
async fn cut_signal(mut settings: watch::Receiver<Settings>, id: u64) {
    loop {
        if id < settings.borrow_and_update().cut_below {
            return;
        }
        if settings.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits until connection `id` may pass bytes.
async fn wait_open(settings: &mut watch::Receiver<Settings>, id: u64) {
    loop {
        if open(&settings.borrow_and_update(), id) {
            return;
        }
        if settings.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn connection(
    id: u64,
    client: TcpStream,
    upstream: SocketAddr,
    settings: watch::Receiver<Settings>,
    cut_after: Option<u64>,
    counters: Arc<Counters>,
) {
    // A reset rather than a clean close when the proxy drops a socket.
    let _ = client.set_zero_linger();
    let _ = client.set_nodelay(true);
    let cut = cut_signal(settings.clone(), id);
    tokio::pin!(cut);
    // Dial the upstream only once bytes may pass, as a partitioned network would.
    let mut gate = settings.clone();
    let upstream = tokio::select! {
        _ = &mut cut => { counters.cut.fetch_add(1, Ordering::SeqCst); return; }
        _ = wait_open(&mut gate, id) => match TcpStream::connect(upstream).await {
            Ok(stream) => stream,
            Err(_) => return,
        },
    };
    let _ = upstream.set_zero_linger();
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let (cut_now, mut cut_now_rx) = mpsc::channel::<()>(1);
    let up = pump(
        id,
        client_read,
        upstream_write,
        settings.clone(),
        cut_after,
        cut_now.clone(),
        counters.clone(),
        true,
    );
    let down = pump(
        id,
        upstream_read,
        client_write,
        settings,
        None,
        cut_now,
        counters.clone(),
        false,
    );
    let both = async { tokio::join!(up, down) };
    tokio::select! {
        _ = both => {}
        _ = &mut cut => { counters.cut.fetch_add(1, Ordering::SeqCst); }
        _ = cut_now_rx.recv() => { counters.cut.fetch_add(1, Ordering::SeqCst); }
    }
    // Dropping the halves here closes both sockets with a reset.
}

/// Moves bytes one way: a reader fills a delay line, a writer empties it when the
/// settings allow, at the allowed rate.
#[allow(clippy::too_many_arguments)]
async fn pump(
    id: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    settings: watch::Receiver<Settings>,
    cut_after: Option<u64>,
    cut_now: mpsc::Sender<()>,
    counters: Arc<Counters>,
    upwards: bool,
) {
    let (line, mut line_rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut read_settings = settings.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // A partitioned or frozen connection reads nothing, so the sender's
            // buffers fill as they would on a dead network.
            wait_open(&mut read_settings, id).await;
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = match read_settings.borrow().fault {
                Fault::Delay(d) => d,
                _ => Duration::ZERO,
            };
            if line
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let mut write_settings = settings;
    let writer = async move {
        let mut passed: u64 = 0;
        while let Some((due, chunk)) = line_rx.recv().await {
            tokio::time::sleep_until(due).await;
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                wait_open(&mut write_settings, id).await;
                let fault = write_settings.borrow().fault;
                let slice = match fault {
                    Fault::Throttle(rate) => {
                        let slice = (rate / 20).clamp(1, rest.len() as u64) as usize;
                        tokio::time::sleep(Duration::from_secs_f64(slice as f64 / rate as f64))
                            .await;
                        slice
                    }
                    _ => rest.len(),
                };
                let mut piece = &rest[..slice];
                let mut cutting = false;
                if let Some(limit) = cut_after {
                    if passed + piece.len() as u64 >= limit {
                        piece = &piece[..(limit.saturating_sub(passed)) as usize];
                        cutting = true;
                    }
                }
                if to.write_all(piece).await.is_err() {
                    return;
                }
                passed += piece.len() as u64;
                let counter = if upwards {
                    &counters.bytes_up
                } else {
                    &counters.bytes_down
                };
                counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
                if cutting {
                    let _ = to.flush().await;
                    counters.cut_mid_message.fetch_add(1, Ordering::SeqCst);
                    let _ = cut_now.send(()).await;
                    std::future::pending::<()>().await;
                }
                rest = &rest[slice..];
            }
        }
        // The sender closed its side: pass the FIN on.
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

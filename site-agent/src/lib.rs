//! The Carrel site agent: runs next to a hospital site's manufacturing equipment.
//!
//! It receives batch orders from the hub, runs each pinned recipe on the site's
//! instruments (SiLA 2 and OPC UA servers, as the site maps them, or a simulator that
//! behaves like one), records every event in
//! its own SQLite store first, and replicates that log to the hub over one outbound
//! mutual-TLS gRPC stream. It keeps manufacturing and recording while the network is
//! down, and catches up when the link returns. It never accepts connections from the hub.
//!
//! Map: [`identity`] enrolls the site and holds its key and certificates; [`tls`]
//! builds the TLS client; [`link`] replicates both logs; [`store`] is the local log
//! and batch projection, whose rules are in [`projection`]; [`executor`] runs
//! recipes; [`instrument`] is the interface to the equipment and its adapters;
//! [`simulator`] is the simulated process model; [`process`] holds the readings and
//! alarms both report; [`config`] is the site's configuration, and depends on none of
//! the others.
#![forbid(unsafe_code)]

pub mod config;
pub mod console;
pub mod custody;
pub mod entries;
pub mod executor;
pub mod golden;
pub mod identity;
pub mod instrument;
pub mod labels;
pub mod link;
pub mod people;
pub mod process;
pub mod projection;
pub mod simulator;
pub mod store;
pub mod tls;

pub use config::Config;

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running agent.
pub struct Running {
    pub site_id: String,
    /// Address of the site console (HTTP, loopback by default).
    pub console_addr: std::net::SocketAddr,
    pub store: Arc<store::Store>,
    pub link_state: watch::Receiver<link::LinkState>,
    tasks: TaskTracker,
}

impl Running {
    /// Waits until the agent's tasks have stopped (after shutdown).
    pub async fn wait(self) {
        self.tasks.wait().await;
        self.store.close().await;
    }
}

/// Starts the link and the executor; both stop when `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    config.validate()?;
    identity::finish_interrupted_renewal(&config.data_dir)?;
    let identity = identity::Identity::load(&config.data_dir)?;
    let tls = identity.tls()?;
    let db = config.data_dir.join("agent.db");
    let store = Arc::new(
        store::Store::open(&db)
            .await
            .with_context(|| format!("opening the site store {}", db.display()))?,
    );
    let (state, link_state) = watch::channel(link::LinkState {
        suspended: store.suspension().await?,
        ..Default::default()
    });
    let (hub_channel, channel_to_hub) = watch::channel(None);
    let link = link::Link {
        store: store.clone(),
        hub_channel,
        hubs: config.hub_addresses(),
        tls,
        reconnect_min: Duration::from_millis(config.reconnect_min_ms),
        reconnect_max: Duration::from_millis(config.reconnect_max_ms),
        heartbeat_timeout: Duration::from_millis(config.heartbeat_timeout_ms),
        events_per_message: config.events_per_message,
        state,
        renewal: Some(link::Renewal::new(config.data_dir.clone())),
    };
    let instruments = Arc::new(
        instrument::Instruments::from_config(&config)
            .context("setting up the site's instruments")?,
    );
    let tasks = TaskTracker::new();
    tasks.spawn(link.run(shutdown.clone()));
    tasks.spawn(executor::run(store.clone(), instruments, shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(config.console_listen)
        .await
        .with_context(|| format!("binding the site console address {}", config.console_listen))?;
    let console_addr = listener.local_addr()?;
    std::fs::write(
        config.data_dir.join("console.addr"),
        format!("{console_addr}\n"),
    )?;
    if !console_addr.ip().is_loopback() {
        tracing::warn!(%console_addr, "the site console listens beyond loopback over plain HTTP: put it behind a TLS proxy, and list the names it is reached by in console_hosts");
    }
    let hosts = console::AllowedHosts::new(console_addr, &config.console_hosts);
    let app = console::router(
        store.clone(),
        link_state.clone(),
        golden::Source::new(channel_to_hub),
        identity.site_id.clone(),
        hosts,
        console::PeopleSettings {
            idle: std::time::Duration::from_secs(config.console_idle_minutes * 60),
            lock_after: config.sign_in_attempts,
            zone: config.zone()?,
        },
    );
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "site console stopped");
        }
    });
    tasks.close();
    tracing::info!(console = %format!("http://{console_addr}"), "site console serving");
    tracing::info!(site_id = %identity.site_id, hub = %config.hub, "site agent running");
    Ok(Running {
        console_addr,
        site_id: identity.site_id,
        store,
        link_state,
        tasks,
    })
}

/// Writes the agent's config file in a data directory (at enrollment).
pub fn write_config(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join(Config::FILE);
    let mut text =
        String::from("# Carrel site agent configuration (written at enrollment; edit freely).\n");
    let mut to_write = config.clone();
    // The data directory is where this file lives; it is given on the command line.
    to_write.data_dir = std::path::PathBuf::new();
    let body = toml::to_string_pretty(&to_write)?;
    text.push_str(&body.replace("data_dir = \"\"\n", ""));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

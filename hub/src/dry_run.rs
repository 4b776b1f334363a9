//! The simulator site where drafts of recipes are dry-run.
//!
//! A QA person can try a draft before it is approved: the hub sends a frozen copy
//! of it to its own simulator site (`dry-run`), whose agent makes a whole batch at
//! high time compression and reports its record like any site's. The batch is
//! marked as a dry run (`Order::dry_run`): its record is shown like any other, it is
//! never released, and it stays out of the release queue, the schedule and
//! notifications (see `store::recipe_changes::dry_run`).
//!
//! The site's agent is the real site agent, running inside the hub process (as
//! `carrel-hub dev` runs its demo sites): it enrolls once with a one-time token from
//! the hub's own CA and then dials the hub over mutual-TLS gRPC like any other site.
//! Only the process boundary is saved. Its state lives in `<data_dir>/dry-run-site`.

use crate::app::Hub;
use crate::model::recipe_change::{DRY_RUN_ACTOR, DRY_RUN_SITE};
use crate::Config;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The simulator site's name, as people see it in site lists.
pub const SITE_NAME: &str = "Dry-run simulator (draft recipes; no patients)";

/// Process seconds per real second at the simulator site: a 7-day expansion in
/// about six seconds, a whole batch in well under a minute.
pub const TIME_COMPRESSION: f64 = 100_000.0;

fn data_dir(config: &Config) -> PathBuf {
    config.data_dir.join("dry-run-site")
}

/// Starts the simulator site's agent, enrolling it first if this is the first
/// start; `None` (and an error logged) when it cannot run here, for example when
/// another replica hosts it. The hub must be serving at `addr`.
pub async fn host(
    hub: &Arc<Hub>,
    config: &Config,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Option<carrel_site_agent::Running> {
    match start(hub, config, addr, shutdown).await {
        Ok(agent) => {
            tracing::info!(console = %agent.console_addr, "dry-run simulator site running");
            Some(agent)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "the dry-run simulator site is not running here; drafts cannot be dry-run until it is");
            None
        }
    }
}

async fn start(
    hub: &Arc<Hub>,
    config: &Config,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<carrel_site_agent::Running> {
    let hub_url = format!(
        "https://{}",
        SocketAddr::new(crate::config::dialled_ip(addr.ip()), addr.port())
    );
    let dir = data_dir(config);
    if !carrel_site_agent::identity::Identity::is_enrolled(&dir) {
        let registered = crate::admin::register_site(
            hub.store.as_ref(),
            &hub.ca,
            DRY_RUN_SITE,
            SITE_NAME,
            600,
            DRY_RUN_ACTOR,
        )
        .await
        .with_context(|| {
            format!(
                "registering the simulator site {DRY_RUN_SITE:?} (if another replica hosts it, set dry_run_simulator = false here)"
            )
        })?;
        carrel_site_agent::identity::enroll(
            &hub_url,
            &registered.token,
            &dir,
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .context("enrolling the simulator site")?;
    }
    let mut agent = carrel_site_agent::Config::load(&dir)?;
    agent.hub = hub_url;
    agent.heartbeat_timeout_ms = config.heartbeat_timeout_ms.into();
    agent.reconnect_max_ms = 2_000;
    agent.simulator.time_compression = TIME_COMPRESSION;
    agent.simulator.sample_interval_hours = 6.0;
    agent.simulator.instrument_id = "dry-run-sim-cps-01".into();
    // No people work here: the simulator scans every manufacturing checkpoint and
    // stands in for the QC laboratory; each such record says it was simulated.
    agent.simulator.auto_scan = true;
    agent.simulator.qc_laboratory = true;
    agent.console_listen = "127.0.0.1:0".parse()?;
    carrel_site_agent::write_config(&agent)?;
    carrel_site_agent::start(agent, shutdown).await
}

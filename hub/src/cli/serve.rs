//! `carrel-hub serve`: load and check the configuration, then run the hub until
//! SIGINT or SIGTERM.

use crate::telemetry::LogFormat;
use crate::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Runs the hub with the config file at `config`, `listen` and `data_dir` overriding
/// it; with `dump_config`, prints the effective configuration and returns.
pub async fn run(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    dump_config: bool,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    let mut config = Config::load(config.as_deref())?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    if dump_config {
        print!("{}", toml::to_string_pretty(&config.redacted())?);
        return Ok(());
    }
    let telemetry = crate::telemetry::init(log_format, config.otlp_endpoint.as_deref())?;
    let shutdown = CancellationToken::new();
    tokio::spawn(super::shutdown_signal(shutdown.clone()));
    let result = match crate::server::start(config, shutdown).await {
        Ok(running) => running.wait().await,
        Err(e) => Err(e),
    };
    telemetry.shutdown().await;
    result
}

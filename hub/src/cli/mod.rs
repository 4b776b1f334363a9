//! The command line, in the style of `nomad` and `vault`: `serve` and `dev` run a
//! hub; `site add` and `user add` work on the hub machine's own store; the rest are
//! clients of the gRPC API and need `login` first.
//!
//! This file holds the command tree, hands each command to the file for its concern,
//! and waits for the shutdown signal that stops a running hub. On the hub machine:
//! `serve.rs`, `dev.rs` (a whole network on loopback), `sites.rs` (`add`; the rest
//! use the API), `users.rs`, `ca.rs`, `audit.rs` and `backup.rs` (and restore), with
//! `local.rs` for what they share. Through the API: `client.rs` (connecting, the
//! session token, `login`), `orders.rs`, `release.rs`, `notify.rs` and
//! `schedule.rs` and `analytics.rs`, with `output.rs` for the text and JSON they share.

mod analytics;
mod audit;
mod backup;
mod ca;
pub mod client;
pub mod dev;
mod deviations;
mod integration;
mod local;
mod notify;
mod orders;
mod output;
mod recipes;
mod release;
mod schedule;
mod serve;
mod sites;
mod users;

use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "carrel-hub",
    version,
    about = "Carrel control-site hub: orders, site links, QA release"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: text or json.
    #[arg(long, global = true, env = "CARREL_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub.
    Serve {
        /// Config file (TOML); see deploy/hub.example.toml.
        #[arg(long, env = "CARREL_HUB_CONFIG")]
        config: Option<PathBuf>,
        /// Override the listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override the data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print the effective configuration as TOML and exit.
        #[arg(long)]
        dump_config: bool,
    },
    /// Run a whole network on loopback: a hub, its CA, demo users and two simulated sites.
    Dev(dev::DevArgs),
    /// Sites (run on the hub machine for `add`; `list`, `suspend`, `resume` use the API).
    #[command(subcommand)]
    Site(sites::SiteCommand),
    /// Users (run on the hub machine).
    #[command(subcommand)]
    User(users::UserCommand),
    /// Recipe versions under change control (QA): draft, diff, submit, approve,
    /// retire, list.
    #[command(subcommand)]
    Recipe(recipes::RecipeCommand),
    /// Process analytics (QA, administrators): control charts by site and for the
    /// network, capability, site comparability, CSV, and QA's baseline.
    #[command(subcommand)]
    Analytics(analytics::AnalyticsCommand),
    /// Deviations (QA): list, raise at the hub, investigation notes, and closure with
    /// an electronic signature; an open major or critical deviation stops release.
    #[command(subcommand)]
    Deviation(deviations::DeviationCommand),
    /// System accounts of hospitals' integration engines (FHIR, OAuth 2 client
    /// credentials), scoped to the physicians they order for (administrators).
    #[command(subcommand)]
    Integration(integration::IntegrationCommand),
    /// The hub's certificate authority: status and rotation (run on the hub machine).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Your own password: change it, or choose one with a reset code.
    #[command(subcommand)]
    Password(users::PasswordCommand),
    /// Sign in and keep the session token for the other commands.
    Login {
        #[command(flatten)]
        client: client::ClientArgs,
        /// User name.
        #[arg(long)]
        user: String,
    },
    /// Orders (physicians create; everyone follows).
    #[command(subcommand)]
    Order(orders::OrderCommand),
    /// Notifications by e-mail and webhook: subscribe, list, see what was sent.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// QA release.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Capacity, collection proposals, utilisation and vein-to-vein figures.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// The audit trail (run on the hub machine).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Write a consistent backup of the hub's SQLite store while the hub runs.
    Backup {
        /// The backup file to create.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        store: local::StoreArgs,
    },
    /// Check a backup (integrity, audit chain) and put it in place as the hub's store.
    /// Stop the hub first.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// Replace an existing store.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: local::StoreArgs,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            dump_config,
        } => serve::run(config, listen, data_dir, dump_config, cli.log_format).await,
        Command::Dev(args) => {
            let telemetry = crate::telemetry::init(cli.log_format, None)?;
            let result = dev::run(args).await;
            telemetry.shutdown().await;
            result
        }
        Command::Site(command) => sites::run(command).await,
        Command::Ca(command) => ca::run(command).await,
        Command::User(command) => users::run(command).await,
        Command::Integration(command) => integration::run(command).await,
        Command::Deviation(command) => deviations::run(command).await,
        Command::Analytics(command) => analytics::run(command).await,
        Command::Recipe(command) => recipes::run(command).await,
        Command::Login { client, user } => client::login(client, user).await,
        Command::Password(command) => users::run_password(command).await,
        Command::Audit(command) => audit::run(command).await,
        Command::Backup { to, store } => backup::backup(to, store).await,
        Command::Restore { from, force, store } => backup::run_restore(from, force, store).await,
        Command::Order(command) => orders::run(command).await,
        Command::Notify(command) => notify::run(command).await,
        Command::Release(command) => release::run(command).await,
        Command::Schedule(command) => schedule::run(command).await,
    }
}

/// One future for SIGINT and SIGTERM; a second signal exits at once.
pub async fn shutdown_signal(token: CancellationToken) {
    let wait = || async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    wait().await;
    tracing::info!("shutting down (signal again to exit at once)");
    token.cancel();
    wait().await;
    std::process::exit(130);
}

//! `carrel-site-agent`: wiring only. See the library for the parts.
#![forbid(unsafe_code)]

use anyhow::Context;
use carrel_site_agent::{identity, Config};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "carrel-site-agent",
    version,
    about = "Carrel site agent: runs a site's equipment and replicates its records to the hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text or json.
    #[arg(long, global = true, env = "CARREL_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this site with a one-time token from the hub administrator.
    Enroll {
        /// Hub address, e.g. https://hub.example.org:7443
        #[arg(long)]
        hub: String,
        /// The enrollment token (`carrel-hub site add` prints it).
        #[arg(long, env = "CARREL_ENROLLMENT_TOKEN")]
        token: String,
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Run the agent.
    Run {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Print the effective configuration and exit.
        #[arg(long)]
        dump_config: bool,
    },
    /// Show the batches at this site and how far the hub has acknowledged the log.
    Status {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn shutdown_signal(token: CancellationToken) {
    let wait = || async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    wait().await;
    tracing::info!("shutting down (signal again to exit at once)");
    token.cancel();
    wait().await;
    std::process::exit(130);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Enroll {
            hub,
            token,
            data_dir,
        } => {
            init_tracing(cli.log_format);
            let enrolled =
                identity::enroll(&hub, &token, &data_dir, env!("CARGO_PKG_VERSION")).await?;
            let mut config = Config::load(&data_dir)?;
            config.hub = hub;
            carrel_site_agent::write_config(&config)?;
            println!(
                "Enrolled as site {} ({}). Start with: carrel-site-agent run --data-dir {}",
                enrolled.site_id,
                enrolled.site_name,
                data_dir.display()
            );
            Ok(())
        }
        Command::Run {
            data_dir,
            dump_config,
        } => {
            let config = Config::load(&data_dir)?;
            if dump_config {
                print!("{}", toml::to_string_pretty(&config)?);
                return Ok(());
            }
            config.validate()?;
            init_tracing(cli.log_format);
            let shutdown = CancellationToken::new();
            tokio::spawn(shutdown_signal(shutdown.clone()));
            let running = carrel_site_agent::start(config, shutdown).await?;
            running.wait().await;
            Ok(())
        }
        Command::Status { data_dir } => {
            let identity = identity::Identity::load(&data_dir)?;
            let db = data_dir.join("agent.db");
            let store = carrel_site_agent::store::Store::open(&db)
                .await
                .with_context(|| format!("opening {}", db.display()))?;
            let last = store.last_event_seq().await?;
            let acked = store.hub_acked().await?;
            println!(
                "Site {}: {last} events recorded, {acked} acknowledged by the hub ({} waiting)",
                identity.site_id,
                last - acked.min(last)
            );
            println!(
                "{:<36} {:<14} {:<17} {:<12}",
                "BATCH", "COI", "STATE", "STEP"
            );
            for b in store.batches().await? {
                println!(
                    "{:<36} {:<14} {:<17} {:<12}",
                    b.batch_id,
                    b.coi,
                    b.state.as_str(),
                    b.current_step.unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A refusal from the hub reads as its message and gRPC code, not as a debug dump.
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {} ({:?})", status.message(), status.code()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

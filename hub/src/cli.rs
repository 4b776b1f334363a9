//! The command line, in the style of `nomad` and `vault`: `serve` and `dev` run a
//! hub; `site add` and `user add` work on the hub machine's own store; the rest are
//! clients of the gRPC API and need `login` first.

pub mod dev;
mod notify;

use crate::admin;
use crate::model::Role;
use crate::telemetry::LogFormat;
use crate::Config;
use anyhow::{bail, Context};
use carrel_proto::event::from_timestamp;
use carrel_proto::pb;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

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

mod schedule;

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
    Site(SiteCommand),
    /// Users (run on the hub machine).
    #[command(subcommand)]
    User(UserCommand),
    /// The hub's certificate authority: status and rotation (run on the hub machine).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Sign in and keep the session token for the other commands.
    Login {
        #[command(flatten)]
        client: ClientArgs,
        /// User name.
        #[arg(long)]
        user: String,
    },
    /// Orders (physicians create; everyone follows).
    #[command(subcommand)]
    Order(OrderCommand),
    /// Notifications by e-mail and webhook: subscribe, list, see what was sent.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// QA release.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Capacity, collection proposals, utilisation and vein-to-vein figures.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// The audit trail (run on the hub machine).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Write a consistent backup of the hub's SQLite store while the hub runs.
    Backup {
        /// The backup file to create.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
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
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; report the first entry altered, removed or inserted.
    /// Exits 1 when the chain is broken.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List audit entries, all or one batch's.
    List {
        #[arg(long)]
        batch: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The hub's config file, to find its database and CA.
    #[arg(long, env = "CARREL_HUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override the data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Register a site and print its one-time enrollment token.
    Add {
        site_id: String,
        #[arg(long)]
        name: String,
        /// Token lifetime in seconds (default: enrollment_ttl_secs from config).
        #[arg(long)]
        ttl: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List sites with their link state.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Suspend a site: its link is closed and it cannot connect or take orders.
    Suspend {
        site_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a suspended site.
    Resume {
        site_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cease a site for good: it can no longer connect or take orders; its records stay
    /// readable and verifiable. Refused while any of its batches is open.
    Cease {
        site_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the hub CA, any previous CA still trusted, and which CA issued each site's
    /// certificate.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a new hub CA. The old one stays trusted (and the hub's chain verifies for
    /// sites that trust only it) until `retire-previous`; sites renew their
    /// certificates over their links when they next connect. Restart the hub after.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// End a rotation's overlap: the previous CA is no longer trusted. Refused while a
    /// site that can still connect holds a certificate of it, unless --force.
    RetirePrevious {
        /// Retire even though some sites still hold certificates of the previous CA
        /// (they will have to enroll again).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is read from a prompt, or from standard input when it
    /// is not a terminal; never from a flag.
    Add {
        username: String,
        #[arg(long)]
        role: RoleArg,
        /// Printed name, shown on electronic signatures.
        #[arg(long)]
        full_name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Physician,
    Qa,
    Technician,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Physician => Role::Physician,
            RoleArg::Qa => Role::Qa,
            RoleArg::Technician => Role::Technician,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Order a therapy for a patient.
    Create {
        /// Patient pseudonym (never a name).
        #[arg(long)]
        patient: String,
        /// Product (recipe id).
        #[arg(long, default_value = "cd19-car-t")]
        product: String,
        /// Treating site.
        #[arg(long)]
        site: String,
        /// Requested collection date, YYYY-MM-DD.
        #[arg(long)]
        collection_date: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List orders (a physician sees their own).
    List {
        /// Only orders in this state (e.g. in_process, awaiting_release).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an order's status and timeline.
    Show {
        order_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move an order's collection to another date (before collection).
    Reschedule {
        order_id: String,
        /// New collection date, YYYY-MM-DD.
        #[arg(long)]
        collection_date: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel an order still in manufacturing.
    Cancel {
        order_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Batches awaiting a release decision.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The batch record, exceptions first, with the hash a signature binds to.
    Show {
        batch_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign release or rejection. Asks for the password again.
    Sign {
        batch_id: String,
        #[arg(long)]
        meaning: MeaningArg,
        /// Reason (required to reject).
        #[arg(long, default_value = "")]
        reason: String,
        /// SHA-256 of the record as you reviewed it (from `release show`); default:
        /// the record as fetched just before signing, after showing its summary.
        #[arg(long)]
        record_sha256: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MeaningArg {
    Released,
    Rejected,
}

/// How a client command reaches the hub.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Hub address.
    #[arg(long, env = "CARREL_ADDR", default_value = "https://127.0.0.1:7443")]
    pub addr: String,
    /// CA certificate that signed the hub's certificate (PEM).
    #[arg(long, env = "CARREL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Where the session token is kept (default ~/.carrel/token).
    #[arg(long, env = "CARREL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            dump_config,
        } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            config.validate()?;
            if dump_config {
                print!("{}", toml::to_string_pretty(&config)?);
                return Ok(());
            }
            let telemetry =
                crate::telemetry::init(cli.log_format, config.otlp_endpoint.as_deref())?;
            let shutdown = CancellationToken::new();
            tokio::spawn(shutdown_signal(shutdown.clone()));
            let result = match crate::server::start(config, shutdown).await {
                Ok(running) => running.wait().await,
                Err(e) => Err(e),
            };
            telemetry.shutdown().await;
            result
        }
        Command::Dev(args) => {
            let telemetry = crate::telemetry::init(cli.log_format, None)?;
            let result = dev::run(args).await;
            telemetry.shutdown().await;
            result
        }
        Command::Site(SiteCommand::Add {
            site_id,
            name,
            ttl,
            store,
        }) => {
            let config = store_config(&store)?;
            let db = crate::server::open_store(&config).await?;
            let ca = crate::server::load_ca(&config)?;
            let registered = admin::register_site(
                db.as_ref(),
                &ca,
                &site_id,
                &name,
                ttl.unwrap_or(config.enrollment_ttl_secs),
                &local_operator(),
            )
            .await?;
            println!(
                "Site {} ({}) registered.",
                registered.site.site_id, registered.site.name
            );
            println!(
                "One-time enrollment token (expires {}):",
                registered.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
            println!("{}", registered.token);
            eprintln!("On the site machine: carrel-site-agent enroll --hub https://HUB:PORT --token TOKEN --data-dir DIR");
            Ok(())
        }
        Command::Site(SiteCommand::List { client }) => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let sites = api
                .list_sites(pb::ListSitesRequest {})
                .await?
                .into_inner()
                .sites;
            if client.json {
                let rows: Vec<_> = sites
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "site_id": s.site_id, "name": s.name,
                            "status": pb::SiteStatus::try_from(s.status).map(|v| v.as_str_name()).unwrap_or("?"),
                            "connected": s.connected, "acked_event_seq": s.acked_event_seq,
                            "last_command_seq": s.last_command_seq, "acked_command_seq": s.acked_command_seq,
                            "certificate_expires_at": carrel_proto::event::from_timestamp("certificate_expires_at", s.certificate_expires_at).ok().map(|t| t.to_rfc3339()),
                            "certificate_from_current_ca": s.certificate_from_current_ca,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<16} {:<28} {:<10} {:<10} {:>8} {:>12}  CERTIFICATE",
                    "SITE", "NAME", "STATUS", "LINK", "EVENTS", "COMMANDS"
                );
                for s in sites {
                    let status = pb::SiteStatus::try_from(s.status)
                        .map(|v| v.as_str_name())
                        .unwrap_or("?");
                    let expires = carrel_proto::event::from_timestamp(
                        "certificate_expires_at",
                        s.certificate_expires_at,
                    );
                    let certificate = match expires {
                        Ok(t) => format!(
                            "until {}{}",
                            t.format("%Y-%m-%d"),
                            if s.certificate_from_current_ca {
                                ""
                            } else {
                                " (previous CA)"
                            }
                        ),
                        Err(_) => "-".into(),
                    };
                    println!(
                        "{:<16} {:<28} {:<10} {:<10} {:>8} {:>5}/{:<6}  {certificate}",
                        s.site_id,
                        s.name,
                        status.trim_start_matches("SITE_STATUS_").to_lowercase(),
                        if s.connected { "connected" } else { "-" },
                        s.acked_event_seq,
                        s.acked_command_seq,
                        s.last_command_seq
                    );
                }
            }
            Ok(())
        }
        Command::Site(SiteCommand::Suspend {
            site_id,
            reason,
            client,
        }) => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            api.suspend_site(pb::SuspendSiteRequest {
                site_id: site_id.clone(),
                reason,
            })
            .await?;
            println!("Site {site_id} suspended.");
            Ok(())
        }
        Command::Site(SiteCommand::Resume {
            site_id,
            reason,
            client,
        }) => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            api.resume_site(pb::ResumeSiteRequest {
                site_id: site_id.clone(),
                reason,
            })
            .await?;
            println!("Site {site_id} resumed.");
            Ok(())
        }
        Command::Site(SiteCommand::Cease {
            site_id,
            reason,
            client,
        }) => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            api.cease_site(pb::CeaseSiteRequest {
                site_id: site_id.clone(),
                reason,
            })
            .await?;
            println!("Site {site_id} ceased; its records stay at the hub.");
            Ok(())
        }
        Command::Ca(command) => ca_command(command).await,
        Command::User(UserCommand::Add {
            username,
            role,
            full_name,
            store,
        }) => {
            let config = store_config(&store)?;
            admin::validate_username(&username)?;
            let password = read_new_password()?;
            let db = crate::server::open_store(&config).await?;
            let user = admin::add_user(
                db.as_ref(),
                &username,
                &full_name,
                role.into(),
                &password,
                &local_operator(),
            )
            .await?;
            println!(
                "User {} ({}, {}) added.",
                user.username, user.full_name, user.role
            );
            Ok(())
        }
        Command::Login { client, user } => {
            let password = read_secret(&format!("Password for {user}: "))?;
            let channel = connect(&client).await?;
            let response = pb::auth_service_client::AuthServiceClient::new(channel)
                .login(pb::LoginRequest {
                    username: user.clone(),
                    password,
                })
                .await?
                .into_inner();
            let path = token_path(&client)?;
            crate::pki::write_file(&path, &response.token, true)?;
            let role = response
                .user
                .as_ref()
                .and_then(|u| pb::Role::try_from(u.role).ok())
                .map(|r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
                .unwrap_or_default();
            println!(
                "Signed in as {user} ({role}). Token kept in {}.",
                path.display()
            );
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { store }) => {
            let config = store_config(&store)?;
            let db = crate::server::open_store(&config).await?;
            match db.verify_audit().await? {
                Ok(intact) => {
                    println!(
                        "Audit chain intact: {} entries, head {}",
                        intact.entries, intact.head_sha256
                    );
                    Ok(())
                }
                Err(broken) => {
                    println!(
                        "AUDIT CHAIN BROKEN at entry {}: the entry {}",
                        broken.position, broken.what
                    );
                    anyhow::bail!(
                        "the audit trail has been tampered with (entry {})",
                        broken.position
                    )
                }
            }
        }
        Command::Audit(AuditCommand::List { batch, store }) => {
            let config = store_config(&store)?;
            let db = crate::server::open_store(&config).await?;
            let batch = batch
                .map(|b| uuid::Uuid::parse_str(b.trim()).with_context(|| format!("batch id {b:?}")))
                .transpose()?;
            for e in db.audit_entries(batch).await? {
                println!(
                    "{:>6}  {}  {:<16} {:<24} {:<40} {}{}{}",
                    e.position,
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    e.actor,
                    e.action,
                    e.object,
                    if e.old_value.is_empty() {
                        String::new()
                    } else {
                        format!("{} -> ", e.old_value)
                    },
                    e.new_value,
                    if e.reason.is_empty() {
                        String::new()
                    } else {
                        format!("  (reason: {})", e.reason)
                    }
                );
            }
            Ok(())
        }
        Command::Backup { to, store } => {
            let config = store_config(&store)?;
            let db = crate::server::open_store(&config).await?;
            db.backup_to(&to).await?;
            let size = std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
            println!("Backup written to {} ({size} bytes).", to.display());
            Ok(())
        }
        Command::Restore { from, force, store } => {
            let config = store_config(&store)?;
            restore(&config, &from, force).await
        }
        Command::Order(command) => order_command(command).await,
        Command::Notify(command) => notify::run(command).await,
        Command::Release(command) => release_command(command).await,
        Command::Schedule(command) => schedule::run(command).await,
    }
}

/// Checks a backup before it replaces the store: it must open (integrity check,
/// migrations) and its audit chain must hold. The check runs on a copy, so the
/// backup file itself is never changed.
async fn restore(config: &Config, from: &Path, force: bool) -> anyhow::Result<()> {
    let url = config.database_url();
    let target = url.strip_prefix("sqlite://").map(PathBuf::from).context(
        "restore puts back a SQLite store; restore PostgreSQL with pg_restore (deploy/README.md)",
    )?;
    if !from.is_file() {
        bail!("backup file {} does not exist", from.display());
    }
    if target.exists() && !force {
        bail!(
            "{} exists; stop the hub and pass --force to replace it with the backup",
            target.display()
        );
    }
    let staging = target.with_extension("restoring");
    std::fs::copy(from, &staging).with_context(|| format!("copying {}", from.display()))?;
    let checked = async {
        let store = crate::store::sqlite::SqliteStore::open(&staging)
            .await
            .context("the backup does not open as a hub store")?;
        let verdict = crate::store::Store::verify_audit(&store).await?;
        store.close().await;
        match verdict {
            Ok(intact) => Ok(intact),
            Err(broken) => Err(anyhow::anyhow!(
                "the backup's audit chain is broken: {broken}"
            )),
        }
    }
    .await;
    let intact = match checked {
        Ok(intact) => intact,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
    }
    std::fs::rename(&staging, &target)
        .with_context(|| format!("moving the backup to {}", target.display()))?;
    println!(
        "Restored {} from {}: integrity ok, audit chain intact ({} entries, head {}).",
        target.display(),
        from.display(),
        intact.entries,
        intact.head_sha256
    );
    Ok(())
}

/// Who runs an operator command on the hub machine, for the audit trail: the
/// operating-system account, since these commands work without signing in.
fn local_operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("os-user:{user}")
}

async fn ca_command(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Status { store } => {
            let config = store_config(&store)?;
            let ca = crate::server::load_ca(&config)?;
            let db = crate::server::open_store(&config).await?;
            let sites = db.list_sites().await?;
            println!("CA           {}", ca.fingerprint());
            if let Some(until) = ca.not_after() {
                println!("  valid until {}", until.to_rfc3339());
            }
            match ca.previous_fingerprint() {
                Some(previous) => {
                    println!("previous CA  {previous} (still trusted: rotation in progress)")
                }
                None => println!("previous CA  none"),
            }
            println!();
            println!(
                "{:<16} {:<10} {:<27} ISSUED BY",
                "SITE", "STATUS", "CERTIFICATE UNTIL"
            );
            for s in &sites {
                let issuer = match s.cert_ca_sha256.as_deref() {
                    _ if s.cert_sha256.is_none() => "not enrolled".to_string(),
                    Some(fp) if fp == ca.fingerprint() => "current CA".to_string(),
                    Some(fp) if Some(fp) == ca.previous_fingerprint().as_deref() => {
                        "previous CA".to_string()
                    }
                    Some(fp) => format!("other CA {}", &fp[..16.min(fp.len())]),
                    None => "unknown (enrolled before issuers were recorded)".to_string(),
                };
                println!(
                    "{:<16} {:<10} {:<27} {issuer}",
                    s.site_id,
                    s.status.as_str(),
                    s.cert_not_after
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into()),
                );
            }
            Ok(())
        }
        CaCommand::Rotate { store } => {
            let config = store_config(&store)?;
            let (cert, key) = config.ca_paths();
            let old = crate::server::load_ca(&config)?.fingerprint().to_owned();
            let new = crate::pki::Ca::rotate(&cert, &key)?;
            let db = crate::server::open_store(&config).await?;
            db.audit(
                &crate::audit::NewEntry::new(&local_operator(), "ca.rotated", "ca")
                    .change(&old, new.fingerprint()),
            )
            .await?;
            println!(
                "New hub CA {} (previous {old} stays trusted).",
                new.fingerprint()
            );
            println!("Restart the hub; sites renew their certificates when they next connect.");
            println!("Then `carrel-hub ca status` shows which sites still hold certificates of the previous CA.");
            Ok(())
        }
        CaCommand::RetirePrevious { force, store } => {
            let config = store_config(&store)?;
            let ca = crate::server::load_ca(&config)?;
            let Some(previous) = ca.previous_fingerprint() else {
                println!("No CA rotation in progress; nothing to retire.");
                return Ok(());
            };
            let db = crate::server::open_store(&config).await?;
            let sites = db.list_sites().await?;
            let behind: Vec<_> = sites
                .iter()
                .filter(|s| s.holds_certificate_of_another_ca(ca.fingerprint()))
                .collect();
            if !behind.is_empty() && !force {
                let names: Vec<_> = behind.iter().map(|s| s.site_id.as_str()).collect();
                anyhow::bail!(
                    "{} site(s) still hold a certificate the current CA did not issue: {}; \
                     they renew when they next connect (or pass --force, and they must enroll again)",
                    behind.len(),
                    names.join(", ")
                );
            }
            let (cert, _) = config.ca_paths();
            crate::pki::Ca::retire_previous(&cert)?;
            db.audit(
                &crate::audit::NewEntry::new(&local_operator(), "ca.previous_retired", "ca")
                    .value(previous.clone())
                    .reason(if force {
                        "forced"
                    } else {
                        "every site renewed"
                    }),
            )
            .await?;
            println!("Previous CA {previous} is no longer trusted. Restart the hub.");
            Ok(())
        }
    }
}

fn store_config(args: &StoreArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    config.validate()?;
    Ok(config)
}

/// Reads a secret: a hidden prompt on a terminal, else one line of standard input.
pub fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if secret.is_empty() {
        bail!("no password given");
    }
    Ok(secret)
}

fn read_new_password() -> anyhow::Result<String> {
    let password = read_secret("New password: ")?;
    if std::io::stdin().is_terminal() {
        let again = rpassword::prompt_password("Repeat the password: ")?;
        if again != password {
            bail!("the passwords differ");
        }
    }
    Ok(password)
}

fn token_path(client: &ClientArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &client.token_file {
        return Ok(path.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --token-file")?;
    Ok(Path::new(&home).join(".carrel/token"))
}

/// A TLS channel to the hub, trusting the given CA.
pub async fn connect(client: &ClientArgs) -> anyhow::Result<Channel> {
    let uri: http::Uri = client
        .addr
        .parse()
        .with_context(|| format!("hub address {:?}", client.addr))?;
    if uri.scheme_str() != Some("https") {
        bail!("hub address {:?} must start with https://", client.addr);
    }
    let host = uri
        .host()
        .context("hub address has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let mut tls = ClientTlsConfig::new().domain_name(host);
    match &client.ca_cert {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading CA certificate {}", path.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => bail!("pass --ca-cert (or set CARREL_CA_CERT) with the hub's CA certificate"),
    }
    Endpoint::from_shared(client.addr.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to the hub at {}", client.addr))
}

pub type Authed = InterceptedService<Channel, BearerToken>;

/// Adds the session token to every request.
#[derive(Clone)]
pub struct BearerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub fn with_token(channel: Channel, token: &str) -> anyhow::Result<Authed> {
    let value = format!("Bearer {}", token.trim())
        .parse()
        .context("token is not valid ASCII")?;
    Ok(InterceptedService::new(channel, BearerToken(value)))
}

async fn authed(client: &ClientArgs) -> anyhow::Result<Authed> {
    let path = token_path(client)?;
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no session token at {}; run `carrel-hub login --user NAME` first",
            path.display()
        )
    })?;
    with_token(connect(client).await?, &token)
}

fn state_name(value: i32) -> String {
    pb::BatchState::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("BATCH_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

fn time_text(ts: Option<prost_types::Timestamp>) -> String {
    from_timestamp("at", ts)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub fn order_json(o: &pb::Order) -> serde_json::Value {
    serde_json::json!({
        "order_id": o.order_id, "batch_id": o.batch_id, "coi": o.coi,
        "patient_pseudonym": o.patient_pseudonym, "product": o.product, "recipe_version": o.recipe_version,
        "site_id": o.site_id, "requested_collection_date": o.requested_collection_date,
        "physician": o.physician, "state": state_name(o.state), "current_step": o.current_step,
        "decision_recorded_at_site": o.decision_recorded_at_site,
        "created_at": time_text(o.created_at), "updated_at": time_text(o.updated_at),
    })
}

fn print_orders(orders: &[pb::Order], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = orders.iter().map(order_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<14} {:<12} {:<8} {:<17} {:<12}",
        "ORDER", "COI", "PATIENT", "SITE", "STATE", "STEP"
    );
    for o in orders {
        println!(
            "{:<36} {:<14} {:<12} {:<8} {:<17} {:<12}",
            o.order_id,
            o.coi,
            o.patient_pseudonym,
            o.site_id,
            state_name(o.state),
            o.current_step
        );
    }
    Ok(())
}

async fn order_command(command: OrderCommand) -> anyhow::Result<()> {
    match command {
        OrderCommand::Create {
            patient,
            product,
            site,
            collection_date,
            client,
        } => {
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let order = api
                .create_order(pb::CreateOrderRequest {
                    patient_pseudonym: patient,
                    product,
                    site_id: site,
                    requested_collection_date: collection_date,
                })
                .await?
                .into_inner()
                .order
                .context("hub returned no order")?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&order_json(&order))?);
            } else {
                println!("Order {} created.", order.order_id);
                println!("  COI      {}", order.coi);
                println!("  batch    {}", order.batch_id);
                println!(
                    "  site     {} (recipe {} v{})",
                    order.site_id, order.product, order.recipe_version
                );
                println!("  state    {}", state_name(order.state));
            }
            Ok(())
        }
        OrderCommand::List { state, client } => {
            let state = match state {
                Some(s) => {
                    pb::BatchState::from_str_name(&format!("BATCH_STATE_{}", s.to_uppercase()))
                        .with_context(|| format!("unknown state {s:?}"))? as i32
                }
                None => 0,
            };
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let orders = api
                .list_orders(pb::ListOrdersRequest { state })
                .await?
                .into_inner()
                .orders;
            print_orders(&orders, client.json)
        }
        OrderCommand::Show { order_id, client } => {
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let response = api
                .get_order(pb::GetOrderRequest { order_id })
                .await?
                .into_inner();
            let order = response.order.context("hub returned no order")?;
            if client.json {
                let mut value = order_json(&order);
                value["timeline"] = response
                    .timeline
                    .iter()
                    .map(|t| serde_json::json!({"at": time_text(t.at), "source": t.source, "what": t.what, "detail": t.detail}))
                    .collect();
                if let Some(clock) = &response.clock {
                    value["clock"] = schedule::clock_json(clock);
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            println!(
                "Order {}  COI {}  patient {}",
                order.order_id, order.coi, order.patient_pseudonym
            );
            println!(
                "State {}{}  site {}  recipe {} v{}",
                state_name(order.state),
                if order.current_step.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", order.current_step)
                },
                order.site_id,
                order.product,
                order.recipe_version
            );
            if let Some(clock) = &response.clock {
                println!();
                schedule::print_clock(clock);
            }
            println!();
            for t in response.timeline {
                println!(
                    "{}  {:<4}  {:<26} {}",
                    time_text(t.at),
                    t.source,
                    t.what,
                    t.detail
                );
            }
            Ok(())
        }
        OrderCommand::Reschedule {
            order_id,
            collection_date,
            reason,
            client,
        } => schedule::reschedule(order_id, collection_date, reason, client).await,
        OrderCommand::Cancel {
            order_id,
            reason,
            client,
        } => {
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let order = api
                .cancel_order(pb::CancelOrderRequest { order_id, reason })
                .await?
                .into_inner()
                .order
                .context("hub returned no order")?;
            println!("Order {} is {}.", order.order_id, state_name(order.state));
            Ok(())
        }
    }
}

async fn release_command(command: ReleaseCommand) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::List { client } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let batches = api
                .list_pending(pb::ListPendingRequest {})
                .await?
                .into_inner()
                .batches;
            print_orders(&batches, client.json)
        }
        ReleaseCommand::Show { batch_id, client } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let record = api
                .get_batch_record(pb::GetBatchRecordRequest { batch_id })
                .await?
                .into_inner()
                .record
                .context("hub returned no record")?;
            print_record(&record, client.json)
        }
        ReleaseCommand::Sign {
            batch_id,
            meaning,
            reason,
            record_sha256,
            client,
        } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let record_sha256 = match record_sha256 {
                Some(sha) => sha,
                None => {
                    let record = api
                        .get_batch_record(pb::GetBatchRecordRequest {
                            batch_id: batch_id.clone(),
                        })
                        .await?
                        .into_inner()
                        .record
                        .context("hub returned no record")?;
                    let order = record.order.clone().unwrap_or_default();
                    eprintln!(
                        "Signing batch {} (COI {}): {} exceptions, {} QC results, record SHA-256 {}",
                        order.batch_id,
                        order.coi,
                        record.exceptions.len(),
                        record.qc.len(),
                        record.record_sha256
                    );
                    record.record_sha256
                }
            };
            let password = read_secret("Password (to sign): ")?;
            let response = api
                .sign_release(pb::SignReleaseRequest {
                    batch_id,
                    meaning: match meaning {
                        MeaningArg::Released => pb::ReleaseMeaning::Released,
                        MeaningArg::Rejected => pb::ReleaseMeaning::Rejected,
                    } as i32,
                    password,
                    record_sha256,
                    reason,
                })
                .await?
                .into_inner();
            let signature = response.signature.context("hub returned no signature")?;
            if client.json {
                let order = response.order.as_ref().map(order_json).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "signature_id": signature.signature_id, "manifestation": signature.manifestation,
                        "record_sha256": signature.record_sha256, "order": order,
                    }))?
                );
            } else {
                println!("{}", signature.manifestation);
                println!(
                    "Signature {} bound to record {}.",
                    signature.signature_id, signature.record_sha256
                );
            }
            Ok(())
        }
    }
}

fn print_record(record: &pb::BatchRecord, json: bool) -> anyhow::Result<()> {
    let order = record.order.clone().unwrap_or_default();
    let outcome = |v: i32| {
        pb::QcOutcome::try_from(v)
            .map(|o| {
                o.as_str_name()
                    .trim_start_matches("QC_OUTCOME_")
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    if json {
        let entry = |e: &pb::RecordEntry| serde_json::json!({"site_seq": e.site_seq, "at": time_text(e.recorded_at), "by": e.recorded_by, "kind": e.kind, "summary": e.summary});
        let value = serde_json::json!({
            "order": order_json(&order),
            "record_sha256": record.record_sha256,
            "exceptions": record.exceptions.iter().map(entry).collect::<Vec<_>>(),
            "entries": record.entries.iter().map(entry).collect::<Vec<_>>(),
            "qc": record.qc.iter().map(|q| serde_json::json!({
                "test_id": q.test_id, "name": q.test_name, "result": q.result, "specification": q.specification,
                "hub_outcome": outcome(q.hub_outcome), "site_outcome": outcome(q.site_outcome), "reason": q.reason,
            })).collect::<Vec<_>>(),
            "signatures": record.signatures.iter().map(|s| serde_json::json!({
                "signature_id": s.signature_id, "manifestation": s.manifestation, "record_sha256": s.record_sha256,
            })).collect::<Vec<_>>(),
            "audit": record.audit.iter().map(|a| serde_json::json!({
                "position": a.position, "at": time_text(a.at), "actor": a.actor, "action": a.action,
                "object": a.object, "old_value": a.old_value, "new_value": a.new_value, "reason": a.reason,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Batch {}  COI {}  site {}  state {}",
        order.batch_id,
        order.coi,
        order.site_id,
        state_name(order.state)
    )?;
    writeln!(out, "Record SHA-256 {}", record.record_sha256)?;
    writeln!(out, "\nEXCEPTIONS ({})", record.exceptions.len())?;
    for e in &record.exceptions {
        writeln!(out, "  #{:<5} {:<20} {}", e.site_seq, e.kind, e.summary)?;
    }
    writeln!(out, "\nQC RESULTS")?;
    for q in &record.qc {
        writeln!(
            out,
            "  {:<32} {:<22} spec {:<22} {}",
            q.test_name,
            q.result,
            q.specification,
            outcome(q.hub_outcome).to_uppercase()
        )?;
    }
    writeln!(out, "\nRECORD ({} entries)", record.entries.len())?;
    for e in &record.entries {
        writeln!(
            out,
            "  #{:<5} {}  {:<24} {}",
            e.site_seq,
            time_text(e.recorded_at),
            e.kind,
            e.summary
        )?;
    }
    if !record.signatures.is_empty() {
        writeln!(out, "\nSIGNATURES")?;
        for s in &record.signatures {
            writeln!(out, "  {}  (record {})", s.manifestation, s.record_sha256)?;
        }
    }
    writeln!(out, "\nAUDIT TRAIL ({} entries)", record.audit.len())?;
    for a in &record.audit {
        let change = if a.old_value.is_empty() {
            a.new_value.clone()
        } else {
            format!("{} -> {}", a.old_value, a.new_value)
        };
        let reason = if a.reason.is_empty() {
            String::new()
        } else {
            format!("  reason: {}", a.reason)
        };
        writeln!(
            out,
            "  #{:<5} {}  {:<14} {:<22} {change}{reason}",
            a.position,
            time_text(a.at),
            a.actor,
            a.action
        )?;
    }
    Ok(())
}

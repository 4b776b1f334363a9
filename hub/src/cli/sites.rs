//! `carrel-hub site`: register a site on the hub machine's store (`add`), and list,
//! suspend, resume or cease sites through the API.

use super::client::{authed, ClientArgs};
use super::local::{local_operator, store_config, StoreArgs};
use crate::admin;
use carrel_proto::pb;
use clap::Subcommand;

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

pub async fn run(command: SiteCommand) -> anyhow::Result<()> {
    match command {
        SiteCommand::Add {
            site_id,
            name,
            ttl,
            store,
        } => {
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
            eprintln!("On the site machine, with the token in token.txt: carrel-site-agent enroll --hub https://HUB:PORT --token-file token.txt --data-dir DIR");
            Ok(())
        }
        SiteCommand::List { client } => {
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
                            "status_changed_by": (!s.status_changed_by.is_empty()).then_some(&s.status_changed_by),
                            "status_changed_at": carrel_proto::event::from_timestamp("status_changed_at", s.status_changed_at).ok().map(|t| t.to_rfc3339()),
                            "status_reason": (!s.status_changed_by.is_empty()).then_some(&s.status_reason),
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
                    let status_changed_at = carrel_proto::event::from_timestamp(
                        "status_changed_at",
                        s.status_changed_at,
                    );
                    if let (Some(pb::SiteStatus::Suspended | pb::SiteStatus::Ceased), Ok(at)) =
                        (pb::SiteStatus::try_from(s.status).ok(), status_changed_at)
                    {
                        println!(
                            "{:<16} by {} on {}: {}",
                            "",
                            s.status_changed_by,
                            at.format("%Y-%m-%d %H:%M UTC"),
                            s.status_reason
                        );
                    }
                }
            }
            Ok(())
        }
        SiteCommand::Suspend {
            site_id,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            api.suspend_site(pb::SuspendSiteRequest {
                site_id: site_id.clone(),
                reason,
            })
            .await?;
            println!("Site {site_id} suspended.");
            Ok(())
        }
        SiteCommand::Resume {
            site_id,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            api.resume_site(pb::ResumeSiteRequest {
                site_id: site_id.clone(),
                reason,
            })
            .await?;
            println!("Site {site_id} resumed.");
            Ok(())
        }
        SiteCommand::Cease {
            site_id,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            api.cease_site(pb::CeaseSiteRequest {
                site_id: site_id.clone(),
                reason,
            })
            .await?;
            println!("Site {site_id} ceased; its records stay at the hub.");
            Ok(())
        }
    }
}

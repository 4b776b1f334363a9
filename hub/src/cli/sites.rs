//! `carrel-hub site`: register a site on the hub machine's store (`add`), and list,
//! suspend, resume or cease sites through the API; qualify a site for a product
//! (QA, with a signature), withdraw a qualification, list them.

use super::client::{authed, ClientArgs};
use super::local::{local_operator, store_config, StoreArgs};
use super::release::{signed, signer};
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
    /// Qualify a site for a product (QA), with your signature (asks for your
    /// password): orders of the versions covered are taken there. Replaces the
    /// qualification in force for that site and product.
    Qualify {
        site_id: String,
        /// The product (recipe id), e.g. cd19-car-t.
        product: String,
        /// The first version covered (default: the version in force now).
        #[arg(long)]
        from_version: Option<u32>,
        /// The last version covered (default: every later version too).
        #[arg(long)]
        to_version: Option<u32>,
        /// Why: the qualification run and its report's reference.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        acknowledge_signature_meaning: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Withdraw a site's qualification for a product (QA): no new order of it is
    /// taken there; orders placed keep running.
    WithdrawQualification {
        site_id: String,
        product: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What each site (or one) is qualified to make, withdrawn qualifications too.
    Qualifications {
        site_id: Option<String>,
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
            eprintln!(
                "The site takes orders once QA has qualified it for a product: carrel-hub site qualify {} PRODUCT --reason \"...\"",
                registered.site.site_id
            );
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
        SiteCommand::Qualify {
            site_id,
            product,
            from_version,
            to_version,
            reason,
            user,
            acknowledge_signature_meaning,
            client,
        } => {
            let api = pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let mut request = pb::QualifySiteRequest {
                site_id,
                product,
                from_version: from_version.unwrap_or_default(),
                to_version: to_version.unwrap_or_default(),
                reason,
                acknowledge_signature_meaning,
                ..Default::default()
            };
            (request.username, request.password) = signer(user)?;
            let q = signed(
                request,
                |r| r.acknowledge_signature_meaning = true,
                |r| {
                    let mut api = api.clone();
                    async move { api.qualify_site(r).await }
                },
            )
            .await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&qualification_json(&q))?);
            } else {
                println!(
                    "Site {} qualified for {} {}, signed by {} ({}) at {}.",
                    q.site_id,
                    q.product,
                    q.versions,
                    q.qualified_name,
                    q.qualified_by,
                    time(q.qualified_at)
                );
            }
            Ok(())
        }
        SiteCommand::WithdrawQualification {
            site_id,
            product,
            reason,
            client,
        } => {
            pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?)
                .withdraw_site_qualification(pb::WithdrawSiteQualificationRequest {
                    site_id: site_id.clone(),
                    product: product.clone(),
                    reason,
                })
                .await?;
            println!("Site {site_id} is no longer qualified for {product}: new orders of it there are refused; orders placed keep running.");
            Ok(())
        }
        SiteCommand::Qualifications { site_id, client } => {
            let all = pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?)
                .list_site_qualifications(pb::ListSiteQualificationsRequest {
                    site_id: site_id.clone().unwrap_or_default(),
                })
                .await?
                .into_inner()
                .qualifications;
            if client.json {
                let rows: Vec<_> = all.iter().map(qualification_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if all.is_empty() {
                println!(
                    "No qualifications{}: QA qualifies a site with `carrel-hub site qualify SITE PRODUCT --reason ...`.",
                    site_id.map(|s| format!(" for site {s}")).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<16} {:<16} {:<16} {:<10} SIGNED",
                    "SITE", "PRODUCT", "VERSIONS", "STATE"
                );
                for q in &all {
                    println!(
                        "{:<16} {:<16} {:<16} {:<10} {} ({}) {}: {}",
                        q.site_id,
                        q.product,
                        q.versions,
                        if q.in_force { "in force" } else { "withdrawn" },
                        q.qualified_name,
                        q.qualified_by,
                        time(q.qualified_at),
                        q.reason
                    );
                    if !q.in_force {
                        println!(
                            "{:<16} withdrawn by {} {}: {}",
                            "",
                            q.withdrawn_by,
                            time(q.withdrawn_at),
                            q.withdrawn_reason
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

/// A time the API sent, as the CLI prints it ("-" when absent).
fn time(t: Option<prost_types::Timestamp>) -> String {
    carrel_proto::event::from_timestamp("time", t)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| "-".into())
}

fn qualification_json(q: &pb::SiteQualification) -> serde_json::Value {
    let at = |t| {
        carrel_proto::event::from_timestamp("at", t)
            .ok()
            .map(|t| t.to_rfc3339())
    };
    serde_json::json!({
        "site_id": q.site_id, "product": q.product,
        "from_version": q.from_version,
        "to_version": (q.to_version != 0).then_some(q.to_version),
        "versions": q.versions, "in_force": q.in_force,
        "qualified_by": q.qualified_by, "qualified_name": q.qualified_name,
        "qualified_at": at(q.qualified_at), "meaning": q.meaning, "reason": q.reason,
        "withdrawn_by": (!q.in_force).then_some(&q.withdrawn_by),
        "withdrawn_at": at(q.withdrawn_at),
        "withdrawn_reason": (!q.in_force).then_some(&q.withdrawn_reason),
    })
}

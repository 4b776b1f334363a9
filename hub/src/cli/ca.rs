//! `carrel-hub ca`: the hub's certificate authority on the hub machine: status,
//! rotation, and retiring the previous CA.

use super::local::{local_operator, store_config, StoreArgs};
use clap::Subcommand;

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

pub async fn run(command: CaCommand) -> anyhow::Result<()> {
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
                &crate::audit::NewEntry::new(
                    &local_operator(),
                    crate::audit::Action::CaRotated,
                    crate::audit::Object::Ca,
                )
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
                &crate::audit::NewEntry::new(
                    &local_operator(),
                    crate::audit::Action::CaPreviousRetired,
                    crate::audit::Object::Ca,
                )
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

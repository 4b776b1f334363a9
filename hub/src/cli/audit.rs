//! `carrel-hub audit`: verify the audit trail's hash chain and list its entries, read
//! from the hub machine's store.

use super::local::{store_config, StoreArgs};
use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; report the first entry altered, removed or inserted;
    /// then check it against what each site witnessed of it (a removed tail, a
    /// restored older backup). Exits 1 when the chain is broken or a site's witness
    /// contradicts it.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Acknowledge the open integrity findings (after investigating them), so the
    /// hub serves people again. Audited with the reason.
    Acknowledge {
        /// What was found and what was done about it.
        #[arg(long)]
        reason: String,
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

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { store } => {
            let config = store_config(&store)?;
            let db = crate::server::open_store(&config).await?;
            match db.verify_audit().await? {
                Ok(intact) => {
                    println!(
                        "Audit chain intact: {} entries, head {}",
                        intact.entries, intact.head_sha256
                    );
                    let open = db.check_witnesses().await?;
                    for (site_id, position, _, at) in db.audit_witnesses().await? {
                        println!(
                            "  witnessed by site {site_id}: entry {position} ({})",
                            at.format("%Y-%m-%d %H:%M:%S UTC")
                        );
                    }
                    if open.is_empty() {
                        return Ok(());
                    }
                    for finding in &open {
                        println!("WITNESS CONTRADICTS THE TRAIL: {}", finding.detail);
                    }
                    anyhow::bail!(
                        "the audit trail lost entries its sites witnessed ({}); investigate, then `carrel-hub audit acknowledge --reason ...`",
                        open.iter()
                            .map(|f| f.site_id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
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
        AuditCommand::Acknowledge { reason, store } => {
            let config = store_config(&store)?;
            let db = crate::server::open_store(&config).await?;
            let acknowledged = db
                .acknowledge_findings(&super::local::local_operator(), &reason)
                .await?;
            for finding in &acknowledged {
                println!("Acknowledged: {}", finding.detail);
            }
            println!("The hub serves people again (within a second, if it runs).");
            Ok(())
        }
        AuditCommand::List { batch, store } => {
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
    }
}

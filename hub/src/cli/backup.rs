//! `carrel-hub backup` and `restore`: copy the hub's SQLite store while the hub runs,
//! and put a checked backup back in its place.

use super::local::{store_config, StoreArgs};
use crate::Config;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Writes a consistent copy of the store to `to`.
pub async fn backup(to: PathBuf, store: StoreArgs) -> anyhow::Result<()> {
    let config = store_config(&store)?;
    let db = crate::server::open_store(&config).await?;
    db.backup_to(&to).await?;
    let size = std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
    println!("Backup written to {} ({size} bytes).", to.display());
    Ok(())
}

/// Restores the store named by `store`'s config from the backup at `from`.
pub async fn run_restore(from: PathBuf, force: bool, store: StoreArgs) -> anyhow::Result<()> {
    let config = store_config(&store)?;
    restore(&config, &from, force).await
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

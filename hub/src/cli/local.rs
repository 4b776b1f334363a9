//! What the commands that run on the hub machine share: finding its config and data
//! directory (`--config`, `--data-dir`), and naming the operator in the audit trail.

use crate::Config;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The hub's config file, to find its database and CA.
    #[arg(long, env = "CARREL_HUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override the data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub fn store_config(args: &StoreArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    config.validate()?;
    Ok(config)
}

/// Who runs an operator command on the hub machine, for the audit trail: the
/// operating-system account, since these commands work without signing in.
pub fn local_operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("os-user:{user}")
}

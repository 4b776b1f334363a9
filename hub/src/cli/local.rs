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
/// operating-system account, since these commands work without signing in. It is
/// the process's real user id, named from the account database (`/etc/passwd`), not
/// `USER` or `LOGNAME`, which any caller can set (or leave unset, as a service or a
/// container does). A user id without an entry is named by its number.
pub fn local_operator() -> String {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    match account_name(&passwd, uid) {
        Some(name) => format!("os-user:{name}"),
        None => format!("os-user:uid-{uid}"),
    }
}

/// The name of `uid` in an `/etc/passwd` text (`name:password:uid:...` per line).
fn account_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_is_named_from_the_account_database() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # a comment\n\
                      grace:x:1001:1001:Grace Hopper:/home/grace:/bin/sh\n";
        assert_eq!(account_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(account_name(passwd, 1001).as_deref(), Some("grace"));
        assert_eq!(account_name(passwd, 4242), None);
    }
}

//! `carrel-hub user add`: add a user to the hub machine's store, with a password read
//! from a prompt or standard input.

use super::client::read_secret;
use super::local::{local_operator, store_config, StoreArgs};
use crate::admin;
use crate::model::Role;
use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use std::io::IsTerminal;

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

pub async fn run(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            username,
            role,
            full_name,
            store,
        } => {
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
    }
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

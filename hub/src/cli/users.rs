//! `carrel-hub user`: add a user to the hub machine's store (`add`, with a password
//! read from a prompt or standard input); and, through the API as an admin, assign
//! people to the sites they work at, remove them, disable or enable them. A site
//! hears each change over its link as a directory command.

use super::client::{authed, read_secret, ClientArgs};
use super::local::{local_operator, store_config, StoreArgs};
use crate::admin;
use crate::model::Role;
use anyhow::bail;
use carrel_proto::pb;
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
    /// Assign a person (technician, QA or physician) to a site, so they can sign in
    /// there. Run it again to send their entry again, which unlocks them at the site.
    Assign {
        username: String,
        #[arg(long)]
        site: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The person no longer works at the site.
    Remove {
        username: String,
        #[arg(long)]
        site: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable a user: their hub sessions end, and every site they work at refuses
    /// them once its link delivers the change.
    Disable {
        username: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Issue a bedside badge: the person types a PIN of 6 or more digits (prompt, or
    /// standard input); the badge id printed is what its barcode encodes. A new badge
    /// replaces any earlier one at every site they work at.
    Badge {
        username: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a disabled user again (at the hub and at their sites).
    Enable {
        username: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a person's role (never your own): their sessions end, and their sites
    /// hear of it.
    Role {
        username: String,
        #[arg(long)]
        role: RoleArg,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve the qa or admin role another administrator asked to grant a person
    /// (needed on a hub with two or more administrators).
    Approve {
        username: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reset a person's password: the old one stops working, and the one-time code
    /// printed (once) lets them choose a new one with `carrel-hub password reset`
    /// or on the console's sign-in page. You never learn their password.
    Reset {
        username: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `carrel-hub password`: a person's own password.
#[derive(Debug, Subcommand)]
pub enum PasswordCommand {
    /// Change your password (signed in): asks for the current one and the new one.
    Change {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Choose a new password with the one-time code an administrator gave you: asks
    /// for the code and the new password.
    Reset {
        /// Your user name.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run_password(command: PasswordCommand) -> anyhow::Result<()> {
    match command {
        PasswordCommand::Change { client } => {
            let current_password = read_secret("Current password: ")?;
            let new_password = read_new_password()?;
            pb::auth_service_client::AuthServiceClient::new(authed(&client).await?)
                .change_password(pb::ChangePasswordRequest {
                    current_password,
                    new_password,
                })
                .await?;
            println!("Password changed; your sites get the new one over their links.");
            Ok(())
        }
        PasswordCommand::Reset { user, client } => {
            let reset_code = read_secret("Reset code: ")?;
            let new_password = read_new_password()?;
            pb::auth_service_client::AuthServiceClient::new(super::client::connect(&client).await?)
                .complete_password_reset(pb::CompletePasswordResetRequest {
                    username: user.clone(),
                    reset_code,
                    new_password,
                })
                .await?;
            println!("Password chosen; sign in with `carrel-hub login --user {user}`.");
            Ok(())
        }
    }
}

fn print_directory_change(
    what: &str,
    response: pb::DirectoryChangeResponse,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let sites: Vec<_> = response
            .sites
            .iter()
            .map(|s| serde_json::json!({"site_id": s.site_id, "directory_version": s.directory_version}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "sites": sites }))?
        );
        return Ok(());
    }
    println!("{what}.");
    for site in response.sites {
        println!(
            "  site {}: directory version {} (sent over its link; an offline site gets it when it reconnects)",
            site.site_id, site.directory_version
        );
    }
    Ok(())
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
        UserCommand::Assign {
            username,
            site,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let response = api
                .assign_user_to_site(pb::AssignUserToSiteRequest {
                    username: username.clone(),
                    site_id: site.clone(),
                })
                .await?
                .into_inner();
            print_directory_change(
                &format!("{username} works at site {site}"),
                response,
                client.json,
            )
        }
        UserCommand::Remove {
            username,
            site,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let response = api
                .remove_user_from_site(pb::RemoveUserFromSiteRequest {
                    username: username.clone(),
                    site_id: site.clone(),
                })
                .await?
                .into_inner();
            print_directory_change(
                &format!("{username} no longer works at site {site}"),
                response,
                client.json,
            )
        }
        UserCommand::Disable {
            username,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let response = api
                .disable_user(pb::SetUserDisabledRequest {
                    username: username.clone(),
                    reason,
                })
                .await?
                .into_inner();
            print_directory_change(&format!("{username} is disabled"), response, client.json)
        }
        UserCommand::Badge { username, client } => {
            let pin = read_secret("PIN for the badge (6 or more digits): ")?;
            if std::io::stdin().is_terminal() {
                let again = rpassword::prompt_password("Repeat the PIN: ")?;
                if again != pin {
                    bail!("the PINs differ");
                }
            }
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let response = api
                .issue_badge(pb::IssueBadgeRequest {
                    username: username.clone(),
                    pin,
                })
                .await?
                .into_inner();
            if client.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "badge_id": response.badge_id,
                        "sites": response.sites.iter().map(|s| serde_json::json!({"site_id": s.site_id, "directory_version": s.directory_version})).collect::<Vec<_>>(),
                    }))?
                );
                return Ok(());
            }
            print_directory_change(
                &format!(
                    "Badge {} issued to {username}; print it as a barcode (Code 128)",
                    response.badge_id
                ),
                pb::DirectoryChangeResponse {
                    sites: response.sites,
                    awaits_approval: false,
                },
                false,
            )
        }
        UserCommand::Role {
            username,
            role,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let role: Role = role.into();
            let response = api
                .change_role(pb::ChangeRoleRequest {
                    username: username.clone(),
                    role: crate::grpc::role_to_pb(role) as i32,
                    reason,
                })
                .await?
                .into_inner();
            if response.awaits_approval {
                if client.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "awaits_approval": true })
                        )?
                    );
                } else {
                    println!(
                        "Making {username} a {role} waits for a second administrator: \
                         carrel-hub user approve {username} --reason \"...\""
                    );
                }
                return Ok(());
            }
            print_directory_change(
                &format!("{username} is now a {role}"),
                response,
                client.json,
            )
        }
        UserCommand::Approve {
            username,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let response = api
                .approve_role(pb::ApproveRoleRequest {
                    username: username.clone(),
                    reason,
                })
                .await?
                .into_inner();
            print_directory_change(
                &format!("The role grant of {username} is approved and made"),
                response,
                client.json,
            )
        }
        UserCommand::Reset {
            username,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let response = api
                .reset_password(pb::ResetPasswordRequest {
                    username: username.clone(),
                    reason,
                })
                .await?
                .into_inner();
            let expires = super::output::time_text(response.expires_at);
            if client.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "reset_code": response.reset_code, "expires_at": expires,
                    }))?
                );
            } else {
                println!("{username}'s password no longer works; their sessions have ended.");
                println!("Give them this one-time reset code (shown once, valid until {expires}):");
                println!("  {}", response.reset_code);
                println!("They choose a new password on the console's sign-in page or with");
                println!("  carrel-hub password reset --user {username}");
            }
            Ok(())
        }
        UserCommand::Enable {
            username,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let response = api
                .enable_user(pb::SetUserDisabledRequest {
                    username: username.clone(),
                    reason,
                })
                .await?
                .into_inner();
            print_directory_change(&format!("{username} is enabled"), response, client.json)
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

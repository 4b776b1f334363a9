//! `carrel-hub integration`: system accounts of hospitals' integration engines, which
//! order through the FHIR door (OAuth 2 client credentials at `/fhir/auth/token`) for
//! the physicians named. Administrators, through the API.

use super::client::{authed, ClientArgs};
use carrel_proto::event::from_timestamp;
use carrel_proto::pb;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum IntegrationCommand {
    /// Make a system account for an integration engine; prints its client secret,
    /// once (the hub keeps only a hash). Give it to the hospital's integration team.
    Add {
        /// The OAuth 2 client_id: 3 to 64 lower-case letters, digits, '-', '_' or '.'.
        client_id: String,
        /// What the engine is, such as "St Elsewhere EHR interface engine".
        #[arg(long)]
        name: String,
        /// A physician (user name) the engine orders for; repeat for more.
        #[arg(long = "physician", required = true)]
        physicians: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The system accounts, with the physicians each orders for.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put physicians in (--add) or take them out of (--remove) an account's scope.
    Scope {
        client_id: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable an account: its access tokens stop working at once.
    Disable {
        client_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a disabled account again (it asks the token endpoint for a new token).
    Enable {
        client_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Issue a new client secret (printed once): the old one and every token issued
    /// with it stop working.
    RotateSecret {
        client_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn made_at(account: &pb::SystemAccount) -> Option<chrono::DateTime<chrono::Utc>> {
    from_timestamp("created_at", account.created_at).ok()
}

fn account_json(account: &pb::SystemAccount) -> serde_json::Value {
    serde_json::json!({
        "client_id": account.client_id,
        "name": account.name,
        "disabled": account.disabled,
        "physicians": account.physicians,
        "created_by": account.created_by,
        "created_at": made_at(account).map(|t| t.to_rfc3339()),
    })
}

fn account_text(account: &pb::SystemAccount) -> String {
    format!(
        "{}  {}{}\n  orders for: {}\n  made by {} on {}",
        account.client_id,
        account.name,
        if account.disabled { "  [DISABLED]" } else { "" },
        account.physicians.join(", "),
        account.created_by,
        made_at(account)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default(),
    )
}

fn print_account(what: &str, account: &pb::SystemAccount, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&account_json(account))?);
    } else {
        println!("{what}.\n{}", account_text(account));
    }
    Ok(())
}

fn print_secret(what: &str, answer: &pb::SystemAccountSecret, json: bool) -> anyhow::Result<()> {
    let account = answer.account.clone().unwrap_or_default();
    if json {
        let mut value = account_json(&account);
        value["client_secret"] = serde_json::json!(answer.client_secret);
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{what}.\n{}", account_text(&account));
    println!(
        "\nclient_id:     {}\nclient_secret: {}\n\nThe secret is shown this once; the hub keeps only its hash. The engine asks\n\
         POST /fhir/auth/token (grant_type=client_credentials, HTTP Basic) for an access token.",
        account.client_id, answer.client_secret
    );
    Ok(())
}

pub async fn run(command: IntegrationCommand) -> anyhow::Result<()> {
    match command {
        IntegrationCommand::Add {
            client_id,
            name,
            physicians,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let answer = api
                .add_system_account(pb::AddSystemAccountRequest {
                    client_id,
                    name,
                    physicians,
                })
                .await?
                .into_inner();
            print_secret("System account made", &answer, client.json)
        }
        IntegrationCommand::List { client } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let accounts = api
                .list_system_accounts(pb::ListSystemAccountsRequest {})
                .await?
                .into_inner()
                .accounts;
            if client.json {
                let list: Vec<_> = accounts.iter().map(account_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if accounts.is_empty() {
                println!("No system accounts (add one with `carrel-hub integration add`).");
            } else {
                for account in &accounts {
                    println!("{}", account_text(account));
                }
            }
            Ok(())
        }
        IntegrationCommand::Scope {
            client_id,
            add,
            remove,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let account = api
                .change_system_account_scope(pb::ChangeSystemAccountScopeRequest {
                    client_id,
                    add_physicians: add,
                    remove_physicians: remove,
                    reason,
                })
                .await?
                .into_inner();
            print_account("Scope changed", &account, client.json)
        }
        IntegrationCommand::Disable {
            client_id,
            reason,
            client,
        } => set_disabled(true, client_id, reason, client).await,
        IntegrationCommand::Enable {
            client_id,
            reason,
            client,
        } => set_disabled(false, client_id, reason, client).await,
        IntegrationCommand::RotateSecret {
            client_id,
            reason,
            client,
        } => {
            let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
            let answer = api
                .rotate_system_account_secret(pb::RotateSystemAccountSecretRequest {
                    client_id,
                    reason,
                })
                .await?
                .into_inner();
            print_secret(
                "New client secret issued; the old one and its tokens no longer work",
                &answer,
                client.json,
            )
        }
    }
}

async fn set_disabled(
    disabled: bool,
    client_id: String,
    reason: String,
    client: ClientArgs,
) -> anyhow::Result<()> {
    let mut api = pb::admin_service_client::AdminServiceClient::new(authed(&client).await?);
    let request = pb::SetSystemAccountDisabledRequest { client_id, reason };
    let (account, what) = if disabled {
        (
            api.disable_system_account(request).await?,
            "Disabled; its access tokens no longer work",
        )
    } else {
        (api.enable_system_account(request).await?, "Enabled")
    };
    print_account(what, &account.into_inner(), client.json)
}

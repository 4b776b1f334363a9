//! `carrel-hub notify ...`: subscriptions and the notifications sent for them, over
//! the API like `carrel-hub order ...`.

use super::client::{authed, ClientArgs};
use super::output::time_text;
use anyhow::Context;
use carrel_proto::pb;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Subscribe to notifications by e-mail or webhook.
    Subscribe {
        /// Kinds, comma-separated: order_dispatched, cells_received, coi_mismatch,
        /// out_of_specification, deviation, awaiting_release, released, rejected,
        /// delayed, site_link_down, site_link_restored.
        #[arg(long, value_delimiter = ',', required = true)]
        kinds: Vec<String>,
        /// Send e-mail to this address.
        #[arg(long, conflicts_with = "webhook", required_unless_present = "webhook")]
        email: Option<String>,
        /// POST signed JSON to this URL (https).
        #[arg(long)]
        webhook: Option<String>,
        /// Only this site's happenings.
        #[arg(long)]
        site: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List subscriptions (yours; everyone's with --all for QA and admins).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End a subscription.
    Unsubscribe {
        subscription_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Notifications queued for you, newest first, with their delivery state.
    Outbox {
        /// Everyone's (QA and admins).
        #[arg(long)]
        all: bool,
        /// Only pending, delivered or failed ones.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 200)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put a failed notification back in the queue (QA and admins).
    Requeue {
        notification_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn delivery_state_name(value: i32) -> String {
    pb::DeliveryState::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("DELIVERY_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

fn subscription_json(s: &pb::Subscription) -> serde_json::Value {
    serde_json::json!({
        "subscription_id": s.subscription_id, "owner": s.owner, "kinds": s.kinds,
        "channel": s.channel, "target": s.target, "site_id": s.site_id,
        "created_at": time_text(s.created_at),
    })
}

fn notification_json(n: &pb::Notification) -> serde_json::Value {
    serde_json::json!({
        "notification_id": n.notification_id, "subscription_id": n.subscription_id,
        "owner": n.owner, "channel": n.channel, "target": n.target, "kind": n.kind,
        "summary": n.summary, "site_id": n.site_id, "batch_id": n.batch_id, "coi": n.coi,
        "created_at": time_text(n.created_at), "state": delivery_state_name(n.state),
        "attempts": n.attempts, "next_attempt_at": time_text(n.next_attempt_at),
        "last_error": n.last_error, "delivered_at": time_text(n.delivered_at),
    })
}

fn print_notifications(rows: &[pb::Notification], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = rows.iter().map(notification_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<20} {:<9} {:>8} {:<19} SUMMARY",
        "NOTIFICATION", "KIND", "STATE", "ATTEMPTS", "CREATED"
    );
    for n in rows {
        println!(
            "{:<36} {:<20} {:<9} {:>8} {:<19} {}",
            n.notification_id,
            n.kind,
            delivery_state_name(n.state),
            n.attempts,
            time_text(n.created_at),
            n.summary
        );
        if !n.last_error.is_empty() {
            println!("{:<36} last error: {}", "", n.last_error);
        }
    }
    Ok(())
}

pub async fn run(command: NotifyCommand) -> anyhow::Result<()> {
    match command {
        NotifyCommand::Subscribe {
            kinds,
            email,
            webhook,
            site,
            client,
        } => {
            let mut api = pb::notification_service_client::NotificationServiceClient::new(
                authed(&client).await?,
            );
            let answer = api
                .subscribe(pb::SubscribeRequest {
                    kinds,
                    email: email.unwrap_or_default(),
                    webhook_url: webhook.unwrap_or_default(),
                    site_id: site.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let subscription = answer
                .subscription
                .context("hub returned no subscription")?;
            if client.json {
                let mut value = subscription_json(&subscription);
                value["webhook_secret"] = answer.webhook_secret.clone().into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("Subscription {} created.", subscription.subscription_id);
                println!("  {} {}", subscription.channel, subscription.target);
                println!("  kinds  {}", subscription.kinds.join(", "));
                if !answer.webhook_secret.is_empty() {
                    println!("  secret {}", answer.webhook_secret);
                    println!("  (shown once: the hub signs each request with it, see README \"Notifications\")");
                }
            }
            Ok(())
        }
        NotifyCommand::List { all, client } => {
            let mut api = pb::notification_service_client::NotificationServiceClient::new(
                authed(&client).await?,
            );
            let rows = api
                .list_subscriptions(pb::ListSubscriptionsRequest { all })
                .await?
                .into_inner()
                .subscriptions;
            if client.json {
                let rows: Vec<_> = rows.iter().map(subscription_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<36} {:<12} {:<8} {:<40} KINDS",
                    "SUBSCRIPTION", "OWNER", "CHANNEL", "TARGET"
                );
                for s in rows {
                    println!(
                        "{:<36} {:<12} {:<8} {:<40} {}",
                        s.subscription_id,
                        s.owner,
                        s.channel,
                        s.target,
                        s.kinds.join(",")
                    );
                }
            }
            Ok(())
        }
        NotifyCommand::Unsubscribe {
            subscription_id,
            client,
        } => {
            let mut api = pb::notification_service_client::NotificationServiceClient::new(
                authed(&client).await?,
            );
            api.unsubscribe(pb::UnsubscribeRequest {
                subscription_id: subscription_id.clone(),
            })
            .await?;
            println!("Subscription {subscription_id} ended.");
            Ok(())
        }
        NotifyCommand::Outbox {
            all,
            state,
            limit,
            client,
        } => {
            let state = match state.as_deref() {
                None => pb::DeliveryState::Unspecified,
                Some(name) => pb::DeliveryState::from_str_name(&format!(
                    "DELIVERY_STATE_{}",
                    name.to_uppercase()
                ))
                .with_context(|| format!("state {name:?}: use pending, delivered or failed"))?,
            };
            let mut api = pb::notification_service_client::NotificationServiceClient::new(
                authed(&client).await?,
            );
            let rows = api
                .list_notifications(pb::ListNotificationsRequest {
                    all,
                    state: state as i32,
                    limit,
                })
                .await?
                .into_inner()
                .notifications;
            print_notifications(&rows, client.json)
        }
        NotifyCommand::Requeue {
            notification_id,
            client,
        } => {
            let mut api = pb::notification_service_client::NotificationServiceClient::new(
                authed(&client).await?,
            );
            let entry = api
                .requeue(pb::RequeueRequest { notification_id })
                .await?
                .into_inner()
                .notification
                .context("hub returned no notification")?;
            print_notifications(std::slice::from_ref(&entry), client.json)
        }
    }
}

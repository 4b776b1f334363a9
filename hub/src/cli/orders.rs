//! `carrel-hub order`: create, list, show, reschedule and cancel orders through the
//! API.

use super::client::{authed, ClientArgs};
use super::output::{order_json, order_state_text, print_orders, site_time, state_name, time_text};
use super::schedule;
use anyhow::Context;
use carrel_proto::pb;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Order a therapy for a patient.
    Create {
        /// Patient pseudonym (never a name).
        #[arg(long)]
        patient: String,
        /// Product (recipe id).
        #[arg(long, default_value = "cd19-car-t")]
        product: String,
        /// Treating site.
        #[arg(long)]
        site: String,
        /// Requested collection date, YYYY-MM-DD.
        #[arg(long)]
        collection_date: String,
        /// A UUID naming this request (default: a new one). Run the command again with
        /// the same id (after a lost answer, say) and it shows the order the first run
        /// placed instead of placing another.
        #[arg(long)]
        request_id: Option<uuid::Uuid>,
        /// Place the order even though the patient already has an open order for
        /// the product (without it, such an order is refused and the open one named).
        #[arg(long)]
        second_order: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List orders (a physician sees their own).
    List {
        /// Only orders in this state (e.g. in_process, awaiting_release).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an order's status and timeline.
    Show {
        order_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move an order's collection to another date (before collection).
    Reschedule {
        order_id: String,
        /// New collection date, YYYY-MM-DD.
        #[arg(long)]
        collection_date: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel an order still in manufacturing.
    Cancel {
        order_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: OrderCommand) -> anyhow::Result<()> {
    match command {
        OrderCommand::Create {
            patient,
            product,
            site,
            collection_date,
            request_id,
            second_order,
            client,
        } => {
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let order = api
                .create_order(pb::CreateOrderRequest {
                    patient_pseudonym: patient,
                    product,
                    site_id: site,
                    requested_collection_date: collection_date,
                    request_id: request_id.unwrap_or_else(uuid::Uuid::now_v7).to_string(),
                    confirm_second_order: second_order,
                })
                .await?
                .into_inner()
                .order
                .context("hub returned no order")?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&order_json(&order))?);
            } else {
                println!("Order {} created.", order.order_id);
                println!("  COI      {}", order.coi);
                println!("  batch    {}", order.batch_id);
                println!(
                    "  site     {} (recipe {} v{})",
                    order.site_id, order.product, order.recipe_version
                );
                println!("  state    {}", state_name(order.state));
            }
            Ok(())
        }
        OrderCommand::List { state, client } => {
            let state = match state {
                Some(s) => {
                    pb::BatchState::from_str_name(&format!("BATCH_STATE_{}", s.to_uppercase()))
                        .with_context(|| format!("unknown state {s:?}"))? as i32
                }
                None => 0,
            };
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let orders = api
                .list_orders(pb::ListOrdersRequest { state })
                .await?
                .into_inner()
                .orders;
            print_orders(&orders, client.json)
        }
        OrderCommand::Show { order_id, client } => {
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let response = api
                .get_order(pb::GetOrderRequest { order_id })
                .await?
                .into_inner();
            let order = response.order.context("hub returned no order")?;
            if client.json {
                let mut value = order_json(&order);
                value["timeline"] = response
                    .timeline
                    .iter()
                    .map(|t| serde_json::json!({"at": time_text(t.at), "source": t.source, "what": t.what, "detail": t.detail}))
                    .collect();
                if let Some(clock) = &response.clock {
                    value["clock"] = schedule::clock_json(clock);
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            println!(
                "Order {}  COI {}  patient {}",
                order.order_id, order.coi, order.patient_pseudonym
            );
            println!(
                "State {}{}  site {}  recipe {} v{}",
                order_state_text(&order),
                if order.current_step.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", order.current_step)
                },
                order.site_id,
                order.product,
                order.recipe_version
            );
            if let Some(clock) = &response.clock {
                println!();
                schedule::print_clock(clock);
            }
            println!();
            let zone = response
                .clock
                .as_ref()
                .map_or(String::new(), |c| c.time_zone.clone());
            for t in response.timeline {
                println!(
                    "{}  {:<4}  {:<26} {}",
                    site_time(t.at, &zone),
                    t.source,
                    t.what,
                    t.detail
                );
            }
            Ok(())
        }
        OrderCommand::Reschedule {
            order_id,
            collection_date,
            reason,
            client,
        } => schedule::reschedule(order_id, collection_date, reason, client).await,
        OrderCommand::Cancel {
            order_id,
            reason,
            client,
        } => {
            let mut api = pb::order_service_client::OrderServiceClient::new(authed(&client).await?);
            let order = api
                .cancel_order(pb::CancelOrderRequest { order_id, reason })
                .await?
                .into_inner()
                .order
                .context("hub returned no order")?;
            println!("Order {} is {}.", order.order_id, state_name(order.state));
            Ok(())
        }
    }
}

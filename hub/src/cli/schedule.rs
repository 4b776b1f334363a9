//! `carrel-hub schedule …` and the vein-to-vein clock in `order show`: clients of
//! the `ScheduleService` API.

use super::client::{authed, ClientArgs};
use super::output::{site_time, time_text};
use crate::clock::span_text;
use crate::grpc::schedule::{capacity_from_pb, capacity_to_pb};
use crate::schedule::Capacity;
use anyhow::Context;
use carrel_proto::event::from_timestamp;
use carrel_proto::pb;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Show a site's capacity as TOML, or declare it from a file (administrators).
    Capacity {
        site: String,
        /// Declare the capacity in this TOML file (see deploy/capacity.example.toml).
        #[arg(long)]
        set: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The earliest collection dates that can be booked.
    Propose {
        /// The site asked for (may be left out with --other-sites).
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long, default_value = "cd19-car-t")]
        product: String,
        /// Earliest date wanted, YYYY-MM-DD (today when left out).
        #[arg(long, default_value = "")]
        from: String,
        /// Also propose dates at the network's other sites.
        #[arg(long)]
        other_sites: bool,
        #[arg(long, default_value_t = 3)]
        count: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Booked and available instrument hours and collection slots per week.
    Utilisation {
        site: String,
        /// A date in the first week (this week when left out).
        #[arg(long, default_value = "")]
        from: String,
        #[arg(long, default_value_t = 4)]
        weeks: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Median vein-to-vein time and share of orders released on time.
    Summary {
        /// One site only.
        #[arg(long, default_value = "")]
        site: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn schedule_api(
    channel: super::client::Authed,
) -> pb::schedule_service_client::ScheduleServiceClient<super::client::Authed> {
    pb::schedule_service_client::ScheduleServiceClient::new(channel)
}

pub async fn run(command: ScheduleCommand) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Capacity { site, set, client } => {
            let mut api = schedule_api(authed(&client).await?);
            if let Some(path) = set {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let capacity = Capacity::from_toml(&text)
                    .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
                api.set_capacity(pb::SetCapacityRequest {
                    site_id: site.clone(),
                    capacity: Some(capacity_to_pb(&capacity)),
                })
                .await?;
                println!("Capacity of site {site} declared.");
                return Ok(());
            }
            let capacity = api
                .get_capacity(pb::GetCapacityRequest { site_id: site })
                .await?
                .into_inner()
                .capacity
                .context("hub returned no capacity")?;
            let capacity = capacity_from_pb(capacity)?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&capacity)?);
            } else {
                print!("{}", capacity.to_toml());
            }
            Ok(())
        }
        ScheduleCommand::Propose {
            site,
            product,
            from,
            other_sites,
            count,
            client,
        } => {
            let mut api = schedule_api(authed(&client).await?);
            let proposals = api
                .propose_collection(pb::ProposeCollectionRequest {
                    product,
                    site_id: site,
                    from,
                    other_sites,
                    count,
                })
                .await?
                .into_inner()
                .proposals;
            if client.json {
                let rows: Vec<_> = proposals
                    .iter()
                    .map(|p| serde_json::json!({
                        "site_id": p.site_id, "collection_date": p.collection_date, "slot": p.slot,
                        "collection_start": time_text(p.collection_start),
                        "manufacturing_end": time_text(p.manufacturing_end),
                        "expected_release": time_text(p.expected_release),
                        "time_zone": p.time_zone,
                    }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            // Dates and times are each site's local ones.
            println!(
                "{:<10} {:<11} {:>4}  {:<21}  {:<21}  EXPECTED RELEASE",
                "SITE", "DATE", "SLOT", "COLLECTION", "MANUFACTURING END"
            );
            for p in proposals {
                println!(
                    "{:<10} {:<11} {:>4}  {:<21}  {:<21}  {}",
                    p.site_id,
                    p.collection_date,
                    p.slot,
                    site_time(p.collection_start, &p.time_zone),
                    site_time(p.manufacturing_end, &p.time_zone),
                    site_time(p.expected_release, &p.time_zone)
                );
            }
            Ok(())
        }
        ScheduleCommand::Utilisation {
            site,
            from,
            weeks,
            client,
        } => {
            let mut api = schedule_api(authed(&client).await?);
            let rows = api
                .get_utilisation(pb::GetUtilisationRequest {
                    site_id: site,
                    from,
                    weeks,
                })
                .await?
                .into_inner()
                .rows;
            if client.json {
                let rows: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "week_start": r.week_start, "resource": r.resource, "units": r.units,
                            "available": r.available, "booked": r.booked,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<11} {:<26} {:>5} {:>10} {:>10} {:>6}",
                "WEEK OF", "RESOURCE", "UNITS", "AVAILABLE", "BOOKED", "USED"
            );
            for r in rows {
                let share = if r.available > 0.0 {
                    100.0 * r.booked / r.available
                } else {
                    0.0
                };
                let unit = if r.resource == "collection slots" {
                    ""
                } else {
                    " h"
                };
                println!(
                    "{:<11} {:<26} {:>5} {:>10} {:>10} {:>5.0}%",
                    r.week_start,
                    r.resource,
                    r.units,
                    format!("{:.0}{unit}", r.available),
                    format!("{:.0}{unit}", r.booked),
                    share
                );
            }
            Ok(())
        }
        ScheduleCommand::Summary { site, client } => {
            let mut api = schedule_api(authed(&client).await?);
            let rows = api
                .get_vein_to_vein_summary(pb::GetVeinToVeinSummaryRequest { site_id: site })
                .await?
                .into_inner()
                .summaries;
            let span = |secs: i64| {
                if secs == 0 {
                    "-".to_owned()
                } else {
                    span_text(chrono::Duration::seconds(secs))
                }
            };
            if client.json {
                let rows: Vec<_> = rows
                    .iter()
                    .map(|s| serde_json::json!({
                        "site_id": s.site_id, "orders": s.orders, "open": s.open, "delayed": s.delayed,
                        "released": s.released, "released_on_time": s.released_on_time,
                        "median_vein_to_vein_secs": s.median_vein_to_vein_secs,
                        "median_order_to_release_secs": s.median_order_to_release_secs,
                    }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<10} {:>6} {:>5} {:>7} {:>8} {:>8}  {:<14} {:<14}",
                "SITE",
                "ORDERS",
                "OPEN",
                "DELAYED",
                "RELEASED",
                "ON TIME",
                "MEDIAN V2V",
                "ORDER→RELEASE"
            );
            for s in rows {
                let on_time = if s.released > 0 {
                    format!(
                        "{:.0}%",
                        100.0 * f64::from(s.released_on_time) / f64::from(s.released)
                    )
                } else {
                    "-".into()
                };
                println!(
                    "{:<10} {:>6} {:>5} {:>7} {:>8} {:>8}  {:<14} {:<14}",
                    if s.site_id.is_empty() {
                        "network"
                    } else {
                        &s.site_id
                    },
                    s.orders,
                    s.open,
                    s.delayed,
                    s.released,
                    on_time,
                    span(s.median_vein_to_vein_secs),
                    span(s.median_order_to_release_secs)
                );
            }
            Ok(())
        }
    }
}

/// The vein-to-vein clock as `order show` prints it.
pub fn print_clock(clock: &pb::VeinToVein) {
    // Times are the order's site's local ones.
    let short = |ts: Option<prost_types::Timestamp>| site_time(ts, &clock.time_zone);
    let verdict = if clock.stopped {
        "stopped".to_owned()
    } else if clock.delayed {
        format!(
            "DELAYED by {} (behind plan since {})",
            span_text(chrono::Duration::seconds(clock.delay_secs)),
            clock.delayed_since
        )
    } else {
        "on plan".to_owned()
    };
    println!(
        "Vein-to-vein: planned release {}, expected {}: {verdict}",
        short(clock.planned_release),
        short(clock.expected_release)
    );
    if let Some(b) = &clock.booking {
        println!(
            "Booked: collection {} slot {} at {}",
            b.collection_date, b.slot, b.site_id
        );
    } else {
        println!("Not booked (the site declares no capacity): planned from the requested date");
    }
    println!(
        "  {:<20} {:<21}  {:<21}  EXPECTED    (times at the site, {})",
        "MILESTONE",
        "PLANNED",
        "ACTUAL",
        if clock.time_zone.is_empty() {
            "UTC"
        } else {
            &clock.time_zone
        }
    );
    for m in &clock.milestones {
        let expected = if m.actual.is_some() {
            String::new()
        } else {
            short(m.expected)
        };
        println!(
            "  {:<20} {:<21}  {:<21}  {}",
            m.name,
            short(m.planned),
            if m.actual.is_some() {
                short(m.actual)
            } else {
                "-".into()
            },
            expected
        );
    }
    for reason in &clock.delay_reasons {
        println!("  reason: {reason}");
    }
    if clock.vein_to_vein_secs > 0 {
        println!(
            "  vein to vein: {}",
            span_text(chrono::Duration::seconds(clock.vein_to_vein_secs))
        );
    } else if !clock.stopped {
        // The patient is still waiting: since the order, and since the collection.
        let since = |name: &str| {
            clock
                .milestones
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.actual)
                .and_then(|t| from_timestamp("at", Some(t)).ok())
                .map(|t| span_text(chrono::Utc::now() - t))
        };
        if let Some(ordered) = since("ordered") {
            match since("collection") {
                Some(collected) => {
                    println!("  waiting: {ordered} since the order, {collected} since collection")
                }
                None => println!("  waiting: {ordered} since the order"),
            }
        }
    }
}

/// The clock as `order show --json` adds it.
pub fn clock_json(clock: &pb::VeinToVein) -> serde_json::Value {
    serde_json::json!({
        "planned_release": time_text(clock.planned_release),
        "expected_release": time_text(clock.expected_release),
        "delayed": clock.delayed,
        "delay_secs": clock.delay_secs,
        "delayed_since": clock.delayed_since,
        "delay_reasons": clock.delay_reasons,
        "vein_to_vein_secs": clock.vein_to_vein_secs,
        "stopped": clock.stopped,
        "time_zone": clock.time_zone,
        "booking": clock.booking.as_ref().map(|b| serde_json::json!({
            "site_id": b.site_id, "collection_date": b.collection_date, "slot": b.slot,
        })),
        "milestones": clock.milestones.iter().map(|m| serde_json::json!({
            "name": m.name, "planned": time_text(m.planned), "actual": m.actual.map(|a| time_text(Some(a))),
            "expected": time_text(m.expected),
        })).collect::<Vec<_>>(),
    })
}

/// `order reschedule`.
pub async fn reschedule(
    order_id: String,
    collection_date: String,
    reason: String,
    client: ClientArgs,
) -> anyhow::Result<()> {
    let mut api = schedule_api(authed(&client).await?);
    let booking = api
        .reschedule_order(pb::RescheduleOrderRequest {
            order_id,
            collection_date,
            reason,
        })
        .await?
        .into_inner()
        .booking
        .context("hub returned no booking")?;
    println!(
        "Order {} rescheduled: collection {} slot {} at {}.",
        booking.order_id, booking.collection_date, booking.slot, booking.site_id
    );
    Ok(())
}

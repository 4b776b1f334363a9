//! Text and JSON shared by the client commands: batch state and time as text, an
//! order as JSON, the order table `order list` prints and the queue `release list` prints.

use carrel_proto::event::from_timestamp;
use carrel_proto::pb;

pub fn state_name(value: i32) -> String {
    pb::BatchState::try_from(value)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("BATCH_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

pub fn time_text(ts: Option<prost_types::Timestamp>) -> String {
    from_timestamp("at", ts)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub fn order_json(o: &pb::Order) -> serde_json::Value {
    serde_json::json!({
        "order_id": o.order_id, "batch_id": o.batch_id, "coi": o.coi,
        "patient_pseudonym": o.patient_pseudonym, "product": o.product, "recipe_version": o.recipe_version,
        "site_id": o.site_id, "requested_collection_date": o.requested_collection_date,
        "physician": o.physician, "state": state_name(o.state), "current_step": o.current_step,
        "decision_recorded_at_site": o.decision_recorded_at_site,
        "created_at": time_text(o.created_at), "updated_at": time_text(o.updated_at),
    })
}

/// `release list`: the batches awaiting a decision, by batch id (what `release show`
/// and `release sign` take), with their order, COI, patient and site.
pub fn print_release_queue(batches: &[pb::Order], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = batches.iter().map(order_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<14} {:<12} {:<8} {:<17} {:<36}",
        "BATCH", "COI", "PATIENT", "SITE", "STATE", "ORDER"
    );
    for o in batches {
        println!(
            "{:<36} {:<14} {:<12} {:<8} {:<17} {:<36}",
            o.batch_id,
            o.coi,
            o.patient_pseudonym,
            o.site_id,
            state_name(o.state),
            o.order_id
        );
    }
    Ok(())
}

pub fn print_orders(orders: &[pb::Order], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = orders.iter().map(order_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<14} {:<12} {:<8} {:<17} {:<12}",
        "ORDER", "COI", "PATIENT", "SITE", "STATE", "STEP"
    );
    for o in orders {
        println!(
            "{:<36} {:<14} {:<12} {:<8} {:<17} {:<12}",
            o.order_id,
            o.coi,
            o.patient_pseudonym,
            o.site_id,
            state_name(o.state),
            o.current_step
        );
    }
    Ok(())
}

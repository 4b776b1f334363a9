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

/// An order's state as people read it: a conditional release not yet completed
/// says so, and what it waits for.
pub fn order_state_text(o: &pb::Order) -> String {
    let state = state_name(o.state);
    if o.dry_run {
        format!("{state} (DRY RUN of a draft recipe: never released)")
    } else if !o.release_failed.is_empty() {
        format!(
            "{state} (conditional release FAILED: {} out of specification; patient follow-up)",
            o.release_failed.join(", ")
        )
    } else if o.release_awaits.is_empty() {
        state
    } else if o.state == pb::BatchState::Released as i32 {
        format!(
            "released conditionally (awaiting {})",
            o.release_awaits.join(", ")
        )
    } else {
        format!(
            "{state} (released conditionally, awaiting {})",
            o.release_awaits.join(", ")
        )
    }
}

/// A time at a site, as people there read it: the site's local date and time with
/// its zone's abbreviation (`2026-03-29 09:00 BST`), and the viewer's own clock after
/// it where their zone's offset differs then (`2026-03-29 09:00 BST (04:00 EDT here)`).
/// `zone` is the site's IANA name as the hub sends it (empty or unknown: UTC).
pub fn site_time(ts: Option<prost_types::Timestamp>, zone: &str) -> String {
    let Ok(at) = from_timestamp("at", ts) else {
        return String::new();
    };
    site_time_for(at, zone, viewer_zone())
}

fn site_time_for(
    at: chrono::DateTime<chrono::Utc>,
    zone: &str,
    viewer: Option<chrono_tz::Tz>,
) -> String {
    use chrono::Offset;
    let site = zone.parse::<chrono_tz::Tz>().unwrap_or(chrono_tz::Tz::UTC);
    let local = at.with_timezone(&site);
    let mut text = crate::schedule::local_text(site, at);
    if let Some(viewer) = viewer {
        let theirs = at.with_timezone(&viewer);
        if theirs.offset().fix() != local.offset().fix() {
            let format = if theirs.date_naive() == local.date_naive() {
                "%H:%M %Z"
            } else {
                "%Y-%m-%d %H:%M %Z"
            };
            text.push_str(&format!(" ({} here)", theirs.format(format)));
        }
    }
    text
}

/// The zone of the person running the command: `TZ` when it names an IANA zone,
/// else the system's (`/etc/timezone`, or where `/etc/localtime` points).
fn viewer_zone() -> Option<chrono_tz::Tz> {
    let named = |text: &str| {
        text.trim()
            .trim_start_matches(':')
            .parse::<chrono_tz::Tz>()
            .ok()
    };
    if let Ok(tz) = std::env::var("TZ") {
        return named(&tz);
    }
    if let Some(zone) = std::fs::read_to_string("/etc/timezone")
        .ok()
        .and_then(|t| named(&t))
    {
        return Some(zone);
    }
    std::fs::read_link("/etc/localtime")
        .ok()
        .and_then(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .split_once("zoneinfo/")
                .and_then(|(_, name)| named(name))
        })
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
        "release_awaits": o.release_awaits, "release_failed": o.release_failed, "dry_run": o.dry_run,
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

/// A wire timestamp as a time, if it is set and representable.
pub fn time_of(t: &Option<prost_types::Timestamp>) -> Option<chrono::DateTime<chrono::Utc>> {
    carrel_proto::event::from_timestamp("time", *t).ok()
}

#[cfg(test)]
mod tests {
    use super::site_time_for;
    use chrono::TimeZone;

    #[test]
    fn a_site_time_carries_its_zone_and_the_viewers_where_it_differs() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 3, 29, 8, 0, 0)
            .single()
            .expect("a time");
        let london = chrono_tz::Europe::London;
        let new_york = chrono_tz::America::New_York;
        // The day the clocks go forward in London: 08:00 UTC is 09:00 BST.
        assert_eq!(
            site_time_for(at, "Europe/London", Some(london)),
            "2026-03-29 09:00 BST"
        );
        assert_eq!(
            site_time_for(at, "Europe/London", Some(new_york)),
            "2026-03-29 09:00 BST (04:00 EDT here)"
        );
        assert_eq!(
            site_time_for(at, "", None),
            "2026-03-29 08:00 UTC",
            "no zone declared: UTC"
        );
        let late = chrono::Utc
            .with_ymd_and_hms(2026, 3, 29, 2, 30, 0)
            .single()
            .expect("a time");
        assert_eq!(
            site_time_for(late, "Europe/London", Some(new_york)),
            "2026-03-29 03:30 BST (2026-03-28 22:30 EDT here)"
        );
    }
}

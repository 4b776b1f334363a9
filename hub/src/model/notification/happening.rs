//! What an audit entry means to the people who subscribed: the happenings it
//! records. Pure: the store fetches what [`needs`] names and passes it in.

use super::Kind;
use crate::audit::{Action, Entry, Object};
use carrel_proto::event::{EventKind, SiteEvent};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The checkpoint whose matched custody scan means the site has the patient's cells
/// (the `receipt` step of the shipped recipes).
pub const RECEIPT_CHECKPOINT: &str = "receipt";

/// Site event kinds (as stored in `site_events.kind`) that can be happenings.
pub const EVENT_KINDS: [&str; 3] = ["deviation_raised", "qc_result", "custody_scan"];

/// The order a happening concerns, as far as notifications tell of it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderFacts {
    pub order_id: Uuid,
    pub batch_id: Uuid,
    pub coi: String,
    pub site_id: String,
    pub physician: String,
}

/// A replicated site event of interest, with its order and the hub's QC verdict.
#[derive(Debug, Clone)]
pub struct SiteEventFacts {
    pub site_id: String,
    pub event: SiteEvent,
    pub order: OrderFacts,
    /// The hub evaluated this QC result as out of specification.
    pub hub_out_of_specification: bool,
}

/// Something that happened, as subscribers hear of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Happening {
    /// Unique per happening: `audit/<position>`, or `audit/<position>/site/<id>/event/<seq>`
    /// for one of the site events an entry names.
    pub source: String,
    pub kind: Kind,
    pub at: DateTime<Utc>,
    pub site_id: Option<String>,
    pub order: Option<OrderFacts>,
    pub summary: String,
}

/// What the store must look up to derive an entry's happenings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// The order of this batch.
    Order(Uuid),
    /// The site events `first..=last` of a site (of [`EVENT_KINDS`]).
    SiteEvents {
        site_id: String,
        first: u64,
        last: u64,
    },
}

pub fn needs(entry: &Entry) -> Needs {
    match entry.action {
        Action::SiteEventsReplicated => match entry.about() {
            Some(Object::SiteEvents {
                site_id,
                first,
                last,
            }) => Needs::SiteEvents {
                site_id,
                first,
                last,
            },
            _ => Needs::Nothing,
        },
        Action::BatchStateChanged
        | Action::CustodyMismatch
        | Action::ReleaseSigned
        | Action::BatchChangedAfterDecision
        | Action::OrderDelayed
        | Action::OrderCancelled
        | Action::FollowUpOpened
        | Action::TrendSignal
        | Action::DeviationRaised => entry.batch_id.map_or(Needs::Nothing, Needs::Order),
        _ => Needs::Nothing,
    }
}

/// The happenings an entry records. `order` is the order [`needs`] asked for (if
/// any, and if it exists); `events` the site events it asked for.
pub fn happenings(
    entry: &Entry,
    order: Option<&OrderFacts>,
    events: &[SiteEventFacts],
) -> Vec<Happening> {
    let source = format!("audit/{}", entry.position);
    let of_order = |kind: Kind, summary: String| -> Vec<Happening> {
        order
            .map(|o| Happening {
                source: source.clone(),
                kind,
                at: entry.at,
                site_id: Some(o.site_id.clone()),
                order: Some(o.clone()),
                summary,
            })
            .into_iter()
            .collect()
    };
    let coi = order.map(|o| o.coi.as_str()).unwrap_or("?");
    let site = order.map(|o| o.site_id.as_str()).unwrap_or("?");
    match entry.action {
        Action::BatchStateChanged => match (entry.old_value.as_str(), entry.new_value.as_str()) {
            ("ordered", "accepted") => of_order(
                Kind::OrderDispatched,
                format!("Site {site} accepted the order for COI {coi}"),
            ),
            (_, "awaiting_release") => of_order(
                Kind::AwaitingRelease,
                format!("Batch COI {coi} at site {site} awaits QA release"),
            ),
            _ => Vec::new(),
        },
        Action::ReleaseSigned => {
            // new_value starts with the meaning signed ("released by ...").
            let meaning = entry.new_value.split_whitespace().next().unwrap_or("");
            match meaning {
                "released" => of_order(
                    Kind::Released,
                    format!("Batch COI {coi} at site {site} was released by QA"),
                ),
                "released_conditionally" => of_order(
                    Kind::Released,
                    format!(
                        "Batch COI {coi} at site {site} was released conditionally by QA: results still outstanding ({})",
                        awaited(&entry.new_value)
                    ),
                ),
                "release_completed" => of_order(
                    Kind::Released,
                    format!(
                        "The conditional release of batch COI {coi} at site {site} was completed by QA: results within specification ({})",
                        awaited(&entry.new_value)
                    ),
                ),
                "rejected" => of_order(
                    Kind::Rejected,
                    if entry.reason.is_empty() {
                        format!("Batch COI {coi} at site {site} was rejected by QA")
                    } else {
                        format!(
                            "Batch COI {coi} at site {site} was rejected by QA: {}",
                            entry.reason
                        )
                    },
                ),
                _ => Vec::new(),
            }
        }
        Action::CustodyMismatch => of_order(
            Kind::CoiMismatch,
            format!(
                "COI MISMATCH for batch COI {coi} at site {site}: expected {}, scanned {} ({})",
                entry.old_value, entry.new_value, entry.reason
            ),
        ),
        Action::BatchChangedAfterDecision => of_order(
            Kind::ChangedAfterDecision,
            format!(
                "Batch COI {coi} at site {site} changed after its release decision: {} ({}). QA must review it",
                entry.new_value, entry.reason
            ),
        ),
        Action::TrendSignal => of_order(
            Kind::TrendSignal,
            format!(
                "Trend signal on batch COI {coi} at site {site}: {} ({}). The process there may be drifting",
                entry.new_value, entry.reason
            ),
        ),
        Action::FollowUpOpened => of_order(
            Kind::FailedAfterRelease,
            format!(
                "URGENT: a result out of specification arrived after batch COI {coi} at site {site} was released ({}). A patient follow-up is open: the treating physician and QA must act",
                entry.new_value
            ),
        ),
        Action::OrderDelayed => of_order(
            Kind::Delayed,
            format!(
                "Order for COI {coi} at site {site} is delayed: release now expected {} ({})",
                entry.new_value, entry.reason
            ),
        ),
        // Raised by a person at the hub (the site's own arrive as its records).
        Action::DeviationRaised => of_order(
            Kind::Deviation,
            // "HUB-1 (critical)", without what happened: that is QA's to read.
            format!(
                "Deviation {} raised at the hub by {} on batch COI {coi} at site {site}",
                entry
                    .new_value
                    .split_once(": ")
                    .map_or(entry.new_value.as_str(), |(id, _)| id),
                entry.actor
            ),
        ),
        Action::OrderCancelled => of_order(
            Kind::Cancelled,
            format!(
                "Order for COI {coi} at site {site} was cancelled by {}: {}",
                entry.actor, entry.reason
            ),
        ),
        Action::SiteLinkDown | Action::SiteLinkRestored => {
            let Some(Object::Site(site_id)) = entry.about() else {
                return Vec::new();
            };
            let (kind, summary) = if entry.action == Action::SiteLinkDown {
                (
                    Kind::SiteLinkDown,
                    format!(
                        "The link to site {site_id} is down: last heard from {}",
                        entry.old_value
                    ),
                )
            } else {
                (
                    Kind::SiteLinkRestored,
                    format!("The link to site {site_id} is back up"),
                )
            };
            vec![Happening {
                source,
                kind,
                at: entry.at,
                site_id: Some(site_id.to_owned()),
                order: None,
                summary,
            }]
        }
        Action::SiteEventsReplicated => events
            .iter()
            .filter_map(|facts| of_event(entry, &source, facts))
            .collect(),
        _ => Vec::new(),
    }
}

/// The tests named in a release entry's value ("... (awaiting sterility) by ...").
fn awaited(value: &str) -> &str {
    value
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or("", |(inside, _)| {
            inside
                .trim_start_matches("awaiting ")
                .trim_start_matches("confirming ")
        })
}

fn of_event(entry: &Entry, source: &str, facts: &SiteEventFacts) -> Option<Happening> {
    let o = &facts.order;
    let (kind, summary) = match &facts.event.kind {
        EventKind::DeviationRaised {
            deviation_id,
            step_id,
            classification,
            ..
        } => (
            Kind::Deviation,
            // The description is free text; it stays in the batch record.
            format!(
                "Deviation {deviation_id} ({classification}) raised at step {step_id} of batch COI {} at site {}",
                o.coi, o.site_id
            ),
        ),
        EventKind::QcResult { test_id, .. } if facts.hub_out_of_specification => (
            Kind::OutOfSpecification,
            format!(
                "QC result {test_id} of batch COI {} at site {} is out of specification",
                o.coi, o.site_id
            ),
        ),
        EventKind::CustodyScan {
            checkpoint_id,
            matched: true,
            ..
        } if checkpoint_id == RECEIPT_CHECKPOINT => (
            Kind::CellsReceived,
            format!(
                "Cells for COI {} were received at site {} (custody scan matched)",
                o.coi, o.site_id
            ),
        ),
        _ => return None,
    };
    Some(Happening {
        source: format!("{source}/site/{}/event/{}", facts.site_id, facts.event.seq),
        kind,
        at: entry.at,
        site_id: Some(facts.site_id.clone()),
        order: Some(o.clone()),
        summary,
    })
}

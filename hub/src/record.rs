//! The batch record as QA reviews it, and the hash a release signature binds to.
//!
//! The hash covers the order's identity (batch, COI, patient pseudonym, site, pinned
//! recipe and its SHA-256) and every site event of the batch in log order, each as
//! its canonical JSON. Any new or different record gives a different hash, so a
//! signature made on an earlier view of the record is refused (Part 11: a signature
//! is bound to the exact record it signs).

use crate::model::{Order, StoredEvent};
use sha2::{Digest, Sha256};

pub fn record_sha256(order: &Order, recipe_sha256: &str, events: &[StoredEvent]) -> String {
    let mut hash = Sha256::new();
    let header = serde_json::json!({
        "batch_id": order.batch_id,
        "order_id": order.order_id,
        "coi": order.coi,
        "patient_pseudonym": order.patient_pseudonym,
        "site_id": order.site_id,
        "recipe_id": order.recipe_id,
        "recipe_version": order.recipe_version,
        "recipe_sha256": recipe_sha256,
    });
    hash.update(header.to_string().as_bytes());
    for stored in events {
        hash.update(b"\n");
        hash.update(stored.site_id.as_bytes());
        hash.update(b"\t");
        hash.update(stored.event.canonical_json().as_bytes());
    }
    hex::encode(hash.finalize())
}

/// A one-line, human-readable account of a site event: (what happened, details).
pub fn describe(kind: &carrel_proto::event::EventKind) -> (String, String) {
    use carrel_proto::event::EventKind as K;
    match kind {
        K::BatchAccepted {
            recipe_id,
            recipe_version,
            ..
        } => (
            "batch accepted".into(),
            format!("recipe {recipe_id} v{recipe_version}"),
        ),
        K::StepStarted {
            step_id,
            instrument_id,
            resumed,
        } => (
            if *resumed {
                "step resumed"
            } else {
                "step started"
            }
            .into(),
            format!("{step_id} on {instrument_id}"),
        ),
        K::ProcessSamples { step_id, samples } => {
            let values: Vec<String> = samples
                .iter()
                .map(|s| {
                    format!(
                        "{}={:.2}{}",
                        s.parameter,
                        s.value,
                        if s.unit.is_empty() { "" } else { " " }.to_owned() + &s.unit
                    )
                })
                .collect();
            let at = samples.first().map(|s| s.step_hours).unwrap_or_default();
            (
                "process samples".into(),
                format!("{step_id} at {at:.1} h: {}", values.join(", ")),
            )
        }
        K::StepCompleted {
            step_id,
            process_hours,
        } => (
            "step completed".into(),
            format!("{step_id} after {process_hours:.1} h"),
        ),
        K::InstrumentCommandStarted {
            step_id,
            instrument_id,
            command,
            execution_id,
        } => (
            "instrument command started".into(),
            format!("{step_id} on {instrument_id}: {command}, execution {execution_id}"),
        ),
        K::InstrumentAlarm {
            code,
            message,
            severity,
            step_id,
            ..
        } => (
            "instrument alarm".into(),
            format!("{severity:?} {code} during {step_id}: {message}"),
        ),
        K::DeviationRaised {
            deviation_id,
            description,
            classification,
            ..
        } => (
            "deviation raised".into(),
            format!("{deviation_id} ({classification}): {description}"),
        ),
        K::QcResult {
            test_id,
            value,
            unit,
            site_outcome,
            ..
        } => (
            "QC result".into(),
            format!("{test_id} = {value} {unit} (site: {site_outcome:?})"),
        ),
        K::ReleaseDecisionRecorded { meaning, .. } => (
            "decision recorded at site".into(),
            meaning.as_str().to_owned(),
        ),
        K::BatchCancelled { reason, .. } => ("batch cancelled at site".into(), reason.clone()),
        K::CustodyScan {
            checkpoint_id,
            scanned_coi,
            matched,
            verifiers,
            ..
        } => (
            if *matched {
                "custody scan"
            } else {
                "custody MISMATCH"
            }
            .into(),
            format!(
                "{checkpoint_id}: scanned {scanned_coi}, verified by {}",
                verifiers.join(", ")
            ),
        ),
        K::Correction {
            corrects_seq,
            field,
            new_value,
            reason,
        } => (
            "correction".into(),
            format!("record {corrects_seq}: {field} = {new_value} ({reason})"),
        ),
    }
}

/// One line of an order's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub at: chrono::DateTime<chrono::Utc>,
    /// "hub" or "site".
    pub source: &'static str,
    pub what: String,
    pub detail: String,
}

/// A site record stamped this much later than the hub received it can only come
/// from a site clock that runs ahead (the hub's clock is the reference).
const CLOCK_TOLERANCE_SECS: i64 = 5;

/// A duration in words, to the nearest second or minute: "45 s", "10 min", "2 h 5 min".
fn span(d: chrono::Duration) -> String {
    let s = d.num_seconds().abs();
    let minutes = (s + 30) / 60;
    match s {
        0..=119 => format!("{s} s"),
        120..=7_199 => format!("{minutes} min"),
        _ => format!("{} h {} min", minutes / 60, minutes % 60),
    }
}

/// An order's timeline from order to infusion: the order, the site's records
/// (without the process samples), and QA's decisions.
///
/// Two clocks meet here, the hub's and the site's, and a site's clock can be off.
/// The site's records keep their log order whatever their stamps say: each is
/// placed, by the hub's clock, no earlier than the record before it and than the
/// order itself, and no later than when the hub received it. Each shows the time
/// the site stamped on it, with a note when that stamp shows the site's clock was
/// off: ahead of the hub, behind the order it acts on, or gone backwards.
pub fn timeline(record: &crate::model::BatchRecord) -> Vec<TimelineEntry> {
    let order = &record.order;
    let tolerance = chrono::Duration::seconds(CLOCK_TOLERANCE_SECS);
    // (where it sorts, by the hub's clock; the entry)
    let mut entries = vec![(
        order.created_at,
        TimelineEntry {
            at: order.created_at,
            source: "hub",
            what: "order created".into(),
            detail: format!(
                "by {}, COI {}, site {}",
                order.physician, order.coi, order.site_id
            ),
        },
    )];
    let mut floor = order.created_at;
    // The stamp of the record before, unless that stamp was itself ahead of the hub
    // (then a later stamp that is right is not a clock going back).
    let mut previous_stamp: Option<chrono::DateTime<chrono::Utc>> = None;
    for stored in &record.events {
        let stamp = stored.event.recorded_at;
        let place = stamp.min(stored.received_at).max(floor);
        floor = place;
        let ahead = stamp > stored.received_at + tolerance;
        let skew = if ahead {
            Some(format!(
                "site clock ahead: stamped {} after the hub received it",
                span(stamp - stored.received_at)
            ))
        } else if stamp < order.created_at - tolerance {
            Some(format!(
                "site clock behind: stamped {} before the order was created",
                span(order.created_at - stamp)
            ))
        } else {
            previous_stamp
                .filter(|previous| stamp < *previous - tolerance)
                .map(|previous| {
                    format!(
                        "site clock went back {} since the record before",
                        span(previous - stamp)
                    )
                })
        };
        previous_stamp = (!ahead).then_some(stamp);
        if matches!(
            stored.event.kind,
            carrel_proto::event::EventKind::ProcessSamples { .. }
        ) {
            continue;
        }
        let (what, mut detail) = describe(&stored.event.kind);
        if let Some(note) = skew {
            detail = format!("{detail} [{note}]");
        }
        entries.push((
            place,
            TimelineEntry {
                at: stamp,
                source: "site",
                what,
                detail,
            },
        ));
    }
    for sig in &record.signatures {
        entries.push((
            sig.signed_at,
            TimelineEntry {
                at: sig.signed_at,
                source: "hub",
                what: format!("QA {}", sig.meaning.as_str()),
                detail: format!("signed by {} ({})", sig.signer_name, sig.signer),
            },
        ));
    }
    // Stable: entries placed at the same moment keep the order they were added in.
    entries.sort_by_key(|(place, _)| *place);
    entries.into_iter().map(|(_, entry)| entry).collect()
}

/// What has to happen next for an order, in words.
pub fn next_step(record: &crate::model::BatchRecord) -> String {
    use crate::model::BatchState as S;
    let order = &record.order;
    let recipe = &record.recipe.recipe;
    match order.state {
        S::Ordered => format!("site {} accepts the batch order", order.site_id),
        S::Accepted | S::InProcess => {
            let next = recipe
                .steps
                .iter()
                .find(|s| !order.progress.steps_completed.contains(&s.id));
            match next {
                Some(step) => match &step.custody_checkpoint {
                    Some(cp) if !order.progress.checkpoints_passed.contains(&cp.id) => {
                        format!("custody scan at \"{}\", then {}", cp.name, step.name)
                    }
                    _ => format!("{} (in progress)", step.name),
                },
                None => "QC results from the laboratory".into(),
            }
        }
        S::AwaitingRelease => "QA reviews the batch record and signs release or rejection".into(),
        S::Released if !order.decision_recorded => "the release decision reaches the site".into(),
        S::Released => "hand-over of the product for infusion".into(),
        S::HandedOver => "infusion at the bedside (two-person check of the COI)".into(),
        S::Infused => "none: the chain of identity is closed".into(),
        S::Rejected => "none: QA rejected the batch".into(),
        S::Cancelled => "none: the order was cancelled".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BatchRecord, BatchState, Order, Progress, StoredEvent, StoredRecipe};
    use carrel_proto::event::{EventKind, SiteEvent, GENESIS_SHA256};
    use carrel_proto::recipe::Recipe;
    use chrono::{DateTime, Duration, Utc};
    use uuid::Uuid;

    fn record(
        events: &[(DateTime<Utc>, DateTime<Utc>, EventKind)],
        created: DateTime<Utc>,
    ) -> BatchRecord {
        let batch_id = Uuid::now_v7();
        let recipe = Recipe::from_toml(crate::server::SHIPPED_RECIPES[0].1).expect("recipe");
        let events = events
            .iter()
            .enumerate()
            .map(|(i, (stamp, received, kind))| StoredEvent {
                site_id: "site-a".into(),
                received_at: *received,
                event: SiteEvent {
                    seq: i as u64 + 1,
                    event_id: Uuid::now_v7(),
                    recorded_at: *stamp,
                    batch_id,
                    recorded_by: "agent".into(),
                    prev_sha256: GENESIS_SHA256.into(),
                    kind: kind.clone(),
                },
            })
            .collect();
        BatchRecord {
            order: Order {
                order_id: Uuid::now_v7(),
                batch_id,
                coi: "G123426000001X".into(),
                patient_pseudonym: "P-1".into(),
                recipe_id: recipe.id.clone(),
                recipe_version: recipe.version,
                site_id: "site-a".into(),
                requested_collection_date: "2026-12-01".into(),
                physician: "dr.a".into(),
                created_at: created,
                state: BatchState::InProcess,
                current_step: None,
                progress: Progress::default(),
                decision_recorded: false,
                updated_at: created,
            },
            recipe: StoredRecipe {
                sha256: recipe.sha256(),
                canonical_json: String::new(),
                recipe,
            },
            events,
            qc: Vec::new(),
            signatures: Vec::new(),
            audit: Vec::new(),
        }
    }

    fn step(id: &str) -> EventKind {
        EventKind::StepStarted {
            step_id: id.into(),
            instrument_id: "sim".into(),
            resumed: false,
        }
    }

    #[test]
    fn a_skewed_site_clock_is_noted_and_does_not_reorder_the_record() {
        let created = Utc::now();
        let s = Duration::seconds;
        let events = [
            // Ten minutes ahead, ten minutes behind, on time, then back in time.
            (created + s(600) + s(1), created + s(1), step("collection")),
            (created - s(600) + s(2), created + s(2), step("receipt")),
            (created + s(3), created + s(3), step("selection")),
            (created - s(60), created + s(4), step("activation")),
        ];
        let timeline = timeline(&record(&events, created));
        let steps: Vec<&str> = timeline
            .iter()
            .map(|e| e.detail.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            steps,
            ["by", "collection", "receipt", "selection", "activation"],
            "{timeline:#?}"
        );
        assert!(
            timeline[1]
                .detail
                .contains("[site clock ahead: stamped 10 min after the hub received it]"),
            "{}",
            timeline[1].detail
        );
        assert!(
            timeline[2]
                .detail
                .contains("[site clock behind: stamped 10 min before the order was created]"),
            "{}",
            timeline[2].detail
        );
        assert!(
            !timeline[3].detail.contains("site clock"),
            "{}",
            timeline[3].detail
        );
        assert!(
            timeline[4].detail.contains("site clock behind"),
            "{}",
            timeline[4].detail
        );
        // The site's own stamps are shown as it made them.
        assert_eq!(timeline[1].at, created + s(601));
        assert_eq!(timeline[2].at, created - s(598));
    }

    #[test]
    fn a_site_clock_that_goes_back_is_noted() {
        let created = Utc::now();
        let s = Duration::seconds;
        let events = [
            (created + s(300), created + s(301), step("collection")),
            (created + s(100), created + s(302), step("receipt")),
        ];
        let timeline = timeline(&record(&events, created));
        assert!(
            timeline[2]
                .detail
                .contains("[site clock went back 3 min since the record before]"),
            "{}",
            timeline[2].detail
        );
        assert!(!timeline[1].detail.contains("site clock"));
    }
}

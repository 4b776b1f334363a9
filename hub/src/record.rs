//! The batch record as QA reviews it, and the hash a release signature binds to.
//!
//! The hash covers the order's identity (batch, COI, patient pseudonym, site, pinned
//! recipe and its SHA-256) and every site event of the batch in log order, each as
//! its canonical JSON. Any new or different record gives a different hash, so a
//! signature made on an earlier view of the record is refused (Part 11: a signature
//! is bound to the exact record it signs).

use crate::store::{Order, StoredEvent};
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

/// An order's timeline from order to infusion: the order, the site's records
/// (without the process samples), and QA's decisions, in time order.
pub fn timeline(record: &crate::store::BatchRecord) -> Vec<TimelineEntry> {
    let order = &record.order;
    let mut entries = vec![TimelineEntry {
        at: order.created_at,
        source: "hub",
        what: "order created".into(),
        detail: format!(
            "by {}, COI {}, site {}",
            order.physician, order.coi, order.site_id
        ),
    }];
    for stored in &record.events {
        if matches!(
            stored.event.kind,
            carrel_proto::event::EventKind::ProcessSamples { .. }
        ) {
            continue;
        }
        let (what, detail) = describe(&stored.event.kind);
        entries.push(TimelineEntry {
            at: stored.event.recorded_at,
            source: "site",
            what,
            detail,
        });
    }
    for sig in &record.signatures {
        entries.push(TimelineEntry {
            at: sig.signed_at,
            source: "hub",
            what: format!("QA {}", sig.meaning.as_str()),
            detail: format!("signed by {} ({})", sig.signer_name, sig.signer),
        });
    }
    entries.sort_by_key(|e| e.at);
    entries
}

/// What has to happen next for an order, in words.
pub fn next_step(record: &crate::store::BatchRecord) -> String {
    use crate::store::BatchState as S;
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

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

//! Custody checkpoints at the site: the technician scans the label and the agent
//! compares it with the batch's chain-of-identity identifier (COI).
//!
//! A match records a custody event with who verified it, where and when. A mismatch
//! is a hard stop: it is recorded (and replicated, and raised to QA by the hub), and
//! the step does not start; only a matching scan opens it. There is no way to skip a
//! checkpoint: the executor does not start a step with a checkpoint until a matching
//! scan is on the record. Bedside checkpoints (hand-over, infusion) open only for a
//! released batch, in order, and close the chain of identity.
//!
//! At the bedside the patient is scanned first (the wristband: its COI, or the
//! patient's pseudonym), then the bag, and the two are compared: a match needs the
//! wristband to name this batch's patient and the bag to carry this batch's COI. A
//! wristband and bag that agree with each other but belong to another batch of the
//! site record nothing and say which batch to open: the page (or `--batch`) was the
//! wrong one, not the product.

use crate::people::{self, SignedIn};
use crate::store::{self, BatchState, By, LocalBatch, Store};
use carrel_proto::coi::{self, Coi};
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::people::SiteAction;
use carrel_proto::recipe::{CustodyCheckpoint, Recipe};
use carrel_proto::suspension::Suspension;
use std::collections::HashSet;
use uuid::Uuid;

/// Names the simulated operators use (config `simulator.auto_scan`).
pub const SIMULATED_OPERATORS: [&str; 5] = [
    "sim-operator-1",
    "sim-operator-2",
    "sim-operator-3",
    "sim-operator-4",
    "sim-operator-5",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no batch {0} at this site")]
    UnknownBatch(String),
    #[error("the label could not be read as a COI: {0}; nothing was recorded, scan again")]
    Unreadable(coi::Error),
    #[error("checkpoint {given:?} is not open: {why}")]
    NotOpen { given: String, why: String },
    #[error("{0} is named twice: the second verifier must be a different person, signing in with their own credentials")]
    SameVerifierTwice(String),
    #[error(transparent)]
    Person(#[from] people::Refused),
    #[error("checkpoint {checkpoint:?} needs {needed} verifier(s), {given} given")]
    NotEnoughVerifiers {
        checkpoint: String,
        needed: u8,
        given: usize,
    },
    #[error(
        "at the bedside, scan the patient's wristband first, then the bag; nothing was recorded"
    )]
    NoWristband,
    #[error("this wristband and this bag are both for patient {pseudonym} (COI {coi}), not for this batch: open that patient's batch and scan there; nothing was recorded")]
    OtherBatch { coi: String, pseudonym: String },
    #[error("hand-over to the patient is refused: this site is {}; it is offered again when the control site resumes the site; nothing was recorded", .0.describe())]
    Suspended(Suspension),
    #[error("the batch's recipe cannot be read: {0}")]
    Recipe(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq)]
pub enum Scanned {
    Match(SiteEvent),
    Mismatch(SiteEvent),
}

/// Checkpoints passed with a matching scan, per the batch's records.
pub fn passed(events: &[SiteEvent]) -> HashSet<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CustodyScan {
                checkpoint_id,
                matched: true,
                ..
            } => Some(checkpoint_id.clone()),
            _ => None,
        })
        .collect()
}

/// A result that may follow release (sterility) recorded out of specification at
/// this site after QA's release reached it, by name: the product is quarantined
/// here, whatever came after (the hub opened a patient follow-up for it).
fn failed_after_release<'r>(recipe: &'r Recipe, events: &[SiteEvent]) -> Option<&'r str> {
    let released = events.iter().position(|e| {
        matches!(
            &e.kind,
            EventKind::ReleaseDecisionRecorded { meaning, .. } if meaning.is_release()
        )
    })?;
    events[released..].iter().find_map(|e| match &e.kind {
        EventKind::QcResult {
            test_id,
            site_outcome,
            ..
        } if *site_outcome != carrel_proto::recipe::Outcome::Pass => recipe
            .test(test_id)
            .filter(|t| t.may_follow_release)
            .map(|t| t.name.as_str()),
        _ => None,
    })
}

/// The checkpoint the batch waits at, or why none is open.
pub fn open_checkpoint<'r>(
    recipe: &'r Recipe,
    batch: &LocalBatch,
    events: &[SiteEvent],
) -> Result<&'r CustodyCheckpoint, String> {
    let passed = passed(events);
    match batch.state {
        BatchState::Ordered | BatchState::Accepted | BatchState::InProcess => {
            let completed: HashSet<&str> = events
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::StepCompleted { step_id, .. } => Some(step_id.as_str()),
                    _ => None,
                })
                .collect();
            let next = recipe
                .steps
                .iter()
                .find(|s| !completed.contains(s.id.as_str()))
                .ok_or("every manufacturing step is complete; the batch goes to QC and release")?;
            match &next.custody_checkpoint {
                Some(cp) if !passed.contains(&cp.id) => Ok(cp),
                _ => Err(format!(
                    "the batch is at step {:?}, which needs no scan now",
                    next.id
                )),
            }
        }
        BatchState::AwaitingRelease => {
            Err("the batch awaits QA release; only a released product leaves the site".into())
        }
        BatchState::Rejected => Err("QA rejected this batch; it must not be handed over".into()),
        BatchState::Cancelled => Err("this batch was cancelled".into()),
        BatchState::Released | BatchState::HandedOver => {
            if let Some(test) = failed_after_release(recipe, events) {
                return Err(format!(
                    "do not hand over or infuse: {test} was recorded out of specification after QA's release; the control site's QA and the treating physician were told and decide what happens to the product"
                ));
            }
            recipe
                .bedside_checkpoints
                .iter()
                .find(|cp| !passed.contains(&cp.id))
                .ok_or_else(|| "every bedside checkpoint is passed".to_owned())
        }
        BatchState::Infused => {
            Err("the infusion is recorded: the chain of identity is closed".into())
        }
    }
}

/// Finds a batch by its id or a unique prefix of it (at least 8 characters).
pub async fn find_batch(store: &Store, id: &str) -> Result<LocalBatch, Error> {
    let id = id.trim().to_ascii_lowercase();
    if let Ok(uuid) = Uuid::parse_str(&id) {
        return match store.batch(uuid).await {
            Ok(batch) => Ok(batch),
            Err(store::Error::NotFound(_)) => Err(Error::UnknownBatch(id)),
            Err(e) => Err(e.into()),
        };
    }
    let matches: Vec<LocalBatch> = store
        .batches()
        .await?
        .into_iter()
        .filter(|b| id.len() >= 8 && b.batch_id.to_string().starts_with(&id))
        .collect();
    match <[LocalBatch; 1]>::try_from(matches) {
        Ok([batch]) => Ok(batch),
        Err(_) => Err(Error::UnknownBatch(format!(
            "{id} (give the batch id, or 8 or more of its first characters)"
        ))),
    }
}

/// Who verifies a scan: people who signed in (the first records it), or the
/// simulator's operators (dev mode), whose records say they are simulated.
#[derive(Debug, Clone, Copy)]
pub enum Verifiers<'a> {
    People(&'a [SignedIn]),
    Simulated(&'a [&'a str]),
}

/// One scan at a checkpoint, as a technician (or the simulated operators) makes it.
pub struct Scan<'a> {
    pub batch_id: Uuid,
    pub checkpoint_id: &'a str,
    /// What the scanner typed, or what a person typed from the eye-readable label.
    pub label: &'a str,
    pub verifiers: Verifiers<'a>,
    pub location: &'a str,
    /// At a bedside checkpoint: the patient's wristband as scanned (its COI or the
    /// patient's pseudonym); required there, ignored elsewhere.
    pub wristband: Option<&'a str>,
}

/// What a scanned wristband names: the patient's COI or their pseudonym.
#[derive(Debug, Clone, PartialEq)]
enum Wristband {
    Coi(Coi),
    Pseudonym(String),
}

impl Wristband {
    fn read(scanned: Option<&str>) -> Result<Wristband, Error> {
        let text = scanned.map(str::trim).unwrap_or("");
        if text.is_empty() {
            return Err(Error::NoWristband);
        }
        Ok(match Coi::parse_scan(text) {
            Ok(coi) => Wristband::Coi(coi),
            // A scanner may prefix a symbology identifier ("]C0") to any barcode.
            Err(_) => Wristband::Pseudonym(match text.strip_prefix(']') {
                Some(rest) => rest.get(2..).unwrap_or("").trim().to_owned(),
                None => text.to_owned(),
            }),
        })
    }

    /// Whether it names the patient of `batch`.
    fn names(&self, batch: &LocalBatch) -> bool {
        match self {
            Wristband::Coi(coi) => coi.as_str() == batch.coi,
            Wristband::Pseudonym(p) => p.eq_ignore_ascii_case(batch.patient_pseudonym.trim()),
        }
    }

    /// As the record keeps it.
    fn text(&self) -> String {
        match self {
            Wristband::Coi(coi) => coi.to_string(),
            Wristband::Pseudonym(p) => p.clone(),
        }
    }
}

/// Checks a scan and records its outcome. Errors (unreadable label, checkpoint not
/// open, verifiers missing or repeated) record nothing; a readable label that is
/// not this batch's COI is recorded as a mismatch.
pub async fn scan(store: &Store, scan: Scan<'_>) -> Result<Scanned, Error> {
    let batch = match store.batch(scan.batch_id).await {
        Ok(batch) => batch,
        Err(store::Error::NotFound(_)) => {
            return Err(Error::UnknownBatch(scan.batch_id.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    let recipe = Recipe::from_json(&batch.recipe_json).map_err(|e| Error::Recipe(e.to_string()))?;
    let events = store.batch_events(batch.batch_id).await?;
    let open = open_checkpoint(&recipe, &batch, &events).map_err(|why| Error::NotOpen {
        given: scan.checkpoint_id.to_owned(),
        why,
    })?;
    if open.id != scan.checkpoint_id {
        return Err(Error::NotOpen {
            given: scan.checkpoint_id.to_owned(),
            why: format!(
                "the batch waits at checkpoint {:?} ({})",
                open.id, open.name
            ),
        });
    }
    let bedside = recipe.bedside_checkpoints.iter().any(|cp| cp.id == open.id);
    if bedside {
        if let Some(suspension) = store.suspension().await? {
            return Err(Error::Suspended(suspension));
        }
    }
    let action = if bedside {
        SiteAction::BedsideScan
    } else {
        SiteAction::CustodyScan
    };
    let (verifiers, by): (Vec<String>, Option<By>) = match scan.verifiers {
        Verifiers::People(people) => {
            for person in people {
                people::authorize(person, action)?;
            }
            (
                people.iter().map(|p| p.username.clone()).collect(),
                people.first().map(SignedIn::by),
            )
        }
        Verifiers::Simulated(names) => (
            names.iter().map(|n| n.to_string()).collect(),
            names.first().map(|n| By::simulated(n)),
        ),
    };
    let mut seen = HashSet::new();
    for verifier in &verifiers {
        if !seen.insert(verifier.to_lowercase()) {
            return Err(Error::SameVerifierTwice(verifier.clone()));
        }
    }
    if verifiers.len() < usize::from(open.verifiers) {
        return Err(Error::NotEnoughVerifiers {
            checkpoint: open.id.clone(),
            needed: open.verifiers,
            given: verifiers.len(),
        });
    }
    let wristband = if bedside {
        Some(Wristband::read(scan.wristband)?)
    } else {
        None
    };
    let scanned = Coi::parse_scan(scan.label).map_err(Error::Unreadable)?;
    let matched =
        scanned.as_str() == batch.coi && wristband.as_ref().is_none_or(|w| w.names(&batch));
    if let (false, Some(wristband)) = (matched, &wristband) {
        // Patient and bag agree, but on another batch: the wrong page, not the product.
        let other = store.batches().await?.into_iter().find(|b| {
            b.batch_id != batch.batch_id && b.coi == scanned.as_str() && wristband.names(b)
        });
        if let Some(other) = other {
            return Err(Error::OtherBatch {
                coi: other.coi,
                pseudonym: other.patient_pseudonym,
            });
        }
    }
    let by = by.expect("at least one verifier, checked above");
    let event = store
        .append(
            batch.batch_id,
            &by,
            EventKind::CustodyScan {
                checkpoint_id: open.id.clone(),
                expected_coi: batch.coi.clone(),
                scanned_coi: scanned.to_string(),
                verifiers,
                matched,
                location: scan.location.trim().to_owned(),
                wristband: wristband.as_ref().map(Wristband::text),
            },
        )
        .await?;
    if matched {
        tracing::info!(batch_id = %batch.batch_id, checkpoint = %open.id, "custody scan matched");
        Ok(Scanned::Match(event))
    } else {
        tracing::warn!(batch_id = %batch.batch_id, checkpoint = %open.id, expected = %batch.coi, scanned = %scanned, "COI MISMATCH: hard stop");
        Ok(Scanned::Mismatch(event))
    }
}

/// The label of a batch as its barcode reads (for the simulated operators).
pub fn label_of(batch: &LocalBatch) -> Result<String, Error> {
    Coi::parse(&batch.coi)
        .map(|c| c.barcode_data())
        .map_err(Error::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wristband_reads_as_a_coi_or_a_pseudonym_whatever_the_scanner_adds() {
        let coi = Coi::parse("G123426000042N").expect("coi");
        assert_eq!(
            Wristband::read(Some(&format!("]C0{}\r\n", coi.barcode_data()))).expect("read"),
            Wristband::Coi(coi.clone())
        );
        assert_eq!(
            Wristband::read(Some(" ]C0P-7401\r\n")).expect("read"),
            Wristband::Pseudonym("P-7401".into())
        );
        assert_eq!(
            Wristband::read(Some("P-7401")).expect("read").text(),
            "P-7401"
        );
        for nothing in [None, Some(""), Some(" \r\n")] {
            assert!(matches!(Wristband::read(nothing), Err(Error::NoWristband)));
        }
    }
}

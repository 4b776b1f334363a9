//! Deviations as a workflow: raised (by the site's agent, by a person at the site,
//! or by a person at the hub), investigated (notes), and closed by QA with a signed
//! root cause and CAPA reference.
//!
//! What the site raised stays its record (`deviation_raised`, hashed into the batch
//! record, never changed); the hub's part is kept beside it (a [`DeviationRow`] and
//! its notes) and [`register`] puts the two together. A major or critical deviation
//! that is open stops the batch's release ([`blocking`]).

use super::StoredEvent;
use carrel_proto::event::{EventKind, Identity};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The classifications, least to most serious.
pub const CLASSIFICATIONS: [&str; 3] = ["minor", "major", "critical"];

/// Whether a deviation of this classification stops release while open.
pub fn blocks_release(classification: &str) -> bool {
    matches!(classification, "major" | "critical")
}

/// The fewest characters of a root cause, and of an investigation note: a sentence.
pub const MIN_FINDING_CHARS: usize = 15;

/// Where a deviation was raised.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A `deviation_raised` record of the site: its seq, and whether a person raised
    /// it (otherwise the agent did, automatically).
    Site { seq: u64, by_person: bool },
    /// By a person at the hub.
    Hub,
}

/// QA's closure: the root cause, the CAPA reference and the signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Closure {
    pub root_cause: String,
    /// The corrective and preventive action's reference in the quality system
    /// (empty: "none needed", which the root cause then says why).
    pub capa_ref: String,
    pub closed_by: String,
    pub closed_by_name: String,
    pub closed_at: DateTime<Utc>,
}

/// The hub's part of a deviation, as stored: the raising when a person at the hub
/// raised it, and the closure once QA closed it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviationRow {
    pub batch_id: Uuid,
    pub deviation_id: String,
    pub site_id: String,
    /// Set when raised at the hub: (who, when, step, description).
    pub raised_at_hub: Option<(String, DateTime<Utc>, String, String)>,
    pub classification: String,
    pub closure: Option<Closure>,
}

/// One investigation note.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub note_id: Uuid,
    pub batch_id: Uuid,
    pub deviation_id: String,
    pub author: String,
    pub written_at: DateTime<Utc>,
    pub text: String,
}

/// A deviation as people see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deviation {
    pub batch_id: Uuid,
    pub deviation_id: String,
    pub site_id: String,
    pub origin: Origin,
    pub raised_by: String,
    pub raised_at: DateTime<Utc>,
    pub step_id: String,
    pub description: String,
    pub classification: String,
    pub notes: Vec<Note>,
    pub closure: Option<Closure>,
}

impl Deviation {
    pub fn is_open(&self) -> bool {
        self.closure.is_none()
    }

    /// Open, and serious enough to stop release.
    pub fn blocks_release(&self) -> bool {
        self.is_open() && blocks_release(&self.classification)
    }

    pub fn status(&self) -> &'static str {
        if self.is_open() {
            "open"
        } else {
            "closed"
        }
    }
}

/// The deviations of the site records, rows and notes given (of one batch or many),
/// oldest first: each site `deviation_raised` record with the hub's row of the same
/// (batch, id) if there is one, then those raised at the hub.
pub fn register(events: &[StoredEvent], rows: &[DeviationRow], notes: &[Note]) -> Vec<Deviation> {
    let notes_of = |batch_id: Uuid, id: &str| -> Vec<Note> {
        notes
            .iter()
            .filter(|n| n.batch_id == batch_id && n.deviation_id == id)
            .cloned()
            .collect()
    };
    let row_of = |batch_id: Uuid, id: &str| {
        rows.iter()
            .find(|r| r.batch_id == batch_id && r.deviation_id == id)
    };
    let mut all = Vec::new();
    for stored in events {
        let event = &stored.event;
        let EventKind::DeviationRaised {
            deviation_id,
            step_id,
            description,
            classification,
        } = &event.kind
        else {
            continue;
        };
        let row = row_of(event.batch_id, deviation_id);
        all.push(Deviation {
            batch_id: event.batch_id,
            deviation_id: deviation_id.clone(),
            site_id: stored.site_id.clone(),
            origin: Origin::Site {
                seq: event.seq,
                by_person: !matches!(event.identity, Identity::Agent),
            },
            raised_by: event.recorded_by.clone(),
            raised_at: event.recorded_at,
            step_id: step_id.clone(),
            description: description.clone(),
            classification: classification.clone(),
            notes: notes_of(event.batch_id, deviation_id),
            closure: row.and_then(|r| r.closure.clone()),
        });
    }
    for row in rows {
        let Some((by, at, step, description)) = &row.raised_at_hub else {
            continue;
        };
        all.push(Deviation {
            batch_id: row.batch_id,
            deviation_id: row.deviation_id.clone(),
            site_id: row.site_id.clone(),
            origin: Origin::Hub,
            raised_by: by.clone(),
            raised_at: *at,
            step_id: step.clone(),
            description: description.clone(),
            classification: row.classification.clone(),
            notes: notes_of(row.batch_id, &row.deviation_id),
            closure: row.closure.clone(),
        });
    }
    all.sort_by_key(|d| d.raised_at);
    all
}

/// The open deviations that stop a release, in words for the refusal; empty: none.
pub fn blocking(deviations: &[Deviation]) -> Vec<String> {
    deviations
        .iter()
        .filter(|d| d.blocks_release())
        .map(|d| format!("{} ({})", d.deviation_id, d.classification))
        .collect()
}

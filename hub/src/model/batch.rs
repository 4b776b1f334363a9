//! Orders and the state of their batches.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

pub use carrel_proto::batch::BatchState;

/// What the batch projection remembers besides its state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub steps_completed: BTreeSet<String>,
    /// Custody checkpoints passed with a matching scan.
    #[serde(default)]
    pub checkpoints_passed: BTreeSet<String>,
    pub tests_recorded: BTreeSet<String>,
    /// Site seqs of records QA must see first (alarms, deviations, OOS, corrections, anomalies).
    pub exceptions: Vec<u64>,
    /// Things the hub noticed that the site did not report as such.
    pub anomalies: Vec<String>,
    /// Site seqs of records that arrived after QA's release decision and change what
    /// QA reviewed (anything but the expected hand-over and infusion scans and the
    /// site's recording of the decision). The batch is "changed after decision" until
    /// a QA person reviews them with a signature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_after_decision: Vec<u64>,
    /// The highest of those a QA person has reviewed (signed for).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub changes_reviewed_through: u64,
    /// A conditional release not yet completed: the tests whose results it waits
    /// for (set by the signature, emptied by the one that completes it).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub release_awaits: BTreeSet<String>,
    /// Results out of specification that arrived after the batch was released:
    /// each is a patient follow-up until a QA person closes it with a signature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<FollowUpMark>,
}

/// A patient follow-up as the batch projection keeps it: opened in the transaction
/// that stores the result, closed by QA's signature (kept in its own table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpMark {
    /// The site record of the result that opened it.
    pub site_seq: u64,
    pub test_id: String,
    /// When the site recorded the result.
    pub opened_at: DateTime<Utc>,
    #[serde(default)]
    pub closed: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Progress {
    /// The records that arrived after the decision and no QA person has reviewed yet.
    pub fn unreviewed_changes(&self) -> Vec<u64> {
        self.changed_after_decision
            .iter()
            .copied()
            .filter(|seq| *seq > self.changes_reviewed_through)
            .collect()
    }

    /// The follow-ups no QA person has closed yet.
    pub fn open_follow_ups(&self) -> impl Iterator<Item = &FollowUpMark> {
        self.follow_ups.iter().filter(|f| !f.closed)
    }

    /// Tests a conditional release waited for whose result arrived out of
    /// specification (each opened a follow-up): the release can never be completed.
    pub fn release_failed(&self) -> Vec<String> {
        let mut failed: Vec<String> = self
            .follow_ups
            .iter()
            .filter(|f| self.release_awaits.contains(&f.test_id))
            .map(|f| f.test_id.clone())
            .collect();
        failed.sort();
        failed.dedup();
        failed
    }
}

/// An order with its batch projection, as people see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub order_id: Uuid,
    pub batch_id: Uuid,
    pub coi: String,
    pub patient_pseudonym: String,
    pub recipe_id: String,
    pub recipe_version: u32,
    pub site_id: String,
    pub requested_collection_date: String,
    pub physician: String,
    pub created_at: DateTime<Utc>,
    pub state: BatchState,
    pub current_step: Option<String>,
    pub progress: Progress,
    pub decision_recorded: bool,
    pub updated_at: DateTime<Utc>,
    /// A dry run of a draft recipe on the hub's simulator site: shown like any
    /// other batch, never releasable, and left out of queues, the schedule and
    /// notifications (see `crate::dry_run`).
    pub dry_run: bool,
}

/// A new order, validated by the caller.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub patient_pseudonym: String,
    pub recipe_id: String,
    pub site_id: String,
    pub requested_collection_date: String,
    pub physician: String,
    /// Facility identification number used in COI identifiers.
    pub facility: String,
    /// The request's one-time key: the same key again (from the same physician)
    /// answers with the order it placed, and places nothing.
    pub request_id: Option<Uuid>,
    /// Who entered the order for the physician, when not the physician: an
    /// integration engine's system account ([`super::SystemAccount::actor`]),
    /// the actor of its audit entry.
    pub entered_by: Option<String>,
}

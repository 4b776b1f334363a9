//! Orders and the state of their batches.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use uuid::Uuid;

/// Lifecycle state of a batch, derived from its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchState {
    Ordered,
    Accepted,
    InProcess,
    AwaitingRelease,
    Released,
    Rejected,
    Cancelled,
    /// Released product handed over for infusion.
    HandedOver,
    /// Infusion confirmed at the bedside: the chain of identity is closed.
    Infused,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Ordered => "ordered",
            BatchState::Accepted => "accepted",
            BatchState::InProcess => "in_process",
            BatchState::AwaitingRelease => "awaiting_release",
            BatchState::Released => "released",
            BatchState::Rejected => "rejected",
            BatchState::Cancelled => "cancelled",
            BatchState::HandedOver => "handed_over",
            BatchState::Infused => "infused",
        }
    }

    pub fn parse(text: &str) -> Option<BatchState> {
        Some(match text {
            "ordered" => BatchState::Ordered,
            "accepted" => BatchState::Accepted,
            "in_process" => BatchState::InProcess,
            "awaiting_release" => BatchState::AwaitingRelease,
            "released" => BatchState::Released,
            "rejected" => BatchState::Rejected,
            "cancelled" => BatchState::Cancelled,
            "handed_over" => BatchState::HandedOver,
            "infused" => BatchState::Infused,
            _ => return None,
        })
    }

    /// No further manufacturing happens in this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchState::Released | BatchState::Rejected | BatchState::Cancelled
        )
    }
}

impl BatchState {
    /// Nothing more will happen to this batch at its site.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            BatchState::Rejected | BatchState::Cancelled | BatchState::Infused
        )
    }

    /// The site holds the patient's cells and is manufacturing or awaiting release.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            BatchState::Accepted | BatchState::InProcess | BatchState::AwaitingRelease
        )
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
}

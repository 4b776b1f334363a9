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
    /// The request's one-time key: the same key again (from the same physician)
    /// answers with the order it placed, and places nothing.
    pub request_id: Option<Uuid>,
}

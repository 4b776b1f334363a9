//! The batch record: the recipe, the site's records, the hub's QC evaluation and
//! the signatures, as the store keeps them.

use super::Order;
use carrel_proto::event::SiteEvent;
use carrel_proto::recipe::{Outcome, QcValue, Recipe};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A stored recipe version.
#[derive(Debug, Clone)]
pub struct StoredRecipe {
    pub recipe: Recipe,
    pub sha256: String,
    pub canonical_json: String,
}

/// A site event as stored at the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub site_id: String,
    pub event: SiteEvent,
    pub received_at: DateTime<Utc>,
}

/// The hub's evaluation of one QC result.
#[derive(Debug, Clone, PartialEq)]
pub struct QcRecord {
    pub site_seq: u64,
    pub test_id: String,
    pub value: QcValue,
    pub hub_outcome: Outcome,
    pub site_outcome: Outcome,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub signature_id: Uuid,
    pub batch_id: Uuid,
    pub signer: String,
    pub signer_name: String,
    pub meaning: carrel_proto::event::ReleaseMeaning,
    pub record_sha256: String,
    pub reason: String,
    pub signed_at: DateTime<Utc>,
    /// A release despite exceptions: QA's written justification of each exception
    /// of the record as reviewed, in the order the review listed them.
    pub justifications: Vec<Justification>,
    /// Released conditionally: the tests (ids) whose results were outstanding;
    /// release completed: those whose results QA confirmed. Empty otherwise.
    pub outstanding_tests: Vec<String>,
}

/// A QA person's signed closure of a patient follow-up: what was done for the
/// patient after a result out of specification arrived following release.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUpClosure {
    pub closure_id: Uuid,
    pub batch_id: Uuid,
    /// The site record of the result that opened the follow-up.
    pub site_seq: u64,
    pub signer: String,
    pub signer_name: String,
    pub outcome: String,
    pub signed_at: DateTime<Utc>,
}

/// A patient follow-up as QA lists it: the order, the result that opened it, and
/// its closure once signed.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub order: Order,
    pub mark: super::FollowUpMark,
    pub closure: Option<FollowUpClosure>,
}

/// Why a batch may be released despite one of its exceptions, as QA wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Justification {
    /// The exception as QA saw it when signing.
    pub exception: String,
    pub justification: String,
}

/// A QA person's signed acknowledgement that they reviewed the records that
/// arrived after a batch's release decision (through site seq `through_seq`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeReview {
    pub review_id: Uuid,
    pub batch_id: Uuid,
    pub signer: String,
    pub signer_name: String,
    pub through_seq: u64,
    pub record_sha256: String,
    pub comment: String,
    pub signed_at: DateTime<Utc>,
}

/// Everything the batch record is made of.
#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub order: Order,
    pub recipe: StoredRecipe,
    pub events: Vec<StoredEvent>,
    pub qc: Vec<QcRecord>,
    pub signatures: Vec<Signature>,
    /// QA's signed reviews of records that arrived after the decision.
    pub change_reviews: Vec<ChangeReview>,
    /// QA's signed closures of the batch's patient follow-ups.
    pub follow_up_closures: Vec<FollowUpClosure>,
    pub audit: Vec<crate::audit::Entry>,
    /// The directory commands of the batch's site: who could act there, version by
    /// version (the record's people are checked against it).
    pub directory: Vec<carrel_proto::event::HubCommand>,
}

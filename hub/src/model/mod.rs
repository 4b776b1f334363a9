//! The hub's domain model: people, sites, orders and their batches, and the batch
//! record, with the rules that need nothing but these values (a site's lifecycle,
//! how a site event moves a batch). No I/O: the store keeps these values, the
//! services and the two doors (gRPC, web console) show and change them through it.
//!
//! A rule that refuses says why with a [`Refusal`], which the store and the services
//! pass on unchanged.

pub mod analytics;
mod batch;
pub mod deviation;
pub mod notification;
mod people;
mod projection;
pub mod recipe_change;
mod record;
pub mod release;
mod site;

pub use batch::{BatchState, FollowUpMark, NewOrder, Order, Progress};
pub use people::{DirectoryEntry, Role, SiteDirectory, SystemAccount, User};
pub use projection::{Patient, Projection};
pub use record::{
    BatchRecord, ChangeReview, FollowUp, FollowUpClosure, Justification, QcRecord, Signature,
    StoredEvent, StoredRecipe,
};
pub use site::{
    site_transition, IssuedCert, OpenBatch, Qualification, Site, SiteStatus, StatusChange,
    QUALIFICATION_CARRIED_OVER_BY, QUALIFICATION_MEANING,
};

/// Why a rule of the model refuses a change, in words a caller can pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The change is well formed but the state of the records does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The input itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The person asking may not make this change.
    #[error("{0}")]
    PermissionDenied(String),
}

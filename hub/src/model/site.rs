//! Sites of the network and their lifecycle.

use super::{BatchState, Progress, Refusal};
use crate::audit::Action;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteStatus {
    Pending,
    Active,
    Suspended,
    /// Retired from the network for good: no connections, no orders, records kept.
    Ceased,
}

impl SiteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteStatus::Pending => "pending",
            SiteStatus::Active => "active",
            SiteStatus::Suspended => "suspended",
            SiteStatus::Ceased => "ceased",
        }
    }

    pub fn parse(text: &str) -> Option<SiteStatus> {
        match text {
            "pending" => Some(SiteStatus::Pending),
            "active" => Some(SiteStatus::Active),
            "suspended" => Some(SiteStatus::Suspended),
            "ceased" => Some(SiteStatus::Ceased),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub site_id: String,
    pub name: String,
    pub status: SiteStatus,
    pub cert_sha256: Option<String>,
    /// Expiry of the site's certificate (unknown for sites enrolled before it was kept).
    pub cert_not_after: Option<DateTime<Utc>>,
    /// Fingerprint of the CA that issued it (unknown likewise).
    pub cert_ca_sha256: Option<String>,
    /// A renewed certificate issued over the link that the site has not used yet.
    /// Both it and `cert_sha256` are accepted until the site connects with it.
    pub pending_cert_sha256: Option<String>,
    pub acked_event_seq: u64,
    pub last_command_seq: u64,
    pub acked_command_seq: u64,
    pub last_contact_at: Option<DateTime<Utc>>,
    /// Who put the site in its status, when and why (kept since suspensions were
    /// told to sites; `None` for a status no person set).
    pub status_change: Option<StatusChange>,
}

/// A person's move of a site's lifecycle, as the site row keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// What a suspended site is told of its suspension: who, when and why.
impl From<&StatusChange> for carrel_proto::suspension::Suspension {
    fn from(change: &StatusChange) -> Self {
        carrel_proto::suspension::Suspension {
            by: change.by.clone(),
            at: change.at,
            reason: change.reason.clone(),
        }
    }
}

impl Site {
    /// The site can still connect, and the certificate it holds was not issued by the
    /// CA with fingerprint `ca_sha256` (during a CA rotation: it has yet to renew).
    pub fn holds_certificate_of_another_ca(&self, ca_sha256: &str) -> bool {
        self.status != SiteStatus::Ceased
            && self.cert_sha256.is_some()
            && self.cert_ca_sha256.as_deref() != Some(ca_sha256)
    }
}

/// Who the upgrade names for a qualification it carried over (no person signed).
pub const QUALIFICATION_CARRIED_OVER_BY: &str = "system";

/// What a QA signature qualifying a site for a product means (kept with it).
pub const QUALIFICATION_MEANING: &str =
    "Qualified: I confirm that this site is qualified to make this product in the versions named";

/// QA's signed authorisation of a site to make a product, for a range of its
/// versions. Never changed once recorded: withdrawn (who, when, why) and, to change
/// the range, recorded anew. An order is taken only for a site and product version
/// that a qualification in force covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Qualification {
    pub site_id: String,
    pub recipe_id: String,
    pub min_version: u32,
    /// The highest version covered; `None`: every later version too.
    pub max_version: Option<u32>,
    /// The signer's user name (`system` for one carried over at upgrade).
    pub qualified_by: String,
    /// The signer's full name as signed.
    pub qualified_name: String,
    pub qualified_at: DateTime<Utc>,
    pub meaning: String,
    /// Why: the qualification run, its report's reference.
    pub reason: String,
    pub withdrawn: Option<StatusChange>,
}

impl Qualification {
    pub fn in_force(&self) -> bool {
        self.withdrawn.is_none()
    }

    /// Whether it is in force and covers `version` of its product.
    pub fn covers(&self, version: u32) -> bool {
        self.in_force()
            && version >= self.min_version
            && self.max_version.is_none_or(|max| version <= max)
    }

    /// Whether recording `new` would repeat this one: in force, the same site,
    /// product and versions, signed by a person (one carried over at upgrade is
    /// for QA to sign again as it is). What a form sent twice meets.
    pub fn repeated_by(&self, new: &Qualification) -> bool {
        self.in_force()
            && self.site_id == new.site_id
            && self.recipe_id == new.recipe_id
            && self.min_version == new.min_version
            && self.max_version == new.max_version
            && self.qualified_by != QUALIFICATION_CARRIED_OVER_BY
    }

    /// Why a repeat of this one is refused.
    pub fn repeat_refusal(&self) -> String {
        format!(
            "site {} is already qualified for {} {} (signed by {} on {}); nothing changed",
            self.site_id,
            self.recipe_id,
            self.versions(),
            self.qualified_name,
            self.qualified_at.format("%Y-%m-%d %H:%M UTC")
        )
    }

    /// The versions covered, in words: "v2 and later", "v1 to v3", "v2 only".
    pub fn versions(&self) -> String {
        match self.max_version {
            None => format!("v{} and later", self.min_version),
            Some(max) if max == self.min_version => format!("v{max} only"),
            Some(max) => format!("v{} to v{max}", self.min_version),
        }
    }
}

/// A certificate the hub's CA issued to a site, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCert {
    pub sha256: String,
    pub not_after: DateTime<Utc>,
    /// The issuing CA's fingerprint.
    pub ca_sha256: String,
}

/// A batch of a site that is not closed (see [`BatchState::is_closed`]), as a
/// lifecycle move sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenBatch {
    pub batch_id: Uuid,
    /// The COI of the batch's order (how people name it); empty until looked up.
    pub coi: String,
    pub state: BatchState,
    pub progress: Progress,
}

impl OpenBatch {
    /// The batch, when it is not closed.
    pub fn of(batch_id: Uuid, state: BatchState, progress: Progress) -> Option<OpenBatch> {
        (!state.is_closed()).then_some(OpenBatch {
            batch_id,
            coi: String::new(),
            state,
            progress,
        })
    }

    /// The progress to store when the batch's site is suspended while it runs:
    /// flagged for a QA decision.
    pub fn flagged_for_suspension(&self, actor: &str, reason: &str, at: DateTime<Utc>) -> Progress {
        let mut progress = self.progress.clone();
        progress.anomalies.push(format!(
            "site suspended while this batch was running ({} by {actor}: {reason}); QA decision required",
            at.format("%Y-%m-%d %H:%M UTC")
        ));
        progress
    }
}

/// Checks a move of a site's lifecycle and names its audit action.
pub fn site_transition(
    site: &Site,
    to: SiteStatus,
    open_batches: &[OpenBatch],
) -> Result<Action, Refusal> {
    let id = &site.site_id;
    let from = site.status;
    match (from, to) {
        (SiteStatus::Ceased, _) => Err(Refusal::FailedPrecondition(format!(
            "site {id:?} has ceased; a ceased site cannot change again (its records stay readable)"
        ))),
        (SiteStatus::Pending | SiteStatus::Active, SiteStatus::Suspended) => Ok(Action::SiteSuspended),
        (SiteStatus::Suspended, SiteStatus::Active) => Ok(Action::SiteResumed),
        (_, SiteStatus::Ceased) => match open_batches {
            [] => Ok(Action::SiteCeased),
            open => Err(Refusal::FailedPrecondition(format!(
                "site {id:?} still has {} open batch(es) ({}); each must be infused, rejected or cancelled before the site can cease",
                open.len(),
                open.iter()
                    .map(|b| {
                        let name = if b.coi.is_empty() { b.batch_id.to_string() } else { format!("COI {}", b.coi) };
                        format!("{name}, {}", b.state.as_str().replace('_', " "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
        (from, to) if from == to => Err(Refusal::FailedPrecondition(format!(
            "site {id:?} is already {}",
            to.as_str()
        ))),
        (SiteStatus::Pending, SiteStatus::Active) => Err(Refusal::FailedPrecondition(format!(
            "site {id:?} has not enrolled yet; it becomes active when its agent enrolls"
        ))),
        (from, to) => Err(Refusal::FailedPrecondition(format!(
            "site {id:?} cannot go from {} to {}",
            from.as_str(),
            to.as_str()
        ))),
    }
}

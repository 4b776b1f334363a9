//! The people of a site, as the hub's directory describes them to the site, and the
//! one rule both sides apply to a record a person makes: whether their role may make it.
//!
//! The hub holds the directory (hub users with a role, assigned to sites) and sends
//! each site its people as `PersonUpdated` commands in the site's command log; the
//! seq of the last one a site applied is its *directory version*. A site checks
//! credentials against its copy offline and names the version in every record it
//! makes; the hub checks the record's people against the same version.

use crate::event::EventKind;
use serde::{Deserialize, Serialize};

/// Where a person stands in a site's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonStatus {
    /// May sign in at the site.
    Active,
    /// Disabled at the hub: may not sign in anywhere.
    Disabled,
    /// No longer works at this site.
    Removed,
}

impl PersonStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PersonStatus::Active => "active",
            PersonStatus::Disabled => "disabled",
            PersonStatus::Removed => "removed",
        }
    }

    pub fn parse(text: &str) -> Option<PersonStatus> {
        match text {
            "active" => Some(PersonStatus::Active),
            "disabled" => Some(PersonStatus::Disabled),
            "removed" => Some(PersonStatus::Removed),
            _ => None,
        }
    }
}

/// The roles a site's directory holds (the hub's admins and physicians who only order
/// are not sent to sites unless assigned; a treating physician may be, for the bedside).
pub const SITE_ROLES: [&str; 3] = ["technician", "qa", "physician"];

/// What a person does at the site, in the words a refusal uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteAction {
    /// Scan a label at a manufacturing checkpoint, or verify that scan.
    CustodyScan,
    /// Scan at the bedside (hand-over, infusion), or verify it.
    BedsideScan,
    QcResult,
    ManualReading,
    Correction,
    /// Print or reprint a batch's label.
    LabelPrint,
    /// Raise a deviation by hand (the agent raises its own automatically).
    RaiseDeviation,
}

impl SiteAction {
    /// The action a record of this kind is, for a person; `None` for records only the
    /// agent makes. `bedside` says whether a custody scan's checkpoint is at the bedside.
    pub fn of(kind: &EventKind, bedside: bool) -> Option<SiteAction> {
        match kind {
            EventKind::CustodyScan { .. } if bedside => Some(SiteAction::BedsideScan),
            EventKind::CustodyScan { .. } => Some(SiteAction::CustodyScan),
            EventKind::QcResult { .. } => Some(SiteAction::QcResult),
            EventKind::ProcessSamples { .. } => Some(SiteAction::ManualReading),
            EventKind::Correction { .. } => Some(SiteAction::Correction),
            EventKind::LabelPrinted { .. } => Some(SiteAction::LabelPrint),
            EventKind::DeviationRaised { .. } => Some(SiteAction::RaiseDeviation),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            SiteAction::CustodyScan => "scan or verify a custody checkpoint",
            SiteAction::BedsideScan => "scan or verify at the bedside",
            SiteAction::QcResult => "record a QC result",
            SiteAction::ManualReading => "record a manual reading",
            SiteAction::Correction => "correct a record",
            SiteAction::LabelPrint => "print a label",
            SiteAction::RaiseDeviation => "raise a deviation",
        }
    }

    /// The roles that may do it. QA may take part in a site's work (and then may not
    /// release that batch); a treating physician only at the bedside.
    pub fn roles(self) -> &'static [&'static str] {
        match self {
            SiteAction::BedsideScan => &["technician", "qa", "physician"],
            SiteAction::CustodyScan
            | SiteAction::QcResult
            | SiteAction::ManualReading
            | SiteAction::Correction
            | SiteAction::LabelPrint
            | SiteAction::RaiseDeviation => &["technician", "qa"],
        }
    }

    pub fn allows(self, role: &str) -> bool {
        self.roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_roles_are_the_rule() {
        for status in [
            PersonStatus::Active,
            PersonStatus::Disabled,
            PersonStatus::Removed,
        ] {
            assert_eq!(PersonStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(PersonStatus::parse("gone"), None);
        assert!(SiteAction::QcResult.allows("technician"));
        assert!(!SiteAction::QcResult.allows("physician"));
        assert!(SiteAction::BedsideScan.allows("physician"));
        assert!(!SiteAction::CustodyScan.allows("admin"));
    }
}

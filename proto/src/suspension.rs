//! A suspended site, as the hub tells it when it refuses the site's link: who
//! suspended it, when, and why.
//!
//! It travels in the PERMISSION_DENIED status's details as a standard
//! `google.rpc.ErrorInfo` (reason [`REASON`], domain [`DOMAIN`], the facts in its
//! metadata), so any gRPC client, not only the site agent, can read it.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.reason` of a refusal because the site is suspended.
pub const REASON: &str = "SITE_SUSPENDED";
/// `ErrorInfo.domain` of the site link's refusals.
pub const DOMAIN: &str = "carrel.v1.SiteLinkService";

/// Who suspended a site, when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
}

impl Suspension {
    /// One line for people, which a sentence can go on from:
    /// `suspended by X on 2026-12-04 at 09:30 UTC, reason: "..."`.
    pub fn describe(&self) -> String {
        format!(
            "suspended by {} on {}, reason: \"{}\"",
            self.by,
            self.at.format("%Y-%m-%d at %H:%M UTC"),
            self.reason.trim()
        )
    }

    /// The hub's refusal of the link of suspended site `site_id`.
    pub fn refusal(&self, site_id: &str) -> Status {
        let metadata = HashMap::from([
            ("site_id".to_owned(), site_id.to_owned()),
            ("suspended_by".to_owned(), self.by.clone()),
            ("suspended_at".to_owned(), self.at.to_rfc3339()),
            ("reason".to_owned(), self.reason.clone()),
        ]);
        Status::with_error_details(
            Code::PermissionDenied,
            format!("site {site_id:?} is {}", self.describe()),
            ErrorDetails::with_error_info(REASON, DOMAIN, metadata),
        )
    }

    /// The suspension a refusal tells of, if it is one.
    pub fn of(status: &Status) -> Option<Suspension> {
        if status.code() != Code::PermissionDenied {
            return None;
        }
        let info = status.get_details_error_info()?;
        if info.reason != REASON || info.domain != DOMAIN {
            return None;
        }
        let get = |key: &str| info.metadata.get(key).cloned().unwrap_or_default();
        Some(Suspension {
            by: get("suspended_by"),
            at: DateTime::parse_from_rfc3339(&get("suspended_at"))
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
            reason: get("reason"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_suspension_and_other_refusals_do_not() {
        let suspension = Suspension {
            by: "admin.ana".into(),
            at: "2026-12-04T09:30:00Z".parse().expect("a time"),
            reason: "Clean room failed its particle count; no new steps until requalified.".into(),
        };
        let status = suspension.refusal("site-a");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("admin.ana"),
            "{}",
            status.message()
        );
        assert_eq!(Suspension::of(&status), Some(suspension));
        assert_eq!(
            Suspension::of(&Status::permission_denied("site \"site-a\" has ceased")),
            None
        );
    }
}

//! Where a batch stands: the states both the hub and the site agent derive from the
//! batch's records, each in its own projection, under the same names.

use std::fmt;

/// Lifecycle state of a batch, derived from its records. The text form
/// ([`BatchState::as_str`]) is what both sides store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchState {
    /// Order received, not yet accepted by the site.
    Ordered,
    Accepted,
    InProcess,
    AwaitingRelease,
    Released,
    Rejected,
    Cancelled,
    /// The released product was handed over for infusion.
    HandedOver,
    /// Infusion confirmed at the bedside: the chain of identity is closed.
    Infused,
}

impl BatchState {
    pub const ALL: [BatchState; 9] = [
        BatchState::Ordered,
        BatchState::Accepted,
        BatchState::InProcess,
        BatchState::AwaitingRelease,
        BatchState::Released,
        BatchState::Rejected,
        BatchState::Cancelled,
        BatchState::HandedOver,
        BatchState::Infused,
    ];

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

    /// The state named by [`BatchState::as_str`], if `text` names one.
    pub fn parse(text: &str) -> Option<BatchState> {
        BatchState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No further manufacturing happens in this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchState::Released | BatchState::Rejected | BatchState::Cancelled
        )
    }

    /// Whether an order in this state can still be cancelled: only while the batch
    /// is being made (a finished batch is rejected by QA instead, and a released one
    /// may be with the patient).
    pub fn cancellable(self) -> bool {
        matches!(
            self,
            BatchState::Ordered | BatchState::Accepted | BatchState::InProcess
        )
    }

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

    /// Manufacturing still has work to do in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            BatchState::Ordered | BatchState::Accepted | BatchState::InProcess
        )
    }

    /// Manufacturing has started and its record is not complete yet.
    pub fn under_way(self) -> bool {
        matches!(self, BatchState::Accepted | BatchState::InProcess)
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_text() {
        for state in BatchState::ALL {
            assert_eq!(BatchState::parse(state.as_str()), Some(state));
        }
        assert_eq!(BatchState::parse("Released"), None);
        assert_eq!(BatchState::parse(""), None);
    }
}

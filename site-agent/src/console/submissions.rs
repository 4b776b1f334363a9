//! One-time submission tokens for the console's recording forms.
//!
//! Every form that records something carries a token issued with the page. A token
//! records at most once: sent again (a refreshed page, a double click, the back
//! button) it is refused with the record it already made, and nothing is recorded
//! twice. A token the console never issued, or no longer remembers (it restarted,
//! or the form is very old), is refused too: asking the technician to reload costs
//! a few seconds, a duplicate GMP record costs an investigation. A form that was
//! refused recorded nothing, so its token may be sent again once corrected.
//!
//! After recording, the console answers with a redirect to the batch page
//! (POST-redirect-GET) showing the outcome kept here, so reloading it only shows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Tokens remembered (issued or used); the oldest are forgotten first.
const REMEMBERED: usize = 4096;

/// What a submission recorded, to show again and to name on a repeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The site record the submission made.
    pub seq: u64,
    /// The outcome as the page shows it (HTML).
    pub outcome: String,
}

/// What a token may do now.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// Issued and unused: record, then [`Submissions::finish`].
    Fresh,
    /// Already recorded this.
    Recorded(Recorded),
    /// Another request with this token is recording right now.
    InFlight,
    /// Never issued here, or forgotten.
    Unknown,
}

#[derive(Default)]
pub struct Submissions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    issued: HashSet<String>,
    in_flight: HashSet<String>,
    recorded: HashMap<String, Recorded>,
    /// Every remembered token, oldest first.
    order: VecDeque<String>,
}

impl Submissions {
    /// A new token for a form about to be shown.
    pub fn issue(&self) -> String {
        let mut bytes = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        let token = hex::encode(bytes);
        let mut inner = self.inner.lock().expect("submissions lock");
        inner.issued.insert(token.clone());
        inner.order.push_back(token.clone());
        while inner.order.len() > REMEMBERED {
            if let Some(old) = inner.order.pop_front() {
                inner.issued.remove(&old);
                inner.recorded.remove(&old);
            }
        }
        token
    }

    /// Takes a token for one submission; only [`Claim::Fresh`] may record.
    pub fn claim(&self, token: &str) -> Claim {
        let mut inner = self.inner.lock().expect("submissions lock");
        if let Some(recorded) = inner.recorded.get(token) {
            return Claim::Recorded(recorded.clone());
        }
        if inner.in_flight.contains(token) {
            return Claim::InFlight;
        }
        if inner.issued.remove(token) {
            inner.in_flight.insert(token.to_owned());
            return Claim::Fresh;
        }
        Claim::Unknown
    }

    /// Ends a [`Claim::Fresh`] submission: what it recorded, or `None` when it was
    /// refused and recorded nothing (the token may then be sent again).
    pub fn finish(&self, token: &str, recorded: Option<Recorded>) {
        let mut inner = self.inner.lock().expect("submissions lock");
        inner.in_flight.remove(token);
        match recorded {
            Some(recorded) => {
                inner.recorded.insert(token.to_owned(), recorded);
            }
            None => {
                inner.issued.insert(token.to_owned());
            }
        }
    }

    /// What a token recorded, for the page the console redirects to.
    pub fn recorded(&self, token: &str) -> Option<Recorded> {
        let inner = self.inner.lock().expect("submissions lock");
        inner.recorded.get(token).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(seq: u64) -> Recorded {
        Recorded {
            seq,
            outcome: format!("record {seq}"),
        }
    }

    #[test]
    fn a_token_records_once_and_names_its_record_when_sent_again() {
        let submissions = Submissions::default();
        let token = submissions.issue();
        assert_eq!(submissions.claim(&token), Claim::Fresh);
        assert_eq!(submissions.claim(&token), Claim::InFlight);
        submissions.finish(&token, Some(recorded(364)));
        assert_eq!(submissions.claim(&token), Claim::Recorded(recorded(364)));
        assert_eq!(submissions.recorded(&token), Some(recorded(364)));
    }

    #[test]
    fn a_refused_submission_may_be_sent_again_and_an_unknown_token_never_records() {
        let submissions = Submissions::default();
        let token = submissions.issue();
        assert_eq!(submissions.claim(&token), Claim::Fresh);
        submissions.finish(&token, None);
        assert_eq!(submissions.claim(&token), Claim::Fresh);
        assert_eq!(submissions.claim("not-issued-here"), Claim::Unknown);
        assert_eq!(submissions.claim(""), Claim::Unknown);
    }

    #[test]
    fn the_oldest_tokens_are_forgotten_and_then_refused() {
        let submissions = Submissions::default();
        let first = submissions.issue();
        for _ in 0..REMEMBERED {
            submissions.issue();
        }
        assert_eq!(submissions.claim(&first), Claim::Unknown);
    }
}

//! Which QC result counts when a test was run more than once.
//!
//! Results are never overwritten: a retest is a new result that names the one it
//! retests (`retest_of`). For each test the results form chains; the result at the
//! end of its chain (retested by nothing later) is the test's *current* result. When
//! a test has exactly one current result, that is its reportable value. When it has
//! more (a repeat that named nothing, or two retests of the same result), which
//! result counts is not stated, and QA must treat the test as an exception.
//!
//! The site agent refuses to record such a repeat; the hub flags one that reaches it
//! all the same (an older agent, a result from an instrument). Both use this rule.

use crate::event::{EventKind, SiteEvent};
use std::collections::BTreeMap;

/// The results of one test, in log order.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResults {
    pub test_id: String,
    /// The seqs of the test's results, in log order.
    pub results: Vec<u64>,
    /// Result → the later result of the same test that retests it.
    pub retested_by: BTreeMap<u64, u64>,
    /// Results whose `retest_of` names a record that is not an earlier result of
    /// this test: (result, the record it names).
    pub broken_links: Vec<(u64, u64)>,
}

impl TestResults {
    /// The results no later result retests, in log order.
    pub fn current(&self) -> Vec<u64> {
        self.results
            .iter()
            .copied()
            .filter(|seq| !self.retested_by.contains_key(seq))
            .collect()
    }

    /// The result that counts: the one current result, or `None` when there are
    /// several and the record does not say which counts.
    pub fn reportable(&self) -> Option<u64> {
        match self.current().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// The QC results of a batch's events, grouped per test in the order each test was
/// first recorded.
pub fn by_test<'a>(events: impl IntoIterator<Item = &'a SiteEvent>) -> Vec<TestResults> {
    let mut tests: Vec<TestResults> = Vec::new();
    for event in events {
        let EventKind::QcResult {
            test_id, retest_of, ..
        } = &event.kind
        else {
            continue;
        };
        let index = match tests.iter().position(|t| &t.test_id == test_id) {
            Some(index) => index,
            None => {
                tests.push(TestResults {
                    test_id: test_id.clone(),
                    results: Vec::new(),
                    retested_by: BTreeMap::new(),
                    broken_links: Vec::new(),
                });
                tests.len() - 1
            }
        };
        let test = &mut tests[index];
        if let Some(original) = *retest_of {
            if !test.results.contains(&original) {
                test.broken_links.push((event.seq, original));
            } else {
                match test.retested_by.entry(original) {
                    std::collections::btree_map::Entry::Vacant(link) => {
                        link.insert(event.seq);
                    }
                    // A second retest of the same result: the first keeps the link,
                    // and this one stands beside it (two current results).
                    std::collections::btree_map::Entry::Occupied(_) => {
                        test.broken_links.push((event.seq, original));
                    }
                }
            }
        }
        test.results.push(event.seq);
    }
    tests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Identity;
    use crate::recipe::{Outcome, QcValue};
    use chrono::Utc;
    use uuid::Uuid;

    fn result(seq: u64, test: &str, retest_of: Option<u64>) -> SiteEvent {
        SiteEvent {
            seq,
            event_id: Uuid::new_v4(),
            batch_id: Uuid::nil(),
            recorded_at: Utc::now(),
            recorded_by: "tech".into(),
            identity: Identity::Unverified,
            prev_sha256: String::new(),
            kind: EventKind::QcResult {
                test_id: test.into(),
                value: QcValue::Numeric(1.0),
                unit: "%".into(),
                method: String::new(),
                site_outcome: Outcome::Pass,
                retest_of,
            },
        }
    }

    #[test]
    fn a_linked_retest_is_the_reportable_value() {
        let events = [
            result(3, "viability", None),
            result(4, "endotoxin", None),
            result(7, "viability", Some(3)),
            result(9, "viability", Some(7)),
        ];
        let tests = by_test(&events);
        assert_eq!(tests.len(), 2);
        assert_eq!(tests[0].test_id, "viability");
        assert_eq!(tests[0].results, vec![3, 7, 9]);
        assert_eq!(tests[0].reportable(), Some(9));
        assert_eq!(tests[0].retested_by.get(&3), Some(&7));
        assert_eq!(tests[1].reportable(), Some(4));
        assert!(tests[0].broken_links.is_empty());
    }

    #[test]
    fn an_unlinked_repeat_leaves_the_reportable_value_unstated() {
        let events = [result(3, "viability", None), result(5, "viability", None)];
        let tests = by_test(&events);
        assert_eq!(tests[0].current(), vec![3, 5]);
        assert_eq!(tests[0].reportable(), None);
    }

    #[test]
    fn two_retests_of_one_result_and_links_to_other_tests_are_not_links() {
        let events = [
            result(3, "viability", None),
            result(4, "endotoxin", None),
            result(5, "viability", Some(3)),
            result(6, "viability", Some(3)),
            result(8, "viability", Some(4)),
        ];
        let tests = by_test(&events);
        assert_eq!(tests[0].current(), vec![5, 6, 8]);
        assert_eq!(tests[0].reportable(), None);
        assert_eq!(tests[0].broken_links, vec![(6, 3), (8, 4)]);
    }
}

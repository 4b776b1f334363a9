//! The batch projection: how each site event changes a batch's state.
//!
//! Pure logic, applied by the store inside the transaction that appends the event
//! (invariant 4). The hub never refuses a well-formed, attributable record because
//! of what it says: a site's log is the record of what happened, and refusing one
//! entry would block every later one. What does not fit the recipe or the batch's
//! state is stored, marked as an exception for QA, and explained in `anomalies`.

use super::{BatchState, Order, Progress, QcRecord};
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::recipe::{Outcome, Recipe};

/// The derived state of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub state: BatchState,
    pub current_step: Option<String>,
    pub progress: Progress,
    pub decision_recorded: bool,
}

impl Order {
    /// The projection this order's batch is in, to apply further records to.
    pub fn projection(&self) -> Projection {
        Projection {
            state: self.state,
            current_step: self.current_step.clone(),
            progress: self.progress.clone(),
            decision_recorded: self.decision_recorded,
        }
    }
}

/// Whose batch a projection follows: the order's COI and patient pseudonym.
#[derive(Debug, Clone, Copy)]
pub struct Patient<'a> {
    pub coi: &'a str,
    pub pseudonym: &'a str,
}

impl Patient<'_> {
    /// Whether a scanned wristband names this patient (its COI or pseudonym).
    pub fn named_by(&self, wristband: &str) -> bool {
        let w = wristband.trim();
        w == self.coi || w.eq_ignore_ascii_case(self.pseudonym.trim())
    }
}

impl Projection {
    pub fn new() -> Projection {
        Projection {
            state: BatchState::Ordered,
            current_step: None,
            progress: Progress::default(),
            decision_recorded: false,
        }
    }

    /// Applies one site event of `patient`'s batch; returns the hub's evaluation
    /// when it is a QC result.
    pub fn apply(
        &mut self,
        event: &SiteEvent,
        recipe: &Recipe,
        recipe_sha256: &str,
        patient: Patient<'_>,
    ) -> Option<QcRecord> {
        let mut qc = None;
        let mut exception = false;
        let decided = matches!(
            self.state,
            BatchState::Released
                | BatchState::Rejected
                | BatchState::HandedOver
                | BatchState::Infused
        );
        match &event.kind {
            EventKind::BatchAccepted {
                recipe_sha256: accepted,
                ..
            } => {
                if accepted != recipe_sha256 {
                    exception = true;
                    self.anomaly(
                        event,
                        format!(
                            "site accepted recipe {accepted}, the order pinned {recipe_sha256}"
                        ),
                    );
                }
                if self.state == BatchState::Ordered {
                    self.state = BatchState::Accepted;
                }
            }
            EventKind::StepStarted { step_id, .. } => {
                match recipe.step(step_id) {
                    None => {
                        exception = true;
                        self.anomaly(event, format!("step {step_id:?} is not in the recipe"));
                    }
                    Some(step) => {
                        if let Some(cp) = &step.custody_checkpoint {
                            if !self.progress.checkpoints_passed.contains(&cp.id) {
                                exception = true;
                                self.anomaly(
                                    event,
                                    format!("step {step_id:?} started without a matching scan at custody checkpoint {:?}", cp.id),
                                );
                            }
                        }
                    }
                }
                if matches!(
                    self.state,
                    BatchState::Ordered | BatchState::Accepted | BatchState::InProcess
                ) {
                    self.state = BatchState::InProcess;
                    self.current_step = Some(step_id.clone());
                }
            }
            EventKind::StepCompleted { step_id, .. } => {
                if recipe.step(step_id).is_none() {
                    exception = true;
                    self.anomaly(event, format!("step {step_id:?} is not in the recipe"));
                } else {
                    self.progress.steps_completed.insert(step_id.clone());
                }
                if self.current_step.as_deref() == Some(step_id) {
                    self.current_step = None;
                }
            }
            EventKind::QcResult {
                test_id,
                value,
                site_outcome,
                ..
            } => {
                let (hub_outcome, reason) = match recipe.test(test_id) {
                    Some(test) => {
                        let evaluation = test.spec.evaluate(value);
                        (evaluation.outcome, evaluation.reason)
                    }
                    None => (
                        Outcome::OutOfSpecification,
                        format!("test {test_id:?} is not in the recipe"),
                    ),
                };
                if hub_outcome != Outcome::Pass || *site_outcome != Outcome::Pass {
                    exception = true;
                }
                if hub_outcome != *site_outcome {
                    self.anomaly(
                        event,
                        format!("site evaluated {test_id} as {site_outcome:?}, the hub as {hub_outcome:?}"),
                    );
                }
                self.progress.tests_recorded.insert(test_id.clone());
                // Out of specification after the batch was released (it may be
                // infused already), by the hub's evaluation or the site's: a
                // patient follow-up, opened with the record.
                if (hub_outcome != Outcome::Pass || *site_outcome != Outcome::Pass)
                    && matches!(
                        self.state,
                        BatchState::Released | BatchState::HandedOver | BatchState::Infused
                    )
                {
                    self.progress.follow_ups.push(super::FollowUpMark {
                        site_seq: event.seq,
                        test_id: test_id.clone(),
                        opened_at: event.recorded_at,
                        closed: false,
                    });
                }
                qc = Some(QcRecord {
                    site_seq: event.seq,
                    test_id: test_id.clone(),
                    value: value.clone(),
                    hub_outcome,
                    site_outcome: *site_outcome,
                    reason,
                });
            }
            EventKind::InstrumentAlarm { .. }
            | EventKind::DeviationRaised { .. }
            | EventKind::Correction { .. } => {
                exception = true;
            }
            EventKind::CustodyScan { .. } => {
                exception = self.custody(event, recipe, patient);
            }
            EventKind::ReleaseDecisionRecorded { .. } => {
                self.decision_recorded = true;
            }
            // Site-wide: never reaches a batch's projection.
            EventKind::PersonLocked { .. } => {}
            EventKind::BatchCancelled { .. } => {
                if !self.state.is_final() {
                    self.state = BatchState::Cancelled;
                }
                self.current_step = None;
            }
            EventKind::ProcessSamples { .. }
            | EventKind::InstrumentCommandRequested { .. }
            | EventKind::InstrumentCommandStarted { .. }
            | EventKind::InstrumentResults { .. }
            | EventKind::LabelPrinted { .. } => {}
        }
        if exception {
            self.progress.exceptions.push(event.seq);
        }
        // After QA's decision the record goes on with the hand-over and infusion
        // scans and the site's note of the decision; anything else changes what QA
        // reviewed and signed.
        let expected_after_decision = match &event.kind {
            // A label (re)printed for the hand-over changes nothing QA reviewed.
            EventKind::ReleaseDecisionRecorded { .. }
            | EventKind::PersonLocked { .. }
            | EventKind::LabelPrinted { .. } => true,
            EventKind::CustodyScan { .. } => !exception,
            // A result a conditional release waits for, within specification, is
            // what the release expected (QA completes the release with it).
            EventKind::QcResult { test_id, .. } => {
                !exception && self.progress.release_awaits.contains(test_id)
            }
            _ => false,
        };
        if decided && !expected_after_decision {
            self.progress.changed_after_decision.push(event.seq);
        }
        if matches!(self.state, BatchState::Accepted | BatchState::InProcess)
            && self.record_complete(recipe)
        {
            self.state = BatchState::AwaitingRelease;
            self.current_step = None;
        }
        qc
    }

    /// Every step completed and every test recorded that must precede release.
    /// The rule is the recipe's, shared with the site agent ([`Recipe::record_complete`]).
    pub fn record_complete(&self, recipe: &Recipe) -> bool {
        recipe.record_complete(
            &self.progress.steps_completed,
            &self.progress.tests_recorded,
        )
    }

    /// A scan the site reports; returns true when it is an exception for QA. The hub
    /// trusts the site's "matched" only when the identifiers say the same: at the
    /// bedside that includes the patient's wristband (their COI or pseudonym).
    fn custody(&mut self, event: &SiteEvent, recipe: &Recipe, patient: Patient<'_>) -> bool {
        let coi = patient.coi;
        let EventKind::CustodyScan {
            checkpoint_id,
            expected_coi,
            scanned_coi,
            matched,
            wristband,
            ..
        } = &event.kind
        else {
            return false;
        };
        let matched = *matched;
        if !matched {
            return true;
        }
        if expected_coi != coi || scanned_coi != coi {
            self.anomaly(
                event,
                format!("site reported a match at {checkpoint_id:?} but scanned {scanned_coi:?}; the order's COI is {coi}"),
            );
            return true;
        }
        let bedside: Vec<&str> = recipe
            .bedside_checkpoints
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        let in_steps = recipe.steps.iter().any(|s| {
            s.custody_checkpoint
                .as_ref()
                .is_some_and(|c| &c.id == checkpoint_id)
        });
        let at_bedside = bedside.contains(&checkpoint_id.as_str());
        if at_bedside && !wristband.as_deref().is_some_and(|w| patient.named_by(w)) {
            self.anomaly(
                event,
                match wristband {
                    None => format!("site reported a match at {checkpoint_id:?} without scanning the patient's wristband"),
                    Some(w) => format!("site reported a match at {checkpoint_id:?} with wristband {w:?}, which names neither the order's COI nor its patient"),
                },
            );
            return true;
        }
        match bedside.iter().position(|id| *id == checkpoint_id) {
            Some(0) if self.state == BatchState::Released => self.state = BatchState::HandedOver,
            Some(1) if self.state == BatchState::HandedOver => self.state = BatchState::Infused,
            Some(_) => {
                self.anomaly(
                    event,
                    format!(
                        "bedside checkpoint {checkpoint_id:?} recorded while the batch is {}",
                        self.state
                    ),
                );
                return true;
            }
            None if in_steps => {}
            None => {
                self.anomaly(
                    event,
                    format!("custody checkpoint {checkpoint_id:?} is not in the recipe"),
                );
                return true;
            }
        }
        self.progress
            .checkpoints_passed
            .insert(checkpoint_id.to_owned());
        false
    }

    /// Notes something the hub found wrong with a record (stored, shown to QA).
    pub fn flag(&mut self, event: &SiteEvent, what: String) {
        self.anomaly(event, what);
        if self.progress.exceptions.last() != Some(&event.seq) {
            self.progress.exceptions.push(event.seq);
        }
    }

    fn anomaly(&mut self, event: &SiteEvent, what: String) {
        self.progress
            .anomalies
            .push(format!("site seq {}: {what}", event.seq));
    }
}

impl Default for Projection {
    fn default() -> Self {
        Projection::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::recipe::QcValue;
    use chrono::Utc;
    use uuid::Uuid;

    const COI: &str = "G123426000042X";
    const PATIENT: Patient<'static> = Patient {
        coi: COI,
        pseudonym: "P-0042",
    };

    fn recipe() -> Recipe {
        Recipe::from_toml(include_str!("../../recipes/cd19-car-t.v1.toml")).expect("valid recipe")
    }

    fn event(seq: u64, kind: EventKind) -> SiteEvent {
        SiteEvent {
            seq,
            event_id: Uuid::new_v4(),
            recorded_at: Utc::now(),
            batch_id: Uuid::nil(),
            recorded_by: "agent".into(),
            identity: carrel_proto::event::Identity::Agent,
            prev_sha256: carrel_proto::event::GENESIS_SHA256.into(),
            kind,
        }
    }

    fn scan(seq: u64, checkpoint: &str, scanned: &str, matched: bool) -> SiteEvent {
        event(
            seq,
            EventKind::CustodyScan {
                checkpoint_id: checkpoint.into(),
                expected_coi: COI.into(),
                scanned_coi: scanned.into(),
                verifiers: vec!["a".into(), "b".into()],
                matched,
                location: "bench 1".into(),
                // At the bedside the wristband is scanned too; it carries the COI.
                wristband: matches!(checkpoint, "handover" | "infusion").then(|| COI.into()),
            },
        )
    }

    fn qc(seq: u64, test_id: &str, value: QcValue, site_outcome: Outcome) -> SiteEvent {
        event(
            seq,
            EventKind::QcResult {
                test_id: test_id.into(),
                value,
                unit: String::new(),
                method: String::new(),
                site_outcome,
                retest_of: None,
            },
        )
    }

    /// Runs the whole happy path and returns the projection before the last test.
    fn run_all_but_last_test(recipe: &Recipe, sha: &str) -> (Projection, u64) {
        let mut p = Projection::new();
        let mut seq = 1;
        p.apply(
            &event(
                seq,
                EventKind::BatchAccepted {
                    coi: "X".into(),
                    recipe_id: recipe.id.clone(),
                    recipe_version: 1,
                    recipe_sha256: sha.into(),
                },
            ),
            recipe,
            sha,
            PATIENT,
        );
        assert_eq!(p.state, BatchState::Accepted);
        for step in &recipe.steps {
            if let Some(cp) = &step.custody_checkpoint {
                seq += 1;
                p.apply(&scan(seq, &cp.id, COI, true), recipe, sha, PATIENT);
            }
            seq += 1;
            p.apply(
                &event(
                    seq,
                    EventKind::StepStarted {
                        step_id: step.id.clone(),
                        instrument_id: "sim".into(),
                        resumed: false,
                    },
                ),
                recipe,
                sha,
                PATIENT,
            );
            assert_eq!(p.state, BatchState::InProcess);
            assert_eq!(p.current_step.as_deref(), Some(step.id.as_str()));
            seq += 1;
            p.apply(
                &event(
                    seq,
                    EventKind::StepCompleted {
                        step_id: step.id.clone(),
                        process_hours: step.duration_hours,
                    },
                ),
                recipe,
                sha,
                PATIENT,
            );
        }
        let tests: Vec<_> = recipe
            .all_tests()
            .filter(|t| !t.may_follow_release)
            .collect();
        for test in &tests[..tests.len() - 1] {
            seq += 1;
            let value = if test.spec.accepted.is_empty() {
                QcValue::Numeric(test.spec.min.unwrap_or(0.0))
            } else {
                QcValue::Text(test.spec.accepted[0].clone())
            };
            let q = p.apply(
                &qc(seq, &test.id, value, Outcome::Pass),
                recipe,
                sha,
                PATIENT,
            );
            assert_eq!(q.map(|q| q.hub_outcome), Some(Outcome::Pass), "{}", test.id);
        }
        (p, seq)
    }

    #[test]
    fn batch_awaits_release_only_when_every_step_and_test_is_recorded() {
        let recipe = recipe();
        let sha = recipe.sha256();
        let (mut p, seq) = run_all_but_last_test(&recipe, &sha);
        assert_eq!(p.state, BatchState::InProcess, "one test is still missing");
        let last = recipe
            .all_tests()
            .filter(|t| !t.may_follow_release)
            .last()
            .expect("recipe has tests");
        p.apply(
            &qc(seq + 1, &last.id, QcValue::Numeric(1.0), Outcome::Pass),
            &recipe,
            &sha,
            PATIENT,
        );
        assert_eq!(p.state, BatchState::AwaitingRelease);
        assert!(
            p.progress.exceptions.is_empty(),
            "{:?}",
            p.progress.anomalies
        );
    }

    #[test]
    fn bedside_scans_close_the_chain_only_after_release_and_in_order() {
        let recipe = recipe();
        let sha = recipe.sha256();
        let mut p = Projection::new();
        p.state = BatchState::AwaitingRelease;
        p.apply(&scan(1, "handover", COI, true), &recipe, &sha, PATIENT);
        assert_eq!(p.state, BatchState::AwaitingRelease, "not released yet");
        assert_eq!(p.progress.exceptions, vec![1]);
        p.state = BatchState::Released;
        p.apply(&scan(2, "infusion", COI, true), &recipe, &sha, PATIENT);
        assert_eq!(p.state, BatchState::Released, "infusion before hand-over");
        p.apply(&scan(3, "handover", COI, true), &recipe, &sha, PATIENT);
        assert_eq!(p.state, BatchState::HandedOver);
        p.apply(
            &scan(4, "infusion", "G123426000043Z", true),
            &recipe,
            &sha,
            PATIENT,
        );
        assert_eq!(
            p.state,
            BatchState::HandedOver,
            "a 'match' on another COI is not believed"
        );
        p.apply(&scan(5, "infusion", COI, true), &recipe, &sha, PATIENT);
        assert_eq!(p.state, BatchState::Infused);
        assert_eq!(p.progress.exceptions, vec![1, 2, 4]);
    }

    #[test]
    fn a_bedside_match_is_believed_only_when_the_wristband_names_the_patient() {
        let recipe = recipe();
        let sha = recipe.sha256();
        let mut p = Projection::new();
        p.state = BatchState::Released;
        let with_wristband = |seq: u64, wristband: Option<&str>| {
            let mut e = scan(seq, "handover", COI, true);
            if let EventKind::CustodyScan { wristband: w, .. } = &mut e.kind {
                *w = wristband.map(str::to_owned);
            }
            e
        };
        p.apply(&with_wristband(1, None), &recipe, &sha, PATIENT);
        p.apply(&with_wristband(2, Some("P-0043")), &recipe, &sha, PATIENT);
        p.apply(
            &with_wristband(3, Some("G123426000043Z")),
            &recipe,
            &sha,
            PATIENT,
        );
        assert_eq!(p.state, BatchState::Released, "no bedside match believed");
        assert_eq!(p.progress.exceptions, vec![1, 2, 3]);
        assert!(
            p.progress.anomalies[0].contains("without scanning the patient's wristband"),
            "{:?}",
            p.progress.anomalies
        );
        // The pseudonym as the wristband's barcode reads it (any case) is the patient.
        p.apply(&with_wristband(4, Some("p-0042")), &recipe, &sha, PATIENT);
        assert_eq!(p.state, BatchState::HandedOver);
        assert_eq!(p.progress.exceptions, vec![1, 2, 3]);
    }

    #[test]
    fn a_step_started_without_its_checkpoint_is_flagged() {
        let recipe = recipe();
        let sha = recipe.sha256();
        let mut p = Projection::new();
        p.apply(
            &scan(1, "receipt", "G123426000043Z", false),
            &recipe,
            &sha,
            PATIENT,
        );
        p.apply(
            &event(
                2,
                EventKind::StepStarted {
                    step_id: "receipt".into(),
                    instrument_id: "bench".into(),
                    resumed: false,
                },
            ),
            &recipe,
            &sha,
            PATIENT,
        );
        assert_eq!(p.progress.exceptions, vec![1, 2]);
        assert!(
            p.progress.anomalies[0].contains("without a matching scan"),
            "{:?}",
            p.progress.anomalies
        );
    }

    #[test]
    fn out_of_spec_result_is_an_exception_and_site_disagreement_an_anomaly() {
        let recipe = recipe();
        let sha = recipe.sha256();
        let mut p = Projection::new();
        let q = p
            .apply(
                &qc(5, "viability", QcValue::Numeric(55.0), Outcome::Pass),
                &recipe,
                &sha,
                PATIENT,
            )
            .expect("a qc record");
        assert_eq!(q.hub_outcome, Outcome::OutOfSpecification);
        assert_eq!(p.progress.exceptions, vec![5]);
        assert_eq!(p.progress.anomalies.len(), 1, "{:?}", p.progress.anomalies);
    }

    #[test]
    fn unknown_step_is_stored_as_an_anomaly_not_progress() {
        let recipe = recipe();
        let sha = recipe.sha256();
        let mut p = Projection::new();
        p.apply(
            &event(
                1,
                EventKind::StepCompleted {
                    step_id: "teleport".into(),
                    process_hours: 1.0,
                },
            ),
            &recipe,
            &sha,
            PATIENT,
        );
        assert!(p.progress.steps_completed.is_empty());
        assert_eq!(p.progress.exceptions, vec![1]);
    }

    #[test]
    fn cancelled_batch_stays_cancelled() {
        let recipe = recipe();
        let sha = recipe.sha256();
        let mut p = Projection::new();
        p.apply(
            &event(
                1,
                EventKind::BatchCancelled {
                    reason: "patient too ill".into(),
                    command_seq: 2,
                },
            ),
            &recipe,
            &sha,
            PATIENT,
        );
        assert_eq!(p.state, BatchState::Cancelled);
        p.apply(
            &event(
                2,
                EventKind::StepStarted {
                    step_id: "receipt".into(),
                    instrument_id: "sim".into(),
                    resumed: false,
                },
            ),
            &recipe,
            &sha,
            PATIENT,
        );
        assert_eq!(p.state, BatchState::Cancelled);
    }
}

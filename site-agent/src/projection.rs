//! The local batch projection: where a batch stands at this site, derived from the
//! batch's own log.
//!
//! Pure logic, no I/O. The store applies it inside the transaction that appends each
//! event, so the state the console shows and the executor acts on is always the one
//! the records say, and no state changes without a record behind it. The hub's
//! commands reach the projection as the events the site records when it commits them
//! (`BatchCancelled`, `ReleaseDecisionRecorded`); hand-over and infusion are the
//! matching scans at the recipe's bedside checkpoints. A batch under way awaits
//! release when the event that completes its record is appended, under the rule the
//! hub uses too ([`Recipe::record_complete`]).

use carrel_proto::event::{EventKind, ReleaseMeaning, SiteEvent};
use carrel_proto::recipe::Recipe;
use std::collections::BTreeSet;

pub use carrel_proto::batch::BatchState;

/// What the log says of a batch's record so far: the steps completed and the tests
/// recorded (by id, whether or not the recipe has them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordProgress {
    pub steps_completed: BTreeSet<String>,
    pub tests_recorded: BTreeSet<String>,
}

impl RecordProgress {
    pub fn apply(&mut self, event: &EventKind) {
        match event {
            EventKind::StepCompleted { step_id, .. } => {
                self.steps_completed.insert(step_id.clone());
            }
            EventKind::QcResult { test_id, .. } => {
                self.tests_recorded.insert(test_id.clone());
            }
            _ => {}
        }
    }

    /// The only events that change the record ([`RecordProgress::apply`]); the store
    /// reads these back when it needs the record.
    pub const EVENT_KINDS: [&'static str; 2] = ["step_completed", "qc_result"];
}

/// Where a batch stands at this site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub state: BatchState,
    /// The step started last, until it completes.
    pub current_step: Option<String>,
    /// QA's decision, once the site has recorded it.
    pub decision: Option<ReleaseMeaning>,
}

impl Projection {
    /// A batch whose order the site has just committed.
    pub fn ordered() -> Projection {
        Projection {
            state: BatchState::Ordered,
            current_step: None,
            decision: None,
        }
    }

    /// A cancel from the hub stops the batch unless QA has decided it or it is
    /// cancelled already; only then does the site record the cancellation.
    pub fn cancellable(&self) -> bool {
        !matches!(
            self.state,
            BatchState::Released
                | BatchState::Rejected
                | BatchState::Cancelled
                | BatchState::HandedOver
                | BatchState::Infused
        )
    }

    /// Whether [`Projection::apply`] needs the batch's recipe and record to apply
    /// `event` in this state: a scan that may be at a bedside checkpoint, or an event
    /// that may complete the record of a batch under way. For any other event the
    /// result does not depend on them, so the store reads them only when this says so.
    pub fn needs_recipe(&self, event: &EventKind) -> bool {
        match event {
            EventKind::CustodyScan { matched: true, .. } => {
                matches!(self.state, BatchState::Released | BatchState::HandedOver)
            }
            EventKind::BatchAccepted { .. } | EventKind::StepStarted { .. } => {
                self.state.is_active()
            }
            EventKind::StepCompleted { .. } | EventKind::QcResult { .. } => self.state.under_way(),
            _ => false,
        }
    }

    /// Applies one event of the batch's log. `recipe` is the recipe the order pinned
    /// (None when the site cannot read it or it is not the one pinned: such a record
    /// is never complete); `record` is the record up to and including `event`.
    pub fn apply(&mut self, event: &EventKind, recipe: Option<&Recipe>, record: &RecordProgress) {
        match event {
            EventKind::BatchAccepted { .. } if self.state.is_active() => {
                self.state = BatchState::Accepted;
            }
            EventKind::StepStarted { step_id, .. } => {
                if self.state.is_active() {
                    self.state = BatchState::InProcess;
                }
                self.current_step = Some(step_id.clone());
            }
            EventKind::StepCompleted { .. } => self.current_step = None,
            EventKind::BatchCancelled { .. } if self.cancellable() => {
                self.state = BatchState::Cancelled;
                self.current_step = None;
            }
            EventKind::ReleaseDecisionRecorded { meaning, .. } => {
                match meaning {
                    ReleaseMeaning::Released | ReleaseMeaning::ReleasedConditionally => {
                        self.state = BatchState::Released
                    }
                    ReleaseMeaning::Rejected => self.state = BatchState::Rejected,
                    // Completes a conditional release: the product may already be
                    // handed over or infused, and stays where it is.
                    ReleaseMeaning::ReleaseCompleted => {}
                }
                self.decision = Some(*meaning);
                self.current_step = None;
            }
            EventKind::CustodyScan {
                checkpoint_id,
                matched: true,
                ..
            } if matches!(self.state, BatchState::Released | BatchState::HandedOver) => {
                let bedside = recipe.and_then(|r| {
                    r.bedside_checkpoints
                        .iter()
                        .position(|cp| cp.id == *checkpoint_id)
                });
                match bedside {
                    Some(0) => self.state = BatchState::HandedOver,
                    Some(_) => self.state = BatchState::Infused,
                    None => {}
                }
            }
            _ => {}
        }
        if let Some(recipe) = recipe {
            self.complete(recipe, record);
        }
    }

    /// Moves a batch under way whose record is complete to awaiting release.
    pub fn complete(&mut self, recipe: &Recipe, record: &RecordProgress) {
        if self.state.under_way()
            && recipe.record_complete(&record.steps_completed, &record.tests_recorded)
        {
            self.state = BatchState::AwaitingRelease;
            self.current_step = None;
        }
    }
}

/// Where a batch stands after `events` (its log, oldest first), from its order on.
pub fn fold(recipe: Option<&Recipe>, events: &[SiteEvent]) -> Projection {
    let mut projection = Projection::ordered();
    let mut record = RecordProgress::default();
    for event in events {
        record.apply(&event.kind);
        projection.apply(&event.kind, recipe, &record);
    }
    projection
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::recipe::{Outcome, QcValue};
    use chrono::Utc;
    use uuid::Uuid;

    const RECIPE: &str = include_str!("../../hub/recipes/cd19-car-t.v1.toml");

    fn recipe() -> Recipe {
        Recipe::from_toml(RECIPE).expect("recipe")
    }

    fn event(seq: u64, kind: EventKind) -> SiteEvent {
        SiteEvent {
            seq,
            event_id: Uuid::new_v4(),
            recorded_at: Utc::now(),
            batch_id: Uuid::nil(),
            recorded_by: "agent".into(),
            prev_sha256: String::new(),
            identity: carrel_proto::event::Identity::Agent,
            kind,
        }
    }

    fn accepted(recipe: &Recipe) -> EventKind {
        EventKind::BatchAccepted {
            coi: "G123426000001X".into(),
            recipe_id: recipe.id.clone(),
            recipe_version: recipe.version,
            recipe_sha256: recipe.sha256(),
        }
    }

    fn started(step: &str) -> EventKind {
        EventKind::StepStarted {
            step_id: step.into(),
            instrument_id: "sim".into(),
            resumed: false,
        }
    }

    fn completed(step: &str) -> EventKind {
        EventKind::StepCompleted {
            step_id: step.into(),
            process_hours: 1.0,
        }
    }

    fn result(test: &str) -> EventKind {
        EventKind::QcResult {
            test_id: test.into(),
            value: QcValue::Numeric(1.0),
            unit: String::new(),
            method: String::new(),
            site_outcome: Outcome::Pass,
            retest_of: None,
        }
    }

    fn scan(checkpoint: &str) -> EventKind {
        EventKind::CustodyScan {
            checkpoint_id: checkpoint.into(),
            expected_coi: "G123426000001X".into(),
            scanned_coi: "G123426000001X".into(),
            verifiers: vec!["a".into(), "b".into()],
            matched: true,
            location: "bench".into(),
            wristband: None,
        }
    }

    fn decision(meaning: ReleaseMeaning) -> EventKind {
        EventKind::ReleaseDecisionRecorded {
            signature_id: Uuid::new_v4(),
            meaning,
            command_seq: 2,
        }
    }

    /// Every event of a batch run to the end of its record, in the executor's
    /// order: accepted, each step started and completed, then every test (the one
    /// that may follow release among them, where the recipe lists it).
    fn full_run(recipe: &Recipe) -> Vec<SiteEvent> {
        let mut kinds = vec![accepted(recipe)];
        for step in &recipe.steps {
            kinds.push(started(&step.id));
            kinds.push(completed(&step.id));
        }
        kinds.extend(recipe.all_tests().map(|t| result(&t.id)));
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| event(i as u64 + 1, kind))
            .collect()
    }

    /// The index of the event that records the last test due before release.
    fn completing(recipe: &Recipe, events: &[SiteEvent]) -> usize {
        let last_due = recipe
            .all_tests()
            .filter(|t| !t.may_follow_release)
            .last()
            .expect("a test due before release");
        events
            .iter()
            .position(|e| matches!(&e.kind, EventKind::QcResult { test_id, .. } if *test_id == last_due.id))
            .expect("recorded")
    }

    #[test]
    fn the_batch_awaits_release_with_the_event_that_completes_its_record() {
        let recipe = recipe();
        let events = full_run(&recipe);
        let at = completing(&recipe, &events);
        let before = fold(Some(&recipe), &events[..at]);
        assert_eq!(before.state, BatchState::InProcess, "one test is missing");
        let after = fold(Some(&recipe), &events[..=at]);
        assert_eq!(after.state, BatchState::AwaitingRelease);
        assert_eq!(after.current_step, None);
        assert_eq!(
            fold(Some(&recipe), &events).state,
            BatchState::AwaitingRelease,
            "later results change nothing"
        );
    }

    #[test]
    fn a_test_that_may_follow_release_is_not_waited_for() {
        let recipe = recipe();
        let follows = recipe
            .all_tests()
            .find(|t| t.may_follow_release)
            .expect("the example has one")
            .id
            .clone();
        let events: Vec<SiteEvent> = full_run(&recipe)
            .into_iter()
            .filter(
                |e| !matches!(&e.kind, EventKind::QcResult { test_id, .. } if *test_id == follows),
            )
            .collect();
        assert_eq!(
            fold(Some(&recipe), &events).state,
            BatchState::AwaitingRelease
        );
    }

    #[test]
    fn steps_set_the_state_and_the_current_step() {
        let recipe = recipe();
        let first = &recipe.steps[0].id;
        let mut events = vec![event(1, accepted(&recipe))];
        assert_eq!(fold(Some(&recipe), &events).state, BatchState::Accepted);
        events.push(event(2, started(first)));
        let p = fold(Some(&recipe), &events);
        assert_eq!(p.state, BatchState::InProcess);
        assert_eq!(p.current_step.as_deref(), Some(first.as_str()));
        events.push(event(3, completed(first)));
        let p = fold(Some(&recipe), &events);
        assert_eq!(p.state, BatchState::InProcess);
        assert_eq!(p.current_step, None);
    }

    #[test]
    fn an_unknown_step_is_not_progress() {
        let recipe = recipe();
        let last = recipe.steps.last().expect("a step").id.clone();
        let events: Vec<SiteEvent> = full_run(&recipe)
            .into_iter()
            .map(|mut e| {
                if matches!(&e.kind, EventKind::StepCompleted { step_id, .. } if *step_id == last) {
                    e.kind = completed("not-in-the-recipe");
                }
                e
            })
            .collect();
        let p = fold(Some(&recipe), &events);
        assert_eq!(p.state, BatchState::InProcess, "{last} was never completed");
    }

    #[test]
    fn the_record_is_read_back_by_the_names_of_the_events_that_change_it() {
        let kinds = [completed("s"), result("t")];
        let names: Vec<&str> = kinds.iter().map(EventKind::name).collect();
        assert_eq!(names, RecordProgress::EVENT_KINDS);
        let mut record = RecordProgress::default();
        for kind in [accepted(&recipe()), started("s"), scan("c")] {
            record.apply(&kind);
        }
        assert_eq!(
            record,
            RecordProgress::default(),
            "no other event changes it"
        );
        for kind in &kinds {
            record.apply(kind);
        }
        assert!(record.steps_completed.contains("s") && record.tests_recorded.contains("t"));
    }

    #[test]
    fn a_record_under_a_recipe_the_site_cannot_read_is_never_complete() {
        let recipe = recipe();
        let p = fold(None, &full_run(&recipe));
        assert_eq!(p.state, BatchState::InProcess);
    }

    #[test]
    fn a_cancelled_batch_stays_cancelled() {
        let recipe = recipe();
        let mut events = full_run(&recipe);
        let at = completing(&recipe, &events);
        let cancel = EventKind::BatchCancelled {
            reason: "patient too ill".into(),
            command_seq: 2,
        };
        events.insert(at, event(0, cancel));
        let p = fold(Some(&recipe), &events);
        assert_eq!(
            p.state,
            BatchState::Cancelled,
            "completing the record later"
        );
        assert!(!p.cancellable());
        // Nor does a late start or acceptance bring it back.
        events.push(event(0, accepted(&recipe)));
        events.push(event(0, started(&recipe.steps[0].id)));
        assert_eq!(fold(Some(&recipe), &events).state, BatchState::Cancelled);
    }

    #[test]
    fn a_decided_batch_is_not_cancelled_and_a_decision_is_kept() {
        let recipe = recipe();
        let mut events = full_run(&recipe);
        events.push(event(0, decision(ReleaseMeaning::Rejected)));
        let p = fold(Some(&recipe), &events);
        assert_eq!(p.state, BatchState::Rejected);
        assert_eq!(p.decision, Some(ReleaseMeaning::Rejected));
        assert!(!p.cancellable());
        assert!(Projection::ordered().cancellable());
    }

    #[test]
    fn bedside_scans_hand_over_and_close_a_released_batch_only() {
        let recipe = recipe();
        let handover = recipe.bedside_checkpoints[0].id.clone();
        let infusion = recipe.bedside_checkpoints[1].id.clone();
        let mut events = full_run(&recipe);
        events.push(event(0, scan(&handover)));
        assert_eq!(
            fold(Some(&recipe), &events).state,
            BatchState::AwaitingRelease,
            "not released yet"
        );
        events.push(event(0, decision(ReleaseMeaning::Released)));
        let released = fold(Some(&recipe), &events);
        assert_eq!(released.state, BatchState::Released);
        assert_eq!(released.decision, Some(ReleaseMeaning::Released));
        events.push(event(0, scan(&handover)));
        assert_eq!(fold(Some(&recipe), &events).state, BatchState::HandedOver);
        events.push(event(0, scan(&infusion)));
        assert_eq!(fold(Some(&recipe), &events).state, BatchState::Infused);
        // A scan at a manufacturing checkpoint is not a bedside one.
        let mut events = full_run(&recipe);
        events.push(event(0, decision(ReleaseMeaning::Released)));
        let in_steps = recipe
            .checkpoints()
            .next()
            .expect("a manufacturing checkpoint")
            .id
            .clone();
        events.push(event(0, scan(&in_steps)));
        assert_eq!(fold(Some(&recipe), &events).state, BatchState::Released);
    }

    /// The store applies events one at a time and reads the recipe and the record
    /// only where [`Projection::needs_recipe`] says; that must end where the whole
    /// fold does, after every event.
    #[test]
    fn applying_with_the_recipe_only_where_needed_is_the_whole_fold() {
        let recipe = recipe();
        let mut events = full_run(&recipe);
        events.push(event(0, decision(ReleaseMeaning::Released)));
        for checkpoint in &recipe.bedside_checkpoints {
            events.push(event(0, scan(&checkpoint.id)));
        }
        let mut cancelled = full_run(&recipe);
        cancelled.insert(5, event(0, scan(&recipe.steps[0].id)));
        cancelled.insert(
            9,
            event(
                0,
                EventKind::BatchCancelled {
                    reason: "r".into(),
                    command_seq: 2,
                },
            ),
        );
        for log in [events, cancelled] {
            let mut projection = Projection::ordered();
            let mut record = RecordProgress::default();
            for (i, event) in log.iter().enumerate() {
                record.apply(&event.kind);
                if projection.needs_recipe(&event.kind) {
                    projection.apply(&event.kind, Some(&recipe), &record);
                } else {
                    projection.apply(&event.kind, None, &RecordProgress::default());
                }
                assert_eq!(
                    projection,
                    fold(Some(&recipe), &log[..=i]),
                    "after event {i}"
                );
            }
        }
    }
}

//! Manual entries at the site: off-line QC results (and retests), and corrections.
//!
//! Records are never edited in place (ARCHITECTURE.md invariant 5). A correction is
//! a new record that points at the one it corrects, with a reason; both stay on the
//! record. An out-of-specification result is never corrected or overwritten: it can
//! only be followed by a retest, which is a new result pointing at it.

use crate::people::{self, SignedIn};
use crate::store::{self, LocalBatch, Store};
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::people::SiteAction;
use carrel_proto::recipe::{Evaluation, Outcome, QcValue, Recipe};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("no record {0} at this site")]
    NoSuchRecord(u64),
    #[error(transparent)]
    Person(#[from] people::Refused),
    #[error(transparent)]
    Store(#[from] store::Error),
}

fn invalid(text: impl Into<String>) -> Error {
    Error::Invalid(text.into())
}

/// A QC result typed in by a technician.
pub struct ManualResult<'a> {
    pub batch: &'a LocalBatch,
    pub test_id: &'a str,
    pub value: &'a str,
    pub by: &'a SignedIn,
    /// The earlier result this retests.
    pub retest_of: Option<u64>,
}

/// Records a QC result against the batch's pinned specification; returns the record
/// and its evaluation (an out-of-specification result is recorded all the same).
pub async fn record_result(
    store: &Store,
    entry: ManualResult<'_>,
) -> Result<(SiteEvent, Evaluation), Error> {
    let batch = entry.batch;
    people::authorize(entry.by, SiteAction::QcResult)?;
    if matches!(
        batch.state,
        store::BatchState::Cancelled | store::BatchState::Ordered
    ) {
        return Err(invalid(format!(
            "batch {} is {}; no results can be recorded",
            batch.batch_id,
            batch.state.as_str()
        )));
    }
    let recipe =
        Recipe::from_json(&batch.recipe_json).map_err(|e| invalid(format!("recipe: {e}")))?;
    let test = recipe.test(entry.test_id).ok_or_else(|| {
        let ids: Vec<&str> = recipe.all_tests().map(|t| t.id.as_str()).collect();
        invalid(format!(
            "test {:?} is not in recipe {} v{}; its tests are {}",
            entry.test_id,
            recipe.id,
            recipe.version,
            ids.join(", ")
        ))
    })?;
    let value = if test.spec.accepted.is_empty() {
        let number: f64 = entry.value.trim().parse().map_err(|_| {
            invalid(format!(
                "{:?} is not a number; {} is measured in {}",
                entry.value,
                test.name,
                match carrel_proto::recipe::unit_words(&test.unit) {
                    words if words.is_empty() => std::borrow::Cow::Borrowed(test.unit.as_str()),
                    words => words,
                }
            ))
        })?;
        if !number.is_finite() {
            return Err(invalid(format!("{:?} is not a finite number", entry.value)));
        }
        QcValue::Numeric(number)
    } else {
        let text = entry.value.trim();
        if text.is_empty() {
            return Err(invalid(format!("a result is required ({})", test.spec)));
        }
        QcValue::Text(text.to_owned())
    };
    check_retest(store, batch, test, entry.retest_of).await?;
    let evaluation = test.spec.evaluate(&value);
    let event = store
        .append(
            batch.batch_id,
            &entry.by.by(),
            EventKind::QcResult {
                test_id: test.id.clone(),
                value,
                unit: test.unit.clone(),
                method: test.method.clone(),
                site_outcome: evaluation.outcome,
                retest_of: entry.retest_of,
            },
        )
        .await?;
    Ok((event, evaluation))
}

/// A result of a test that already has one must name the result it retests, and
/// that must be the test's current result (the end of its chain of retests): then
/// the record always says which result counts ([`carrel_proto::qc`]).
async fn check_retest(
    store: &Store,
    batch: &LocalBatch,
    test: &carrel_proto::recipe::QcTest,
    retest_of: Option<u64>,
) -> Result<(), Error> {
    let events = store.batch_events(batch.batch_id).await?;
    let results = carrel_proto::qc::by_test(&events)
        .into_iter()
        .find(|t| t.test_id == test.id);
    let current = results.as_ref().map(|t| t.current()).unwrap_or_default();
    let describe = |seq: u64| {
        events
            .iter()
            .find(|e| e.seq == seq)
            .map(result_words)
            .unwrap_or_else(|| format!("record {seq}"))
    };
    match retest_of {
        None if current.is_empty() => Ok(()),
        None => Err(invalid(format!(
            "{} already has a result ({}). A second result must say which result it retests: choose it under \"Retest of\" (on the command line: --retest-of {})",
            test.name,
            current.iter().map(|&s| describe(s)).collect::<Vec<_>>().join("; "),
            current[current.len() - 1]
        ))),
        Some(seq) if current.contains(&seq) => Ok(()),
        Some(seq) => {
            let retested_by = results.and_then(|t| t.retested_by.get(&seq).copied());
            if let Some(by) = retested_by {
                Err(invalid(format!(
                    "record {seq} was already retested by record {by}; a retest names the latest result of {} ({})",
                    test.name,
                    current.iter().map(|&s| describe(s)).collect::<Vec<_>>().join("; ")
                )))
            } else {
                Err(invalid(format!(
                    "record {seq} is not a {} result of this batch; a retest must name the result it retests",
                    test.name
                )))
            }
        }
    }
}

/// A QC result in words, as the retest list and its refusals show it:
/// "record 364: 55 % (out of specification)".
pub fn result_words(event: &SiteEvent) -> String {
    match &event.kind {
        EventKind::QcResult {
            value,
            unit,
            site_outcome,
            ..
        } => format!(
            "record {}: {value}{}{unit} ({})",
            event.seq,
            if unit.is_empty() { "" } else { " " },
            match site_outcome {
                Outcome::Pass => "within specification",
                Outcome::OutOfSpecification => "out of specification",
            }
        ),
        _ => format!("record {}", event.seq),
    }
}

async fn record(store: &Store, seq: u64) -> Result<SiteEvent, Error> {
    store
        .events_after(seq.saturating_sub(1), 1)
        .await?
        .into_iter()
        .find(|e| e.seq == seq)
        .ok_or(Error::NoSuchRecord(seq))
}

/// Records a correction of record `seq`: a new record, with a reason.
pub async fn correct(
    store: &Store,
    seq: u64,
    field: &str,
    new_value: &str,
    reason: &str,
    by: &SignedIn,
) -> Result<SiteEvent, Error> {
    people::authorize(by, SiteAction::Correction)?;
    if reason.trim().is_empty() {
        return Err(invalid("a correction needs a reason"));
    }
    if field.trim().is_empty() {
        return Err(invalid("say which field is corrected"));
    }
    let original = record(store, seq).await?;
    match &original.kind {
        EventKind::QcResult {
            site_outcome: Outcome::OutOfSpecification,
            ..
        } => {
            return Err(invalid(format!(
                "record {seq} is an out-of-specification result, which is never corrected or overwritten; record a retest that points at it instead"
            )))
        }
        EventKind::CustodyScan { .. } => {
            return Err(invalid(format!("record {seq} is a custody scan; scan again instead of correcting it")))
        }
        EventKind::ReleaseDecisionRecorded { .. } | EventKind::BatchCancelled { .. } => {
            return Err(invalid(format!("record {seq} records a decision of the hub; it cannot be corrected at the site")))
        }
        _ => {}
    }
    Ok(store
        .append(
            original.batch_id,
            &by.by(),
            EventKind::Correction {
                corrects_seq: seq,
                reason: reason.trim().to_owned(),
                field: field.trim().to_owned(),
                new_value: new_value.to_owned(),
            },
        )
        .await?)
}

/// A process parameter read by hand during the running step (a technician's reading
/// of a gauge or a manual count), recorded like the instrument's samples.
pub struct ManualReading<'a> {
    pub batch: &'a LocalBatch,
    pub parameter: &'a str,
    pub value: &'a str,
    pub by: &'a SignedIn,
}

/// Records a manual reading for the step that is running now. Returns the record and
/// whether the value is outside the parameter's normal range.
pub async fn record_reading(
    store: &Store,
    entry: ManualReading<'_>,
) -> Result<(SiteEvent, bool), Error> {
    let batch = entry.batch;
    people::authorize(entry.by, SiteAction::ManualReading)?;
    let step_id = batch.current_step.clone().ok_or_else(|| {
        invalid(format!(
            "no step is running for batch {} now",
            batch.batch_id
        ))
    })?;
    let recipe =
        Recipe::from_json(&batch.recipe_json).map_err(|e| invalid(format!("recipe: {e}")))?;
    let step = recipe
        .step(&step_id)
        .ok_or_else(|| invalid(format!("step {step_id:?} is not in the recipe")))?;
    let parameter = step
        .parameters
        .iter()
        .find(|p| p.name == entry.parameter)
        .ok_or_else(|| {
            let names: Vec<&str> = step.parameters.iter().map(|p| p.name.as_str()).collect();
            invalid(format!(
                "step {} records {}; not {:?}",
                step.id,
                names.join(", "),
                entry.parameter
            ))
        })?;
    let value: f64 = entry
        .value
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| {
            invalid(format!(
                "{:?} is not a number ({} is in {})",
                entry.value,
                parameter.label(),
                match carrel_proto::recipe::unit_words(&parameter.unit) {
                    words if words.is_empty() =>
                        std::borrow::Cow::Borrowed(parameter.unit.as_str()),
                    words => words,
                }
            ))
        })?;
    // The reading belongs to the step's current point in process time: the last
    // sample of this step, or its start.
    let at = store
        .batch_events(batch.batch_id)
        .await?
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::ProcessSamples {
                step_id: s,
                samples,
            } if *s == step_id => samples.iter().map(|x| x.step_hours).reduce(f64::max),
            _ => None,
        })
        .unwrap_or(0.0);
    let event = store
        .append(
            batch.batch_id,
            &entry.by.by(),
            EventKind::ProcessSamples {
                step_id: step_id.clone(),
                samples: vec![carrel_proto::event::Sample {
                    step_hours: at,
                    parameter: parameter.name.clone(),
                    value,
                    unit: parameter.unit.clone(),
                }],
            },
        )
        .await?;
    Ok((event, value < parameter.low || value > parameter.high))
}

/// A deviation a person raises by hand: something that departed from the recipe or
/// the site's procedure, in their words, classified by them (QA at the hub may
/// investigate and closes it).
pub struct ManualDeviation<'a> {
    pub batch: &'a LocalBatch,
    /// The recipe step it concerns; empty: the batch as a whole.
    pub step_id: &'a str,
    /// minor, major or critical.
    pub classification: &'a str,
    pub description: &'a str,
    pub by: &'a SignedIn,
}

/// The fewest words a deviation is described in: what happened, not a tick.
pub const MIN_DEVIATION_WORDS: usize = 4;

/// Records a deviation raised by hand. Its id is `MAN-`, the number of deviations
/// raised by hand on the batch so far plus one, and a few random characters (two
/// people raising one at the same moment still get two ids).
pub async fn raise_deviation(
    store: &Store,
    deviation: ManualDeviation<'_>,
) -> Result<SiteEvent, Error> {
    people::authorize(deviation.by, SiteAction::RaiseDeviation)?;
    let batch = deviation.batch;
    if batch.state == store::BatchState::Cancelled {
        return Err(invalid(format!(
            "batch {} is cancelled; no deviation is raised on it",
            batch.batch_id
        )));
    }
    let classification = deviation.classification.trim().to_ascii_lowercase();
    if !matches!(classification.as_str(), "minor" | "major" | "critical") {
        return Err(invalid(format!(
            "classification {:?}: choose minor, major or critical",
            deviation.classification
        )));
    }
    let description = deviation.description.trim();
    if description.split_whitespace().count() < MIN_DEVIATION_WORDS {
        return Err(invalid(format!(
            "describe what happened in at least {MIN_DEVIATION_WORDS} words (what, where, what was done)"
        )));
    }
    let step_id = deviation.step_id.trim();
    if !step_id.is_empty() {
        let recipe =
            Recipe::from_json(&batch.recipe_json).map_err(|e| invalid(format!("recipe: {e}")))?;
        if !recipe.steps.iter().any(|s| s.id == step_id) {
            let steps: Vec<&str> = recipe.steps.iter().map(|s| s.id.as_str()).collect();
            return Err(invalid(format!(
                "step {step_id:?} is not a step of {} (its steps: {})",
                recipe.id,
                steps.join(", ")
            )));
        }
    }
    let raised_by_hand = store
        .batch_events(batch.batch_id)
        .await?
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::DeviationRaised { deviation_id, .. } if deviation_id.starts_with("MAN-"))
        })
        .count();
    Ok(store
        .append(
            batch.batch_id,
            &deviation.by.by(),
            EventKind::DeviationRaised {
                deviation_id: {
                    let random = uuid::Uuid::now_v7().simple().to_string();
                    format!("MAN-{}-{}", raised_by_hand + 1, &random[26..])
                },
                step_id: step_id.to_owned(),
                description: description.to_owned(),
                classification,
            },
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::event::{CommandKind, HubCommand};
    use chrono::Utc;
    use uuid::Uuid;

    const RECIPE: &str = include_str!("../../hub/recipes/cd19-car-t.v1.toml");

    async fn batch_in_expansion() -> (tempfile::TempDir, Store, LocalBatch) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("agent.db"))
            .await
            .expect("store");
        let recipe = Recipe::from_toml(RECIPE).expect("recipe");
        let batch_id = Uuid::new_v4();
        store
            .apply_command(&HubCommand {
                seq: 1,
                command_id: Uuid::new_v4(),
                issued_at: Utc::now(),
                batch_id,
                kind: CommandKind::BatchOrder {
                    order_id: Uuid::new_v4(),
                    coi: "G123426000001X".into(),
                    patient_pseudonym: "P-1".into(),
                    requested_collection_date: "2026-12-01".into(),
                    recipe_id: recipe.id.clone(),
                    recipe_version: recipe.version,
                    recipe_json: recipe.to_canonical_json(),
                    recipe_sha256: recipe.sha256(),
                },
            })
            .await
            .expect("order");
        store
            .append(
                batch_id,
                &store::By::agent(),
                EventKind::StepStarted {
                    step_id: "expansion".into(),
                    instrument_id: "sim".into(),
                    resumed: false,
                },
            )
            .await
            .expect("step");
        let batch = store.batch(batch_id).await.expect("batch");
        (dir, store, batch)
    }

    #[tokio::test]
    async fn a_manual_reading_is_recorded_for_the_running_step_and_flagged_out_of_range() {
        let (_dir, store, batch) = batch_in_expansion().await;
        let ann = SignedIn {
            username: "tech.ann".into(),
            full_name: "Ann".into(),
            role: "technician".into(),
            directory_version: 4,
        };
        let reading = |parameter: &'static str, value: &'static str| ManualReading {
            batch: &batch,
            parameter,
            value,
            by: &ann,
        };
        let (event, out_of_range) = record_reading(&store, reading("ph", "7.1"))
            .await
            .expect("recorded");
        assert!(!out_of_range);
        assert_eq!(event.recorded_by, "tech.ann");
        assert_eq!(
            event.identity,
            carrel_proto::event::Identity::Authenticated {
                directory_version: 4
            }
        );
        assert!(
            matches!(&event.kind, EventKind::ProcessSamples { step_id, samples } if step_id == "expansion" && samples[0].value == 7.1)
        );
        let (_, out_of_range) = record_reading(&store, reading("ph", "6.2"))
            .await
            .expect("recorded");
        assert!(out_of_range, "below the step's low limit of 6.9");

        let before = store.last_event_seq().await.expect("seq");
        for (parameter, value, words) in [
            ("bag_temperature", "5", "records"),
            ("ph", "acid", "not a number"),
        ] {
            let err = record_reading(&store, reading(parameter, value))
                .await
                .expect_err("refused");
            assert!(err.to_string().contains(words), "{err}");
        }
        let physician = SignedIn {
            role: "physician".into(),
            ..ann.clone()
        };
        let err = record_reading(
            &store,
            ManualReading {
                by: &physician,
                ..reading("ph", "7.0")
            },
        )
        .await
        .expect_err("a physician takes no readings");
        assert!(
            err.to_string().contains("may not record a manual reading"),
            "{err}"
        );
        assert_eq!(
            store.last_event_seq().await.expect("seq"),
            before,
            "refusals record nothing"
        );
    }
}

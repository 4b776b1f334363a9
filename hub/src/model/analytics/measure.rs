//! What each batch contributes to the charts, kept as its records arrive (at
//! ingest, in the transaction that stores them) so that no page ever re-reads a
//! batch's events.
//!
//! A batch has one stored measure per attribute:
//! - `qc/<test>`: its numeric QC result (a retest replaces the earlier value);
//! - `step/<step>/<parameter>`: a running summary of the process samples of that
//!   parameter in that step ([`Run`]), from which the charts take the mean, the
//!   minimum, the maximum and the time out of the recipe's range.
//!
//! Both backends merge a new [`Run`] into the stored one in SQL, exactly as
//! [`Run::then`] does here; the store's tests hold them to it.

use carrel_proto::event::{EventKind, Sample};
use carrel_proto::recipe::{QcValue, Recipe};

/// The prefix of a QC test's attribute.
pub const QC: &str = "qc/";
/// The prefix of a process parameter's attribute.
pub const STEP: &str = "step/";

/// A running summary of samples of one parameter in one step, in the order the
/// site sampled them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub n: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Time in step of the first sample of this run (hours).
    pub first_hours: f64,
    /// Time in step of the last sample, and whether it was out of range.
    pub last_hours: f64,
    pub last_out: bool,
    /// Hours spent out of range: each sample out of range counts until the next
    /// sample (the last one counts nothing until a later sample arrives).
    pub out_of_range_hours: f64,
}

impl Run {
    /// One sample's run, against the range `low..=high`.
    pub fn of(hours: f64, value: f64, low: f64, high: f64) -> Run {
        Run {
            n: 1,
            sum: value,
            min: value,
            max: value,
            first_hours: hours,
            last_hours: hours,
            last_out: value < low || value > high,
            out_of_range_hours: 0.0,
        }
    }

    /// This run followed by `later` (samples taken after these).
    pub fn then(self, later: Run) -> Run {
        let gap = if self.last_out {
            (later.first_hours - self.last_hours).max(0.0)
        } else {
            0.0
        };
        Run {
            n: self.n + later.n,
            sum: self.sum + later.sum,
            min: self.min.min(later.min),
            max: self.max.max(later.max),
            first_hours: self.first_hours,
            last_hours: later.last_hours,
            last_out: later.last_out,
            out_of_range_hours: self.out_of_range_hours + later.out_of_range_hours + gap,
        }
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }
}

/// One update of a batch's measure.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A QC result: the measure becomes this value.
    Set {
        attribute: String,
        unit: String,
        value: f64,
    },
    /// Process samples: the run is merged after the stored one.
    Extend {
        attribute: String,
        unit: String,
        run: Run,
    },
}

impl Update {
    pub fn attribute(&self) -> &str {
        match self {
            Update::Set { attribute, .. } | Update::Extend { attribute, .. } => attribute,
        }
    }
}

/// What one site event adds to its batch's measures under `recipe`: a numeric QC
/// result, or samples of parameters the step defines (samples of a parameter the
/// recipe does not name are stored in the record but not charted).
pub fn updates(kind: &EventKind, recipe: &Recipe) -> Vec<Update> {
    match kind {
        EventKind::QcResult {
            test_id,
            value: QcValue::Numeric(value),
            unit,
            ..
        } if value.is_finite() => vec![Update::Set {
            attribute: format!("{QC}{test_id}"),
            unit: unit.clone(),
            value: *value,
        }],
        EventKind::ProcessSamples { step_id, samples } => {
            let Some(step) = recipe.step(step_id) else {
                return Vec::new();
            };
            let mut runs: Vec<Update> = Vec::new();
            for Sample {
                step_hours,
                parameter,
                value,
                unit,
            } in samples
            {
                let Some(p) = step.parameters.iter().find(|p| &p.name == parameter) else {
                    continue;
                };
                if !value.is_finite() || !step_hours.is_finite() {
                    continue;
                }
                let one = Run::of(*step_hours, *value, p.low, p.high);
                let attribute = format!("{STEP}{step_id}/{parameter}");
                match runs.iter_mut().find(|u| u.attribute() == attribute) {
                    Some(Update::Extend { run, .. }) => *run = run.then(one),
                    _ => runs.push(Update::Extend {
                        attribute,
                        unit: unit.clone(),
                        run: one,
                    }),
                }
            }
            runs
        }
        _ => Vec::new(),
    }
}

/// Adds `update` to a message's pending updates of one batch, merging it with an
/// earlier one of the same attribute so each attribute is written once.
pub fn push(pending: &mut Vec<Update>, update: Update) {
    let existing = pending
        .iter_mut()
        .find(|u| u.attribute() == update.attribute());
    match (existing, update) {
        (Some(Update::Extend { run, .. }), Update::Extend { run: later, .. }) => {
            *run = run.then(later)
        }
        (Some(slot), update) => *slot = update,
        (None, update) => pending.push(update),
    }
}

/// A batch's stored measure of one attribute, as a chart reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub batch_id: uuid::Uuid,
    pub site_id: String,
    /// When the batch's order was placed.
    pub batch_at: chrono::DateTime<chrono::Utc>,
    pub unit: String,
    pub run: Run,
}

/// The batches QA chose as a product's baseline, from which control limits are
/// computed; the latest chosen is in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub product_id: String,
    pub chosen_at: chrono::DateTime<chrono::Utc>,
    pub chosen_by: String,
    pub reason: String,
    pub batches: Vec<uuid::Uuid>,
}

/// What a chart plots of a stored measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Statistic {
    /// A QC result's value.
    Value,
    Mean,
    Min,
    Max,
    /// Hours out of the recipe's range.
    TimeOutOfRange,
}

impl Statistic {
    /// The statistics charted for a process parameter.
    pub const OF_PARAMETER: [Statistic; 4] = [
        Statistic::Mean,
        Statistic::Min,
        Statistic::Max,
        Statistic::TimeOutOfRange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::Value => "value",
            Statistic::Mean => "mean",
            Statistic::Min => "min",
            Statistic::Max => "max",
            Statistic::TimeOutOfRange => "time_out_of_range",
        }
    }

    pub fn parse(text: &str) -> Option<Statistic> {
        [
            Statistic::Value,
            Statistic::Mean,
            Statistic::Min,
            Statistic::Max,
            Statistic::TimeOutOfRange,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// The statistic of a stored measure.
    pub fn of(self, run: &Run) -> f64 {
        match self {
            Statistic::Value | Statistic::Mean => run.mean(),
            Statistic::Min => run.min,
            Statistic::Max => run.max,
            Statistic::TimeOutOfRange => run.out_of_range_hours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[(f64, f64)]) -> Vec<Run> {
        values
            .iter()
            .map(|&(h, v)| Run::of(h, v, 36.0, 38.0))
            .collect()
    }

    #[test]
    fn a_run_keeps_mean_extremes_and_time_out_of_range_across_messages() {
        // 37 (in), 39 (out) for 1 h, 39.5 (out) for 2 h, 37 (in), 35 (out, last).
        let all = samples(&[
            (0.0, 37.0),
            (1.0, 39.0),
            (2.0, 39.5),
            (4.0, 37.0),
            (5.0, 35.0),
        ]);
        let whole = all[1..].iter().fold(all[0], |a, b| a.then(*b));
        assert_eq!(whole.n, 5);
        assert!((whole.mean() - 37.5).abs() < 1e-12);
        assert_eq!((whole.min, whole.max), (35.0, 39.5));
        assert!((whole.out_of_range_hours - 3.0).abs() < 1e-12);
        assert!(whole.last_out);
        // The same samples split over two messages merge to the same run: the
        // out-of-range sample at the end of the first counts up to the second's first.
        let first = all[1..3].iter().fold(all[0], |a, b| a.then(*b));
        let second = all[4..].iter().fold(all[3], |a, b| a.then(*b));
        assert_eq!(first.then(second), whole);
    }

    #[test]
    fn updates_chart_numeric_results_and_named_parameters_only() {
        let recipe = Recipe::from_toml(include_str!("../../../recipes/cd19-car-t.v1.toml"))
            .expect("shipped");
        let step = recipe
            .steps
            .iter()
            .find(|s| !s.parameters.is_empty())
            .expect("a step with parameters");
        let p = &step.parameters[0];
        let kind = EventKind::ProcessSamples {
            step_id: step.id.clone(),
            samples: vec![
                Sample {
                    step_hours: 0.0,
                    parameter: p.name.clone(),
                    value: p.high + 1.0,
                    unit: p.unit.clone(),
                },
                Sample {
                    step_hours: 0.5,
                    parameter: "not-in-recipe".into(),
                    value: 1.0,
                    unit: String::new(),
                },
                Sample {
                    step_hours: 1.5,
                    parameter: p.name.clone(),
                    value: p.low,
                    unit: p.unit.clone(),
                },
            ],
        };
        let got = updates(&kind, &recipe);
        assert_eq!(got.len(), 1, "{got:?}");
        let Update::Extend { attribute, run, .. } = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(attribute, &format!("step/{}/{}", step.id, p.name));
        assert_eq!(run.n, 2);
        assert!((run.out_of_range_hours - 1.5).abs() < 1e-12);
        let text = EventKind::QcResult {
            test_id: "sterility".into(),
            value: QcValue::Text("no growth".into()),
            unit: String::new(),
            method: String::new(),
            site_outcome: carrel_proto::recipe::Outcome::Pass,
            retest_of: None,
        };
        assert!(updates(&text, &recipe).is_empty());
    }
}

//! What each batch contributes to the charts, kept as its records arrive (from
//! ingest: PostgreSQL writes it in the transaction that stores them, SQLite's
//! writer up to a second later, merged per batch) so that no page ever re-reads a
//! batch's events.
//!
//! A batch has one stored measure per attribute:
//! - `qc/<test>`: its numeric QC result. A retest of the charted result replaces
//!   it; any other second result of the test (one that retests nothing, or an
//!   earlier result), or a retest that is not a number, leaves the test without a
//!   value that clearly counts: the measure is kept as *ambiguous* and not charted,
//!   as the batch record flags it for QA;
//! - `step/<step>/<parameter>`: a running summary of the process samples of that
//!   parameter in that step ([`Run`]), from which the charts take the mean, the
//!   minimum, the maximum and the time out of the recipe's range.
//!
//! Both backends merge a new [`Run`] into the stored one in SQL, exactly as
//! [`Run::then`] does here, and apply a result as [`QcState::then`] does; the
//! store's tests hold them to it.
//!
//! Only what the recipe names is charted, in the recipe's unit: a QC test or a
//! parameter the recipe does not have, a value in another unit, or a value beyond
//! [`MAX_MAGNITUDE`] (an instrument's sentinel, not a reading) stays in the record
//! and is left off the charts.

use carrel_proto::event::{EventKind, Sample};
use carrel_proto::recipe::{QcValue, Recipe};

use super::golden::{self, Point};

/// The prefix of a QC test's attribute.
pub const QC: &str = "qc/";
/// The prefix of a process parameter's attribute.
pub const STEP: &str = "step/";

/// The largest magnitude charted: beyond it a value is an instrument's sentinel
/// (and sums of such values would overflow).
pub const MAX_MAGNITUDE: f64 = carrel_proto::golden::MAX_MAGNITUDE;

fn chartable(value: f64) -> bool {
    value.is_finite() && value.abs() <= MAX_MAGNITUDE
}

/// A QC test's stored measure: the result that counts (its value, `None` when it
/// is not a number in the test's unit) and its site record, or *ambiguous*.
///
/// The batch record's rule is that a test's result counts when it is the only
/// current one (not retested by a later one). A retest replaces exactly one
/// result, so once a second current result appears (a result that retests nothing,
/// or not the one that counted) there are two or more for good: ambiguity is
/// final. A correction of the result that counts makes it ambiguous too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QcState {
    pub value: Option<f64>,
    pub seq: u64,
    pub ambiguous: bool,
}

impl QcState {
    /// The state after a result (`value` None: not a number in the test's unit),
    /// which is site record `seq` and retests `retest_of`. `None` before: no
    /// result yet.
    pub fn then(
        before: Option<QcState>,
        value: Option<f64>,
        seq: u64,
        retest_of: Option<u64>,
    ) -> QcState {
        match before {
            Some(b) if b.ambiguous => b,
            Some(b) if retest_of != Some(b.seq) => QcState {
                ambiguous: true,
                ..b
            },
            _ => QcState {
                value,
                seq,
                ambiguous: false,
            },
        }
    }

    /// Whether the chart shows it.
    pub fn charted(&self) -> Option<f64> {
        self.value.filter(|_| !self.ambiguous)
    }
}

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
    /// A QC result (`value` None: not a number), applied as [`QcState::then`].
    Result {
        attribute: String,
        unit: String,
        value: Option<f64>,
        seq: u64,
        retest_of: Option<u64>,
    },
    /// Process samples: the run is merged after the stored one.
    Extend {
        attribute: String,
        unit: String,
        run: Run,
    },
    /// A correction of site record `seq`: a QC result it is leaves its test
    /// ambiguous.
    Corrected { seq: u64 },
    /// Process samples of one parameter in one bin of time in step: the batch's
    /// trajectory, for the golden batch ([`golden`]); added to the stored point.
    Binned {
        attribute: String,
        /// The width of the step's bins ([`golden::bin_hours`]).
        bin_hours: f64,
        point: Point,
    },
}

impl Update {
    pub fn attribute(&self) -> &str {
        match self {
            Update::Result { attribute, .. }
            | Update::Extend { attribute, .. }
            | Update::Binned { attribute, .. } => attribute,
            Update::Corrected { .. } => "",
        }
    }
}

/// What site record `seq` adds to its batch's measures under `recipe`: a result
/// of a QC test the recipe names (of the test's numeric kind, in its unit), or
/// samples of parameters the step defines, in their unit.
pub fn updates(seq: u64, kind: &EventKind, recipe: &Recipe) -> Vec<Update> {
    match kind {
        EventKind::QcResult {
            test_id,
            value,
            unit,
            retest_of,
            ..
        } => {
            let Some(test) = recipe.all_tests().find(|t| &t.id == test_id) else {
                return Vec::new();
            };
            if !test.spec.accepted.is_empty() {
                return Vec::new();
            }
            // A result in another unit counts all the same; it is not charted.
            let same_unit = test.unit.is_empty() || unit == &test.unit;
            let value = match value {
                QcValue::Numeric(v) if chartable(*v) && same_unit => Some(*v),
                _ => None,
            };
            vec![Update::Result {
                attribute: format!("{QC}{test_id}"),
                unit: unit.clone(),
                value,
                seq,
                retest_of: *retest_of,
            }]
        }
        EventKind::ProcessSamples { .. } => {
            let mut runs = Pending::default();
            runs.add(seq, kind, recipe);
            runs.into_updates()
        }
        EventKind::Correction { corrects_seq, .. } => {
            vec![Update::Corrected { seq: *corrects_seq }]
        }
        _ => Vec::new(),
    }
}

/// A message's pending updates of one batch, merged as they are added: runs of
/// samples of one attribute (and samples in one bin) are merged so that each is
/// written once; results and corrections are kept in order.
///
/// Ingest adds every sample of every event of a message here (a site catching up
/// sends a thousand events at a time, five samples each), so [`Pending::add`]
/// finds a sample's run and bin without making its attribute's name or an update
/// for it: only the first sample of an attribute in a message does.
#[derive(Debug, Default)]
pub struct Pending {
    updates: Vec<Update>,
    /// Each attribute's run and bins in `updates` (a batch has a few at a time).
    slots: Vec<Slots>,
}

#[derive(Debug)]
struct Slots {
    attribute: String,
    run: Option<usize>,
    /// (bin, position): at most [`golden::MAX_BINS`] of them.
    bins: Vec<(u32, usize)>,
}

/// Whether `attribute` is `step/<step_id>/<parameter>`.
fn names(attribute: &str, step_id: &str, parameter: &str) -> bool {
    attribute
        .strip_prefix(STEP)
        .and_then(|rest| rest.strip_prefix(step_id))
        .and_then(|rest| rest.strip_prefix('/'))
        == Some(parameter)
}

impl Pending {
    /// Adds what site record `seq` contributes to its batch's measures under
    /// `recipe`: exactly what pushing each of its [`updates`] gives.
    pub fn add(&mut self, seq: u64, kind: &EventKind, recipe: &Recipe) {
        let EventKind::ProcessSamples { step_id, samples } = kind else {
            for update in updates(seq, kind, recipe) {
                self.push(update);
            }
            return;
        };
        let Some(step) = recipe.step(step_id) else {
            return;
        };
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
            if !chartable(*value)
                || !chartable(*step_hours)
                || (!p.unit.is_empty() && unit != &p.unit)
            {
                continue;
            }
            let slot = self.slot(
                |a| names(a, step_id, parameter),
                || format!("{STEP}{step_id}/{parameter}"),
            );
            if let Some(bin) = golden::bin_of(step, *step_hours) {
                let later = Point {
                    bin,
                    n: 1,
                    sum: *value,
                };
                self.bin(slot, golden::bin_hours(step), later);
            }
            self.extend(slot, unit, Run::of(*step_hours, *value, p.low, p.high));
        }
    }

    /// Adds `update`, merged into what is pending of its attribute.
    pub fn push(&mut self, update: Update) {
        match update {
            Update::Binned {
                attribute,
                bin_hours,
                point,
            } => {
                let slot = self.slot(|a| a == attribute, || attribute.clone());
                self.bin(slot, bin_hours, point);
            }
            Update::Extend {
                attribute,
                unit,
                run,
            } => {
                let slot = self.slot(|a| a == attribute, || attribute.clone());
                self.extend(slot, &unit, run);
            }
            Update::Result { .. } | Update::Corrected { .. } => self.updates.push(update),
        }
    }

    /// The slot of the attribute `is` names (made by `name` when new).
    fn slot(&mut self, is: impl Fn(&str) -> bool, name: impl FnOnce() -> String) -> usize {
        match self.slots.iter().position(|s| is(&s.attribute)) {
            Some(slot) => slot,
            None => {
                self.slots.push(Slots {
                    attribute: name(),
                    run: None,
                    bins: Vec::new(),
                });
                self.slots.len() - 1
            }
        }
    }

    fn bin(&mut self, slot: usize, bin_hours: f64, later: Point) {
        let slots = &mut self.slots[slot];
        match slots.bins.iter().find(|(bin, _)| *bin == later.bin) {
            Some(&(_, at)) => {
                if let Update::Binned { point, .. } = &mut self.updates[at] {
                    point.n += later.n;
                    point.sum += later.sum;
                }
            }
            None => {
                slots.bins.push((later.bin, self.updates.len()));
                self.updates.push(Update::Binned {
                    attribute: slots.attribute.clone(),
                    bin_hours,
                    point: later,
                });
            }
        }
    }

    fn extend(&mut self, slot: usize, unit: &str, later: Run) {
        let slots = &mut self.slots[slot];
        match slots.run {
            Some(at) => {
                if let Update::Extend { run, .. } = &mut self.updates[at] {
                    *run = run.then(later);
                }
            }
            None => {
                slots.run = Some(self.updates.len());
                self.updates.push(Update::Extend {
                    attribute: slots.attribute.clone(),
                    unit: unit.to_owned(),
                    run: later,
                });
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// The merged updates, in the order each was first added.
    pub fn into_updates(self) -> Vec<Update> {
        self.updates
    }

    /// The merged updates, in the order each was first added.
    pub fn updates(&self) -> &[Update] {
        &self.updates
    }

    /// Adds `later`'s updates (of records after these), merged as [`Pending::push`]
    /// merges them: the same as adding their records here one by one.
    pub fn append(&mut self, later: Pending) {
        for update in later.updates {
            self.push(update);
        }
    }
}

/// A batch's measure of one attribute as stored, in whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub attribute: String,
    pub unit: String,
    pub run: Run,
    /// For a QC result: its site record, what it retested, and whether another
    /// result makes it unclear which counts (not charted).
    pub seq: u64,
    pub retest_of: Option<u64>,
    pub ambiguous: bool,
}

impl Row {
    /// A QC row's state.
    pub fn qc_state(&self) -> QcState {
        QcState {
            value: (self.run.n > 0).then_some(self.run.sum),
            seq: self.seq,
            ambiguous: self.ambiguous,
        }
    }

    /// A QC row holding `value` (`None`: n = 0, nothing to chart).
    fn with_value(mut self, value: Option<f64>) -> Row {
        self.run = match value {
            Some(v) => Run::of(0.0, v, v, v),
            None => Run {
                n: 0,
                ..Run::of(0.0, 0.0, 0.0, 0.0)
            },
        };
        self
    }
}

/// A batch's measures from its whole record (`(seq, kind)` in log order), exactly
/// as applying each record's [`updates`] at ingest gives them: for a batch whose
/// records were stored before measures were kept.
pub fn rows_of<'a>(
    events: impl IntoIterator<Item = (u64, &'a EventKind)>,
    recipe: &Recipe,
) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for (seq, kind) in events {
        for update in updates(seq, kind, recipe) {
            let at = rows.iter().position(|r| r.attribute == update.attribute());
            match update {
                Update::Extend {
                    attribute,
                    unit,
                    run,
                } => match at {
                    Some(i) => rows[i].run = rows[i].run.then(run),
                    None => rows.push(Row {
                        attribute,
                        unit,
                        run,
                        seq: 0,
                        retest_of: None,
                        ambiguous: false,
                    }),
                },
                Update::Result {
                    attribute,
                    unit,
                    value,
                    seq,
                    retest_of,
                } => {
                    let before = at.map(|i| rows[i].qc_state());
                    let after = QcState::then(before, value, seq, retest_of);
                    let replaced = before.is_none_or(|b| after != b);
                    let row = Row {
                        attribute,
                        unit,
                        run: Run::of(0.0, after.value.unwrap_or(0.0), 0.0, 0.0),
                        seq: after.seq,
                        retest_of,
                        ambiguous: after.ambiguous,
                    }
                    .with_value(after.value);
                    match at {
                        Some(i) if after.ambiguous => rows[i].ambiguous = true,
                        Some(i) if replaced => rows[i] = row,
                        Some(_) => {}
                        None => rows.push(row),
                    }
                }
                Update::Binned { .. } => {}
                Update::Corrected { seq } => {
                    for r in rows
                        .iter_mut()
                        .filter(|r| r.attribute.starts_with(QC) && r.seq == seq)
                    {
                        r.ambiguous = true;
                    }
                }
            }
        }
    }
    rows
}

/// A batch's trajectory points from its whole record, exactly as applying each
/// record's [`updates`] at ingest gives them: `(attribute, bin hours, point)`.
pub fn points_of<'a>(
    events: impl IntoIterator<Item = (u64, &'a EventKind)>,
    recipe: &Recipe,
) -> Vec<(String, f64, Point)> {
    let mut pending = Pending::default();
    for (seq, kind) in events {
        for update in updates(seq, kind, recipe) {
            if matches!(update, Update::Binned { .. }) {
                pending.push(update);
            }
        }
    }
    pending
        .into_updates()
        .into_iter()
        .filter_map(|u| match u {
            Update::Binned {
                attribute,
                bin_hours,
                point,
            } => Some((attribute, bin_hours, point)),
            _ => None,
        })
        .collect()
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
        let got = updates(7, &kind, &recipe);
        // One run, and the two samples in their bins of time in step.
        let binned: Vec<_> = got
            .iter()
            .filter(|u| matches!(u, Update::Binned { .. }))
            .collect();
        assert_eq!(binned.len(), 2, "{got:?}");
        let runs: Vec<_> = got
            .iter()
            .filter(|u| matches!(u, Update::Extend { .. }))
            .collect();
        assert_eq!(runs.len(), 1, "{got:?}");
        let Update::Extend { attribute, run, .. } = runs[0] else {
            panic!("{got:?}")
        };
        assert_eq!(attribute, &format!("step/{}/{}", step.id, p.name));
        assert_eq!(run.n, 2);
        assert!((run.out_of_range_hours - 1.5).abs() < 1e-12);
        let result = |test_id: &str, value: QcValue, unit: &str| EventKind::QcResult {
            test_id: test_id.into(),
            value,
            unit: unit.into(),
            method: String::new(),
            site_outcome: carrel_proto::recipe::Outcome::Pass,
            retest_of: None,
        };
        // A test with accepted texts and a test the recipe does not have are not
        // charted; a sentinel value, or one in another unit, counts and has no value.
        for kind in [
            result("sterility", QcValue::Text("no growth".into()), ""),
            result("no-such-test", QcValue::Numeric(1.0), "%"),
        ] {
            assert!(updates(8, &kind, &recipe).is_empty(), "{kind:?}");
        }
        for (value, unit) in [(1e300, "%"), (0.91, "fraction")] {
            assert_eq!(
                updates(
                    9,
                    &result("viability", QcValue::Numeric(value), unit),
                    &recipe
                ),
                vec![Update::Result {
                    attribute: "qc/viability".into(),
                    unit: unit.into(),
                    value: None,
                    seq: 9,
                    retest_of: None
                }]
            );
        }
    }

    /// Sixty records of one step's samples (some out of range, some in another
    /// unit), with QC results, retests and corrections among them.
    fn mixed_records(recipe: &Recipe) -> Vec<EventKind> {
        let step = recipe
            .steps
            .iter()
            .find(|s| s.parameters.len() >= 2)
            .expect("a step with parameters");
        let mut kinds = Vec::new();
        for i in 0..60u32 {
            let hours = f64::from(i % 23) * 3.5;
            let samples = step
                .parameters
                .iter()
                .enumerate()
                .map(|(k, p)| Sample {
                    step_hours: hours + k as f64 * 0.1,
                    parameter: p.name.clone(),
                    // Some in range, some out, one in another unit now and then.
                    value: p.low + (p.high - p.low) * f64::from(i % 7) / 4.0,
                    unit: if i % 11 == 3 && k == 0 {
                        "other".into()
                    } else {
                        p.unit.clone()
                    },
                })
                .collect();
            kinds.push(EventKind::ProcessSamples {
                step_id: step.id.clone(),
                samples,
            });
            if i % 9 == 4 {
                kinds.push(EventKind::QcResult {
                    test_id: "viability".into(),
                    value: QcValue::Numeric(80.0 + f64::from(i)),
                    unit: "%".into(),
                    method: String::new(),
                    site_outcome: carrel_proto::recipe::Outcome::Pass,
                    retest_of: (i > 4).then_some(u64::from(i)),
                });
            }
            if i % 13 == 6 {
                kinds.push(EventKind::Correction {
                    corrects_seq: u64::from(i),
                    reason: "typo".into(),
                    field: "value".into(),
                    new_value: "1".into(),
                });
            }
        }
        kinds
    }

    /// Ingest's fast path (`Pending::add`) merges a message's samples exactly as
    /// pushing each record's `updates` does (the definition).
    #[test]
    fn adding_records_merges_as_pushing_their_updates_does() {
        let recipe = Recipe::from_toml(include_str!("../../../recipes/cd19-car-t.v1.toml"))
            .expect("shipped");
        let step = recipe
            .steps
            .iter()
            .find(|s| s.parameters.len() >= 2)
            .expect("a step with parameters");
        let kinds = mixed_records(&recipe);
        let (mut added, mut pushed) = (Pending::default(), Pending::default());
        for (seq, kind) in kinds.iter().enumerate() {
            added.add(seq as u64 + 1, kind, &recipe);
            for update in updates(seq as u64 + 1, kind, &recipe) {
                pushed.push(update);
            }
        }
        let (added, pushed) = (added.into_updates(), pushed.into_updates());
        assert!(added.len() > step.parameters.len() * 3, "{added:?}");
        assert_eq!(added, pushed);
    }

    /// The store's writer keeps the updates of many messages in memory and writes
    /// them later as one: appending a message's pending updates to those of the
    /// messages before it gives what adding all their records to one does.
    #[test]
    fn appending_later_messages_merges_as_adding_their_records_does() {
        let recipe = Recipe::from_toml(include_str!("../../../recipes/cd19-car-t.v1.toml"))
            .expect("shipped");
        let kinds = mixed_records(&recipe);
        let mut whole = Pending::default();
        for (seq, kind) in kinds.iter().enumerate() {
            whole.add(seq as u64 + 1, kind, &recipe);
        }
        let whole = whole.into_updates();
        // Messages of 1, 2, 3, ... records.
        let mut kept = Pending::default();
        let (mut at, mut size) = (0, 1);
        while at < kinds.len() {
            let mut message = Pending::default();
            for (i, kind) in kinds.iter().enumerate().skip(at).take(size) {
                message.add(i as u64 + 1, kind, &recipe);
            }
            kept.append(message);
            at += size;
            size += 1;
        }
        assert!(whole.len() > 10, "{whole:?}");
        let kept = kept.into_updates();
        assert_eq!(kept.len(), whole.len());
        for (k, w) in kept.iter().zip(&whole) {
            match (k, w) {
                // Sums of floats added in another grouping differ in the last bits.
                (Update::Extend { run: a, .. }, Update::Extend { run: b, .. }) => {
                    assert_eq!(k.attribute(), w.attribute());
                    assert_eq!(
                        (a.n, a.min, a.max, a.last_out),
                        (b.n, b.min, b.max, b.last_out)
                    );
                    assert!(
                        (a.sum - b.sum).abs() < 1e-9
                            && (a.out_of_range_hours - b.out_of_range_hours).abs() < 1e-9
                    );
                }
                (Update::Binned { point: a, .. }, Update::Binned { point: b, .. }) => {
                    assert_eq!((k.attribute(), a.bin, a.n), (w.attribute(), b.bin, b.n));
                    assert!((a.sum - b.sum).abs() < 1e-9);
                }
                _ => assert_eq!(k, w),
            }
        }
    }

    #[test]
    fn a_retest_of_the_charted_result_replaces_it_any_other_leaves_it_ambiguous_for_good() {
        let a = QcState::then(None, Some(80.0), 5, None);
        assert_eq!(a.charted(), Some(80.0));
        let b = QcState::then(Some(a), Some(90.0), 6, Some(5));
        assert_eq!((b.charted(), b.seq), (Some(90.0), 6));
        // Another retest of 5 (not the charted 6): which counts is unclear.
        let c = QcState::then(Some(b), Some(85.0), 7, Some(5));
        assert!(c.ambiguous && c.charted().is_none());
        // ... for good: a later retest of the result that counted does not clear it
        // (two results are current: the stray one and the retest).
        let stray = QcState::then(Some(a), Some(88.0), 6, None);
        assert!(QcState::then(Some(stray), Some(90.0), 7, Some(5)).ambiguous);
        // A first result that is not a number (or in another unit) counts, and is
        // not charted; a second one naming nothing leaves the test ambiguous.
        let text = QcState::then(None, None, 5, None);
        assert_eq!((text.charted(), text.ambiguous), (None, false));
        assert!(QcState::then(Some(text), Some(88.0), 6, None).ambiguous);
        // A numeric retest of it is charted.
        assert_eq!(
            QcState::then(Some(text), Some(88.0), 6, Some(5)).charted(),
            Some(88.0)
        );
    }
}

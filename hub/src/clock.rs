//! The vein-to-vein clock: for each order, when each milestone was planned, when it
//! happened, and when the ones still ahead are now expected; whether the order is late
//! and why; and the network's figures (median vein-to-vein time, share on time).
//!
//! Planned times come from the booking (or, for a site without a declared capacity,
//! from the requested collection date with the recipe's step durations) plus the
//! configured times after manufacturing ([`ScheduleSettings`]). Actual times come from
//! the batch's records. An expected time keeps the planned gap to the milestone
//! before it, never comes before its plan or its booking's re-planned time, and a
//! milestone that is due but has not happened is expected no earlier than now.

use crate::audit::Action;
use crate::model::{BatchRecord, BatchState};
use crate::schedule::{self, Booking};
use carrel_proto::event::{EventKind, ReleaseMeaning};
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[schedule]` section of the hub's configuration: the times the plan allows
/// after manufacturing, when a slip counts as a delay, and how often bookings are
/// re-planned from the sites' records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSettings {
    /// How often the hub re-plans bookings and looks for delays.
    pub replan_interval_secs: u32,
    /// From the end of manufacturing until every release test is recorded.
    pub qc_hours: f64,
    /// From QC complete to QA's release.
    pub release_hours: f64,
    /// From release to hand-over for infusion.
    pub handover_hours: f64,
    /// From hand-over to infusion.
    pub infusion_hours: f64,
    /// An order whose expected release is later than planned by more than this is delayed.
    pub delay_tolerance_hours: f64,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            replan_interval_secs: 60,
            qc_hours: 72.0,
            release_hours: 24.0,
            handover_hours: 24.0,
            infusion_hours: 4.0,
            delay_tolerance_hours: 4.0,
        }
    }
}

impl ScheduleSettings {
    pub fn tolerance(&self) -> Duration {
        schedule::step_duration(self.delay_tolerance_hours)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.replan_interval_secs == 0 {
            return Err("schedule.replan_interval_secs must be at least 1".into());
        }
        for (name, hours) in [
            ("qc_hours", self.qc_hours),
            ("release_hours", self.release_hours),
            ("handover_hours", self.handover_hours),
            ("infusion_hours", self.infusion_hours),
            ("delay_tolerance_hours", self.delay_tolerance_hours),
        ] {
            if !(0.0..=24.0 * 365.0).contains(&hours) {
                return Err(format!(
                    "schedule.{name} is {hours}; it must be 0 to 8760 hours"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Milestone {
    Ordered,
    Collection,
    Receipt,
    ManufacturingStart,
    ManufacturingEnd,
    QcComplete,
    Release,
    HandOver,
    Infusion,
}

impl Milestone {
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::Ordered => "ordered",
            Milestone::Collection => "collection",
            Milestone::Receipt => "receipt",
            Milestone::ManufacturingStart => "manufacturing_start",
            Milestone::ManufacturingEnd => "manufacturing_end",
            Milestone::QcComplete => "qc_complete",
            Milestone::Release => "release",
            Milestone::HandOver => "hand_over",
            Milestone::Infusion => "infusion",
        }
    }
}

/// One milestone of an order.
#[derive(Debug, Clone, PartialEq)]
pub struct MilestoneTime {
    pub milestone: Milestone,
    pub planned: DateTime<Utc>,
    /// When it happened, by the records.
    pub actual: Option<DateTime<Utc>>,
    /// When it happened, or is now expected to.
    pub expected: DateTime<Utc>,
}

/// An order that is behind its plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Delay {
    /// How much later than planned the release is (expected or actual).
    pub by: Duration,
    /// The first milestone that slipped by more than the tolerance.
    pub since: Milestone,
    /// Reasons recorded for it: the step that ran over, deviations, reschedules.
    pub reasons: Vec<String>,
    /// What the hub announced the last time the release slipped (`order.delayed`):
    /// names the batch in the way when a booking was pushed.
    pub announced: Option<String>,
}

/// An order's vein-to-vein clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Clock {
    pub milestones: Vec<MilestoneTime>,
    pub planned_release: DateTime<Utc>,
    /// The release as it happened, or as expected now.
    pub expected_release: DateTime<Utc>,
    pub delay: Option<Delay>,
    /// Set once the batch is released: whether it was within the tolerance of plan.
    pub released_on_time: Option<bool>,
    /// From collection to infusion, once infused.
    pub vein_to_vein: Option<Duration>,
    /// Cancelled or rejected: the clock stopped and nothing more is expected.
    pub stopped: Option<BatchState>,
    /// When it stopped: QA's rejection signature, or the cancellation.
    pub stopped_at: Option<DateTime<Utc>>,
}

impl Clock {
    pub fn milestone(&self, which: Milestone) -> &MilestoneTime {
        &self.milestones[which as usize]
    }
}

/// A step's id, planned start and end, and re-planned start and end.
type StepTimes = (
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// A milestone, its planned time, its re-planned time (if the booking has one) and
/// its actual time (once it happened).
type MilestoneRow = (
    Milestone,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Computes the clock of one order from its record, its booking (if any) and now.
pub fn clock(
    record: &BatchRecord,
    booking: Option<&Booking>,
    settings: &ScheduleSettings,
    now: DateTime<Utc>,
) -> Clock {
    let order = &record.order;
    let recipe = &record.recipe.recipe;
    let hours = schedule::step_duration;

    // The steps as planned (and as re-planned), from the booking or the recipe.
    let planned_steps: Vec<StepTimes> = match booking {
        Some(b) => b
            .steps
            .iter()
            .map(|s| {
                (
                    s.step_id.clone(),
                    s.planned_start,
                    s.planned_end,
                    s.expected_start,
                    s.expected_end,
                )
            })
            .collect(),
        None => {
            let start = NaiveDate::parse_from_str(&order.requested_collection_date, "%Y-%m-%d")
                .map(|d| {
                    d.and_time(NaiveTime::from_hms_opt(8, 0, 0).unwrap_or_default())
                        .and_utc()
                })
                .unwrap_or(order.created_at);
            schedule::lay_out(recipe, start)
                .into_iter()
                .map(|s| (s.step_id, s.start, s.end, s.start, s.end))
                .collect()
        }
    };
    let step_index = |operation: &str, fallback: usize| {
        recipe
            .steps
            .iter()
            .position(|s| s.operation == operation)
            .unwrap_or(fallback)
    };
    let last = planned_steps.len().saturating_sub(1);
    let collection = step_index("collection", 0).min(last);
    let receipt = step_index("receipt", collection + 1).min(last);
    let first_made = (receipt + 1).min(last);

    // What the records say happened: first start and last completion of each step.
    let mut started: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut completed: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut tested: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut scanned: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut reasons: Vec<String> = Vec::new();
    for stored in &record.events {
        // A site clock running ahead must not make things look early or late.
        let at = stored
            .event
            .recorded_at
            .min(stored.received_at)
            .trunc_subsecs(6);
        match &stored.event.kind {
            EventKind::StepStarted { step_id, .. } => {
                started.entry(step_id).or_insert(at);
            }
            EventKind::StepCompleted { step_id, .. } => {
                completed.insert(step_id, at);
            }
            EventKind::QcResult { test_id, .. } => {
                tested.entry(test_id).or_insert(at);
            }
            EventKind::CustodyScan {
                checkpoint_id,
                matched: true,
                ..
            } => {
                scanned.entry(checkpoint_id).or_insert(at);
            }
            EventKind::DeviationRaised {
                deviation_id,
                step_id,
                description,
                ..
            } => reasons.push(format!(
                "deviation {deviation_id} at {step_id}: {description}"
            )),
            _ => {}
        }
    }
    // Reschedules as recorded, and the latest delay announced (earlier ones name
    // times that no longer hold).
    let mut announced = None;
    for entry in &record.audit {
        match entry.action {
            Action::OrderRescheduled if !entry.reason.is_empty() => {
                reasons.push(format!("rescheduled: {}", entry.reason))
            }
            Action::OrderDelayed => announced = Some(entry.reason.clone()),
            _ => {}
        }
    }
    let qc_complete = recipe
        .release_tests
        .iter()
        .map(|t| tested.get(t.id.as_str()).copied())
        .collect::<Option<Vec<_>>>()
        .and_then(|times| times.into_iter().max())
        .filter(|_| !recipe.release_tests.is_empty());
    let release = record
        .signatures
        .iter()
        .find(|s| s.meaning.is_release())
        .map(|s| s.signed_at);
    let checkpoint_time = |index: Option<usize>| {
        index
            .and_then(|i| recipe.bedside_checkpoints.get(i))
            .and_then(|c| scanned.get(c.id.as_str()).copied())
    };
    let handover = checkpoint_time(Some(0));
    let infusion = checkpoint_time(recipe.bedside_checkpoints.len().checked_sub(1));

    let step = |i: usize| planned_steps.get(i);
    let step_id = |i: usize| step(i).map(|s| s.0.as_str()).unwrap_or_default();
    let planned_end_of_made = step(last).map(|s| s.2).unwrap_or(order.created_at);
    let planned_qc = planned_end_of_made + hours(settings.qc_hours);
    let planned_release = planned_qc + hours(settings.release_hours);
    let planned_handover = planned_release + hours(settings.handover_hours);
    let planned_infusion = planned_handover + hours(settings.infusion_hours);
    // (milestone, planned, re-planned, actual)
    let rows: [MilestoneRow; 9] = [
        (
            Milestone::Ordered,
            order.created_at,
            None,
            Some(order.created_at),
        ),
        // Collection is the apheresis as booked: planned at the slot's start, and
        // happened when the site started it (the vein-to-vein clock starts there).
        (
            Milestone::Collection,
            step(collection).map(|s| s.1).unwrap_or(order.created_at),
            step(collection).map(|s| s.3),
            started.get(step_id(collection)).copied(),
        ),
        (
            Milestone::Receipt,
            step(receipt).map(|s| s.2).unwrap_or(order.created_at),
            step(receipt).map(|s| s.4),
            completed.get(step_id(receipt)).copied(),
        ),
        (
            Milestone::ManufacturingStart,
            step(first_made).map(|s| s.1).unwrap_or(order.created_at),
            step(first_made).map(|s| s.3),
            started.get(step_id(first_made)).copied(),
        ),
        (
            Milestone::ManufacturingEnd,
            planned_end_of_made,
            step(last).map(|s| s.4),
            completed.get(step_id(last)).copied(),
        ),
        (Milestone::QcComplete, planned_qc, None, qc_complete),
        (Milestone::Release, planned_release, None, release),
        (Milestone::HandOver, planned_handover, None, handover),
        (Milestone::Infusion, planned_infusion, None, infusion),
    ];

    let stopped =
        matches!(order.state, BatchState::Cancelled | BatchState::Rejected).then_some(order.state);
    let mut milestones: Vec<MilestoneTime> = Vec::with_capacity(rows.len());
    for (milestone, planned, replanned, actual) in rows {
        let expected = match (actual, milestones.last()) {
            (Some(actual), _) => actual,
            (None, previous) => {
                let mut expected = planned.max(replanned.unwrap_or(planned));
                if let Some(previous) = previous {
                    expected = expected.max(previous.expected + (planned - previous.planned));
                }
                if stopped.is_none() {
                    expected = expected.max(now);
                }
                expected
            }
        };
        milestones.push(MilestoneTime {
            milestone,
            planned,
            actual,
            expected,
        });
    }
    let expected_release = milestones[Milestone::Release as usize].expected;
    let tolerance = settings.tolerance();
    let delay = (stopped.is_none() && expected_release - planned_release > tolerance).then(|| {
        let since = milestones
            .iter()
            .find(|m| m.expected - m.planned > tolerance)
            .map(|m| m.milestone)
            .unwrap_or(Milestone::Release);
        let mut reasons = reasons.clone();
        if let Some(slow) = slowest_step(recipe, &started, &completed, now) {
            reasons.insert(0, slow);
        }
        reasons.dedup();
        Delay {
            by: expected_release - planned_release,
            since,
            reasons,
            announced: announced.clone(),
        }
    });
    let collected = milestones[Milestone::Collection as usize].actual;
    let stopped_at = match stopped {
        Some(BatchState::Rejected) => record
            .signatures
            .iter()
            .find(|s| s.meaning == ReleaseMeaning::Rejected)
            .map(|s| s.signed_at),
        Some(_) => record
            .audit
            .iter()
            .find(|e| e.action == Action::OrderCancelled)
            .map(|e| e.at),
        None => None,
    };
    Clock {
        stopped_at,
        planned_release,
        expected_release,
        released_on_time: release.map(|at| at - planned_release <= tolerance),
        vein_to_vein: infusion.zip(collected).map(|(i, c)| i - c),
        delay,
        stopped,
        milestones,
    }
}

/// The step that ran over its planned duration by the most, in words.
fn slowest_step(
    recipe: &carrel_proto::recipe::Recipe,
    started: &BTreeMap<&str, DateTime<Utc>>,
    completed: &BTreeMap<&str, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    recipe
        .steps
        .iter()
        .filter_map(|s| {
            let start = *started.get(s.id.as_str())?;
            let end = completed.get(s.id.as_str()).copied();
            let took = end.unwrap_or(now) - start;
            let over = took - schedule::step_duration(s.duration_hours);
            (over > Duration::minutes(30)).then(|| {
                let verb = if end.is_some() { "took" } else { "has run" };
                (
                    over,
                    format!(
                        "step {} {verb} {:.1} h against {:.1} h planned",
                        s.id,
                        took.num_minutes() as f64 / 60.0,
                        s.duration_hours
                    ),
                )
            })
        })
        .max_by_key(|(over, _)| *over)
        .map(|(_, text)| text)
}

/// Vein-to-vein figures over many orders.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub orders: usize,
    /// Not cancelled, rejected or infused.
    pub open: usize,
    /// Open and delayed.
    pub delayed: usize,
    pub released: usize,
    pub released_on_time: usize,
    /// Median from collection to infusion, of infused orders.
    pub median_vein_to_vein: Option<Duration>,
    /// Median from order to release, of released orders.
    pub median_order_to_release: Option<Duration>,
}

impl Summary {
    /// Share of released orders released within tolerance of plan.
    pub fn on_time_share(&self) -> Option<f64> {
        (self.released > 0).then(|| self.released_on_time as f64 / self.released as f64)
    }
}

pub fn summarize<'a>(clocks: impl IntoIterator<Item = &'a Clock>) -> Summary {
    let mut summary = Summary::default();
    let mut vein_to_vein = Vec::new();
    let mut to_release = Vec::new();
    for clock in clocks {
        summary.orders += 1;
        let infused = clock.milestone(Milestone::Infusion).actual.is_some();
        if clock.stopped.is_none() && !infused {
            summary.open += 1;
            summary.delayed += usize::from(clock.delay.is_some());
        }
        if let Some(on_time) = clock.released_on_time {
            summary.released += 1;
            summary.released_on_time += usize::from(on_time);
            let ordered = clock.milestone(Milestone::Ordered).expected;
            to_release.push(clock.expected_release - ordered);
        }
        vein_to_vein.extend(clock.vein_to_vein);
    }
    summary.median_vein_to_vein = median(vein_to_vein);
    summary.median_order_to_release = median(to_release);
    summary
}

fn median(mut values: Vec<Duration>) -> Option<Duration> {
    values.sort();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

/// A duration for people: "2 d 4 h", "5 h 30 min", "12 min".
pub fn span_text(d: Duration) -> String {
    let minutes = d.num_minutes();
    let sign = if minutes < 0 { "-" } else { "" };
    let minutes = minutes.abs();
    let (days, hours, mins) = (minutes / 1440, minutes % 1440 / 60, minutes % 60);
    match (days, hours, mins) {
        (0, 0, m) => format!("{sign}{m} min"),
        (0, h, 0) => format!("{sign}{h} h"),
        (0, h, m) => format!("{sign}{h} h {m} min"),
        (d, h, _) => format!("{sign}{d} d {h} h"),
    }
}

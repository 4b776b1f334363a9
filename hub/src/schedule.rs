//! Capacity and booking: when a patient's cells can be collected at a site, so that
//! the instruments for the whole manufacturing window are free when they are needed.
//!
//! A site declares its [`Capacity`]: how many instruments of each type it has, its
//! working days and hours, its closures, and how many apheresis (collection) slots it
//! has per working day. A recipe says which instrument type each step needs and for
//! how long. A [`Plan`] lays a recipe's steps end to end from a collection slot; it is
//! feasible when the slot is free and, for every step, fewer instruments of its type
//! are reserved over the step's interval than the site has. Booking stores the plan
//! as [`Reservation`]s, in the same transaction as the order, so two bookings of the
//! last slot cannot both succeed (the store serialises bookings per site).
//!
//! When a batch runs long, [`replan`] moves what comes after it: the batch's own
//! later steps, and the steps of later bookings that need the instrument it still
//! holds. Nothing is moved earlier than booked. Collections stay where they were
//! booked (the patient's appointment); the manufacturing after them shifts.
//!
//! Everything here is pure: the store loads what it needs and stores what this
//! decides. Instants are UTC. A site's calendar is declared in its own time zone
//! ([`Capacity::time_zone`], an IANA name; `UTC` when not given): working days,
//! opening hours, closures and collection dates are the site's local ones, and
//! [`Capacity::instant`] turns a local date and time into the instant. So on the
//! day the clocks go forward a site open 08:00 to 18:00 is open for 10 real hours
//! starting an hour earlier in UTC, and its day (for utilisation) has 23 hours.

use carrel_proto::recipe::Recipe;
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use uuid::Uuid;

/// How far ahead proposals and bookings may look.
pub const HORIZON_DAYS: i64 = 180;

/// What a site can do: its instruments, its calendar and its collection slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// The site's time zone, an IANA name such as `Europe/London`; the calendar below
    /// is in it. `UTC` when not given (capacities declared before zones were).
    #[serde(default = "utc_name")]
    pub time_zone: String,
    /// Working days, such as `["mon", "tue", "wed", "thu", "fri"]`.
    pub working_days: Vec<Weekday>,
    /// Opening time on a working day (the site's local time), `"08:00"`.
    pub opens: NaiveTime,
    /// Closing time on a working day (the site's local time), `"18:00"`.
    pub closes: NaiveTime,
    /// Apheresis (collection) appointments per working day, spread evenly over the
    /// opening hours.
    pub collection_slots_per_day: u32,
    /// Instrument type (as recipes name it) to how many the site has.
    pub instruments: BTreeMap<String, u32>,
    /// Days the site is closed: no collection, no manufacturing.
    #[serde(default)]
    pub closures: Vec<Closure>,
}

fn utc_name() -> String {
    "UTC".into()
}

/// The zone named `name` (an IANA name), or why it is not one.
pub fn zone_named(name: &str) -> Result<Tz, String> {
    name.trim().parse::<Tz>().map_err(|_| {
        format!(
            "time zone {name:?} is not an IANA time zone name (such as Europe/London, America/New_York or UTC)"
        )
    })
}

/// The instant of the local wall time `local` in `zone`. A time the clocks skip
/// (the hour lost when they go forward) is read with the offset before the change,
/// so it lands as far after the change as it was into the gap (02:30 on the spring
/// day in New York is 03:30 EDT); a time that happens twice (the hour repeated when
/// they go back) is the first of the two.
pub fn instant_in(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) => at.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            let before = zone
                .offset_from_utc_datetime(&(local - Duration::days(1)))
                .fix();
            (local - Duration::seconds(i64::from(before.local_minus_utc()))).and_utc()
        }
    }
}

/// `at` as people at a site read it: local date and time and the zone's
/// abbreviation, `2026-03-29 09:00 BST`.
pub fn local_text(zone: Tz, at: DateTime<Utc>) -> String {
    at.with_timezone(&zone)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// Days a site is closed, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Closure {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub reason: String,
}

impl Capacity {
    /// Reads a capacity document (TOML, as the CLI and the console take it) and checks it.
    pub fn from_toml(text: &str) -> Result<Capacity, String> {
        let capacity: Capacity = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        capacity.check()?;
        Ok(capacity)
    }

    /// The document as TOML, for editing.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks everything that makes a capacity unusable, and says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        zone_named(&self.time_zone)?;
        if self.working_days.is_empty() {
            return Err("no working day is named: name at least one".into());
        }
        let days: BTreeSet<u32> = self
            .working_days
            .iter()
            .map(|d| d.num_days_from_monday())
            .collect();
        if days.len() != self.working_days.len() {
            return Err("a working day is named twice".into());
        }
        if self.opens >= self.closes {
            return Err(format!(
                "opens ({}) must be before closes ({})",
                self.opens.format("%H:%M"),
                self.closes.format("%H:%M")
            ));
        }
        if !(1..=48).contains(&self.collection_slots_per_day) {
            return Err(format!(
                "collection slots per day is {}; it must be 1 to 48",
                self.collection_slots_per_day
            ));
        }
        if self.instruments.is_empty() {
            return Err(
                "no instrument is declared: declare each instrument type and its count".into(),
            );
        }
        for (kind, count) in &self.instruments {
            let name_ok = !kind.is_empty()
                && kind.len() <= 64
                && kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !name_ok {
                return Err(format!(
                    "instrument type {kind:?} must be 1 to 64 letters, digits, '-' or '_'"
                ));
            }
            if !(1..=1000).contains(count) {
                return Err(format!(
                    "instrument type {kind:?} has count {count}; it must be 1 to 1000 (remove a type the site lacks)"
                ));
            }
        }
        let mut closures: Vec<&Closure> = self.closures.iter().collect();
        closures.sort_by_key(|c| c.from);
        for c in &closures {
            if c.from > c.to {
                return Err(format!(
                    "closure {} to {} ends before it starts",
                    c.from, c.to
                ));
            }
            if c.reason.trim().is_empty() {
                return Err(format!("closure {} to {} needs a reason", c.from, c.to));
            }
        }
        for pair in closures.windows(2) {
            if pair[1].from <= pair[0].to {
                return Err(format!(
                    "closures overlap: {} to {} ({}) and {} to {} ({}); merge them into one",
                    pair[0].from,
                    pair[0].to,
                    pair[0].reason,
                    pair[1].from,
                    pair[1].to,
                    pair[1].reason
                ));
            }
        }
        Ok(())
    }

    /// The site's time zone ([`Capacity::time_zone`]; UTC if it does not name one,
    /// which [`Capacity::check`] refuses).
    pub fn zone(&self) -> Tz {
        zone_named(&self.time_zone).unwrap_or(Tz::UTC)
    }

    /// The instant of local time `time` on the site's local `date` ([`instant_in`]).
    pub fn instant(&self, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        instant_in(self.zone(), date.and_time(time))
    }

    /// When the site's local day `date` starts.
    pub fn day_start(&self, date: NaiveDate) -> DateTime<Utc> {
        self.instant(date, NaiveTime::MIN)
    }

    /// The site's local date at `at`.
    pub fn local_date(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.zone()).date_naive()
    }

    /// `at` in the site's local time with the zone's abbreviation ([`local_text`]).
    pub fn local_text(&self, at: DateTime<Utc>) -> String {
        local_text(self.zone(), at)
    }

    /// The closure covering `date`, if any.
    pub fn closure_on(&self, date: NaiveDate) -> Option<&Closure> {
        self.closures
            .iter()
            .find(|c| c.from <= date && date <= c.to)
    }

    /// Whether `date` is a working day the site is open.
    pub fn is_open_on(&self, date: NaiveDate) -> bool {
        self.working_days.contains(&date.weekday()) && self.closure_on(date).is_none()
    }

    /// When collection slot `slot` (0-based) starts on the local `date`, for a
    /// collection that takes `length`: the slots are spread evenly from opening time to
    /// the last start that still ends by closing time, in real elapsed time (on the
    /// day the clocks change, the opening hours are an hour shorter or longer).
    /// `None` when such a collection does not fit the opening hours at all.
    pub fn slot_start(
        &self,
        date: NaiveDate,
        slot: u32,
        length: Duration,
    ) -> Option<DateTime<Utc>> {
        let opens = self.instant(date, self.opens);
        let room = (self.instant(date, self.closes) - opens - length).num_seconds();
        if room < 0 {
            return None;
        }
        let gaps = i64::from(self.collection_slots_per_day.saturating_sub(1)).max(1);
        let offset = room * i64::from(slot) / gaps;
        Some(opens + Duration::seconds(offset))
    }

    /// The closure that `[start, end)` runs into, if any.
    fn closure_during(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Option<&Closure> {
        self.closures.iter().find(|c| {
            let closed_from = self.day_start(c.from);
            let closed_to = self.day_start(c.to + Duration::days(1));
            start < closed_to && closed_from < end
        })
    }

    /// A capacity that can make the shipped recipe: for `carrel-hub dev` and tests.
    pub fn example() -> Capacity {
        Capacity {
            time_zone: utc_name(),
            working_days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            opens: NaiveTime::from_hms_opt(8, 0, 0).expect("valid time"),
            closes: NaiveTime::from_hms_opt(18, 0, 0).expect("valid time"),
            collection_slots_per_day: 2,
            instruments: [
                ("apheresis".to_owned(), 1),
                ("bench".to_owned(), 2),
                ("closed-processing-system".to_owned(), 4),
            ]
            .into_iter()
            .collect(),
            closures: Vec::new(),
        }
    }
}

/// One step of a plan: the instrument type it holds and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub step_id: String,
    pub instrument_type: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A recipe laid out from a collection slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub site_id: String,
    pub collection_date: NaiveDate,
    pub slot: u32,
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    pub fn collection_start(&self) -> DateTime<Utc> {
        self.steps.first().map(|s| s.start).unwrap_or_default()
    }

    /// When the last manufacturing step ends.
    pub fn end(&self) -> DateTime<Utc> {
        self.steps.last().map(|s| s.end).unwrap_or_default()
    }
}

/// A step's planned duration.
pub fn step_duration(hours: f64) -> Duration {
    Duration::milliseconds((hours * 3_600_000.0).round() as i64)
}

/// The recipe's steps end to end from `start`.
pub fn lay_out(recipe: &Recipe, start: DateTime<Utc>) -> Vec<PlannedStep> {
    let mut at = start;
    recipe
        .steps
        .iter()
        .map(|step| {
            let end = at + step_duration(step.duration_hours);
            let planned = PlannedStep {
                step_id: step.id.clone(),
                instrument_type: step.instrument_type.clone(),
                start: at,
                end,
            };
            at = end;
            planned
        })
        .collect()
}

/// Instrument time held by a booked order's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: Uuid,
    pub instrument_type: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What a site has booked already: instrument time and taken collection slots.
#[derive(Debug, Clone, Default)]
pub struct Booked {
    pub reservations: Vec<Reservation>,
    pub slots: BTreeMap<NaiveDate, BTreeSet<u32>>,
}

impl Booked {
    /// The most reservations of `instrument_type` at any moment of `[start, end)`.
    fn peak(&self, instrument_type: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> u32 {
        let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
        for r in &self.reservations {
            if r.instrument_type == instrument_type && r.start < end && start < r.end {
                edges.push((r.start.max(start), 1));
                edges.push((r.end.min(end), -1));
            }
        }
        // Ends before starts at the same instant: back-to-back use is not overlap.
        edges.sort();
        let (mut now, mut most) = (0i32, 0i32);
        for (_, delta) in edges {
            now += delta;
            most = most.max(now);
        }
        most as u32
    }
}

/// Why a collection date cannot be booked.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    InThePast {
        date: NaiveDate,
    },
    TooFarAhead {
        date: NaiveDate,
    },
    NotAWorkingDay {
        date: NaiveDate,
    },
    Closed {
        date: NaiveDate,
        reason: String,
    },
    MissingInstrument {
        step_id: String,
        instrument_type: String,
    },
    SlotsTaken {
        date: NaiveDate,
    },
    /// The recipe's collection does not fit the opening hours.
    CollectionTooLong {
        hours: f64,
    },
    InstrumentBusy {
        step_id: String,
        instrument_type: String,
        from: DateTime<Utc>,
    },
    WindowClosed {
        step_id: String,
        closure: Closure,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InThePast { date } => write!(f, "{date} has no collection slot left in the future"),
            Refusal::TooFarAhead { date } => {
                write!(f, "{date} is more than {HORIZON_DAYS} days ahead")
            }
            Refusal::NotAWorkingDay { date } => {
                write!(f, "{date} is a {} and not a working day of the site", date.weekday())
            }
            Refusal::Closed { date, reason } => write!(f, "the site is closed on {date} ({reason})"),
            Refusal::MissingInstrument { step_id, instrument_type } => write!(
                f,
                "the site has no instrument of type {instrument_type:?}, which step {step_id:?} needs"
            ),
            Refusal::SlotsTaken { date } => write!(f, "every collection slot on {date} is taken"),
            Refusal::InstrumentBusy { step_id, instrument_type, from } => write!(
                f,
                "every {instrument_type} is booked when step {step_id:?} would start ({})",
                from.format("%Y-%m-%d %H:%M UTC")
            ),
            Refusal::CollectionTooLong { hours } => write!(
                f,
                "a collection takes {hours} h, longer than the site's opening hours"
            ),
            Refusal::WindowClosed { step_id, closure } => write!(
                f,
                "step {step_id:?} would run into the closure {} to {} ({})",
                closure.from, closure.to, closure.reason
            ),
        }
    }
}

/// Steps of `recipe` that need an instrument type the site lacks.
pub fn missing_instrument(capacity: &Capacity, recipe: &Recipe) -> Option<Refusal> {
    recipe
        .steps
        .iter()
        .find(|s| !capacity.instruments.contains_key(&s.instrument_type))
        .map(|s| Refusal::MissingInstrument {
            step_id: s.id.clone(),
            instrument_type: s.instrument_type.clone(),
        })
}

/// The earliest feasible plan for collecting on `date` at `site_id`: a free slot that
/// starts after `now`, and every step's instrument type free over the step.
pub fn plan_for(
    site_id: &str,
    capacity: &Capacity,
    recipe: &Recipe,
    booked: &Booked,
    date: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Plan, Refusal> {
    if let Some(missing) = missing_instrument(capacity, recipe) {
        return Err(missing);
    }
    let today = capacity.local_date(now);
    if date < today {
        return Err(Refusal::InThePast { date });
    }
    if date > today + Duration::days(HORIZON_DAYS) {
        return Err(Refusal::TooFarAhead { date });
    }
    if let Some(closure) = capacity.closure_on(date) {
        return Err(Refusal::Closed {
            date,
            reason: closure.reason.clone(),
        });
    }
    if !capacity.working_days.contains(&date.weekday()) {
        return Err(Refusal::NotAWorkingDay { date });
    }
    let taken = booked.slots.get(&date);
    let mut refusal = None;
    let mut any_future_slot = false;
    let collection = recipe
        .steps
        .first()
        .map(|s| step_duration(s.duration_hours))
        .unwrap_or_default();
    for slot in 0..capacity.collection_slots_per_day {
        let Some(start) = capacity.slot_start(date, slot, collection) else {
            return Err(Refusal::CollectionTooLong {
                hours: collection.num_minutes() as f64 / 60.0,
            });
        };
        if start <= now {
            continue;
        }
        any_future_slot = true;
        if taken.is_some_and(|t| t.contains(&slot)) {
            continue;
        }
        let steps = lay_out(recipe, start);
        match check_steps(capacity, booked, &steps) {
            Ok(()) => {
                return Ok(Plan {
                    site_id: site_id.to_owned(),
                    collection_date: date,
                    slot,
                    steps,
                })
            }
            Err(why) => refusal = refusal.or(Some(why)),
        }
    }
    Err(refusal.unwrap_or(if any_future_slot {
        Refusal::SlotsTaken { date }
    } else {
        Refusal::InThePast { date }
    }))
}

fn check_steps(capacity: &Capacity, booked: &Booked, steps: &[PlannedStep]) -> Result<(), Refusal> {
    for step in steps {
        if let Some(closure) = capacity.closure_during(step.start, step.end) {
            return Err(Refusal::WindowClosed {
                step_id: step.step_id.clone(),
                closure: closure.clone(),
            });
        }
        let units = capacity
            .instruments
            .get(&step.instrument_type)
            .copied()
            .unwrap_or(0);
        if booked.peak(&step.instrument_type, step.start, step.end) >= units {
            return Err(Refusal::InstrumentBusy {
                step_id: step.step_id.clone(),
                instrument_type: step.instrument_type.clone(),
                from: step.start,
            });
        }
    }
    Ok(())
}

/// Up to `count` feasible plans at one site, earliest first, from `from` on.
pub fn propose(
    site_id: &str,
    capacity: &Capacity,
    recipe: &Recipe,
    booked: &Booked,
    from: NaiveDate,
    now: DateTime<Utc>,
    count: usize,
) -> Vec<Plan> {
    if missing_instrument(capacity, recipe).is_some() {
        return Vec::new();
    }
    let today = capacity.local_date(now);
    let first = from.max(today);
    let last = today + Duration::days(HORIZON_DAYS);
    first
        .iter_days()
        .take_while(|d| *d <= last)
        .filter_map(|date| plan_for(site_id, capacity, recipe, booked, date, now).ok())
        .take(count)
        .collect()
}

/// Booked and available hours of one instrument type (or of collection slots) in one week.
#[derive(Debug, Clone, PartialEq)]
pub struct Utilisation {
    pub week_start: NaiveDate,
    /// An instrument type, or `collection slots`.
    pub resource: String,
    pub units: u32,
    /// Hours the units are available in the week (closures excluded); for collection
    /// slots, the number of slots.
    pub available: f64,
    /// Hours reserved in the week; for collection slots, the slots booked.
    pub booked: f64,
}

impl Utilisation {
    pub fn share(&self) -> f64 {
        if self.available > 0.0 {
            self.booked / self.available
        } else {
            0.0
        }
    }
}

/// Utilisation per instrument type and of collection slots, week by week from the
/// Monday of `from`'s week.
pub fn utilisation(
    capacity: &Capacity,
    booked: &Booked,
    from: NaiveDate,
    weeks: u32,
) -> Vec<Utilisation> {
    let monday = from - Duration::days(i64::from(from.weekday().num_days_from_monday()));
    let mut rows = Vec::new();
    for week in 0..weeks {
        let week_start = monday + Duration::weeks(i64::from(week));
        let days: Vec<NaiveDate> = week_start.iter_days().take(7).collect();
        // Hours of the days the site is not closed: a local day is 23 or 25 hours
        // long when the clocks change.
        let open_hours: f64 = days
            .iter()
            .filter(|d| capacity.closure_on(**d).is_none())
            .map(|d| {
                (capacity.day_start(*d + Duration::days(1)) - capacity.day_start(*d)).num_seconds()
                    as f64
                    / 3600.0
            })
            .sum();
        let start = capacity.day_start(week_start);
        let end = capacity.day_start(week_start + Duration::weeks(1));
        for (kind, units) in &capacity.instruments {
            let booked_hours: f64 = booked
                .reservations
                .iter()
                .filter(|r| &r.instrument_type == kind && r.start < end && start < r.end)
                .map(|r| (r.end.min(end) - r.start.max(start)).num_seconds() as f64 / 3600.0)
                .sum();
            rows.push(Utilisation {
                week_start,
                resource: kind.clone(),
                units: *units,
                available: f64::from(*units) * open_hours,
                booked: booked_hours,
            });
        }
        let working = days.iter().filter(|d| capacity.is_open_on(**d)).count() as u32;
        let slots_booked: usize = days
            .iter()
            .filter_map(|d| booked.slots.get(d))
            .map(BTreeSet::len)
            .sum();
        rows.push(Utilisation {
            week_start,
            resource: "collection slots".into(),
            units: capacity.collection_slots_per_day,
            available: f64::from(working * capacity.collection_slots_per_day),
            booked: slots_booked as f64,
        });
    }
    rows
}

/// A booked step as re-planning sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BookedStep {
    pub step_id: String,
    pub instrument_type: String,
    pub planned_start: DateTime<Utc>,
    pub planned_end: DateTime<Utc>,
    pub expected_start: DateTime<Utc>,
    pub expected_end: DateTime<Utc>,
    /// Recorded by the site.
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A booking whose steps may move.
#[derive(Debug, Clone, PartialEq)]
pub struct Booking {
    pub order_id: Uuid,
    pub batch_id: Uuid,
    pub coi: String,
    pub site_id: String,
    pub collection_date: NaiveDate,
    pub slot: u32,
    pub steps: Vec<BookedStep>,
}

impl Booking {
    pub fn expected_end(&self) -> DateTime<Utc> {
        self.steps
            .last()
            .map(|s| s.expected_end)
            .unwrap_or_default()
    }
}

/// New expected times of one booking's steps, and why they moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    pub order_id: Uuid,
    /// (step id, expected start, expected end), every step of the booking.
    pub steps: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
    pub cause: String,
}

/// Re-plans a site's open bookings from what the site recorded so far. Bookings are
/// placed in the order of their collection; each step keeps its booked place unless
/// the step before it ends later, or the instruments of its type are all held then,
/// in which case it moves to the earliest time they are free. A step the site has
/// started holds its instrument until it completes (at least until `now`).
/// Returns the bookings whose expected times changed.
pub fn replan(capacity: &Capacity, bookings: &[Booking], now: DateTime<Utc>) -> Vec<Moved> {
    let mut order: Vec<&Booking> = bookings.iter().collect();
    order.sort_by_key(|b| (b.steps.first().map(|s| s.planned_start), b.order_id));
    // What is placed so far: reservations, and whose they are.
    let mut placed = Booked::default();
    let mut owner: Vec<&Booking> = Vec::new();
    let mut moved = Vec::new();
    for booking in order {
        let mut steps = Vec::with_capacity(booking.steps.len());
        let mut previous_end: Option<DateTime<Utc>> = None;
        let mut cause: Option<String> = None;
        for step in &booking.steps {
            let duration = step.planned_end - step.planned_start;
            let (start, end) = match (step.started_at, step.completed_at) {
                (Some(started), Some(completed)) => (started, completed),
                (Some(started), None) => {
                    let end = (started + duration).max(now);
                    if end > started + duration && cause.is_none() {
                        cause = Some(format!(
                            "step {} of batch {} (COI {}) is running past its planned {} h",
                            step.step_id,
                            booking.batch_id,
                            booking.coi,
                            duration.num_minutes() as f64 / 60.0
                        ));
                    }
                    (started, end)
                }
                (None, _) => {
                    let mut earliest = step.planned_start;
                    if let Some(previous) = previous_end {
                        earliest = earliest.max(previous);
                    }
                    // A step not started cannot start in the past.
                    earliest = earliest.max(now);
                    let start =
                        earliest_free(capacity, &placed, &step.instrument_type, earliest, duration);
                    if start > earliest && cause.is_none() {
                        let closed = capacity.closure_during(earliest, earliest + duration);
                        cause = Some(if let Some(c) = closed {
                            format!(
                                "step {} waits for the site's closure {} to {} ({}) to end",
                                step.step_id, c.from, c.to, c.reason
                            )
                        } else {
                            blocker(&placed, &owner, &step.instrument_type, earliest, duration)
                                .map(|b| {
                                    format!(
                                        "every {} is held by batch {} (COI {}), which runs late",
                                        step.instrument_type, b.batch_id, b.coi
                                    )
                                })
                                .unwrap_or_else(|| {
                                    format!("every {} is held", step.instrument_type)
                                })
                        });
                    }
                    (start, start + duration)
                }
            };
            previous_end = Some(end);
            placed.reservations.push(Reservation {
                order_id: booking.order_id,
                instrument_type: step.instrument_type.clone(),
                start,
                end,
            });
            owner.push(booking);
            steps.push((step.step_id.clone(), start, end));
        }
        let changed = steps
            .iter()
            .zip(&booking.steps)
            .any(|((_, start, end), step)| {
                *start != step.expected_start || *end != step.expected_end
            });
        if changed {
            moved.push(Moved {
                order_id: booking.order_id,
                steps,
                cause: cause.unwrap_or_else(|| "re-planned from the site's records".into()),
            });
        }
    }
    moved
}

/// What in the site's bookings a new capacity could not keep: collections on days
/// it closes or in slots it no longer has, steps still ahead that need an instrument
/// type it drops or run into a closure, and more reservations of a type at once than
/// it has. Empty when the bookings fit.
pub fn conflicts(capacity: &Capacity, bookings: &[Booking], now: DateTime<Utc>) -> Vec<String> {
    let mut found = Vec::new();
    let mut ahead = Booked::default();
    for b in bookings {
        let who = format!("order {} (COI {})", b.order_id, b.coi);
        let collecting = b.steps.first().is_some_and(|s| s.expected_start > now);
        if collecting {
            if !capacity.is_open_on(b.collection_date) {
                found.push(format!(
                    "{who} is booked for collection on {}, when the site would be closed",
                    b.collection_date
                ));
            } else if b.slot >= capacity.collection_slots_per_day {
                found.push(format!(
                    "{who} holds collection slot {} on {}, more slots than the {} a day declared",
                    b.slot + 1,
                    b.collection_date,
                    capacity.collection_slots_per_day
                ));
            }
        }
        for step in b.steps.iter().filter(|s| s.expected_end > now) {
            if !capacity.instruments.contains_key(&step.instrument_type) {
                found.push(format!(
                    "{who} needs a {} for step {}, a type the capacity leaves out",
                    step.instrument_type, step.step_id
                ));
            } else if let Some(c) =
                capacity.closure_during(step.expected_start.max(now), step.expected_end)
            {
                found.push(format!(
                    "{who} runs step {} into the closure {} to {} ({})",
                    step.step_id, c.from, c.to, c.reason
                ));
            }
            ahead.reservations.push(Reservation {
                order_id: b.order_id,
                instrument_type: step.instrument_type.clone(),
                start: step.expected_start.max(now),
                end: step.expected_end,
            });
        }
    }
    for (kind, units) in &capacity.instruments {
        let far = now + Duration::days(HORIZON_DAYS * 2);
        let most = ahead.peak(kind, now, far);
        if most > *units {
            found.push(format!(
                "{most} bookings hold a {kind} at the same time, and the capacity has {units}"
            ));
        }
    }
    found
}

/// The earliest time from `earliest` at which fewer than `units` reservations of
/// `kind` overlap `[t, t + duration)`.
fn earliest_free(
    capacity: &Capacity,
    placed: &Booked,
    kind: &str,
    earliest: DateTime<Utc>,
    duration: Duration,
) -> DateTime<Utc> {
    let units = capacity.instruments.get(kind).copied().unwrap_or(0);
    // A step can start when an instrument frees up or a closure ends.
    let mut candidates: Vec<DateTime<Utc>> = placed
        .reservations
        .iter()
        .filter(|r| r.instrument_type == kind && r.end > earliest)
        .map(|r| r.end)
        .chain(
            capacity
                .closures
                .iter()
                .map(|c| capacity.day_start(c.to + Duration::days(1)))
                .filter(|t| *t > earliest),
        )
        .collect();
    candidates.push(earliest);
    candidates.sort();
    candidates.dedup();
    candidates
        .into_iter()
        .find(|t| {
            placed.peak(kind, *t, *t + duration) < units
                && capacity.closure_during(*t, *t + duration).is_none()
        })
        .unwrap_or(earliest)
}

/// The booking holding `kind` at `earliest` that ends last: who is in the way.
fn blocker<'a>(
    placed: &Booked,
    owner: &[&'a Booking],
    kind: &str,
    earliest: DateTime<Utc>,
    duration: Duration,
) -> Option<&'a Booking> {
    placed
        .reservations
        .iter()
        .zip(owner)
        .filter(|(r, _)| {
            r.instrument_type == kind && r.start < earliest + duration && earliest < r.end
        })
        .max_by_key(|(r, _)| r.end)
        .map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe::from_toml(include_str!("../recipes/cd19-car-t.v1.toml")).expect("shipped recipe")
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("date")
    }

    fn book(booked: &mut Booked, plan: &Plan, order_id: Uuid) {
        booked
            .slots
            .entry(plan.collection_date)
            .or_default()
            .insert(plan.slot);
        for s in &plan.steps {
            booked.reservations.push(Reservation {
                order_id,
                instrument_type: s.instrument_type.clone(),
                start: s.start,
                end: s.end,
            });
        }
    }

    #[test]
    fn a_capacity_document_reads_and_bad_ones_say_what_is_wrong() {
        let good = r#"
            working_days = ["mon", "tue", "wed", "thu", "fri"]
            opens = "08:00"
            closes = "18:00"
            collection_slots_per_day = 2
            [instruments]
            apheresis = 1
            bench = 1
            closed-processing-system = 2
            [[closures]]
            from = "2026-12-24"
            to = "2026-12-26"
            reason = "Christmas"
        "#;
        let capacity = Capacity::from_toml(good).expect("valid");
        assert_eq!(capacity.instruments["closed-processing-system"], 2);
        assert_eq!(
            capacity.opens,
            NaiveTime::from_hms_opt(8, 0, 0).expect("present")
        );
        assert_eq!(
            Capacity::from_toml(&capacity.to_toml()).expect("round trip"),
            capacity
        );

        let overlapping = format!("{good}\n[[closures]]\nfrom = \"2026-12-26\"\nto = \"2026-12-31\"\nreason = \"year end\"\n");
        let err = Capacity::from_toml(&overlapping).expect_err("refused");
        assert!(err.contains("closures overlap"), "{err}");
        let err =
            Capacity::from_toml(&good.replace("\"18:00\"", "\"07:00\"")).expect_err("refused");
        assert!(err.contains("must be before closes"), "{err}");
        let err =
            Capacity::from_toml(&good.replace("bench = 1", "bench = 0")).expect_err("refused");
        assert!(err.contains("\"bench\" has count 0"), "{err}");
        let err = Capacity::from_toml(&good.replace("\"fri\"", "\"fry\"")).expect_err("refused");
        assert!(!err.is_empty());
        let err = Capacity::from_toml(&good.replace("\"2026-12-24\"", "\"2026-12-27\""))
            .expect_err("refused");
        assert!(err.contains("ends before it starts"), "{err}");
        // A document without a zone is in UTC; a zone must be an IANA name.
        assert_eq!(capacity.time_zone, "UTC");
        let zoned = format!("time_zone = \"Europe/London\"\n{good}");
        assert_eq!(
            Capacity::from_toml(&zoned).expect("valid").zone(),
            chrono_tz::Europe::London
        );
        let err = Capacity::from_toml(&format!("time_zone = \"Europe/Londn\"\n{good}"))
            .expect_err("refused");
        assert!(err.contains("not an IANA time zone name"), "{err}");
        // The example the README points at is a valid capacity.
        let example = Capacity::from_toml(include_str!("../../deploy/capacity.example.toml"))
            .expect("deploy/capacity.example.toml");
        assert_eq!(example.zone(), chrono_tz::Europe::London);
    }

    /// Open every day 08:00 to 18:00 local in `zone`, two collection slots.
    fn every_day_in(zone: &str) -> Capacity {
        let mut capacity = Capacity::example();
        capacity.time_zone = zone.into();
        capacity.working_days = vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ];
        capacity.check().expect("valid");
        capacity
    }

    #[test]
    fn slots_are_at_local_opening_hours_on_both_days_the_clocks_change() {
        let three_hours = Duration::hours(3);
        // (zone, day before, spring-forward day, fall-back day, opening in UTC on each)
        for (zone, days) in [
            (
                "Europe/London",
                [
                    ("2026-03-28", "2026-03-28T08:00:00Z", "2026-03-28T15:00:00Z"),
                    ("2026-03-29", "2026-03-29T07:00:00Z", "2026-03-29T14:00:00Z"),
                    ("2026-10-25", "2026-10-25T08:00:00Z", "2026-10-25T15:00:00Z"),
                ],
            ),
            (
                "America/New_York",
                [
                    ("2026-03-07", "2026-03-07T13:00:00Z", "2026-03-07T20:00:00Z"),
                    ("2026-03-08", "2026-03-08T12:00:00Z", "2026-03-08T19:00:00Z"),
                    ("2026-11-01", "2026-11-01T13:00:00Z", "2026-11-01T20:00:00Z"),
                ],
            ),
        ] {
            let capacity = every_day_in(zone);
            for (day, first, last) in days {
                assert_eq!(
                    capacity.slot_start(date(day), 0, three_hours),
                    Some(at(first)),
                    "{zone} {day} first slot"
                );
                // The last slot ends at 18:00 local.
                assert_eq!(
                    capacity.slot_start(date(day), 1, three_hours),
                    Some(at(last)),
                    "{zone} {day} last slot"
                );
                assert_eq!(
                    capacity.local_text(at(first)),
                    format!(
                        "{day} 08:00 {}",
                        at(first).with_timezone(&capacity.zone()).format("%Z")
                    )
                );
            }
        }
        assert_eq!(
            every_day_in("Europe/London").local_text(at("2026-03-29T07:00:00Z")),
            "2026-03-29 08:00 BST"
        );
        assert_eq!(
            every_day_in("America/New_York").local_text(at("2026-11-01T13:00:00Z")),
            "2026-11-01 08:00 EST"
        );
    }

    #[test]
    fn a_skipped_local_time_lands_after_the_change_and_a_repeated_one_is_the_first() {
        let new_york = chrono_tz::America::New_York;
        let local =
            |text: &str| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("local time");
        // 02:30 does not happen on 2026-03-08: it is read as 03:30 EDT.
        assert_eq!(
            instant_in(new_york, local("2026-03-08 02:30")),
            at("2026-03-08T07:30:00Z")
        );
        // 01:30 happens twice on 2026-11-01: the first, in EDT.
        assert_eq!(
            instant_in(new_york, local("2026-11-01 01:30")),
            at("2026-11-01T05:30:00Z")
        );
        // Opening in the gap still gives a slot, at the first real time after it.
        let mut capacity = every_day_in("America/New_York");
        capacity.opens = NaiveTime::from_hms_opt(2, 30, 0).expect("time");
        assert_eq!(
            capacity.slot_start(date("2026-03-08"), 0, Duration::hours(3)),
            Some(at("2026-03-08T07:30:00Z"))
        );
    }

    #[test]
    fn a_local_day_is_booked_closed_and_counted_in_the_sites_zone() {
        let recipe = recipe();
        let mut capacity = every_day_in("Europe/London");
        // 00:30 BST on 30 March is 23:30 UTC on the 29th: locally the 29th is past.
        let now = at("2026-03-29T23:30:00Z");
        assert_eq!(
            plan_for(
                "s",
                &capacity,
                &recipe,
                &Booked::default(),
                date("2026-03-29"),
                now
            ),
            Err(Refusal::InThePast {
                date: date("2026-03-29")
            })
        );
        let plan = plan_for(
            "s",
            &capacity,
            &recipe,
            &Booked::default(),
            date("2026-03-30"),
            now,
        )
        .expect("the next local day");
        assert_eq!(plan.collection_start(), at("2026-03-30T07:00:00Z"));
        // A closure on a local date closes that local day, midnight to midnight.
        capacity.closures = vec![Closure {
            from: date("2026-03-29"),
            to: date("2026-03-29"),
            reason: "the clocks change".into(),
        }];
        let closed = |from: &str, to: &str| capacity.closure_during(at(from), at(to)).is_some();
        assert!(
            !closed("2026-03-28T22:00:00Z", "2026-03-28T23:59:00Z"),
            "Saturday 23:59 GMT"
        );
        assert!(
            closed("2026-03-29T00:00:00Z", "2026-03-29T00:30:00Z"),
            "Sunday 00:30 GMT"
        );
        assert!(
            closed("2026-03-29T22:30:00Z", "2026-03-29T22:59:00Z"),
            "Sunday 23:59 BST"
        );
        assert!(
            !closed("2026-03-29T23:00:00Z", "2026-03-29T23:30:00Z"),
            "Monday 00:00 BST"
        );
        // The week of the spring change has an hour less; the autumn one an hour more.
        let hours_of_week = |monday: &str| {
            utilisation(
                &every_day_in("Europe/London"),
                &Booked::default(),
                date(monday),
                1,
            )
            .into_iter()
            .find(|u| u.resource == "bench")
            .map(|u| u.available / f64::from(u.units))
            .expect("bench row")
        };
        assert_eq!(hours_of_week("2026-03-23"), 167.0);
        assert_eq!(hours_of_week("2026-10-19"), 169.0);
        assert_eq!(hours_of_week("2026-06-01"), 168.0);
    }

    #[test]
    fn the_earliest_free_slot_is_taken_and_the_last_one_only_once() {
        let mut capacity = Capacity::example();
        capacity
            .instruments
            .insert("closed-processing-system".into(), 2);
        let recipe = recipe();
        let now = at("2026-11-30T07:00:00Z"); // a Monday
        let mut booked = Booked::default();
        let first =
            plan_for("s", &capacity, &recipe, &booked, date("2026-11-30"), now).expect("free");
        assert_eq!(
            (first.slot, first.collection_start()),
            (0, at("2026-11-30T08:00:00Z"))
        );
        book(&mut booked, &first, Uuid::now_v7());
        let second =
            plan_for("s", &capacity, &recipe, &booked, date("2026-11-30"), now).expect("free");
        assert_eq!(
            (second.slot, second.collection_start()),
            (1, at("2026-11-30T15:00:00Z"))
        );
        book(&mut booked, &second, Uuid::now_v7());
        assert_eq!(
            plan_for("s", &capacity, &recipe, &booked, date("2026-11-30"), now),
            Err(Refusal::SlotsTaken {
                date: date("2026-11-30")
            })
        );
        // Both processing systems are busy for the next ten days or so: Tuesday's
        // slots are free, but the instruments are not.
        let refused = plan_for("s", &capacity, &recipe, &booked, date("2026-12-01"), now)
            .expect_err("refused");
        assert!(
            matches!(refused, Refusal::InstrumentBusy { ref instrument_type, .. } if instrument_type == "closed-processing-system"),
            "{refused}"
        );
        let next = propose("s", &capacity, &recipe, &booked, date("2026-11-30"), now, 1);
        assert_eq!(next.len(), 1);
        assert!(next[0].steps[2].start >= second.end(), "{:?}", next[0]);
    }

    #[test]
    fn days_that_cannot_be_booked_are_refused_with_the_reason() {
        let mut capacity = Capacity::example();
        capacity.closures.push(Closure {
            from: date("2026-12-24"),
            to: date("2026-12-26"),
            reason: "Christmas".into(),
        });
        let recipe = recipe();
        let now = at("2026-11-30T12:00:00Z");
        let booked = Booked::default();
        let refuse = |d: &str| {
            plan_for("s", &capacity, &recipe, &booked, date(d), now).expect_err("refused")
        };
        assert_eq!(
            refuse("2026-11-29"),
            Refusal::InThePast {
                date: date("2026-11-29")
            }
        );
        // Monday: the 08:00 slot has passed, the 15:00 one (the last that ends by
        // 18:00) has not.
        assert!(plan_for("s", &capacity, &recipe, &booked, date("2026-11-30"), now).is_ok());
        assert_eq!(
            refuse("2026-12-05"),
            Refusal::NotAWorkingDay {
                date: date("2026-12-05")
            }
        );
        assert!(matches!(refuse("2026-12-24"), Refusal::Closed { .. }));
        assert!(
            matches!(refuse("2026-12-16"), Refusal::WindowClosed { ref step_id, .. } if step_id == "expansion")
        );
        assert!(matches!(refuse("2027-12-01"), Refusal::TooFarAhead { .. }));
        let mut lacking = capacity.clone();
        lacking.instruments.remove("bench");
        assert!(matches!(
            plan_for("s", &lacking, &recipe, &booked, date("2026-12-01"), now),
            Err(Refusal::MissingInstrument { ref instrument_type, .. }) if instrument_type == "bench"
        ));
    }

    #[test]
    fn utilisation_counts_booked_hours_and_slots_per_week() {
        let capacity = Capacity::example();
        let recipe = recipe();
        let now = at("2026-11-30T07:00:00Z");
        let mut booked = Booked::default();
        let plan =
            plan_for("s", &capacity, &recipe, &booked, date("2026-11-30"), now).expect("present");
        book(&mut booked, &plan, Uuid::now_v7());
        let rows = utilisation(&capacity, &booked, date("2026-12-02"), 2);
        let row = |week: &str, resource: &str| {
            rows.iter()
                .find(|r| r.week_start == date(week) && r.resource == resource)
                .cloned()
                .expect("row")
        };
        let apheresis = row("2026-11-30", "apheresis");
        assert_eq!((apheresis.available, apheresis.booked), (24.0 * 7.0, 3.0));
        let slots = row("2026-11-30", "collection slots");
        assert_eq!((slots.available, slots.booked), (10.0, 1.0));
        // 228 hours of processing from Monday 12:00: 156 h in the first week, 72 h in the second.
        let first = row("2026-11-30", "closed-processing-system");
        assert_eq!((first.available, first.booked), (4.0 * 168.0, 156.0));
        assert_eq!(row("2026-12-07", "closed-processing-system").booked, 72.0);
    }

    fn booking(plan: &Plan, coi: &str) -> Booking {
        Booking {
            order_id: Uuid::now_v7(),
            batch_id: Uuid::now_v7(),
            coi: coi.into(),
            site_id: plan.site_id.clone(),
            collection_date: plan.collection_date,
            slot: plan.slot,
            steps: plan
                .steps
                .iter()
                .map(|s| BookedStep {
                    step_id: s.step_id.clone(),
                    instrument_type: s.instrument_type.clone(),
                    planned_start: s.start,
                    planned_end: s.end,
                    expected_start: s.start,
                    expected_end: s.end,
                    started_at: None,
                    completed_at: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_running_long_pushes_the_booking_behind_it_and_names_it() {
        let mut capacity = Capacity::example();
        capacity
            .instruments
            .insert("closed-processing-system".into(), 1);
        let recipe = recipe();
        let booked_at = at("2026-11-23T07:00:00Z");
        let mut booked = Booked::default();
        let first = plan_for(
            "s",
            &capacity,
            &recipe,
            &booked,
            date("2026-11-23"),
            booked_at,
        )
        .expect("present");
        book(&mut booked, &first, Uuid::now_v7());
        let second = propose(
            "s",
            &capacity,
            &recipe,
            &booked,
            date("2026-11-23"),
            booked_at,
            1,
        )
        .remove(0);
        // With one processing system, the second batch's selection starts after the
        // first one's formulation ends (Thursday 12:00, twelve hours later).
        assert_eq!(second.steps[2].start, first.end() + Duration::hours(12));
        let mut a = booking(&first, "A");
        let mut b = booking(&second, "B");
        for step in &mut b.steps[..2] {
            step.started_at = Some(step.planned_start);
            step.completed_at = Some(step.planned_end);
        }

        // Every step of A on time so far; expansion has run 22 hours over its 168.
        let expansion_start = a.steps[5].planned_start;
        for step in &mut a.steps[..5] {
            step.started_at = Some(step.planned_start);
            step.completed_at = Some(step.planned_end);
        }
        a.steps[5].started_at = Some(expansion_start);
        let now = expansion_start + Duration::hours(190);
        let moved = replan(&capacity, &[a.clone(), b.clone()], now);
        let moved_a = moved
            .iter()
            .find(|m| m.order_id == a.order_id)
            .expect("A moved");
        assert_eq!(
            moved_a.steps[5].2, now,
            "expansion is expected to end no earlier than now"
        );
        assert!(moved_a.cause.contains("expansion"), "{}", moved_a.cause);
        let moved_b = moved
            .iter()
            .find(|m| m.order_id == b.order_id)
            .expect("B pushed");
        let a_end = moved_a.steps.last().expect("present").2;
        assert_eq!(
            moved_b.steps[2].1, a_end,
            "B's selection waits for A's formulation"
        );
        assert_eq!(
            moved_b.steps[0],
            (
                b.steps[0].step_id.clone(),
                b.steps[0].planned_start,
                b.steps[0].planned_end
            ),
            "B's collection stays booked"
        );
        assert!(
            moved_b.cause.contains(&a.batch_id.to_string()),
            "{}",
            moved_b.cause
        );

        // Once the times are stored, re-planning at the same moment changes nothing.
        let apply = |booking: &mut Booking, m: &Moved| {
            for (step, (_, start, end)) in booking.steps.iter_mut().zip(&m.steps) {
                step.expected_start = *start;
                step.expected_end = *end;
            }
        };
        let mut a2 = a.clone();
        apply(&mut a2, moved_a);
        let mut b2 = b.clone();
        apply(&mut b2, moved_b);
        assert_eq!(replan(&capacity, &[a2, b2], now), vec![]);
    }

    #[test]
    fn slots_end_by_closing_time_and_a_collection_longer_than_the_day_is_refused() {
        let mut capacity = Capacity::example();
        capacity.collection_slots_per_day = 4;
        let three_hours = Duration::hours(3);
        let starts: Vec<String> = (0..4)
            .map(|slot| {
                capacity
                    .slot_start(date("2026-11-30"), slot, three_hours)
                    .expect("fits")
                    .format("%H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(starts, ["08:00", "10:20", "12:40", "15:00"]);
        capacity.closes = NaiveTime::from_hms_opt(10, 0, 0).expect("time");
        let refused = plan_for(
            "s",
            &capacity,
            &recipe(),
            &Booked::default(),
            date("2026-12-01"),
            at("2026-11-30T07:00:00Z"),
        );
        assert!(
            matches!(refused, Err(Refusal::CollectionTooLong { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_new_capacity_that_breaks_bookings_names_them() {
        let capacity = Capacity::example();
        let recipe = recipe();
        let now = at("2026-11-30T07:00:00Z");
        let mut booked = Booked::default();
        let first =
            plan_for("s", &capacity, &recipe, &booked, date("2026-12-01"), now).expect("free");
        book(&mut booked, &first, Uuid::now_v7());
        let second =
            plan_for("s", &capacity, &recipe, &booked, date("2026-12-01"), now).expect("free");
        let bookings = [booking(&first, "A"), booking(&second, "B")];
        assert_eq!(conflicts(&capacity, &bookings, now), Vec::<String>::new());

        let mut fewer = capacity.clone();
        fewer.collection_slots_per_day = 1;
        fewer
            .instruments
            .insert("closed-processing-system".into(), 1);
        fewer.closures.push(Closure {
            from: date("2026-12-05"),
            to: date("2026-12-05"),
            reason: "power work".into(),
        });
        let found = conflicts(&fewer, &bookings, now);
        assert!(
            found
                .iter()
                .any(|f| f.contains("COI B") && f.contains("collection slot 2")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("2 bookings hold a closed-processing-system at the same time")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("COI A") && f.contains("power work")),
            "{found:?}"
        );
        let mut without = capacity.clone();
        without.instruments.remove("bench");
        assert!(conflicts(&without, &bookings, now)
            .iter()
            .any(|f| f.contains("needs a bench")));
    }

    #[test]
    fn re_planning_does_not_push_a_step_into_a_closure() {
        let mut capacity = Capacity::example();
        capacity
            .instruments
            .insert("closed-processing-system".into(), 1);
        let recipe = recipe();
        let booked_at = at("2026-11-23T07:00:00Z");
        let first = plan_for(
            "s",
            &capacity,
            &recipe,
            &Booked::default(),
            date("2026-11-23"),
            booked_at,
        )
        .expect("free");
        let mut a = booking(&first, "A");
        for step in &mut a.steps[..5] {
            step.started_at = Some(step.planned_start);
            step.completed_at = Some(step.planned_end);
        }
        // Expansion has run over; harvest would now fall on a closed day.
        let expansion = a.steps[5].planned_start;
        a.steps[5].started_at = Some(expansion);
        let now = a.steps[5].planned_end + Duration::hours(2);
        capacity.closures.push(Closure {
            from: now.date_naive() + Duration::days(0),
            to: now.date_naive(),
            reason: "fire drill".into(),
        });
        let moved = replan(&capacity, &[a.clone()], now);
        let harvest = &moved[0].steps[6];
        let reopens = (now.date_naive() + Duration::days(1))
            .and_time(NaiveTime::MIN)
            .and_utc();
        assert_eq!(harvest.1, reopens.max(now), "{moved:?}");
    }
}

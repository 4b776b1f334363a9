//! Scheduling in the store: each site's declared capacity, and the bookings made
//! against it ([`crate::schedule`] decides; this keeps).
//!
//! A booking is made in the same transaction as its order (`Store::create_order`),
//! with the site's row locked (PostgreSQL) or the single writer held (SQLite), so two
//! bookings of the last slot or instrument cannot both succeed. A partial unique index
//! on (site, date, slot) of active bookings backs that up in the database itself.

use super::{Error, Result};
use crate::schedule::{self, Booked, Booking, Capacity, Plan};
use async_trait::async_trait;
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// The expected release of an order has slipped past what was last announced: the
/// store audits it as `order.delayed` (which notifications pick up).
#[derive(Debug, Clone, PartialEq)]
pub struct DelayNotice {
    /// The release last announced, as the caller read it: the notice is dropped if
    /// another hub process has announced since (so a delay is announced once).
    pub replaces: Option<DateTime<Utc>>,
    pub expected_release: DateTime<Utc>,
    pub planned_release: DateTime<Utc>,
    pub reason: String,
}

#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// The site's capacity; `None` when it has declared none (orders for it are not booked).
    async fn capacity(&self, site_id: &str) -> Result<Option<Capacity>>;
    /// What the site's active bookings hold: slots, and instrument time as now expected.
    async fn booked(&self, site_id: &str) -> Result<Booked>;
    /// The site's active bookings with their steps, collection order.
    async fn bookings(&self, site_id: &str) -> Result<Vec<Booking>>;
    /// The booking of an order, active or not; `None` for an order made without one.
    async fn booking(&self, order_id: Uuid) -> Result<Option<Booking>>;
    /// The release last announced as a delay for the order, if any.
    async fn announced_release(&self, order_id: Uuid) -> Result<Option<DateTime<Utc>>>;
}

/// What to book for a new order at a site, decided inside the order's transaction:
/// `None` when the site declares no capacity (the order is not booked), a plan when
/// the date is feasible, and a refusal saying why not otherwise.
pub(crate) fn decide(
    site_id: &str,
    capacity: Option<&Capacity>,
    recipe: &Recipe,
    booked: &Booked,
    requested_date: &str,
    now: DateTime<Utc>,
) -> Result<Option<Plan>> {
    let Some(capacity) = capacity else {
        return Ok(None);
    };
    let date = parse_date(requested_date)?;
    schedule::plan_for(site_id, capacity, recipe, booked, date, now)
        .map(Some)
        .map_err(|refusal| unavailable(site_id, date, &refusal))
}

pub(crate) fn parse_date(text: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        Error::Invalid(format!(
            "collection date {text:?} is not a date (YYYY-MM-DD)"
        ))
    })
}

/// The error for a date that cannot be booked.
pub(crate) fn unavailable(site_id: &str, date: NaiveDate, refusal: &schedule::Refusal) -> Error {
    Error::Unavailable(format!(
        "cannot book collection on {date} at site {site_id:?}: {refusal}"
    ))
}

/// The capacity document as stored (JSON).
pub(crate) fn capacity_json(capacity: &Capacity) -> Result<String> {
    serde_json::to_string(capacity).map_err(|e| Error::Corrupt(e.to_string()))
}

pub(crate) fn capacity_of_json(text: &str) -> Result<Capacity> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("stored capacity: {e}")))
}

/// One row of a booking's step, as both backends read it.
pub(crate) struct BookingRow {
    pub order_id: Uuid,
    pub batch_id: Uuid,
    pub coi: String,
    pub site_id: String,
    pub collection_date: NaiveDate,
    pub slot: u32,
    pub step: schedule::BookedStep,
}

/// Bookings from their step rows (ordered by booking, then step position).
pub(crate) fn group(rows: Vec<BookingRow>) -> Vec<Booking> {
    let mut bookings: Vec<Booking> = Vec::new();
    for row in rows {
        match bookings.last_mut() {
            Some(b) if b.order_id == row.order_id => b.steps.push(row.step),
            _ => bookings.push(Booking {
                order_id: row.order_id,
                batch_id: row.batch_id,
                coi: row.coi,
                site_id: row.site_id,
                collection_date: row.collection_date,
                slot: row.slot,
                steps: vec![row.step],
            }),
        }
    }
    bookings
}

/// What bookings hold: their slots, and instrument time as now expected.
pub fn booked_from(bookings: &[Booking]) -> Booked {
    let mut booked = Booked::default();
    for b in bookings {
        booked
            .slots
            .entry(b.collection_date)
            .or_default()
            .insert(b.slot);
        for s in &b.steps {
            booked.reservations.push(schedule::Reservation {
                order_id: b.order_id,
                instrument_type: s.instrument_type.clone(),
                start: s.expected_start,
                end: s.expected_end,
            });
        }
    }
    booked
}

/// Whether an order's collection can still move: booked, and nothing done yet.
pub(crate) fn check_reschedulable(
    order: &crate::model::Order,
    booking: Option<&Booking>,
) -> Result<()> {
    use crate::model::BatchState;
    if booking.is_none() {
        return Err(Error::FailedPrecondition(format!(
            "order {} has no booking to move (its site declares no capacity, or the order was cancelled)",
            order.order_id
        )));
    }
    let untouched = matches!(order.state, BatchState::Ordered | BatchState::Accepted)
        && order.current_step.is_none()
        && order.progress.steps_completed.is_empty();
    if !untouched {
        return Err(Error::FailedPrecondition(format!(
            "order {} is {} and its collection has started; only an order not yet collected can be rescheduled",
            order.order_id, order.state
        )));
    }
    Ok(())
}

/// How the `order.created` audit entry names the booking made with the order.
pub(crate) fn booking_note(plan: Option<&Plan>) -> String {
    match plan {
        Some(plan) => format!(
            "booked collection slot {} on {} ({})",
            plan.slot + 1,
            plan.collection_date,
            plan.collection_start().format("%H:%M UTC")
        ),
        None => "not booked: the site declares no capacity".to_owned(),
    }
}

/// Refuses a new capacity that would leave instrument time unaccounted for or break
/// existing bookings; says which orders are in the way.
pub(crate) fn check_new_capacity(
    site_id: &str,
    capacity: &Capacity,
    bookings: &[Booking],
    unbooked: &[(Uuid, String)],
    now: DateTime<Utc>,
) -> Result<()> {
    if !unbooked.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "site {site_id:?} has {} open order(s) placed without a booking ({}); declare its capacity once they are past manufacturing, or cancel them",
            unbooked.len(),
            unbooked
                .iter()
                .map(|(id, coi)| format!("{id} COI {coi}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let conflicts = schedule::conflicts(capacity, bookings, now);
    if !conflicts.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "the new capacity of site {site_id:?} does not fit its bookings: {}; reschedule or cancel them first",
            conflicts.join("; ")
        )));
    }
    Ok(())
}

/// Whether the booking read inside a transaction is still the one a re-planning pass
/// read (active, same collection, same planned steps).
pub(crate) fn unchanged(current: Option<&(Booking, bool)>, seen: &Booking) -> bool {
    current.is_some_and(|(b, active)| {
        *active
            && b.collection_date == seen.collection_date
            && b.slot == seen.slot
            && b.steps.len() == seen.steps.len()
            && b.steps
                .iter()
                .zip(&seen.steps)
                .all(|(a, z)| a.step_id == z.step_id && a.planned_start == z.planned_start)
    })
}

/// The open orders of a site with no booking, as the backends read them.
pub(crate) const UNBOOKED_OPEN_ORDERS: &str = "SELECT o.order_id, o.coi FROM orders o \
     JOIN batches b ON b.batch_id = o.batch_id \
     LEFT JOIN bookings k ON k.order_id = o.order_id \
     WHERE o.site_id = $1 AND NOT o.dry_run AND k.order_id IS NULL AND b.state IN ('ordered', 'accepted', 'in_process') \
     ORDER BY o.created_at";

//! Scheduling as people use it, whichever door they come in by: declaring a site's
//! capacity, proposing and moving collection dates, utilisation, the vein-to-vein
//! clock and its figures, and the re-planning that runs in the background.

use super::{field, require_role, visible_order, Error};
use crate::app::Hub;
use crate::clock::{self, Clock, Summary};
use crate::model;
use crate::model::{BatchState, Order, Role, SiteStatus, User};
use crate::schedule::{self, Booking, Capacity, Plan, Utilisation};
use crate::store;
use crate::store::schedule::DelayNotice;
use chrono::{DateTime, Duration, NaiveDate, SubsecRound, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

/// How many weeks of utilisation may be asked for at once.
pub const MAX_WEEKS: u32 = 26;

/// A date as a form or a request gives it; today when empty; refused when it is not
/// a date or lies beyond the horizon either way.
fn date_within_horizon(name: &'static str, text: &str) -> Result<NaiveDate, Error> {
    let today = Utc::now().date_naive();
    let date = match text.trim() {
        "" => return Ok(today),
        text => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| field(name, format!("{name} {text:?} is not a date (YYYY-MM-DD)")))?,
    };
    if (date - today).num_days().abs() > schedule::HORIZON_DAYS {
        return Err(field(
            name,
            format!(
                "{name} {date} is more than {} days from today",
                schedule::HORIZON_DAYS
            ),
        ));
    }
    Ok(date)
}

/// The site's declared capacity, `None` when it declares none. Anyone signed in may read it.
pub async fn capacity(hub: &Hub, site_id: &str) -> Result<Option<Capacity>, Error> {
    Ok(hub.store.capacity(site_id.trim()).await?)
}

/// Who declares sites' capacity.
const CAPACITY_DECLARERS: [Role; 1] = [Role::Admin];

/// Whether `user` may declare capacity (the console shows the form only then).
pub fn may_declare_capacity(user: &User) -> bool {
    require_role(user, &CAPACITY_DECLARERS).is_ok()
}

/// Declares or replaces a site's capacity from its TOML document, as the console's
/// form gives it (administrators). A document that does not hold is refused.
pub async fn declare_capacity(
    hub: &Hub,
    user: &User,
    site_id: &str,
    document: &str,
) -> Result<(), Error> {
    require_role(user, &CAPACITY_DECLARERS)?;
    let capacity = Capacity::from_toml(document).map_err(|why| field("capacity", why))?;
    set_capacity(hub, user, site_id, &capacity).await
}

/// Declares or replaces a site's capacity (administrators).
pub async fn set_capacity(
    hub: &Hub,
    user: &User,
    site_id: &str,
    capacity: &Capacity,
) -> Result<(), Error> {
    require_role(user, &CAPACITY_DECLARERS)?;
    capacity.check().map_err(|why| field("capacity", why))?;
    hub.store
        .set_capacity(site_id.trim(), capacity, &user.username, Utc::now())
        .await?;
    tracing::info!(site_id, by = %user.username, "site capacity declared");
    Ok(())
}

/// A collection date that can be booked, and the release it leads to.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub plan: Plan,
    pub expected_release: DateTime<Utc>,
    /// The site's time zone: the plan's date is local there.
    pub zone: chrono_tz::Tz,
}

/// A site's time zone, as its declared calendar names it; UTC for a site that
/// declares none.
pub async fn site_zone(hub: &Hub, site_id: &str) -> Result<chrono_tz::Tz, Error> {
    Ok(hub
        .store
        .capacity(site_id)
        .await?
        .map_or(chrono_tz::Tz::UTC, |c| c.zone()))
}

/// The earliest feasible collection dates for `product` at `site_id` (and at every
/// other active site with a declared capacity when `other_sites`), earliest first.
pub async fn propose(
    hub: &Hub,
    user: &User,
    product: &str,
    site_id: &str,
    from: &str,
    other_sites: bool,
    count: usize,
) -> Result<Vec<Proposal>, Error> {
    require_role(user, &[Role::Physician, Role::Admin, Role::Qa])?;
    let now = Utc::now();
    let recipe = match hub.store.latest_recipe(product.trim()).await {
        Err(store::Error::NotFound(_)) => {
            return Err(field(
                "product",
                format!("product (recipe) {product:?} is not known to the hub"),
            ))
        }
        other => other?.recipe,
    };
    let from = date_within_horizon("from", from)?;
    if from < now.date_naive() {
        return Err(field("from", format!("from {from} is in the past")));
    }
    let count = count.clamp(1, 20);
    // Only sites qualified for the version an order would pin can take it.
    let qualified: Vec<String> = hub
        .store
        .site_qualifications(None)
        .await?
        .into_iter()
        .filter(|q| q.recipe_id == recipe.id && q.covers(recipe.version))
        .map(|q| q.site_id)
        .collect();
    let mut sites = Vec::new();
    let site_id = site_id.trim();
    if !site_id.is_empty() {
        let site = match hub.store.site(site_id).await {
            Err(store::Error::NotFound(_)) => {
                return Err(field(
                    "site_id",
                    format!("site {site_id:?} is not known to the hub"),
                ))
            }
            other => other?,
        };
        if site.status != SiteStatus::Active {
            return Err(field(
                "site_id",
                format!(
                    "site {site_id:?} is {} and cannot take orders",
                    site.status.as_str()
                ),
            ));
        }
        if qualified.contains(&site.site_id) {
            sites.push(site.site_id);
        } else if !other_sites {
            return Err(field(
                "product",
                format!(
                    "product {} v{} is not one site {site_id} is qualified to make; QA qualifies a site for a product with a signature",
                    recipe.id, recipe.version
                ),
            ));
        }
    } else if !other_sites {
        return Err(field(
            "site_id",
            "site_id is required unless other sites are allowed",
        ));
    }
    if other_sites {
        for site in hub.store.list_sites().await? {
            if site.status == SiteStatus::Active
                && site.site_id != site_id
                && qualified.contains(&site.site_id)
            {
                sites.push(site.site_id);
            }
        }
    }
    let mut proposals = Vec::new();
    let mut declared = false;
    for site in &sites {
        let Some(capacity) = hub.store.capacity(site).await? else {
            continue;
        };
        declared = true;
        let booked = hub.store.booked(site).await?;
        for plan in schedule::propose(site, &capacity, &recipe, &booked, from, now, count) {
            let expected_release = plan.end()
                + schedule::step_duration(
                    hub.config.schedule.qc_hours + hub.config.schedule.release_hours,
                );
            proposals.push(Proposal {
                plan,
                expected_release,
                zone: capacity.zone(),
            });
        }
    }
    if !declared {
        return Err(store::Error::FailedPrecondition(format!(
            "no site asked for declares its capacity ({}); orders for such a site are not booked",
            sites.join(", ")
        ))
        .into());
    }
    proposals.sort_by_key(|p| (p.plan.collection_start(), p.plan.site_id.clone()));
    proposals.truncate(count);
    Ok(proposals)
}

/// A refusal to book, with the next dates that can be booked at the same site from
/// the date asked for.
pub async fn with_next_free(
    hub: &Hub,
    user: &User,
    product: &str,
    site_id: &str,
    from: NaiveDate,
    why: String,
) -> Error {
    let from = from.max(Utc::now().date_naive()).to_string();
    let next = propose(hub, user, product, site_id, &from, false, 3).await;
    let text = match next {
        Ok(next) if !next.is_empty() => format!(
            "{why}; next free: {}",
            next.iter()
                .map(proposal_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!(
            "{why}; no date is free in the next {} days",
            schedule::HORIZON_DAYS
        ),
    };
    store::Error::Unavailable(text).into()
}

/// A proposal in a few words, in the site's local time: "2026-12-03 at site-a
/// (slot 1, 08:00 GMT)".
pub fn proposal_text(p: &Proposal) -> String {
    format!(
        "{} at {} (slot {}, {})",
        p.plan.collection_date,
        p.plan.site_id,
        p.plan.slot + 1,
        p.plan
            .collection_start()
            .with_timezone(&p.zone)
            .format("%H:%M %Z")
    )
}

/// Moves an order's collection to another date (its physician or an administrator),
/// audited with the reason.
pub async fn reschedule(
    hub: &Hub,
    user: &User,
    order_id: Uuid,
    date: &str,
    reason: &str,
) -> Result<Booking, Error> {
    require_role(user, &[Role::Physician, Role::Admin])?;
    let order = visible_order(hub, user, order_id).await?;
    let date = NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d").map_err(|_| {
        field(
            "collection_date",
            format!("The new collection date {date:?} is not a date (YYYY-MM-DD)"),
        )
    })?;
    let reason = super::sentence_reason(reason, "move this collection")?;
    match hub
        .store
        .reschedule_order(order_id, date, &reason, &user.username, Utc::now())
        .await
    {
        Err(store::Error::Unavailable(why)) => {
            Err(with_next_free(hub, user, &order.recipe_id, &order.site_id, date, why).await)
        }
        other => Ok(other?),
    }
}

/// Utilisation of a site's instruments and collection slots, week by week.
pub async fn utilisation(
    hub: &Hub,
    site_id: &str,
    from: &str,
    weeks: u32,
) -> Result<Vec<Utilisation>, Error> {
    if !(1..=MAX_WEEKS).contains(&weeks) {
        return Err(field(
            "weeks",
            format!("weeks is {weeks}; it must be 1 to {MAX_WEEKS}"),
        ));
    }
    let from = date_within_horizon("from", from)?;
    let capacity = hub.store.capacity(site_id.trim()).await?.ok_or_else(|| {
        store::Error::FailedPrecondition(format!("site {site_id:?} declares no capacity"))
    })?;
    let booked = hub.store.booked(site_id.trim()).await?;
    Ok(schedule::utilisation(&capacity, &booked, from, weeks))
}

/// The vein-to-vein clock of an order as of now, and the booking it was computed
/// from (`None` for an order made without one).
pub async fn order_clock(hub: &Hub, order: &Order) -> Result<(Clock, Option<Booking>), Error> {
    let record = hub.store.batch_record(order.batch_id).await?;
    let booking = hub.store.booking(order.order_id).await?;
    let clock = clock::clock(&record, booking.as_ref(), &hub.config.schedule, Utc::now());
    Ok((clock, booking))
}

/// Vein-to-vein figures for the whole network (`""`) and each site, of the orders
/// `user` may see.
pub async fn summary(
    hub: &Hub,
    user: &User,
    site_id: Option<&str>,
) -> Result<Vec<(String, Summary)>, Error> {
    let physician = (user.role == Role::Physician).then_some(user.username.as_str());
    let mut clocks: BTreeMap<String, Vec<Clock>> = BTreeMap::new();
    for order in hub.store.list_orders(physician, None).await? {
        if site_id.is_some_and(|s| s != order.site_id) {
            continue;
        }
        let (clock, _) = order_clock(hub, &order).await?;
        clocks.entry(order.site_id.clone()).or_default().push(clock);
    }
    let mut rows = vec![(String::new(), clock::summarize(clocks.values().flatten()))];
    rows.extend(
        clocks
            .iter()
            .map(|(site, clocks)| (site.clone(), clock::summarize(clocks))),
    );
    Ok(rows)
}

/// What one pass of re-planning did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replanned {
    /// Bookings whose expected times moved.
    pub moved: usize,
    /// Delays announced (`order.delayed`).
    pub delays: usize,
    /// Bookings freed because their batch was decided, cancelled or closed.
    pub freed: usize,
}

/// Re-plans every site's bookings from what the sites recorded, stores the moves,
/// and announces releases that slip (by more than the tolerance past what was last
/// announced, or past plan the first time).
pub async fn replan_all(hub: &Hub, now: DateTime<Utc>) -> Result<Replanned, Error> {
    let mut done = Replanned::default();
    for site in hub.store.list_sites().await? {
        // One site's trouble (a record that cannot be read, say) does not stop the others.
        if let Err(e) = replan_site(hub, &site, now, &mut done).await {
            tracing::warn!(site_id = %site.site_id, error = %e, "re-planning the site failed");
        }
    }
    Ok(done)
}

/// The time up to which the hub knows what a site did: now while the site is in
/// touch, its last contact while it is out of touch (the site keeps working and
/// reports later, so a silence is no evidence of a delay).
fn known_until(hub: &Hub, site: &model::Site, now: DateTime<Utc>) -> DateTime<Utc> {
    let timeout = Duration::milliseconds(i64::from(hub.config.heartbeat_timeout_ms));
    match site.last_contact_at {
        _ if hub.links.is_connected(&site.site_id) => now,
        Some(contact) if contact + timeout < now => contact,
        _ => now,
    }
}

async fn replan_site(
    hub: &Hub,
    site: &model::Site,
    now: DateTime<Utc>,
    done: &mut Replanned,
) -> Result<(), Error> {
    let settings = &hub.config.schedule;
    let Some(capacity) = hub.store.capacity(&site.site_id).await? else {
        return Ok(());
    };
    let known = known_until(hub, site, now);
    let mut bookings = Vec::new();
    let mut records = BTreeMap::new();
    for mut booking in hub.store.bookings(&site.site_id).await? {
        let record = hub.store.batch_record(booking.batch_id).await?;
        // Released, rejected, cancelled or later: the batch holds no instrument
        // from now on, so its booking stops counting against the site.
        let still_held = matches!(
            record.order.state,
            BatchState::Ordered
                | BatchState::Accepted
                | BatchState::InProcess
                | BatchState::AwaitingRelease
        );
        if !still_held {
            hub.store.release_booking(booking.order_id, now).await?;
            done.freed += 1;
            continue;
        }
        fill_actuals(&mut booking, &record);
        records.insert(booking.order_id, record);
        bookings.push(booking);
    }
    let moved: BTreeMap<Uuid, schedule::Moved> = schedule::replan(&capacity, &bookings, known)
        .into_iter()
        .map(|m| (m.order_id, m))
        .collect();
    for seen in &bookings {
        let record = &records[&seen.order_id];
        let moved = moved.get(&seen.order_id);
        let mut booking = seen.clone();
        if let Some(m) = moved {
            for (step, (_, start, end)) in booking.steps.iter_mut().zip(&m.steps) {
                step.expected_start = *start;
                step.expected_end = *end;
            }
        }
        let clock = clock::clock(record, Some(&booking), settings, known);
        let notice = match &clock.delay {
            Some(delay) if clock.released_on_time.is_none() => {
                let announced = hub.store.announced_release(booking.order_id).await?;
                let news =
                    announced.is_none_or(|a| clock.expected_release - a > settings.tolerance());
                news.then(|| DelayNotice {
                    replaces: announced,
                    expected_release: clock.expected_release,
                    planned_release: clock.planned_release,
                    reason: delay_reason(&clock, delay, moved),
                })
            }
            _ => None,
        };
        if moved.is_none() && notice.is_none() {
            continue;
        }
        let m = moved.cloned().unwrap_or_else(|| schedule::Moved {
            order_id: booking.order_id,
            steps: booking
                .steps
                .iter()
                .map(|s| (s.step_id.clone(), s.expected_start, s.expected_end))
                .collect(),
            cause: String::new(),
        });
        let announced = hub
            .store
            .store_replan(seen, &m, notice.as_ref(), now)
            .await?;
        done.moved += usize::from(moved.is_some());
        if announced {
            done.delays += 1;
            tracing::warn!(order_id = %booking.order_id, coi = %booking.coi, expected_release = %clock.expected_release, "order delayed");
            let _ = hub.changes.send(booking.batch_id);
        }
    }
    Ok(())
}

/// The reason announced with a delay: why the booking moved, or what slipped.
fn delay_reason(clock: &Clock, delay: &clock::Delay, moved: Option<&schedule::Moved>) -> String {
    let mut parts = vec![format!(
        "expected release {} is {} later than planned ({} behind plan since {})",
        clock.expected_release.format("%Y-%m-%d %H:%M UTC"),
        clock::span_text(delay.by),
        clock::span_text(delay.by),
        delay.since.as_str()
    )];
    if let Some(m) = moved.filter(|m| !m.cause.is_empty()) {
        parts.push(m.cause.clone());
    }
    parts.extend(delay.reasons.iter().take(3).cloned());
    parts.dedup();
    parts.join("; ")
}

/// Sets the started and completed times of a booking's steps from the batch's records.
fn fill_actuals(booking: &mut Booking, record: &model::BatchRecord) {
    use carrel_proto::event::EventKind;
    for stored in &record.events {
        // To the microsecond the store keeps, so a re-planned time read back compares equal.
        let at = stored
            .event
            .recorded_at
            .min(stored.received_at)
            .trunc_subsecs(6);
        match &stored.event.kind {
            EventKind::StepStarted { step_id, .. } => {
                if let Some(step) = booking.steps.iter_mut().find(|s| &s.step_id == step_id) {
                    step.started_at.get_or_insert(at);
                }
            }
            EventKind::StepCompleted { step_id, .. } => {
                if let Some(step) = booking.steps.iter_mut().find(|s| &s.step_id == step_id) {
                    step.started_at.get_or_insert(at);
                    step.completed_at = Some(at);
                }
            }
            _ => {}
        }
    }
}

/// Re-plans every `replan_interval_secs` until the hub stops.
pub async fn run_replanner(hub: std::sync::Arc<Hub>) {
    let every = std::time::Duration::from_secs(u64::from(hub.config.schedule.replan_interval_secs));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match replan_all(&hub, Utc::now()).await {
            Ok(done) if done != Replanned::default() => {
                tracing::info!(
                    moved = done.moved,
                    delays = done.delays,
                    freed = done.freed,
                    "bookings re-planned"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "re-planning failed; trying again at the next interval")
            }
        }
    }
}

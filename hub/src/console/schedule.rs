//! The console's scheduling pages: the vein-to-vein clock on an order's page, the
//! network's figures, and each site's capacity (edited as TOML by administrators)
//! with its utilisation for the coming weeks.

// Handlers answer `Result<Response, Response>` like the other pages.
#![allow(clippy::result_large_err)]

use super::view::{page, when_in};
use super::{html_page, refused, HubState, Page, Session};
use crate::clock::{span_text, Clock, Summary};
use crate::schedule::{Booking, Capacity};
use crate::service::schedule as service;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use std::collections::{BTreeMap, HashMap};

/// The clock of an order: planned, actual and expected milestones, and any delay.
pub fn clock_markup(clock: &Clock, booking: Option<&Booking>, zone: chrono_tz::Tz) -> Markup {
    html! {
        h2 { "Vein-to-vein" }
        div.card {
            p {
                "Planned release " (when_in(clock.planned_release, zone)) " · expected " strong { (when_in(clock.expected_release, zone)) }
                @if let Some(delay) = &clock.delay {
                    " · " span.badge.bad { "delayed " (span_text(delay.by)) } " since " (delay.since.as_str())
                } @else if clock.stopped.is_some() {
                    " · stopped"
                } @else {
                    " · " span.badge.ok { "on plan" }
                }
            }
            @if let Some(b) = booking {
                p.muted { "Booked: collection " (b.collection_date) ", slot " (b.slot + 1) " at " (b.site_id) " · times are the site's (" (zone.name()) ")" }
            } @else {
                p.muted { "Not booked: the site declares no capacity; planned from the requested date." }
            }
            @if let Some(delay) = &clock.delay {
                ul { @for reason in delay.reasons.iter().chain(&delay.announced) { li { (reason) } } }
            }
            @if let Some(v2v) = clock.vein_to_vein { p { "Vein to vein: " strong { (span_text(v2v)) } } }
        }
        div.scroll tabindex="0" { table data-clock-table {
            thead { tr { th scope="col" { "Milestone" } th scope="col" { "Planned" } th scope="col" { "Actual" } th scope="col" { "Expected" } } }
            tbody {
                @for m in &clock.milestones {
                    tr {
                        td { (m.milestone.as_str().replace('_', " ")) }
                        td.muted { (when_in(m.planned, zone)) }
                        td { @if let Some(a) = m.actual { (when_in(a, zone)) } @else { "–" } }
                        td { @if m.actual.is_none() { @if clock.stopped.is_some() { span.muted { "not expected" } } @else { (when_in(m.expected, zone)) } } }
                    }
                }
            }
        } }
    }
}

/// The clock markup of an order, for its page and its live part.
/// A share as a whole percentage, never "-0 %" (a share a hair under zero from
/// floating-point arithmetic is none).
fn percent(share: f64) -> String {
    // `max` may keep -0.0 (IEEE 754 lets either zero win); adding +0.0 makes it +0.0.
    let pct = (share * 100.0).max(0.0) + 0.0;
    if pct < 0.5 {
        "0 %".to_owned()
    } else {
        format!("{pct:.0} %")
    }
}

fn summary_row(site: &str, s: &Summary) -> Markup {
    html! {
        tr {
            td { @if site.is_empty() { strong { "Network" } } @else { (site) } }
            td { (s.orders) } td { (s.open) } td { (s.delayed) } td { (s.released) }
            td { @if let Some(share) = s.on_time_share() { (percent(share)) } @else { "–" } }
            td { @if let Some(d) = s.median_vein_to_vein { (span_text(d)) } @else { "–" } }
            td { @if let Some(d) = s.median_order_to_release { (span_text(d)) } @else { "–" } }
        }
    }
}

/// `/schedule`: vein-to-vein figures of the orders the user may see, and the sites'
/// capacity pages.
pub async fn overview(hub: HubState, session: Session) -> Page {
    let rows = service::summary(&hub, &session.user, None)
        .await
        .map_err(refused)?;
    let sites = hub
        .store
        .list_sites()
        .await
        .map_err(|e| refused(e.into()))?;
    Ok(html_page(page(
        "Schedule",
        Some(&session),
        html! {
            h1 { "Schedule" }
            h2 { "Vein-to-vein" }
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "Site" } th scope="col" { "Orders" } th scope="col" { "Open" } th scope="col" { "Delayed" } th scope="col" { "Released" } th scope="col" { "On time" } th scope="col" { "Median vein to vein" } th scope="col" { "Median order to release" } } }
                tbody { @for (site, s) in &rows { (summary_row(site, s)) } }
            } }
            h2 { "Capacity" }
            ul { @for site in &sites { li { a href=(format!("/capacity/{}", site.site_id)) { (site.site_id) } " " span.muted { (site.name) } } } }
        },
    )))
}

/// The days of the week as the form lists them: (key, name).
const DAYS: [(&str, &str); 7] = [
    ("mon", "Monday"),
    ("tue", "Tuesday"),
    ("wed", "Wednesday"),
    ("thu", "Thursday"),
    ("fri", "Friday"),
    ("sat", "Saturday"),
    ("sun", "Sunday"),
];

/// Blank rows the form offers for adding instrument types and closures.
const SPARE_ROWS: usize = 2;

/// The capacity form as typed: kept as text, so a refused form comes back as sent.
#[derive(Debug, Default)]
struct CapacityInput {
    time_zone: String,
    days: Vec<String>,
    opens: String,
    closes: String,
    slots: String,
    /// (instrument type, count)
    instruments: Vec<(String, String)>,
    /// (from, to, reason)
    closures: Vec<(String, String, String)>,
}

impl CapacityInput {
    fn of(c: &Capacity) -> CapacityInput {
        CapacityInput {
            time_zone: c.time_zone.clone(),
            days: c
                .working_days
                .iter()
                .map(|d| DAYS[d.num_days_from_monday() as usize].0.to_owned())
                .collect(),
            opens: c.opens.format("%H:%M").to_string(),
            closes: c.closes.format("%H:%M").to_string(),
            slots: c.collection_slots_per_day.to_string(),
            instruments: c
                .instruments
                .iter()
                .map(|(kind, n)| (kind.clone(), n.to_string()))
                .collect(),
            closures: c
                .closures
                .iter()
                .map(|c| (c.from.to_string(), c.to.to_string(), c.reason.clone()))
                .collect(),
        }
    }

    fn from_form(form: &HashMap<String, String>) -> CapacityInput {
        let get = |key: String| {
            form.get(&key)
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let rows = |prefix: &str| {
            let mut n: Vec<usize> = form
                .keys()
                .filter_map(|k| k.strip_prefix(prefix)?.parse().ok())
                .collect();
            n.sort_unstable();
            n
        };
        CapacityInput {
            time_zone: get("time_zone".into()),
            days: DAYS
                .iter()
                .filter(|(key, _)| form.contains_key(&format!("day_{key}")))
                .map(|(key, _)| (*key).to_owned())
                .collect(),
            opens: get("opens".into()),
            closes: get("closes".into()),
            slots: get("collection_slots_per_day".into()),
            instruments: rows("instrument_type_")
                .into_iter()
                .map(|i| {
                    (
                        get(format!("instrument_type_{i}")),
                        get(format!("instrument_count_{i}")),
                    )
                })
                .filter(|(kind, count)| !kind.is_empty() || !count.is_empty())
                .collect(),
            closures: rows("closure_from_")
                .into_iter()
                .map(|i| {
                    (
                        get(format!("closure_from_{i}")),
                        get(format!("closure_to_{i}")),
                        get(format!("closure_reason_{i}")),
                    )
                })
                .filter(|(from, to, reason)| {
                    !from.is_empty() || !to.is_empty() || !reason.is_empty()
                })
                .collect(),
        }
    }

    /// The capacity the form describes, or the field that is wrong and why.
    fn parse(&self) -> Result<Capacity, (String, String)> {
        let time = |field: &str, label: &str, text: &str| {
            chrono::NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
                (
                    field.to_owned(),
                    format!("{label} {text:?} is not a time of day (HH:MM, 24-hour, the site's local time)"),
                )
            })
        };
        let slots: u32 = self.slots.parse().map_err(|_| {
            (
                "collection_slots_per_day".to_owned(),
                format!(
                    "Collection slots per day {:?} is not a whole number",
                    self.slots
                ),
            )
        })?;
        let mut instruments = BTreeMap::new();
        for (i, (kind, count)) in self.instruments.iter().enumerate() {
            let count: u32 = count.parse().map_err(|_| {
                (
                    format!("instrument_count_{i}"),
                    format!("The count of {kind:?} ({count:?}) is not a whole number"),
                )
            })?;
            if instruments.insert(kind.clone(), count).is_some() {
                return Err((
                    format!("instrument_type_{i}"),
                    format!("Instrument type {kind:?} is listed twice"),
                ));
            }
        }
        let mut closures = Vec::new();
        for (i, (from, to, reason)) in self.closures.iter().enumerate() {
            let date = |field: String, text: &str| {
                chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map_err(|_| (field, format!("{text:?} is not a date (YYYY-MM-DD)")))
            };
            closures.push(crate::schedule::Closure {
                from: date(format!("closure_from_{i}"), from)?,
                to: date(format!("closure_to_{i}"), to)?,
                reason: reason.clone(),
            });
        }
        let time_zone = if self.time_zone.is_empty() {
            "UTC".to_owned()
        } else {
            crate::schedule::zone_named(&self.time_zone)
                .map_err(|why| ("time_zone".to_owned(), why))?
                .name()
                .to_owned()
        };
        Ok(Capacity {
            time_zone,
            working_days: self
                .days
                .iter()
                .filter_map(|d| d.parse::<chrono::Weekday>().ok())
                .collect(),
            opens: time("opens", "Opening time", &self.opens)?,
            closes: time("closes", "Closing time", &self.closes)?,
            collection_slots_per_day: slots,
            instruments,
            closures,
        })
    }
}

/// What a refused capacity form says, and where.
#[derive(Default)]
struct CapacityErrors {
    /// A field the form names (`opens`, `instrument_count_1`) and what is wrong.
    field: Option<(String, String)>,
    /// What is wrong with the capacity as a whole.
    whole: Option<String>,
    /// The TOML document was sent (the advanced view), with this text.
    document: Option<String>,
}

fn capacity_form(
    session: &Session,
    site_id: &str,
    input: &CapacityInput,
    errors: &CapacityErrors,
) -> Markup {
    let err = |name: &str| {
        errors
            .field
            .as_ref()
            .filter(|(field, _)| field == name)
            .map(|(_, why)| why.clone())
    };
    let text_field = |name: &str, label: &str, value: &str, hint: &str| {
        let id = name.replace('_', "-");
        html! {
            label for=(id) { (label) }
            @if !hint.is_empty() { p.muted id=(format!("{id}-hint")) { (hint) } }
            input id=(id) name=(name) value=(value) autocomplete="off"
                aria-describedby=(format!("{id}-hint {id}-error"))
                aria-invalid=[err(name).map(|_| "true")] autofocus[err(name).is_some()];
            @if let Some(e) = err(name) { p.error id=(format!("{id}-error")) { (e) } }
        }
    };
    let instrument_rows = input.instruments.len() + SPARE_ROWS;
    let closure_rows = input.closures.len() + SPARE_ROWS;
    html! {
        form method="post" action=(format!("/capacity/{site_id}")) id="capacity-form" novalidate {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="mode" value="form";
            fieldset {
                legend { "Working days" }
                @for (key, name) in DAYS {
                    label { input type="checkbox" name=(format!("day_{key}")) checked[input.days.iter().any(|d| d == key)]; " " (name) }
                }
            }
            label for="time-zone" { "Time zone" }
            p.muted id="time-zone-hint" { "The site's IANA time zone, for example Europe/London or America/New_York. Opening hours, closures and collection dates are the site's local ones, and the site's times are shown in it." }
            input id="time-zone" name="time_zone" value=(input.time_zone) autocomplete="off" list="time-zones"
                aria-describedby="time-zone-hint time-zone-error"
                aria-invalid=[err("time_zone").map(|_| "true")] autofocus[err("time_zone").is_some()];
            datalist id="time-zones" { @for zone in chrono_tz::TZ_VARIANTS { option value=(zone.name()) {} } }
            @if let Some(e) = err("time_zone") { p.error id="time-zone-error" { (e) } }
            (text_field("opens", "Opens (the site's local time)", &input.opens, "24-hour time, for example 07:30."))
            (text_field("closes", "Closes (the site's local time)", &input.closes, ""))
            (text_field("collection_slots_per_day", "Collection (apheresis) slots per working day", &input.slots, "Spread evenly over the opening hours; 1 to 48."))
            h3 { "Instruments" }
            p.muted { "Each type as the recipes name it, and how many the site has. Leave a row empty to remove a type." }
            div.scroll tabindex="0" { table data-instruments {
                thead { tr { th scope="col" { "Instrument type" } th scope="col" { "How many" } } }
                tbody { @for i in 0..instrument_rows {
                    @let (kind, count) = input.instruments.get(i).cloned().unwrap_or_default();
                    tr {
                        td { input name=(format!("instrument_type_{i}")) value=(kind) aria-label=(format!("Instrument type, row {}", i + 1))
                                aria-invalid=[err(&format!("instrument_type_{i}")).map(|_| "true")];
                             @if let Some(e) = err(&format!("instrument_type_{i}")) { p.error { (e) } } }
                        td { input name=(format!("instrument_count_{i}")) value=(count) inputmode="numeric" aria-label=(format!("How many, row {}", i + 1))
                                aria-invalid=[err(&format!("instrument_count_{i}")).map(|_| "true")] autofocus[err(&format!("instrument_count_{i}")).is_some()];
                             @if let Some(e) = err(&format!("instrument_count_{i}")) { p.error { (e) } } }
                    }
                } }
            } }
            h3 { "Closures" }
            p.muted { "Days the site is closed (both ends included, year-month-day), with the reason." }
            div.scroll tabindex="0" { table data-closures {
                thead { tr { th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "Reason" } } }
                tbody { @for i in 0..closure_rows {
                    @let (from, to, reason) = input.closures.get(i).cloned().unwrap_or_default();
                    tr {
                        td { input name=(format!("closure_from_{i}")) value=(from) placeholder="YYYY-MM-DD" aria-label=(format!("Closed from, row {}", i + 1));
                             @if let Some(e) = err(&format!("closure_from_{i}")) { p.error { (e) } } }
                        td { input name=(format!("closure_to_{i}")) value=(to) placeholder="YYYY-MM-DD" aria-label=(format!("Closed to, row {}", i + 1));
                             @if let Some(e) = err(&format!("closure_to_{i}")) { p.error { (e) } } }
                        td { input name=(format!("closure_reason_{i}")) value=(reason) aria-label=(format!("Reason, row {}", i + 1)); }
                    }
                } }
            } }
            p { button type="submit" id="capacity-save" { "Save capacity" } }
        }
    }
}

fn capacity_page(
    hub: &HubState,
    session: &Session,
    site_id: &str,
    declared: Option<&Capacity>,
    input: &CapacityInput,
    errors: &CapacityErrors,
    utilisation: Option<&[crate::schedule::Utilisation]>,
) -> Response {
    let document = errors.document.clone().unwrap_or_else(|| {
        declared
            .cloned()
            .unwrap_or_else(Capacity::example)
            .to_toml()
    });
    let refused = errors.field.is_some() || errors.whole.is_some();
    let mut response = html_page(page(
        &format!("Capacity of {site_id}"),
        Some(session),
        html! {
            h1 { "Capacity of " (site_id) }
            @if refused {
                div.notice.bad role="alert" id="capacity-refused" {
                    strong { "Not saved." } " "
                    @if let Some(why) = &errors.whole { (why) } @else if let Some((_, why)) = &errors.field { (why) }
                }
            }
            @if let Some(rows) = utilisation {
                h2 { "Utilisation, next weeks" }
                div.scroll tabindex="0" { table data-utilisation {
                    thead { tr { th scope="col" { "Week of" } th scope="col" { "Resource" } th scope="col" { "Units" } th scope="col" { "Available" } th scope="col" { "Booked" } th scope="col" { "Used" } } }
                    tbody { @for r in rows { tr {
                        td { (r.week_start) } td { (r.resource) } td { (r.units) }
                        td { (format!("{:.0}", r.available)) } td { (format!("{:.0}", r.booked)) }
                        td { (percent(r.share())) }
                    } } }
                } }
            } @else if declared.is_none() {
                p.muted { "The site declares no capacity: its orders are not booked." }
            }
            h2 { "Declared capacity" }
            @if service::may_declare_capacity(&session.user) {
                @if declared.is_none() && !refused { p.muted { "Not declared yet: the form starts from an example." } }
                (capacity_form(session, site_id, input, errors))
                details open[errors.document.is_some()] {
                    summary { "Advanced: the capacity as TOML" }
                    form method="post" action=(format!("/capacity/{site_id}")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="mode" value="toml";
                        label for="document" { "Capacity (TOML: time_zone, working_days, opens, closes, collection_slots_per_day, [instruments], [[closures]]; times and dates are local to time_zone)" }
                        textarea id="document" name="document" rows="18" cols="70" { (document) }
                        button type="submit" id="toml-submit" { "Declare from TOML" }
                    }
                }
            } @else {
                pre { (document) }
            }
            p.muted { "Config: re-planned every " (hub.config.schedule.replan_interval_secs) " s." }
        },
    ));
    if refused {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    response
}

/// `/capacity/{site}`: the site's capacity and utilisation.
pub async fn capacity(hub: HubState, session: Session, Path(site_id): Path<String>) -> Page {
    let declared = service::capacity(&hub, &site_id).await.map_err(refused)?;
    let utilisation = match &declared {
        Some(_) => Some(
            service::utilisation(&hub, &site_id, "", 4)
                .await
                .map_err(refused)?,
        ),
        None => None,
    };
    let input = CapacityInput::of(declared.as_ref().unwrap_or(&Capacity::example()));
    Ok(capacity_page(
        &hub,
        &session,
        &site_id,
        declared.as_ref(),
        &input,
        &CapacityErrors::default(),
        utilisation.as_deref(),
    ))
}

/// Declares the capacity from the form (or, in the advanced view, from TOML); what
/// does not hold comes back as it was sent with what is wrong, and nothing is stored.
pub async fn set_capacity(
    hub: HubState,
    session: Session,
    Path(site_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    session.check_csrf(form.get("csrf").map(String::as_str).unwrap_or(""))?;
    let declared = service::capacity(&hub, &site_id).await.map_err(refused)?;
    let mut errors = CapacityErrors::default();
    let (input, result) = if form.get("mode").map(String::as_str) == Some("toml") {
        let document = form.get("document").cloned().unwrap_or_default();
        let result = service::declare_capacity(&hub, &session.user, &site_id, &document).await;
        errors.document = Some(document);
        (
            CapacityInput::of(declared.as_ref().unwrap_or(&Capacity::example())),
            result,
        )
    } else {
        let input = CapacityInput::from_form(&form);
        match input.parse() {
            Ok(capacity) => {
                let result = service::set_capacity(&hub, &session.user, &site_id, &capacity).await;
                (input, result)
            }
            Err(field) => {
                errors.field = Some(field);
                let response = capacity_page(
                    &hub,
                    &session,
                    &site_id,
                    declared.as_ref(),
                    &input,
                    &errors,
                    None,
                );
                return Ok(response);
            }
        }
    };
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/capacity/{site_id}")).into_response()),
        Err(e @ crate::service::Error::PermissionDenied(_)) => Err(refused(e)),
        Err(e) => {
            errors.whole = Some(match e {
                crate::service::Error::Field { message, .. } => message,
                other => other.to_string(),
            });
            Ok(capacity_page(
                &hub,
                &session,
                &site_id,
                declared.as_ref(),
                &input,
                &errors,
                None,
            ))
        }
    }
}

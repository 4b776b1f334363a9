//! The console's scheduling pages: the vein-to-vein clock on an order's page, the
//! network's figures, and each site's capacity (edited as TOML by administrators)
//! with its utilisation for the coming weeks.

// Handlers answer `Result<Response, Response>` like the other pages.
#![allow(clippy::result_large_err)]

use super::view::{page, when};
use super::{html_page, refused, HubState, Page, Session};
use crate::clock::{span_text, Clock, Summary};
use crate::schedule::{Booking, Capacity};
use crate::service::schedule as service;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

/// The clock of an order: planned, actual and expected milestones, and any delay.
pub fn clock_markup(clock: &Clock, booking: Option<&Booking>) -> Markup {
    html! {
        h2 { "Vein-to-vein" }
        div.card {
            p {
                "Planned release " (when(clock.planned_release)) " · expected " strong { (when(clock.expected_release)) }
                @if let Some(delay) = &clock.delay {
                    " · " span.badge.bad { "delayed " (span_text(delay.by)) } " since " (delay.since.as_str())
                } @else if clock.stopped.is_some() {
                    " · stopped"
                } @else {
                    " · " span.badge.ok { "on plan" }
                }
            }
            @if let Some(b) = booking {
                p.muted { "Booked: collection " (b.collection_date) ", slot " (b.slot + 1) " at " (b.site_id) }
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
                        td.muted { (when(m.planned)) }
                        td { @if let Some(a) = m.actual { (when(a)) } @else { "–" } }
                        td { @if m.actual.is_none() { @if clock.stopped.is_some() { span.muted { "not expected" } } @else { (when(m.expected)) } } }
                    }
                }
            }
        } }
    }
}

/// The clock markup of an order, for its page and its live part.
fn summary_row(site: &str, s: &Summary) -> Markup {
    html! {
        tr {
            td { @if site.is_empty() { strong { "Network" } } @else { (site) } }
            td { (s.orders) } td { (s.open) } td { (s.delayed) } td { (s.released) }
            td { @if let Some(share) = s.on_time_share() { (format!("{:.0} %", share * 100.0)) } @else { "–" } }
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

fn capacity_page(
    hub: &HubState,
    session: &Session,
    site_id: &str,
    document: &str,
    utilisation: Option<&[crate::schedule::Utilisation]>,
    notice: Option<Markup>,
) -> Response {
    html_page(page(
        &format!("Capacity of {site_id}"),
        Some(session),
        html! {
            h1 { "Capacity of " (site_id) }
            @if let Some(n) = notice { (n) }
            @if let Some(rows) = utilisation {
                h2 { "Utilisation, next weeks" }
                div.scroll tabindex="0" { table data-utilisation {
                    thead { tr { th scope="col" { "Week of" } th scope="col" { "Resource" } th scope="col" { "Units" } th scope="col" { "Available" } th scope="col" { "Booked" } th scope="col" { "Used" } } }
                    tbody { @for r in rows { tr {
                        td { (r.week_start) } td { (r.resource) } td { (r.units) }
                        td { (format!("{:.0}", r.available)) } td { (format!("{:.0}", r.booked)) }
                        td { (format!("{:.0} %", r.share() * 100.0)) }
                    } } }
                } }
            } @else {
                p.muted { "The site declares no capacity: its orders are not booked." }
            }
            h2 { "Declared capacity" }
            @if service::may_declare_capacity(&session.user) {
                form method="post" action=(format!("/capacity/{site_id}")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="document" { "Capacity (TOML: working_days, opens, closes, collection_slots_per_day, [instruments], [[closures]]; times UTC)" }
                    textarea id="document" name="document" rows="18" cols="70" { (document) }
                    button type="submit" { "Declare" }
                }
            } @else {
                pre { (document) }
            }
            p.muted { "Config: re-planned every " (hub.config.schedule.replan_interval_secs) " s." }
        },
    ))
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
    let document = declared
        .as_ref()
        .map(Capacity::to_toml)
        .unwrap_or_else(|| Capacity::example().to_toml());
    Ok(capacity_page(
        &hub,
        &session,
        &site_id,
        &document,
        utilisation.as_deref(),
        None,
    ))
}

#[derive(Deserialize)]
pub struct CapacityForm {
    csrf: String,
    document: String,
}

/// Declares the capacity from the form; a document that does not hold is shown
/// again with what is wrong, and nothing is stored.
pub async fn set_capacity(
    hub: HubState,
    session: Session,
    Path(site_id): Path<String>,
    Form(form): Form<CapacityForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let result =
        match service::declare_capacity(&hub, &session.user, &site_id, &form.document).await {
            Err(e @ crate::service::Error::PermissionDenied(_)) => return Err(refused(e)),
            result => result.map_err(|e| e.to_string()),
        };
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/capacity/{site_id}")).into_response()),
        Err(why) => {
            let notice = html! { div.notice.bad role="alert" { "Not declared: " (why) } };
            let mut response =
                capacity_page(&hub, &session, &site_id, &form.document, None, Some(notice));
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
    }
}

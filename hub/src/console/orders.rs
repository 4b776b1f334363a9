//! Orders, as physicians see them: the list, the order form, one order's progress.

use super::view::{elapsed, live, page, state_badge, when};
use super::{html_page, parse_uuid, refused, HubState, Page, Session};
use crate::clock::{self, Clock, Milestone};
use crate::model;
use crate::model::{BatchRecord, BatchState, Order, Role, SiteStatus};
use crate::record::{alerts, next_step, timeline, Alert};
use crate::service::release;
use crate::service::{self, OrderForm};
use crate::store;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect};
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::BTreeMap;

fn order_rows_markup(orders: &[Order]) -> Markup {
    html! {
        @for o in orders {
            tr data-order=(o.order_id) {
                td { a href=(format!("/orders/{}", o.order_id)) { (o.coi) } }
                td { (o.patient_pseudonym) }
                td { (o.site_id) }
                td { (state_badge(o.state)) }
                td { (o.current_step.clone().unwrap_or_default()) }
                td.muted { (when(o.created_at)) }
            }
        }
        @if orders.is_empty() { tr { td colspan="6" .muted { "No orders yet." } } }
    }
}

pub async fn orders(hub: HubState, session: Session) -> Page {
    let orders = service::visible_orders(&hub, &session.user, None)
        .await
        .map_err(refused)?;
    let title = if session.user.role == Role::Physician {
        "My orders"
    } else {
        "Orders"
    };
    Ok(html_page(page(
        title,
        Some(&session),
        html! {
            h1 { (title) }
            @if service::may_order(&session.user) { p { a.button href="/orders/new" { "New order" } } }
            table {
                thead { tr { th { "COI" } th { "Patient" } th { "Site" } th { "State" } th { "Step" } th { "Ordered" } } }
                tbody id="order-rows" { (order_rows_markup(&orders)) }
            }
            (live("order-rows", "/orders/rows"))
        },
    )))
}

pub async fn order_rows(hub: HubState, session: Session) -> Page {
    let orders = service::visible_orders(&hub, &session.user, None)
        .await
        .map_err(refused)?;
    Ok(Html(order_rows_markup(&orders).into_string()).into_response())
}

fn order_form_page(
    session: &Session,
    sites: &[model::Site],
    form: &OrderForm,
    errors: &BTreeMap<&str, String>,
    free: &[service::schedule::Proposal],
) -> Markup {
    let err = |f: &str| errors.get(f).cloned();
    page(
        "New order",
        Some(session),
        html! {
            h1 { "New order" }
            div.card {
                @if let Some(e) = err("form") { p.error role="alert" { (e) } }
                form method="post" action="/orders" novalidate {
                    input type="hidden" name="csrf" value=(session.csrf);
                    // One key per order form shown: the same form sent twice (a double
                    // click, the back button) finds the order it placed.
                    input type="hidden" name="request_id" value=(form.request_id);
                    label for="patient_pseudonym" { "Patient pseudonym" }
                    input id="patient_pseudonym" name="patient_pseudonym" value=(form.patient_pseudonym) autofocus
                        aria-describedby="patient_pseudonym-error";
                    @if let Some(e) = err("patient_pseudonym") { p.error id="patient_pseudonym-error" { (e) } }
                    label for="product" { "Product" }
                    select id="product" name="product" {
                        option value="cd19-car-t" selected[form.product.is_empty() || form.product == "cd19-car-t"] { "CD19 CAR-T (cd19-car-t)" }
                    }
                    @if let Some(e) = err("product") { p.error { (e) } }
                    label for="site_id" { "Treating site" }
                    select id="site_id" name="site_id" {
                        @for site in sites.iter().filter(|s| s.status == SiteStatus::Active) {
                            option value=(site.site_id) selected[form.site_id == site.site_id] { (site.name) " (" (site.site_id) ")" }
                        }
                    }
                    @if let Some(e) = err("site_id") { p.error id="site_id-error" { (e) } }
                    label for="requested_collection_date" { "Requested collection date" }
                    input id="requested_collection_date" name="requested_collection_date" type="date" value=(form.requested_collection_date);
                    @if let Some(e) = err("requested_collection_date") { p.error id="requested_collection_date-error" { (e) } }
                    p { button type="submit" { "Place order" } }
                }
            }
            @if !free.is_empty() {
                h2 { "Free collection dates" }
                p.muted { "The earliest dates with a collection slot and the instruments free for the whole manufacturing window, at sites that declare their capacity." }
                table data-free-dates {
                    thead { tr { th { "Date" } th { "Site" } th { "Slot" } th { "Expected release" } } }
                    tbody { @for p in free { tr {
                        td { (p.plan.collection_date) } td { (p.plan.site_id) }
                        td { (p.plan.slot + 1) " · " (p.plan.collection_start().format("%H:%M UTC")) }
                        td { (when(p.expected_release)) }
                    } } }
                }
            }
        },
    )
}

/// The earliest free collection dates across the network, for the order form; none
/// when no site declares its capacity.
async fn free_dates(hub: &HubState, session: &Session) -> Vec<service::schedule::Proposal> {
    service::schedule::propose(hub, &session.user, "cd19-car-t", "", "", true, 6)
        .await
        .unwrap_or_default()
}

pub async fn new_order(hub: HubState, session: Session) -> Page {
    let sites = service::order_sites(&hub, &session.user)
        .await
        .map_err(refused)?;
    let form = OrderForm {
        requested_collection_date: (Utc::now() + chrono::Duration::days(2))
            .format("%Y-%m-%d")
            .to_string(),
        request_id: uuid::Uuid::now_v7().to_string(),
        ..OrderForm::default()
    };
    let free = free_dates(&hub, &session).await;
    Ok(html_page(order_form_page(
        &session,
        &sites,
        &form,
        &BTreeMap::new(),
        &free,
    )))
}

#[derive(Deserialize)]
pub struct NewOrderForm {
    csrf: String,
    #[serde(default)]
    patient_pseudonym: String,
    #[serde(default)]
    product: String,
    #[serde(default)]
    site_id: String,
    #[serde(default)]
    requested_collection_date: String,
    #[serde(default)]
    request_id: String,
}

pub async fn create_order(
    hub: HubState,
    session: Session,
    Form(input): Form<NewOrderForm>,
) -> Page {
    session.check_csrf(&input.csrf)?;
    let form = OrderForm {
        patient_pseudonym: input.patient_pseudonym,
        product: input.product,
        site_id: input.site_id,
        requested_collection_date: input.requested_collection_date,
        // Kept when the form comes back with an error: nothing was placed under it.
        request_id: input.request_id,
    };
    match service::create_order(&hub, &session.user, &form).await {
        Ok(order) => Ok(Redirect::to(&format!("/orders/{}", order.order_id)).into_response()),
        Err(
            e @ (service::Error::Field { .. }
            | service::Error::Store(
                store::Error::FailedPrecondition(_) | store::Error::Unavailable(_),
            )),
        ) => {
            let mut errors = BTreeMap::new();
            match e {
                service::Error::Field { field, message } => errors.insert(field, message),
                other => errors.insert("form", other.to_string()),
            };
            let sites = service::order_sites(&hub, &session.user)
                .await
                .map_err(refused)?;
            let free = free_dates(&hub, &session).await;
            let mut response = html_page(order_form_page(&session, &sites, &form, &errors, &free));
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(e) => Err(refused(e)),
    }
}

/// The banners an order's physician must see first (see [`alerts`]).
fn alerts_markup(record: &BatchRecord) -> Markup {
    html! {
        @for alert in alerts(record) {
            @match alert {
                Alert::Rejected { by, at, reason } => div.notice.bad id="order-rejected" role="alert" {
                    strong { "QA rejected this batch" } " on " (when(at)) ", signed by " (by) "."
                    p { "Reason given: " strong { (reason) } }
                    p { "What to do next: this product will not be released for infusion. Talk with QA and the site about the patient's options; if the patient is to be treated, a new collection needs a new order." }
                },
                Alert::Cancelled { by, at, reason } => div.notice.bad id="order-cancelled" role="alert" {
                    strong { "This order was cancelled" } " on " (when(at)) " by " (by) "."
                    p { "Reason given: " strong { (reason) } }
                    p { "Nothing more is made or handed over under this order; the site was told to stop." }
                },
                Alert::OutOfSpecification { test, value, recorded_at, released_at, infused_at } => div.notice.bad data-alert="out-of-specification" role="alert" {
                    strong { "Out of specification: " (test) " — " (value) } " (recorded " (when(recorded_at)) ")."
                    @if let Some(infused) = infused_at {
                        p { "This result came after the product was infused on " (when(infused)) ". Follow the patient as your protocol for an out-of-specification product requires, and contact QA, who review the result." }
                    } @else if let Some(released) = released_at {
                        p { "This result came after QA released the product on " (when(released)) ". Do not infuse it until QA has reviewed this result; contact QA." }
                    } @else {
                        p { "QA review this result before deciding on release; nothing is needed from you now." }
                    }
                },
            }
        }
    }
}

/// The vein-to-vein clock: from collection (apheresis) to infusion, stopped at a
/// rejection or cancellation.
fn vein_to_vein_markup(clock: &Clock) -> Markup {
    let collected = clock.milestone(Milestone::Collection);
    let infused = clock.milestone(Milestone::Infusion).actual;
    let stopped = |state: BatchState| match state {
        BatchState::Rejected => "rejected",
        _ => "cancelled",
    };
    html! {
        p data-vein-to-vein {
            "Vein-to-vein clock: "
            @match (collected.actual, infused, clock.stopped) {
                (None, _, Some(state)) => {
                    "not started; the order was " (stopped(state)) " before collection."
                }
                (None, _, None) => {
                    "starts at collection (apheresis), planned " (when(collected.planned)) "."
                }
                (Some(from), Some(to), _) => {
                    span.clock data-clock { (elapsed(from, to)) } " (collection to infusion)"
                }
                (Some(from), None, Some(state)) => {
                    span.clock data-clock data-stopped { (elapsed(from, clock.stopped_at.unwrap_or(from))) }
                    " stopped: the batch was " (stopped(state))
                    @if let Some(at) = clock.stopped_at { " on " (when(at)) }
                }
                (Some(from), None, None) => {
                    span.clock data-clock { (elapsed(from, Utc::now())) } " since collection"
                }
            }
        }
    }
}

fn order_live_markup(record: &BatchRecord, clock: &Clock) -> Markup {
    let order = &record.order;
    let changed = order.progress.unreviewed_changes();
    html! {
        (alerts_markup(record))
        @if !changed.is_empty() {
            div.notice.bad id="changed-after-decision" role="alert" {
                strong { "The batch record changed after QA's decision. " }
                (changed.len()) " record(s) arrived after the batch was " (order.state.as_str().replace('_', " "))
                "; QA has been asked to review them. Check with QA before going on with this product."
            }
        }
        div.card {
            p { "State: " (state_badge(order.state))
                @if order.decision_recorded { " · decision recorded at the site" } }
            (vein_to_vein_markup(clock))
            p { "Expected next step: " strong data-next { (next_step(record)) } }
        }
        h2 { "Timeline" }
        table {
            thead { tr { th { "When" } th { "Where" } th { "What" } th { "Details" } } }
            tbody {
                @for entry in timeline(record) {
                    tr { td.muted { (when(entry.at)) } td { (entry.source) } td { (entry.what) } td { (entry.detail) } }
                }
            }
        }
    }
}

/// An order's live part: alerts, state, clock, timeline and the schedule.
async fn live_markup(hub: &HubState, order: &Order) -> Result<Markup, axum::response::Response> {
    let record = hub
        .store
        .batch_record(order.batch_id)
        .await
        .map_err(|e| refused(e.into()))?;
    let booking = hub
        .store
        .booking(order.order_id)
        .await
        .map_err(|e| refused(e.into()))?;
    let clock = clock::clock(&record, booking.as_ref(), &hub.config.schedule, Utc::now());
    Ok(html! {
        (order_live_markup(&record, &clock))
        (super::schedule::clock_markup(&clock, booking.as_ref()))
    })
}

pub async fn order_page(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let order = service::visible_order(&hub, &session.user, parse_uuid(&id)?)
        .await
        .map_err(refused)?;
    let live_part = live_markup(&hub, &order).await?;
    Ok(html_page(page(
        &format!("Order {}", order.coi),
        Some(&session),
        html! {
            h1 { "Order " (order.coi) }
            p.muted { "Patient " (order.patient_pseudonym) " · site " (order.site_id) " · " (order.recipe_id) " v" (order.recipe_version)
                " · collection requested for " (order.requested_collection_date) " · ordered by " (order.physician) }
            @if release::may_review(&session.user) { p { a href=(format!("/batches/{}", order.batch_id)) { "Batch record" } } }
            div id="order-live" { (live_part) }
            (live("order-live", &format!("/orders/{}/live", order.order_id)))
        },
    )))
}

pub async fn order_live(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let order = service::visible_order(&hub, &session.user, parse_uuid(&id)?)
        .await
        .map_err(refused)?;
    Ok(Html(live_markup(&hub, &order).await?.into_string()).into_response())
}

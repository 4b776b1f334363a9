//! Orders, as physicians see them: the list, the order form, one order's progress.

use super::view::{elapsed, live, page, state_badge, when};
use super::{html_page, parse_uuid, refused, HubState, Page, Session};
use crate::model;
use crate::model::{BatchRecord, Order, Role, SiteStatus};
use crate::record::{next_step, timeline};
use crate::service::release;
use crate::service::{self, OrderForm};
use crate::store;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect};
use carrel_proto::event::EventKind;
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
        Some((&session.user, &session.csrf)),
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
        Some((&session.user, &session.csrf)),
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

fn order_live_markup(record: &BatchRecord) -> Markup {
    let order = &record.order;
    let infused_at = record
        .events
        .iter()
        .rev()
        .find_map(|e| match &e.event.kind {
            EventKind::CustodyScan {
                checkpoint_id,
                matched: true,
                ..
            } if checkpoint_id == "infusion" => Some(e.event.recorded_at),
            _ => None,
        });
    let clock_end = infused_at.unwrap_or_else(Utc::now);
    let changed = order.progress.unreviewed_changes();
    html! {
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
            p { "Vein-to-vein clock: " span.clock data-clock { (elapsed(order.created_at, clock_end)) }
                @if infused_at.is_some() { " (order to infusion)" } @else { " since the order" } }
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

pub async fn order_page(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let order = service::visible_order(&hub, &session.user, parse_uuid(&id)?)
        .await
        .map_err(refused)?;
    let record = hub
        .store
        .batch_record(order.batch_id)
        .await
        .map_err(|e| refused(e.into()))?;
    let clock = super::schedule::order_clock_markup(&hub, &order).await?;
    Ok(html_page(page(
        &format!("Order {}", order.coi),
        Some((&session.user, &session.csrf)),
        html! {
            h1 { "Order " (order.coi) }
            p.muted { "Patient " (order.patient_pseudonym) " · site " (order.site_id) " · " (order.recipe_id) " v" (order.recipe_version)
                " · collection requested for " (order.requested_collection_date) " · ordered by " (order.physician) }
            @if release::may_review(&session.user) { p { a href=(format!("/batches/{}", order.batch_id)) { "Batch record" } } }
            div id="order-live" { (order_live_markup(&record)) (clock) }
            (live("order-live", &format!("/orders/{}/live", order.order_id)))
        },
    )))
}

pub async fn order_live(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let order = service::visible_order(&hub, &session.user, parse_uuid(&id)?)
        .await
        .map_err(refused)?;
    let record = hub
        .store
        .batch_record(order.batch_id)
        .await
        .map_err(|e| refused(e.into()))?;
    let clock = super::schedule::order_clock_markup(&hub, &order).await?;
    Ok(Html(html! { (order_live_markup(&record)) (clock) }.into_string()).into_response())
}

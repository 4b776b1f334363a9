//! Orders, as physicians see them: the list, the order form, one order's progress.

use super::view::{elapsed, live, page, when, when_in};
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
use chrono_tz::Tz;
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
                td { (super::view::order_badge(o)) }
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
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "COI" } th scope="col" { "Patient" } th scope="col" { "Site" } th scope="col" { "State" } th scope="col" { "Step" } th scope="col" { "Ordered" } } }
                tbody id="order-rows" { (order_rows_markup(&orders)) }
            } }
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
    products: &[(String, String)],
    sites: &[model::Site],
    makes: &std::collections::BTreeMap<String, Vec<String>>,
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
                    @if let Some(e) = err("confirm_second_order") {
                        div.notice.warn id="second-order" role="alert" {
                            p { strong { "This patient already has an open order. " } (e) }
                            label.check for="confirm_second_order" {
                                input type="checkbox" id="confirm_second_order" name="confirm_second_order" value="yes";
                                " Yes, place a second order for this patient"
                            }
                        }
                    }
                    label for="product" { "Product" }
                    select id="product" name="product" {
                        @for (i, (id, title)) in products.iter().enumerate() {
                            option value=(id) selected[form.product == *id || (form.product.is_empty() && i == 0)] { (title) " (" (id) ")" }
                        }
                    }
                    @if let Some(e) = err("product") { p.error { (e) } }
                    label for="site_id" { "Treating site" }
                    select id="site_id" name="site_id" aria-describedby="site_id-makes site_id-error" {
                        @for site in sites.iter().filter(|s| s.status == SiteStatus::Active) {
                            option value=(site.site_id) selected[form.site_id == site.site_id] { (site.name) " (" (site.site_id) ")" }
                        }
                    }
                    // A site makes only the products QA qualified it for.
                    p.muted id="site_id-makes" { "What each site makes: "
                        @for (i, site) in sites.iter().filter(|s| s.status == SiteStatus::Active).enumerate() {
                            @if i > 0 { "; " }
                            (site.site_id) ": "
                            @match makes.get(&site.site_id) { Some(products) => { (products.join(", ")) } None => { "nothing yet" } }
                        }
                        "." }
                    @if let Some(e) = err("site_id") { p.error id="site_id-error" { (e) } }
                    label for="requested_collection_date" { "Requested collection date" }
                    // Text, not the browser's date picker: the picker writes dates in the
                    // browser's own format (02/03 or 03/02), every page here in one.
                    p.muted id="requested_collection_date-hint" { "Year-month-day, for example " (Utc::now().date_naive() + chrono::Days::new(2)) "." }
                    input id="requested_collection_date" name="requested_collection_date" type="text"
                        inputmode="numeric" autocomplete="off" placeholder="YYYY-MM-DD" pattern="[0-9]{4}-[0-9]{2}-[0-9]{2}"
                        aria-describedby="requested_collection_date-hint requested_collection_date-error"
                        value=(form.requested_collection_date);
                    @if let Some(e) = err("requested_collection_date") { p.error id="requested_collection_date-error" { (e) } }
                    p { button type="submit" { "Place order" } }
                }
            }
            @if !free.is_empty() {
                h2 { "Free collection dates" }
                p.muted { "The earliest dates with a collection slot and the instruments free for the whole manufacturing window, at sites that declare their capacity." }
                div.scroll tabindex="0" { table data-free-dates {
                    thead { tr { th scope="col" { "Date" } th scope="col" { "Site" } th scope="col" { "Slot" } th scope="col" { "Expected release" } } }
                    tbody { @for p in free { tr {
                        td { (p.plan.collection_date) } td { (p.plan.site_id) }
                        td { (p.plan.slot + 1) " · " (when_in(p.plan.collection_start(), p.zone)) }
                        td { (when_in(p.expected_release, p.zone)) }
                    } } }
                } }
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
    let makes = service::qualifications::products_by_site(&hub, &session.user)
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
    let products = service::order_products(&hub, &session.user)
        .await
        .map_err(refused)?;
    Ok(html_page(order_form_page(
        &session,
        &products,
        &sites,
        &makes,
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
    /// "yes" when the prescriber confirmed a second open order for the patient.
    #[serde(default)]
    confirm_second_order: String,
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
        confirm_second_order: input.confirm_second_order == "yes",
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
            let makes = service::qualifications::products_by_site(&hub, &session.user)
                .await
                .map_err(refused)?;
            let free = free_dates(&hub, &session).await;
            let products = service::order_products(&hub, &session.user)
                .await
                .map_err(refused)?;
            let mut response = html_page(order_form_page(
                &session, &products, &sites, &makes, &form, &errors, &free,
            ));
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(e) => Err(refused(e)),
    }
}

/// The banners an order's physician must see first (see [`alerts`]).
fn alerts_markup(record: &BatchRecord, zone: Tz) -> Markup {
    html! {
        @for alert in alerts(record) {
            @match alert {
                Alert::Rejected { by, at, reason } => div.notice.bad id="order-rejected" role="alert" {
                    strong { "QA rejected this batch" } " on " (when_in(at, zone)) ", signed by " (by) "."
                    p { "Reason given: " strong { (reason) } }
                    p { "What to do next: this product will not be released for infusion. Talk with QA and the site about the patient's options; if the patient is to be treated, a new collection needs a new order." }
                },
                Alert::Cancelled { by, at, reason } => div.notice.bad id="order-cancelled" role="alert" {
                    strong { "This order was cancelled" } " on " (when_in(at, zone)) " by " (by) "."
                    p { "Reason given: " strong { (reason) } }
                    p { "Nothing more is made or handed over under this order; the site was told to stop." }
                },
                Alert::OutOfSpecification { test, value, recorded_at, released_at, infused_at } => div.notice.bad data-alert="out-of-specification" role="alert" {
                    strong { "Out of specification: " (test) " — " (value) } " (recorded " (when_in(recorded_at, zone)) ")."
                    @if let Some(infused) = infused_at {
                        p { "This result came after the product was infused on " (when_in(infused, zone)) ". Follow the patient as your protocol for an out-of-specification product requires, and contact QA, who review the result." }
                    } @else if let Some(released) = released_at {
                        p { "This result came after QA released the product on " (when_in(released, zone)) ". Do not infuse it until QA has reviewed this result; contact QA." }
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
fn vein_to_vein_markup(clock: &Clock, zone: Tz) -> Markup {
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
                    "starts at collection (apheresis), planned " (when_in(collected.planned, zone)) "."
                }
                (Some(from), Some(to), _) => {
                    span.clock data-clock { (elapsed(from, to)) } " (collection to infusion)"
                }
                (Some(from), None, Some(state)) => {
                    span.clock data-clock data-stopped { (elapsed(from, clock.stopped_at.unwrap_or(from))) }
                    " stopped: the batch was " (stopped(state))
                    @if let Some(at) = clock.stopped_at { " on " (when_in(at, zone)) }
                }
                (Some(from), None, None) => {
                    span.clock data-clock { (elapsed(from, Utc::now())) } " since collection"
                }
            }
        }
    }
}

fn order_live_markup(record: &BatchRecord, clock: &Clock, zone: Tz) -> Markup {
    let order = &record.order;
    let changed = order.progress.unreviewed_changes();
    html! {
        (alerts_markup(record, zone))
        @if !changed.is_empty() {
            div.notice.bad id="changed-after-decision" role="alert" {
                strong { "The batch record changed after QA's decision. " }
                (changed.len()) " record(s) arrived after the batch was " (order.state.as_str().replace('_', " "))
                "; QA has been asked to review them. Check with QA before going on with this product."
            }
        }
        div.card {
            p { "State: " (super::view::order_badge(order))
                @if order.decision_recorded { " · decision recorded at the site" } }
            (vein_to_vein_markup(clock, zone))
            p { "Expected next step: " strong data-next { (next_step(record)) } }
        }
        h2 { "Timeline" }
        div.scroll tabindex="0" { table {
            thead { tr { th scope="col" { "When" } th scope="col" { "Where" } th scope="col" { "What" } th scope="col" { "Details" } } }
            tbody {
                @for entry in timeline(record) {
                    tr { td.muted { (when_in(entry.at, zone)) } td { (entry.source) } td { (entry.what) } td { (entry.detail) } }
                }
            }
        } }
    }
}

/// An order's live part: alerts, state, clock, timeline and the schedule.
async fn live_markup(
    hub: &HubState,
    user: &crate::model::User,
    order: &Order,
) -> Result<Markup, axum::response::Response> {
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
    let zone = crate::service::schedule::site_zone(hub, &order.site_id)
        .await
        .map_err(refused)?;
    let golden = if crate::service::analytics::may_read_golden(user) {
        let steps = crate::service::analytics::golden_of(
            hub,
            order,
            crate::service::analytics::Steps::Latest,
        )
        .await
        .map_err(refused)?;
        Some(super::golden::section(&steps, order.dry_run))
    } else {
        None
    };
    Ok(html! {
        (order_live_markup(&record, &clock, zone))
        (super::schedule::clock_markup(&clock, booking.as_ref(), zone))
        // The step running now (or the last one sampled) over its golden batch,
        // for QA and administrators.
        @if let Some(golden) = golden { (golden) }
    })
}

/// What the physician typed into the order page's change forms, kept when one is
/// refused, with what is wrong.
#[derive(Default)]
struct ChangeForms {
    /// "cancel" or "reschedule": the form that was sent.
    sent: &'static str,
    reason: String,
    collection_date: String,
    errors: BTreeMap<&'static str, String>,
}

/// May this user change the order (its physician, or an administrator)?
fn may_change(session: &Session) -> bool {
    matches!(session.user.role, Role::Physician | Role::Admin)
}

/// Reschedule and cancel, each with its reason, for an order that allows them. Kept
/// outside the live part, so what is typed is never replaced while typing.
fn change_markup(
    session: &Session,
    order: &Order,
    reschedulable: bool,
    forms: &ChangeForms,
) -> Markup {
    let cancellable = order.state.cancellable();
    let kept = |form: &str, text: &str| {
        if forms.sent == form {
            text.to_owned()
        } else {
            String::new()
        }
    };
    let err = |form: &str, field: &str| {
        (forms.sent == form)
            .then(|| forms.errors.get(field).cloned())
            .flatten()
    };
    // The first field a refusal is about takes the focus, so the browser shows it.
    let focus = |form: &str, field: &str| {
        forms.sent == form
            && ["form", "collection_date", "reason", "confirm"]
                .iter()
                .find(|f| forms.errors.contains_key(**f))
                == Some(&field)
    };
    html! {
        @if may_change(session) && (reschedulable || cancellable) {
            h2 id="change" { "Change this order" }
            @if reschedulable {
                section.card id="reschedule" aria-labelledby="reschedule-title" {
                    h3 id="reschedule-title" { "Move the collection" }
                    @if let Some(e) = err("reschedule", "form") { p.error role="alert" { (e) } }
                    form method="post" action=(format!("/orders/{}/reschedule", order.order_id)) novalidate {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="collection_date" { "New collection date" }
                        p.muted id="collection_date-hint" { "Year-month-day, for example " (Utc::now().date_naive() + chrono::Days::new(7)) "." }
                        input id="collection_date" name="collection_date" type="text" required
                            inputmode="numeric" autocomplete="off" placeholder="YYYY-MM-DD" pattern="[0-9]{4}-[0-9]{2}-[0-9]{2}"
                            autofocus[focus("reschedule", "collection_date")]
                            value=(kept("reschedule", &forms.collection_date))
                            aria-describedby="collection_date-hint collection_date-error"
                            aria-invalid=[err("reschedule", "collection_date").map(|_| "true")];
                        @if let Some(e) = err("reschedule", "collection_date") { p.error id="collection_date-error" { (e) } }
                        label for="reschedule-reason" { "Why (kept in the audit trail)" }
                        textarea id="reschedule-reason" name="reason" rows="2" required
                            autofocus[focus("reschedule", "reason")]
                            aria-describedby="reschedule-reason-error"
                            aria-invalid=[err("reschedule", "reason").map(|_| "true")] { (kept("reschedule", &forms.reason)) }
                        @if let Some(e) = err("reschedule", "reason") { p.error id="reschedule-reason-error" { (e) } }
                        p { button type="submit" id="reschedule-submit" { "Move the collection" } }
                    }
                }
            }
            @if cancellable {
                section.card id="cancel" aria-labelledby="cancel-title" {
                    h3 id="cancel-title" { "Cancel this order" }
                    p { "The site stops making this product at once and nothing more is made or handed over under this order. This cannot be undone: treating the patient later needs a new order." }
                    @if let Some(e) = err("cancel", "form") { p.error role="alert" { (e) } }
                    form method="post" action=(format!("/orders/{}/cancel", order.order_id)) novalidate {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="cancel-reason" { "Why (shown to the site and kept in the audit trail)" }
                        textarea id="cancel-reason" name="reason" rows="2" required
                            autofocus[focus("cancel", "reason")]
                            aria-describedby="cancel-reason-error"
                            aria-invalid=[err("cancel", "reason").map(|_| "true")] { (kept("cancel", &forms.reason)) }
                        @if let Some(e) = err("cancel", "reason") { p.error id="cancel-reason-error" { (e) } }
                        label.check for="cancel-confirm" {
                            input type="checkbox" id="cancel-confirm" name="confirm" value="yes" aria-describedby="cancel-confirm-error"
                                autofocus[focus("cancel", "confirm")];
                            " I understand the site stops this batch and it cannot be undone"
                        }
                        @if let Some(e) = err("cancel", "confirm") { p.error id="cancel-confirm-error" { (e) } }
                        p { button.danger type="submit" id="cancel-submit" { "Cancel this order" } }
                    }
                }
            }
        }
    }
}

async fn render_order(
    hub: &HubState,
    session: &Session,
    order: &Order,
    forms: &ChangeForms,
) -> Page {
    let live_part = live_markup(hub, &session.user, order).await?;
    let booking = hub
        .store
        .booking(order.order_id)
        .await
        .map_err(|e| refused(e.into()))?;
    let reschedulable =
        crate::store::schedule::check_reschedulable(order, booking.as_ref()).is_ok();
    // The physician is told that deviations exist, not what they are (QA's work).
    let (deviations, open_deviations) = service::deviations::counts(hub, order)
        .await
        .map_err(refused)?;
    let mut response = html_page(page(
        &format!("Order {}", order.coi),
        Some(session),
        html! {
            h1 { "Order " (order.coi) }
            p.muted { "Patient " (order.patient_pseudonym) " · site " (order.site_id) " · " (order.recipe_id) " v" (order.recipe_version)
                " · collection requested for " (order.requested_collection_date) " · ordered by " (order.physician) }
            @if !forms.errors.is_empty() {
                div.notice.bad role="alert" id="change-refused" {
                    @if forms.sent == "cancel" { strong { "The order was not cancelled." } } @else { strong { "The collection was not moved." } }
                    " " a href=(format!("#{}", forms.sent)) { "See what to correct below." }
                }
            }
            @if release::may_review(&session.user) { p { a href=(format!("/batches/{}", order.batch_id)) { "Batch record" } } }
            @if deviations > 0 {
                p data-deviations {
                    "Deviations: " (deviations) " raised on this batch, " (open_deviations) " still open. "
                    span.muted { "QA investigates each and closes it before the batch is released; ask QA for details." }
                }
            }
            div id="order-live" { (live_part) }
            (live("order-live", &format!("/orders/{}/live", order.order_id)))
            (change_markup(session, order, reschedulable, forms))
        },
    ));
    if !forms.errors.is_empty() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

pub async fn order_page(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let order = service::visible_order(&hub, &session.user, parse_uuid(&id)?)
        .await
        .map_err(refused)?;
    render_order(&hub, &session, &order, &ChangeForms::default()).await
}

#[derive(Deserialize)]
pub struct ChangeForm {
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    collection_date: String,
    #[serde(default)]
    confirm: String,
}

/// A refusal of a change form, shown in the order page beside the field it is about.
async fn change_refused(
    hub: &HubState,
    session: &Session,
    order_id: uuid::Uuid,
    mut forms: ChangeForms,
    error: service::Error,
) -> Page {
    match error {
        service::Error::Field { field, message } => {
            forms.errors.insert(field, message);
        }
        service::Error::Store(
            store::Error::FailedPrecondition(message) | store::Error::Unavailable(message),
        ) => {
            forms.errors.insert("form", message);
        }
        other => return Err(refused(other)),
    }
    let order = service::visible_order(hub, &session.user, order_id)
        .await
        .map_err(refused)?;
    render_order(hub, session, &order, &forms).await
}

pub async fn cancel_order(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(input): Form<ChangeForm>,
) -> Page {
    session.check_csrf(&input.csrf)?;
    let order_id = parse_uuid(&id)?;
    let forms = ChangeForms {
        sent: "cancel",
        reason: input.reason.clone(),
        ..ChangeForms::default()
    };
    if input.confirm != "yes" {
        let error = service::Error::Field {
            field: "confirm",
            message: "Tick the box to confirm that the site is to stop this batch.".into(),
        };
        // The reason is checked too, so both are said at once.
        let mut forms = forms;
        if let Err(service::Error::Field { field, message }) =
            service::sentence_reason(&input.reason, "cancel this order")
        {
            forms.errors.insert(field, message);
        }
        return change_refused(&hub, &session, order_id, forms, error).await;
    }
    match service::cancel_order(&hub, &session.user, order_id, &input.reason).await {
        Ok(_) => Ok(Redirect::to(&format!("/orders/{order_id}")).into_response()),
        Err(e) => change_refused(&hub, &session, order_id, forms, e).await,
    }
}

pub async fn reschedule_order(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(input): Form<ChangeForm>,
) -> Page {
    session.check_csrf(&input.csrf)?;
    let order_id = parse_uuid(&id)?;
    let forms = ChangeForms {
        sent: "reschedule",
        reason: input.reason.clone(),
        collection_date: input.collection_date.clone(),
        ..ChangeForms::default()
    };
    match service::schedule::reschedule(
        &hub,
        &session.user,
        order_id,
        &input.collection_date,
        &input.reason,
    )
    .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/orders/{order_id}")).into_response()),
        Err(e) => change_refused(&hub, &session, order_id, forms, e).await,
    }
}

pub async fn order_live(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let order = service::visible_order(&hub, &session.user, parse_uuid(&id)?)
        .await
        .map_err(refused)?;
    Ok(Html(
        live_markup(&hub, &session.user, &order)
            .await?
            .into_string(),
    )
    .into_response())
}

//! The console's pages, one handler per route.

// Handlers answer `Result<Response, Response>`, axum's way of returning an error
// page early with `?`; boxing the response would add noise and save nothing.
#![allow(clippy::result_large_err)]

use super::view::{chart, elapsed, live, page, state_badge, when};
use super::{
    cookie, html_page, parse_uuid, problem, refused, HubState, Page, Session, LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
};
use crate::auth::{new_secret, secret_sha256};
use crate::model;
use crate::model::{BatchRecord, Order, Role, SiteStatus};
use crate::record::{next_step, timeline};
use crate::record::{Exception, Review};
use crate::service::{self, OrderForm};
use crate::service::{admin, release};
use crate::store;
use axum::extract::{Form, Path};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use carrel_proto::event::{EventKind, ReleaseMeaning};
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::BTreeMap;

// ---- sign-in ----

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    csrf: String,
}

fn login_page(csrf: &str, username: &str, error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            div.card {
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="username" { "User name" }
                    input id="username" name="username" autocomplete="username" required autofocus value=(username);
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                    p { button type="submit" { "Sign in" } }
                }
            }
        },
    )
}

fn with_login_csrf(csrf: &str, body: Markup) -> Response {
    let cookie =
        format!("{LOGIN_CSRF_COOKIE}={csrf}; Path=/login; Secure; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Html(body.into_string())).into_response()
}

pub async fn login_form() -> Response {
    let csrf = new_secret();
    with_login_csrf(&csrf, login_page(&csrf, "", None))
}

pub async fn login(hub: HubState, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    if cookie(&headers, LOGIN_CSRF_COOKIE).as_deref() != Some(form.csrf.as_str())
        || form.csrf.is_empty()
    {
        return problem(
            StatusCode::FORBIDDEN,
            "The sign-in form has expired; reload the page and try again.",
        );
    }
    match service::sign_in(&hub, &form.username, &form.password).await {
        Ok((token, _, user)) => {
            let session =
                format!("{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict");
            let clear = format!(
                "{LOGIN_CSRF_COOKIE}=; Path=/login; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
            );
            let home = landing(user.role);
            // Two Set-Cookie headers: appended, not the second replacing the first.
            (
                AppendHeaders([(header::SET_COOKIE, session), (header::SET_COOKIE, clear)]),
                Redirect::to(home),
            )
                .into_response()
        }
        Err(service::Error::Store(e)) => refused(service::Error::Store(e)),
        Err(e) => {
            let csrf = new_secret();
            let mut response = with_login_csrf(
                &csrf,
                login_page(&csrf, &form.username, Some(&e.to_string())),
            );
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: String,
}

pub async fn logout(
    hub: HubState,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        hub.store
            .delete_session(&secret_sha256(&token))
            .await
            .map_err(|e| refused(e.into()))?;
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict");
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}

fn landing(role: Role) -> &'static str {
    match role {
        Role::Physician | Role::Technician => "/orders",
        Role::Qa => "/release",
        Role::Admin => "/admin/sites",
    }
}

pub async fn home(session: Session) -> Response {
    Redirect::to(landing(session.user.role)).into_response()
}

// ---- orders ----

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
    html! {
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

// ---- QA ----

pub async fn release_queue(hub: HubState, session: Session) -> Page {
    let pending = release::queue(&hub, &session.user).await.map_err(refused)?;
    Ok(html_page(page(
        "Release queue",
        Some((&session.user, &session.csrf)),
        html! {
            h1 { "Release queue" }
            table {
                thead { tr { th { "COI" } th { "Patient" } th { "Site" } th { "Exceptions" } th { "Complete since" } } }
                tbody {
                    @for o in &pending {
                        tr {
                            td { a href=(format!("/batches/{}", o.batch_id)) { (o.coi) } }
                            td { (o.patient_pseudonym) } td { (o.site_id) }
                            td { @if o.progress.exceptions.is_empty() { span.badge.pass { "none" } } @else { span.badge.rejected { (o.progress.exceptions.len()) } } }
                            td.muted { (when(o.updated_at)) }
                        }
                    }
                    @if pending.is_empty() { tr { td colspan="5" .muted { "Nothing awaits release." } } }
                }
            }
        },
    )))
}

fn batch_record_markup(session: &Session, review: &Review, notice: Option<&str>) -> Markup {
    let order = &review.order;
    let sha = &review.record_sha256;
    html! {
        h1 { "Batch record " (order.coi) }
        p.muted { "Patient " (order.patient_pseudonym) " · site " (order.site_id) " · " (review.recipe_title) " v" (review.recipe_version)
            " · batch " (order.batch_id) }
        p { "State: " (state_badge(order.state)) }
        @if let Some(notice) = notice { div.notice.bad role="alert" { (notice) } }
        @for signed in &review.signatures {
            @let sig = &signed.signature;
            div.notice.ok { strong.manifestation { (signed.manifestation) }
                @if !sig.reason.is_empty() { p { "Reason: " (sig.reason) } }
                p.muted { "Bound to record " code { (sig.record_sha256) } }
            }
        }
        h2 id="exceptions" { "Exceptions (" (review.exceptions.len()) ")" }
        table.exceptions {
            thead { tr { th { "#" } th { "When" } th { "By" } th { "What" } th { "Details" } } }
            tbody {
                @for exception in &review.exceptions {
                    @match exception {
                        Exception::Record(e) => { tr { td { (e.seq) } td.muted { (when(e.recorded_at)) } td { (e.recorded_by) } td { strong { (e.what) } } td { (e.detail) } } }
                        Exception::Anomaly(anomaly) => { tr { td { "hub" } td {} td { "hub check" } td { strong { "anomaly" } } td { (anomaly) } } }
                    }
                }
                @if review.exceptions.is_empty() { tr { td colspan="5" .muted { "No exceptions." } } }
            }
        }
        h2 { "QC results against specification" }
        table {
            thead { tr { th { "Test" } th { "Result" } th { "Specification" } th { "Hub" } th { "Site" } } }
            tbody {
                @for q in &review.qc {
                    tr {
                        td { (q.test_name.clone().unwrap_or_else(|| q.test_id.clone())) @if let Some(method) = &q.method { span.muted { " (" (method) ")" } } }
                        td { (q.value) " " (q.unit) }
                        td { (q.specification) }
                        td { span class={ "badge " (outcome(q.hub_outcome)) } { (outcome(q.hub_outcome).replace('_', " ")) } @if !q.reason.is_empty() { br; span.muted { (q.reason) } } }
                        td { (outcome(q.site_outcome).replace('_', " ")) }
                    }
                }
            }
        }
        h2 { "Steps" }
        table {
            thead { tr { th { "Step" } th { "Started" } th { "Completed" } } }
            tbody { @for step in &review.steps {
                tr { td { (step.name) }
                     td.muted { (when(step.started)) } td.muted { (step.completed.map(when).unwrap_or_else(|| "running".into())) } }
            } }
        }
        h2 { "Process parameters" }
        @for series in &review.parameters {
            @if series.points.len() >= 3 {
                (chart(&format!("{}: {}", series.step_id, series.parameter), &series.unit, &series.points, series.range))
            }
        }
        h2 { "Record (" (review.entries.len()) " entries)" }
        details {
            summary { "Every entry, in the order the site recorded them" }
            table {
                thead { tr { th { "#" } th { "When" } th { "By" } th { "What" } th { "Details" } } }
                tbody { @for e in &review.entries {
                    tr { td { (e.seq) } td.muted { (when(e.recorded_at)) } td { (e.recorded_by) } td { (e.what) } td { (e.detail) } }
                } }
            }
        }
        h2 { "Audit trail" }
        table {
            thead { tr { th { "#" } th { "When" } th { "Who" } th { "Action" } th { "Change" } th { "Reason" } } }
            tbody { @for a in &review.audit {
                tr { td { (a.position) } td.muted { (when(a.at)) } td { (a.actor) } td { (a.action) }
                     td { @if !a.old_value.is_empty() { (a.old_value) " → " } (a.new_value) } td { (a.reason) } }
            } }
        }
        p.muted { "Record SHA-256: " code id="record-sha" { (sha) } }
        @if review.awaits_decision() && release::may_sign(&session.user) {
            h2 { "Decision" }
            div.card {
                form id="sign-form" method="post" action=(format!("/batches/{}/sign", order.batch_id)) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="record_sha256" value=(sha);
                    label for="meaning" { "Meaning" }
                    select id="meaning" name="meaning" { option value="released" { "Released" } option value="rejected" { "Rejected" } }
                    label for="reason" { "Reason (required to reject)" }
                    textarea id="reason" name="reason" rows="2" {}
                    label for="password" { "Your password, to sign" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                    p.muted { "Signing binds your signature to this record as shown (SHA-256 above). If the record changes before you confirm, the signature is refused." }
                    div id="manifestation-preview" hidden {
                        p { "Your signature will read:" }
                        p.manifestation id="manifestation-text" data-name=(session.user.full_name) data-user=(session.user.username) {}
                    }
                    p {
                        button type="button" id="review-signature" { "Review signature" }
                        " "
                        button type="submit" id="confirm-signature" { "Confirm signature" }
                    }
                }
            }
            script { (maud::PreEscaped(SIGN_SCRIPT)) }
        }
    }
}

/// Shows the signature manifestation (printed name, date-time, meaning) before the
/// signature is confirmed. Without JavaScript the form still works.
const SIGN_SCRIPT: &str = r#"(function(){
var b=document.getElementById('review-signature'),f=document.getElementById('sign-form');
var box=document.getElementById('manifestation-preview'),t=document.getElementById('manifestation-text');
function show(){var m=f.meaning.value==='released'?'Released':'Rejected';var d=new Date().toISOString().replace('T',' ').slice(0,19);
t.textContent=m+' by '+t.dataset.name+' ('+t.dataset.user+') on '+d+' UTC';box.hidden=false;}
b.addEventListener('click',show);f.meaning.addEventListener('change',function(){if(!box.hidden)show();});
})();"#;

fn outcome(o: carrel_proto::recipe::Outcome) -> &'static str {
    match o {
        carrel_proto::recipe::Outcome::Pass => "pass",
        carrel_proto::recipe::Outcome::OutOfSpecification => "out_of_specification",
    }
}

pub async fn batch_record(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let review = release::review(&hub, &session.user, parse_uuid(&id)?)
        .await
        .map_err(refused)?;
    Ok(html_page(page(
        &format!("Batch record {}", review.order.coi),
        Some((&session.user, &session.csrf)),
        batch_record_markup(&session, &review, None),
    )))
}

#[derive(Deserialize)]
pub struct SignInput {
    csrf: String,
    meaning: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    password: String,
    record_sha256: String,
}

pub async fn sign(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(input): Form<SignInput>,
) -> Page {
    session.check_csrf(&input.csrf)?;
    let batch_id = parse_uuid(&id)?;
    let meaning = ReleaseMeaning::parse(&input.meaning).ok_or_else(|| {
        problem(
            StatusCode::BAD_REQUEST,
            "meaning must be released or rejected",
        )
    })?;
    let form = release::SignForm {
        batch_id,
        meaning,
        password: &input.password,
        record_sha256: &input.record_sha256,
        reason: &input.reason,
    };
    match release::sign(&hub, &session.user, form).await {
        Ok(_) => Ok(Redirect::to(&format!("/batches/{batch_id}")).into_response()),
        Err(
            e @ (service::Error::Field { .. }
            | service::Error::Unauthenticated(_)
            | service::Error::Store(store::Error::FailedPrecondition(_))),
        ) => {
            let review = release::review(&hub, &session.user, batch_id)
                .await
                .map_err(refused)?;
            let mut response = html_page(page(
                &format!("Batch record {}", review.order.coi),
                Some((&session.user, &session.csrf)),
                batch_record_markup(&session, &review, Some(&format!("Not signed: {e}"))),
            ));
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(e) => Err(refused(e)),
    }
}

// ---- administration ----

fn sites_markup(
    session: &Session,
    sites: &[model::Site],
    hub: &crate::app::Hub,
    notice: Option<Markup>,
) -> Markup {
    page(
        "Sites",
        Some((&session.user, &session.csrf)),
        html! {
            h1 { "Sites" }
            @if let Some(notice) = notice { (notice) }
            table {
                thead { tr { th { "Site" } th { "Name" } th { "Status" } th { "Link" } th { "Last contact" } th { "Events" } th { "Commands acked" } th { "Certificate" } th {} } }
                tbody { @for s in sites {
                    tr data-site=(s.site_id) {
                        td { (s.site_id) } td { (s.name) } td { (s.status.as_str()) }
                        td { @if hub.links.is_connected(&s.site_id) { span.badge.pass { "connected" } } @else { span.badge { "not connected" } } }
                        td.muted { (s.last_contact_at.map(when).unwrap_or_else(|| "never".into())) }
                        td { (s.acked_event_seq) } td { (s.acked_command_seq) "/" (s.last_command_seq) }
                        td.certificate {
                            @if let Some(until) = s.cert_not_after {
                                "until " (until.format("%Y-%m-%d"))
                                @if until - chrono::Utc::now() < chrono::Duration::days(i64::from(hub.config.certificate_warning_days)) {
                                    " " span.badge.rejected { "expiring" }
                                }
                            } @else if s.cert_sha256.is_some() { span.muted { "expiry not recorded" } }
                            @if s.holds_certificate_of_another_ca(hub.ca.fingerprint()) {
                                " " span.badge { "previous CA" }
                            }
                        }
                        td {
                            @if s.status == SiteStatus::Active {
                                form method="post" action=(format!("/admin/sites/{}/suspend", s.site_id)) {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input name="reason" placeholder="reason" required aria-label="reason for suspending";
                                    button.danger type="submit" { "Suspend" }
                                }
                            } @else if s.status == SiteStatus::Suspended {
                                form method="post" action=(format!("/admin/sites/{}/resume", s.site_id)) {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input name="reason" placeholder="reason" required aria-label="reason for resuming";
                                    button type="submit" { "Resume" }
                                }
                                form method="post" action=(format!("/admin/sites/{}/cease", s.site_id)) {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input name="reason" placeholder="reason" required aria-label="reason for ceasing";
                                    button.danger type="submit" { "Cease (final)" }
                                }
                            }
                        }
                    }
                } }
            }
            h2 { "Onboard a site" }
            div.card {
                form method="post" action="/admin/sites" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="site_id" { "Site id (lower case, e.g. st-elsewhere)" }
                    input id="site_id" name="site_id" required;
                    label for="name" { "Name" }
                    input id="name" name="name" required;
                    p { button type="submit" { "Register and make an enrollment token" } }
                }
            }
        },
    )
}

pub async fn sites(hub: HubState, session: Session) -> Page {
    let sites = admin::sites_to_administer(&hub, &session.user)
        .await
        .map_err(refused)?;
    Ok(html_page(sites_markup(&session, &sites, &hub, None)))
}

#[derive(Deserialize)]
pub struct AddSiteForm {
    csrf: String,
    site_id: String,
    name: String,
}

pub async fn add_site(hub: HubState, session: Session, Form(form): Form<AddSiteForm>) -> Page {
    session.check_csrf(&form.csrf)?;
    let result =
        match admin::register_site(&hub, &session.user, &form.site_id, &form.name, None).await {
            Err(e @ service::Error::PermissionDenied(_)) => return Err(refused(e)),
            result => result,
        };
    let notice = match &result {
        Ok(registered) => html! { div.notice.ok {
            p { "Site " (registered.site.site_id) " registered. Give its administrator this one-time enrollment token (valid until " (when(registered.expires_at)) "):" }
            p.token id="enrollment-token" { (registered.token) }
            p.muted { "On the site machine: carrel-site-agent enroll --hub https://HUB:PORT --token TOKEN --data-dir DIR" }
        } },
        Err(e) => html! { div.notice.bad role="alert" { (e) } },
    };
    let sites = admin::sites_to_administer(&hub, &session.user)
        .await
        .map_err(refused)?;
    let mut response = html_page(sites_markup(&session, &sites, &hub, Some(notice)));
    if result.is_err() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct ReasonForm {
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// Suspend, resume or cease a site (`/admin/sites/{id}/{action}`), with a reason.
pub async fn change_site_status(
    hub: HubState,
    session: Session,
    Path((site_id, action)): Path<(String, String)>,
    Form(form): Form<ReasonForm>,
) -> Page {
    let status = match action.as_str() {
        "suspend" => SiteStatus::Suspended,
        "resume" => SiteStatus::Active,
        "cease" => SiteStatus::Ceased,
        other => {
            return Err(problem(
                StatusCode::NOT_FOUND,
                format!("no site action {other:?} (suspend, resume or cease)"),
            ))
        }
    };
    session.check_csrf(&form.csrf)?;
    admin::change_site_status(&hub, &session.user, &site_id, status, &form.reason)
        .await
        .map_err(refused)?;
    Ok(Redirect::to("/admin/sites").into_response())
}

fn users_markup(session: &Session, users: &[model::User], notice: Option<Markup>) -> Markup {
    page(
        "Users",
        Some((&session.user, &session.csrf)),
        html! {
            h1 { "Users" }
            @if let Some(notice) = notice { (notice) }
            table {
                thead { tr { th { "User" } th { "Name" } th { "Role" } } }
                tbody { @for u in users { tr { td { (u.username) } td { (u.full_name) } td { (u.role) } } } }
            }
            h2 { "Add a user" }
            div.card {
                form method="post" action="/admin/users" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="username" { "User name" } input id="username" name="username" required;
                    label for="full_name" { "Printed name (shown on signatures)" } input id="full_name" name="full_name" required;
                    label for="role" { "Role" }
                    select id="role" name="role" { option { "physician" } option { "qa" } option { "technician" } option { "admin" } }
                    label for="password" { "Initial password (10 characters or more)" }
                    input id="password" name="password" type="password" autocomplete="new-password" required;
                    p { button type="submit" { "Add user" } }
                }
            }
        },
    )
}

pub async fn users(hub: HubState, session: Session) -> Page {
    let users = admin::users(&hub, &session.user).await.map_err(refused)?;
    Ok(html_page(users_markup(&session, &users, None)))
}

#[derive(Deserialize)]
pub struct AddUserForm {
    csrf: String,
    username: String,
    full_name: String,
    role: String,
    password: String,
}

pub async fn add_user(hub: HubState, session: Session, Form(form): Form<AddUserForm>) -> Page {
    session.check_csrf(&form.csrf)?;
    let result = match Role::parse(&form.role) {
        Some(role) => {
            let new = admin::NewUser {
                username: &form.username,
                full_name: &form.full_name,
                role,
                password: &form.password,
            };
            match admin::add_user(&hub, &session.user, new).await {
                Ok(user) => Ok(format!("User {} added.", user.username)),
                Err(e @ service::Error::PermissionDenied(_)) => return Err(refused(e)),
                Err(e) => Err(e.to_string()),
            }
        }
        None => Err(format!("{:?} is not a role", form.role)),
    };
    let notice = match &result {
        Ok(text) => html! { div.notice.ok { (text) } },
        Err(text) => html! { div.notice.bad role="alert" { (text) } },
    };
    let users = admin::users(&hub, &session.user).await.map_err(refused)?;
    Ok(html_page(users_markup(&session, &users, Some(notice))))
}

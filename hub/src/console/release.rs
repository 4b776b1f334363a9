//! QA's release: the queue, the batch record reviewed exceptions first, and the
//! electronic signature.

use super::view::{chart, page, state_badge, when};
use super::{html_page, parse_uuid, problem, refused, HubState, Page, Session};
use crate::record::{Exception, Review};
use crate::service;
use crate::service::release;
use crate::store;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use carrel_proto::event::ReleaseMeaning;
use maud::{html, Markup};
use serde::Deserialize;

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

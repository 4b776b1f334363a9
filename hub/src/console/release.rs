//! QA's release: the queue, the batch record reviewed exceptions first, and the
//! electronic signature.

use super::view::{chart, page, state_badge, when};
use super::{html_page, parse_uuid, problem, refused, HubState, Page, Session};
use crate::app::Hub;
use crate::record::{self, Exception, Review};
use crate::service;
use crate::service::release;
use crate::store;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use carrel_proto::event::ReleaseMeaning;
use chrono::Utc;
use hmac::{Hmac, Mac};
use maud::{html, Markup};
use serde::Deserialize;
use sha2::Sha256;
use uuid::Uuid;

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

fn batch_record_markup(
    session: &Session,
    review: &Review,
    notice: Option<&str>,
    decision: &Decision,
) -> Markup {
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
            h2 id="decision" { "Decision" }
            div.card { (decision_markup(session, review, decision)) }
        }
    }
}

/// Where a QA person's decision stands on the batch record page. Signing takes two
/// steps: choose the meaning (none is chosen for you) and a reason, then read the
/// signature's wording and confirm it with the password. After any error the page
/// comes back at the same step with everything entered kept, except the password.
enum Decision {
    Choose {
        meaning: Option<ReleaseMeaning>,
        reason: String,
        /// The field that is wrong (`meaning`, `reason` or `form`) and why.
        error: Option<(&'static str, String)>,
    },
    Confirm {
        meaning: ReleaseMeaning,
        reason: String,
        error: Option<String>,
    },
}

impl Decision {
    fn start() -> Decision {
        Decision::Choose {
            meaning: None,
            reason: String::new(),
            error: None,
        }
    }
}

/// Binds a confirmation to the decision that was reviewed: a MAC, keyed with the
/// session's CSRF secret, of the batch, the record's hash, the meaning and the
/// reason. A confirmation whose fields differ from what the signer read is refused.
fn reviewed_token(
    session: &Session,
    batch_id: Uuid,
    sha: &str,
    meaning: ReleaseMeaning,
    reason: &str,
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(session.csrf.as_bytes())
        .expect("HMAC takes a key of any length");
    for part in [
        batch_id.to_string().as_str(),
        sha,
        meaning.as_str(),
        reason.trim(),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

fn decision_markup(session: &Session, review: &Review, decision: &Decision) -> Markup {
    let batch_id = review.order.batch_id;
    let sha = &review.record_sha256;
    let action = format!("/batches/{batch_id}/sign");
    match decision {
        Decision::Choose {
            meaning,
            reason,
            error,
        } => {
            let err = |field: &str| {
                error
                    .as_ref()
                    .filter(|(f, _)| *f == field)
                    .map(|(_, m)| m.clone())
            };
            let checked = |m: ReleaseMeaning| *meaning == Some(m);
            html! {
                form id="decision-form" method="post" action=(action) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="record_sha256" value=(sha);
                    input type="hidden" name="step" value="review";
                    @if let Some(e) = err("form") { p.error role="alert" { (e) } }
                    fieldset aria-describedby="meaning-error" {
                        legend { "Your decision on this batch" }
                        label { input type="radio" id="meaning-released" name="meaning" value="released" required checked[checked(ReleaseMeaning::Released)]; " Release it for infusion" }
                        label { input type="radio" id="meaning-rejected" name="meaning" value="rejected" required checked[checked(ReleaseMeaning::Rejected)]; " Reject it" }
                    }
                    @if let Some(e) = err("meaning") { p.error id="meaning-error" role="alert" { (e) } }
                    label for="reason" { "Reason (required to reject)" }
                    textarea id="reason" name="reason" rows="2" aria-describedby="reason-error" { (reason) }
                    @if let Some(e) = err("reason") { p.error id="reason-error" role="alert" { (e) } }
                    p { button type="submit" id="review-signature" { "Review signature" } }
                }
            }
        }
        Decision::Confirm {
            meaning,
            reason,
            error,
        } => {
            let user = &session.user;
            let wording =
                record::manifestation(&user.full_name, &user.username, *meaning, Utc::now());
            let token = reviewed_token(session, batch_id, sha, *meaning, reason);
            html! {
                p { "Your signature will read:" }
                p.manifestation id="manifestation-text" { (wording) }
                @if !reason.trim().is_empty() { p { "Reason: " (reason) } }
                p.muted { "Signing binds your signature to this record as shown (SHA-256 above). If the record changes before you confirm, the signature is refused." }
                @if let Some(e) = error { p.error id="password-error" role="alert" { (e) } }
                form id="sign-form" method="post" action=(action) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="record_sha256" value=(sha);
                    input type="hidden" name="step" value="confirm";
                    input type="hidden" name="meaning" value=(meaning.as_str());
                    input type="hidden" name="reason" value=(reason);
                    input type="hidden" name="reviewed" value=(token);
                    label for="password" { "Your password, to sign" }
                    input id="password" name="password" type="password" autocomplete="current-password" required autofocus aria-describedby="password-error";
                    p { button type="submit" id="confirm-signature" { "Confirm signature" } }
                }
                form method="post" action=(action) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="record_sha256" value=(sha);
                    input type="hidden" name="step" value="change";
                    input type="hidden" name="meaning" value=(meaning.as_str());
                    input type="hidden" name="reason" value=(reason);
                    button.secondary type="submit" id="change-decision" { "Change the decision" }
                }
            }
        }
    }
}

fn outcome(o: carrel_proto::recipe::Outcome) -> &'static str {
    match o {
        carrel_proto::recipe::Outcome::Pass => "pass",
        carrel_proto::recipe::Outcome::OutOfSpecification => "out_of_specification",
    }
}

pub async fn batch_record(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let batch_id = parse_uuid(&id)?;
    decision_page(
        &hub,
        &session,
        batch_id,
        StatusCode::OK,
        None,
        Decision::start(),
    )
    .await
}

/// The batch record page, read afresh, with the decision at the step given;
/// `status` is 422 when the page answers a refusal.
async fn decision_page(
    hub: &Hub,
    session: &Session,
    batch_id: Uuid,
    status: StatusCode,
    notice: Option<String>,
    decision: Decision,
) -> Page {
    let review = release::review(hub, &session.user, batch_id)
        .await
        .map_err(refused)?;
    let mut response = html_page(page(
        &format!("Batch record {}", review.order.coi),
        Some((&session.user, &session.csrf)),
        batch_record_markup(session, &review, notice.as_deref(), &decision),
    ));
    *response.status_mut() = status;
    Ok(response)
}

#[derive(Deserialize)]
pub struct SignInput {
    csrf: String,
    /// `review` (meaning and reason chosen), `confirm` (password given) or
    /// `change` (back to choosing, with the choice kept).
    step: String,
    #[serde(default)]
    meaning: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    reviewed: String,
    record_sha256: String,
}

/// Both steps of a signature: `review` checks the choice and shows the wording to
/// sign; `confirm` signs, refusing anything other than what was reviewed. Every
/// refusal comes back on the record page (422) with the input kept.
pub async fn sign(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(input): Form<SignInput>,
) -> Page {
    session.check_csrf(&input.csrf)?;
    let batch_id = parse_uuid(&id)?;
    let meaning = ReleaseMeaning::parse(&input.meaning);
    let reason = input.reason.clone();
    let choose = |field: &'static str, message: &str| Decision::Choose {
        meaning,
        reason: reason.clone(),
        error: Some((field, message.to_owned())),
    };
    let refusal = StatusCode::UNPROCESSABLE_ENTITY;
    let Some(meaning) = meaning else {
        let decision = choose("meaning", "Choose whether to release or reject the batch.");
        return decision_page(&hub, &session, batch_id, refusal, None, decision).await;
    };
    match input.step.as_str() {
        "change" => {
            let decision = Decision::Choose {
                meaning: Some(meaning),
                reason,
                error: None,
            };
            decision_page(&hub, &session, batch_id, StatusCode::OK, None, decision).await
        }
        "review" => {
            if meaning == ReleaseMeaning::Rejected && input.reason.trim().is_empty() {
                let decision = choose(
                    "reason",
                    "A rejection needs a reason: say what is wrong with the batch.",
                );
                return decision_page(&hub, &session, batch_id, refusal, None, decision).await;
            }
            let decision = Decision::Confirm {
                meaning,
                reason,
                error: None,
            };
            decision_page(&hub, &session, batch_id, StatusCode::OK, None, decision).await
        }
        "confirm" => {
            let expected =
                reviewed_token(&session, batch_id, &input.record_sha256, meaning, &reason);
            if input.reviewed != expected {
                tracing::warn!(signer = %session.user.username, %batch_id, "refused: a confirmation that differs from the decision reviewed");
                let decision = choose(
                    "form",
                    "Not signed: the decision differs from the one you reviewed. Check it and review the signature again.",
                );
                return decision_page(&hub, &session, batch_id, refusal, None, decision).await;
            }
            let form = release::SignForm {
                batch_id,
                meaning,
                password: &input.password,
                record_sha256: &input.record_sha256,
                reason: &input.reason,
            };
            let (notice, decision) = match release::sign(&hub, &session.user, form).await {
                Ok(_) => return Ok(Redirect::to(&format!("/batches/{batch_id}")).into_response()),
                Err(e @ service::Error::Unauthenticated(_)) => (
                    None,
                    Decision::Confirm {
                        meaning,
                        reason,
                        error: Some(format!("{e}. Type your password again.")),
                    },
                ),
                Err(e @ service::Error::Field { field, .. }) => {
                    (None, choose(field, &e.to_string()))
                }
                // The record changed since it was reviewed: the page shows the new one.
                Err(e @ service::Error::Store(store::Error::FailedPrecondition(_))) => (
                    Some(format!("Not signed: {e}")),
                    Decision::Choose {
                        meaning: Some(meaning),
                        reason,
                        error: None,
                    },
                ),
                Err(e) => return Err(refused(e)),
            };
            decision_page(&hub, &session, batch_id, refusal, notice, decision).await
        }
        other => Err(problem(
            StatusCode::BAD_REQUEST,
            format!("unknown signing step {other:?}: reload the batch record"),
        )),
    }
}

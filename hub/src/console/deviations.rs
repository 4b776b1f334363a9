//! Deviations for QA: the list (open first), one deviation with its investigation
//! notes, the note form and the signed closure, and a deviation raised at the hub
//! from a batch record page. The rules are [`service::deviations`]'s.

use super::view::{page, proof_fields, when};
use super::{html_page, parse_uuid, refused, HubState, Page, Session};
use crate::app::Hub;
use crate::model::deviation::{Deviation, Origin, CLASSIFICATIONS};
use crate::service;
use crate::service::deviations;
use crate::service::release;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

/// The page of one deviation.
fn link(d: &Deviation) -> String {
    format!("/batches/{}/deviations/{}", d.batch_id, d.deviation_id)
}

fn classification_badge(d: &Deviation) -> Markup {
    html! {
        @if d.blocks_release() { span.badge.rejected { (d.classification) } }
        @else { span.badge { (d.classification) } }
    }
}

fn status_badge(d: &Deviation) -> Markup {
    html! {
        @if d.is_open() { span.badge.rejected { "open" } } @else { span.badge.pass { "closed" } }
    }
}

fn origin_words(d: &Deviation) -> String {
    match d.origin {
        Origin::Site {
            seq,
            by_person: true,
        } => format!("raised by hand at site {} (record {seq})", d.site_id),
        Origin::Site {
            seq,
            by_person: false,
        } => format!("raised by the agent at site {} (record {seq})", d.site_id),
        Origin::Hub => "raised at the hub".to_owned(),
    }
}

/// The deviations of a batch as its record page shows them to QA, with the form
/// that raises one at the hub.
pub fn batch_section(
    session: &Session,
    batch_id: Uuid,
    steps: &[(String, String)],
    list: &[Deviation],
) -> Markup {
    let blocking: Vec<&Deviation> = list.iter().filter(|d| d.blocks_release()).collect();
    html! {
        h2 id="deviations" { "Deviations (" (list.len()) ")" }
        @if !blocking.is_empty() {
            div.notice.bad role="alert" {
                strong { "Release waits: " }
                (blocking.len()) " major or critical deviation(s) open. Investigate and close each (root cause, CAPA) before releasing; the batch may be rejected."
            }
        }
        div.scroll tabindex="0" { table data-deviations {
            thead { tr { th scope="col" { "Deviation" } th scope="col" { "Class" } th scope="col" { "Status" } th scope="col" { "Raised" } th scope="col" { "What happened" } } }
            tbody {
                @for d in list {
                    tr { td { a href=(link(d)) { (d.deviation_id) } } td { (classification_badge(d)) } td { (status_badge(d)) }
                         td { (d.raised_by) ", " (when(d.raised_at)) } td { (d.description) } }
                }
                @if list.is_empty() { tr { td colspan="5" .muted { "No deviations." } } }
            }
        } }
        details.card {
            summary { "Raise a deviation at the hub" }
            form method="post" action=(format!("/batches/{batch_id}/deviations")) {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="raise-step" { "Step" }
                select id="raise-step" name="step" {
                    option value="" { "The batch as a whole" }
                    @for (id, name) in steps { option value=(id) { (name) } }
                }
                label for="raise-classification" { "Classification" }
                select id="raise-classification" name="classification" required {
                    option value="" { "Choose…" }
                    @for c in CLASSIFICATIONS { option value=(c) { (c) } }
                }
                label for="raise-description" { "What happened" }
                textarea id="raise-description" name="description" rows="3" required {}
                p { button type="submit" id="raise-submit" { "Raise deviation" } }
            }
        }
    }
}

pub async fn list(hub: HubState, session: Session) -> Page {
    let mut all = deviations::list(&hub, &session.user, false)
        .await
        .map_err(refused)?;
    all.sort_by_key(|d| !d.is_open());
    let open = all.iter().filter(|d| d.is_open()).count();
    Ok(html_page(page(
        "Deviations",
        Some(&session),
        html! {
            h1 { "Deviations" }
            p { (open) " open, " (all.len() - open) " closed. A major or critical deviation that is open stops its batch's release." }
            div.scroll tabindex="0" { table data-deviations {
                thead { tr { th scope="col" { "Deviation" } th scope="col" { "Batch" } th scope="col" { "Class" } th scope="col" { "Status" } th scope="col" { "Raised" } th scope="col" { "What happened" } } }
                tbody {
                    @for d in &all {
                        tr { td { a href=(link(d)) { (d.deviation_id) } } td { a href=(format!("/batches/{}", d.batch_id)) { (d.site_id) } }
                             td { (classification_badge(d)) } td { (status_badge(d)) }
                             td { (d.raised_by) ", " (when(d.raised_at)) } td { (d.description) } }
                    }
                    @if all.is_empty() { tr { td colspan="6" .muted { "No deviations." } } }
                }
            } }
        },
    )))
}

/// What a refused form brings back to the page: which form, its input and why.
#[derive(Default)]
struct Refusal {
    note: String,
    root_cause: String,
    capa_ref: String,
    username: String,
    note_error: Option<String>,
    close_error: Option<(&'static str, String)>,
}

async fn deviation_page(
    hub: &Hub,
    session: &Session,
    batch_id: Uuid,
    deviation_id: &str,
    status: StatusCode,
    refusal: Refusal,
) -> Page {
    let d = deviations::one(hub, &session.user, batch_id, deviation_id)
        .await
        .map_err(refused)?;
    let first_signature = !release::session_has_signed(hub, &session.token_sha256)
        .await
        .map_err(refused)?;
    let acknowledged = session.user.signature_acknowledged_at.is_some();
    let base = link(&d);
    let close_field_error = refusal
        .close_error
        .as_ref()
        .filter(|(f, _)| matches!(*f, "username" | "password" | "acknowledge"))
        .cloned();
    let mut response = html_page(page(
        &format!("Deviation {}", d.deviation_id),
        Some(session),
        html! {
            h1 { "Deviation " (d.deviation_id) " " (status_badge(&d)) }
            p.muted { a href=(format!("/batches/{}", d.batch_id)) { "Batch " (d.batch_id) } " · " (origin_words(&d))
                @if !d.step_id.is_empty() { " · step " (d.step_id) } }
            p { "Classification: " (classification_badge(&d)) @if d.blocks_release() { " (stops the batch's release until closed)" } }
            div.card { p { strong { (d.raised_by) } ", " (when(d.raised_at)) ":" } p { (d.description) } }
            h2 { "Investigation" }
            @if d.notes.is_empty() { p.muted { "No notes yet." } }
            ul.notes { @for n in &d.notes { li { strong { (n.author) } ", " (when(n.written_at)) ": " (n.text) } } }
            @if let Some(closure) = &d.closure {
                div.notice.ok id="closure" {
                    strong { "Closed by " (closure.closed_by_name) " (" (closure.closed_by) ") on " (when(closure.closed_at)) }
                    p { "Root cause: " (closure.root_cause) }
                    p { "CAPA: " @if closure.capa_ref.is_empty() { "none" } @else { (closure.capa_ref) } }
                }
            } @else {
                div.card {
                    form method="post" action=(format!("{base}/note")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="note" { "Add a note (what was found or done)" }
                        textarea id="note" name="note" rows="3" required aria-describedby="note-error" { (refusal.note) }
                        @if let Some(e) = &refusal.note_error { p.error id="note-error" role="alert" { (e) } }
                        p { button.secondary type="submit" id="note-submit" { "Add note" } }
                    }
                }
                h2 { "Close with your signature" }
                div.card {
                    @if let Some((field, e)) = &refusal.close_error {
                        @if !matches!(*field, "username" | "password" | "acknowledge") { p.error role="alert" { "Not closed: " (e) } }
                    }
                    form method="post" action=(format!("{base}/close")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="root-cause" { "Root cause" }
                        textarea id="root-cause" name="root_cause" rows="3" required { (refusal.root_cause) }
                        label for="capa" { "CAPA reference (empty: none needed; then say why in the root cause)" }
                        input id="capa" name="capa_ref" value=(refusal.capa_ref);
                        (proof_fields(first_signature, acknowledged, (&refusal.username, false), close_field_error, "close-"))
                        p { button type="submit" id="close-submit" { "Sign: close deviation" } }
                    }
                }
            }
        },
    ));
    *response.status_mut() = status;
    Ok(response)
}

pub async fn show(
    hub: HubState,
    session: Session,
    Path((id, deviation_id)): Path<(String, String)>,
) -> Page {
    let batch_id = parse_uuid(&id)?;
    deviation_page(
        &hub,
        &session,
        batch_id,
        &deviation_id,
        StatusCode::OK,
        Refusal::default(),
    )
    .await
}

#[derive(Deserialize)]
pub struct NoteForm {
    csrf: String,
    #[serde(default)]
    note: String,
}

pub async fn add_note(
    hub: HubState,
    session: Session,
    Path((id, deviation_id)): Path<(String, String)>,
    Form(form): Form<NoteForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let batch_id = parse_uuid(&id)?;
    match deviations::note(&hub, &session.user, batch_id, &deviation_id, &form.note).await {
        Ok(d) => Ok(Redirect::to(&link(&d)).into_response()),
        Err(e @ (service::Error::Field { .. } | service::Error::Store(_))) => {
            deviation_page(
                &hub,
                &session,
                batch_id,
                &deviation_id,
                StatusCode::UNPROCESSABLE_ENTITY,
                Refusal {
                    note: form.note.clone(),
                    note_error: Some(format!("Not added: {e}")),
                    ..Refusal::default()
                },
            )
            .await
        }
        Err(e) => Err(refused(e)),
    }
}

#[derive(Deserialize)]
pub struct CloseForm {
    csrf: String,
    #[serde(default)]
    root_cause: String,
    #[serde(default)]
    capa_ref: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    acknowledge: String,
}

pub async fn close(
    hub: HubState,
    session: Session,
    Path((id, deviation_id)): Path<(String, String)>,
    Form(form): Form<CloseForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let batch_id = parse_uuid(&id)?;
    let signer = release::Signer {
        user: &session.user,
        session: &session.token_sha256,
        source: &session.source,
    };
    let closing = deviations::CloseForm {
        batch_id,
        deviation_id: &deviation_id,
        root_cause: &form.root_cause,
        capa_ref: &form.capa_ref,
        proof: release::Proof {
            username: &form.username,
            password: &form.password,
            acknowledge_meaning: form.acknowledge == "yes",
        },
    };
    let error = match deviations::close(&hub, &signer, closing).await {
        Ok(d) => return Ok(Redirect::to(&link(&d)).into_response()),
        Err(service::Error::Field { field, message }) => (field, message),
        Err(service::Error::Unauthenticated(m)) => ("password", m),
        Err(e @ service::Error::Store(_)) => ("form", e.to_string()),
        Err(e) => return Err(refused(e)),
    };
    deviation_page(
        &hub,
        &session,
        batch_id,
        &deviation_id,
        StatusCode::UNPROCESSABLE_ENTITY,
        Refusal {
            root_cause: form.root_cause.clone(),
            capa_ref: form.capa_ref.clone(),
            username: form.username.clone(),
            close_error: Some(error),
            ..Refusal::default()
        },
    )
    .await
}

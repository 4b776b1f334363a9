//! Recipe versions for QA: the list, the TOML editor (checked as the author types,
//! with what the draft changes), a draft's page with its changes, and the signed
//! submission (its author) and approval (another QA person). The rules are
//! [`service::recipes`]'s.

use super::view::{page, proof_fields, when};
use super::{html_page, refused, HubState, Page, Session};
use crate::app::Hub;
use crate::model::recipe_change::{Change, DraftState};
use crate::service;
use crate::service::{recipes, release};
use axum::extract::{Form, Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

fn changes_table(changes: &[Change]) -> Markup {
    html! {
        div.scroll tabindex="0" { table data-changes {
            thead { tr { th scope="col" { "What" } th scope="col" { "Before" } th scope="col" { "After" } } }
            tbody {
                @for c in changes { tr { td { (c.what) } td { (c.before) } td { (c.after) } } }
                @if changes.is_empty() { tr { td colspan="3" .muted { "No change against the version in force." } } }
            }
        } }
    }
}

pub async fn list(hub: HubState, session: Session) -> Page {
    let drafts = recipes::drafts(&hub, &session.user)
        .await
        .map_err(refused)?;
    let published = hub
        .store
        .list_recipes()
        .await
        .map_err(|e| refused(e.into()))?;
    Ok(html_page(page(
        "Recipes",
        Some(&session),
        html! {
            h1 { "Recipes" }
            p { "A new version is drafted, submitted by its author with a signature, and approved by another QA person with a signature, effective from a date. New orders pin the version in force; running batches keep theirs." }
            h2 { "Published versions" }
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "Product" } th scope="col" { "Version" } th scope="col" { "Title" } th scope="col" { "SHA-256" } th scope="col" {} } }
                tbody { @for r in &published {
                    tr { td { (r.recipe.id) } td { "v" (r.recipe.version) } td { (r.recipe.title) } td { code { (&r.sha256[..12]) "…" } }
                         td { a href=(format!("/recipes/new?from={}", r.recipe.id)) { "Draft the next version" } } }
                } }
            } }
            h2 { "Under change control" }
            div.scroll tabindex="0" { table data-drafts {
                thead { tr { th scope="col" { "Version" } th scope="col" { "Title" } th scope="col" { "State" } th scope="col" { "Author" } th scope="col" { "Drafted" } } }
                tbody {
                    @for d in &drafts {
                        tr { td { a href=(format!("/recipes/{}/{}", d.recipe.id, d.recipe.version)) { (d.recipe.id) " v" (d.recipe.version) } }
                             td { (d.recipe.title) } td { span.badge { (d.state().as_str()) } } td { (d.author) } td { (when(d.drafted_at)) } }
                    }
                    @if drafts.is_empty() { tr { td colspan="5" .muted { "None yet." } } }
                }
            } }
        },
    )))
}

/// Checks the editor's text as the author types, and shows what is wrong or what
/// it changes.
const CHECK_SCRIPT: &str = "(function(){var f=document.getElementById('recipe-form'),t=document.getElementById('toml'),out=document.getElementById('recipe-check'),timer=null;function check(){var body=new URLSearchParams();body.set('csrf',f.querySelector('[name=csrf]').value);body.set('toml',t.value);fetch('/recipes/check',{method:'POST',credentials:'same-origin',headers:{'Content-Type':'application/x-www-form-urlencoded'},body:body}).then(function(r){return r.text()}).then(function(h){out.innerHTML=h}).catch(function(){})}t.addEventListener('input',function(){clearTimeout(timer);timer=setTimeout(check,400)});check()})();";

#[derive(Deserialize)]
pub struct NewQuery {
    #[serde(default)]
    from: String,
}

fn editor(session: &Session, toml: &str, error: Option<&str>) -> Markup {
    html! {
        h1 { "Draft a recipe version" }
        @if let Some(e) = error { div.notice.bad role="alert" { "Not saved: " (e) } }
        form method="post" action="/recipes" id="recipe-form" {
            input type="hidden" name="csrf" value=(session.csrf);
            label for="toml" { "The recipe (TOML): raise its version; each step, parameter range and QC specification is checked as you type" }
            textarea id="toml" name="toml" rows="24" spellcheck="false" style="font-family:monospace;width:100%" { (toml) }
            div id="recipe-check" aria-live="polite" {}
            p { button type="submit" id="save-draft" { "Save draft" } }
        }
        script { (PreEscaped(CHECK_SCRIPT)) }
    }
}

pub async fn new_draft(hub: HubState, session: Session, Query(q): Query<NewQuery>) -> Page {
    let toml = if q.from.is_empty() {
        String::new()
    } else {
        recipes::next_version_toml(&hub, &session.user, &q.from)
            .await
            .map_err(refused)?
    };
    Ok(html_page(page(
        "Draft a recipe version",
        Some(&session),
        editor(&session, &toml, None),
    )))
}

#[derive(Deserialize)]
pub struct TomlForm {
    csrf: String,
    #[serde(default)]
    toml: String,
}

/// The editor's check: a fragment saying what is wrong, or what the draft changes.
pub async fn check(hub: HubState, session: Session, Form(form): Form<TomlForm>) -> Page {
    session.check_csrf(&form.csrf)?;
    let fragment = match recipes::check(&hub, &session.user, &form.toml).await {
        Ok((recipe, in_force, changes)) => html! {
            p.ok data-check="ok" { "Checked: " (recipe.id) " v" (recipe.version) ", " (recipe.steps.len()) " steps. "
                @match &in_force { Some(r) => { "Changes against v" (r.recipe.version) " (in force):" } None => { "A new product." } } }
            (changes_table(&changes))
        },
        Err(e @ service::Error::PermissionDenied(_)) => return Err(refused(e)),
        Err(e) => html! { p.error role="alert" data-check="refused" { (e) } },
    };
    Ok(fragment.into_response())
}

pub async fn save(hub: HubState, session: Session, Form(form): Form<TomlForm>) -> Page {
    session.check_csrf(&form.csrf)?;
    match recipes::draft(&hub, &session.user, &form.toml).await {
        Ok(r) => Ok(Redirect::to(&format!(
            "/recipes/{}/{}",
            r.draft.recipe.id, r.draft.recipe.version
        ))
        .into_response()),
        Err(e @ (service::Error::Field { .. } | service::Error::Store(_))) => {
            let mut response = html_page(page(
                "Draft a recipe version",
                Some(&session),
                editor(&session, &form.toml, Some(&e.to_string())),
            ));
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(e) => Err(refused(e)),
    }
}

async fn draft_page(
    hub: &Hub,
    session: &Session,
    recipe_id: &str,
    version: u32,
    status: StatusCode,
    error: Option<(&'static str, String)>,
) -> Page {
    let r = recipes::review(hub, &session.user, recipe_id, version)
        .await
        .map_err(refused)?;
    let d = &r.draft;
    let first_signature = !release::session_has_signed(hub, &session.token_sha256)
        .await
        .map_err(refused)?;
    let acknowledged = session.user.signature_acknowledged_at.is_some();
    let mine = d.author == session.user.username;
    let proof_error = error
        .as_ref()
        .filter(|(f, _)| matches!(*f, "username" | "password" | "acknowledge"))
        .cloned();
    let base = format!("/recipes/{}/{}", d.recipe.id, d.recipe.version);
    let toml = toml::to_string(&d.recipe).unwrap_or_default();
    let mut response = html_page(page(
        &format!("{} v{}", d.recipe.id, d.recipe.version),
        Some(session),
        html! {
            h1 { (d.recipe.id) " v" (d.recipe.version) " " span.badge data-state=(d.state().as_str()) { (d.state().as_str()) } }
            p.muted { (d.recipe.title) " · drafted by " (d.author) " on " (when(d.drafted_at)) " · SHA-256 " code { (d.sha256) } }
            @if let Some((field, e)) = &error {
                @if !matches!(*field, "username" | "password" | "acknowledge" | "dry_run") { div.notice.bad role="alert" { "Not signed: " (e) } }
            }
            @if let Some(s) = &d.submitted { p { "Submitted by " (s.name) " (" (s.by) ") on " (when(s.at)) "." } }
            @if let Some(s) = &d.approved {
                div.notice.ok { "Approved by " (s.name) " (" (s.by) ") on " (when(s.at)) "; in force from "
                    (d.effective_from.map(when).unwrap_or_default()) "." }
            }
            h2 { @match &r.in_force { Some(f) => { "Changes against v" (f.recipe.version) " (in force)" } None => { "A new product" } } }
            (changes_table(&r.changes))
            @match d.state() {
                DraftState::Draft if mine => {
                    h2 { "Submit for approval" }
                    div.card { form method="post" action=(format!("{base}/submit")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="sha256" value=(d.sha256);
                        p { "Your signature says this draft, as shown (SHA-256 above), is ready for another QA person's approval." }
                        (proof_fields(first_signature, acknowledged, ("", false), proof_error.clone(), "submit-"))
                        p { button type="submit" id="submit-draft" { "Sign: submit" } }
                    } }
                }
                DraftState::Submitted if !mine => {
                    h2 { "Approve" }
                    div.card { form method="post" action=(format!("{base}/approve")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="sha256" value=(d.sha256);
                        label for="effective-from" { "In force from (new orders pin it from this date; empty: at once)" }
                        input type="date" id="effective-from" name="effective_from";
                        (proof_fields(first_signature, acknowledged, ("", false), proof_error.clone(), "approve-"))
                        p { button type="submit" id="approve-draft" { "Sign: approve" } }
                    } }
                }
                DraftState::Submitted => { p.muted { "Submitted: another QA person approves it (its author may not)." } }
                DraftState::Draft => { p.muted { "A draft of " (d.author) ": its author submits it." } }
                DraftState::Approved => {}
            }
            h2 { "Dry runs" }
            p.muted { "A dry run makes a whole batch to this draft, as it is now, on the hub's simulator site at high time compression. "
                "Its record is shown like any other batch's, marked as a dry run, and it is never released." }
            @if r.dry_runs.is_empty() { p.muted data-dry-runs="none" { "No dry run yet." } } @else {
                div.scroll tabindex="0" { table data-dry-runs {
                    thead { tr { th scope="col" { "Batch record" } th scope="col" { "Started" } th scope="col" { "State" } th scope="col" { "Draft text" } } }
                    tbody { @for run in &r.dry_runs { tr {
                        td { a href={ "/batches/" (run.order.batch_id) } { (run.order.recipe_id) " · COI " (run.order.coi) } }
                        td { (when(run.order.created_at)) " by " (run.order.physician) }
                        td { (super::view::state_badge(run.order.state))
                            @if let Some(step) = &run.order.current_step { " " span.muted { (step) } } }
                        td { @if run.of(d) { "this text" } @else { span.muted { "an earlier text (edited since)" } } }
                    } } }
                } }
            }
            @if d.state() != DraftState::Approved {
                form method="post" action=(format!("{base}/dry-run")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    @if let Some(("dry_run", e)) = &error { div.notice.bad role="alert" { "Not started: " (e) } }
                    button.secondary type="submit" id="dry-run-draft" { "Dry-run this draft on the simulator" }
                }
            }
            details { summary { "The recipe as TOML" } pre { (toml) } }
        },
    ));
    *response.status_mut() = status;
    Ok(response)
}

pub async fn show(
    hub: HubState,
    session: Session,
    Path((id, version)): Path<(String, u32)>,
) -> Page {
    draft_page(&hub, &session, &id, version, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub struct SignForm {
    csrf: String,
    #[serde(default)]
    sha256: String,
    #[serde(default)]
    effective_from: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    acknowledge: String,
}

async fn sign(
    hub: HubState,
    session: Session,
    (id, version): (String, u32),
    form: SignForm,
    approve: bool,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let signer = release::Signer {
        user: &session.user,
        session: &session.token_sha256,
        source: &session.source,
    };
    let proof = release::Proof {
        username: &form.username,
        password: &form.password,
        acknowledge_meaning: form.acknowledge == "yes",
    };
    let signed = if approve {
        recipes::approve(
            &hub,
            &signer,
            proof,
            &id,
            version,
            &form.sha256,
            &form.effective_from,
        )
        .await
    } else {
        recipes::submit(&hub, &signer, proof, &id, version, &form.sha256).await
    };
    let error = match signed {
        Ok(_) => None,
        Err(service::Error::Field { field, message }) => Some((field, message)),
        Err(service::Error::Unauthenticated(m)) => Some(("password", m)),
        Err(e @ (service::Error::Store(_) | service::Error::PermissionDenied(_))) => {
            Some(("form", e.to_string()))
        }
        Err(e) => return Err(refused(e)),
    };
    back_to_draft(&hub, &session, &id, version, error).await
}

/// After a form on a draft's page: back to the page, or the page again with why
/// the form was refused.
async fn back_to_draft(
    hub: &Hub,
    session: &Session,
    id: &str,
    version: u32,
    error: Option<(&'static str, String)>,
) -> Page {
    match error {
        None => Ok(Redirect::to(&format!("/recipes/{id}/{version}")).into_response()),
        Some(error) => {
            draft_page(
                hub,
                session,
                id,
                version,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(error),
            )
            .await
        }
    }
}

pub async fn submit(
    hub: HubState,
    session: Session,
    Path(key): Path<(String, u32)>,
    Form(form): Form<SignForm>,
) -> Page {
    sign(hub, session, key, form, false).await
}

pub async fn approve(
    hub: HubState,
    session: Session,
    Path(key): Path<(String, u32)>,
    Form(form): Form<SignForm>,
) -> Page {
    sign(hub, session, key, form, true).await
}

#[derive(Deserialize)]
pub struct DryRunForm {
    csrf: String,
}

/// Starts a dry run of the draft, then shows the draft with it (a refusal, for
/// example no simulator site on this hub, is shown on the draft's page).
pub async fn dry_run(
    hub: HubState,
    session: Session,
    Path((id, version)): Path<(String, u32)>,
    Form(form): Form<DryRunForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let error = match recipes::dry_run(&hub, &session.user, &id, version).await {
        Ok(_) => None,
        Err(e @ (service::Error::Store(_) | service::Error::Field { .. })) => {
            Some(("dry_run", e.to_string()))
        }
        Err(e) => return Err(refused(e)),
    };
    back_to_draft(&hub, &session, &id, version, error).await
}

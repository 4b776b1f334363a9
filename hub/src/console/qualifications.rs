//! Which site makes which product, for QA: the qualifications in force and
//! withdrawn, the signed form that qualifies a site for a product (a range of its
//! versions), and withdrawal with a reason. The rules are
//! [`service::qualifications`]'s.

use super::view::{page, proof_fields, when};
use super::{html_page, refused, HubState, Page, Session};
use crate::app::Hub;
use crate::model::{Role, SiteStatus};
use crate::service;
use crate::service::{qualifications, release};
use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::html;
use serde::Deserialize;

/// A refused form's input and why, to show it again.
#[derive(Default)]
struct Refusal {
    form: QualifyForm,
    qualify_error: Option<(&'static str, String)>,
    /// (site, product, reason typed, why) of a refused withdrawal.
    withdraw_error: Option<(String, String, String, String)>,
}

async fn qualifications_page(
    hub: &Hub,
    session: &Session,
    status: StatusCode,
    refusal: Refusal,
) -> Page {
    let all = qualifications::list(hub, &session.user, None)
        .await
        .map_err(refused)?;
    let is_qa = session.user.role == Role::Qa;
    let sites = if is_qa {
        let mut sites = service::admin::sites(hub, &session.user)
            .await
            .map_err(refused)?;
        sites.retain(|s| s.site_id != crate::model::recipe_change::DRY_RUN_SITE);
        sites
    } else {
        Vec::new()
    };
    // Each product once, with the version new orders pin now.
    let mut products = Vec::new();
    for r in hub
        .store
        .list_recipes()
        .await
        .map_err(|e| refused(e.into()))?
    {
        if products
            .iter()
            .any(|p: &crate::model::StoredRecipe| p.recipe.id == r.recipe.id)
        {
            continue;
        }
        match hub.store.latest_recipe(&r.recipe.id).await {
            Ok(in_force) => products.push(in_force),
            Err(crate::store::Error::NotFound(_)) => {}
            Err(e) => return Err(refused(e.into())),
        }
    }
    let first_signature = !release::session_has_signed(hub, &session.token_sha256)
        .await
        .map_err(refused)?;
    let acknowledged = session.user.signature_acknowledged_at.is_some();
    let f = &refusal.form;
    let err = |name: &str| {
        refusal
            .qualify_error
            .as_ref()
            .filter(|(field, _)| *field == name)
            .map(|(_, m)| m.clone())
    };
    let proof_error = refusal
        .qualify_error
        .clone()
        .filter(|(field, _)| matches!(*field, "username" | "password" | "acknowledge"));
    let form_error = refusal.qualify_error.as_ref().filter(|(field, _)| {
        !matches!(
            *field,
            "username"
                | "password"
                | "acknowledge"
                | "site_id"
                | "product"
                | "from_version"
                | "to_version"
                | "reason"
        )
    });
    let in_force = all.iter().filter(|q| q.in_force()).count();
    let mut response = html_page(page(
        "Site qualifications",
        Some(session),
        html! {
            h1 { "Site qualifications" }
            p { "A site makes a product only in the versions QA has qualified it for, with a signature. An order for anything else is refused with the reason; withdrawing a qualification stops new orders there, and orders placed keep running." }
            p.muted { (in_force) " in force, " (all.len() - in_force) " withdrawn or replaced." }
            @if let Some((site, product, _, e)) = &refusal.withdraw_error {
                div.notice.bad role="alert" { "Not withdrawn (" (site) ", " (product) "): " (e) }
            }
            div.scroll tabindex="0" { table data-qualifications {
                thead { tr { th scope="col" { "Site" } th scope="col" { "Product" } th scope="col" { "Versions" } th scope="col" { "State" } th scope="col" { "Signed" } th scope="col" { "Reason" }
                    @if is_qa { th scope="col" { "Withdraw" } } } }
                tbody {
                    @for q in &all {
                        tr data-site=(q.site_id) data-product=(q.recipe_id) data-in-force=(q.in_force()) {
                            td.nowrap { (q.site_id) } td.nowrap { (q.recipe_id) } td.nowrap { (q.versions()) }
                            td { @if let Some(w) = &q.withdrawn { span.badge.nowrap { "withdrawn" } br; span.muted { (w.by) ", " (when(w.at)) ": " (w.reason) } } @else { span.badge.released.nowrap { "in force" } } }
                            td { (q.qualified_name) " (" (q.qualified_by) ")" br; span.muted { (when(q.qualified_at)) } }
                            td { (q.reason) }
                            @if is_qa { td { @if q.in_force() {
                                form.inline method="post" action="/qualifications/withdraw" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input type="hidden" name="site_id" value=(q.site_id);
                                    input type="hidden" name="product" value=(q.recipe_id);
                                    label.visually-hidden for=(format!("withdraw-{}-{}", q.site_id, q.recipe_id)) { "Why withdraw " (q.recipe_id) " at " (q.site_id) }
                                    input id=(format!("withdraw-{}-{}", q.site_id, q.recipe_id)) name="reason" required placeholder="Why (a sentence)"
                                        value=(refusal.withdraw_error.as_ref().filter(|(s, p, _, _)| *s == q.site_id && *p == q.recipe_id).map(|w| w.2.as_str()).unwrap_or_default());
                                    button.danger type="submit" { "Withdraw" }
                                }
                            } } }
                        }
                    }
                    @if all.is_empty() { tr { td colspan="7" .muted { "No site is qualified for any product yet: no order can be placed." } } }
                }
            } }
            @if is_qa {
                h2 { "Qualify a site for a product" }
                div.card {
                    @if let Some((_, e)) = form_error { p.error role="alert" { "Not signed: " (e) } }
                    form method="post" action="/qualifications" id="qualify-form" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="site" { "Site" }
                        select id="site" name="site_id" required aria-describedby="site-error" {
                            option value="" { "Choose a site" }
                            @for s in sites.iter().filter(|s| s.status != SiteStatus::Ceased) {
                                option value=(s.site_id) selected[s.site_id == f.site_id] { (s.site_id) " (" (s.name) ")" }
                            }
                        }
                        @if let Some(e) = err("site_id") { p.error id="site-error" role="alert" { (e) } }
                        label for="product" { "Product" }
                        select id="product" name="product" required aria-describedby="product-error" {
                            option value="" { "Choose a product" }
                            @for r in &products {
                                option value=(r.recipe.id) selected[r.recipe.id == f.product] { (r.recipe.id) " (" (r.recipe.title) ", v" (r.recipe.version) " in force)" }
                            }
                        }
                        @if let Some(e) = err("product") { p.error id="product-error" role="alert" { (e) } }
                        label for="from-version" { "From version (empty: the version in force now)" }
                        input id="from-version" name="from_version" inputmode="numeric" pattern="[0-9]*" value=(f.from_version) aria-describedby="from-version-error";
                        @if let Some(e) = err("from_version") { p.error id="from-version-error" role="alert" { (e) } }
                        label for="to-version" { "To version (empty: every later version too)" }
                        input id="to-version" name="to_version" inputmode="numeric" pattern="[0-9]*" value=(f.to_version) aria-describedby="to-version-error";
                        @if let Some(e) = err("to_version") { p.error id="to-version-error" role="alert" { (e) } }
                        label for="qualify-reason" { "Why: the qualification run and its report's reference" }
                        textarea id="qualify-reason" name="reason" rows="2" required aria-describedby="qualify-reason-error" { (f.reason) }
                        @if let Some(e) = err("reason") { p.error id="qualify-reason-error" role="alert" { (e) } }
                        p.muted { "Your signature means: " (crate::model::QUALIFICATION_MEANING) "." }
                        (proof_fields(first_signature, acknowledged, (&f.username, f.acknowledge == "yes"), proof_error, "qualify-"))
                        p { button type="submit" id="qualify-submit" { "Sign: qualify the site" } }
                    }
                }
            }
        },
    ));
    *response.status_mut() = status;
    Ok(response)
}

pub async fn list(hub: HubState, session: Session) -> Page {
    qualifications_page(&hub, &session, StatusCode::OK, Refusal::default()).await
}

#[derive(Deserialize, Default)]
pub struct QualifyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    site_id: String,
    #[serde(default)]
    product: String,
    #[serde(default)]
    from_version: String,
    #[serde(default)]
    to_version: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    acknowledge: String,
}

/// A version box: empty is 0 (the default), anything else a whole number.
fn version(text: &str, name: &'static str) -> Result<u32, service::Error> {
    let text = text.trim().trim_start_matches(['v', 'V']);
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| service::Error::Field {
            field: name,
            message: format!("{text:?} is not a version number (1, 2, ...)"),
        })
}

pub async fn qualify(hub: HubState, session: Session, Form(form): Form<QualifyForm>) -> Page {
    session.check_csrf(&form.csrf)?;
    let signer = release::Signer {
        user: &session.user,
        session: &session.token_sha256,
        source: &session.source,
    };
    let result = async {
        let request = qualifications::Request {
            site_id: &form.site_id,
            recipe_id: &form.product,
            from_version: version(&form.from_version, "from_version")?,
            to_version: version(&form.to_version, "to_version")?,
            reason: &form.reason,
        };
        let proof = release::Proof {
            username: &form.username,
            password: &form.password,
            acknowledge_meaning: form.acknowledge == "yes",
        };
        qualifications::qualify(&hub, &signer, proof, &request).await
    }
    .await;
    let error = match result {
        Ok(_) => return Ok(Redirect::to("/qualifications").into_response()),
        Err(service::Error::Field { field, message }) => (field, message),
        Err(service::Error::Unauthenticated(m)) => ("password", m),
        Err(e @ service::Error::Store(_)) => ("form", e.to_string()),
        Err(e) => return Err(refused(e)),
    };
    let refusal = Refusal {
        form: QualifyForm {
            password: String::new(),
            ..form
        },
        qualify_error: Some(error),
        withdraw_error: None,
    };
    qualifications_page(&hub, &session, StatusCode::UNPROCESSABLE_ENTITY, refusal).await
}

#[derive(Deserialize)]
pub struct WithdrawForm {
    csrf: String,
    #[serde(default)]
    site_id: String,
    #[serde(default)]
    product: String,
    #[serde(default)]
    reason: String,
}

pub async fn withdraw(hub: HubState, session: Session, Form(form): Form<WithdrawForm>) -> Page {
    session.check_csrf(&form.csrf)?;
    match qualifications::withdraw(
        &hub,
        &session.user,
        &form.site_id,
        &form.product,
        &form.reason,
    )
    .await
    {
        Ok(()) => Ok(Redirect::to("/qualifications").into_response()),
        Err(e @ (service::Error::Field { .. } | service::Error::Store(_))) => {
            let refusal = Refusal {
                withdraw_error: Some((form.site_id, form.product, form.reason, e.to_string())),
                ..Refusal::default()
            };
            qualifications_page(&hub, &session, StatusCode::UNPROCESSABLE_ENTITY, refusal).await
        }
        Err(e) => Err(refused(e)),
    }
}

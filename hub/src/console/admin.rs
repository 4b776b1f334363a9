//! Administration: sites (add, suspend, resume, cease) and users.

use super::view::{page, when};
use super::{html_page, problem, refused, HubState, Page, Session};
use crate::model;
use crate::model::{Role, SiteStatus};
use crate::service;
use crate::service::{admin, integration};
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::{html, Markup};
use serde::Deserialize;

fn sites_markup(
    session: &Session,
    sites: &[model::Site],
    makes: &std::collections::BTreeMap<String, Vec<String>>,
    hub: &crate::app::Hub,
    notice: Option<Markup>,
) -> Markup {
    page(
        "Sites",
        Some(session),
        html! {
            h1 { "Sites" }
            @if let Some(notice) = notice { (notice) }
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "Site" } th scope="col" { "Name" } th scope="col" { "Status" } th scope="col" { "Makes" } th scope="col" { "Link" } th scope="col" { "Last contact" } th scope="col" { "Events" } th scope="col" { "Commands acked" } th scope="col" { "Certificate" } th scope="col" { span.visually-hidden { "Actions" } } } }
                tbody { @for s in sites {
                    tr data-site=(s.site_id) {
                        td { (s.site_id) } td { (s.name) } td.status { (s.status.as_str())
                            @if let (SiteStatus::Suspended | SiteStatus::Ceased, Some(c)) = (s.status, &s.status_change) {
                                br; span.muted data-status-reason { "by " (c.by) " " (when(c.at)) ": " (c.reason) }
                            }
                        }
                        td.makes { @match makes.get(&s.site_id) {
                            Some(products) => { (products.join(", ")) }
                            None => { span.muted { "nothing yet: QA qualifies it" } }
                        } }
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
                            @if matches!(s.status, SiteStatus::Active | SiteStatus::Suspended) {
                                a.button.secondary href=(format!("/admin/sites/{}/status", s.site_id)) data-change-status=(s.site_id) {
                                    @if s.status == SiteStatus::Active { "Suspend…" } @else { "Resume or cease…" }
                                    span.visually-hidden { " site " (s.site_id) }
                                }
                            }
                        }
                    }
                } }
            } }
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
    let makes = service::qualifications::products_by_site(&hub, &session.user)
        .await
        .map_err(refused)?;
    Ok(html_page(sites_markup(
        &session, &sites, &makes, &hub, None,
    )))
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
            p { "The site takes orders once QA has qualified it for a product (their Qualifications page, or carrel-hub site qualify)." }
        } },
        Err(e) => html! { div.notice.bad role="alert" { (e) } },
    };
    let sites = admin::sites_to_administer(&hub, &session.user)
        .await
        .map_err(refused)?;
    let makes = service::qualifications::products_by_site(&hub, &session.user)
        .await
        .map_err(refused)?;
    let mut response = html_page(sites_markup(&session, &sites, &makes, &hub, Some(notice)));
    if result.is_err() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(response)
}

/// What an administrator typed on a site's status page, kept when refused.
#[derive(Default)]
struct StatusForms {
    /// "suspend", "resume" or "cease": the form that was sent.
    sent: String,
    reason: String,
    errors: std::collections::BTreeMap<&'static str, String>,
}

/// One site's status page: what a change would touch (its open orders), then the
/// change itself, each with a reason and a confirmation. Ceasing, which is final,
/// sits apart from resuming, under its own heading, and is offered only when no
/// batch is open.
fn status_markup(
    session: &Session,
    site: &model::Site,
    open: &[model::Order],
    forms: &StatusForms,
) -> Markup {
    let running = open.iter().filter(|o| o.state.is_running()).count();
    let err = |form: &str, field: &str| {
        (forms.sent == form)
            .then(|| forms.errors.get(field).cloned())
            .flatten()
    };
    let kept = |form: &str| {
        if forms.sent == form {
            forms.reason.clone()
        } else {
            String::new()
        }
    };
    let reason_field = |form: &'static str, label: &str| {
        html! {
            label for=(format!("{form}-reason")) { (label) }
            textarea id=(format!("{form}-reason")) name="reason" rows="2" required
                autofocus[err(form, "reason").is_some()]
                aria-describedby=(format!("{form}-reason-error"))
                aria-invalid=[err(form, "reason").map(|_| "true")] { (kept(form)) }
            @if let Some(e) = err(form, "reason") { p.error id=(format!("{form}-reason-error")) { (e) } }
            label.check for=(format!("{form}-confirm")) {
                input type="checkbox" id=(format!("{form}-confirm")) name="confirm" value="yes"
                    autofocus[err(form, "reason").is_none() && err(form, "confirm").is_some()];
                " I have read what this changes"
            }
            @if let Some(e) = err(form, "confirm") { p.error { (e) } }
        }
    };
    page(
        &format!("Site {}", site.site_id),
        Some(session),
        html! {
            p { a href="/admin/sites" { "← All sites" } }
            h1 { "Site " (site.site_id) " · " (site.name) }
            @if !forms.errors.is_empty() {
                div.notice.bad role="alert" id="status-refused" {
                    strong { "Nothing was changed." } " "
                    @if let Some(e) = err(&forms.sent, "form") { (e) } @else { "See what to correct below." }
                }
            }
            p { "Status: " strong data-site-status=(site.status.as_str()) { (site.status.as_str()) }
                @if let Some(c) = &site.status_change { span.muted { " · by " (c.by) " on " (when(c.at)) ": " (c.reason) } } }
            h2 { "What a change touches" }
            @if open.is_empty() {
                p id="impact" { "No open orders at this site." }
            } @else {
                p id="impact" { strong { (open.len()) " open order(s)" } ", " (running) " of them running at the site (cells there, manufacturing or awaiting release)." }
                div.scroll tabindex="0" { table data-impact {
                    thead { tr { th scope="col" { "COI" } th scope="col" { "State" } th scope="col" { "Step" } th scope="col" { "Ordered by" } } }
                    tbody { @for o in open { tr {
                        td { a href=(format!("/orders/{}", o.order_id)) { (o.coi) } }
                        td { (super::view::state_badge(o.state)) }
                        td { (o.current_step.clone().unwrap_or_default()) }
                        td { (o.physician) }
                    } } }
                } }
            }
            @if site.status == SiteStatus::Active {
                section.card id="suspend" aria-labelledby="suspend-title" {
                    h2 id="suspend-title" { "Suspend this site" }
                    p { "The site's link is closed at once and refused until it is resumed. Its technicians see who suspended it and why, and can start no new step and hand nothing over."
                        @if running > 0 { " " strong { (running) " running batch(es) are flagged for a QA decision." } } }
                    form method="post" action=(format!("/admin/sites/{}/suspend", site.site_id)) novalidate {
                        input type="hidden" name="csrf" value=(session.csrf);
                        (reason_field("suspend", "Why (shown to the site's technicians and kept in the audit trail)"))
                        p { button.danger type="submit" id="suspend-submit" { "Suspend " (site.site_id) } }
                    }
                }
            }
            @if site.status == SiteStatus::Suspended {
                section.card id="resume" aria-labelledby="resume-title" {
                    h2 id="resume-title" { "Resume this site" }
                    p { "The site may dial in again; what it recorded meanwhile arrives, and its technicians may go on." }
                    form method="post" action=(format!("/admin/sites/{}/resume", site.site_id)) novalidate {
                        input type="hidden" name="csrf" value=(session.csrf);
                        (reason_field("resume", "Why it may go on (kept in the audit trail)"))
                        p { button type="submit" id="resume-submit" { "Resume " (site.site_id) } }
                    }
                }
                section.card.danger-zone id="cease" aria-labelledby="cease-title" {
                    h2 id="cease-title" { "Cease this site (final)" }
                    @if open.is_empty() {
                        p { "A ceased site can never be resumed or take orders again; its records stay readable. This cannot be undone." }
                        form method="post" action=(format!("/admin/sites/{}/cease", site.site_id)) novalidate {
                            input type="hidden" name="csrf" value=(session.csrf);
                            (reason_field("cease", "Why the site closes for good (kept in the audit trail)"))
                            p { button.danger type="submit" id="cease-submit" { "Cease " (site.site_id) " for good" } }
                        }
                    } @else {
                        p { "Not possible yet: the " (open.len()) " open order(s) listed above must each be infused, rejected or cancelled first." }
                    }
                }
            }
        },
    )
}

pub async fn site_status_page(
    hub: HubState,
    session: Session,
    Path(site_id): Path<String>,
) -> Page {
    let (site, open) = admin::site_impact(&hub, &session.user, &site_id)
        .await
        .map_err(refused)?;
    Ok(html_page(status_markup(
        &session,
        &site,
        &open,
        &StatusForms::default(),
    )))
}

#[derive(Deserialize)]
pub struct ReasonForm {
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
}

/// Suspend, resume or cease a site (`/admin/sites/{id}/{action}`), with a reason
/// and a confirmation; a refusal comes back on the site's status page.
pub async fn change_site_status(
    hub: HubState,
    session: Session,
    Path((site_id, action)): Path<(String, String)>,
    Form(form): Form<ReasonForm>,
) -> Page {
    let (status, what) = match action.as_str() {
        "suspend" => (SiteStatus::Suspended, "suspend this site"),
        "resume" => (SiteStatus::Active, "resume this site"),
        "cease" => (SiteStatus::Ceased, "cease this site"),
        other => {
            return Err(problem(
                StatusCode::NOT_FOUND,
                format!("no site action {other:?} (suspend, resume or cease)"),
            ))
        }
    };
    session.check_csrf(&form.csrf)?;
    let mut forms = StatusForms {
        sent: action.clone(),
        reason: form.reason.clone(),
        ..StatusForms::default()
    };
    let result = if form.confirm != "yes" {
        if let Err(service::Error::Field { field, message }) =
            service::sentence_reason(&form.reason, what)
        {
            forms.errors.insert(field, message);
        }
        Err(service::Error::Field {
            field: "confirm",
            message: "Tick the box to confirm you have read what this changes.".into(),
        })
    } else {
        admin::change_site_status(&hub, &session.user, &site_id, status, &form.reason)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => Ok(Redirect::to("/admin/sites").into_response()),
        Err(service::Error::Field { field, message }) => {
            forms.errors.insert(field, message);
            status_refused(&hub, &session, &site_id, &forms).await
        }
        Err(service::Error::Store(
            crate::store::Error::FailedPrecondition(message)
            | crate::store::Error::Invalid(message),
        )) => {
            forms.errors.insert("form", message);
            status_refused(&hub, &session, &site_id, &forms).await
        }
        Err(e) => Err(refused(e)),
    }
}

async fn status_refused(
    hub: &HubState,
    session: &Session,
    site_id: &str,
    forms: &StatusForms,
) -> Page {
    let (site, open) = admin::site_impact(hub, &session.user, site_id)
        .await
        .map_err(refused)?;
    let mut response = html_page(status_markup(session, &site, &open, forms));
    *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    Ok(response)
}

fn users_markup(
    session: &Session,
    users: &[model::User],
    grants: &[crate::store::backend::RoleGrant],
    accounts: &[model::SystemAccount],
    notice: Option<Markup>,
) -> Markup {
    let physicians: Vec<&model::User> = users
        .iter()
        .filter(|u| u.role == Role::Physician && !u.disabled)
        .collect();
    page(
        "Users",
        Some(session),
        html! {
            h1 { "Users" }
            @if let Some(notice) = notice { (notice) }
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "User" } th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Account" } th scope="col" { "Change (audited, with the reason)" } } }
                tbody { @for u in users {
                    tr {
                        td { (u.username) } td { (u.full_name) } td { (u.role) }
                        td {
                            @if u.disabled { span.badge.rejected { "disabled" } } @else if u.password_hash == crate::store::RESET_PENDING { span.badge { "reset pending" } } @else { span.badge.pass { "active" } }
                            @for g in grants.iter().filter(|g| g.username == u.username) {
                                br; span.muted { "to be made " (g.role) " (asked by " (g.requested_by) "): waits for a second administrator" }
                            }
                        }
                        td {
                            @if u.username != session.user.username {
                                form.inline method="post" action=(format!("/admin/users/{}/change", u.username)) {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    label.visually-hidden for=(format!("change-{}", u.username)) { "Change for " (u.username) }
                                    select id=(format!("change-{}", u.username)) name="change" required {
                                        option value="" { "Choose a change…" }
                                        @if u.disabled { option value="enable" { "Enable the account" } }
                                        @else { option value="disable" { "Disable the account (ends their sessions)" } }
                                        option value="reset" { "Reset the password (one-time code)" }
                                        @if grants.iter().any(|g| g.username == u.username && g.requested_by != session.user.username) {
                                            option value="approve" { "Approve the role asked for" }
                                        }
                                        @for role in ["physician", "qa", "technician", "admin"] {
                                            @if role != u.role.as_str() { option value=(format!("role:{role}")) { "Make them " (role) } }
                                        }
                                    }
                                    label.visually-hidden for=(format!("reason-{}", u.username)) { "Reason" }
                                    input id=(format!("reason-{}", u.username)) name="reason" placeholder="Reason (required)" required;
                                    button.secondary type="submit" id=(format!("apply-{}", u.username)) { "Apply" }
                                }
                            } @else { span.muted { "your own account: " a href="/account" { "change your password" } } }
                        }
                    }
                } }
            } }
            h2 { "Add a user" }
            div.card {
                form method="post" action="/admin/users" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="username" { "User name" } input id="username" name="username" required;
                    label for="full_name" { "Printed name (shown on signatures)" } input id="full_name" name="full_name" required;
                    label for="role" { "Role" }
                    select id="role" name="role" { option { "physician" } option { "qa" } option { "technician" } option { "admin" } }
                    label for="password" { "Initial password: leave empty (recommended) to get a one-time code with which the person chooses their own password, which you never learn" }
                    input id="password" name="password" type="password" autocomplete="new-password";
                    p { button type="submit" { "Add user" } }
                }
            }
            h2 id="system-accounts" { "System accounts (integration engines)" }
            p.muted { "A hospital's integration engine orders through the FHIR door (" code { "/fhir" } ") for the physicians named here, and sees only their orders. It trades its client secret for an access token at " code { "/fhir/auth/token" } " (OAuth 2 client credentials)." }
            @if accounts.is_empty() {
                p { "No system accounts." }
            } @else {
                div.scroll tabindex="0" { table {
                    thead { tr { th scope="col" { "Client id" } th scope="col" { "Engine" } th scope="col" { "Orders for" } th scope="col" { "Account" } th scope="col" { "Change (audited, with the reason)" } } }
                    tbody { @for a in accounts {
                        tr {
                            td { code { (a.client_id) } } td { (a.name) } td { (a.physicians.join(", ")) }
                            td { @if a.disabled { span.badge.rejected { "disabled" } } @else { span.badge.pass { "active" } } }
                            td {
                                form.inline method="post" action=(format!("/admin/system-accounts/{}/change", a.client_id)) {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    label.visually-hidden for=(format!("sys-change-{}", a.client_id)) { "Change for " (a.client_id) }
                                    select id=(format!("sys-change-{}", a.client_id)) name="change" required {
                                        option value="" { "Choose a change…" }
                                        @if a.disabled { option value="enable" { "Enable the account" } }
                                        @else { option value="disable" { "Disable the account (its tokens stop working)" } }
                                        option value="rotate" { "Issue a new client secret (the old one stops working)" }
                                        @for p in &physicians {
                                            @if !a.physicians.contains(&p.username) { option value=(format!("add:{}", p.username)) { "Order also for " (p.full_name) " (" (p.username) ")" } }
                                        }
                                        @for name in &a.physicians {
                                            option value=(format!("remove:{name}")) { "No longer order for " (name) }
                                        }
                                    }
                                    label.visually-hidden for=(format!("sys-reason-{}", a.client_id)) { "Reason" }
                                    input id=(format!("sys-reason-{}", a.client_id)) name="reason" placeholder="Reason (required)" required;
                                    button.secondary type="submit" id=(format!("sys-apply-{}", a.client_id)) { "Apply" }
                                }
                            }
                        }
                    } }
                } }
            }
            h3 { "Add a system account" }
            div.card {
                form method="post" action="/admin/system-accounts" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="client_id" { "Client id (3 to 64 lower-case letters, digits, '-', '_' or '.')" }
                    input id="client_id" name="client_id" required pattern="[a-z0-9._\\-]{3,64}";
                    label for="engine_name" { "What the engine is" }
                    input id="engine_name" name="name" required placeholder="St Elsewhere EHR interface engine";
                    fieldset {
                        legend { "Physicians it orders for" }
                        @if physicians.is_empty() { p.muted { "No physician accounts yet: add one first." } }
                        @for p in &physicians {
                            label.check {
                                input type="checkbox" name="physician" value=(p.username);
                                " " (p.full_name) " (" (p.username) ")"
                            }
                        }
                    }
                    p { button type="submit" { "Add system account" } }
                }
            }
        },
    )
}

/// The Users page with a notice at the top.
async fn users_page(hub: &crate::app::Hub, session: &Session, notice: Option<Markup>) -> Page {
    let users = admin::users(hub, &session.user).await.map_err(refused)?;
    let grants = admin::pending_role_grants(hub, &session.user)
        .await
        .map_err(refused)?;
    let accounts = integration::list(hub, &session.user)
        .await
        .map_err(refused)?;
    Ok(html_page(users_markup(
        session, &users, &grants, &accounts, notice,
    )))
}

pub async fn users(hub: HubState, session: Session) -> Page {
    users_page(&hub, &session, None).await
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
            match admin::add_user_with_code(&hub, &session.user, new).await {
                Ok((user, None)) => Ok(html! { "User " (user.username) " added." }),
                Ok((user, Some((code, expires)))) => Ok(html! {
                    "User " (user.username) " added. Give them this one-time code, shown only now (valid until " (when(expires)) "), to choose their own password (\"Choose a new password\" on the sign-in page):"
                    p { code id="setup-code" { (code) } }
                }),
                Err(e @ service::Error::PermissionDenied(_)) => return Err(refused(e)),
                Err(e) => Err(e.to_string()),
            }
        }
        None => Err(format!("{:?} is not a role", form.role)),
    };
    let notice = match &result {
        Ok(text) => html! { div.notice.ok role="status" { (text) } },
        Err(text) => html! { div.notice.bad role="alert" { "Not added: " (text) } },
    };
    users_page(&hub, &session, Some(notice)).await
}

#[derive(Deserialize)]
pub struct ChangeUserForm {
    csrf: String,
    change: String,
    #[serde(default)]
    reason: String,
}

/// An administrator's change to someone's account, from the Users page: disable,
/// enable, reset the password (the one-time code is shown once, here), or a new role.
pub async fn change_user(
    hub: HubState,
    session: Session,
    Path(username): Path<String>,
    Form(form): Form<ChangeUserForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let result = match form.change.as_str() {
        "disable" | "enable" => {
            let disable = form.change == "disable";
            admin::set_user_disabled(&hub, &session.user, &username, disable, &form.reason)
                .await
                .map(|_| html! { (username) " is " (if disable { "disabled; their sessions have ended" } else { "enabled again" }) "." })
        }
        "approve" => admin::approve_role(&hub, &session.user, &username, &form.reason)
            .await
            .map(|(role, _)| html! { (username) " is now a " (role) " (approved); their sessions have ended." }),
        "reset" => admin::reset_password(&hub, &session.user, &username, &form.reason)
            .await
            .map(|(code, expires)| html! {
                (username) "'s password no longer works and their sessions have ended. Give them this one-time reset code, shown only now (valid until " (super::view::when(expires)) "):"
                p { code id="reset-code" { (code) } }
                "They choose their own password with it on the sign-in page (\"Choose a new password\")."
            }),
        other => match other.strip_prefix("role:").and_then(Role::parse) {
            Some(role) => admin::change_role(&hub, &session.user, &username, role, &form.reason)
                .await
                .map(|change| match change {
                    admin::RoleChange::Changed(_) => html! { (username) " is now a " (role) "; their sessions have ended." },
                    admin::RoleChange::AwaitsApproval => html! { "Making " (username) " a " (role) " waits for a second administrator's approval." },
                }),
            None => Err(service::Error::Field {
                field: "change",
                message: format!("{other:?} is not a change this page makes"),
            }),
        },
    };
    let notice = match result {
        Ok(text) => html! { div.notice.ok role="status" { (text) } },
        Err(e @ service::Error::PermissionDenied(_)) => return Err(refused(e)),
        Err(e) => html! { div.notice.bad role="alert" { "Not changed: " (e) } },
    };
    users_page(&hub, &session, Some(notice)).await
}

/// Makes a system account; its client secret is shown once, here.
/// The form is read by hand: `physician` repeats, once per box ticked, which
/// axum's `Form` does not collect.
pub async fn add_system_account(hub: HubState, session: Session, body: axum::body::Bytes) -> Page {
    let mut csrf = String::new();
    let (mut client_id, mut name, mut physicians) = (String::new(), String::new(), Vec::new());
    for (key, value) in url::form_urlencoded::parse(&body) {
        match key.as_ref() {
            "csrf" => csrf = value.into_owned(),
            "client_id" => client_id = value.into_owned(),
            "name" => name = value.into_owned(),
            "physician" => physicians.push(value.into_owned()),
            _ => {}
        }
    }
    session.check_csrf(&csrf)?;
    let notice = match integration::add(&hub, &session.user, &client_id, &name, &physicians).await {
        Ok((account, secret)) => html! { div.notice.ok role="status" {
            "System account " code { (account.client_id) } " made, ordering for " (account.physicians.join(", ")) ". Give the hospital's integration team its client secret, shown only now (the hub keeps only a hash):"
            p { code id="client-secret" { (secret) } }
            "The engine asks " code { "POST /fhir/auth/token" } " (grant_type=client_credentials, HTTP Basic with the client id and secret) for an access token."
        } },
        Err(e @ service::Error::PermissionDenied(_)) => return Err(refused(e)),
        Err(e) => html! { div.notice.bad role="alert" { "Not added: " (e) } },
    };
    users_page(&hub, &session, Some(notice)).await
}

/// An administrator's change to a system account: disable, enable, a new secret
/// (shown once, here), or a physician put in or taken out of its scope.
pub async fn change_system_account(
    hub: HubState,
    session: Session,
    Path(client_id): Path<String>,
    Form(form): Form<ChangeUserForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let user = &session.user;
    let result = match form.change.as_str() {
        "disable" | "enable" => {
            let disable = form.change == "disable";
            integration::set_disabled(&hub, user, &client_id, disable, &form.reason)
                .await
                .map(|_| html! { (client_id) " is " (if disable { "disabled; its access tokens no longer work" } else { "enabled again" }) "." })
        }
        "rotate" => integration::rotate_secret(&hub, user, &client_id, &form.reason)
            .await
            .map(|(_, secret)| html! {
                "New client secret for " (client_id) ", shown only now; the old one and its tokens no longer work:"
                p { code id="client-secret" { (secret) } }
            }),
        other => {
            let (add, remove) = match other.split_once(':') {
                Some(("add", name)) => (vec![name.to_owned()], Vec::new()),
                Some(("remove", name)) => (Vec::new(), vec![name.to_owned()]),
                _ => (Vec::new(), Vec::new()),
            };
            if add.is_empty() && remove.is_empty() {
                Err(service::Error::Field {
                    field: "change",
                    message: format!("{other:?} is not a change this page makes"),
                })
            } else {
                integration::change_scope(&hub, user, &client_id, &add, &remove, &form.reason)
                    .await
                    .map(|account| html! { (client_id) " now orders for " (account.physicians.join(", ")) "." })
            }
        }
    };
    let notice = match result {
        Ok(text) => html! { div.notice.ok role="status" { (text) } },
        Err(e @ service::Error::PermissionDenied(_)) => return Err(refused(e)),
        Err(e) => html! { div.notice.bad role="alert" { "Not changed: " (e) } },
    };
    users_page(&hub, &session, Some(notice)).await
}

//! Signing in and out, and where each role lands.

use super::view::page;
use super::{
    cookie, problem, refused, HubState, Page, Session, Source, LOGIN_CSRF_COOKIE, SESSION_COOKIE,
};
use crate::auth::{new_secret, secret_sha256};
use crate::model::Role;
use crate::service;
use axum::extract::Form;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    csrf: String,
}

fn login_page(csrf: &str, username: &str, error: Option<&str>, notice: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            div.card {
                @if let Some(notice) = notice { div.notice.ok role="status" { (notice) } }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="username" { "User name" }
                    input id="username" name="username" autocomplete="username" required autofocus value=(username);
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                    p { button type="submit" { "Sign in" } }
                }
                p.muted { a href="/password-reset" { "Have a reset code from an administrator? Choose a new password" } }
            }
        },
    )
}

fn with_login_csrf(csrf: &str, body: Markup) -> Response {
    let cookie =
        format!("{LOGIN_CSRF_COOKIE}={csrf}; Path=/login; Secure; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Html(body.into_string())).into_response()
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    reset: Option<String>,
}

pub async fn login_form(axum::extract::Query(query): axum::extract::Query<LoginQuery>) -> Response {
    let csrf = new_secret();
    let notice = query
        .reset
        .map(|_| "Your new password is set: sign in with it.".to_owned());
    with_login_csrf(&csrf, login_page(&csrf, "", None, notice.as_deref()))
}

pub async fn login(
    hub: HubState,
    Source(source): Source,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if cookie(&headers, LOGIN_CSRF_COOKIE).as_deref() != Some(form.csrf.as_str())
        || form.csrf.is_empty()
    {
        return problem(
            StatusCode::FORBIDDEN,
            "The sign-in form has expired; reload the page and try again.",
        );
    }
    match service::sign_in(&hub, &form.username, &form.password, &source).await {
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
                login_page(
                    &csrf,
                    &service::bounded_username(&form.username),
                    Some(&e.to_string()),
                    None,
                ),
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

/// Where the password-reset form's CSRF cookie is sent.
const RESET_CSRF_COOKIE: &str = "carrel_reset_csrf";

#[derive(Deserialize)]
pub struct ResetForm {
    csrf: String,
    username: String,
    reset_code: String,
    new_password: String,
    repeat: String,
}

fn reset_page(csrf: &str, username: &str, error: Option<&str>) -> Markup {
    page(
        "Choose a new password",
        None,
        html! {
            h1 { "Choose a new password" }
            div.card {
                p { "An administrator reset your password and gave you a one-time code. Choose your own password with it; nobody else learns it." }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/password-reset" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="reset-username" { "User name" }
                    input id="reset-username" name="username" autocomplete="username" required value=(username);
                    label for="reset-code" { "Reset code" }
                    input id="reset-code" name="reset_code" autocomplete="one-time-code" required;
                    label for="new-password" { "New password (12 characters or more, not containing your user name)" }
                    input id="new-password" name="new_password" type="password" autocomplete="new-password" required;
                    label for="repeat-password" { "The new password again" }
                    input id="repeat-password" name="repeat" type="password" autocomplete="new-password" required;
                    p { button type="submit" id="choose-password" { "Choose this password" } }
                }
            }
        },
    )
}

fn with_reset_csrf(csrf: &str, body: Markup) -> Response {
    let cookie = format!(
        "{RESET_CSRF_COOKIE}={csrf}; Path=/password-reset; Secure; HttpOnly; SameSite=Strict"
    );
    ([(header::SET_COOKIE, cookie)], Html(body.into_string())).into_response()
}

pub async fn reset_form() -> Response {
    let csrf = new_secret();
    with_reset_csrf(&csrf, reset_page(&csrf, "", None))
}

/// A person chooses a new password with an administrator's one-time reset code.
pub async fn reset(
    hub: HubState,
    Source(source): Source,
    headers: HeaderMap,
    Form(form): Form<ResetForm>,
) -> Response {
    if cookie(&headers, RESET_CSRF_COOKIE).as_deref() != Some(form.csrf.as_str())
        || form.csrf.is_empty()
    {
        return problem(
            StatusCode::FORBIDDEN,
            "The form has expired; reload the page and try again.",
        );
    }
    let username = service::bounded_username(&form.username);
    let result = if form.new_password != form.repeat {
        Err("The two new passwords differ.".to_owned())
    } else {
        service::complete_password_reset(
            &hub,
            &form.username,
            &form.reset_code,
            &form.new_password,
            &source,
        )
        .await
        .map_err(|e| format!("{e}."))
    };
    match result {
        Ok(()) => Redirect::to("/login?reset=done").into_response(),
        Err(error) => {
            let csrf = new_secret();
            let mut response = with_reset_csrf(&csrf, reset_page(&csrf, &username, Some(&error)));
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            response
        }
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf: String,
    current_password: String,
    new_password: String,
    repeat: String,
}

fn account_page(session: &Session, notice: Option<Markup>) -> Markup {
    let user = &session.user;
    page(
        "Your account",
        Some(session),
        html! {
            h1 { "Your account" }
            @if let Some(notice) = notice { (notice) }
            div.card {
                p { strong { (user.full_name) } " (" (user.username) "), " (user.role) }
                @match user.signature_acknowledged_at {
                    Some(at) => p { "You acknowledged on " (super::view::when(at)) ": " em { (service::release::SIGNATURE_MEANING) } },
                    None => p.muted { "You have not signed anything yet; your first electronic signature asks you to acknowledge what it means." },
                }
            }
            h2 { "Change your password" }
            div.card {
                form method="post" action="/account/password" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="current-password" { "Current password" }
                    input id="current-password" name="current_password" type="password" autocomplete="current-password" required;
                    label for="new-password" { "New password (12 characters or more, not containing your user name)" }
                    input id="new-password" name="new_password" type="password" autocomplete="new-password" required;
                    label for="repeat-password" { "The new password again" }
                    input id="repeat-password" name="repeat" type="password" autocomplete="new-password" required;
                    p { button type="submit" id="change-password" { "Change password" } }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct AccountQuery {
    #[serde(default)]
    changed: Option<String>,
}

pub async fn account(
    session: Session,
    axum::extract::Query(query): axum::extract::Query<AccountQuery>,
) -> Response {
    let notice = query
        .changed
        .map(|_| html! { div.notice.ok role="status" { "Your password was changed." } });
    Html(account_page(&session, notice).into_string()).into_response()
}

pub async fn change_password(
    hub: HubState,
    session: Session,
    Form(form): Form<PasswordForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let result = if form.new_password != form.repeat {
        Err("The two new passwords differ.".to_owned())
    } else {
        service::change_password(
            &hub,
            &session.user,
            &form.current_password,
            &form.new_password,
            &session.source,
        )
        .await
        .map_err(|e| format!("{e}."))
    };
    match result {
        Ok(()) => Ok(Redirect::to("/account?changed=1").into_response()),
        Err(error) => {
            let notice = html! { div.notice.bad role="alert" { "Not changed: " (error) } };
            let mut response =
                Html(account_page(&session, Some(notice)).into_string()).into_response();
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
    }
}

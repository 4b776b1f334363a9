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

//! The hub's web console for physicians, QA and administrators: server-rendered
//! HTML over HTTPS on its own port, no external assets (hospital networks are
//! closed), a little JavaScript only where it clearly helps (live status, the
//! signing dialog). Everything it does goes through [`crate::service`], the same
//! rules the gRPC API follows.
//!
//! Sessions are the API's sessions, carried in a `Secure; HttpOnly; SameSite=Strict`
//! cookie. Every form carries a CSRF token: for signed-in users a hash of their
//! session token (which scripts cannot read); on the sign-in page a random value
//! that must match a cookie set with the form (double submit).

// A console handler that refuses answers with its error page as the `Err` of a
// `Result<_, Response>` (axum's idiom); boxing it would add noise and save nothing.
#![allow(clippy::result_large_err)]

mod admin;
mod analytics;
mod deviations;
mod golden;
mod notifications;
mod orders;
mod qualifications;
mod recipes;
mod release;
mod schedule;
mod signin;
mod view;

use crate::app::Hub;
use crate::auth::secret_sha256;
use crate::model::User;
use crate::service;
use crate::store;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub const SESSION_COOKIE: &str = "carrel_session";
pub const LOGIN_CSRF_COOKIE: &str = "carrel_login_csrf";

/// Headers on every console response: no framing (clickjacking a signature), no
/// content from elsewhere, no MIME sniffing, nothing kept in caches (record pages
/// carry patient data), HTTPS only from the first visit on.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

/// The console's routes.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(signin::home))
        .route("/login", get(signin::login_form).post(signin::login))
        .route("/logout", post(signin::logout))
        .route("/orders", get(orders::orders).post(orders::create_order))
        .route("/orders/rows", get(orders::order_rows))
        .route("/orders/new", get(orders::new_order))
        .route("/orders/{id}", get(orders::order_page))
        .route("/orders/{id}/live", get(orders::order_live))
        .route("/orders/{id}/cancel", post(orders::cancel_order))
        .route("/orders/{id}/reschedule", post(orders::reschedule_order))
        .route("/release", get(release::release_queue))
        .route("/batches/{id}", get(release::batch_record))
        .route("/batches/{id}/sign", post(release::sign))
        .route("/batches/{id}/review-change", post(release::review_change))
        .route(
            "/batches/{id}/follow-ups/{seq}/close",
            post(release::close_follow_up),
        )
        .route("/batches/{id}/export", post(release::export))
        .route("/batches/{id}/deviations", post(release::raise_deviation))
        .route(
            "/batches/{id}/deviations/{deviation_id}",
            get(deviations::show),
        )
        .route(
            "/batches/{id}/deviations/{deviation_id}/note",
            post(deviations::add_note),
        )
        .route(
            "/batches/{id}/deviations/{deviation_id}/close",
            post(deviations::close),
        )
        .route("/analytics", get(analytics::products))
        .route("/analytics/{product}", get(analytics::product))
        .route(
            "/analytics/{product}/baseline",
            post(analytics::choose_baseline),
        )
        .route("/analytics/{product}/chart", get(analytics::chart))
        .route("/analytics/{product}/chart.csv", get(analytics::chart_csv))
        .route("/deviations", get(deviations::list))
        .route(
            "/qualifications",
            get(qualifications::list).post(qualifications::qualify),
        )
        .route("/qualifications/withdraw", post(qualifications::withdraw))
        .route("/recipes", get(recipes::list).post(recipes::save))
        .route("/recipes/new", get(recipes::new_draft))
        .route("/recipes/check", post(recipes::check))
        .route("/recipes/{id}/{version}", get(recipes::show))
        .route("/recipes/{id}/{version}/submit", post(recipes::submit))
        .route("/recipes/{id}/{version}/approve", post(recipes::approve))
        .route("/recipes/{id}/{version}/dry-run", post(recipes::dry_run))
        .route(
            "/notifications",
            get(notifications::notifications).post(notifications::subscribe),
        )
        .route("/notifications/read", post(notifications::mark_read))
        .route(
            "/notifications/subscriptions/{id}/unsubscribe",
            post(notifications::unsubscribe),
        )
        .route(
            "/notifications/outbox/{id}/requeue",
            post(notifications::requeue),
        )
        .route("/admin/sites", get(admin::sites).post(admin::add_site))
        .route("/admin/sites/{id}/status", get(admin::site_status_page))
        .route(
            "/admin/sites/{id}/{action}",
            post(admin::change_site_status),
        )
        .route("/admin/users", get(admin::users).post(admin::add_user))
        .route("/admin/users/{username}/change", post(admin::change_user))
        .route("/admin/system-accounts", post(admin::add_system_account))
        .route(
            "/admin/system-accounts/{client_id}/change",
            post(admin::change_system_account),
        )
        .route("/account", get(signin::account))
        .route("/account/password", post(signin::change_password))
        .route(
            "/password-reset",
            get(signin::reset_form).post(signin::reset),
        )
        .route("/schedule", get(schedule::overview))
        .route(
            "/capacity/{site_id}",
            get(schedule::capacity).post(schedule::set_capacity),
        )
        .route("/style.css", get(view::stylesheet))
        .route("/metrics", get(metrics))
        .nest("/fhir", crate::fhir::router())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(hub)
}

/// Reads one cookie from the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The CSRF token of a session: derived from the session token, which the page's
/// scripts never see (the cookie is HttpOnly).
pub fn csrf_for(session_token: &str) -> String {
    secret_sha256(&format!("csrf:{session_token}"))[..32].to_owned()
}

/// The signed-in user of a request, with their CSRF token. Pages that need one
/// redirect to the sign-in page when there is none.
pub struct Session {
    pub user: User,
    pub csrf: String,
    /// SHA-256 of the session's token, as the store knows the session.
    pub token_sha256: String,
    /// The client's address (failed sign-ins and signings are counted per source).
    pub source: String,
    /// How many of the user's console notifications are unread (shown in the header).
    pub unread: u64,
    /// The page asked for (its navigation link is marked current).
    pub path: String,
}

pub use crate::client_address::Source;

impl Session {
    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, token: &str) -> Result<(), Response> {
        if token == self.csrf {
            Ok(())
        } else {
            Err(problem(StatusCode::FORBIDDEN, "The form has expired or did not come from this console, so nothing was changed. Go back, reload the page and try again."))
        }
    }
}

impl FromRequestParts<Arc<Hub>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        hub: &Arc<Hub>,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/login").into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        match hub
            .store
            .session_user(&secret_sha256(&token), chrono::Utc::now())
            .await
        {
            Ok(user) if !user.disabled && hub.held().is_some() => Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                hub.held().unwrap_or_default(),
            )),
            Ok(user) if !user.disabled => Ok(Session {
                csrf: csrf_for(&token),
                token_sha256: secret_sha256(&token),
                source: crate::client_address::of(parts),
                unread: hub
                    .store
                    .inbox_unread(&user.username)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "console: cannot count unread notifications");
                        0
                    }),
                path: parts.uri.path().to_owned(),
                user,
            }),
            Ok(_) | Err(store::Error::NotFound(_)) => Err(to_login()),
            Err(e) => {
                tracing::error!(error = %e, "console: cannot read the session");
                Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The hub's store is unavailable; try again in a moment.",
                ))
            }
        }
    }
}

/// What a handler answers: the page, or the error page it stopped at (`?`).
type Page = Result<Response, Response>;

fn html_page(markup: maud::Markup) -> Response {
    axum::response::Html(markup.into_string()).into_response()
}

/// A refusal or failure as a page in the console's layout: what happened in words,
/// and the way back. Nothing was changed when a page like this answers a form.
fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not open to you",
        StatusCode::UNAUTHORIZED => "Sign in first",
        StatusCode::CONFLICT => "This cannot be done now",
        StatusCode::SERVICE_UNAVAILABLE => "The hub cannot answer just now",
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            "Something in the form is wrong"
        }
        _ => "Something went wrong",
    };
    let body = view::page(
        title,
        None,
        maud::html! {
            h1 { (title) }
            div.notice.bad role="alert" data-problem=(status.as_u16()) { p { (message) } }
            @if status == StatusCode::FORBIDDEN {
                p.muted { "Each page is open to the roles whose work it is. If you need this, ask an administrator." }
            }
            p { a href="/" { "Back to the console" } }
        },
    );
    (status, axum::response::Html(body.into_string())).into_response()
}

/// Turns a service refusal into an error page (forms show field errors themselves).
fn refused(error: service::Error) -> Response {
    use service::Error as E;
    match error {
        E::Field { message, .. } => problem(StatusCode::BAD_REQUEST, message),
        E::Unauthenticated(m) => problem(StatusCode::UNAUTHORIZED, m),
        E::PermissionDenied(m) => problem(StatusCode::FORBIDDEN, m),
        E::Held(m) => problem(StatusCode::SERVICE_UNAVAILABLE, m),
        E::Store(store::Error::NotFound(what)) => {
            problem(StatusCode::NOT_FOUND, format!("{what} not found"))
        }
        E::Store(store::Error::FailedPrecondition(m) | store::Error::Unavailable(m)) => {
            problem(StatusCode::CONFLICT, m)
        }
        E::Store(e) => {
            tracing::error!(error = %e, "console request failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "The hub's store is unavailable; try again.",
            )
        }
    }
}

fn parse_uuid(text: &str) -> Result<uuid::Uuid, Response> {
    uuid::Uuid::parse_str(text)
        .map_err(|_| problem(StatusCode::NOT_FOUND, format!("{text:?} is not a valid id")))
}

/// Prometheus text exposition. Served without a session, like most exporters:
/// the figures are counts, never patient data; restrict the port if that matters.
async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    match crate::metrics::render(&hub).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot read the store");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the hub's store is unavailable",
            )
                .into_response()
        }
    }
}

/// The hub ([`Hub`]) as handlers extract it.
pub type HubState = State<Arc<Hub>>;

/// Serves the console over HTTPS on `listener` until `shutdown`, with the hub's
/// server certificate.
pub fn serve(
    hub: Arc<Hub>,
    listener: std::net::TcpListener,
    cert_chain_pem: &str,
    key_pem: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let certs =
        rustls_pemfile::certs(&mut cert_chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?
        .ok_or_else(|| anyhow::anyhow!("no private key for the console certificate"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stop.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    listener.set_nonblocking(true)?;
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .handle(handle);
    let app = router(hub);
    Ok(tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = server.serve(app).await {
            tracing::error!(error = %e, "web console stopped");
        }
    }))
}

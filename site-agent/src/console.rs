//! The site console: a local web page for technicians, served by the agent on the
//! site machine (loopback by default). It shows the batches at the site and what to
//! do next, takes a hand-held scanner's keyboard input at custody checkpoints with a
//! large MATCH / MISMATCH answer, and records off-line QC results with the
//! specification beside the input. It reads and writes only the local store, so it
//! keeps working while the hub is unreachable, and says so.
//!
//! People sign in with their own user name and password (checked against the site's
//! copy of the hub's directory, `crate::people`); every record names the signed-in
//! person, and the second person of a two-person verification signs in on the same
//! form with their own credentials. Forms carry the session's CSRF token, so another
//! web page open in the same browser cannot post to the console.

use crate::custody::{self, Scanned};
use crate::entries;
use crate::labels;
use crate::link::LinkState;
use crate::people::{self, SignedIn};
use crate::store::{BatchState, LocalBatch, Store};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use carrel_proto::event::{EventKind, Identity, ReleaseMeaning};
use carrel_proto::recipe::{Outcome, Recipe};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

pub mod golden;
mod sessions;
mod submissions;

use sessions::{Ended, Session, Sessions};
use submissions::{Claim, Recorded, Submissions};

pub struct Console {
    pub store: Arc<Store>,
    pub link: watch::Receiver<LinkState>,
    /// The golden batch's bands, from the hub.
    golden: crate::golden::Source,
    pub site_id: String,
    /// Who is signed in, by session cookie.
    sessions: Sessions,
    /// Failed sign-ins that lock a person at this site.
    lock_after: u32,
    /// The one-time tokens of the recording forms.
    submissions: Submissions,
    /// The site's time zone: every time on the pages is shown in it.
    zone: chrono_tz::Tz,
}

impl Console {
    /// A time as the site's people read it: local, with the zone's abbreviation.
    fn local(&self, at: chrono::DateTime<chrono::Utc>) -> String {
        at.with_timezone(&self.zone)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }
}

/// How the console treats people: idle time of a session, failed sign-ins that lock,
/// and the time zone it shows times in.
#[derive(Debug, Clone, Copy)]
pub struct PeopleSettings {
    pub idle: std::time::Duration,
    pub lock_after: u32,
    pub zone: chrono_tz::Tz,
}

type Shared = State<Arc<Console>>;

/// The host names a request to the console may name (its `Host` header): loopback
/// names, the address it listens on, and the configured names; with any port.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    pub fn new(listen: std::net::SocketAddr, configured: &[String]) -> AllowedHosts {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !listen.ip().is_unspecified() {
            names.push(match listen.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
        }
        names.extend(configured.iter().map(|n| n.to_ascii_lowercase()));
        AllowedHosts { names }
    }

    /// Whether a `Host` header value names this console.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        // Strip a port: after the bracket of an IPv6 literal, or after the one colon.
        let name = match host.rfind(':') {
            Some(colon) if host.starts_with('[') && host[..colon].ends_with(']') => &host[..colon],
            Some(colon) if !host.starts_with('[') => &host[..colon],
            _ => host.as_str(),
        };
        self.names
            .iter()
            .any(|allowed| allowed == name || *allowed == host)
    }
}

/// Refuses a request whose `Host` is not this console's (DNS rebinding), and adds
/// the security headers to every answer.
async fn guard(
    State(hosts): State<Arc<AllowedHosts>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let mut response = if hosts.allows(host) {
        next.run(request).await
    } else {
        tracing::warn!(host, "refused a console request naming a foreign host");
        problem(
            StatusCode::MISDIRECTED_REQUEST,
            format!("This console does not answer to the host name {host:?}. Open it by its own address, or add the name to console_hosts in agent.toml."),
        )
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

pub fn router(
    store: Arc<Store>,
    link: watch::Receiver<LinkState>,
    golden: crate::golden::Source,
    site_id: String,
    hosts: AllowedHosts,
    settings: PeopleSettings,
) -> Router {
    let console = Arc::new(Console {
        store,
        link,
        golden,
        site_id,
        sessions: Sessions::new(settings.idle),
        lock_after: settings.lock_after,
        submissions: Submissions::default(),
        zone: settings.zone,
    });
    Router::new()
        .route("/", get(home))
        .route("/signin", get(sign_in_page).post(sign_in))
        .route("/signout", post(sign_out))
        .route("/status", get(status_fragment))
        .route("/metrics", get(metrics))
        .route("/batches/{id}", get(batch_page))
        .route("/batches/{id}/golden", get(golden_fragment))
        .route("/batches/{id}/scan", post(scan))
        .route("/batches/{id}/qc", post(record_qc))
        .route("/batches/{id}/reading", post(record_reading))
        .route("/batches/{id}/not-running", post(record_not_running))
        .route("/batches/{id}/label", post(print_label))
        .route("/batches/{id}/deviation", post(raise_deviation))
        .with_state(console)
        .layer(axum::middleware::from_fn_with_state(Arc::new(hosts), guard))
}

const CSS: &str = r#"
body{margin:0;font:18px/1.45 system-ui,sans-serif;color:#1b1f24;background:#f6f7f9}
header{background:#fff;border-bottom:1px solid #d5dae1;padding:.6rem 1rem;display:flex;gap:1rem;flex-wrap:wrap;align-items:center}
main{max-width:1000px;margin:0 auto;padding:1rem}
a{color:#0b5cad} table{border-collapse:collapse;width:100%;background:#fff} th,td{padding:.5rem;border-bottom:1px solid #d5dae1;text-align:left}
label{display:block;font-weight:600;margin:.7rem 0 .2rem} input,select{font:inherit;padding:.6rem;border:1px solid #8a939e;border-radius:4px;width:100%;max-width:30rem}
input#label,input#wristband{font-size:1.6rem;font-family:ui-monospace,monospace}
.scan-fields{display:flex;gap:1rem;flex-wrap:wrap;align-items:flex-start;margin-top:.7rem}
.scan-inputs{flex:1 1 18rem;min-width:0}
.patient-id{flex:0 1 15rem;position:sticky;top:.5rem;z-index:1;display:flex;flex-direction:column;gap:.1rem;border:3px solid #1b1f24;border-radius:6px;padding:.6rem .8rem;background:#fff}
.patient-id .pseudonym{font-size:1.6rem}.patient-id .coi{font-size:1.1rem;word-break:break-all}
.muted{color:#4a5560}
dialog.scan-result{position:fixed;inset:0;margin:auto;max-width:min(40rem,calc(100vw - 2rem));max-height:calc(100vh - 2rem);overflow:auto;border:0;border-radius:10px;padding:0;box-shadow:0 10px 40px rgba(0,0,0,.5);z-index:10}
dialog.scan-result::backdrop{background:rgba(0,0,0,.6)}
dialog.scan-result .result{margin:0;border-radius:10px 10px 0 0}
dialog.scan-result .body{padding:1rem 1.2rem}
dialog.scan-result button{width:100%;font-size:1.3rem}
button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:4px;background:#0b5cad;color:#fff;min-height:2.8rem}
:focus{outline:3px solid #ffbf47;outline-offset:1px}
.card{background:#fff;border:1px solid #d5dae1;border-radius:6px;padding:1rem;margin-bottom:1rem}
.link-up{color:#1e7b34;font-weight:700}.link-down{color:#b3261e;font-weight:700}
.suspended{background:#b3261e;color:#fff;padding:.8rem 1rem;font-size:1.1rem}.suspended p{margin:.3rem 0 0}.suspended q{font-weight:700}
.result{font-size:3.2rem;font-weight:900;text-align:center;padding:2rem;border-radius:8px;margin:1rem 0}
.result.match{background:#1e7b34;color:#fff}.result.mismatch{background:#b3261e;color:#fff}
.oos{color:#b3261e;font-weight:700}.error{color:#b3261e;font-weight:700}.next{font-size:1.2rem;font-weight:700}
.who{margin-left:auto;display:flex;gap:.6rem;align-items:center;flex-wrap:wrap} .who form{margin:0}
.who button{background:#fff;color:#0b5cad;border:1px solid #0b5cad;min-height:2.4rem;padding:.3rem .8rem}
fieldset{border:1px solid #d5dae1;border-radius:6px;margin:1rem 0;padding:.6rem 1rem} legend{font-weight:700}
.notice{background:#fff4ce;border:1px solid #e0c25c;border-radius:4px;padding:.6rem 1rem}
.scroll{overflow-x:auto;max-width:100%;position:relative} code{overflow-wrap:anywhere}
.skip-link{position:absolute;left:-999px;top:0;background:#fff;padding:.6rem 1rem;z-index:10}.skip-link:focus{left:.5rem}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
"#;

/// The person signed in at this browser and their session, for the page header
/// and the forms.
struct Who<'a> {
    person: &'a SignedIn,
    session: &'a Session,
}

fn page(console: &Console, who: Option<Who<'_>>, title: &str, body: Markup) -> Markup {
    // A screen left alone goes back to sign-in a little after the session ends (a
    // timer, not a meta refresh: assistive technology announces those as reloads).
    let idle_return = format!(
        "setTimeout(function(){{location.href='/signin?why=idle'}},{});",
        (console.sessions.idle().as_secs() + 2) * 1000
    );
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Carrel site " (console.site_id) }
                style { (PreEscaped(CSS)) (PreEscaped(golden::CSS)) }
            }
            body {
                a.skip-link href="#main" { "Skip to the page's content" }
                header {
                    strong { "Carrel · site " (console.site_id) }
                    @if who.is_some() { a href="/" { "Batches" } }
                    span id="link-status" { (link_status(console)) }
                    @if let Some(who) = &who {
                        span.who {
                            span data-signed-in=(who.person.username) { "Signed in: " strong { (who.person.full_name) } " (" (who.person.username) ", " (who.person.role) ")" }
                            form method="post" action="/signout" {
                                input type="hidden" name="csrf" value=(who.session.csrf);
                                button type="submit" id="sign-out" { "Sign out" }
                            }
                        }
                    }
                }
                div #site-suspension { (suspension_banner(console)) }
                main id="main" tabindex="-1" { (body) }
                script { (PreEscaped(STATUS_SCRIPT)) }
                @if who.is_some() { script { (PreEscaped(idle_return)) } }
            }
        }
    }
}

/// Keeps the header's link status and the suspension banner current: `/status`
/// answers both, and only what changed is replaced (nothing takes the focus).
const STATUS_SCRIPT: &str = "setInterval(function(){fetch('/status').then(function(r){return r.text()}).then(function(t){\
var d=document.createElement('div');d.innerHTML=t;['link-status','site-suspension'].forEach(function(id){\
var n=d.querySelector('#'+id),o=document.getElementById(id);if(n&&o&&o.innerHTML!==n.innerHTML){o.innerHTML=n.innerHTML}})}).catch(function(){})},2000);";

/// Why this site is suspended, as the hub said, and what that stops; nothing when
/// it is not.
fn suspension_banner(console: &Console) -> Markup {
    let suspended = console.link.borrow().suspended.clone();
    html! {
        @if let Some(s) = suspended {
            div.suspended role="alert" data-suspended-by=(s.by) {
                strong { "This site is suspended by the control site." }
                " " (s.by) " suspended it on " (console.local(s.at)) ". "
                "Reason: " q.reason { (s.reason) }
                p { "New manufacturing steps do not start and no product is handed over to a patient until the control site resumes the site. "
                    "Steps already running go on; keep recording what happens (readings, QC results, custody scans before hand-over)." }
            }
        }
    }
}

fn link_status(console: &Console) -> Markup {
    let state = console.link.borrow().clone();
    html! {
        @if state.connected {
            span.link-up data-link="up" { "Hub link up" }
        } @else {
            @if state.suspended.is_some() {
                span.link-down data-link="refused" { "Hub link refused: this site is suspended (records are kept and sent when it is resumed)" }
            } @else {
                span.link-down data-link="down" { "Hub link DOWN: working offline, records are kept and sent when it returns" }
            }
        }
    }
}

/// Prometheus text exposition of the agent: link state, what is waiting to be sent,
/// batches by state, and the instrument's state (steps running on it).
async fn metrics(console: Shared) -> Response {
    let state = console.link.borrow().clone();
    let (last, batches) = match (
        console.store.last_event_seq().await,
        console.store.batches().await,
    ) {
        (Ok(last), Ok(batches)) => (last, batches),
        (Err(e), _) | (_, Err(e)) => return problem(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    metric(
        "carrel_agent_link_up",
        "1 when the link to the hub is up.",
        "gauge",
        vec![(String::new(), u64::from(state.connected))],
    );
    metric(
        "carrel_agent_events_recorded_total",
        "Events recorded in the site's log.",
        "counter",
        vec![(String::new(), last)],
    );
    metric(
        "carrel_agent_events_waiting",
        "Events recorded and not yet acknowledged by the hub.",
        "gauge",
        vec![(
            String::new(),
            last.saturating_sub(state.hub_acked_event_seq),
        )],
    );
    let states = [
        "ordered",
        "accepted",
        "in_process",
        "awaiting_release",
        "released",
        "rejected",
        "cancelled",
        "handed_over",
        "infused",
    ];
    metric(
        "carrel_agent_batches",
        "Batches at this site by state.",
        "gauge",
        states
            .iter()
            .map(|s| {
                (
                    format!("{{state=\"{s}\"}}"),
                    batches.iter().filter(|b| b.state.as_str() == *s).count() as u64,
                )
            })
            .collect(),
    );
    metric(
        "carrel_agent_instrument_steps_running",
        "Steps running on the site's instrument now.",
        "gauge",
        vec![(
            String::new(),
            batches.iter().filter(|b| b.current_step.is_some()).count() as u64,
        )],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn status_fragment(console: Shared) -> Response {
    let state = console.link.borrow().clone();
    let waiting = match console.store.last_event_seq().await {
        Ok(last) => last.saturating_sub(state.hub_acked_event_seq),
        Err(_) => 0,
    };
    Html(html! {
        span #link-status { (link_status(&console)) " · " span data-waiting=(waiting) { (waiting) " records waiting to send" } }
        div #site-suspension { (suspension_banner(&console)) }
    }.into_string()).into_response()
}

fn next_action(
    batch: &LocalBatch,
    recipe: &Recipe,
    events: &[carrel_proto::event::SiteEvent],
    suspended: bool,
) -> String {
    if let Ok(cp) = custody::open_checkpoint(recipe, batch, events) {
        let bedside = recipe.bedside_checkpoints.iter().any(|c| c.id == cp.id);
        if bedside && suspended {
            return "Do not hand over: the site is suspended (see above); keep the product and contact the control site".into();
        }
        return format!(
            "{}: {} ({} verifier{})",
            if bedside {
                "Scan the patient's wristband, then the bag"
            } else {
                "Scan the label"
            },
            cp.name,
            cp.verifiers,
            if cp.verifiers == 1 { "" } else { "s" }
        );
    }
    match batch.state {
        BatchState::Ordered | BatchState::Accepted => "The agent is accepting the order".into(),
        BatchState::InProcess => match &batch.current_step {
            Some(step) => match held(events, step) {
                Some(Hold {
                    unconfirmed_request: Some(request),
                    ..
                }) => format!(
                    "Held: the command of record {request} was not confirmed by the instrument and may be running; check the instrument (see below)"
                ),
                Some(hold) => format!("Held: {}", hold.why),
                None => format!("Step {step} is running on the instrument"),
            },
            None if suspended => "The next step waits: the site is suspended (see above)".into(),
            None => {
                let recorded: std::collections::HashSet<&str> = events
                    .iter()
                    .filter_map(|e| match &e.kind {
                        carrel_proto::event::EventKind::QcResult { test_id, .. } => {
                            Some(test_id.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                let missing: Vec<&str> = recipe
                    .all_tests()
                    .filter(|t| !t.may_follow_release && !recorded.contains(t.id.as_str()))
                    .map(|t| t.name.as_str())
                    .collect();
                if missing.is_empty() {
                    "Waiting for QC results".into()
                } else {
                    format!(
                        "Waiting for QC results: {} (record each below when the laboratory has it)",
                        missing.join(", ")
                    )
                }
            }
        },
        BatchState::AwaitingRelease => "Waiting for QA release at the control site".into(),
        BatchState::Rejected => "Rejected by QA: do not hand over".into(),
        BatchState::Cancelled => "Cancelled".into(),
        BatchState::Released | BatchState::HandedOver => "Bedside scan".into(),
        BatchState::Infused => "Done: the chain of identity is closed".into(),
    }
}

/// Why the agent holds a step, when it does: the instrument refused its command, or
/// a command was sent and never confirmed (the deviation says what to do). A new
/// attempt, or a person's check that nothing runs, ends the hold.
struct Hold<'a> {
    why: &'a str,
    /// For a command sent and never confirmed: the record of its request, which a
    /// person's check ("not running") corrects.
    unconfirmed_request: Option<u64>,
}

fn held<'a>(events: &'a [carrel_proto::event::SiteEvent], step: &str) -> Option<Hold<'a>> {
    use carrel_proto::event::EventKind;
    let mut hold = None;
    let mut request = None;
    for event in events {
        match &event.kind {
            EventKind::DeviationRaised {
                deviation_id,
                step_id,
                description,
                ..
            } if step_id == step && deviation_id.contains(&format!("-{step}-INSTRUMENT")) => {
                hold = Some(Hold {
                    why: description,
                    unconfirmed_request: None,
                });
            }
            EventKind::DeviationRaised {
                deviation_id,
                step_id,
                description,
                ..
            } if step_id == step && deviation_id.contains(&format!("-{step}-UNCONFIRMED")) => {
                hold = Some(Hold {
                    why: description,
                    unconfirmed_request: request,
                });
            }
            EventKind::InstrumentCommandRequested { step_id, .. } if step_id == step => {
                request = Some(event.seq);
                hold = None;
            }
            EventKind::InstrumentCommandStarted { step_id, .. }
            | EventKind::StepCompleted { step_id, .. }
                if step_id == step =>
            {
                hold = None;
            }
            EventKind::Correction { field, .. } if field == "running" => hold = None,
            _ => {}
        }
    }
    hold
}

/// A refusal or failure as a page in the console's layout: what happened in words,
/// and the way back. Nothing was recorded when a page like this answers a form.
fn problem(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let title = problem_title(status);
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Carrel site console" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header { strong { "Carrel · site console" } a href="/" { "Batches" } }
                main id="main" {
                    h1 { (title) }
                    div.notice.bad role="alert" data-problem=(status.as_u16()) { p { (message.to_string()) } }
                    p { a href="/" { "Back to the batches" } }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// The heading of an error page, in words.
fn problem_title(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => "Not allowed",
        StatusCode::CONFLICT => "This cannot be done now",
        StatusCode::SERVICE_UNAVAILABLE => "The site's store is not answering",
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            "Something in the form is wrong"
        }
        _ => "Something went wrong",
    }
}

/// The person signed in at this browser, checked again against the directory as it
/// stands now (a person disabled at the hub stops here as soon as the site has it).
/// Without one, a page asks to sign in and a form records nothing.
async fn gate(
    console: &Console,
    headers: &HeaderMap,
    path: &str,
    posting: bool,
) -> Result<(Session, SignedIn), Response> {
    let why = match sessions::token_of(headers).map(|t| (console.sessions.touch(&t), t)) {
        Some((Ok(session), token)) => {
            match people::current(&console.store, &session.username).await {
                Ok(person) => return Ok((session, person)),
                Err(refused) => {
                    console.sessions.end(&token);
                    Why::Refused(refused)
                }
            }
        }
        Some((Err(Ended::Idle), _)) => Why::Idle,
        _ => Why::SignIn,
    };
    if posting {
        let notice = format!(
            "Nothing was recorded. {} Sign in, then enter it again.",
            why.text(console)
        );
        Err((
            StatusCode::UNAUTHORIZED,
            Html(sign_in_markup(console, &notice, "", path).into_string()),
        )
            .into_response())
    } else {
        let query =
            serde_urlencoded::to_string([("next", path), ("why", why.code())]).unwrap_or_default();
        Err(Redirect::to(&format!("/signin?{query}")).into_response())
    }
}

/// Why the sign-in page is shown. The page's address carries only a code, so a link
/// from elsewhere cannot put words of its own on the console.
enum Why {
    SignIn,
    Idle,
    Out,
    Refused(people::Refused),
    /// A code from the address (the person's reason was given when it was made).
    Code(String),
}

impl Why {
    fn code(&self) -> &str {
        match self {
            Why::SignIn => "",
            Why::Idle => "idle",
            Why::Out => "out",
            Why::Refused(people::Refused::Disabled(_)) => "disabled",
            Why::Refused(people::Refused::Removed(_)) => "removed",
            Why::Refused(people::Refused::Locked(_)) => "locked",
            Why::Refused(_) => "",
            Why::Code(code) => code,
        }
    }

    fn text(&self, console: &Console) -> String {
        match self {
            Why::Refused(refused) => return format!("You were signed out: {refused}."),
            Why::Idle => {
                return format!(
                    "Your session ended after {} minutes without use.",
                    console.sessions.idle().as_secs() / 60
                )
            }
            _ => {}
        }
        match self.code() {
            "idle" => Why::Idle.text(console),
            "out" => "You are signed out.".into(),
            "disabled" => "You were signed out: your account is disabled at the hub.".into(),
            "removed" => "You were signed out: you no longer work at this site.".into(),
            "locked" => "You were signed out: you are locked at this site after failed sign-ins; ask the hub's admin to unlock you.".into(),
            _ => "Sign in to use the site console.".into(),
        }
    }
}

/// Where to go after signing in: a path of this console only.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn sign_in_markup(console: &Console, notice: &str, username: &str, next: &str) -> Markup {
    page(
        console,
        None,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if !notice.is_empty() { p.notice role="alert" data-notice { (notice) } }
            div.card {
                form method="post" action="/signin" {
                    input type="hidden" name="next" value=(local_path(next));
                    label for="username" { "User name, or scan your badge" }
                    input id="username" name="username" value=(username) required autocomplete="username" autocapitalize="none" autofocus[username.is_empty()];
                    label for="password" { "Password (with a badge: its PIN)" }
                    input id="password" name="password" type="password" required autocomplete="current-password" autofocus[!username.is_empty()];
                    p { button type="submit" id="sign-in" { "Sign in" } }
                }
                p { "Every record you make here carries your name. The hub's admin gives you an account and assigns you to this site. The session ends after "
                    (console.sessions.idle().as_secs() / 60) " minutes without use." }
            }
        },
    )
}

#[derive(Deserialize)]
struct SignInQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    why: String,
}

async fn sign_in_page(
    console: Shared,
    headers: HeaderMap,
    Query(query): Query<SignInQuery>,
) -> Response {
    let why = Why::Code(query.why.clone()).text(&console);
    if query.why != "idle" {
        if let Some(token) = sessions::token_of(&headers) {
            if console.sessions.touch(&token).is_ok() {
                return Redirect::to(local_path(&query.next)).into_response();
            }
        }
    }
    Html(sign_in_markup(&console, &why, "", &query.next).into_string()).into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

async fn sign_in(console: Shared, Form(form): Form<SignInForm>) -> Response {
    match people::sign_in(
        &console.store,
        &form.username,
        &form.password,
        console.lock_after,
    )
    .await
    {
        Ok(person) => {
            let token = console.sessions.start(&person.username);
            tracing::info!(username = %person.username, "signed in at the site console");
            let cookie = format!(
                "{}={token}; Path=/; HttpOnly; SameSite=Strict",
                sessions::COOKIE
            );
            (
                [(header::SET_COOKIE, cookie)],
                Redirect::to(local_path(&form.next)),
            )
                .into_response()
        }
        Err(refused) => {
            tracing::warn!(username = %form.username.trim(), %refused, "sign-in refused at the site console");
            let status = match refused {
                people::Refused::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            let notice = format!("Not signed in: {refused}");
            (
                status,
                Html(
                    sign_in_markup(&console, &notice, form.username.trim(), &form.next)
                        .into_string(),
                ),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct SignOutForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(console: Shared, headers: HeaderMap, Form(form): Form<SignOutForm>) -> Response {
    if let Some(token) = sessions::token_of(&headers) {
        if let Ok(session) = console.sessions.touch(&token) {
            if session.csrf != form.csrf {
                return problem(
                    StatusCode::FORBIDDEN,
                    "The form did not come from this console; reload the page.",
                );
            }
            console.sessions.end(&token);
            tracing::info!(username = %session.username, "signed out of the site console");
        }
    }
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        sessions::COOKIE
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(&format!("/signin?why={}", Why::Out.code())),
    )
        .into_response()
}

/// The gate of a recording form of batch `id`: the signed-in person, and the form's
/// CSRF token must be their session's.
async fn form_gate(
    console: &Console,
    headers: &HeaderMap,
    id: &str,
    csrf: &str,
) -> Result<(Session, SignedIn), Response> {
    let (session, person) = gate(console, headers, &format!("/batches/{id}"), true).await?;
    if csrf != session.csrf {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "The form did not come from this console session; reload the page. Nothing was recorded.",
        ));
    }
    Ok((session, person))
}

/// What a recording form starts from: who sends it (session and CSRF token
/// checked), the batch it records for, and its one-time submission token claimed.
struct Opened {
    session: Session,
    person: SignedIn,
    batch: LocalBatch,
    recipe: Recipe,
    events: Vec<carrel_proto::event::SiteEvent>,
}

impl Opened {
    fn who(&self) -> Who<'_> {
        Who {
            person: &self.person,
            session: &self.session,
        }
    }
}

async fn open_form(
    console: &Console,
    headers: &HeaderMap,
    id: &str,
    csrf: &str,
    submission: &str,
) -> Result<Opened, Response> {
    let (session, person) = form_gate(console, headers, id, csrf).await?;
    let (batch, recipe, events) = load(console, id).await?;
    let opened = Opened {
        session,
        person,
        batch,
        recipe,
        events,
    };
    match claim(console, &opened.who(), id, submission).await {
        Some(refused) => Err(refused),
        None => Ok(opened),
    }
}

async fn home(console: Shared, headers: HeaderMap) -> Response {
    let (session, person) = match gate(&console, &headers, "/", false).await {
        Ok(who) => who,
        Err(response) => return response,
    };
    let batches = match console.store.batches().await {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let suspended = console.link.borrow().suspended.is_some();
    let mut rows = Vec::new();
    for batch in &batches {
        let events = console
            .store
            .batch_events(batch.batch_id)
            .await
            .unwrap_or_default();
        let action = match Recipe::from_json(&batch.recipe_json) {
            Ok(recipe) => next_action(batch, &recipe, &events, suspended),
            Err(e) => format!("recipe unreadable: {e}"),
        };
        rows.push((batch, action));
    }
    let who = Who {
        person: &person,
        session: &session,
    };
    Html(page(&console, Some(who), "Batches", html! {
        h1 { "Batches at this site" }
        div.scroll tabindex="0" { table {
            thead { tr { th scope="col" { "COI" } th scope="col" { "Patient" } th scope="col" { "State" } th scope="col" { "Step" } th scope="col" { "Next" } } }
            tbody {
                @for (b, action) in &rows {
                    tr { td { a href=(format!("/batches/{}", b.batch_id)) { (b.coi) } } td { (b.patient_pseudonym) } td { (b.state.as_str().replace('_', " ")) }
                         td { (b.current_step.clone().unwrap_or_default()) } td { (action) } }
                }
                @if rows.is_empty() { tr { td colspan="5" { "No batches yet." } } }
            }
        } }
    }).into_string()).into_response()
}

fn batch_markup(
    console: &Console,
    who: &Who<'_>,
    batch: &LocalBatch,
    recipe: &Recipe,
    events: &[carrel_proto::event::SiteEvent],
    result: Option<Markup>,
    kept: &Kept,
) -> Markup {
    let open = custody::open_checkpoint(recipe, batch, events).ok();
    // A refusal is shown in the form it refuses, with what was typed kept.
    let (result, refusal) = match kept.form {
        Some(_) => (None, result),
        None => (result, None),
    };
    let refused_in = |form: KeptForm| {
        if kept.form == Some(form) {
            refusal.clone()
        } else {
            None
        }
    };
    let qc_tests = carrel_proto::qc::by_test(events);
    let suspended = console.link.borrow().suspended.clone();
    html! {
        h1 { "Batch " (batch.coi) }
        p { "Patient " (batch.patient_pseudonym) " · " (recipe.title) " v" (recipe.version) " · state " strong { (batch.state.as_str().replace('_', " ")) } }
        @if batch.decision.as_deref() == Some(ReleaseMeaning::ReleasedConditionally.as_str()) {
            @let recorded = {
                let mut record = crate::projection::RecordProgress::default();
                for e in events { record.apply(&e.kind); }
                record.tests_recorded
            };
            @let waiting: Vec<&str> = recipe.outstanding_after_release(&recorded).map(|t| t.name.as_str()).collect();
            div.notice data-conditional="true" role="status" {
                strong { "Released conditionally. " }
                @if waiting.is_empty() {
                    "Every result the release waited for is recorded; QA at the control site completes the release."
                } @else {
                    "QA released this batch before every result was in. Still outstanding: " strong { (waiting.join(", ")) }
                    ". Record each below when the laboratory has it; QA and the treating physician are told at once of a result out of specification."
                }
            }
        }
        @if batch.decision.as_deref() == Some(ReleaseMeaning::ReleaseCompleted.as_str()) {
            p data-conditional="completed" { "Release completed: QA confirmed the results the conditional release waited for." }
        }
        @if let Some(result) = result { (result) }
        p.next data-next { "Next: " (next_action(batch, recipe, events, suspended.is_some())) }
        @if let Some(cp) = open {
            @let bedside = recipe.bedside_checkpoints.iter().any(|c| c.id == cp.id);
            @if let (true, Some(s)) = (bedside, &suspended) {
                div.card.scan data-handover="refused" {
                    h2 { "Custody checkpoint: " (cp.name) }
                    @if let Some(refusal) = refused_in(KeptForm::Scan) { (refusal) } @else {
                        p.error { "Hand-over to the patient is refused: this site is " (s.describe()) "." }
                    }
                    p { "Keep the product where it is and contact the control site. The scan is offered again when the control site resumes this site." }
                }
            } @else {
            div.card.scan {
                h2 { "Custody checkpoint: " (cp.name) }
                @if let Some(refusal) = refused_in(KeptForm::Scan) { (refusal) }
                form method="post" action=(format!("/batches/{}/scan", batch.batch_id)) {
                    input type="hidden" name="csrf" value=(who.session.csrf);
                    input type="hidden" name="submission" value=(console.submissions.issue());
                    input type="hidden" name="checkpoint" value=(cp.id);
                    p { "Verifier 1: " strong { (who.person.full_name) } " (you, " (who.person.username) ")" }
                    @for i in 1..cp.verifiers {
                        fieldset {
                            legend { "Verifier " (i + 1) ": a second person signs with their own credentials" }
                            label for=(format!("verifier-username{i}")) { "Their user name, or scan their badge" }
                            input id=(format!("verifier-username{i}")) name="verifier_username" required autocomplete="off" autocapitalize="none";
                            label for=(format!("verifier-password{i}")) { "Their password (with a badge: its PIN)" }
                            input id=(format!("verifier-password{i}")) name="verifier_password" type="password" required autocomplete="off";
                        }
                    }
                    label for="location" { "Location" }
                    input id="location" name="location" placeholder="room, bench or ward" value=[kept.get(KeptForm::Scan, "location")];
                    div.scan-fields {
                        // Whose product this page is for, beside the scan fields.
                        div.patient-id aria-label="This batch is for" {
                            span.muted { "This batch is for" }
                            strong.pseudonym data-pseudonym { (batch.patient_pseudonym) }
                            span.muted { "COI" }
                            code.coi data-coi { (batch.coi) }
                        }
                        div.scan-inputs {
                            @if bedside {
                                label for="wristband" { "1. Scan the patient's wristband" }
                                input id="wristband" name="wristband" required autofocus autocomplete="off" aria-describedby="wristband-hint"
                                    value=[kept.get(KeptForm::Scan, "wristband")];
                                p.muted id="wristband-hint" { "Its COI, or the patient's code. Then the bag." }
                                label for="label" { "2. Scan the product bag's label" }
                                input id="label" name="label" required autocomplete="off";
                            } @else {
                                label for="label" { "Scan the label (the scanner types it and presses Enter)" }
                                input id="label" name="label" required autofocus autocomplete="off";
                            }
                        }
                    }
                    p { button type="submit" { @if bedside { "Compare patient and bag" } @else { "Check label" } } }
                }
                script { (PreEscaped(SCAN_SCRIPT)) }
            }
            }
        }
        @if let Some(request) = batch.current_step.as_deref().and_then(|s| held(events, s)).and_then(|h| h.unconfirmed_request) {
            div.card.held id="not-running" {
                h2 { "Is the instrument running the command?" }
                p { "The agent sent the command (record " (request) ") and never heard that the instrument took it, so it may be running. It is not sent again until someone checks." }
                ul {
                    li { "If the instrument runs it: do not record anything here. Let it finish or stop it at the instrument, and tell QA." }
                    li { "If it does not (its screen and log show no run for this batch): record that below, and the agent sends the command once more." }
                }
                @if let Some(refusal) = refused_in(KeptForm::NotRunning) { (refusal) }
                form method="post" action=(format!("/batches/{}/not-running", batch.batch_id)) {
                    input type="hidden" name="csrf" value=(who.session.csrf);
                    input type="hidden" name="submission" value=(console.submissions.issue());
                    input type="hidden" name="request" value=(request);
                    label for="checked" { "What you checked at the instrument (kept in the record)" }
                    textarea id="checked" name="checked" rows="2" required { (kept.get(KeptForm::NotRunning, "checked").unwrap_or_default()) }
                    label.check for="not-running-confirm" {
                        input type="checkbox" id="not-running-confirm" name="confirm" value="yes";
                        " I checked: the instrument is not running this command"
                    }
                    p { "Recorded by " strong { (who.person.full_name) } " (you)" }
                    p { button type="submit" id="not-running-submit" { "Record: not running; send the command again" } }
                }
            }
        }
        @if let Some(step) = batch.current_step.as_deref().and_then(|s| recipe.step(s)) {
            @if !step.parameters.is_empty() {
                div.card {
                    h2 { "Record a manual reading: " (step.name) }
                    @if let Some(refusal) = refused_in(KeptForm::Reading) { (refusal) }
                    form method="post" action=(format!("/batches/{}/reading", batch.batch_id)) id="reading-form" {
                        input type="hidden" name="csrf" value=(who.session.csrf);
                        input type="hidden" name="submission" value=(console.submissions.issue());
                        label for="parameter" { "Parameter" }
                        select id="parameter" name="parameter" {
                            @for p in &step.parameters {
                                option value=(p.name) data-min=(p.low) data-max=(p.high) data-accepted="" data-spec=(format!("{} to {} {}", p.low, p.high, carrel_proto::recipe::unit_words(&p.unit)).trim_end().to_owned())
                                    selected[kept.get(KeptForm::Reading, "parameter") == Some(p.name.as_str())] { (p.label()) }
                            }
                        }
                        p { "Normal range: " strong id="reading-spec" {} }
                        label for="reading-value" { "Reading" }
                        input id="reading-value" name="value" required autocomplete="off" inputmode="decimal"
                            value=[kept.get(KeptForm::Reading, "value")];
                        p id="reading-flag" aria-live="polite" {}
                        p { "Read by " strong { (who.person.full_name) } " (you)" }
                        p { button type="submit" { "Record reading" } }
                    }
                    script { (PreEscaped(READING_SCRIPT)) }
                }
            }
        }
        div.card id="qc" {
            h2 { "Record an off-line QC result" }
            @if let Some(refusal) = refused_in(KeptForm::Qc) { (refusal) }
            form method="post" action=(format!("/batches/{}/qc", batch.batch_id)) id="qc-form" {
                input type="hidden" name="csrf" value=(who.session.csrf);
                input type="hidden" name="submission" value=(console.submissions.issue());
                label for="test" { "Test" }
                select id="test" name="test" {
                    @for t in recipe.all_tests() {
                        option value=(t.id) data-min=(t.spec.min.map(|v| v.to_string()).unwrap_or_default())
                            data-max=(t.spec.max.map(|v| v.to_string()).unwrap_or_default())
                            data-accepted=(t.spec.accepted.join("|")) data-spec=(format!("{} {}", t.spec, carrel_proto::recipe::unit_words(&t.unit)).trim_end().to_owned())
                            selected[kept.get(KeptForm::Qc, "test") == Some(t.id.as_str())] { (t.name) }
                    }
                }
                p { "Specification: " strong id="qc-spec" {} }
                label for="value" { "Result" }
                input id="value" name="value" required autocomplete="off" value=[kept.get(KeptForm::Qc, "value")];
                p id="qc-flag" aria-live="polite" {}
                p { "Measured by " strong { (who.person.full_name) } " (you)" }
                // A test that already has a result: the new one says which result it
                // retests, chosen from that test's current results (never typed).
                div id="retest" {
                    label for="retest_of" { "Retest of" }
                    select id="retest_of" name="retest_of" aria-describedby="retest-hint" {
                        option value="" { "Choose the result this one retests" }
                        @for results in &qc_tests {
                            @for seq in results.current() {
                                @if let Some(event) = events.iter().find(|e| e.seq == seq) {
                                    option value=(seq) data-test=(results.test_id)
                                        selected[kept.get(KeptForm::Qc, "retest_of") == Some(seq.to_string().as_str())] {
                                        (entries::result_words(event)) ", " (console.local(event.recorded_at)) ", by " (event.recorded_by)
                                    }
                                }
                            }
                        }
                    }
                    p.muted id="retest-hint" { "This test already has a result. The new result is a retest: both stay on the record, and the retest is the one that counts." }
                }
                p { button type="submit" { "Record result" } }
            }
            script { (PreEscaped(QC_SCRIPT)) }
        }
        (labels_markup(console, who, batch, recipe, events))
        @if batch.state != BatchState::Cancelled {
            div.card id="deviation" {
                h2 { "Raise a deviation" }
                p.muted { "Something departed from the recipe or the site's procedure. QA investigates it and closes it at the hub; a major or critical deviation stops the batch's release until then." }
                @if let Some(refusal) = refused_in(KeptForm::Deviation) { (refusal) }
                form method="post" action=(format!("/batches/{}/deviation", batch.batch_id)) {
                    input type="hidden" name="csrf" value=(who.session.csrf);
                    input type="hidden" name="submission" value=(console.submissions.issue());
                    label for="deviation-step" { "Step" }
                    select id="deviation-step" name="step" {
                        option value="" { "The batch as a whole" }
                        @for step in &recipe.steps {
                            option value=(step.id)
                                selected[kept.get(KeptForm::Deviation, "step").map_or(batch.current_step.as_deref() == Some(step.id.as_str()), |k| k == step.id)] { (step.name) }
                        }
                    }
                    label for="deviation-classification" { "Classification" }
                    select id="deviation-classification" name="classification" required {
                        option value="" { "Choose…" }
                        @for (value, words) in [("minor", "Minor: no effect on the product's quality"), ("major", "Major: may affect quality; release waits for QA to close it"), ("critical", "Critical: affects safety or quality; release waits for QA to close it")] {
                            option value=(value) selected[kept.get(KeptForm::Deviation, "classification") == Some(value)] { (words) }
                        }
                    }
                    label for="deviation-description" { "What happened, where, and what was done" }
                    textarea id="deviation-description" name="description" rows="3" required { (kept.get(KeptForm::Deviation, "description").unwrap_or_default()) }
                    p { "Raised by " strong { (who.person.full_name) } " (you)" }
                    p { button type="submit" id="deviation-submit" { "Raise deviation" } }
                }
            }
        }
        h2 { "Records of this batch" }
        div.scroll tabindex="0" { table {
            thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "By" } th scope="col" { "What" } } }
            tbody { @for e in events.iter().rev().filter(|e| !matches!(e.kind, EventKind::ProcessSamples { .. }) || !matches!(e.identity, Identity::Agent)).take(40) {
                tr { td { (e.seq) } td { (console.local(e.recorded_at)) } td { (e.recorded_by) (identity_note(&e.identity)) } td { (e.kind.name().replace('_', " ")) } }
            } }
        } }
    }
}

/// How a record's maker is shown beside their name.
fn identity_note(identity: &Identity) -> &'static str {
    match identity {
        Identity::Authenticated { .. } | Identity::Agent => "",
        Identity::Simulated => " (simulated)",
        Identity::Unverified => " (identity not verified)",
    }
}

/// Shows the selected test's specification, and flags an out-of-specification value
/// as it is typed (the agent evaluates again when it records). When the test already
/// has a result, it offers that test's results to choose the one retested, and asks
/// for the choice.
const QC_SCRIPT: &str = r#"(function(){
var s=document.getElementById('test'),v=document.getElementById('value'),f=document.getElementById('qc-flag'),sp=document.getElementById('qc-spec');
var rb=document.getElementById('retest'),r=document.getElementById('retest_of');
function opt(){return s.options[s.selectedIndex]}
function retests(){var id=opt().value,any=false;
for(var i=1;i<r.options.length;i++){var o=r.options[i],mine=o.dataset.test===id;o.hidden=!mine;o.disabled=!mine;if(mine)any=true;else if(o.selected)r.selectedIndex=0}
rb.hidden=!any;r.required=any}
function check(){var o=opt();sp.textContent=o.dataset.spec;var t=v.value.trim();if(!t){f.textContent='';f.className='';return}
var bad=false;if(o.dataset.accepted){bad=o.dataset.accepted.split('|').map(function(a){return a.toLowerCase()}).indexOf(t.toLowerCase())<0}
else{var n=Number(t);if(isNaN(n)){f.textContent='Not a number';f.className='error';return}
if(o.dataset.min!==''&&n<Number(o.dataset.min))bad=true;if(o.dataset.max!==''&&n>Number(o.dataset.max))bad=true}
f.textContent=bad?'OUT OF SPECIFICATION':'within specification';f.className=bad?'oos':''}
s.addEventListener('change',function(){retests();check()});v.addEventListener('input',check);retests();check();})();"#;

/// The scan form and its result. At the bedside the scanner's Enter after the
/// wristband moves on to the bag instead of sending the form. The result of a scan
/// opens as a modal that must be acknowledged (Escape does not dismiss it: a close
/// without the acknowledgement opens it again), with a
/// sound; closing it puts the cursor back in the first scan field and drops the
/// result from the address, so a reload does not show it again.
const SCAN_SCRIPT: &str = r#"(function(){
var w=document.getElementById('wristband'),l=document.getElementById('label');
if(w){w.addEventListener('focus',function(){w.select()});w.addEventListener('keydown',function(e){if(e.key==='Enter'){e.preventDefault();if(w.value.trim())l.focus()}})}
var first=w||l,d=document.getElementById('scan-result');
function ready(){var b=document.querySelector('.scan-fields');if(b&&b.scrollIntoView)b.scrollIntoView({block:'center'});if(first)first.focus({preventScroll:true})}
if(!d){if(first)ready();return}
function sound(kind){try{var C=window.AudioContext||window.webkitAudioContext;if(!C)return 'none';var c=new C();
var tones=kind==='match'?[[880,0,.18]]:[[330,0,.35],[220,.45,.35],[330,.9,.35],[220,1.35,.35]];
tones.forEach(function(t){var o=c.createOscillator(),g=c.createGain();o.type=kind==='match'?'sine':'square';o.frequency.value=t[0];
g.gain.value=.25;o.connect(g);g.connect(c.destination);o.start(c.currentTime+t[1]);o.stop(c.currentTime+t[1]+t[2])});
if(c.state==='suspended'){document.addEventListener('pointerdown',function(){c.resume()},{once:true});document.addEventListener('keydown',function(){c.resume()},{once:true})}
return c.state}catch(e){return 'none'}}
if(d.showModal){d.close();d.showModal()}
d.dataset.sound=sound(d.dataset.result);
d.addEventListener('cancel',function(e){e.preventDefault()});
d.addEventListener('close',function(){
if(d.returnValue!=='acknowledged'&&d.showModal){d.showModal();var a=document.getElementById('acknowledge-scan');if(a)a.focus();return}
if(first)ready();
if(history.replaceState)history.replaceState(null,'',location.pathname)});
var ack=document.getElementById('acknowledge-scan');if(ack)ack.focus();})();"#;

/// Shows the parameter's normal range and flags a reading outside it as it is typed.
const READING_SCRIPT: &str = r#"(function(){
var s=document.getElementById('parameter'),v=document.getElementById('reading-value'),f=document.getElementById('reading-flag'),sp=document.getElementById('reading-spec');
function check(){var o=s.options[s.selectedIndex];sp.textContent=o.dataset.spec;var t=v.value.trim();if(!t){f.textContent='';return}
var n=Number(t);if(isNaN(n)){f.textContent='Not a number';f.className='error';return}
var bad=n<Number(o.dataset.min)||n>Number(o.dataset.max);f.textContent=bad?'OUTSIDE THE NORMAL RANGE':'within range';f.className=bad?'oos':''}
s.addEventListener('change',check);v.addEventListener('input',check);check();})();"#;

#[derive(Deserialize)]
struct ReadingForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    submission: String,
    #[serde(default)]
    parameter: String,
    #[serde(default)]
    value: String,
}

async fn record_reading(
    console: Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReadingForm>,
) -> Response {
    let opened = match open_form(&console, &headers, &id, &form.csrf, &form.submission).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let (who, batch, person) = (opened.who(), &opened.batch, &opened.person);
    let outcome = entries::record_reading(
        &console.store,
        entries::ManualReading {
            batch,
            parameter: &form.parameter,
            value: &form.value,
            by: person,
        },
    )
    .await;
    let outcome = match outcome {
        Ok((event, false)) => Ok((
            event.seq,
            html! { p data-result="reading" { "Recorded " (form.parameter) " = " (form.value) " (record " (event.seq) ")." } },
        )),
        Ok((event, true)) => Ok((
            event.seq,
            html! { p.oos data-result="reading-out-of-range" { "Recorded " (form.parameter) " = " (form.value) " (record " (event.seq) "): OUTSIDE THE NORMAL RANGE. Raise a deviation if the instrument did not." } },
        )),
        Err(e) => {
            Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (e) } })
        }
    };
    let kept = Kept::of(
        KeptForm::Reading,
        &[("parameter", &form.parameter), ("value", &form.value)],
    );
    answer(&console, &who, &id, &form.submission, outcome, kept).await
}

#[derive(Deserialize)]
struct NotRunningForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    submission: String,
    #[serde(default)]
    request: String,
    #[serde(default)]
    checked: String,
    #[serde(default)]
    confirm: String,
}

/// A person checked the instrument and found that a command sent and never confirmed
/// is not running: recorded as a correction of the request record (field
/// `running`, value `no`, with what they checked), after which the agent sends the
/// command once more. Refused unless the batch is held for exactly that request.
/// The batch's labels, one per manufacturing custody checkpoint: how often each was
/// printed and by whom last, and a Print (or Reprint) button that records the print
/// and opens the label in a new tab, to print from there.
fn labels_markup(
    console: &Console,
    who: &Who<'_>,
    batch: &LocalBatch,
    recipe: &Recipe,
    events: &[carrel_proto::event::SiteEvent],
) -> Markup {
    let checkpoints: Vec<_> = recipe
        .steps
        .iter()
        .filter_map(|s| s.custody_checkpoint.as_ref())
        .collect();
    html! {
        @if !checkpoints.is_empty() && batch.state != BatchState::Cancelled {
            h2 { "Labels" }
            div.scroll tabindex="0" { table data-labels {
                thead { tr { th scope="col" { "Label" } th scope="col" { "Printed" } th scope="col" { "Print" } } }
                tbody { @for cp in &checkpoints {
                    @let prints: Vec<&carrel_proto::event::SiteEvent> = events.iter().filter(|e| matches!(&e.kind, EventKind::LabelPrinted { checkpoint_id, .. } if checkpoint_id == &cp.id)).collect();
                    tr data-label=(cp.id) {
                        td { (cp.name) }
                        td { @match prints.last() {
                            Some(last) => { (prints.len()) " time(s), last by " (last.recorded_by) " at " (console.local(last.recorded_at)) }
                            None => span.muted { "not yet" }
                        } }
                        td {
                            form method="post" action=(format!("/batches/{}/label", batch.batch_id)) target="_blank" {
                                input type="hidden" name="csrf" value=(who.session.csrf);
                                input type="hidden" name="submission" value=(console.submissions.issue());
                                input type="hidden" name="checkpoint" value=(cp.id);
                                label { "Format " select name="format" {
                                    option value="pdf" selected { "PDF (any printer)" }
                                    option value="zpl" { "ZPL (Zebra printer)" }
                                    option value="png" { "PNG" }
                                } }
                                " "
                                button type="submit" data-print=(cp.id) { @if prints.is_empty() { "Print label" } @else { "Reprint label" } }
                            }
                        }
                    }
                } }
            } }
            p.muted { "Each print and reprint is recorded with your name. The label opens in a new tab; print it from there. A form sent twice prints once: reload this page to reprint." }
        }
    }
}

#[derive(serde::Deserialize)]
struct LabelForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    submission: String,
    #[serde(default)]
    checkpoint: String,
    #[serde(default)]
    format: String,
}

/// Records the print of a label and answers the label itself; a refusal (or a form
/// sent again) comes back as the batch page with why, and nothing recorded.
async fn print_label(
    console: Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<LabelForm>,
) -> Response {
    let opened = match open_form(&console, &headers, &id, &form.csrf, &form.submission).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let printed = async {
        let format = labels::Format::parse(&form.format)?;
        let label = labels::label_of(
            &opened.batch,
            &form.checkpoint,
            &console.site_id,
            console.zone,
            chrono::Utc::now(),
        )?;
        let (event, bytes) = labels::print(
            &console.store,
            &opened.batch,
            &form.checkpoint,
            &label,
            format,
            &opened.person,
        )
        .await?;
        Ok::<_, labels::Error>((event, bytes, format, label))
    }
    .await;
    match printed {
        Ok((event, bytes, format, label)) => {
            console.submissions.finish(
                &form.submission,
                Some(Recorded {
                    seq: event.seq,
                    outcome: html! { p data-result="label" { "Label printed (record " (event.seq) ")." } }.into_string(),
                }),
            );
            let name = format!(
                "label-{}-{}.{}",
                label.coi.as_str(),
                form.checkpoint,
                format.as_str()
            );
            (
                [
                    (header::CONTENT_TYPE, format.content_type().to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("inline; filename=\"{name}\""),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(why) => {
            let markup =
                html! { p.error role="alert" data-result="refused" { "Not printed: " (why) } };
            answer(
                &console,
                &opened.who(),
                &id,
                &form.submission,
                Err(markup),
                Kept::default(),
            )
            .await
        }
    }
}

async fn record_not_running(
    console: Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<NotRunningForm>,
) -> Response {
    let opened = match open_form(&console, &headers, &id, &form.csrf, &form.submission).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let (who, batch, events, person) =
        (opened.who(), &opened.batch, &opened.events, &opened.person);
    let waiting = batch
        .current_step
        .as_deref()
        .and_then(|step| held(events, step))
        .and_then(|hold| hold.unconfirmed_request);
    let outcome = match (waiting, form.request.parse::<u64>().ok()) {
        (Some(request), Some(asked)) if request == asked => {
            if form.confirm != "yes" {
                Err("tick the box to say you checked that the instrument is not running the command".to_owned())
            } else if form.checked.split_whitespace().count() < 3 {
                Err("say in a few words what you checked at the instrument (for example: its run log shows no run since 09:40)".to_owned())
            } else {
                entries::correct(
                    &console.store,
                    request,
                    "running",
                    "no",
                    &form.checked,
                    person,
                )
                .await
                .map(|event| (event.seq, request))
                .map_err(|e| e.to_string())
            }
        }
        _ => Err("this batch is not waiting for a check of that command (any more); nothing was recorded".to_owned()),
    };
    let outcome = match outcome {
        Ok((seq, request)) => Ok((
            seq,
            html! { p data-result="not-running" { "Recorded (record " (seq) "): the command of record " (request) " is not running. The agent sends it once more." } },
        )),
        Err(why) => {
            Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (why) } })
        }
    };
    let kept = Kept::of(KeptForm::NotRunning, &[("checked", &form.checked)]);
    answer(&console, &who, &id, &form.submission, outcome, kept).await
}

#[derive(Deserialize)]
struct DeviationForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    submission: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    classification: String,
    #[serde(default)]
    description: String,
}

/// A deviation raised by hand by the signed-in person.
async fn raise_deviation(
    console: Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DeviationForm>,
) -> Response {
    let opened = match open_form(&console, &headers, &id, &form.csrf, &form.submission).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let raised = entries::raise_deviation(
        &console.store,
        entries::ManualDeviation {
            batch: &opened.batch,
            step_id: &form.step,
            classification: &form.classification,
            description: &form.description,
            by: &opened.person,
        },
    )
    .await;
    let outcome = match raised {
        Ok(event) => {
            let id = match &event.kind {
                EventKind::DeviationRaised { deviation_id, .. } => deviation_id.clone(),
                _ => String::new(),
            };
            Ok((
                event.seq,
                html! { p data-result="deviation" { "Deviation " (id) " raised (record " (event.seq) "). QA investigates and closes it at the hub." } },
            ))
        }
        Err(why) => {
            Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (why) } })
        }
    };
    let kept = Kept::of(
        KeptForm::Deviation,
        &[
            ("step", &form.step),
            ("classification", &form.classification),
            ("description", &form.description),
        ],
    );
    answer(
        &console,
        &opened.who(),
        &id,
        &form.submission,
        outcome,
        kept,
    )
    .await
}

/// Takes a form's one-time token; `Some` is the answer when it may not record
/// (sent before, being recorded, or not issued here), with nothing recorded.
async fn claim(console: &Console, who: &Who<'_>, id: &str, token: &str) -> Option<Response> {
    let notice = match console.submissions.claim(token) {
        Claim::Fresh => return None,
        Claim::Recorded(recorded) => html! {
            p.error role="alert" data-result="repeat" { "Already recorded as record " (recorded.seq) ": this form was sent before, and nothing was recorded again." }
            (PreEscaped(recorded.outcome))
        },
        Claim::InFlight => html! {
            p.error role="alert" data-result="repeat" { "This form is being recorded right now; nothing was recorded again. Reload the page in a moment to see the record." }
        },
        Claim::Unknown => html! {
            p.error role="alert" data-result="expired" { "This form has expired (the console restarted, or the page is old), so nothing was recorded. Enter it again below." }
        },
    };
    Some(
        batch_page_with(
            console,
            who,
            id,
            StatusCode::CONFLICT,
            Some(notice),
            Kept::none(),
        )
        .await,
    )
}

/// Ends a claimed submission: a record made is kept with its token and the browser
/// is sent to the batch page to show it (POST-redirect-GET, so a reload does not
/// send the form again); a refusal recorded nothing and shows the page with why.
/// A recording form of the batch page.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KeptForm {
    Qc,
    Reading,
    Scan,
    NotRunning,
    Deviation,
}

/// A refused form's input, shown again in the form with why it was refused
/// (passwords and scanned labels are never kept: they are entered again).
#[derive(Debug, Default)]
struct Kept {
    form: Option<KeptForm>,
    fields: Vec<(String, String)>,
}

impl Kept {
    fn none() -> Kept {
        Kept::default()
    }

    fn of(form: KeptForm, fields: &[(&str, &str)]) -> Kept {
        Kept {
            form: Some(form),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// What was typed in `name`, if this is the form that was refused.
    fn get(&self, form: KeptForm, name: &str) -> Option<&str> {
        if self.form != Some(form) {
            return None;
        }
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn answer(
    console: &Console,
    who: &Who<'_>,
    id: &str,
    token: &str,
    outcome: Result<(u64, Markup), Markup>,
    kept: Kept,
) -> Response {
    match outcome {
        Ok((seq, markup)) => {
            console.submissions.finish(
                token,
                Some(Recorded {
                    seq,
                    outcome: markup.into_string(),
                }),
            );
            Redirect::to(&format!("/batches/{id}?recorded={token}")).into_response()
        }
        Err(markup) => {
            console.submissions.finish(token, None);
            batch_page_with(
                console,
                who,
                id,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(markup),
                kept,
            )
            .await
        }
    }
}

async fn load(
    console: &Console,
    id: &str,
) -> Result<(LocalBatch, Recipe, Vec<carrel_proto::event::SiteEvent>), Response> {
    let batch = custody::find_batch(&console.store, id)
        .await
        .map_err(|e| problem(StatusCode::NOT_FOUND, e))?;
    let recipe = Recipe::from_json(&batch.recipe_json)
        .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let events = console
        .store
        .batch_events(batch.batch_id)
        .await
        .map_err(|e| problem(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok((batch, recipe, events))
}

#[derive(Deserialize)]
struct BatchQuery {
    /// The token of a submission just recorded, whose outcome the page shows.
    #[serde(default)]
    recorded: String,
}

async fn batch_page(
    console: Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<BatchQuery>,
) -> Response {
    let (session, person) = match gate(&console, &headers, &format!("/batches/{id}"), false).await {
        Ok(who) => who,
        Err(response) => return response,
    };
    let who = Who {
        person: &person,
        session: &session,
    };
    let result = console
        .submissions
        .recorded(&query.recorded)
        .map(|recorded| PreEscaped(recorded.outcome));
    batch_page_with(&console, &who, &id, StatusCode::OK, result, Kept::none()).await
}

/// The batch page, with the outcome of what was just submitted on top.
async fn batch_page_with(
    console: &Console,
    who: &Who<'_>,
    id: &str,
    status: StatusCode,
    result: Option<Markup>,
    kept: Kept,
) -> Response {
    match load(console, id).await {
        Ok((batch, recipe, events)) => {
            let golden = golden_markup(console, &batch, &recipe, &events).await;
            let body = page(
                console,
                Some(Who {
                    person: who.person,
                    session: who.session,
                }),
                &batch.coi,
                html! {
                    (batch_markup(console, who, &batch, &recipe, &events, result, &kept))
                    div id="golden" { (golden) }
                    script { (PreEscaped(GOLDEN_SCRIPT.replace("BATCH", &batch.batch_id.to_string()))) }
                },
            );
            (status, Html(body.into_string())).into_response()
        }
        Err(response) => response,
    }
}

/// Keeps the golden batch current while the batch is made: `/batches/BATCH/golden`
/// answers the section, put in only when it differs from what was last served
/// (not from the browser's own rendering of it) and never while the focus is
/// inside it; polling stops once the session has ended (401).
const GOLDEN_SCRIPT: &str = "(function(){var el=document.getElementById('golden');el.dataset.served=el.innerHTML;\
var timer=setInterval(function(){fetch('/batches/BATCH/golden',{credentials:'same-origin',redirect:'error'})\
.then(function(r){if(!r.ok){if(r.status===401)clearInterval(timer);return null}return r.text()}).then(function(t){\
if(t!==null&&t!==el.dataset.served&&!el.contains(document.activeElement)){el.dataset.served=t;el.innerHTML=t}}).catch(function(){})},3000)})();";

/// The step being made (or the last one sampled) over its golden batch: the
/// hub's band, the site's own samples; said when the band is not a fresh one.
async fn golden_markup(
    console: &Console,
    batch: &LocalBatch,
    recipe: &Recipe,
    events: &[carrel_proto::event::SiteEvent],
) -> Markup {
    let bands = console.golden.bands(batch.batch_id).await;
    let steps = crate::golden::steps(recipe, events, bands.fetched.as_ref().map(|f| &f.answer));
    let note = match (&bands.fetched, &bands.stale) {
        (_, None) => None,
        (None, Some(why)) => Some(html! {
            p.muted data-golden-note { "No band from the hub yet: " (why) ". This batch's samples are drawn without it." }
        }),
        (Some(f), Some(why)) => Some(html! {
            p.muted data-golden-note { "The band as the hub sent it at " (console.local(f.at)) "; " (why) "." }
        }),
    };
    let shown: Vec<golden::Step<'_>> = steps
        .iter()
        .map(|(name, panels)| golden::Step { name, panels })
        .collect();
    golden::section(&shown, true, note)
}

/// The golden-batch section alone, for the batch page's polling: the session is
/// checked without counting as activity (a screen left alone still signs out),
/// and without one the answer is 401, not the sign-in page.
async fn golden_fragment(console: Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let session = sessions::token_of(&headers).and_then(|t| console.sessions.peek(&t).ok());
    let Some(session) = session else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if people::current(&console.store, &session.username)
        .await
        .is_err()
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match load(&console, &id).await {
        Ok((batch, recipe, events)) => Html(
            golden_markup(&console, &batch, &recipe, &events)
                .await
                .into_string(),
        )
        .into_response(),
        Err(response) => response,
    }
}

/// The form's repeated fields arrive as a list of pairs.
type Fields = Vec<(String, String)>;

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The people of a two-person verification: the signed-in person, then each other
/// verifier checked with their own credentials on the same form (a wrong password
/// counts towards their lock; the same person twice is refused before any check).
async fn verifiers(
    console: &Console,
    person: &SignedIn,
    fields: &Fields,
) -> Result<Vec<SignedIn>, people::Refused> {
    let names = fields.iter().filter(|(k, _)| k == "verifier_username");
    let passwords = fields.iter().filter(|(k, _)| k == "verifier_password");
    let mut people = vec![person.clone()];
    for ((_, name), (_, password)) in names.zip(passwords) {
        if people
            .iter()
            .any(|p| p.username.eq_ignore_ascii_case(name.trim()))
        {
            return Err(people::Refused::SamePerson(name.trim().to_owned()));
        }
        people.push(people::sign_in(&console.store, name, password, console.lock_after).await?);
    }
    Ok(people)
}

async fn scan(
    console: Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let (session, person) = match form_gate(&console, &headers, &id, field(&fields, "csrf")).await {
        Ok(who) => who,
        Err(response) => return response,
    };
    let who = Who {
        person: &person,
        session: &session,
    };
    let batch_id = match Uuid::parse_str(&id) {
        Ok(id) => id,
        Err(_) => return problem(StatusCode::NOT_FOUND, "no such batch"),
    };
    let token = field(&fields, "submission");
    if let Some(refused) = claim(&console, &who, &id, token).await {
        return refused;
    }
    let people = match verifiers(&console, &person, &fields).await {
        Ok(people) => people,
        Err(e) => {
            let refused =
                html! { p.error role="alert" data-result="refused" { "Not recorded: " (e) } };
            let kept = Kept::of(KeptForm::Scan, &[("location", field(&fields, "location"))]);
            return answer(&console, &who, &id, token, Err(refused), kept).await;
        }
    };
    let outcome = custody::scan(
        &console.store,
        custody::Scan {
            batch_id,
            checkpoint_id: field(&fields, "checkpoint"),
            label: field(&fields, "label"),
            verifiers: custody::Verifiers::People(&people),
            location: field(&fields, "location"),
            wristband: Some(field(&fields, "wristband")),
        },
    )
    .await;
    let outcome = match outcome {
        Ok(Scanned::Match(event)) => Ok((event.seq, scan_result(&event, true))),
        Ok(Scanned::Mismatch(event)) => Ok((event.seq, scan_result(&event, false))),
        Err(e) => {
            Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (e) } })
        }
    };
    let kept = Kept::of(
        KeptForm::Scan,
        &[
            ("location", field(&fields, "location")),
            ("wristband", field(&fields, "wristband")),
        ],
    );
    answer(&console, &who, &id, token, outcome, kept).await
}

/// The outcome of a recorded scan, as the modal the page opens over everything
/// else: it stays until acknowledged (and shows without JavaScript too).
fn scan_result(event: &carrel_proto::event::SiteEvent, matched: bool) -> Markup {
    let EventKind::CustodyScan {
        scanned_coi,
        expected_coi,
        wristband,
        ..
    } = &event.kind
    else {
        return html! {};
    };
    let kind = if matched { "match" } else { "mismatch" };
    html! {
        dialog.scan-result open id="scan-result" role="alertdialog" aria-modal="true"
            aria-labelledby="scan-result-title" aria-describedby="scan-result-text" data-result=(kind) {
            p.result.(kind) id="scan-result-title" { @if matched { "MATCH" } @else { "MISMATCH — STOP" } }
            div.body {
                p id="scan-result-text" {
                    @if matched {
                        @if let Some(w) = wristband { "The wristband (" (w) ") and the bag (" (scanned_coi) ") are this patient's. " }
                        @else { "The label reads " (scanned_coi) ", this batch's COI. " }
                        "Recorded as record " (event.seq) "."
                    } @else {
                        @if let Some(w) = wristband {
                            "Wristband " strong { (w) } ", bag " strong { (scanned_coi) } ": they do not both belong to this batch (COI " (expected_coi) "). "
                            "Do not give this product. "
                        } @else {
                            "The label reads " strong { (scanned_coi) } ". This is not this patient's product. "
                        }
                        "The step does not start; the mismatch is recorded (record " (event.seq) ") and raised to QA."
                    }
                }
                form method="dialog" {
                    button id="acknowledge-scan" type="submit" value="acknowledged" autofocus { "I have read this: acknowledge" }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct QcForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    submission: String,
    #[serde(default)]
    test: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    retest_of: String,
}

async fn record_qc(
    console: Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<QcForm>,
) -> Response {
    let opened = match open_form(&console, &headers, &id, &form.csrf, &form.submission).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let (who, batch, recipe, person) =
        (opened.who(), &opened.batch, &opened.recipe, &opened.person);
    let kept = Kept::of(
        KeptForm::Qc,
        &[
            ("test", &form.test),
            ("value", &form.value),
            ("retest_of", &form.retest_of),
        ],
    );
    let retest_of = match form.retest_of.trim() {
        "" => None,
        text => match text.parse() {
            Ok(seq) => Some(seq),
            Err(_) => {
                let why = format!("{text:?} is not a record number");
                return answer(&console, &who, &id, &form.submission, Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (why) } }), kept).await;
            }
        },
    };
    let outcome = entries::record_result(
        &console.store,
        entries::ManualResult {
            batch,
            test_id: &form.test,
            value: &form.value,
            by: person,
            retest_of,
        },
    )
    .await;
    let outcome = match outcome {
        Ok((event, evaluation)) => {
            let name = recipe
                .test(&form.test)
                .map(|t| t.name.as_str())
                .unwrap_or(&form.test);
            let recorded = html! {
                "Recorded " (name) " = " (form.value) " (record " (event.seq) ")"
                @if let Some(original) = retest_of { ", a retest of record " (original) }
            };
            Ok((
                event.seq,
                if evaluation.outcome == Outcome::Pass {
                    html! { p data-result="pass" { (recorded) ": within specification." } }
                } else {
                    html! { p.oos data-result="oos" { (recorded) ": OUT OF SPECIFICATION: " (evaluation.reason) ". QA will see it first." } }
                },
            ))
        }
        Err(e) => {
            Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (e) } })
        }
    };
    answer(&console, &who, &id, &form.submission, outcome, kept).await
}

#[cfg(test)]
mod tests {
    use super::AllowedHosts;

    #[test]
    fn only_this_consoles_names_are_allowed() {
        let hosts = AllowedHosts::new(
            "127.0.0.1:7445".parse().expect("address"),
            &["Bench-3.site".into()],
        );
        for ok in [
            "127.0.0.1:7445",
            "localhost",
            "LOCALHOST:7445",
            "[::1]:7445",
            "bench-3.site:7445",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for foreign in [
            "attacker.example",
            "attacker.example:7445",
            "",
            "127.0.0.2:7445",
            "localhost.attacker.example",
        ] {
            assert!(!hosts.allows(foreign), "{foreign}");
        }
        let wide = AllowedHosts::new("10.1.2.3:7445".parse().expect("address"), &[]);
        assert!(wide.allows("10.1.2.3:7445"));
        let any = AllowedHosts::new("0.0.0.0:7445".parse().expect("address"), &[]);
        assert!(!any.allows("0.0.0.0:7445"));
    }
}

//! The site console: a local web page for technicians, served by the agent on the
//! site machine (loopback by default). It shows the batches at the site and what to
//! do next, takes a hand-held scanner's keyboard input at custody checkpoints with a
//! large MATCH / MISMATCH answer, and records off-line QC results with the
//! specification beside the input. It reads and writes only the local store, so it
//! keeps working while the hub is unreachable, and says so.
//!
//! Forms carry a CSRF token (a random secret of this process), so another web page
//! open in the same browser cannot post to the console.

use crate::custody::{self, Scanned};
use crate::entries;
use crate::link::LinkState;
use crate::store::{BatchState, LocalBatch, Store};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use carrel_proto::event::EventKind;
use carrel_proto::recipe::{Outcome, Recipe};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

mod submissions;

use submissions::{Claim, Recorded, Submissions};

pub struct Console {
    pub store: Arc<Store>,
    pub link: watch::Receiver<LinkState>,
    pub site_id: String,
    csrf: String,
    /// The one-time tokens of the recording forms.
    submissions: Submissions,
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
    site_id: String,
    hosts: AllowedHosts,
) -> Router {
    let mut secret = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut secret);
    let console = Arc::new(Console {
        store,
        link,
        site_id,
        csrf: hex::encode(secret),
        submissions: Submissions::default(),
    });
    Router::new()
        .route("/", get(home))
        .route("/status", get(status_fragment))
        .route("/metrics", get(metrics))
        .route("/batches/{id}", get(batch_page))
        .route("/batches/{id}/scan", post(scan))
        .route("/batches/{id}/qc", post(record_qc))
        .route("/batches/{id}/reading", post(record_reading))
        .with_state(console)
        .layer(axum::middleware::from_fn_with_state(Arc::new(hosts), guard))
}

const CSS: &str = r#"
body{margin:0;font:18px/1.45 system-ui,sans-serif;color:#1b1f24;background:#f6f7f9}
header{background:#fff;border-bottom:1px solid #d5dae1;padding:.6rem 1rem;display:flex;gap:1rem;flex-wrap:wrap;align-items:center}
main{max-width:1000px;margin:0 auto;padding:1rem}
a{color:#0b5cad} table{border-collapse:collapse;width:100%;background:#fff} th,td{padding:.5rem;border-bottom:1px solid #d5dae1;text-align:left}
label{display:block;font-weight:600;margin:.7rem 0 .2rem} input,select{font:inherit;padding:.6rem;border:1px solid #8a939e;border-radius:4px;width:100%;max-width:30rem}
input#label{font-size:1.6rem;font-family:ui-monospace,monospace}
button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:4px;background:#0b5cad;color:#fff;min-height:2.8rem}
:focus{outline:3px solid #ffbf47;outline-offset:1px}
.card{background:#fff;border:1px solid #d5dae1;border-radius:6px;padding:1rem;margin-bottom:1rem}
.link-up{color:#1e7b34;font-weight:700}.link-down{color:#b3261e;font-weight:700}
.result{font-size:3.2rem;font-weight:900;text-align:center;padding:2rem;border-radius:8px;margin:1rem 0}
.result.match{background:#1e7b34;color:#fff}.result.mismatch{background:#b3261e;color:#fff}
.oos{color:#b3261e;font-weight:700}.error{color:#b3261e;font-weight:700}.next{font-size:1.2rem;font-weight:700}
"#;

fn page(console: &Console, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Carrel site " (console.site_id) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    strong { "Carrel · site " (console.site_id) }
                    a href="/" { "Batches" }
                    span id="link-status" { (link_status(console)) }
                }
                main { (body) }
                script { (PreEscaped("setInterval(function(){fetch('/status').then(function(r){return r.text()}).then(function(t){document.getElementById('link-status').innerHTML=t}).catch(function(){})},2000);")) }
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
            span.link-down data-link="down" { "Hub link DOWN: working offline, records are kept and sent when it returns" }
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
    Html(html! { (link_status(&console)) " · " span data-waiting=(waiting) { (waiting) " records waiting to send" } }.into_string()).into_response()
}

fn next_action(
    batch: &LocalBatch,
    recipe: &Recipe,
    events: &[carrel_proto::event::SiteEvent],
) -> String {
    if let Ok(cp) = custody::open_checkpoint(recipe, batch, events) {
        return format!(
            "Scan the label: {} ({} verifier{})",
            cp.name,
            cp.verifiers,
            if cp.verifiers == 1 { "" } else { "s" }
        );
    }
    match batch.state {
        BatchState::Ordered | BatchState::Accepted => "The agent is accepting the order".into(),
        BatchState::InProcess => match &batch.current_step {
            Some(step) => format!("Step {step} is running on the instrument"),
            None => "Waiting for QC results".into(),
        },
        BatchState::AwaitingRelease => "Waiting for QA release at the control site".into(),
        BatchState::Rejected => "Rejected by QA: do not hand over".into(),
        BatchState::Cancelled => "Cancelled".into(),
        BatchState::Released | BatchState::HandedOver => "Bedside scan".into(),
        BatchState::Infused => "Done: the chain of identity is closed".into(),
    }
}

fn problem(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_string(),
    )
        .into_response()
}

async fn home(console: Shared) -> Response {
    let batches = match console.store.batches().await {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut rows = Vec::new();
    for batch in &batches {
        let events = console
            .store
            .batch_events(batch.batch_id)
            .await
            .unwrap_or_default();
        let action = match Recipe::from_json(&batch.recipe_json) {
            Ok(recipe) => next_action(batch, &recipe, &events),
            Err(e) => format!("recipe unreadable: {e}"),
        };
        rows.push((batch, action));
    }
    Html(page(&console, "Batches", html! {
        h1 { "Batches at this site" }
        table {
            thead { tr { th { "COI" } th { "Patient" } th { "State" } th { "Step" } th { "Next" } } }
            tbody {
                @for (b, action) in &rows {
                    tr { td { a href=(format!("/batches/{}", b.batch_id)) { (b.coi) } } td { (b.patient_pseudonym) } td { (b.state.as_str()) }
                         td { (b.current_step.clone().unwrap_or_default()) } td { (action) } }
                }
                @if rows.is_empty() { tr { td colspan="5" { "No batches yet." } } }
            }
        }
    }).into_string()).into_response()
}

fn batch_markup(
    console: &Console,
    batch: &LocalBatch,
    recipe: &Recipe,
    events: &[carrel_proto::event::SiteEvent],
    result: Option<Markup>,
) -> Markup {
    let open = custody::open_checkpoint(recipe, batch, events).ok();
    html! {
        h1 { "Batch " (batch.coi) }
        p { "Patient " (batch.patient_pseudonym) " · " (recipe.title) " v" (recipe.version) " · state " strong { (batch.state.as_str()) } }
        @if let Some(result) = result { (result) }
        p.next data-next { "Next: " (next_action(batch, recipe, events)) }
        @if let Some(cp) = open {
            div.card {
                h2 { "Custody checkpoint: " (cp.name) }
                form method="post" action=(format!("/batches/{}/scan", batch.batch_id)) {
                    input type="hidden" name="csrf" value=(console.csrf);
                    input type="hidden" name="submission" value=(console.submissions.issue());
                    input type="hidden" name="checkpoint" value=(cp.id);
                    @for i in 0..cp.verifiers {
                        label for=(format!("verifier{i}")) { "Verifier " (i + 1) }
                        input id=(format!("verifier{i}")) name="verifier" required autocomplete="off";
                    }
                    label for="location" { "Location" }
                    input id="location" name="location" placeholder="room, bench or ward";
                    label for="label" { "Scan the label (the scanner types it and presses Enter)" }
                    input id="label" name="label" required autofocus autocomplete="off";
                    p { button type="submit" { "Check label" } }
                }
            }
        }
        @if let Some(step) = batch.current_step.as_deref().and_then(|s| recipe.step(s)) {
            @if !step.parameters.is_empty() {
                div.card {
                    h2 { "Record a manual reading: " (step.name) }
                    form method="post" action=(format!("/batches/{}/reading", batch.batch_id)) id="reading-form" {
                        input type="hidden" name="csrf" value=(console.csrf);
                        input type="hidden" name="submission" value=(console.submissions.issue());
                        label for="parameter" { "Parameter" }
                        select id="parameter" name="parameter" {
                            @for p in &step.parameters {
                                option value=(p.name) data-min=(p.low) data-max=(p.high) data-accepted="" data-spec=(format!("{} to {} {}", p.low, p.high, p.unit)) { (p.name) }
                            }
                        }
                        p { "Normal range: " strong id="reading-spec" {} }
                        label for="reading-value" { "Reading" }
                        input id="reading-value" name="value" required autocomplete="off" inputmode="decimal";
                        p id="reading-flag" aria-live="polite" {}
                        label for="reading-by" { "Read by" }
                        input id="reading-by" name="by" required;
                        p { button type="submit" { "Record reading" } }
                    }
                    script { (PreEscaped(READING_SCRIPT)) }
                }
            }
        }
        div.card {
            h2 { "Record an off-line QC result" }
            form method="post" action=(format!("/batches/{}/qc", batch.batch_id)) id="qc-form" {
                input type="hidden" name="csrf" value=(console.csrf);
                input type="hidden" name="submission" value=(console.submissions.issue());
                label for="test" { "Test" }
                select id="test" name="test" {
                    @for t in recipe.all_tests() {
                        option value=(t.id) data-min=(t.spec.min.map(|v| v.to_string()).unwrap_or_default())
                            data-max=(t.spec.max.map(|v| v.to_string()).unwrap_or_default())
                            data-accepted=(t.spec.accepted.join("|")) data-spec=(format!("{} {}", t.spec, t.unit)) { (t.name) }
                    }
                }
                p { "Specification: " strong id="qc-spec" {} }
                label for="value" { "Result" }
                input id="value" name="value" required autocomplete="off";
                p id="qc-flag" aria-live="polite" {}
                label for="by" { "Measured by" }
                input id="by" name="by" required;
                label for="retest_of" { "Retest of record (optional)" }
                input id="retest_of" name="retest_of" inputmode="numeric";
                p { button type="submit" { "Record result" } }
            }
            script { (PreEscaped(QC_SCRIPT)) }
        }
        h2 { "Records of this batch" }
        table {
            thead { tr { th { "#" } th { "When" } th { "By" } th { "What" } } }
            tbody { @for e in events.iter().rev().filter(|e| !matches!(e.kind, EventKind::ProcessSamples { .. })).take(40) {
                tr { td { (e.seq) } td { (e.recorded_at.format("%Y-%m-%d %H:%M:%S")) } td { (e.recorded_by) } td { (e.kind.name().replace('_', " ")) } }
            } }
        }
    }
}

/// Shows the selected test's specification, and flags an out-of-specification value
/// as it is typed (the agent evaluates again when it records).
const QC_SCRIPT: &str = r#"(function(){
var s=document.getElementById('test'),v=document.getElementById('value'),f=document.getElementById('qc-flag'),sp=document.getElementById('qc-spec');
function opt(){return s.options[s.selectedIndex]}
function check(){var o=opt();sp.textContent=o.dataset.spec;var t=v.value.trim();if(!t){f.textContent='';f.className='';return}
var bad=false;if(o.dataset.accepted){bad=o.dataset.accepted.split('|').map(function(a){return a.toLowerCase()}).indexOf(t.toLowerCase())<0}
else{var n=Number(t);if(isNaN(n)){f.textContent='Not a number';f.className='error';return}
if(o.dataset.min!==''&&n<Number(o.dataset.min))bad=true;if(o.dataset.max!==''&&n>Number(o.dataset.max))bad=true}
f.textContent=bad?'OUT OF SPECIFICATION':'within specification';f.className=bad?'oos':''}
s.addEventListener('change',check);v.addEventListener('input',check);check();})();"#;

/// Shows the parameter's normal range and flags a reading outside it as it is typed.
const READING_SCRIPT: &str = r#"(function(){
var s=document.getElementById('parameter'),v=document.getElementById('reading-value'),f=document.getElementById('reading-flag'),sp=document.getElementById('reading-spec');
function check(){var o=s.options[s.selectedIndex];sp.textContent=o.dataset.spec;var t=v.value.trim();if(!t){f.textContent='';return}
var n=Number(t);if(isNaN(n)){f.textContent='Not a number';f.className='error';return}
var bad=n<Number(o.dataset.min)||n>Number(o.dataset.max);f.textContent=bad?'OUTSIDE THE NORMAL RANGE':'within range';f.className=bad?'oos':''}
s.addEventListener('change',check);v.addEventListener('input',check);check();})();"#;

#[derive(Deserialize)]
struct ReadingForm {
    csrf: String,
    #[serde(default)]
    submission: String,
    parameter: String,
    value: String,
    by: String,
}

async fn record_reading(
    console: Shared,
    Path(id): Path<String>,
    Form(form): Form<ReadingForm>,
) -> Response {
    if form.csrf != console.csrf {
        return problem(
            StatusCode::FORBIDDEN,
            "The form did not come from this console; reload the page.",
        );
    }
    let (batch, _, _) = match load(&console, &id).await {
        Ok(loaded) => loaded,
        Err(response) => return response,
    };
    if let Some(refused) = claim(&console, &id, &form.submission).await {
        return refused;
    }
    let outcome = entries::record_reading(
        &console.store,
        entries::ManualReading {
            batch: &batch,
            parameter: &form.parameter,
            value: &form.value,
            by: &form.by,
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
    answer(&console, &id, &form.submission, outcome).await
}

/// Takes a form's one-time token; `Some` is the answer when it may not record
/// (sent before, being recorded, or not issued here), with nothing recorded.
async fn claim(console: &Console, id: &str, token: &str) -> Option<Response> {
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
    Some(batch_page_with(console, id, StatusCode::CONFLICT, Some(notice)).await)
}

/// Ends a claimed submission: a record made is kept with its token and the browser
/// is sent to the batch page to show it (POST-redirect-GET, so a reload does not
/// send the form again); a refusal recorded nothing and shows the page with why.
async fn answer(
    console: &Console,
    id: &str,
    token: &str,
    outcome: Result<(u64, Markup), Markup>,
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
            batch_page_with(console, id, StatusCode::UNPROCESSABLE_ENTITY, Some(markup)).await
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
    Path(id): Path<String>,
    Query(query): Query<BatchQuery>,
) -> Response {
    let result = console
        .submissions
        .recorded(&query.recorded)
        .map(|recorded| PreEscaped(recorded.outcome));
    batch_page_with(&console, &id, StatusCode::OK, result).await
}

/// The batch page, with the outcome of what was just submitted on top.
async fn batch_page_with(
    console: &Console,
    id: &str,
    status: StatusCode,
    result: Option<Markup>,
) -> Response {
    match load(console, id).await {
        Ok((batch, recipe, events)) => {
            let body = page(
                console,
                &batch.coi,
                batch_markup(console, &batch, &recipe, &events, result),
            );
            (status, Html(body.into_string())).into_response()
        }
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

async fn scan(console: Shared, Path(id): Path<String>, Form(fields): Form<Fields>) -> Response {
    if field(&fields, "csrf") != console.csrf {
        return problem(
            StatusCode::FORBIDDEN,
            "The form did not come from this console; reload the page.",
        );
    }
    let batch_id = match Uuid::parse_str(&id) {
        Ok(id) => id,
        Err(_) => return problem(StatusCode::NOT_FOUND, "no such batch"),
    };
    let token = field(&fields, "submission");
    if let Some(refused) = claim(&console, &id, token).await {
        return refused;
    }
    let verifiers: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "verifier")
        .map(|(_, v)| v.clone())
        .collect();
    let outcome = custody::scan(
        &console.store,
        custody::Scan {
            batch_id,
            checkpoint_id: field(&fields, "checkpoint"),
            label: field(&fields, "label"),
            verifiers: &verifiers,
            location: field(&fields, "location"),
        },
    )
    .await;
    let outcome = match outcome {
        Ok(Scanned::Match(event)) => Ok((
            event.seq,
            html! { div.result.match role="alert" data-result="match" { "MATCH" } p { "Recorded as record " (event.seq) "." } },
        )),
        Ok(Scanned::Mismatch(event)) => {
            let scanned = match &event.kind {
                EventKind::CustodyScan { scanned_coi, .. } => scanned_coi.clone(),
                _ => String::new(),
            };
            Ok((
                event.seq,
                html! {
                    div.result.mismatch role="alert" data-result="mismatch" { "MISMATCH — STOP" }
                    p.error { "The label reads " (scanned) ". This is not this patient's product. The step does not start; the mismatch is recorded (record " (event.seq) ") and raised to QA." }
                },
            ))
        }
        Err(e) => {
            Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (e) } })
        }
    };
    answer(&console, &id, token, outcome).await
}

#[derive(Deserialize)]
struct QcForm {
    csrf: String,
    #[serde(default)]
    submission: String,
    test: String,
    value: String,
    by: String,
    #[serde(default)]
    retest_of: String,
}

async fn record_qc(console: Shared, Path(id): Path<String>, Form(form): Form<QcForm>) -> Response {
    if form.csrf != console.csrf {
        return problem(
            StatusCode::FORBIDDEN,
            "The form did not come from this console; reload the page.",
        );
    }
    let (batch, _, _) = match load(&console, &id).await {
        Ok(loaded) => loaded,
        Err(response) => return response,
    };
    if let Some(refused) = claim(&console, &id, &form.submission).await {
        return refused;
    }
    let retest_of = match form.retest_of.trim() {
        "" => None,
        text => match text.parse() {
            Ok(seq) => Some(seq),
            Err(_) => {
                let why = format!("{text:?} is not a record number");
                return answer(&console, &id, &form.submission, Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (why) } })).await;
            }
        },
    };
    let outcome = entries::record_result(
        &console.store,
        entries::ManualResult {
            batch: &batch,
            test_id: &form.test,
            value: &form.value,
            by: &form.by,
            retest_of,
        },
    )
    .await;
    let outcome = match outcome {
        Ok((event, evaluation)) if evaluation.outcome == Outcome::Pass => Ok((
            event.seq,
            html! { p data-result="pass" { "Recorded " (form.test) " = " (form.value) " (record " (event.seq) "): within specification." } },
        )),
        Ok((event, evaluation)) => Ok((
            event.seq,
            html! { p.oos data-result="oos" { "Recorded " (form.test) " = " (form.value) " (record " (event.seq) "): OUT OF SPECIFICATION: " (evaluation.reason) ". QA will see it first." } },
        )),
        Err(e) => {
            Err(html! { p.error role="alert" data-result="refused" { "Not recorded: " (e) } })
        }
    };
    answer(&console, &id, &form.submission, outcome).await
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

//! Layout, styles and small pieces of HTML the console pages share.

use super::Session;
use crate::model::{BatchState, Role};
use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

const CSS: &str = r#"
:root { --fg:#1b1f24; --muted:#5b6470; --line:#d5dae1; --bg:#f6f7f9; --accent:#0b5cad; --bad:#b3261e; --ok:#1e7b34; --warn:#8a5a00; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header { background:#fff; border-bottom:1px solid var(--line); padding:.6rem 1rem; display:flex; gap:1rem; align-items:center; flex-wrap:wrap; }
header .brand { font-weight:700; margin-right:1rem; }
header nav { display:flex; flex-wrap:wrap; gap:.2rem .8rem; }
header form { margin-left:auto; }
main { max-width:1100px; margin:0 auto; padding:1rem; }
a { color:var(--accent); }
a:focus, button:focus, input:focus, select:focus, textarea:focus { outline:3px solid #ffbf47; outline-offset:1px; }
h1 { font-size:1.5rem; margin:.5rem 0 1rem; } h2 { font-size:1.2rem; margin:1.5rem 0 .5rem; }
table { border-collapse:collapse; width:100%; background:#fff; }
th, td { text-align:left; padding:.45rem .6rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:.85rem; color:var(--muted); font-weight:600; }
.card { background:#fff; border:1px solid var(--line); border-radius:6px; padding:1rem; margin-bottom:1rem; }
label { display:block; font-weight:600; margin:.8rem 0 .2rem; }
input, select, textarea { font:inherit; padding:.55rem .6rem; border:1px solid #8a939e; border-radius:4px; width:100%; max-width:28rem; background:#fff; }
fieldset { border:1px solid var(--line); border-radius:4px; padding:.4rem .8rem .6rem; margin:0; }
fieldset label { display:flex; align-items:center; gap:.6rem; font-weight:400; margin:.5rem 0; min-height:2.6rem; }
input[type=radio], input[type=checkbox] { width:1.4rem; height:1.4rem; margin:0; flex:none; }
button, .button { font:inherit; padding:.55rem 1rem; border-radius:4px; border:1px solid var(--accent); background:var(--accent); color:#fff; cursor:pointer; min-height:2.6rem; text-decoration:none; display:inline-block; }
button.secondary { background:#fff; color:var(--accent); }
button.danger { background:var(--bad); border-color:var(--bad); }
.error { color:var(--bad); font-weight:600; margin:.2rem 0; }
.notice { padding:.7rem 1rem; border-radius:4px; margin-bottom:1rem; }
.notice.bad { background:#fbe9e7; border:1px solid var(--bad); } .notice.ok { background:#e7f4ea; border:1px solid var(--ok); }
.notice.warn { background:#fff6e0; border:1px solid var(--warn); }
.danger-zone { border-color:var(--bad); margin-top:2.5rem; }
table + .card, table + section { margin-top:1rem; }
label.check { display:flex; align-items:center; gap:.6rem; font-weight:600; min-height:2.6rem; }
.badge { display:inline-block; padding:.1rem .5rem; border-radius:999px; font-size:.85rem; font-weight:600; background:#e8edf3; }
.badge.released, .badge.infused, .badge.handed_over, .badge.pass { background:#dff1e4; color:var(--ok); }
.badge.rejected, .badge.cancelled, .badge.out_of_specification { background:#fbe0dd; color:var(--bad); }
.badge.awaiting_release { background:#fff1cc; color:var(--warn); }
.badge.dry_run { background:#ece6f6; color:#4a2d7a; border:1px dashed #4a2d7a; }
.exceptions td { background:#fff6f5; }
.muted { color:var(--muted); }
.nowrap { white-space:nowrap; }
.clock { font-size:1.6rem; font-weight:700; }
.token { font-family: ui-monospace, monospace; word-break:break-all; background:#fff; border:1px dashed var(--line); padding:.6rem; }
dialog { border:1px solid var(--line); border-radius:6px; max-width:32rem; }
.manifestation { display:inline-block; max-width:100%; font-size:1.1rem; font-weight:700; padding:.6rem; border:2px solid var(--fg); margin:.6rem 0; }
svg.chart { background:#fff; border:1px solid var(--line); max-width:100%; height:auto; }
figure.control, figure.forest { margin:0 0 1rem; }
figure.control svg { display:block; width:100%; }
figure.forest svg { display:block; width:100%; }
@media print { header, .skip-link, form, details { display:none; } body { background:#fff; } main { max-width:none; } figure { break-inside:avoid; } a { color:inherit; text-decoration:none; } }
form.inline { display:flex; flex-wrap:wrap; gap:.4rem; align-items:center; }
form.inline select, form.inline input { width:auto; max-width:16rem; }
.skip-link { position:absolute; left:-999px; top:0; background:#fff; padding:.6rem 1rem; z-index:10; }
.skip-link:focus { left:.5rem; }
nav a[aria-current=page] { font-weight:700; text-decoration:none; border-bottom:3px solid var(--accent); }
.scroll { overflow-x:auto; max-width:100%; position:relative; }
code { overflow-wrap:anywhere; }
.visually-hidden { position:absolute; width:1px; height:1px; overflow:hidden; clip:rect(0 0 0 0); white-space:nowrap; }
@media (max-width: 700px) { th, td { padding:.35rem; font-size:.9rem; } }
"#;

pub async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        [CSS, super::golden::CSS].concat(),
    )
}

/// A whole page: header with the user's navigation and sign-out, then `body`.
pub fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Carrel" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                a.skip-link href="#main" { "Skip to the page's content" }
                header {
                    span.brand { "Carrel" }
                    @if let Some(Session { user, csrf, unread, path, .. }) = session {
                        nav aria-label="main" {
                            @let links: &[(&str, &str)] = match user.role {
                                Role::Physician => &[("/orders", "My orders"), ("/orders/new", "New order"), ("/schedule", "Schedule")],
                                Role::Qa => &[("/release", "Release queue"), ("/deviations", "Deviations"), ("/recipes", "Recipes"), ("/qualifications", "Qualifications"), ("/analytics", "Analytics"), ("/orders", "All orders"), ("/schedule", "Schedule")],
                                Role::Admin => &[("/admin/sites", "Sites"), ("/admin/users", "Users"), ("/orders", "Orders"), ("/schedule", "Schedule"), ("/analytics", "Analytics")],
                                Role::Technician => &[("/orders", "Orders"), ("/schedule", "Schedule")],
                            };
                            @for (href, label) in links {
                                a href=(href) aria-current=[(path == href).then_some("page")] { (label) }
                            }
                            a href="/notifications" data-unread=(unread) aria-current=[(path == "/notifications").then_some("page")] {
                                "Notifications"
                                @if *unread > 0 {
                                    " " span.badge.rejected { (unread) span.visually-hidden { " unread" } }
                                }
                            }
                            a href="/account" aria-current=[(path == "/account").then_some("page")] { "Account" }
                        }
                        span.muted { (user.full_name) " (" (user.role) ")" }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
                script { (PreEscaped(VIEWER_TIME_SCRIPT)) }
            }
        }
    }
}

/// Adds the viewer's own clock time after each site time ([`when_in`]) whose offset
/// differs from the browser's at that instant: "09:00 BST (04:00 your time)". The
/// live parts of a page call it again on what they replace.
const VIEWER_TIME_SCRIPT: &str = "window.carrelViewerTimes=function(root){root.querySelectorAll('time[data-site-offset]').forEach(function(t){if(t.dataset.viewer)return;var at=new Date(t.getAttribute('datetime'));if(isNaN(at))return;if(-at.getTimezoneOffset()===Number(t.dataset.siteOffset))return;var p=function(n){return String(n).padStart(2,'0')};var same=at.getFullYear()+'-'+p(at.getMonth()+1)+'-'+p(at.getDate());var text=p(at.getHours())+':'+p(at.getMinutes());if(t.textContent.slice(0,10)!==same)text=same+' '+text;var s=document.createElement('span');s.className='muted';s.textContent=' ('+text+' your time)';t.dataset.viewer='1';t.after(s)})};carrelViewerTimes(document);";

pub fn state_badge(state: BatchState) -> Markup {
    html! { span class={ "badge " (state.as_str()) } data-state=(state.as_str()) { (state.as_str().replace('_', " ")) } }
}

/// An order's state, and a conditional release not yet completed with the results
/// it waits for (the physician and QA see that the release is conditional).
pub fn order_badge(order: &crate::model::Order) -> Markup {
    let awaits = &order.progress.release_awaits;
    let failed = order.progress.release_failed();
    html! {
        (state_badge(order.state))
        @if order.dry_run {
            " " span.badge.dry_run data-dry-run="true" { "dry run: never released" }
        }
        @if !failed.is_empty() {
            " " span.badge.rejected.conditional data-conditional="failed" {
                "conditional release failed: " (failed.join(", ")) " out of specification"
            }
        } @else if !awaits.is_empty() {
            " " span.badge.awaiting_release.conditional data-conditional="true" {
                "released conditionally: awaiting " (awaits.iter().map(String::as_str).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// A time of the hub as every page shows it: date, hours and minutes, UTC. Signed
/// records keep their seconds (the signature's manifestation), nothing else needs them.
/// Times of a site's calendar and of its orders are shown with [`when_in`].
pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A time at a site: the site's local date and time with its zone's abbreviation
/// (`2026-03-29 09:00 BST`), in a `time` element that carries the instant and the
/// site's offset, so the page can add the viewer's own time where it differs.
pub fn when_in(at: DateTime<Utc>, zone: chrono_tz::Tz) -> Markup {
    use chrono::Offset;
    let local = at.with_timezone(&zone);
    html! {
        time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            data-site-offset=(local.offset().fix().local_minus_utc() / 60) {
            (crate::schedule::local_text(zone, at))
        }
    }
}

/// A duration as days, hours and minutes.
pub fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let minutes = (to - from).num_minutes().max(0);
    let (days, hours, mins) = (minutes / 1440, (minutes % 1440) / 60, minutes % 60);
    if days > 0 {
        format!("{days} d {hours} h {mins} min")
    } else {
        format!("{hours} h {mins} min")
    }
}

/// A small line chart of one parameter's samples, with its normal range shaded.
pub fn chart(title: &str, unit: &str, points: &[(f64, f64)], range: Option<(f64, f64)>) -> Markup {
    let (w, h, pad) = (420.0_f64, 140.0_f64, 28.0_f64);
    if points.is_empty() {
        return html! {};
    }
    let xmax = points
        .iter()
        .map(|p| p.0)
        .fold(f64::MIN, f64::max)
        .max(1e-9);
    let mut ymin = points.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let mut ymax = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    if let Some((low, high)) = range {
        if high - low < 10.0 * (ymax - ymin).max(1e-9) {
            ymin = ymin.min(low);
            ymax = ymax.max(high);
        }
    }
    if ymax - ymin < 1e-9 {
        ymax += 1.0;
        ymin -= 1.0;
    }
    let x = |v: f64| pad + v / xmax * (w - 2.0 * pad);
    let y = |v: f64| h - pad - (v - ymin) / (ymax - ymin) * (h - 2.0 * pad);
    let path: Vec<String> = points
        .iter()
        .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
        .collect();
    html! {
        figure {
            svg.chart width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(format!("{title} over time")) {
                @if let Some((low, high)) = range {
                    @let (top, bottom) = (y(high.min(ymax)), y(low.max(ymin)));
                    rect x=(pad) y=(top) width=(w - 2.0 * pad) height=((bottom - top).max(0.0)) fill="#e7f4ea" {}
                }
                polyline points=(path.join(" ")) fill="none" stroke="#0b5cad" stroke-width="2" {}
                text x="4" y="14" font-size="12" { (title) @if !unit.is_empty() { " (" (unit) ")" } }
                text x="4" y=(h - 6.0) font-size="11" fill="#5b6470" { (format!("{ymin:.1}")) }
                text x="4" y=(pad + 4.0) font-size="11" fill="#5b6470" { (format!("{ymax:.1}")) }
                text x=(w - pad - 30.0) y=(h - 6.0) font-size="11" fill="#5b6470" { (format!("{xmax:.0} h")) }
            }
        }
    }
}

/// Polls `url` every few seconds and replaces the element `id` with what it returns,
/// never while the focus is inside it (a keyboard or screen-reader user keeps their
/// place; the next poll catches up once they move on).
pub fn live(id: &str, url: &str) -> Markup {
    html! {
        script {
            (PreEscaped(format!(
                "(function(){{var el=document.getElementById('{id}');el.dataset.served=el.innerHTML;setInterval(function(){{fetch('{url}',{{credentials:'same-origin'}}).then(function(r){{return r.ok?r.text():null}}).then(function(t){{if(t!==null&&t!==el.dataset.served&&!el.contains(document.activeElement)){{el.dataset.served=t;el.innerHTML=t;if(window.carrelViewerTimes)carrelViewerTimes(el)}}}}).catch(function(){{}})}},2000)}})();"
            )))
        }
    }
}

/// The signer's proof on a signing form: the user name at the first signature of a
/// session, the one-time acknowledgement, and the password; `prefix` keeps ids apart
/// when a page has two signing forms.
pub fn proof_fields(
    first_signature: bool,
    acknowledged: bool,
    (username, acknowledge): (&str, bool),
    error: Option<(&'static str, String)>,
    prefix: &str,
) -> Markup {
    let err = |field: &str| {
        error
            .as_ref()
            .filter(|(f, _)| *f == field)
            .map(|(_, m)| m.clone())
    };
    let id = |name: &str| format!("{prefix}{name}");
    html! {
        @if first_signature {
            label for=(id("username")) { "Your user name (the first signature of a session needs it)" }
            input id=(id("username")) name="username" autocomplete="username" required value=(username) aria-describedby=(id("username-error"));
            @if let Some(e) = err("username") { p.error id=(id("username-error")) role="alert" { (e) } }
        }
        @if !acknowledged {
            p.muted { "Before your first electronic signature:" }
            label { input type="checkbox" id=(id("acknowledge")) name="acknowledge" value="yes" required checked[acknowledge]; " " (crate::service::release::SIGNATURE_MEANING) }
            @if let Some(e) = err("acknowledge") { p.error role="alert" { (e) } }
        }
        label for=(id("password")) { "Your password, to sign" }
        input id=(id("password")) name="password" type="password" autocomplete="current-password" required autofocus aria-describedby=(id("password-error"));
        @if let Some(e) = err("password") { p.error id=(id("password-error")) role="alert" { (e) } }
    }
}

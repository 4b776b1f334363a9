//! The console's process analytics, for QA and administrators: each product's
//! charted attributes and baseline (QA chooses it here), and one attribute's
//! control charts (the network's, then each site's, with the Nelson rules'
//! signals), capability, and a forest plot of each site against the rest. Charts
//! are inline SVG with no external assets and print as they show; every chart's
//! data downloads as CSV. The rules are [`service::analytics`]'s.

// Handlers answer `Result<Response, Response>` like the other pages.
#![allow(clippy::result_large_err)]

use super::view::{page, when};
use super::{html_page, refused, HubState, Page, Session};
use crate::app::Hub;
use crate::model::analytics::capability::Spec;
use crate::model::analytics::chart::{Basis, Chart, Series};
use crate::model::analytics::compare::Comparison;
use crate::model::Role;
use crate::service;
use crate::service::analytics;
use axum::extract::{Form, Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

/// At most this many batches are drawn on a chart (the latest); the limits,
/// signals and CSV cover them all.
const DRAWN: usize = 500;

/// `/analytics`: the products charted.
pub async fn products(hub: HubState, session: Session) -> Page {
    let products = analytics::products(&hub, &session.user)
        .await
        .map_err(refused)?;
    if let [only] = products.as_slice() {
        return Ok(Redirect::to(&format!("/analytics/{only}")).into_response());
    }
    Ok(html_page(page(
        "Analytics",
        Some(&session),
        html! {
            h1 { "Process analytics" }
            @if products.is_empty() {
                p { "No batch has results to chart yet. Charts appear as sites report QC results and process samples." }
            } @else {
                ul { @for p in &products { li { a href=(format!("/analytics/{p}")) { (p) } } } }
            }
        },
    )))
}

/// The baseline form as typed, kept when refused.
#[derive(Debug, Default, Deserialize)]
pub struct BaselineForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    first: String,
    #[serde(default)]
    reason: String,
}

/// `/analytics/{product}`: the baseline and the charted attributes.
pub async fn product(hub: HubState, session: Session, Path(product): Path<String>) -> Page {
    product_page(&hub, &session, &product, StatusCode::OK, None).await
}

async fn product_page(
    hub: &Hub,
    session: &Session,
    product: &str,
    status: StatusCode,
    refusal: Option<(BaselineForm, String)>,
) -> Page {
    let (attributes, baseline) = analytics::attributes(hub, &session.user, product)
        .await
        .map_err(refused)?;
    let (form, error) = match refusal {
        Some((form, error)) => (form, Some(error)),
        None => (BaselineForm::default(), None),
    };
    let mut response = html_page(page(
        &format!("Analytics of {product}"),
        Some(session),
        html! {
            p { a href="/analytics" { "All products" } }
            h1 { "Process analytics of " (product) }
            (baseline_notice(baseline.as_ref()))
            @if session.user.role == Role::Qa {
                details.card open[error.is_some()] {
                    summary { "Choose the baseline" }
                    p.muted { "The batches with results whose orders were placed in these days (UTC, both included) become the baseline every chart's limits are computed from. It is fixed when chosen and audited." }
                    form method="post" action=(format!("/analytics/{product}/baseline")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label for="from" { "From" }
                        input id="from" name="from" type="date" required value=(form.from);
                        label for="to" { "To" }
                        input id="to" name="to" type="date" required value=(form.to);
                        label for="first" { "At most the first (batches; empty: all)" }
                        input id="first" name="first" type="number" min="2" inputmode="numeric" value=(form.first);
                        label for="reason" { "Why these batches" }
                        input id="reason" name="reason" required value=(form.reason) aria-describedby="baseline-error";
                        @if let Some(e) = &error { p.error id="baseline-error" role="alert" { (e) } }
                        p { button type="submit" { "Choose this baseline" } }
                    }
                }
            }
            h2 { "Charts" }
            @if attributes.is_empty() {
                p { "No batch of " (product) " has results to chart yet." }
            } @else {
                div.scroll tabindex="0" { table data-attributes {
                    thead { tr { th scope="col" { "What" } th scope="col" { "Unit" } } }
                    tbody {
                        @for a in &attributes {
                            @for (statistic, label) in &a.statistics {
                                tr {
                                    td { a href=(chart_href(product, &a.attribute, statistic.as_str())) { (label) } }
                                    td { (unit_text(&a.unit, *statistic)) }
                                }
                            }
                        }
                    }
                } }
            }
        },
    ));
    *response.status_mut() = status;
    Ok(response)
}

fn chart_href(product: &str, attribute: &str, statistic: &str) -> String {
    format!(
        "/analytics/{product}/chart?attribute={}&statistic={statistic}",
        urlencode(attribute)
    )
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A statistic's unit as people write it (hours for the time out of range).
fn unit_text(unit: &str, statistic: crate::model::analytics::measure::Statistic) -> String {
    if statistic == crate::model::analytics::measure::Statistic::TimeOutOfRange {
        return "hours".into();
    }
    carrel_proto::recipe::unit_words(unit).into_owned()
}

fn baseline_notice(baseline: Option<&crate::model::analytics::measure::Baseline>) -> Markup {
    html! {
        @match baseline {
            Some(b) => p.notice.ok data-baseline="chosen" {
                "Limits from the baseline of " (b.batches.len()) " batches chosen by " (b.chosen_by) " on " (when(b.chosen_at)) ": " (b.reason)
            },
            None => p.notice.warn data-baseline="provisional" {
                "No baseline chosen: limits are provisional, from each chart's first "
                (crate::model::analytics::chart::PROVISIONAL_POINTS) " batches."
            },
        }
    }
}

/// `POST /analytics/{product}/baseline` (QA).
pub async fn choose_baseline(
    hub: HubState,
    session: Session,
    Path(product): Path<String>,
    Form(form): Form<BaselineForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let first = match form.first.trim() {
        "" => Ok(0),
        text => text
            .parse::<u32>()
            .map_err(|_| format!("\"{text}\" is not a number of batches")),
    };
    let result = match first {
        Ok(first) => analytics::choose_baseline(
            &hub,
            &session.user,
            &analytics::BaselineRequest {
                product_id: &product,
                from: &form.from,
                to: &form.to,
                first,
                reason: &form.reason,
            },
        )
        .await
        .map_err(|e| match e {
            e @ (service::Error::Field { .. } | service::Error::Store(_)) => Ok(e.to_string()),
            e => Err(e),
        }),
        Err(why) => Err(Ok(why)),
    };
    match result {
        Ok(_) => Ok(Redirect::to(&format!("/analytics/{product}")).into_response()),
        Err(Ok(why)) => {
            product_page(
                &hub,
                &session,
                &product,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some((form, why)),
            )
            .await
        }
        Err(Err(e)) => Err(refused(e)),
    }
}

#[derive(Debug, Deserialize)]
pub struct ChartQuery {
    #[serde(default)]
    attribute: String,
    #[serde(default)]
    statistic: String,
}

/// `/analytics/{product}/chart?attribute=..&statistic=..`: one attribute's charts.
pub async fn chart(
    hub: HubState,
    session: Session,
    Path(product): Path<String>,
    Query(q): Query<ChartQuery>,
) -> Page {
    let c = analytics::chart(&hub, &session.user, &product, &q.attribute, &q.statistic)
        .await
        .map_err(refused)?;
    let csv_href = format!(
        "/analytics/{product}/chart.csv?attribute={}&statistic={}",
        urlencode(&c.attribute),
        c.statistic.as_str()
    );
    let title = format!("{} · {}", c.label, product);
    Ok(html_page(page(
        &title,
        Some(&session),
        html! {
            p { a href=(format!("/analytics/{product}")) { "All charts of " (product) } }
            h1 { (c.label) }
            @let unit = unit_text(&c.unit, c.statistic);
            p.muted {
                @if !unit.is_empty() { "In " (unit) " · " }
                (spec_text(c.spec))
                " · " a href=(csv_href) download data-csv { "Download the data (CSV)" }
            }
            @match &c.basis {
                Basis::Baseline(b) => (baseline_notice(Some(b))),
                Basis::Provisional => (baseline_notice(None)),
            }
            h2 { "Network" }
            (series_figure(&c, &c.network, "the network"))
            h2 { "Signals" }
            (signals_table(&c))
            h2 { "Sites against the rest of the network" }
            (forest_plot(&c))
            h2 { "Capability" }
            (capability_table(&c))
            h2 { "By site" }
            @for s in &c.sites {
                @let name = s.site_id.clone().unwrap_or_default();
                h3 { (name) }
                @if s.limits_of_network { p.muted { "Too few baseline batches at this site: held to the network's limits." } }
                (series_figure(&c, s, &name))
            }
            p.muted {
                "Individuals chart: centre line and limits at ±3σ, σ = mean moving range / 1.128 (d2). "
                "Moving-range chart: upper limit 3.267 × mean moving range (D4). "
                "Signals: the Nelson rules 1 to 8. Capability: Cpk (σ within) and Ppk (overall σ) with Bissell's 95% intervals. "
                "Comparison: site mean minus the rest's, Welch's 95% interval; the test is Welch's t, or Mann-Whitney's U where a side is not normal (Jarque-Bera, 5%)."
            }
        },
    )))
}

/// `/analytics/{product}/chart.csv`: the chart's data, one row per batch.
pub async fn chart_csv(
    hub: HubState,
    session: Session,
    Path(product): Path<String>,
    Query(q): Query<ChartQuery>,
) -> Result<Response, Response> {
    let c = analytics::chart(&hub, &session.user, &product, &q.attribute, &q.statistic)
        .await
        .map_err(refused)?;
    let name = format!(
        "{}-{}-{}.csv",
        product,
        c.attribute.replace('/', "-"),
        c.statistic.as_str()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        analytics::csv(&c),
    )
        .into_response())
}

fn spec_text(spec: Option<Spec>) -> String {
    match spec {
        Some(Spec {
            lower: Some(l),
            upper: Some(u),
        }) => format!("specification {l} to {u}"),
        Some(Spec {
            lower: Some(l),
            upper: None,
        }) => format!("specification at least {l}"),
        Some(Spec {
            lower: None,
            upper: Some(u),
        }) => format!("specification at most {u}"),
        _ => "no specification".into(),
    }
}

/// A number for a chart's labels: four significant figures.
fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.digits$}")
}

/// The individuals and moving-range charts of one series.
fn series_figure(c: &Chart, s: &Series, name: &str) -> Markup {
    let skip = s.points.len().saturating_sub(DRAWN);
    let points = &s.points[skip..];
    if points.is_empty() {
        return html! { p { "No batches." } };
    }
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let ranges = crate::model::analytics::spc::moving_ranges(&values);
    let (w, h, left, right, top, bottom) = (760.0_f64, 220.0_f64, 56.0, 70.0, 14.0, 24.0);
    let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if let Some(l) = s.limits {
        lo = lo.min(l.lcl());
        hi = hi.max(l.ucl());
    }
    if hi - lo < 1e-9 {
        hi += 1.0;
        lo -= 1.0;
    }
    let pad = (hi - lo) * 0.06;
    let (lo, hi) = (lo - pad, hi + pad);
    let n = points.len().max(2) as f64;
    let x = |i: usize| left + (i as f64) / (n - 1.0) * (w - left - right);
    let y = |v: f64| top + (hi - v) / (hi - lo) * (h - top - bottom);
    let signalled: std::collections::BTreeMap<usize, Vec<u8>> =
        s.signals
            .iter()
            .fold(std::collections::BTreeMap::new(), |mut m, g| {
                if g.index >= skip {
                    m.entry(g.index - skip)
                        .or_insert_with(Vec::new)
                        .push(g.rule.number());
                }
                m
            });
    let path: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
        .collect();
    let line = |v: f64, label: &str, class: &str| -> Markup {
        html! {
            line class=(class) x1=(left) x2=(w - right) y1=(format!("{:.1}", y(v))) y2=(format!("{:.1}", y(v))) {}
            text x=(w - right + 4.0) y=(format!("{:.1}", y(v) + 4.0)) font-size="11" { (label) " " (num(v)) }
        }
    };
    let description = format!(
        "Individuals chart of {} for {}: {} batches{}, {} signal(s).",
        c.label,
        name,
        s.points.len(),
        s.limits.map_or(String::from(", no limits"), |l| format!(
            ", centre {}, limits {} to {}",
            num(l.center),
            num(l.lcl()),
            num(l.ucl())
        )),
        s.signals.len()
    );
    // The moving-range chart.
    let mh = 120.0_f64;
    let mr_hi = ranges
        .iter()
        .copied()
        .fold(s.limits.map_or(0.0, |l| l.mr_ucl()), f64::max)
        .max(1e-9)
        * 1.08;
    let my = |v: f64| top + (mr_hi - v) / mr_hi * (mh - top - bottom);
    let mr_path: Vec<String> = ranges
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", x(i + 1), my(*v)))
        .collect();
    html! {
        figure.control data-series=(name) {
            svg.chart.control width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(description) {
                style { "line.cl{stroke:#1b1f24;stroke-width:1}line.limit{stroke:#b3261e;stroke-width:1;stroke-dasharray:5 3}circle.pt{fill:#0b5cad}circle.base{fill:#7fa8d6}circle.sig{fill:#b3261e}" }
                @if let Some(l) = s.limits {
                    (line(l.center, "CL", "cl"))
                    (line(l.ucl(), "UCL", "limit"))
                    (line(l.lcl(), "LCL", "limit"))
                }
                polyline points=(path.join(" ")) fill="none" stroke="#8a939e" stroke-width="1" {}
                @for (i, p) in points.iter().enumerate() {
                    @let rules = signalled.get(&i);
                    circle class=(if rules.is_some() { "sig" } else if p.in_baseline { "base" } else { "pt" })
                        cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(p.value))) r=(if rules.is_some() { "4.5" } else { "3" })
                        data-signal=[rules.map(|r| r.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "))] {
                        title {
                            (p.site_id) " · batch " (p.batch_id) " · " (num(p.value))
                            @if p.in_baseline { " · baseline" }
                            @if let Some(r) = rules { " · rule " (r.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")) }
                        }
                    }
                }
                text x="4" y=(top + 4.0) font-size="11" fill="#5b6470" { (num(hi)) }
                text x="4" y=(h - bottom) font-size="11" fill="#5b6470" { (num(lo)) }
                text x=(left) y=(h - 6.0) font-size="11" fill="#5b6470" {
                    "batches in order placed" @if skip > 0 { " (the latest " (points.len()) " of " (s.points.len()) ")" }
                }
            }
            svg.chart.mr width=(w) height=(mh) viewBox=(format!("0 0 {w} {mh}")) role="img" aria-label=(format!("Moving-range chart of {} for {name}", c.label)) {
                @if let Some(l) = s.limits {
                    line x1=(left) x2=(w - right) y1=(format!("{:.1}", my(l.mr_ucl()))) y2=(format!("{:.1}", my(l.mr_ucl()))) stroke="#b3261e" stroke-dasharray="5 3" {}
                    text x=(w - right + 4.0) y=(format!("{:.1}", my(l.mr_ucl()) + 4.0)) font-size="11" { "UCL " (num(l.mr_ucl())) }
                    line x1=(left) x2=(w - right) y1=(format!("{:.1}", my(l.mr_bar))) y2=(format!("{:.1}", my(l.mr_bar))) stroke="#1b1f24" {}
                    text x=(w - right + 4.0) y=(format!("{:.1}", my(l.mr_bar) + 4.0)) font-size="11" { "MR̄ " (num(l.mr_bar)) }
                }
                polyline points=(mr_path.join(" ")) fill="none" stroke="#0b5cad" stroke-width="1.5" {}
                text x="4" y=(top + 4.0) font-size="11" fill="#5b6470" { "MR" }
            }
            figcaption.muted { (description) }
        }
    }
}

fn signals_table(c: &Chart) -> Markup {
    let mut rows: Vec<(&str, &crate::model::analytics::chart::Point, u8, &str)> = Vec::new();
    for s in &c.sites {
        for g in &s.signals {
            let p = &s.points[g.index];
            rows.push((p.site_id.as_str(), p, g.rule.number(), g.rule.words()));
        }
    }
    rows.sort_by(|a, b| b.1.batch_at.cmp(&a.1.batch_at).then(a.2.cmp(&b.2)));
    html! {
        @if rows.is_empty() {
            p data-signals="0" { "No signal on any site's chart." }
        } @else {
            p.muted data-signals=(rows.len()) { (rows.len()) " signal(s) on the sites' charts, newest first." }
            div.scroll tabindex="0" { table data-signal-table {
                thead { tr { th scope="col" { "Site" } th scope="col" { "Batch" } th scope="col" { "Placed" } th scope="col" { "Value" } th scope="col" { "Rule" } } }
                tbody {
                    @for (site, p, rule, words) in &rows {
                        tr {
                            td { (site) }
                            td { a href=(format!("/batches/{}", p.batch_id)) { code { (p.batch_id) } } }
                            td { (when(p.batch_at)) }
                            td { (num(p.value)) }
                            td { "Rule " (rule) ": " (words) }
                        }
                    }
                }
            } }
        }
    }
}

/// Each site's difference from the rest of the network, with its 95% interval
/// about a line at zero.
fn forest_plot(c: &Chart) -> Markup {
    let computed: Vec<(&str, &Comparison)> = c
        .comparisons
        .iter()
        .filter_map(|(s, k)| k.as_ref().map(|k| (s.as_str(), k)))
        .collect();
    if computed.is_empty() {
        return html! { p { "Too few batches at each site to compare." } };
    }
    let extent = computed
        .iter()
        .flat_map(|(_, k)| [k.welch.low.abs(), k.welch.high.abs()])
        .filter(|v| v.is_finite())
        .fold(1e-9_f64, f64::max)
        * 1.1;
    let (w, left, right, row) = (760.0_f64, 130.0_f64, 250.0_f64, 26.0_f64);
    let h = row * (computed.len() as f64 + 1.5);
    let x = |v: f64| left + (v + extent) / (2.0 * extent) * (w - left - right);
    html! {
        figure.forest {
            svg.chart.forest width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img"
                aria-label=(format!("Forest plot of {}: each site's mean minus the rest of the network's, with 95% intervals", c.label)) {
                line x1=(x(0.0)) x2=(x(0.0)) y1="4" y2=(h - row) stroke="#1b1f24" stroke-dasharray="3 3" {}
                @for (i, (site, k)) in computed.iter().enumerate() {
                    @let cy = row * (i as f64 + 1.0);
                    @let excludes_zero = k.welch.low > 0.0 || k.welch.high < 0.0;
                    g data-site=(site) data-excludes-zero=(excludes_zero) {
                        text x="4" y=(cy + 4.0) font-size="12" { (site) }
                        line x1=(format!("{:.1}", x(k.welch.low.max(-extent)))) x2=(format!("{:.1}", x(k.welch.high.min(extent)))) y1=(cy) y2=(cy)
                            stroke=(if excludes_zero { "#b3261e" } else { "#0b5cad" }) stroke-width="2" {}
                        rect x=(format!("{:.1}", x(k.welch.difference) - 4.0)) y=(cy - 4.0) width="8" height="8"
                            fill=(if excludes_zero { "#b3261e" } else { "#0b5cad" }) {}
                        text x=(w - right + 8.0) y=(cy + 4.0) font-size="12" {
                            (num(k.welch.difference)) " (" (num(k.welch.low)) " to " (num(k.welch.high)) "), p " (num(k.p))
                        }
                    }
                }
                text x=(x(0.0) - 3.0) y=(h - 6.0) font-size="11" fill="#5b6470" { "0" }
                text x=(left) y=(h - 6.0) font-size="11" fill="#5b6470" { (num(-extent)) }
                text x=(w - right - 30.0) y=(h - 6.0) font-size="11" fill="#5b6470" { (num(extent)) }
            }
        }
        div.scroll tabindex="0" { table data-comparisons {
            thead { tr { th scope="col" { "Site" } th scope="col" { "Batches (site / rest)" } th scope="col" { "Mean (site / rest)" } th scope="col" { "Difference, 95% interval" } th scope="col" { "Test" } th scope="col" { "p" } } }
            tbody {
                @for (site, k) in &c.comparisons {
                    tr {
                        td { (site) }
                        @if let Some(k) = k {
                            td { (k.n_site) " / " (k.n_rest) }
                            td { (num(k.mean_site)) " / " (num(k.mean_rest)) }
                            td { (num(k.welch.difference)) " (" (num(k.welch.low)) " to " (num(k.welch.high)) ")" }
                            td { (k.test.as_str()) }
                            td { (num(k.p)) }
                        } @else {
                            td colspan="5" { "too few batches to compare" }
                        }
                    }
                }
            }
        } }
    }
}

fn capability_table(c: &Chart) -> Markup {
    html! {
        @if c.spec.is_none() {
            p { "No specification to compute capability against." }
        } @else {
            div.scroll tabindex="0" { table data-capability {
                thead { tr { th scope="col" { "Series" } th scope="col" { "Batches" } th scope="col" { "Mean" } th scope="col" { "Cpk (95%)" } th scope="col" { "Ppk (95%)" } } }
                tbody {
                    @for s in std::iter::once(&c.network).chain(&c.sites) {
                        tr {
                            td { @if let Some(site) = &s.site_id { (site) } @else { strong { "Network" } } }
                            @if let Some(k) = &s.capability {
                                td { (k.n) } td { (num(k.mean)) }
                                td { (num(k.cpk.value)) " (" (num(k.cpk.low)) " to " (num(k.cpk.high)) ")" }
                                td { (num(k.ppk.value)) " (" (num(k.ppk.low)) " to " (num(k.ppk.high)) ")" }
                            } @else {
                                td { (s.points.len()) } td colspan="3" { "too few batches, or no spread" }
                            }
                        }
                    }
                }
            } }
        }
    }
}

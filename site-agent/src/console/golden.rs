//! The golden batch drawn for people, in the site console and the hub's alike:
//! for a step's process parameters, the median and 5th-95th percentile band over
//! released batches by time in step, with a batch's own trajectory over it and the
//! bins where it left the band marked and listed (inline SVG, no external assets;
//! readable when printed). What counts as leaving the band is
//! [`carrel_proto::golden`]'s; the band is the hub's.

use carrel_proto::golden::{Excursion, Panel, BINS_PER_STEP, MIN_BATCHES};
use maud::{html, Markup};

/// The figures' layout, for each console's style sheet.
pub const CSS: &str = ".golden-grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(min(100%, 22rem), 1fr)); gap:1rem; }
figure.golden { margin:0; } figure.golden svg { display:block; width:100%; background:#fff; border:1px solid #d0d7de; height:auto; }
ul.excursions { color:#b3261e; margin:.3rem 0 0; padding-left:1.2rem; }";

/// A sampled step and its panels, one per parameter the recipe names.
pub struct Step<'a> {
    pub name: &'a str,
    pub panels: &'a [Panel],
}

/// Numbers as the charts show them: four significant digits at most.
fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.digits$}")
}

fn hours(h: f64) -> String {
    let text = format!("{h:.1}");
    text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
}

/// The golden-batch section of a batch's page: each sampled step (only the latest
/// when `latest_only`, as on a live page), a figure per parameter; `note` says
/// where the band comes from when that needs saying (a site out of touch).
pub fn section(steps: &[Step<'_>], latest_only: bool, note: Option<Markup>) -> Markup {
    let shown: &[Step<'_>] = match (latest_only, steps.last()) {
        (true, Some(_)) => &steps[steps.len() - 1..],
        _ => steps,
    };
    let outside = |steps: &[Step<'_>]| -> usize {
        steps
            .iter()
            .flat_map(|s| s.panels)
            .map(|p| p.excursions.len())
            .sum()
    };
    let left = outside(shown);
    let earlier = outside(steps) - left;
    html! {
        section.golden data-golden {
            h2 { "Process against the golden batch" }
            @if let Some(note) = note { (note) }
            @if steps.is_empty() {
                p.muted { "No process samples yet." }
            } @else {
                p.muted {
                    "Each parameter's median (dashed) and 5th–95th percentile band (shaded) by time in step over released batches of the product, with this batch's mean in each twelfth of the step (dots). "
                    "A band is drawn where at least " (MIN_BATCHES) " released batches have samples."
                }
                @if left > 0 {
                    p.notice.warn role="status" data-left-band=(left) {
                        strong { "This batch left the band " (left) (if left == 1 { " time." } else { " times." }) }
                        " The points are marked in red and listed under each figure."
                    }
                }
                @if earlier > 0 {
                    p.notice.warn role="status" data-left-band-earlier=(earlier) {
                        strong { "It left the band " (earlier) (if earlier == 1 { " time" } else { " times" }) " in earlier steps." }
                    }
                }
                @for step in shown {
                    h3 { (step.name) }
                    div.golden-grid {
                        @for panel in step.panels { (figure(panel)) }
                    }
                }
            }
        }
    }
}

/// One parameter's figure.
fn figure(panel: &Panel) -> Markup {
    let band = panel;
    let (w, h, left, right, top, bottom) = (420.0_f64, 180.0_f64, 52.0, 12.0, 12.0, 30.0);
    let last_bin = band
        .bins
        .iter()
        .map(|b| b.bin)
        .chain(panel.points.iter().map(|p| p.bin))
        .max()
        .unwrap_or(0)
        .max(BINS_PER_STEP - 1);
    let span = f64::from(last_bin + 1) * band.bin_hours;
    let values = band
        .bins
        .iter()
        .flat_map(|b| [b.low, b.high])
        .chain(panel.points.iter().map(|p| p.mean()));
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if !lo.is_finite() {
        (lo, hi) = band.range;
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 1.0, hi + 1.0);
    }
    let pad = (hi - lo) * 0.08;
    let (lo, hi) = (lo - pad, hi + pad);
    let x = |hours: f64| left + hours / span * (w - left - right);
    let y = |v: f64| top + (hi - v) / (hi - lo) * (h - top - bottom);
    let pt = |hours: f64, v: f64| format!("{:.1},{:.1}", x(hours), y(v));
    let area: Vec<String> = band
        .bins
        .iter()
        .map(|b| pt(band.hours(b.bin), b.high))
        .chain(band.bins.iter().rev().map(|b| pt(band.hours(b.bin), b.low)))
        .collect();
    let median: Vec<String> = band
        .bins
        .iter()
        .map(|b| pt(band.hours(b.bin), b.median))
        .collect();
    let line: Vec<String> = panel
        .points
        .iter()
        .map(|p| pt(band.hours(p.bin), p.mean()))
        .collect();
    let out = |bin: u32| panel.excursions.iter().any(|e| e.bin == bin);
    let words = carrel_proto::recipe::unit_words(&band.unit);
    let unit = if words.is_empty() {
        String::new()
    } else {
        format!(" {words}")
    };
    let description = format!(
        "{} in {}: band over {} released batches in {} of {} bins; this batch has {} bins sampled, {} outside the band.",
        band.label,
        band.step_name,
        band.batches,
        band.bins.len(),
        last_bin + 1,
        panel.points.len(),
        panel.excursions.len()
    );
    html! {
        figure.golden data-parameter=(band.parameter) data-step=(band.step_id) data-band-bins=(band.bins.len()) data-points=(panel.points.len()) data-outside=(panel.excursions.len()) {
            svg.chart.golden width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(description) {
                style { "polygon.band{fill:#cfe0f3;stroke:none}polyline.median{fill:none;stroke:#1b1f24;stroke-width:1;stroke-dasharray:4 3}polyline.batch{fill:none;stroke:#0b5cad;stroke-width:1.5}circle.in{fill:#0b5cad}circle.out{fill:#b3261e}" }
                @if area.len() >= 2 { polygon.band points=(area.join(" ")) {} }
                @if median.len() >= 2 { polyline.median points=(median.join(" ")) {} }
                @if line.len() >= 2 { polyline.batch points=(line.join(" ")) {} }
                @for p in &panel.points {
                    circle class=(if out(p.bin) { "out" } else { "in" }) cx=(format!("{:.1}", x(band.hours(p.bin)))) cy=(format!("{:.1}", y(p.mean()))) r=(if out(p.bin) { "4.5" } else { "3" }) {
                        title { (hours(f64::from(p.bin) * band.bin_hours)) "–" (hours(f64::from(p.bin + 1) * band.bin_hours)) " h: " (num(p.mean())) (unit) }
                    }
                }
                text x="4" y=(top + 8.0) font-size="11" fill="#5b6470" { (num(hi)) }
                text x="4" y=(h - bottom) font-size="11" fill="#5b6470" { (num(lo)) }
                text x=(left) y=(h - 8.0) font-size="11" fill="#5b6470" { "hours in step, 0 to " (hours(span)) }
            }
            figcaption {
                strong { (band.label) } (unit) " · recipe range " (num(band.range.0)) "–" (num(band.range.1))
                @if band.bins.is_empty() {
                    br;
                    @if band.batches > 0 {
                        span.muted { "No band yet: " (band.batches) " released batches have samples here, and a bin needs " (MIN_BATCHES) "." }
                    } @else {
                        span.muted { "No band." }
                    }
                }
                @if !panel.excursions.is_empty() {
                    ul.excursions {
                        @for e in &panel.excursions { li data-excursion=(e.bin) { (excursion(e, &unit)) } }
                    }
                }
            }
        }
    }
}

/// An excursion in words, with digits enough to show the value beyond the bound
/// it crossed (37.035 above a band ending at 37.032, not "37.03 above 37.03").
fn excursion(e: &Excursion, unit: &str) -> String {
    let bound = match e.side {
        carrel_proto::golden::Side::Above => e.high,
        carrel_proto::golden::Side::Below => e.low,
    };
    let gap = (e.value - bound).abs();
    let needed = if gap > 0.0 && gap.is_finite() {
        (1 - gap.log10().floor() as i32).clamp(0, 8) as usize
    } else {
        0
    };
    let digits = |v: f64| {
        let shown = num(v);
        let decimals = shown.split_once('.').map_or(0, |(_, d)| d.len());
        if decimals >= needed {
            shown
        } else {
            format!("{v:.needed$}")
        }
    };
    format!(
        "{}–{} h: {}{unit}, {} the band ({}–{})",
        hours(e.from_hours),
        hours(e.to_hours),
        digits(e.value),
        e.side.as_str(),
        digits(e.low),
        digits(e.high)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::golden::Side;

    #[test]
    fn an_excursion_shows_the_digits_that_put_it_outside() {
        let e = Excursion {
            bin: 1,
            from_hours: 14.0,
            to_hours: 28.0,
            value: 37.035,
            low: 36.9712,
            high: 37.0321,
            side: Side::Above,
        };
        assert_eq!(
            excursion(&e, " degC"),
            "14–28 h: 37.0350 degC, above the band (36.9712–37.0321)"
        );
    }
}

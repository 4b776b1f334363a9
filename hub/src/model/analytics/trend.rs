//! Trend signals: the signals that reach people. A signal on a site's chart of a
//! QC result, by one of [`TREND_RULES`], is kept once per (batch, attribute,
//! statistic, rule), audited (a notification kind QA subscribes to), and, while its
//! batch awaits QA's decision, listed among the exceptions QA must justify at
//! release ("trend signal").
//!
//! Why only QC results and these rules: every chart shows all eight rules, but a
//! batch is charted on some hundred statistics, and each rule has a false-alarm rate
//! on stable data; an exception on most batches would teach QA to ignore them. The
//! release attributes (QC results) are charted once per test, and by default the
//! rules that find a shift of the mean (1, 2, 5 and 6) flag it: a 1.5-sigma shift is
//! found within 9 batches in nine runs of ten, and a stable chart flags about 4% of
//! its batches against limits from 20 batches, under 3% from 30 (measured in
//! `trend::tests`). `[analytics] trend_rules` trades one against the other.

use super::chart::Chart;
use super::measure::QC;
use super::spc::Rule;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `[analytics]` section of the hub's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// The Nelson rules (1 to 8) whose signals on a site's chart of a QC result
    /// become trend signals.
    pub trend_rules: Vec<u8>,
    /// How often the hub looks for new trend signals once new results arrived.
    pub trend_interval_secs: u32,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        AnalyticsSettings {
            trend_rules: TREND_RULES.iter().map(|r| r.number()).collect(),
            trend_interval_secs: 30,
        }
    }
}

impl AnalyticsSettings {
    pub fn check(&self) -> Result<(), String> {
        if self.trend_interval_secs == 0 {
            return Err("analytics.trend_interval_secs must be at least 1".into());
        }
        self.rules().map(|_| ())
    }

    /// The rules named, checked.
    pub fn rules(&self) -> Result<Vec<Rule>, String> {
        self.trend_rules
            .iter()
            .map(|n| {
                Rule::ALL
                    .into_iter()
                    .find(|r| r.number() == *n)
                    .ok_or_else(|| {
                        format!("analytics.trend_rules: {n} is not a Nelson rule (1 to 8)")
                    })
            })
            .collect()
    }
}

/// The rules whose signals become trend signals, unless the configuration says
/// otherwise.
pub const TREND_RULES: [Rule; 4] = [
    Rule::BeyondThreeSigma,
    Rule::NineOnOneSide,
    Rule::TwoOfThreeBeyondTwoSigma,
    Rule::FourOfFiveBeyondOneSigma,
];

/// A signal that reaches people.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendSignal {
    pub batch_id: Uuid,
    pub product_id: String,
    pub site_id: String,
    pub attribute: String,
    pub statistic: String,
    pub rule: u8,
    pub value: f64,
    /// What it is in words, for the exception and the notification.
    pub text: String,
}

/// The trend signals of a chart: those by `rules` on each site's chart of a QC result.
pub fn of_chart(chart: &Chart, rules: &[Rule]) -> Vec<TrendSignal> {
    if !chart.attribute.starts_with(QC) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for series in &chart.sites {
        let Some(site_id) = &series.site_id else {
            continue;
        };
        for signal in series.signals.iter().filter(|s| rules.contains(&s.rule)) {
            let point = &series.points[signal.index];
            out.push(TrendSignal {
                batch_id: point.batch_id,
                product_id: chart.product_id.clone(),
                site_id: site_id.clone(),
                attribute: chart.attribute.clone(),
                statistic: chart.statistic.as_str().to_owned(),
                rule: signal.rule.number(),
                value: point.value,
                text: format!(
                    "trend signal: {} {} at {site_id}, Nelson rule {} ({})",
                    chart.label,
                    point.value,
                    signal.rule.number(),
                    signal.rule.words()
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::chart::chart;
    use super::super::measure::{Run, Statistic, Stored};
    use super::super::testing::normal;
    use super::*;

    fn measures(seed: u64, n: usize, shift_from: Option<usize>) -> Vec<Stored> {
        normal(seed, n, 90.0, 2.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let v = if shift_from.is_some_and(|s| i >= s) {
                    v - 3.0
                } else {
                    v
                };
                Stored {
                    batch_id: Uuid::from_u128(i as u128 + 1),
                    site_id: "site-a".into(),
                    batch_at: chrono::DateTime::from_timestamp(1_700_000_000 + i as i64, 0)
                        .expect("time"),
                    unit: "%".into(),
                    run: Run::of(0.0, v, v, v),
                }
            })
            .collect()
    }

    fn signalled_batches(m: &[Stored], attribute: &str) -> Vec<usize> {
        let c = chart(
            "p",
            attribute,
            Statistic::Value,
            "Viability".into(),
            m,
            None,
            None,
        );
        let mut at: Vec<usize> = of_chart(&c, &TREND_RULES)
            .iter()
            .map(|s| s.batch_id.as_u128() as usize - 1)
            .collect();
        at.sort_unstable();
        at.dedup();
        at
    }

    #[test]
    fn stable_batches_are_rarely_flagged_and_a_shift_is_within_nine() {
        // 300 seeded stable charts of 60 batches (limits from the first 20): the share
        // of batches after the limits that a trend signal flags.
        let (mut flagged, mut batches) = (0usize, 0usize);
        for seed in 0..300 {
            let m = measures(seed, 60, None);
            flagged += signalled_batches(&m, "qc/viability")
                .iter()
                .filter(|&&i| i >= 20)
                .count();
            batches += 40;
        }
        let rate = flagged as f64 / batches as f64;
        println!(
            "stable QC chart: {flagged} of {batches} batches flagged ({:.2}%)",
            rate * 100.0
        );
        // Rules 1, 2, 5, 6 together against limits from 20 batches: about 4% of
        // stable points (2.9% from 30, 2.6% from 50; rule 1 alone 1.3%, but it finds
        // the shift below in fewer than half the runs).
        assert!(rate < 0.05, "{rate}");
        // A 1.5-sigma drop from batch 30 is flagged within 9 batches in most runs.
        let found = (0..300)
            .filter(|&seed| {
                signalled_batches(&measures(seed, 60, Some(29)), "qc/viability")
                    .iter()
                    .any(|&i| (29..38).contains(&i))
            })
            .count();
        println!("1.5-sigma shift flagged within 9 batches in {found} of 300 runs");
        assert!(found >= 255, "{found}");
        // A process parameter's chart flags nothing.
        let m = measures(1, 60, Some(29));
        assert!(signalled_batches(&m, "step/expansion/temperature").is_empty());
    }
}

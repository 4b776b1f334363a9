//! A product's control chart of one attribute: the network's individuals series
//! and each site's, with limits from QA's baseline, the Nelson rules' signals,
//! capability against the recipe's specification, and each site compared with the
//! rest of the network. Built from the measures the store keeps at ingest
//! ([`super::measure`]); pure.
//!
//! Formulas: limits are the individuals chart's (centre = baseline mean, sigma =
//! MR-bar / d2, [`super::spc::Limits`]); signals are the Nelson rules
//! ([`super::spc::signals`]); capability is Cpk/Ppk with Bissell's intervals
//! ([`super::capability`]); comparability is Welch's difference of means with
//! Welch's or Mann-Whitney's test ([`super::compare`]).

use super::capability::{self, Capability, Spec};
use super::compare::{self, Comparison};
use super::measure::{Baseline, Statistic, Stored, QC, STEP};
use super::spc::{self, Limits, Rule, Signal};
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Without a baseline chosen, limits are provisional: from each series' first
/// this many points.
pub const PROVISIONAL_POINTS: usize = 20;
/// The confidence of every interval shown.
pub const CONFIDENCE: f64 = 0.95;

/// One batch on a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub batch_id: Uuid,
    pub site_id: String,
    pub batch_at: DateTime<Utc>,
    pub value: f64,
    /// Whether the batch is in the baseline the limits come from.
    pub in_baseline: bool,
}

/// Where a chart's limits come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Basis {
    /// The baseline QA chose.
    Baseline(Baseline),
    /// No baseline chosen: each series' first [`PROVISIONAL_POINTS`] points.
    Provisional,
}

/// The chart of the network (`site_id` None) or of one site.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub site_id: Option<String>,
    pub points: Vec<Point>,
    /// None when no limits can be computed (fewer than two baseline points, or
    /// none with spread, and no network limits to fall back on).
    pub limits: Option<Limits>,
    /// A site with too few baseline points of its own is held to the network's.
    pub limits_of_network: bool,
    pub signals: Vec<Signal>,
    pub capability: Option<Capability>,
}

impl Series {
    pub fn values(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.value).collect()
    }
}

/// A product's chart of one attribute's statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub product_id: String,
    pub attribute: String,
    pub statistic: Statistic,
    /// In words, from the recipe ("Viability", "Expansion: temperature, mean").
    pub label: String,
    pub unit: String,
    pub spec: Option<Spec>,
    pub basis: Basis,
    pub network: Series,
    pub sites: Vec<Series>,
    /// Each site against the rest of the network (None below two values a side).
    pub comparisons: Vec<(String, Option<Comparison>)>,
}

/// The statistics charted of an attribute.
pub fn statistics_of(attribute: &str) -> &'static [Statistic] {
    if attribute.starts_with(QC) {
        &[Statistic::Value]
    } else {
        &Statistic::OF_PARAMETER
    }
}

/// An attribute's statistic in words, from `recipe` (the product's version in
/// force); the attribute itself when the recipe does not name it.
pub fn label(recipe: &Recipe, attribute: &str, statistic: Statistic) -> String {
    if let Some(test_id) = attribute.strip_prefix(QC) {
        let test = recipe.all_tests().find(|t| t.id == test_id);
        return test.map_or_else(|| test_id.to_owned(), |t| t.name.clone());
    }
    let Some((step_id, parameter)) = attribute
        .strip_prefix(STEP)
        .and_then(|rest| rest.split_once('/'))
    else {
        return attribute.to_owned();
    };
    let step = recipe.step(step_id);
    let name = step
        .and_then(|s| s.parameters.iter().find(|p| p.name == parameter))
        .map_or_else(
            || carrel_proto::recipe::parameter_words(parameter),
            |p| p.label(),
        );
    let step = step.map_or(step_id.to_owned(), |s| s.name.clone());
    let what = match statistic {
        Statistic::Value | Statistic::Mean => "mean",
        Statistic::Min => "minimum",
        Statistic::Max => "maximum",
        Statistic::TimeOutOfRange => "hours out of range",
    };
    format!("{step}: {name}, {what}")
}

/// The specification a statistic is held to: a QC test's, or a parameter's range
/// for its mean and extremes (none for the time out of range).
pub fn spec(recipe: &Recipe, attribute: &str, statistic: Statistic) -> Option<Spec> {
    let spec = if let Some(test_id) = attribute.strip_prefix(QC) {
        let test = recipe.all_tests().find(|t| t.id == test_id)?;
        Spec {
            lower: test.spec.min,
            upper: test.spec.max,
        }
    } else {
        if statistic == Statistic::TimeOutOfRange {
            return None;
        }
        let (step_id, parameter) = attribute.strip_prefix(STEP)?.split_once('/')?;
        let p = recipe
            .step(step_id)?
            .parameters
            .iter()
            .find(|p| p.name == parameter)?;
        Spec {
            lower: Some(p.low),
            upper: Some(p.high),
        }
    };
    (spec.lower.is_some() || spec.upper.is_some()).then_some(spec)
}

/// The chart of `statistic` of `attribute` over `measures` (in batch order), with
/// limits from `baseline` (or provisional ones) and capability against `spec`.
pub fn chart(
    product_id: &str,
    attribute: &str,
    statistic: Statistic,
    label: String,
    measures: &[Stored],
    baseline: Option<&Baseline>,
    spec: Option<Spec>,
) -> Chart {
    let in_baseline = |id: &Uuid| baseline.is_some_and(|b| b.batches.contains(id));
    let points: Vec<Point> = measures
        .iter()
        .map(|m| Point {
            batch_id: m.batch_id,
            site_id: m.site_id.clone(),
            batch_at: m.batch_at,
            value: statistic.of(&m.run),
            in_baseline: in_baseline(&m.batch_id),
        })
        .filter(|p| p.value.is_finite())
        .collect();
    let network = series(None, points.clone(), baseline.is_some(), None, spec);
    let mut site_ids: Vec<&str> = points.iter().map(|p| p.site_id.as_str()).collect();
    site_ids.sort_unstable();
    site_ids.dedup();
    let sites: Vec<Series> = site_ids
        .iter()
        .map(|site| {
            let own: Vec<Point> = points
                .iter()
                .filter(|p| p.site_id == *site)
                .cloned()
                .collect();
            series(
                Some(site.to_string()),
                own,
                baseline.is_some(),
                network.limits,
                spec,
            )
        })
        .collect();
    let comparisons = site_ids
        .iter()
        .map(|site| {
            let (own, rest): (Vec<&Point>, Vec<&Point>) =
                points.iter().partition(|p| p.site_id == *site);
            let values = |ps: Vec<&Point>| ps.iter().map(|p| p.value).collect::<Vec<_>>();
            (
                site.to_string(),
                compare::compare(&values(own), &values(rest), CONFIDENCE),
            )
        })
        .collect();
    Chart {
        product_id: product_id.to_owned(),
        attribute: attribute.to_owned(),
        statistic,
        label,
        unit: measures.first().map(|m| m.unit.clone()).unwrap_or_default(),
        spec,
        basis: baseline.map_or(Basis::Provisional, |b| Basis::Baseline(b.clone())),
        network,
        sites,
        comparisons,
    }
}

/// One series: its limits from its baseline points (or its first
/// [`PROVISIONAL_POINTS`] without a baseline), else `fallback` (the network's).
fn series(
    site_id: Option<String>,
    points: Vec<Point>,
    chosen: bool,
    fallback: Option<Limits>,
    spec: Option<Spec>,
) -> Series {
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let base: Vec<f64> = if chosen {
        points
            .iter()
            .filter(|p| p.in_baseline)
            .map(|p| p.value)
            .collect()
    } else {
        values.iter().take(PROVISIONAL_POINTS).copied().collect()
    };
    let own = Limits::from_baseline(&base);
    let limits_of_network = own.is_none() && fallback.is_some();
    let limits = own.or(fallback);
    let signals = limits.map_or_else(Vec::new, |l| spc::signals(&values, &l, &Rule::ALL));
    let capability = spec.and_then(|s| capability::capability(&values, s, CONFIDENCE));
    Series {
        site_id,
        points,
        limits,
        limits_of_network,
        signals,
        capability,
    }
}

#[cfg(test)]
mod tests {
    use super::super::measure::Run;
    use super::super::testing::normal;
    use super::*;

    fn stored(site: &str, i: usize, value: f64) -> Stored {
        Stored {
            batch_id: Uuid::from_u128(i as u128 + 1),
            site_id: site.into(),
            batch_at: DateTime::from_timestamp(1_700_000_000 + i as i64 * 86_400, 0).expect("time"),
            unit: "%".into(),
            run: Run::of(0.0, value, value, value),
        }
    }

    /// Five sites, 40 batches each in turn; site-c's mean moves up 1.5 sigma
    /// from its 30th batch.
    fn network(seed: u64) -> Vec<Stored> {
        let sites = ["site-a", "site-b", "site-c", "site-d", "site-e"];
        let mut out = Vec::new();
        for (k, site) in sites.iter().enumerate() {
            let values = normal(seed * 10 + k as u64, 40, 90.0, 2.0);
            for (i, v) in values.into_iter().enumerate() {
                let shift = if *site == "site-c" && i >= 29 {
                    3.0
                } else {
                    0.0
                };
                out.push(stored(site, i * sites.len() + k, v + shift));
            }
        }
        out.sort_by_key(|m| m.batch_at);
        out
    }

    #[test]
    fn a_shift_at_one_site_is_signalled_there_against_the_chosen_baseline() {
        let measures = network(7);
        // The baseline: every site's first 20 batches.
        let baseline = Baseline {
            product_id: "p".into(),
            chosen_at: Utc::now(),
            chosen_by: "qa".into(),
            reason: "validation".into(),
            batches: measures[..100].iter().map(|m| m.batch_id).collect(),
        };
        let spec = Some(Spec {
            lower: Some(70.0),
            upper: None,
        });
        let c = chart(
            "p",
            "qc/viability",
            Statistic::Value,
            "Viability".into(),
            &measures,
            Some(&baseline),
            spec,
        );
        assert_eq!(c.sites.len(), 5);
        let site_c = c
            .sites
            .iter()
            .find(|s| s.site_id.as_deref() == Some("site-c"))
            .expect("site-c");
        assert!(!site_c.limits_of_network);
        let limits = site_c.limits.expect("limits");
        assert!((limits.center - 90.0).abs() < 1.5, "{limits:?}");
        let first = site_c
            .signals
            .iter()
            .map(|s| s.index)
            .find(|&i| i >= 29)
            .expect("a signal after the shift");
        assert!(first < 29 + 9, "first signal at batch {}", first + 1);
        // Site-c's comparison shows a higher mean than the rest's, excluding zero.
        let (_, cmp) = c
            .comparisons
            .iter()
            .find(|(s, _)| s == "site-c")
            .expect("compared");
        let cmp = cmp.expect("enough values");
        assert!(cmp.welch.difference > 0.0 && cmp.welch.low > 0.0, "{cmp:?}");
        // Capability against the one-sided spec is high (mean ~90, sd ~2, LSL 70).
        let cap = c.network.capability.expect("capability");
        assert!(cap.cpk.value > 2.5, "{cap:?}");
        assert!(matches!(c.basis, Basis::Baseline(_)));
    }

    #[test]
    fn a_site_without_baseline_batches_is_held_to_the_network_limits() {
        let mut measures = network(3);
        measures.push(stored("site-new", 500, 91.0));
        measures.push(stored("site-new", 501, 89.5));
        let baseline = Baseline {
            product_id: "p".into(),
            chosen_at: Utc::now(),
            chosen_by: "qa".into(),
            reason: "validation".into(),
            batches: measures[..100].iter().map(|m| m.batch_id).collect(),
        };
        let c = chart(
            "p",
            "qc/viability",
            Statistic::Value,
            "Viability".into(),
            &measures,
            Some(&baseline),
            None,
        );
        let new = c
            .sites
            .iter()
            .find(|s| s.site_id.as_deref() == Some("site-new"))
            .expect("site-new");
        assert!(new.limits_of_network);
        assert_eq!(new.limits, c.network.limits);
        assert!(new.capability.is_none(), "no spec, no capability");
    }

    #[test]
    fn without_a_baseline_limits_are_provisional_from_the_first_points() {
        let measures = network(5);
        let c = chart(
            "p",
            "qc/viability",
            Statistic::Value,
            "Viability".into(),
            &measures,
            None,
            None,
        );
        assert_eq!(c.basis, Basis::Provisional);
        let first: Vec<f64> = c.network.values()[..PROVISIONAL_POINTS].to_vec();
        assert_eq!(c.network.limits, Limits::from_baseline(&first));
        assert!(c.network.points.iter().all(|p| !p.in_baseline));
    }

    #[test]
    fn labels_and_specs_come_from_the_recipe() {
        let recipe = Recipe::from_toml(include_str!("../../../recipes/cd19-car-t.v1.toml"))
            .expect("shipped");
        assert_eq!(
            label(&recipe, "step/expansion/temperature", Statistic::Max),
            "Expansion: Temperature, maximum"
        );
        assert_eq!(
            spec(&recipe, "step/expansion/temperature", Statistic::Mean),
            Some(Spec {
                lower: Some(36.5),
                upper: Some(37.5)
            })
        );
        assert_eq!(
            spec(
                &recipe,
                "step/expansion/temperature",
                Statistic::TimeOutOfRange
            ),
            None
        );
        assert_eq!(
            spec(&recipe, "qc/dose", Statistic::Value),
            Some(Spec {
                lower: Some(0.5),
                upper: Some(5.0)
            })
        );
        assert_eq!(
            spec(&recipe, "qc/sterility", Statistic::Value),
            None,
            "a text test has no numeric limits"
        );
    }
}

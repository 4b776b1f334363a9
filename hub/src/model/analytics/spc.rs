//! Individuals and moving-range (I-MR) control charts across batches, and the
//! Nelson rules that signal a process out of statistical control.
//!
//! Formulas (Montgomery, Introduction to Statistical Quality Control, ch. 6):
//! - centre line = mean of the baseline;
//! - sigma = MR-bar / d2, MR-bar the mean moving range of two consecutive baseline
//!   values, d2 = 1.128;
//! - individuals limits = centre ± 3 sigma;
//! - moving-range upper limit = D4 · MR-bar, D4 = 3.267 (its lower limit is 0).
//!
//! The limits come from a baseline of batches QA chose, and are applied to every
//! batch charted. The rules (Nelson, "The Shewhart control chart: tests for special
//! causes", J. Quality Technology 16, 1984) are checked on the window of points
//! ending at each point; a signal names the point where its window ends.

/// d2 for moving ranges of two consecutive values.
pub const D2: f64 = 1.128;
/// D4 for moving ranges of two consecutive values.
pub const D4: f64 = 3.267;

/// Control limits of an individuals chart, from a baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub center: f64,
    pub sigma: f64,
    /// The baseline's mean moving range.
    pub mr_bar: f64,
}

impl Limits {
    /// From a baseline of at least two values with some variation; `None`
    /// otherwise (no limits can be computed).
    pub fn from_baseline(baseline: &[f64]) -> Option<Limits> {
        let center = super::mean(baseline)?;
        let mr_bar = super::mean_moving_range(baseline)?;
        (mr_bar > 0.0 && mr_bar.is_finite()).then_some(Limits {
            center,
            sigma: mr_bar / D2,
            mr_bar,
        })
    }

    pub fn ucl(&self) -> f64 {
        self.center + 3.0 * self.sigma
    }

    pub fn lcl(&self) -> f64 {
        self.center - 3.0 * self.sigma
    }

    /// Upper limit of the moving-range chart.
    pub fn mr_ucl(&self) -> f64 {
        D4 * self.mr_bar
    }

    /// How many sigmas `value` lies from the centre line (signed).
    pub fn z(&self, value: f64) -> f64 {
        (value - self.center) / self.sigma
    }
}

/// The Nelson rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// 1: one point more than 3 sigma from the centre line.
    BeyondThreeSigma = 1,
    /// 2: nine points in a row on the same side of the centre line.
    NineOnOneSide = 2,
    /// 3: six points in a row steadily increasing or decreasing.
    SixTrending = 3,
    /// 4: fourteen points in a row alternating up and down.
    FourteenAlternating = 4,
    /// 5: two of three points in a row more than 2 sigma from the centre, on one side.
    TwoOfThreeBeyondTwoSigma = 5,
    /// 6: four of five points in a row more than 1 sigma from the centre, on one side.
    FourOfFiveBeyondOneSigma = 6,
    /// 7: fifteen points in a row within 1 sigma of the centre line.
    FifteenWithinOneSigma = 7,
    /// 8: eight points in a row none within 1 sigma of the centre line, on both sides.
    EightBeyondOneSigma = 8,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::BeyondThreeSigma,
        Rule::NineOnOneSide,
        Rule::SixTrending,
        Rule::FourteenAlternating,
        Rule::TwoOfThreeBeyondTwoSigma,
        Rule::FourOfFiveBeyondOneSigma,
        Rule::FifteenWithinOneSigma,
        Rule::EightBeyondOneSigma,
    ];

    pub fn number(self) -> u8 {
        self as u8
    }

    /// How many points the rule looks at.
    pub fn window(self) -> usize {
        match self {
            Rule::BeyondThreeSigma => 1,
            Rule::NineOnOneSide => 9,
            Rule::SixTrending => 6,
            Rule::FourteenAlternating => 14,
            Rule::TwoOfThreeBeyondTwoSigma => 3,
            Rule::FourOfFiveBeyondOneSigma => 5,
            Rule::FifteenWithinOneSigma => 15,
            Rule::EightBeyondOneSigma => 8,
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Rule::BeyondThreeSigma => "a point beyond 3 sigma",
            Rule::NineOnOneSide => "nine points in a row on one side of the centre line",
            Rule::SixTrending => "six points in a row steadily increasing or decreasing",
            Rule::FourteenAlternating => "fourteen points in a row alternating up and down",
            Rule::TwoOfThreeBeyondTwoSigma => "two of three points beyond 2 sigma on one side",
            Rule::FourOfFiveBeyondOneSigma => "four of five points beyond 1 sigma on one side",
            Rule::FifteenWithinOneSigma => "fifteen points in a row within 1 sigma",
            Rule::EightBeyondOneSigma => "eight points in a row none within 1 sigma, on both sides",
        }
    }

    /// Whether the window of z-scores (oldest first, `window()` long) meets the rule.
    fn holds(self, z: &[f64]) -> bool {
        let above = |t: f64| z.iter().filter(|v| **v > t).count();
        let below = |t: f64| z.iter().filter(|v| **v < -t).count();
        match self {
            Rule::BeyondThreeSigma => z[0].abs() > 3.0,
            Rule::NineOnOneSide => z.iter().all(|v| *v > 0.0) || z.iter().all(|v| *v < 0.0),
            Rule::SixTrending => {
                z.windows(2).all(|w| w[1] > w[0]) || z.windows(2).all(|w| w[1] < w[0])
            }
            Rule::FourteenAlternating => {
                let steps: Vec<f64> = z.windows(2).map(|w| w[1] - w[0]).collect();
                steps.iter().all(|s| *s != 0.0)
                    && steps.windows(2).all(|s| (s[0] > 0.0) != (s[1] > 0.0))
            }
            Rule::TwoOfThreeBeyondTwoSigma => above(2.0) >= 2 || below(2.0) >= 2,
            Rule::FourOfFiveBeyondOneSigma => above(1.0) >= 4 || below(1.0) >= 4,
            Rule::FifteenWithinOneSigma => z.iter().all(|v| v.abs() < 1.0),
            Rule::EightBeyondOneSigma => {
                z.iter().all(|v| v.abs() > 1.0)
                    && z.iter().any(|v| *v > 0.0)
                    && z.iter().any(|v| *v < 0.0)
            }
        }
    }
}

/// A rule met by the window of points ending at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub index: usize,
    pub rule: Rule,
}

/// Every signal of `rules` on `values` (in batch order) against `limits`, by point
/// then rule.
pub fn signals(values: &[f64], limits: &Limits, rules: &[Rule]) -> Vec<Signal> {
    let z: Vec<f64> = values.iter().map(|v| limits.z(*v)).collect();
    let mut out = Vec::new();
    for end in 0..z.len() {
        for rule in rules {
            let w = rule.window();
            if end + 1 >= w && rule.holds(&z[end + 1 - w..=end]) {
                out.push(Signal {
                    index: end,
                    rule: *rule,
                });
            }
        }
    }
    out
}

/// The moving ranges of `values` (one fewer than the values; the first point has none).
pub fn moving_ranges(values: &[f64]) -> Vec<f64> {
    values.windows(2).map(|w| (w[1] - w[0]).abs()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::normal;
    use super::*;

    /// The chance that the window ending at one point meets the rule, for
    /// independent N(0, 1) points charted against their true limits.
    fn rate(rule: Rule) -> f64 {
        use statrs::distribution::{ContinuousCDF, Normal};
        let n = Normal::new(0.0, 1.0).expect("normal");
        let tail = |t: f64| 1.0 - n.cdf(t);
        let (p1, p2, p3) = (tail(1.0), tail(2.0), tail(3.0));
        let binom_at_least = |k: u32, m: u32, p: f64| -> f64 {
            (k..=m)
                .map(|j| {
                    let c = (0..j).fold(1.0, |acc, i| acc * f64::from(m - i) / f64::from(i + 1));
                    c * p.powi(j as i32) * (1.0 - p).powi((m - j) as i32)
                })
                .sum()
        };
        match rule {
            Rule::BeyondThreeSigma => 2.0 * p3,
            Rule::NineOnOneSide => 2.0 * 0.5f64.powi(9),
            // Six values in one of the two monotone orders of 6! equally likely ones.
            Rule::SixTrending => 2.0 / 720.0,
            // Alternating permutations of 14: 2 · E(14), E(14) = 199,360,981 (Euler zigzag).
            Rule::FourteenAlternating => 2.0 * 199_360_981.0 / 87_178_291_200.0,
            // The two sides cannot both hold in one window of 3 (or of 5).
            Rule::TwoOfThreeBeyondTwoSigma => 2.0 * binom_at_least(2, 3, p2),
            Rule::FourOfFiveBeyondOneSigma => 2.0 * binom_at_least(4, 5, p1),
            Rule::FifteenWithinOneSigma => (1.0 - 2.0 * p1).powi(15),
            // All eight beyond 1 sigma, less the two ways all are on one side.
            Rule::EightBeyondOneSigma => (2.0 * p1).powi(8) - 2.0 * p1.powi(8),
        }
    }

    #[test]
    fn limits_follow_the_moving_range_formula() {
        let values = [10.0, 12.0, 11.0, 13.0, 12.0];
        let limits = Limits::from_baseline(&values).expect("limits");
        // MR = 2, 1, 2, 1: MR-bar 1.5; sigma = 1.5 / 1.128.
        assert!((limits.center - 11.6).abs() < 1e-12);
        assert!((limits.mr_bar - 1.5).abs() < 1e-12);
        assert!((limits.sigma - 1.5 / 1.128).abs() < 1e-12);
        assert!((limits.ucl() - (11.6 + 3.0 * 1.5 / 1.128)).abs() < 1e-12);
        assert!((limits.mr_ucl() - 3.267 * 1.5).abs() < 1e-12);
        assert_eq!(Limits::from_baseline(&[5.0]), None);
        assert_eq!(Limits::from_baseline(&[5.0, 5.0, 5.0]), None);
    }

    #[test]
    fn each_rule_fires_on_its_pattern_and_names_the_point() {
        let limits = Limits {
            center: 0.0,
            sigma: 1.0,
            mr_bar: D2,
        };
        let first =
            |values: &[f64], rule: Rule| signals(values, &limits, &[rule]).first().map(|s| s.index);
        assert_eq!(first(&[0.1, -0.2, 3.5], Rule::BeyondThreeSigma), Some(2));
        let mut nine = vec![-0.5];
        nine.extend([0.3; 9]);
        assert_eq!(first(&nine, Rule::NineOnOneSide), Some(9));
        assert_eq!(first(&nine[..9], Rule::NineOnOneSide), None);
        let six = [0.0, -0.5, -0.4, -0.3, -0.1, 0.2, 0.4];
        assert_eq!(first(&six, Rule::SixTrending), Some(6));
        let alternating: Vec<f64> = (0..14)
            .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        assert_eq!(first(&alternating, Rule::FourteenAlternating), Some(13));
        assert_eq!(first(&alternating[..13], Rule::FourteenAlternating), None);
        assert_eq!(
            first(&[2.5, 0.0, 2.1], Rule::TwoOfThreeBeyondTwoSigma),
            Some(2)
        );
        assert_eq!(
            first(&[2.5, 0.0, -2.1], Rule::TwoOfThreeBeyondTwoSigma),
            None
        );
        assert_eq!(
            first(&[1.5, 1.2, 0.0, 1.1, 1.9], Rule::FourOfFiveBeyondOneSigma),
            Some(4)
        );
        assert_eq!(first(&[0.5; 15], Rule::FifteenWithinOneSigma), Some(14));
        let eight = [1.5, -1.5, 1.2, -1.1, 1.3, -1.4, 1.6, -1.2];
        assert_eq!(first(&eight, Rule::EightBeyondOneSigma), Some(7));
        assert_eq!(first(&[1.5; 8], Rule::EightBeyondOneSigma), None);
    }

    /// A mean shift of 1.5 sigma at one site of five from batch 30 on: each site's
    /// chart has limits from its own first 30 batches (the baseline QA chose). The
    /// rules that look for a shift (1, 2, 5, 6) signal the shifted site within 9
    /// batches of the shift in nearly every run, and the stable sites in that window
    /// only at their false-alarm rate.
    #[test]
    fn a_shift_at_one_site_is_signalled_there_within_nine_batches() {
        const SEEDS: u64 = 300;
        const SITES: u64 = 5;
        const SHIFTED: u64 = 3;
        let shift_rules = [
            Rule::BeyondThreeSigma,
            Rule::NineOnOneSide,
            Rule::TwoOfThreeBeyondTwoSigma,
            Rule::FourOfFiveBeyondOneSigma,
        ];
        let (mut found, mut false_alarms) = (0u64, 0u64);
        let mut by_rule = std::collections::BTreeMap::new();
        for seed in 0..SEEDS {
            for site in 0..SITES {
                let mut values = normal(seed * SITES + site, 60, 50.0, 2.0);
                if site == SHIFTED {
                    for v in &mut values[30..] {
                        *v += 1.5 * 2.0;
                    }
                }
                let limits = Limits::from_baseline(&values[..30]).expect("limits");
                let first = signals(&values, &limits, &shift_rules)
                    .into_iter()
                    .find(|s| (30..39).contains(&s.index));
                match (site == SHIFTED, first) {
                    (true, Some(signal)) => {
                        *by_rule.entry(signal.rule.number()).or_insert(0u64) += 1;
                        found += 1;
                    }
                    (false, Some(_)) => false_alarms += 1,
                    _ => {}
                }
            }
        }
        let found_rate = found as f64 / SEEDS as f64;
        let false_rate = false_alarms as f64 / (SEEDS * (SITES - 1)) as f64;
        assert!(
            found_rate >= 0.9,
            "the shifted site was signalled within 9 batches in {found} of {SEEDS} runs"
        );
        assert!(
            false_rate <= 0.25,
            "stable sites signalled in that window in {false_alarms} of {} charts",
            SEEDS * (SITES - 1)
        );
        eprintln!("shift found within 9 batches: {found_rate:.3} (first signal by rule: {by_rule:?}); stable sites signalled in those 9: {false_rate:.3}");
    }

    /// Stable data signal no more often than each rule's known rate allows, and
    /// about as often (a rule that never fires is as wrong as one that fires too often).
    #[test]
    fn stable_data_signal_at_each_rules_known_rate() {
        let limits = Limits {
            center: 0.0,
            sigma: 1.0,
            mr_bar: D2,
        };
        const SEEDS: u64 = 400;
        const POINTS: usize = 125;
        let mut counts = std::collections::HashMap::new();
        for seed in 0..SEEDS {
            let values = normal(seed, POINTS, 0.0, 1.0);
            for s in signals(&values, &limits, &Rule::ALL) {
                *counts.entry(s.rule).or_insert(0usize) += 1;
            }
        }
        for rule in Rule::ALL {
            let windows = SEEDS as f64 * (POINTS + 1 - rule.window()) as f64;
            let expected = windows * rate(rule);
            let seen = *counts.get(&rule).unwrap_or(&0) as f64;
            // Windows overlap, so signals come in clusters: allow four standard
            // deviations of a count three times as dispersed as Poisson.
            let slack = 4.0 * (3.0 * expected).sqrt() + 3.0;
            assert!(
                (seen - expected).abs() <= slack,
                "rule {} ({}): {seen} signals in {windows} windows, expected {expected:.1} ± {slack:.1}",
                rule.number(),
                rule.words()
            );
        }
    }
}

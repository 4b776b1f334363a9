//! One site against the rest of the network, for one attribute.
//!
//! - **Difference of means** (site - rest) with Welch's confidence interval: se =
//!   sqrt(s1²/n1 + s2²/n2), degrees of freedom by Welch-Satterthwaite, t quantile
//!   of Student's t (Welch, Biometrika 34, 1947).
//! - **The test suited to the data**: Welch's t-test when both groups look normal,
//!   the Mann-Whitney U test when either does not. Normality is judged by the
//!   Jarque-Bera test (JB = n/6 · (S² + (K - 3)²/4) from the biased sample skewness
//!   S and kurtosis K, p from chi-squared with 2 degrees of freedom) at the 5% level.
//! - **Mann-Whitney U**: U of the site's values from the ranks of both groups
//!   (average ranks for ties); two-sided p from the normal approximation with the
//!   tie correction of the variance and a continuity correction of 0.5.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// Welch's comparison of two means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// mean(a) - mean(b).
    pub difference: f64,
    pub low: f64,
    pub high: f64,
    pub t: f64,
    pub df: f64,
    /// Two-sided.
    pub p: f64,
}

/// Welch's t-test of `a` against `b` with a `confidence` interval of the difference;
/// `None` with fewer than two values in a group or no spread in both.
pub fn welch(a: &[f64], b: &[f64], confidence: f64) -> Option<Welch> {
    if !(confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (m1, m2) = (super::mean(a)?, super::mean(b)?);
    let (s1, s2) = (super::sample_sd(a)?, super::sample_sd(b)?);
    let (v1, v2) = (s1 * s1 / n1, s2 * s2 / n2);
    let se = (v1 + v2).sqrt();
    if se <= 0.0 {
        return None;
    }
    let df = (v1 + v2).powi(2) / (v1 * v1 / (n1 - 1.0) + v2 * v2 / (n2 - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let difference = m1 - m2;
    let t = difference / se;
    let p = (2.0 * dist.sf(t.abs())).min(1.0);
    let half = dist.inverse_cdf((1.0 + confidence) / 2.0) * se;
    Some(Welch {
        difference,
        low: difference - half,
        high: difference + half,
        t,
        df,
        p,
    })
}

/// The Mann-Whitney U test of `a` against `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of `a`: how many of the pairs (x in a, y in b) have x > y, ties counting half.
    pub u: f64,
    /// Two-sided.
    pub p: f64,
}

/// `None` with an empty group.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> Option<MannWhitney> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|v| (*v, true))
        .chain(b.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len() as f64;
    let (mut rank_sum_a, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let rank = (i + j + 2) as f64 / 2.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_a += rank * all[i..=j].iter().filter(|(_, in_a)| *in_a).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let mu = n1 * n2 / 2.0;
    let sigma = (n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)))).sqrt();
    let p = if sigma > 0.0 {
        let z = ((u.max(n1 * n2 - u) - mu - 0.5) / sigma).max(0.0);
        let normal = Normal::new(0.0, 1.0).ok()?;
        (2.0 * normal.sf(z)).min(1.0)
    } else {
        1.0
    };
    Some(MannWhitney { u, p })
}

/// The Jarque-Bera statistic and its p-value; `None` below three values or without
/// spread.
pub fn jarque_bera(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 3 {
        return None;
    }
    let n = values.len() as f64;
    let m = super::mean(values)?;
    let moment = |k: i32| values.iter().map(|v| (v - m).powi(k)).sum::<f64>() / n;
    let m2 = moment(2);
    if m2 <= 0.0 {
        return None;
    }
    let skew = moment(3) / m2.powf(1.5);
    let kurtosis = moment(4) / (m2 * m2);
    let jb = n / 6.0 * (skew * skew + (kurtosis - 3.0).powi(2) / 4.0);
    let p = ChiSquared::new(2.0).ok()?.sf(jb);
    Some((jb, p))
}

/// Which test judged the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    Welch,
    MannWhitney,
}

impl Test {
    pub fn as_str(self) -> &'static str {
        match self {
            Test::Welch => "welch",
            Test::MannWhitney => "mann-whitney",
        }
    }
}

/// A site against the rest of the network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub n_site: usize,
    pub n_rest: usize,
    pub mean_site: f64,
    pub mean_rest: f64,
    /// The difference of means and its interval (always Welch's).
    pub welch: Welch,
    pub test: Test,
    /// The chosen test's two-sided p-value.
    pub p: f64,
}

/// The 5% level at which a group is judged not normal.
const NORMALITY_ALPHA: f64 = 0.05;

/// `site` against `rest`; `None` when either has fewer than two values or neither
/// has spread.
pub fn compare(site: &[f64], rest: &[f64], confidence: f64) -> Option<Comparison> {
    let welch = welch(site, rest, confidence)?;
    let normal = |v: &[f64]| jarque_bera(v).is_none_or(|(_, p)| p >= NORMALITY_ALPHA);
    let (test, p) = if normal(site) && normal(rest) {
        (Test::Welch, welch.p)
    } else {
        (Test::MannWhitney, mann_whitney(site, rest)?.p)
    };
    Some(Comparison {
        n_site: site.len(),
        n_rest: rest.len(),
        mean_site: super::mean(site)?,
        mean_rest: super::mean(rest)?,
        welch,
        test,
        p,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::normal;
    use super::*;

    #[test]
    fn welch_matches_a_worked_example() {
        // Two small groups; the figures by hand from the formulas above.
        let a = [19.0, 22.0, 16.0, 29.0, 24.0];
        let b = [20.0, 11.0, 17.0, 12.0];
        let w = welch(&a, &b, 0.95).expect("welch");
        // Means 22 and 15, variances 24.5 and 18: se = sqrt(24.5/5 + 18/4) = sqrt(9.4),
        // df = 9.4² / (4.9²/4 + 4.5²/3).
        assert!((w.difference - 7.0).abs() < 1e-12);
        assert!((w.t - 7.0 / 9.4f64.sqrt()).abs() < 1e-12);
        assert!((w.df - 88.36 / (4.9 * 4.9 / 4.0 + 4.5 * 4.5 / 3.0)).abs() < 1e-9);
        assert!(w.t > 0.0 && w.p < 0.1 && w.p > 0.01, "{w:?}");
        assert!(w.low < w.difference && w.difference < w.high);
    }

    #[test]
    fn mann_whitney_counts_pairs_and_ties() {
        let m = mann_whitney(&[1.0, 2.0, 3.0], &[2.0, 4.0]).expect("mw");
        // Pairs a > b: (3,2) = 1; ties (2,2) = 0.5.
        assert!((m.u - 1.5).abs() < 1e-12, "{m:?}");
        let same = mann_whitney(&[1.0, 1.0], &[1.0, 1.0]).expect("mw");
        assert_eq!(same.p, 1.0);
    }

    #[test]
    fn skewed_data_are_compared_by_mann_whitney_normal_data_by_welch() {
        let a = normal(1, 60, 10.0, 1.0);
        let b = normal(2, 200, 10.0, 1.0);
        assert_eq!(compare(&a, &b, 0.95).expect("cmp").test, Test::Welch);
        let skewed: Vec<f64> = normal(3, 60, 0.0, 1.0).iter().map(|v| v.exp()).collect();
        assert_eq!(
            compare(&skewed, &b, 0.95).expect("cmp").test,
            Test::MannWhitney
        );
    }
}

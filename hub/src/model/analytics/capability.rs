//! Process capability of a result against the recipe's specification.
//!
//! Formulas (Montgomery, Introduction to Statistical Quality Control, ch. 8):
//! - Cpk = min((USL - mean) / 3 sigma_within, (mean - LSL) / 3 sigma_within), with
//!   sigma_within = MR-bar / d2 (the short-term, batch-to-batch spread);
//! - Ppk = the same with the overall sample standard deviation (divisor n - 1);
//! - a one-sided specification uses its one limit.
//!
//! Confidence interval (Bissell, "How reliable is your capability index?",
//! Applied Statistics 39, 1990): index ± z · sqrt(1 / (9n) + index² / (2(n - 1))),
//! z the standard normal quantile of (1 + confidence) / 2.

use statrs::distribution::{ContinuousCDF, Normal};

/// The specification limits of a numeric result (at least one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

/// A capability index with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Index {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capability {
    pub n: usize,
    pub mean: f64,
    pub sigma_within: f64,
    pub sigma_overall: f64,
    pub cpk: Index,
    pub ppk: Index,
}

/// The normal quantile a two-sided interval of `confidence` uses; `None` unless
/// 0 < confidence < 1.
pub(crate) fn z_of(confidence: f64) -> Option<f64> {
    if !(confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    Normal::new(0.0, 1.0)
        .ok()
        .map(|n| n.inverse_cdf((1.0 + confidence) / 2.0))
}

fn index(mean: f64, sigma: f64, spec: Spec, n: usize, z: f64) -> Index {
    let sides = [
        spec.upper.map(|u| (u - mean) / (3.0 * sigma)),
        spec.lower.map(|l| (mean - l) / (3.0 * sigma)),
    ];
    let value = sides.into_iter().flatten().fold(f64::INFINITY, f64::min);
    let n = n as f64;
    let half = z * (1.0 / (9.0 * n) + value * value / (2.0 * (n - 1.0))).sqrt();
    Index {
        value,
        low: value - half,
        high: value + half,
    }
}

/// Cpk and Ppk of `values` (in batch order) against `spec`, with intervals of
/// `confidence` (e.g. 0.95); `None` below two values, without spread, without a
/// limit, or for a confidence not strictly between 0 and 1.
///
/// The interval treats sigma_within as if it came from a sample standard deviation;
/// from MR-bar it has fewer degrees of freedom, so the Cpk interval is somewhat
/// narrow for small n.
pub fn capability(values: &[f64], spec: Spec, confidence: f64) -> Option<Capability> {
    if spec.lower.is_none() && spec.upper.is_none() {
        return None;
    }
    let mean = super::mean(values)?;
    let sigma_within = super::sigma_within(values)?;
    let sigma_overall = super::sample_sd(values)?;
    if !(sigma_within > 0.0 && sigma_overall > 0.0) {
        return None;
    }
    let z = z_of(confidence)?;
    Some(Capability {
        n: values.len(),
        mean,
        sigma_within,
        sigma_overall,
        cpk: index(mean, sigma_within, spec, values.len(), z),
        ppk: index(mean, sigma_overall, spec, values.len(), z),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_their_formulas() {
        let values = [70.0, 72.0, 71.0, 73.0, 72.0, 74.0];
        let spec = Spec {
            lower: Some(60.0),
            upper: Some(80.0),
        };
        let c = capability(&values, spec, 0.95).expect("capability");
        let mean = 72.0;
        let within = (2.0 + 1.0 + 2.0 + 1.0 + 2.0) / 5.0 / 1.128;
        let overall = ((4.0 + 0.0 + 1.0 + 1.0 + 0.0 + 4.0) / 5.0f64).sqrt();
        assert!((c.mean - mean).abs() < 1e-12);
        assert!((c.cpk.value - (80.0 - mean) / (3.0 * within)).abs() < 1e-12);
        assert!((c.ppk.value - (80.0 - mean) / (3.0 * overall)).abs() < 1e-12);
        let half = 1.959963984540054 * (1.0 / 54.0 + c.ppk.value.powi(2) / 10.0).sqrt();
        assert!((c.ppk.high - c.ppk.value - half).abs() < 1e-9);
        // One-sided: only the lower limit counts.
        let lower = capability(
            &values,
            Spec {
                lower: Some(60.0),
                upper: None,
            },
            0.95,
        )
        .expect("one-sided");
        assert!((lower.cpk.value - (mean - 60.0) / (3.0 * within)).abs() < 1e-12);
        assert_eq!(capability(&[1.0], spec, 0.95), None);
        assert_eq!(capability(&[1.0, 1.0, 1.0], spec, 0.95), None);
    }
}

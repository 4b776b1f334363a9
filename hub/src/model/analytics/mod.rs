//! Statistics of the process across batches and sites, as pure functions over
//! numbers (no store, no clock): control charts with the Nelson rules
//! ([`spc`]), process capability against a recipe's specification
//! ([`capability`]), and a site compared with the rest of the network
//! ([`compare`]), and the golden batch's band of each process parameter over
//! time in step ([`golden`]). Each function names the formula it uses; the distributions
//! (normal, Student's t, chi-squared) come from `statrs`.

pub mod capability;
pub mod chart;
pub mod compare;
pub mod golden;
pub mod measure;
pub mod spc;
pub mod trend;

/// The arithmetic mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The sample standard deviation (divisor n - 1); `None` below two values.
pub fn sample_sd(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values)?;
    let ss: f64 = values.iter().map(|v| (v - m).powi(2)).sum();
    Some((ss / (values.len() - 1) as f64).sqrt())
}

/// The mean of the moving ranges |x[i] - x[i-1]|; `None` below two values.
pub fn mean_moving_range(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let sum: f64 = values.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
    Some(sum / (values.len() - 1) as f64)
}

/// Within-batch-to-batch sigma of an individuals chart: MR-bar / d2, with d2 =
/// 1.128 for moving ranges of two (Montgomery, Introduction to Statistical
/// Quality Control, table VI).
pub fn sigma_within(values: &[f64]) -> Option<f64> {
    mean_moving_range(values).map(|mr| mr / spc::D2)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Seeded normal data for the statistics' tests.
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use statrs::distribution::{ContinuousCDF, Normal};

    /// `n` draws from N(mean, sd), the same for the same seed.
    pub fn normal(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        use rand::Rng;
        let mut rng = StdRng::seed_from_u64(seed);
        let unit = Normal::new(0.0, 1.0).expect("standard normal");
        (0..n)
            .map(|_| {
                // Inverse-CDF sampling keeps the draws inside the distribution's support.
                let u: f64 = rng.gen_range(1e-12..1.0 - 1e-12);
                mean + sd * unit.inverse_cdf(u)
            })
            .collect()
    }
}

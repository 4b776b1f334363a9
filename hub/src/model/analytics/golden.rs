//! The golden batch: how each process parameter of a step has run over time in
//! released batches, as a median trajectory with a 5th-95th percentile band.
//!
//! The bins of time in step, a batch's points and where it leaves the band are
//! shared with the sites ([`carrel_proto::golden`]); here the band is computed.
//! Each batch keeps, per parameter and bin, the count and sum of its samples,
//! written at ingest in the transaction that stores the samples; a batch's
//! trajectory is the mean of its samples in each bin. The band of a bin is taken
//! over the released batches with samples in it:
//! - the median and the 5th and 95th percentiles of their bin means, by the
//!   quantile definition of Hyndman and Fan's type 8 (approximately
//!   median-unbiased whatever the distribution; `statrs`'s `quantile`, NumPy's
//!   `method="median_unbiased"`);
//! - only where at least [`MIN_BATCHES`] released batches have samples: fewer say
//!   nothing about a 90 % band.

pub use carrel_proto::golden::{
    bin_hours, bin_of, BandBin, Excursion, Panel, Point, Side, MIN_BATCHES,
};
use carrel_proto::recipe::{Parameter, Step};
use statrs::statistics::{Data, OrderStatistics};

/// The band's quantiles.
pub const LOW_QUANTILE: f64 = 0.05;
pub const HIGH_QUANTILE: f64 = 0.95;

/// The band of `parameter` of `step` from the released batches' bin means:
/// `(batch, bin, mean)`, each batch's bin once; no batch drawn over it yet
/// ([`Panel::with_points`]).
pub fn band(
    step: &Step,
    parameter: &Parameter,
    released: impl IntoIterator<Item = (uuid::Uuid, u32, f64)>,
) -> Panel {
    let mut by_bin: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
    let mut batches = std::collections::HashSet::new();
    for (batch, bin, mean) in released {
        if mean.is_finite() {
            by_bin.entry(bin).or_default().push(mean);
            batches.insert(batch);
        }
    }
    let bins = by_bin
        .into_iter()
        .filter(|(_, means)| means.len() >= MIN_BATCHES)
        .map(|(bin, means)| {
            let batches = means.len();
            let mut data = Data::new(means);
            BandBin {
                bin,
                batches,
                low: data.quantile(LOW_QUANTILE),
                median: data.quantile(0.5),
                high: data.quantile(HIGH_QUANTILE),
            }
        })
        .collect();
    Panel {
        step_id: step.id.clone(),
        step_name: step.name.clone(),
        parameter: parameter.name.clone(),
        label: parameter.label(),
        unit: parameter.unit.clone(),
        range: (parameter.low, parameter.high),
        bin_hours: bin_hours(step),
        batches: batches.len(),
        bins,
        points: Vec::new(),
        excursions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::recipe::Recipe;

    #[test]
    fn the_band_is_the_type_8_quantiles_of_bins_with_enough_batches_and_excursions_are_named() {
        let recipe = Recipe::from_toml(include_str!("../../../recipes/cd19-car-t.v1.toml"))
            .expect("shipped");
        let step = recipe.step("expansion").expect("expansion");
        let p = &step.parameters[0];
        // Bin 0: the values 1..=20 over 20 batches; bin 1: four batches only.
        let mut released = Vec::new();
        for i in 0..20u32 {
            let batch = uuid::Uuid::from_u128(u128::from(i) + 1);
            released.push((batch, 0, f64::from(i + 1)));
            if i < 4 {
                released.push((batch, 1, 5.0));
            }
        }
        let panel = band(step, p, released);
        assert_eq!(panel.batches, 20);
        assert_eq!(panel.bins.len(), 1, "bin 1 has too few batches");
        let b = &panel.bins[0];
        // Type 8: h = (n + 1/3) p + 1/3; for n = 20, p = 0.05: h = 1.35, so
        // x1 + 0.35 (x2 - x1) = 1.35; median 10.5; p = 0.95: h = 19.65 -> 19.65.
        assert!((b.low - 1.35).abs() < 1e-12, "{b:?}");
        assert!((b.median - 10.5).abs() < 1e-12, "{b:?}");
        assert!((b.high - 19.65).abs() < 1e-12, "{b:?}");
        // A batch drawn over it leaves it where its bin mean lies outside
        // (carrel_proto::golden's rule, tested there).
        let drawn = panel.with_points(vec![Point {
            bin: 0,
            n: 2,
            sum: 42.0,
        }]);
        assert_eq!(drawn.excursions.len(), 1, "{:?}", drawn.excursions);
        assert_eq!(drawn.excursions[0].side, Side::Above);
    }
}

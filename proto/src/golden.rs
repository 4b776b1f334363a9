//! The golden batch as hub and site both read it: how time in a step is cut into
//! bins, a batch's samples in each bin, the band of released batches in each bin
//! (the hub computes it; see the hub's `model::analytics::golden`), and where a
//! batch leaves that band.
//!
//! Time in step is cut into [`BINS_PER_STEP`] equal bins over the step's planned
//! duration; a step that runs over continues in further bins, up to [`MAX_BINS`].
//! A batch's trajectory is the mean of its samples in each bin ([`Point`]); it
//! leaves the band where that mean lies outside the bin's 5th-95th percentile band.

use crate::pb;
use crate::recipe::Step;

/// Bins over a step's planned duration.
pub const BINS_PER_STEP: u32 = 12;
/// Bins kept at most: a step may run to four times its planned duration.
pub const MAX_BINS: u32 = 4 * BINS_PER_STEP;
/// The largest magnitude drawn: beyond it a value is an instrument's sentinel.
pub const MAX_MAGNITUDE: f64 = 1e15;
/// Released batches a bin needs before the hub gives it a band: fewer say nothing
/// about a 90 % band.
pub const MIN_BATCHES: usize = 5;

/// The width of a step's bins, in hours (a step without a planned duration is
/// binned by the hour).
pub fn bin_hours(step: &Step) -> f64 {
    if step.duration_hours.is_finite() && step.duration_hours > 0.0 {
        step.duration_hours / f64::from(BINS_PER_STEP)
    } else {
        1.0
    }
}

/// The bin of a sample taken `hours` into `step`: a sample at the planned end
/// falls in the last bin; one before the start, or past [`MAX_BINS`], in none.
pub fn bin_of(step: &Step, hours: f64) -> Option<u32> {
    if !hours.is_finite() || hours < 0.0 {
        return None;
    }
    let bin = (hours / bin_hours(step)).floor();
    if bin >= f64::from(MAX_BINS) {
        return None;
    }
    let bin = bin as u32;
    Some(if hours <= step.duration_hours {
        bin.min(BINS_PER_STEP - 1)
    } else {
        bin
    })
}

/// A batch's samples of one parameter in one bin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub bin: u32,
    pub n: u64,
    pub sum: f64,
}

impl Point {
    pub fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }
}

/// A batch's points from its samples `(hours in step, value)` of one parameter of
/// `step`, in bin order.
pub fn points_of(step: &Step, samples: impl IntoIterator<Item = (f64, f64)>) -> Vec<Point> {
    let mut by_bin = std::collections::BTreeMap::<u32, Point>::new();
    for (hours, value) in samples {
        let drawn = value.is_finite() && value.abs() <= MAX_MAGNITUDE;
        if let Some(bin) = bin_of(step, hours).filter(|_| drawn) {
            let p = by_bin.entry(bin).or_insert(Point {
                bin,
                n: 0,
                sum: 0.0,
            });
            p.n += 1;
            p.sum += value;
        }
    }
    by_bin.into_values().collect()
}

/// One bin of the band: released batches' bin means, their 5th percentile,
/// median and 95th percentile.
#[derive(Debug, Clone, PartialEq)]
pub struct BandBin {
    pub bin: u32,
    pub batches: usize,
    pub low: f64,
    pub median: f64,
    pub high: f64,
}

/// Which side of the band a batch left it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Below,
    Above,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Below => "below",
            Side::Above => "above",
        }
    }
}

/// A bin in which a batch's mean lies outside the band.
#[derive(Debug, Clone, PartialEq)]
pub struct Excursion {
    pub bin: u32,
    pub from_hours: f64,
    pub to_hours: f64,
    /// The batch's mean in the bin, and the band there.
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub side: Side,
}

/// One parameter of one step: the band, and a batch drawn over it.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub step_id: String,
    pub step_name: String,
    pub parameter: String,
    /// The parameter as people read it ([`crate::recipe::Parameter::label`]).
    pub label: String,
    pub unit: String,
    /// The recipe's range of the parameter.
    pub range: (f64, f64),
    pub bin_hours: f64,
    /// Released batches with samples of this parameter in this step.
    pub batches: usize,
    /// The bins with a band, in time order.
    pub bins: Vec<BandBin>,
    /// The batch's points, in time order.
    pub points: Vec<Point>,
    /// Where the batch's mean lies outside the band, in time order.
    pub excursions: Vec<Excursion>,
}

impl Panel {
    /// The bin's band, if it has one.
    pub fn at(&self, bin: u32) -> Option<&BandBin> {
        self.bins
            .binary_search_by_key(&bin, |b| b.bin)
            .ok()
            .map(|i| &self.bins[i])
    }

    /// The hours in step at the middle of `bin`.
    pub fn hours(&self, bin: u32) -> f64 {
        (f64::from(bin) + 0.5) * self.bin_hours
    }

    /// This band with the batch's `points` over it, and where they leave it.
    pub fn with_points(mut self, mut points: Vec<Point>) -> Panel {
        points.sort_by_key(|p| p.bin);
        self.excursions = points
            .iter()
            .filter_map(|p| {
                let band = self.at(p.bin)?;
                let value = p.mean();
                let side = if value < band.low {
                    Side::Below
                } else if value > band.high {
                    Side::Above
                } else {
                    return None;
                };
                Some(Excursion {
                    bin: p.bin,
                    from_hours: f64::from(p.bin) * self.bin_hours,
                    to_hours: f64::from(p.bin + 1) * self.bin_hours,
                    value,
                    low: band.low,
                    high: band.high,
                    side,
                })
            })
            .collect();
        self.points = points;
        self
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::GoldenParameter {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        pb::GoldenParameter {
            parameter: self.parameter.clone(),
            label: self.label.clone(),
            unit: self.unit.clone(),
            range_low: self.range.0,
            range_high: self.range.1,
            bin_hours: self.bin_hours,
            released_batches: count(self.batches),
            band: self
                .bins
                .iter()
                .map(|b| pb::GoldenBandBin {
                    bin: b.bin,
                    batches: count(b.batches),
                    p5: b.low,
                    median: b.median,
                    p95: b.high,
                })
                .collect(),
            points: self
                .points
                .iter()
                .map(|p| pb::GoldenPoint {
                    bin: p.bin,
                    samples: p.n,
                    mean: p.mean(),
                })
                .collect(),
            excursions: self
                .excursions
                .iter()
                .map(|e| pb::GoldenExcursion {
                    bin: e.bin,
                    from_hours: e.from_hours,
                    to_hours: e.to_hours,
                    value: e.value,
                    p5: e.low,
                    p95: e.high,
                    side: e.side.as_str().to_owned(),
                })
                .collect(),
        }
    }

    /// The band of a parameter of `step` as the hub sent it, without its points
    /// (a site draws its own samples over it: [`Panel::with_points`]). A band bin
    /// that is not a finite, ordered band is left out.
    pub fn band_from_pb(step: &Step, p: &pb::GoldenParameter) -> Panel {
        let mut bins: Vec<BandBin> = p
            .band
            .iter()
            .filter(|b| {
                b.p5.is_finite() && b.p95.is_finite() && b.median.is_finite() && b.p5 <= b.p95
            })
            .map(|b| BandBin {
                bin: b.bin,
                batches: b.batches as usize,
                low: b.p5,
                median: b.median,
                high: b.p95,
            })
            .collect();
        bins.sort_by_key(|b| b.bin);
        bins.dedup_by_key(|b| b.bin);
        let label = match step.parameters.iter().find(|q| q.name == p.parameter) {
            Some(q) => q.label(),
            None if !p.label.is_empty() => p.label.clone(),
            None => crate::recipe::parameter_words(&p.parameter),
        };
        Panel {
            step_id: step.id.clone(),
            step_name: step.name.clone(),
            parameter: p.parameter.clone(),
            label,
            unit: p.unit.clone(),
            range: (p.range_low, p.range_high),
            bin_hours: bin_hours(step),
            batches: p.released_batches as usize,
            bins,
            points: Vec::new(),
            excursions: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    fn expansion() -> Step {
        Recipe::from_toml(include_str!("../../hub/recipes/cd19-car-t.v1.toml"))
            .expect("shipped")
            .step("expansion")
            .expect("expansion")
            .clone()
    }

    #[test]
    fn samples_fall_in_bins_over_the_planned_duration_and_past_it() {
        let step = expansion();
        let w = bin_hours(&step);
        assert_eq!(w, step.duration_hours / 12.0);
        assert_eq!(bin_of(&step, 0.0), Some(0));
        assert_eq!(bin_of(&step, w * 1.5), Some(1));
        // The planned end is the last bin; running over continues.
        assert_eq!(bin_of(&step, step.duration_hours), Some(11));
        assert_eq!(bin_of(&step, step.duration_hours + w * 0.5), Some(12));
        assert_eq!(bin_of(&step, -1.0), None);
        assert_eq!(bin_of(&step, step.duration_hours * 4.0 + 1.0), None);
        assert_eq!(bin_of(&step, f64::NAN), None);
        let points = points_of(&step, [(0.0, 1.0), (w * 0.5, 3.0), (w * 2.0, 5.0)]);
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].bin, points[0].mean()), (0, 2.0));
        assert_eq!((points[1].bin, points[1].mean()), (2, 5.0));
    }

    #[test]
    fn a_batch_leaves_the_band_where_its_bin_mean_is_outside_and_a_band_survives_the_wire() {
        let step = expansion();
        let band = BandBin {
            bin: 0,
            batches: 20,
            low: 1.0,
            median: 2.0,
            high: 3.0,
        };
        let panel = Panel {
            step_id: step.id.clone(),
            step_name: step.name.clone(),
            parameter: "ph".into(),
            label: "pH".into(),
            unit: "pH".into(),
            range: (0.0, 14.0),
            bin_hours: bin_hours(&step),
            batches: 20,
            bins: vec![band],
            points: Vec::new(),
            excursions: Vec::new(),
        };
        let drawn = panel.clone().with_points(vec![
            Point {
                bin: 1,
                n: 1,
                sum: 100.0,
            }, // no band there
            Point {
                bin: 0,
                n: 2,
                sum: 7.0,
            }, // 3.5: above
        ]);
        assert_eq!(drawn.excursions.len(), 1);
        assert_eq!(
            (drawn.excursions[0].bin, drawn.excursions[0].side),
            (0, Side::Above)
        );
        assert_eq!(drawn.points[0].bin, 0, "points in time order");
        // The band as the site reads it from the wire is the band sent.
        let back = Panel::band_from_pb(&step, &drawn.to_pb());
        assert_eq!(back, panel);
    }
}

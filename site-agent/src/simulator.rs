//! A simulated closed cell-processing system: a small, deterministic process model that
//! stands in for real instruments so a site can be demonstrated, trained on and tested
//! end to end. It produces process readings, alarms and QC results for the steps and tests
//! a recipe lists, with realistic shapes (logistic expansion, pH and dissolved O2 falling
//! as the culture grows) and switchable faults (low viability, contamination, an alarm).
//!
//! It is not a validated bioprocess model, not an instrument driver, and does no I/O and
//! reads no clock: the caller says which step and which process hour it wants. Every
//! figure derives from the seed, the step id, the parameter and the sample time, so a
//! restarted agent that resumes a step part-way continues exactly the same curve.

use crate::config::Faults;
use crate::process::{limit_alarm, Alarm, Reading};
use carrel_proto::recipe::{Parameter, QcTest, QcValue, Spec, Step};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Hours over which the expansion curve is defined; it is stretched to the recipe's own
/// expansion duration, so the end-of-expansion state is the same whatever that duration is.
const NOMINAL_EXPANSION_HOURS: f64 = 168.0;
/// Fraction of expansion at which a contaminant's effect is half-way to its plateau.
const CONTAMINATION_MIDPOINT: f64 = 0.8;
/// The alarm_at_step fault acts between these fractions of the step's planned duration.
const EXCURSION_WINDOW: std::ops::RangeInclusive<f64> = 0.4..=0.6;

/// How this patient's cells behave: drawn once per batch from the seed.
#[derive(Debug, Clone)]
struct Batch {
    /// Seeding density at the start of expansion, x10^6 cells/mL.
    start_density: f64,
    /// Density the culture levels off at, x10^6 cells/mL.
    capacity: f64,
    /// Logistic growth rate per nominal expansion hour.
    growth_rate: f64,
    /// Viability at the start of expansion, %; it eases down by 2 points by the end.
    start_viability: f64,
    /// Viability at the end of expansion when `low_viability` is set, %.
    failing_viability: f64,
}

/// Simulated closed cell-processing system running one patient's batch.
/// Deterministic: the same seed and the same calls give the same figures.
#[derive(Debug, Clone)]
pub struct Simulator {
    seed: u64,
    faults: Faults,
    batch: Batch,
    /// Furthest point of the culture sampled so far (0 before expansion, 1 after it):
    /// what "current" means for the in-process viability test.
    progress: Option<f64>,
    /// Step and process hour of the last `readings` call, which `alarm` judges.
    last_sample: Option<(String, f64)>,
}

impl Simulator {
    /// `seed` is the site's configured seed combined by the caller with the batch id.
    pub fn new(seed: u64, faults: Faults) -> Simulator {
        let mut rng = rng_for(seed, &["batch"]);
        let batch = Batch {
            start_density: rng.gen_range(0.25..0.35),
            capacity: rng.gen_range(7.5..10.5),
            growth_rate: rng.gen_range(0.028..0.040),
            start_viability: rng.gen_range(90.0..95.0),
            failing_viability: rng.gen_range(55.0..65.0),
        };
        Simulator {
            seed,
            faults,
            batch,
            progress: None,
            last_sample: None,
        }
    }

    /// Readings of every parameter the recipe step lists, at `step_hours` process hours after
    /// the step started, rounded to two decimals as the instrument reports them.
    ///
    /// - Temperatures sit at the middle of their range with noise of a few hundredths of a
    ///   degree; the apheresis bag at receipt is at 4-8 degC (cold chain).
    /// - During expansion viable_cell_density grows logistically from ~0.3 to ~6-10
    ///   x10^6 cells/mL; pH drifts down and dissolved O2 falls as the density rises;
    ///   viability eases from 90-95 % by 2 points (to 55-65 % with `low_viability`).
    /// - Contamination takes hold late in expansion: pH drops below 6.9 and DO collapses.
    /// - Any other parameter reads the middle of its range with small noise.
    ///
    /// Without faults temperature, pH, DO and unknown parameters stay inside any low/high
    /// range, and density and viability inside the example recipe's.
    pub fn readings(&mut self, step: &Step, step_hours: f64) -> Vec<Reading> {
        let fraction = culture_fraction(step, step_hours);
        self.progress = Some(self.progress.map_or(fraction, |p| p.max(fraction)));
        self.last_sample = Some((step.id.clone(), step_hours));
        // Millihours: fine enough for any sampling interval, immune to float formatting.
        let time_key = ((step_hours * 1000.0).round() as i64).to_string();
        step.parameters
            .iter()
            .map(|p| {
                let mut rng = rng_for(self.seed, &["reading", &step.id, &time_key, &p.name]);
                let value = self.value(step, p, step_hours, &mut rng);
                Reading {
                    parameter: p.name.clone(),
                    value: round2(value),
                    unit: p.unit.clone(),
                }
            })
            .collect()
    }

    /// Alarm raised at this reading, if any: the alarm_at_step fault (a critical temperature
    /// excursion while the last sample of that step lies in 40-60 % of its duration), else a
    /// reading outside its parameter's low/high range (critical for temperatures only;
    /// pH, DO and viability alarms are process deviations for the operator to assess).
    pub fn alarm(&self, step: &Step, readings: &[Reading]) -> Option<Alarm> {
        if let Some((id, hours)) = &self.last_sample {
            if *id == step.id && self.excursion(step, *hours) {
                let detail = match readings
                    .iter()
                    .find(|r| r.parameter.contains("temperature"))
                {
                    Some(r) => format!("{} reads {} {}", r.parameter, r.value, r.unit),
                    None => "the instrument reports it".to_string(),
                };
                return Some(Alarm {
                    code: "temperature-excursion".into(),
                    message: format!(
                        "temperature above its high limit at {hours} h of step {}: {detail}",
                        step.id
                    ),
                    critical: true,
                });
            }
        }
        limit_alarm(step, readings)
    }

    /// Result of a QC test (in-process or release) on the product made so far, by test id:
    /// `viability` is the end-of-expansion viability and `ip-viability` the viability at the
    /// furthest point sampled (each with ~0.5 % counter noise); `cd3` 88-95 %, `car-positive`
    /// 25-45 %, `dose` 0.8-2.5 x10^6 CAR+ cells/kg, `vcn` 1-3.5, `ip-cd3-purity` 80-92 %,
    /// `endotoxin` 0.05-0.2 EU/mL (0.8-3 when contaminated), `sterility` "no growth"
    /// ("growth detected" when contaminated), `mycoplasma` "not detected". Any other test
    /// returns a value inside its own specification.
    pub fn qc_result(&mut self, test: &QcTest) -> QcValue {
        let mut rng = rng_for(self.seed, &["qc", &test.id]);
        let counter_noise = 0.5 * gaussianish(&mut rng);
        let contaminated = self.faults.contamination;
        let numeric = |v: f64| QcValue::Numeric(round2(v));
        match test.id.as_str() {
            "viability" => numeric((self.viability(1.0) + counter_noise).min(100.0)),
            "ip-viability" => {
                let now = self.progress.unwrap_or(1.0);
                numeric((self.viability(now) + counter_noise).min(100.0))
            }
            "cd3" => numeric(rng.gen_range(88.0..95.0)),
            "car-positive" => numeric(rng.gen_range(25.0..45.0)),
            "dose" => numeric(rng.gen_range(0.8..2.5)),
            "vcn" => numeric(rng.gen_range(1.0..3.5)),
            "ip-cd3-purity" => numeric(rng.gen_range(80.0..92.0)),
            "endotoxin" if contaminated => numeric(rng.gen_range(0.8..3.0)),
            "endotoxin" => numeric(rng.gen_range(0.05..0.2)),
            "sterility" if contaminated => QcValue::Text("growth detected".into()),
            "sterility" => QcValue::Text("no growth".into()),
            "mycoplasma" => QcValue::Text("not detected".into()),
            _ => inside_spec(&test.spec),
        }
    }

    fn value(&self, step: &Step, p: &Parameter, hours: f64, rng: &mut ChaCha8Rng) -> f64 {
        let fraction = culture_fraction(step, hours);
        let width = p.high - p.low;
        let z = gaussianish(rng);
        // |z| <= 3.47, so capping the spread at 2.5 % of the range keeps noise inside the
        // 10 % margin `inside` leaves.
        let noise = |sd: f64| z * sd.min(0.025 * width);
        // Outside expansion the medium is fresh and the culture too thin to shift pH or DO.
        let (culture, contamination) = match step.operation.as_str() {
            "expansion" if self.faults.contamination => {
                (self.density(fraction), contamination_level(fraction))
            }
            "expansion" => (self.density(fraction), 0.0),
            _ => (0.0, 0.0),
        };
        match p.name.as_str() {
            name if name.contains("temperature") => {
                if self.excursion(step, hours) {
                    p.high + 0.5 + 0.25 * width + 0.05 * z.abs()
                } else if step.operation == "receipt" {
                    inside(p, 6.0) + noise(0.5)
                } else {
                    inside(p, (p.low + p.high) / 2.0) + noise(0.05)
                }
            }
            "ph" => inside(p, 7.35 - 0.025 * culture) + noise(0.01) - 0.6 * contamination,
            "dissolved_o2" => {
                (inside(p, 95.0 - 4.5 * culture) + noise(1.0)) * (1.0 - 0.9 * contamination)
            }
            "viable_cell_density" => {
                let density = self.density(fraction);
                density + noise(0.02 * density)
            }
            "viability" => self.viability(fraction) + noise(0.4),
            _ => (p.low + p.high) / 2.0 + noise(0.02 * width),
        }
    }

    /// Viable cell density (x10^6 cells/mL) at a fraction of expansion: logistic growth.
    fn density(&self, fraction: f64) -> f64 {
        let b = &self.batch;
        let rate = if self.faults.low_viability {
            0.7 * b.growth_rate
        } else {
            b.growth_rate
        };
        let t = fraction * NOMINAL_EXPANSION_HOURS;
        b.capacity / (1.0 + (b.capacity / b.start_density - 1.0) * (-rate * t).exp())
    }

    /// Viability (%) at a fraction of expansion.
    fn viability(&self, fraction: f64) -> f64 {
        let b = &self.batch;
        let mut v = b.start_viability - 2.0 * fraction;
        if self.faults.low_viability {
            v -= (b.start_viability - 2.0 - b.failing_viability) * fraction * fraction;
        }
        if self.faults.contamination {
            v -= 8.0 * contamination_level(fraction);
        }
        v
    }

    fn excursion(&self, step: &Step, hours: f64) -> bool {
        self.faults.alarm_at_step.as_deref() == Some(step.id.as_str())
            && EXCURSION_WINDOW.contains(&(hours / step.duration_hours))
    }
}

/// How far the culture has got, 0 to 1: through expansion by time, complete afterwards.
fn culture_fraction(step: &Step, hours: f64) -> f64 {
    match step.operation.as_str() {
        // A NaN time (garbage in) counts as the start rather than poisoning the batch.
        "expansion" if hours.is_nan() => 0.0,
        "expansion" => (hours / step.duration_hours).clamp(0.0, 1.0),
        "harvest" | "formulation" | "fill" => 1.0,
        _ => 0.0,
    }
}

/// Bacterial load relative to its plateau: negligible until ~60 % of expansion, then rising fast.
fn contamination_level(fraction: f64) -> f64 {
    1.0 / (1.0 + (-25.0 * (fraction - CONTAMINATION_MIDPOINT)).exp())
}

/// A nominal value moved, if needed, into the inner 80 % of the parameter's range, so that
/// a recipe with other limits than the example still sees no alarms without faults.
fn inside(p: &Parameter, nominal: f64) -> f64 {
    let margin = 0.1 * (p.high - p.low);
    nominal.max(p.low + margin).min(p.high - margin)
}

/// A result inside a specification: the first accepted text; else the middle of min and
/// max, 20 % above a lone minimum or half of a lone maximum (moving towards zero/inside
/// for negative limits).
fn inside_spec(spec: &Spec) -> QcValue {
    if let Some(first) = spec.accepted.first() {
        return QcValue::Text(first.clone());
    }
    QcValue::Numeric(match (spec.min, spec.max) {
        (Some(min), Some(max)) => (min + max) / 2.0,
        (Some(min), None) => min + 0.2 * min.abs(),
        (None, Some(max)) => max - 0.5 * max.abs(),
        (None, None) => 0.0,
    })
}

/// Roughly standard normal, bounded to +-3.47: a scaled sum of four uniforms (Irwin-Hall).
fn gaussianish(rng: &mut ChaCha8Rng) -> f64 {
    let sum: f64 = (0..4).map(|_| rng.gen::<f64>()).sum();
    (sum - 2.0) * 3f64.sqrt()
}

/// A generator for one (seed, purpose...) key: FNV-1a over the parts, mixed with the seed
/// by SplitMix64. Both are fixed here (not std's hasher) so figures survive upgrades.
fn rng_for(seed: u64, parts: &[&str]) -> ChaCha8Rng {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(hash)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::recipe::{Outcome, Recipe};

    fn recipe() -> Recipe {
        Recipe::from_toml(include_str!("../../hub/recipes/cd19-car-t.v1.toml"))
            .expect("example recipe is valid")
    }

    fn step<'r>(recipe: &'r Recipe, id: &str) -> &'r Step {
        recipe.step(id).expect("the example recipe has this step")
    }

    /// Every 2 h from the start of the step to its end, inclusive.
    fn sample_times(step: &Step) -> impl Iterator<Item = f64> + '_ {
        (0..)
            .map(|i| f64::from(i) * 2.0)
            .take_while(|t| *t <= step.duration_hours)
    }

    fn value(readings: &[Reading], name: &str) -> f64 {
        readings
            .iter()
            .find(|r| r.parameter == name)
            .expect("parameter is read")
            .value
    }

    /// Runs the whole batch (so the product is "made"), then returns the ids of the QC
    /// tests, in recipe order, whose results are out of specification.
    fn failing_tests(seed: u64, faults: &Faults) -> Vec<String> {
        let recipe = recipe();
        let mut sim = Simulator::new(seed, faults.clone());
        for s in &recipe.steps {
            sim.readings(s, s.duration_hours);
        }
        let tests: Vec<&QcTest> = recipe.all_tests().collect();
        tests
            .into_iter()
            .filter(|t| t.spec.evaluate(&sim.qc_result(t)).outcome != Outcome::Pass)
            .map(|t| t.id.clone())
            .collect()
    }

    #[test]
    fn same_seed_gives_same_readings_and_another_seed_does_not() {
        let recipe = recipe();
        let (mut a, mut b, mut c) = (
            Simulator::new(7, Faults::default()),
            Simulator::new(7, Faults::default()),
            Simulator::new(8, Faults::default()),
        );
        let expansion = step(&recipe, "expansion");
        for s in &recipe.steps {
            for t in sample_times(s) {
                assert_eq!(a.readings(s, t), b.readings(s, t), "step {} at {t} h", s.id);
            }
        }
        assert_ne!(a.readings(expansion, 100.0), c.readings(expansion, 100.0));
        let viability = recipe.test("viability").expect("test");
        assert_eq!(a.qc_result(viability), b.qc_result(viability));
    }

    #[test]
    fn resumed_step_continues_the_same_curve() {
        let recipe = recipe();
        let expansion = step(&recipe, "expansion");
        let mut continuous = Simulator::new(42, Faults::default());
        let mut before = Vec::new();
        for t in sample_times(expansion) {
            before.push((t, continuous.readings(expansion, t)));
        }
        let mut restarted = Simulator::new(42, Faults::default());
        for (t, readings) in before.iter().filter(|(t, _)| *t >= 96.0) {
            assert_eq!(&restarted.readings(expansion, *t), readings, "at {t} h");
        }
    }

    #[test]
    fn expansion_curve_is_realistic() {
        let recipe = recipe();
        let (receipt, expansion) = (step(&recipe, "receipt"), step(&recipe, "expansion"));
        for seed in 0..200 {
            let mut sim = Simulator::new(seed, Faults::default());
            let bag = value(&sim.readings(receipt, 0.5), "bag_temperature");
            assert!((4.0..=8.0).contains(&bag), "seed {seed}: bag at {bag} degC");
            let start = sim.readings(expansion, 0.0);
            let end = sim.readings(expansion, expansion.duration_hours);
            let (d0, d1) = (
                value(&start, "viable_cell_density"),
                value(&end, "viable_cell_density"),
            );
            assert!(
                (0.2..=0.4).contains(&d0) && (5.5..=10.5).contains(&d1),
                "seed {seed}: {d0} -> {d1}"
            );
            assert!(
                value(&end, "ph") < value(&start, "ph"),
                "seed {seed}: pH drifts down"
            );
            assert!(
                value(&end, "dissolved_o2") < value(&start, "dissolved_o2") - 20.0,
                "seed {seed}: DO falls"
            );
            let v = value(&end, "viability");
            assert!((86.0..=95.5).contains(&v), "seed {seed}: viability {v}");
        }
    }

    #[test]
    fn without_faults_every_result_passes_for_any_seed() {
        for seed in 0..200 {
            assert_eq!(
                failing_tests(seed, &Faults::default()),
                Vec::<String>::new(),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn without_faults_no_alarm_is_raised() {
        let recipe = recipe();
        for seed in 0..100 {
            let mut sim = Simulator::new(seed, Faults::default());
            for s in &recipe.steps {
                for t in sample_times(s) {
                    let readings = sim.readings(s, t);
                    assert_eq!(readings.len(), s.parameters.len());
                    assert_eq!(
                        sim.alarm(s, &readings),
                        None,
                        "seed {seed}, step {} at {t} h: {readings:?}",
                        s.id
                    );
                }
            }
        }
    }

    #[test]
    fn low_viability_fails_viability_and_nothing_else() {
        let faults = Faults {
            low_viability: true,
            ..Faults::default()
        };
        for seed in 0..200 {
            assert_eq!(
                failing_tests(seed, &faults),
                ["ip-viability", "viability"],
                "seed {seed}"
            );
        }
        let recipe = recipe();
        let expansion = step(&recipe, "expansion");
        let mut sim = Simulator::new(3, faults);
        let end = sim.readings(expansion, expansion.duration_hours);
        let alarm = sim
            .alarm(expansion, &end)
            .expect("viability below its low limit");
        assert_eq!(
            (alarm.code.as_str(), alarm.critical),
            ("viability-low", false)
        );
        let early = sim.readings(expansion, 24.0);
        assert_eq!(sim.alarm(expansion, &early), None);
    }

    #[test]
    fn contamination_fails_sterility_and_endotoxin_but_not_mycoplasma() {
        let faults = Faults {
            contamination: true,
            ..Faults::default()
        };
        for seed in 0..200 {
            // Mycoplasma is not a bacterial culture finding: it stays "not detected".
            assert_eq!(
                failing_tests(seed, &faults),
                ["sterility", "endotoxin"],
                "seed {seed}"
            );
        }
        let recipe = recipe();
        let expansion = step(&recipe, "expansion");
        let mut sim = Simulator::new(5, faults);
        let early = sim.readings(expansion, 48.0);
        assert_eq!(
            sim.alarm(expansion, &early),
            None,
            "no sign early in expansion"
        );
        let end = sim.readings(expansion, expansion.duration_hours);
        assert!(
            value(&end, "ph") < 6.9 && value(&end, "dissolved_o2") < 30.0,
            "{end:?}"
        );
        assert!(sim.alarm(expansion, &end).is_some());
    }

    #[test]
    fn alarm_at_step_raises_an_excursion_only_mid_step() {
        let recipe = recipe();
        let activation = step(&recipe, "activation");
        let faults = Faults {
            alarm_at_step: Some("activation".into()),
            ..Faults::default()
        };
        let mut sim = Simulator::new(11, faults);
        for half_hours in 0..=48 {
            let t = f64::from(half_hours) / 2.0;
            let readings = sim.readings(activation, t);
            let alarm = sim.alarm(activation, &readings);
            if (9.6..=14.4).contains(&t) {
                let alarm = alarm.unwrap_or_else(|| panic!("expected an alarm at {t} h"));
                assert_eq!(
                    (alarm.code.as_str(), alarm.critical),
                    ("temperature-excursion", true)
                );
                assert!(value(&readings, "temperature") > 37.5);
            } else {
                assert_eq!(alarm, None, "at {t} h");
            }
        }
        let transduction = step(&recipe, "transduction");
        let readings = sim.readings(transduction, 12.0);
        assert_eq!(
            sim.alarm(transduction, &readings),
            None,
            "only the configured step"
        );
    }

    #[test]
    fn unknown_parameters_and_tests_stay_inside_their_limits() {
        let recipe = recipe();
        let mut custom = step(&recipe, "expansion").clone();
        custom.parameters = vec![Parameter {
            name: "stirring".into(),
            unit: "rpm".into(),
            low: 50.0,
            high: 150.0,
            label: None,
            alarm: None,
        }];
        let mut sim = Simulator::new(9, Faults::default());
        for t in sample_times(&custom) {
            let v = value(&sim.readings(&custom, t), "stirring");
            assert!((90.0..=110.0).contains(&v), "{v} rpm at {t} h");
        }
        let specs = [
            (Some(-5.0), None, vec![]),
            (None, Some(-2.0), vec![]),
            (Some(1.0), Some(3.0), vec![]),
            (
                None,
                None,
                vec!["negative".to_string(), "positive".to_string()],
            ),
        ];
        for (min, max, accepted) in specs {
            let mut test = recipe.test("viability").expect("test").clone();
            test.id = "something-new".into();
            test.spec = Spec { min, max, accepted };
            let v = sim.qc_result(&test);
            assert_eq!(
                test.spec.evaluate(&v).outcome,
                Outcome::Pass,
                "{v} against {}",
                test.spec
            );
        }
    }
}

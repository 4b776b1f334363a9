//! A seeded history of simulated past batches, so that the analytics of a demo
//! network (`carrel-hub dev`) and the benchmark have something to chart on first
//! start.
//!
//! Nothing here is passed off as real. The history is made at sites that exist
//! for it alone (registered and enrolled like any site, with no agent running), and
//! goes through the hub's own doors: each order is placed by
//! [`Store::create_order`], each batch's record is a hash-chained site log that
//! [`Store::ingest_events`] stores as it would a site's (so the measures are kept
//! by the ingest code itself), and a release is signed by [`Store::sign_release`].
//! Every record says it is simulated: the site events carry
//! [`Identity::Simulated`] and name the simulator, the signer's full name says the
//! release is simulated, and so does its reason. Times are the hub's own (now):
//! nothing claims to have happened earlier than it did.
//!
//! Values are drawn from a seeded generator, so the same seed gives the same
//! history: QC results around a centre well inside each specification (about
//! Cpk 1.67), process samples around the middle of each parameter's range with a
//! per-batch offset, and an optional mean shift at one site from a given batch
//! (to show a drifting site).

use crate::model::{NewOrder, Signature};
use crate::record::record_sha256;
use crate::store::{Received, Result, Store};
use carrel_proto::event::{EventKind, Identity, ReleaseMeaning, Sample, SiteEvent};
use carrel_proto::recipe::{QcTest, QcValue, Recipe};
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use statrs::distribution::{ContinuousCDF, Normal};
use uuid::Uuid;

/// Who records the simulated site events.
pub const SIMULATOR: &str = "history-simulator";

/// A mean shift of one QC test at one site, from one of its batches on.
#[derive(Debug, Clone)]
pub struct Shift {
    pub site_id: String,
    /// 0-based: the site's first shifted batch.
    pub from_batch: usize,
    pub test_id: String,
    /// In the test's standard deviations (negative: downwards).
    pub sigmas: f64,
}

/// What to make.
#[derive(Debug, Clone)]
pub struct Plan {
    pub product_id: String,
    /// Sites that exist for the history alone: active, qualified for the product,
    /// with no agent (their logs are written here, from seq 1).
    pub sites: Vec<String>,
    pub batches_per_site: usize,
    /// Process hours between samples of each parameter in each step (as a site's
    /// simulated instrument takes them); 0 for none.
    pub sample_interval_hours: f64,
    pub seed: u64,
    pub shift: Option<Shift>,
    /// The physician the orders are placed for.
    pub physician: String,
    pub facility: String,
    /// Who signs the simulated releases: (user name, full name). `None`: the
    /// batches are left awaiting release.
    pub releaser: Option<(String, String)>,
    /// The last this many batches of each site are left awaiting release (for
    /// QA to review), whoever the releaser.
    pub unreleased_last: usize,
}

/// What was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    pub batches: usize,
    pub events: usize,
    pub released: usize,
}

/// One site's log as the simulator writes it.
struct Log {
    site_id: String,
    next_seq: u64,
    prev_sha256: String,
}

impl Log {
    fn record(&mut self, batch_id: Uuid, kind: EventKind) -> SiteEvent {
        let event = SiteEvent {
            seq: self.next_seq,
            event_id: Uuid::new_v4(),
            recorded_at: Utc::now(),
            batch_id,
            recorded_by: SIMULATOR.into(),
            prev_sha256: self.prev_sha256.clone(),
            identity: Identity::Simulated,
            kind,
        };
        self.prev_sha256 = event.sha256();
        self.next_seq += 1;
        event
    }
}

/// A draw from N(mean, sd) by the inverse CDF (never outside the support).
fn normal(rng: &mut StdRng, mean: f64, sd: f64) -> f64 {
    let unit = Normal::new(0.0, 1.0).expect("standard normal");
    let u: f64 = rng.gen_range(1e-9..1.0 - 1e-9);
    mean + sd * unit.inverse_cdf(u)
}

/// The centre and spread of a numeric test's simulated results: well inside its
/// specification (three standard deviations plus two from the nearest limit).
pub fn centre_and_sd(test: &QcTest) -> Option<(f64, f64)> {
    if !test.spec.accepted.is_empty() {
        return None;
    }
    Some(match (test.spec.min, test.spec.max) {
        (Some(min), Some(max)) => ((min + max) / 2.0, (max - min) / 10.0),
        (Some(min), None) => {
            let centre = min + (min.abs() * 0.25).max(1.0);
            (centre, (centre - min) / 5.0)
        }
        (None, Some(max)) => {
            let centre = max / 2.0;
            (centre, (max - centre).abs().max(1e-6) / 5.0)
        }
        (None, None) => (1.0, 0.1),
    })
}

/// Makes the planned history; returns what was made. Each site's log must be
/// empty (a history site that already has records is left as it is).
pub async fn seed(store: &dyn Store, plan: &Plan) -> Result<Made> {
    let recipe = store.latest_recipe(&plan.product_id).await?.recipe;
    let mut made = Made::default();
    let mut logs: Vec<(Log, StdRng)> = Vec::new();
    for (k, site_id) in plan.sites.iter().enumerate() {
        let site = store.site(site_id).await?;
        if site.acked_event_seq > 0 {
            continue;
        }
        logs.push((
            Log {
                site_id: site_id.clone(),
                next_seq: 1,
                prev_sha256: carrel_proto::event::GENESIS_SHA256.to_owned(),
            },
            StdRng::seed_from_u64(plan.seed.wrapping_mul(1_000_003).wrapping_add(k as u64)),
        ));
    }
    // The sites take turns, so the network's chart interleaves them.
    for i in 0..plan.batches_per_site {
        for (log, rng) in logs.iter_mut() {
            let shift = plan
                .shift
                .as_ref()
                .filter(|s| s.site_id == log.site_id && i >= s.from_batch);
            let order = store
                .create_order(
                    &NewOrder {
                        patient_pseudonym: format!("SIM-{}-{:04}", log.site_id, i + 1),
                        recipe_id: plan.product_id.clone(),
                        site_id: log.site_id.clone(),
                        requested_collection_date: Utc::now().date_naive().to_string(),
                        physician: plan.physician.clone(),
                        facility: plan.facility.clone(),
                        request_id: None,
                        entered_by: None,
                    },
                    Utc::now(),
                )
                .await?;
            let events = batch(log, rng, &recipe, &order, plan.sample_interval_hours, shift);
            made.events += events.len();
            let received: Vec<Received> = events.into_iter().map(Received::new).collect();
            store
                .ingest_events(&log.site_id, &received, Utc::now())
                .await?;
            made.batches += 1;
            let release = plan
                .releaser
                .as_ref()
                .filter(|_| i + plan.unreleased_last < plan.batches_per_site);
            if let Some((signer, signer_name)) = release {
                let record = store.batch_record(order.batch_id).await?;
                let sha = record_sha256(&record.order, &record.recipe.sha256, &record.events);
                // A trend signal found meanwhile is an exception no simulated
                // release may pass over: the batch is left for QA.
                if !record.order.progress.anomalies.is_empty() {
                    continue;
                }
                let signed = store
                    .sign_release(
                        &Signature {
                            signature_id: Uuid::new_v4(),
                            batch_id: order.batch_id,
                            signer: signer.clone(),
                            signer_name: signer_name.clone(),
                            meaning: ReleaseMeaning::Released,
                            record_sha256: sha,
                            reason: "simulated history of the demo network: not a real release"
                                .into(),
                            signed_at: Utc::now(),
                            justifications: Vec::new(),
                            outstanding_tests: Vec::new(),
                        },
                        true,
                        Utc::now(),
                    )
                    .await;
                match signed {
                    Ok(_) => made.released += 1,
                    Err(crate::store::Error::FailedPrecondition(why)) => {
                        tracing::info!(%why, batch_id = %order.batch_id, "a simulated batch is left for QA")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(made)
}

/// The process readings a batch of `recipe` has when sampled every
/// `sample_interval_hours`, as [`seed`] samples it.
pub fn readings_per_batch(recipe: &Recipe, sample_interval_hours: f64) -> usize {
    if sample_interval_hours <= 0.0 {
        return 0;
    }
    recipe
        .steps
        .iter()
        .map(|s| {
            let times = (s.duration_hours / sample_interval_hours).ceil().max(0.0) as usize;
            times * s.parameters.len()
        })
        .sum()
}

/// One batch's whole record, from acceptance to the last result.
fn batch(
    log: &mut Log,
    rng: &mut StdRng,
    recipe: &Recipe,
    order: &crate::model::Order,
    sample_interval_hours: f64,
    shift: Option<&Shift>,
) -> Vec<SiteEvent> {
    let id = order.batch_id;
    // The patient's cells, as a site's simulated instrument models them: a live
    // batch at a simulated site runs in this history's golden-batch band.
    let mut instrument = carrel_site_agent::simulator::Simulator::new(
        rng.gen(),
        carrel_site_agent::config::Faults::default(),
    );
    let mut out = vec![log.record(
        id,
        EventKind::BatchAccepted {
            coi: order.coi.clone(),
            recipe_id: recipe.id.clone(),
            recipe_version: recipe.version,
            recipe_sha256: recipe.sha256(),
        },
    )];
    let result = |log: &mut Log, rng: &mut StdRng, test: &QcTest| -> SiteEvent {
        let value = match centre_and_sd(test) {
            None => QcValue::Text(test.spec.accepted[0].clone()),
            Some((centre, sd)) => {
                let moved = shift
                    .filter(|s| s.test_id == test.id)
                    .map_or(0.0, |s| s.sigmas * sd);
                QcValue::Numeric(normal(rng, centre + moved, sd))
            }
        };
        let site_outcome = test.spec.evaluate(&value).outcome;
        log.record(
            id,
            EventKind::QcResult {
                test_id: test.id.clone(),
                value,
                unit: test.unit.clone(),
                method: format!("{} (simulated)", test.method),
                site_outcome,
                retest_of: None,
            },
        )
    };
    for step in &recipe.steps {
        if let Some(cp) = &step.custody_checkpoint {
            out.push(
                log.record(
                    id,
                    EventKind::CustodyScan {
                        checkpoint_id: cp.id.clone(),
                        expected_coi: order.coi.clone(),
                        scanned_coi: order.coi.clone(),
                        verifiers: (1..=cp.verifiers.max(1))
                            .map(|n| format!("sim-operator-{n}"))
                            .collect(),
                        matched: true,
                        location: "simulated".into(),
                        wristband: None,
                    },
                ),
            );
        }
        out.push(log.record(
            id,
            EventKind::StepStarted {
                step_id: step.id.clone(),
                instrument_id: format!("{}-history-sim", log.site_id),
                resumed: false,
            },
        ));
        if !step.parameters.is_empty() && sample_interval_hours > 0.0 {
            // Readings every interval up to the step's end, as a site's simulated
            // instrument takes them, from the same model of the culture.
            let mut samples = Vec::new();
            let mut at = 0.0_f64;
            while at < step.duration_hours {
                at = (at + sample_interval_hours).min(step.duration_hours);
                for r in instrument.readings(step, at) {
                    samples.push(Sample {
                        step_hours: at,
                        parameter: r.parameter,
                        value: r.value,
                        unit: r.unit,
                    });
                }
            }
            out.push(log.record(
                id,
                EventKind::ProcessSamples {
                    step_id: step.id.clone(),
                    samples,
                },
            ));
        }
        out.push(log.record(
            id,
            EventKind::StepCompleted {
                step_id: step.id.clone(),
                process_hours: step.duration_hours,
            },
        ));
        for test in &step.in_process_tests {
            out.push(result(log, rng, test));
        }
    }
    for test in &recipe.release_tests {
        out.push(result(log, rng, test));
    }
    out
}

//! Runs each batch's pinned recipe, step by step, on the instrument (this build: the
//! simulator), recording every start, sample, alarm, result and completion in the
//! local store first.
//!
//! Architecture invariant: the executor's only memory is the local event log. On
//! start (or after a crash) it re-derives where each batch stands from the records,
//! resumes an interrupted step from its last recorded sample, and records the
//! interruption as a deviation, so nothing is done twice and nothing is skipped.
//!
//! A full disk stops nothing that is recorded from being kept: a step is not started
//! without room for its records ([`MIN_FREE_BYTES_TO_START_STEP`]), and a record that
//! cannot be written because the disk filled up is retried, in order, until space
//! is freed; the batch waits meanwhile and says so in the log.

use crate::config::SimulatorConfig;
use crate::custody;
use crate::simulator::Simulator;
use crate::store::{self, LocalBatch, Store};
use carrel_proto::event::{AlarmSeverity, EventKind, SiteEvent};
use carrel_proto::recipe::{QcTest, Recipe, Step};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Who records automatic entries.
pub const AGENT: &str = "agent";

/// Process hours between the last manufacturing step and the release test results
/// (the QC laboratory's turnaround).
const QC_TURNAROUND_HOURS: f64 = 24.0;

/// A step is not started with less room than this left for the site's records: a
/// long step writes hundreds of records, and SQLite's write-ahead log grows by up to
/// about 4 MiB between checkpoints. A step that could not be recorded to its end
/// would leave a patient's cells in an unrecorded process.
pub const MIN_FREE_BYTES_TO_START_STEP: u64 = 8 * 1024 * 1024;

/// How often a batch waiting for disk space looks again.
const DISK_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("shutting down")]
    Shutdown,
    #[error("batch is no longer active (cancelled or decided)")]
    Inactive,
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("custody: {0}")]
    Custody(String),
}

/// Watches the store for active batches and runs each in its own task.
pub async fn run(store: Arc<Store>, config: SimulatorConfig, shutdown: CancellationToken) {
    let mut running: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        match store.active_batches().await {
            Ok(batches) => {
                for batch in batches {
                    if running.contains_key(&batch.batch_id) {
                        continue;
                    }
                    let id = batch.batch_id;
                    let runner = BatchRun {
                        store: store.clone(),
                        config: config.clone(),
                        shutdown: shutdown.clone(),
                        batch,
                    };
                    running.insert(id, tokio::spawn(runner.run()));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read active batches"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = store.batches_changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    for (_, task) in running {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

/// Where a batch stands, derived from its records.
#[derive(Debug, Default)]
struct Progress {
    accepted: bool,
    completed_steps: HashSet<String>,
    /// Step started and not completed, with the last sampled process hour.
    in_flight: Option<(String, f64)>,
    tests_recorded: HashSet<String>,
    alarms: HashSet<(String, String)>,
    deviations: HashSet<String>,
}

impl Progress {
    fn of(events: &[SiteEvent]) -> Progress {
        let mut p = Progress::default();
        let mut last_sample: BTreeMap<String, f64> = BTreeMap::new();
        for event in events {
            match &event.kind {
                EventKind::BatchAccepted { .. } => p.accepted = true,
                EventKind::StepStarted { step_id, .. } => {
                    p.in_flight = Some((
                        step_id.clone(),
                        last_sample.get(step_id).copied().unwrap_or(0.0),
                    ));
                }
                EventKind::ProcessSamples { step_id, samples } => {
                    let at = samples.iter().map(|s| s.step_hours).fold(0.0, f64::max);
                    last_sample.insert(step_id.clone(), at);
                    if let Some((s, h)) = p.in_flight.as_mut() {
                        if s == step_id {
                            *h = at;
                        }
                    }
                }
                EventKind::StepCompleted { step_id, .. } => {
                    p.completed_steps.insert(step_id.clone());
                    if p.in_flight.as_ref().is_some_and(|(s, _)| s == step_id) {
                        p.in_flight = None;
                    }
                }
                EventKind::QcResult { test_id, .. } => {
                    p.tests_recorded.insert(test_id.clone());
                }
                EventKind::InstrumentAlarm { step_id, code, .. } => {
                    p.alarms.insert((step_id.clone(), code.clone()));
                }
                EventKind::DeviationRaised { deviation_id, .. } => {
                    p.deviations.insert(deviation_id.clone());
                }
                _ => {}
            }
        }
        p
    }
}

struct BatchRun {
    store: Arc<Store>,
    config: SimulatorConfig,
    shutdown: CancellationToken,
    batch: LocalBatch,
}

impl BatchRun {
    async fn run(self) {
        let batch_id = self.batch.batch_id;
        match self.execute().await {
            Ok(()) => {
                tracing::info!(%batch_id, coi = %self.batch.coi, "batch record complete, awaiting release")
            }
            Err(Stop::Shutdown) => {}
            Err(Stop::Inactive) => tracing::info!(%batch_id, "batch stopped: no longer active"),
            Err(Stop::Custody(e)) => {
                tracing::error!(%batch_id, error = %e, "cannot pass a custody checkpoint; the batch stops here and is tried again in a few seconds")
            }
            Err(Stop::Store(e)) => {
                tracing::error!(%batch_id, error = %e, "cannot record; the batch stops here and is tried again in a few seconds")
            }
        }
    }

    async fn record(&self, kind: EventKind) -> Result<SiteEvent, Stop> {
        let batch_id = self.batch.batch_id;
        self.while_disk_full(kind.name(), || {
            let kind = kind.clone();
            async move {
                if !self.store.batch(batch_id).await?.state.is_active() {
                    return Err(Stop::Inactive);
                }
                Ok(self.store.append(batch_id, AGENT, kind).await?)
            }
        })
        .await
    }

    /// Runs a write, and while it fails because the disk is full, waits and runs it
    /// again: nothing already recorded is touched, and the records that follow keep
    /// their order because the batch waits for this one.
    async fn while_disk_full<T, F, Fut>(&self, what: &str, mut write: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Stop>>,
    {
        let mut waiting = false;
        loop {
            match write().await {
                Err(Stop::Store(store::Error::DiskFull(e))) => {
                    if !waiting {
                        tracing::error!(batch_id = %self.batch.batch_id, coi = %self.batch.coi, record = what,
                            dir = %self.store.dir().display(), error = %e,
                            "DISK FULL: cannot record; the batch waits and retries every second until space is freed (nothing recorded is lost)");
                        waiting = true;
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                        _ = tokio::time::sleep(DISK_RETRY) => {}
                    }
                }
                result => {
                    if waiting && result.is_ok() {
                        tracing::info!(batch_id = %self.batch.batch_id, record = what, "disk space freed: recording again");
                    }
                    return result;
                }
            }
        }
    }

    /// Waits until the disk holding the site's records has room for a step's
    /// records; refuses (and says so) to start the step before.
    async fn wait_for_room(&self, step: &Step) -> Result<(), Stop> {
        let mut refused = false;
        loop {
            let free = match self.store.free_bytes() {
                Ok(free) => free,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell how much disk space is left; starting the step");
                    return Ok(());
                }
            };
            if free >= MIN_FREE_BYTES_TO_START_STEP {
                if refused {
                    tracing::info!(batch_id = %self.batch.batch_id, step = %step.id, free_bytes = free,
                        "disk space freed: starting the step");
                }
                return Ok(());
            }
            if !refused {
                tracing::error!(batch_id = %self.batch.batch_id, coi = %self.batch.coi, step = %step.id,
                    free_bytes = free, needed_bytes = MIN_FREE_BYTES_TO_START_STEP, dir = %self.store.dir().display(),
                    "DISK NEARLY FULL: refusing to start a new step until space is freed on the disk holding the site's records");
                refused = true;
            }
            if !self
                .store
                .batch(self.batch.batch_id)
                .await?
                .state
                .is_active()
            {
                return Err(Stop::Inactive);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = tokio::time::sleep(DISK_RETRY) => {}
            }
        }
    }

    /// Waits `process_hours` of process time, compressed.
    async fn wait(&self, process_hours: f64) -> Result<(), Stop> {
        let seconds = process_hours * 3600.0 / self.config.time_compression;
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
            _ = tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))) => Ok(()),
        }
    }

    async fn execute(&self) -> Result<(), Stop> {
        let batch = &self.batch;
        let progress = Progress::of(&self.store.batch_events(batch.batch_id).await?);
        let recipe = match Recipe::from_json(&batch.recipe_json) {
            Ok(recipe) if recipe.sha256() == batch.recipe_sha256 => recipe,
            other => {
                let why = match other {
                    Ok(_) => {
                        "the recipe document does not match the SHA-256 the hub sent".to_owned()
                    }
                    Err(e) => format!("the recipe document is not valid: {e}"),
                };
                let id = format!("DEV-{}-RECIPE", &batch.batch_id.simple().to_string()[..8]);
                if !progress.deviations.contains(&id) {
                    self.record(EventKind::DeviationRaised {
                        deviation_id: id,
                        step_id: String::new(),
                        description: format!("{why}; the batch was not started"),
                        classification: "critical".into(),
                    })
                    .await?;
                }
                tracing::error!(batch_id = %batch.batch_id, "{why}");
                return Ok(());
            }
        };
        if !progress.accepted {
            self.record(EventKind::BatchAccepted {
                coi: batch.coi.clone(),
                recipe_id: recipe.id.clone(),
                recipe_version: recipe.version,
                recipe_sha256: batch.recipe_sha256.clone(),
            })
            .await?;
            tracing::info!(batch_id = %batch.batch_id, coi = %batch.coi, "batch accepted");
        }
        let (hi, lo) = batch.batch_id.as_u64_pair();
        let mut sim = Simulator::new(
            self.config.seed ^ hi ^ lo.rotate_left(17),
            self.config.faults.clone(),
        );
        for step in &recipe.steps {
            if progress.completed_steps.contains(&step.id) {
                // Bring the model to where the records say the culture is.
                sim.readings(step, step.duration_hours);
                continue;
            }
            let resume_from = match &progress.in_flight {
                Some((id, hours)) if *id == step.id => Some(*hours),
                _ => None,
            };
            // A step already under way goes on being recorded whatever the space
            // left: its cells are in the process. Only new steps wait for room.
            if resume_from.is_none() {
                self.wait_for_room(step).await?;
            }
            self.pass_checkpoint(step).await?;
            self.run_step(&mut sim, step, resume_from, &progress)
                .await?;
            self.record_tests(&mut sim, &step.in_process_tests, &progress)
                .await?;
        }
        if recipe
            .release_tests
            .iter()
            .any(|t| !progress.tests_recorded.contains(&t.id))
        {
            self.wait(QC_TURNAROUND_HOURS).await?;
        }
        self.record_tests(&mut sim, &recipe.release_tests, &progress)
            .await?;
        self.while_disk_full("awaiting release", || async {
            Ok(self.store.mark_awaiting_release(batch.batch_id).await?)
        })
        .await?;
        Ok(())
    }

    /// Waits until the step's custody checkpoint (if any) has a matching scan on the
    /// record. With `auto_scan`, the simulated operators scan the right label.
    async fn pass_checkpoint(&self, step: &Step) -> Result<(), Stop> {
        let Some(checkpoint) = &step.custody_checkpoint else {
            return Ok(());
        };
        let mut announced = false;
        loop {
            let events = self.store.batch_events(self.batch.batch_id).await?;
            if custody::passed(&events).contains(&checkpoint.id) {
                return Ok(());
            }
            if !self
                .store
                .batch(self.batch.batch_id)
                .await?
                .state
                .is_active()
            {
                return Err(Stop::Inactive);
            }
            if self.config.auto_scan {
                let verifiers: Vec<String> = custody::SIMULATED_OPERATORS
                    .iter()
                    .take(usize::from(checkpoint.verifiers))
                    .map(|s| s.to_string())
                    .collect();
                let label =
                    custody::label_of(&self.batch).map_err(|e| Stop::Custody(e.to_string()))?;
                custody::scan(
                    &self.store,
                    custody::Scan {
                        batch_id: self.batch.batch_id,
                        checkpoint_id: &checkpoint.id,
                        label: &label,
                        verifiers: &verifiers,
                        location: "simulated",
                    },
                )
                .await
                .map_err(|e| Stop::Custody(e.to_string()))?;
                continue;
            }
            if !announced {
                tracing::info!(batch_id = %self.batch.batch_id, coi = %self.batch.coi, checkpoint = %checkpoint.id,
                    verifiers = checkpoint.verifiers, "waiting for the label scan at a custody checkpoint");
                announced = true;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }

    async fn run_step(
        &self,
        sim: &mut Simulator,
        step: &Step,
        resume_from: Option<f64>,
        progress: &Progress,
    ) -> Result<(), Stop> {
        let instrument_id = self.config.instrument_id.clone();
        if let Some(hours) = resume_from {
            let id = format!(
                "DEV-{}-{}-RESTART",
                &self.batch.batch_id.simple().to_string()[..8],
                step.id
            );
            if !progress.deviations.contains(&id) {
                self.record(EventKind::DeviationRaised {
                    deviation_id: id,
                    step_id: step.id.clone(),
                    description: format!(
                        "step {} was interrupted by an agent restart after {hours:.1} process hours; resumed from the last recorded sample",
                        step.id
                    ),
                    classification: "minor".into(),
                })
                .await?;
            }
        }
        self.record(EventKind::StepStarted {
            step_id: step.id.clone(),
            instrument_id: instrument_id.clone(),
            resumed: resume_from.is_some(),
        })
        .await?;
        tracing::info!(batch_id = %self.batch.batch_id, step = %step.id, resumed = resume_from.is_some(), "step started");
        let interval = self.config.sample_interval_hours;
        let mut at = resume_from.unwrap_or(0.0);
        let mut alarms = progress.alarms.clone();
        while at < step.duration_hours {
            let next = (at + interval).min(step.duration_hours);
            self.wait(next - at).await?;
            at = next;
            let readings = sim.readings(step, at);
            if !readings.is_empty() {
                self.record(EventKind::ProcessSamples {
                    step_id: step.id.clone(),
                    samples: readings
                        .iter()
                        .map(|r| carrel_proto::event::Sample {
                            step_hours: at,
                            parameter: r.parameter.clone(),
                            value: r.value,
                            unit: r.unit.clone(),
                        })
                        .collect(),
                })
                .await?;
            }
            if let Some(alarm) = sim.alarm(step, &readings) {
                if alarms.insert((step.id.clone(), alarm.code.clone())) {
                    tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id, code = %alarm.code, "instrument alarm");
                    self.record(EventKind::InstrumentAlarm {
                        step_id: step.id.clone(),
                        instrument_id: instrument_id.clone(),
                        code: alarm.code.clone(),
                        message: alarm.message.clone(),
                        severity: if alarm.critical {
                            AlarmSeverity::Critical
                        } else {
                            AlarmSeverity::Warning
                        },
                    })
                    .await?;
                    self.record(EventKind::DeviationRaised {
                        deviation_id: format!(
                            "DEV-{}-{}-{}",
                            &self.batch.batch_id.simple().to_string()[..8],
                            step.id,
                            alarm.code
                        ),
                        step_id: step.id.clone(),
                        description: format!("instrument alarm {}: {}", alarm.code, alarm.message),
                        classification: if alarm.critical { "major" } else { "minor" }.into(),
                    })
                    .await?;
                }
            }
        }
        self.record(EventKind::StepCompleted {
            step_id: step.id.clone(),
            process_hours: step.duration_hours,
        })
        .await?;
        Ok(())
    }

    async fn record_tests(
        &self,
        sim: &mut Simulator,
        tests: &[QcTest],
        progress: &Progress,
    ) -> Result<(), Stop> {
        for test in tests {
            let value = sim.qc_result(test);
            if progress.tests_recorded.contains(&test.id) {
                continue;
            }
            let evaluation = test.spec.evaluate(&value);
            self.record(EventKind::QcResult {
                test_id: test.id.clone(),
                value,
                unit: test.unit.clone(),
                method: test.method.clone(),
                site_outcome: evaluation.outcome,
                retest_of: None,
            })
            .await?;
        }
        Ok(())
    }
}

//! Runs each batch's pinned recipe, step by step, on the site's instruments (the ones
//! its configuration maps to each step, the simulator otherwise), recording every
//! start, command execution, sample, alarm, result and completion in the local store
//! first.
//!
//! Architecture invariant: the executor's only memory is the local event log. On
//! start (or after a crash) it re-derives where each batch stands from the records,
//! resumes an interrupted step from its last recorded sample, and records the
//! interruption as a deviation, so nothing is done twice and nothing is skipped. A
//! step running on an instrument that names its executions (a SiLA 2 observable
//! command) has the execution id recorded before the agent waits on it; a restarted
//! agent re-attaches to that execution instead of starting the step again.
//!
//! An instrument error that ends a command (a defined or undefined execution error)
//! becomes an alarm and a deviation, and the step is recorded as completed after the
//! time it ran: QA reviews it. An error before anything ran (a refused parameter, an
//! execution the instrument no longer knows) becomes a deviation and the batch waits
//! for the site to act. A lost connection is retried.
//!
//! A full disk stops nothing that is recorded from being kept: a step is not started
//! without room for its records ([`MIN_FREE_BYTES_TO_START_STEP`]), and a record that
//! cannot be written because the disk filled up is retried, in order, until space
//! is freed; the batch waits meanwhile and says so in the log.

use crate::config::StepMapping;
use crate::custody;
use crate::instrument::{self, Instrument, Instruments, StepRequest, Update, Values};
use crate::projection::{BatchState, RecordProgress};
use crate::simulator::Simulator;
use crate::store::{self, By, LocalBatch, Store};
use carrel_proto::event::{AlarmSeverity, EventKind, InstrumentResult, SiteEvent};
use carrel_proto::recipe::{QcTest, QcValue, Recipe, Step};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
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

/// How long to wait before reaching an instrument again after a lost connection; the
/// wait doubles while the instrument stays away, up to [`INSTRUMENT_RETRY_MAX`].
const INSTRUMENT_RETRY: Duration = Duration::from_secs(1);
const INSTRUMENT_RETRY_MAX: Duration = Duration::from_secs(30);

/// How often a held batch looks whether it is still active.
const HELD_POLL: Duration = Duration::from_secs(2);

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
    /// The step cannot go on until the site acts (a refused configuration, a command
    /// that may be running): the deviation on the record says what to do.
    #[error("held: {0}")]
    Held(String),
    /// A command was sent and not confirmed: held until a person records that the
    /// instrument is not running it.
    #[error("held: {0}")]
    Unconfirmed(String),
}

/// Why following an execution stopped.
enum Followed {
    Stop(Stop),
    Instrument(instrument::Error),
}

/// Watches the store for active batches and runs each in its own task.
pub async fn run(store: Arc<Store>, instruments: Arc<Instruments>, shutdown: CancellationToken) {
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
                        instruments: instruments.clone(),
                        shutdown: shutdown.clone(),
                        batch,
                        unreadable: Default::default(),
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
#[derive(Debug, Clone)]
struct InFlight {
    step_id: String,
    /// Last sampled process hour.
    hours: f64,
    /// When the step was first started.
    started_at: DateTime<Utc>,
    /// The instrument's execution running the step, when it names one.
    execution_id: Option<String>,
    /// A command sent for the step and never confirmed (the seq of its "instrument
    /// command requested" record): it may be running, and is not sent again.
    requested: Option<u64>,
    /// What the step's command returned, once it finished.
    results: Option<Vec<InstrumentResult>>,
    /// Nothing runs the step: the instrument refused its command last time it was
    /// sent, or a person checked that it does not run it. Sending it again is a new
    /// attempt, not a restart.
    refused: bool,
}

#[derive(Debug, Default)]
struct Progress {
    accepted: bool,
    /// The steps completed and the tests recorded, as the store's projection reads them.
    record: RecordProgress,
    /// Step started and not completed.
    in_flight: Option<InFlight>,
    alarms: HashSet<(String, String)>,
    deviations: HashSet<String>,
}

impl Progress {
    fn of(events: &[SiteEvent]) -> Progress {
        let mut p = Progress::default();
        let mut last_sample: BTreeMap<String, f64> = BTreeMap::new();
        for event in events {
            p.record.apply(&event.kind);
            match &event.kind {
                EventKind::BatchAccepted { .. } => p.accepted = true,
                EventKind::StepStarted { step_id, .. } => {
                    let hours = last_sample.get(step_id).copied().unwrap_or(0.0);
                    match p.in_flight.as_mut() {
                        Some(f) if f.step_id == *step_id => f.hours = hours,
                        _ => {
                            p.in_flight = Some(InFlight {
                                step_id: step_id.clone(),
                                hours,
                                started_at: event.recorded_at,
                                execution_id: None,
                                requested: None,
                                results: None,
                                refused: false,
                            })
                        }
                    }
                }
                EventKind::InstrumentCommandStarted {
                    step_id,
                    execution_id,
                    ..
                } => {
                    if let Some(f) = p.in_flight.as_mut().filter(|f| f.step_id == *step_id) {
                        f.execution_id = Some(execution_id.clone());
                        f.requested = None;
                    }
                }
                EventKind::InstrumentCommandRequested { step_id, .. } => {
                    if let Some(f) = p.in_flight.as_mut().filter(|f| f.step_id == *step_id) {
                        f.requested = Some(event.seq);
                        f.execution_id = None;
                        f.refused = false;
                    }
                }
                EventKind::InstrumentResults {
                    step_id, results, ..
                } => {
                    if let Some(f) = p.in_flight.as_mut().filter(|f| f.step_id == *step_id) {
                        f.requested = None;
                        f.results = Some(results.clone());
                    }
                }
                // A person checked the instrument and says the command is not running:
                // it may be sent again.
                EventKind::Correction {
                    corrects_seq,
                    field,
                    new_value,
                    ..
                } if field == "running" && new_value.trim().eq_ignore_ascii_case("no") => {
                    if let Some(f) = p
                        .in_flight
                        .as_mut()
                        .filter(|f| f.requested == Some(*corrects_seq))
                    {
                        f.requested = None;
                        f.refused = true;
                    }
                }
                EventKind::ProcessSamples { step_id, samples } => {
                    let at = samples.iter().map(|s| s.step_hours).fold(0.0, f64::max);
                    last_sample.insert(step_id.clone(), at);
                    if let Some(f) = p.in_flight.as_mut().filter(|f| f.step_id == *step_id) {
                        f.hours = at;
                    }
                }
                EventKind::StepCompleted { step_id, .. }
                    if p.in_flight.as_ref().is_some_and(|f| f.step_id == *step_id) =>
                {
                    p.in_flight = None;
                }
                EventKind::InstrumentAlarm { step_id, code, .. } => {
                    p.alarms.insert((step_id.clone(), code.clone()));
                }
                EventKind::DeviationRaised {
                    deviation_id,
                    step_id,
                    ..
                } => {
                    // The instrument answered "no": nothing is running.
                    if deviation_id.contains(&format!("-{step_id}-INSTRUMENT")) {
                        if let Some(f) = p.in_flight.as_mut().filter(|f| f.step_id == *step_id) {
                            f.requested = None;
                            f.refused = true;
                        }
                    }
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
    instruments: Arc<Instruments>,
    shutdown: CancellationToken,
    batch: LocalBatch,
    /// Readings (step, parameter) whose mapping cannot work (not a number, no such
    /// source): said once in the log, not at every sample.
    unreadable: std::sync::Mutex<HashSet<(String, String)>>,
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
            Err(Stop::Held(why)) => {
                // Held until the site acts: the batch is not tried again in this run
                // of the agent (a configuration is fixed by restarting the agent).
                tracing::error!(%batch_id, coi = %self.batch.coi, %why,
                    "batch held: fix the site's configuration or the instrument, then restart the agent");
                self.held(false).await;
            }
            Err(Stop::Unconfirmed(why)) => {
                tracing::error!(%batch_id, coi = %self.batch.coi, %why,
                    "batch held: check the instrument and record whether it runs the command");
                self.held(true).await;
            }
        }
    }

    /// Keeps a held batch's task (so it is not started again) until the batch is no
    /// longer active, the agent shuts down, or, for a command that may be running,
    /// a person records that the instrument is not running it.
    async fn held(&self, until_checked: bool) {
        let batch_id = self.batch.batch_id;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(HELD_POLL) => {}
            }
            match self.store.batch(batch_id).await {
                Ok(batch) if !batch.state.is_active() => return,
                _ => {}
            }
            if until_checked {
                if let Ok(events) = self.store.batch_events(batch_id).await {
                    if Progress::of(&events)
                        .in_flight
                        .is_some_and(|f| f.requested.is_none())
                    {
                        tracing::info!(%batch_id, "the instrument was checked: sending the step's command again");
                        return;
                    }
                }
            }
        }
    }

    /// Stops with [`Stop::Inactive`] once the batch is cancelled or decided.
    async fn still_active(&self) -> Result<(), Stop> {
        if self
            .store
            .batch(self.batch.batch_id)
            .await?
            .state
            .is_active()
        {
            Ok(())
        } else {
            Err(Stop::Inactive)
        }
    }

    /// Records an event of the batch while it is active.
    async fn record(&self, kind: EventKind) -> Result<SiteEvent, Stop> {
        self.record_while(kind, BatchState::is_active).await
    }

    /// Records an event of the batch if its state still lets it be recorded (`open`);
    /// otherwise stops with [`Stop::Inactive`].
    async fn record_while(
        &self,
        kind: EventKind,
        open: fn(BatchState) -> bool,
    ) -> Result<SiteEvent, Stop> {
        let batch_id = self.batch.batch_id;
        self.while_disk_full(kind.name(), || {
            let kind = kind.clone();
            async move {
                if !open(self.store.batch(batch_id).await?.state) {
                    return Err(Stop::Inactive);
                }
                Ok(self.store.append(batch_id, &By::agent(), kind).await?)
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
            self.still_active().await?;
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = tokio::time::sleep(DISK_RETRY) => {}
            }
        }
    }

    /// Waits `process_hours` of process time, compressed.
    async fn wait(&self, process_hours: f64) -> Result<(), Stop> {
        let seconds = process_hours * 3600.0 / self.instruments.simulator.time_compression;
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
        let simulator = &self.instruments.simulator;
        let sim = Arc::new(Mutex::new(Simulator::new(
            simulator.seed ^ hi ^ lo.rotate_left(17),
            simulator.faults.clone(),
        )));
        for step in &recipe.steps {
            if progress.record.steps_completed.contains(&step.id) {
                // Bring the model to where the records say the culture is.
                lock(&sim).readings(step, step.duration_hours);
                continue;
            }
            let resume_from = progress.in_flight.as_ref().filter(|f| f.step_id == step.id);
            // A step already under way goes on being recorded whatever the space
            // left: its cells are in the process. Only new steps wait for room.
            if resume_from.is_none() {
                self.wait_for_room(step).await?;
            }
            self.pass_checkpoint(step).await?;
            // A custody scan is a fact and is recorded whatever the site's status;
            // the step itself does not start while the site is suspended.
            if resume_from.is_none() {
                self.wait_while_suspended(step).await?;
            }
            self.run_step(&sim, step, resume_from, &progress).await?;
            // The simulator measures only what it ran; a real instrument's results
            // were recorded with its step (or are entered at the site console).
            if self.simulates(step) {
                self.record_tests(&sim, &step.in_process_tests, &progress)
                    .await?;
            }
        }
        // Release tests are the QC laboratory's. The simulator stands in for it only
        // for a batch it made from start to end, and only when the site lets it
        // (`simulator.qc_laboratory`); otherwise people enter the results at the
        // site console.
        if !self.instruments.simulator.qc_laboratory
            || !recipe.steps.iter().all(|step| self.simulates(step))
        {
            return self.await_results(&recipe).await;
        }
        if recipe
            .release_tests
            .iter()
            .any(|t| !progress.record.tests_recorded.contains(&t.id))
        {
            self.wait(QC_TURNAROUND_HOURS).await?;
        }
        // The result that completes the record moves the batch to awaiting release
        // (the store's projection); results that may follow release are still
        // recorded after it, in the recipe's order.
        self.record_tests(&sim, &recipe.release_tests, &progress)
            .await?;
        Ok(())
    }

    /// True when the simulator runs `step` (the site maps no instrument to it).
    fn simulates(&self, step: &Step) -> bool {
        self.instruments
            .mapping_for(step)
            .and_then(|m| self.instruments.adapter(&m.instrument))
            .is_none()
    }

    /// Waits until people have entered every result the record needs (the batch
    /// then awaits release and is no longer active), saying once which ones.
    async fn await_results(&self, recipe: &Recipe) -> Result<(), Stop> {
        let mut announced = false;
        loop {
            let batch = self.store.batch(self.batch.batch_id).await?;
            if !batch.state.is_active() {
                return Ok(());
            }
            if !announced {
                let events = self.store.batch_events(self.batch.batch_id).await?;
                let recorded = Progress::of(&events).record.tests_recorded;
                let missing: Vec<&str> = recipe
                    .all_tests()
                    .filter(|t| !t.may_follow_release && !recorded.contains(&t.id))
                    .map(|t| t.id.as_str())
                    .collect();
                tracing::info!(batch_id = %self.batch.batch_id, coi = %self.batch.coi, missing = %missing.join(", "),
                    "steps done; waiting for QC results to be entered at the site console");
                announced = true;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = self.store.batches_changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Waits while the hub has this site suspended: a new step is not started
    /// (one under way goes on, its cells are in the process).
    async fn wait_while_suspended(&self, step: &Step) -> Result<(), Stop> {
        let mut announced = false;
        while let Some(suspension) = self.store.suspension().await? {
            if !announced {
                tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id,
                    "step not started: this site is {}", suspension.describe());
                announced = true;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
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
            self.still_active().await?;
            if self.instruments.simulator.auto_scan {
                let verifiers: Vec<&str> = custody::SIMULATED_OPERATORS
                    .iter()
                    .take(usize::from(checkpoint.verifiers))
                    .copied()
                    .collect();
                let label =
                    custody::label_of(&self.batch).map_err(|e| Stop::Custody(e.to_string()))?;
                custody::scan(
                    &self.store,
                    custody::Scan {
                        batch_id: self.batch.batch_id,
                        checkpoint_id: &checkpoint.id,
                        label: &label,
                        verifiers: custody::Verifiers::Simulated(&verifiers),
                        location: "simulated",
                        wristband: None,
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
        sim: &Arc<Mutex<Simulator>>,
        step: &Step,
        resume: Option<&InFlight>,
        progress: &Progress,
    ) -> Result<(), Stop> {
        let mapping = self.instruments.mapping_for(step);
        let adapter = mapping.and_then(|m| self.instruments.adapter(&m.instrument));
        let simulated = adapter.is_none();
        let instrument: Arc<dyn Instrument> = match adapter {
            Some(adapter) => adapter,
            None => Arc::new(instrument::simulator::SimulatedInstrument::new(
                sim.clone(),
                self.instruments.simulator.clone(),
            )),
        };
        let instrument_id = instrument.id().to_owned();
        let command = mapping.map(|m| m.command.clone()).unwrap_or_default();
        // A command sent and never confirmed may be running: it is never sent again.
        if let Some(seq) = resume.and_then(|f| f.requested) {
            return self
                .unconfirmed(step, &instrument_id, &command, seq, None)
                .await;
        }
        let mut execution_id = resume.and_then(|f| f.execution_id.clone());
        if let Some(f) = resume.filter(|f| !f.refused) {
            let id = format!(
                "DEV-{}-{}-RESTART",
                &self.batch.batch_id.simple().to_string()[..8],
                step.id
            );
            let how = match (&execution_id, &f.results) {
                (_, Some(_)) if mapping.is_some_and(|m| m.done_when.is_some()) => format!(
                    "the run {command} started goes on at instrument {instrument_id}; it is not started again and is followed to its end"
                ),
                (_, Some(_)) => format!(
                    "the command had already finished on instrument {instrument_id} and is not sent again"
                ),
                (Some(execution), None) => format!(
                    "the agent re-attached to execution {execution} still known to instrument {instrument_id}"
                ),
                (None, None) => "resumed from the last recorded sample".to_owned(),
            };
            if !progress.deviations.contains(&id) {
                self.record(EventKind::DeviationRaised {
                    deviation_id: id,
                    step_id: step.id.clone(),
                    description: format!(
                        "step {} was interrupted by an agent restart after {:.1} process hours; {how}",
                        step.id, f.hours
                    ),
                    classification: "minor".into(),
                })
                .await?;
            }
        }
        let started = self
            .record(EventKind::StepStarted {
                step_id: step.id.clone(),
                instrument_id: instrument_id.clone(),
                resumed: resume.is_some(),
            })
            .await?;
        let started_at = resume.map_or(started.recorded_at, |f| f.started_at);
        tracing::info!(batch_id = %self.batch.batch_id, step = %step.id, instrument = %instrument_id,
            resumed = resume.is_some(), "step started");
        // The command finished before the agent stopped: what it returned is on the
        // record; the step is completed from there.
        if let Some(results) = resume.and_then(|f| f.results.as_ref()) {
            let mut alarms = progress.alarms.clone();
            return self
                .finish(
                    step,
                    mapping,
                    &*instrument,
                    results,
                    (simulated, started_at),
                    &mut alarms,
                )
                .await;
        }
        let request = StepRequest {
            batch_id: self.batch.batch_id,
            step: step.clone(),
            command: command.clone(),
            parameters: match mapping {
                Some(m) => {
                    match instrument::resolve_parameters(
                        m,
                        self.batch.batch_id,
                        &self.batch.coi,
                        step,
                    ) {
                        Ok(parameters) => parameters,
                        Err(e) => {
                            return self.refused(step, &instrument_id, &Values::new(), e).await
                        }
                    }
                }
                None => Default::default(),
            },
            resume_from_hours: resume.map(|f| f.hours),
        };
        let mut alarms = progress.alarms.clone();
        let mut retry = INSTRUMENT_RETRY;
        let results = loop {
            let opened = match &execution_id {
                Some(id) => instrument.attach(&request, id).await,
                None => self.send(&*instrument, &request, simulated).await?,
            };
            let mut execution = match opened {
                Ok(execution) => execution,
                Err(e) if e.is_transient() => {
                    tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id, instrument = %instrument_id,
                        error = %e, retry_in = ?retry, "cannot reach the instrument; trying again");
                    self.pause(retry).await?;
                    retry = (retry * 2).min(INSTRUMENT_RETRY_MAX);
                    continue;
                }
                Err(e) if e.is_execution_failure() => {
                    return self
                        .execution_failed(
                            step,
                            &instrument_id,
                            e,
                            started_at,
                            &mut alarms,
                            (!simulated).then_some(mapping),
                        )
                        .await;
                }
                Err(e @ instrument::Error::Unconfirmed(_)) => {
                    let seq = self.last_request(step).await?;
                    return self
                        .unconfirmed(step, &instrument_id, &command, seq, Some(e))
                        .await;
                }
                Err(e) => {
                    return self
                        .refused(step, &instrument_id, &request.parameters, e)
                        .await
                }
            };
            retry = INSTRUMENT_RETRY;
            if execution.reattachable && execution_id.as_deref() != Some(execution.id.as_str()) {
                self.record(EventKind::InstrumentCommandStarted {
                    step_id: step.id.clone(),
                    instrument_id: instrument_id.clone(),
                    command: request.command.clone(),
                    execution_id: execution.id.clone(),
                })
                .await?;
                tracing::info!(batch_id = %self.batch.batch_id, step = %step.id, execution = %execution.id,
                    "instrument command started");
                execution_id = Some(execution.id.clone());
            }
            match self
                .follow(
                    &mut execution,
                    step,
                    mapping,
                    &instrument_id,
                    started_at,
                    &mut alarms,
                )
                .await
            {
                Ok(results) => break results,
                Err(Followed::Stop(Stop::Inactive)) if execution.reattachable => {
                    // The batch was cancelled or decided while the instrument runs its
                    // step: ask the instrument to stop.
                    match instrument.cancel(&execution.id).await {
                        Ok(()) => tracing::info!(batch_id = %self.batch.batch_id, step = %step.id,
                            execution = %execution.id, "instrument command cancelled"),
                        Err(e) => tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id,
                            execution = %execution.id, error = %e,
                            "cannot cancel the instrument command; stop it at the instrument"),
                    }
                    return Err(Stop::Inactive);
                }
                Err(Followed::Stop(stop)) => return Err(stop),
                Err(Followed::Instrument(e)) if e.is_transient() && execution.reattachable => {
                    tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id, instrument = %instrument_id,
                        error = %e, "lost the instrument while following the step; re-attaching");
                    self.pause(retry).await?;
                    retry = (retry * 2).min(INSTRUMENT_RETRY_MAX);
                }
                Err(Followed::Instrument(e)) if retried(mapping, &e) => {
                    tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id, instrument = %instrument_id,
                        error = %e, "the instrument did not run the command; starting it again later");
                    execution_id = None;
                    self.pause(Duration::from_secs_f64(
                        mapping.map_or(30.0, |m| m.retry_interval_s),
                    ))
                    .await?;
                }
                Err(Followed::Instrument(e)) if e.is_execution_failure() => {
                    return self
                        .execution_failed(
                            step,
                            &instrument_id,
                            e,
                            started_at,
                            &mut alarms,
                            (!simulated).then_some(mapping),
                        )
                        .await;
                }
                Err(Followed::Instrument(e)) => {
                    return self
                        .refused(step, &instrument_id, &request.parameters, e)
                        .await
                }
            }
        };
        if simulated {
            return self.complete(step, simulated, started_at).await;
        }
        let results = self
            .record_results(step, mapping, &instrument_id, &command, &results)
            .await?;
        self.finish(
            step,
            mapping,
            &*instrument,
            &results,
            (simulated, started_at),
            &mut alarms,
        )
        .await
    }

    /// After the step's command returned (`results` on the record): waits for the
    /// step's end when the mapping says how it is known (sampling the readings
    /// meanwhile), records the QC results the instrument gives, and completes it.
    async fn finish(
        &self,
        step: &Step,
        mapping: Option<&StepMapping>,
        instrument: &dyn Instrument,
        results: &[InstrumentResult],
        (simulated, started_at): (bool, DateTime<Utc>),
        alarms: &mut HashSet<(String, String)>,
    ) -> Result<(), Stop> {
        let instrument_id = instrument.id();
        let command = mapping.map(|m| m.command.as_str()).unwrap_or_default();
        if let Some(done) = mapping.and_then(|m| m.done_when.as_ref()) {
            if let Err(failed) = self
                .until_done(step, mapping, instrument, done, started_at, alarms)
                .await?
            {
                return self
                    .execution_failed(
                        step,
                        instrument_id,
                        failed,
                        started_at,
                        alarms,
                        Some(mapping),
                    )
                    .await;
            }
        }
        self.record_qc_from(
            step,
            mapping,
            instrument_id,
            command,
            results,
            Some(instrument),
        )
        .await?;
        self.complete(step, simulated, started_at).await
    }

    /// Samples the step's readings every `sample_interval_s` until `done.source`
    /// reads `done.equals` (`Ok(Ok)`), or one of `done.failed` (`Ok(Err)`: the run
    /// failed at the instrument).
    async fn until_done(
        &self,
        step: &Step,
        mapping: Option<&StepMapping>,
        instrument: &dyn Instrument,
        done: &crate::config::DoneWhen,
        started_at: DateTime<Utc>,
        alarms: &mut HashSet<(String, String)>,
    ) -> Result<Result<(), instrument::Error>, Stop> {
        let readings = mapping.map(|m| m.readings.as_slice()).unwrap_or_default();
        let period = Duration::from_secs_f64(mapping.map_or(60.0, |m| m.sample_interval_s));
        let mut ticker = tokio::time::interval(period);
        let mut announced = false;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = ticker.tick() => {}
            }
            self.still_active().await?;
            self.sample(step, readings, instrument.id(), started_at, alarms)
                .await?;
            match instrument.read(&done.source).await {
                Ok(value) => {
                    let text = value.to_string();
                    if same_value(&text, &done.equals) {
                        tracing::info!(batch_id = %self.batch.batch_id, step = %step.id, source = %done.source,
                            value = %text, "the instrument says the step is done");
                        return Ok(Ok(()));
                    }
                    if done.failed.iter().any(|f| same_value(&text, f)) {
                        return Ok(Err(instrument::Error::DefinedExecution {
                            identifier: text.clone(),
                            message: format!("{} reads {text}", done.source),
                        }));
                    }
                    if !announced {
                        tracing::info!(batch_id = %self.batch.batch_id, step = %step.id, source = %done.source,
                            value = %text, until = %done.equals, "the run goes on at the instrument");
                        announced = true;
                    }
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id, source = %done.source,
                        error = %e, "cannot read whether the step is done; trying again");
                }
                Err(e) => {
                    return self
                        .refused(step, instrument.id(), &Values::new(), e)
                        .await
                        .map(Ok)
                }
            }
        }
    }

    /// Sends the step's command: connects first (an instrument that cannot be
    /// reached is retried, nothing was sent), records that the command is sent, then
    /// sends it. The outer error stops the batch; the inner one is the instrument's.
    async fn send(
        &self,
        instrument: &dyn Instrument,
        request: &StepRequest,
        simulated: bool,
    ) -> Result<Result<instrument::Execution, instrument::Error>, Stop> {
        if let Err(e) = instrument.connect().await {
            return Ok(Err(e));
        }
        if !simulated {
            self.record(EventKind::InstrumentCommandRequested {
                step_id: request.step.id.clone(),
                instrument_id: instrument.id().to_owned(),
                command: request.command.clone(),
            })
            .await?;
        }
        Ok(instrument.start(request).await)
    }

    /// The seq of the step's last "instrument command requested" record.
    async fn last_request(&self, step: &Step) -> Result<u64, Stop> {
        let events = self.store.batch_events(self.batch.batch_id).await?;
        Ok(events
            .iter()
            .rev()
            .find(|e| matches!(&e.kind, EventKind::InstrumentCommandRequested { step_id, .. } if *step_id == step.id))
            .map_or(0, |e| e.seq))
    }

    async fn complete(
        &self,
        step: &Step,
        simulated: bool,
        started_at: DateTime<Utc>,
    ) -> Result<(), Stop> {
        self.record(EventKind::StepCompleted {
            step_id: step.id.clone(),
            process_hours: if simulated {
                step.duration_hours
            } else {
                hours_since(started_at)
            },
        })
        .await?;
        Ok(())
    }

    /// Records what the command returned, by name, with the unit the site's QC
    /// mapping gives a result.
    async fn record_results(
        &self,
        step: &Step,
        mapping: Option<&StepMapping>,
        instrument_id: &str,
        command: &str,
        values: &Values,
    ) -> Result<Vec<InstrumentResult>, Stop> {
        // A structure's elements are results of their own (`Count.Viability`).
        let results: Vec<InstrumentResult> = instrument::flatten(values)
            .into_iter()
            .map(|(name, value)| InstrumentResult {
                unit: mapping
                    .and_then(|m| m.qc.iter().find(|q| q.result.as_deref() == Some(&name)))
                    .map(|q| q.unit.clone())
                    .unwrap_or_default(),
                value: value.to_string(),
                name,
            })
            .collect();
        self.record(EventKind::InstrumentResults {
            step_id: step.id.clone(),
            instrument_id: instrument_id.to_owned(),
            command: command.to_owned(),
            results: results.clone(),
        })
        .await?;
        Ok(results)
    }

    /// The step's in-process QC results from what the instrument returned, as the
    /// site's mapping says. A test the instrument did not give a usable result for is
    /// a deviation: the record says the result is missing until a person enters it
    /// at the site console.
    async fn record_qc_from(
        &self,
        step: &Step,
        mapping: Option<&StepMapping>,
        instrument_id: &str,
        command: &str,
        results: &[InstrumentResult],
        instrument: Option<&dyn Instrument>,
    ) -> Result<(), Stop> {
        let events = self.store.batch_events(self.batch.batch_id).await?;
        let recorded = Progress::of(&events);
        for test in &step.in_process_tests {
            if recorded.record.tests_recorded.contains(&test.id) {
                continue;
            }
            let qc = mapping.and_then(|m| m.qc.iter().find(|q| q.test == test.id));
            let value = match qc {
                None => Err(format!("the site maps no result of {command} to this test")),
                Some(qc) => qc_value(qc, test, command, results, instrument).await,
            };
            match value {
                Ok(value) => {
                    let evaluation = test.spec.evaluate(&value);
                    self.record(EventKind::QcResult {
                        test_id: test.id.clone(),
                        value,
                        unit: test.unit.clone(),
                        method: format!(
                            "{}, measured by instrument {instrument_id} ({command} {})",
                            test.method,
                            qc.map(|q| q.source()).unwrap_or_default()
                        ),
                        site_outcome: evaluation.outcome,
                        retest_of: None,
                    })
                    .await?;
                }
                Err(why) => {
                    let id = format!(
                        "DEV-{}-{}-MISSING",
                        &self.batch.batch_id.simple().to_string()[..8],
                        test.id
                    );
                    if !recorded.deviations.contains(&id) {
                        tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id, test = %test.id,
                            %why, "QC result missing: enter it at the site console");
                        self.record(EventKind::DeviationRaised {
                            deviation_id: id,
                            step_id: step.id.clone(),
                            description: format!(
                                "QC result missing: {} ({}) did not come from instrument {instrument_id}: {why}; enter it at the site console",
                                test.name, test.id
                            ),
                            classification: "minor".into(),
                        })
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Follows an execution to its end, recording what it reports and, every
    /// `sample_interval_s`, the process parameters the site maps to other sources.
    async fn follow(
        &self,
        execution: &mut instrument::Execution,
        step: &Step,
        mapping: Option<&StepMapping>,
        instrument_id: &str,
        started_at: DateTime<Utc>,
        alarms: &mut HashSet<(String, String)>,
    ) -> Result<Values, Followed> {
        let readings = mapping.map(|m| m.readings.as_slice()).unwrap_or_default();
        let period = Duration::from_secs_f64(mapping.map_or(60.0, |m| m.sample_interval_s));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Followed::Stop(Stop::Shutdown)),
                _ = ticker.tick(), if !readings.is_empty() => {
                    self.sample(step, readings, instrument_id, started_at, alarms)
                        .await
                        .map_err(Followed::Stop)?;
                }
                update = execution.updates.next() => match update {
                    None => return Err(Followed::Instrument(instrument::Error::Connection(
                        "the execution's updates ended without a result".into(),
                    ))),
                    Some(Err(e)) => return Err(Followed::Instrument(e)),
                    Some(Ok(Update::Readings { step_hours, readings })) => {
                        self.record_samples(step, step_hours, &readings).await.map_err(Followed::Stop)?;
                    }
                    Some(Ok(Update::Alarm(alarm))) => {
                        self.raise_alarm(step, instrument_id, &alarm, alarms).await.map_err(Followed::Stop)?;
                    }
                    Some(Ok(Update::Status { status, progress, remaining })) => {
                        tracing::debug!(batch_id = %self.batch.batch_id, step = %step.id, ?status, ?progress, ?remaining,
                            "instrument status");
                    }
                    Some(Ok(Update::Intermediate(values))) => {
                        tracing::debug!(batch_id = %self.batch.batch_id, step = %step.id, ?values, "intermediate values");
                    }
                    Some(Ok(Update::Finished(results))) => return Ok(results),
                },
            }
        }
    }

    /// Reads the step's mapped process parameters now and records them (with an
    /// alarm for a value outside the recipe's range). A value that cannot be read is
    /// skipped, and said in the log.
    async fn sample(
        &self,
        step: &Step,
        readings: &[crate::config::ReadingMapping],
        instrument_id: &str,
        started_at: DateTime<Utc>,
        alarms: &mut HashSet<(String, String)>,
    ) -> Result<(), Stop> {
        let at = hours_since(started_at);
        let mut sampled = Vec::new();
        for reading in readings {
            let Some(source) = self.instruments.adapter(&reading.instrument) else {
                continue;
            };
            match source.read(&reading.source).await.and_then(|v| {
                v.as_f64().ok_or_else(|| {
                    instrument::Error::Mapping(format!(
                        "{} reads {v}, not a number",
                        reading.source
                    ))
                })
            }) {
                Ok(value) => sampled.push(instrument::Reading {
                    parameter: reading.parameter.clone(),
                    value,
                    unit: reading.unit.clone(),
                }),
                Err(e) if e.is_transient() => {
                    tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id,
                    parameter = %reading.parameter, instrument = %reading.instrument, error = %e,
                    "cannot read a process parameter; the sample is skipped")
                }
                Err(e) => {
                    let first = self
                        .unreadable
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert((step.id.clone(), reading.parameter.clone()));
                    if first {
                        tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id,
                            parameter = %reading.parameter, instrument = %reading.instrument, error = %e,
                            "the site's mapping of this process parameter cannot be read; it is not recorded for this step (said once; `run --check-config` finds such mappings before a batch)");
                    }
                }
            }
        }
        if !sampled.is_empty() {
            self.record_samples(step, at, &sampled).await?;
            if let Some(alarm) = instrument::limit_alarm(step, &sampled) {
                self.raise_alarm(step, instrument_id, &alarm, alarms)
                    .await?;
            }
        }
        Ok(())
    }

    async fn record_samples(
        &self,
        step: &Step,
        at: f64,
        readings: &[instrument::Reading],
    ) -> Result<(), Stop> {
        if readings.is_empty() {
            return Ok(());
        }
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
        Ok(())
    }

    /// Records an alarm and its deviation, once per step and alarm code.
    async fn raise_alarm(
        &self,
        step: &Step,
        instrument_id: &str,
        alarm: &instrument::Alarm,
        alarms: &mut HashSet<(String, String)>,
    ) -> Result<(), Stop> {
        if !alarms.insert((step.id.clone(), alarm.code.clone())) {
            return Ok(());
        }
        tracing::warn!(batch_id = %self.batch.batch_id, step = %step.id, code = %alarm.code, "instrument alarm");
        self.record(EventKind::InstrumentAlarm {
            step_id: step.id.clone(),
            instrument_id: instrument_id.to_owned(),
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
        Ok(())
    }

    /// The command ended with an error at the instrument: a critical alarm and a major
    /// deviation, and the step is over after the time it ran; QA reviews the batch.
    async fn execution_failed(
        &self,
        step: &Step,
        instrument_id: &str,
        error: instrument::Error,
        started_at: DateTime<Utc>,
        alarms: &mut HashSet<(String, String)>,
        // For a step on a real instrument: its mapping (None on the simulator).
        real: Option<Option<&StepMapping>>,
    ) -> Result<(), Stop> {
        let code = match &error {
            instrument::Error::DefinedExecution { identifier, .. } => identifier
                .rsplit('/')
                .next()
                .unwrap_or(identifier)
                .to_owned(),
            _ => "UndefinedExecutionError".to_owned(),
        };
        tracing::error!(batch_id = %self.batch.batch_id, coi = %self.batch.coi, step = %step.id,
            instrument = %instrument_id, error = %error, "the instrument command failed");
        let alarm = instrument::Alarm {
            code,
            message: format!("the command running step {} failed: {error}", step.id),
            critical: true,
        };
        self.raise_alarm(step, instrument_id, &alarm, alarms)
            .await?;
        // A real instrument's command that failed returned no results: the step's
        // QC results are missing until a person enters them.
        if let Some(mapping) = real {
            let command = mapping.map(|m| m.command.as_str()).unwrap_or_default();
            self.record_qc_from(step, mapping, instrument_id, command, &[], None)
                .await?;
        }
        self.record(EventKind::StepCompleted {
            step_id: step.id.clone(),
            process_hours: hours_since(started_at),
        })
        .await?;
        Ok(())
    }

    /// The instrument refused the step before running it (a parameter it rejects, an
    /// execution it no longer knows), or the site's mapping cannot make the command:
    /// a configuration error. One deviation that says what was refused, with the
    /// value sent, and the batch is held: the site fixes its mapping or the instrument
    /// and restarts the agent, which then sends the step's command once more.
    async fn refused(
        &self,
        step: &Step,
        instrument_id: &str,
        parameters: &Values,
        error: instrument::Error,
    ) -> Result<(), Stop> {
        let what = match &error {
            instrument::Error::Validation { parameter, message } => {
                let short = parameter.rsplit('/').next().unwrap_or(parameter);
                match parameters.get(short) {
                    Some(value) => format!(
                        "instrument {instrument_id} refused parameter {short} = {value} for step {}: {message}",
                        step.id
                    ),
                    None => format!(
                        "instrument {instrument_id} refused parameter {short} for step {}: {message}",
                        step.id
                    ),
                }
            }
            other => format!(
                "instrument {instrument_id} did not run step {}: {other}",
                step.id
            ),
        };
        let prefix = format!(
            "DEV-{}-{}-INSTRUMENT",
            &self.batch.batch_id.simple().to_string()[..8],
            step.id
        );
        // One deviation per attempt: in one run of the agent a refused step is sent
        // once; each restart after a fix is a new attempt, with its own record.
        let events = self.store.batch_events(self.batch.batch_id).await?;
        let attempts = events
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::DeviationRaised { deviation_id, .. } if deviation_id.starts_with(&prefix)))
            .count();
        let id = match attempts {
            0 => prefix,
            n => format!("{prefix}-{}", n + 1),
        };
        self.record(EventKind::DeviationRaised {
            deviation_id: id,
            step_id: step.id.clone(),
            description: match &error {
                instrument::Error::Untrusted(_) => format!(
                    "{what}. Nothing was sent to it. The batch is held: find out which machine answers at the instrument's address; once the right instrument answers (or its renewed certificate is pinned), restart the agent to send step {}'s command",
                    step.id
                ),
                _ => format!(
                    "{what}. The batch is held: correct the site's mapping of step {} (or the instrument), then restart the agent to send the command again",
                    step.id
                ),
            },
            classification: "major".into(),
        })
        .await?;
        Err(Stop::Held(what))
    }

    /// A command was sent and never confirmed: it may be running on the instrument,
    /// so it is not sent again. One deviation says what to check; the batch is held
    /// until a person records, as a correction of the request (field `running`,
    /// value `no`), that the instrument is not running it.
    async fn unconfirmed(
        &self,
        step: &Step,
        instrument_id: &str,
        command: &str,
        request_seq: u64,
        error: Option<instrument::Error>,
    ) -> Result<(), Stop> {
        let id = format!(
            "DEV-{}-{}-UNCONFIRMED-{request_seq}",
            &self.batch.batch_id.simple().to_string()[..8],
            step.id
        );
        let why = match &error {
            Some(e) => e.to_string(),
            None => "the agent stopped before the instrument confirmed it".to_owned(),
        };
        let what = format!(
            "command {command} for step {} was sent to instrument {instrument_id} (record {request_seq}) and not confirmed: {why}",
            step.id
        );
        let events = self.store.batch_events(self.batch.batch_id).await?;
        if !Progress::of(&events).deviations.contains(&id) {
            self.record(EventKind::DeviationRaised {
                deviation_id: id,
                step_id: step.id.clone(),
                description: format!(
                    "{what}. The command is not sent again until someone checks the instrument: if it runs the command, stop it or let it finish; if it does not, record that at the site console (or as a correction of record {request_seq}: field running, value no) with what you checked, and the agent sends the command once more"
                ),
                classification: "major".into(),
            })
            .await?;
        }
        Err(Stop::Unconfirmed(what))
    }

    /// Waits, unless the agent shuts down.
    async fn pause(&self, how_long: Duration) -> Result<(), Stop> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
            _ = tokio::time::sleep(how_long) => Ok(()),
        }
    }

    async fn record_tests(
        &self,
        sim: &Mutex<Simulator>,
        tests: &[QcTest],
        progress: &Progress,
    ) -> Result<(), Stop> {
        for test in tests {
            let value = lock(sim).qc_result(test);
            if progress.record.tests_recorded.contains(&test.id) {
                continue;
            }
            let evaluation = test.spec.evaluate(&value);
            // The record is complete without a result that may follow release, and
            // the batch may await release before it is recorded.
            let open: fn(BatchState) -> bool = if test.may_follow_release {
                |state| state.is_active() || state == BatchState::AwaitingRelease
            } else {
                BatchState::is_active
            };
            self.record_while(
                EventKind::QcResult {
                    test_id: test.id.clone(),
                    value,
                    unit: test.unit.clone(),
                    // Says so in the record: nobody measured it.
                    method: format!("{} (simulated)", test.method),
                    site_outcome: evaluation.outcome,
                    retest_of: None,
                },
                open,
            )
            .await?;
        }
        Ok(())
    }
}

/// The site's mapping says this error means the command did not run: start it again.
fn retried(mapping: Option<&StepMapping>, error: &instrument::Error) -> bool {
    match (mapping, error) {
        (Some(m), instrument::Error::DefinedExecution { identifier, .. }) => {
            let short = identifier.rsplit('/').next().unwrap_or(identifier);
            m.retry_on.iter().any(|r| r == short || r == identifier)
        }
        _ => false,
    }
}

/// True when an instrument's value (as text) is `expected`: equal numbers when both
/// are numbers, equal text otherwise.
fn same_value(value: &str, expected: &str) -> bool {
    match (value.trim().parse::<f64>(), expected.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs()).max(1.0),
        _ => value.trim() == expected.trim(),
    }
}

/// A QC result the site's mapping takes from the instrument: a result its command
/// returned, or a value read from it now. `Err` says why there is none.
async fn qc_value(
    qc: &crate::config::QcMapping,
    test: &QcTest,
    command: &str,
    results: &[InstrumentResult],
    instrument: Option<&dyn Instrument>,
) -> Result<QcValue, String> {
    if qc.unit != test.unit {
        return Err(format!(
            "the mapping gives {} in {:?}, the recipe's test is in {:?}",
            qc.source(),
            qc.unit,
            test.unit
        ));
    }
    let text = match (&qc.result, &qc.read, instrument) {
        (Some(name), _, _) => match results.iter().find(|r| r.name == *name) {
            Some(r) => r.value.clone(),
            None => {
                return Err(format!(
                    "{command} returned no {name} (it returned {})",
                    if results.is_empty() {
                        "nothing".to_owned()
                    } else {
                        results
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ))
            }
        },
        (None, Some(source), Some(instrument)) => instrument
            .read(source)
            .await
            .map_err(|e| format!("cannot read {source}: {e}"))?
            .to_string(),
        (None, Some(source), None) => {
            return Err(format!(
                "{source} was not read: the command did not end well"
            ))
        }
        (None, None, _) => return Err("the mapping names no source".into()),
    };
    if !test.spec.accepted.is_empty() {
        return Ok(QcValue::Text(text));
    }
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(QcValue::Numeric)
        .ok_or_else(|| format!("{} = {text:?} is not a number", qc.source()))
}

fn lock(sim: &Mutex<Simulator>) -> std::sync::MutexGuard<'_, Simulator> {
    sim.lock().unwrap_or_else(|e| e.into_inner())
}

/// Process hours from `since` to now.
fn hours_since(since: DateTime<Utc>) -> f64 {
    ((Utc::now() - since).num_milliseconds().max(0) as f64) / 3_600_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, minute: u32, kind: EventKind) -> SiteEvent {
        SiteEvent {
            seq,
            event_id: Uuid::new_v4(),
            recorded_at: DateTime::parse_from_rfc3339(&format!("2026-11-27T08:{minute:02}:00Z"))
                .expect("time")
                .with_timezone(&Utc),
            batch_id: Uuid::nil(),
            recorded_by: AGENT.into(),
            prev_sha256: String::new(),
            identity: carrel_proto::event::Identity::Agent,
            kind,
        }
    }

    fn started(resumed: bool) -> EventKind {
        EventKind::StepStarted {
            step_id: "expansion".into(),
            instrument_id: "cps-1".into(),
            resumed,
        }
    }

    #[test]
    fn a_recorded_execution_is_found_again_after_a_restart() {
        let samples = EventKind::ProcessSamples {
            step_id: "expansion".into(),
            samples: vec![carrel_proto::event::Sample {
                step_hours: 0.25,
                parameter: "temperature".into(),
                value: 37.0,
                unit: "degC".into(),
            }],
        };
        let command = EventKind::InstrumentCommandStarted {
            step_id: "expansion".into(),
            instrument_id: "cps-1".into(),
            command: "RunExpansion".into(),
            execution_id: "uuid-1".into(),
        };
        let events = [
            event(1, 0, started(false)),
            event(2, 1, command),
            event(3, 2, samples),
            // A first restart: the step is resumed, the execution is still the same.
            event(4, 3, started(true)),
        ];
        let progress = Progress::of(&events);
        let in_flight = progress.in_flight.expect("the step is under way");
        assert_eq!(in_flight.step_id, "expansion");
        assert_eq!(in_flight.execution_id.as_deref(), Some("uuid-1"));
        assert_eq!(in_flight.hours, 0.25);
        assert_eq!(
            in_flight.started_at, events[0].recorded_at,
            "first start counts"
        );

        let mut done = events.to_vec();
        done.push(event(
            5,
            4,
            EventKind::StepCompleted {
                step_id: "expansion".into(),
                process_hours: 0.5,
            },
        ));
        let progress = Progress::of(&done);
        assert!(progress.in_flight.is_none());
        assert!(progress.record.steps_completed.contains("expansion"));
    }

    #[test]
    fn a_command_sent_and_not_confirmed_is_never_sent_again_until_a_person_checks() {
        let requested = EventKind::InstrumentCommandRequested {
            step_id: "expansion".into(),
            instrument_id: "cps-1".into(),
            command: "RunExpansion".into(),
        };
        let mut events = vec![event(1, 0, started(false)), event(2, 1, requested.clone())];
        let f = Progress::of(&events).in_flight.expect("under way");
        assert_eq!(f.requested, Some(2), "sent, not confirmed: may be running");
        assert!(!f.refused);

        // A correction of another field, or of another record, changes nothing.
        events.push(event(
            3,
            2,
            EventKind::Correction {
                corrects_seq: 1,
                reason: "checked".into(),
                field: "running".into(),
                new_value: "no".into(),
            },
        ));
        assert_eq!(
            Progress::of(&events).in_flight.expect("f").requested,
            Some(2)
        );
        // A person checked the instrument: nothing runs, it may be sent again.
        events.push(event(
            4,
            3,
            EventKind::Correction {
                corrects_seq: 2,
                reason: "instrument idle, no run listed".into(),
                field: "running".into(),
                new_value: "no".into(),
            },
        ));
        let f = Progress::of(&events).in_flight.expect("f");
        assert_eq!(f.requested, None);
        assert!(f.refused, "sending again is a new attempt, not a restart");

        // Sent again and refused by the instrument: nothing runs either.
        events.push(event(5, 4, requested));
        events.push(event(
            6,
            5,
            EventKind::DeviationRaised {
                deviation_id: "DEV-00000000-expansion-INSTRUMENT".into(),
                step_id: "expansion".into(),
                description: "refused".into(),
                classification: "major".into(),
            },
        ));
        let f = Progress::of(&events).in_flight.expect("f");
        assert_eq!(f.requested, None);
        assert!(f.refused);
    }

    #[test]
    fn only_the_mapped_not_run_errors_are_retried() {
        let mut mapping: StepMapping = toml::from_str(
            "step = \"expansion\"\ninstrument = \"cps-1\"\ncommand = \"RunExpansion\"\nretry_on = [\"InstrumentBusy\"]\n",
        )
        .expect("mapping");
        let busy = instrument::Error::DefinedExecution {
            identifier: "org.carrel/bioprocess/CellExpansionController/v1/DefinedExecutionError/InstrumentBusy".into(),
            message: "busy".into(),
        };
        let contaminated = instrument::Error::DefinedExecution {
            identifier: "org.carrel/bioprocess/CellExpansionController/v1/DefinedExecutionError/ContaminationDetected".into(),
            message: "contamination".into(),
        };
        assert!(retried(Some(&mapping), &busy));
        assert!(!retried(Some(&mapping), &contaminated));
        assert!(!retried(None, &busy));
        mapping.retry_on.clear();
        assert!(!retried(Some(&mapping), &busy));
    }
}

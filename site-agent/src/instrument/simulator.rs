//! The simulated instrument behind the [`Instrument`] interface: runs a step on the
//! batch's [`Simulator`] in compressed process time, reporting readings every
//! `sample_interval_hours` and the alarms the model raises.
//!
//! One per batch: the model carries the culture from step to step (and the executor
//! asks the same model for QC results), so the adapter shares it rather than owning it.

use super::{BoxFuture, BoxStream, Error, Execution, Instrument, StepRequest, Update, Value};
use crate::config::SimulatorConfig;
use crate::simulator::Simulator;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct SimulatedInstrument {
    model: Arc<Mutex<Simulator>>,
    config: SimulatorConfig,
}

impl SimulatedInstrument {
    pub fn new(model: Arc<Mutex<Simulator>>, config: SimulatorConfig) -> SimulatedInstrument {
        SimulatedInstrument { model, config }
    }

    fn run(&self, request: &StepRequest) -> Execution {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let model = self.model.clone();
        let step = request.step.clone();
        let interval = self.config.sample_interval_hours;
        let compression = self.config.time_compression;
        let mut at = request.resume_from_hours.unwrap_or(0.0);
        tokio::spawn(async move {
            while at < step.duration_hours {
                let next = (at + interval).min(step.duration_hours);
                let seconds = (next - at) * 3600.0 / compression;
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))) => {}
                }
                at = next;
                let (readings, alarm) = {
                    let mut sim = model.lock().unwrap_or_else(|e| e.into_inner());
                    let readings = sim.readings(&step, at);
                    let alarm = sim.alarm(&step, &readings);
                    (readings, alarm)
                };
                if !readings.is_empty()
                    && tx
                        .send(Ok(Update::Readings {
                            step_hours: at,
                            readings,
                        }))
                        .await
                        .is_err()
                {
                    return;
                }
                if let Some(alarm) = alarm {
                    if tx.send(Ok(Update::Alarm(alarm))).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(Update::Finished(Default::default()))).await;
        });
        Execution {
            id: format!("simulated:{}", request.step.id),
            reattachable: false,
            updates: Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
        }
    }
}

impl Instrument for SimulatedInstrument {
    fn id(&self) -> &str {
        &self.config.instrument_id
    }

    fn start<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(async move { Ok(self.run(request)) })
    }

    /// The model is deterministic: resuming from the last recorded sample continues
    /// the same curve.
    fn attach<'a>(
        &'a self,
        request: &'a StepRequest,
        _execution_id: &'a str,
    ) -> BoxFuture<'a, Result<Execution, Error>> {
        Box::pin(async move { Ok(self.run(request)) })
    }

    /// Dropping the execution's stream stops it.
    fn cancel<'a>(&'a self, _execution_id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn read<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            Err(Error::Mapping(format!(
                "the simulator has no value {source:?} to read: it reports readings while a step runs"
            )))
        })
    }

    fn subscribe<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<BoxStream<Value>, Error>> {
        Box::pin(async move {
            Err(Error::Mapping(format!(
                "the simulator has no value {source:?} to follow: it reports readings while a step runs"
            )))
        })
    }
}

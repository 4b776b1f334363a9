//! One interface to the site's equipment, whatever it speaks: the [`Instrument`] trait,
//! with three adapters: the [`simulator`] (a process model for demonstrations and tests),
//! [`sila`] (SiLA 2 servers: lab automation over gRPC) and [`opcua`] (OPC UA servers:
//! bioreactors, PLCs). Which adapter runs a recipe step, with which command and
//! parameters, and where a step's process parameters are read, is site configuration
//! ([`crate::config::InstrumentConfig`], [`crate::config::StepMapping`]), not code.
//!
//! Architecture invariant: an adapter holds no batch state that the agent cannot get
//! back. What a restarted agent needs to find a running execution again (its
//! [`Execution::id`]) is recorded in the site's log before the agent waits on it, and
//! [`Instrument::attach`] takes it back from there.
//!
//! Instrument wire types (SiLA protobuf, OPC UA variants) stay inside the adapters:
//! the executor sees [`Value`], [`Update`] and [`Error`] only.

pub mod opcua;
pub mod sila;
pub mod simulator;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use crate::process::{limit_alarm, Alarm, Reading};

/// A boxed future: keeps [`Instrument`] object-safe without a macro crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed stream of results.
pub type BoxStream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Error>> + Send>>;

/// What went wrong at an instrument, in domain terms.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The instrument refused a parameter before running anything (SiLA validation error).
    #[error("the instrument refused parameter {parameter}: {message}")]
    Validation { parameter: String, message: String },
    /// The command failed with an error the instrument's interface defines, e.g.
    /// contamination detected (SiLA defined execution error).
    #[error("the instrument reported {identifier}: {message}")]
    DefinedExecution { identifier: String, message: String },
    /// The command failed with an error the interface does not define.
    #[error("the instrument failed: {0}")]
    UndefinedExecution(String),
    /// The instrument's protocol layer refused the request (SiLA framework error),
    /// for example an unknown command execution UUID.
    #[error("the instrument refused the request ({kind}): {message}")]
    Framework { kind: String, message: String },
    /// Cannot reach the instrument, or the connection broke.
    #[error("cannot reach the instrument: {0}")]
    Connection(String),
    /// The instrument did not answer in time.
    #[error("the instrument did not answer within {0:?}")]
    Timeout(Duration),
    /// The command was sent and its answer never came (the connection broke, or the
    /// instrument did not answer in time): it may be running. Never sent again.
    #[error("the instrument did not confirm the command ({0}); it may be running")]
    Unconfirmed(String),
    /// The server at the instrument's address is not the one the site pinned
    /// (another certificate, another CA, another name): not retried, since trying
    /// again cannot make it the right instrument.
    #[error("{0}")]
    Untrusted(String),
    /// The instrument answered something this adapter or the site's mapping cannot
    /// use (a missing feature, a wrong type).
    #[error("{0}")]
    Mapping(String),
}

impl Error {
    /// The command is over and failed at the instrument: it becomes an alarm and a
    /// deviation. Other errors are about reaching the instrument and are retried.
    pub fn is_execution_failure(&self) -> bool {
        matches!(
            self,
            Error::DefinedExecution { .. } | Error::UndefinedExecution(_)
        )
    }

    /// Trying again later may help (the instrument may come back).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connection(_) | Error::Timeout(_))
    }

    /// For an error of the call that sends a command: a lost connection or a timeout
    /// after the command was sent means it may be running ([`Error::Unconfirmed`]);
    /// other errors say what they say.
    pub fn after_sending(self) -> Error {
        match self {
            Error::Connection(e) => Error::Unconfirmed(e),
            Error::Timeout(limit) => Error::Unconfirmed(format!("no answer within {limit:?}")),
            other => other,
        }
    }
}

/// A value read from or written to an instrument.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Real(f64),
    Integer(i64),
    Boolean(bool),
    String(String),
    List(Vec<Value>),
    /// Named values (a SiLA structure).
    Structure(Values),
}

impl Value {
    /// The value as a number, for process parameters.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Real(v) => Some(*v),
            Value::Integer(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The value at a dotted path inside structures (`Count.Viability`); the value
    /// itself for an empty path.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        match (self, path) {
            (_, []) => Some(self),
            (Value::Structure(fields), [first, rest @ ..]) => fields.get(*first)?.at(rest),
            _ => None,
        }
    }
}

/// Values by name with each structure opened into its elements, named by path
/// (`Count.Viability`), as results are recorded and mapped to QC tests.
pub fn flatten(values: &Values) -> Vec<(String, Value)> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Structure(fields) => {
                for (name, field) in fields {
                    walk(&format!("{prefix}.{name}"), field, out);
                }
            }
            other => out.push((prefix.to_owned(), other.clone())),
        }
    }
    let mut out = Vec::new();
    for (name, value) in values {
        walk(name, value, &mut out);
    }
    out
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Real(v) => write!(f, "{v}"),
            Value::Integer(v) => write!(f, "{v}"),
            Value::Boolean(v) => write!(f, "{v}"),
            Value::String(v) => f.write_str(v),
            Value::List(items) => {
                let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", parts.join(", "))
            }
            Value::Structure(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(name, value)| format!("{name}: {value}"))
                    .collect();
                write!(f, "{{{}}}", parts.join(", "))
            }
        }
    }
}

/// Values by identifier: command parameters, intermediate responses, results.
pub type Values = BTreeMap<String, Value>;

/// What an instrument is asked to do for one recipe step.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub batch_id: uuid::Uuid,
    pub step: carrel_proto::recipe::Step,
    /// The command to run (adapter-specific name, from the site's mapping).
    pub command: String,
    /// Command parameters, already resolved from the recipe and the site's mapping.
    pub parameters: Values,
    /// For a step interrupted by an agent restart: process hours already recorded.
    pub resume_from_hours: Option<f64>,
}

/// Where a command execution stands, as the instrument reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Waiting,
    Running,
    FinishedSuccessfully,
    FinishedWithError,
}

/// One thing an execution reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Status and progress (0 to 1), with the instrument's estimate of the time left.
    Status {
        status: Status,
        progress: Option<f64>,
        remaining: Option<Duration>,
    },
    /// Process parameter readings at `step_hours` process hours into the step.
    Readings {
        step_hours: f64,
        readings: Vec<Reading>,
    },
    /// Intermediate values the command sends while it runs (SiLA intermediate responses).
    Intermediate(Values),
    /// The instrument raised an alarm.
    Alarm(Alarm),
    /// The command finished successfully with these results; nothing follows.
    Finished(Values),
}

/// A running command: its id, and a stream of what it reports, ending with
/// [`Update::Finished`] or an error.
pub struct Execution {
    /// The instrument's id of this execution (a SiLA command execution UUID).
    pub id: String,
    /// True when [`Instrument::attach`] can find this execution again after an agent
    /// restart: the executor then records the id before waiting on it.
    pub reattachable: bool,
    pub updates: BoxStream<Update>,
}

impl fmt::Debug for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execution")
            .field("id", &self.id)
            .field("reattachable", &self.reattachable)
            .finish_non_exhaustive()
    }
}

/// One instrument, whatever protocol it speaks.
pub trait Instrument: Send + Sync {
    /// The id written into step records.
    fn id(&self) -> &str;

    /// Connects (or checks the connection) without sending any command. The executor
    /// calls it before it records that it sends a command, so that an instrument it
    /// cannot reach is retried instead of held as possibly running.
    fn connect(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    /// Starts the command that runs a recipe step. Returns as soon as the instrument
    /// has accepted it (and named its execution, when it does); what it reports
    /// afterwards comes through [`Execution::updates`]. An error after the command was
    /// sent whose outcome is unknown is [`Error::Unconfirmed`].
    fn start<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, Result<Execution, Error>>;

    /// Finds an execution started before (by an agent since restarted) and follows it
    /// from where it is now.
    fn attach<'a>(
        &'a self,
        request: &'a StepRequest,
        execution_id: &'a str,
    ) -> BoxFuture<'a, Result<Execution, Error>>;

    /// Asks the instrument to stop an execution.
    fn cancel<'a>(&'a self, execution_id: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Reads a value now (a SiLA property, an OPC UA variable node id).
    fn read<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<Value, Error>>;

    /// Follows a value as it changes.
    fn subscribe<'a>(&'a self, source: &'a str) -> BoxFuture<'a, Result<BoxStream<Value>, Error>>;

    /// Writes a value (an OPC UA variable). Instruments whose values are set through
    /// commands (SiLA 2) refuse.
    fn write<'a>(&'a self, target: &'a str, value: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        let _ = value;
        Box::pin(async move {
            Err(Error::Mapping(format!(
                "{target} cannot be written on instrument {}: set it with a command",
                self.id()
            )))
        })
    }
}

/// Runs `future` with a bound, turning the elapsed bound into [`Error::Timeout`].
pub async fn bounded<T>(
    limit: Duration,
    future: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or(Err(Error::Timeout(limit)))
}

/// What [`Instruments::check`] found.
#[derive(Debug, Default)]
pub struct InstrumentCheck {
    /// Sources read and found as the mappings need them.
    pub checked: usize,
    /// What would go wrong at run time.
    pub problems: Vec<String>,
    /// What could not be asked now (an instrument switched off or out of reach).
    pub unreachable: Vec<String>,
}

/// The site's instruments and which of them runs which step.
pub struct Instruments {
    /// Runs every step no mapping names another instrument for.
    pub simulator: crate::config::SimulatorConfig,
    steps: Vec<crate::config::StepMapping>,
    adapters: BTreeMap<String, std::sync::Arc<dyn Instrument>>,
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instruments")
            .field("adapters", &self.adapters.keys().collect::<Vec<_>>())
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Instruments {
    /// Builds the adapters a (validated) config names. Reads certificates and keys;
    /// connects to nothing yet (each adapter connects when first used).
    pub fn from_config(config: &crate::config::Config) -> Result<Instruments, Error> {
        use crate::config::InstrumentConfig;
        let mut adapters: BTreeMap<String, std::sync::Arc<dyn Instrument>> = BTreeMap::new();
        for instrument in &config.instruments {
            let adapter: std::sync::Arc<dyn Instrument> = match instrument {
                InstrumentConfig::Simulator { .. } => continue,
                InstrumentConfig::Sila2(sila) => {
                    std::sync::Arc::new(sila::SilaInstrument::new(sila)?)
                }
                InstrumentConfig::Opcua(ua) => std::sync::Arc::new(opcua::OpcuaInstrument::new(
                    ua,
                    &config.data_dir.join("opcua-pki"),
                )?),
            };
            adapters.insert(instrument.name().to_owned(), adapter);
        }
        Ok(Instruments {
            simulator: config.simulator.clone(),
            steps: config.steps.clone(),
            adapters,
        })
    }

    /// Only the simulator, as in a site without instrument mappings.
    pub fn simulated(simulator: crate::config::SimulatorConfig) -> Instruments {
        Instruments {
            simulator,
            steps: Vec::new(),
            adapters: BTreeMap::new(),
        }
    }

    /// The site's mapping for a recipe step, if any.
    pub fn mapping_for(
        &self,
        step: &carrel_proto::recipe::Step,
    ) -> Option<&crate::config::StepMapping> {
        crate::config::mapping_for(&self.steps, step)
    }

    /// Asks each instrument a step mapping uses about what the mappings read from it:
    /// connects (which checks its pin, identity and features), then reads each
    /// process parameter, each QC value read at a step's end and each completion
    /// source once. A value that is not a number where a number is needed, a source
    /// the instrument does not have, or an instrument that is not the pinned one is a
    /// problem; an instrument that cannot be reached now is only noted (the check
    /// runs where the instruments may be off). Sends no command.
    pub async fn check(&self) -> InstrumentCheck {
        let mut check = InstrumentCheck::default();
        // What each instrument is asked for: (step, what it is for, source, must be a number).
        let mut asks: BTreeMap<&str, Vec<(&str, String, &str, bool)>> = BTreeMap::new();
        for mapping in &self.steps {
            for reading in &mapping.readings {
                asks.entry(reading.instrument.as_str()).or_default().push((
                    &mapping.step,
                    format!("reading {}", reading.parameter),
                    &reading.source,
                    true,
                ));
            }
            for qc in &mapping.qc {
                if let Some(read) = qc.read.as_deref() {
                    asks.entry(mapping.instrument.as_str()).or_default().push((
                        &mapping.step,
                        format!("QC test {}", qc.test),
                        read,
                        true,
                    ));
                }
            }
            if let Some(done) = &mapping.done_when {
                asks.entry(mapping.instrument.as_str()).or_default().push((
                    &mapping.step,
                    "done_when".into(),
                    &done.source,
                    false,
                ));
            }
            asks.entry(mapping.instrument.as_str()).or_default();
        }
        for (name, asks) in asks {
            let Some(adapter) = self.adapter(name) else {
                continue;
            };
            match adapter.connect().await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    check
                        .unreachable
                        .push(format!("instrument {name:?} not checked: {e}"));
                    continue;
                }
                Err(e) => {
                    check.problems.push(format!("instrument {name:?}: {e}"));
                    continue;
                }
            }
            for (step, what, source, numeric) in asks {
                match adapter.read(source).await {
                    Ok(value) if numeric && value.as_f64().is_none() => {
                        check.problems.push(format!(
                            "steps: step {step:?}: {what} reads {source} on {name:?}, which is {value}, not a number; map a numeric property or variable"
                        ))
                    }
                    Ok(_) => check.checked += 1,
                    Err(e) if e.is_transient() => check.unreachable.push(format!(
                        "steps: step {step:?}: {what} ({source} on {name:?}) not checked: {e}"
                    )),
                    Err(e) => check.problems.push(format!(
                        "steps: step {step:?}: {what} ({source} on {name:?}): {e}"
                    )),
                }
            }
        }
        check
    }

    /// The adapter of a configured instrument; `None` for the simulator.
    pub fn adapter(&self, name: &str) -> Option<std::sync::Arc<dyn Instrument>> {
        self.adapters.get(name).cloned()
    }
}

/// Resolves a step mapping's parameters: literals as they are, placeholders from the
/// batch and the recipe step.
pub fn resolve_parameters(
    mapping: &crate::config::StepMapping,
    batch_id: uuid::Uuid,
    coi: &str,
    step: &carrel_proto::recipe::Step,
) -> Result<Values, Error> {
    mapping
        .parameters
        .iter()
        .map(|(key, value)| {
            let value = match value {
                // The planned duration alone is a number; anything else is text.
                toml::Value::String(text) if text == "{duration_hours}" => {
                    Value::Real(step.duration_hours)
                }
                other => literal(other, batch_id, coi, step)
                    .map_err(|e| Error::Mapping(format!("parameter {key:?}: {e}")))?,
            };
            Ok((key.clone(), value))
        })
        .collect()
}

/// A parameter's value from the site's mapping: numbers, booleans, text with each
/// placeholder in it replaced (`"CLOG-{coi}"`), dates and times as text (the adapter
/// converts them to the type the instrument declares), arrays as lists and tables
/// as structures.
fn literal(
    value: &toml::Value,
    batch_id: uuid::Uuid,
    coi: &str,
    step: &carrel_proto::recipe::Step,
) -> Result<Value, String> {
    Ok(match value {
        toml::Value::Integer(v) => Value::Integer(*v),
        toml::Value::Float(v) => Value::Real(*v),
        toml::Value::Boolean(v) => Value::Boolean(*v),
        toml::Value::String(text) => Value::String(fill_placeholders(text, batch_id, coi, step)?),
        toml::Value::Datetime(at) => Value::String(at.to_string()),
        toml::Value::Array(items) => Value::List(
            items
                .iter()
                .map(|item| literal(item, batch_id, coi, step))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(fields) => Value::Structure(
            fields
                .iter()
                .map(|(name, field)| {
                    literal(field, batch_id, coi, step)
                        .map(|v| (name.clone(), v))
                        .map_err(|e| format!("{name}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The placeholders a parameter's text may hold.
pub const PLACEHOLDERS: [&str; 4] = ["{batch_id}", "{coi}", "{step_id}", "{duration_hours}"];

/// Replaces each placeholder in `text`; a `{name}` that is not one is refused (a
/// misspelt placeholder would otherwise reach the instrument as it is).
fn fill_placeholders(
    text: &str,
    batch_id: uuid::Uuid,
    coi: &str,
    step: &carrel_proto::recipe::Step,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            out.push_str(after);
            return Ok(out);
        };
        let name = &after[..=close];
        let value = match name {
            "{batch_id}" => batch_id.to_string(),
            "{coi}" => coi.to_owned(),
            "{step_id}" => step.id.clone(),
            "{duration_hours}" => step.duration_hours.to_string(),
            other
                if other[1..other.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && other.len() > 2 =>
            {
                return Err(format!(
                    "{other} is not a placeholder (use {})",
                    PLACEHOLDERS.join(", ")
                ))
            }
            other => other.to_owned(),
        };
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_inside_text_and_misspelt_ones_refused() {
        let step: carrel_proto::recipe::Step = toml::from_str(
            "id = \"expansion\"\nname = \"Expansion\"\noperation = \"expansion\"\ninstrument_type = \"bioreactor\"\nduration_hours = 168.0\n",
        )
        .expect("step");
        let batch = uuid::Uuid::nil();
        let fill = |text: &str| fill_placeholders(text, batch, "W1234 26 123456 00", &step);
        assert_eq!(fill("CLOG-{coi}").as_deref(), Ok("CLOG-W1234 26 123456 00"));
        assert_eq!(
            fill("{step_id}/{duration_hours} h").as_deref(),
            Ok("expansion/168 h")
        );
        assert_eq!(fill("plain { text }").as_deref(), Ok("plain { text }"));
        assert_eq!(fill("open {").as_deref(), Ok("open {"));
        let table: toml::Table = toml::from_str(
            "drawn = 2026-12-05T14:30:00+01:00\nday = 2026-12-05\nsample = { id = \"S-{step_id}\", volume = 2.5 }\nwells = [1, 2]\n",
        )
        .expect("toml");
        let literal = |key: &str| literal(&table[key], batch, "W1", &step).expect(key);
        assert_eq!(
            literal("drawn"),
            Value::String("2026-12-05T14:30:00+01:00".into())
        );
        assert_eq!(literal("day"), Value::String("2026-12-05".into()));
        assert_eq!(
            literal("sample"),
            Value::Structure(Values::from([
                ("id".to_owned(), Value::String("S-expansion".into())),
                ("volume".to_owned(), Value::Real(2.5)),
            ]))
        );
        assert_eq!(
            literal("wells"),
            Value::List(vec![Value::Integer(1), Value::Integer(2)])
        );
        let misspelt = fill("CLOG-{COI}").expect_err("misspelt");
        assert!(
            misspelt.contains("{COI} is not a placeholder"),
            "{misspelt}"
        );
    }
}

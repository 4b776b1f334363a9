//! Site events and hub commands in their domain form.
//!
//! The wire form (`pb::SiteEvent`, `pb::HubCommand`) is converted here, once, with
//! every field validated (`TryFrom`); domain code on both sides uses these types only.
//! The stores keep each record as the canonical JSON of these types, which is also
//! what a duplicate is compared against and what the batch record hash covers.

use crate::pb;
use crate::people::PersonStatus;
use crate::recipe::{Outcome, QcValue};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A wire message that does not make a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Error {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Error {
    Error {
        field,
        problem: problem.into(),
    }
}

/// `prev_sha256` of the first event of a site's log.
pub const GENESIS_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of a site's append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteEvent {
    pub seq: u64,
    pub event_id: Uuid,
    pub recorded_at: DateTime<Utc>,
    pub batch_id: Uuid,
    pub recorded_by: String,
    /// SHA-256 of the previous event of the site's log ([`GENESIS_SHA256`] for seq 1).
    pub prev_sha256: String,
    /// How the site knew who made it. Absent from the stored form of records made
    /// before sign-in at the site, so their bytes (and hashes) stay what they were.
    #[serde(default, skip_serializing_if = "Identity::is_unverified")]
    pub identity: Identity,
    pub kind: EventKind,
}

/// How the site knew who made a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Identity {
    /// A name typed before the site had sign-in: not verified.
    #[default]
    Unverified,
    /// The agent's own record.
    Agent,
    /// People who signed in with their own credentials, checked against the site's
    /// copy of the hub's directory as of `directory_version`.
    Authenticated { directory_version: u64 },
    /// The simulator's operators (dev mode): not people.
    Simulated,
}

impl Identity {
    pub fn is_unverified(&self) -> bool {
        *self == Identity::Unverified
    }
}

impl SiteEvent {
    /// A record about the site rather than one batch (its batch id is the nil UUID).
    pub fn is_site_wide(&self) -> bool {
        self.batch_id.is_nil()
    }

    /// The people a record names: who recorded it, then the other verifiers of a scan.
    pub fn people(&self) -> Vec<&str> {
        let mut people = vec![self.recorded_by.as_str()];
        if let EventKind::CustodyScan { verifiers, .. } = &self.kind {
            for v in verifiers {
                if !people.iter().any(|p| p.eq_ignore_ascii_case(v)) {
                    people.push(v);
                }
            }
        }
        people
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmSeverity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseMeaning {
    Released,
    Rejected,
    /// Released before every result is in: the signature names the results that
    /// may follow release (a sterility culture) still outstanding.
    ReleasedConditionally,
    /// A conditional release completed: the results it waited for arrived within
    /// specification, as the QA person who signs confirms.
    ReleaseCompleted,
}

impl ReleaseMeaning {
    pub const ALL: [ReleaseMeaning; 4] = [
        ReleaseMeaning::Released,
        ReleaseMeaning::Rejected,
        ReleaseMeaning::ReleasedConditionally,
        ReleaseMeaning::ReleaseCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseMeaning::Released => "released",
            ReleaseMeaning::Rejected => "rejected",
            ReleaseMeaning::ReleasedConditionally => "released_conditionally",
            ReleaseMeaning::ReleaseCompleted => "release_completed",
        }
    }

    /// The meaning in words, as a signature's manifestation shows it.
    pub fn words(self) -> &'static str {
        match self {
            ReleaseMeaning::Released => "released",
            ReleaseMeaning::Rejected => "rejected",
            ReleaseMeaning::ReleasedConditionally => "released conditionally",
            ReleaseMeaning::ReleaseCompleted => "release completed",
        }
    }

    pub fn parse(text: &str) -> Option<ReleaseMeaning> {
        ReleaseMeaning::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// Whether the batch may leave for the patient after this decision (all but a
    /// rejection).
    pub fn releases(self) -> bool {
        self != ReleaseMeaning::Rejected
    }

    /// Whether this is the signature that released the batch (plainly or
    /// conditionally), not the later completion of a conditional release.
    pub fn is_release(self) -> bool {
        matches!(
            self,
            ReleaseMeaning::Released | ReleaseMeaning::ReleasedConditionally
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub step_hours: f64,
    pub parameter: String,
    pub value: f64,
    pub unit: String,
}

/// One value a command returned: its name, the value as the instrument sent it, and
/// the unit the site's mapping gives it (empty when it has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrumentResult {
    pub name: String,
    pub value: String,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    BatchAccepted {
        coi: String,
        recipe_id: String,
        recipe_version: u32,
        recipe_sha256: String,
    },
    StepStarted {
        step_id: String,
        instrument_id: String,
        resumed: bool,
    },
    ProcessSamples {
        step_id: String,
        samples: Vec<Sample>,
    },
    StepCompleted {
        step_id: String,
        process_hours: f64,
    },
    /// An instrument accepted the command running a step and named its execution
    /// (a SiLA 2 command execution UUID): recorded before the agent waits on it, so a
    /// restarted agent re-attaches to the same execution.
    InstrumentCommandStarted {
        step_id: String,
        instrument_id: String,
        command: String,
        execution_id: String,
    },
    /// The agent is about to send the command that runs a step: recorded before it is
    /// sent, so a command requested and never confirmed is never sent again.
    InstrumentCommandRequested {
        step_id: String,
        instrument_id: String,
        command: String,
    },
    /// What a command returned when it finished, by name.
    InstrumentResults {
        step_id: String,
        instrument_id: String,
        command: String,
        results: Vec<InstrumentResult>,
    },
    InstrumentAlarm {
        step_id: String,
        instrument_id: String,
        code: String,
        message: String,
        severity: AlarmSeverity,
    },
    DeviationRaised {
        deviation_id: String,
        step_id: String,
        description: String,
        classification: String,
    },
    QcResult {
        test_id: String,
        value: QcValue,
        unit: String,
        method: String,
        site_outcome: Outcome,
        /// For a retest: the seq of the result it retests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retest_of: Option<u64>,
    },
    ReleaseDecisionRecorded {
        signature_id: Uuid,
        meaning: ReleaseMeaning,
        command_seq: u64,
    },
    BatchCancelled {
        reason: String,
        command_seq: u64,
    },
    CustodyScan {
        checkpoint_id: String,
        expected_coi: String,
        scanned_coi: String,
        verifiers: Vec<String>,
        matched: bool,
        location: String,
        /// At a bedside checkpoint: the patient's wristband as scanned before the bag
        /// (its COI, or the patient's pseudonym). Absent from scans made before the
        /// wristband was scanned, so their bytes (and hashes) stay what they were.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wristband: Option<String>,
    },
    Correction {
        corrects_seq: u64,
        reason: String,
        field: String,
        new_value: String,
    },
    /// A label of the batch was printed at a custody checkpoint (copy 2 and up are
    /// reprints); `barcode_data` is what its barcodes carry.
    LabelPrinted {
        checkpoint_id: String,
        format: String,
        copy: u32,
        barcode_data: String,
    },
    /// A person was locked at the site after too many failed sign-ins (site-wide).
    PersonLocked {
        username: String,
        failures: u32,
    },
}

impl EventKind {
    /// Short, stable name of the kind, as stored in an index column.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::BatchAccepted { .. } => "batch_accepted",
            EventKind::StepStarted { .. } => "step_started",
            EventKind::ProcessSamples { .. } => "process_samples",
            EventKind::StepCompleted { .. } => "step_completed",
            EventKind::InstrumentCommandStarted { .. } => "instrument_command_started",
            EventKind::InstrumentCommandRequested { .. } => "instrument_command_requested",
            EventKind::InstrumentResults { .. } => "instrument_results",
            EventKind::InstrumentAlarm { .. } => "instrument_alarm",
            EventKind::DeviationRaised { .. } => "deviation_raised",
            EventKind::QcResult { .. } => "qc_result",
            EventKind::ReleaseDecisionRecorded { .. } => "release_decision_recorded",
            EventKind::BatchCancelled { .. } => "batch_cancelled",
            EventKind::CustodyScan { .. } => "custody_scan",
            EventKind::Correction { .. } => "correction",
            EventKind::PersonLocked { .. } => "person_locked",
            EventKind::LabelPrinted { .. } => "label_printed",
        }
    }
}

impl SiteEvent {
    /// Canonical JSON bytes: what is stored, compared and hashed.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a site event always serialises")
    }

    /// SHA-256 (hex) of the canonical JSON; the next event of the log carries it as
    /// `prev_sha256`, which makes the log a hash chain.
    pub fn sha256(&self) -> String {
        body_sha256(&self.canonical_json())
    }
}

/// SHA-256 (hex) of a site event's canonical JSON, for callers that have the JSON
/// already and need not serialise the event twice.
pub fn body_sha256(canonical_json: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(canonical_json.as_bytes());
    // Into a buffer: `hex::encode` builds its string a char at a time, which was a
    // third of this function's time (it runs for every event at the hub and at sites).
    let mut text = [0u8; 64];
    hex::encode_to_slice(digest, &mut text).expect("64 hex digits for 32 bytes");
    String::from_utf8(text.to_vec()).expect("hex digits are ASCII")
}

/// One entry of the hub's append-only command log for one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubCommand {
    pub seq: u64,
    pub command_id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub batch_id: Uuid,
    pub kind: CommandKind,
}

impl HubCommand {
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a hub command always serialises")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandKind {
    BatchOrder {
        order_id: Uuid,
        coi: String,
        patient_pseudonym: String,
        requested_collection_date: String,
        recipe_id: String,
        recipe_version: u32,
        recipe_json: String,
        recipe_sha256: String,
    },
    CancelBatch {
        reason: String,
        cancelled_by: String,
    },
    ReleaseDecision {
        signature_id: Uuid,
        meaning: ReleaseMeaning,
        signer: String,
        signer_name: String,
        signed_at: DateTime<Utc>,
        record_sha256: String,
        reason: String,
        /// Released conditionally: the tests whose results the release waits for;
        /// release completed: those it confirms. Empty otherwise.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        outstanding_tests: Vec<String>,
    },
    /// One person of the site's directory (site-wide: the command's batch id is nil;
    /// its seq is the directory version).
    PersonUpdated {
        username: String,
        full_name: String,
        role: String,
        password_verifier: String,
        status: PersonStatus,
        /// The bedside badge (empty: none) and its PIN's verifier.
        badge_id: String,
        pin_verifier: String,
    },
}

impl CommandKind {
    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::BatchOrder { .. } => "batch_order",
            CommandKind::CancelBatch { .. } => "cancel_batch",
            CommandKind::ReleaseDecision { .. } => "release_decision",
            CommandKind::PersonUpdated { .. } => "person_updated",
        }
    }
}

// ---- conversions from the wire, validating every field ----

fn required(field: &'static str, value: String) -> Result<String, Error> {
    if value.trim().is_empty() {
        Err(invalid(field, "is required"))
    } else {
        Ok(value)
    }
}

fn uuid(field: &'static str, value: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(value).map_err(|e| invalid(field, format!("{value:?} is not a UUID ({e})")))
}

fn finite(field: &'static str, value: f64) -> Result<f64, Error> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(invalid(field, format!("{value} is not a finite number")))
    }
}

/// Converts a wire timestamp, which must be present and representable.
pub fn from_timestamp(
    field: &'static str,
    ts: Option<prost_types::Timestamp>,
) -> Result<DateTime<Utc>, Error> {
    let ts = ts.ok_or_else(|| invalid(field, "is required"))?;
    let nanos = u32::try_from(ts.nanos).map_err(|_| invalid(field, "has negative nanoseconds"))?;
    DateTime::from_timestamp(ts.seconds, nanos).ok_or_else(|| invalid(field, "is out of range"))
}

pub fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn meaning_from_wire(field: &'static str, value: i32) -> Result<ReleaseMeaning, Error> {
    match pb::ReleaseMeaning::try_from(value) {
        Ok(pb::ReleaseMeaning::Released) => Ok(ReleaseMeaning::Released),
        Ok(pb::ReleaseMeaning::Rejected) => Ok(ReleaseMeaning::Rejected),
        Ok(pb::ReleaseMeaning::ReleasedConditionally) => Ok(ReleaseMeaning::ReleasedConditionally),
        Ok(pb::ReleaseMeaning::ReleaseCompleted) => Ok(ReleaseMeaning::ReleaseCompleted),
        _ => Err(invalid(
            field,
            format!("{value} is not a release meaning (released, rejected, released conditionally or release completed)"),
        )),
    }
}

pub fn meaning_to_wire(meaning: ReleaseMeaning) -> pb::ReleaseMeaning {
    match meaning {
        ReleaseMeaning::Released => pb::ReleaseMeaning::Released,
        ReleaseMeaning::Rejected => pb::ReleaseMeaning::Rejected,
        ReleaseMeaning::ReleasedConditionally => pb::ReleaseMeaning::ReleasedConditionally,
        ReleaseMeaning::ReleaseCompleted => pb::ReleaseMeaning::ReleaseCompleted,
    }
}

pub fn outcome_to_wire(outcome: Outcome) -> pb::QcOutcome {
    match outcome {
        Outcome::Pass => pb::QcOutcome::Pass,
        Outcome::OutOfSpecification => pb::QcOutcome::OutOfSpecification,
    }
}

impl TryFrom<pb::SiteEvent> for SiteEvent {
    type Error = Error;

    fn try_from(wire: pb::SiteEvent) -> Result<Self, Error> {
        use pb::site_event::Kind;
        if wire.seq == 0 {
            return Err(invalid("seq", "starts at 1"));
        }
        let kind = match wire
            .kind
            .ok_or_else(|| invalid("kind", "is required (unknown or missing event type)"))?
        {
            Kind::BatchAccepted(k) => EventKind::BatchAccepted {
                coi: required("batch_accepted.coi", k.coi)?,
                recipe_id: required("batch_accepted.recipe_id", k.recipe_id)?,
                recipe_version: k.recipe_version,
                recipe_sha256: required("batch_accepted.recipe_sha256", k.recipe_sha256)?,
            },
            Kind::StepStarted(k) => EventKind::StepStarted {
                step_id: required("step_started.step_id", k.step_id)?,
                instrument_id: required("step_started.instrument_id", k.instrument_id)?,
                resumed: k.resumed,
            },
            Kind::ProcessSamples(k) => {
                if k.samples.is_empty() {
                    return Err(invalid("process_samples.samples", "holds no sample"));
                }
                let samples = k
                    .samples
                    .into_iter()
                    .map(|s| {
                        Ok(Sample {
                            step_hours: finite("process_samples.samples.step_hours", s.step_hours)?,
                            parameter: required("process_samples.samples.parameter", s.parameter)?,
                            value: finite("process_samples.samples.value", s.value)?,
                            unit: s.unit,
                        })
                    })
                    .collect::<Result<_, Error>>()?;
                EventKind::ProcessSamples {
                    step_id: required("process_samples.step_id", k.step_id)?,
                    samples,
                }
            }
            Kind::InstrumentCommandStarted(k) => EventKind::InstrumentCommandStarted {
                step_id: required("instrument_command_started.step_id", k.step_id)?,
                instrument_id: required(
                    "instrument_command_started.instrument_id",
                    k.instrument_id,
                )?,
                command: required("instrument_command_started.command", k.command)?,
                execution_id: required("instrument_command_started.execution_id", k.execution_id)?,
            },
            Kind::InstrumentCommandRequested(k) => EventKind::InstrumentCommandRequested {
                step_id: required("instrument_command_requested.step_id", k.step_id)?,
                instrument_id: required(
                    "instrument_command_requested.instrument_id",
                    k.instrument_id,
                )?,
                command: required("instrument_command_requested.command", k.command)?,
            },
            Kind::InstrumentResults(k) => EventKind::InstrumentResults {
                step_id: required("instrument_results.step_id", k.step_id)?,
                instrument_id: required("instrument_results.instrument_id", k.instrument_id)?,
                command: required("instrument_results.command", k.command)?,
                results: k
                    .results
                    .into_iter()
                    .map(|r| {
                        Ok(InstrumentResult {
                            name: required("instrument_results.results.name", r.name)?,
                            value: r.value,
                            unit: r.unit,
                        })
                    })
                    .collect::<Result<_, Error>>()?,
            },
            Kind::StepCompleted(k) => EventKind::StepCompleted {
                step_id: required("step_completed.step_id", k.step_id)?,
                process_hours: finite("step_completed.process_hours", k.process_hours)?,
            },
            Kind::InstrumentAlarm(k) => EventKind::InstrumentAlarm {
                severity: match pb::AlarmSeverity::try_from(k.severity) {
                    Ok(pb::AlarmSeverity::Warning) => AlarmSeverity::Warning,
                    Ok(pb::AlarmSeverity::Critical) => AlarmSeverity::Critical,
                    _ => {
                        return Err(invalid(
                            "instrument_alarm.severity",
                            "must be warning or critical",
                        ))
                    }
                },
                step_id: k.step_id,
                instrument_id: required("instrument_alarm.instrument_id", k.instrument_id)?,
                code: required("instrument_alarm.code", k.code)?,
                message: k.message,
            },
            Kind::DeviationRaised(k) => EventKind::DeviationRaised {
                deviation_id: required("deviation_raised.deviation_id", k.deviation_id)?,
                step_id: k.step_id,
                description: required("deviation_raised.description", k.description)?,
                classification: match k.classification.as_str() {
                    "minor" | "major" | "critical" => k.classification,
                    other => {
                        return Err(invalid(
                            "deviation_raised.classification",
                            format!("{other:?} is not minor, major or critical"),
                        ))
                    }
                },
            },
            Kind::QcResult(k) => EventKind::QcResult {
                test_id: required("qc_result.test_id", k.test_id)?,
                value: match k.value {
                    Some(pb::qc_result_recorded::Value::Numeric(v)) => {
                        QcValue::Numeric(finite("qc_result.numeric", v)?)
                    }
                    Some(pb::qc_result_recorded::Value::Text(t)) => {
                        QcValue::Text(required("qc_result.text", t)?)
                    }
                    None => return Err(invalid("qc_result.value", "is required")),
                },
                unit: k.unit,
                method: k.method,
                site_outcome: match pb::QcOutcome::try_from(k.site_outcome) {
                    Ok(pb::QcOutcome::Pass) => Outcome::Pass,
                    Ok(pb::QcOutcome::OutOfSpecification) => Outcome::OutOfSpecification,
                    _ => {
                        return Err(invalid(
                            "qc_result.site_outcome",
                            "must be pass or out of specification",
                        ))
                    }
                },
                retest_of: match k.retest_of_seq {
                    0 => None,
                    seq if seq < wire.seq => Some(seq),
                    _ => {
                        return Err(invalid(
                            "qc_result.retest_of_seq",
                            "must point at an earlier record",
                        ))
                    }
                },
            },
            Kind::ReleaseDecisionRecorded(k) => EventKind::ReleaseDecisionRecorded {
                signature_id: uuid("release_decision_recorded.signature_id", &k.signature_id)?,
                meaning: meaning_from_wire("release_decision_recorded.meaning", k.meaning)?,
                command_seq: k.command_seq,
            },
            Kind::BatchCancelled(k) => EventKind::BatchCancelled {
                reason: k.reason,
                command_seq: k.command_seq,
            },
            Kind::CustodyScan(k) => EventKind::CustodyScan {
                checkpoint_id: required("custody_scan.checkpoint_id", k.checkpoint_id)?,
                expected_coi: required("custody_scan.expected_coi", k.expected_coi)?,
                scanned_coi: k.scanned_coi,
                verifiers: k.verifiers,
                matched: k.matched,
                location: k.location,
                wristband: (!k.wristband.is_empty()).then_some(k.wristband),
            },
            Kind::Correction(k) => EventKind::Correction {
                corrects_seq: if k.corrects_seq == 0 || k.corrects_seq >= wire.seq {
                    return Err(invalid(
                        "correction.corrects_seq",
                        "must point at an earlier record",
                    ));
                } else {
                    k.corrects_seq
                },
                reason: required("correction.reason", k.reason)?,
                field: required("correction.field", k.field)?,
                new_value: k.new_value,
            },
            Kind::PersonLocked(k) => EventKind::PersonLocked {
                username: required("person_locked.username", k.username)?,
                failures: k.failures,
            },
            Kind::LabelPrinted(k) => EventKind::LabelPrinted {
                checkpoint_id: required("label_printed.checkpoint_id", k.checkpoint_id)?,
                format: match k.format.as_str() {
                    "pdf" | "png" | "zpl" => k.format,
                    _ => return Err(invalid("label_printed.format", "must be pdf, png or zpl")),
                },
                copy: if k.copy == 0 {
                    return Err(invalid("label_printed.copy", "must be 1 or more"));
                } else {
                    k.copy
                },
                barcode_data: required("label_printed.barcode_data", k.barcode_data)?,
            },
        };
        let batch_id = uuid("batch_id", &wire.batch_id)?;
        if batch_id.is_nil() != matches!(kind, EventKind::PersonLocked { .. }) {
            return Err(invalid(
                "batch_id",
                "is the nil UUID exactly for site-wide records (person_locked)",
            ));
        }
        let identity = match wire.identity {
            None => Identity::Unverified,
            Some(identity) => match pb::IdentityKind::try_from(identity.kind) {
                Ok(pb::IdentityKind::Unspecified) => Identity::Unverified,
                Ok(pb::IdentityKind::Agent) => Identity::Agent,
                Ok(pb::IdentityKind::Simulated) => Identity::Simulated,
                Ok(pb::IdentityKind::Authenticated) if identity.directory_version > 0 => {
                    Identity::Authenticated {
                        directory_version: identity.directory_version,
                    }
                }
                Ok(pb::IdentityKind::Authenticated) => {
                    return Err(invalid(
                        "identity.directory_version",
                        "is required for an authenticated record",
                    ))
                }
                Err(_) => {
                    return Err(invalid(
                        "identity.kind",
                        format!("{} is not an identity kind", identity.kind),
                    ))
                }
            },
        };
        Ok(SiteEvent {
            identity,
            seq: wire.seq,
            event_id: uuid("event_id", &wire.event_id)?,
            recorded_at: from_timestamp("recorded_at", wire.recorded_at)?,
            batch_id,
            recorded_by: required("recorded_by", wire.recorded_by)?,
            prev_sha256: if wire.prev_sha256.len() == 64
                && wire.prev_sha256.chars().all(|c| c.is_ascii_hexdigit())
            {
                wire.prev_sha256.to_ascii_lowercase()
            } else {
                return Err(invalid(
                    "prev_sha256",
                    "must be the 64-hex-digit SHA-256 of the previous event",
                ));
            },
            kind,
        })
    }
}

impl From<&SiteEvent> for pb::SiteEvent {
    fn from(event: &SiteEvent) -> Self {
        pb::SiteEvent::from(event.clone())
    }
}

/// Moves the event's text into the wire form (the agent sends what it read back
/// from its log and needs it no more): no copy of each string.
impl From<SiteEvent> for pb::SiteEvent {
    fn from(event: SiteEvent) -> Self {
        use pb::site_event::Kind;
        let kind = match event.kind {
            EventKind::BatchAccepted {
                coi,
                recipe_id,
                recipe_version,
                recipe_sha256,
            } => Kind::BatchAccepted(pb::BatchAccepted {
                coi,
                recipe_id,
                recipe_version,
                recipe_sha256,
            }),
            EventKind::StepStarted {
                step_id,
                instrument_id,
                resumed,
            } => Kind::StepStarted(pb::StepStarted {
                step_id,
                instrument_id,
                resumed,
            }),
            EventKind::ProcessSamples { step_id, samples } => {
                Kind::ProcessSamples(pb::ProcessSamples {
                    step_id,
                    samples: samples
                        .into_iter()
                        .map(|s| pb::ProcessSample {
                            step_hours: s.step_hours,
                            parameter: s.parameter,
                            value: s.value,
                            unit: s.unit,
                        })
                        .collect(),
                })
            }
            EventKind::StepCompleted {
                step_id,
                process_hours,
            } => Kind::StepCompleted(pb::StepCompleted {
                step_id,
                process_hours,
            }),
            EventKind::InstrumentCommandStarted {
                step_id,
                instrument_id,
                command,
                execution_id,
            } => Kind::InstrumentCommandStarted(pb::InstrumentCommandStarted {
                step_id,
                instrument_id,
                command,
                execution_id,
            }),
            EventKind::InstrumentCommandRequested {
                step_id,
                instrument_id,
                command,
            } => Kind::InstrumentCommandRequested(pb::InstrumentCommandRequested {
                step_id,
                instrument_id,
                command,
            }),
            EventKind::InstrumentResults {
                step_id,
                instrument_id,
                command,
                results,
            } => Kind::InstrumentResults(pb::InstrumentResults {
                step_id,
                instrument_id,
                command,
                results: results
                    .into_iter()
                    .map(|r| pb::InstrumentResult {
                        name: r.name,
                        value: r.value,
                        unit: r.unit,
                    })
                    .collect(),
            }),
            EventKind::InstrumentAlarm {
                step_id,
                instrument_id,
                code,
                message,
                severity,
            } => Kind::InstrumentAlarm(pb::InstrumentAlarm {
                step_id,
                instrument_id,
                code,
                message,
                severity: match severity {
                    AlarmSeverity::Warning => pb::AlarmSeverity::Warning,
                    AlarmSeverity::Critical => pb::AlarmSeverity::Critical,
                } as i32,
            }),
            EventKind::DeviationRaised {
                deviation_id,
                step_id,
                description,
                classification,
            } => Kind::DeviationRaised(pb::DeviationRaised {
                deviation_id,
                step_id,
                description,
                classification,
            }),
            EventKind::QcResult {
                test_id,
                value,
                unit,
                method,
                site_outcome,
                retest_of,
            } => Kind::QcResult(pb::QcResultRecorded {
                test_id,
                value: Some(match value {
                    QcValue::Numeric(v) => pb::qc_result_recorded::Value::Numeric(v),
                    QcValue::Text(t) => pb::qc_result_recorded::Value::Text(t),
                }),
                unit,
                method,
                site_outcome: outcome_to_wire(site_outcome) as i32,
                retest_of_seq: retest_of.unwrap_or(0),
            }),
            EventKind::ReleaseDecisionRecorded {
                signature_id,
                meaning,
                command_seq,
            } => Kind::ReleaseDecisionRecorded(pb::ReleaseDecisionRecorded {
                signature_id: signature_id.to_string(),
                meaning: meaning_to_wire(meaning) as i32,
                command_seq,
            }),
            EventKind::BatchCancelled {
                reason,
                command_seq,
            } => Kind::BatchCancelled(pb::BatchCancelled {
                reason,
                command_seq,
            }),
            EventKind::CustodyScan {
                checkpoint_id,
                expected_coi,
                scanned_coi,
                verifiers,
                matched,
                location,
                wristband,
            } => Kind::CustodyScan(pb::CustodyScan {
                checkpoint_id,
                expected_coi,
                scanned_coi,
                verifiers,
                matched,
                location,
                wristband: wristband.unwrap_or_default(),
            }),
            EventKind::Correction {
                corrects_seq,
                reason,
                field,
                new_value,
            } => Kind::Correction(pb::Correction {
                corrects_seq,
                reason,
                field,
                new_value,
            }),
            EventKind::LabelPrinted {
                checkpoint_id,
                format,
                copy,
                barcode_data,
            } => Kind::LabelPrinted(pb::LabelPrinted {
                checkpoint_id,
                format,
                copy,
                barcode_data,
            }),
            EventKind::PersonLocked { username, failures } => {
                Kind::PersonLocked(pb::PersonLocked { username, failures })
            }
        };
        let identity = match event.identity {
            Identity::Unverified => None,
            Identity::Agent => Some((pb::IdentityKind::Agent, 0)),
            Identity::Authenticated { directory_version } => {
                Some((pb::IdentityKind::Authenticated, directory_version))
            }
            Identity::Simulated => Some((pb::IdentityKind::Simulated, 0)),
        }
        .map(|(kind, directory_version)| pb::Identity {
            kind: kind as i32,
            directory_version,
        });
        pb::SiteEvent {
            identity,
            seq: event.seq,
            event_id: event.event_id.to_string(),
            recorded_at: Some(to_timestamp(event.recorded_at)),
            batch_id: event.batch_id.to_string(),
            recorded_by: event.recorded_by,
            prev_sha256: event.prev_sha256,
            kind: Some(kind),
        }
    }
}

impl TryFrom<pb::HubCommand> for HubCommand {
    type Error = Error;

    fn try_from(wire: pb::HubCommand) -> Result<Self, Error> {
        use pb::hub_command::Kind;
        if wire.seq == 0 {
            return Err(invalid("seq", "starts at 1"));
        }
        let kind = match wire
            .kind
            .ok_or_else(|| invalid("kind", "is required (unknown or missing command type)"))?
        {
            Kind::BatchOrder(k) => CommandKind::BatchOrder {
                order_id: uuid("batch_order.order_id", &k.order_id)?,
                coi: required("batch_order.coi", k.coi)?,
                patient_pseudonym: required("batch_order.patient_pseudonym", k.patient_pseudonym)?,
                requested_collection_date: k.requested_collection_date,
                recipe_id: required("batch_order.recipe_id", k.recipe_id)?,
                recipe_version: k.recipe_version,
                recipe_json: required("batch_order.recipe_json", k.recipe_json)?,
                recipe_sha256: required("batch_order.recipe_sha256", k.recipe_sha256)?,
            },
            Kind::CancelBatch(k) => CommandKind::CancelBatch {
                reason: k.reason,
                cancelled_by: k.cancelled_by,
            },
            Kind::ReleaseDecision(k) => CommandKind::ReleaseDecision {
                signature_id: uuid("release_decision.signature_id", &k.signature_id)?,
                meaning: meaning_from_wire("release_decision.meaning", k.meaning)?,
                signer: required("release_decision.signer", k.signer)?,
                signer_name: k.signer_name,
                signed_at: from_timestamp("release_decision.signed_at", k.signed_at)?,
                record_sha256: required("release_decision.record_sha256", k.record_sha256)?,
                reason: k.reason,
                outstanding_tests: k.outstanding_tests,
            },
            Kind::PersonUpdated(k) => CommandKind::PersonUpdated {
                username: required("person_updated.username", k.username)?,
                full_name: required("person_updated.full_name", k.full_name)?,
                role: required("person_updated.role", k.role)?,
                password_verifier: k.password_verifier,
                status: PersonStatus::parse(&k.status).ok_or_else(|| {
                    invalid(
                        "person_updated.status",
                        format!("{:?} is not active, disabled or removed", k.status),
                    )
                })?,
                pin_verifier: if k.badge_id.is_empty() || !k.pin_verifier.is_empty() {
                    k.pin_verifier
                } else {
                    return Err(invalid(
                        "person_updated.pin_verifier",
                        "is required with a badge",
                    ));
                },
                badge_id: k.badge_id,
            },
        };
        Ok(HubCommand {
            seq: wire.seq,
            command_id: uuid("command_id", &wire.command_id)?,
            issued_at: from_timestamp("issued_at", wire.issued_at)?,
            batch_id: uuid("batch_id", &wire.batch_id)?,
            kind,
        })
    }
}

impl From<&HubCommand> for pb::HubCommand {
    fn from(command: &HubCommand) -> Self {
        use pb::hub_command::Kind;
        let kind = match command.kind.clone() {
            CommandKind::BatchOrder {
                order_id,
                coi,
                patient_pseudonym,
                requested_collection_date,
                recipe_id,
                recipe_version,
                recipe_json,
                recipe_sha256,
            } => Kind::BatchOrder(pb::BatchOrder {
                order_id: order_id.to_string(),
                coi,
                patient_pseudonym,
                requested_collection_date,
                recipe_id,
                recipe_version,
                recipe_json,
                recipe_sha256,
            }),
            CommandKind::CancelBatch {
                reason,
                cancelled_by,
            } => Kind::CancelBatch(pb::CancelBatch {
                reason,
                cancelled_by,
            }),
            CommandKind::ReleaseDecision {
                signature_id,
                meaning,
                signer,
                signer_name,
                signed_at,
                record_sha256,
                reason,
                outstanding_tests,
            } => Kind::ReleaseDecision(pb::ReleaseDecision {
                signature_id: signature_id.to_string(),
                meaning: meaning_to_wire(meaning) as i32,
                signer,
                signer_name,
                signed_at: Some(to_timestamp(signed_at)),
                record_sha256,
                reason,
                outstanding_tests,
            }),
            CommandKind::PersonUpdated {
                username,
                full_name,
                role,
                password_verifier,
                status,
                badge_id,
                pin_verifier,
            } => Kind::PersonUpdated(pb::PersonUpdated {
                username,
                full_name,
                role,
                password_verifier,
                status: status.as_str().to_owned(),
                badge_id,
                pin_verifier,
            }),
        };
        pb::HubCommand {
            seq: command.seq,
            command_id: command.command_id.to_string(),
            issued_at: Some(to_timestamp(command.issued_at)),
            batch_id: command.batch_id.to_string(),
            kind: Some(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> SiteEvent {
        SiteEvent {
            seq: 7,
            event_id: Uuid::new_v4(),
            recorded_at: DateTime::from_timestamp(1_800_000_000, 123_000).expect("valid"),
            batch_id: Uuid::new_v4(),
            recorded_by: "agent".into(),
            prev_sha256: GENESIS_SHA256.into(),
            identity: Identity::Unverified,
            kind: EventKind::QcResult {
                test_id: "viability".into(),
                value: QcValue::Numeric(82.5),
                unit: "%".into(),
                method: "counter".into(),
                site_outcome: Outcome::Pass,
                retest_of: None,
            },
        }
    }

    #[test]
    fn event_round_trips_through_the_wire() {
        let event = sample_event();
        let wire = pb::SiteEvent::from(&event);
        assert_eq!(SiteEvent::try_from(wire.clone()), Ok(event.clone()));
        assert_eq!(pb::SiteEvent::from(event), wire, "owned and borrowed agree");
    }

    #[test]
    fn identity_round_trips_and_leaves_older_records_byte_identical() {
        let unverified = sample_event();
        assert!(
            !unverified.canonical_json().contains("identity"),
            "a record from before sign-in keeps its stored bytes"
        );
        for identity in [
            Identity::Agent,
            Identity::Simulated,
            Identity::Authenticated {
                directory_version: 12,
            },
        ] {
            let event = SiteEvent {
                identity,
                ..sample_event()
            };
            let wire = pb::SiteEvent::from(&event);
            assert_eq!(SiteEvent::try_from(wire), Ok(event.clone()));
            let back: SiteEvent =
                serde_json::from_str(&event.canonical_json()).expect("stored form reads back");
            assert_eq!(back, event);
        }
        let mut wire = pb::SiteEvent::from(&SiteEvent {
            identity: Identity::Authenticated {
                directory_version: 3,
            },
            ..sample_event()
        });
        wire.identity = Some(pb::Identity {
            kind: pb::IdentityKind::Authenticated as i32,
            directory_version: 0,
        });
        assert_eq!(
            SiteEvent::try_from(wire).expect_err("no version").field,
            "identity.directory_version"
        );
    }

    #[test]
    fn only_site_wide_records_have_the_nil_batch() {
        let locked = SiteEvent {
            batch_id: Uuid::nil(),
            identity: Identity::Agent,
            kind: EventKind::PersonLocked {
                username: "tech.ann".into(),
                failures: 10,
            },
            ..sample_event()
        };
        assert!(locked.is_site_wide());
        let wire = pb::SiteEvent::from(&locked);
        assert_eq!(SiteEvent::try_from(wire), Ok(locked.clone()));
        let mut elsewhere = pb::SiteEvent::from(&locked);
        elsewhere.batch_id = Uuid::new_v4().to_string();
        assert_eq!(
            SiteEvent::try_from(elsewhere)
                .expect_err("a lock is site-wide")
                .field,
            "batch_id"
        );
        let mut nil = pb::SiteEvent::from(&sample_event());
        nil.batch_id = Uuid::nil().to_string();
        assert_eq!(
            SiteEvent::try_from(nil)
                .expect_err("a QC result names its batch")
                .field,
            "batch_id"
        );
    }

    #[test]
    fn body_hash_is_lowercase_hex_sha256() {
        // FIPS 180-2's test vector for "abc".
        assert_eq!(
            body_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let event = sample_event();
        assert_eq!(event.sha256(), body_sha256(&event.canonical_json()));
        assert_eq!(event.sha256().len(), 64);
    }

    #[test]
    fn wire_event_without_kind_or_with_bad_ids_is_refused() {
        let mut wire = pb::SiteEvent::from(&sample_event());
        wire.kind = None;
        assert_eq!(
            SiteEvent::try_from(wire).expect_err("no kind").field,
            "kind"
        );

        let mut wire = pb::SiteEvent::from(&sample_event());
        wire.batch_id = "not-a-uuid".into();
        assert_eq!(
            SiteEvent::try_from(wire).expect_err("bad id").field,
            "batch_id"
        );

        let mut wire = pb::SiteEvent::from(&sample_event());
        wire.seq = 0;
        assert_eq!(SiteEvent::try_from(wire).expect_err("seq 0").field, "seq");
    }

    #[test]
    fn instrument_command_round_trips_and_needs_its_execution_id() {
        let mut event = sample_event();
        event.kind = EventKind::InstrumentCommandStarted {
            step_id: "expansion".into(),
            instrument_id: "cps-1".into(),
            command: "RunExpansion".into(),
            execution_id: "6c1f4a52-55a3-4a3c-9d1e-0b7c2f7e9a10".into(),
        };
        let wire = pb::SiteEvent::from(&event);
        assert_eq!(SiteEvent::try_from(wire.clone()), Ok(event.clone()));
        assert_eq!(event.kind.name(), "instrument_command_started");
        let mut wire = wire;
        if let Some(pb::site_event::Kind::InstrumentCommandStarted(k)) = wire.kind.as_mut() {
            k.execution_id.clear();
        }
        assert_eq!(
            SiteEvent::try_from(wire)
                .expect_err("no execution id")
                .field,
            "instrument_command_started.execution_id"
        );
    }

    #[test]
    fn qc_value_must_be_finite() {
        let mut wire = pb::SiteEvent::from(&sample_event());
        if let Some(pb::site_event::Kind::QcResult(q)) = wire.kind.as_mut() {
            q.value = Some(pb::qc_result_recorded::Value::Numeric(f64::INFINITY));
        }
        assert_eq!(
            SiteEvent::try_from(wire).expect_err("inf").field,
            "qc_result.numeric"
        );
    }

    #[test]
    fn command_round_trips_through_the_wire() {
        let command = HubCommand {
            seq: 3,
            command_id: Uuid::new_v4(),
            issued_at: DateTime::from_timestamp(1_800_000_000, 0).expect("valid"),
            batch_id: Uuid::new_v4(),
            kind: CommandKind::ReleaseDecision {
                signature_id: Uuid::new_v4(),
                meaning: ReleaseMeaning::Released,
                signer: "qa".into(),
                signer_name: "Q. A.".into(),
                signed_at: DateTime::from_timestamp(1_800_000_100, 0).expect("valid"),
                record_sha256: "ab".repeat(32),
                reason: String::new(),
                outstanding_tests: vec!["sterility".into()],
            },
        };
        let wire = pb::HubCommand::from(&command);
        assert_eq!(HubCommand::try_from(wire), Ok(command));

        let person = HubCommand {
            seq: 4,
            command_id: Uuid::new_v4(),
            issued_at: DateTime::from_timestamp(1_800_000_200, 0).expect("valid"),
            batch_id: Uuid::nil(),
            kind: CommandKind::PersonUpdated {
                username: "tech.ann".into(),
                full_name: "Ann Tech".into(),
                role: "technician".into(),
                password_verifier: "$argon2id$v=19$...".into(),
                status: PersonStatus::Disabled,
                badge_id: "BDG-0123456789AB".into(),
                pin_verifier: "$argon2id$v=19$...".into(),
            },
        };
        let mut wire = pb::HubCommand::from(&person);
        assert_eq!(HubCommand::try_from(wire.clone()), Ok(person));
        if let Some(pb::hub_command::Kind::PersonUpdated(p)) = wire.kind.as_mut() {
            p.status = "gone".into();
        }
        assert_eq!(
            HubCommand::try_from(wire).expect_err("bad status").field,
            "person_updated.status"
        );
    }
}

//! The batch record as QA reviews it, and the hash a release signature binds to.
//!
//! [`review`] computes, once for both doors (the gRPC API and the web console), what
//! a reviewer sees: the record's hash, the exceptions first, the QC results against
//! their specification, the steps and process parameters, every entry, the
//! signatures as they are shown (Part 11 manifestation) and the audit trail. The
//! doors only render it. [`timeline`], [`next_step`] and [`alerts`] tell an order's
//! story to the physician who placed it.
//!
//! The hash covers the order's identity (batch, COI, patient pseudonym, site, pinned
//! recipe and its SHA-256) and every site event of the batch in log order, each as
//! its canonical JSON. Any new or different record gives a different hash, so a
//! signature made on an earlier view of the record is refused (Part 11: a signature
//! is bound to the exact record it signs).

use crate::model::{BatchRecord, Order, Signature, SiteDirectory, StoredEvent};
use carrel_proto::event::{EventKind, Identity, ReleaseMeaning};
use carrel_proto::recipe::{Outcome, QcValue};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};

pub fn record_sha256(order: &Order, recipe_sha256: &str, events: &[StoredEvent]) -> String {
    let mut hash = RecordHasher::new(&record_header(order, recipe_sha256));
    for stored in events {
        hash.add(&stored.site_id, &stored.event.canonical_json());
    }
    hash.hex()
}

/// The first bytes the record hash covers: the order's identity and its pinned
/// recipe, as compact JSON with its keys in alphabetical order.
pub fn record_header(order: &Order, recipe_sha256: &str) -> String {
    serde_json::json!({
        "batch_id": order.batch_id,
        "order_id": order.order_id,
        "coi": order.coi,
        "patient_pseudonym": order.patient_pseudonym,
        "site_id": order.site_id,
        "recipe_id": order.recipe_id,
        "recipe_version": order.recipe_version,
        "recipe_sha256": recipe_sha256,
    })
    .to_string()
}

/// The record hash, fed one event at a time: SHA-256 over the header's bytes, then
/// for each event in log order a newline, the site id, a tab and the event's
/// canonical JSON. [`RecordHasher::hex`] may be read after any event: the hash of
/// the record as it stood then (what an earlier signature bound to). An exported
/// record is verified with this same code ([`crate::export`]).
#[derive(Clone)]
pub struct RecordHasher(Sha256);

impl RecordHasher {
    pub fn new(header: &str) -> RecordHasher {
        let mut hash = Sha256::new();
        hash.update(header.as_bytes());
        RecordHasher(hash)
    }

    pub fn add(&mut self, site_id: &str, canonical_json: &str) {
        self.0.update(b"\n");
        self.0.update(site_id.as_bytes());
        self.0.update(b"\t");
        self.0.update(canonical_json.as_bytes());
    }

    /// The hash of what was added so far.
    pub fn hex(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}

/// A one-line, human-readable account of a site event: (what happened, details).
/// What a site event is and its details, with the ids the records use (for logs
/// and the audit trail).
pub fn describe(kind: &carrel_proto::event::EventKind) -> (String, String) {
    describe_in(None, kind)
}

/// What a site event is and its details in the words of `recipe` when given: step,
/// test, checkpoint and parameter names instead of their ids, units as people write
/// them (for pages and the record people read).
pub fn describe_in(
    recipe: Option<&carrel_proto::recipe::Recipe>,
    kind: &carrel_proto::event::EventKind,
) -> (String, String) {
    use carrel_proto::recipe::unit_words;
    let step = |id: &str| recipe.map_or(id.to_owned(), |r| r.step_name(id).to_owned());
    let test = |id: &str| recipe.map_or(id.to_owned(), |r| r.test_name(id).to_owned());
    let checkpoint = |id: &str| recipe.map_or(id.to_owned(), |r| r.checkpoint_name(id).to_owned());
    let parameter = |name: &str| match recipe {
        Some(r) => r.parameter_label(name),
        None => name.to_owned(),
    };
    let unit = |u: &str| {
        let u = if recipe.is_some() {
            unit_words(u)
        } else {
            std::borrow::Cow::Borrowed(u)
        };
        if u.is_empty() {
            String::new()
        } else {
            format!(" {u}")
        }
    };
    use carrel_proto::event::EventKind as K;
    match kind {
        K::BatchAccepted {
            recipe_id,
            recipe_version,
            ..
        } => (
            "batch accepted".into(),
            format!("recipe {recipe_id} v{recipe_version}"),
        ),
        K::StepStarted {
            step_id,
            instrument_id,
            resumed,
        } => (
            if *resumed {
                "step resumed"
            } else {
                "step started"
            }
            .into(),
            format!("{} on {instrument_id}", step(step_id)),
        ),
        K::ProcessSamples { step_id, samples } => {
            let values: Vec<String> = samples
                .iter()
                .map(|s| {
                    format!(
                        "{} {:.2}{}",
                        parameter(&s.parameter),
                        s.value,
                        unit(&s.unit)
                    )
                })
                .collect();
            let at = samples.first().map(|s| s.step_hours).unwrap_or_default();
            (
                "process samples".into(),
                format!("{} at {at:.1} h: {}", step(step_id), values.join(", ")),
            )
        }
        K::StepCompleted {
            step_id,
            process_hours,
        } => (
            "step completed".into(),
            format!("{} after {process_hours:.1} h", step(step_id)),
        ),
        K::InstrumentCommandStarted {
            step_id,
            instrument_id,
            command,
            execution_id,
        } => (
            "instrument command started".into(),
            format!(
                "{} on {instrument_id}: {command}, execution {execution_id}",
                step(step_id)
            ),
        ),
        K::InstrumentCommandRequested {
            step_id,
            instrument_id,
            command,
        } => (
            "instrument command requested".into(),
            format!("{} on {instrument_id}: {command}", step(step_id)),
        ),
        K::InstrumentResults {
            step_id,
            instrument_id,
            command,
            results,
        } => (
            "instrument results".into(),
            format!(
                "{} on {instrument_id}: {command} returned {}",
                step(step_id),
                if results.is_empty() {
                    "no values".to_owned()
                } else {
                    results
                        .iter()
                        .map(|r| format!("{} {}{}", r.name, r.value, unit(&r.unit)))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ),
        K::InstrumentAlarm {
            code,
            message,
            severity,
            step_id,
            ..
        } => (
            "instrument alarm".into(),
            format!(
                "{} {code} during {}: {message}",
                format!("{severity:?}").to_lowercase(),
                step(step_id)
            ),
        ),
        K::DeviationRaised {
            deviation_id,
            description,
            classification,
            ..
        } => (
            "deviation raised".into(),
            format!("{deviation_id} ({classification}): {description}"),
        ),
        K::QcResult {
            test_id,
            value,
            unit: unit_of,
            site_outcome,
            retest_of,
            ..
        } => (
            "QC result".into(),
            format!(
                "{} = {value}{}, {} at the site{}",
                test(test_id),
                unit(unit_of),
                outcome_words(*site_outcome),
                retest_of
                    .map(|seq| format!(", retest of record {seq}"))
                    .unwrap_or_default()
            ),
        ),
        K::ReleaseDecisionRecorded { meaning, .. } => (
            "decision recorded at site".into(),
            meaning.as_str().to_owned(),
        ),
        K::BatchCancelled { reason, .. } => ("batch cancelled at site".into(), reason.clone()),
        K::CustodyScan {
            checkpoint_id,
            scanned_coi,
            matched,
            verifiers,
            wristband,
            ..
        } => (
            if *matched {
                "custody scan"
            } else {
                "custody MISMATCH"
            }
            .into(),
            match wristband {
                Some(w) => format!(
                    "{}: wristband {w}, bag {scanned_coi}, verified by {}",
                    checkpoint(checkpoint_id),
                    verifiers.join(", ")
                ),
                None => format!(
                    "{}: scanned {scanned_coi}, verified by {}",
                    checkpoint(checkpoint_id),
                    verifiers.join(", ")
                ),
            },
        ),
        K::Correction {
            corrects_seq,
            field,
            new_value,
            reason,
        } => (
            "correction".into(),
            format!("record {corrects_seq}: {field} = {new_value} ({reason})"),
        ),
        K::LabelPrinted {
            checkpoint_id,
            format,
            copy,
            barcode_data,
        } => (
            if *copy > 1 {
                "label reprinted"
            } else {
                "label printed"
            }
            .into(),
            format!(
                "{} label ({format}), copy {copy}, barcode {barcode_data}",
                checkpoint(checkpoint_id)
            ),
        ),
        K::PersonLocked { username, failures } => (
            "person locked at the site".into(),
            format!("{username} after {failures} failed sign-ins"),
        ),
    }
}

/// The batch record as QA reviews it: computed once by [`review`], rendered by each
/// door (protobuf in the API, HTML in the console).
#[derive(Debug, Clone)]
pub struct Review {
    pub order: Order,
    /// Title and version of the recipe the batch was made to.
    pub recipe_title: String,
    pub recipe_version: u32,
    /// The hash a signature on this review binds to ([`record_sha256`]).
    pub record_sha256: String,
    /// What needs QA's attention, first: the site's records flagged as exceptions,
    /// in log order, then what the hub's own checks found.
    pub exceptions: Vec<Exception>,
    /// The hub's evaluation of each QC result against the recipe's specification,
    /// grouped per test (in the recipe's order), each test's results in log order,
    /// each saying whether it is the value that counts ([`Counts`]).
    pub qc: Vec<QcLine>,
    /// Each step as the records show it: when it started and completed.
    pub steps: Vec<StepTimes>,
    /// The process samples, one series per (step, parameter), in that order.
    pub parameters: Vec<ParameterSeries>,
    /// Every entry of the record, in the order the site recorded them.
    pub entries: Vec<Entry>,
    pub signatures: Vec<Signed>,
    /// Records that arrived after the release decision and no QA person has
    /// reviewed yet: while there are any, the batch is "changed after decision".
    pub changed_after_decision: Vec<Entry>,
    /// QA's signed reviews of such records.
    pub change_reviews: Vec<crate::model::ChangeReview>,
    /// Every test of the recipe: id to name.
    pub test_names: BTreeMap<String, String>,
    /// Tests that may follow release with no result yet (ids, the recipe's order):
    /// while any are, a release can only be conditional and names them.
    pub outstanding: Vec<String>,
    /// A conditional release not yet completed: the tests it waits for (ids), and
    /// `Ok` with those it would confirm when QA may complete it now, or why not.
    pub release_awaits: Vec<String>,
    pub completion: Result<Vec<String>, String>,
    /// The batch's patient follow-ups (results out of specification after
    /// release), each with its closure once QA signed it.
    pub follow_ups: Vec<(
        crate::model::FollowUpMark,
        Option<crate::model::FollowUpClosure>,
    )>,
    pub audit: Vec<crate::audit::Entry>,
}

impl Review {
    /// Whether the batch waits for a release decision (the one state it can be signed in).
    /// Whether QA has a decision to sign: never for a dry run, which is not released.
    pub fn awaits_decision(&self) -> bool {
        self.order.state == crate::model::BatchState::AwaitingRelease && !self.order.dry_run
    }
}

/// One entry of the record, described in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
    pub what: String,
    pub detail: String,
}

/// An exception: a site record flagged by the projection, or an anomaly the hub's
/// own checks found (no site record behind it).
#[derive(Debug, Clone, PartialEq)]
pub enum Exception {
    Record(Entry),
    Anomaly(String),
}

impl Exception {
    /// The exception in one line, as a justification of it records it.
    pub fn text(&self) -> String {
        match self {
            Exception::Record(e) => format!("record {}: {} ({})", e.seq, e.what, e.detail),
            Exception::Anomaly(anomaly) => format!("hub check: {anomaly}"),
        }
    }
}

/// A QC result against its specification. Without the test in the recipe, the name,
/// method and unit are empty and the specification says so.
#[derive(Debug, Clone, PartialEq)]
pub struct QcLine {
    /// The site record of the result.
    pub seq: u64,
    /// The result it retests, as the site recorded it.
    pub retest_of: Option<u64>,
    /// Whether this is the test's reportable value.
    pub counts: Counts,
    pub test_id: String,
    pub test_name: Option<String>,
    pub method: Option<String>,
    pub value: QcValue,
    pub unit: String,
    pub specification: String,
    pub hub_outcome: Outcome,
    pub site_outcome: Outcome,
    pub reason: String,
}

/// Whether a QC result is the one that counts for its test ([`carrel_proto::qc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    /// The test's reportable value: its only result, or the last of its retests.
    Reportable,
    /// Retested by this later result, which replaces it as the value that counts
    /// (it stays on the record).
    RetestedBy(u64),
    /// One of several results of the test that no retest links: which counts is
    /// not stated, and the review lists it as an exception.
    Unstated,
}

/// When a step started and completed, from the records.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTimes {
    pub step_id: String,
    /// The recipe's name for the step (its id when the recipe does not name it).
    pub name: String,
    pub started: DateTime<Utc>,
    pub completed: Option<DateTime<Utc>>,
}

/// The samples of one process parameter during one step: (process hours, value)
/// points, and the recipe's normal range when it gives one.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterSeries {
    pub step_id: String,
    pub parameter: String,
    pub unit: String,
    /// The step's name and the parameter's label, as people read them.
    pub step_name: String,
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub range: Option<(f64, f64)>,
}

/// A signature and how it is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Signed {
    pub signature: Signature,
    /// Printed name, date-time and meaning ([`manifestation`]).
    pub manifestation: String,
}

impl Signed {
    pub fn new(signature: Signature) -> Signed {
        Signed {
            manifestation: manifestation(
                &signature.signer_name,
                &signature.signer,
                signature.meaning,
                signature.signed_at,
            ),
            signature,
        }
    }
}

/// The signature as it is shown: printed name, date-time and meaning (Part 11).
pub fn manifestation(
    signer_name: &str,
    signer: &str,
    meaning: ReleaseMeaning,
    at: DateTime<Utc>,
) -> String {
    let words = meaning.words();
    let meaning = words[..1].to_uppercase() + &words[1..];
    format!(
        "{meaning} by {signer_name} ({signer}) on {} UTC",
        at.format("%Y-%m-%d %H:%M:%S")
    )
}

/// Who made a record, as QA reads it: the people with their full names from the
/// site's directory, and how the site knew them when it was not by sign-in.
pub fn who(event: &carrel_proto::event::SiteEvent, directory: &SiteDirectory) -> String {
    let named = |person: &str| match directory.full_name(person) {
        Some(full) => format!("{full} ({person})"),
        None => person.to_owned(),
    };
    match event.identity {
        Identity::Agent => event.recorded_by.clone(),
        Identity::Authenticated { .. } => event
            .people()
            .into_iter()
            .map(named)
            .collect::<Vec<_>>()
            .join(" and "),
        Identity::Simulated => format!("{} (simulated)", event.people().join(" and ")),
        Identity::Unverified if event.recorded_by == "agent" => event.recorded_by.clone(),
        Identity::Unverified => format!("{} (identity not verified)", event.people().join(" and ")),
    }
}

/// The review of a batch record: everything QA sees, computed once. With
/// `accept_simulated` (a hub in dev mode), records of a simulator's operators are
/// marked as simulated but are no exception.
pub fn review(record: BatchRecord, accept_simulated: bool) -> Review {
    let BatchRecord {
        order,
        recipe,
        events,
        qc,
        signatures,
        change_reviews,
        follow_up_closures,
        audit,
        directory,
    } = record;
    let recipe_sha256 = recipe.sha256;
    let recipe = recipe.recipe;
    let directory = SiteDirectory::new(&directory);
    let entry = |stored: &StoredEvent| {
        let (what, detail) = describe_in(Some(&recipe), &stored.event.kind);
        Entry {
            seq: stored.event.seq,
            recorded_at: stored.event.recorded_at,
            recorded_by: who(&stored.event, &directory),
            what,
            detail,
        }
    };
    let flagged: HashSet<u64> = order.progress.exceptions.iter().copied().collect();
    // Who made each record, checked against the site's directory as the site had it.
    let mut identity: Vec<Exception> = Vec::new();
    let mut unverified = 0;
    for stored in &events {
        let event = &stored.event;
        if event.identity == Identity::Unverified && event.recorded_by != "agent" {
            unverified += 1;
        }
        let bedside = match &event.kind {
            EventKind::CustodyScan { checkpoint_id, .. } => recipe
                .bedside_checkpoints
                .iter()
                .any(|cp| &cp.id == checkpoint_id),
            _ => false,
        };
        let problems = directory.problems(event, bedside, accept_simulated);
        if !problems.is_empty() {
            let mut flagged = entry(stored);
            flagged.what = format!("who made it: {}", flagged.what);
            flagged.detail = problems.join("; ");
            identity.push(Exception::Record(flagged));
        }
    }
    if unverified > 0 {
        identity.push(Exception::Anomaly(format!(
            "{unverified} record(s) name people by a name typed at the site before sign-in there: identity not verified"
        )));
    }
    let mut unlinked: Vec<Exception> = Vec::new();
    // QC results grouped per test, in the recipe's order, then tests it does not
    // name; a test whose results do not say which counts is an exception.
    let mut tests = carrel_proto::qc::by_test(events.iter().map(|e| &e.event));
    let order_of = |test_id: &str| {
        recipe
            .all_tests()
            .position(|t| t.id == test_id)
            .unwrap_or(usize::MAX)
    };
    tests.sort_by_key(|t| order_of(&t.test_id));
    let mut qc_lines = Vec::new();
    for results in &tests {
        let test = recipe.test(&results.test_id);
        let name = test
            .map(|t| t.name.clone())
            .unwrap_or_else(|| results.test_id.clone());
        let current = results.current();
        for &seq in &results.results {
            let Some(q) = qc.iter().find(|q| q.site_seq == seq) else {
                continue;
            };
            // How this result was measured, as the site recorded it: the recipe's
            // method, and whether an instrument measured it or the simulator made it.
            let (retest_of, recorded_method) = events
                .iter()
                .find(|e| e.event.seq == seq)
                .and_then(|e| match &e.event.kind {
                    EventKind::QcResult {
                        retest_of, method, ..
                    } => Some((*retest_of, Some(method.clone()).filter(|m| !m.is_empty()))),
                    _ => None,
                })
                .unwrap_or_default();
            qc_lines.push(QcLine {
                seq,
                retest_of,
                counts: match results.retested_by.get(&seq) {
                    Some(&by) => Counts::RetestedBy(by),
                    None if current.len() == 1 => Counts::Reportable,
                    None => Counts::Unstated,
                },
                test_name: test.map(|t| t.name.clone()),
                method: recorded_method.or_else(|| test.map(|t| t.method.clone())),
                unit: test.map(|t| t.unit.clone()).unwrap_or_default(),
                specification: test
                    .map(|t| t.spec.to_string())
                    .unwrap_or_else(|| "not in recipe".into()),
                test_id: q.test_id.clone(),
                value: q.value.clone(),
                hub_outcome: q.hub_outcome,
                site_outcome: q.site_outcome,
                reason: q.reason.clone(),
            });
        }
        if current.len() > 1 {
            let last = current[current.len() - 1];
            if let Some(stored) = events.iter().find(|e| e.event.seq == last) {
                let values: Vec<String> = current
                    .iter()
                    .filter_map(|seq| qc.iter().find(|q| q.site_seq == *seq))
                    .map(|q| {
                        let unit = test.map(|t| t.unit.as_str()).unwrap_or("");
                        format!(
                            "record {} = {}{}{unit} ({})",
                            q.site_seq,
                            q.value,
                            if unit.is_empty() { "" } else { " " },
                            outcome_words(q.hub_outcome)
                        )
                    })
                    .collect();
                let mut flagged = entry(stored);
                flagged.what = "QC result repeated without a retest link".into();
                flagged.detail = format!(
                    "{name}: {} all stand; none names another as the result it retests, so which counts is not stated",
                    values.join(", ")
                );
                unlinked.push(Exception::Record(flagged));
            }
        }
    }
    let qc = qc_lines;
    let exceptions = events
        .iter()
        .filter(|e| flagged.contains(&e.event.seq))
        .map(|e| Exception::Record(entry(e)))
        .chain(unlinked)
        .chain(identity)
        .chain(
            order
                .progress
                .anomalies
                .iter()
                .map(|a| Exception::Anomaly(a.clone())),
        )
        .collect();
    let mut steps: Vec<StepTimes> = Vec::new();
    let mut samples: BTreeMap<(String, String), ParameterSeries> = BTreeMap::new();
    for stored in &events {
        match &stored.event.kind {
            EventKind::StepStarted { step_id, .. }
                if !steps.iter().any(|s| &s.step_id == step_id) =>
            {
                steps.push(StepTimes {
                    step_id: step_id.clone(),
                    name: recipe
                        .step(step_id)
                        .map(|s| s.name.clone())
                        .unwrap_or_else(|| step_id.clone()),
                    started: stored.event.recorded_at,
                    completed: None,
                });
            }
            EventKind::StepCompleted { step_id, .. } => {
                if let Some(step) = steps.iter_mut().find(|s| &s.step_id == step_id) {
                    step.completed = Some(stored.event.recorded_at);
                }
            }
            EventKind::ProcessSamples {
                step_id,
                samples: list,
            } => {
                for s in list {
                    samples
                        .entry((step_id.clone(), s.parameter.clone()))
                        .or_insert_with(|| ParameterSeries {
                            step_id: step_id.clone(),
                            parameter: s.parameter.clone(),
                            unit: s.unit.clone(),
                            step_name: recipe.step_name(step_id).to_owned(),
                            label: recipe.parameter_label(&s.parameter),
                            points: Vec::new(),
                            range: recipe
                                .step(step_id)
                                .and_then(|step| {
                                    step.parameters.iter().find(|p| p.name == s.parameter)
                                })
                                .map(|p| (p.low, p.high)),
                        })
                        .points
                        .push((s.step_hours, s.value));
                }
            }
            _ => {}
        }
    }
    let unreviewed: HashSet<u64> = order.progress.unreviewed_changes().into_iter().collect();
    let follow_ups = order
        .progress
        .follow_ups
        .iter()
        .map(|mark| {
            let closure = follow_up_closures
                .iter()
                .find(|c| c.site_seq == mark.site_seq)
                .cloned();
            (mark.clone(), closure)
        })
        .collect();
    Review {
        outstanding: if order.state == crate::model::BatchState::AwaitingRelease {
            crate::model::release::outstanding(&order, &recipe)
        } else {
            Vec::new()
        },
        release_awaits: order.progress.release_awaits.iter().cloned().collect(),
        test_names: recipe
            .all_tests()
            .map(|t| (t.id.clone(), t.name.clone()))
            .collect(),
        completion: crate::model::release::check_completion(&order, &recipe),
        follow_ups,
        changed_after_decision: events
            .iter()
            .filter(|e| unreviewed.contains(&e.event.seq))
            .map(entry)
            .collect(),
        change_reviews,
        record_sha256: record_sha256(&order, &recipe_sha256, &events),
        recipe_title: recipe.title.clone(),
        recipe_version: recipe.version,
        exceptions,
        qc,
        steps,
        parameters: samples.into_values().collect(),
        entries: events.iter().map(entry).collect(),
        signatures: signatures.into_iter().map(Signed::new).collect(),
        audit,
        order,
    }
}

/// An outcome in words.
pub fn outcome_words(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "within specification",
        Outcome::OutOfSpecification => "out of specification",
    }
}

/// One line of an order's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub at: chrono::DateTime<chrono::Utc>,
    /// "hub" or "site".
    pub source: &'static str,
    pub what: String,
    pub detail: String,
}

/// A site record stamped this much later than the hub received it can only come
/// from a site clock that runs ahead (the hub's clock is the reference).
const CLOCK_TOLERANCE_SECS: i64 = 5;

/// A duration in words, to the nearest second or minute: "45 s", "10 min", "2 h 5 min".
fn span(d: chrono::Duration) -> String {
    let s = d.num_seconds().abs();
    let minutes = (s + 30) / 60;
    match s {
        0..=119 => format!("{s} s"),
        120..=7_199 => format!("{minutes} min"),
        _ => format!("{} h {} min", minutes / 60, minutes % 60),
    }
}

/// An order's timeline from order to infusion: the order, the site's records
/// (without the process samples), and QA's decisions.
///
/// Two clocks meet here, the hub's and the site's, and a site's clock can be off.
/// The site's records keep their log order whatever their stamps say: each is
/// placed, by the hub's clock, no earlier than the record before it and than the
/// order itself, and no later than when the hub received it. Each shows the time
/// the site stamped on it, with a note when that stamp shows the site's clock was
/// off: ahead of the hub, behind the order it acts on, or gone backwards.
pub fn timeline(record: &crate::model::BatchRecord) -> Vec<TimelineEntry> {
    let order = &record.order;
    let tolerance = chrono::Duration::seconds(CLOCK_TOLERANCE_SECS);
    // (where it sorts, by the hub's clock; the entry)
    let mut entries = vec![(
        order.created_at,
        TimelineEntry {
            at: order.created_at,
            source: "hub",
            what: "order created".into(),
            detail: format!(
                "by {}, COI {}, site {}",
                order.physician, order.coi, order.site_id
            ),
        },
    )];
    let mut floor = order.created_at;
    // The stamp of the record before, unless that stamp was itself ahead of the hub
    // (then a later stamp that is right is not a clock going back).
    let mut previous_stamp: Option<chrono::DateTime<chrono::Utc>> = None;
    for stored in &record.events {
        let stamp = stored.event.recorded_at;
        let place = stamp.min(stored.received_at).max(floor);
        floor = place;
        let ahead = stamp > stored.received_at + tolerance;
        let skew = if ahead {
            Some(format!(
                "site clock ahead: stamped {} after the hub received it",
                span(stamp - stored.received_at)
            ))
        } else if stamp < order.created_at - tolerance {
            Some(format!(
                "site clock behind: stamped {} before the order was created",
                span(order.created_at - stamp)
            ))
        } else {
            previous_stamp
                .filter(|previous| stamp < *previous - tolerance)
                .map(|previous| {
                    format!(
                        "site clock went back {} since the record before",
                        span(previous - stamp)
                    )
                })
        };
        previous_stamp = (!ahead).then_some(stamp);
        if matches!(
            stored.event.kind,
            carrel_proto::event::EventKind::ProcessSamples { .. }
        ) {
            continue;
        }
        let (what, mut detail) = describe_in(Some(&record.recipe.recipe), &stored.event.kind);
        if let Some(note) = skew {
            detail = format!("{detail} [{note}]");
        }
        entries.push((
            place,
            TimelineEntry {
                at: stamp,
                source: "site",
                what,
                detail,
            },
        ));
    }
    for sig in &record.signatures {
        entries.push((
            sig.signed_at,
            TimelineEntry {
                at: sig.signed_at,
                source: "hub",
                what: format!("QA {}", sig.meaning.words()),
                detail: if sig.outstanding_tests.is_empty() {
                    format!("signed by {} ({})", sig.signer_name, sig.signer)
                } else {
                    format!(
                        "signed by {} ({}); {} {}",
                        sig.signer_name,
                        sig.signer,
                        if sig.meaning == ReleaseMeaning::ReleaseCompleted {
                            "results confirmed:"
                        } else {
                            "results still outstanding:"
                        },
                        sig.outstanding_tests
                            .iter()
                            .map(|t| record.recipe.recipe.test_name(t))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            },
        ));
    }
    // Stable: entries placed at the same moment keep the order they were added in.
    entries.sort_by_key(|(place, _)| *place);
    entries.into_iter().map(|(_, entry)| entry).collect()
}

/// What has to happen next for an order, in words.
pub fn next_step(record: &crate::model::BatchRecord) -> String {
    use crate::model::BatchState as S;
    let order = &record.order;
    let recipe = &record.recipe.recipe;
    match order.state {
        S::Ordered => format!("site {} accepts the batch order", order.site_id),
        S::Accepted | S::InProcess => {
            let next = recipe
                .steps
                .iter()
                .find(|s| !order.progress.steps_completed.contains(&s.id));
            match next {
                Some(step) => match &step.custody_checkpoint {
                    Some(cp) if !order.progress.checkpoints_passed.contains(&cp.id) => {
                        format!("custody scan at \"{}\", then {}", cp.name, step.name)
                    }
                    _ => format!("{} (in progress)", step.name),
                },
                None => "QC results from the laboratory".into(),
            }
        }
        S::AwaitingRelease if order.dry_run => {
            "nothing: the dry run's record is complete (a dry run is never released)".into()
        }
        S::AwaitingRelease => "QA reviews the batch record and signs release or rejection".into(),
        S::Released | S::HandedOver | S::Infused
            if !order.progress.release_failed().is_empty()
                && order.progress.open_follow_ups().next().is_none() =>
        {
            format!(
                "none: the conditional release failed ({} out of specification) and the patient follow-up is closed",
                order.progress.release_failed().join(", ")
            )
        }
        S::Released if !order.decision_recorded => "the release decision reaches the site".into(),
        S::Released | S::HandedOver | S::Infused
            if order.progress.open_follow_ups().next().is_some() =>
        {
            "QA closes the patient follow-up opened by a result out of specification after release".into()
        }
        S::Released => "hand-over of the product for infusion".into(),
        S::HandedOver => "infusion at the bedside (two-person check of the COI)".into(),
        S::Infused if !order.progress.release_awaits.is_empty() => format!(
            "none at the bedside; the conditional release waits for {} (QA completes it when the result is in)",
            order
                .progress
                .release_awaits
                .iter()
                .map(|t| recipe.test_name(t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        S::Infused => "none: the chain of identity is closed".into(),
        S::Rejected => "none: QA rejected the batch".into(),
        S::Cancelled => "none: the order was cancelled".into(),
    }
}

/// News about an order its physician must see first, above everything else.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    /// A QC result that counts for its test is out of specification.
    OutOfSpecification {
        test: String,
        value: String,
        recorded_at: DateTime<Utc>,
        /// The product had been released (`released_at`) and infused (`infused_at`)
        /// before the result was recorded.
        released_at: Option<DateTime<Utc>>,
        infused_at: Option<DateTime<Utc>>,
    },
    /// QA rejected the batch.
    Rejected {
        by: String,
        at: DateTime<Utc>,
        reason: String,
    },
    /// The order was cancelled.
    Cancelled {
        by: String,
        at: DateTime<Utc>,
        reason: String,
    },
}

/// The alerts of an order, rejection and cancellation first. A result replaced by a
/// retest is not an alert; one still counting is, whenever it was recorded.
pub fn alerts(record: &crate::model::BatchRecord) -> Vec<Alert> {
    let recipe = &record.recipe.recipe;
    let mut alerts = Vec::new();
    if let Some(s) = record
        .signatures
        .iter()
        .find(|s| s.meaning == ReleaseMeaning::Rejected)
    {
        alerts.push(Alert::Rejected {
            by: format!("{} ({})", s.signer_name, s.signer),
            at: s.signed_at,
            reason: s.reason.clone(),
        });
    }
    if let Some(e) = record
        .audit
        .iter()
        .find(|e| e.action == crate::audit::Action::OrderCancelled)
    {
        alerts.push(Alert::Cancelled {
            by: e.actor.clone(),
            at: e.at,
            reason: e.reason.clone(),
        });
    }
    let released_at = record
        .signatures
        .iter()
        .find(|s| s.meaning.is_release())
        .map(|s| s.signed_at);
    let infused_at = recipe.bedside_checkpoints.last().and_then(|last| {
        record.events.iter().find_map(|e| match &e.event.kind {
            EventKind::CustodyScan {
                checkpoint_id,
                matched: true,
                ..
            } if *checkpoint_id == last.id => Some(e.event.recorded_at),
            _ => None,
        })
    });
    let counting: HashSet<u64> = carrel_proto::qc::by_test(record.events.iter().map(|e| &e.event))
        .iter()
        .flat_map(|t| t.current())
        .collect();
    for qc in record
        .qc
        .iter()
        .filter(|q| q.hub_outcome == Outcome::OutOfSpecification && counting.contains(&q.site_seq))
    {
        let Some(stored) = record.events.iter().find(|e| e.event.seq == qc.site_seq) else {
            continue;
        };
        let at = stored.event.recorded_at;
        let test = recipe.test(&qc.test_id);
        let unit = test.map(|t| t.unit.as_str()).unwrap_or_default();
        alerts.push(Alert::OutOfSpecification {
            test: test.map_or_else(|| qc.test_id.clone(), |t| t.name.clone()),
            value: format!("{} {unit}", qc.value).trim_end().to_owned(),
            recorded_at: at,
            released_at: released_at.filter(|r| *r <= at),
            infused_at: infused_at.filter(|i| *i <= at),
        });
    }
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BatchRecord, BatchState, Order, Progress, StoredEvent, StoredRecipe};
    use carrel_proto::event::{EventKind, SiteEvent, GENESIS_SHA256};
    use carrel_proto::recipe::Recipe;
    use chrono::{DateTime, Duration, Utc};
    use uuid::Uuid;

    fn record(
        events: &[(DateTime<Utc>, DateTime<Utc>, EventKind)],
        created: DateTime<Utc>,
    ) -> BatchRecord {
        let batch_id = Uuid::now_v7();
        let recipe = Recipe::from_toml(crate::server::SHIPPED_RECIPES[0].1).expect("recipe");
        let events = events
            .iter()
            .enumerate()
            .map(|(i, (stamp, received, kind))| StoredEvent {
                site_id: "site-a".into(),
                received_at: *received,
                event: SiteEvent {
                    seq: i as u64 + 1,
                    event_id: Uuid::now_v7(),
                    recorded_at: *stamp,
                    batch_id,
                    recorded_by: "agent".into(),
                    identity: carrel_proto::event::Identity::Agent,
                    prev_sha256: GENESIS_SHA256.into(),
                    kind: kind.clone(),
                },
            })
            .collect();
        BatchRecord {
            order: Order {
                order_id: Uuid::now_v7(),
                batch_id,
                coi: "G123426000001X".into(),
                patient_pseudonym: "P-1".into(),
                recipe_id: recipe.id.clone(),
                recipe_version: recipe.version,
                site_id: "site-a".into(),
                requested_collection_date: "2026-12-01".into(),
                physician: "dr.a".into(),
                created_at: created,
                state: BatchState::InProcess,
                current_step: None,
                progress: Progress::default(),
                decision_recorded: false,
                updated_at: created,
                dry_run: false,
            },
            recipe: StoredRecipe {
                sha256: recipe.sha256(),
                canonical_json: String::new(),
                recipe,
            },
            events,
            qc: Vec::new(),
            signatures: Vec::new(),
            change_reviews: Vec::new(),
            follow_up_closures: Vec::new(),
            audit: Vec::new(),
            directory: Vec::new(),
        }
    }

    fn step(id: &str) -> EventKind {
        EventKind::StepStarted {
            step_id: id.into(),
            instrument_id: "sim".into(),
            resumed: false,
        }
    }

    #[test]
    fn a_skewed_site_clock_is_noted_and_does_not_reorder_the_record() {
        let created = Utc::now();
        let s = Duration::seconds;
        let events = [
            // Ten minutes ahead, ten minutes behind, on time, then back in time.
            (created + s(600) + s(1), created + s(1), step("collection")),
            (created - s(600) + s(2), created + s(2), step("receipt")),
            (created + s(3), created + s(3), step("selection")),
            (created - s(60), created + s(4), step("activation")),
        ];
        let timeline = timeline(&record(&events, created));
        let steps: Vec<&str> = timeline
            .iter()
            .map(|e| e.detail.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            steps,
            // Steps by their names in the recipe, not their ids.
            ["by", "Apheresis", "Receipt", "CD4/CD8", "T-cell"],
            "{timeline:#?}"
        );
        assert!(
            timeline[1]
                .detail
                .contains("[site clock ahead: stamped 10 min after the hub received it]"),
            "{}",
            timeline[1].detail
        );
        assert!(
            timeline[2]
                .detail
                .contains("[site clock behind: stamped 10 min before the order was created]"),
            "{}",
            timeline[2].detail
        );
        assert!(
            !timeline[3].detail.contains("site clock"),
            "{}",
            timeline[3].detail
        );
        assert!(
            timeline[4].detail.contains("site clock behind"),
            "{}",
            timeline[4].detail
        );
        // The site's own stamps are shown as it made them.
        assert_eq!(timeline[1].at, created + s(601));
        assert_eq!(timeline[2].at, created - s(598));
    }

    #[test]
    fn a_site_clock_that_goes_back_is_noted() {
        let created = Utc::now();
        let s = Duration::seconds;
        let events = [
            (created + s(300), created + s(301), step("collection")),
            (created + s(100), created + s(302), step("receipt")),
        ];
        let timeline = timeline(&record(&events, created));
        assert!(
            timeline[2]
                .detail
                .contains("[site clock went back 3 min since the record before]"),
            "{}",
            timeline[2].detail
        );
        assert!(!timeline[1].detail.contains("site clock"));
    }

    #[test]
    fn the_review_puts_exceptions_first_and_shows_signatures_as_signed() {
        let created = Utc::now();
        let s = Duration::seconds;
        let events = [
            (created + s(1), created + s(1), step("collection")),
            (
                created + s(2),
                created + s(2),
                EventKind::StepCompleted {
                    step_id: "collection".into(),
                    process_hours: 1.5,
                },
            ),
        ];
        let mut record = record(&events, created);
        record.order.progress.exceptions = vec![2];
        record.order.progress.anomalies = vec!["custody scans out of order".into()];
        let signed_at = created + s(60);
        record.signatures.push(crate::model::Signature {
            signature_id: Uuid::now_v7(),
            batch_id: record.order.batch_id,
            signer: "qa.b".into(),
            signer_name: "B. Quality".into(),
            meaning: ReleaseMeaning::Rejected,
            record_sha256: "0".repeat(64),
            reason: "test".into(),
            signed_at,
            justifications: Vec::new(),
            outstanding_tests: Vec::new(),
        });
        let sha = record_sha256(&record.order, &record.recipe.sha256, &record.events);
        let review = review(record, false);
        assert_eq!(review.record_sha256, sha);
        assert_eq!(review.exceptions.len(), 2, "{:#?}", review.exceptions);
        assert!(
            matches!(&review.exceptions[0], Exception::Record(e) if e.seq == 2 && e.what == "step completed"),
            "{:#?}",
            review.exceptions
        );
        assert_eq!(
            review.exceptions[1],
            Exception::Anomaly("custody scans out of order".into())
        );
        assert_eq!(review.entries.len(), 2);
        assert_eq!(review.steps.len(), 1);
        assert_eq!(review.steps[0].completed, Some(created + s(2)));
        assert_eq!(
            review.signatures[0].manifestation,
            format!(
                "Rejected by B. Quality (qa.b) on {} UTC",
                signed_at.format("%Y-%m-%d %H:%M:%S")
            )
        );
    }

    fn qc(test: &str, value: f64, retest_of: Option<u64>) -> EventKind {
        EventKind::QcResult {
            test_id: test.into(),
            value: QcValue::Numeric(value),
            unit: "%".into(),
            method: String::new(),
            site_outcome: if value < 70.0 {
                Outcome::OutOfSpecification
            } else {
                Outcome::Pass
            },
            retest_of,
        }
    }

    /// The hub's evaluation rows, as the projection stores them.
    fn evaluated(record: &mut BatchRecord) {
        let recipe = record.recipe.recipe.clone();
        record.qc = record
            .events
            .iter()
            .filter_map(|e| match &e.event.kind {
                EventKind::QcResult {
                    test_id,
                    value,
                    site_outcome,
                    ..
                } => {
                    let evaluation = recipe.test(test_id).expect("test").spec.evaluate(value);
                    Some(crate::model::QcRecord {
                        site_seq: e.event.seq,
                        test_id: test_id.clone(),
                        value: value.clone(),
                        hub_outcome: evaluation.outcome,
                        site_outcome: *site_outcome,
                        reason: evaluation.reason,
                    })
                }
                _ => None,
            })
            .collect();
    }

    #[test]
    fn qc_results_are_grouped_per_test_and_an_unlinked_repeat_is_an_exception() {
        let created = Utc::now();
        let at = |n| created + Duration::seconds(n);
        // Viability fails and is retested (linked); endotoxin's second result names nothing.
        let events = [
            (at(1), at(1), qc("viability", 55.0, None)),
            (at(2), at(2), qc("endotoxin", 0.1, None)),
            (at(3), at(3), qc("viability", 80.0, Some(1))),
            (at(4), at(4), qc("endotoxin", 0.1, None)),
        ];
        let mut record = record(&events, created);
        evaluated(&mut record);
        let review = review(record, false);
        let lines: Vec<(&str, u64, Counts)> = review
            .qc
            .iter()
            .map(|q| (q.test_id.as_str(), q.seq, q.counts))
            .collect();
        assert_eq!(
            lines,
            [
                ("viability", 1, Counts::RetestedBy(3)),
                ("viability", 3, Counts::Reportable),
                ("endotoxin", 2, Counts::Unstated),
                ("endotoxin", 4, Counts::Unstated),
            ],
            "grouped in the recipe's order of tests"
        );
        assert_eq!(review.qc[1].retest_of, Some(1));
        let unlinked: Vec<&Exception> = review
            .exceptions
            .iter()
            .filter(
                |e| matches!(e, Exception::Record(r) if r.what.contains("without a retest link")),
            )
            .collect();
        assert_eq!(unlinked.len(), 1, "{:#?}", review.exceptions);
        let Exception::Record(entry) = unlinked[0] else {
            unreachable!()
        };
        assert_eq!(entry.seq, 4);
        assert!(
            entry.detail.contains("record 2 = 0.1") && entry.detail.contains("record 4 = 0.1"),
            "{}",
            entry.detail
        );
    }

    fn hub_verdict(seq: u64, test: &str, value: f64, outcome: Outcome) -> crate::model::QcRecord {
        crate::model::QcRecord {
            site_seq: seq,
            test_id: test.into(),
            value: QcValue::Numeric(value),
            hub_outcome: outcome,
            site_outcome: outcome,
            reason: String::new(),
        }
    }

    #[test]
    fn an_order_alerts_on_a_counting_out_of_specification_result_and_on_rejection() {
        let created = Utc::now();
        let s = Duration::seconds;
        // Viability 55 % fails, then a retest of it passes: no alert for it. CD3 at
        // 40 % fails and nothing retests it: an alert, with the test's name.
        let events = [
            (created + s(1), created + s(1), qc("viability", 55.0, None)),
            (
                created + s(2),
                created + s(2),
                qc("viability", 82.0, Some(1)),
            ),
            (created + s(3), created + s(3), qc("cd3", 40.0, None)),
        ];
        let mut record = record(&events, created);
        record.qc = vec![
            hub_verdict(1, "viability", 55.0, Outcome::OutOfSpecification),
            hub_verdict(2, "viability", 82.0, Outcome::Pass),
            hub_verdict(3, "cd3", 40.0, Outcome::OutOfSpecification),
        ];
        let alerts = alerts(&record);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert!(
            matches!(&alerts[0], Alert::OutOfSpecification { test, value, infused_at: None, released_at: None, .. }
                if test == "CD3+ T cells" && value == "40 %"),
            "{alerts:#?}"
        );

        record.signatures.push(crate::model::Signature {
            signature_id: Uuid::now_v7(),
            batch_id: record.order.batch_id,
            signer: "qa.a".into(),
            signer_name: "Ann QA".into(),
            meaning: ReleaseMeaning::Rejected,
            record_sha256: String::new(),
            reason: "CD3+ below specification".into(),
            signed_at: created + s(10),
            justifications: Vec::new(),
            outstanding_tests: Vec::new(),
        });
        let alerts = super::alerts(&record);
        assert_eq!(
            alerts[0],
            Alert::Rejected {
                by: "Ann QA (qa.a)".into(),
                at: created + s(10),
                reason: "CD3+ below specification".into()
            }
        );
        assert_eq!(alerts.len(), 2);
    }
}

//! The batch record written out to be kept for decades and checked without the hub.
//!
//! [`build`] writes four files for one batch:
//! - `record.json`: the machine-readable record. Every site event is there as the
//!   exact text the hub stored and hashed (its canonical JSON, as a JSON string: any
//!   JSON parser gives back those bytes exactly, which it would not for an embedded
//!   object), with its SHA-256; so are the record header, the pinned recipe and each
//!   audit entry's hashed text. The document says in words how to recompute every
//!   hash (`hash_method`), so that a short script in any language can.
//! - `record.pdf`: the same record for people ([`pdf`]), A4, searchable text, the
//!   record SHA-256 in every page footer.
//! - `README.txt`: what the files are and how to check them.
//! - `SHA256SUMS`: the SHA-256 of the other three, in the format `sha256sum -c` reads.
//!
//! [`verify`] recomputes everything from the directory alone: the file digests, each
//! event's and audit entry's hash and their chains, the record hash as a whole and
//! as it stood at each signature (a signature binds to the record as the signer
//! saw it, which may be a prefix of the record as exported), the recipe's hash, and
//! that the readable fields (batch, COI, signature manifestations) say what the
//! hashed bytes say. `carrel-hub release verify-export` prints its findings.
//!
//! What the files alone cannot prove: that the hub made them. A forger who rewrites
//! every event and recomputes every hash makes a self-consistent export; against
//! that, compare the signature and audit hashes with the hub's audit trail (whose
//! head the sites witness) or with a copy kept elsewhere.

pub mod pdf;

use crate::model::{BatchRecord, Justification};
use crate::record::{self, RecordHasher};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` of the documents this version writes and reads.
pub const FORMAT: &str = "carrel.batch_record_export.v1";

/// The files of an export, in the order `SHA256SUMS` lists them.
pub const JSON_FILE: &str = "record.json";
pub const PDF_FILE: &str = "record.pdf";
pub const README_FILE: &str = "README.txt";
pub const SUMS_FILE: &str = "SHA256SUMS";

/// How every hash in the document is computed, in words (it travels with the data).
pub const HASH_METHOD: &str = "All hashes are SHA-256 over UTF-8 bytes, written as 64 lowercase hex digits. \
The hashed texts are JSON strings in this document: record_header, recipe, events[i].canonical_json \
and audit[i].canonical_json (each is itself JSON, parse it to read it). \
events[i].sha256 = SHA-256(events[i].canonical_json). The prev_sha256 inside an event's canonical_json \
is the sha256 of the previous event of the same site's log (seq - 1), so consecutive events chain. \
record_sha256 = SHA-256 of record_header, then for each event in order: a newline (0x0A), \
events[i].site_id, a tab (0x09) and events[i].canonical_json. \
A signature's record_sha256 is that same hash over the events its signer saw: the header and the \
first n events, for some n. \
The recipe_sha256 inside record_header = SHA-256(recipe). \
audit[i].sha256 = SHA-256 of audit[i].prev_sha256 (its 64 hex characters) followed by \
audit[i].canonical_json; consecutive positions chain.";

/// `record.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Document {
    pub format: String,
    pub hash_method: String,
    pub exported_at: DateTime<Utc>,
    pub exported_by: String,
    pub batch_id: String,
    pub order_id: String,
    pub coi: String,
    pub patient_pseudonym: String,
    pub site_id: String,
    pub physician: String,
    pub requested_collection_date: String,
    pub product: String,
    pub recipe_id: String,
    pub recipe_version: u32,
    pub state: String,
    /// A dry run of a draft recipe on the hub's simulator site (never released).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The hash of the whole record as exported (header and every event).
    pub record_sha256: String,
    /// The text the record hash starts with: the order's identity and its recipe.
    pub record_header: String,
    /// The recipe the batch was made to, as the hub stored it (canonical JSON).
    pub recipe: String,
    pub events: Vec<ExportedEvent>,
    pub qc: Vec<QcResult>,
    pub signatures: Vec<ExportedSignature>,
    pub change_reviews: Vec<ExportedChangeReview>,
    /// Patient follow-ups opened by a result out of specification after release,
    /// each with QA's signed closure once made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<ExportedFollowUp>,
    pub audit: Vec<ExportedAudit>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportedEvent {
    pub site_id: String,
    pub seq: u64,
    pub sha256: String,
    pub received_at: DateTime<Utc>,
    /// The event as the site recorded and the hub stored and hashed it.
    pub canonical_json: String,
}

/// The hub's evaluation of one QC result against the recipe's specification.
#[derive(Debug, Serialize, Deserialize)]
pub struct QcResult {
    pub seq: u64,
    pub test_id: String,
    pub test_name: String,
    pub result: String,
    pub unit: String,
    pub specification: String,
    pub outcome: String,
    pub site_outcome: String,
    pub counts: String,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportedSignature {
    pub signature_id: String,
    pub meaning: String,
    pub signer: String,
    pub signer_name: String,
    pub signed_at: DateTime<Utc>,
    pub record_sha256: String,
    pub reason: String,
    /// Printed name, date and time, and meaning, as shown wherever it is displayed.
    pub manifestation: String,
    pub justifications: Vec<Justification>,
    /// Released conditionally: the tests (ids) whose results were outstanding;
    /// release completed: those it confirms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outstanding_tests: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportedChangeReview {
    pub review_id: String,
    pub signer: String,
    pub signer_name: String,
    pub signed_at: DateTime<Utc>,
    pub through_seq: u64,
    pub record_sha256: String,
    pub comment: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportedFollowUp {
    /// The site record of the result that opened it.
    pub site_seq: u64,
    pub test_id: String,
    pub opened_at: DateTime<Utc>,
    /// The closure, signed by a QA person; absent while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closure: Option<ExportedFollowUpClosure>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportedFollowUpClosure {
    pub closure_id: String,
    pub signer: String,
    pub signer_name: String,
    pub signed_at: DateTime<Utc>,
    pub outcome: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExportedAudit {
    pub position: u64,
    pub prev_sha256: String,
    pub sha256: String,
    /// The entry's hashed text: position, time, actor, action, object, values, reason.
    pub canonical_json: String,
}

/// The files of one export: (name, bytes), `SHA256SUMS` last.
#[derive(Debug, Clone)]
pub struct Export {
    pub batch_id: uuid::Uuid,
    pub coi: String,
    pub record_sha256: String,
    pub files: Vec<(String, Vec<u8>)>,
}

impl Export {
    /// Writes the files into `dir` (made if missing; files already there are replaced).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, bytes) in &self.files {
            std::fs::write(dir.join(name), bytes)?;
        }
        Ok(())
    }

    /// The files in one zip archive, inside the folder `folder` (for a download).
    pub fn zip(&self, folder: &str) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in &self.files {
            zip.start_file(format!("{folder}/{name}"), options)
                .and_then(|()| zip.write_all(bytes).map_err(Into::into))
                .expect("writing to memory does not fail");
        }
        zip.finish()
            .expect("writing to memory does not fail")
            .into_inner()
    }

    /// A name for the export's folder or archive: the COI, in characters any file
    /// system takes.
    pub fn folder_name(coi: &str) -> String {
        let coi: String = coi
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("batch-record-{coi}")
    }

    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The export of `record`, made by `exported_by` at `now`.
pub fn build(
    record: BatchRecord,
    accept_simulated: bool,
    exported_by: &str,
    now: DateTime<Utc>,
) -> Export {
    let order = record.order.clone();
    let header = record::record_header(&order, &record.recipe.sha256);
    let recipe_json = record.recipe.canonical_json.clone();
    let events = record
        .events
        .iter()
        .map(|stored| {
            let json = stored.event.canonical_json();
            ExportedEvent {
                site_id: stored.site_id.clone(),
                seq: stored.event.seq,
                sha256: carrel_proto::event::body_sha256(&json),
                received_at: stored.received_at,
                canonical_json: json,
            }
        })
        .collect();
    let audit = record
        .audit
        .iter()
        .map(|entry| ExportedAudit {
            position: entry.position,
            prev_sha256: entry.prev_sha256.clone(),
            sha256: entry.sha256.clone(),
            canonical_json: crate::audit::canonical_json(
                entry.position,
                &crate::store::ts(entry.at),
                &entry.fields(),
            ),
        })
        .collect();
    let stored_events = record.events.clone();
    let review = record::review(record, accept_simulated);
    let document = Document {
        format: FORMAT.into(),
        hash_method: HASH_METHOD.into(),
        exported_at: now,
        exported_by: exported_by.into(),
        batch_id: order.batch_id.to_string(),
        order_id: order.order_id.to_string(),
        coi: order.coi.clone(),
        patient_pseudonym: order.patient_pseudonym.clone(),
        site_id: order.site_id.clone(),
        physician: order.physician.clone(),
        requested_collection_date: order.requested_collection_date.clone(),
        product: review.recipe_title.clone(),
        recipe_id: order.recipe_id.clone(),
        recipe_version: order.recipe_version,
        state: order.state.as_str().into(),
        dry_run: order.dry_run,
        record_sha256: review.record_sha256.clone(),
        record_header: header,
        recipe: recipe_json,
        events,
        qc: review
            .qc
            .iter()
            .map(|q| QcResult {
                seq: q.seq,
                test_id: q.test_id.clone(),
                test_name: q.test_name.clone().unwrap_or_default(),
                result: q.value.to_string(),
                unit: q.unit.clone(),
                specification: q.specification.clone(),
                outcome: record::outcome_words(q.hub_outcome).into(),
                site_outcome: record::outcome_words(q.site_outcome).into(),
                counts: match q.counts {
                    record::Counts::Reportable => "reportable".into(),
                    record::Counts::RetestedBy(seq) => format!("retested by record {seq}"),
                    record::Counts::Unstated => "not stated (several results)".into(),
                },
                reason: q.reason.clone(),
            })
            .collect(),
        signatures: review
            .signatures
            .iter()
            .map(|signed| {
                let s = &signed.signature;
                ExportedSignature {
                    signature_id: s.signature_id.to_string(),
                    meaning: s.meaning.as_str().into(),
                    signer: s.signer.clone(),
                    signer_name: s.signer_name.clone(),
                    signed_at: s.signed_at,
                    record_sha256: s.record_sha256.clone(),
                    reason: s.reason.clone(),
                    manifestation: signed.manifestation.clone(),
                    justifications: s.justifications.clone(),
                    outstanding_tests: s.outstanding_tests.clone(),
                }
            })
            .collect(),
        change_reviews: review
            .change_reviews
            .iter()
            .map(|c| ExportedChangeReview {
                review_id: c.review_id.to_string(),
                signer: c.signer.clone(),
                signer_name: c.signer_name.clone(),
                signed_at: c.signed_at,
                through_seq: c.through_seq,
                record_sha256: c.record_sha256.clone(),
                comment: c.comment.clone(),
            })
            .collect(),
        follow_ups: review
            .follow_ups
            .iter()
            .map(|(mark, closure)| ExportedFollowUp {
                site_seq: mark.site_seq,
                test_id: mark.test_id.clone(),
                opened_at: mark.opened_at,
                closure: closure.as_ref().map(|c| ExportedFollowUpClosure {
                    closure_id: c.closure_id.to_string(),
                    signer: c.signer.clone(),
                    signer_name: c.signer_name.clone(),
                    signed_at: c.signed_at,
                    outcome: c.outcome.clone(),
                }),
            })
            .collect(),
        audit,
    };
    let mut json = serde_json::to_vec_pretty(&document).expect("the export document serialises");
    json.push(b'\n');
    let pdf = pdf::render(&review, &document, &stored_events);
    let readme = readme(&document).into_bytes();
    let mut sums = String::new();
    for (name, bytes) in [(JSON_FILE, &json), (PDF_FILE, &pdf), (README_FILE, &readme)] {
        sums.push_str(&format!("{}  {name}\n", sha256_hex(bytes)));
    }
    Export {
        batch_id: order.batch_id,
        coi: order.coi.clone(),
        record_sha256: review.record_sha256,
        files: vec![
            (JSON_FILE.into(), json),
            (PDF_FILE.into(), pdf),
            (README_FILE.into(), readme),
            (SUMS_FILE.into(), sums.into_bytes()),
        ],
    }
}

fn readme(document: &Document) -> String {
    format!(
        "Carrel batch record export\n\
         ==========================\n\n\
         Batch {batch}, COI {coi}, product {product}, site {site}.\n\
         Exported {at} by {by}.\n\
         Record SHA-256 (every event in this export): {sha}\n\n\
         Files\n\
         - {pdf}: the batch record for people (A4, searchable text).\n\
         - {json}: the record for machines: every site event exactly as the hub stored\n  \
           and hashed it, the QC evaluation, the signatures and the batch's audit trail,\n  \
           with \"hash_method\" saying in words how every hash is computed.\n\
         - {sums}: the SHA-256 of the other files (check with `sha256sum -c {sums}`).\n\n\
         Checking it\n\
         `carrel-hub release verify-export DIR` recomputes every hash from {json}\n\
         alone (no hub is needed) and checks each signature against the record as its\n\
         signer saw it. It prints what it checked and exits 0 when all holds, 1 when\n\
         anything does not. Any program that follows \"hash_method\" can do the same.\n\n\
         What the files alone cannot prove is that the hub made them: compare the\n\
         signature and audit hashes with the hub's audit trail or another copy.\n",
        batch = document.batch_id,
        coi = document.coi,
        product = document.product,
        site = document.site_id,
        at = document.exported_at.format("%Y-%m-%d %H:%M:%S UTC"),
        by = document.exported_by,
        sha = document.record_sha256,
        pdf = PDF_FILE,
        json = JSON_FILE,
        sums = SUMS_FILE,
    )
}

/// One thing [`verify`] checked, and whether it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub holds: bool,
    pub what: String,
}

/// What [`verify`] found, in the order it checked.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub findings: Vec<Finding>,
    /// The record hash recomputed from the events, when the document could be read.
    pub record_sha256: Option<String>,
}

impl Verification {
    pub fn intact(&self) -> bool {
        !self.findings.is_empty() && self.findings.iter().all(|f| f.holds)
    }

    fn check(&mut self, holds: bool, what: impl Into<String>) -> bool {
        self.findings.push(Finding {
            holds,
            what: what.into(),
        });
        holds
    }
}

/// Why a directory cannot be checked at all (as opposed to checked and found wrong).
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{dir} has no {JSON_FILE}: is it the directory `release export` wrote?")]
    NoRecord { dir: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Checks the export in `dir` from its files alone.
pub fn verify(dir: &Path) -> Result<Verification, Unreadable> {
    if !dir.is_dir() {
        return Err(Unreadable::NotADirectory(dir.display().to_string()));
    }
    let read = |name: &str| read_file(dir, name);
    let json = read(JSON_FILE)?.ok_or_else(|| Unreadable::NoRecord {
        dir: dir.display().to_string(),
    })?;
    let mut found = Verification::default();
    match read(SUMS_FILE)? {
        Some(sums) => check_sums(&mut found, &sums, dir)?,
        None => {
            found.check(
                true,
                format!("no {SUMS_FILE}: checking {JSON_FILE} alone (the PDF is not checked)"),
            );
        }
    }
    match serde_json::from_slice::<Document>(&json) {
        Ok(document) => check_document(&mut found, &document),
        Err(e) => {
            found.check(
                false,
                format!("{JSON_FILE} is not a readable {FORMAT} document: {e}"),
            );
        }
    }
    Ok(found)
}

/// A file of the export, or `None` when it is not there.
fn read_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, Unreadable> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Unreadable::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn check_sums(found: &mut Verification, sums: &[u8], dir: &Path) -> Result<(), Unreadable> {
    let Ok(sums) = std::str::from_utf8(sums) else {
        found.check(false, format!("{SUMS_FILE} is not text"));
        return Ok(());
    };
    let mut listed = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let Some((digest, name)) = line.split_once("  ") else {
            found.check(
                false,
                format!("{SUMS_FILE}: line {line:?} is not \"DIGEST  FILE\""),
            );
            continue;
        };
        listed.push(name.to_owned());
        // Only names of files beside SHA256SUMS: nothing outside the export is read.
        if name.contains(['/', '\\']) || name.starts_with('.') {
            found.check(
                false,
                format!("{SUMS_FILE} lists {name:?}, which is not a file of the export"),
            );
            continue;
        }
        match read_file(dir, name)? {
            None => {
                found.check(
                    false,
                    format!("{name} is listed in {SUMS_FILE} but missing"),
                );
            }
            Some(bytes) => {
                let actual = sha256_hex(&bytes);
                if actual == digest.to_ascii_lowercase() {
                    found.check(true, format!("{name}: SHA-256 as listed in {SUMS_FILE}"));
                } else {
                    found.check(
                        false,
                        format!("{name} was changed: its SHA-256 is {actual}, {SUMS_FILE} lists {digest}"),
                    );
                }
            }
        }
    }
    if !listed.iter().any(|n| n == JSON_FILE) {
        found.check(false, format!("{SUMS_FILE} does not list {JSON_FILE}"));
    }
    Ok(())
}

/// The record hash after each prefix of the document's events, from the header
/// alone to all of them: (hash, events in the prefix, seq of the last one, 0 for
/// none). A signature binds to one of these.
pub(crate) fn prefix_hashes(d: &Document) -> Vec<(String, usize, u64)> {
    let mut hasher = RecordHasher::new(&d.record_header);
    let mut prefixes = vec![(hasher.hex(), 0, 0)];
    for (i, e) in d.events.iter().enumerate() {
        hasher.add(&e.site_id, &e.canonical_json);
        prefixes.push((hasher.hex(), i + 1, e.seq));
    }
    prefixes
}

/// The record header's fields, as hashed.
#[derive(Deserialize)]
struct Header {
    batch_id: String,
    order_id: String,
    coi: String,
    patient_pseudonym: String,
    site_id: String,
    recipe_id: String,
    recipe_version: u32,
    recipe_sha256: String,
}

/// The fields of an event's hashed bytes that the checks compare.
#[derive(Deserialize)]
struct EventHead {
    seq: u64,
    batch_id: String,
    prev_sha256: String,
}

/// The fields of an audit entry's hashed bytes that the checks compare.
#[derive(Deserialize)]
struct AuditHead {
    position: u64,
    batch_id: Option<String>,
}

fn check_document(found: &mut Verification, d: &Document) {
    found.check(
        d.format == FORMAT,
        if d.format == FORMAT {
            format!("format {FORMAT}")
        } else {
            format!(
                "format {:?} is not {FORMAT}, the one this version reads",
                d.format
            )
        },
    );
    // The readable fields say what the hashed header says.
    match serde_json::from_str::<Header>(&d.record_header) {
        Err(e) => {
            found.check(false, format!("record_header is not a record header: {e}"));
        }
        Ok(h) => {
            let pairs = [
                ("batch_id", &h.batch_id, &d.batch_id),
                ("order_id", &h.order_id, &d.order_id),
                ("coi", &h.coi, &d.coi),
                (
                    "patient_pseudonym",
                    &h.patient_pseudonym,
                    &d.patient_pseudonym,
                ),
                ("site_id", &h.site_id, &d.site_id),
                ("recipe_id", &h.recipe_id, &d.recipe_id),
            ];
            let differ: Vec<String> = pairs
                .iter()
                .filter(|(_, hashed, shown)| hashed != shown)
                .map(|(name, hashed, shown)| format!("{name} {shown:?} (hashed: {hashed:?})"))
                .chain((h.recipe_version != d.recipe_version).then(|| {
                    format!(
                        "recipe_version {} (hashed: {})",
                        d.recipe_version, h.recipe_version
                    )
                }))
                .collect();
            found.check(
                differ.is_empty(),
                if differ.is_empty() {
                    format!(
                        "batch {}, COI {}: as in the hashed record header",
                        d.batch_id, d.coi
                    )
                } else {
                    format!(
                        "the document's fields differ from the hashed header: {}",
                        differ.join(", ")
                    )
                },
            );
            let recipe_sha = sha256_hex(d.recipe.as_bytes());
            found.check(
                recipe_sha == h.recipe_sha256,
                if recipe_sha == h.recipe_sha256 {
                    format!("recipe {} v{}: SHA-256 {recipe_sha} as pinned", h.recipe_id, h.recipe_version)
                } else {
                    format!(
                        "the recipe was changed: it hashes to {recipe_sha}, the record header pins {}",
                        h.recipe_sha256
                    )
                },
            );
        }
    }
    // Each event's hash and its place in its site's log.
    let mut last: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let mut bad_events = Vec::new();
    for (i, e) in d.events.iter().enumerate() {
        let bytes = e.canonical_json.as_str();
        let actual = sha256_hex(bytes.as_bytes());
        let n = i + 1;
        if actual != e.sha256 {
            bad_events.push(format!(
                "event {n} (seq {}) was changed: its bytes hash to {actual}, not the listed {}",
                e.seq, e.sha256
            ));
        }
        match serde_json::from_str::<EventHead>(bytes) {
            Err(err) => bad_events.push(format!("event {n} is not a site event: {err}")),
            Ok(head) => {
                if head.seq != e.seq {
                    bad_events.push(format!(
                        "event {n}: listed as seq {}, its bytes say seq {}",
                        e.seq, head.seq
                    ));
                }
                if head.batch_id != d.batch_id {
                    bad_events.push(format!(
                        "event {n} (seq {}) belongs to batch {}, not this one",
                        e.seq, head.batch_id
                    ));
                }
                if let Some((prev_seq, prev_sha)) = last.get(e.site_id.as_str()) {
                    if head.seq <= *prev_seq {
                        bad_events.push(format!(
                            "event {n}: seq {} of site {} does not follow seq {prev_seq}",
                            head.seq, e.site_id
                        ));
                    } else if head.seq == prev_seq + 1 && head.prev_sha256 != *prev_sha {
                        bad_events.push(format!("event {n} (seq {}) does not chain to seq {prev_seq}: an event was replaced", head.seq));
                    }
                }
                last.insert(&e.site_id, (head.seq, &e.sha256));
            }
        }
    }
    let total = d.events.len();
    let prefixes = prefix_hashes(d);
    found.check(
        bad_events.is_empty(),
        if bad_events.is_empty() {
            format!(
                "{total} site events: each hashes to its listed SHA-256; consecutive ones chain"
            )
        } else {
            bad_events.join("; ")
        },
    );
    let recomputed = prefixes
        .last()
        .map(|(hash, _, _)| hash.clone())
        .unwrap_or_default();
    found.check(
        recomputed == d.record_sha256,
        if recomputed == d.record_sha256 {
            format!("record SHA-256 {recomputed}: recomputed from the header and {total} events")
        } else {
            format!(
                "the record was changed: it hashes to {recomputed}, the document states {}",
                d.record_sha256
            )
        },
    );
    found.record_sha256 = Some(recomputed);
    let covered = |sha: &str| prefixes.iter().find(|(h, _, _)| h == sha);
    for s in &d.signatures {
        let meaning = carrel_proto::event::ReleaseMeaning::parse(&s.meaning);
        let shown =
            meaning.map(|m| record::manifestation(&s.signer_name, &s.signer, m, s.signed_at));
        if shown.as_deref() != Some(s.manifestation.as_str()) {
            found.check(
                false,
                format!(
                    "signature {}: its manifestation {:?} does not say what its fields say (meaning {:?}, signer {}, at {})",
                    s.signature_id, s.manifestation, s.meaning, s.signer_name, s.signed_at
                ),
            );
            continue;
        }
        match covered(&s.record_sha256) {
            Some((_, n, seq)) => found.check(
                true,
                format!(
                    "signature \"{}\": binds to this record as it stood at its first {n} of {total} events (through seq {seq})",
                    s.manifestation
                ),
            ),
            None => found.check(
                false,
                format!(
                    "signature \"{}\" binds to record {}, which is not this record at any point: the events were changed",
                    s.manifestation, s.record_sha256
                ),
            ),
        };
    }
    for f in &d.follow_ups {
        let present = d.events.iter().any(|e| e.seq == f.site_seq);
        found.check(
            present,
            format!(
                "patient follow-up of {} points at site record {}, which is {}in this record",
                f.test_id,
                f.site_seq,
                if present { "" } else { "not " }
            ),
        );
    }
    for c in &d.change_reviews {
        match covered(&c.record_sha256) {
            Some((_, n, _)) => found.check(
                true,
                format!(
                    "review of changes by {} ({}) through seq {}: binds to this record at its first {n} events",
                    c.signer_name, c.signer, c.through_seq
                ),
            ),
            None => found.check(
                false,
                format!(
                    "review of changes by {} binds to record {}, which is not this record at any point",
                    c.signer_name, c.record_sha256
                ),
            ),
        };
    }
    // The audit trail of the batch: a subsequence of the hub's chain.
    let mut bad_audit = Vec::new();
    let mut previous: Option<&ExportedAudit> = None;
    for a in &d.audit {
        let actual = crate::audit::chained_sha256(&a.prev_sha256, &a.canonical_json);
        if actual != a.sha256 {
            bad_audit.push(format!(
                "audit entry {} was changed: it hashes to {actual}, not the listed {}",
                a.position, a.sha256
            ));
        }
        match serde_json::from_str::<AuditHead>(&a.canonical_json) {
            Err(e) => bad_audit.push(format!(
                "audit entry {} is not an audit entry: {e}",
                a.position
            )),
            Ok(head) => {
                if head.position != a.position {
                    bad_audit.push(format!(
                        "audit entry listed as {} says position {}",
                        a.position, head.position
                    ));
                }
                if head.batch_id.as_deref() != Some(d.batch_id.as_str()) {
                    bad_audit.push(format!(
                        "audit entry {} is not about this batch",
                        a.position
                    ));
                }
            }
        }
        if let Some(p) = previous {
            if a.position <= p.position {
                bad_audit.push(format!(
                    "audit entry {} does not follow entry {}",
                    a.position, p.position
                ));
            } else if a.position == p.position + 1 && a.prev_sha256 != p.sha256 {
                bad_audit.push(format!(
                    "audit entry {} does not chain to entry {}",
                    a.position, p.position
                ));
            }
        }
        previous = Some(a);
    }
    found.check(
        bad_audit.is_empty(),
        if bad_audit.is_empty() {
            format!(
                "{} audit entries: each hashes to its listed SHA-256; consecutive ones chain",
                d.audit.len()
            )
        } else {
            bad_audit.join("; ")
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, NewEntry, Object};
    use crate::model::{BatchState, Order, Progress, Signature, StoredEvent, StoredRecipe};
    use carrel_proto::event::{EventKind, Identity, ReleaseMeaning, Sample, SiteEvent};
    use carrel_proto::recipe::{Outcome, QcValue, Recipe};
    use chrono::{Duration, TimeZone};
    use uuid::Uuid;

    /// A released batch: a chained site log with samples, a QC result, a deviation
    /// and a correction; a release signed before one more record arrived; its audit
    /// trail as a chain.
    fn released() -> BatchRecord {
        let batch_id = Uuid::now_v7();
        let recipe = Recipe::from_toml(crate::server::SHIPPED_RECIPES[0].1).expect("recipe");
        let t0 = Utc
            .with_ymd_and_hms(2026, 11, 2, 8, 0, 0)
            .single()
            .expect("a time");
        let mut kinds = vec![EventKind::StepStarted {
            step_id: "expansion".into(),
            instrument_id: "cps-1".into(),
            resumed: false,
        }];
        for h in 0..24 {
            kinds.push(EventKind::ProcessSamples {
                step_id: "expansion".into(),
                samples: vec![Sample {
                    step_hours: h as f64,
                    parameter: "temperature".into(),
                    value: 37.0 + (h as f64 / 5.0).sin() * 0.3,
                    unit: "degC".into(),
                }],
            });
        }
        kinds.push(EventKind::DeviationRaised {
            deviation_id: "DEV-7".into(),
            step_id: "expansion".into(),
            description: "Incubator door opened for 40 s during a sample draw".into(),
            classification: "minor".into(),
        });
        kinds.push(EventKind::QcResult {
            test_id: "viability".into(),
            value: QcValue::Numeric(91.5),
            unit: "%".into(),
            method: "automated cell counter".into(),
            site_outcome: Outcome::Pass,
            retest_of: None,
        });
        kinds.push(EventKind::Correction {
            corrects_seq: 26,
            reason: "typed into the wrong field".into(),
            field: "description".into(),
            new_value: "Incubator door opened for 40 s during sampling".into(),
        });
        kinds.push(EventKind::StepCompleted {
            step_id: "expansion".into(),
            process_hours: 24.0,
        });
        let mut prev = carrel_proto::event::GENESIS_SHA256.to_owned();
        let events: Vec<StoredEvent> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let event = SiteEvent {
                    seq: i as u64 + 1,
                    event_id: Uuid::now_v7(),
                    recorded_at: t0 + Duration::hours(i as i64),
                    batch_id,
                    recorded_by: "agent".into(),
                    identity: Identity::Agent,
                    prev_sha256: prev.clone(),
                    kind,
                };
                prev = event.sha256();
                StoredEvent {
                    site_id: "site-a".into(),
                    received_at: event.recorded_at,
                    event,
                }
            })
            .collect();
        let order = Order {
            order_id: Uuid::now_v7(),
            batch_id,
            coi: "G123426000001X".into(),
            patient_pseudonym: "P-1".into(),
            recipe_id: recipe.id.clone(),
            recipe_version: recipe.version,
            site_id: "site-a".into(),
            requested_collection_date: "2026-11-01".into(),
            physician: "dr.a".into(),
            created_at: t0,
            state: BatchState::Released,
            current_step: None,
            progress: Progress::default(),
            decision_recorded: true,
            updated_at: t0,
            dry_run: false,
        };
        // QA signed the record as it stood before its last event.
        let signed_sha =
            crate::record::record_sha256(&order, &recipe.sha256(), &events[..events.len() - 1]);
        let signed_at = t0 + Duration::days(2);
        let mut audit = Vec::new();
        let mut prev = crate::audit::GENESIS.to_owned();
        for (i, action) in [Action::OrderCreated, Action::ReleaseSigned]
            .into_iter()
            .enumerate()
        {
            let at = t0 + Duration::hours(i as i64);
            let fields = NewEntry::new("qa.lee", action, Object::Batch(batch_id)).batch(batch_id);
            let position = 10 + i as u64;
            let sha = crate::audit::entry_sha256(&prev, position, &crate::store::ts(at), &fields);
            audit.push(crate::audit::Entry {
                position,
                at,
                actor: fields.actor.clone(),
                action,
                object: fields.object.clone(),
                batch_id: Some(batch_id),
                old_value: String::new(),
                new_value: String::new(),
                reason: String::new(),
                prev_sha256: prev.clone(),
                sha256: sha.clone(),
            });
            prev = sha;
        }
        BatchRecord {
            order,
            recipe: StoredRecipe {
                sha256: recipe.sha256(),
                canonical_json: recipe.to_canonical_json(),
                recipe,
            },
            events,
            qc: Vec::new(),
            signatures: vec![Signature {
                signature_id: Uuid::now_v7(),
                batch_id,
                signer: "qa.lee".into(),
                signer_name: "Lee Quinn".into(),
                meaning: ReleaseMeaning::Released,
                record_sha256: signed_sha,
                reason: String::new(),
                signed_at,
                justifications: Vec::new(),
                outstanding_tests: Vec::new(),
            }],
            change_reviews: Vec::new(),
            follow_up_closures: Vec::new(),
            audit,
            directory: Vec::new(),
        }
    }

    fn exported() -> (tempfile::TempDir, Export) {
        let export = build(released(), false, "Lee Quinn (qa.lee)", Utc::now());
        let dir = tempfile::tempdir().expect("temp dir");
        export.write_to(dir.path()).expect("written");
        (dir, export)
    }

    fn failures(dir: &Path) -> Vec<String> {
        verify(dir)
            .expect("readable")
            .findings
            .into_iter()
            .filter(|f| !f.holds)
            .map(|f| f.what)
            .collect()
    }

    fn assert_found(failed: &[String], what: &str) {
        assert!(
            failed.iter().any(|f| f.contains(what)),
            "{what:?} not among {failed:#?}"
        );
    }

    fn edit_json(dir: &Path, from: &str, to: &str) {
        let path = dir.join(JSON_FILE);
        let text = std::fs::read_to_string(&path).expect("the test export");
        assert!(text.contains(from), "{from:?} is in the export");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("the test export");
    }

    #[test]
    fn an_export_verifies_and_binds_the_signature_to_the_record_it_signed() {
        let (dir, export) = exported();
        let found = verify(dir.path()).expect("readable");
        assert!(found.intact(), "{:#?}", found.findings);
        assert_eq!(
            found.record_sha256.as_deref(),
            Some(export.record_sha256.as_str())
        );
        let signature = found
            .findings
            .iter()
            .find(|f| f.what.starts_with("signature"))
            .expect("the signature is checked");
        assert!(
            signature.what.contains("first 28 of 29 events"),
            "{}",
            signature.what
        );
        // The events are embedded as stored: their bytes hash to the stored hashes.
        let document: Document =
            serde_json::from_slice(export.file(JSON_FILE).expect("the test export"))
                .expect("the test export");
        let record = released();
        assert_eq!(document.events.len(), record.events.len());
        assert_eq!(document.audit.len(), 2);
        assert_eq!(
            document.signatures[0].manifestation,
            crate::record::manifestation(
                "Lee Quinn",
                "qa.lee",
                ReleaseMeaning::Released,
                record.signatures[0].signed_at
            )
        );
        // sha256sum -c reads SHA256SUMS.
        let sums = String::from_utf8(export.file(SUMS_FILE).expect("the test export").to_vec())
            .expect("the test export");
        assert_eq!(sums.lines().count(), 3);
        assert!(sums.contains(&format!("  {PDF_FILE}")));
        assert!(export
            .file(PDF_FILE)
            .expect("the test export")
            .starts_with(b"%PDF-"));
    }

    #[test]
    fn any_changed_byte_is_found() {
        let (dir, _) = exported();
        // One digit of one reading.
        let text = std::fs::read_to_string(dir.path().join(JSON_FILE)).expect("the test export");
        let at = text.find("\\\"value\\\":3").expect("a reading") + "\\\"value\\\":3".len();
        let mut bytes = text.into_bytes();
        bytes[at] = if bytes[at] == b'6' { b'7' } else { b'6' };
        std::fs::write(dir.path().join(JSON_FILE), &bytes).expect("the test export");
        let failed = failures(dir.path());
        assert_found(&failed, "record.json was changed");
        // Without SHA256SUMS the record's own hashes find it.
        std::fs::remove_file(dir.path().join(SUMS_FILE)).expect("the test export");
        let failed = failures(dir.path());
        assert_found(&failed, "was changed: its bytes hash to");
        assert_found(&failed, "the record was changed");
        assert_found(&failed, "not this record at any point");
    }

    #[test]
    fn a_forger_who_rehashes_an_event_still_breaks_the_record_and_the_signature() {
        let (dir, _) = exported();
        std::fs::remove_file(dir.path().join(SUMS_FILE)).expect("the test export");
        let path = dir.path().join(JSON_FILE);
        let text = std::fs::read_to_string(&path).expect("the test export");
        let document: Document = serde_json::from_str(&text).expect("the test export");
        // Rewrite the deviation's classification, and its listed hash to match.
        let deviation = document
            .events
            .iter()
            .find(|e| e.canonical_json.contains("deviation_raised"))
            .expect("the test export");
        let forged = deviation.canonical_json.replace("\"minor\"", "\"none\"");
        // The text as it is written in the file: a JSON string.
        let quoted = |s: &str| serde_json::to_string(s).expect("the test export");
        let text = text
            .replacen(&quoted(&deviation.canonical_json), &quoted(&forged), 1)
            .replacen(
                &deviation.sha256,
                &carrel_proto::event::body_sha256(&forged),
                1,
            );
        std::fs::write(&path, text).expect("the test export");
        let failed = failures(dir.path());
        // Its own hash now holds; the next event's link, the record hash and the
        // signature do not.
        assert!(
            !failed.iter().any(|f| f.contains("its bytes hash to")),
            "{failed:#?}"
        );
        assert_found(&failed, "(seq 27) does not chain to seq 26");
        assert_found(&failed, "the record was changed");
        assert_found(&failed, "not this record at any point");
        assert_eq!(failed.len(), 3, "{failed:#?}");
    }

    #[test]
    fn a_changed_manifestation_or_audit_entry_is_found() {
        let (dir, _) = exported();
        std::fs::remove_file(dir.path().join(SUMS_FILE)).expect("the test export");
        edit_json(dir.path(), "Released by Lee Quinn", "Released by Kim Quinn");
        edit_json(
            dir.path(),
            "\\\"actor\\\":\\\"qa.lee\\\"",
            "\\\"actor\\\":\\\"qa.kim\\\"",
        );
        let failed = failures(dir.path());
        assert_found(&failed, "manifestation");
        assert_found(&failed, "audit entry 10 was changed");
        assert_eq!(failed.len(), 2, "{failed:#?}");
    }

    #[test]
    fn a_directory_without_a_record_cannot_be_checked() {
        let dir = tempfile::tempdir().expect("the test export");
        assert!(matches!(
            verify(dir.path()),
            Err(Unreadable::NoRecord { .. })
        ));
        assert!(matches!(
            verify(&dir.path().join("missing")),
            Err(Unreadable::NotADirectory(_))
        ));
    }

    #[test]
    fn an_unreadable_document_is_a_failure_not_a_pass() {
        let (dir, _) = exported();
        std::fs::remove_file(dir.path().join(SUMS_FILE)).expect("the test export");
        std::fs::write(dir.path().join(JSON_FILE), b"{\"format\":").expect("the test export");
        let found = verify(dir.path()).expect("the test export");
        assert!(!found.intact());
    }
}

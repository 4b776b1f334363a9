//! The batch record as a PDF for people: A4, text that can be searched and copied,
//! the record SHA-256 in every page's footer.
//!
//! Written with `pdf-writer` (the low-level writer of the Typst project) and the
//! PDF standard fonts, so nothing is embedded and every reader shows the same text:
//! Courier for the record (a fixed width makes lines wrap exactly and columns line
//! up), Helvetica-Bold for headings, both in WinAnsiEncoding. The layout is a simple
//! flow: sections one after another, a new page when the next block does not fit.
//!
//! The process readings are drawn as one chart per parameter and step (values over
//! hours in the step, the recipe's range dashed) with their count, minimum, maximum
//! and mean; each reading itself is in `record.json`, so the list of entries leaves
//! out the process-sample records and says how many there were.

use super::Document;
use crate::model::StoredEvent;
use crate::record::{Counts, Exception, ParameterSeries, Review, Signed};
use carrel_proto::event::EventKind;
use chrono::{DateTime, Datelike, Timelike, Utc};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const LEFT: f32 = 50.0;
const RIGHT: f32 = PAGE_W - 50.0;
const TOP: f32 = PAGE_H - 62.0;
/// Text stops above this; the footer lives below it.
const BOTTOM: f32 = 64.0;

const BODY_SIZE: f32 = 8.5;
const LEADING: f32 = 10.6;
/// Courier's glyphs are all 600/1000 em wide.
const COURIER_EM: f32 = 0.6;

const COURIER: Name = Name(b"F1");
const HELVETICA_BOLD: Name = Name(b"F2");

/// Characters of Courier at `size` that fit between the margins, less `indent` points.
fn columns(size: f32, indent: f32) -> usize {
    ((RIGHT - LEFT - indent) / (size * COURIER_EM)).floor() as usize
}

/// Text in WinAnsiEncoding (the standard fonts' encoding): Latin-1 and the usual
/// typographic marks; anything else becomes '?'.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            '\u{a0}'..='\u{ff}' => c as u32 as u8,
            '\t' | '\n' | '\r' => b' ',
            '€' => 0x80,
            '‚' => 0x82,
            '„' => 0x84,
            '…' => 0x85,
            '†' => 0x86,
            '‡' => 0x87,
            '‰' => 0x89,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '™' => 0x99,
            '−' => b'-',
            _ => b'?',
        })
        .collect()
}

/// `text` broken into lines of at most `width` characters, at spaces where it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            let mut word = word.to_owned();
            loop {
                let need = if line.is_empty() {
                    word.chars().count()
                } else {
                    line.chars().count() + 1 + word.chars().count()
                };
                if need <= width {
                    if !line.is_empty() {
                        line.push(' ');
                    }
                    line.push_str(&word);
                    break;
                }
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                    continue;
                }
                // A word longer than the line: cut it.
                let cut: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                lines.push(cut);
                if word.is_empty() {
                    break;
                }
            }
        }
        lines.push(line);
    }
    lines
}

fn utc(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Pages being laid out, top to bottom.
struct Layout {
    pages: Vec<Content>,
    y: f32,
}

impl Layout {
    fn new() -> Layout {
        let mut layout = Layout {
            pages: Vec::new(),
            y: 0.0,
        };
        layout.new_page();
        layout
    }

    fn new_page(&mut self) {
        self.pages.push(Content::new());
        self.y = TOP;
    }

    fn page(&mut self) -> &mut Content {
        self.pages.last_mut().expect("a page")
    }

    /// Starts a new page unless `height` points fit above the bottom margin.
    fn need(&mut self, height: f32) {
        if self.y - height < BOTTOM {
            self.new_page();
        }
    }

    fn text_at(&mut self, font: Name, size: f32, x: f32, y: f32, text: &str) {
        let bytes = win_ansi(text);
        let page = self.page();
        page.begin_text();
        page.set_font(font, size);
        page.next_line(x, y);
        page.show(Str(&bytes));
        page.end_text();
    }

    fn title(&mut self, text: &str) {
        self.need(24.0);
        self.y -= 16.0;
        let y = self.y;
        self.text_at(HELVETICA_BOLD, 16.0, LEFT, y, text);
        self.y -= 8.0;
    }

    fn heading(&mut self, text: &str) {
        // A heading never ends a page: keep room for it and two lines after it.
        self.need(20.0 + 3.0 * LEADING);
        self.y -= 16.0;
        let y = self.y;
        self.text_at(HELVETICA_BOLD, 11.5, LEFT, y, text);
        let page = self.page();
        page.set_line_width(0.5);
        page.move_to(LEFT, y - 3.0);
        page.line_to(RIGHT, y - 3.0);
        page.stroke();
        self.y -= 8.0;
    }

    fn subheading(&mut self, text: &str) {
        self.need(12.0 + 2.0 * LEADING);
        self.y -= 12.0;
        let y = self.y;
        self.text_at(HELVETICA_BOLD, 9.0, LEFT, y, text);
        self.y -= 3.0;
    }

    /// Body text, wrapped, with continuation lines indented by `hang` characters.
    fn para_indented(&mut self, indent: usize, hang: usize, text: &str) {
        let x = LEFT + indent as f32 * BODY_SIZE * COURIER_EM;
        let first_width = columns(BODY_SIZE, x - LEFT);
        let lines = wrap(text, first_width);
        let mut rest = Vec::new();
        // Re-wrap what follows the first line at the hanging indent.
        if lines.len() > 1 && hang > 0 {
            let tail = lines[1..].join(" ");
            rest = wrap(&tail, first_width.saturating_sub(hang));
        } else if lines.len() > 1 {
            rest = lines[1..].to_vec();
        }
        let first = lines.into_iter().next().unwrap_or_default();
        for (i, line) in std::iter::once(first).chain(rest).enumerate() {
            self.need(LEADING);
            self.y -= LEADING;
            let y = self.y;
            let dx = if i == 0 {
                0.0
            } else {
                hang as f32 * BODY_SIZE * COURIER_EM
            };
            self.text_at(COURIER, BODY_SIZE, x + dx, y, &line);
        }
    }

    fn para(&mut self, text: &str) {
        self.para_indented(0, 0, text);
    }

    /// "label: value" lines, values aligned after the longest label.
    fn fields(&mut self, fields: &[(&str, String)]) {
        let width = fields.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
        for (label, value) in fields {
            let text = format!("{:<width$}{value}", format!("{label}:"));
            self.para_indented(0, width, &text);
        }
    }

    fn gap(&mut self, points: f32) {
        self.y -= points;
    }

    /// One process parameter over a step: values by hours in the step, the recipe's
    /// normal range dashed, axis bounds written at the corners.
    fn chart(&mut self, series: &ParameterSeries) {
        const HEIGHT: f32 = 96.0;
        let values: Vec<f64> = series.points.iter().map(|p| p.1).collect();
        let n = values.len();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let outside = series
            .range
            .map(|(lo, hi)| values.iter().filter(|v| **v < lo || **v > hi).count());
        let unit = if series.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", carrel_proto::recipe::unit_words(&series.unit))
        };
        let mut summary = format!(
            "{} ({}): {n} readings, min {min:.2}, max {max:.2}, mean {mean:.2}{unit}",
            series.label, series.parameter
        );
        match (series.range, outside) {
            (Some((lo, hi)), Some(out)) => {
                summary.push_str(&format!("; range {lo}-{hi}{unit}, {out} outside"))
            }
            _ => summary.push_str("; the recipe gives no range"),
        }
        self.need(HEIGHT + 3.0 * LEADING + 12.0);
        self.para(&summary);
        if n == 0 {
            return;
        }
        self.y -= 6.0;
        let (x0, x1) = (LEFT + 40.0, RIGHT - 8.0);
        let (y1, y0) = (self.y, self.y - HEIGHT);
        let t_max = series
            .points
            .iter()
            .map(|p| p.0)
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        let (mut lo, mut hi) = (min, max);
        if let Some((a, b)) = series.range {
            lo = lo.min(a);
            hi = hi.max(b);
        }
        if (hi - lo).abs() < 1e-9 {
            lo -= 1.0;
            hi += 1.0;
        }
        let pad = (hi - lo) * 0.08;
        let (lo, hi) = (lo - pad, hi + pad);
        let px = |t: f64| x0 + ((t / t_max) as f32) * (x1 - x0);
        let py = |v: f64| y0 + (((v - lo) / (hi - lo)) as f32) * (y1 - y0);
        {
            let page = self.page();
            page.save_state();
            page.set_line_width(0.4);
            page.set_stroke_gray(0.4);
            page.rect(x0, y0, x1 - x0, y1 - y0);
            page.stroke();
            if let Some((a, b)) = series.range {
                page.set_dash_pattern([3.0, 2.0], 0.0);
                page.set_stroke_rgb(0.1, 0.55, 0.2);
                for v in [a, b] {
                    page.move_to(x0, py(v));
                    page.line_to(x1, py(v));
                }
                page.stroke();
                page.set_dash_pattern([], 0.0);
            }
            page.set_stroke_rgb(0.1, 0.25, 0.7);
            page.set_line_width(0.8);
            for (i, (t, v)) in series.points.iter().enumerate() {
                if i == 0 {
                    page.move_to(px(*t), py(*v));
                } else {
                    page.line_to(px(*t), py(*v));
                }
            }
            page.stroke();
            // Each reading marked, while there are few enough to tell apart.
            if n <= 60 {
                page.set_fill_rgb(0.1, 0.25, 0.7);
                for (t, v) in &series.points {
                    page.rect(px(*t) - 1.2, py(*v) - 1.2, 2.4, 2.4);
                }
                page.fill_nonzero();
            }
            page.restore_state();
        }
        let small = 6.5;
        self.text_at(COURIER, small, LEFT, y1 - small, &format!("{hi:.1}"));
        self.text_at(COURIER, small, LEFT, y0, &format!("{lo:.1}"));
        self.text_at(COURIER, small, x0, y0 - 8.0, "0 h");
        let end = format!("{t_max:.1} h in step");
        let x_end = x1 - end.len() as f32 * small * COURIER_EM;
        self.text_at(COURIER, small, x_end, y0 - 8.0, &end);
        self.y = y0 - 12.0;
    }

    /// The PDF: every page with its header and footer ("page i of n" needs the count).
    fn finish(self, document: &Document) -> Vec<u8> {
        let count = self.pages.len();
        let catalog = Ref::new(1);
        let tree = Ref::new(2);
        let courier = Ref::new(3);
        let helvetica = Ref::new(4);
        let info = Ref::new(5);
        let first_page = 6;
        let page_ref = |i: usize| Ref::new((first_page + 2 * i) as i32);
        let content_ref = |i: usize| Ref::new((first_page + 2 * i + 1) as i32);

        let mut pdf = Pdf::new();
        pdf.catalog(catalog).pages(tree);
        pdf.pages(tree)
            .kids((0..count).map(page_ref))
            .count(count as i32);
        pdf.type1_font(courier)
            .base_font(Name(b"Courier"))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
        pdf.type1_font(helvetica)
            .base_font(Name(b"Helvetica-Bold"))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
        let title = format!("Batch record {} ({})", document.coi, document.product);
        let at = document.exported_at;
        pdf.document_info(info)
            .title(TextStr(&title))
            .subject(TextStr(&format!(
                "Record SHA-256 {}",
                document.record_sha256
            )))
            .creator(TextStr("Carrel hub"))
            .producer(TextStr(concat!("carrel-hub ", env!("CARGO_PKG_VERSION"))))
            .creation_date(
                pdf_writer::Date::new(at.year() as u16)
                    .month(at.month() as u8)
                    .day(at.day() as u8)
                    .hour(at.hour() as u8)
                    .minute(at.minute() as u8)
                    .second(at.second() as u8)
                    .utc_offset_hour(0)
                    .utc_offset_minute(0),
            );
        for (i, mut content) in self.pages.into_iter().enumerate() {
            let header = format!(
                "Carrel batch record - {} - COI {}",
                document.product, document.coi
            );
            let line1 = format!(
                "Batch {}  exported {}",
                document.batch_id,
                utc(document.exported_at)
            );
            let line2 = format!("Record SHA-256 {}", document.record_sha256);
            let page_no = format!("page {} of {count}", i + 1);
            for (font, size, x, y, text) in [
                (COURIER, 7.0, LEFT, PAGE_H - 40.0, header.as_str()),
                (COURIER, 7.0, LEFT, 40.0, line1.as_str()),
                (COURIER, 7.0, LEFT, 30.0, line2.as_str()),
                (
                    COURIER,
                    7.0,
                    RIGHT - page_no.len() as f32 * 7.0 * COURIER_EM,
                    40.0,
                    page_no.as_str(),
                ),
            ] {
                let bytes = win_ansi(text);
                content.begin_text();
                content.set_font(font, size);
                content.next_line(x, y);
                content.show(Str(&bytes));
                content.end_text();
            }
            content.set_line_width(0.4);
            content.move_to(LEFT, 50.0);
            content.line_to(RIGHT, 50.0);
            content.stroke();
            let mut page = pdf.page(page_ref(i));
            page.parent(tree)
                .media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H))
                .contents(content_ref(i));
            page.resources()
                .fonts()
                .pair(COURIER, courier)
                .pair(HELVETICA_BOLD, helvetica);
            page.finish();
            pdf.stream(content_ref(i), content.finish().as_slice());
        }
        pdf.finish()
    }
}

/// The PDF of the batch record as `review` shows it, with `events` as stored.
pub fn render(review: &Review, document: &Document, events: &[StoredEvent]) -> Vec<u8> {
    let mut l = Layout::new();
    let order = &review.order;
    l.title("Batch record");
    l.para(&format!(
        "{} (recipe {} version {})",
        review.recipe_title, order.recipe_id, order.recipe_version
    ));
    if order.dry_run {
        l.para(
            "DRY RUN of a draft recipe on the hub's simulator site: no patient; every record \
             is the simulator's. Never released.",
        );
    }
    l.gap(4.0);

    l.heading("Order and chain of identity");
    l.fields(&[
        ("Chain of identity (COI)", order.coi.clone()),
        ("Patient pseudonym", order.patient_pseudonym.clone()),
        ("Batch", order.batch_id.to_string()),
        ("Order", order.order_id.to_string()),
        ("Site", order.site_id.clone()),
        ("Ordering physician", order.physician.clone()),
        ("Ordered", utc(order.created_at)),
        (
            "Requested collection date",
            order.requested_collection_date.clone(),
        ),
        ("State", order.state.as_str().replace('_', " ")),
        (
            "Recipe SHA-256",
            serde_json::from_str::<serde_json::Value>(&document.record_header)
                .ok()
                .and_then(|h| h["recipe_sha256"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        ),
        ("Record SHA-256", review.record_sha256.clone()),
        (
            "Exported",
            format!("{} by {}", utc(document.exported_at), document.exported_by),
        ),
    ]);

    l.heading("Release signatures");
    if review.signatures.is_empty() {
        l.para("No release decision has been signed.");
    }
    let prefixes = super::prefix_hashes(document);
    for Signed {
        signature,
        manifestation,
    } in &review.signatures
    {
        l.subheading(manifestation);
        let covers = prefix_covering(&prefixes, document.events.len(), &signature.record_sha256);
        l.fields(&[
            (
                "Printed name",
                format!("{} ({})", signature.signer_name, signature.signer),
            ),
            ("Date and time", utc(signature.signed_at)),
            ("Meaning", signature.meaning.words().to_owned()),
            ("Signed record SHA-256", signature.record_sha256.clone()),
            ("Covers", covers),
        ]);
        if !signature.reason.is_empty() {
            l.fields(&[("Reason", signature.reason.clone())]);
        }
        for j in &signature.justifications {
            l.para_indented(2, 2, &format!("Exception: {}", j.exception));
            l.para_indented(2, 2, &format!("Justification: {}", j.justification));
        }
    }
    for c in &review.change_reviews {
        l.subheading(&format!(
            "Review of records after the decision by {} ({}) on {}",
            c.signer_name,
            c.signer,
            utc(c.signed_at)
        ));
        l.fields(&[
            ("Through site record", c.through_seq.to_string()),
            ("Signed record SHA-256", c.record_sha256.clone()),
            ("Comment", c.comment.clone()),
        ]);
    }
    for (mark, closure) in &review.follow_ups {
        l.subheading(&format!(
            "Patient follow-up: {} out of specification after release (site record {}, {})",
            review
                .test_names
                .get(&mark.test_id)
                .map_or(mark.test_id.as_str(), String::as_str),
            mark.site_seq,
            utc(mark.opened_at)
        ));
        match closure {
            Some(c) => l.fields(&[
                (
                    "Closed by",
                    format!("{} ({}) on {}", c.signer_name, c.signer, utc(c.signed_at)),
                ),
                ("Outcome", c.outcome.clone()),
            ]),
            None => l.fields(&[("Closed", "no: open at export".to_owned())]),
        }
    }
    if !review.changed_after_decision.is_empty() {
        l.subheading("Records after the decision, not yet reviewed by QA");
        for e in &review.changed_after_decision {
            entry_line(&mut l, e);
        }
    }

    l.heading(&format!("Exceptions ({})", review.exceptions.len()));
    if review.exceptions.is_empty() {
        l.para("None: no alarm, deviation, out-of-specification result, correction or hub check finding.");
    }
    for e in &review.exceptions {
        match e {
            Exception::Record(entry) => entry_line(&mut l, entry),
            Exception::Anomaly(text) => l.para_indented(0, 2, &format!("hub check: {text}")),
        }
    }

    l.heading("Quality control against specification");
    if review.qc.is_empty() {
        l.para("No QC result recorded.");
    }
    for q in &review.qc {
        let name = q.test_name.clone().unwrap_or_else(|| q.test_id.clone());
        let method = q
            .method
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        let counts = match q.counts {
            Counts::Reportable => "reportable".to_owned(),
            Counts::RetestedBy(seq) => format!("retested by record {seq}"),
            Counts::Unstated => "several results, which counts is not stated".to_owned(),
        };
        let unit = if q.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", q.unit)
        };
        let verdict = |o| match o {
            carrel_proto::recipe::Outcome::Pass => "pass",
            carrel_proto::recipe::Outcome::OutOfSpecification => "OUT OF SPECIFICATION",
        };
        let retest = q
            .retest_of
            .map(|of| format!(", retest of record {of}"))
            .unwrap_or_default();
        l.para_indented(0, 4, &format!("{name}{method}, record {}{retest}", q.seq));
        l.para_indented(
            4,
            4,
            &format!(
                "{}{unit} against {}: hub {}, site {}; {counts}",
                q.value,
                q.specification,
                verdict(q.hub_outcome),
                verdict(q.site_outcome)
            ),
        );
        if !q.reason.is_empty() {
            l.para_indented(4, 4, &format!("Why: {}", q.reason));
        }
    }

    l.heading("Process steps and readings");
    if review.steps.is_empty() {
        l.para("No step has started.");
    }
    for step in &review.steps {
        let completed = match step.completed {
            Some(done) => format!(
                "completed {} ({:.1} h)",
                utc(done),
                (done - step.started).num_seconds() as f64 / 3600.0
            ),
            None => "not completed".to_owned(),
        };
        l.subheading(&format!("{} ({})", step.name, step.step_id));
        l.para(&format!("Started {}, {completed}", utc(step.started)));
        for series in review
            .parameters
            .iter()
            .filter(|p| p.step_id == step.step_id)
        {
            l.chart(series);
        }
    }

    let deviations: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::DeviationRaised { .. }))
        .collect();
    l.heading(&format!("Deviations ({})", deviations.len()));
    if deviations.is_empty() {
        l.para("None raised.");
    }
    for stored in deviations {
        if let EventKind::DeviationRaised {
            deviation_id,
            step_id,
            description,
            classification,
        } = &stored.event.kind
        {
            l.subheading(&format!(
                "Deviation {deviation_id} ({classification}): record {}",
                stored.event.seq
            ));
            l.fields(&[
                ("Step", step_id.clone()),
                (
                    "Raised",
                    format!(
                        "{} by {}",
                        utc(stored.event.recorded_at),
                        by(review, stored.event.seq)
                    ),
                ),
                ("Description", description.clone()),
            ]);
        }
    }

    let corrections: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::Correction { .. }))
        .collect();
    l.heading(&format!("Corrections ({})", corrections.len()));
    if corrections.is_empty() {
        l.para("None.");
    }
    for stored in corrections {
        if let EventKind::Correction {
            corrects_seq,
            reason,
            field,
            new_value,
        } = &stored.event.kind
        {
            l.subheading(&format!(
                "Record {corrects_seq} corrected by record {}",
                stored.event.seq
            ));
            let original = review
                .entries
                .iter()
                .find(|e| e.seq == *corrects_seq)
                .map(|e| {
                    format!(
                        "{}: {} ({}, {})",
                        e.what,
                        e.detail,
                        e.recorded_by,
                        utc(e.recorded_at)
                    )
                })
                .unwrap_or_else(|| format!("record {corrects_seq} is not a record of this batch"));
            l.fields(&[
                ("Original record", original),
                ("Field", field.clone()),
                ("Corrected value", new_value.clone()),
                ("Reason", reason.clone()),
                (
                    "Corrected",
                    format!(
                        "{} by {}",
                        utc(stored.event.recorded_at),
                        by(review, stored.event.seq)
                    ),
                ),
            ]);
        }
    }

    let samples = events
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::ProcessSamples { .. }))
        .count();
    l.heading(&format!(
        "Every record of the batch ({})",
        review.entries.len()
    ));
    if samples > 0 {
        l.para(&format!(
            "{samples} process-sample records are drawn in the charts above and not listed here; each of their values is in record.json."
        ));
    }
    let sample_seqs: std::collections::HashSet<u64> = events
        .iter()
        .filter(|e| matches!(e.event.kind, EventKind::ProcessSamples { .. }))
        .map(|e| e.event.seq)
        .collect();
    for e in review
        .entries
        .iter()
        .filter(|e| !sample_seqs.contains(&e.seq))
    {
        entry_line(&mut l, e);
    }

    l.heading(&format!(
        "Audit trail of the batch ({} entries)",
        review.audit.len()
    ));
    for a in &review.audit {
        let mut text = format!(
            "#{} {} {} {} {}",
            a.position,
            utc(a.at),
            a.actor,
            a.action,
            a.object
        );
        if !a.old_value.is_empty() || !a.new_value.is_empty() {
            text.push_str(&format!(": {} -> {}", a.old_value, a.new_value));
        }
        if !a.reason.is_empty() {
            text.push_str(&format!(" (reason: {})", a.reason));
        }
        l.para_indented(0, 4, &text);
        l.para_indented(4, 0, &format!("SHA-256 {}", a.sha256));
    }
    l.finish(document)
}

/// Who made record `seq`, as the review names them.
fn by(review: &Review, seq: u64) -> String {
    review
        .entries
        .iter()
        .find(|e| e.seq == seq)
        .map(|e| e.recorded_by.clone())
        .unwrap_or_default()
}

fn entry_line(l: &mut Layout, e: &crate::record::Entry) {
    l.para_indented(
        0,
        8,
        &format!(
            "{:>6}  {}  {}: {} [{}]",
            e.seq,
            e.recorded_at.format("%Y-%m-%d %H:%M:%S"),
            e.what,
            e.detail,
            e.recorded_by
        ),
    );
}

/// Which events a signature's record hash covers, in words, among the record's
/// prefix hashes ([`super::prefix_hashes`]).
fn prefix_covering(prefixes: &[(String, usize, u64)], total: usize, sha: &str) -> String {
    match prefixes.iter().find(|(hash, _, _)| hash == sha) {
        Some((_, 0, _)) => "the order only (no site record)".into(),
        Some((_, n, seq)) => {
            format!("the first {n} of the {total} site records (through seq {seq})")
        }
        None => "a record that is not this one at any point".into(),
    }
}

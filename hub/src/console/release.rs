//! QA's release: the queue, the batch record reviewed exceptions first, and the
//! electronic signature.

use super::view::{chart, page, proof_fields, when};
use super::{html_page, parse_uuid, problem, refused, HubState, Page, Session};
use crate::app::Hub;
use crate::record::{self, Counts, Exception, Review};
use crate::service;
use crate::service::release;
use crate::store;
use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use carrel_proto::event::ReleaseMeaning;
use carrel_proto::recipe::unit_words;
use chrono::Utc;
use hmac::{Hmac, Mac};
use maud::{html, Markup};
use serde::Deserialize;
use sha2::Sha256;
use uuid::Uuid;

pub async fn release_queue(hub: HubState, session: Session) -> Page {
    let pending = release::queue(&hub, &session.user).await.map_err(refused)?;
    let changed = release::changed_after_decision(&hub, &session.user)
        .await
        .map_err(refused)?;
    let conditional = release::conditional(&hub, &session.user)
        .await
        .map_err(refused)?;
    let follow_ups = release::follow_ups(&hub, &session.user, false)
        .await
        .map_err(refused)?;
    Ok(html_page(page(
        "Release queue",
        Some(&session),
        html! {
            h1 { "Release queue" }
            @if !follow_ups.is_empty() {
                div.notice.bad id="follow-ups" role="alert" {
                    strong { "Patient follow-up open: " } "a result out of specification arrived after these batches were released. Close each with your signature once the patient is followed up:"
                    ul { @for f in &follow_ups {
                        li { a href=(format!("/batches/{}#follow-up-{}", f.order.batch_id, f.mark.site_seq)) { (f.order.coi) } " ("
                            (f.mark.test_id) ", record " (f.mark.site_seq) ", " (when(f.mark.opened_at)) ")" }
                    } }
                }
            }
            @if !changed.is_empty() {
                div.notice.bad id="changed-after-decision" role="alert" {
                    strong { "Changed after decision: " } "records arrived after these batches were decided. Review each:"
                    ul { @for o in &changed {
                        li { a href=(format!("/batches/{}#changed-after-decision", o.batch_id)) { (o.coi) } " (" (o.state.as_str().replace('_', " ")) ", "
                            (o.progress.unreviewed_changes().len()) " new record(s))" }
                    } }
                }
            }
            div.scroll tabindex="0" { table {
                caption.visually-hidden { "Batches awaiting release, the one waiting longest first" }
                thead { tr { th scope="col" { "COI" } th scope="col" { "Patient" } th scope="col" { "Site" } th scope="col" { "Exceptions" } th scope="col" { "Waiting since" } } }
                tbody {
                    @for o in &pending {
                        tr {
                            td { a href=(format!("/batches/{}", o.batch_id)) { (o.coi) } }
                            td { (o.patient_pseudonym) } td { (o.site_id) }
                            td { @if o.progress.exceptions.is_empty() { span.badge.pass { "none" } } @else { span.badge.rejected { (o.progress.exceptions.len()) } } }
                            td.muted { (when(o.updated_at)) }
                        }
                    }
                    @if pending.is_empty() { tr { td colspan="5" .muted { "Nothing awaits release." } } }
                }
            } }
            h2 id="conditional" { "Released conditionally" }
            p.muted { "Released before every result was in. Each waits for its results; when they are in within specification, a QA person completes the release on the batch record." }
            div.scroll tabindex="0" { table #conditional-releases {
                thead { tr { th scope="col" { "COI" } th scope="col" { "Site" } th scope="col" { "State" } th scope="col" { "Waiting for" } th scope="col" { "Next" } } }
                tbody {
                    @for c in &conditional {
                        tr data-batch=(c.order.batch_id) {
                            td { a href=(format!("/batches/{}#conditional-release", c.order.batch_id)) { (c.order.coi) } }
                            td { (c.order.site_id) }
                            td { (c.order.state.as_str().replace('_', " ")) }
                            td { @if c.waiting_for.is_empty() { span.muted { "every result is in" } } @else { (c.waiting_for.join(", ")) } }
                            td { @match &c.completion {
                                Ok(_) => span.badge.pass { "ready to complete" },
                                Err(_) if c.open_follow_ups > 0 => span.badge.rejected { "failed: patient follow-up open" },
                                Err(_) => span.muted { "waiting" },
                            } }
                        }
                    }
                    @if conditional.is_empty() { tr { td colspan="5" .muted { "No conditional release awaits its results." } } }
                }
            } }
        },
    )))
}

/// An audit value in words when it is a batch state (`in_process`: "in process").
fn state_words(value: &str) -> String {
    match crate::model::BatchState::parse(value) {
        Some(state) => state.as_str().replace('_', " "),
        None => value.to_owned(),
    }
}

fn batch_record_markup(
    session: &Session,
    review: &Review,
    notice: Option<&str>,
    decision: &Decision,
    change: &ChangeNote,
    deviations: &Markup,
) -> Markup {
    let order = &review.order;
    let sha = &review.record_sha256;
    html! {
        h1 { "Batch record " (order.coi) }
        p.muted { "Patient " (order.patient_pseudonym) " · site " (order.site_id) " · " (review.recipe_title) " v" (review.recipe_version)
            " · batch " (order.batch_id) }
        p { "State: " (super::view::order_badge(order)) }
        @if order.dry_run {
            div.notice.warn role="note" data-dry-run-notice {
                strong { "Dry run. " }
                "This batch was made on the hub's simulator site to try a draft recipe (" code { (order.recipe_id) } ", a frozen copy of "
                (review.recipe_title) " v" (review.recipe_version) ") before its approval. No patient; every record is the simulator's. "
                "It is never released."
            }
        }
        form.export method="post" action={ "/batches/" (order.batch_id) "/export" } {
            input type="hidden" name="csrf" value=(session.csrf);
            button.secondary type="submit" { "Download archive copy (PDF and JSON, zip)" }
            span.muted { " Checked later without the hub by " code { "carrel-hub release verify-export" } "; each download is recorded in the audit trail." }
        }
        @if let Some(notice) = notice { div.notice.bad role="alert" { (notice) } }
        @if !review.changed_after_decision.is_empty() {
            div.notice.bad id="changed-after-decision" role="alert" {
                strong { "Changed after decision. " }
                (review.changed_after_decision.len()) " record(s) arrived after this batch was "
                (review.order.state.as_str().replace('_', " ")) ". The decision was made without them; a QA person must review them."
                ul { @for e in &review.changed_after_decision {
                    li { "Record " (e.seq) ", " (when(e.recorded_at)) ", " (e.recorded_by) ": " strong { (e.what) } " " (e.detail) }
                } }
                @if release::may_sign(&session.user) { (change_review_markup(session, review, change)) }
            }
        }
        @for signed in &review.signatures {
            @let sig = &signed.signature;
            div.notice.ok { strong.manifestation { (signed.manifestation) }
                @if !sig.outstanding_tests.is_empty() {
                    p { @if sig.meaning == ReleaseMeaning::ReleaseCompleted { "Results confirmed within specification: " } @else { "Results outstanding when signed: " }
                        (outstanding_names(review, &sig.outstanding_tests)) }
                }
                @if !sig.reason.is_empty() { p { "Reason: " (sig.reason) } }
                @if !sig.justifications.is_empty() {
                    p { "Released despite " (sig.justifications.len()) " exception(s):" }
                    ul.justifications { @for j in &sig.justifications {
                        li { (j.exception) br; "Justification: " em { (j.justification) } }
                    } }
                }
                p.muted { "Bound to record " code { (sig.record_sha256) } }
            }
        }
        @if !review.release_awaits.is_empty() {
            div.notice id="conditional-release" role="status" {
                strong { "Released conditionally. " }
                "The release waits for " strong { (outstanding_names(review, &review.release_awaits)) } "."
                @match &review.completion {
                    Ok(_) => {
                        " Every result it waits for is in, within specification."
                        @if release::may_sign(&session.user) {
                            @let completing = match decision {
                                Decision::Confirm { meaning: ReleaseMeaning::ReleaseCompleted, .. } => decision.clone(),
                                _ => Decision::Confirm {
                                    meaning: ReleaseMeaning::ReleaseCompleted,
                                    reason: String::new(),
                                    justifications: Vec::new(),
                                    username: String::new(),
                                    acknowledge: false,
                                    error: None,
                                },
                            };
                            h2 id="complete-release" { "Complete the release" }
                            (decision_markup(session, review, &completing, change.first_signature, change.acknowledged))
                        }
                    }
                    Err(why) => { p.muted { (why) } }
                }
            }
        }
        @for (mark, closure) in &review.follow_ups {
            div.notice.bad.follow-up id=(format!("follow-up-{}", mark.site_seq)) role="alert" {
                strong { "Patient follow-up. " }
                (outstanding_names(review, std::slice::from_ref(&mark.test_id))) " arrived out of specification after the batch was released (record "
                (mark.site_seq) ", " (when(mark.opened_at)) "). The ordering physician and QA were told at once."
                @match closure {
                    Some(c) => { p { "Closed by " (c.signer_name) " (" (c.signer) ") on " (when(c.signed_at)) ": " em { (c.outcome) } } }
                    None => {
                        @if release::may_sign(&session.user) {
                            @let note = change.follow_up.as_ref().filter(|n| n.site_seq == mark.site_seq);
                            form method="post" action={ "/batches/" (review.order.batch_id) "/follow-ups/" (mark.site_seq) "/close" } {
                                input type="hidden" name="csrf" value=(session.csrf);
                                label for=(format!("follow-up-outcome-{}", mark.site_seq)) { "What was done for the patient, and what you concluded (it goes with your signature)" }
                                textarea id=(format!("follow-up-outcome-{}", mark.site_seq)) name="comment" rows="2" required { (note.map(|n| n.outcome.as_str()).unwrap_or("")) }
                                @if let Some(n) = note { p.error role="alert" { (n.error) } }
                                (proof_fields(change.first_signature, change.acknowledged, ("", false),
                                    None, &format!("follow-up-{}-", mark.site_seq)))
                                p { button type="submit" id=(format!("close-follow-up-{}", mark.site_seq)) { "Sign: close the follow-up" } }
                            }
                        } @else {
                            p { strong { "Open: " } "a QA person closes it with a signature." }
                        }
                    }
                }
            }
        }
        @for r in &review.change_reviews {
            div.notice.ok {
                strong { "Changes after the decision reviewed by " (r.signer_name) " (" (r.signer) ") on " (when(r.signed_at)) }
                p { "Records up to " (r.through_seq) ". Conclusion: " (r.comment) }
                p.muted { "Bound to record " code { (r.record_sha256) } }
            }
        }
        (deviations)
        h2 id="exceptions" { "Exceptions (" (review.exceptions.len()) ")" }
        div.scroll tabindex="0" { table.exceptions {
            thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "By" } th scope="col" { "What" } th scope="col" { "Details" } } }
            tbody {
                @for exception in &review.exceptions {
                    @match exception {
                        Exception::Record(e) => { tr { td { (e.seq) } td.muted { (when(e.recorded_at)) } td { (e.recorded_by) } td { strong { (e.what) } } td { (e.detail) } } }
                        Exception::Anomaly(anomaly) => { tr { td { "hub" } td {} td { "hub check" } td { strong { "anomaly" } } td { (anomaly) } } }
                    }
                }
                @if review.exceptions.is_empty() { tr { td colspan="5" .muted { "No exceptions." } } }
            }
        } }
        h2 { "QC results against specification" }
        p.muted { "Per test, every result in the order recorded; a retest names the result it retests and replaces it as the value that counts." }
        div.scroll tabindex="0" { table.qc {
            thead { tr { th scope="col" { "Test" } th scope="col" { "Result" } th scope="col" { "Specification" } th scope="col" { "Hub" } th scope="col" { "Site" } th scope="col" { "Counts" } } }
            @for group in review.qc.chunk_by(|a, b| a.test_id == b.test_id) {
                tbody.qc-test data-test=(group[0].test_id) {
                    @for (i, q) in group.iter().enumerate() {
                        tr.qc-result data-seq=(q.seq) data-counts=(counts_code(q.counts)) {
                            @if i == 0 {
                                th scope="row" rowspan=(group.len()) { (q.test_name.clone().unwrap_or_else(|| q.test_id.clone())) @if let Some(method) = &q.method { span.muted { " (" (method) ")" } } }
                            }
                            td { (q.value) " " (unit_words(&q.unit)) br; span.muted { "record " (q.seq) @if let Some(of) = q.retest_of { ", retest of record " (of) } } }
                            td { (q.specification) }
                            td { span class={ "badge " (outcome(q.hub_outcome)) } { (outcome_words(q.hub_outcome)) } @if !q.reason.is_empty() { br; span.muted { (q.reason) } } }
                            td { (outcome_words(q.site_outcome)) }
                            td { @match q.counts {
                                Counts::Reportable => strong { "Reportable value" },
                                Counts::RetestedBy(by) => span.muted { "Replaced by the retest, record " (by) },
                                Counts::Unstated => span class="badge out_of_specification" { "Which result counts is not stated" },
                            } }
                        }
                    }
                }
            }
        } }
        h2 { "Steps" }
        div.scroll tabindex="0" { table {
            thead { tr { th scope="col" { "Step" } th scope="col" { "Started" } th scope="col" { "Completed" } } }
            tbody { @for step in &review.steps {
                tr { td { (step.name) }
                     td.muted { (when(step.started)) } td.muted { (step.completed.map(when).unwrap_or_else(|| "running".into())) } }
            } }
        } }
        h2 { "Process parameters" }
        @for series in &review.parameters {
            @if series.points.len() >= 3 {
                (chart(&format!("{}: {}", series.step_name, series.label), &unit_words(&series.unit), &series.points, series.range))
            }
        }
        h2 { "Record (" (review.entries.len()) " entries)" }
        details {
            summary { "Every entry, in the order the site recorded them" }
            div.scroll tabindex="0" { table {
                thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "By" } th scope="col" { "What" } th scope="col" { "Details" } } }
                tbody { @for e in &review.entries {
                    tr { td { (e.seq) } td.muted { (when(e.recorded_at)) } td { (e.recorded_by) } td { (e.what) } td { (e.detail) } }
                } }
            } }
        }
        h2 { "Audit trail" }
        div.scroll tabindex="0" { table {
            thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Change" } th scope="col" { "Reason" } } }
            tbody { @for a in &review.audit {
                tr { td { (a.position) } td.muted { (when(a.at)) } td { (a.actor) } td { (a.action) }
                     td { @if !a.old_value.is_empty() { (state_words(&a.old_value)) " → " } (state_words(&a.new_value)) } td { (a.reason) } }
            } }
        } }
        p.muted { "Record SHA-256: " code id="record-sha" { (sha) } }
        @if review.awaits_decision() && release::may_sign(&session.user) {
            h2 id="decision" { "Decision" }
            div.card { (decision_markup(session, review, decision, change.first_signature, change.acknowledged)) }
        }
    }
}

/// Where a QA person's decision stands on the batch record page. Signing takes two
/// steps: choose the meaning (none is chosen for you), a reason, and for a release
/// despite exceptions a justification of each; then read the signature's wording
/// and confirm it with the password (and the user name at the first signature of
/// the session). After any error the page comes back at the same step with
/// everything entered kept, except the password.
#[derive(Clone)]
enum Decision {
    Choose {
        meaning: Option<ReleaseMeaning>,
        reason: String,
        justifications: Vec<String>,
        /// The field that is wrong (`meaning`, `reason`, `justifications` or `form`) and why.
        error: Option<(&'static str, String)>,
    },
    Confirm {
        meaning: ReleaseMeaning,
        reason: String,
        justifications: Vec<String>,
        username: String,
        /// The acknowledgement box as the signer left it.
        acknowledge: bool,
        /// The field that is wrong (`username`, `acknowledge` or `password`) and why.
        error: Option<(&'static str, String)>,
    },
}

impl Decision {
    fn start() -> Decision {
        Decision::Choose {
            meaning: None,
            reason: String::new(),
            justifications: Vec::new(),
            error: None,
        }
    }
}

/// The review of changes after a decision, as the page shows its form: what the
/// signer typed and what is wrong with it; and what the signer must add to a
/// signature (their user name at the session's first, the acknowledgement once).
struct ChangeNote {
    comment: String,
    error: Option<String>,
    follow_up: Option<FollowUpNote>,
    first_signature: bool,
    acknowledged: bool,
}

/// Binds a confirmation to the decision that was reviewed: a MAC, keyed with the
/// session's CSRF secret, of the batch, the record's hash, the meaning, the reason
/// and the justifications. A confirmation whose fields differ from what the signer
/// read is refused.
fn reviewed_token(
    session: &Session,
    batch_id: Uuid,
    sha: &str,
    meaning: ReleaseMeaning,
    reason: &str,
    justifications: &[String],
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(session.csrf.as_bytes())
        .expect("HMAC takes a key of any length");
    let batch = batch_id.to_string();
    let fixed = [batch.as_str(), sha, meaning.as_str(), reason.trim()];
    for part in fixed
        .into_iter()
        .chain(justifications.iter().map(|j| j.trim()))
    {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The fields a signature adds to a confirming form: the user name at the first
/// signature of the session, the one-time acknowledgement, and the password.
fn change_review_markup(session: &Session, review: &Review, change: &ChangeNote) -> Markup {
    let action = format!("/batches/{}/review-change", review.order.batch_id);
    html! {
        form id="review-change-form" method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="record_sha256" value=(review.record_sha256);
            label for="change-comment" { "What you concluded from these records (it goes with your signature)" }
            textarea id="change-comment" name="comment" rows="2" required { (change.comment) }
            (proof_fields(change.first_signature, change.acknowledged, ("", false),
                change.error.clone().map(|e| ("password", e)), "change-"))
            p { button type="submit" id="review-change" { "Sign the review of these records" } }
        }
    }
}

fn decision_markup(
    session: &Session,
    review: &Review,
    decision: &Decision,
    first_signature: bool,
    acknowledged: bool,
) -> Markup {
    let batch_id = review.order.batch_id;
    let sha = &review.record_sha256;
    let action = format!("/batches/{batch_id}/sign");
    match decision {
        Decision::Choose {
            meaning,
            reason,
            justifications,
            error,
        } => {
            let err = |field: &str| {
                error
                    .as_ref()
                    .filter(|(f, _)| *f == field)
                    .map(|(_, m)| m.clone())
            };
            let checked = |m: ReleaseMeaning| *meaning == Some(m);
            html! {
                form id="decision-form" method="post" action=(action) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="record_sha256" value=(sha);
                    input type="hidden" name="step" value="review";
                    @if let Some(e) = err("form") { p.error role="alert" { (e) } }
                    fieldset aria-describedby="meaning-error" {
                        legend { "Your decision on this batch" }
                        @if review.outstanding.is_empty() {
                            label { input type="radio" id="meaning-released" name="meaning" value="released" required checked[checked(ReleaseMeaning::Released)]; " Release it for infusion" }
                        } @else {
                            label { input type="radio" id="meaning-released" name="meaning" value="released_conditionally" required checked[checked(ReleaseMeaning::ReleasedConditionally)];
                                " Release it conditionally for infusion: results still outstanding: " strong { (outstanding_names(review, &review.outstanding)) } }
                        }
                        label { input type="radio" id="meaning-rejected" name="meaning" value="rejected" required checked[checked(ReleaseMeaning::Rejected)]; " Reject it" }
                    }
                    @if let Some(e) = err("meaning") { p.error id="meaning-error" role="alert" { (e) } }
                    label for="reason" { "Reason (required to reject)" }
                    textarea id="reason" name="reason" rows="2" aria-describedby="reason-error" { (reason) }
                    @if let Some(e) = err("reason") { p.error id="reason-error" role="alert" { (e) } }
                    @if !review.exceptions.is_empty() {
                        fieldset aria-describedby="justifications-error" {
                            legend { "To release: justify each exception (why it does not stop the release)" }
                            @for (i, exception) in review.exceptions.iter().enumerate() {
                                label for=(format!("justification-{i}")) { "Exception " (i + 1) ": " (exception.text()) }
                                textarea id=(format!("justification-{i}")) name=(format!("justification_{i}")) rows="2" {
                                    (justifications.get(i).map(String::as_str).unwrap_or(""))
                                }
                            }
                        }
                        @if let Some(e) = err("justifications") { p.error id="justifications-error" role="alert" { (e) } }
                    }
                    p { button type="submit" id="review-signature" { "Review signature" } }
                }
            }
        }
        Decision::Confirm {
            meaning,
            reason,
            justifications,
            username,
            acknowledge,
            error,
        } => {
            let user = &session.user;
            let wording =
                record::manifestation(&user.full_name, &user.username, *meaning, Utc::now());
            let token = reviewed_token(session, batch_id, sha, *meaning, reason, justifications);
            let hidden = html! {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="record_sha256" value=(sha);
                input type="hidden" name="meaning" value=(meaning.as_str());
                input type="hidden" name="reason" value=(reason);
                @for (i, j) in justifications.iter().enumerate() {
                    input type="hidden" name=(format!("justification_{i}")) value=(j);
                }
            };
            html! {
                p { "Your signature will read:" }
                p.manifestation id="manifestation-text" { (wording) }
                @if !reason.trim().is_empty() { p { "Reason: " (reason) } }
                @if *meaning == ReleaseMeaning::ReleasedConditionally {
                    p id="conditional-note" { "Released conditionally: the release waits for " strong { (outstanding_names(review, &review.outstanding)) } ". When they arrive within specification, a QA person completes it with a signature; a result out of specification opens a patient follow-up and tells the physician at once." }
                }
                @if *meaning == ReleaseMeaning::ReleaseCompleted {
                    p { "You confirm that the results the conditional release waited for (" strong { (outstanding_names(review, &review.release_awaits)) } ") arrived within specification." }
                }
                @if meaning.releases() && !justifications.is_empty() {
                    p { "Released despite " (justifications.len()) " exception(s), with your justifications:" }
                    ol { @for (exception, j) in review.exceptions.iter().zip(justifications) {
                        li { (exception.text()) br; em { (j) } }
                    } }
                }
                p.muted { "Signing binds your signature to this record as shown (SHA-256 above). If the record changes before you confirm, the signature is refused." }
                form id="sign-form" method="post" action=(action) {
                    (hidden)
                    input type="hidden" name="step" value="confirm";
                    input type="hidden" name="reviewed" value=(token);
                    (proof_fields(first_signature, acknowledged, (username, *acknowledge), error.clone(), ""))
                    p { button type="submit" id="confirm-signature" { "Confirm signature" } }
                }
                @if *meaning != ReleaseMeaning::ReleaseCompleted {
                    form method="post" action=(action) {
                        (hidden)
                        input type="hidden" name="step" value="change";
                        button.secondary type="submit" id="change-decision" { "Change the decision" }
                    }
                }
            }
        }
    }
}

/// Test ids in the names the recipe gives them, for the page.
fn outstanding_names(review: &Review, ids: &[String]) -> String {
    ids.iter()
        .map(|id| {
            review
                .test_names
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.clone())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a result counts, as the page's `data-counts` names it (for tests and scripts).
fn counts_code(counts: Counts) -> &'static str {
    match counts {
        Counts::Reportable => "reportable",
        Counts::RetestedBy(_) => "retested",
        Counts::Unstated => "unstated",
    }
}

/// An outcome in the words the page shows.
fn outcome_words(o: carrel_proto::recipe::Outcome) -> &'static str {
    match o {
        carrel_proto::recipe::Outcome::Pass => "within specification",
        carrel_proto::recipe::Outcome::OutOfSpecification => "out of specification",
    }
}

fn outcome(o: carrel_proto::recipe::Outcome) -> &'static str {
    match o {
        carrel_proto::recipe::Outcome::Pass => "pass",
        carrel_proto::recipe::Outcome::OutOfSpecification => "out_of_specification",
    }
}

pub async fn batch_record(hub: HubState, session: Session, Path(id): Path<String>) -> Page {
    let batch_id = parse_uuid(&id)?;
    decision_page(
        &hub,
        &session,
        batch_id,
        StatusCode::OK,
        None,
        Decision::start(),
        (String::new(), None),
    )
    .await
}

/// The batch record page, read afresh, with the decision at the step given and the
/// review-of-changes form with (comment, error); `status` is 422 when the page
/// answers a refusal.
async fn decision_page(
    hub: &Hub,
    session: &Session,
    batch_id: Uuid,
    status: StatusCode,
    notice: Option<String>,
    decision: Decision,
    change: (String, Option<String>),
) -> Page {
    decision_page_for(
        hub, session, batch_id, status, notice, decision, change, None,
    )
    .await
}

/// A follow-up closure refused: the record of the result, the outcome as typed,
/// and why.
struct FollowUpNote {
    site_seq: u64,
    outcome: String,
    error: String,
}

#[allow(clippy::too_many_arguments)]
async fn decision_page_for(
    hub: &Hub,
    session: &Session,
    batch_id: Uuid,
    status: StatusCode,
    notice: Option<String>,
    decision: Decision,
    (comment, change_error): (String, Option<String>),
    follow_up: Option<FollowUpNote>,
) -> Page {
    let review = release::review(hub, &session.user, batch_id)
        .await
        .map_err(refused)?;
    let change = ChangeNote {
        comment,
        error: change_error,
        follow_up,
        first_signature: !release::session_has_signed(hub, &session.token_sha256)
            .await
            .map_err(refused)?,
        acknowledged: session.user.signature_acknowledged_at.is_some(),
    };
    let deviations = service::deviations::of_batch(hub, &session.user, batch_id)
        .await
        .map_err(refused)?;
    let steps: Vec<(String, String)> = hub
        .store
        .recipe(&review.order.recipe_id, review.order.recipe_version)
        .await
        .map(|r| {
            r.recipe
                .steps
                .iter()
                .map(|s| (s.id.clone(), s.name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let golden = crate::service::analytics::golden_of(
        hub,
        &review.order,
        crate::service::analytics::Steps::Sampled,
    )
    .await
    .map_err(refused)?;
    let deviations = html! {
        (super::golden::section(&golden, review.order.dry_run))
        (super::deviations::batch_section(session, batch_id, &steps, &deviations))
    };
    let mut response = html_page(page(
        &format!("Batch record {}", review.order.coi),
        Some(session),
        batch_record_markup(
            session,
            &review,
            notice.as_deref(),
            &decision,
            &change,
            &deviations,
        ),
    ));
    *response.status_mut() = status;
    Ok(response)
}

/// A signing form as sent: the repeated `justification_N` fields are read in order.
#[derive(Default)]
pub struct SignInput {
    csrf: String,
    /// `review` (meaning and reason chosen), `confirm` (password given) or
    /// `change` (back to choosing, with the choice kept).
    step: String,
    meaning: String,
    reason: String,
    justifications: Vec<String>,
    username: String,
    acknowledge: bool,
    password: String,
    reviewed: String,
    record_sha256: String,
    comment: String,
}

impl SignInput {
    fn parse(fields: Vec<(String, String)>) -> SignInput {
        let mut input = SignInput::default();
        let mut justifications: Vec<(usize, String)> = Vec::new();
        for (name, value) in fields {
            match name.as_str() {
                "csrf" => input.csrf = value,
                "step" => input.step = value,
                "meaning" => input.meaning = value,
                "reason" => input.reason = value,
                "username" => input.username = value,
                "acknowledge" => input.acknowledge = value == "yes",
                "password" => input.password = value,
                "reviewed" => input.reviewed = value,
                "record_sha256" => input.record_sha256 = value,
                "comment" => input.comment = value,
                other => {
                    if let Some(i) = other
                        .strip_prefix("justification_")
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|i| *i < 1000)
                    {
                        justifications.push((i, value));
                    }
                }
            }
        }
        justifications.sort_by_key(|(i, _)| *i);
        input.justifications = justifications.into_iter().map(|(_, j)| j).collect();
        input
    }
}

/// Both steps of a signature: `review` checks the choice and shows the wording to
/// sign; `confirm` signs, refusing anything other than what was reviewed. Every
/// refusal comes back on the record page (422) with the input kept.
pub async fn sign(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Page {
    let input = SignInput::parse(fields);
    session.check_csrf(&input.csrf)?;
    let batch_id = parse_uuid(&id)?;
    let meaning = ReleaseMeaning::parse(&input.meaning);
    let reason = input.reason.clone();
    let justifications = input.justifications.clone();
    let choose = |field: &'static str, message: &str| Decision::Choose {
        meaning,
        reason: reason.clone(),
        justifications: justifications.clone(),
        error: Some((field, message.to_owned())),
    };
    let refusal = StatusCode::UNPROCESSABLE_ENTITY;
    let page = |status, notice, decision| {
        decision_page(
            &hub,
            &session,
            batch_id,
            status,
            notice,
            decision,
            (String::new(), None),
        )
    };
    let Some(meaning) = meaning else {
        let decision = choose("meaning", "Choose whether to release or reject the batch.");
        return page(refusal, None, decision).await;
    };
    match input.step.as_str() {
        "change" => {
            let decision = Decision::Choose {
                meaning: Some(meaning),
                reason,
                justifications,
                error: None,
            };
            page(StatusCode::OK, None, decision).await
        }
        "review" => {
            if meaning == ReleaseMeaning::Rejected && input.reason.trim().is_empty() {
                let decision = choose(
                    "reason",
                    "A rejection needs a reason: say what is wrong with the batch.",
                );
                return page(refusal, None, decision).await;
            }
            let review = release::review(&hub, &session.user, batch_id)
                .await
                .map_err(refused)?;
            // Said now, before the signing step (the service and the store check again).
            if meaning.releases() {
                let recipe = hub
                    .store
                    .recipe(&review.order.recipe_id, review.order.recipe_version)
                    .await
                    .map_err(|e| refused(e.into()))?;
                if let Err(why) = crate::model::release::check_decision(
                    &review.order,
                    &recipe.recipe,
                    meaning,
                    &review.outstanding,
                ) {
                    return page(refusal, None, choose("meaning", &why)).await;
                }
            }
            if meaning.releases() {
                let missing = (0..review.exceptions.len()).find(|i| {
                    justifications
                        .get(*i)
                        .map_or(0, |j| j.trim().chars().count())
                        < release::MIN_JUSTIFICATION_CHARS
                });
                if let Some(i) = missing {
                    let decision = choose(
                        "justifications",
                        &format!(
                            "To release despite exception {}, write why it does not stop the release (at least {} characters).",
                            i + 1,
                            release::MIN_JUSTIFICATION_CHARS
                        ),
                    );
                    return page(refusal, None, decision).await;
                }
            }
            let decision = Decision::Confirm {
                meaning,
                reason,
                justifications: if matches!(
                    meaning,
                    ReleaseMeaning::Released | ReleaseMeaning::ReleasedConditionally
                ) {
                    justifications
                } else {
                    Vec::new()
                },
                username: String::new(),
                acknowledge: false,
                error: None,
            };
            page(StatusCode::OK, None, decision).await
        }
        "confirm" => {
            let expected = reviewed_token(
                &session,
                batch_id,
                &input.record_sha256,
                meaning,
                &reason,
                &justifications,
            );
            if input.reviewed != expected {
                tracing::warn!(signer = %session.user.username, %batch_id, "refused: a confirmation that differs from the decision reviewed");
                let decision = choose(
                    "form",
                    "Not signed: the decision differs from the one you reviewed. Check it and review the signature again.",
                );
                return page(refusal, None, decision).await;
            }
            let outstanding = match meaning {
                ReleaseMeaning::ReleasedConditionally | ReleaseMeaning::ReleaseCompleted => {
                    let review = release::review(&hub, &session.user, batch_id)
                        .await
                        .map_err(refused)?;
                    if meaning == ReleaseMeaning::ReleaseCompleted {
                        review.release_awaits
                    } else {
                        review.outstanding
                    }
                }
                _ => Vec::new(),
            };
            let signer = release::Signer {
                user: &session.user,
                session: &session.token_sha256,
                source: &session.source,
            };
            let form = release::SignForm {
                batch_id,
                meaning,
                proof: release::Proof {
                    username: &input.username,
                    password: &input.password,
                    acknowledge_meaning: input.acknowledge,
                },
                record_sha256: &input.record_sha256,
                reason: &input.reason,
                justifications: &justifications,
                outstanding_tests: &outstanding,
            };
            let confirm = |field: &'static str, message: String| Decision::Confirm {
                meaning,
                reason: reason.clone(),
                justifications: justifications.clone(),
                username: input.username.clone(),
                acknowledge: input.acknowledge,
                error: Some((field, message)),
            };
            let (notice, decision) = match release::sign(&hub, &signer, form).await {
                Ok(_) => return Ok(Redirect::to(&format!("/batches/{batch_id}")).into_response()),
                Err(e @ service::Error::Unauthenticated(_)) => (
                    None,
                    confirm("password", format!("{e}. Type your password again.")),
                ),
                Err(
                    e @ service::Error::Field {
                        field: f @ ("username" | "acknowledge"),
                        ..
                    },
                ) => (None, confirm(f, e.to_string())),
                // The completion form has no other fields: said above the record.
                Err(e @ service::Error::Field { .. })
                    if meaning == ReleaseMeaning::ReleaseCompleted =>
                {
                    (Some(format!("Not signed: {e}")), Decision::start())
                }
                Err(e @ service::Error::Field { field, .. }) => {
                    (None, choose(field, &e.to_string()))
                }
                // The record changed since it was reviewed: the page shows the new one.
                Err(e @ service::Error::Store(store::Error::FailedPrecondition(_))) => (
                    Some(format!("Not signed: {e}")),
                    Decision::Choose {
                        meaning: Some(meaning),
                        reason,
                        justifications,
                        error: None,
                    },
                ),
                Err(e) => return Err(refused(e)),
            };
            page(refusal, notice, decision).await
        }
        other => Err(problem(
            StatusCode::BAD_REQUEST,
            format!("unknown signing step {other:?}: reload the batch record"),
        )),
    }
}

/// A QA person signs their review of records that arrived after the decision.
/// The archive copy of a batch record as a zip download ([`release::export`]).
pub async fn export(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Page {
    let csrf = fields
        .iter()
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    session.check_csrf(csrf)?;
    let batch_id = parse_uuid(&id)?;
    let export = release::export(&hub, &session.user, batch_id)
        .await
        .map_err(refused)?;
    let folder = crate::export::Export::folder_name(&export.coi);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/zip".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{folder}.zip\""),
            ),
        ],
        export.zip(&folder),
    )
        .into_response())
}

/// Closes a patient follow-up with the QA person's signature; a refusal comes
/// back on the record page (422) with the outcome as typed.
pub async fn close_follow_up(
    hub: HubState,
    session: Session,
    Path((id, seq)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Page {
    let input = SignInput::parse(fields);
    session.check_csrf(&input.csrf)?;
    let batch_id = parse_uuid(&id)?;
    let site_seq: u64 = seq.parse().map_err(|_| {
        refused(service::Error::Store(store::Error::NotFound(format!(
            "follow-up {seq}"
        ))))
    })?;
    let signer = release::Signer {
        user: &session.user,
        session: &session.token_sha256,
        source: &session.source,
    };
    let form = release::FollowUpForm {
        batch_id,
        site_seq,
        proof: release::Proof {
            username: &input.username,
            password: &input.password,
            acknowledge_meaning: input.acknowledge,
        },
        outcome: &input.comment,
    };
    match release::close_follow_up(&hub, &signer, form).await {
        Ok(_) => {
            Ok(Redirect::to(&format!("/batches/{batch_id}#follow-up-{site_seq}")).into_response())
        }
        Err(
            e @ (service::Error::Unauthenticated(_)
            | service::Error::Field { .. }
            | service::Error::Store(store::Error::FailedPrecondition(_))),
        ) => {
            decision_page_for(
                &hub,
                &session,
                batch_id,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Decision::start(),
                (String::new(), None),
                Some(FollowUpNote {
                    site_seq,
                    outcome: input.comment.clone(),
                    error: format!("Not signed: {e}."),
                }),
            )
            .await
        }
        Err(e) => Err(refused(e)),
    }
}

pub async fn review_change(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Page {
    let input = SignInput::parse(fields);
    session.check_csrf(&input.csrf)?;
    let batch_id = parse_uuid(&id)?;
    let signer = release::Signer {
        user: &session.user,
        session: &session.token_sha256,
        source: &session.source,
    };
    let form = release::ChangeReviewForm {
        batch_id,
        proof: release::Proof {
            username: &input.username,
            password: &input.password,
            acknowledge_meaning: input.acknowledge,
        },
        record_sha256: &input.record_sha256,
        comment: &input.comment,
    };
    match release::review_change(&hub, &signer, form).await {
        Ok(_) => Ok(Redirect::to(&format!("/batches/{batch_id}")).into_response()),
        Err(e @ (service::Error::Unauthenticated(_) | service::Error::Field { .. })) => {
            decision_page(
                &hub,
                &session,
                batch_id,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Decision::start(),
                (input.comment.clone(), Some(format!("Not signed: {e}."))),
            )
            .await
        }
        Err(e @ service::Error::Store(store::Error::FailedPrecondition(_))) => {
            decision_page(
                &hub,
                &session,
                batch_id,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(format!("Not signed: {e}")),
                Decision::start(),
                (input.comment.clone(), None),
            )
            .await
        }
        Err(e) => Err(refused(e)),
    }
}

#[derive(Deserialize)]
pub struct RaiseDeviationForm {
    csrf: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    classification: String,
    #[serde(default)]
    description: String,
}

/// A deviation raised at the hub from the batch record page: on success its own
/// page; refused, the batch record page says why, nothing stored.
pub async fn raise_deviation(
    hub: HubState,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<RaiseDeviationForm>,
) -> Page {
    session.check_csrf(&form.csrf)?;
    let batch_id = parse_uuid(&id)?;
    match service::deviations::raise(
        &hub,
        &session.user,
        batch_id,
        &form.step,
        &form.classification,
        &form.description,
    )
    .await
    {
        Ok(d) => Ok(Redirect::to(&format!(
            "/batches/{}/deviations/{}",
            d.batch_id, d.deviation_id
        ))
        .into_response()),
        Err(e @ (service::Error::Field { .. } | service::Error::Store(_))) => {
            decision_page(
                &hub,
                &session,
                batch_id,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(format!("Deviation not raised: {e}")),
                Decision::start(),
                (String::new(), None),
            )
            .await
        }
        Err(e) => Err(refused(e)),
    }
}

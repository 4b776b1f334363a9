//! `carrel-hub release`: the QA release queue, the batch record exceptions first, and
//! signing release or rejection, through the API.

use super::client::{authed, read_line, read_secret, Authed, ClientArgs};
use super::output::{order_json, order_state_text, print_release_queue, time_text};
use anyhow::{bail, Context};
use carrel_proto::pb;
use clap::{Subcommand, ValueEnum};
use std::io::IsTerminal;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Batches awaiting a release decision.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The batch record, exceptions first, with the hash a signature binds to.
    Show {
        /// The batch id (`release list` shows it); the batch's order id is accepted too.
        batch_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign release or rejection. Shows the record's exceptions and hash, and signs
    /// only that record: with --record-sha256 the one you reviewed (refused if it
    /// changed), without it after you confirm the record shown. Asks for your user
    /// name (unless --user) and password, and for a release despite exceptions a
    /// justification of each (unless given with --justification, in order).
    /// While a result that may follow release (sterility) is outstanding, a release
    /// is `released-conditionally` and names it; once every such result is in
    /// within specification, `release-completed` completes it.
    Sign {
        /// The batch id (`release list` shows it); the batch's order id is accepted too.
        batch_id: String,
        #[arg(long)]
        meaning: MeaningArg,
        /// Reason (required to reject).
        #[arg(long, default_value = "")]
        reason: String,
        /// SHA-256 of the record as you reviewed it (from `release show`).
        #[arg(long)]
        record_sha256: Option<String>,
        /// Why the batch may be released despite an exception; once per exception,
        /// in the order `release show` lists them.
        #[arg(long = "justification")]
        justifications: Vec<String>,
        /// Your user name (asked for when not given).
        #[arg(long)]
        user: Option<String>,
        /// Acknowledge, at your first electronic signature, that it is the legally
        /// binding equivalent of your handwritten signature (asked when needed).
        #[arg(long)]
        acknowledge_signature_meaning: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign the review of records that arrived after a batch's release decision.
    ReviewChange {
        /// The batch id (`release list` shows it); the batch's order id is accepted too.
        batch_id: String,
        /// What you concluded from the new records.
        #[arg(long)]
        comment: String,
        /// SHA-256 of the record as you reviewed it (from `release show`).
        #[arg(long)]
        record_sha256: String,
        /// Your user name (asked for when not given).
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        acknowledge_signature_meaning: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Conditional releases not yet completed: what each still waits for, and
    /// which can be completed now (`release sign --meaning release-completed`).
    Conditional {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Patient follow-ups: each result out of specification that arrived after a
    /// batch's release opens one until QA closes it (open ones unless --all).
    FollowUps {
        /// Also those already closed.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Close a patient follow-up with your signature, saying what was done for the
    /// patient and what you concluded.
    CloseFollowUp {
        /// The batch id (`release follow-ups` shows it); its order id is accepted too.
        batch_id: String,
        /// The site record of the result that opened it (`release follow-ups`).
        site_seq: u64,
        #[arg(long)]
        outcome: String,
        /// Your user name (asked for when not given).
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        acknowledge_signature_meaning: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write the batch record out for archiving: record.pdf (A4, for people),
    /// record.json (every event as stored, with its hash), README.txt and
    /// SHA256SUMS, into a new directory. The export is recorded in the audit trail.
    Export {
        /// The batch id (`release list` shows it); the batch's order id is accepted too.
        batch_id: String,
        /// The directory to write (made; refused if it exists and is not empty).
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check an export from its files alone, without a hub: every event's hash, the
    /// record hash, each signature against the record as its signer saw it, the
    /// audit entries and SHA256SUMS. Exit 0: intact; 1: something does not hold;
    /// 2: DIR is not an export.
    VerifyExport {
        dir: std::path::PathBuf,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The batch record for `id`: a batch id, or else the id of the batch's order (what
/// `order list` shows). Both are UUIDs made by the hub, so one names one batch.
/// Returns the batch id with the record.
pub(super) async fn batch_record(
    channel: Authed,
    id: &str,
) -> anyhow::Result<(String, pb::BatchRecord)> {
    let mut api = pb::release_service_client::ReleaseServiceClient::new(channel.clone());
    let found = api
        .get_batch_record(pb::GetBatchRecordRequest {
            batch_id: id.to_owned(),
        })
        .await;
    let response = match found {
        Err(status) if status.code() == tonic::Code::NotFound => {
            let batch_id = batch_of_order(channel, id).await?;
            api.get_batch_record(pb::GetBatchRecordRequest { batch_id })
                .await?
        }
        other => other?,
    };
    let record = response
        .into_inner()
        .record
        .context("hub returned no record")?;
    let batch_id = record
        .order
        .as_ref()
        .map(|o| o.batch_id.clone())
        .unwrap_or_else(|| id.to_owned());
    Ok((batch_id, record))
}

/// The batch of the order `id`, for commands given an id that names no batch. Both
/// are UUIDs made by the hub, so one names one batch.
async fn batch_of_order(channel: Authed, id: &str) -> anyhow::Result<String> {
    let mut orders = pb::order_service_client::OrderServiceClient::new(channel);
    match orders
        .get_order(pb::GetOrderRequest {
            order_id: id.to_owned(),
        })
        .await
    {
        Ok(answer) => Ok(answer
            .into_inner()
            .order
            .context("the hub answered GetOrder without an order")?
            .batch_id),
        // Only "no such order" means the id names nothing; any other refusal
        // (unavailable, not signed in, not allowed) is reported as it is.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::InvalidArgument
            ) =>
        {
            bail!("no batch and no order has the id {id}; `carrel-hub release list` shows the batches awaiting release")
        }
        Err(status) => Err(status.into()),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MeaningArg {
    Released,
    Rejected,
    /// Released while results that may follow release are outstanding (named by
    /// the record).
    ReleasedConditionally,
    /// A conditional release completed: its results arrived within specification.
    ReleaseCompleted,
}

pub async fn run(command: ReleaseCommand) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::List { client } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let batches = api
                .list_pending(pb::ListPendingRequest {})
                .await?
                .into_inner()
                .batches;
            print_release_queue(&batches, client.json)
        }
        ReleaseCommand::Export {
            batch_id,
            out,
            client,
        } => export(&client, &batch_id, &out).await,
        ReleaseCommand::VerifyExport { dir, json } => verify_export(&dir, json),
        ReleaseCommand::Conditional { client } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let found = api
                .list_conditional_releases(pb::ListConditionalReleasesRequest {})
                .await?
                .into_inner()
                .releases;
            if client.json {
                let rows: Vec<_> = found
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "order": c.order.as_ref().map(order_json),
                            "waiting_for": c.waiting_for, "completable": c.completable,
                            "not_completable_because": c.not_completable_because,
                            "open_follow_ups": c.open_follow_ups,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if found.is_empty() {
                println!("No conditional release awaits its results.");
            }
            for c in &found {
                let o = c.order.clone().unwrap_or_default();
                println!(
                    "{}  COI {}  site {}  {}  {}",
                    o.batch_id,
                    o.coi,
                    o.site_id,
                    order_state_text(&o),
                    if c.completable {
                        "READY TO COMPLETE".to_owned()
                    } else {
                        c.not_completable_because.clone()
                    }
                );
            }
            Ok(())
        }
        ReleaseCommand::FollowUps { all, client } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let found = api
                .list_follow_ups(pb::ListFollowUpsRequest { all })
                .await?
                .into_inner()
                .follow_ups;
            if client.json {
                let rows: Vec<_> = found.iter().map(follow_up_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if found.is_empty() {
                println!("No {}patient follow-ups.", if all { "" } else { "open " });
            }
            for f in &found {
                println!(
                    "{}  record {:<5} {}  opened {}{}",
                    f.batch_id,
                    f.site_seq,
                    f.summary,
                    time_text(f.opened_at),
                    if f.closed_by.is_empty() {
                        "  OPEN".to_owned()
                    } else {
                        format!(
                            "  closed by {} ({}) on {}: {}",
                            f.closed_by_name,
                            f.closed_by,
                            time_text(f.closed_at),
                            f.outcome
                        )
                    }
                );
            }
            Ok(())
        }
        ReleaseCommand::CloseFollowUp {
            batch_id,
            site_seq,
            outcome,
            user,
            acknowledge_signature_meaning,
            client,
        } => {
            let channel = authed(&client).await?;
            let (batch_id, _) = batch_record(channel.clone(), &batch_id).await?;
            let api = pb::release_service_client::ReleaseServiceClient::new(channel);
            let (username, password) = signer(user)?;
            let request = pb::CloseFollowUpRequest {
                batch_id,
                site_seq,
                outcome,
                password,
                username,
                acknowledge_signature_meaning,
            };
            let closed = signed(
                request,
                |r| r.acknowledge_signature_meaning = true,
                |r| {
                    let mut api = api.clone();
                    async move { api.close_follow_up(r).await }
                },
            )
            .await?;
            if client.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&follow_up_json(&closed))?
                );
            } else {
                println!(
                    "Closed: the follow-up of record {} of batch {}, signed by {} ({}).",
                    closed.site_seq, closed.batch_id, closed.closed_by_name, closed.closed_by
                );
            }
            Ok(())
        }
        ReleaseCommand::Show { batch_id, client } => {
            let (_, record) = batch_record(authed(&client).await?, &batch_id).await?;
            print_record(&record, client.json)
        }
        ReleaseCommand::Sign {
            batch_id,
            meaning,
            reason,
            record_sha256,
            justifications,
            user,
            acknowledge_signature_meaning,
            client,
        } => {
            if matches!(meaning, MeaningArg::Rejected) && reason.trim().is_empty() {
                bail!("not signed: a rejection needs a reason; give --reason");
            }
            let channel = authed(&client).await?;
            let (batch_id, record) = batch_record(channel.clone(), &batch_id).await?;
            let api = pb::release_service_client::ReleaseServiceClient::new(channel);
            let order = record.order.clone().unwrap_or_default();
            if order.dry_run {
                bail!("not signed: batch {batch_id} is a dry run of a draft recipe; a dry run is never released");
            }
            eprintln!(
                "Batch {} (COI {}, patient {}, site {}): {} exception(s), {} QC result(s)",
                order.batch_id,
                order.coi,
                order.patient_pseudonym,
                order.site_id,
                record.exceptions.len(),
                record.qc.len()
            );
            for (i, e) in record.exceptions.iter().enumerate() {
                eprintln!(
                    "  exception {}: #{} {} ({})",
                    i + 1,
                    e.site_seq,
                    e.kind,
                    e.summary
                );
            }
            eprintln!("Record SHA-256 {}", record.record_sha256);
            match &record_sha256 {
                Some(reviewed) if !reviewed.trim().eq_ignore_ascii_case(&record.record_sha256) => {
                    bail!(
                        "not signed: the record changed since you reviewed it (you reviewed {}, it is now {}); run `carrel-hub release show {batch_id}` again",
                        reviewed.trim(),
                        record.record_sha256
                    );
                }
                Some(_) => {}
                None => {
                    let answer = read_line(&format!(
                        "Sign this record ({}) as {}? Type yes to go on: ",
                        record.record_sha256,
                        meaning_word(meaning)
                    ))?;
                    if answer.trim() != "yes" {
                        bail!("not signed: you did not confirm the record shown");
                    }
                }
            }
            // Said before the password is asked for (the hub checks again).
            let awaiting = record.order.as_ref().map(|o| o.state)
                == Some(pb::BatchState::AwaitingRelease as i32);
            match meaning {
                _ if !awaiting => {}
                MeaningArg::Released if !record.outstanding_results.is_empty() => bail!(
                    "not signed: results that may follow release are still outstanding ({}); a release before them is conditional: sign with --meaning released-conditionally",
                    record.outstanding_results.join(", ")
                ),
                MeaningArg::ReleasedConditionally if record.outstanding_results.is_empty() => bail!(
                    "not signed: no result is outstanding, so the release is not conditional; sign with --meaning released"
                ),
                _ => {}
            }
            let mut justifications = justifications;
            if matches!(
                meaning,
                MeaningArg::ReleasedConditionally | MeaningArg::ReleaseCompleted
            ) {
                let tests = if matches!(meaning, MeaningArg::ReleaseCompleted) {
                    &record.release_awaits
                } else {
                    &record.outstanding_results
                };
                eprintln!(
                    "{}: {}",
                    if matches!(meaning, MeaningArg::ReleaseCompleted) {
                        "Confirming the results the conditional release waited for"
                    } else {
                        "Results still outstanding, named by this conditional release"
                    },
                    if tests.is_empty() {
                        "none".to_owned()
                    } else {
                        tests.join(", ")
                    }
                );
            }
            if matches!(
                meaning,
                MeaningArg::Released | MeaningArg::ReleasedConditionally
            ) {
                if justifications.len() > record.exceptions.len() {
                    bail!(
                        "{} justification(s) given for {} exception(s): give one per exception, in the order shown",
                        justifications.len(),
                        record.exceptions.len()
                    );
                }
                let missing = record.exceptions.len() - justifications.len();
                if missing > 0 && !std::io::stdin().is_terminal() {
                    bail!(
                        "not signed: releasing despite {} exception(s) needs a justification of each; give --justification once per exception, in the order shown ({missing} missing)",
                        record.exceptions.len()
                    );
                }
                for (i, e) in record
                    .exceptions
                    .iter()
                    .enumerate()
                    .skip(justifications.len())
                {
                    justifications.push(read_line(&format!(
                        "Justify releasing despite exception {} (#{} {}): ",
                        i + 1,
                        e.site_seq,
                        e.kind
                    ))?);
                }
            }
            let (username, password) = signer(user)?;
            let request = pb::SignReleaseRequest {
                batch_id,
                meaning: match meaning {
                    MeaningArg::Released => pb::ReleaseMeaning::Released,
                    MeaningArg::Rejected => pb::ReleaseMeaning::Rejected,
                    MeaningArg::ReleasedConditionally => pb::ReleaseMeaning::ReleasedConditionally,
                    MeaningArg::ReleaseCompleted => pb::ReleaseMeaning::ReleaseCompleted,
                } as i32,
                password,
                record_sha256: record.record_sha256.clone(),
                reason,
                username,
                justifications,
                acknowledge_signature_meaning,
                outstanding_tests: match meaning {
                    MeaningArg::ReleasedConditionally => record.outstanding_results.clone(),
                    MeaningArg::ReleaseCompleted => record.release_awaits.clone(),
                    _ => Vec::new(),
                },
            };
            let response = signed(
                request,
                |r| r.acknowledge_signature_meaning = true,
                |r| {
                    let mut api = api.clone();
                    async move { api.sign_release(r).await }
                },
            )
            .await?;
            let signature = response.signature.context("hub returned no signature")?;
            if client.json {
                let order = response.order.as_ref().map(order_json).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "signature_id": signature.signature_id, "manifestation": signature.manifestation,
                        "record_sha256": signature.record_sha256, "order": order,
                        "justifications": signature.justifications.iter().map(|j| serde_json::json!({
                            "exception": j.exception, "justification": j.justification,
                        })).collect::<Vec<_>>(),
                    }))?
                );
            } else {
                println!("{}", signature.manifestation);
                println!(
                    "Signature {} bound to record {}.",
                    signature.signature_id, signature.record_sha256
                );
            }
            Ok(())
        }
        ReleaseCommand::ReviewChange {
            batch_id,
            comment,
            record_sha256,
            user,
            acknowledge_signature_meaning,
            client,
        } => {
            let channel = authed(&client).await?;
            let (batch_id, _) = batch_record(channel.clone(), &batch_id).await?;
            let api = pb::release_service_client::ReleaseServiceClient::new(channel);
            let (username, password) = signer(user)?;
            let request = pb::ReviewChangeRequest {
                batch_id,
                username,
                password,
                record_sha256,
                comment,
                acknowledge_signature_meaning,
            };
            let response = signed(
                request,
                |r| r.acknowledge_signature_meaning = true,
                |r| {
                    let mut api = api.clone();
                    async move { api.review_change(r).await }
                },
            )
            .await?;
            let order = response.order.unwrap_or_default();
            if client.json {
                println!("{}", serde_json::to_string_pretty(&order_json(&order))?);
            } else {
                println!(
                    "Reviewed: batch {} (COI {}) is no longer marked as changed after its decision.",
                    order.batch_id, order.coi
                );
            }
            Ok(())
        }
    }
}

fn meaning_word(meaning: MeaningArg) -> &'static str {
    match meaning {
        MeaningArg::Released => "RELEASED",
        MeaningArg::Rejected => "REJECTED",
        MeaningArg::ReleasedConditionally => "RELEASED CONDITIONALLY",
        MeaningArg::ReleaseCompleted => "RELEASE COMPLETED",
    }
}

fn follow_up_json(f: &pb::FollowUp) -> serde_json::Value {
    serde_json::json!({
        "batch_id": f.batch_id, "site_seq": f.site_seq, "test_id": f.test_id,
        "summary": f.summary, "opened_at": time_text(f.opened_at),
        "closed": !f.closed_by.is_empty(), "closed_by": f.closed_by,
        "closed_by_name": f.closed_by_name, "outcome": f.outcome,
        "closed_at": time_text(f.closed_at),
    })
}

/// The signer's user name (asked for unless given) and password (always asked).
pub(super) fn signer(user: Option<String>) -> anyhow::Result<(String, String)> {
    let username = match user {
        Some(user) => user,
        None => read_line("Your user name (to sign): ")?,
    };
    Ok((username, read_secret("Password (to sign): ")?))
}

/// Sends a signed request; when the hub asks for the signer's one-time
/// acknowledgement of what their signature means, asks for it and sends the
/// request again with it (`acknowledged` sets it).
pub(super) async fn signed<R: Clone, T, Fut>(
    mut request: R,
    acknowledged: fn(&mut R),
    send: impl Fn(R) -> Fut,
) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match send(request.clone()).await {
        Err(status) if needs_acknowledgement(&status) => {
            acknowledge()?;
            acknowledged(&mut request);
            Ok(send(request).await?.into_inner())
        }
        other => Ok(other?.into_inner()),
    }
}

/// Whether the hub refused a signature for want of the signer's one-time
/// acknowledgement of what their electronic signature means.
fn needs_acknowledgement(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::InvalidArgument && status.message().contains("acknowledge")
}

/// Shows what the signer acknowledges and asks them to; `true` when they do.
fn acknowledge() -> anyhow::Result<bool> {
    eprintln!(
        "Before your first electronic signature:\n  {}",
        crate::service::release::SIGNATURE_MEANING
    );
    if read_line("Type yes to acknowledge: ")?.trim() != "yes" {
        bail!("not signed: the acknowledgement is required before a first signature");
    }
    Ok(true)
}

fn print_record(record: &pb::BatchRecord, json: bool) -> anyhow::Result<()> {
    let order = record.order.clone().unwrap_or_default();
    let outcome = |v: i32| {
        pb::QcOutcome::try_from(v)
            .map(|o| {
                o.as_str_name()
                    .trim_start_matches("QC_OUTCOME_")
                    .to_lowercase()
            })
            .unwrap_or_default()
    };
    if json {
        let entry = |e: &pb::RecordEntry| serde_json::json!({"site_seq": e.site_seq, "at": time_text(e.recorded_at), "by": e.recorded_by, "kind": e.kind, "summary": e.summary});
        let value = serde_json::json!({
            "order": order_json(&order),
            "record_sha256": record.record_sha256,
            "exceptions": record.exceptions.iter().map(entry).collect::<Vec<_>>(),
            "entries": record.entries.iter().map(entry).collect::<Vec<_>>(),
            "qc": record.qc.iter().map(|q| serde_json::json!({
                "test_id": q.test_id, "name": q.test_name, "result": q.result, "specification": q.specification,
                "hub_outcome": outcome(q.hub_outcome), "site_outcome": outcome(q.site_outcome), "reason": q.reason,
                "site_seq": q.site_seq, "retest_of_seq": (q.retest_of_seq != 0).then_some(q.retest_of_seq),
                "counts": counts(q), "retested_by_seq": (q.retested_by_seq != 0).then_some(q.retested_by_seq),
            })).collect::<Vec<_>>(),
            "signatures": record.signatures.iter().map(|s| serde_json::json!({
                "signature_id": s.signature_id, "manifestation": s.manifestation, "record_sha256": s.record_sha256,
                "reason": s.reason, "outstanding_tests": s.outstanding_tests,
                "justifications": s.justifications.iter().map(|j| serde_json::json!({
                    "exception": j.exception, "justification": j.justification,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "changed_after_decision": record.changed_after_decision.iter().map(entry).collect::<Vec<_>>(),
            "outstanding_results": record.outstanding_results,
            "release_awaits": record.release_awaits,
            "release_completable": record.release_completable,
            "follow_ups": record.follow_ups.iter().map(follow_up_json).collect::<Vec<_>>(),
            "change_reviews": record.change_reviews.iter().map(|r| serde_json::json!({
                "review_id": r.review_id, "signer": r.signer, "signer_name": r.signer_name,
                "through_seq": r.through_seq, "record_sha256": r.record_sha256, "comment": r.comment,
                "signed_at": time_text(r.signed_at),
            })).collect::<Vec<_>>(),
            "audit": record.audit.iter().map(|a| serde_json::json!({
                "position": a.position, "at": time_text(a.at), "actor": a.actor, "action": a.action,
                "object": a.object, "old_value": a.old_value, "new_value": a.new_value, "reason": a.reason,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    // Written whole, then printed: a reader that stops early (`| head`) ends the
    // command quietly through println!'s closed-pipe path (see main.rs).
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(
        out,
        "Batch {}  COI {}  site {}  state {}",
        order.batch_id,
        order.coi,
        order.site_id,
        order_state_text(&order)
    )?;
    writeln!(out, "Record SHA-256 {}", record.record_sha256)?;
    if !record.outstanding_results.is_empty() {
        writeln!(
            out,
            "\nOUTSTANDING: {} (may follow release). A release now is conditional: `release sign --meaning released-conditionally`",
            record.outstanding_results.join(", ")
        )?;
    }
    if !record.release_awaits.is_empty() {
        writeln!(
            out,
            "\nRELEASED CONDITIONALLY, awaiting {}{}",
            record.release_awaits.join(", "),
            if record.release_completable {
                ": every result is in within specification; complete it with `release sign --meaning release-completed`"
            } else {
                ""
            }
        )?;
    }
    let open: Vec<&pb::FollowUp> = record
        .follow_ups
        .iter()
        .filter(|f| f.closed_by.is_empty())
        .collect();
    if !open.is_empty() {
        writeln!(
            out,
            "\nPATIENT FOLLOW-UP OPEN ({}): `release close-follow-up BATCH SEQ --outcome ...`",
            open.len()
        )?;
        for f in open {
            writeln!(out, "  #{:<5} {}", f.site_seq, f.summary)?;
        }
    }
    if !record.changed_after_decision.is_empty() {
        writeln!(
            out,
            "\nCHANGED AFTER DECISION ({} record(s) arrived after it; QA must review them: `release review-change`)",
            record.changed_after_decision.len()
        )?;
        for e in &record.changed_after_decision {
            writeln!(out, "  #{:<5} {:<20} {}", e.site_seq, e.kind, e.summary)?;
        }
    }
    writeln!(out, "\nEXCEPTIONS ({})", record.exceptions.len())?;
    for e in &record.exceptions {
        writeln!(out, "  #{:<5} {:<20} {}", e.site_seq, e.kind, e.summary)?;
    }
    writeln!(
        out,
        "\nQC RESULTS (per test; the reportable value first marked *)"
    )?;
    for q in &record.qc {
        let mark = match pb::QcCounts::try_from(q.counts) {
            Ok(pb::QcCounts::Reportable) => "*".to_owned(),
            Ok(pb::QcCounts::Retested) => format!("retested by #{}", q.retested_by_seq),
            Ok(pb::QcCounts::Unstated) => "WHICH COUNTS NOT STATED".to_owned(),
            _ => String::new(),
        };
        writeln!(
            out,
            "  #{:<5} {:<28} {:<16} spec {:<22} {:<20} {}",
            q.site_seq,
            q.test_name,
            q.result,
            q.specification,
            outcome(q.hub_outcome).to_uppercase(),
            mark
        )?;
    }
    writeln!(out, "\nRECORD ({} entries)", record.entries.len())?;
    for e in &record.entries {
        writeln!(
            out,
            "  #{:<5} {}  {:<24} {}",
            e.site_seq,
            time_text(e.recorded_at),
            e.kind,
            e.summary
        )?;
    }
    if !record.signatures.is_empty() {
        writeln!(out, "\nSIGNATURES")?;
        for s in &record.signatures {
            writeln!(out, "  {}  (record {})", s.manifestation, s.record_sha256)?;
            for j in &s.justifications {
                writeln!(out, "    despite {}: {}", j.exception, j.justification)?;
            }
        }
        for r in &record.change_reviews {
            writeln!(
                out,
                "  Changes up to record {} reviewed by {} ({}) on {}: {}",
                r.through_seq,
                r.signer_name,
                r.signer,
                time_text(r.signed_at),
                r.comment
            )?;
        }
    }
    writeln!(out, "\nAUDIT TRAIL ({} entries)", record.audit.len())?;
    for a in &record.audit {
        let change = if a.old_value.is_empty() {
            a.new_value.clone()
        } else {
            format!("{} -> {}", a.old_value, a.new_value)
        };
        let reason = if a.reason.is_empty() {
            String::new()
        } else {
            format!("  reason: {}", a.reason)
        };
        writeln!(
            out,
            "  #{:<5} {}  {:<14} {:<22} {change}{reason}",
            a.position,
            time_text(a.at),
            a.actor,
            a.action
        )?;
    }
    print!("{out}");
    Ok(())
}

/// Whether a QC result counts for its test, as the JSON output names it.
fn counts(q: &pb::QcEvaluation) -> &'static str {
    match pb::QcCounts::try_from(q.counts) {
        Ok(pb::QcCounts::Reportable) => "reportable",
        Ok(pb::QcCounts::Retested) => "retested",
        Ok(pb::QcCounts::Unstated) => "unstated",
        _ => "unknown",
    }
}

/// gRPC's usual 4 MiB answer limit is too small for a long batch's export.
const EXPORT_MAX_BYTES: usize = 1 << 30;

async fn export(client: &ClientArgs, id: &str, out: &std::path::Path) -> anyhow::Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            bail!(
                "{} is not empty: an export goes into a new or empty directory, so no earlier export is overwritten",
                out.display()
            );
        }
    } else if out.exists() {
        bail!("{} exists and is not a directory", out.display());
    }
    let channel = authed(client).await?;
    let mut api = pb::release_service_client::ReleaseServiceClient::new(channel.clone())
        .max_decoding_message_size(EXPORT_MAX_BYTES);
    let ask = |batch_id: String| pb::ExportBatchRecordRequest { batch_id };
    let answer = match api.export_batch_record(ask(id.to_owned())).await {
        // An order id: export its batch.
        Err(status) if status.code() == tonic::Code::NotFound => {
            let batch_id = batch_of_order(channel, id).await?;
            api.export_batch_record(ask(batch_id)).await?
        }
        other => other?,
    }
    .into_inner();
    std::fs::create_dir_all(out).with_context(|| format!("cannot make {}", out.display()))?;
    for file in &answer.files {
        // The hub names the files; a name that would leave the directory is refused.
        if file.name.is_empty() || file.name.contains(['/', '\\']) || file.name.starts_with('.') {
            bail!(
                "the hub sent a file named {:?}; nothing more was written",
                file.name
            );
        }
        let path = out.join(&file.name);
        std::fs::write(&path, &file.content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "Exported the batch record to {} ({} files); record SHA-256 {}",
        out.display(),
        answer.files.len(),
        answer.record_sha256
    );
    println!(
        "Check it at any time, without the hub: carrel-hub release verify-export {}",
        out.display()
    );
    Ok(())
}

fn verify_export(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let found = match crate::export::verify(dir) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let intact = found.intact();
    if json {
        let findings: Vec<serde_json::Value> = found
            .findings
            .iter()
            .map(|f| serde_json::json!({"holds": f.holds, "what": f.what}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "intact": intact,
                "record_sha256": found.record_sha256,
                "findings": findings,
            }))?
        );
    } else {
        for f in &found.findings {
            println!("{} {}", if f.holds { "ok  " } else { "FAIL" }, f.what);
        }
        let failed = found.findings.iter().filter(|f| !f.holds).count();
        if intact {
            println!("INTACT: every check holds");
        } else {
            println!(
                "NOT INTACT: {failed} of {} checks do not hold",
                found.findings.len()
            );
        }
    }
    if !intact {
        std::process::exit(1);
    }
    Ok(())
}

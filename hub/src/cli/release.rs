//! `carrel-hub release`: the QA release queue, the batch record exceptions first, and
//! signing release or rejection, through the API.

use super::client::{authed, read_secret, ClientArgs};
use super::output::{order_json, print_orders, state_name, time_text};
use anyhow::Context;
use carrel_proto::pb;
use clap::{Subcommand, ValueEnum};
use std::io::Write;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Batches awaiting a release decision.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The batch record, exceptions first, with the hash a signature binds to.
    Show {
        batch_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign release or rejection. Asks for the password again.
    Sign {
        batch_id: String,
        #[arg(long)]
        meaning: MeaningArg,
        /// Reason (required to reject).
        #[arg(long, default_value = "")]
        reason: String,
        /// SHA-256 of the record as you reviewed it (from `release show`); default:
        /// the record as fetched just before signing, after showing its summary.
        #[arg(long)]
        record_sha256: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MeaningArg {
    Released,
    Rejected,
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
            print_orders(&batches, client.json)
        }
        ReleaseCommand::Show { batch_id, client } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let record = api
                .get_batch_record(pb::GetBatchRecordRequest { batch_id })
                .await?
                .into_inner()
                .record
                .context("hub returned no record")?;
            print_record(&record, client.json)
        }
        ReleaseCommand::Sign {
            batch_id,
            meaning,
            reason,
            record_sha256,
            client,
        } => {
            let mut api =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
            let record_sha256 = match record_sha256 {
                Some(sha) => sha,
                None => {
                    let record = api
                        .get_batch_record(pb::GetBatchRecordRequest {
                            batch_id: batch_id.clone(),
                        })
                        .await?
                        .into_inner()
                        .record
                        .context("hub returned no record")?;
                    let order = record.order.clone().unwrap_or_default();
                    eprintln!(
                        "Signing batch {} (COI {}): {} exceptions, {} QC results, record SHA-256 {}",
                        order.batch_id,
                        order.coi,
                        record.exceptions.len(),
                        record.qc.len(),
                        record.record_sha256
                    );
                    record.record_sha256
                }
            };
            let password = read_secret("Password (to sign): ")?;
            let response = api
                .sign_release(pb::SignReleaseRequest {
                    batch_id,
                    meaning: match meaning {
                        MeaningArg::Released => pb::ReleaseMeaning::Released,
                        MeaningArg::Rejected => pb::ReleaseMeaning::Rejected,
                    } as i32,
                    password,
                    record_sha256,
                    reason,
                })
                .await?
                .into_inner();
            let signature = response.signature.context("hub returned no signature")?;
            if client.json {
                let order = response.order.as_ref().map(order_json).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "signature_id": signature.signature_id, "manifestation": signature.manifestation,
                        "record_sha256": signature.record_sha256, "order": order,
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
    }
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
            })).collect::<Vec<_>>(),
            "signatures": record.signatures.iter().map(|s| serde_json::json!({
                "signature_id": s.signature_id, "manifestation": s.manifestation, "record_sha256": s.record_sha256,
            })).collect::<Vec<_>>(),
            "audit": record.audit.iter().map(|a| serde_json::json!({
                "position": a.position, "at": time_text(a.at), "actor": a.actor, "action": a.action,
                "object": a.object, "old_value": a.old_value, "new_value": a.new_value, "reason": a.reason,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Batch {}  COI {}  site {}  state {}",
        order.batch_id,
        order.coi,
        order.site_id,
        state_name(order.state)
    )?;
    writeln!(out, "Record SHA-256 {}", record.record_sha256)?;
    writeln!(out, "\nEXCEPTIONS ({})", record.exceptions.len())?;
    for e in &record.exceptions {
        writeln!(out, "  #{:<5} {:<20} {}", e.site_seq, e.kind, e.summary)?;
    }
    writeln!(out, "\nQC RESULTS")?;
    for q in &record.qc {
        writeln!(
            out,
            "  {:<32} {:<22} spec {:<22} {}",
            q.test_name,
            q.result,
            q.specification,
            outcome(q.hub_outcome).to_uppercase()
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
    Ok(())
}

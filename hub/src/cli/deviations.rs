//! `carrel-hub deviation`: QA's deviation work through the API: list them, raise one
//! at the hub, add investigation notes, and close one with an electronic signature
//! (root cause, CAPA reference). An open major or critical deviation stops release.

use super::client::{authed, ClientArgs};
use super::output::time_of as time;
use super::release::{batch_record, signed, signer};
use carrel_proto::pb;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DeviationCommand {
    /// Every deviation (newest first), or one batch's.
    List {
        /// Only this batch's (its id or its order's id).
        #[arg(long)]
        batch: Option<String>,
        /// Only those still open.
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Raise a deviation at the hub on a batch, in your name.
    Raise {
        /// The batch id (or its order's id).
        batch_id: String,
        /// minor, major or critical.
        #[arg(long)]
        classification: String,
        /// What happened.
        #[arg(long)]
        description: String,
        /// The recipe step it concerns (none: the batch as a whole).
        #[arg(long, default_value = "")]
        step: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add an investigation note to an open deviation.
    Note {
        batch_id: String,
        deviation_id: String,
        #[arg(long)]
        text: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Close a deviation with your electronic signature: its root cause and the CAPA
    /// reference (none: say why in the root cause). Asks for your password.
    Close {
        batch_id: String,
        deviation_id: String,
        #[arg(long)]
        root_cause: String,
        /// The CAPA's reference in the quality system.
        #[arg(long, default_value = "")]
        capa: String,
        /// Your user name (asked for when not given).
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        acknowledge_signature_meaning: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn deviation_json(d: &pb::Deviation) -> serde_json::Value {
    serde_json::json!({
        "batch_id": d.batch_id,
        "deviation_id": d.deviation_id,
        "site_id": d.site_id,
        "origin": d.origin,
        "site_seq": d.site_seq,
        "raised_by": d.raised_by,
        "raised_at": time(&d.raised_at).map(|t| t.to_rfc3339()),
        "step_id": d.step_id,
        "description": d.description,
        "classification": d.classification,
        "status": d.status,
        "notes": d.notes.iter().map(|n| serde_json::json!({
            "author": n.author,
            "written_at": time(&n.written_at).map(|t| t.to_rfc3339()),
            "text": n.text,
        })).collect::<Vec<_>>(),
        "root_cause": d.root_cause,
        "capa_ref": d.capa_ref,
        "closed_by": d.closed_by,
        "closed_at": time(&d.closed_at).map(|t| t.to_rfc3339()),
    })
}

fn print_deviation(d: &pb::Deviation) {
    let when = |t: &Option<prost_types::Timestamp>| {
        time(t)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default()
    };
    println!(
        "{} {} ({}, {}) batch {} at {}{}",
        d.deviation_id,
        d.status.to_uppercase(),
        d.classification,
        if d.origin == "site" {
            format!("site record {}", d.site_seq)
        } else {
            "raised at the hub".to_owned()
        },
        d.batch_id,
        d.site_id,
        if d.step_id.is_empty() {
            String::new()
        } else {
            format!(", step {}", d.step_id)
        }
    );
    println!(
        "  raised by {} on {}: {}",
        d.raised_by,
        when(&d.raised_at),
        d.description
    );
    for n in &d.notes {
        println!(
            "  note by {} on {}: {}",
            n.author,
            when(&n.written_at),
            n.text
        );
    }
    if d.status == "closed" {
        println!(
            "  closed by {} ({}) on {}; root cause: {}; CAPA: {}",
            d.closed_by_name,
            d.closed_by,
            when(&d.closed_at),
            d.root_cause,
            if d.capa_ref.is_empty() {
                "none"
            } else {
                &d.capa_ref
            }
        );
    }
}

fn print_one(what: &str, response: pb::DeviationResponse, json: bool) -> anyhow::Result<()> {
    let d = response.deviation.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&deviation_json(&d))?);
    } else {
        println!("{what}.");
        print_deviation(&d);
    }
    Ok(())
}

pub async fn run(command: DeviationCommand) -> anyhow::Result<()> {
    match command {
        DeviationCommand::List {
            batch,
            open,
            client,
        } => {
            let channel = authed(&client).await?;
            let batch_id = match batch {
                Some(id) => batch_record(channel.clone(), &id).await?.0,
                None => String::new(),
            };
            let found = pb::release_service_client::ReleaseServiceClient::new(channel)
                .list_deviations(pb::ListDeviationsRequest {
                    batch_id,
                    open_only: open,
                })
                .await?
                .into_inner()
                .deviations;
            if client.json {
                let list: Vec<_> = found.iter().map(deviation_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if found.is_empty() {
                println!("No deviations.");
            } else {
                for d in &found {
                    print_deviation(d);
                }
            }
            Ok(())
        }
        DeviationCommand::Raise {
            batch_id,
            classification,
            description,
            step,
            client,
        } => {
            let channel = authed(&client).await?;
            let (batch_id, _) = batch_record(channel.clone(), &batch_id).await?;
            let response = pb::release_service_client::ReleaseServiceClient::new(channel)
                .raise_deviation(pb::RaiseDeviationRequest {
                    batch_id,
                    step_id: step,
                    classification,
                    description,
                })
                .await?
                .into_inner();
            print_one("Deviation raised", response, client.json)
        }
        DeviationCommand::Note {
            batch_id,
            deviation_id,
            text,
            client,
        } => {
            let channel = authed(&client).await?;
            let (batch_id, _) = batch_record(channel.clone(), &batch_id).await?;
            let response = pb::release_service_client::ReleaseServiceClient::new(channel)
                .add_deviation_note(pb::AddDeviationNoteRequest {
                    batch_id,
                    deviation_id,
                    text,
                })
                .await?
                .into_inner();
            print_one("Note added", response, client.json)
        }
        DeviationCommand::Close {
            batch_id,
            deviation_id,
            root_cause,
            capa,
            user,
            acknowledge_signature_meaning,
            client,
        } => {
            let channel = authed(&client).await?;
            let (batch_id, _) = batch_record(channel.clone(), &batch_id).await?;
            let api = pb::release_service_client::ReleaseServiceClient::new(channel);
            let (username, password) = signer(user)?;
            let request = pb::CloseDeviationRequest {
                batch_id,
                deviation_id,
                root_cause,
                capa_ref: capa,
                username,
                password,
                acknowledge_signature_meaning,
            };
            let response = signed(
                request,
                |r| r.acknowledge_signature_meaning = true,
                |r| {
                    let mut api = api.clone();
                    async move { api.close_deviation(r).await }
                },
            )
            .await?;
            print_one("Closed with your signature", response, client.json)
        }
    }
}

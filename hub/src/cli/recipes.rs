//! `carrel-hub recipe`: master batch records under change control (QA, through the
//! API): draft a new version from TOML, see what it changes, submit it (your
//! signature), approve another person's (your signature, effective from a date),
//! retire a version, list them.

use super::client::{authed, ClientArgs};
use super::output::{state_name, time_of as time};
use super::release::{signed, signer};
use carrel_proto::pb;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum RecipeCommand {
    /// Save a draft of a new version from a TOML file (checked as it is saved); an
    /// edit of your own draft saves it again. Prints what it changes.
    Draft {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A draft, its state and signatures, and what it changes against the version
    /// new orders pin now.
    Show {
        recipe_id: String,
        version: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Alias of `show`: what a draft changes.
    Diff {
        recipe_id: String,
        version: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The versions under change control.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Submit your draft for approval, with your signature (asks for your password).
    Submit {
        recipe_id: String,
        version: u32,
        /// The draft's SHA-256 as you read it (`recipe show`).
        #[arg(long)]
        sha256: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        acknowledge_signature_meaning: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve another person's submitted draft, with your signature; it is
    /// published and new orders pin it from the date given.
    Approve {
        recipe_id: String,
        version: u32,
        #[arg(long)]
        sha256: String,
        /// YYYY-MM-DD (default: at once).
        #[arg(long, default_value = "")]
        effective_from: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        acknowledge_signature_meaning: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Dry-run a draft (as it is now) on the hub's simulator site: a whole batch at
    /// high time compression, its record shown like any other (`release show`),
    /// marked as a dry run and never released.
    DryRun {
        recipe_id: String,
        version: u32,
        /// Follow the batch until its record is complete (or it stops), printing
        /// each state it reaches.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retire a published version: new orders no longer pin it.
    Retire {
        recipe_id: String,
        version: u32,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn draft_json(d: &pb::RecipeDraft) -> serde_json::Value {
    serde_json::json!({
        "recipe_id": d.recipe_id,
        "version": d.version,
        "title": d.title,
        "sha256": d.sha256,
        "state": d.state,
        "author": d.author,
        "submitted_by": d.submitted_by,
        "approved_by": d.approved_by,
        "effective_from": time(&d.effective_from).map(|t| t.to_rfc3339()),
        "in_force_version": d.in_force_version,
        "changes": d.changes.iter().map(|c| serde_json::json!({"what": c.what, "before": c.before, "after": c.after})).collect::<Vec<_>>(),
        "dry_runs": d.dry_runs.iter().map(dry_run_json).collect::<Vec<_>>(),
    })
}

fn dry_run_json(run: &pb::RecipeDryRun) -> serde_json::Value {
    let order = run.order.clone().unwrap_or_default();
    serde_json::json!({
        "batch_id": order.batch_id,
        "coi": order.coi,
        "copy": order.product,
        "state": state_name(order.state),
        "current_step": order.current_step,
        "started_by": order.physician,
        "started_at": time(&order.created_at).map(|t| t.to_rfc3339()),
        "recipe_sha256": run.recipe_sha256,
        "of_current_draft": run.of_current_draft,
    })
}

fn dry_run_line(run: &pb::RecipeDryRun) -> String {
    let order = run.order.clone().unwrap_or_default();
    format!(
        "batch {} ({}), {}{}, started by {} {}{}",
        order.batch_id,
        order.product,
        state_name(order.state),
        if order.current_step.is_empty() {
            String::new()
        } else {
            format!(" ({})", order.current_step)
        },
        order.physician,
        time(&order.created_at)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default(),
        if run.of_current_draft {
            ""
        } else {
            "; ran an earlier text of the draft"
        }
    )
}

fn print_draft(d: &pb::RecipeDraft, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&draft_json(d))?);
        return Ok(());
    }
    println!(
        "{} v{} \"{}\": {} (drafted by {})",
        d.recipe_id, d.version, d.title, d.state, d.author
    );
    println!("  SHA-256 {}", d.sha256);
    if !d.submitted_by.is_empty() {
        println!("  submitted by {}", d.submitted_by);
    }
    if !d.approved_by.is_empty() {
        println!(
            "  approved by {}, effective from {}",
            d.approved_by,
            time(&d.effective_from)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default()
        );
    }
    if d.in_force_version == 0 {
        println!("  a new product (no version in force)");
    } else {
        println!("  changes against v{} (in force):", d.in_force_version);
    }
    for c in &d.changes {
        match (c.before.is_empty(), c.after.is_empty()) {
            (true, _) => println!("    + {}: {}", c.what, c.after),
            (_, true) => println!("    - {}: {}", c.what, c.before),
            _ => println!("    ~ {}: {} -> {}", c.what, c.before, c.after),
        }
    }
    if d.dry_runs.is_empty() {
        if d.state != "approved" {
            println!(
                "  no dry run yet (`carrel-hub recipe dry-run {} {}`)",
                d.recipe_id, d.version
            );
        }
    } else {
        println!("  dry runs (never released; records: `carrel-hub release show BATCH`):");
        for run in &d.dry_runs {
            println!("    {}", dry_run_line(run));
        }
    }
    Ok(())
}

pub async fn run(command: RecipeCommand) -> anyhow::Result<()> {
    match command {
        RecipeCommand::Draft { file, client } => {
            let toml = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let draft =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?)
                    .draft_recipe(pb::DraftRecipeRequest { toml })
                    .await?
                    .into_inner()
                    .draft
                    .unwrap_or_default();
            print_draft(&draft, client.json)
        }
        RecipeCommand::Show {
            recipe_id,
            version,
            client,
        }
        | RecipeCommand::Diff {
            recipe_id,
            version,
            client,
        } => {
            let draft =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?)
                    .show_recipe_draft(pb::ShowRecipeDraftRequest { recipe_id, version })
                    .await?
                    .into_inner()
                    .draft
                    .unwrap_or_default();
            print_draft(&draft, client.json)
        }
        RecipeCommand::List { client } => {
            let drafts =
                pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?)
                    .list_recipe_drafts(pb::ListRecipeDraftsRequest {})
                    .await?
                    .into_inner()
                    .drafts;
            if client.json {
                let list: Vec<_> = drafts.iter().map(draft_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if drafts.is_empty() {
                println!("No recipe versions under change control (`carrel-hub recipe draft FILE.toml`).");
            } else {
                for d in &drafts {
                    println!(
                        "{} v{} \"{}\": {} (by {})",
                        d.recipe_id, d.version, d.title, d.state, d.author
                    );
                }
            }
            Ok(())
        }
        RecipeCommand::Submit {
            recipe_id,
            version,
            sha256,
            user,
            acknowledge_signature_meaning,
            client,
        } => {
            sign(
                client,
                pb::SignRecipeRequest {
                    recipe_id,
                    version,
                    sha256,
                    acknowledge_signature_meaning,
                    ..Default::default()
                },
                user,
                false,
            )
            .await
        }
        RecipeCommand::Approve {
            recipe_id,
            version,
            sha256,
            effective_from,
            user,
            acknowledge_signature_meaning,
            client,
        } => {
            sign(
                client,
                pb::SignRecipeRequest {
                    recipe_id,
                    version,
                    sha256,
                    acknowledge_signature_meaning,
                    effective_from,
                    ..Default::default()
                },
                user,
                true,
            )
            .await
        }
        RecipeCommand::DryRun {
            recipe_id,
            version,
            wait,
            client,
        } => dry_run(client, recipe_id, version, wait).await,
        RecipeCommand::Retire {
            recipe_id,
            version,
            reason,
            client,
        } => {
            pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?)
                .retire_recipe(pb::RetireRecipeRequest {
                    recipe_id: recipe_id.clone(),
                    version,
                    reason,
                })
                .await?;
            println!("{recipe_id} v{version} retired: new orders no longer pin it; running batches keep it.");
            Ok(())
        }
    }
}

/// Starts a dry run; with `wait`, follows its batch until its record is complete
/// (awaiting release, where a dry run stays) or it stops.
async fn dry_run(
    client: ClientArgs,
    recipe_id: String,
    version: u32,
    wait: bool,
) -> anyhow::Result<()> {
    let mut api = pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
    let run = api
        .dry_run_recipe(pb::ShowRecipeDraftRequest { recipe_id, version })
        .await?
        .into_inner()
        .dry_run
        .unwrap_or_default();
    let order = run.order.clone().unwrap_or_default();
    if !client.json {
        println!("Dry run started: {}", dry_run_line(&run));
    }
    let mut state = order.state;
    if wait {
        let finished = |s: i32| {
            !matches!(
                pb::BatchState::try_from(s),
                Ok(pb::BatchState::Ordered | pb::BatchState::Accepted | pb::BatchState::InProcess)
            )
        };
        let mut last = (state, order.current_step.clone());
        // A whole batch takes well under a minute on the simulator; much longer
        // means its agent is not running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        while !finished(state) {
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the dry run {} is still {} after 10 minutes: is the simulator site running (the hub's log says)? QA can cancel it: carrel-hub order cancel {} --reason ...",
                    order.batch_id,
                    state_name(state),
                    order.order_id
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let now = api
                .get_batch_record(pb::GetBatchRecordRequest {
                    batch_id: order.batch_id.clone(),
                })
                .await?
                .into_inner()
                .record
                .and_then(|r| r.order)
                .unwrap_or_default();
            state = now.state;
            let shown = (now.state, now.current_step.clone());
            if shown != last && !client.json {
                let step = if now.current_step.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", now.current_step)
                };
                println!("  {}{step}", state_name(now.state));
            }
            last = shown;
        }
    }
    if client.json {
        let mut value = dry_run_json(&run);
        value["state"] = state_name(state).into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if wait {
        println!(
            "The dry run ended {}: its record is carrel-hub release show {} (a dry run is never released).",
            state_name(state),
            order.batch_id
        );
    } else {
        println!(
            "Follow it: carrel-hub recipe show {} {}; its record: carrel-hub release show {}",
            run.order
                .as_ref()
                .map(|o| o.product.split('~').next().unwrap_or_default().to_owned())
                .unwrap_or_default(),
            order.recipe_version,
            order.batch_id
        );
    }
    Ok(())
}

/// A signed submission or approval: asks for the user name (unless given) and the
/// password, and the one-time acknowledgement when the hub needs it.
async fn sign(
    client: ClientArgs,
    mut request: pb::SignRecipeRequest,
    user: Option<String>,
    approve: bool,
) -> anyhow::Result<()> {
    let api = pb::release_service_client::ReleaseServiceClient::new(authed(&client).await?);
    (request.username, request.password) = signer(user)?;
    let response = signed(
        request,
        |r| r.acknowledge_signature_meaning = true,
        |r| {
            let mut api = api.clone();
            async move {
                if approve {
                    api.approve_recipe(r).await
                } else {
                    api.submit_recipe(r).await
                }
            }
        },
    )
    .await?;
    print_draft(&response.draft.unwrap_or_default(), client.json)
}

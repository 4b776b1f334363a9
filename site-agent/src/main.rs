//! `carrel-site-agent`: wiring only. See the library for the parts.
#![forbid(unsafe_code)]

use anyhow::Context;
use carrel_proto::event::EventKind;
use carrel_proto::recipe::Outcome;
use carrel_site_agent::{custody, entries, identity, labels, people, Config};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "carrel-site-agent",
    version,
    about = "Carrel site agent: runs a site's equipment and replicates its records to the hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: text or json.
    #[arg(long, global = true, env = "CARREL_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this site with a one-time token from the hub administrator.
    Enroll {
        /// Hub address, e.g. https://hub.example.org:7443
        #[arg(long)]
        hub: String,
        /// File holding the enrollment token that `carrel-hub site add` printed, or
        /// `-` to read it from standard input. Without it, the token is taken from
        /// the CARREL_ENROLLMENT_TOKEN environment variable; it is never an argument,
        /// where any user of the machine could read it in the process list.
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Run the agent.
    Run {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Print the effective configuration and exit.
        #[arg(long)]
        dump_config: bool,
        /// Check the configuration (and that the site is enrolled) and exit: 0 when
        /// the agent would start, 2 with the reason when it would not.
        #[arg(long, conflicts_with = "dump_config")]
        check_config: bool,
        /// With --check-config: also check the step mappings against this recipe
        /// (TOML or JSON): steps, reading parameters and units, QC tests and units.
        #[arg(long, requires = "check_config")]
        recipe: Vec<PathBuf>,
        /// With --check-config: do not contact the instruments. Without it, each
        /// instrument a step uses is connected to (pin, identity, features) and each
        /// value the mappings read is read once and must be a number where one is
        /// needed; an instrument that cannot be reached is noted, not refused.
        #[arg(long, requires = "check_config")]
        offline: bool,
    },
    /// Show the batches at this site and how far the hub has acknowledged the log.
    Status {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Scan a label at a custody checkpoint. Each person's password is read from a
    /// prompt (or, when standard input is not a terminal, one line each from it,
    /// the second verifier's after yours); then, at a bedside checkpoint, the
    /// patient's wristband (its COI or the patient's pseudonym); then the label, as
    /// a hand-held scanner types it (or typed from the eye-readable text). Exits 0 on a match, 3 on a
    /// MISMATCH (recorded; the step does not start), 4 when a person is refused.
    Scan {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Batch id (or its first 8+ characters).
        #[arg(long)]
        batch: String,
        /// Checkpoint id from the recipe (e.g. receipt, handover, infusion).
        #[arg(long)]
        checkpoint: String,
        /// Your user name (as the hub's directory names you), or your badge as scanned
        /// (then its PIN is asked instead of the password).
        #[arg(long)]
        user: String,
        /// The second person of a two-person verification (user name or badge; their
        /// own password or PIN is asked).
        #[arg(long = "second-user")]
        second_users: Vec<String>,
        /// Where the scan happens.
        #[arg(long, default_value = "")]
        location: String,
    },
    /// Record an off-line QC result (or a retest of an earlier one).
    Qc {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        batch: String,
        /// Test id from the recipe.
        #[arg(long)]
        test: String,
        #[arg(long)]
        value: String,
        /// Your user name; the password is read from a prompt or standard input.
        #[arg(long)]
        user: String,
        /// The record this retests (an out-of-specification result is never overwritten).
        #[arg(long)]
        retest_of: Option<u64>,
    },
    /// Correct an earlier record: a new record pointing at it, with a reason.
    Correct {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Seq of the record to correct (see `events`).
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        field: String,
        #[arg(long)]
        value: String,
        #[arg(long)]
        reason: String,
        /// Your user name; the password is read from a prompt or standard input.
        #[arg(long)]
        user: String,
    },
    /// Print a batch's label for a custody checkpoint (the apheresis bag at
    /// collection, the final bag at fill...) as PDF, PNG or ZPL (Zebra printers).
    /// Every print and reprint is recorded: who, when, which label.
    Label {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// The batch: its id or COI.
        #[arg(long)]
        batch: String,
        /// The recipe's custody checkpoint, e.g. collection or fill.
        #[arg(long)]
        checkpoint: String,
        /// pdf, png or zpl.
        #[arg(long, default_value = "pdf")]
        format: String,
        /// Where to write the label (a ZPL file can be sent to a Zebra printer as is).
        #[arg(long)]
        out: PathBuf,
        /// Your user name; the password is read from a prompt or standard input.
        #[arg(long)]
        user: String,
    },
    /// Raise a deviation on a batch by hand (as the signed-in person): what departed
    /// from the recipe or the site's procedure. QA investigates and closes it at the
    /// hub; a major or critical one stops the batch's release until then.
    Deviation {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// The batch: its id or COI.
        #[arg(long)]
        batch: String,
        /// minor, major or critical.
        #[arg(long)]
        classification: String,
        /// What happened, where, and what was done (at least four words).
        #[arg(long)]
        description: String,
        /// The recipe step it concerns (none: the batch as a whole).
        #[arg(long, default_value = "")]
        step: String,
        /// Your user name; the password is read from a prompt or standard input.
        #[arg(long)]
        user: String,
    },
    /// Write a consistent backup of the site's store while the agent runs.
    Backup {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file to create.
        #[arg(long)]
        to: PathBuf,
    },
    /// List the site's records (all, or one batch's).
    Events {
        #[arg(long, env = "CARREL_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        batch: Option<String>,
        /// Print JSON (each record as stored: its canonical JSON) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code of a scan whose label did not match: the hard stop.
/// `run --check-config`: 0 when the agent would start, 2 with every reason it would
/// not (a file that does not parse, a setting, the enrolment, a recipe that does not
/// fit the step mappings).
async fn check(
    data_dir: &std::path::Path,
    recipes: &[PathBuf],
    offline: bool,
) -> std::process::ExitCode {
    let mut problems = Vec::new();
    let mut checked = 0;
    match Config::load(data_dir) {
        Err(e) => problems.push(format!("{e:#}")),
        Ok(config) => {
            if let Err(e) = config.validate() {
                problems.push(e.to_string());
            }
            for path in recipes {
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) => {
                        problems.push(format!("recipe {}: {e}", path.display()));
                        continue;
                    }
                };
                let parsed = if text.trim_start().starts_with('{') {
                    carrel_proto::recipe::Recipe::from_json(&text)
                } else {
                    carrel_proto::recipe::Recipe::from_toml(&text)
                };
                match parsed {
                    Ok(recipe) => problems.extend(config.check_against(&recipe)),
                    Err(e) => problems.push(format!("recipe {}: {e}", path.display())),
                }
            }
            // The instruments are asked once the configuration itself is right.
            if problems.is_empty() && !offline {
                match carrel_site_agent::instrument::Instruments::from_config(&config) {
                    Err(e) => problems.push(e.to_string()),
                    Ok(instruments) => {
                        let asked = instruments.check().await;
                        for note in &asked.unreachable {
                            eprintln!("carrel-site-agent: note: {note}");
                        }
                        problems.extend(asked.problems);
                        checked = asked.checked;
                    }
                }
            }
            // Enrolment is looked at once the configuration itself is right.
            match identity::Identity::load(&config.data_dir) {
                _ if !problems.is_empty() => {}
                Ok(identity) => {
                    println!(
                        "Configuration in {} is valid; enrolled as site {}, hub {}.",
                        data_dir.display(),
                        identity.site_id,
                        config.hub_addresses().join(", ")
                    );
                    if checked > 0 {
                        println!("{checked} value(s) read at the instruments are as the step mappings need them.");
                    }
                    return std::process::ExitCode::SUCCESS;
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }
    for problem in &problems {
        eprintln!("carrel-site-agent: {problem}");
    }
    std::process::ExitCode::from(2)
}

const EXIT_MISMATCH: u8 = 3;
/// Exit code when a person may not act (unknown, wrong password, locked, disabled).
const EXIT_REFUSED: u8 = 4;

/// Reads a secret: from a prompt without echo on a terminal, else one line of
/// standard input.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading a password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Signs a person in against the site's directory for one command.
async fn sign_in(
    store: &carrel_site_agent::store::Store,
    data_dir: &std::path::Path,
    username: &str,
) -> Result<people::SignedIn, people::Refused> {
    let lock_after = Config::load(data_dir)
        .map(|c| c.sign_in_attempts)
        .unwrap_or(10);
    let password =
        read_secret(&format!("Password (or badge PIN) for {username}: ")).map_err(|e| {
            people::Refused::Store(carrel_site_agent::store::Error::Read(e.to_string()))
        })?;
    people::sign_in(store, username, &password, lock_after).await
}

fn refused(e: people::Refused) -> anyhow::Result<std::process::ExitCode> {
    eprintln!("Nothing was recorded: {e}");
    Ok(std::process::ExitCode::from(EXIT_REFUSED))
}

async fn open_store(data_dir: &std::path::Path) -> anyhow::Result<carrel_site_agent::store::Store> {
    identity::Identity::load(data_dir)?;
    let db = data_dir.join("agent.db");
    carrel_site_agent::store::Store::open(&db)
        .await
        .with_context(|| format!("opening {}", db.display()))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The enrollment token from `--token-file` (`-`: standard input) or from the
/// CARREL_ENROLLMENT_TOKEN environment variable.
fn enrollment_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = match file {
        Some(path) if path == std::path::Path::new("-") => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the enrollment token from standard input")?;
            line
        }
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the enrollment token from {}", path.display()))?,
        None => std::env::var("CARREL_ENROLLMENT_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "no enrollment token: give --token-file PATH (or --token-file - to type or pipe it) or set CARREL_ENROLLMENT_TOKEN"
            )
        })?,
    };
    let token = text.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("the enrollment token is empty");
    }
    Ok(token)
}

async fn shutdown_signal(token: CancellationToken) {
    let wait = || async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    wait().await;
    tracing::info!("shutting down (signal again to exit at once)");
    token.cancel();
    wait().await;
    std::process::exit(130);
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Enroll {
            hub,
            token_file,
            data_dir,
        } => {
            init_tracing(cli.log_format);
            let token = enrollment_token(token_file.as_deref())?;
            let enrolled =
                identity::enroll(&hub, &token, &data_dir, env!("CARGO_PKG_VERSION")).await?;
            let mut config = Config::load(&data_dir)?;
            config.hub = hub;
            carrel_site_agent::write_config(&config)?;
            println!(
                "Enrolled as site {} ({}). Start with: carrel-site-agent run --data-dir {}",
                enrolled.site_id,
                enrolled.site_name,
                data_dir.display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Run {
            data_dir,
            dump_config,
            check_config,
            recipe,
            offline,
        } => {
            if check_config {
                return Ok(check(&data_dir, &recipe, offline).await);
            }
            let config = Config::load(&data_dir)?;
            if dump_config {
                print!("{}", toml::to_string_pretty(&config)?);
                return Ok(std::process::ExitCode::SUCCESS);
            }
            config.validate()?;
            init_tracing(cli.log_format);
            let shutdown = CancellationToken::new();
            tokio::spawn(shutdown_signal(shutdown.clone()));
            let running = carrel_site_agent::start(config, shutdown).await?;
            running.wait().await;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Status { data_dir, json } => {
            let site_id = identity::Identity::load(&data_dir)?.site_id;
            let store = open_store(&data_dir).await?;
            let last = store.last_event_seq().await?;
            let acked = store.hub_acked().await?;
            let batches = store.batches().await?;
            if json {
                let batches: Vec<_> = batches
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "batch_id": b.batch_id, "order_id": b.order_id, "coi": b.coi,
                            "patient_pseudonym": b.patient_pseudonym, "recipe_id": b.recipe_id,
                            "recipe_version": b.recipe_version, "state": b.state.as_str(),
                            "current_step": b.current_step, "decision": b.decision,
                            "updated_at": b.updated_at,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "site_id": site_id, "events_recorded": last,
                        "events_acknowledged_by_hub": acked,
                        "events_waiting": last - acked.min(last), "batches": batches,
                    }))?
                );
                return Ok(std::process::ExitCode::SUCCESS);
            }
            println!(
                "Site {site_id}: {last} events recorded, {acked} acknowledged by the hub ({} waiting)",
                last - acked.min(last)
            );
            println!(
                "{:<36} {:<14} {:<17} {:<12}",
                "BATCH", "COI", "STATE", "STEP"
            );
            for b in batches {
                // A conditional release says so until QA completes it.
                let state = match b.decision.as_deref() {
                    Some("released_conditionally") => {
                        format!("{} (released conditionally)", b.state.as_str())
                    }
                    _ => b.state.as_str().to_owned(),
                };
                println!(
                    "{:<36} {:<14} {:<17} {:<12}",
                    b.batch_id,
                    b.coi,
                    state,
                    b.current_step.unwrap_or_default()
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Scan {
            data_dir,
            batch,
            checkpoint,
            user,
            second_users,
            location,
        } => {
            let store = open_store(&data_dir).await?;
            let batch = custody::find_batch(&store, &batch).await?;
            let mut verifiers = Vec::new();
            for name in std::iter::once(&user).chain(&second_users) {
                if verifiers
                    .iter()
                    .any(|p: &people::SignedIn| p.username.eq_ignore_ascii_case(name.trim()))
                {
                    return refused(people::Refused::SamePerson(name.trim().to_owned()));
                }
                match sign_in(&store, &data_dir, name).await {
                    Ok(person) => verifiers.push(person),
                    Err(e) => return refused(e),
                }
            }
            let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
            // At the bedside the patient's wristband is scanned first, then the bag.
            let recipe = carrel_proto::recipe::Recipe::from_json(&batch.recipe_json)
                .context("the batch's recipe")?;
            let wristband = if recipe
                .bedside_checkpoints
                .iter()
                .any(|c| c.id == checkpoint)
            {
                if interactive {
                    eprint!("Scan the patient's wristband (its COI or the patient's code): ");
                }
                let mut wristband = String::new();
                std::io::stdin()
                    .read_line(&mut wristband)
                    .context("reading the wristband from standard input")?;
                Some(wristband)
            } else {
                None
            };
            if interactive {
                eprint!("Scan the label (or type it from the eye-readable text): ");
            }
            let mut label = String::new();
            std::io::stdin()
                .read_line(&mut label)
                .context("reading the label from standard input")?;
            let outcome = custody::scan(
                &store,
                custody::Scan {
                    batch_id: batch.batch_id,
                    checkpoint_id: &checkpoint,
                    label: &label,
                    verifiers: custody::Verifiers::People(&verifiers),
                    location: &location,
                    wristband: wristband.as_deref(),
                },
            )
            .await?;
            Ok(match outcome {
                custody::Scanned::Match(event) => {
                    println!(
                        "MATCH  {}  checkpoint {checkpoint}  record {}",
                        batch.coi, event.seq
                    );
                    std::process::ExitCode::SUCCESS
                }
                custody::Scanned::Mismatch(event) => {
                    if let EventKind::CustodyScan { scanned_coi, .. } = &event.kind {
                        println!(
                            "!!! MISMATCH — STOP !!!  expected {}  scanned {scanned_coi}",
                            batch.coi
                        );
                    }
                    println!("The step does not start. The mismatch is recorded (record {}) and raised to QA.", event.seq);
                    std::process::ExitCode::from(EXIT_MISMATCH)
                }
            })
        }
        Command::Qc {
            data_dir,
            batch,
            test,
            value,
            user,
            retest_of,
        } => {
            let store = open_store(&data_dir).await?;
            let batch = custody::find_batch(&store, &batch).await?;
            let by = match sign_in(&store, &data_dir, &user).await {
                Ok(person) => person,
                Err(e) => return refused(e),
            };
            let (event, evaluation) = entries::record_result(
                &store,
                entries::ManualResult {
                    batch: &batch,
                    test_id: &test,
                    value: &value,
                    by: &by,
                    retest_of,
                },
            )
            .await?;
            match evaluation.outcome {
                Outcome::Pass => println!("Recorded {test} = {value} (record {}): within specification.", event.seq),
                Outcome::OutOfSpecification => println!(
                    "Recorded {test} = {value} (record {}): OUT OF SPECIFICATION: {}. QA will see it first.",
                    event.seq, evaluation.reason
                ),
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Correct {
            data_dir,
            seq,
            field,
            value,
            reason,
            user,
        } => {
            let store = open_store(&data_dir).await?;
            let by = match sign_in(&store, &data_dir, &user).await {
                Ok(person) => person,
                Err(e) => return refused(e),
            };
            let event = entries::correct(&store, seq, &field, &value, &reason, &by).await?;
            println!(
                "Recorded correction {} of record {seq}; both stay on the record.",
                event.seq
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Label {
            data_dir,
            batch,
            checkpoint,
            format,
            out,
            user,
        } => {
            let format = labels::Format::parse(&format)?;
            let store = open_store(&data_dir).await?;
            let batch = custody::find_batch(&store, &batch).await?;
            let config = Config::load(&data_dir)?;
            let site_id = identity::Identity::load(&data_dir)?.site_id;
            let label = labels::label_of(
                &batch,
                &checkpoint,
                &site_id,
                config.zone()?,
                chrono::Utc::now(),
            )?;
            let by = match sign_in(&store, &data_dir, &user).await {
                Ok(person) => person,
                Err(e) => return refused(e),
            };
            let (event, bytes) =
                labels::print(&store, &batch, &checkpoint, &label, format, &by).await?;
            std::fs::write(&out, &bytes)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            let copy = match &event.kind {
                carrel_proto::event::EventKind::LabelPrinted { copy, .. } => *copy,
                _ => 1,
            };
            println!(
                "Label of {} ({}) for {checkpoint} written to {} as {}; recorded as record {} ({}).",
                batch.coi,
                label.coi.eye_readable(),
                out.display(),
                format.as_str(),
                event.seq,
                if copy > 1 {
                    format!("reprint, copy {copy}")
                } else {
                    "first print".to_owned()
                }
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Deviation {
            data_dir,
            batch,
            classification,
            description,
            step,
            user,
        } => {
            let store = open_store(&data_dir).await?;
            let batch = custody::find_batch(&store, &batch).await?;
            let by = match sign_in(&store, &data_dir, &user).await {
                Ok(person) => person,
                Err(e) => return refused(e),
            };
            let event = entries::raise_deviation(
                &store,
                entries::ManualDeviation {
                    batch: &batch,
                    step_id: &step,
                    classification: &classification,
                    description: &description,
                    by: &by,
                },
            )
            .await?;
            if let carrel_proto::event::EventKind::DeviationRaised {
                deviation_id,
                classification,
                ..
            } = &event.kind
            {
                println!(
                    "Deviation {deviation_id} ({classification}) raised on {} as record {}; QA investigates and closes it at the hub{}.",
                    batch.coi,
                    event.seq,
                    if classification == "minor" {
                        ""
                    } else {
                        ", and the batch is not released before"
                    }
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Backup { data_dir, to } => {
            let store = open_store(&data_dir).await?;
            store.backup_to(&to).await?;
            println!("Backup of the site store written to {}.", to.display());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Events {
            data_dir,
            batch,
            json,
        } => {
            let store = open_store(&data_dir).await?;
            let events = match batch {
                Some(id) => {
                    store
                        .batch_events(custody::find_batch(&store, &id).await?.batch_id)
                        .await?
                }
                None => store.events_after(0, usize::MAX >> 1).await?,
            };
            if json {
                let records = events
                    .iter()
                    .map(|event| serde_json::from_str(&event.canonical_json()))
                    .collect::<Result<Vec<serde_json::Value>, _>>()?;
                println!("{}", serde_json::to_string_pretty(&records)?);
                return Ok(std::process::ExitCode::SUCCESS);
            }
            // Times in the site's zone (its config); UTC without one.
            let zone = Config::load(&data_dir)
                .ok()
                .and_then(|c| c.zone().ok())
                .unwrap_or(chrono_tz::Tz::UTC);
            for event in events {
                println!(
                    "{:>6}  {}  {:<10} {:<26} {}",
                    event.seq,
                    event
                        .recorded_at
                        .with_timezone(&zone)
                        .format("%Y-%m-%d %H:%M:%S %Z"),
                    event.recorded_by,
                    event.kind.name(),
                    serde_json::to_string(&event.kind).unwrap_or_default()
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `status | head -1` ends quietly when the reader stops, as Unix tools do
    // (SIGPIPE itself stays ignored: see the module).
    carrel_proto::closed_stdout::end_quietly_when_stdout_closes();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // A refusal from the hub reads as its message and gRPC code, not as a debug dump.
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {} ({:?})", status.message(), status.code()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

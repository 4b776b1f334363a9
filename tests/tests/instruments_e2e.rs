//! End to end with real instruments: a hub, site agents, and instrument servers
//! written by others. A site maps its expansion step to a SiLA 2 server (TLS, pinned
//! certificate) and reads the step's process parameters from an OPC UA server
//! (Basic256Sha256, Sign & Encrypt); every other step runs on the simulator.
//!
//! - The batch reaches QA with the SiLA command recorded and the OPC UA readings in
//!   its record, and the hub holds exactly the site's log.
//! - The agent is SIGKILLed while the SiLA command runs; restarted, it re-attaches to
//!   the same command execution (no second run) and records the interruption.
//! - At another site the instrument reports contamination: the defined execution error
//!   becomes an alarm and a deviation that QA sees among the batch's exceptions.
//! - A slow measurement whose first intermediate response comes after the connect
//!   timeout is started once, across an agent kill, and its Viability is the in-process
//!   QC result in the record; a refused parameter is one deviation and a held batch.
//!
//! The simulator makes up no result for a step it did not run: the expansion's QC
//! comes from the instrument, and the release tests from the site's laboratory, typed
//! in at the site (`carrel-site-agent qc`).

use carrel_tests::peers::{opcua_client_identity, python, Peer};
use carrel_tests::scenario::{add_people, create_order, wait_order_state, QA};
use carrel_tests::*;
use std::path::Path;
use std::time::Duration;

/// Maps the site's instruments: expansion on the SiLA 2 server, its temperature, pH,
/// dissolved oxygen and cell density read from the OPC UA server every 0.5 s.
fn map_instruments(agent: &Agent, sila: &Peer, opcua: &Peer, keys: &Path) {
    map_instruments_with(
        agent,
        sila,
        opcua,
        keys,
        "",
        "DurationHours = \"{duration_hours}\"",
    );
}

/// As [`map_instruments`], with `sila_extra` lines in the SiLA instrument's table and
/// `duration` as the command's DurationHours parameter.
fn map_instruments_with(
    agent: &Agent,
    sila: &Peer,
    opcua: &Peer,
    keys: &Path,
    sila_extra: &str,
    duration: &str,
) {
    let text = format!(
        r#"
[[instruments]]
name = "cps-sila"
kind = "sila2"
address = "{sila_address}"
pinned_certificate = "{sila_cert}"
features = ["org.carrel/bioprocess/CellExpansionController/v1"]
{sila_extra}

[[instruments]]
name = "bioreactor-ua"
kind = "opcua"
endpoint = "{ua_endpoint}"
client_certificate = "{keys}/agent.der"
client_key = "{keys}/agent.pem"
server_certificate = "{ua_cert}"

[[steps]]
step = "expansion"
instrument = "cps-sila"
command = "RunExpansion"
parameters = {{ {duration}, TargetDensity = 8.0, BatchId = "{{batch_id}}" }}
sample_interval_s = 0.5
retry_on = ["InstrumentBusy"]
retry_interval_s = 1.0
qc = [{{ test = "ip-viability", result = "Viability", unit = "%" }}]
readings = [
  {{ parameter = "temperature", instrument = "bioreactor-ua", source = "ns=2;s=Bioreactor.Temperature", unit = "degC" }},
  {{ parameter = "ph", instrument = "bioreactor-ua", source = "ns=2;s=Bioreactor.pH", unit = "pH" }},
  {{ parameter = "dissolved_o2", instrument = "bioreactor-ua", source = "ns=2;s=Bioreactor.DissolvedOxygen", unit = "%" }},
]
"#,
        sila_address = sila.address(),
        sila_cert = sila.sila_certificate().display(),
        ua_endpoint = opcua.opcua_endpoint(),
        ua_cert = opcua.opcua_certificate().display(),
        keys = keys.display(),
    );
    let table: toml::Table = toml::from_str(&text).expect("instrument mapping parses");
    for (key, value) in table {
        agent.configure(&[&key], value);
    }
}

/// The OPC UA peer, trusting the agent's client certificate, 100 000 times faster
/// than real time.
fn opcua_peer(python: &Path, agent_cert: &Path) -> Peer {
    Peer::opcua(
        python,
        &[
            "--trust-client-cert",
            &agent_cert.display().to_string(),
            "--time-compression",
            "100000",
        ],
    )
}

/// A hub with a physician and QA, and an agent enrolled at `site` (not started).
async fn hub_and_site(site: &str) -> (Hub, Agent) {
    let hub = Hub::start().await;
    add_people(&hub);
    let token = hub.add_site(site);
    let agent = Agent::enroll(&hub, site, &token).expect("enrollment");
    (hub, agent)
}

/// The site laboratory's person, who types in release results.
const LAB: (&str, &str) = ("lab.i", "lab-i-password-1");

/// Adds the laboratory's person at `site` and waits until the site knows them.
async fn add_lab(hub: &Hub, agent: &Agent, site: &str) {
    hub.add_person(LAB.0, "technician", LAB.1, site);
    agent.wait_for_person(LAB.0, "active").await;
}

/// Once the batch's last step is done, the laboratory types in its release results
/// at the site: nothing else makes them for a batch a real instrument worked on.
async fn lab_enters_release_results(agent: &Agent, batch: &str) {
    eventually(
        Duration::from_secs(120),
        "the batch's steps to be done",
        || async move {
            let log = site_log(agent).await;
            log.iter()
                .any(|(_, e)| {
                    e["batch_id"] == batch
                        && e["kind"]["type"] == "step_completed"
                        && e["kind"]["step_id"] == "formulation"
                })
                .then_some(())
        },
    )
    .await;
    for (test, value) in [
        ("viability", "91.5"),
        ("cd3", "92"),
        ("car-positive", "33"),
        ("dose", "1.4"),
        ("mycoplasma", "not detected"),
        ("endotoxin", "0.1"),
        ("vcn", "2.1"),
    ] {
        let out = agent.cli(
            &[
                "qc", "--batch", batch, "--test", test, "--value", value, "--user", LAB.0,
            ],
            &format!("{}\n", LAB.1),
        );
        assert!(
            out.status.success(),
            "{test}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expansion_runs_on_sila_with_opcua_readings_and_survives_an_agent_kill() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    // 168 process hours in about 20 s, so that the agent can be killed mid-command.
    let sila = Peer::sila(&python, &["--time-compression", "30000"]);
    let opcua = opcua_peer(&python, &agent_cert);

    let (hub, mut agent) = hub_and_site("site-sila").await;
    map_instruments(&agent, &sila, &opcua, keys.path());
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-sila", "P-SILA-1");

    // The command's execution UUID is on the record before the agent waits on it.
    let execution_id = eventually(
        Duration::from_secs(60),
        "the SiLA command to be recorded",
        || {
            let agent = &agent;
            async move {
                let log = site_log(agent).await;
                let id = of_type(&log, "instrument_command_started")
                    .next()
                    .map(|k| k["execution_id"].as_str().expect("id").to_owned());
                id
            }
        },
    )
    .await;
    uuid::Uuid::parse_str(&execution_id).expect("a SiLA command execution UUID");
    // Let a few readings arrive, then kill the agent mid-command.
    eventually(
        Duration::from_secs(15),
        "OPC UA readings of the expansion",
        || {
            let agent = &agent;
            async move {
                let log = site_log(agent).await;
                (of_type(&log, "process_samples")
                    .filter(|k| k["step_id"] == "expansion")
                    .count()
                    >= 2)
                    .then_some(())
            }
        },
    )
    .await;
    agent.kill();
    let before = site_log(&agent).await;
    assert!(
        of_type(&before, "step_completed").all(|k| k["step_id"] != "expansion"),
        "killed while the expansion still ran"
    );
    agent.start();
    add_lab(&hub, &agent, "site-sila").await;
    lab_enters_release_results(&agent, &batch_id).await;

    wait_order_state(
        &hub,
        &order_id,
        "awaiting_release",
        Duration::from_secs(120),
    )
    .await;
    let log = site_log(&agent).await;

    // The expansion's in-process viability is what the instrument measured, with its
    // unit, and says which instrument measured it.
    let returned: Vec<_> = of_type(&log, "instrument_results").collect();
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(returned[0]["command"], "RunExpansion");
    let viability = returned[0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["name"] == "Viability")
        .expect("the instrument returned Viability");
    assert_eq!(viability["unit"], "%");
    let ip: Vec<_> = of_type(&log, "qc_result")
        .filter(|k| k["test_id"] == "ip-viability")
        .collect();
    assert_eq!(ip.len(), 1, "{ip:?}");
    assert_eq!(
        ip[0]["value"]["numeric"].as_f64(),
        viability["value"]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok()),
        "{ip:?} {viability}"
    );
    assert!(
        ip[0]["method"]
            .as_str()
            .is_some_and(|m| m.contains("measured by instrument cps-sila")),
        "{ip:?}"
    );
    // The selection step ran on the simulator: its result says it was simulated.
    assert!(of_type(&log, "qc_result")
        .filter(|k| k["test_id"] == "ip-cd3-purity")
        .all(|k| k["method"]
            .as_str()
            .is_some_and(|m| m.ends_with("(simulated)"))));

    // One command, re-attached to: no second run, no instrument alarm, and the
    // interruption is a deviation that says what happened.
    let started: Vec<_> = of_type(&log, "instrument_command_started").collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["instrument_id"], "cps-sila");
    assert_eq!(started[0]["command"], "RunExpansion");
    assert_eq!(of_type(&log, "instrument_alarm").count(), 0);
    let restarts: Vec<_> = of_type(&log, "deviation_raised")
        .filter(|k| {
            k["deviation_id"]
                .as_str()
                .is_some_and(|d| d.ends_with("-expansion-RESTART"))
        })
        .collect();
    assert_eq!(restarts.len(), 1, "{log:?}");
    let description = restarts[0]["description"].as_str().expect("text");
    assert!(
        description.contains(&format!("re-attached to execution {execution_id}")),
        "{description}"
    );
    let expansion_starts: Vec<_> = of_type(&log, "step_started")
        .filter(|k| k["step_id"] == "expansion")
        .collect();
    assert_eq!(expansion_starts.len(), 2);
    assert!(expansion_starts
        .iter()
        .all(|k| k["instrument_id"] == "cps-sila"));
    assert_eq!(expansion_starts[1]["resumed"], true);
    // The other steps ran on the simulator, as before.
    assert!(of_type(&log, "step_started")
        .filter(|k| k["step_id"] != "expansion")
        .all(|k| k["instrument_id"] == "sim-cps-01"));
    // Process parameters of the expansion come from the OPC UA server: three per sample,
    // the temperature at the bioreactor's setpoint.
    let samples: Vec<&serde_json::Value> = of_type(&log, "process_samples")
        .filter(|k| k["step_id"] == "expansion")
        .flat_map(|k| k["samples"].as_array().expect("samples"))
        .collect();
    let temperatures: Vec<f64> = samples
        .iter()
        .filter(|s| s["parameter"] == "temperature")
        .map(|s| s["value"].as_f64().expect("number"))
        .collect();
    assert!(temperatures.len() >= 4, "{samples:?}");
    assert!(
        temperatures.iter().all(|t| (36.0..=38.0).contains(t)),
        "{temperatures:?}"
    );
    assert!(samples.iter().any(|s| s["parameter"] == "ph"));
    assert!(samples.iter().any(|s| s["parameter"] == "dissolved_o2"));

    // The hub holds exactly the site's log, and shows the command in the record.
    let hub_db = hub.db().await;
    eventually(
        Duration::from_secs(30),
        "the hub to hold the site's log",
        || {
            let hub_db = &hub_db;
            let agent = &agent;
            async move {
                let site = agent_events(&agent.db().await).await;
                (hub_events(hub_db, "site-sila").await.len() == site.len()).then_some(())
            }
        },
    )
    .await;
    assert_same_log(
        &hub_events(&hub_db, "site-sila").await,
        &agent_events(&agent.db().await).await,
    );
    let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let exceptions: Vec<(&str, &str)> = record["exceptions"]
        .as_array()
        .expect("exceptions")
        .iter()
        .map(|e| (str_field(e, "kind"), str_field(e, "summary")))
        .collect();
    assert_eq!(exceptions.len(), 1, "only the restart: {exceptions:?}");
    assert!(exceptions[0].1.contains("re-attached"), "{exceptions:?}");
    let text = record.to_string();
    assert!(text.contains("instrument command started"), "{record}");
    assert!(text.contains(&execution_id), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn contamination_reported_by_the_instrument_is_a_deviation_qa_sees() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    let sila = Peer::sila(
        &python,
        &["--time-compression", "100000", "--fault", "contamination"],
    );
    let opcua = opcua_peer(&python, &agent_cert);
    let (hub, mut agent) = hub_and_site("site-contaminated").await;
    map_instruments(&agent, &sila, &opcua, keys.path());
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-contaminated", "P-SILA-2");
    add_lab(&hub, &agent, "site-contaminated").await;
    lab_enters_release_results(&agent, &batch_id).await;
    // The failed run returned no viability: the lab counts the cells.
    let out = agent.cli(
        &[
            "qc",
            "--batch",
            &batch_id,
            "--test",
            "ip-viability",
            "--value",
            "75",
            "--user",
            LAB.0,
        ],
        &format!("{}\n", LAB.1),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_order_state(
        &hub,
        &order_id,
        "awaiting_release",
        Duration::from_secs(120),
    )
    .await;

    let log = site_log(&agent).await;
    let alarms: Vec<_> = of_type(&log, "instrument_alarm").collect();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0]["code"], "ContaminationDetected");
    assert_eq!(alarms[0]["severity"], "critical");
    assert_eq!(alarms[0]["instrument_id"], "cps-sila");
    let deviations: Vec<_> = of_type(&log, "deviation_raised").collect();
    assert_eq!(deviations.len(), 2, "{deviations:?}");
    // The run stopped before its end: its viability is missing, not made up.
    assert!(
        deviations[1]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("QC result missing: Viability at end of expansion")),
        "{deviations:?}"
    );
    assert!(of_type(&log, "qc_result")
        .filter(|k| k["test_id"] == "ip-viability")
        .all(|k| k["value"]["numeric"] == 75.0));
    assert_eq!(deviations[0]["classification"], "major");
    assert_eq!(deviations[0]["step_id"], "expansion");
    assert!(
        deviations[0]["description"]
            .as_str()
            .is_some_and(|d| d.contains("ContaminationDetected") && d.contains("contamination")),
        "{deviations:?}"
    );

    // QA sees the alarm and the deviation first, in the record as the hub has it.
    let record = eventually(Duration::from_secs(30), "the record at the hub", || {
        let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
        async move { (record["exceptions"].as_array().map(Vec::len) == Some(3)).then_some(record) }
    })
    .await;
    let kinds: Vec<&str> = record["exceptions"]
        .as_array()
        .expect("exceptions")
        .iter()
        .map(|e| str_field(e, "kind"))
        .collect();
    assert_eq!(
        kinds,
        ["instrument alarm", "deviation raised", "deviation raised"],
        "{record}"
    );
    assert!(str_field(&record["exceptions"][1], "summary").contains("ContaminationDetected"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_batches_share_one_instrument_the_second_waits_while_it_is_busy() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    // 168 process hours in about 12 s: long enough for both batches to want it at once.
    let sila = Peer::sila(&python, &["--time-compression", "50000"]);
    let opcua = opcua_peer(&python, &agent_cert);
    let (hub, mut agent) = hub_and_site("site-busy").await;
    map_instruments(&agent, &sila, &opcua, keys.path());
    agent.start();
    let (first, first_batch) = create_order(&hub, "site-busy", "P-BUSY-1");
    let (second, second_batch) = create_order(&hub, "site-busy", "P-BUSY-2");
    add_lab(&hub, &agent, "site-busy").await;
    lab_enters_release_results(&agent, &first_batch).await;
    lab_enters_release_results(&agent, &second_batch).await;
    wait_order_state(&hub, &first, "awaiting_release", Duration::from_secs(120)).await;
    wait_order_state(&hub, &second, "awaiting_release", Duration::from_secs(120)).await;

    // The instrument refused the command it was busy for (InstrumentBusy): that batch
    // started it again later, with no alarm and no deviation, and both expansions ran.
    let log = site_log(&agent).await;
    assert_eq!(of_type(&log, "instrument_alarm").count(), 0, "{log:?}");
    assert_eq!(of_type(&log, "deviation_raised").count(), 0, "{log:?}");
    let commands: Vec<&serde_json::Value> = log
        .iter()
        .filter(|(_, e)| e["kind"]["type"] == "instrument_command_started")
        .map(|(_, e)| e)
        .collect();
    let per_batch = |batch: &str| commands.iter().filter(|e| e["batch_id"] == batch).count();
    let batches: std::collections::BTreeSet<&str> = commands
        .iter()
        .map(|e| e["batch_id"].as_str().expect("batch id"))
        .collect();
    assert_eq!(batches.len(), 2, "{commands:?}");
    assert!(
        batches.iter().any(|b| per_batch(b) >= 2),
        "one batch had to start its command again: {commands:?}"
    );
    assert!(agent
        .log()
        .contains("did not run the command; starting it again later"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_cancelled_mid_command_stops_following_and_asks_the_instrument_to_stop() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    // 168 process hours in about 60 s: the order is cancelled long before the end.
    let sila = Peer::sila(&python, &["--time-compression", "10000"]);
    let opcua = opcua_peer(&python, &agent_cert);
    let (hub, mut agent) = hub_and_site("site-cancel").await;
    map_instruments(&agent, &sila, &opcua, keys.path());
    agent.start();
    let (order_id, _) = create_order(&hub, "site-cancel", "P-SILA-3");
    eventually(Duration::from_secs(60), "the SiLA command to run", || {
        let agent = &agent;
        async move {
            let log = site_log(agent).await;
            (of_type(&log, "instrument_command_started").count() == 1).then_some(())
        }
    })
    .await;
    hub.cli_ok(
        carrel_tests::scenario::PHYSICIAN.0,
        &["order", "cancel", &order_id, "--reason", "patient too ill"],
        None,
    );
    wait_order_state(&hub, &order_id, "cancelled", Duration::from_secs(30)).await;
    // The agent stops following and asks the instrument to stop; this server has no
    // SiLA CancelController, so the agent says the run must be stopped at the instrument.
    eventually(
        Duration::from_secs(20),
        "the agent to give up the command",
        || {
            let text = agent.log();
            async move {
                text.contains("cannot cancel the instrument command; stop it at the instrument")
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        agent.log().contains("CancelController"),
        "the reason is named"
    );
    let log = site_log(&agent).await;
    assert_eq!(of_type(&log, "batch_cancelled").count(), 1);
    assert!(of_type(&log, "step_completed").all(|k| k["step_id"] != "expansion"));
    assert_eq!(of_type(&log, "instrument_alarm").count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_waits_for_an_instrument_that_is_not_up_yet() {
    let Some(python) = python() else { return };
    let (hub, mut agent) = hub_and_site("site-late").await;
    // The SiLA server's port is known, but nothing listens there yet (plain HTTP/2,
    // as the site allows for this instrument).
    let port = free_port();
    let mapping = format!(
        r#"
[[instruments]]
name = "cps-late"
kind = "sila2"
address = "127.0.0.1:{port}"
insecure = true
features = ["org.carrel/bioprocess/CellExpansionController/v1"]
timeout_ms = 2000

[[steps]]
step = "expansion"
instrument = "cps-late"
command = "RunExpansion"
parameters = {{ DurationHours = "{{duration_hours}}", TargetDensity = 8.0, BatchId = "{{batch_id}}" }}
qc = [{{ test = "ip-viability", result = "Viability", unit = "%" }}]
"#
    );
    let table: toml::Table = toml::from_str(&mapping).expect("mapping parses");
    for (key, value) in table {
        agent.configure(&[&key], value);
    }
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-late", "P-SILA-4");
    eventually(
        Duration::from_secs(60),
        "the agent to find the instrument away",
        || {
            let text = agent.log();
            async move {
                text.contains("cannot reach the instrument; trying again")
                    .then_some(())
            }
        },
    )
    .await;
    let log = site_log(&agent).await;
    assert!(
        of_type(&log, "step_started").any(|k| k["step_id"] == "expansion"),
        "the step waits, started"
    );
    assert_eq!(of_type(&log, "instrument_command_started").count(), 0);
    assert_eq!(
        of_type(&log, "instrument_command_requested").count(),
        0,
        "nothing is sent to an instrument the agent cannot reach"
    );
    assert_eq!(
        of_type(&log, "deviation_raised").count(),
        0,
        "an absent instrument is not a deviation by itself"
    );

    // The instrument comes up; the step runs on it and the batch goes on to QA.
    let sila = Peer::sila(
        &python,
        &[
            "--insecure",
            "--port",
            &port.to_string(),
            "--time-compression",
            "100000",
        ],
    );
    assert_eq!(sila.port, port);
    add_lab(&hub, &agent, "site-late").await;
    lab_enters_release_results(&agent, &batch_id).await;
    wait_order_state(
        &hub,
        &order_id,
        "awaiting_release",
        Duration::from_secs(120),
    )
    .await;
    let log = site_log(&agent).await;
    assert_eq!(of_type(&log, "instrument_command_started").count(), 1);
    assert_eq!(of_type(&log, "instrument_alarm").count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_measurement_is_started_once_across_an_agent_kill() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    // The first intermediate response comes 4 s after the command is accepted, well
    // after the instrument's 1 s timeout; the run then takes about 8 s.
    let sila = Peer::sila(
        &python,
        &[
            "--time-compression",
            "20000",
            "--first-intermediate-after",
            "4",
        ],
    );
    let opcua = opcua_peer(&python, &agent_cert);
    let (hub, mut agent) = hub_and_site("site-slow").await;
    map_instruments_with(
        &agent,
        &sila,
        &opcua,
        keys.path(),
        "timeout_ms = 1000",
        "DurationHours = \"{duration_hours}\"",
    );
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-slow", "P-SLOW-1");

    // The execution is on the record before its first intermediate response.
    eventually(
        Duration::from_secs(60),
        "the SiLA command to be recorded",
        || {
            let agent = &agent;
            async move {
                let log = site_log(agent).await;
                (of_type(&log, "instrument_command_started").count() == 1).then_some(())
            }
        },
    )
    .await;
    // Still inside the slow start: the agent is killed and started again.
    agent.kill();
    agent.start();
    add_lab(&hub, &agent, "site-slow").await;
    lab_enters_release_results(&agent, &batch_id).await;
    wait_order_state(
        &hub,
        &order_id,
        "awaiting_release",
        Duration::from_secs(120),
    )
    .await;

    // The instrument was asked once; the agent recorded one request and one execution.
    let initiated = sila
        .log()
        .lines()
        .filter(|l| l.contains("RUN-EXPANSION-INITIATED"))
        .count();
    assert_eq!(initiated, 1, "{}", sila.log());
    let log = site_log(&agent).await;
    assert_eq!(of_type(&log, "instrument_command_requested").count(), 1);
    assert_eq!(of_type(&log, "instrument_command_started").count(), 1);
    assert!(
        !agent.log().contains("cannot reach the instrument"),
        "a slow answer is not a lost instrument"
    );
    let returned: Vec<_> = of_type(&log, "instrument_results").collect();
    assert_eq!(returned.len(), 1, "{returned:?}");
    let viability = returned[0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["name"] == "Viability")
        .and_then(|r| r["value"].as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("Viability");
    let ip: Vec<_> = of_type(&log, "qc_result")
        .filter(|k| k["test_id"] == "ip-viability")
        .collect();
    assert_eq!(ip.len(), 1, "{ip:?}");
    assert_eq!(ip[0]["value"]["numeric"].as_f64(), Some(viability));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_parameter_is_one_deviation_and_holds_the_batch() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    let sila = Peer::sila(&python, &["--time-compression", "100000"]);
    let opcua = opcua_peer(&python, &agent_cert);
    let (hub, mut agent) = hub_and_site("site-refused").await;
    // The feature allows at most 336 h: the instrument refuses 400.
    map_instruments_with(
        &agent,
        &sila,
        &opcua,
        keys.path(),
        "",
        "DurationHours = 400.0",
    );
    agent.start();
    let (order_id, _) = create_order(&hub, "site-refused", "P-REFUSED-1");
    let deviation = first_deviation(&agent).await;
    let text = deviation["description"].as_str().expect("text");
    assert!(
        text.contains("refused parameter DurationHours = 400")
            && text.contains("restart the agent"),
        "{text}"
    );
    assert_eq!(deviation["classification"], "major");
    // Held: some seconds later nothing more was tried or recorded.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = site_log(&agent).await;
    assert_eq!(of_type(&log, "deviation_raised").count(), 1, "{log:?}");
    assert_eq!(of_type(&log, "instrument_command_requested").count(), 1);
    assert_eq!(of_type(&log, "instrument_command_started").count(), 0);
    assert_eq!(
        of_type(&log, "step_started")
            .filter(|k| k["step_id"] == "expansion")
            .count(),
        1
    );
    assert!(!sila.log().contains("RUN-EXPANSION-INITIATED"));
    assert!(agent.log().contains("batch held"));
    wait_order_state(&hub, &order_id, "in_process", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_server_at_the_instruments_address_is_a_deviation_not_a_silent_retry() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    let sila = Peer::sila(&python, &["--time-compression", "100000"]);
    let opcua = opcua_peer(&python, &agent_cert);
    let (_hub, mut agent) = hub_and_site("site-untrusted").await;
    // The site pins a certificate the server at that address does not have (a
    // swapped instrument, or someone in between).
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    std::fs::write(sila.sila_certificate(), other.cert.pem()).expect("replace the pin");
    map_instruments(&agent, &sila, &opcua, keys.path());
    agent.start();
    let (_order_id, _) = create_order(&_hub, "site-untrusted", "P-UNTRUSTED-1");
    let deviation = first_deviation(&agent).await;
    let text = deviation["description"].as_str().expect("text");
    assert!(
        text.contains("the instrument at 127.0.0.1:")
            && text.contains("not the pinned one")
            && text.contains("Nothing was sent")
            && !text.contains("hub"),
        "{text}"
    );
    assert_eq!(deviation["classification"], "major");
    assert_eq!(deviation["step_id"], "expansion");
    // Held, not retried: nothing was asked of the instrument, nothing more recorded.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = site_log(&agent).await;
    assert_eq!(of_type(&log, "deviation_raised").count(), 1, "{log:?}");
    assert_eq!(of_type(&log, "instrument_command_requested").count(), 0);
    assert!(!sila.log().contains("RUN-EXPANSION-INITIATED"));
    assert!(agent.log().contains("batch held"));
    assert!(!agent
        .log()
        .contains("cannot reach the instrument; trying again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_asks_the_instruments_and_refuses_a_reading_that_is_not_a_number() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    let mut sila = Peer::sila(&python, &[]);
    let opcua = opcua_peer(&python, &agent_cert);
    let (_hub, agent) = hub_and_site("site-check").await;
    map_instruments(&agent, &sila, &opcua, keys.path());
    let check = |args: &[&str]| {
        let mut all = vec!["run", "--check-config"];
        all.extend_from_slice(args);
        let out = agent.cli(&all, "");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // As mapped: three process parameters read from the OPC UA server, all numbers.
    let (code, stdout, stderr) = check(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("3 value(s) read at the instruments"),
        "{stdout}"
    );

    // The temperature mapped to the state text, pH to a SiLA timestamp property.
    let mut steps = agent_steps(&agent);
    let readings = steps[0]["readings"].as_array_mut().expect("readings");
    readings[0]["source"] = "ns=2;s=Bioreactor.State".into();
    readings[1] = toml::Value::Table(
        toml::from_str(
            r#"parameter = "ph"
instrument = "cps-sila"
source = "LastCalibration"
unit = "pH""#,
        )
        .expect("reading"),
    );
    agent.configure(&["steps"], toml::Value::Array(steps.clone()));
    let (code, stdout, stderr) = check(&[]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "reading temperature reads ns=2;s=Bioreactor.State on \"bioreactor-ua\", which is Idle, not a number"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("reading ph reads LastCalibration on \"cps-sila\", which is 2026-11-30T09:15:30.250+01:00, not a number"),
        "{stderr}"
    );
    // Offline, nothing is asked and the mapping's own checks pass.
    let (code, stdout, stderr) = check(&["--offline"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    // A property the instrument does not have is named.
    steps[0]["readings"].as_array_mut().expect("readings")[1]["source"] = "Viabilty".into();
    agent.configure(&["steps"], toml::Value::Array(steps));
    let (code, _, stderr) = check(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("Viabilty"), "{stderr}");

    // An instrument that is off is noted, not refused: the check runs where it may be.
    map_instruments(&agent, &sila, &opcua, keys.path());
    sila.stop();
    let (code, stdout, stderr) = check(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("note: instrument \"cps-sila\" not checked"),
        "{stderr}"
    );
}

/// The first deviation the site records (within a minute).
async fn first_deviation(agent: &Agent) -> serde_json::Value {
    eventually(
        Duration::from_secs(60),
        "a deviation on record",
        || async move {
            let log = site_log(agent).await;
            let found = of_type(&log, "deviation_raised").next().cloned();
            found
        },
    )
    .await
}

/// The agent's `steps` as its configuration file holds them.
fn agent_steps(agent: &Agent) -> Vec<toml::Value> {
    let text = std::fs::read_to_string(agent.data_dir().join("agent.toml")).expect("agent.toml");
    let doc: toml::Table = toml::from_str(&text).expect("parses");
    doc["steps"].as_array().expect("steps").clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_started_by_an_opcua_method_is_sampled_until_its_state_says_done() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (agent_cert, _) = opcua_client_identity(&python, keys.path(), "agent");
    // Activation (24 process hours) takes about 6 s: Start() returns at once, the
    // State variable says Completed at the end.
    let opcua = Peer::opcua(
        &python,
        &[
            "--trust-client-cert",
            &agent_cert.display().to_string(),
            "--time-compression",
            "15000",
        ],
    );
    let (hub, mut agent) = hub_and_site("site-method").await;
    let text = format!(
        r#"
[[instruments]]
name = "bioreactor-ua"
kind = "opcua"
endpoint = "{endpoint}"
client_certificate = "{keys}/agent.der"
client_key = "{keys}/agent.pem"
server_certificate = "{cert}"

[[steps]]
step = "activation"
instrument = "bioreactor-ua"
command = "ns=2;s=Bioreactor|ns=2;s=Bioreactor.Start(durationHours)"
parameters = {{ durationHours = "{{duration_hours}}" }}
sample_interval_s = 0.5
done_when = {{ source = "ns=2;s=Bioreactor.State", equals = "Completed", failed = ["Faulted"] }}
readings = [
  {{ parameter = "temperature", instrument = "bioreactor-ua", source = "ns=2;s=Bioreactor.Temperature", unit = "degC" }},
  {{ parameter = "ph", instrument = "bioreactor-ua", source = "ns=2;s=Bioreactor.pH", unit = "pH" }},
]
"#,
        endpoint = opcua.opcua_endpoint(),
        cert = opcua.opcua_certificate().display(),
        keys = keys.path().display(),
    );
    let table: toml::Table = toml::from_str(&text).expect("mapping parses");
    for (key, value) in table {
        agent.configure(&[&key], value);
    }
    agent.start();
    create_order(&hub, "site-method", "P-METHOD-1");

    // The method returned (its output is on the record); the run goes on.
    eventually(Duration::from_secs(60), "the method's results", || {
        let agent = &agent;
        async move {
            let log = site_log(agent).await;
            (of_type(&log, "instrument_results").count() == 1).then_some(())
        }
    })
    .await;
    // The agent stops and comes back mid-run: the run is not started again.
    agent.kill();
    agent.start();
    let completed_activation = |log: &[(i64, serde_json::Value)]| {
        log.iter()
            .find(|(_, e)| {
                e["kind"]["type"] == "step_completed" && e["kind"]["step_id"] == "activation"
            })
            .cloned()
    };
    let (completed_seq, completed) =
        eventually(Duration::from_secs(90), "the activation to be done", || {
            let agent = &agent;
            async move { completed_activation(&site_log(agent).await) }
        })
        .await;

    let log = site_log(&agent).await;
    let starts = opcua
        .log()
        .lines()
        .filter(|l| l.contains("START-CALLED"))
        .count();
    assert_eq!(starts, 1, "{}", opcua.log());
    assert_eq!(of_type(&log, "instrument_command_requested").count(), 1);
    let (results_seq, results) = log
        .iter()
        .find(|(_, e)| e["kind"]["type"] == "instrument_results")
        .cloned()
        .expect("results");
    assert_eq!(results["kind"]["results"][0]["name"], "out1");
    assert_eq!(results["kind"]["results"][0]["value"], "true");
    // Sampled between the method's return and the State's Completed, across the kill.
    let samples_during: Vec<_> = log
        .iter()
        .filter(|(seq, e)| {
            *seq > results_seq
                && *seq < completed_seq
                && e["kind"]["type"] == "process_samples"
                && e["kind"]["step_id"] == "activation"
        })
        .collect();
    assert!(samples_during.len() >= 4, "{samples_during:?}");
    let at = |e: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(e["recorded_at"].as_str().expect("time"))
            .expect("rfc3339")
    };
    assert!(
        at(&completed) - at(&results) >= chrono::Duration::seconds(3),
        "completed when the State said so, not when the method returned: {results} {completed}"
    );
    let restart = of_type(&log, "deviation_raised")
        .find(|k| {
            k["deviation_id"]
                .as_str()
                .is_some_and(|d| d.ends_with("-activation-RESTART"))
        })
        .expect("the interruption is on record");
    assert!(
        restart["description"]
            .as_str()
            .is_some_and(|d| d.contains("it is not started again")),
        "{restart}"
    );
}

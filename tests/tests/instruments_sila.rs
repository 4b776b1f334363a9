//! The SiLA 2 adapter against a real SiLA 2 server written by others (the Python
//! `sila2` reference implementation, `tests/peers/sila`): observable and unobservable
//! commands, intermediate responses, properties, every kind of SiLA error, TLS with a
//! pinned self-signed certificate, and re-attaching to a running command by its UUID.

use carrel_site_agent::config::SilaConfig;
use carrel_site_agent::instrument::sila::SilaInstrument;
use carrel_site_agent::instrument::{Error, Execution, Instrument, StepRequest, Update, Value};
use carrel_tests::peers::{python, Peer};
use futures_util::StreamExt;
use std::time::Duration;

const FEATURE: &str = "org.carrel/bioprocess/CellExpansionController/v1";

fn config(peer: &Peer) -> SilaConfig {
    SilaConfig {
        name: "cps-1".into(),
        address: peer.address(),
        pinned_certificate: Some(peer.sila_certificate()),
        insecure: false,
        features: vec![FEATURE.into()],
        server_uuid: Some(peer.sila_uuid().to_owned()),
        timeout_ms: 5_000,
    }
}

fn expansion(batch: &str, hours: f64) -> StepRequest {
    let recipe = carrel_proto::recipe::Recipe::from_toml(include_str!(
        "../../hub/recipes/cd19-car-t.v1.toml"
    ))
    .expect("example recipe");
    StepRequest {
        batch_id: uuid::Uuid::new_v4(),
        step: recipe.step("expansion").expect("expansion step").clone(),
        command: format!("{FEATURE}/Command/RunExpansion"),
        parameters: [
            ("DurationHours".to_owned(), Value::Real(hours)),
            ("TargetDensity".to_owned(), Value::Real(8.0)),
            ("BatchId".to_owned(), Value::String(batch.into())),
        ]
        .into(),
        resume_from_hours: None,
    }
}

/// Every update until the execution ends: the updates, and the final result or error.
async fn run_to_end(execution: &mut Execution) -> (Vec<Update>, Result<Update, Error>) {
    let mut seen = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(update) = execution.updates.next().await {
            match update {
                Ok(Update::Finished(values)) => return Ok(Update::Finished(values)),
                Ok(other) => seen.push(other),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Connection(
            "the updates ended without a result".into(),
        ))
    })
    .await
    .expect("the execution ends within 60 s");
    (seen, end)
}

#[tokio::test(flavor = "multi_thread")]
async fn observable_command_reports_progress_and_intermediates_and_returns_its_result() {
    let Some(python) = python() else { return };
    let peer = Peer::sila(&python, &["--name", "BioreactorPeer"]);
    let sila = SilaInstrument::new(&config(&peer)).expect("adapter");

    // SiLAService read on connection: the server we expect.
    let server = sila.server().await.expect("connects over pinned TLS");
    assert_eq!(server.name, "BioreactorPeer");
    assert_eq!(server.uuid, peer.sila_uuid());
    assert!(server.implemented_features.iter().any(|f| f == FEATURE));
    assert!(server
        .implemented_features
        .iter()
        .any(|f| f == "org.silastandard/core/SiLAService/v1"));

    let request = expansion("B-0001", 2.0);
    let mut execution = sila.start(&request).await.expect("command accepted");
    uuid::Uuid::parse_str(&execution.id).expect("a command execution UUID");
    assert!(execution.reattachable);
    let (seen, end) = run_to_end(&mut execution).await;
    let Ok(Update::Finished(result)) = end else {
        panic!("no result: {end:?}")
    };
    let final_density = result["FinalViableCellDensity"].as_f64().expect("Real");
    // The vessel starts cold and warms up, so the culture grows towards its target 8
    // without passing it.
    assert!(
        (2.0..=8.5).contains(&final_density),
        "grown from its seeding density 0.5 towards 8: {final_density}"
    );
    assert!(result["Viability"].as_f64().is_some());
    assert!(result["FoldExpansion"].as_f64().expect("Real") > 1.0);
    let progress: Vec<f64> = seen
        .iter()
        .filter_map(|u| match u {
            Update::Status { progress, .. } => *progress,
            _ => None,
        })
        .collect();
    assert!(
        progress.iter().any(|p| *p > 0.0 && *p < 1.0),
        "progress while running: {progress:?}"
    );
    let densities: Vec<f64> = seen
        .iter()
        .filter_map(|u| match u {
            Update::Intermediate(values) => values
                .get("CurrentViableCellDensity")
                .and_then(Value::as_f64),
            _ => None,
        })
        .collect();
    assert!(
        densities.len() >= 3,
        "intermediate responses while the culture grows: {densities:?}"
    );
    assert!(densities.last() > densities.first(), "{densities:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sila_errors_become_domain_errors() {
    let Some(python) = python() else { return };
    let peer = Peer::sila(&python, &[]);
    let sila = SilaInstrument::new(&config(&peer)).expect("adapter");

    // Defined execution error, from X_Result of a contaminated run.
    let mut execution = sila
        .start(&expansion("B-CONTAMINATED-1", 1.0))
        .await
        .expect("accepted");
    let (_, end) = run_to_end(&mut execution).await;
    match end {
        Err(Error::DefinedExecution {
            identifier,
            message,
        }) => {
            assert_eq!(
                identifier,
                format!("{FEATURE}/DefinedExecutionError/ContaminationDetected")
            );
            assert!(message.contains("contamination"), "{message}");
        }
        other => panic!("expected ContaminationDetected, got {other:?}"),
    }

    // Undefined execution error.
    let mut execution = sila
        .start(&expansion("B-SENSORFAIL-1", 1.0))
        .await
        .expect("accepted");
    let (_, end) = run_to_end(&mut execution).await;
    match end {
        Err(Error::UndefinedExecution(message)) => {
            assert!(message.contains("temperature probe"), "{message}")
        }
        other => panic!("expected an undefined execution error, got {other:?}"),
    }

    // Validation error, at initiation.
    match sila.start(&expansion("B-2", -1.0)).await {
        Err(Error::Validation { parameter, message }) => {
            assert!(
                parameter.ends_with("/Command/RunExpansion/Parameter/DurationHours"),
                "{parameter}"
            );
            assert!(message.contains("MinimalExclusive"), "{message}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }

    // Framework error: an execution the server does not know.
    let unknown = uuid::Uuid::new_v4().to_string();
    let request = expansion("B-3", 1.0);
    let attached = match sila.attach(&request, &unknown).await {
        Ok(mut execution) => run_to_end(&mut execution).await.1.map(|_| ()),
        Err(e) => Err(e),
    };
    match attached {
        Err(Error::Framework { kind, .. }) => assert_eq!(kind, "INVALID_COMMAND_EXECUTION_UUID"),
        other => panic!("expected a framework error, got {other:?}"),
    }

    // This server has no SiLA CancelController: cancelling says so rather than pretend.
    assert!(matches!(
        sila.cancel(&unknown).await,
        Err(Error::Mapping(m)) if m.contains("CancelController")
    ));

    // A parameter the mapping does not give is refused before anything is sent.
    let mut incomplete = expansion("B-4", 1.0);
    incomplete.parameters.remove("BatchId");
    assert!(matches!(
        sila.start(&incomplete).await,
        Err(Error::Mapping(m)) if m.contains("BatchId")
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_read_and_subscribe_and_unobservable_commands_run() {
    let Some(python) = python() else { return };
    let peer = Peer::sila(&python, &[]);
    let sila = SilaInstrument::new(&config(&peer)).expect("adapter");

    // Unobservable property: Get_P.
    assert_eq!(
        sila.read("TemperatureSetpoint").await.expect("Get"),
        Value::Real(37.0)
    );
    // Unobservable command: the responses come straight back.
    let mut set = expansion("B-5", 1.0);
    set.command = "SetTemperatureSetpoint".into();
    set.parameters = [("TemperatureSetpoint".to_owned(), Value::Real(36.5))].into();
    let mut execution = sila.start(&set).await.expect("SetTemperatureSetpoint");
    assert!(!execution.reattachable);
    let (_, end) = run_to_end(&mut execution).await;
    assert!(matches!(end, Ok(Update::Finished(_))), "{end:?}");
    assert_eq!(
        sila.read(&format!("{FEATURE}/Property/TemperatureSetpoint"))
            .await
            .expect("Get"),
        Value::Real(36.5)
    );
    // Out of its constraint: a validation error.
    set.parameters = [("TemperatureSetpoint".to_owned(), Value::Real(45.0))].into();
    assert!(matches!(
        sila.start(&set).await,
        Err(Error::Validation { parameter, .. }) if parameter.ends_with("TemperatureSetpoint")
    ));

    // Observable property: read takes the first value of Subscribe_P.
    let temperature = sila
        .read("CurrentTemperature")
        .await
        .expect("read")
        .as_f64()
        .expect("Real");
    assert!((20.0..=40.0).contains(&temperature), "{temperature}");
    // Subscribe: the instrument warms from 25 degC towards its setpoint, so values change.
    let mut values = sila
        .subscribe("CurrentTemperature")
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), values.next())
            .await
            .expect("a change within 10 s")
            .expect("stream open")
            .expect("a value");
        seen.push(next.as_f64().expect("Real"));
    }
    assert!(seen.windows(2).any(|w| w[0] != w[1]), "{seen:?}");
    let state = sila.read("InstrumentState").await.expect("read");
    assert!(
        matches!(&state, Value::String(s) if ["Idle", "Running", "Completed", "Faulted"].contains(&s.as_str())),
        "{state:?}"
    );
    // An unobservable property cannot be followed; an unknown one is named.
    assert!(sila.subscribe("TemperatureSetpoint").await.is_err());
    assert!(matches!(
        sila.read("NoSuchProperty").await,
        Err(Error::Mapping(m)) if m.contains("NoSuchProperty")
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_accepts_only_the_pinned_certificate_and_features_are_checked() {
    let Some(python) = python() else { return };
    let peer = Peer::sila(&python, &[]);

    // Another self-signed certificate for the same IP address: refused.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let other_pem = peer.dir.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).expect("write");
    let mut wrong = config(&peer);
    wrong.pinned_certificate = Some(other_pem);
    let refused = SilaInstrument::new(&wrong)
        .expect("adapter")
        .server()
        .await
        .expect_err("the pin does not match");
    assert!(
        matches!(&refused, Error::Connection(m) if m.contains("not the pinned one")),
        "{refused:?}"
    );

    // A plain connection to a TLS server does not get through either.
    let mut plain = config(&peer);
    plain.pinned_certificate = None;
    plain.insecure = true;
    plain.timeout_ms = 2_000;
    assert!(SilaInstrument::new(&plain)
        .expect("adapter")
        .server()
        .await
        .is_err());

    // A feature the server lacks is named.
    let mut missing = config(&peer);
    missing
        .features
        .push("org.example/none/Centrifuge/v1".into());
    let refused = SilaInstrument::new(&missing)
        .expect("adapter")
        .server()
        .await
        .expect_err("feature missing");
    assert!(
        matches!(&refused, Error::Mapping(m) if m.contains("Centrifuge")),
        "{refused:?}"
    );

    // Another server than the one the site configured is refused.
    let mut swapped = config(&peer);
    swapped.server_uuid = Some(uuid::Uuid::new_v4().to_string());
    let refused = SilaInstrument::new(&swapped)
        .expect("adapter")
        .server()
        .await
        .expect_err("another server");
    assert!(
        matches!(&refused, Error::Mapping(m) if m.contains("not the configured server")),
        "{refused:?}"
    );

    // And a server without TLS is reached only when the site says insecure.
    let plain_peer = Peer::sila(&python, &["--insecure"]);
    let mut insecure = config(&plain_peer);
    insecure.pinned_certificate = None;
    insecure.insecure = true;
    let server = SilaInstrument::new(&insecure)
        .expect("adapter")
        .server()
        .await
        .expect("plain connection");
    assert_eq!(server.uuid, plain_peer.sila_uuid());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_connection_reattaches_to_a_running_command_by_its_uuid() {
    let Some(python) = python() else { return };
    let peer = Peer::sila(&python, &[]);
    let first = SilaInstrument::new(&config(&peer)).expect("adapter");
    let request = expansion("B-6", 6.0);
    let mut execution = first.start(&request).await.expect("accepted");
    let uuid = execution.id.clone();
    // Wait until it runs, then forget it, as an agent that is killed does.
    loop {
        match execution.updates.next().await {
            Some(Ok(Update::Status {
                progress: Some(p), ..
            })) if p > 0.1 => break,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(execution);
    drop(first);

    let second = SilaInstrument::new(&config(&peer)).expect("adapter");
    let mut attached = second.attach(&request, &uuid).await.expect("re-attached");
    assert_eq!(attached.id, uuid);
    let (seen, end) = run_to_end(&mut attached).await;
    assert!(
        matches!(end, Ok(Update::Finished(ref r)) if r.contains_key("FinalViableCellDensity")),
        "{end:?}"
    );
    let first_progress = seen.iter().find_map(|u| match u {
        Update::Status { progress, .. } => *progress,
        _ => None,
    });
    assert!(
        first_progress.is_some_and(|p| p > 0.1),
        "the re-attached execution continues where it was: {first_progress:?}"
    );
}

//! The SiLA 2 adapter against a real SiLA 2 server written by others (the Python
//! `sila2` reference implementation, `tests/peers/sila`): observable and unobservable
//! commands, intermediate responses, properties, dates, times and structures, every
//! kind of SiLA error, TLS with a pinned self-signed certificate or a pinned CA and
//! server name, and re-attaching to a running command by its UUID.

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
        ca_certificate: None,
        server_name: None,
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
    // Not a connection to retry: another server answers at the instrument's address.
    assert!(
        matches!(&refused, Error::Untrusted(m) if m.contains("the instrument at 127.0.0.1:")
            && m.contains("not the pinned one") && !m.contains("hub")),
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

#[tokio::test(flavor = "multi_thread")]
async fn dates_times_and_structures_cross_the_wire_as_the_instrument_means_them() {
    let Some(python) = python() else { return };
    let peer = Peer::sila(&python, &[]);
    let sila = SilaInstrument::new(&config(&peer)).expect("adapter");

    // A Timestamp property, with its milliseconds and UTC offset.
    assert_eq!(
        sila.read("LastCalibration")
            .await
            .expect("Get_LastCalibration"),
        Value::String("2026-11-30T09:15:30.250+01:00".into())
    );

    // Date and Time parameters; a structure (a custom data type) with a Timestamp back.
    let mut count = expansion("B-7", 1.0);
    count.command = format!("{FEATURE}/Command/CountSample");
    let sample = |on: &str, at: &str| -> carrel_site_agent::instrument::Values {
        [
            ("DrawnOn".to_owned(), Value::String(on.into())),
            ("DrawnAt".to_owned(), Value::String(at.into())),
        ]
        .into()
    };
    for (on, at, drawn) in [
        ("2026-12-05", "14:30:00+05:30", "2026-12-05T14:30:00+05:30"),
        (
            "2026-12-05",
            "23:45:10.500-03:30",
            "2026-12-05T23:45:10.500-03:30",
        ),
        ("2026-02-28", "08:00", "2026-02-28T08:00:00Z"),
    ] {
        count.parameters = sample(on, at);
        let mut execution = sila.start(&count).await.expect("CountSample");
        let (_, end) = run_to_end(&mut execution).await;
        let Ok(Update::Finished(values)) = end else {
            panic!("CountSample did not finish: {end:?}")
        };
        let Some(Value::Structure(fields)) = values.get("Count") else {
            panic!("Count is not a structure: {values:?}")
        };
        assert_eq!(fields["DrawnAt"], Value::String(drawn.into()), "{on} {at}");
        assert!(matches!(fields["Viability"], Value::Real(_)), "{fields:?}");
        // Recorded as results of their own, by path.
        let flat = carrel_site_agent::instrument::flatten(&values);
        let names: Vec<&str> = flat.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Count.DrawnAt",
                "Count.Viability",
                "Count.ViableCellDensity"
            ]
        );
    }
    let counted = peer.log().matches("SAMPLE-COUNTED").count();
    assert_eq!(counted, 3, "{}", peer.log());

    // A date the instrument could misread is refused before anything is sent.
    count.parameters = sample("05/12/2026", "14:30:00");
    let refused = sila.start(&count).await.expect_err("not a date");
    assert!(
        matches!(&refused, Error::Mapping(m) if m.contains("DrawnOn") && m.contains("year-month-day")),
        "{refused:?}"
    );
    count.parameters = sample("2026-12-05", "25:00");
    assert!(matches!(
        sila.start(&count).await,
        Err(Error::Mapping(m)) if m.contains("DrawnAt") && m.contains("not a time of day")
    ));
    assert_eq!(
        peer.log().matches("SAMPLE-COUNTED").count(),
        counted,
        "a refused parameter reached the instrument"
    );
}

/// A CA and a server certificate it issued for `names`, written as PEM files into
/// `dir`: (CA certificate, server certificate chain, server key).
fn issue(dir: &std::path::Path, tag: &str, names: &[&str]) -> [std::path::PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{tag} instrument CA"));
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("server params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    let paths = [
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}-server.pem")),
        dir.join(format!("{tag}-server.key")),
    ];
    std::fs::write(&paths[0], ca.pem()).expect("write CA");
    std::fs::write(&paths[1], format!("{}{}", cert.pem(), ca.pem())).expect("write chain");
    std::fs::write(&paths[2], key.serialize_pem()).expect("write key");
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_ca_trusts_the_certificates_it_issues_for_the_configured_name_only() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, chain, key] = issue(dir.path(), "site", &["cps-1.lab.example"]);
    let peer = Peer::sila(
        &python,
        &[
            "--cert",
            chain.to_str().expect("path"),
            "--key",
            key.to_str().expect("path"),
        ],
    );
    let pinned_ca = |server_name: Option<&str>, ca: &std::path::Path| SilaConfig {
        pinned_certificate: None,
        ca_certificate: Some(ca.to_owned()),
        server_name: server_name.map(str::to_owned),
        ..config(&peer)
    };

    // The CA the site pinned, and the name the certificate carries: connected.
    let server = SilaInstrument::new(&pinned_ca(Some("cps-1.lab.example"), &ca))
        .expect("adapter")
        .server()
        .await
        .expect("the CA's certificate for the configured name");
    assert_eq!(server.uuid, peer.sila_uuid());

    // Without a server name the address's host is checked, and the certificate
    // does not name 127.0.0.1.
    let refused = SilaInstrument::new(&pinned_ca(None, &ca))
        .expect("adapter")
        .server()
        .await
        .expect_err("another name");
    assert!(
        matches!(&refused, Error::Untrusted(m) if m.contains("127.0.0.1") && m.contains("pinned CA")),
        "{refused:?}"
    );
    // Another name than the certificate's.
    let refused = SilaInstrument::new(&pinned_ca(Some("cps-2.lab.example"), &ca))
        .expect("adapter")
        .server()
        .await
        .expect_err("another name");
    assert!(
        matches!(&refused, Error::Untrusted(m) if m.contains("cps-2.lab.example")),
        "{refused:?}"
    );
    // A certificate for the right name from another CA.
    let [other_ca, ..] = issue(dir.path(), "other", &["cps-1.lab.example"]);
    let refused = SilaInstrument::new(&pinned_ca(Some("cps-1.lab.example"), &other_ca))
        .expect("adapter")
        .server()
        .await
        .expect_err("another CA");
    assert!(
        matches!(&refused, Error::Untrusted(m) if m.contains("pinned CA")),
        "{refused:?}"
    );
}

//! The OPC UA adapter against a real OPC UA server written by others (Python
//! `asyncua`, `tests/peers/opcua`): read, write, subscribe and method calls over
//! Basic256Sha256 Sign & Encrypt with configured trust on both sides, and refusals
//! (untrusted server certificate, a server that does not trust the agent) that come
//! back within the configured timeout instead of retrying for ever. A server that
//! requires a user name and password lets the agent in with the right ones, and a
//! refused identity is a configuration error, not a connection to retry.

use carrel_site_agent::config::OpcuaConfig;
use carrel_site_agent::instrument::opcua::OpcuaInstrument;
use carrel_site_agent::instrument::{Error, Instrument, StepRequest, Update, Value};
use carrel_tests::peers::{opcua_client_identity, python, Peer};
use futures_util::StreamExt;
use std::path::Path;
use std::time::{Duration, Instant};

const TEMPERATURE: &str = "ns=2;s=Bioreactor.Temperature";
const SETPOINT: &str = "ns=2;s=Bioreactor.TemperatureSetpoint";
const STATE: &str = "ns=2;s=Bioreactor.State";
const START: &str = "ns=2;s=Bioreactor|ns=2;s=Bioreactor.Start(durationHours)";

fn config(peer: &Peer, cert: &Path, key: &Path) -> OpcuaConfig {
    OpcuaConfig {
        name: "bioreactor-ua".into(),
        endpoint: peer.opcua_endpoint().to_owned(),
        security_policy: "Basic256Sha256".into(),
        security_mode: "SignAndEncrypt".into(),
        client_certificate: Some(cert.to_owned()),
        client_key: Some(key.to_owned()),
        server_certificate: Some(peer.opcua_certificate()),
        insecure: false,
        timeout_ms: 5_000,
        username: None,
        password_file: None,
        user_certificate: None,
        user_key: None,
    }
}

fn method_call(command: &str, hours: f64) -> StepRequest {
    let recipe = carrel_proto::recipe::Recipe::from_toml(include_str!(
        "../../hub/recipes/cd19-car-t.v1.toml"
    ))
    .expect("example recipe");
    StepRequest {
        batch_id: uuid::Uuid::new_v4(),
        step: recipe.step("expansion").expect("expansion").clone(),
        command: command.into(),
        parameters: [("durationHours".to_owned(), Value::Real(hours))].into(),
        resume_from_hours: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_writes_follows_and_calls_over_signed_and_encrypted_sessions() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (cert, key) = opcua_client_identity(&python, keys.path(), "agent");
    // The server accepts exactly our certificate.
    let peer = Peer::opcua(
        &python,
        &["--trust-client-cert", &cert.display().to_string()],
    );
    let pki = tempfile::tempdir().expect("tempdir");
    let ua = OpcuaInstrument::new(&config(&peer, &cert, &key), pki.path()).expect("adapter");

    let temperature = ua
        .read(TEMPERATURE)
        .await
        .expect("read")
        .as_f64()
        .expect("Double");
    assert!((20.0..=40.0).contains(&temperature), "{temperature}");
    assert_eq!(
        ua.read(STATE).await.expect("read"),
        Value::String("Idle".into())
    );

    // Write, read back; out of range is a validation error and changes nothing.
    ua.write(SETPOINT, &Value::Real(36.0)).await.expect("write");
    assert_eq!(ua.read(SETPOINT).await.expect("read"), Value::Real(36.0));
    let refused = ua
        .write(SETPOINT, &Value::Real(45.0))
        .await
        .expect_err("out of range");
    assert!(
        matches!(&refused, Error::Validation { message, .. } if message.contains("BadOutOfRange")),
        "{refused:?}"
    );
    assert_eq!(ua.read(SETPOINT).await.expect("read"), Value::Real(36.0));
    assert!(matches!(
        ua.write(TEMPERATURE, &Value::Real(1.0)).await,
        Err(Error::Validation { .. })
    ));
    assert!(matches!(
        ua.read("ns=2;s=Bioreactor.NoSuchThing").await,
        Err(Error::Mapping(_))
    ));

    // Subscription: the vessel warms from 25 degC, so the temperature changes.
    let mut values = ua.subscribe(TEMPERATURE).await.expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let value = tokio::time::timeout(Duration::from_secs(10), values.next())
            .await
            .expect("a change within 10 s")
            .expect("open")
            .expect("a value");
        seen.push(value.as_f64().expect("Double"));
    }
    assert!(seen.windows(2).any(|w| w[0] != w[1]), "{seen:?}");

    // A method call runs a step: Start(durationHours) -> started.
    let mut execution = ua.start(&method_call(START, 2.0)).await.expect("call");
    match execution.updates.next().await {
        Some(Ok(Update::Finished(outputs))) => {
            assert_eq!(outputs.get("out1"), Some(&Value::Boolean(true)))
        }
        other => panic!("expected the call's outputs, got {other:?}"),
    }
    assert_eq!(
        ua.read(STATE).await.expect("read"),
        Value::String("Running".into())
    );
    // An argument out of range is refused.
    assert!(matches!(
        ua.start(&method_call(START, -1.0)).await,
        Err(Error::Validation { .. })
    ));
    // The method declares durationHours a Double: a whole number from the mapping
    // (a TOML integer) is sent as one; text is refused, naming the argument.
    let mut whole = method_call(START, 0.0);
    whole
        .parameters
        .insert("durationHours".into(), Value::Integer(3));
    let mut execution = ua.start(&whole).await.expect("an integer for a Double");
    assert!(matches!(
        execution.updates.next().await,
        Some(Ok(Update::Finished(_)))
    ));
    let mut text = method_call(START, 0.0);
    text.parameters
        .insert("durationHours".into(), Value::String("three".into()));
    match ua.start(&text).await {
        Err(Error::Mapping(why)) => assert!(
            why.contains("argument durationHours") && why.contains("not a number"),
            "{why}"
        ),
        other => panic!("text for a Double: {other:?}"),
    }
    assert_eq!(
        peer.log().matches("START-CALLED").count(),
        2,
        "2 h and 3 h started (-1 h was refused before the log line); the text was never sent: {}",
        peer.log()
    );
    // A mapping that names no such argument is refused before anything is sent.
    assert!(matches!(
        ua.start(&method_call(
            "ns=2;s=Bioreactor|ns=2;s=Bioreactor.Start(hours)",
            1.0
        ))
        .await,
        Err(Error::Mapping(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_certificates_are_refused_within_the_timeout() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (cert, key) = opcua_client_identity(&python, keys.path(), "agent");
    let (stranger, _) = opcua_client_identity(&python, keys.path(), "stranger");
    let peer = Peer::opcua(
        &python,
        &["--trust-client-cert", &cert.display().to_string()],
    );
    let timeout = Duration::from_millis(3_000);

    // We trust another certificate than the one the server presents.
    let pki = tempfile::tempdir().expect("tempdir");
    let mut wrong_server = config(&peer, &cert, &key);
    wrong_server.server_certificate = Some(stranger.clone());
    wrong_server.timeout_ms = timeout.as_millis() as u64;
    let ua = OpcuaInstrument::new(&wrong_server, pki.path()).expect("adapter");
    let started = Instant::now();
    let refused = ua.read(TEMPERATURE).await.expect_err("server not trusted");
    eprintln!("refused: {refused}");
    assert!(
        started.elapsed() < timeout + Duration::from_secs(2),
        "refused after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(refused, Error::Connection(_) | Error::Timeout(_)),
        "{refused:?}"
    );

    // The server does not trust the agent's certificate.
    let pki = tempfile::tempdir().expect("tempdir");
    let (other, other_key) = opcua_client_identity(&python, keys.path(), "other-agent");
    let mut untrusted_client = config(&peer, &other, &other_key);
    untrusted_client.timeout_ms = timeout.as_millis() as u64;
    let ua = OpcuaInstrument::new(&untrusted_client, pki.path()).expect("adapter");
    let started = Instant::now();
    let refused = ua.read(TEMPERATURE).await.expect_err("client not trusted");
    eprintln!("refused: {refused}");
    assert!(
        started.elapsed() < timeout + Duration::from_secs(2),
        "refused after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(refused, Error::Connection(_) | Error::Timeout(_)),
        "{refused:?}"
    );

    // With the right certificates on both sides the same server answers.
    let pki = tempfile::tempdir().expect("tempdir");
    let ua = OpcuaInstrument::new(&config(&peer, &cert, &key), pki.path()).expect("adapter");
    assert!(ua.read(TEMPERATURE).await.expect("read").as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn security_none_only_when_the_site_says_insecure() {
    let Some(python) = python() else { return };
    let peer = Peer::opcua(&python, &["--allow-insecure"]);
    let pki = tempfile::tempdir().expect("tempdir");
    let plain = OpcuaConfig {
        name: "plain-ua".into(),
        endpoint: peer.opcua_endpoint().to_owned(),
        security_policy: "None".into(),
        security_mode: "None".into(),
        client_certificate: None,
        client_key: None,
        server_certificate: None,
        insecure: true,
        timeout_ms: 5_000,
        username: None,
        password_file: None,
        user_certificate: None,
        user_key: None,
    };
    let ua = OpcuaInstrument::new(&plain, pki.path()).expect("adapter");
    assert!(ua.read(TEMPERATURE).await.expect("read").as_f64().is_some());
    // The same config without insecure = true does not load.
    let mut config = carrel_site_agent::Config {
        hub: "https://127.0.0.1:1".into(),
        ..Default::default()
    };
    let mut refused = plain.clone();
    refused.insecure = false;
    config.instruments = vec![carrel_site_agent::config::InstrumentConfig::Opcua(refused)];
    assert!(config
        .validate()
        .expect_err("None without insecure")
        .to_string()
        .contains("insecure"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_requires_a_user_takes_the_password_from_a_file() {
    let Some(python) = python() else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let (cert, key) = opcua_client_identity(&python, keys.path(), "agent");
    let peer = Peer::opcua(
        &python,
        &[
            "--trust-client-cert",
            &cert.display().to_string(),
            "--require-user",
            "operator:ua-secret-1",
        ],
    );
    let secrets = tempfile::tempdir().expect("tempdir");
    let right = secrets.path().join("right");
    std::fs::write(&right, "ua-secret-1\n").expect("password file");
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "not-the-password\n").expect("password file");

    // The right password: the session opens and values are read.
    let pki = tempfile::tempdir().expect("tempdir");
    let mut signed_in = config(&peer, &cert, &key);
    signed_in.username = Some("operator".into());
    signed_in.password_file = Some(right);
    let ua = OpcuaInstrument::new(&signed_in, pki.path()).expect("adapter");
    assert_eq!(
        ua.read(STATE).await.expect("read as operator"),
        Value::String("Idle".into())
    );
    assert!(
        peer.log().contains("USER-ACCEPTED name=operator"),
        "{}",
        peer.log()
    );

    // A wrong password, or none: refused at once, and not as a lost connection.
    let mut wrong_password = config(&peer, &cert, &key);
    wrong_password.username = Some("operator".into());
    wrong_password.password_file = Some(wrong);
    identities_refused([
        ("a wrong password", wrong_password),
        ("anonymous", config(&peer, &cert, &key)),
    ])
    .await;
}

/// Each identity is refused at once, as a configuration error (not a lost
/// connection to retry), in words that say it is the user identity.
async fn identities_refused<const N: usize>(identities: [(&str, OpcuaConfig); N]) {
    for (what, config) in identities {
        let pki = tempfile::tempdir().expect("tempdir");
        let ua = OpcuaInstrument::new(&config, pki.path()).expect("adapter");
        let started = Instant::now();
        let refused = ua.read(STATE).await.expect_err(what);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: {refused}"
        );
        assert!(!refused.is_transient(), "{what}: {refused:?}");
        assert!(
            refused.to_string().contains("user identity")
                || refused.to_string().contains("Identity"),
            "{what}: {refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_requires_a_user_certificate_takes_the_configured_one_only() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = opcua_client_identity(&python, dir.path(), "agent");
    let (user_cert, user_key) = opcua_client_identity(&python, dir.path(), "operator");
    let (stranger_cert, stranger_key) = opcua_client_identity(&python, dir.path(), "stranger");
    let peer = Peer::opcua(
        &python,
        &[
            "--trust-client-cert",
            &cert.display().to_string(),
            "--require-user-cert",
            &user_cert.display().to_string(),
        ],
    );

    // The user certificate the server knows, signed with its key: values are read.
    let pki = tempfile::tempdir().expect("tempdir");
    let mut certified = config(&peer, &cert, &key);
    certified.user_certificate = Some(user_cert.clone());
    certified.user_key = Some(user_key.clone());
    let ua = OpcuaInstrument::new(&certified, pki.path()).expect("adapter");
    assert_eq!(
        ua.read(STATE).await.expect("read as the certified user"),
        Value::String("Idle".into())
    );
    assert!(
        peer.log().contains("USER-ACCEPTED cert=certified-operator"),
        "{}",
        peer.log()
    );

    // Another certificate, or anonymous: refused at once, as a configuration error.
    let mut stranger = config(&peer, &cert, &key);
    stranger.user_certificate = Some(stranger_cert);
    stranger.user_key = Some(stranger_key);
    identities_refused([
        ("another user certificate", stranger),
        ("anonymous", config(&peer, &cert, &key)),
    ])
    .await;
    assert!(peer.log().contains("USER-REFUSED cert"), "{}", peer.log());
}

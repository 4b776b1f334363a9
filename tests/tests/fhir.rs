//! The hospital's systems order through FHIR R4: an EHR integration engine written
//! with FHIR clients we did not write (Python fhirpy and the SMART on FHIR
//! fhirclient) creates a pseudonymous Patient and a ServiceRequest, retries it (no
//! second order), follows the order's Task to release by polling `_lastUpdated`,
//! and is refused what Carrel does not take; every answer validates with the
//! fhir.resources R4B models (tests/peers/fhir_ehr.py).

use carrel_tests::scenario::{self, PHYSICIAN};
use carrel_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

struct Ehr {
    python: std::path::PathBuf,
    base: String,
    ca: std::path::PathBuf,
    token: String,
}

impl Ehr {
    fn run(&self, args: &[&str]) -> Value {
        let out = Command::new(&self.python)
            .arg(peers::peers_dir().join("fhir_ehr.py"))
            .arg(&self.base)
            .arg(&self.token)
            .args(args)
            .env("REQUESTS_CA_BUNDLE", &self.ca)
            .env("SSL_CERT_FILE", &self.ca)
            .output()
            .expect("run the EHR");
        assert!(
            out.status.success(),
            "fhir_ehr.py {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON from the EHR")
    }

    fn refused(&self, kind: &str, body: Value) -> (u64, String) {
        let out = self.run(&["refused", kind, &body.to_string()]);
        assert_eq!(out["resourceType"], "OperationOutcome", "{out}");
        (
            out["status"].as_u64().expect("status"),
            out["diagnostics"].to_string(),
        )
    }
}

fn console_base(dir: &Path) -> String {
    let addr = std::fs::read_to_string(dir.join("console.addr")).expect("console addr");
    format!("https://{}/fhir", addr.trim())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ehr_orders_through_fhir_and_follows_the_task_to_release() {
    let Some(python) = peers::python() else {
        return;
    };
    let hub = Hub::start().await;
    scenario::add_people(&hub);
    hub.add_user("dr.other", "physician", "other-password-123");
    let token = hub.add_site("site-f");
    let mut agent = Agent::enroll(&hub, "site-f", &token)
        .expect("enroll")
        .with_time_compression(200_000.0);
    agent.start();
    let ehr = Ehr {
        python,
        base: console_base(&hub.data_dir()),
        ca: hub.ca_cert(),
        token: hub.login(PHYSICIAN.0, PHYSICIAN.1).await.expect("sign in"),
    };
    let date = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();

    // What the hub supports, exactly.
    let metadata = ehr.run(&["metadata"]);
    assert_eq!(metadata["status"], 200);
    assert!(
        metadata["content_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("application/fhir+json")),
        "{metadata}"
    );
    let capability = &metadata["resource"];
    assert_eq!(capability["fhirVersion"], "4.0.1");
    let types: Vec<&str> = capability["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert_eq!(types, ["Patient", "ServiceRequest", "Task"]);

    // A Patient that identifies a person is refused, saying why; nothing is stored.
    let (status, why) = ehr.refused(
        "Patient",
        json!({"resourceType": "Patient", "name": [{"family": "Doe"}], "birthDate": "1970-01-01",
               "identifier": [{"system": "urn:carrel:patient-pseudonym", "value": "P-9001"}]}),
    );
    assert_eq!(status, 422);
    assert!(why.contains("remove name, birthDate"), "{why}");
    let patient = ehr.run(&["pseudonymous-patient", "P-9001"]);
    assert_eq!(patient["id"], "P-9001");

    // The order, and the same order sent again (fhirpy, then a conditional create).
    let created = ehr.run(&["order", "P-9001", "site-f", &date, "EHR-77001"]);
    let order_id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["status"], "active");
    assert_eq!(created["subject"]["reference"], "Patient/P-9001");
    let again = ehr.run(&["order", "P-9001", "site-f", &date, "EHR-77001"]);
    assert_eq!(
        again["id"],
        order_id.as_str(),
        "a retried request places no second order"
    );
    let conditional = ehr.run(&["conditional-order", "P-9001", "site-f", &date, "EHR-77001"]);
    assert_eq!(conditional["status"], 200);
    assert_eq!(conditional["resource"]["id"], order_id.as_str());
    let listed = hub.cli_json(PHYSICIAN.0, &["order", "list"], None);
    let mine: Vec<&Value> = listed
        .as_array()
        .expect("orders")
        .iter()
        .filter(|o| o["patient_pseudonym"] == "P-9001")
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["order_id"], order_id.as_str());
    let searched = ehr.run(&[
        "search",
        "ServiceRequest",
        &json!({"identifier": "urn:ehr:order-number|EHR-77001"}).to_string(),
    ]);
    assert_eq!(searched.as_array().map(Vec::len), Some(1), "{searched}");

    // Refusals: no identifier, another's name as requester, an unknown site.
    let base_order = |extra: Value| {
        let mut body = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"system": "urn:ehr:order-number", "value": "EHR-77002"}],
            "code": {"coding": [{"system": "urn:carrel:product", "code": "cd19-car-t"}]},
            "subject": {"reference": "Patient/P-9002"},
            "performer": [{"reference": "Organization/site-f"}],
            "occurrenceDateTime": date});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                body.as_object_mut().expect("object").remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let (status, why) = ehr.refused("ServiceRequest", base_order(json!({"identifier": null})));
    assert_eq!(status, 422);
    assert!(why.contains("needs an identifier"), "{why}");
    let (status, why) = ehr.refused(
        "ServiceRequest",
        base_order(json!({"requester": {"reference": "Practitioner/dr.other"}})),
    );
    assert_eq!(status, 403, "{why}");
    let (status, why) = ehr.refused(
        "ServiceRequest",
        base_order(json!({"performer": [{"reference": "Organization/site-nowhere"}]})),
    );
    assert_eq!(status, 422, "{why}");
    assert!(why.contains("site-nowhere"), "{why}");
    let after_refusals = hub.cli_json(PHYSICIAN.0, &["order", "list"], None);
    assert_eq!(
        after_refusals.as_array().map(Vec::len),
        Some(1),
        "nothing else stored"
    );

    // The SMART client reads the order and its Task.
    let read = ehr.run(&["read", "ServiceRequest", &order_id]);
    assert_eq!(read["id"], order_id.as_str());
    let task = ehr.run(&["read", "Task", &order_id]);
    assert_eq!(
        task["basedOn"][0]["reference"],
        format!("ServiceRequest/{order_id}")
    );
    assert!(
        ["requested", "accepted", "in-progress"].contains(&task["status"].as_str().unwrap_or("")),
        "{task}"
    );
    assert!(
        task["businessStatus"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("expected release")),
        "{task}"
    );

    // Another physician does not see it; a bad token is refused.
    let other = Ehr {
        token: hub
            .login("dr.other", "other-password-123")
            .await
            .expect("sign in"),
        ..ehr
    };
    let theirs = other.run(&[
        "search",
        "Task",
        &json!({"patient": "Patient/P-9001"}).to_string(),
    ]);
    assert_eq!(theirs.as_array().map(Vec::len), Some(0), "{theirs}");
    let ehr = Ehr {
        token: hub.login(PHYSICIAN.0, PHYSICIAN.1).await.expect("sign in"),
        ..other
    };
    let anonymous = ehr.run(&["unauthenticated"]);
    assert_eq!(anonymous["refused"], true, "{anonymous}");
    assert!(
        anonymous["text"]
            .as_str()
            .is_some_and(|t| t.contains("unknown or has expired")),
        "{anonymous}"
    );

    // The Task follows the order to release; the engine polls _lastUpdated.
    let batch_id = str_field(&order_show(&hub, PHYSICIAN.0, &order_id), "batch_id").to_owned();
    scenario::wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;
    let before_release = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    scenario::sign_release(&hub, &batch_id);
    let changed = ehr.run(&[
        "search",
        "Task",
        &json!({"patient": "Patient/P-9001", "_lastUpdated": format!("gt{before_release}")})
            .to_string(),
    ]);
    let changed = changed.as_array().expect("tasks");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["status"], "completed", "{changed:?}");
    assert_eq!(changed[0]["businessStatus"]["text"], "batch released");
    agent.kill();
}

/// What `integration add` and `rotate-secret` print: the account and its secret.
fn secret_of(answer: &Value) -> String {
    answer["client_secret"]
        .as_str()
        .expect("client secret")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_integration_engine_orders_only_for_the_physicians_of_its_account() {
    let Some(python) = peers::python() else {
        return;
    };
    let hub = Hub::start().await;
    scenario::add_people(&hub);
    hub.add_user("dr.other", "physician", "other-password-123");
    hub.add_user("tech.ann", "technician", "technician-password-1");
    hub.ensure_admin();
    let token = hub.add_site("site-g");
    let mut agent = Agent::enroll(&hub, "site-g", &token).expect("enroll");
    agent.start();
    let base = console_base(&hub.data_dir());
    let date = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    let ehr = |token: &str| Ehr {
        python: python.clone(),
        base: base.clone(),
        ca: hub.ca_cert(),
        token: token.to_owned(),
    };
    let grant =
        |client_id: &str, secret: &str, how: &str| ehr("-").run(&["token", client_id, secret, how]);

    // Bad input is refused with the reason, and nothing is stored.
    for (args, why) in [
        (
            vec![
                "integration",
                "add",
                "St Elsewhere",
                "--name",
                "x",
                "--physician",
                PHYSICIAN.0,
            ],
            "lower-case letters",
        ),
        (
            vec![
                "integration",
                "add",
                "st-elsewhere-ehr",
                "--name",
                "x",
                "--physician",
                "tech.ann",
            ],
            "not a physician",
        ),
        (
            vec![
                "integration",
                "add",
                "st-elsewhere-ehr",
                "--name",
                "x",
                "--physician",
                "dr.nobody",
            ],
            "not an account",
        ),
    ] {
        let out = hub.cli("admin", &args, None);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && text.contains(why),
            "{args:?}: {text}"
        );
    }
    let listed = hub.cli_json("admin", &["integration", "list"], None);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let physician_cannot = hub.cli(
        PHYSICIAN.0,
        &[
            "integration",
            "add",
            "mine",
            "--name",
            "x",
            "--physician",
            PHYSICIAN.0,
        ],
        None,
    );
    assert!(!physician_cannot.status.success());

    // The administrator makes the account for one physician; the secret is shown once.
    let made = hub.cli_json(
        "admin",
        &[
            "integration",
            "add",
            "st-elsewhere-ehr",
            "--name",
            "St Elsewhere EHR interface engine",
            "--physician",
            PHYSICIAN.0,
        ],
        None,
    );
    assert_eq!(made["physicians"], json!([PHYSICIAN.0]));
    let secret = secret_of(&made);

    // The engine gets a token with an OAuth 2 client we did not write, both ways.
    let wrong = grant("st-elsewhere-ehr", "not-the-secret", "basic");
    assert_eq!(wrong["granted"], false, "{wrong}");
    assert_eq!(wrong["error"], "invalid_client", "{wrong}");
    let by_form = grant("st-elsewhere-ehr", &secret, "post");
    assert_eq!(by_form["granted"], true, "{by_form}");
    let granted = grant("st-elsewhere-ehr", &secret, "basic");
    assert_eq!(granted["granted"], true, "{granted}");
    assert_eq!(granted["token"]["token_type"], "Bearer");
    let engine = ehr(granted["token"]["access_token"].as_str().expect("token"));

    // It orders for its physician: the order is theirs, and the trail names the engine.
    let created = engine.run(&["order", "P-7001", "site-g", &date, "SE-1", PHYSICIAN.0]);
    let order_id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["requester"]["reference"],
        format!("Practitioner/{}", PHYSICIAN.0)
    );
    let again = engine.run(&["order", "P-7001", "site-g", &date, "SE-1", PHYSICIAN.0]);
    assert_eq!(again["id"], order_id.as_str(), "a retry places nothing");
    let theirs = hub.cli_json(PHYSICIAN.0, &["order", "list"], None);
    assert_eq!(theirs.as_array().map(Vec::len), Some(1), "{theirs}");
    assert_eq!(theirs[0]["order_id"], order_id.as_str());
    let trail = hub.cli_ok("admin", &["audit", "list"], None);
    let created_line = trail
        .lines()
        .find(|l| l.contains("order.created"))
        .expect("order.created in the trail");
    assert!(
        created_line.contains("system:st-elsewhere-ehr")
            && created_line.contains(&format!("for physician {}", PHYSICIAN.0)),
        "{created_line}"
    );

    // Not for a physician outside its scope, and not without naming one.
    let base_order = |requester: Value| {
        let mut body = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"system": "urn:ehr:order-number", "value": "SE-2"}],
            "code": {"coding": [{"system": "urn:carrel:product", "code": "cd19-car-t"}]},
            "subject": {"reference": "Patient/P-7002"},
            "performer": [{"reference": "Organization/site-g"}],
            "occurrenceDateTime": date});
        if !requester.is_null() {
            body["requester"] = requester;
        }
        body
    };
    let (status, why) = engine.refused(
        "ServiceRequest",
        base_order(json!({"reference": "Practitioner/dr.other"})),
    );
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("may not order for dr.other"), "{why}");
    let (status, why) = engine.refused("ServiceRequest", base_order(Value::Null));
    assert_eq!(status, 422, "{why}");
    assert!(
        why.contains("requester must name the ordering physician"),
        "{why}"
    );
    let all = hub.cli_json("admin", &["order", "list"], None);
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "nothing else stored: {all}"
    );

    // It sees its physician's orders only.
    let other = ehr(&hub
        .login("dr.other", "other-password-123")
        .await
        .expect("sign in"));
    let others_order = other.run(&["order", "P-7003", "site-g", &date, "OT-1"]);
    let others_id = others_order["id"].as_str().expect("id").to_owned();
    let hidden = engine.run(&["get", "ServiceRequest", &others_id]);
    assert_eq!(hidden["status"], 404, "{hidden}");
    let seen = engine.run(&["search", "ServiceRequest", "{}"]);
    let ids: Vec<&str> = seen
        .as_array()
        .expect("bundle")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, [order_id.as_str()], "{seen}");

    // The scope changes at once: dr.other in, dr.fault out.
    let changed = hub.cli_json(
        "admin",
        &[
            "integration",
            "scope",
            "st-elsewhere-ehr",
            "--add",
            "dr.other",
            "--remove",
            PHYSICIAN.0,
            "--reason",
            "Dr Fault moved to another hospital",
        ],
        None,
    );
    assert_eq!(changed["physicians"], json!(["dr.other"]));
    let now_seen = engine.run(&["get", "ServiceRequest", &others_id]);
    assert_eq!(now_seen["status"], 200, "{now_seen}");
    let gone = engine.run(&["get", "ServiceRequest", &order_id]);
    assert_eq!(gone["status"], 404, "{gone}");

    // Rotating the secret ends the token and the old secret; disabling ends the new.
    let rotated = hub.cli_json(
        "admin",
        &[
            "integration",
            "rotate-secret",
            "st-elsewhere-ehr",
            "--reason",
            "Secret seen in a log",
        ],
        None,
    );
    let new_secret = secret_of(&rotated);
    let after_rotation = engine.run(&["get", "ServiceRequest", &others_id]);
    assert_eq!(after_rotation["status"], 401, "{after_rotation}");
    let old = grant("st-elsewhere-ehr", &secret, "basic");
    assert_eq!(old["error"], "invalid_client", "{old}");
    let fresh = grant("st-elsewhere-ehr", &new_secret, "basic");
    let engine = ehr(fresh["token"]["access_token"].as_str().expect("token"));
    assert_eq!(
        engine.run(&["get", "ServiceRequest", &others_id])["status"],
        200
    );
    let disabled = hub.cli_json(
        "admin",
        &[
            "integration",
            "disable",
            "st-elsewhere-ehr",
            "--reason",
            "Interface retired",
        ],
        None,
    );
    assert_eq!(disabled["disabled"], true);
    assert_eq!(
        engine.run(&["get", "ServiceRequest", &others_id])["status"],
        401
    );
    let refused = grant("st-elsewhere-ehr", &new_secret, "basic");
    assert_eq!(refused["error"], "invalid_client", "{refused}");

    // Wrong secrets lock the client out from this address, as for a person's
    // password: then even the right secret is refused until the window ends.
    hub.cli_json(
        "admin",
        &[
            "integration",
            "enable",
            "st-elsewhere-ehr",
            "--reason",
            "Interface live again",
        ],
        None,
    );
    // Failures are counted in fixed windows (15 minutes): should one end while this
    // runs, the count starts again, so wrong secrets are sent until the lock shows,
    // and the whole is tried once more if a window ended before the right secret.
    let mut locked = Value::Null;
    for _ in 0..2 {
        for _ in 0..12 {
            let wrong = grant("st-elsewhere-ehr", "still-not-the-secret", "basic");
            if wrong["description"]
                .as_str()
                .is_some_and(|d| d.contains("too many"))
            {
                break;
            }
        }
        locked = grant("st-elsewhere-ehr", &new_secret, "basic");
        if locked["granted"] == false {
            break;
        }
    }
    assert_eq!(locked["error"], "invalid_client", "{locked}");
    assert!(
        locked["description"]
            .as_str()
            .is_some_and(|d| d.contains("too many failed attempts")),
        "{locked}"
    );

    // Every change is in the trail, with who made it and why.
    let trail = hub.cli_ok("admin", &["audit", "list"], None);
    for action in [
        "system_account.added",
        "system_account.token_issued",
        "system_account.scope_changed",
        "system_account.secret_rotated",
        "system_account.disabled",
    ] {
        assert!(trail.contains(action), "{action} missing:\n{trail}");
    }
    assert!(trail.contains("Interface retired"), "{trail}");
    agent.kill();
}

//! Process analytics end to end, on `carrel-hub dev`'s simulated history (four
//! history sites, 40 batches of cd19-car-t each, the viability of history-east
//! falling by 1.5 standard deviations from its 30th batch):
//! - the drift is signalled on history-east's own chart within 9 batches of it;
//! - a gRPC client Carrel did not write (grpcio) reads the charts, and every figure
//!   (comparisons, test choice, capability, limits, rule 1) agrees with SciPy and
//!   NumPy computed from the chart's own points;
//! - each site's latest batches await review, and a trend signal on one is among
//!   its exceptions (and only then);
//! - QA chooses a baseline (the first 100 batches) and the limits then come from it;
//! - the CSV holds one row per batch; bad input is refused with what is wrong.

use carrel_tests::dev::DevNetwork;
use serde_json::Value;

const QA: (&str, &str) = ("qa.grace", "dev-qa-password");
const PHYSICIAN: (&str, &str) = ("dr.ada", "dev-physician-password");

fn peer_check(dev: &DevNetwork, python: &std::path::Path, attribute: &str) -> Value {
    let out = std::process::Command::new(python)
        .arg(carrel_tests::peers::peers_dir().join("analytics_client.py"))
        .args([
            &dev.grpc,
            &dev.ca_cert().display().to_string(),
            QA.0,
            QA.1,
            "cd19-car-t",
            attribute,
        ])
        .output()
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "analytics_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("its JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drifting_site_is_signalled_and_every_figure_agrees_with_scipy() {
    let dev = DevNetwork::start(&["--history-batches", "40"]).await;
    assert!(
        dev.welcome
            .contains("Seeded a simulated history for analytics: 160 past batches of cd19-car-t"),
        "{}",
        dev.welcome
    );
    dev.login(QA.0, QA.1);
    dev.login(PHYSICIAN.0, PHYSICIAN.1);

    // The CSV: one row per batch, in the order placed, with each site's rules.
    let csv = dev.cli_ok(
        QA.0,
        &["analytics", "chart", "cd19-car-t", "qc/viability", "--csv"],
    );
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), 160);
    let east: Vec<&Vec<&str>> = rows
        .iter()
        .filter(|r| r[col("site_id")] == "history-east")
        .collect();
    assert_eq!(east.len(), 40);
    let first_after_shift = east
        .iter()
        .enumerate()
        .skip(29)
        .find(|(_, r)| !r[col("site_rules")].is_empty())
        .map(|(i, r)| (i, r[col("site_rules")].to_owned()));
    let (at, rules) = first_after_shift.expect("a signal at history-east after its 30th batch");
    assert!(
        at < 29 + 9,
        "history-east first signalled at its batch {}, more than 9 after the shift",
        at + 1
    );
    assert!(
        rules.split(' ').any(|r| ["1", "2", "5", "6"].contains(&r)),
        "signalled by rule(s) {rules}"
    );

    // The text form names the site, the batch and the rule.
    let text = dev.cli_ok(QA.0, &["analytics", "chart", "cd19-car-t", "qc/viability"]);
    assert!(text.contains("history-east batch"), "{text}");
    assert!(text.contains("no baseline chosen"), "{text}");

    // A client Carrel did not write, and SciPy, agree with every figure.
    if let Some(python) = carrel_tests::peers::python() {
        for attribute in ["qc/viability", "step/expansion/temperature", "qc/dose"] {
            let checked = peer_check(&dev, &python, attribute);
            assert_eq!(
                checked["errors"],
                serde_json::json!([]),
                "{attribute}: {checked}"
            );
            assert!(
                checked["checked"].as_u64().unwrap_or(0) >= 9,
                "{attribute}: {checked}"
            );
            assert_eq!(checked["sites"].as_array().map(Vec::len), Some(4));
        }
    }

    // Each site's latest two batches await QA's review. A signal on one of them
    // by a trend rule (1, 2, 5, 6) on its site's viability chart is among its
    // exceptions, and only then.
    let mut flagged = 0;
    let mut awaiting = Vec::new();
    for site in [
        "history-east",
        "history-north",
        "history-south",
        "history-west",
    ] {
        let of_site: Vec<&Vec<&str>> = rows.iter().filter(|r| r[col("site_id")] == site).collect();
        for row in &of_site[of_site.len() - 2..] {
            let batch = row[col("batch_id")];
            awaiting.push(batch.to_owned());
            let signal = format!("trend signal: Viability {} at {site}", row[col("value")]);
            let trend = row[col("site_rules")]
                .split(' ')
                .any(|r| ["1", "2", "5", "6"].contains(&r));
            let exceptions = || -> String {
                let shown: Value =
                    serde_json::from_str(&dev.cli_ok(QA.0, &["release", "show", batch, "--json"]))
                        .expect("record JSON");
                assert_eq!(shown["order"]["state"], "awaiting_release", "{shown}");
                shown["exceptions"].to_string()
            };
            if trend {
                flagged += 1;
                carrel_tests::eventually(
                    std::time::Duration::from_secs(30),
                    &format!("the trend signal among {batch}'s exceptions"),
                    || async { exceptions().contains(&signal).then_some(()) },
                )
                .await;
            } else {
                assert!(!exceptions().contains(&signal), "{site} {batch}");
            }
        }
    }
    // (With this seed no viability chart flags one of them; another QC test's does.)
    if flagged == 0 {
        carrel_tests::eventually(
            std::time::Duration::from_secs(30),
            "a trend signal among the exceptions of a batch awaiting review",
            || async {
                awaiting
                    .iter()
                    .any(|batch| {
                        dev.cli_ok(QA.0, &["release", "show", batch, "--json"])
                            .contains("trend signal: ")
                    })
                    .then_some(())
            },
        )
        .await;
    }

    // The golden batch of a batch awaiting review: the grpcio client recomputes
    // every band, point and excursion from the stored site records with NumPy.
    let shown: Value =
        serde_json::from_str(&dev.cli_ok(QA.0, &["release", "show", &awaiting[0], "--json"]))
            .expect("record JSON");
    let order_id = shown["order"]["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    if let Some(python) = carrel_tests::peers::python() {
        let out = std::process::Command::new(&python)
            .arg(carrel_tests::peers::peers_dir().join("golden_check.py"))
            .args([
                dev.grpc.as_str(),
                &dev.ca_cert().display().to_string(),
                QA.0,
                QA.1,
                &order_id,
                &dev.dir
                    .path()
                    .join("hub")
                    .join("hub.db")
                    .display()
                    .to_string(),
                &carrel_tests::peers::peers_dir()
                    .join("..")
                    .join("..")
                    .join("hub")
                    .join("recipes")
                    .display()
                    .to_string(),
            ])
            .output()
            .expect("run the grpcio client");
        assert!(
            out.status.success(),
            "golden_check.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let golden: Value = serde_json::from_slice(&out.stdout).expect("its JSON");
        assert_eq!(golden["errors"], serde_json::json!([]), "{golden}");
        assert_eq!(golden["released"], 152, "{golden}");
        // Every parameter of every step, in each of its bins with a band (89 with
        // sampling every 6 h: 60 of them in expansion's five parameters).
        assert!(golden["checked"].as_u64().unwrap_or(0) >= 80, "{golden}");
    }
    // Another physician's order, an unknown one and a malformed id are refused.
    // (Process detail is QA's, as the charts are: a physician is refused.)
    let refused = dev.cli_refused(PHYSICIAN.0, &["analytics", "golden", &order_id]);
    assert!(
        refused.contains("this needs the role qa or admin"),
        "{refused}"
    );
    let refused = dev.cli_refused(
        QA.0,
        &[
            "analytics",
            "golden",
            "01a24edb-0000-7000-8000-000000000000",
        ],
    );
    assert!(refused.to_lowercase().contains("not found"), "{refused}");
    let refused = dev.cli_refused(QA.0, &["analytics", "golden", "not-an-id"]);
    assert!(refused.contains("not a valid id"), "{refused}");

    // QA chooses the first 100 batches as the baseline; limits come from it.
    let today = chrono::Utc::now().date_naive().to_string();
    let refused = dev.cli_refused(
        QA.0,
        &[
            "analytics",
            "baseline",
            "cd19-car-t",
            "--from",
            &today,
            "--to",
            &today,
            "--first",
            "1",
            "--reason",
            "The first batch alone",
        ],
    );
    assert!(refused.contains("needs at least 2"), "{refused}");
    let refused = dev.cli_refused(
        QA.0,
        &[
            "analytics",
            "baseline",
            "cd19-car-t",
            "--from",
            &today,
            "--to",
            &today,
            "--reason",
            "ok",
        ],
    );
    assert!(refused.contains("too short"), "{refused}");
    let chosen = dev.cli_ok(
        QA.0,
        &[
            "analytics",
            "baseline",
            "cd19-car-t",
            "--from",
            &today,
            "--to",
            &today,
            "--first",
            "100",
            "--reason",
            "The first 100 batches of the validated process",
        ],
    );
    assert!(
        chosen.contains("baseline of 100 batches chosen by qa.grace"),
        "{chosen}"
    );
    let json: Value = serde_json::from_str(&dev.cli_ok(
        QA.0,
        &["analytics", "chart", "cd19-car-t", "qc/viability", "--json"],
    ))
    .expect("chart JSON");
    assert_eq!(
        json["baseline"]["batch_ids"].as_array().map(Vec::len),
        Some(100)
    );
    if let Some(python) = carrel_tests::peers::python() {
        let checked = peer_check(&dev, &python, "qc/viability");
        assert_eq!(checked["errors"], serde_json::json!([]), "{checked}");
        assert_eq!(checked["baseline"], 100);
    }
    let csv = dev.cli_ok(
        QA.0,
        &["analytics", "chart", "cd19-car-t", "qc/viability", "--csv"],
    );
    let in_baseline = csv
        .lines()
        .skip(1)
        .filter(|r| r.split(',').nth(col("in_baseline")) == Some("true"))
        .count();
    assert_eq!(in_baseline, 100);

    // Bad input changes nothing and says what is wrong.
    let refused = dev.cli_refused(
        QA.0,
        &["analytics", "chart", "no-such-product", "qc/viability"],
    );
    assert!(
        refused.contains("\"no-such-product\" is not known"),
        "{refused}"
    );
    let refused = dev.cli_refused(
        QA.0,
        &[
            "analytics",
            "chart",
            "cd19-car-t",
            "qc/viability",
            "--statistic",
            "median",
        ],
    );
    assert!(refused.contains("choose value"), "{refused}");
    let refused = dev.cli_refused(
        QA.0,
        &["analytics", "chart", "cd19-car-t", "qc/no-such-test"],
    );
    assert!(
        refused.contains("no batch of cd19-car-t has a measure"),
        "{refused}"
    );
    let refused = dev.cli_refused(PHYSICIAN.0, &["analytics", "products"]);
    assert!(refused.contains("needs the role qa or admin"), "{refused}");
    let refused = dev.cli_refused(
        QA.0,
        &[
            "analytics",
            "baseline",
            "cd19-car-t",
            "--from",
            "yesterday",
            "--to",
            &today,
            "--reason",
            "A window that is not a date",
        ],
    );
    assert!(refused.contains("is not a date"), "{refused}");
    let json: Value = serde_json::from_str(
        &dev.cli_ok(QA.0, &["analytics", "attributes", "cd19-car-t", "--json"]),
    )
    .expect("attributes JSON");
    assert_eq!(
        json["baseline"]["reason"], "The first 100 batches of the validated process",
        "the refusals changed nothing"
    );
    dev.stop().await;
}

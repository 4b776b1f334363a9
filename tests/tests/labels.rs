//! Labels that scan: a technician prints a batch's label at the site (PNG, PDF and
//! ZPL), an independent decoder (Python zxing-cpp) reads both symbols of the PNG and
//! of the PDF as Poppler renders it, the decoded text is the batch's barcode data,
//! and typed into the site's scan field it is a match. Every print and reprint is a
//! record with the person's name.

use carrel_proto::coi::Coi;
use carrel_tests::scenario::{self, count};
use carrel_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOM: (&str, &str) = ("tech.tom", "tom-password-123");
const ANN: (&str, &str) = ("tech.ann", "ann-password-123");

/// (format, text) of every symbol zxing-cpp finds in the images.
fn decode(python: &Path, images: &[&Path]) -> Vec<(String, String)> {
    let out = Command::new(python)
        .arg(peers::peers_dir().join("decode.py"))
        .args(images)
        .output()
        .expect("run the decoder");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(f, t)| (f.to_owned(), t.to_owned()))
        .collect()
}

/// Both symbols were found, each carrying exactly `data`.
fn assert_both_symbols(found: &[(String, String)], data: &str) {
    for symbology in ["Code128", "DataMatrix"] {
        assert!(
            found.iter().any(|(f, t)| f == symbology && t == data),
            "{symbology} with {data:?} among {found:?}"
        );
    }
}

fn label(
    agent: &Agent,
    batch: &str,
    format: &str,
    out: &Path,
    who: (&str, &str),
) -> std::process::Output {
    agent.cli(
        &[
            "label",
            "--batch",
            batch,
            "--checkpoint",
            "collection",
            "--format",
            format,
            "--out",
            out.to_str().expect("path"),
            "--user",
            who.0,
        ],
        &format!("{}\n", who.1),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_printed_label_decodes_to_the_batch_and_scans_as_a_match() {
    let Some(python) = peers::python() else {
        return;
    };
    let hub = Hub::start().await;
    scenario::add_people(&hub);
    let token = hub.add_site("site-l");
    let mut agent = Agent::enroll(&hub, "site-l", &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    agent.configure(&["simulator", "auto_scan"], false.into());
    agent.configure(&["time_zone"], "America/New_York".into());
    agent.start();
    for (name, password) in [TOM, ANN] {
        hub.add_person(name, "technician", password, "site-l");
        agent.wait_for_person(name, "active").await;
    }
    let (_order, batch) = scenario::create_order(&hub, "site-l", "P-5501");
    let db = agent.db().await;
    let at_site = format!("SELECT COUNT(*) FROM batches WHERE batch_id = '{batch}'");
    eventually(Duration::from_secs(30), "the batch at the site", || {
        let db = db.clone();
        let sql = at_site.clone();
        async move { (count(&db, &sql).await == 1).then_some(()) }
    })
    .await;
    let coi: String = sqlx::query_scalar("SELECT coi FROM batches WHERE batch_id = ?")
        .bind(&batch)
        .fetch_one(&db)
        .await
        .expect("coi");
    let data = Coi::parse(&coi).expect("coi").barcode_data();
    let work = tempfile::tempdir().expect("temp dir");

    // A checkpoint the recipe does not have, or a format no printer takes: refused,
    // nothing recorded.
    let out = label(&agent, &batch, "bmp", &work.path().join("x"), TOM);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pdf, png, zpl"));
    let printed = "SELECT COUNT(*) FROM events WHERE kind = 'label_printed'";
    assert_eq!(count(&db, printed).await, 0);

    // PNG: both symbols decode to the batch's barcode data.
    let png = work.path().join("label.png");
    let out = label(&agent, &batch, "png", &png, TOM);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("first print"));
    let found = decode(&python, &[&png]);
    assert_both_symbols(&found, &data);

    // PDF, as Poppler renders it at 300 dpi: the same, and the words on it.
    let pdf = work.path().join("label.pdf");
    let out = label(&agent, &batch, "pdf", &pdf, TOM);
    assert!(String::from_utf8_lossy(&out.stdout).contains("reprint, copy 2"));
    let rendered = work.path().join("label-pdf");
    let ran = Command::new("pdftoppm")
        .args(["-r", "300", "-png", "-singlefile"])
        .arg(&pdf)
        .arg(&rendered)
        .status()
        .expect("pdftoppm");
    assert!(ran.success());
    let found = decode(&python, &[&rendered.with_extension("png")]);
    assert_both_symbols(&found, &data);
    let words = Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext");
    let words = String::from_utf8_lossy(&words.stdout);
    let coi_words = Coi::parse(&coi).expect("coi").eye_readable();
    for expected in [
        "FOR AUTOLOGOUS USE ONLY",
        "P-5501",
        "site-l",
        coi_words.rsplit_once(' ').expect("check character apart").0,
    ] {
        assert!(words.contains(expected), "{expected} in:\n{words}");
    }
    assert!(
        words.contains(" EST") || words.contains(" EDT"),
        "printed in the site's zone:\n{words}"
    );

    // ZPL for a Zebra printer: the printer draws both symbols from the same data.
    let zpl = work.path().join("label.zpl");
    label(&agent, &batch, "zpl", &zpl, ANN);
    let zpl = std::fs::read_to_string(&zpl).expect("zpl");
    assert!(
        zpl.contains(&format!("^BCN,110,N,N,N,A^FD{data}^FS")),
        "{zpl}"
    );
    assert!(zpl.contains(&format!("^FH^FD{data}^FS")), "{zpl}");

    // Every print is a record: who, which label, which copy.
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM events WHERE kind = 'label_printed' ORDER BY seq")
            .fetch_all(&db)
            .await
            .expect("records");
    let records: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).expect("json"))
        .collect();
    let who: Vec<&str> = records
        .iter()
        .map(|r| r["recorded_by"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(who, [TOM.0, TOM.0, ANN.0]);
    for (i, record) in records.iter().enumerate() {
        let kind = &record["kind"];
        assert_eq!(kind["copy"], i + 1, "{record}");
        assert_eq!(kind["checkpoint_id"], "collection", "{record}");
        assert_eq!(kind["barcode_data"], data.as_str(), "{record}");
        assert_eq!(record["identity"]["kind"], "authenticated", "{record}");
    }

    // The decoded text, as a hand-held scanner types it (with the Code 128
    // symbology identifier), passes the site's scan field as a match.
    let decoded = found
        .iter()
        .find(|(f, _)| f == "Code128")
        .map(|(_, t)| t.clone())
        .expect("decoded");
    let out = agent.cli(
        &[
            "scan",
            "--batch",
            &batch,
            "--checkpoint",
            "collection",
            "--user",
            TOM.0,
            "--second-user",
            ANN.0,
        ],
        &format!("{}\n{}\n]C0{decoded}\n", TOM.1, ANN.1),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let matched = "SELECT COUNT(*) FROM events WHERE kind = 'custody_scan' AND body LIKE '%\"matched\":true%'";
    assert_eq!(count(&db, matched).await, 1);
    agent.kill();
}

//! The batch record leaves the system intact: a released batch is exported with
//! `carrel-hub release export`, read as people and other programs would read it
//! (pdftotext and pdfinfo from Poppler, `sha256sum -c`, a Python script that follows
//! only the document's own `hash_method`), and checked with `release verify-export`
//! without the hub; one changed byte makes the check fail.

use carrel_tests::scenario::{self, PHYSICIAN, QA};
use carrel_tests::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `carrel-hub release verify-export DIR`: (exit code, what it printed).
fn verify_export(dir: &Path) -> (i32, String) {
    let out = Command::new(binary("carrel-hub"))
        .args(["release", "verify-export"])
        .arg(dir)
        .env_remove("CARREL_ADDR")
        .output()
        .expect("run verify-export");
    (out.status.code().unwrap_or(-1), text(&out))
}

/// Recomputes the record hash, and the hash as each signature saw it, from
/// record.json by following its `hash_method` alone (not Carrel's code).
const INDEPENDENT_CHECK: &str = r#"
import hashlib, json, sys
doc = json.load(open(sys.argv[1], encoding="utf-8"))
h = hashlib.sha256(doc["record_header"].encode())
prefixes = [h.hexdigest()]
for e in doc["events"]:
    assert hashlib.sha256(e["canonical_json"].encode()).hexdigest() == e["sha256"], e["seq"]
    h.update(b"\n" + e["site_id"].encode() + b"\t" + e["canonical_json"].encode())
    prefixes.append(h.hexdigest())
assert prefixes[-1] == doc["record_sha256"], "record hash"
header = json.loads(doc["record_header"])
assert hashlib.sha256(doc["recipe"].encode()).hexdigest() == header["recipe_sha256"], "recipe"
for a in doc["audit"]:
    assert hashlib.sha256((a["prev_sha256"] + a["canonical_json"]).encode()).hexdigest() == a["sha256"], a["position"]
for s in doc["signatures"]:
    print("signature covers", prefixes.index(s["record_sha256"]), "of", len(doc["events"]))
print("record", prefixes[-1])
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_released_batch_is_exported_read_by_other_programs_and_verified_without_the_hub() {
    let mut hub = Hub::start().await;
    scenario::add_people(&hub);
    let token = hub.add_site("site-a");
    let mut agent = Agent::enroll(&hub, "site-a", &token)
        .expect("enroll")
        .with_time_compression(200_000.0);
    agent.configure(&["time_zone"], "Asia/Tokyo".into());
    agent.start();
    let (order_id, batch_id) = scenario::create_order(&hub, "site-a", "P-4401");
    scenario::wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;
    scenario::sign_release(&hub, &batch_id);
    // The site records the decision after the signature: the record grows past
    // what QA signed, and the export must still bind the signature to its prefix.
    eventually(
        Duration::from_secs(30),
        "the site to record the decision",
        || {
            let shown = order_show(&hub, PHYSICIAN.0, &order_id);
            async move { (shown["decision_recorded_at_site"] == true).then_some(()) }
        },
    )
    .await;
    // The site lists its records in its own time zone.
    let listed = agent.cli(&["events", "--batch", &batch_id], "");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().count() > 10, "{listed}");
    assert!(
        listed.lines().all(|l| l.contains(" JST ")),
        "every record in JST:\n{listed}"
    );
    let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let record_sha = str_field(&record, "record_sha256").to_owned();
    let signature = &record["signatures"][0];
    let manifestation = str_field(signature, "manifestation").to_owned();
    let signed_sha = str_field(signature, "record_sha256").to_owned();
    assert_ne!(
        signed_sha, record_sha,
        "the record grew after the signature"
    );
    let db = hub.db().await;
    let exports = || {
        let db = db.clone();
        async move {
            scenario::count(
                &db,
                "SELECT COUNT(*) FROM audit_log WHERE action = 'batch_record.exported'",
            )
            .await
        }
    };

    // A physician may follow the order but not export its batch record.
    let work = tempfile::tempdir().expect("temp dir");
    let refused_dir = work.path().join("refused");
    let out = hub.cli(
        PHYSICIAN.0,
        &[
            "release",
            "export",
            &batch_id,
            "--out",
            refused_dir.to_str().expect("path"),
        ],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("PermissionDenied"), "{}", text(&out));
    assert!(!refused_dir.exists(), "nothing is written when refused");
    assert_eq!(exports().await, 0);

    // QA exports it, naming the order (what `order list` shows).
    let dir = work.path().join("archive");
    let dir_arg = dir.to_str().expect("path");
    let out = hub.cli_ok(
        QA.0,
        &["release", "export", &order_id, "--out", dir_arg],
        None,
    );
    assert!(out.contains(&record_sha), "{out}");
    for file in ["record.pdf", "record.json", "README.txt", "SHA256SUMS"] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    assert_eq!(exports().await, 1, "the export is in the audit trail");
    let exported: String = sqlx::query_scalar(
        "SELECT new_value FROM audit_log WHERE action = 'batch_record.exported'",
    )
    .fetch_one(&db)
    .await
    .expect("the audit entry");
    assert_eq!(exported, format!("record_sha256 {record_sha}"));

    // Into a directory that holds something: refused, nothing overwritten.
    std::fs::write(dir.join("README.txt"), "kept").expect("write");
    let again = hub.cli(
        QA.0,
        &["release", "export", &batch_id, "--out", dir_arg],
        None,
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("is not empty"), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(dir.join("README.txt")).expect("read"),
        "kept"
    );
    assert_eq!(exports().await, 1);
    let out = hub.cli_ok(
        QA.0,
        &[
            "release",
            "export",
            &batch_id,
            "--out",
            work.path().join("copy").to_str().expect("path"),
        ],
        None,
    );
    assert!(out.contains("Exported"), "{out}");
    let dir = work.path().join("copy");

    // Coreutils agree with SHA256SUMS.
    let sums = run("sha256sum", &["-c", "SHA256SUMS"], &dir);
    assert!(sums.status.success(), "{}", text(&sums));

    // The PDF as a reader sees it: A4, the signature's manifestation, the hashes.
    let pdf_text = run("pdftotext", &["-layout", "record.pdf", "-"], &dir);
    assert!(pdf_text.status.success(), "{}", text(&pdf_text));
    let pdf_text = String::from_utf8_lossy(&pdf_text.stdout);
    assert!(
        pdf_text.contains(&manifestation),
        "manifestation in:\n{pdf_text}"
    );
    assert!(pdf_text.contains(&signed_sha), "the signed hash is printed");
    let pages = pdf_text.matches('\u{c}').count().max(1);
    assert_eq!(
        pdf_text
            .matches(&format!("Record SHA-256 {record_sha}"))
            .count(),
        pages,
        "the record hash is in every page's footer"
    );
    for section in [
        "Order and chain of identity",
        "Release signatures",
        "Quality control against specification",
        "Process steps and readings",
        "Deviations",
        "Corrections",
        "Audit trail of the batch",
    ] {
        assert!(pdf_text.contains(section), "{section} in the PDF");
    }
    assert!(pdf_text.contains(str_field(&record["order"], "coi")));
    let info = run("pdfinfo", &["record.pdf"], &dir);
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("(A4)"),
        "{}",
        text(&info)
    );

    // A program that knows only the document's hash_method gets the same hashes.
    let python = run("python3", &["-c", INDEPENDENT_CHECK, "record.json"], &dir);
    assert!(python.status.success(), "{}", text(&python));
    let said = String::from_utf8_lossy(&python.stdout);
    assert!(said.contains(&format!("record {record_sha}")), "{said}");
    assert!(said.contains("signature covers"), "{said}");

    // verify-export, with no hub: intact.
    hub.stop();
    let (code, said) = verify_export(&dir);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("INTACT"), "{said}");
    assert!(
        said.contains("binds to this record as it stood at its first"),
        "{said}"
    );

    // One byte of the JSON changed: not intact, exit 1.
    let json_path = dir.join("record.json");
    let original = std::fs::read(&json_path).expect("read");
    // The first letter of a step id inside an event's canonical JSON.
    let needle = br#"\"step_id\":\""#;
    let at = original
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("a step id in an event")
        + needle.len();
    let mut changed = original.clone();
    changed[at] = if changed[at] == b'x' { b'y' } else { b'x' };
    std::fs::write(&json_path, &changed).expect("write");
    let (code, said) = verify_export(&dir);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("record.json was changed"), "{said}");
    // Without SHA256SUMS the record's own hashes find the change.
    std::fs::remove_file(dir.join("SHA256SUMS")).expect("remove");
    let (code, said) = verify_export(&dir);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("the record was changed"), "{said}");
    // Restored, it holds again.
    std::fs::write(&json_path, &original).expect("write");
    let (code, said) = verify_export(&dir);
    assert_eq!(code, 0, "{said}");

    // Not an export at all: exit 2 and says why.
    let (code, said) = verify_export(work.path());
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("has no record.json"), "{said}");
    agent.kill();
}

//! The consoles in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) against real `carrel-hub` and `carrel-site-agent` processes. A
//! physician orders, the technician scans a wrong label (MISMATCH) and the right one
//! (MATCH) at the site console, QA reviews the record and signs release in the signing
//! dialog, and the physician's page turns to released without a reload.
//!
//! QA's signature is checked where a slip would record the wrong decision: nothing
//! is chosen for the signer, a mistyped password keeps a rejection a rejection, and
//! a confirmation that differs from what was reviewed is refused.
//!
//! At the site console people sign in with their own passwords; the second person of
//! a two-person verification signs on the same form, and the same person twice, a
//! wrong password or a form sent after signing out records nothing.
//!
//! A physician sees rejections, cancellations and late failures on the order page and
//! in the console's own notification list, cancels and moves orders with a reason,
//! and is warned of a second open order; an administrator sees what a suspension
//! touches before confirming it. Refusals are pages in the layout. Every page of both
//! consoles passes axe-core (WCAG 2.1 A/AA, no serious or critical violation) and fits
//! a 390 px wide screen.
//!
//! Screenshots of every page go to `target/browser-screenshots/`.

use carrel_tests::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PHYSICIAN: (&str, &str) = ("dr.web", "physician-password-1");
const QA: (&str, &str) = ("qa.web", "qa-password-12345");
const ANN: (&str, &str) = ("tech.ann", "tech-ann-password-1");
const BOB: (&str, &str) = ("tech.bob", "tech-bob-password-1");

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts chromedriver and waits until it says it is listening. A port picked as
    /// free can be taken by another test's process before chromedriver binds it; then
    /// chromedriver exits ("port not available") and another port is tried.
    fn start() -> Driver {
        use std::io::{BufRead, BufReader};
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (Debian package chromium-driver; scripts/test installs it)");
            let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            let mut listening = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.contains("started successfully") {
                    listening = true;
                    break;
                }
                last = line;
            }
            if listening {
                // Keep reading so chromedriver never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return Driver { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("chromedriver did not start listening on any of 10 ports; it last said: {last}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1200,1600", "--autoplay-policy=no-user-gesture-required", format!("--user-data-dir={}", profile.display())],
            // Downloads land in the profile's downloads/ without asking.
            "prefs": {
                "download.default_directory": profile.join("downloads").display().to_string(),
                "download.prompt_for_download": false,
            }
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    // Chromium can be slow to start on a busy two-core machine; give it a minute.
    let mut last = String::new();
    for _ in 0..60 {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    panic!("could not start a Chromium session through chromedriver: {last}");
}

struct Shots {
    dir: PathBuf,
    n: u32,
}

impl Shots {
    fn new(test: &str) -> Shots {
        let dir = binary("carrel-hub")
            .parent()
            .expect("target dir")
            .join("../browser-screenshots")
            .join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        Shots { dir, n: 0 }
    }

    async fn take(&mut self, client: &Client, name: &str) {
        self.n += 1;
        let png = client.screenshot().await.expect("screenshot");
        std::fs::write(self.dir.join(format!("{:02}-{name}.png", self.n)), png)
            .expect("save screenshot");
    }
}

/// Text of the page's body, for assertions that name the page when they fail.
async fn body_text(client: &Client) -> String {
    // Empty while a page is loading; the callers poll.
    match client.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn expect_text(client: &Client, page: &str, text: &str) {
    let body = eventually(
        Duration::from_secs(20),
        &format!("{page} to show {text:?}"),
        || async {
            let body = body_text(client).await;
            body.contains(text).then_some(body)
        },
    )
    .await;
    assert!(body.contains(text));
}

/// Loads `url` again until it shows `text` (for pages that change as the site works).
async fn reload_until(client: &Client, url: &str, text: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{url} to show {text:?}"),
        || async {
            client.goto(url).await.ok()?;
            body_text(client).await.contains(text).then_some(())
        },
    )
    .await;
}

async fn fill(client: &Client, css: &str, value: &str) {
    let field = client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no field {css}: {e}"));
    field.clear().await.expect("clear");
    field.send_keys(value).await.expect("type");
}

/// The signature's last step as a person does it: their user name at the first
/// signature of the session, the one-time acknowledgement, the password.
async fn confirm_signature(client: &Client, user: (&str, &str)) {
    if let Ok(field) = client.find(Locator::Css("#username")).await {
        if field
            .prop("value")
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
            .is_empty()
        {
            field.send_keys(user.0).await.expect("type");
        }
    }
    if let Ok(box_) = client.find(Locator::Css("#acknowledge")).await {
        if box_.prop("checked").await.ok().flatten().as_deref() != Some("true") {
            box_.click().await.expect("acknowledge");
        }
    }
    fill(client, "#password", user.1).await;
    click(client, "#confirm-signature").await;
}

/// Writes a justification into each exception's field of the decision form.
async fn justify_each_exception(client: &Client) -> usize {
    let fields = client
        .find_all(Locator::Css("textarea[id^=justification-]"))
        .await
        .expect("justification fields");
    for (i, field) in fields.iter().enumerate() {
        field.clear().await.expect("clear");
        field
            .send_keys(&format!(
                "Exception {} reviewed: it does not affect the product",
                i + 1
            ))
            .await
            .expect("type");
    }
    fields.len()
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("nothing to click at {css}: {e}"))
        .click()
        .await
        .expect("click");
}

async fn sign_in(client: &Client, console: &str, user: (&str, &str)) {
    client
        .goto(&format!("{console}/login"))
        .await
        .expect("login page");
    fill(client, "#username", user.0).await;
    fill(client, "#password", user.1).await;
    click(client, "form[action='/login'] button[type=submit]").await;
    eventually(
        Duration::from_secs(20),
        &format!("{} to be signed in", user.0),
        || async {
            let url = client.current_url().await.ok()?;
            (url.path() != "/login").then_some(())
        },
    )
    .await;
}

async fn sign_out(client: &Client) {
    click(client, "form[action='/logout'] button").await;
    eventually(
        Duration::from_secs(20),
        "the sign-in page after signing out",
        || async {
            let url = client.current_url().await.ok()?;
            (url.path() == "/login").then_some(())
        },
    )
    .await;
}

/// Signs in at the site console (a page of it without a session asks to).
async fn site_sign_in(client: &Client, site_console: &str, person: (&str, &str)) {
    client
        .goto(&format!("{site_console}/signin"))
        .await
        .expect("site sign-in page");
    fill(client, "#username", person.0).await;
    fill(client, "#password", person.1).await;
    click(client, "#sign-in").await;
    expect_text(
        client,
        "the site console after signing in",
        &format!("({}, ", person.0),
    )
    .await;
}

/// The people who work at the site in these tests, once its directory has them.
async fn technicians_at(hub: &Hub, agent: &Agent, site_id: &str) {
    for person in [ANN, BOB] {
        hub.add_person(person.0, "technician", person.1, site_id);
    }
    for person in [ANN, BOB] {
        agent.wait_for_person(person.0, "active").await;
    }
}

fn read_addr(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_page_subscribes_shows_the_secret_once_and_unsubscribes() {
    let hub = Hub::start_with("[notifications]\nwebhook_allowlist = [\"receiver.test\"]\n").await;
    hub.add_user(QA.0, "qa", QA.1);
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("notifications");

    sign_in(&client, &console, QA).await;
    click(&client, "a[href='/notifications']").await;
    expect_text(&client, "notifications page", "My subscriptions").await;

    // Outside dev mode a plain-http webhook is refused, with the reason.
    click(&client, "input[name='kind_released']").await;
    client
        .find(Locator::Css("#channel option[value='webhook']"))
        .await
        .expect("webhook option")
        .click()
        .await
        .expect("choose webhook");
    fill(&client, "#target", "http://receiver.test/hook").await;
    click(&client, "form[action='/notifications'] button[type=submit]").await;
    expect_text(&client, "refused subscription", "is not https").await;
    shots.take(&client, "notifications-refused").await;
    // The refused form comes back as it was sent.
    let kept = client
        .find(Locator::Css("input[name='kind_released']"))
        .await
        .expect("released box")
        .prop("checked")
        .await
        .expect("checked");
    assert_eq!(kept.as_deref(), Some("true"), "the kinds chosen are kept");
    let target = client
        .find(Locator::Css("#target"))
        .await
        .expect("target")
        .prop("value")
        .await
        .expect("value");
    assert_eq!(target.as_deref(), Some("http://receiver.test/hook"));

    click(&client, "input[name='kind_coi_mismatch']").await;
    client
        .find(Locator::Css("#channel option[value='webhook']"))
        .await
        .expect("webhook option")
        .click()
        .await
        .expect("choose webhook");
    fill(&client, "#target", "https://receiver.test/hook").await;
    click(&client, "form[action='/notifications'] button[type=submit]").await;
    expect_text(&client, "new subscription", "It is shown only now").await;
    let secret = client
        .find(Locator::Css("[data-secret]"))
        .await
        .expect("the secret")
        .text()
        .await
        .expect("text");
    assert!(secret.len() >= 32, "{secret:?}");
    let body = body_text(&client).await;
    assert!(
        body.contains("Chain-of-identity mismatch, Released"),
        "{body}"
    );
    shots.take(&client, "notifications-subscribed").await;
    let listed = hub.cli_json(QA.0, &["notify", "list"], None);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // The secret is not shown again.
    client
        .goto(&format!("{console}/notifications"))
        .await
        .expect("reload");
    expect_text(&client, "notifications page", "https://receiver.test/hook").await;
    assert!(!body_text(&client).await.contains(&secret));

    click(&client, "form[action$='/unsubscribe'] button").await;
    expect_text(&client, "after unsubscribing", "Subscription ended.").await;
    let listed = hub.cli_json(QA.0, &["notify", "list"], None);
    assert_eq!(listed, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn order_scan_and_release_through_the_consoles_in_chromium() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-w");
    let mut agent = Agent::enroll(&hub, "site-w", &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    agent.configure(&["simulator", "auto_scan"], false.into());
    agent.start();
    technicians_at(&hub, &agent, "site-w").await;
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("order_scan_release");

    // Physician: a validation message next to the field, then the order.
    sign_in(&client, &console, PHYSICIAN).await;
    expect_text(&client, "my orders", "My orders").await;
    client
        .goto(&format!("{console}/orders/new"))
        .await
        .expect("new order");
    fill(&client, "#patient_pseudonym", "John Smith").await;
    click(&client, "form[action='/orders'] button[type=submit]").await;
    expect_text(&client, "new-order form", "a pseudonym, never a name").await;
    let error = client
        .find(Locator::Css("#patient_pseudonym-error"))
        .await
        .expect("error next to the field");
    assert!(error.text().await.expect("text").contains("pseudonym"));
    shots.take(&client, "physician-order-form-error").await;
    fill(&client, "#patient_pseudonym", "P-7001").await;
    click(&client, "form[action='/orders'] button[type=submit]").await;
    expect_text(&client, "order page", "Vein-to-vein clock").await;
    let order_url = client.current_url().await.expect("url").to_string();
    let order_id = order_url.rsplit('/').next().expect("order id").to_owned();
    let shown = order_show(&hub, PHYSICIAN.0, &order_id);
    let coi = str_field(&shown, "coi").to_owned();
    let batch = str_field(&shown, "batch_id").to_owned();
    shots.take(&client, "physician-order-page").await;

    // Another patient's order, whose label the technician will pick up by mistake.
    let date = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let other = hub.cli_json(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            "P-7002",
            "--site",
            "site-w",
            "--collection-date",
            &date,
        ],
        None,
    );
    let other_coi = str_field(&other, "coi").to_owned();

    // Technician at the site console: the wrong label, then the right one at each
    // checkpoint, a second technician verifying with their own password.
    site_sign_in(&client, &site_console, ANN).await;
    client.goto(&site_console).await.expect("site console");
    expect_text(&client, "site console", &coi).await;
    shots.take(&client, "site-batches").await;
    client
        .goto(&format!("{site_console}/batches/{batch}"))
        .await
        .expect("batch");
    expect_text(&client, "site batch page", "Custody checkpoint").await;
    fill(&client, "#verifier-username1", BOB.0).await;
    fill(&client, "#verifier-password1", BOB.1).await;
    let label = client
        .find(Locator::Css("#label"))
        .await
        .expect("scan field");
    assert_eq!(
        label.attr("autofocus").await.expect("attr").as_deref(),
        Some("true"),
        "the scan field has focus"
    );
    label
        .send_keys(&format!("{other_coi}\n"))
        .await
        .expect("scanner types and presses Enter");
    expect_text(&client, "scan result", "MISMATCH").await;
    shots.take(&client, "site-scan-mismatch").await;
    for checkpoint in [
        "Collection",
        "Receipt at the site",
        "Start of manufacturing",
        "Fill and final label",
    ] {
        reload_until(
            &client,
            &format!("{site_console}/batches/{batch}"),
            &format!("Custody checkpoint: {checkpoint}"),
        )
        .await;
        // Checkpoints that need a second person show their fields.
        let second = client
            .find_all(Locator::Css("#verifier-username1"))
            .await
            .expect("fields");
        if !second.is_empty() {
            fill(&client, "#verifier-username1", BOB.0).await;
            fill(&client, "#verifier-password1", BOB.1).await;
        }
        client
            .find(Locator::Css("#label"))
            .await
            .expect("scan field")
            .send_keys(&format!("{coi}\n"))
            .await
            .expect("scan");
        expect_text(&client, "scan result", "MATCH").await;
        if checkpoint == "Collection" {
            shots.take(&client, "site-scan-match").await;
        }
    }

    // The off-line QC form flags an out-of-specification value as it is typed.
    client
        .goto(&format!("{site_console}/batches/{batch}"))
        .await
        .expect("batch");
    client
        .find(Locator::Css("#test option[value='endotoxin']"))
        .await
        .expect("endotoxin test")
        .click()
        .await
        .expect("select");
    fill(&client, "#value", "0.9").await;
    expect_text(&client, "QC form", "OUT OF SPECIFICATION").await;
    shots.take(&client, "site-qc-form-oos-flag").await;

    eventually(
        Duration::from_secs(60),
        "the batch to await release",
        || {
            let shown = order_show(&hub, PHYSICIAN.0, &order_id);
            async move { (shown["state"] == "awaiting_release").then_some(()) }
        },
    )
    .await;

    // QA: the queue, the record with the mismatch first, the signing dialog.
    client.goto(&console).await.expect("hub console");
    sign_out(&client).await;
    sign_in(&client, &console, QA).await;
    expect_text(&client, "release queue", &coi).await;
    shots.take(&client, "qa-release-queue").await;
    client
        .find(Locator::LinkText(&coi))
        .await
        .expect("the batch in the queue")
        .click()
        .await
        .expect("open record");
    expect_text(&client, "batch record", "Exceptions").await;
    let first_exception = client
        .find(Locator::Css("table.exceptions tbody tr"))
        .await
        .expect("an exception row");
    assert!(first_exception
        .text()
        .await
        .expect("text")
        .contains("custody MISMATCH"));
    assert!(
        !client
            .find_all(Locator::Css("svg.chart"))
            .await
            .expect("charts")
            .is_empty(),
        "parameter charts"
    );
    shots.take(&client, "qa-batch-record").await;
    click(&client, "#meaning-released").await;
    // Releasing despite exceptions: refused until each one is justified.
    click(&client, "#review-signature").await;
    expect_text(
        &client,
        "decision form",
        "write why it does not stop the release",
    )
    .await;
    assert!(
        justify_each_exception(&client).await >= 1,
        "the mismatch is an exception"
    );
    click(&client, "#review-signature").await;
    expect_text(
        &client,
        "signing dialog",
        "Released by Test qa.web (qa.web) on",
    )
    .await;
    expect_text(&client, "signing dialog", "legally binding equivalent").await;
    shots.take(&client, "qa-signing-manifestation").await;
    confirm_signature(&client, QA).await;
    expect_text(&client, "signed record", "Bound to record").await;
    expect_text(&client, "signed record", "does not affect the product").await;
    shots.take(&client, "qa-signed-record").await;

    // The archive copy, downloaded from the record page, holds without the hub.
    let manifestation = text_of(&client, ".manifestation").await;
    click(&client, "form.export button").await;
    let downloads = profile.path().join("downloads");
    let zip = eventually(
        Duration::from_secs(30),
        "the archive copy to download",
        || {
            let found = std::fs::read_dir(&downloads).ok().and_then(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "zip"))
            });
            async move { found }
        },
    )
    .await;
    assert!(
        zip.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("batch-record-")),
        "{zip:?}"
    );
    let unpacked = profile.path().join("unpacked");
    let out = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&zip)
        .arg(&unpacked)
        .output()
        .expect("python3 zipfile");
    assert!(out.status.success(), "{out:?}");
    let folder = std::fs::read_dir(&unpacked)
        .expect("unpacked")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .expect("one folder in the zip");
    let verified = std::process::Command::new(binary("carrel-hub"))
        .args(["release", "verify-export"])
        .arg(&folder)
        .output()
        .expect("verify-export");
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{said}");
    assert!(
        said.contains(&format!("signature \"{manifestation}\"")),
        "{said}"
    );

    // The physician's page shows the release without a reload.
    sign_out(&client).await;
    sign_in(&client, &console, PHYSICIAN).await;
    client.goto(&order_url).await.expect("order page");
    shots.take(&client, "physician-order-after-release").await;
    let before_reload = client.current_url().await.expect("url");
    eventually(
        Duration::from_secs(30),
        "the order page to show released",
        || async {
            let state = client
                .find(Locator::Css("[data-state]"))
                .await
                .ok()?
                .attr("data-state")
                .await
                .ok()??;
            (state == "released").then_some(())
        },
    )
    .await;
    assert_eq!(client.current_url().await.expect("url"), before_reload);
    shots.take(&client, "physician-order-released").await;
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_declares_capacity_in_the_console_and_the_order_page_shows_the_booking() {
    const ADMIN: (&str, &str) = ("adm.console", "admin-password-123");
    let hub = Hub::start().await;
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-c");
    let _agent = Agent::enroll(&hub, "site-c", &token).expect("enroll");
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;

    sign_in(&client, &console, ADMIN).await;
    client
        .goto(&format!("{console}/capacity/site-c"))
        .await
        .expect("capacity page");
    expect_text(&client, "capacity page", "declares no capacity").await;
    // Declared in a form: every day, 07:00 to 19:00, one slot, the instruments.
    for key in ["sat", "sun"] {
        click(&client, &format!("input[name=day_{key}]")).await;
    }
    fill(&client, "#opens", "07:00").await;
    fill(&client, "#closes", "06:00").await;
    fill(&client, "#collection-slots-per-day", "1").await;
    for (row, (kind, count)) in [
        ("apheresis", "1"),
        ("bench", "1"),
        ("closed-processing-system", "two"),
    ]
    .iter()
    .enumerate()
    {
        fill(&client, &format!("input[name=instrument_type_{row}]"), kind).await;
        fill(
            &client,
            &format!("input[name=instrument_count_{row}]"),
            count,
        )
        .await;
    }
    click(&client, "#capacity-save").await;
    // What does not hold is said beside its field, the form kept as typed, nothing stored.
    expect_text(
        &client,
        "refused capacity",
        "The count of \"closed-processing-system\" (\"two\") is not a whole number",
    )
    .await;
    assert_eq!(
        value_of(&client, "input[name=instrument_count_2]").await,
        "two"
    );
    assert_eq!(value_of(&client, "#closes").await, "06:00");
    fill(&client, "input[name=instrument_count_2]", "2").await;
    click(&client, "#capacity-save").await;
    expect_text(
        &client,
        "refused capacity",
        "Not saved. opens (07:00) must be before closes (06:00)",
    )
    .await;
    let out = hub.cli(ADMIN.0, &["schedule", "capacity", "site-c"], None);
    assert!(!out.status.success(), "nothing was declared");
    fill(&client, "#closes", "19:00").await;
    // The site's own time zone: a name that is not one is refused beside the field.
    fill(&client, "#time-zone", "Asia/Tokio").await;
    click(&client, "#capacity-save").await;
    expect_text(&client, "refused capacity", "is not an IANA time zone name").await;
    assert_eq!(value_of(&client, "#time-zone").await, "Asia/Tokio");
    fill(&client, "#time-zone", "Asia/Tokyo").await;
    click(&client, "#capacity-save").await;
    expect_text(&client, "declared capacity", "Utilisation, next weeks").await;
    let shown = hub.cli_ok(ADMIN.0, &["schedule", "capacity", "site-c"], None);
    assert!(shown.contains("time_zone = \"Asia/Tokyo\""), "{shown}");
    assert!(shown.contains("closed-processing-system = 2"), "{shown}");
    assert!(shown.contains("\"Sun\""), "{shown}");
    assert!(!body_text(&client).await.contains("-0 %"));
    sign_out(&client).await;

    // The physician's order books the day's slot; its page shows the booking and the clock.
    let date = (chrono::Utc::now() + chrono::Duration::days(3)).date_naive();
    let order = hub.cli_json(
        PHYSICIAN.0,
        &[
            "order",
            "create",
            "--patient",
            "P-7101",
            "--site",
            "site-c",
            "--collection-date",
            &date.to_string(),
        ],
        None,
    );
    sign_in(&client, &console, PHYSICIAN).await;
    client
        .goto(&format!(
            "{console}/orders/{}",
            str_field(&order, "order_id")
        ))
        .await
        .expect("order page");
    expect_text(
        &client,
        "order page",
        &format!("Booked: collection {date}, slot 1 at site-c"),
    )
    .await;
    expect_text(&client, "order page", "manufacturing end").await;
    // Its times are the site's (Tokyo, 07:00 opening), with the browser's own beside
    // them: this browser is not nine hours ahead of UTC.
    expect_text(&client, "order page", "07:00 JST").await;
    expect_text(&client, "order page", "your time)").await;

    // The order form lists the free dates; the taken day is refused on the form with
    // the next free ones.
    client
        .goto(&format!("{console}/orders/new"))
        .await
        .expect("order form");
    expect_text(&client, "order form", "Free collection dates").await;
    let free = client
        .find(Locator::Css("table[data-free-dates]"))
        .await
        .expect("free dates table")
        .text()
        .await
        .expect("text");
    assert!(
        !free.lines().any(|row| row.starts_with(&date.to_string())),
        "the booked day is not offered: {free}"
    );
    fill(&client, "#patient_pseudonym", "P-7102").await;
    client
        .execute(
            "document.getElementById('requested_collection_date').value = arguments[0];",
            vec![json!(date.to_string())],
        )
        .await
        .expect("set the date");
    click(&client, "form[action='/orders'] button[type=submit]").await;
    expect_text(
        &client,
        "refused order",
        &format!(
            "every collection slot on {date} is taken; next free: {}",
            date + chrono::Duration::days(1)
        ),
    )
    .await;

    client
        .goto(&format!("{console}/schedule"))
        .await
        .expect("schedule page");
    expect_text(&client, "schedule page", "Network").await;
}

/// A batch of the simulator that awaits QA release, ordered through the CLI.
async fn batch_awaiting_release(hub: &Hub, site_id: &str) -> (Agent, String, String) {
    let token = hub.add_site(site_id);
    let mut agent = Agent::enroll(hub, site_id, &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    agent.start();
    let (order_id, batch_id) = scenario::create_order_as(hub, PHYSICIAN.0, site_id, "P-7101");
    eventually(
        Duration::from_secs(90),
        "the batch to await release",
        || {
            let shown = order_show(hub, PHYSICIAN.0, &order_id);
            async move { (shown["state"] == "awaiting_release").then_some(()) }
        },
    )
    .await;
    (agent, order_id, batch_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_password_keeps_a_rejection_and_a_changed_decision_is_refused() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let (_agent, order_id, batch_id) = batch_awaiting_release(&hub, "site-r").await;
    let state = || order_show(&hub, PHYSICIAN.0, &order_id)["state"].clone();
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("signature_safety");
    sign_in(&client, &console, QA).await;
    let record = format!("{console}/batches/{batch_id}");
    client.goto(&record).await.expect("batch record");
    expect_text(&client, "batch record", "Your decision on this batch").await;

    // Nothing is chosen for the signer, and there is no password before the wording.
    for id in ["#meaning-released", "#meaning-rejected"] {
        let checked = client
            .find(Locator::Css(id))
            .await
            .expect("meaning")
            .prop("checked")
            .await
            .expect("checked");
        assert_eq!(
            checked.as_deref(),
            Some("false"),
            "{id} is not pre-selected"
        );
    }
    assert!(client.find(Locator::Css("#password")).await.is_err());

    // Reject without a reason: the choice is kept and the reason is asked for.
    click(&client, "#meaning-rejected").await;
    click(&client, "#review-signature").await;
    expect_text(&client, "decision form", "A rejection needs a reason").await;
    let rejected = client
        .find(Locator::Css("#meaning-rejected"))
        .await
        .expect("meaning")
        .prop("checked")
        .await
        .expect("checked");
    assert_eq!(rejected.as_deref(), Some("true"), "the rejection is kept");
    fill(&client, "#reason", "Viability below specification").await;
    click(&client, "#review-signature").await;
    expect_text(
        &client,
        "signing step",
        "Rejected by Test qa.web (qa.web) on",
    )
    .await;

    // A mistyped password: still a rejection, with its reason, and nothing signed.
    confirm_signature(&client, (QA.0, "not-my-password")).await;
    expect_text(&client, "signing step", "wrong password").await;
    shots
        .take(&client, "qa-wrong-password-keeps-rejection")
        .await;
    let body = body_text(&client).await;
    assert!(body.contains("Rejected by Test qa.web"), "{body}");
    assert!(!body.contains("Released by"), "{body}");
    assert!(body.contains("Viability below specification"), "{body}");
    assert_eq!(state(), "awaiting_release");

    // The confirmation altered after review (a stale or tampered form) is refused.
    client
        .execute(
            "document.querySelector('#sign-form input[name=meaning]').value='released';",
            vec![],
        )
        .await
        .expect("alter the form");
    confirm_signature(&client, QA).await;
    expect_text(
        &client,
        "decision form",
        "differs from the one you reviewed",
    )
    .await;
    assert_eq!(state(), "awaiting_release", "nothing was signed");

    // Retyping the password after a review signs what was reviewed: the rejection.
    click(&client, "#meaning-rejected").await;
    fill(&client, "#reason", "Viability below specification").await;
    click(&client, "#review-signature").await;
    expect_text(
        &client,
        "signing step",
        "Rejected by Test qa.web (qa.web) on",
    )
    .await;
    confirm_signature(&client, QA).await;
    expect_text(&client, "signed record", "Bound to record").await;
    shots.take(&client, "qa-signed-rejection").await;
    assert_eq!(state(), "rejected");
    client.close().await.expect("close browser");
}

/// Posts form fields from the open page, as a browser sending a form again would;
/// answers `[status, body]`.
async fn post_from_page(client: &Client, path: &str, body: &str) -> serde_json::Value {
    client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: arguments[1]})
               .then(r => r.text().then(t => done([r.status, t])));",
            vec![json!(path), json!(body)],
        )
        .await
        .expect("post from the page")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_form_records_once_however_often_it_is_sent() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-p");
    let mut agent = Agent::enroll(&hub, "site-p", &token).expect("enroll");
    agent.configure(&["simulator", "auto_scan"], false.into());
    agent.start();
    technicians_at(&hub, &agent, "site-p").await;
    let (_, batch) = scenario::create_order_as(&hub, PHYSICIAN.0, "site-p", "P-7201");
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("site_one_time_forms");
    site_sign_in(&client, &site_console, ANN).await;
    let page = format!("{site_console}/batches/{batch}");
    reload_until(&client, &page, "Record an off-line QC result").await;
    let db = agent.db().await;
    let recorded = || async {
        agent_events(&db)
            .await
            .into_iter()
            .filter(|(_, body)| body.contains("0.1234"))
            .map(|(seq, _)| seq)
            .collect::<Vec<_>>()
    };

    // Recorded once; the answer is a redirect, so reloading only shows the page.
    client
        .find(Locator::Css("#test option[value='endotoxin']"))
        .await
        .expect("endotoxin test")
        .click()
        .await
        .expect("select");
    fill(&client, "#value", "0.1234").await;
    let form_body: String = client
        .execute(
            "return new URLSearchParams(new FormData(document.getElementById('qc-form'))).toString();",
            vec![],
        )
        .await
        .expect("the form's fields")
        .as_str()
        .expect("text")
        .to_owned();
    click(&client, "#qc-form button[type=submit]").await;
    expect_text(&client, "QC result", "within specification").await;
    let seqs = recorded().await;
    assert_eq!(seqs.len(), 1, "one record: {seqs:?}");
    let url = client.current_url().await.expect("url");
    assert_eq!(
        url.path(),
        format!("/batches/{batch}"),
        "redirected to the batch page"
    );
    client.refresh().await.expect("reload");
    expect_text(&client, "reloaded page", "within specification").await;
    shots.take(&client, "site-qc-recorded-once").await;
    assert_eq!(recorded().await, seqs, "a reload records nothing");

    // The same form sent again (a double click, the back button): refused, naming the record.
    let answer = post_from_page(&client, &format!("/batches/{batch}/qc"), &form_body).await;
    assert_eq!(answer[0], 409, "{answer}");
    let text = answer[1].as_str().expect("page");
    assert!(
        text.contains(&format!("Already recorded as record {}", seqs[0])),
        "{text}"
    );
    assert_eq!(recorded().await, seqs, "nothing recorded again");

    // A token the console never issued records nothing.
    let forged = form_body
        .split('&')
        .map(|pair| {
            if pair.starts_with("submission=") {
                "submission=0000".to_owned()
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let answer = post_from_page(&client, &format!("/batches/{batch}/qc"), &forged).await;
    assert_eq!(answer[0], 409, "{answer}");
    assert!(answer[1].as_str().expect("page").contains("has expired"));
    assert_eq!(
        recorded().await,
        seqs,
        "nothing recorded for a forged token"
    );
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_technician_signs_in_at_the_site_and_a_second_person_verifies_with_their_own_password() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-s");
    let mut agent = Agent::enroll(&hub, "site-s", &token).expect("enroll");
    agent.configure(&["simulator", "auto_scan"], false.into());
    agent.start();
    technicians_at(&hub, &agent, "site-s").await;
    let (_, batch) = scenario::create_order_as(&hub, PHYSICIAN.0, "site-s", "P-7301");
    let shown = hub.cli_json(QA.0, &["release", "show", &batch], None);
    let coi = str_field(&shown["order"], "coi").to_owned();
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("site_sign_in");
    let db = agent.db().await;
    let scans = || async {
        scenario::count(
            &db,
            "SELECT COUNT(*) FROM events WHERE kind = 'custody_scan'",
        )
        .await
    };

    // Without a session the console asks to sign in; a wrong password is refused.
    let page = format!("{site_console}/batches/{batch}");
    client.goto(&page).await.expect("batch page");
    expect_text(&client, "sign-in page", "Sign in to use the site console").await;
    fill(&client, "#username", ANN.0).await;
    fill(&client, "#password", "not-her-password").await;
    click(&client, "#sign-in").await;
    expect_text(&client, "refused sign-in", "wrong password for tech.ann").await;
    shots.take(&client, "site-sign-in-refused").await;
    fill(&client, "#password", ANN.1).await;
    click(&client, "#sign-in").await;
    expect_text(
        &client,
        "the batch page she asked for",
        "Signed in: Test tech.ann",
    )
    .await;
    shots.take(&client, "site-signed-in").await;
    reload_until(&client, &page, "Custody checkpoint").await;

    // The same person twice, or the second person's wrong password: nothing recorded.
    for (name, password, refusal) in [
        (ANN.0, ANN.1, "tech.ann is named twice"),
        (BOB.0, "not-his-password", "wrong password for tech.bob"),
    ] {
        fill(&client, "#verifier-username1", name).await;
        fill(&client, "#verifier-password1", password).await;
        fill(&client, "#label", &format!("{coi}\n")).await;
        expect_text(&client, "refused scan", refusal).await;
        reload_until(&client, &page, "Custody checkpoint").await;
    }
    assert_eq!(scans().await, 0, "refusals record nothing");

    // The second person signs with their own password: recorded, naming both.
    fill(&client, "#verifier-username1", BOB.0).await;
    fill(&client, "#verifier-password1", BOB.1).await;
    let form_body: String = client
        .execute(
            "return new URLSearchParams(new FormData(document.querySelector('form[action$=\"/scan\"]'))).toString();",
            vec![],
        )
        .await
        .expect("the form's fields")
        .as_str()
        .expect("text")
        .to_owned();
    fill(&client, "#label", &format!("{coi}\n")).await;
    expect_text(&client, "scan result", "MATCH").await;
    shots.take(&client, "site-two-person-scan").await;
    assert_eq!(scans().await, 1);
    let by = eventually(Duration::from_secs(30), "the scan at the hub", || {
        let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
        async move {
            record["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .find(|e| e["kind"] == "custody scan")
                .map(|e| str_field(e, "by").to_owned())
        }
    })
    .await;
    assert_eq!(by, "Test tech.ann (tech.ann) and Test tech.bob (tech.bob)");

    // The collection label: Print records who printed it and opens it in a new tab.
    let tabs = client.windows().await.expect("windows").len();
    click(&client, "button[data-print=collection]").await;
    let printed = || async {
        scenario::count(
            &agent.db().await,
            "SELECT COUNT(*) FROM events WHERE kind = 'label_printed' AND body LIKE '%\"recorded_by\":\"tech.ann\"%'",
        )
        .await
    };
    eventually(
        Duration::from_secs(10),
        "the label print recorded",
        || async { (printed().await == 1).then_some(()) },
    )
    .await;
    assert_eq!(client.windows().await.expect("windows").len(), tabs + 1);
    // The batch page again (not the scan's answer, whose dialog would open again).
    client
        .goto(&format!("{site_console}/batches/{batch}"))
        .await
        .expect("batch page");
    expect_text(&client, "labels", "1 time(s), last by tech.ann").await;
    expect_text(&client, "labels", "Reprint label").await;

    // Signed out, the same form (with a fresh label) records nothing.
    click(&client, "#sign-out").await;
    expect_text(&client, "signed out", "You are signed out.").await;
    let answer = post_from_page(
        &client,
        &format!("/batches/{batch}/scan"),
        &format!("{form_body}&label={coi}"),
    )
    .await;
    assert_eq!(answer[0], 401, "{answer}");
    assert!(
        answer[1]
            .as_str()
            .expect("page")
            .contains("Nothing was recorded"),
        "{answer}"
    );
    assert_eq!(scans().await, 1, "nothing recorded without a session");

    // A person disabled at the hub is signed out at their next request.
    site_sign_in(&client, &site_console, BOB).await;
    hub.cli_ok(
        "admin",
        &["user", "disable", BOB.0, "--reason", "left the unit"],
        None,
    );
    agent.wait_for_person(BOB.0, "disabled").await;
    client.goto(&page).await.expect("batch page");
    expect_text(
        &client,
        "the sign-in page",
        "You were signed out: your account is disabled at the hub.",
    )
    .await;
    shots.take(&client, "site-disabled-signed-out").await;
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_form_sent_twice_places_one_order() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-o");
    // Enrolled (so the site takes orders); its agent need not run.
    let _agent = Agent::enroll(&hub, "site-o", &token).expect("enroll");
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    sign_in(&client, &console, PHYSICIAN).await;
    client
        .goto(&format!("{console}/orders/new"))
        .await
        .expect("new order");
    fill(&client, "#patient_pseudonym", "P-7401").await;
    let form_body: String = client
        .execute(
            "return new URLSearchParams(new FormData(document.querySelector('form[action=\"/orders\"]'))).toString();",
            vec![],
        )
        .await
        .expect("the form's fields")
        .as_str()
        .expect("text")
        .to_owned();
    click(&client, "form[action='/orders'] button[type=submit]").await;
    expect_text(&client, "order page", "Vein-to-vein clock").await;
    let placed = client.current_url().await.expect("url").to_string();

    // The same form again (a double click, the back button and Place order again).
    let answer = post_from_page(&client, "/orders", &form_body).await;
    assert_eq!(answer[0], 200, "{answer}");
    let orders = hub.cli_json(PHYSICIAN.0, &["order", "list"], None);
    let for_patient: Vec<&serde_json::Value> = orders
        .as_array()
        .expect("orders")
        .iter()
        .filter(|o| o["patient_pseudonym"] == "P-7401")
        .collect();
    assert_eq!(for_patient.len(), 1, "one order placed: {orders}");
    assert!(
        placed.ends_with(str_field(for_patient[0], "order_id")),
        "{placed}"
    );
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_disables_re_roles_and_resets_and_the_person_chooses_their_password() {
    const ADMIN: (&str, &str) = ("adm.people", "admin-password-123");
    const DORA: (&str, &str) = ("dr.dora", "physician-password-1");
    let hub = Hub::start().await;
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    hub.add_user(DORA.0, "physician", DORA.1);
    hub.add_user(QA.0, "qa", QA.1);
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("account");
    let qa_session = hub.login(QA.0, QA.1).await.expect("qa signed in");
    let whoami = |token: String| {
        let hub = &hub;
        async move {
            carrel_proto::pb::auth_service_client::AuthServiceClient::new(hub.channel().await)
                .who_am_i(authed(&token, carrel_proto::pb::WhoAmIRequest {}))
                .await
        }
    };
    assert!(whoami(qa_session.clone()).await.is_ok());

    sign_in(&client, &console, ADMIN).await;
    client
        .goto(&format!("{console}/admin/users"))
        .await
        .expect("users page");
    let apply = |user: &'static str, change: &'static str, reason: &'static str| {
        let client = &client;
        async move {
            client
                .find(Locator::Css(&format!(
                    "#change-{}",
                    user.replace('.', "\\.")
                )))
                .await
                .expect("change")
                .select_by_value(change)
                .await
                .expect("select");
            fill(
                client,
                &format!("#reason-{}", user.replace('.', "\\.")),
                reason,
            )
            .await;
            click(client, &format!("#apply-{}", user.replace('.', "\\."))).await;
        }
    };
    // Disable the QA person: their open session is refused at once.
    apply(QA.0, "disable", "left the company").await;
    expect_text(
        &client,
        "users page",
        "is disabled; their sessions have ended",
    )
    .await;
    let refused = whoami(qa_session).await.expect_err("the session ended");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(hub.login(QA.0, QA.1).await.is_err());
    // Re-role the physician.
    apply(DORA.0, "role:technician", "moved to the cell lab").await;
    expect_text(&client, "users page", "is now a technician").await;
    // Reset the physician's password: the code is shown once; the admin never types
    // or sees the new password.
    apply(DORA.0, "reset", "forgot the password").await;
    expect_text(&client, "users page", "one-time reset code").await;
    shots.take(&client, "admin-reset-code").await;
    let code = client
        .find(Locator::Css("#reset-code"))
        .await
        .expect("code")
        .text()
        .await
        .expect("text");
    assert!(code.len() >= 32, "{code}");
    let page = body_text(&client).await;
    assert!(!page.contains("choice-of-words"));
    assert!(
        hub.login(DORA.0, DORA.1).await.is_err(),
        "the old password stops"
    );
    // A new person is added without a password: they get a one-time code too.
    fill(&client, "#username", "dr.newcomer").await;
    fill(&client, "#full_name", "Nora Newcomer").await;
    click(&client, "form[action='/admin/users'] button[type=submit]").await;
    expect_text(&client, "users page", "User dr.newcomer added").await;
    let setup = client
        .find(Locator::Css("#setup-code"))
        .await
        .expect("setup code")
        .text()
        .await
        .expect("text");
    assert!(
        hub.login("dr.newcomer", &setup).await.is_err(),
        "a code is no password"
    );
    // A hospital's integration engine gets a system account for the newcomer: its
    // secret is shown once, and only a hash is kept; then it is disabled, with a reason.
    fill(&client, "#client_id", "st-elsewhere-ehr").await;
    fill(&client, "#engine_name", "St Elsewhere EHR interface engine").await;
    click(&client, "input[name=physician][value='dr.newcomer']").await;
    click(
        &client,
        "form[action='/admin/system-accounts'] button[type=submit]",
    )
    .await;
    expect_text(
        &client,
        "users page",
        "System account st-elsewhere-ehr made",
    )
    .await;
    let secret = client
        .find(Locator::Css("#client-secret"))
        .await
        .expect("client secret")
        .text()
        .await
        .expect("text");
    let db = hub.db().await;
    let (hash, scope): (String, String) = sqlx::query_as(
        "SELECT a.secret_hash, p.physician FROM system_accounts a \
         JOIN system_account_physicians p ON p.client_id = a.client_id",
    )
    .fetch_one(&db)
    .await
    .expect("the account");
    assert_eq!(scope, "dr.newcomer");
    assert!(secret.len() >= 32 && !hash.contains(&secret) && hash.starts_with("$argon2"));
    shots.take(&client, "admin-system-account-secret").await;
    client
        .find(Locator::Css("#sys-change-st-elsewhere-ehr"))
        .await
        .expect("change")
        .select_by_value("disable")
        .await
        .expect("select");
    fill(
        &client,
        "#sys-reason-st-elsewhere-ehr",
        "interface not live yet",
    )
    .await;
    click(&client, "#sys-apply-st-elsewhere-ehr").await;
    expect_text(&client, "users page", "its access tokens no longer work").await;
    let disabled: bool = sqlx::query_scalar(
        "SELECT disabled FROM system_accounts WHERE client_id = 'st-elsewhere-ehr'",
    )
    .fetch_one(&db)
    .await
    .expect("disabled");
    assert!(disabled);
    sign_out(&client).await;
    client
        .goto(&format!("{console}/password-reset"))
        .await
        .expect("reset page");
    fill(&client, "#reset-username", "dr.newcomer").await;
    fill(&client, "#reset-code", &setup).await;
    fill(&client, "#new-password", "nora-own-choice-1").await;
    fill(&client, "#repeat-password", "nora-own-choice-1").await;
    click(&client, "#choose-password").await;
    expect_text(&client, "sign-in page", "Your new password is set").await;
    assert!(hub.login("dr.newcomer", "nora-own-choice-1").await.is_ok());

    // The person chooses their own password with the code, from the sign-in page.
    client
        .goto(&format!("{console}/login"))
        .await
        .expect("login page");
    click(&client, "a[href='/password-reset']").await;
    expect_text(&client, "reset page", "Choose a new password").await;
    fill(&client, "#reset-username", DORA.0).await;
    fill(&client, "#reset-code", &code).await;
    fill(&client, "#new-password", "Password2026!").await;
    fill(&client, "#repeat-password", "Password2026!").await;
    click(&client, "#choose-password").await;
    expect_text(&client, "reset page", "most common").await;
    fill(&client, "#reset-code", &code).await;
    fill(&client, "#new-password", "dora-choice-of-words").await;
    fill(&client, "#repeat-password", "dora-choice-of-words").await;
    click(&client, "#choose-password").await;
    expect_text(&client, "sign-in page", "Your new password is set").await;
    sign_in(&client, &console, (DORA.0, "dora-choice-of-words")).await;

    // And changes it on the Account page.
    client
        .goto(&format!("{console}/account"))
        .await
        .expect("account page");
    fill(&client, "#current-password", "dora-choice-of-words").await;
    fill(&client, "#new-password", "dora-second-choice").await;
    fill(&client, "#repeat-password", "dora-second-choice").await;
    click(&client, "#change-password").await;
    expect_text(&client, "account page", "Your password was changed").await;
    shots.take(&client, "account-password-changed").await;
    assert!(hub.login(DORA.0, "dora-second-choice").await.is_ok());
    let db = hub.db().await;
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE username = ?")
        .bind(DORA.0)
        .fetch_one(&db)
        .await
        .expect("role");
    assert_eq!(role, "technician");
    client.close().await.expect("close browser");
}

/// Chooses an option of a select by its value, as a person picks it from the list.
async fn choose(client: &Client, select: &str, value: &str) {
    client
        .find(Locator::Css(&format!("{select} option[value='{value}']")))
        .await
        .unwrap_or_else(|e| panic!("no option {value} in {select}: {e}"))
        .click()
        .await
        .expect("choose");
}

/// The values of the retest list's options a person can see now.
async fn retest_choices(client: &Client) -> Vec<String> {
    let options = client
        .execute(
            "return Array.from(document.querySelectorAll('#retest_of option'))
               .filter(o => o.value && !o.hidden && !o.disabled).map(o => o.value);",
            vec![],
        )
        .await
        .expect("the retest list");
    serde_json::from_value(options).expect("values")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retest_is_chosen_from_the_tests_results_and_qa_sees_which_result_counts() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-q");
    let mut agent = Agent::enroll(&hub, "site-q", &token).expect("enroll");
    // No simulated operators: the batch waits at its first checkpoint and records
    // no QC of its own.
    agent.configure(&["simulator", "auto_scan"], false.into());
    agent.start();
    technicians_at(&hub, &agent, "site-q").await;
    let (_, batch) = scenario::create_order_as(&hub, PHYSICIAN.0, "site-q", "P-7301");
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("qc_retests");
    site_sign_in(&client, &site_console, ANN).await;
    let page = format!("{site_console}/batches/{batch}");
    reload_until(&client, &page, "Record an off-line QC result").await;
    let db = agent.db().await;
    let results = || async {
        agent_events(&db)
            .await
            .into_iter()
            .filter(|(_, body)| body.contains("\"qc_result\""))
            .collect::<Vec<_>>()
    };

    // A first viability result and an endotoxin result: no retest is asked for.
    assert!(
        !client
            .find(Locator::Css("#retest"))
            .await
            .expect("retest block")
            .is_displayed()
            .await
            .expect("shown"),
        "a first result is no retest"
    );
    choose(&client, "#test", "viability").await;
    fill(&client, "#value", "55").await;
    click(&client, "#qc-form button[type=submit]").await;
    expect_text(&client, "QC result", "OUT OF SPECIFICATION").await;
    choose(&client, "#test", "endotoxin").await;
    fill(&client, "#value", "0.1").await;
    click(&client, "#qc-form button[type=submit]").await;
    expect_text(&client, "QC result", "within specification").await;
    let recorded = results().await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let (viability, endotoxin) = (recorded[0].0, recorded[1].0);

    // A second viability result: the list offers viability's result only, and the
    // choice is required.
    choose(&client, "#test", "viability").await;
    assert_eq!(retest_choices(&client).await, vec![viability.to_string()]);
    choose(&client, "#test", "endotoxin").await;
    assert_eq!(retest_choices(&client).await, vec![endotoxin.to_string()]);
    choose(&client, "#test", "viability").await;
    fill(&client, "#value", "80").await;
    shots.take(&client, "site-retest-list").await;
    let required = client
        .find(Locator::Css("#retest_of"))
        .await
        .expect("retest list")
        .prop("required")
        .await
        .expect("required");
    assert_eq!(required.as_deref(), Some("true"));

    // Sent without naming the result (a form from before, a script): refused with
    // what to do, the input kept, nothing recorded.
    let body: String = client
        .execute(
            "const f = new FormData(document.getElementById('qc-form')); f.set('retest_of', '');
             return new URLSearchParams(f).toString();",
            vec![],
        )
        .await
        .expect("form")
        .as_str()
        .expect("text")
        .to_owned();
    let answer = post_from_page(&client, &format!("/batches/{batch}/qc"), &body).await;
    assert_eq!(answer[0], 422, "{answer}");
    let text = answer[1].as_str().expect("page");
    assert!(
        text.contains("Viability already has a result (record")
            && text.contains(&format!("record {viability}: 55 %")),
        "{text}"
    );
    assert!(text.contains("value=\"80\""), "the result typed is kept");
    assert_eq!(results().await.len(), 2, "nothing recorded");

    // Chosen from the list: recorded as a retest of that result.
    choose(&client, "#retest_of", &viability.to_string()).await;
    click(&client, "#qc-form button[type=submit]").await;
    expect_text(
        &client,
        "QC result",
        &format!("a retest of record {viability}: within specification"),
    )
    .await;
    let recorded = results().await;
    assert_eq!(recorded.len(), 3);
    assert!(
        recorded[2]
            .1
            .contains(&format!("\"retest_of\":{viability}")),
        "{}",
        recorded[2].1
    );
    let retest = recorded[2].0;
    // Only the retest can be retested now.
    choose(&client, "#test", "viability").await;
    assert_eq!(retest_choices(&client).await, vec![retest.to_string()]);
    shots.take(&client, "site-retest-recorded").await;

    // QA: viability's results grouped, the retest the reportable value.
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    sign_in(&client, &console, QA).await;
    let record = format!("{console}/batches/{batch}");
    reload_until(&client, &record, &format!("retest of record {viability}")).await;
    let rows: Vec<(String, String)> = serde_json::from_value(
        client
            .execute(
                "return Array.from(document.querySelectorAll('tbody.qc-test[data-test=viability] tr'))
                   .map(r => [r.dataset.seq, r.dataset.counts]);",
                vec![],
            )
            .await
            .expect("qc rows"),
    )
    .expect("rows");
    assert_eq!(
        rows,
        vec![
            (viability.to_string(), "retested".to_owned()),
            (retest.to_string(), "reportable".to_owned()),
        ]
    );
    expect_text(&client, "QA record", "Reportable value").await;
    expect_text(
        &client,
        "QA record",
        &format!("Replaced by the retest, record {retest}"),
    )
    .await;
    shots.take(&client, "qa-qc-grouped").await;
    client.close().await.expect("close browser");
}

/// The scan result's modal: open, modal, and wholly inside the viewport.
async fn scan_result_in_view(client: &Client) -> serde_json::Value {
    client
        .execute(
            "const d = document.getElementById('scan-result');
             if (!d) return null;
             const r = d.getBoundingClientRect();
             return {open: d.open, modal: d.matches(':modal'), result: d.dataset.result,
                     sound: d.dataset.sound || '', text: d.innerText,
                     inside: r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth,
                     focused: document.activeElement && document.activeElement.id};",
            vec![],
        )
        .await
        .expect("the scan result")
}

/// Whether the element is wholly inside the viewport.
async fn in_view(client: &Client, css: &str) -> bool {
    client
        .execute(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();
             return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth;",
            vec![json!(css)],
        )
        .await
        .expect("rect")
        .as_bool()
        .expect("bool")
}

async fn focused_id(client: &Client) -> String {
    client
        .execute("return document.activeElement.id;", vec![])
        .await
        .expect("focus")
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A released batch of the simulator, its site console open in Chromium at the
/// hand-over checkpoint, with a technician signed in: where the bedside tests start.
struct AtHandOver {
    client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
    agent: Agent,
    order_id: String,
    batch: String,
    coi: String,
    site_console: String,
}

async fn released_batch_at_hand_over(
    hub: &Hub,
    site_id: &str,
    patient: &str,
    before_start: impl FnOnce(&Agent),
) -> AtHandOver {
    scenario::add_people(hub);
    let token = hub.add_site(site_id);
    let mut agent = Agent::enroll(hub, site_id, &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    before_start(&agent);
    agent.start();
    technicians_at(hub, &agent, site_id).await;
    let (order_id, batch) = scenario::create_order(hub, site_id, patient);
    let coi = str_field(&order_show(hub, scenario::PHYSICIAN.0, &order_id), "coi").to_owned();
    scenario::wait_order_state(hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;
    scenario::sign_release(hub, &batch);
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    site_sign_in(&client, &site_console, ANN).await;
    reload_until(
        &client,
        &format!("{site_console}/batches/{batch}"),
        "Custody checkpoint: Hand-over of the released product",
    )
    .await;
    AtHandOver {
        client,
        _driver: driver,
        _profile: profile,
        agent,
        order_id,
        batch,
        coi,
        site_console,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_bedside_the_wristband_is_compared_with_the_bag_and_the_result_must_be_acknowledged()
{
    let hub = Hub::start().await;
    let AtHandOver {
        client,
        agent,
        order_id,
        batch,
        coi,
        site_console,
        // Kept to the end of the test: chromedriver and the browser profile.
        _driver,
        _profile,
    } = released_batch_at_hand_over(&hub, "site-b", "P-7401", |_| {}).await;
    let (_, other_batch) = scenario::create_order(&hub, "site-b", "P-7402");
    let db = agent.db().await;
    let bedside_scans = || async {
        agent_events(&db)
            .await
            .into_iter()
            .filter(|(_, body)| body.contains("\"custody_scan\"") && body.contains("\"handover\""))
            .map(|(_, body)| body)
            .collect::<Vec<_>>()
    };
    let other_coi = eventually(
        Duration::from_secs(30),
        "the other batch at the site",
        || {
            let db = db.clone();
            let other_batch = other_batch.clone();
            async move {
                sqlx::query_scalar::<_, String>("SELECT coi FROM batches WHERE batch_id = ?")
                    .bind(&other_batch)
                    .fetch_optional(&db)
                    .await
                    .ok()
                    .flatten()
            }
        },
    )
    .await;
    let mut shots = Shots::new("bedside");
    let page = format!("{site_console}/batches/{batch}");
    // The patient is scanned first; the page says whose batch it is beside the fields.
    assert_eq!(focused_id(&client).await, "wristband");
    let patient = client
        .find(Locator::Css(".patient-id"))
        .await
        .expect("the patient box")
        .text()
        .await
        .expect("text");
    assert!(
        patient.contains("P-7401") && patient.contains(&coi),
        "{patient}"
    );

    // The other patient's wristband and bag, on this patient's page: they agree
    // with each other, so the page is the wrong one. Nothing is recorded.
    client
        .find(Locator::Css("#wristband"))
        .await
        .expect("wristband field")
        .send_keys("P-7402\n")
        .await
        .expect("scan");
    assert_eq!(
        focused_id(&client).await,
        "label",
        "the scanner's Enter moves on to the bag"
    );
    client
        .find(Locator::Css("#label"))
        .await
        .expect("bag field")
        .send_keys(&format!("{other_coi}\n"))
        .await
        .expect("scan");
    expect_text(&client, "refused scan", "open that patient's batch").await;
    shots.take(&client, "bedside-other-patients-batch").await;
    assert!(bedside_scans().await.is_empty(), "nothing recorded");

    // The right bag at the wrong patient's bed: MISMATCH, in a modal that stays in
    // view at each width until it is acknowledged.
    for (n, (width, height)) in [(1280, 800), (1024, 768), (390, 844)]
        .into_iter()
        .enumerate()
    {
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        client.goto(&page).await.expect("batch page");
        fill(&client, "#wristband", "P-7402").await;
        fill(&client, "#label", &format!("{coi}\n")).await;
        let shown = eventually(Duration::from_secs(20), "the scan result", || async {
            let v = scan_result_in_view(&client).await;
            (!v.is_null()).then_some(v)
        })
        .await;
        assert_eq!(shown["result"], "mismatch", "{shown}");
        assert_eq!(shown["open"], true, "{shown}");
        assert_eq!(shown["modal"], true, "{shown}");
        assert_eq!(shown["inside"], true, "at {width}x{height}: {shown}");
        assert_eq!(shown["sound"], "running", "a sound is played: {shown}");
        assert_eq!(shown["focused"], "acknowledge-scan", "{shown}");
        assert!(str_field(&shown, "text").contains("MISMATCH"), "{shown}");
        shots
            .take(&client, &format!("bedside-mismatch-{width}"))
            .await;
        assert_eq!(
            bedside_scans().await.len(),
            n + 1,
            "the mismatch is recorded"
        );
        // Escape does not dismiss it; acknowledging does, and the cursor is back in
        // the first scan field with the patient's box beside it.
        client
            .active_element()
            .await
            .expect("focus")
            .send_keys("\u{e00c}")
            .await
            .expect("escape");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_escape = scan_result_in_view(&client).await;
        assert_eq!(after_escape["open"], true, "{after_escape}");
        assert_eq!(after_escape["modal"], true, "{after_escape}");
        click(&client, "#acknowledge-scan").await;
        assert_eq!(scan_result_in_view(&client).await["open"], false);
        assert_eq!(focused_id(&client).await, "wristband");
        assert!(in_view(&client, ".patient-id").await, "at {width}x{height}");
        let url = client.current_url().await.expect("url");
        assert_eq!(url.query(), None, "a reload does not show the result again");
    }

    // The patient's wristband and their bag: MATCH, and the hand-over is recorded.
    client
        .set_window_size(1280, 800)
        .await
        .expect("window size");
    client.goto(&page).await.expect("batch page");
    fill(&client, "#wristband", "P-7401").await;
    fill(&client, "#label", &format!("{coi}\n")).await;
    let shown = eventually(Duration::from_secs(20), "the scan result", || async {
        let v = scan_result_in_view(&client).await;
        (!v.is_null()).then_some(v)
    })
    .await;
    assert_eq!(shown["result"], "match", "{shown}");
    assert_eq!(shown["inside"], true, "{shown}");
    shots.take(&client, "bedside-match").await;
    let scans = bedside_scans().await;
    assert_eq!(scans.len(), 4);
    assert!(
        scans[3].contains("\"matched\":true") && scans[3].contains("\"wristband\":\"P-7401\""),
        "{}",
        scans[3]
    );
    scenario::wait_order_state(&hub, &order_id, "handed_over", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_site_says_why_and_refuses_hand_over_until_it_is_resumed() {
    let hub = Hub::start().await;
    hub.ensure_admin();
    let AtHandOver {
        client,
        agent,
        order_id: _,
        batch,
        coi,
        site_console,
        // Kept to the end of the test: chromedriver and the browser profile.
        _driver,
        _profile,
    } = released_batch_at_hand_over(&hub, "site-b", "P-7501", |agent| {
        agent.configure(&["reconnect_max_ms"], 1_000.into())
    })
    .await;
    let db = agent.db().await;
    let custody_scans = || async {
        agent_events(&db)
            .await
            .into_iter()
            .filter(|(_, body)| body.contains("\"custody_scan\"") && body.contains("\"handover\""))
            .count()
    };
    let mut shots = Shots::new("suspended");
    let page = format!("{site_console}/batches/{batch}");
    assert!(
        client.find(Locator::Css(".suspended")).await.is_err(),
        "no banner on an active site"
    );

    // The control site suspends the site while the hand-over page is open: the
    // banner appears without a reload, with who and why.
    let reason = "Clean room failed its particle count; requalify before any hand-over.";
    hub.cli_ok(
        "admin",
        &["site", "suspend", "site-b", "--reason", reason],
        None,
    );
    let banner = eventually(Duration::from_secs(30), "the suspension banner", || async {
        match client
            .find(Locator::Css("#site-suspension .suspended"))
            .await
        {
            Ok(banner) => banner.text().await.ok(),
            Err(_) => None,
        }
    })
    .await;
    assert!(
        banner.contains("suspended by the control site")
            && banner.contains("admin suspended it on")
            && banner.contains(reason),
        "{banner}"
    );
    // The header says the link is refused, not that the network is down.
    let link = eventually(Duration::from_secs(10), "the link status", || async {
        let link = client
            .find(Locator::Css("#link-status [data-link]"))
            .await
            .ok()?
            .attr("data-link")
            .await
            .ok()
            .flatten()?;
        (link == "refused").then_some(link)
    })
    .await;
    assert_eq!(link, "refused");
    shots.take(&client, "suspended-banner-appears").await;

    // The form that was open is refused with the reason; nothing is recorded.
    fill(&client, "#wristband", "P-7501").await;
    fill(&client, "#label", &format!("{coi}\n")).await;
    expect_text(
        &client,
        "refused hand-over",
        "hand-over to the patient is refused",
    )
    .await;
    let body = client
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .text()
        .await
        .expect("text");
    assert!(body.contains(reason), "{body}");
    assert_eq!(custody_scans().await, 0, "nothing recorded");

    // A fresh page offers no hand-over scan at all, at every width, and says why.
    for (width, height) in [(1280, 800), (1024, 768), (390, 844)] {
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        client.goto(&page).await.expect("batch page");
        assert!(
            client.find(Locator::Css("#wristband")).await.is_err(),
            "no scan field while suspended"
        );
        let refused = client
            .find(Locator::Css("[data-handover=refused]"))
            .await
            .expect("the refusal in place of the scan")
            .text()
            .await
            .expect("text");
        assert!(refused.contains(reason), "{refused}");
        let next = client
            .find(Locator::Css("[data-next]"))
            .await
            .expect("next")
            .text()
            .await
            .expect("text");
        assert!(next.contains("Do not hand over"), "{next}");
        assert!(in_view(&client, ".suspended").await, "at {width}x{height}");
        shots
            .take(&client, &format!("suspended-batch-{width}"))
            .await;
    }

    // Resumed: the banner goes without a reload, and the scan is offered again.
    hub.cli_ok(
        "admin",
        &[
            "site",
            "resume",
            "site-b",
            "--reason",
            "Requalified: particle counts within limits.",
        ],
        None,
    );
    eventually(Duration::from_secs(30), "the banner to go", || async {
        client
            .find(Locator::Css("#site-suspension .suspended"))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    client.goto(&page).await.expect("batch page");
    fill(&client, "#wristband", "P-7501").await;
    fill(&client, "#label", &format!("{coi}\n")).await;
    let shown = eventually(Duration::from_secs(20), "the scan result", || async {
        let v = scan_result_in_view(&client).await;
        (!v.is_null()).then_some(v)
    })
    .await;
    assert_eq!(shown["result"], "match", "{shown}");
    assert_eq!(custody_scans().await, 1);
}

/// Signs QA's decision on a batch through the CLI, as `QA`, bound to the record as shown.
fn sign_decision(hub: &Hub, batch_id: &str, meaning: &str, reason: &str) {
    let record = hub.cli_json(QA.0, &["release", "show", batch_id], None);
    let sha = str_field(&record, "record_sha256").to_owned();
    let exceptions = record["exceptions"].as_array().map_or(0, Vec::len);
    let justifications: Vec<String> = (1..=exceptions)
        .map(|i| format!("reviewed in this test (exception {i})"))
        .collect();
    let mut args = vec![
        "release",
        "sign",
        batch_id,
        "--meaning",
        meaning,
        "--record-sha256",
        &sha,
        "--user",
        QA.0,
        "--acknowledge-signature-meaning",
    ];
    if !reason.is_empty() {
        args.extend(["--reason", reason]);
    }
    if meaning == "released" {
        for j in &justifications {
            args.extend(["--justification", j.as_str()]);
        }
    }
    hub.cli_ok(QA.0, &args, Some(QA.1));
}

async fn wait_state(hub: &Hub, order_id: &str, state: &str) {
    eventually(
        Duration::from_secs(90),
        &format!("order {order_id} to be {state}"),
        || {
            let shown = order_show(hub, PHYSICIAN.0, order_id);
            async move { (shown["state"] == state).then_some(()) }
        },
    )
    .await;
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_physician_sees_rejections_cancellations_and_late_failures_on_the_order_and_in_the_console(
) {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let (agent, released_order, released_batch) = batch_awaiting_release(&hub, "site-n").await;
    hub.add_person(ANN.0, "technician", ANN.1, "site-n");
    agent.wait_for_person(ANN.0, "active").await;
    let (rejected_order, rejected_batch) =
        scenario::create_order_as(&hub, PHYSICIAN.0, "site-n", "P-7102");
    let (cancelled_order, _) = scenario::create_order_as(&hub, PHYSICIAN.0, "site-n", "P-7103");

    // QA cancels one order (the physician did not: they are told), releases one,
    // and rejects another with a reason.
    hub.add_user("admin.web", "admin", "admin-password-123");
    hub.cli_ok(
        "admin.web",
        &[
            "order",
            "cancel",
            &cancelled_order,
            "--reason",
            "Patient withdrew consent before collection",
        ],
        None,
    );
    // QA's queue lists the batch waiting longest first.
    wait_state(&hub, &rejected_order, "awaiting_release").await;
    let queue: Vec<String> = hub
        .cli_json(QA.0, &["release", "list"], None)
        .as_array()
        .expect("queue")
        .iter()
        .map(|o| str_field(o, "batch_id").to_owned())
        .collect();
    assert_eq!(queue, [released_batch.clone(), rejected_batch.clone()]);
    sign_decision(&hub, &released_batch, "released", "");
    wait_state(&hub, &released_order, "released").await;
    sign_decision(
        &hub,
        &rejected_batch,
        "rejected",
        "Viability 55 % is below the 70 % specification",
    );
    wait_state(&hub, &rejected_order, "rejected").await;

    // The sterility culture of the released product reads positive: a retest of
    // the simulator's early reading, which it replaces as the value that counts.
    let early: i64 = sqlx::query_scalar(
        "SELECT seq FROM events WHERE kind = 'qc_result' AND batch_id = ? AND body LIKE '%\"sterility\"%' ORDER BY seq LIMIT 1",
    )
    .bind(&released_batch)
    .fetch_one(&agent.db().await)
    .await
    .expect("the simulator's sterility reading");
    let early = early.to_string();
    let out = agent.cli(
        &[
            "qc",
            "--batch",
            &released_batch,
            "--test",
            "sterility",
            "--value",
            "growth detected",
            "--retest-of",
            &early,
            "--user",
            ANN.0,
        ],
        &format!("{}\n", ANN.1),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("safety_news");
    sign_in(&client, &console, PHYSICIAN).await;

    // The late failure, on the order page of the released product.
    let page = format!("{console}/orders/{released_order}");
    reload_until(&client, &page, "Out of specification: Sterility").await;
    let banner = text_of(&client, "[data-alert=out-of-specification]").await;
    assert!(banner.contains("growth detected"), "{banner}");
    assert!(banner.contains("after QA released the product"), "{banner}");
    assert!(banner.contains("Do not infuse it"), "{banner}");
    shots
        .take(&client, "physician-late-sterility-failure")
        .await;

    // The rejection: QA's reason, what to do next, and the clock stopped.
    client
        .goto(&format!("{console}/orders/{rejected_order}"))
        .await
        .expect("rejected order");
    let banner = text_of(&client, "#order-rejected").await;
    assert!(
        banner.contains("Viability 55 % is below the 70 % specification"),
        "{banner}"
    );
    assert!(banner.contains("What to do next"), "{banner}");
    assert!(
        banner.contains(&format!("signed by Test {} ({})", QA.0, QA.0)),
        "{banner}"
    );
    let clock = text_of(&client, "[data-vein-to-vein]").await;
    assert!(
        clock.contains("stopped: the batch was rejected on"),
        "{clock}"
    );
    assert!(
        client
            .find(Locator::Css("[data-clock][data-stopped]"))
            .await
            .is_ok(),
        "{clock}"
    );
    shots.take(&client, "physician-rejected-order").await;

    // The cancellation, with its reason; its clock never started.
    client
        .goto(&format!("{console}/orders/{cancelled_order}"))
        .await
        .expect("cancelled order");
    let banner = text_of(&client, "#order-cancelled").await;
    assert!(
        banner.contains("Patient withdrew consent before collection"),
        "{banner}"
    );
    assert!(banner.contains("by admin.web"), "{banner}");
    // The simulator may have collected before the cancellation reached it.
    let clock = text_of(&client, "[data-vein-to-vein]").await;
    assert!(
        clock.contains("not started; the order was cancelled before collection")
            || clock.contains("stopped: the batch was cancelled on"),
        "{clock}"
    );

    // The console's own list has each, unread, with no subscription and no e-mail.
    let unread: u64 = client
        .find(Locator::Css("header a[href='/notifications']"))
        .await
        .expect("notifications link")
        .attr("data-unread")
        .await
        .expect("attr")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(unread >= 3, "unread {unread}");
    click(&client, "header a[href='/notifications']").await;
    expect_text(&client, "notifications", "For you").await;
    let list = text_of(&client, "#inbox").await;
    for what in [
        "Rejected by QA",
        "Order cancelled",
        "Result out of specification",
        "Record changed after QA's decision",
        "Patient withdrew consent before collection",
    ] {
        assert!(list.contains(what), "{what} missing from: {list}");
    }
    shots.take(&client, "physician-notification-list").await;
    click(&client, "#mark-all-read").await;
    expect_text(&client, "notifications", "For you").await;
    assert!(
        client
            .find_all(Locator::Css("#inbox tr[data-read=false]"))
            .await
            .expect("rows")
            .is_empty(),
        "every notification is read"
    );
    let unread = client
        .find(Locator::Css("header a[href='/notifications']"))
        .await
        .expect("notifications link")
        .attr("data-unread")
        .await
        .expect("attr");
    assert_eq!(unread.as_deref(), Some("0"));
    client.close().await.expect("close browser");
}

/// Sets a date field's value as the date picker would.
async fn set_date(client: &Client, id: &str, date: chrono::NaiveDate) {
    client
        .execute(
            "document.getElementById(arguments[0]).value = arguments[1];",
            vec![json!(id), json!(date.to_string())],
        )
        .await
        .expect("set the date");
}

async fn value_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_physician_is_warned_of_a_second_open_order_and_reschedules_and_cancels_with_a_reason() {
    const ADMIN: (&str, &str) = ("adm.change", "admin-password-123");
    let hub = Hub::start().await;
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-m");
    // Enrolled, not started: the orders stay untouched, so they can be moved.
    let _agent = Agent::enroll(&hub, "site-m", &token).expect("enroll");
    let capacity = hub.data_dir().join("capacity.toml");
    std::fs::write(
        &capacity,
        "working_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
         opens = \"07:00\"\ncloses = \"19:00\"\ncollection_slots_per_day = 1\n\n[instruments]\n\
         apheresis = 1\nbench = 1\nclosed-processing-system = 4\n",
    )
    .expect("capacity file");
    hub.cli_ok(
        ADMIN.0,
        &[
            "schedule",
            "capacity",
            "site-m",
            "--set",
            capacity.to_str().expect("path"),
        ],
        None,
    );
    let orders_of = |hub: &Hub| {
        hub.cli_json(PHYSICIAN.0, &["order", "list"], None)
            .as_array()
            .map_or(0, Vec::len)
    };
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("order_changes");
    sign_in(&client, &console, PHYSICIAN).await;
    let today = chrono::Utc::now().date_naive();

    // The first order goes through.
    client
        .goto(&format!("{console}/orders/new"))
        .await
        .expect("order form");
    fill(&client, "#patient_pseudonym", "P-8801").await;
    set_date(
        &client,
        "requested_collection_date",
        today + chrono::Days::new(3),
    )
    .await;
    click(&client, "form[action='/orders'] button[type=submit]").await;
    expect_text(&client, "order page", "Order G").await;
    let first = client.current_url().await.expect("url").to_string();
    assert_eq!(orders_of(&hub), 1);

    // A second for the same patient and product is held with a warning that names the
    // open order; the form keeps what was typed; nothing is placed.
    client
        .goto(&format!("{console}/orders/new"))
        .await
        .expect("order form");
    fill(&client, "#patient_pseudonym", "P-8801").await;
    set_date(
        &client,
        "requested_collection_date",
        today + chrono::Days::new(5),
    )
    .await;
    click(&client, "form[action='/orders'] button[type=submit]").await;
    expect_text(&client, "second order", "already has an open order").await;
    let warning = text_of(&client, "#second-order").await;
    assert!(
        warning.contains("Patient P-8801 already has an open order for cd19-car-t")
            && warning.contains("placed by you"),
        "{warning}"
    );
    assert_eq!(value_of(&client, "#patient_pseudonym").await, "P-8801");
    assert_eq!(
        value_of(&client, "#requested_collection_date").await,
        (today + chrono::Days::new(5)).to_string()
    );
    shots.take(&client, "second-order-warning").await;
    assert_eq!(orders_of(&hub), 1, "nothing placed without confirmation");
    click(&client, "#confirm_second_order").await;
    click(&client, "form[action='/orders'] button[type=submit]").await;
    expect_text(&client, "second order page", "Change this order").await;
    let second = client.current_url().await.expect("url").to_string();
    assert_ne!(first, second);
    assert_eq!(orders_of(&hub), 2);

    // Cancelling asks for a confirmation and a reason that is a sentence; a refusal
    // says both beside their fields and keeps the reason typed.
    fill(&client, "#cancel-reason", "dup").await;
    click(&client, "#cancel-submit").await;
    expect_text(&client, "refused cancel", "too short").await;
    assert!(text_of(&client, "#cancel-reason-error")
        .await
        .contains("\"dup\" is too short"));
    assert!(text_of(&client, "#cancel-confirm-error")
        .await
        .contains("Tick the box"));
    assert_eq!(value_of(&client, "#cancel-reason").await, "dup");
    shots.take(&client, "cancel-refused").await;
    let second_id = second.rsplit('/').next().expect("order id").to_owned();
    assert_eq!(
        order_show(&hub, PHYSICIAN.0, &second_id)["state"],
        "ordered"
    );
    fill(
        &client,
        "#cancel-reason",
        "Ordered twice by mistake; the first order stands.",
    )
    .await;
    click(&client, "#cancel-confirm").await;
    click(&client, "#cancel-submit").await;
    expect_text(&client, "cancelled order", "This order was cancelled").await;
    assert_eq!(
        order_show(&hub, PHYSICIAN.0, &second_id)["state"],
        "cancelled"
    );
    assert!(text_of(&client, "#order-cancelled")
        .await
        .contains("Ordered twice by mistake; the first order stands."));
    assert!(
        client.find(Locator::Css("#cancel")).await.is_err(),
        "no second cancel"
    );

    // Moving the first order's collection needs a reason too; then the booking moves.
    client.goto(&first).await.expect("first order");
    let later = today + chrono::Days::new(7);
    set_date(&client, "collection_date", later).await;
    click(&client, "#reschedule-submit").await;
    expect_text(
        &client,
        "refused reschedule",
        "Say why you move this collection",
    )
    .await;
    assert_eq!(
        value_of(&client, "#collection_date").await,
        later.to_string()
    );
    fill(
        &client,
        "#reschedule-reason",
        "Patient has a fever; collection postponed by the team.",
    )
    .await;
    click(&client, "#reschedule-submit").await;
    expect_text(
        &client,
        "moved order",
        &format!("Booked: collection {later}, slot 1 at site-m"),
    )
    .await;
    shots.take(&client, "rescheduled").await;
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_sees_what_a_suspension_touches_and_confirms_it_with_a_reason() {
    const ADMIN: (&str, &str) = ("adm.status", "admin-password-123");
    let hub = Hub::start().await;
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-z");
    let _agent = Agent::enroll(&hub, "site-z", &token).expect("enroll");
    let (order_id, _) = scenario::create_order_as(&hub, PHYSICIAN.0, "site-z", "P-9901");
    let coi = str_field(&order_show(&hub, PHYSICIAN.0, &order_id), "coi").to_owned();
    let status = |hub: &Hub| {
        hub.cli_json(ADMIN.0, &["site", "list"], None)
            .as_array()
            .and_then(|sites| {
                sites
                    .iter()
                    .find(|s| s["site_id"] == "site-z")
                    .map(|s| str_field(s, "status").to_owned())
            })
            .expect("site-z listed")
    };
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("site_status");
    sign_in(&client, &console, ADMIN).await;
    client
        .goto(&format!("{console}/admin/sites"))
        .await
        .expect("sites");
    // The list says what each site makes (the harness qualified site-z for both).
    assert_eq!(
        text_of(&client, "tr[data-site=site-z] td.makes").await,
        "bcma-car-t, cd19-car-t"
    );
    // No one-click suspension from the list: the change has its own page.
    assert!(client
        .find(Locator::Css("form[action='/admin/sites/site-z/suspend']"))
        .await
        .is_err());
    click(&client, "[data-change-status=site-z]").await;
    expect_text(&client, "status page", "What a change touches").await;
    let impact = text_of(&client, "#impact").await;
    assert!(impact.contains("1 open order(s)"), "{impact}");
    assert!(text_of(&client, "table[data-impact]").await.contains(&coi));
    assert!(
        client.find(Locator::Css("#cease")).await.is_err(),
        "no cease for an active site"
    );

    // A one-word reason and no confirmation: both said, the reason kept, nothing changed.
    fill(&client, "#suspend-reason", "audit").await;
    click(&client, "#suspend-submit").await;
    expect_text(&client, "refused suspension", "Nothing was changed").await;
    assert!(text_of(&client, "#suspend-reason-error")
        .await
        .contains("too short"));
    expect_text(&client, "refused suspension", "Tick the box").await;
    assert_eq!(value_of(&client, "#suspend-reason").await, "audit");
    shots.take(&client, "suspend-refused").await;
    assert_eq!(status(&hub), "SITE_STATUS_ACTIVE");

    let reason = "Incubator alarm unexplained; hold the site until QA has investigated.";
    fill(&client, "#suspend-reason", reason).await;
    click(&client, "#suspend-confirm").await;
    click(&client, "#suspend-submit").await;
    expect_text(&client, "sites", "Onboard a site").await;
    assert_eq!(status(&hub), "SITE_STATUS_SUSPENDED");
    expect_text(&client, "sites", reason).await;

    // Suspended: resume and cease are apart, and cease waits for the open order.
    click(&client, "[data-change-status=site-z]").await;
    expect_text(&client, "status page", "Cease this site (final)").await;
    assert_eq!(
        client
            .find_all(Locator::Css("#resume button"))
            .await
            .expect("buttons")
            .len(),
        1,
        "only Resume beside the resume reason"
    );
    assert!(text_of(&client, "#cease")
        .await
        .contains("Not possible yet"));
    assert!(client
        .find(Locator::Css("form[action='/admin/sites/site-z/cease']"))
        .await
        .is_err());
    shots.take(&client, "suspended-status-page").await;

    hub.cli_ok(
        PHYSICIAN.0,
        &[
            "order",
            "cancel",
            &order_id,
            "--reason",
            "The site is closing; the patient is referred elsewhere.",
        ],
        None,
    );
    client.refresh().await.expect("reload");
    expect_text(&client, "status page", "No open orders at this site").await;
    fill(
        &client,
        "#cease-reason",
        "The programme at this hospital has ended for good.",
    )
    .await;
    click(&client, "#cease-confirm").await;
    click(&client, "#cease-submit").await;
    expect_text(&client, "sites", "Onboard a site").await;
    assert_eq!(status(&hub), "SITE_STATUS_CEASED");
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_pages_in_the_console_layout_in_words_with_the_way_back() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    let token = hub.add_site("site-e");
    let mut agent = Agent::enroll(&hub, "site-e", &token).expect("enroll");
    agent.start();
    technicians_at(&hub, &agent, "site-e").await;
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("refusal_pages");
    let in_layout = |what: &'static str| {
        let client = client.clone();
        async move {
            // A page with the console's header and a heading, not bare text.
            assert!(
                client.find(Locator::Css("header")).await.is_ok(),
                "{what}: no header"
            );
            let heading = text_of(&client, "h1").await;
            let alert = text_of(&client, "[data-problem]").await;
            assert!(
                client.find(Locator::Css("main a[href='/']")).await.is_ok(),
                "{what}: no way back"
            );
            (heading, alert)
        }
    };

    // A physician opening QA's release queue.
    sign_in(&client, &console, PHYSICIAN).await;
    client
        .goto(&format!("{console}/release"))
        .await
        .expect("release queue");
    let (heading, alert) = in_layout("role refusal").await;
    assert_eq!(heading, "Not open to you");
    assert!(alert.contains("this needs the role qa"), "{alert}");
    expect_text(&client, "role refusal", "ask an administrator").await;
    shots.take(&client, "hub-role-refusal").await;

    // An order that does not exist.
    client
        .goto(&format!("{console}/orders/{}", uuid::Uuid::now_v7()))
        .await
        .expect("unknown order");
    let (heading, _) = in_layout("unknown order").await;
    assert_eq!(heading, "Not found");

    // At the site: a batch that does not exist.
    site_sign_in(&client, &site_console, ANN).await;
    client
        .goto(&format!("{site_console}/batches/{}", uuid::Uuid::now_v7()))
        .await
        .expect("unknown batch");
    let (heading, alert) = in_layout("unknown batch").await;
    assert_eq!(heading, "Not found");
    assert!(alert.contains("no batch"), "{alert}");
    shots.take(&client, "site-unknown-batch").await;
    client.close().await.expect("close browser");
}

/// axe-core's source, as `scripts/test` installs it (`npm ci` in tests/axe).
fn axe_source() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("axe/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/test, or `npm ci --prefix tests/axe`",
            path.display()
        )
    })
}

/// Runs axe-core on the open page against WCAG 2.1 A and AA; answers the serious
/// and critical violations, each with the elements it found.
async fn accessibility_violations(client: &Client, axe: &str) -> Vec<String> {
    client
        .execute(&format!("{axe}\n;return true;"), vec![])
        .await
        .expect("load axe-core");
    let found = client
        .execute_async(
            "var done = arguments[arguments.length - 1];\
             axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
               .then(function (r) { done(r.violations\
                 .filter(function (v) { return v.impact === 'serious' || v.impact === 'critical'; })\
                 .map(function (v) { return v.id + ' (' + v.impact + '): ' + v.help + ' at '\
                   + v.nodes.slice(0, 3).map(function (n) { return n.target.join(' '); }).join(', '); })); })\
               .catch(function (e) { done(['axe failed: ' + e]); });",
            vec![],
        )
        .await
        .expect("run axe-core");
    serde_json::from_value(found).expect("a list of violations")
}

/// What makes the open page wider than the window (a table or form that does not
/// fit makes the whole page scroll sideways): the outermost elements reaching past
/// its right edge, outside a scrolling box; empty when it fits.
async fn wider_than_the_window(client: &Client) -> Vec<String> {
    let found = client
        .execute(
            "if (document.documentElement.scrollWidth <= window.innerWidth + 1) return [];\
             var out = [];\
             document.querySelectorAll('body *').forEach(function (e) {\
               if (e.closest('.scroll') && !e.classList.contains('scroll')) return;\
               var r = e.getBoundingClientRect();\
               if (r.right > window.innerWidth + 1 && !(e.parentElement && e.parentElement.getBoundingClientRect().right > window.innerWidth + 1)) {\
                 out.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.getAttribute('class') ? '.' + e.getAttribute('class').split(' ').join('.') : '') + ' (' + Math.round(r.right) + ' px)');\
               }\
             });\
             return out.length ? out.slice(0, 5) : ['the document (' + document.documentElement.scrollWidth + ' px)'];",
            vec![],
        )
        .await
        .expect("measure");
    serde_json::from_value(found).expect("a list")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_console_page_passes_an_automated_accessibility_check_fits_390_px_and_shows_no_codes()
{
    const ADMIN: (&str, &str) = ("adm.a11y", "admin-password-123");
    let axe = axe_source();
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    let (agent, order_id, batch_id) = batch_awaiting_release(&hub, "site-a11y").await;
    technicians_at(&hub, &agent, "site-a11y").await;
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut failures: Vec<String> = Vec::new();
    let check = |client: Client, name: String, url: String| {
        let axe = axe.clone();
        async move {
            client.goto(&url).await.expect("page");
            let mut found = Vec::new();
            client
                .set_window_size(1280, 800)
                .await
                .expect("window size");
            for v in accessibility_violations(&client, &axe).await {
                found.push(format!("{name}: {v}"));
            }
            // Words, not the codes the records use.
            let text = body_text(&client).await;
            for code in [
                "degC",
                "dissolved_o2",
                "ip-viability",
                "ip-cd3-purity",
                "patient_pseudonym",
                "requested_collection_date",
                "in_process",
                "awaiting_release",
                "OutOfSpecification",
                "out_of_specification",
            ] {
                if text.contains(code) {
                    found.push(format!("{name}: shows the code {code:?}"));
                }
            }
            client.set_window_size(390, 844).await.expect("window size");
            for wide in wider_than_the_window(&client).await {
                found.push(format!("{name}: wider than 390 px: {wide}"));
            }
            client
                .set_window_size(1280, 800)
                .await
                .expect("window size");
            found
        }
    };

    let c = |path: &str| format!("{console}{path}");
    failures.extend(check(client.clone(), "sign-in".into(), c("/login")).await);
    sign_in(&client, &console, PHYSICIAN).await;
    for (name, path) in [
        ("my orders", "/orders".to_owned()),
        ("new order", "/orders/new".to_owned()),
        ("order", format!("/orders/{order_id}")),
        ("notifications", "/notifications".to_owned()),
        ("account", "/account".to_owned()),
        ("schedule", "/schedule".to_owned()),
    ] {
        failures.extend(check(client.clone(), format!("physician {name}"), c(&path)).await);
    }
    sign_out(&client).await;
    sign_in(&client, &console, QA).await;
    hub.cli_ok(
        QA.0,
        &[
            "deviation",
            "raise",
            &batch_id,
            "--classification",
            "minor",
            "--description",
            "Label printer jammed; the label was reprinted",
        ],
        None,
    );
    for (name, path) in [
        ("release queue", "/release".to_owned()),
        ("batch record", format!("/batches/{batch_id}")),
        ("deviations", "/deviations".to_owned()),
        ("deviation", format!("/batches/{batch_id}/deviations/HUB-1")),
        // (The recipe editor shows the TOML it edits: its codes are the text.)
        ("recipes", "/recipes".to_owned()),
        ("qualifications", "/qualifications".to_owned()),
    ] {
        failures.extend(check(client.clone(), format!("QA {name}"), c(&path)).await);
    }
    sign_out(&client).await;
    sign_in(&client, &console, ADMIN).await;
    for (name, path) in [
        ("sites", "/admin/sites".to_owned()),
        ("site status", "/admin/sites/site-a11y/status".to_owned()),
        ("users", "/admin/users".to_owned()),
        ("capacity", "/capacity/site-a11y".to_owned()),
    ] {
        failures.extend(check(client.clone(), format!("admin {name}"), c(&path)).await);
    }
    failures.extend(
        check(
            client.clone(),
            "site sign-in".into(),
            format!("{site_console}/signin"),
        )
        .await,
    );
    site_sign_in(&client, &site_console, ANN).await;
    for (name, path) in [
        ("batches", "/".to_owned()),
        ("batch", format!("/batches/{batch_id}")),
    ] {
        failures.extend(
            check(
                client.clone(),
                format!("site {name}"),
                format!("{site_console}{path}"),
            )
            .await,
        );
    }
    client.close().await.expect("close browser");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The first record of `kind` in the site's log that `wanted` accepts (within `limit`).
async fn first_record(
    agent: &Agent,
    kind: &str,
    limit: Duration,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let wanted = &wanted;
    eventually(limit, kind, || async move {
        let log = site_log(agent).await;
        let found = of_type(&log, kind).find(|k| wanted(k)).cloned();
        found
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_technician_checks_an_unconfirmed_command_at_the_console_and_the_agent_sends_it_again() {
    let Some(python) = carrel_tests::peers::python() else {
        return;
    };
    // The counter answers its first count after 4 s; the agent waits 1 s, so it
    // cannot know whether the count runs, and holds the batch.
    let sila = carrel_tests::peers::Peer::sila(&python, &["--first-count-after", "4"]);
    let hub = Hub::start().await;
    scenario::add_people(&hub);
    let site_id = "site-unconfirmed";
    let token = hub.add_site(site_id);
    let mut agent = Agent::enroll(&hub, site_id, &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    let mapping: toml::Table = toml::from_str(&format!(
        r#"
[[instruments]]
name = "counter"
kind = "sila2"
address = "{address}"
pinned_certificate = "{cert}"
features = ["org.carrel/bioprocess/CellExpansionController/v1"]
timeout_ms = 1000

[[steps]]
step = "expansion"
instrument = "counter"
command = "CountSample"
parameters = {{ DrawnOn = 2026-12-05, DrawnAt = "14:30:00+01:00" }}
qc = [{{ test = "ip-viability", result = "Count.Viability", unit = "%" }}]
"#,
        address = sila.address(),
        cert = sila.sila_certificate().display(),
    ))
    .expect("mapping");
    for (key, value) in mapping {
        agent.configure(&[&key], value);
    }
    agent.start();
    technicians_at(&hub, &agent, site_id).await;
    let (_order_id, batch) = scenario::create_order(&hub, site_id, "P-UNCONFIRMED-1");
    let site_console = format!(
        "http://{}",
        read_addr(agent.data_dir().join("console.addr"))
    );
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    site_sign_in(&client, &site_console, ANN).await;
    let page = format!("{site_console}/batches/{batch}");
    reload_until(&client, &page, "Is the instrument running the command?").await;
    let next = text_of(&client, "[data-next]").await;
    assert!(
        next.contains("Held:") && next.contains("not confirmed") && next.contains("may be running"),
        "{next}"
    );
    let mut shots = Shots::new("unconfirmed");
    for width in [1280, 390] {
        client
            .set_window_size(width, 900)
            .await
            .expect("window size");
        shots.take(&client, &format!("held-{width}")).await;
    }

    // Without the tick, nothing is recorded and what was typed stays.
    fill(
        &client,
        "#checked",
        "Run log on the counter shows no count since 09:40",
    )
    .await;
    click(&client, "#not-running-submit").await;
    expect_text(&client, "the refusal", "Not recorded: tick the box").await;
    assert_eq!(
        value_of(&client, "#checked").await,
        "Run log on the counter shows no count since 09:40"
    );
    let log = site_log(&agent).await;
    assert!(
        !log.iter().any(|(_, e)| e["kind"]["type"] == "correction"),
        "{log:?}"
    );

    // Checked and ticked: recorded by the signed-in person, and the agent sends the
    // command once more.
    click(&client, "#not-running-confirm").await;
    click(&client, "#not-running-submit").await;
    expect_text(
        &client,
        "the check on record",
        "is not running. The agent sends it once more",
    )
    .await;
    let results = first_record(
        &agent,
        "instrument_results",
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    let log = site_log(&agent).await;
    let kinds: Vec<&serde_json::Value> = log.iter().map(|(_, e)| &e["kind"]).collect();
    let correction = kinds
        .iter()
        .find(|k| k["type"] == "correction")
        .expect("the correction");
    assert_eq!(correction["field"], "running");
    assert_eq!(correction["new_value"], "no");
    let by = log
        .iter()
        .find(|(_, e)| e["kind"]["type"] == "correction")
        .map(|(_, e)| e.to_string())
        .unwrap_or_default();
    assert!(by.contains(ANN.0), "{by}");
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k["type"] == "instrument_command_requested")
            .count(),
        2
    );
    // The structure's elements are results by path; the QC result is the count's.
    let viability = results["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["name"] == "Count.Viability")
        .and_then(|r| r["value"].as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("Count.Viability");
    let qc = first_record(&agent, "qc_result", Duration::from_secs(30), |k| {
        k["test_id"] == "ip-viability"
    })
    .await;
    assert_eq!(qc["value"]["numeric"].as_f64(), Some(viability), "{qc}");
    assert!(
        qc["method"]
            .as_str()
            .unwrap_or_default()
            .contains("measured by instrument counter"),
        "{qc}"
    );
    // Two calls at the counter: the first (which did answer, late) and the one sent again.
    assert_eq!(
        sila.log().matches("SAMPLE-COUNT-STARTED").count(),
        2,
        "{}",
        sila.log()
    );
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn qa_raises_investigates_and_closes_a_deviation_and_the_physician_sees_only_that_it_exists()
{
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let (_agent, order_id, batch_id) = batch_awaiting_release(&hub, "site-v").await;
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("deviations");
    sign_in(&client, &console, QA).await;
    client
        .goto(&format!("{console}/batches/{batch_id}"))
        .await
        .expect("batch record");
    expect_text(&client, "batch record", "No deviations.").await;

    // Raised at the hub from the batch record: too short is refused, nothing stored.
    click(&client, "#deviations + div + details summary").await;
    choose(&client, "#raise-classification", "critical").await;
    fill(&client, "#raise-description", "logger").await;
    click(&client, "#raise-submit").await;
    expect_text(&client, "batch record", "Deviation not raised").await;
    let db = hub.db().await;
    let rows = || {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM deviations")
                .fetch_one(&db)
                .await
                .expect("count")
        }
    };
    assert_eq!(rows().await, 0);
    click(&client, "#deviations + div + details summary").await;
    choose(&client, "#raise-classification", "critical").await;
    fill(
        &client,
        "#raise-description",
        "The shipper's temperature logger is missing from the box",
    )
    .await;
    click(&client, "#raise-submit").await;
    expect_text(&client, "deviation page", "Deviation HUB-1").await;
    expect_text(&client, "deviation page", "stops the batch's release").await;
    assert_eq!(rows().await, 1);

    // A note, then the closure with a signature (a wrong password keeps the input).
    fill(
        &client,
        "#note",
        "Courier called: logger found in the returns box",
    )
    .await;
    click(&client, "#note-submit").await;
    expect_text(&client, "deviation page", "logger found in the returns box").await;
    fill(
        &client,
        "#root-cause",
        "Logger packed in the wrong box at dispatch",
    )
    .await;
    fill(&client, "#capa", "CAPA-2026-118").await;
    fill(&client, "#close-username", QA.0).await;
    click(&client, "#close-acknowledge").await;
    fill(&client, "#close-password", "not-the-password").await;
    click(&client, "#close-submit").await;
    expect_text(&client, "deviation page", "wrong password").await;
    assert_eq!(
        value_of(&client, "#root-cause").await,
        "Logger packed in the wrong box at dispatch"
    );
    fill(&client, "#close-username", QA.0).await;
    if client
        .find(Locator::Css("#close-acknowledge"))
        .await
        .is_ok()
    {
        click(&client, "#close-acknowledge").await;
    }
    fill(&client, "#close-password", QA.1).await;
    click(&client, "#close-submit").await;
    expect_text(&client, "deviation page", "Closed by").await;
    shots.take(&client, "deviation-closed").await;
    let closed_by: Option<String> =
        sqlx::query_scalar("SELECT closed_by FROM deviations WHERE deviation_id = 'HUB-1'")
            .fetch_one(&db)
            .await
            .expect("closed_by");
    assert_eq!(closed_by.as_deref(), Some(QA.0));
    client
        .goto(&format!("{console}/deviations"))
        .await
        .expect("list");
    expect_text(&client, "deviations", "0 open, 1 closed").await;
    shots.take(&client, "deviation-list").await;

    // The physician sees that the batch had a deviation, not what it was.
    sign_out(&client).await;
    sign_in(&client, &console, PHYSICIAN).await;
    client
        .goto(&format!("{console}/orders/{order_id}"))
        .await
        .expect("order page");
    expect_text(
        &client,
        "order page",
        "Deviations: 1 raised on this batch, 0 still open",
    )
    .await;
    let page = body_text(&client).await;
    assert!(!page.contains("temperature logger"), "{page}");
    // Their notifications say that it was raised, not what it is.
    reload_until(
        &client,
        &format!("{console}/notifications"),
        "Deviation HUB-1 (critical) raised at the hub",
    )
    .await;
    let page = body_text(&client).await;
    assert!(!page.contains("temperature logger"), "{page}");
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recipe_version_is_drafted_in_the_editor_dry_run_and_approved_by_a_second_qa_person() {
    const AUTHOR: (&str, &str) = ("qa.author", "author-password-123");
    let hub = Hub::start_with("dry_run_simulator = true\n").await;
    hub.add_user(AUTHOR.0, "qa", AUTHOR.1);
    hub.add_user(QA.0, "qa", QA.1);
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("recipes");
    sign_in(&client, &console, AUTHOR).await;
    client
        .goto(&format!("{console}/recipes/new?from=cd19-car-t"))
        .await
        .expect("editor");
    expect_text(&client, "editor", "Checked: cd19-car-t v2").await;
    let toml = value_of(&client, "#toml").await;
    // Checked as the author types: a field the format does not have is named.
    fill(
        &client,
        "#toml",
        &toml.replacen("[[steps]]", "[[steps]]\nbogus = 1", 1),
    )
    .await;
    expect_text(&client, "editor", "unknown field `bogus`").await;
    fill(
        &client,
        "#toml",
        &toml.replacen("duration_hours = 3.0", "duration_hours = 4.0", 1),
    )
    .await;
    expect_text(&client, "editor", "step collection").await;
    shots.take(&client, "recipe-editor-diff").await;
    click(&client, "#save-draft").await;
    expect_text(&client, "draft page", "Changes against v1 (in force)").await;
    expect_text(&client, "draft page", "No dry run yet.").await;

    // A dry run on the hub's simulator site: the draft's page lists it, and its
    // batch record is shown like any other, marked as a dry run, with no signing.
    click(&client, "#dry-run-draft").await;
    let draft_url = format!("{console}/recipes/cd19-car-t/2");
    reload_until(&client, &draft_url, "awaiting release").await;
    expect_text(&client, "draft page", "cd19-car-t~dry-run-1").await;
    expect_text(&client, "draft page", "this text").await;
    shots.take(&client, "recipe-dry-run-listed").await;
    click(&client, "table[data-dry-runs] a").await;
    expect_text(&client, "dry-run record", "Batch record").await;
    expect_text(&client, "dry-run record", "It is never released.").await;
    expect_text(&client, "dry-run record", "dry run: never released").await;
    let record = body_text(&client).await;
    assert!(
        record.contains("cd19-car-t~dry-run-1") && record.contains(" v2"),
        "the record names the draft's frozen copy and version: {record}"
    );
    assert!(
        client
            .find(Locator::Css("#review-signature"))
            .await
            .is_err(),
        "no release decision is offered on a dry run: {record}"
    );
    shots.take(&client, "recipe-dry-run-record").await;
    client.goto(&draft_url).await.expect("draft page");
    expect_text(&client, "draft page", "Changes against v1 (in force)").await;
    fill(&client, "#submit-username", AUTHOR.0).await;
    click(&client, "#submit-acknowledge").await;
    fill(&client, "#submit-password", AUTHOR.1).await;
    click(&client, "#submit-draft").await;
    expect_text(&client, "draft page", "Submitted by").await;
    let page = body_text(&client).await;
    assert!(
        !page.contains("Sign: approve"),
        "the author is not offered the approval"
    );

    // Another QA person approves it; it is published.
    sign_out(&client).await;
    sign_in(&client, &console, QA).await;
    client
        .goto(&format!("{console}/recipes/cd19-car-t/2"))
        .await
        .expect("draft page");
    expect_text(&client, "draft page", "4 h").await;
    fill(&client, "#approve-username", QA.0).await;
    click(&client, "#approve-acknowledge").await;
    fill(&client, "#approve-password", QA.1).await;
    click(&client, "#approve-draft").await;
    expect_text(&client, "draft page", "Approved by").await;
    shots.take(&client, "recipe-approved").await;
    let db = hub.db().await;
    let published: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM recipes WHERE recipe_id = 'cd19-car-t' AND version = 2",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(published, 1);
    client.close().await.expect("close browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn qa_qualifies_a_site_for_a_product_with_a_signature_and_withdraws_it() {
    let hub = Hub::start().await;
    hub.add_user(QA.0, "qa", QA.1);
    hub.register_site("site-n");
    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("qualifications");
    sign_in(&client, &console, QA).await;
    click(&client, "a[href='/qualifications']").await;
    expect_text(
        &client,
        "qualifications",
        "No site is qualified for any product yet",
    )
    .await;

    // A reason that says nothing is refused, the choices kept, nothing signed.
    choose(&client, "#site", "site-n").await;
    choose(&client, "#product", "bcma-car-t").await;
    fill(&client, "#qualify-reason", "ok").await;
    fill(&client, "#qualify-username", QA.0).await;
    click(&client, "#qualify-acknowledge").await;
    fill(&client, "#qualify-password", QA.1).await;
    click(&client, "#qualify-submit").await;
    expect_text(&client, "refusal", "too short").await;
    assert_eq!(value_of(&client, "#site").await, "site-n");
    assert_eq!(value_of(&client, "#product").await, "bcma-car-t");
    // A wrong password: not signed.
    fill(
        &client,
        "#qualify-reason",
        "Process qualification run PQ-9 passed, report QR-0090",
    )
    .await;
    fill(&client, "#qualify-username", QA.0).await;
    fill(&client, "#qualify-password", "not-my-password-1").await;
    click(&client, "#qualify-submit").await;
    expect_text(&client, "refusal", "wrong password").await;
    let db = hub.db().await;
    let rows = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .expect(sql)
        }
    };
    assert_eq!(rows("SELECT COUNT(*) FROM site_qualifications").await, 0);

    fill(&client, "#qualify-username", QA.0).await;
    fill(&client, "#qualify-password", QA.1).await;
    click(&client, "#qualify-submit").await;
    expect_text(&client, "qualifications", "v1 and later").await;
    let row = "tr[data-site='site-n'][data-product='bcma-car-t']";
    assert_eq!(
        client
            .find(Locator::Css(row))
            .await
            .expect("row")
            .attr("data-in-force")
            .await
            .expect("attr")
            .as_deref(),
        Some("true")
    );
    shots.take(&client, "qualified").await;

    // A reason that says nothing is refused, and what was typed is kept.
    fill(&client, &format!("{row} input[name=reason]"), "Because").await;
    click(&client, &format!("{row} button")).await;
    expect_text(&client, "refusal", "Not withdrawn (site-n, bcma-car-t)").await;
    assert_eq!(
        value_of(&client, &format!("{row} input[name=reason]")).await,
        "Because"
    );
    // Withdrawn with a reason: the row stays, withdrawn.
    fill(
        &client,
        &format!("{row} input[name=reason]"),
        "Clean room excursion; CAPA-17 open",
    )
    .await;
    click(&client, &format!("{row} button")).await;
    expect_text(
        &client,
        "qualifications",
        "Clean room excursion; CAPA-17 open",
    )
    .await;
    assert_eq!(
        rows("SELECT COUNT(*) FROM site_qualifications WHERE withdrawn_at IS NOT NULL").await,
        1
    );
    assert_eq!(
        rows("SELECT COUNT(*) FROM audit_log WHERE action = 'site.qualification_withdrawn'").await,
        1
    );
    client.close().await.expect("close browser");
}

/// A site whose laboratory enters the release tests by hand; QA releases before the
/// 14-day sterility culture is in. The console offers only a conditional release
/// naming it, shows it to QA and the physician, and once the culture is in within
/// specification QA completes the release with a second signature.
#[tokio::test(flavor = "multi_thread")]
async fn qa_releases_conditionally_and_completes_the_release_in_the_console() {
    let hub = Hub::start().await;
    hub.add_user(PHYSICIAN.0, "physician", PHYSICIAN.1);
    hub.add_user(QA.0, "qa", QA.1);
    let token = hub.add_site("site-q");
    let mut agent = Agent::enroll(&hub, "site-q", &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    agent.configure(&["simulator", "qc_laboratory"], false.into());
    agent.start();
    hub.add_person(ANN.0, "technician", ANN.1, "site-q");
    agent.wait_for_person(ANN.0, "active").await;
    let (order_id, batch_id) = scenario::create_order_as(&hub, PHYSICIAN.0, "site-q", "P-7301");
    let qc = |test: &str, value: &str| {
        let out = agent.cli(
            &[
                "qc", "--batch", &batch_id, "--test", test, "--value", value, "--user", ANN.0,
            ],
            &format!("{}\n", ANN.1),
        );
        assert!(
            out.status.success(),
            "{test}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    eventually(Duration::from_secs(60), "the batch to be under way", || {
        let shown = order_show(&hub, PHYSICIAN.0, &order_id);
        async move { (shown["state"] != "ordered").then_some(()) }
    })
    .await;
    for (test, value) in [
        ("viability", "91"),
        ("cd3", "88"),
        ("car-positive", "41"),
        ("dose", "2.1"),
        ("mycoplasma", "not detected"),
        ("endotoxin", "0.1"),
        ("vcn", "2.2"),
    ] {
        qc(test, value);
    }
    eventually(
        Duration::from_secs(90),
        "the batch to await release",
        || {
            let shown = order_show(&hub, PHYSICIAN.0, &order_id);
            async move { (shown["state"] == "awaiting_release").then_some(()) }
        },
    )
    .await;

    let console = format!("https://{}", read_addr(hub.data_dir().join("console.addr")));
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("conditional_release");
    sign_in(&client, &console, QA).await;
    let record = format!("{console}/batches/{batch_id}");
    client.goto(&record).await.expect("batch record");
    expect_text(
        &client,
        "decision form",
        "Release it conditionally for infusion: results still outstanding:",
    )
    .await;
    let offered = client
        .find(Locator::Css("label:has(#meaning-released)"))
        .await
        .expect("the release choice")
        .text()
        .await
        .expect("its text");
    assert!(offered.contains("Sterility"), "{offered}");
    let body = body_text(&client).await;
    assert!(!body.contains("Release it for infusion"), "{body}");
    click(&client, "#meaning-released").await;
    justify_each_exception(&client).await;
    click(&client, "#review-signature").await;
    expect_text(
        &client,
        "signing step",
        "Released conditionally by Test qa.web",
    )
    .await;
    expect_text(&client, "signing step", "the release waits for Sterility").await;
    shots.take(&client, "qa-confirms-conditional-release").await;
    confirm_signature(&client, QA).await;
    expect_text(
        &client,
        "signed record",
        "Released conditionally. The release waits for Sterility",
    )
    .await;
    let shown = order_show(&hub, PHYSICIAN.0, &order_id);
    assert_eq!(shown["state"], "released");
    assert_eq!(shown["release_awaits"], json!(["sterility"]));

    // QA's queue lists it as waiting.
    client
        .goto(&format!("{console}/release"))
        .await
        .expect("queue");
    expect_text(&client, "release queue", "Released conditionally").await;
    let row = client
        .find(Locator::Css(&format!(
            "#conditional-releases tr[data-batch='{batch_id}']"
        )))
        .await
        .expect("the batch in the conditional list")
        .text()
        .await
        .expect("row text");
    assert!(
        row.contains("sterility") && row.contains("waiting"),
        "{row}"
    );

    // The culture is in, within specification: QA completes the release.
    qc("sterility", "no growth");
    reload_until(&client, &record, "Every result it waits for is in").await;
    for (width, height) in [(1280, 800), (390, 844)] {
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        shots
            .take(&client, &format!("qa-completes-release-{width}"))
            .await;
    }
    client
        .set_window_size(1280, 800)
        .await
        .expect("window size");
    expect_text(
        &client,
        "completion form",
        "Release completed by Test qa.web",
    )
    .await;
    confirm_signature(&client, QA).await;
    expect_text(
        &client,
        "signed record",
        "Release completed by Test qa.web (qa.web) on",
    )
    .await;
    let shown = order_show(&hub, PHYSICIAN.0, &order_id);
    assert_eq!(shown["release_awaits"], json!([]));
    let record_json = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let meanings: Vec<&str> = record_json["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .map(|s| s["manifestation"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(meanings.len(), 2, "{meanings:?}");
    assert!(meanings[0].starts_with("Released conditionally by"));
    assert!(meanings[1].starts_with("Release completed by"));
    // The site hears of the completion.
    agent
        .wait_for_decision(&batch_id, "release_completed")
        .await;
    client.close().await.expect("close browser");
}

/// What a page's golden-batch section shows: (the step's heading, bins drawn with
/// samples, bins with a band, figures, points marked outside, excursions listed,
/// bands drawn).
async fn golden_shown(client: &Client) -> (String, u64, u64, u64, u64, u64, u64) {
    let v = client
        .execute(
            "var f = document.querySelectorAll('figure.golden');\
             var pts = 0, band = 0;\
             f.forEach(function (e) { pts += +e.dataset.points; band += +e.dataset.bandBins; });\
             var h = document.querySelector('section[data-golden] h3');\
             return [h ? h.textContent : '', pts, band, f.length,\
               document.querySelectorAll('figure.golden circle.out').length,\
               document.querySelectorAll('figure.golden li[data-excursion]').length,\
               document.querySelectorAll('figure.golden polygon.band').length];",
            vec![],
        )
        .await
        .expect("read the golden batch");
    let a = v.as_array().expect("array").clone();
    let n = |i: usize| a[i].as_u64().unwrap_or(0);
    (
        a[0].as_str().unwrap_or_default().to_owned(),
        n(1),
        n(2),
        n(3),
        n(4),
        n(5),
        n(6),
    )
}

/// Watches a page (never reloaded) until its golden-batch section has followed the
/// batch into expansion with at least `bins` bins sampled per parameter and
/// more drawn than at first; then checks expansion's five figures each have
/// their band, and every bin outside the band is marked and listed.
async fn follow_the_golden_batch(client: &Client, page: &str, bins: u64) {
    let mut seen = vec![golden_shown(client).await];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let now = golden_shown(client).await;
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.0 == "Expansion" && now.1 >= 5 * bins && seen.len() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{page} did not follow the batch into expansion: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let (_, points, band_bins, figures, out, listed, bands) = seen.last().expect("seen").clone();
    assert_eq!(
        figures, 5,
        "{page}: one figure per expansion parameter: {seen:?}"
    );
    assert_eq!(bands, 5, "{page}: {seen:?}");
    assert!(band_bins >= 5 * 12, "{page}: {seen:?}");
    assert!(points >= 5 * bins, "{page}: {seen:?}");
    assert_eq!(out, listed, "{page}: {seen:?}");
}

/// The golden-batch section as a person sees it: screenshots at full width and
/// at 390 px (nothing wider than the window), and no accessibility violation.
async fn look_at_the_golden_batch(client: &Client, axe: &str, shots: &mut Shots, name: &str) {
    client
        .execute(
            "document.querySelector('section[data-golden]').scrollIntoView();",
            vec![],
        )
        .await
        .expect("scroll to the golden batch");
    shots.take(client, name).await;
    assert_eq!(
        accessibility_violations(client, axe).await,
        Vec::<String>::new()
    );
    client.set_window_size(390, 844).await.expect("window size");
    assert_eq!(wider_than_the_window(client).await, Vec::<String>::new());
    client
        .execute(
            "document.querySelector('figure.golden').scrollIntoView();",
            vec![],
        )
        .await
        .expect("scroll to a figure");
    shots.take(client, &format!("{name}-390")).await;
    client
        .set_window_size(1200, 1600)
        .await
        .expect("window size");
}

#[tokio::test(flavor = "multi_thread")]
async fn qa_reads_control_charts_and_the_forest_plot_of_the_history_chooses_a_baseline_and_follows_a_live_batch_over_its_golden_batch(
) {
    const GRACE: (&str, &str) = ("qa.grace", "dev-qa-password");
    // (A 7-day expansion in about a minute: long enough to follow it live at the
    // hub and then at the site.)
    let dev = carrel_tests::dev::DevNetwork::start(&[
        "--history-batches",
        "40",
        "--time-compression",
        "10000",
    ])
    .await;
    let console = dev.console.clone();
    let axe = axe_source();
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let client = browser(&driver, profile.path()).await;
    let mut shots = Shots::new("analytics");
    sign_in(&client, &console, GRACE).await;
    click(&client, "nav a[href='/analytics']").await;
    // One product charted: its page at once.
    expect_text(&client, "analytics", "Process analytics of cd19-car-t").await;
    expect_text(&client, "analytics", "No baseline chosen").await;
    shots.take(&client, "product").await;
    client
        .find(Locator::LinkText("Viability"))
        .await
        .expect("a chart of viability")
        .click()
        .await
        .expect("open it");
    expect_text(&client, "chart", "Sites against the rest of the network").await;
    let page = body_text(&client).await;
    // The network's chart and each of the four sites', with history-east's drift
    // marked and named in the signals table.
    let charts = client
        .find_all(Locator::Css("figure.control svg.control"))
        .await
        .expect("charts");
    assert_eq!(charts.len(), 5, "{page}");
    client
        .find(Locator::Css(
            "figure[data-series='history-east'] circle.sig",
        ))
        .await
        .expect("a signal marked on history-east's chart");
    let signals = text_of(&client, "table[data-signal-table]").await;
    assert!(signals.contains("history-east"), "{signals}");
    // The forest plot has every site, and the table beside it.
    for site in [
        "history-east",
        "history-north",
        "history-south",
        "history-west",
    ] {
        client
            .find(Locator::Css(&format!("svg.forest g[data-site='{site}']")))
            .await
            .unwrap_or_else(|e| panic!("{site} in the forest plot: {e}"));
    }
    assert!(page.contains("Cpk"), "{page}");
    assert!(!page.contains("degC"), "units in words: {page}");
    shots.take(&client, "viability-chart").await;
    assert_eq!(
        accessibility_violations(&client, &axe).await,
        Vec::<String>::new()
    );
    client.set_window_size(390, 844).await.expect("window size");
    assert_eq!(wider_than_the_window(&client).await, Vec::<String>::new());
    shots.take(&client, "viability-chart-390").await;
    client
        .set_window_size(1200, 1600)
        .await
        .expect("window size");
    // The CSV the page links to: one row per batch.
    let csv = client
        .execute_async(
            "var done = arguments[arguments.length - 1];\
             fetch(document.querySelector('a[data-csv]').href, {credentials: 'same-origin'})\
               .then(function (r) { return r.text(); }).then(done);",
            vec![],
        )
        .await
        .expect("fetch the CSV");
    let csv = csv.as_str().expect("text").to_owned();
    assert!(csv.starts_with("product,attribute,statistic"), "{csv}");
    assert_eq!(csv.lines().count(), 161);

    // QA chooses the baseline; a refused choice keeps what was typed and says why.
    client
        .goto(&format!("{console}/analytics/cd19-car-t"))
        .await
        .expect("product page");
    click(&client, "details summary").await;
    // (The browser itself stops a number under 2; a window with no batches is
    // refused by the hub.)
    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("a day before");
    set_date(&client, "from", yesterday).await;
    set_date(&client, "to", yesterday).await;
    fill(&client, "#reason", "The batches of yesterday's validation").await;
    click(&client, "form[action$='/baseline'] button[type=submit]").await;
    expect_text(&client, "refused baseline", "needs at least 2").await;
    assert_eq!(value_of(&client, "#from").await, yesterday.to_string());
    assert_eq!(
        value_of(&client, "#reason").await,
        "The batches of yesterday's validation"
    );
    set_date(&client, "from", today).await;
    set_date(&client, "to", today).await;
    shots.take(&client, "baseline-refused").await;
    fill(&client, "#first", "80").await;
    fill(
        &client,
        "#reason",
        "The first 80 batches of the validated process",
    )
    .await;
    click(&client, "form[action$='/baseline'] button[type=submit]").await;
    expect_text(
        &client,
        "baseline chosen",
        "Limits from the baseline of 80 batches chosen by qa.grace",
    )
    .await;
    shots.take(&client, "baseline-chosen").await;
    client
        .find(Locator::LinkText("Viability"))
        .await
        .expect("viability")
        .click()
        .await
        .expect("open it");
    expect_text(&client, "chart", "Limits from the baseline of 80 batches").await;
    client
        .find(Locator::Css("circle.base"))
        .await
        .expect("baseline batches drawn as such");

    // A live batch over its golden batch: dr.ada orders at site-a (simulated
    // instruments, the same culture model as the history's), and QA follows the
    // order page, which is not reloaded, while the batch is made.
    dev.login("dr.ada", "dev-physician-password");
    let date = (chrono::Utc::now() + chrono::Duration::days(2))
        .format("%Y-%m-%d")
        .to_string();
    let placed: serde_json::Value = serde_json::from_str(&dev.cli_ok(
        "dr.ada",
        &[
            "order",
            "create",
            "--patient",
            "P-GOLD",
            "--site",
            "site-a",
            "--collection-date",
            &date,
            "--json",
        ],
    ))
    .expect("order JSON");
    let order_id = placed["order_id"].as_str().expect("order id").to_owned();
    client
        .goto(&format!("{console}/orders/{order_id}"))
        .await
        .expect("order page");
    expect_text(&client, "order page", "Process against the golden batch").await;
    // The page follows the batch: new steps and samples are drawn as they arrive,
    // and expansion's five parameters each over its band of the 152 released
    // history batches.
    follow_the_golden_batch(&client, "the hub's order page", 4).await;
    look_at_the_golden_batch(&client, &axe, &mut shots, "golden-batch-live").await;
    // The API says the same of the same batch.
    dev.login(GRACE.0, GRACE.1);
    let api: serde_json::Value =
        serde_json::from_str(&dev.cli_ok(GRACE.0, &["analytics", "golden", &order_id, "--json"]))
            .expect("golden JSON");
    let expansion = api["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step_id"] == "expansion")
        .expect("expansion sampled");
    assert_eq!(
        expansion["parameters"]
            .as_array()
            .expect("parameters")
            .len(),
        5
    );
    for p in expansion["parameters"].as_array().expect("parameters") {
        assert!(p["released_batches"].as_u64().expect("count") >= 150, "{p}");
    }

    // At the site: the technician's batch page draws the site's own samples over
    // the band the hub sends, and follows the batch too.
    let site_console = dev
        .welcome
        .split("site-a http://")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '\n']).next())
        .map(|addr| format!("http://{addr}"))
        .unwrap_or_else(|| panic!("site-a's console in {}", dev.welcome));
    let batch_id = api["batch_id"].as_str().expect("batch id").to_owned();
    site_sign_in(
        &client,
        &site_console,
        ("tech.tom", "dev-technician-password"),
    )
    .await;
    client
        .goto(&format!("{site_console}/batches/{batch_id}"))
        .await
        .expect("the site's batch page");
    expect_text(
        &client,
        "site batch page",
        "Process against the golden batch",
    )
    .await;
    follow_the_golden_batch(&client, "the site's batch page", 6).await;
    assert!(
        client
            .find(Locator::Css("[data-golden-note]"))
            .await
            .is_err(),
        "a fresh band from the hub, nothing to say about it"
    );
    look_at_the_golden_batch(&client, &axe, &mut shots, "site-golden-batch-live").await;
    client.close().await.expect("close the browser");
    dev.stop().await;
}

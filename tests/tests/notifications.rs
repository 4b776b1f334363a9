//! Notifications end to end, with real processes and real receivers: a hub and a
//! site agent, an SMTP server (Python `aiosmtpd`, tests/peers/smtp) and a webhook
//! receiver of the test's own that checks signatures. Receivers start down and come
//! back; what was queued meanwhile arrives once each, in order.

use carrel_tests::peers::{python, Peer};
use carrel_tests::scenario::{
    add_people, create_order, sign_release, wait_order_state, PHYSICIAN, QA,
};
use carrel_tests::webhook::{Answer, Receiver};
use carrel_tests::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// Fast polls, short timeouts and retries, and a link reported down after 3 s.
fn notifications_config(smtp_port: u16, max_attempts: u32) -> String {
    format!(
        "[notifications]\n\
         smtp_url = \"smtp://127.0.0.1:{smtp_port}\"\n\
         smtp_from = \"carrel@hub.test\"\n\
         allow_http_webhooks = true\n\
         webhook_allowlist = [\"127.0.0.1\"]\n\
         poll_interval_ms = 100\n\
         request_timeout_ms = 1000\n\
         retry_base_ms = 200\n\
         retry_max_ms = 800\n\
         max_attempts = {max_attempts}\n\
         link_down_after_secs = 3\n"
    )
}

/// Subscribes `user` to a webhook; returns (subscription id, secret).
fn subscribe_webhook(hub: &Hub, user: &str, kinds: &str, url: &str) -> (String, String) {
    let answer = hub.cli_json(
        user,
        &["notify", "subscribe", "--kinds", kinds, "--webhook", url],
        None,
    );
    let secret = str_field(&answer, "webhook_secret").to_owned();
    assert!(
        secret.len() >= 32,
        "a webhook gets a strong secret: {answer}"
    );
    (str_field(&answer, "subscription_id").to_owned(), secret)
}

fn subscribe_email(hub: &Hub, user: &str, kinds: &str, address: &str) -> String {
    let answer = hub.cli_json(
        user,
        &["notify", "subscribe", "--kinds", kinds, "--email", address],
        None,
    );
    assert_eq!(str_field(&answer, "webhook_secret"), "");
    str_field(&answer, "subscription_id").to_owned()
}

/// Every notification, oldest first, as QA sees them.
fn outbox(hub: &Hub) -> Vec<Value> {
    let rows = hub.cli_json(QA.0, &["notify", "outbox", "--all"], None);
    let mut rows = rows.as_array().expect("a list").clone();
    rows.reverse();
    rows
}

/// One notification as an administrator sees it (with why a delivery failed).
fn admin_view(hub: &Hub, notification_id: &str) -> Value {
    hub.ensure_admin();
    let rows = hub.cli_json("admin", &["notify", "outbox", "--all"], None);
    rows.as_array()
        .expect("a list")
        .iter()
        .find(|r| str_field(r, "notification_id") == notification_id)
        .cloned()
        .expect("the notification")
}

fn of_subscription<'a>(rows: &'a [Value], subscription_id: &str) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| str_field(r, "subscription_id") == subscription_id)
        .collect()
}

/// The e-mails the SMTP server saved, in order of arrival.
fn mails(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("mail directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read mail"))
        .collect()
}

fn header<'a>(mail: &'a str, name: &str) -> &'a str {
    mail.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
        .unwrap_or_default()
}

/// The hub's Prometheus metrics (over the console's HTTPS, trusting the hub's CA).
fn metrics(hub: &Hub) -> String {
    let console =
        std::fs::read_to_string(hub.data_dir().join("console.addr")).expect("console addr");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(hub.ca_cert())
        .arg(format!("https://{}/metrics", console.trim()))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn email_and_webhook_notifications_wait_for_receivers_that_are_down() {
    let Some(python) = python() else { return };
    let smtp_port = free_port();
    let mut receiver = Receiver::new(free_port());
    let hub = Hub::start_with(&notifications_config(smtp_port, 100)).await;
    add_people(&hub);
    hub.add_user("dr.other", "physician", "other-password-12");
    let token = hub.add_site("site-n");
    let mut agent = Agent::enroll(&hub, "site-n", &token)
        .expect("enrollment")
        .with_time_compression(200_000.0);
    agent.start();

    // QA follows every order by webhook; the ordering physician by e-mail; another
    // physician subscribes too but must hear nothing of someone else's order.
    let order_kinds = "order_dispatched,cells_received,awaiting_release,released";
    let (qa_sub, secret) = subscribe_webhook(&hub, QA.0, order_kinds, &receiver.url("qa"));
    receiver.set_secret("qa", &secret);
    let mail_sub = subscribe_email(&hub, PHYSICIAN.0, order_kinds, "dr.fault@clinic.test");
    let other_sub = subscribe_email(&hub, "dr.other", order_kinds, "dr.other@clinic.test");
    let listed = hub.cli_json(PHYSICIAN.0, &["notify", "list"], None);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // Both receivers are down while the order runs to release.
    let (order_id, batch_id) = create_order(&hub, "site-n", "PT-NOTE-1");
    wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;
    sign_release(&hub, &batch_id);
    wait_order_state(&hub, &order_id, "released", Duration::from_secs(30)).await;

    // Everything is queued, the head of each subscription is retried, none delivered.
    let queued = eventually(
        Duration::from_secs(30),
        "all four notifications of each subscription queued and retried",
        || {
            let rows = outbox(&hub);
            let ready = of_subscription(&rows, &qa_sub).len() == 4
                && of_subscription(&rows, &mail_sub).len() == 4
                && rows.iter().any(|r| {
                    r["attempts"].as_u64() >= Some(2) && str_field(r, "channel") == "webhook"
                })
                && rows.iter().any(|r| {
                    r["attempts"].as_u64() >= Some(2) && str_field(r, "channel") == "email"
                });
            async move { ready.then_some(rows) }
        },
    )
    .await;
    assert!(
        queued.iter().all(|r| str_field(r, "state") == "pending"),
        "{queued:?}"
    );
    assert!(of_subscription(&queued, &other_sub).is_empty());
    // A subscriber hears that delivery failed and when it is tried again; why (a
    // refused connection, which says something about the network) is for admins.
    let errors: Vec<&str> = queued
        .iter()
        .map(|r| str_field(r, "last_error"))
        .filter(|e| !e.is_empty())
        .collect();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("delivery failed; next attempt at ")),
        "{errors:?}"
    );
    hub.ensure_admin();
    let detailed = hub.cli_json("admin", &["notify", "outbox", "--all"], None);
    let errors: Vec<&str> = detailed
        .as_array()
        .expect("outbox")
        .iter()
        .map(|r| str_field(r, "last_error"))
        .filter(|e| !e.is_empty())
        .collect();
    assert!(errors.iter().any(|e| e.contains("webhook")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("SMTP")), "{errors:?}");
    assert!(receiver.received().is_empty());
    for row in &queued {
        assert!(
            !str_field(row, "summary").contains("PT-NOTE-1"),
            "no patient pseudonym: {row}"
        );
    }

    // They come back: everything arrives, once each, in order per subscription.
    let mail_dir = tempfile::tempdir().expect("mail dir");
    let _smtp = Peer::smtp(&python, smtp_port, mail_dir.path());
    receiver.start().await;
    let rows = eventually(
        Duration::from_secs(30),
        "every notification delivered",
        || {
            let rows = outbox(&hub);
            let done = rows.len() == 8 && rows.iter().all(|r| str_field(r, "state") == "delivered");
            async move { done.then_some(rows) }
        },
    )
    .await;
    let expected_kinds = [
        "order_dispatched",
        "cells_received",
        "awaiting_release",
        "released",
    ];
    let qa_rows = of_subscription(&rows, &qa_sub);
    assert_eq!(
        qa_rows
            .iter()
            .map(|r| str_field(r, "kind"))
            .collect::<Vec<_>>(),
        expected_kinds
    );

    let received = receiver.received();
    assert_eq!(
        received
            .iter()
            .map(|r| r.notification_id.as_str())
            .collect::<Vec<_>>(),
        qa_rows
            .iter()
            .map(|r| str_field(r, "notification_id"))
            .collect::<Vec<_>>(),
        "the webhook got each notification once, in order"
    );
    for r in &received {
        assert!(r.signature_valid, "signature of {}", r.notification_id);
        assert_eq!(str_field(&r.body, "notification_id"), r.notification_id);
        assert_eq!(str_field(&r.body, "batch_id"), batch_id);
        assert_eq!(str_field(&r.body, "site_id"), "site-n");
    }

    let delivered_mail = mails(mail_dir.path());
    let mail_rows = of_subscription(&rows, &mail_sub);
    assert_eq!(
        delivered_mail
            .iter()
            .map(|m| header(m, "Message-ID").to_owned())
            .collect::<Vec<_>>(),
        mail_rows
            .iter()
            .map(|r| format!("<{}@carrel>", str_field(r, "notification_id")))
            .collect::<Vec<_>>(),
        "each e-mail arrived once, in order"
    );
    for (mail, kind) in delivered_mail.iter().zip(expected_kinds) {
        assert_eq!(header(mail, "X-Envelope-To"), "dr.fault@clinic.test");
        assert!(header(mail, "Subject").contains(kind), "{mail}");
        assert!(
            !mail.contains("PT-NOTE-1"),
            "no patient pseudonym in e-mail: {mail}"
        );
    }

    // Nothing is sent again later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 4);
    assert_eq!(mails(mail_dir.path()).len(), 4);
    agent.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_link_down_is_notified_and_failing_receivers_are_retried_then_requeued() {
    let mut receiver = Receiver::new(free_port());
    let hub = Hub::start_with(&notifications_config(free_port(), 3)).await;
    hub.add_user(QA.0, "qa", QA.1);
    hub.add_user("admin.ann", "admin", "admin-password-12");
    let token = hub.add_site("site-l");
    let mut agent = Agent::enroll(&hub, "site-l", &token).expect("enrollment");
    agent.start();
    let (sub, secret) = subscribe_webhook(
        &hub,
        QA.0,
        "site_link_down,site_link_restored",
        &receiver.url("links"),
    );
    receiver.set_secret("links", &secret);
    receiver.answer(Answer::Error);
    receiver.start().await;

    // A connected site is not down, however quiet (the link records contact).
    eventually(Duration::from_secs(20), "the site to connect", || {
        let log = hub.log();
        async move { log.contains("site link open").then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(outbox(&hub).is_empty(), "a live site was reported down");

    // The agent stops: one link-down notification; the receiver answers 500 until
    // the attempts are used up.
    agent.kill();
    let failed = eventually(
        Duration::from_secs(30),
        "the link-down notification to fail",
        || {
            let rows = outbox(&hub);
            let found = rows
                .iter()
                .find(|r| {
                    str_field(r, "kind") == "site_link_down" && str_field(r, "state") == "failed"
                })
                .cloned();
            async move { found }
        },
    )
    .await;
    assert_eq!(failed["attempts"].as_u64(), Some(3));
    let id = str_field(&failed, "notification_id").to_owned();
    assert!(
        str_field(&failed, "last_error").contains("no more attempts"),
        "{failed}"
    );
    assert!(str_field(&admin_view(&hub, &id), "last_error").contains("500"));
    assert_eq!(receiver.refused(), 3);
    assert_eq!(outbox(&hub).len(), 1, "one notification per outage");
    let shown = metrics(&hub);
    assert!(
        shown.contains("carrel_hub_notifications{state=\"failed\"} 1\n"),
        "{shown}"
    );
    assert!(
        shown.contains("carrel_hub_notifications{state=\"pending\"} 0\n"),
        "{shown}"
    );

    // Requeued while the receiver is slow: each attempt times out, and fails again.
    receiver.answer(Answer::Slow(Duration::from_secs(3)));
    let out = hub.cli(QA.0, &["notify", "requeue", &id], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = eventually(
        Duration::from_secs(30),
        "the slow receiver to time out three times",
        || {
            let rows = outbox(&hub);
            let found = rows
                .iter()
                .find(|r| {
                    str_field(r, "notification_id") == id && str_field(r, "state") == "failed"
                })
                .cloned();
            async move { found }
        },
    )
    .await;
    assert!(
        str_field(&admin_view(&hub, &id), "last_error").contains("no answer within 1000 ms"),
        "{failed}"
    );
    assert!(receiver.received().is_empty());

    // A physician may not requeue; an admin may, and now it is delivered, once.
    receiver.answer(Answer::Ok);
    hub.add_user("dr.p", "physician", "physician-password-2");
    let refused = hub.cli("dr.p", &["notify", "requeue", &id], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("qa or admin"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    hub.cli_ok("admin.ann", &["notify", "requeue", &id], None);
    eventually(
        Duration::from_secs(10),
        "the requeued notification delivered",
        || {
            let n = receiver.received().len();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;

    // The site comes back: restored, delivered after the down one.
    agent.start();
    let received = eventually(
        Duration::from_secs(30),
        "the link-restored notification",
        || {
            let received = receiver.received();
            async move { (received.len() >= 2).then_some(received) }
        },
    )
    .await;
    let kinds: Vec<&str> = received
        .iter()
        .map(|r| str_field(&r.body, "kind"))
        .collect();
    assert_eq!(kinds, ["site_link_down", "site_link_restored"]);
    assert!(received.iter().all(|r| r.signature_valid));
    let ids: HashSet<&str> = received
        .iter()
        .map(|r| r.notification_id.as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(of_subscription(&outbox(&hub), &sub).len(), 2);
    agent.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_subscriptions_are_refused_with_clear_errors_and_store_nothing() {
    // Outside dev mode http:// webhooks are refused.
    let hub = Hub::start_with(
        "[notifications]\nsmtp_url = \"smtp://127.0.0.1:2525\"\nwebhook_allowlist = [\"receiver.test\", \"*.hooks.test\"]\n",
    )
    .await;
    hub.add_user(QA.0, "qa", QA.1);
    let refused = |args: &[&str]| {
        let mut all = vec!["notify", "subscribe"];
        all.extend_from_slice(args);
        let out = hub.cli(QA.0, &all, None);
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let error = refused(&[
        "--kinds",
        "released",
        "--webhook",
        "http://receiver.test/hook",
    ]);
    assert!(error.contains("is not https"), "{error}");
    let error = refused(&[
        "--kinds",
        "released",
        "--webhook",
        "ftp://receiver.test/hook",
    ]);
    assert!(error.contains("must start with https://"), "{error}");
    let error = refused(&[
        "--kinds",
        "relased",
        "--webhook",
        "https://receiver.test/hook",
    ]);
    assert!(
        error.contains("unknown notification kind \"relased\""),
        "{error}"
    );
    assert!(error.contains("released"), "names the known kinds: {error}");
    // Only to the allow-list, and never to an internal address it does not name.
    let error = refused(&["--kinds", "released", "--webhook", "https://127.0.0.1:1/"]);
    assert!(error.contains("internal address"), "{error}");
    assert!(error.contains("allow-list"), "{error}");
    let error = refused(&[
        "--kinds",
        "released",
        "--webhook",
        "https://elsewhere.test/hook",
    ]);
    assert!(
        error.contains("not on the hub's webhook allow-list"),
        "{error}"
    );
    assert!(
        error.contains("receiver.test, *.hooks.test"),
        "names the list: {error}"
    );
    let error = refused(&["--kinds", "released", "--email", "qa at clinic"]);
    assert!(error.contains("is not an e-mail address"), "{error}");
    let error = refused(&[
        "--kinds",
        "released",
        "--email",
        "qa@clinic.test",
        "--site",
        "nowhere",
    ]);
    assert!(error.contains("site \"nowhere\" not found"), "{error}");
    let listed = hub.cli_json(QA.0, &["notify", "list", "--all"], None);
    assert_eq!(listed, serde_json::json!([]));

    // A good one is kept, and its secret is not shown again.
    let (id, _secret) = subscribe_webhook(
        &hub,
        QA.0,
        "released,rejected",
        "https://receiver.test/hook",
    );
    let listed = hub.cli_json(QA.0, &["notify", "list"], None);
    assert_eq!(str_field(&listed[0], "subscription_id"), id);
    assert!(listed[0].get("webhook_secret").is_none());
    let db = hub.db().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'notification.subscribed'",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(audited, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_after_release_marks_the_batch_notifies_and_waits_for_qa_review() {
    let mut receiver = Receiver::new(free_port());
    receiver.start().await;
    let hub = Hub::start_with(&notifications_config(free_port(), 5)).await;
    add_people(&hub);
    let token = hub.add_site("site-l");
    let mut agent = Agent::enroll(&hub, "site-l", &token)
        .expect("enrollment")
        .with_time_compression(200_000.0);
    agent.start();
    hub.add_person("tech.late", "technician", "tech-late-password-1", "site-l");
    agent.wait_for_person("tech.late", "active").await;
    let (_, secret) = subscribe_webhook(&hub, QA.0, "changed_after_decision", &receiver.url("qa"));
    receiver.set_secret("qa", &secret);
    let (_, secret) = subscribe_webhook(
        &hub,
        PHYSICIAN.0,
        "changed_after_decision",
        &receiver.url("physician"),
    );
    receiver.set_secret("physician", &secret);

    let (order_id, batch_id) = create_order(&hub, "site-l", "PT-LATE-1");
    wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;
    sign_release(&hub, &batch_id);
    wait_order_state(&hub, &order_id, "released", Duration::from_secs(30)).await;
    assert!(receiver.received().is_empty(), "nothing changed yet");

    // The sterility culture reads positive after release: a retest of the
    // simulator's early reading, which it replaces as the value that counts.
    let early: i64 = sqlx::query_scalar(
        "SELECT seq FROM events WHERE kind = 'qc_result' AND body LIKE '%\"sterility\"%' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&agent.db().await)
    .await
    .expect("the simulator's sterility reading");
    let early = early.to_string();
    let out = agent.cli(
        &[
            "qc",
            "--batch",
            &batch_id,
            "--test",
            "sterility",
            "--value",
            "growth detected",
            "--retest-of",
            &early,
            "--user",
            "tech.late",
        ],
        "tech-late-password-1\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = eventually(
        Duration::from_secs(30),
        "the hub to mark the batch changed after its decision",
        || {
            let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
            let marked = record["changed_after_decision"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            async move { marked.then_some(record) }
        },
    )
    .await;
    assert_eq!(
        str_field(&record["changed_after_decision"][0], "kind"),
        "QC result",
        "{record}"
    );
    // QA and the ordering physician are told.
    let heard = eventually(Duration::from_secs(30), "both to be told", || {
        let heard = receiver.received();
        async move { (heard.len() >= 2).then_some(heard) }
    })
    .await;
    let mut hooks: Vec<&str> = heard.iter().map(|r| r.hook.as_str()).collect();
    hooks.sort();
    assert_eq!(hooks, ["physician", "qa"]);
    for r in &heard {
        assert!(r.signature_valid);
        assert_eq!(r.body["kind"], "changed_after_decision", "{}", r.body);
    }
    let text = hub.cli_ok(QA.0, &["release", "show", &batch_id], None);
    assert!(text.contains("CHANGED AFTER DECISION"), "{text}");

    // QA reviews the new record with a signature: the mark goes.
    let sha = str_field(&record, "record_sha256").to_owned();
    hub.cli_ok(
        QA.0,
        &[
            "release",
            "review-change",
            &batch_id,
            "--comment",
            "sterility positive after release: recall started with the treating physician",
            "--record-sha256",
            &sha,
            "--user",
            QA.0,
        ],
        Some(QA.1),
    );
    let after = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    assert_eq!(
        after["changed_after_decision"].as_array().map(Vec::len),
        Some(0),
        "{after}"
    );
    assert_eq!(after["change_reviews"].as_array().map(Vec::len), Some(1));
    assert!(str_field(&after["change_reviews"][0], "comment").contains("recall started"));
}

/// A site whose people enter the release tests: QA releases conditionally before
/// the 14-day sterility culture is in; it reads positive after release. The
/// physician hears at once by e-mail (real SMTP), QA by webhook, both marked
/// highest priority; a patient follow-up opens, the release can no longer be
/// completed, and QA closes the follow-up with a signature.
#[tokio::test(flavor = "multi_thread")]
async fn sterility_growth_after_a_conditional_release_notifies_at_once_and_opens_a_follow_up() {
    let Some(python) = python() else { return };
    let smtp_port = free_port();
    let mail_dir = tempfile::tempdir().expect("mail dir");
    let _smtp = Peer::smtp(&python, smtp_port, mail_dir.path());
    let mut receiver = Receiver::new(free_port());
    receiver.start().await;
    let hub = Hub::start_with(&notifications_config(smtp_port, 5)).await;
    add_people(&hub);
    let token = hub.add_site("site-c");
    let mut agent = Agent::enroll(&hub, "site-c", &token)
        .expect("enrollment")
        .with_time_compression(200_000.0);
    agent.configure(&["simulator", "qc_laboratory"], toml::Value::Boolean(false));
    agent.start();
    hub.add_person("tech.lab", "technician", "tech-lab-password-1", "site-c");
    agent.wait_for_person("tech.lab", "active").await;
    subscribe_email(
        &hub,
        PHYSICIAN.0,
        "failed_after_release",
        "dr.fault@clinic.test",
    );
    let (_, secret) = subscribe_webhook(&hub, QA.0, "failed_after_release", &receiver.url("qa"));
    receiver.set_secret("qa", &secret);

    let (order_id, batch_id) = create_order(&hub, "site-c", "PT-COND-1");
    wait_order_state(&hub, &order_id, "in_process", Duration::from_secs(60)).await;
    let qc = |test: &str, value: &str| {
        let out = agent.cli(
            &[
                "qc", "--batch", &batch_id, "--test", test, "--value", value, "--user", "tech.lab",
            ],
            "tech-lab-password-1\n",
        );
        assert!(
            out.status.success(),
            "{test}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The laboratory's results, except the sterility culture (14 days).
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
    wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;

    // Sterility is outstanding: a plain release is refused, with the reason.
    let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    assert_eq!(
        record["outstanding_results"],
        serde_json::json!(["sterility"])
    );
    let sha = str_field(&record, "record_sha256").to_owned();
    let sign = |meaning: &str, sha: &str| {
        hub.cli(
            QA.0,
            &[
                "release",
                "sign",
                &batch_id,
                "--meaning",
                meaning,
                "--record-sha256",
                sha,
                "--user",
                QA.0,
                "--acknowledge-signature-meaning",
            ],
            Some(QA.1),
        )
    };
    let refused = sign("released", &sha);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("still outstanding (sterility)") && why.contains("released-conditionally"),
        "{why}"
    );
    assert_eq!(scenario::order_state(&hub, &order_id), "awaiting_release");

    let signed = sign("released-conditionally", &sha);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(String::from_utf8_lossy(&signed.stdout).contains("Released conditionally by"));
    // The physician sees a conditional release; the site records it as such.
    let shown = order_show(&hub, PHYSICIAN.0, &order_id);
    assert_eq!(str_field(&shown, "state"), "released");
    assert_eq!(shown["release_awaits"], serde_json::json!(["sterility"]));
    let text = hub.cli_ok(PHYSICIAN.0, &["order", "show", &order_id], None);
    assert!(
        text.contains("released conditionally (awaiting sterility)"),
        "{text}"
    );
    agent
        .wait_for_decision(&batch_id, "released_conditionally")
        .await;
    assert!(mails(mail_dir.path()).is_empty(), "nothing urgent yet");

    // Day 14: the culture shows growth.
    qc("sterility", "growth detected");
    let mail = eventually(Duration::from_secs(30), "the physician's e-mail", || {
        let found = mails(mail_dir.path());
        async move { found.into_iter().next() }
    })
    .await;
    assert_eq!(header(&mail, "X-Envelope-To"), "dr.fault@clinic.test");
    assert!(header(&mail, "Subject").contains("URGENT"), "{mail}");
    assert!(
        header(&mail, "Subject").contains("failed_after_release"),
        "{mail}"
    );
    assert_eq!(header(&mail, "X-Priority"), "1 (Highest)");
    assert_eq!(header(&mail, "Importance"), "high");
    assert!(
        !mail.contains("PT-COND-1"),
        "no patient pseudonym in e-mail"
    );
    let heard = eventually(Duration::from_secs(30), "QA's webhook", || {
        let heard = receiver.received();
        async move { heard.into_iter().next() }
    })
    .await;
    assert!(heard.signature_valid);
    assert_eq!(heard.body["kind"], "failed_after_release");
    assert_eq!(heard.body["priority"], "highest");
    assert_eq!(heard.body["batch_id"], batch_id.as_str());

    // The site holds the product back: no hand-over scan is taken.
    let scan = agent.cli(
        &[
            "scan",
            "--batch",
            &batch_id,
            "--checkpoint",
            "handover",
            "--location",
            "ward 3",
            "--user",
            "tech.lab",
        ],
        "tech-lab-password-1\n",
    );
    assert!(!scan.status.success());
    let said = String::from_utf8_lossy(&scan.stderr);
    assert!(said.contains("do not hand over or infuse"), "{said}");

    // The follow-up is open; the release cannot be completed.
    let open = hub.cli_json(QA.0, &["release", "follow-ups"], None);
    let open = open.as_array().expect("a list");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(str_field(&open[0], "test_id"), "sterility");
    assert_eq!(str_field(&open[0], "batch_id"), batch_id);
    let seq = open[0]["site_seq"].as_u64().expect("site seq").to_string();
    let record = hub.cli_json(QA.0, &["release", "show", &batch_id], None);
    let refused = sign("release-completed", str_field(&record, "record_sha256"));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot be completed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // QA closes it with a signature; a one-word outcome is refused first.
    let close = |outcome: &str| {
        hub.cli(
            QA.0,
            &[
                "release",
                "close-follow-up",
                &batch_id,
                &seq,
                "--outcome",
                outcome,
                "--user",
                QA.0,
            ],
            Some(QA.1),
        )
    };
    let short = close("done");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least"));
    let closed = close(
        "physician informed at once; patient admitted, blood cultures taken, antibiotics started",
    );
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    let open = hub.cli_json(QA.0, &["release", "follow-ups"], None);
    assert_eq!(open, serde_json::json!([]));
    let all = hub.cli_json(QA.0, &["release", "follow-ups", "--all"], None);
    assert_eq!(str_field(&all[0], "closed_by"), QA.0);
    let db = hub.db().await;
    let closures: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM follow_up_closures")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(closures, 1);
    agent.kill();
}

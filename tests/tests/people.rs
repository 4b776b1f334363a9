//! People at the site, with the real hub and agent: the hub's directory reaches the
//! site over its link; people sign in with their own passwords at the site's command
//! line (the console's sign-in is in `browser.rs`); a person disabled at the hub is
//! refused at an online site within seconds, and at a partitioned one once the link
//! returns, with what they recorded meanwhile flagged for QA; failed sign-ins lock a
//! person at the site and the hub's audit trail shows it; and a QA person who took
//! part in a batch at the site may not release it.

use carrel_tests::proxy::{Fault, Proxy};
use carrel_tests::scenario::*;
use carrel_tests::*;
use std::process::Output;
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn password_of(username: &str) -> String {
    // The policy refuses a password with the user name in it.
    format!("{}-password-1", username.to_lowercase().replace('.', "-"))
}

/// A viability result recorded at the site's command line by `user`, typing
/// `password`. When viability already has a result, the site says which result
/// a new one must retest; like a technician, this sends it again naming that one.
fn qc_typing(agent: &Agent, batch: &str, user: &str, password: &str, value: &str) -> Output {
    let args = [
        "qc",
        "--batch",
        batch,
        "--test",
        "viability",
        "--value",
        value,
        "--user",
        user,
    ];
    let out = agent.cli(&args, &format!("{password}\n"));
    let said = text(&out);
    let Some(current) = said
        .split("--retest-of ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|seq| !seq.is_empty() && said.contains("already has a result"))
    else {
        return out;
    };
    let current = current.to_owned();
    agent.cli(
        &[args.as_slice(), &["--retest-of", &current]].concat(),
        &format!("{password}\n"),
    )
}

fn qc_as(agent: &Agent, batch: &str, user: &str, value: &str) -> Output {
    qc_typing(agent, batch, user, &password_of(user), value)
}

/// A scan at the command line by `people` (the first records, the others verify).
fn scan(agent: &Agent, batch: &str, checkpoint: &str, label: &str, people: &[&str]) -> Output {
    let mut args = vec![
        "scan",
        "--batch",
        batch,
        "--checkpoint",
        checkpoint,
        "--user",
        people[0],
    ];
    for other in &people[1..] {
        args.extend(["--second-user", other]);
    }
    let mut stdin: String = people.iter().map(|p| password_of(p) + "\n").collect();
    stdin.push_str(label);
    stdin.push('\n');
    agent.cli(&args, &stdin)
}

async fn qc_results(agent: &Agent) -> i64 {
    count(
        &agent.db().await,
        "SELECT COUNT(*) FROM events WHERE kind = 'qc_result'",
    )
    .await
}

/// A hub and one site whose agent dials it through a proxy, simulated instruments
/// and no simulated operators; `people` (technicians) work there.
async fn site_with_people(site: &str, people: &[&str]) -> (Hub, Agent, Proxy) {
    let hub = Hub::start().await;
    add_people(&hub);
    let token = hub.add_site(site);
    let mut agent = Agent::enroll(&hub, site, &token)
        .expect("enroll")
        .with_time_compression(400_000.0);
    agent.configure(&["simulator", "auto_scan"], false.into());
    let proxy = Proxy::start(hub.addr());
    agent.dial(&proxy.url());
    agent.start();
    for person in people {
        hub.add_person(person, "technician", &password_of(person), site);
    }
    for person in people {
        agent.wait_for_person(person, "active").await;
    }
    (hub, agent, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_person_is_refused_online_within_seconds_and_flagged_after_a_partition() {
    let (hub, agent, proxy) =
        site_with_people("site-dir", &["tech.ann", "tech.bob", "tech.cy"]).await;
    let (_, batch) = create_order(&hub, "site-dir", "P-8101");
    eventually(Duration::from_secs(30), "the batch at the site", || {
        let out = qc_as(&agent, &batch, "tech.ann", "91");
        async move { out.status.success().then_some(()) }
    })
    .await;

    // Online: disabled at the hub, refused at the site within 5 s.
    let disabled_at = Instant::now();
    hub.cli_ok(
        "admin",
        &["user", "disable", "tech.cy", "--reason", "left the unit"],
        None,
    );
    eventually(
        Duration::from_secs(5),
        "tech.cy to be refused at the site",
        || {
            let out = qc_as(&agent, &batch, "tech.cy", "90");
            async move {
                text(&out)
                    .contains("tech.cy is disabled at the hub")
                    .then_some(())
            }
        },
    )
    .await;
    assert!(disabled_at.elapsed() <= Duration::from_secs(5));
    let before = qc_results(&agent).await;

    // Partitioned: the site keeps the directory it had. tech.bob, disabled at the hub
    // meanwhile, still records there; tech.ann works on.
    proxy.set(Fault::BlackHole);
    wait_log(
        "the agent",
        || agent.log(),
        "link to the hub lost",
        0,
        Duration::from_secs(20),
    )
    .await;
    hub.cli_ok(
        "admin",
        &[
            "user",
            "disable",
            "tech.bob",
            "--reason",
            "badge reported stolen",
        ],
        None,
    );
    // The site's clock must pass the hub's time of disabling before tech.bob records.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = qc_as(&agent, &batch, "tech.bob", "88");
    assert!(
        out.status.success(),
        "offline, the site had no news: {}",
        text(&out)
    );
    let out = qc_as(&agent, &batch, "tech.ann", "89");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(qc_results(&agent).await, before + 2);

    // The link returns: the site hears it, and refuses tech.bob from then on.
    proxy.set(Fault::None);
    agent.wait_for_person("tech.bob", "disabled").await;
    let out = qc_as(&agent, &batch, "tech.bob", "87");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("disabled at the hub"), "{}", text(&out));
    assert_eq!(
        qc_results(&agent).await,
        before + 2,
        "refused: nothing recorded"
    );

    // QA review flags what tech.bob recorded while the site was offline, and only that.
    let flagged = eventually(
        Duration::from_secs(30),
        "the offline records to reach the hub and be flagged",
        || {
            let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
            async move {
                let flagged: Vec<String> = record["exceptions"]
                    .as_array()
                    .expect("exceptions")
                    .iter()
                    .map(|e| e.to_string())
                    .filter(|e| e.contains("who made it"))
                    .collect();
                (!flagged.is_empty()).then_some(flagged)
            }
        },
    )
    .await;
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(
        flagged[0].contains("tech.bob was disabled at the hub at"),
        "{flagged:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_wrong_passwords_lock_a_person_at_the_site_and_the_hub_audits_it() {
    let (hub, agent, _proxy) = site_with_people("site-lock", &["tech.dee"]).await;
    let (_, batch) = create_order(&hub, "site-lock", "P-8201");
    eventually(Duration::from_secs(30), "the batch at the site", || {
        let out = qc_as(&agent, &batch, "tech.dee", "91");
        async move { out.status.success().then_some(()) }
    })
    .await;
    let before = qc_results(&agent).await;

    for attempt in 1..=9 {
        let out = qc_typing(&agent, &batch, "tech.dee", "not-my-password", "90");
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("{} more failed attempt(s)", 10 - attempt)),
            "{}",
            text(&out)
        );
    }
    let out = qc_typing(&agent, &batch, "tech.dee", "not-my-password", "90");
    assert!(
        text(&out).contains("tech.dee is locked at this site"),
        "{}",
        text(&out)
    );
    let out = qc_as(&agent, &batch, "tech.dee", "90");
    assert!(
        text(&out).contains("locked at this site"),
        "the right password does not open a lock: {}",
        text(&out)
    );
    assert_eq!(qc_results(&agent).await, before, "nothing recorded");

    // The hub's audit trail shows the lock, reported by the site.
    let audit = eventually(
        Duration::from_secs(30),
        "the lock in the hub's audit trail",
        || {
            let out = hub.cli_ok("admin", &["audit", "list"], None);
            async move {
                out.lines()
                    .find(|l| l.contains("user.locked_at_site"))
                    .map(str::to_owned)
            }
        },
    )
    .await;
    assert!(audit.contains("site-lock"), "{audit}");
    assert!(audit.contains("user/tech.dee"), "{audit}");
    assert!(audit.contains("10 failed sign-ins"), "{audit}");

    // The admin sends the entry again: unlocked at the site.
    hub.assign("tech.dee", "site-lock");
    eventually(Duration::from_secs(10), "tech.dee to be unlocked", || {
        let out = qc_as(&agent, &batch, "tech.dee", "92");
        async move { out.status.success().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qa_person_who_verified_a_scan_may_not_release_the_batch() {
    let (hub, agent, _proxy) = site_with_people("site-qa", &["tech.eve"]).await;
    const VERA: (&str, &str) = ("qa.vera", "qa-vera-password-1");
    hub.add_person(VERA.0, "qa", VERA.1, "site-qa");
    agent.wait_for_person(VERA.0, "active").await;
    let (order_id, batch) = create_order(&hub, "site-qa", "P-8301");
    let coi =
        carrel_proto::coi::Coi::parse(str_field(&order_show(&hub, PHYSICIAN.0, &order_id), "coi"))
            .expect("COI");
    // qa.vera verifies every manufacturing scan, her name in capitals.
    for checkpoint in ["collection", "receipt", "manufacturing-start", "fill"] {
        let done = eventually(
            Duration::from_secs(60),
            &format!("the scan at {checkpoint}"),
            || {
                let out = scan(
                    &agent,
                    &batch,
                    checkpoint,
                    &coi.barcode_data(),
                    &["tech.eve", "QA.VERA"],
                );
                async move { out.status.success().then_some(out) }
            },
        )
        .await;
        assert!(text(&done).contains("MATCH"), "{}", text(&done));
    }
    wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(90)).await;

    let record = hub.cli_json(VERA.0, &["release", "show", &batch], None);
    let out = hub.cli(
        VERA.0,
        &[
            "release",
            "sign",
            &batch,
            "--meaning",
            "released",
            "--record-sha256",
            record["record_sha256"].as_str().expect("sha"),
            "--user",
            VERA.0,
            "--acknowledge-signature-meaning",
        ],
        Some(VERA.1),
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("PermissionDenied") || said.contains("permission"),
        "{said}"
    );
    assert!(said.contains("qa.vera took part in this batch"), "{said}");
    assert_eq!(order_state(&hub, &order_id), "awaiting_release");

    // Another QA person, who took no part, releases it.
    sign_release(&hub, &batch);
    assert_eq!(order_state(&hub, &order_id), "released");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bedside_badge_signs_in_with_its_pin() {
    let (hub, agent, _proxy) = site_with_people("site-badge", &["nurse.ida"]).await;
    let issued = hub.cli_json("admin", &["user", "badge", "nurse.ida"], Some("271828"));
    let badge = str_field(&issued, "badge_id").to_owned();
    assert!(badge.starts_with("BDG-") && badge.len() == 16, "{badge}");
    let short = hub.cli("admin", &["user", "badge", "nurse.ida"], Some("1234"));
    assert!(!short.status.success());
    assert!(
        text(&short).contains("6 or more digits"),
        "{}",
        text(&short)
    );

    let (_, batch) = create_order(&hub, "site-badge", "P-8501");
    // The scanner types the badge where the user name goes; the PIN follows.
    let badge_qc = |pin: &str| qc_typing(&agent, &batch, &badge.to_lowercase(), pin, "93");
    let recorded = eventually(
        Duration::from_secs(30),
        "the badge to work at the site",
        || {
            let out = badge_qc("271828");
            async move { out.status.success().then_some(out) }
        },
    )
    .await;
    assert!(
        text(&recorded).contains("within specification"),
        "{}",
        text(&recorded)
    );
    let out = badge_qc("000000");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("wrong PIN for nurse.ida"),
        "{}",
        text(&out)
    );

    let by = eventually(Duration::from_secs(30), "the result at the hub", || {
        let record = hub.cli_json(QA.0, &["release", "show", &batch], None);
        async move {
            record["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .find(|e| e["kind"] == "QC result")
                .map(|e| str_field(e, "by").to_owned())
        }
    })
    .await;
    assert_eq!(by, "Test nurse.ida (nurse.ida)");
}

/// Waits until the site's directory entry of `username` (verifier, role) satisfies `ok`.
async fn wait_for_entry(agent: &Agent, username: &str, ok: impl Fn(&str, &str) -> bool) {
    let db = agent.db().await;
    let ok = &ok;
    eventually(
        Duration::from_secs(15),
        &format!("{username}'s new entry at the site"),
        || {
            let db = db.clone();
            async move {
                let found: Option<(String, String)> =
                    sqlx::query_as("SELECT password_verifier, role FROM people WHERE username = ?")
                        .bind(username)
                        .fetch_optional(&db)
                        .await
                        .ok()
                        .flatten();
                found.filter(|(v, r)| ok(v, r)).map(|_| ())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_reset_role_change_and_own_change_reach_the_hub_and_the_site() {
    let (hub, agent, _proxy) = site_with_people("site-acc", &["tech.eve"]).await;
    let (order_id, batch) = create_order(&hub, "site-acc", "P-8301");
    eventually(Duration::from_secs(30), "the batch at the site", || {
        let out = qc_as(&agent, &batch, "tech.eve", "91");
        async move { out.status.success().then_some(()) }
    })
    .await;
    let old = password_of("tech.eve");
    let eve = hub.login("tech.eve", &old).await.expect("signed in");

    // The administrator resets tech.eve's password: the code is shown once; the old
    // password and the open session stop working at the hub, and at the site.
    let reset = hub.cli_json(
        "admin",
        &["user", "reset", "tech.eve", "--reason", "forgot it"],
        None,
    );
    let code = str_field(&reset, "reset_code").to_owned();
    assert!(code.len() >= 32, "{reset}");
    let refused = hub.login("tech.eve", &old).await.expect_err("old password");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let whoami = carrel_proto::pb::auth_service_client::AuthServiceClient::new(hub.channel().await)
        .who_am_i(authed(&eve, carrel_proto::pb::WhoAmIRequest {}))
        .await
        .expect_err("the open session ended");
    assert_eq!(whoami.code(), tonic::Code::Unauthenticated);
    wait_for_entry(&agent, "tech.eve", |verifier, _| {
        verifier == "!reset-pending"
    })
    .await;
    let out = qc_typing(&agent, &batch, "tech.eve", &old, "90");
    assert!(
        !out.status.success(),
        "the old password at the site: {}",
        text(&out)
    );

    // A wrong code, then a password the policy refuses, then the person's choice.
    let out = hub.cli(
        "tech.eve",
        &["password", "reset", "--user", "tech.eve"],
        Some("not-the-code\nmy-own-choice-of-words"),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("reset code is wrong"), "{}", text(&out));
    let out = hub.cli(
        "tech.eve",
        &["password", "reset", "--user", "tech.eve"],
        Some(&format!("{code}\nPassword2026!")),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("most common"), "{}", text(&out));
    hub.cli_ok(
        "tech.eve",
        &["password", "reset", "--user", "tech.eve"],
        Some(&format!("{code}\nmy-own-choice-of-words")),
    );
    let out = hub.cli(
        "tech.eve",
        &["password", "reset", "--user", "tech.eve"],
        Some(&format!("{code}\nanother-choice-of-words")),
    );
    assert!(!out.status.success(), "a reset code works once");
    hub.login("tech.eve", "my-own-choice-of-words")
        .await
        .expect("the chosen password");
    wait_for_entry(&agent, "tech.eve", |verifier, _| {
        verifier.starts_with("$argon2")
    })
    .await;
    let out = qc_typing(&agent, &batch, "tech.eve", "my-own-choice-of-words", "89");
    assert!(
        out.status.success(),
        "the chosen password at the site: {}",
        text(&out)
    );

    // tech.eve changes it again, signed in; a wrong current password changes nothing.
    hub.cli_ok(
        "tech.eve",
        &["login", "--user", "tech.eve"],
        Some("my-own-choice-of-words"),
    );
    let out = hub.cli(
        "tech.eve",
        &["password", "change"],
        Some("not-my-password\nthird-choice-of-words"),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("current password is wrong"),
        "{}",
        text(&out)
    );
    hub.cli_ok(
        "tech.eve",
        &["password", "change"],
        Some("my-own-choice-of-words\nthird-choice-of-words"),
    );
    hub.login("tech.eve", "third-choice-of-words")
        .await
        .expect("the new password");

    // The administrator makes tech.eve a physician: sessions end, the site hears of
    // it (a physician records no QC), and nobody changes their own role.
    let session = hub
        .login("tech.eve", "third-choice-of-words")
        .await
        .expect("session");
    // A stream the person follows an order with ends with their session.
    let mut watching =
        carrel_proto::pb::order_service_client::OrderServiceClient::new(hub.channel().await)
            .watch_order(authed(
                &session,
                carrel_proto::pb::WatchOrderRequest {
                    order_id: order_id.clone(),
                },
            ))
            .await
            .expect("watch")
            .into_inner();
    watching.message().await.expect("first").expect("the order");
    hub.cli_ok(
        "admin",
        &[
            "user",
            "role",
            "tech.eve",
            "--role",
            "physician",
            "--reason",
            "moved to the clinic",
        ],
        None,
    );
    let whoami = carrel_proto::pb::auth_service_client::AuthServiceClient::new(hub.channel().await)
        .who_am_i(authed(&session, carrel_proto::pb::WhoAmIRequest {}))
        .await
        .expect_err("sessions end with a role change");
    assert_eq!(whoami.code(), tonic::Code::Unauthenticated);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watching.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within seconds");
    assert_eq!(
        ended.expect_err("ended with a status").code(),
        tonic::Code::Unauthenticated
    );
    wait_for_entry(&agent, "tech.eve", |_, role| role == "physician").await;
    let out = qc_typing(&agent, &batch, "tech.eve", "third-choice-of-words", "88");
    assert!(
        !out.status.success(),
        "a physician records no QC: {}",
        text(&out)
    );
    let out = hub.cli(
        "admin",
        &["user", "role", "admin", "--role", "qa", "--reason", "try"],
        None,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("your own role"), "{}", text(&out));

    // With two administrators, granting qa (or admin) needs the second one.
    hub.add_user("admin.two", "admin", "second-operator-pw-1");
    let asked = hub.cli_ok(
        "admin",
        &[
            "user", "role", "tech.eve", "--role", "qa", "--reason", "joins QA",
        ],
        None,
    );
    assert!(
        asked.contains("waits for a second administrator"),
        "{asked}"
    );
    let out = hub.cli(
        "admin",
        &["user", "approve", "tech.eve", "--reason", "my own request"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("another administrator"),
        "{}",
        text(&out)
    );
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE username = 'tech.eve'")
        .fetch_one(&hub.db().await)
        .await
        .expect("role");
    assert_eq!(role, "physician", "nothing changed before the approval");
    hub.cli_ok(
        "admin.two",
        &[
            "user",
            "approve",
            "tech.eve",
            "--reason",
            "checked the training record",
        ],
        None,
    );
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE username = 'tech.eve'")
        .fetch_one(&hub.db().await)
        .await
        .expect("role");
    assert_eq!(role, "qa");
    // And a new qa account through the API is refused: it is granted, not created.
    let admin = hub.login("admin", ADMIN_PASSWORD).await.expect("admin");
    let refused =
        carrel_proto::pb::admin_service_client::AdminServiceClient::new(hub.channel().await)
            .add_user(authed(
                &admin,
                carrel_proto::pb::AddUserRequest {
                    username: "qa.new".into(),
                    full_name: "Q New".into(),
                    role: carrel_proto::pb::Role::Qa as i32,
                    password: "a-long-new-password".into(),
                },
            ))
            .await
            .expect_err("needs a second administrator");
    assert!(
        refused.message().contains("second administrator"),
        "{}",
        refused.message()
    );
    let db = hub.db().await;
    for action in [
        "user.password_reset",
        "user.password_changed",
        "user.role_changed",
        "user.role_grant_requested",
        "user.role_grant_approved",
    ] {
        assert!(
            count(
                &db,
                &format!("SELECT COUNT(*) FROM audit_log WHERE action = '{action}'")
            )
            .await
                >= 1,
            "{action}"
        );
    }
    // Nobody but tech.eve ever typed the chosen passwords: they are not in the trail.
    let trail: Vec<String> = sqlx::query_scalar(
        "SELECT actor || object || old_value || new_value || reason FROM audit_log",
    )
    .fetch_all(&db)
    .await
    .expect("trail");
    assert!(trail.iter().all(|t| !t.contains("choice-of-words")));
}

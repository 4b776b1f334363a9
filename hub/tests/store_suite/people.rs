//! People and sessions: sessions expire and end, failed sign-ins are counted; the
//! directory of people each site gets, and site records checked against it.

use crate::fixtures::*;
use carrel_hub::audit::Action;
use carrel_hub::model::Role;
use carrel_hub::store::{Error, FailureLimits, Gate, Store};
use carrel_proto::event::{CommandKind, EventKind, Identity};
use carrel_proto::people::PersonStatus;
use chrono::Duration;
use std::sync::Arc;

pub async fn case_sessions_expire_and_end(store: Arc<dyn Store>) {
    add_user(&*store, PHYSICIAN, Role::Physician).await;
    add_user(&*store, QA, Role::Qa).await;
    let start = now();
    store
        .create_session("session-1", PHYSICIAN, start + Duration::hours(1))
        .await
        .expect("create session");
    store
        .create_session("session-2", QA, start + Duration::hours(1))
        .await
        .expect("create session");

    let user = store
        .session_user("session-1", start)
        .await
        .expect("live session");
    assert_eq!(
        (user.username.as_str(), user.role),
        (PHYSICIAN, Role::Physician)
    );
    assert_refused!(
        store
            .session_user("session-1", start + Duration::hours(2))
            .await,
        Error::NotFound
    );
    assert_refused!(
        store.session_user("session-unknown", start).await,
        Error::NotFound
    );

    store
        .delete_session("session-1")
        .await
        .expect("delete session");
    assert_refused!(
        store.session_user("session-1", start).await,
        Error::NotFound
    );
    let other = store
        .session_user("session-2", start)
        .await
        .expect("other sessions live on");
    assert_eq!(other.username, QA);
}

pub async fn case_failed_sign_ins_are_counted_per_user_and_source(store: Arc<dyn Store>) {
    seed(&*store).await;
    let limits = FailureLimits {
        per_user_and_source: 3,
        per_source: 5,
    };
    let start = now() - Duration::minutes(20);
    let window = (start, start + Duration::minutes(15));
    let gate = |user: &'static str, source: &'static str| {
        let store = store.clone();
        async move {
            store
                .sign_in_gate(user, source, window.0, limits)
                .await
                .expect("gate")
        }
    };
    let audited = |action: Action| {
        let store = store.clone();
        async move { store.audit_count(action).await.expect("count") }
    };
    assert_eq!(gate(QA, "10.0.0.2").await, Gate::Open);
    // A stranger at 10.0.0.2 fails many times for qa: locked there, not elsewhere.
    let mut last = Gate::Open;
    for _ in 0..4 {
        last = store
            .count_sign_in_failure(QA, "10.0.0.2", window, limits)
            .await
            .expect("count");
    }
    assert_eq!(last, Gate::UserLocked(4));
    assert_eq!(gate(QA, "10.0.0.2").await, Gate::UserLocked(4));
    assert_eq!(
        gate(QA, "10.0.0.1").await,
        Gate::Open,
        "the lock is per source"
    );
    assert_eq!(
        gate(PHYSICIAN, "10.0.0.2").await,
        Gate::Open,
        "and per user name"
    );
    assert_eq!(
        audited(Action::UserSignInLocked).await,
        1,
        "a lock is audited once, as it begins"
    );
    // The source fails for another name too, and is throttled for every name.
    store
        .count_sign_in_failure(PHYSICIAN, "10.0.0.2", window, limits)
        .await
        .expect("count");
    assert_eq!(gate(TECHNICIAN, "10.0.0.2").await, Gate::SourceThrottled(5));
    assert_eq!(audited(Action::SourceSignInThrottled).await, 1);
    assert_eq!(audited(Action::UserSignInFailuresCounted).await, 0);

    // When the window has ended, each user name and source gets one count entry.
    let written = store
        .report_sign_in_failures(Duration::minutes(15))
        .await
        .expect("report");
    assert_eq!(written, 3, "qa, the physician and the source's own row");
    let counted: Vec<_> = store
        .audit_entries(None)
        .await
        .expect("trail")
        .into_iter()
        .filter(|e| e.action == Action::UserSignInFailuresCounted)
        .map(|e| (e.actor, e.new_value))
        .collect();
    assert_eq!(counted.len(), 2, "{counted:?}");
    assert!(
        counted
            .iter()
            .any(|(who, what)| who == QA && what.starts_with("4 failed from 10.0.0.2")),
        "{counted:?}"
    );
    assert_eq!(
        store
            .report_sign_in_failures(Duration::minutes(15))
            .await
            .expect("report"),
        0,
        "reported once"
    );
    // A window that has not ended yet is not reported.
    let current = (now(), now() + Duration::minutes(15));
    store
        .count_sign_in_failure(QA, "10.0.0.3", current, limits)
        .await
        .expect("count");
    assert_eq!(
        store
            .report_sign_in_failures(Duration::minutes(15))
            .await
            .expect("report"),
        0
    );
}

pub async fn case_the_first_signature_of_a_session_and_the_acknowledgement_are_kept(
    store: Arc<dyn Store>,
) {
    add_user(&*store, QA, Role::Qa).await;
    store
        .create_session("session-q", QA, now() + Duration::hours(1))
        .await
        .expect("session");
    assert_eq!(
        store.session_signed_at("session-q").await.expect("read"),
        None
    );
    store.mark_session_signed("session-q").await.expect("mark");
    let first = store
        .session_signed_at("session-q")
        .await
        .expect("read")
        .expect("signed");
    store.mark_session_signed("session-q").await.expect("mark");
    assert_eq!(
        store.session_signed_at("session-q").await.expect("read"),
        Some(first),
        "the first signature's time stays"
    );
    assert!(store
        .user(QA)
        .await
        .expect("user")
        .signature_acknowledged_at
        .is_none());
    let user = store
        .acknowledge_signature(QA, "my signature binds me")
        .await
        .expect("acknowledge");
    let at = user.signature_acknowledged_at.expect("kept");
    store
        .acknowledge_signature(QA, "again")
        .await
        .expect("acknowledge again");
    assert_eq!(
        store
            .user(QA)
            .await
            .expect("user")
            .signature_acknowledged_at,
        Some(at),
        "acknowledged once"
    );
    assert_eq!(
        store
            .audit_count(Action::UserSignatureAcknowledged)
            .await
            .expect("count"),
        1
    );
}

/// The directory commands a site holds for one person, as (status, verifier).
async fn entries_for(
    store: &dyn Store,
    site_id: &str,
    username: &str,
) -> Vec<(PersonStatus, String)> {
    commands(store, site_id)
        .await
        .into_iter()
        .filter_map(|c| match c.kind {
            CommandKind::PersonUpdated {
                username: who,
                status,
                password_verifier,
                ..
            } if who == username => {
                assert!(c.batch_id.is_nil(), "a directory command is site-wide");
                Some((status, password_verifier))
            }
            _ => None,
        })
        .collect()
}

pub async fn case_people_reach_their_sites_as_directory_commands(store: Arc<dyn Store>) {
    seed(&*store).await;
    add_user(&*store, ADMIN, Role::Admin).await;
    let v1 = store
        .assign_user_to_site(TECHNICIAN, SITE_A, ADMIN)
        .await
        .expect("assign to site A");
    store
        .assign_user_to_site(TECHNICIAN, SITE_B, ADMIN)
        .await
        .expect("assign to site B");
    assert_eq!(
        entries_for(&*store, SITE_A, TECHNICIAN).await,
        vec![(PersonStatus::Active, "x".into())],
        "the site gets the person's verifier, never a password"
    );
    assert_eq!(
        store.site_directory(SITE_A).await.expect("directory").len(),
        1
    );
    assert_eq!(
        store.site_directory(SITE_A).await.expect("directory")[0].seq,
        v1
    );

    // Refusals change nothing.
    let before = commands(&*store, SITE_A).await;
    assert_refused!(
        store.assign_user_to_site(ADMIN, SITE_A, ADMIN).await,
        Error::Invalid
    );
    assert_refused!(
        store.assign_user_to_site("nobody", SITE_A, ADMIN).await,
        Error::NotFound
    );
    assert_refused!(
        store.assign_user_to_site(TECHNICIAN, "site-z", ADMIN).await,
        Error::Invalid
    );
    assert_refused!(
        store.set_user_disabled(TECHNICIAN, true, " ", ADMIN).await,
        Error::Invalid
    );
    assert_refused!(
        store.set_user_disabled(ADMIN, true, "leaving", ADMIN).await,
        Error::FailedPrecondition
    );
    assert_eq!(commands(&*store, SITE_A).await, before);

    // Disabled: both sites hear it in the same transaction, and the hub refuses them.
    let sites = store
        .set_user_disabled(TECHNICIAN, true, "left the hospital", ADMIN)
        .await
        .expect("disable");
    assert_eq!(
        sites.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        vec![SITE_A, SITE_B]
    );
    assert!(store.user(TECHNICIAN).await.expect("user").disabled);
    for site in [SITE_A, SITE_B] {
        assert_eq!(
            entries_for(&*store, site, TECHNICIAN)
                .await
                .last()
                .map(|e| e.0),
            Some(PersonStatus::Disabled)
        );
    }
    assert_refused!(
        store.assign_user_to_site(TECHNICIAN, SITE_A, ADMIN).await,
        Error::FailedPrecondition
    );
    assert_refused!(
        store
            .set_user_disabled(TECHNICIAN, true, "again", ADMIN)
            .await,
        Error::FailedPrecondition
    );
    store
        .set_user_disabled(TECHNICIAN, false, "back from leave", ADMIN)
        .await
        .expect("enable");

    // A bedside badge reaches the sites they work at, in their entry; a badge id is
    // one person's.
    let sites = store
        .issue_badge(TECHNICIAN, "BDG-TEST00000001", "pin-hash", ADMIN)
        .await
        .expect("issue a badge");
    assert_eq!(sites.len(), 2);
    let badge = commands(&*store, SITE_A)
        .await
        .into_iter()
        .rev()
        .find_map(|c| match c.kind {
            CommandKind::PersonUpdated {
                badge_id,
                pin_verifier,
                ..
            } => Some((badge_id, pin_verifier)),
            _ => None,
        });
    assert_eq!(badge, Some(("BDG-TEST00000001".into(), "pin-hash".into())));
    add_user(&*store, "tech-two", Role::Technician).await;
    assert_refused!(
        store
            .issue_badge("tech-two", "BDG-TEST00000001", "other", ADMIN)
            .await,
        Error::AlreadyExists
    );

    // Removed from site B only.
    store
        .remove_user_from_site(TECHNICIAN, SITE_B, ADMIN)
        .await
        .expect("remove");
    assert_eq!(
        entries_for(&*store, SITE_B, TECHNICIAN)
            .await
            .last()
            .map(|e| e.0),
        Some(PersonStatus::Removed)
    );
    assert_refused!(
        store.remove_user_from_site(TECHNICIAN, SITE_B, ADMIN).await,
        Error::FailedPrecondition
    );

    let actions: Vec<carrel_hub::audit::Action> = store
        .audit_entries(None)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.object == format!("user/{TECHNICIAN}"))
        .map(|e| e.action)
        .collect();
    for expected in [
        "user.assigned_to_site",
        "user.disabled",
        "user.enabled",
        "user.removed_from_site",
        "user.badge_issued",
    ] {
        assert!(
            actions.iter().any(|a| *a == expected),
            "{expected} in {actions:?}"
        );
    }
}

pub async fn case_records_are_checked_against_the_directory_the_site_used(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let version = store
        .assign_user_to_site(TECHNICIAN, SITE_A, ADMIN)
        .await
        .expect("assign");
    let mut log = SiteLog::new();
    let signed_in = Identity::Authenticated {
        directory_version: version,
    };
    let first = [
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record_as(
            order.batch_id,
            TECHNICIAN,
            signed_in,
            deviation("expansion"),
        ),
    ];
    ingest(&*store, SITE_A, &first).await;
    let reviewed = review(&*store, order.batch_id).await;
    assert!(
        !reviewed
            .exceptions
            .iter()
            .any(|e| format!("{e:?}").contains("who made it")),
        "{:?}",
        reviewed.exceptions
    );

    // Disabled at the hub; the site, offline, still had the old directory.
    store
        .set_user_disabled(TECHNICIAN, true, "badge lost", ADMIN)
        .await
        .expect("disable");
    let offline = log.record_as(
        order.batch_id,
        TECHNICIAN,
        signed_in,
        deviation("expansion"),
    );
    ingest(&*store, SITE_A, &[offline]).await;
    let stale = log.record_as(
        order.batch_id,
        "tech-unknown",
        Identity::Authenticated {
            directory_version: version + 40,
        },
        deviation("expansion"),
    );
    ingest(&*store, SITE_A, &[stale]).await;
    let flagged: Vec<String> = review(&*store, order.batch_id)
        .await
        .exceptions
        .iter()
        .map(|e| format!("{e:?}"))
        .filter(|e| e.contains("who made it"))
        .collect();
    assert_eq!(flagged.len(), 2, "{flagged:?}");
    assert!(flagged[0].contains("disabled at the hub"), "{flagged:?}");
    assert!(flagged[1].contains("never sent"), "{flagged:?}");
}

pub async fn case_a_lock_at_a_site_is_stored_and_audited(store: Arc<dyn Store>) {
    seed(&*store).await;
    let mut log = SiteLog::new();
    let locked = log.record_as(
        uuid::Uuid::nil(),
        "agent",
        Identity::Agent,
        EventKind::PersonLocked {
            username: TECHNICIAN.into(),
            failures: 10,
        },
    );
    let ingested = ingest(&*store, SITE_A, &[locked]).await;
    assert_eq!(
        ingested.acked_event_seq, 1,
        "a site-wide record moves the cursor"
    );
    let entry = store
        .audit_entries(None)
        .await
        .expect("audit")
        .into_iter()
        .find(|e| e.action == "user.locked_at_site")
        .expect("the lock is audited");
    assert_eq!(entry.object, format!("user/{TECHNICIAN}"));
    assert_eq!(entry.actor, SITE_A);
}

async fn review(store: &dyn Store, batch_id: uuid::Uuid) -> carrel_hub::record::Review {
    carrel_hub::record::review(store.batch_record(batch_id).await.expect("record"), false)
}

/// A system account as an administrator makes it, for `physicians`.
fn engine(physicians: &[&str]) -> carrel_hub::model::SystemAccount {
    carrel_hub::model::SystemAccount {
        client_id: "st-elsewhere-ehr".into(),
        name: "St Elsewhere EHR interface engine".into(),
        secret_hash: "hash-1".into(),
        disabled: false,
        created_by: ADMIN.into(),
        created_at: now(),
        physicians: physicians.iter().map(|p| (*p).to_owned()).collect(),
    }
}

pub async fn case_a_system_account_acts_for_its_physicians_until_disabled(store: Arc<dyn Store>) {
    add_user(&*store, PHYSICIAN, Role::Physician).await;
    add_user(&*store, "dr-kim", Role::Physician).await;
    add_user(&*store, QA, Role::Qa).await;
    let id = "st-elsewhere-ehr";

    // Only physicians, and a client id once; a refusal stores nothing.
    assert_refused!(
        store.add_system_account(&engine(&[PHYSICIAN, QA])).await,
        Error::Invalid
    );
    assert_refused!(
        store.add_system_account(&engine(&["dr-nobody"])).await,
        Error::Invalid
    );
    assert_refused!(store.add_system_account(&engine(&[])).await, Error::Invalid);
    assert!(store.list_system_accounts().await.expect("list").is_empty());
    let made = store
        .add_system_account(&engine(&[PHYSICIAN]))
        .await
        .expect("add");
    assert_eq!(made.physicians, [PHYSICIAN]);
    assert_refused!(
        store.add_system_account(&engine(&["dr-kim"])).await,
        Error::AlreadyExists
    );
    assert_eq!(
        store.system_account(id).await.expect("read").physicians,
        [PHYSICIAN]
    );

    // A token lives until it expires.
    let start = now();
    store
        .issue_system_token(id, "token-1", start + Duration::hours(1))
        .await
        .expect("token");
    assert_eq!(
        store
            .system_token_account("token-1", start)
            .await
            .expect("live token")
            .client_id,
        id
    );
    assert_refused!(
        store
            .system_token_account("token-1", start + Duration::hours(2))
            .await,
        Error::NotFound
    );

    // The scope: a reason, physicians only, and a removal of someone in it.
    let both = |add: &[&str], remove: &[&str]| {
        (
            add.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>(),
            remove.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>(),
        )
    };
    let (add, remove) = both(&["dr-kim"], &[PHYSICIAN]);
    assert_refused!(
        store
            .change_system_scope(id, &add, &remove, " ", ADMIN)
            .await,
        Error::Invalid
    );
    let (qa, none) = both(&[QA], &[]);
    assert_refused!(
        store
            .change_system_scope(id, &qa, &none, "why", ADMIN)
            .await,
        Error::Invalid
    );
    let (none2, stranger) = both(&[], &["dr-kim"]);
    assert_refused!(
        store
            .change_system_scope(id, &none2, &stranger, "why", ADMIN)
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(
        store.system_account(id).await.expect("read").physicians,
        [PHYSICIAN],
        "refused changes change nothing"
    );
    let changed = store
        .change_system_scope(id, &add, &remove, "Dr Lee moved", ADMIN)
        .await
        .expect("scope");
    assert_eq!(changed.physicians, ["dr-kim"]);

    // Disabling ends its tokens and refuses new ones; enabling again does not revive them.
    store
        .issue_system_token(id, "token-2", start + Duration::hours(1))
        .await
        .expect("token");
    let disabled = store
        .set_system_account_disabled(id, true, "Interface retired", ADMIN)
        .await
        .expect("disable");
    assert!(disabled.disabled);
    assert_refused!(
        store.system_token_account("token-2", start).await,
        Error::NotFound
    );
    assert_refused!(
        store
            .issue_system_token(id, "token-3", start + Duration::hours(1))
            .await,
        Error::FailedPrecondition
    );
    assert_refused!(
        store
            .set_system_account_disabled(id, true, "again", ADMIN)
            .await,
        Error::FailedPrecondition
    );
    store
        .set_system_account_disabled(id, false, "Interface back", ADMIN)
        .await
        .expect("enable");
    assert_refused!(
        store.system_token_account("token-2", start).await,
        Error::NotFound
    );

    // A new secret ends the tokens of the old one.
    store
        .issue_system_token(id, "token-4", start + Duration::hours(1))
        .await
        .expect("token");
    let rotated = store
        .rotate_system_secret(id, "hash-2", "Secret seen in a log", ADMIN)
        .await
        .expect("rotate");
    assert_eq!(rotated.secret_hash, "hash-2");
    assert_refused!(
        store.system_token_account("token-4", start).await,
        Error::NotFound
    );

    // Each change audited once.
    for (action, n) in [
        (Action::SystemAccountAdded, 1),
        (Action::SystemAccountScopeChanged, 1),
        (Action::SystemAccountDisabled, 1),
        (Action::SystemAccountEnabled, 1),
        (Action::SystemAccountSecretRotated, 1),
        (Action::SystemAccountTokenIssued, 3),
    ] {
        assert_eq!(
            store.audit_count(action).await.expect("count"),
            n,
            "{action}"
        );
    }
}

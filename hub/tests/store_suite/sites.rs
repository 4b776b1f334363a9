//! Sites: enrollment tokens, the site lifecycle (suspend, cease), certificate
//! renewal and the claim on a site's link.

use crate::fixtures::*;
use carrel_hub::model::{BatchState, IssuedCert, SiteStatus};
use carrel_hub::store::{Error, Store};
use chrono::Duration;
use std::sync::Arc;

pub async fn case_expired_enrollment_token_is_refused(store: Arc<dyn Store>) {
    let expired_at = now() - Duration::minutes(1);
    store
        .add_site("site-late", "late", "token-late", expired_at, ADMIN)
        .await
        .expect("add site");

    // Before its expiry the token was good, so expiry is what refuses it.
    let earlier = expired_at - Duration::minutes(5);
    let site = store
        .site_for_token("token-late", earlier)
        .await
        .expect("token valid before expiry");
    assert_eq!(site.site_id, "site-late");

    assert_refused!(
        store.site_for_token("token-late", now()).await,
        Error::PermissionDenied
    );
    assert_refused!(
        store
            .complete_enrollment("site-late", "token-late", &cert("cert-late"), now())
            .await,
        Error::PermissionDenied
    );
    let site = store.site("site-late").await.expect("site");
    assert_eq!(site.status, SiteStatus::Pending);
    assert_eq!(site.cert_sha256, None);
}

pub async fn case_enrollment_token_works_once(store: Arc<dyn Store>) {
    store
        .add_site(
            "site-new",
            "new",
            "token-new",
            now() + Duration::hours(1),
            ADMIN,
        )
        .await
        .expect("add site");
    let pending = store
        .site_for_token("token-new", now())
        .await
        .expect("token is valid");
    assert_eq!(
        (pending.site_id.as_str(), pending.status),
        ("site-new", SiteStatus::Pending)
    );

    let enrolled = store
        .complete_enrollment("site-new", "token-new", &cert("cert-1"), now())
        .await
        .expect("enroll");
    assert_eq!(enrolled.status, SiteStatus::Active);
    assert_eq!(enrolled.cert_sha256.as_deref(), Some("cert-1"));

    assert_refused!(
        store
            .complete_enrollment("site-new", "token-new", &cert("cert-2"), now())
            .await,
        Error::PermissionDenied
    );
    assert_refused!(
        store.site_for_token("token-new", now()).await,
        Error::PermissionDenied
    );
    let site = store.site("site-new").await.expect("site");
    assert_eq!(
        site.cert_sha256.as_deref(),
        Some("cert-1"),
        "the second attempt did not replace the certificate"
    );
    assert_eq!(site.status, SiteStatus::Active);
}

pub async fn case_adding_a_site_twice_is_refused(store: Arc<dyn Store>) {
    let expires = now() + Duration::hours(1);
    store
        .add_site("site-dup", "First", "token-1", expires, ADMIN)
        .await
        .expect("add site");
    assert_refused!(
        store
            .add_site("site-dup", "Second", "token-2", expires, ADMIN)
            .await,
        Error::AlreadyExists
    );

    let sites = store.list_sites().await.expect("list sites");
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].name, "First");
    assert_refused!(
        store.site_for_token("token-2", now()).await,
        Error::PermissionDenied
    );
    let site = store
        .site_for_token("token-1", now())
        .await
        .expect("the first token still works");
    assert_eq!(site.site_id, "site-dup");
}

pub async fn case_suspending_a_site_flags_its_running_batches_for_qa(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let running = order_at(&*store, SITE_A).await;
    let waiting = order_at(&*store, SITE_A).await;
    let elsewhere = order_at(&*store, SITE_B).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[
            log.record(running.batch_id, accepted(&running, &recipe)),
            log.record(running.batch_id, step_started("receipt")),
        ],
    )
    .await;
    let audited_before = store
        .audit_count(carrel_hub::audit::Action::BatchFlagged)
        .await
        .expect("count");
    let anomalies_before = store
        .order(running.order_id)
        .await
        .expect("order")
        .progress
        .anomalies
        .len();

    let site = store
        .set_site_status(
            SITE_A,
            SiteStatus::Suspended,
            ADMIN,
            "inspection finding 12",
        )
        .await
        .expect("suspend");
    assert_eq!(site.status, SiteStatus::Suspended);
    // Who suspended it and why is kept on the site, read back as stored, for the
    // site to be told when its link is refused.
    let change = store
        .site(SITE_A)
        .await
        .expect("site")
        .status_change
        .expect("the suspension is kept with the site");
    assert_eq!(
        (change.by.as_str(), change.reason.as_str()),
        (ADMIN, "inspection finding 12")
    );
    assert!(
        (chrono::Utc::now() - change.at).num_seconds().abs() < 60,
        "{change:?}"
    );

    let flagged = store.order(running.order_id).await.expect("order");
    assert_eq!(
        flagged.state,
        BatchState::InProcess,
        "suspension decides nothing"
    );
    assert_eq!(
        flagged.progress.anomalies.len(),
        anomalies_before + 1,
        "{:?}",
        flagged.progress
    );
    let flag = flagged.progress.anomalies.last().expect("the flag");
    assert!(flag.contains("site suspended"), "{flag}");
    assert!(flag.contains("inspection finding 12"), "{flag}");
    assert!(flag.contains("QA decision"), "{flag}");
    for untouched in [waiting.order_id, elsewhere.order_id] {
        let order = store.order(untouched).await.expect("order");
        assert!(
            order.progress.anomalies.is_empty(),
            "a batch not running at the suspended site is not flagged: {:?}",
            order.progress
        );
    }
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::BatchFlagged)
            .await
            .expect("count"),
        audited_before + 1
    );
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteSuspended)
            .await
            .expect("count"),
        1
    );
}

pub async fn case_a_site_ceases_only_when_its_batches_are_closed_and_for_good(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(
        &*store,
        SITE_A,
        &[log.record(order.batch_id, accepted(&order, &recipe))],
    )
    .await;

    // An open batch keeps the site from ceasing; the refusal names it and changes nothing.
    let refused = store
        .set_site_status(SITE_A, SiteStatus::Ceased, ADMIN, "programme closed")
        .await
        .expect_err("an open batch blocks cessation");
    match &refused {
        Error::FailedPrecondition(why) => {
            // Named by its COI, as people know it, not by the internal batch id.
            assert!(why.contains(&format!("COI {}", order.coi)), "{why}");
            assert!(!why.contains(&order.batch_id.to_string()), "{why}");
        }
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert_eq!(
        store.site(SITE_A).await.expect("site").status,
        SiteStatus::Active
    );
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteCeased)
            .await
            .expect("count"),
        0
    );

    store
        .cancel_order(order.order_id, "site closing", PHYSICIAN, now())
        .await
        .expect("cancel");
    let ceased = store
        .set_site_status(SITE_A, SiteStatus::Ceased, ADMIN, "programme closed")
        .await
        .expect("cease");
    assert_eq!(ceased.status, SiteStatus::Ceased);
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteCeased)
            .await
            .expect("count"),
        1
    );

    // Final: no resume, no suspend, no orders; its records are still there.
    for to in [
        SiteStatus::Active,
        SiteStatus::Suspended,
        SiteStatus::Ceased,
    ] {
        assert_refused!(
            store.set_site_status(SITE_A, to, ADMIN, "try again").await,
            Error::FailedPrecondition
        );
    }
    assert_refused!(
        store.create_order(&new_order(SITE_A), now()).await,
        Error::FailedPrecondition
    );
    assert_eq!(
        store
            .batch_events(order.batch_id)
            .await
            .expect("events")
            .len(),
        1,
        "a ceased site's records stay readable"
    );
    assert!(store.verify_audit().await.expect("read").is_ok());
}

pub async fn case_a_renewed_certificate_replaces_the_old_one_when_first_used(
    store: Arc<dyn Store>,
) {
    seed(&*store).await;
    let before = store.site(SITE_A).await.expect("site");
    assert_eq!(before.cert_ca_sha256.as_deref(), Some("ca-1"));
    assert!(before.cert_not_after.is_some());

    let renewed = IssuedCert {
        sha256: "cert-renewed".into(),
        not_after: now() + Duration::days(800),
        ca_sha256: "ca-2".into(),
    };
    let pending = store
        .record_renewed_certificate(SITE_A, &renewed, now())
        .await
        .expect("record renewal");
    // Until the site uses it, both are good: the old one is still the site's.
    assert_eq!(pending.cert_sha256, before.cert_sha256);
    assert_eq!(pending.pending_cert_sha256.as_deref(), Some("cert-renewed"));

    assert_refused!(
        store
            .promote_pending_certificate(SITE_A, "cert-other", now())
            .await,
        Error::FailedPrecondition
    );
    let promoted = store
        .promote_pending_certificate(SITE_A, "cert-renewed", now())
        .await
        .expect("promote");
    assert_eq!(promoted.cert_sha256.as_deref(), Some("cert-renewed"));
    assert_eq!(promoted.cert_ca_sha256.as_deref(), Some("ca-2"));
    assert_eq!(promoted.cert_not_after, Some(renewed.not_after));
    assert_eq!(promoted.pending_cert_sha256, None);
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteCertificateIssued)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::SiteCertificateReplaced)
            .await
            .expect("count"),
        1
    );

    // A suspended site gets no new certificate.
    store
        .set_site_status(SITE_B, SiteStatus::Suspended, ADMIN, "audit")
        .await
        .expect("suspend");
    assert_refused!(
        store
            .record_renewed_certificate(SITE_B, &renewed, now())
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(
        store.site(SITE_B).await.expect("site").pending_cert_sha256,
        None
    );
}

pub async fn case_the_newest_link_claim_wins(store: Arc<dyn Store>) {
    seed(&*store).await;
    assert_eq!(
        store
            .site_link_generation(SITE_A)
            .await
            .expect("generation"),
        0
    );
    let first = store.claim_site_link(SITE_A, "hub-1").await.expect("claim");
    let second = store.claim_site_link(SITE_A, "hub-2").await.expect("claim");
    assert!(second > first, "a newer claim supersedes the older one");
    assert_eq!(
        store
            .site_link_generation(SITE_A)
            .await
            .expect("generation"),
        second
    );
    assert_eq!(
        store
            .site_link_generation(SITE_B)
            .await
            .expect("generation"),
        0,
        "claims are per site"
    );
}

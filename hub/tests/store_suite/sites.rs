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

/// The qualifications of a site in force, as (product, min, max).
async fn in_force(store: &dyn Store, site_id: &str) -> Vec<(String, u32, Option<u32>)> {
    store
        .site_qualifications(Some(site_id))
        .await
        .expect("qualifications")
        .into_iter()
        .filter(|q| q.in_force())
        .map(|q| (q.recipe_id, q.min_version, q.max_version))
        .collect()
}

async fn count(store: &dyn Store, action: carrel_hub::audit::Action) -> u64 {
    store.audit_count(action).await.expect("count")
}

pub async fn case_an_order_needs_the_sites_qualification_for_the_product(store: Arc<dyn Store>) {
    seed(&*store).await;
    add_active_site(&*store, "site-c").await;

    // Not qualified: refused with the reason, and nothing is stored.
    let refused = store
        .create_order(&new_order("site-c"), now())
        .await
        .expect_err("an unqualified site takes no order");
    match &refused {
        Error::Invalid(why) => {
            assert!(
                why.starts_with("product cd19-car-t is not one site site-c is qualified"),
                "{why}"
            );
            assert!(why.contains("qualified for no product yet"), "{why}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(store
        .list_orders(None, None)
        .await
        .expect("orders")
        .iter()
        .all(|o| o.site_id != "site-c"));

    qualify(&*store, "site-c", RECIPE_ID, 1, None).await;
    let order = order_at(&*store, "site-c").await;
    assert_eq!(
        (order.site_id.as_str(), order.recipe_version),
        ("site-c", 1)
    );
    let stored = store
        .site_qualifications(Some("site-c"))
        .await
        .expect("list");
    assert_eq!(stored.len(), 1);
    let mut expected = qualification("site-c", RECIPE_ID, 1, None);
    expected.qualified_at = stored[0].qualified_at;
    assert_eq!(stored[0], expected);
    assert_eq!(
        count(&*store, carrel_hub::audit::Action::SiteQualified).await,
        3
    );
}

pub async fn case_a_qualification_is_replaced_and_withdrawn_never_changed(store: Arc<dyn Store>) {
    seed(&*store).await;
    let placed = order_at(&*store, SITE_A).await;

    // The same qualification again (a form sent twice) is refused: one signature.
    assert_refused!(
        store
            .qualify_site(&qualification(SITE_A, RECIPE_ID, 1, None))
            .await,
        Error::FailedPrecondition
    );
    // A narrower range replaces the one in force; the old row stays, withdrawn.
    qualify(&*store, SITE_A, RECIPE_ID, 1, Some(1)).await;
    assert_eq!(
        in_force(&*store, SITE_A).await,
        [(RECIPE_ID.to_owned(), 1, Some(1))]
    );
    let all = store.site_qualifications(Some(SITE_A)).await.expect("list");
    assert_eq!(all.len(), 2);
    let replaced = all
        .iter()
        .find(|q| !q.in_force())
        .expect("the replaced one");
    assert_eq!(replaced.max_version, None);
    let why = &replaced.withdrawn.as_ref().expect("withdrawn").reason;
    assert!(
        why.contains("replaced by the qualification for v1 only"),
        "{why}"
    );
    // The audit trail names the range replaced and the new one.
    let entries = store.audit_entries(None).await.expect("audit");
    let replacing = entries
        .iter()
        .rfind(|e| e.action == carrel_hub::audit::Action::SiteQualified)
        .expect("the replacing entry");
    assert_eq!(
        (replacing.old_value.as_str(), replacing.new_value.as_str()),
        ("cd19-car-t v1 and later", "cd19-car-t v1 only")
    );

    // Withdrawn: no new order; the order placed before keeps running.
    let withdrawal = carrel_hub::model::StatusChange {
        by: QA.into(),
        at: now(),
        reason: "Deviation DEV-9 in the clean room; requalify after CAPA".into(),
    };
    store
        .withdraw_site_qualification(SITE_A, RECIPE_ID, &withdrawal)
        .await
        .expect("withdraw");
    assert!(in_force(&*store, SITE_A).await.is_empty());
    assert_refused!(
        store.create_order(&new_order(SITE_A), now()).await,
        Error::Invalid
    );
    assert_eq!(
        store.order(placed.order_id).await.expect("order").state,
        BatchState::Ordered
    );
    // Nothing in force to withdraw again; the other site is untouched.
    assert_refused!(
        store
            .withdraw_site_qualification(SITE_A, RECIPE_ID, &withdrawal)
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(in_force(&*store, SITE_B).await.len(), 1);
    assert_eq!(
        count(
            &*store,
            carrel_hub::audit::Action::SiteQualificationWithdrawn
        )
        .await,
        1
    );
    assert_eq!(
        count(&*store, carrel_hub::audit::Action::SiteQualified).await,
        3
    );
}

pub async fn case_an_order_for_a_version_out_of_the_range_is_refused(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    qualify(&*store, SITE_A, RECIPE_ID, 1, Some(1)).await;
    let mut v2 = recipe.clone();
    v2.version = 2;
    store.publish_recipe(&v2).await.expect("publish v2");

    let refused = store
        .create_order(&new_order(SITE_A), now())
        .await
        .expect_err("v2 is not qualified at site-a");
    match &refused {
        Error::Invalid(why) => assert!(
            why.contains("v2") && why.contains("qualified for v1 only"),
            "{why}"
        ),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // site-b is qualified for v1 and later: it takes v2.
    let order = order_at(&*store, SITE_B).await;
    assert_eq!(order.recipe_version, 2);
    // Qualified for v2 now, site-a takes it too.
    qualify(&*store, SITE_A, RECIPE_ID, 2, None).await;
    assert_eq!(order_at(&*store, SITE_A).await.recipe_version, 2);
}

pub async fn case_a_bad_qualification_is_refused_and_stores_nothing(store: Arc<dyn Store>) {
    seed(&*store).await;
    add_active_site(&*store, "site-c").await;
    let before = count(&*store, carrel_hub::audit::Action::SiteQualified).await;
    let mut no_reason = qualification("site-c", RECIPE_ID, 1, None);
    no_reason.reason = " ".into();
    for (bad, what) in [
        (qualification("site-x", RECIPE_ID, 1, None), "unknown site"),
        (
            qualification("site-c", "no-such-product", 1, None),
            "unknown product",
        ),
        (
            qualification("site-c", RECIPE_ID, 2, None),
            "a version not published",
        ),
        (qualification("site-c", RECIPE_ID, 0, None), "version 0"),
        (
            qualification("site-c", RECIPE_ID, 1, Some(0)),
            "an empty range",
        ),
        (no_reason, "no reason"),
    ] {
        match store.qualify_site(&bad).await {
            Err(Error::Invalid(_)) => {}
            other => panic!("{what}: expected Invalid, got {other:?}"),
        }
    }
    store
        .set_site_status("site-c", SiteStatus::Ceased, ADMIN, "programme closed")
        .await
        .expect("cease");
    assert_refused!(
        store
            .qualify_site(&qualification("site-c", RECIPE_ID, 1, None))
            .await,
        Error::FailedPrecondition
    );
    assert!(store
        .site_qualifications(Some("site-c"))
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        count(&*store, carrel_hub::audit::Action::SiteQualified).await,
        before
    );
}

//! The audit trail: every change audited, in one hash chain.

use crate::fixtures::*;
use carrel_hub::store::Store;
use std::sync::Arc;

pub async fn case_changes_are_audited_in_one_chain(store: Arc<dyn Store>) {
    let recipe = seed(&*store).await;
    let order = order_at(&*store, SITE_A).await;
    let mut log = SiteLog::new();
    ingest(&*store, SITE_A, &complete_record(&mut log, &order, &recipe)).await;
    let sha = reviewed_sha256(&*store, order.batch_id).await;
    store
        .sign_release(&signature(&order, QA, sha), false, now())
        .await
        .expect("sign");

    let actions: Vec<String> = store
        .audit_entries(Some(order.batch_id))
        .await
        .expect("audit")
        .into_iter()
        .map(|e| format!("{} {}", e.actor, e.action))
        .collect();
    assert_eq!(
        actions,
        vec![
            format!("{PHYSICIAN} order.created"),
            format!("{SITE_A} batch.state_changed"),
            format!("{SITE_A} batch.state_changed"),
            format!("{SITE_A} batch.state_changed"),
            format!("{QA} release.signed"),
        ],
        "ordered -> accepted -> in_process -> awaiting_release, then the signature"
    );
    let all = store.audit_entries(None).await.expect("audit");
    assert!(all
        .iter()
        .any(|e| e.action == "site_events.replicated" && e.actor == SITE_A));
    assert!(all
        .iter()
        .any(|e| e.action == "user.created" && e.actor == ADMIN));
    let intact = store
        .verify_audit()
        .await
        .expect("read audit")
        .expect("the chain holds");
    assert_eq!(intact.entries, all.len() as u64);
    assert_eq!(intact.head_sha256, all.last().expect("entries").sha256);
}

pub async fn case_a_witness_the_trail_contradicts_is_a_finding_until_acknowledged(
    store: Arc<dyn Store>,
) {
    seed(&*store).await;
    let (head, sha) = store.audit_head().await.expect("head").expect("entries");
    // A witness the trail agrees with is kept, the latest per site.
    assert_eq!(
        store
            .check_witness(SITE_A, head, &sha)
            .await
            .expect("check"),
        None
    );
    let kept = store.audit_witnesses().await.expect("witnesses");
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].0.as_str(), kept[0].1), (SITE_A, head));

    // A site that witnessed more than the trail holds, or another hash.
    let beyond = store
        .check_witness(SITE_B, head + 10, "ab".repeat(32).as_str())
        .await
        .expect("check")
        .expect("a finding");
    assert!(
        beyond
            .detail
            .contains(&format!("the trail ends at entry {head}")),
        "{}",
        beyond.detail
    );
    let other = store
        .check_witness(SITE_A, head, "cd".repeat(32).as_str())
        .await
        .expect("check")
        .expect("a finding");
    assert!(other.detail.contains("holds"), "{}", other.detail);
    // Found once: reported again, it is the same open finding and audited once.
    assert_eq!(
        store
            .check_witness(SITE_B, head + 10, "ab".repeat(32).as_str())
            .await
            .expect("check"),
        Some(beyond.clone())
    );
    assert_eq!(store.audit_findings(true).await.expect("open").len(), 2);
    assert_eq!(
        store
            .audit_count(carrel_hub::audit::Action::AuditIntegrityFinding)
            .await
            .expect("count"),
        2
    );

    // Acknowledged with a reason: nothing open, the sites' witnesses forgotten, and
    // the same report again is no new finding.
    assert!(
        store.acknowledge_findings(ADMIN, "ok").await.is_err(),
        "a real reason"
    );
    let acknowledged = store
        .acknowledge_findings(ADMIN, "restored from backup after a disk failure")
        .await
        .expect("acknowledge");
    assert_eq!(acknowledged.len(), 2);
    assert!(store.audit_findings(true).await.expect("open").is_empty());
    assert!(store.audit_witnesses().await.expect("witnesses").is_empty());
    assert_eq!(
        store
            .check_witness(SITE_B, head + 10, "ab".repeat(32).as_str())
            .await
            .expect("check"),
        None
    );
    let all = store.audit_findings(false).await.expect("all");
    assert!(all.iter().all(|f| f
        .acknowledged
        .as_ref()
        .is_some_and(|(by, _, why)| by == ADMIN && why.contains("disk failure"))));
}

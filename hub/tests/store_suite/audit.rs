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

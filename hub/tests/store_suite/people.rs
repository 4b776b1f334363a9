//! People and sessions: sessions expire and end, failed sign-ins are counted.

use crate::fixtures::*;
use carrel_hub::model::Role;
use carrel_hub::store::{Error, Store};
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

pub async fn case_failed_sign_ins_count_until_a_success(store: Arc<dyn Store>) {
    seed(&*store).await;
    let fail = || {
        carrel_hub::audit::NewEntry::new(
            PHYSICIAN,
            carrel_hub::audit::Action::UserSignInFailed,
            carrel_hub::audit::Object::User(PHYSICIAN.into()),
        )
        .reason("wrong password")
    };
    for _ in 0..3 {
        store.audit(&fail()).await.expect("audit");
    }
    let an_hour_ago = now() - Duration::hours(1);
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, an_hour_ago)
            .await
            .expect("count"),
        3
    );
    assert_eq!(
        store
            .sign_in_failures_since(QA, an_hour_ago)
            .await
            .expect("count"),
        0,
        "per user"
    );
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, now() + Duration::hours(1))
            .await
            .expect("count"),
        0,
        "only inside the window"
    );
    // A successful sign-in starts the count again.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .create_session(
            "session-after-failures",
            PHYSICIAN,
            now() + Duration::hours(1),
        )
        .await
        .expect("session");
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, an_hour_ago)
            .await
            .expect("count"),
        0
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.audit(&fail()).await.expect("audit");
    assert_eq!(
        store
            .sign_in_failures_since(PHYSICIAN, an_hour_ago)
            .await
            .expect("count"),
        1
    );
}

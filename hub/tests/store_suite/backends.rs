//! The backends every case runs on: a fresh SQLite file, a fresh PostgreSQL database.

use carrel_hub::store::postgres::{Options as PgOptions, PgStore};
use carrel_hub::store::sqlite::SqliteStore;
use carrel_hub::store::Store;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use uuid::Uuid;

pub async fn open_sqlite_at(path: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(path)
            .await
            .expect("open the SQLite store"),
    )
}

pub async fn open_sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_sqlite_at(&dir.path().join("hub.db")).await;
    (dir, store)
}

/// The PostgreSQL server the suite runs against. Without one the suite fails rather
/// than skips: a skipped backend would pass without having been tested.
pub fn postgres_server() -> PgConnectOptions {
    let url = std::env::var("CARREL_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "CARREL_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts \
             a throw-away PostgreSQL and sets it (or set it to a server where this user may \
             CREATE DATABASE)"
        )
    });
    PgConnectOptions::from_str(&url).expect("CARREL_TEST_POSTGRES_URL is a postgres:// URL")
}

/// A new, empty database on the test server (one per case; the server is thrown away
/// after the run, and the databases with it).
pub async fn fresh_postgres_database() -> PgConnectOptions {
    let server = postgres_server();
    let name = format!("carrel_test_{}", Uuid::new_v4().simple());
    let mut admin = server
        .connect()
        .await
        .expect("connect to CARREL_TEST_POSTGRES_URL (started by scripts/test?)");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create a test database");
    admin.close().await.expect("close the admin connection");
    server.database(&name)
}

pub async fn open_postgres_at(database: &PgConnectOptions) -> Arc<PgStore> {
    Arc::new(
        PgStore::connect(database.clone(), &PgOptions::default())
            .await
            .expect("open the PostgreSQL store"),
    )
}

pub async fn open_postgres() -> ((), Arc<dyn Store>) {
    let store = open_postgres_at(&fresh_postgres_database().await).await;
    ((), store)
}

/// Closes the store it is given and opens the same database again.
pub type Reopen = Box<dyn FnOnce(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = Arc<dyn Store>>>>>;

/// A fresh SQLite file, and a way to reopen it.
pub async fn open_sqlite_reopenable() -> (tempfile::TempDir, Arc<dyn Store>, Reopen) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hub.db");
    let first = open_sqlite_at(&path).await;
    let handed_out: Arc<dyn Store> = first.clone();
    let reopen: Reopen = Box::new(move |store: Arc<dyn Store>| {
        Box::pin(async move {
            drop(store);
            first.close().await;
            drop(first);
            let reopened: Arc<dyn Store> = open_sqlite_at(&path).await;
            reopened
        })
    });
    (dir, handed_out, reopen)
}

/// A fresh PostgreSQL database, and a way to reopen it.
pub async fn open_postgres_reopenable() -> ((), Arc<dyn Store>, Reopen) {
    let database = fresh_postgres_database().await;
    let first = open_postgres_at(&database).await;
    let handed_out: Arc<dyn Store> = first.clone();
    let reopen: Reopen = Box::new(move |store: Arc<dyn Store>| {
        Box::pin(async move {
            drop(store);
            first.close().await;
            drop(first);
            let reopened: Arc<dyn Store> = open_postgres_at(&database).await;
            reopened
        })
    });
    ((), handed_out, reopen)
}

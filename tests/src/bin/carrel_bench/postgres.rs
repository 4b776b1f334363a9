//! Figure 9: the PostgreSQL backend in the same run. A scratch database per use on
//! the server given by `--postgres` (made here, dropped at the end), the hub's own
//! schema in each (made by opening a hub store on it), and a raw limit beside the
//! hub's figures: the same rows written with multi-row INSERTs and with COPY.

use crate::fleet::{self, Chain};
use anyhow::{bail, Context};
use carrel_hub::config::redacted;
use chrono::Utc;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};
use std::str::FromStr;
use std::time::Instant;

/// The server the PostgreSQL figures run on, and the scratch databases made there.
pub struct Server {
    url: String,
    made: Vec<String>,
}

impl Server {
    /// `url` is a `postgres://` URL of a database this user may `CREATE DATABASE` from.
    pub async fn connect(url: &str) -> anyhow::Result<Server> {
        let mut admin = PgConnection::connect_with(&options(url)?)
            .await
            .with_context(|| format!("connecting to the PostgreSQL server {}", redacted(url)))?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut admin)
            .await?;
        let fsync: String = sqlx::query_scalar("SHOW fsync")
            .fetch_one(&mut admin)
            .await?;
        let commit: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut admin)
            .await?;
        crate::progress(format!(
            "PostgreSQL {version} at {} (fsync {fsync}, synchronous_commit {commit})",
            redacted(url)
        ));
        if fsync != "on" || commit != "on" {
            crate::progress(
                "warning: this PostgreSQL does not make commits durable: its figures are not comparable with SQLite's",
            );
        }
        admin.close().await?;
        Ok(Server {
            url: url.to_owned(),
            made: Vec::new(),
        })
    }

    /// A new, empty database; returns its URL.
    pub async fn scratch(&mut self, label: &str) -> anyhow::Result<String> {
        let name = format!(
            "carrel_bench_{label}_{}_{}",
            std::process::id(),
            self.made.len()
        );
        let mut admin = PgConnection::connect_with(&options(&self.url)?).await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("creating the scratch database {name}"))?;
        admin.close().await?;
        self.made.push(name.clone());
        with_database(&self.url, &name)
    }

    /// Drops the scratch databases this run made.
    pub async fn drop_scratch(&mut self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect_with(&options(&self.url)?).await?;
        for name in self.made.drain(..) {
            admin
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
                .with_context(|| format!("dropping the scratch database {name}"))?;
        }
        admin.close().await?;
        Ok(())
    }
}

fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .with_context(|| format!("{} is not a postgres:// URL", redacted(url)))
}

/// The same server URL naming another database (the path after the host).
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("{} is not a postgres:// URL", redacted(url));
    };
    let rest = &url[scheme_end + 3..];
    let (before_query, query) = match rest.find('?') {
        Some(q) => (&rest[..q], &rest[q..]),
        None => (rest, ""),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    Ok(format!(
        "{}://{authority}/{name}{query}",
        &url[..scheme_end]
    ))
}

/// What PostgreSQL allows for the hub's event rows, written without the hub.
pub struct Raw {
    /// Multi-row INSERTs of `INSERT_ROWS` rows, `TXN_ROWS` rows per transaction.
    pub insert_rows_per_sec: f64,
    /// COPY FROM STDIN (CSV) of `TXN_ROWS` rows per transaction.
    pub copy_rows_per_sec: f64,
    /// One single-row INSERT per transaction: durable commits per second.
    pub commits_per_sec: f64,
}

/// Rows per multi-row INSERT statement (9 parameters each, under the protocol's
/// 65,535 bind limit).
pub const INSERT_ROWS: usize = 1_000;
/// Rows per transaction for both the INSERTs and each COPY.
pub const TXN_ROWS: usize = 10_000;

/// The raw limit on `url` (an empty scratch database): the hub's schema by the
/// hub's own migrations, then `rows` event rows of the benchmark's mix written to
/// its `site_events` table by multi-row INSERT, the same number by COPY, and
/// `commits` single-row transactions.
pub async fn raw_limit(url: &str, rows: u64, commits: u64) -> anyhow::Result<Raw> {
    let db = options(url)?;
    carrel_hub::store::postgres::PgStore::connect(db.clone(), &Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("making the raw-limit schema: {e}"))?
        .close()
        .await;
    let mut conn = PgConnection::connect_with(&db).await?;
    for site in ["raw-insert", "raw-copy", "raw-single"] {
        sqlx::query(
            "INSERT INTO sites (site_id, name, status, created_at) VALUES ($1, $1, 'active', $2)",
        )
        .bind(site)
        .bind(Utc::now())
        .execute(&mut conn)
        .await?;
    }
    let now = Utc::now();
    let make = |n: u64| -> Vec<fleet::Row> {
        let mut chain = Chain::new(uuid::Uuid::now_v7(), "G123426000001X");
        (0..n).map(|_| chain.next_row(now)).collect()
    };

    let prepared = make(rows);
    let started = Instant::now();
    for txn in prepared.chunks(TXN_ROWS) {
        let mut tx = conn.begin().await?;
        for statement in txn.chunks(INSERT_ROWS) {
            let mut query = sqlx::QueryBuilder::new(
                "INSERT INTO site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) ",
            );
            query.push_values(statement, |mut b, row| {
                let e = &row.event;
                b.push_bind("raw-insert")
                    .push_bind(e.seq as i64)
                    .push_bind(e.event_id)
                    .push_bind(e.batch_id)
                    .push_bind(e.kind.name())
                    .push_bind(e.recorded_at)
                    .push_bind(now)
                    .push_bind(&row.body)
                    .push_bind(&row.sha256);
            });
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    let insert_rows_per_sec = rows as f64 / started.elapsed().as_secs_f64();

    let prepared = make(rows);
    let started = Instant::now();
    for txn in prepared.chunks(TXN_ROWS) {
        let mut csv = String::with_capacity(txn.len() * 800);
        for row in txn {
            let e = &row.event;
            csv.push_str(&format!(
                "raw-copy,{},{},{},{},{},{},{},{}\n",
                e.seq,
                e.event_id,
                e.batch_id,
                e.kind.name(),
                e.recorded_at.to_rfc3339(),
                now.to_rfc3339(),
                csv_field(&row.body),
                row.sha256
            ));
        }
        let mut tx = conn.begin().await?;
        let mut copy = tx
            .copy_in_raw(
                "COPY site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) \
                 FROM STDIN (FORMAT csv)",
            )
            .await?;
        copy.send(csv.into_bytes()).await?;
        copy.finish().await?;
        tx.commit().await?;
    }
    let copy_rows_per_sec = rows as f64 / started.elapsed().as_secs_f64();

    let prepared = make(commits);
    let started = Instant::now();
    for row in &prepared {
        let e = &row.event;
        sqlx::query(
            "INSERT INTO site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) \
             VALUES ('raw-single', $1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.seq as i64)
        .bind(e.event_id)
        .bind(e.batch_id)
        .bind(e.kind.name())
        .bind(e.recorded_at)
        .bind(now)
        .bind(&row.body)
        .bind(&row.sha256)
        .execute(&mut conn)
        .await?;
    }
    let commits_per_sec = commits as f64 / started.elapsed().as_secs_f64();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM site_events")
        .fetch_one(&mut conn)
        .await?;
    if stored as u64 != 2 * rows + commits {
        bail!(
            "the raw limit stored {stored} rows, not {}",
            2 * rows + commits
        );
    }
    conn.close().await?;
    Ok(Raw {
        insert_rows_per_sec,
        copy_rows_per_sec,
        commits_per_sec,
    })
}

/// A CSV field, quoted (the canonical JSON holds commas and quotes).
fn csv_field(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_database_keeps_the_server_user_host_and_query() {
        assert_eq!(
            with_database("postgres://carrel@127.0.0.1:55432/postgres", "x").expect("a URL"),
            "postgres://carrel@127.0.0.1:55432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "y").expect("a URL"),
            "postgresql://u:p@h/y?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "z").expect("a URL"),
            "postgres://h:5432/z"
        );
        assert!(with_database("h:5432/db", "z").is_err());
    }

    #[test]
    fn a_csv_field_doubles_its_quotes() {
        assert_eq!(csv_field(r#"{"a":"b,c"}"#), r#""{""a"":""b,c""}""#);
    }
}

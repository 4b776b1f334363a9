//! The benchmark's cast: a real hub started in-process, and simulated sites that are
//! enrolled for real, keep their own real agent store and run the real agent link.

use anyhow::{bail, Context};
use carrel_hub::model::{Order, Role, User};
use carrel_hub::{admin, server, service};
use carrel_proto::event::{EventKind, Sample, SiteEvent, GENESIS_SHA256};
use carrel_proto::recipe::{Outcome, QcValue};
use carrel_site_agent::link::{Link, LinkState};
use carrel_site_agent::store::Store;
use carrel_site_agent::{identity, tls};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::Digest;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The product every benchmark order asks for (the recipe shipped with the hub).
pub const PRODUCT: &str = "cd19-car-t";
/// Who records the simulated sites' events.
const RECORDED_BY: &str = "agent";

/// A hub serving in-process, on its own runtime.
pub struct Hub {
    pub url: String,
    pub shared: Arc<carrel_hub::app::Hub>,
    pub config: carrel_hub::Config,
    pub physician: User,
    running: std::sync::Mutex<Option<server::Running>>,
    shutdown: CancellationToken,
    runtime: Handle,
    orders: std::sync::atomic::AtomicU64,
}

/// The configuration of a benchmark hub: loopback, free ports, everything else default.
pub fn hub_config(data_dir: &Path) -> carrel_hub::Config {
    carrel_hub::Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        console_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.to_owned(),
        ..carrel_hub::Config::default()
    }
}

/// Runs `server::start` on the hub's runtime, so that everything the hub spawns
/// (connections, site links) runs on that runtime's threads.
pub async fn start_server(
    runtime: &Handle,
    config: carrel_hub::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<server::Running> {
    runtime
        .spawn(server::start(config, shutdown))
        .await
        .context("the hub start task panicked")?
}

impl Hub {
    pub async fn start(runtime: &Handle, data_dir: &Path) -> anyhow::Result<Hub> {
        Hub::start_on(runtime, data_dir, None).await
    }

    /// A hub whose store is `database` (a `postgres://` URL) instead of the SQLite
    /// file in `data_dir` (which still holds its PKI).
    pub async fn start_on(
        runtime: &Handle,
        data_dir: &Path,
        database: Option<String>,
    ) -> anyhow::Result<Hub> {
        let config = carrel_hub::Config {
            database,
            ..hub_config(data_dir)
        };
        let shutdown = CancellationToken::new();
        let running = start_server(runtime, config.clone(), shutdown.clone()).await?;
        let shared = running.shared.clone();
        let physician = admin::add_user(
            shared.store.as_ref(),
            "bench-physician",
            "Bench Physician",
            Role::Physician,
            "bench-password-1234",
            "carrel-bench",
        )
        .await
        .context("adding the benchmark physician")?;
        Ok(Hub {
            url: format!("https://{}", running.addr),
            shared,
            config,
            physician,
            running: std::sync::Mutex::new(Some(running)),
            shutdown,
            runtime: runtime.clone(),
            orders: Default::default(),
        })
    }

    /// Registers a site and enrolls it for real into `dir` (key made there, CSR
    /// signed by the hub CA over TLS pinned by the token's CA fingerprint).
    pub async fn enroll(&self, site_id: &str, dir: &Path) -> anyhow::Result<()> {
        let registered = admin::register_site(
            self.shared.store.as_ref(),
            &self.shared.ca,
            site_id,
            &format!("Bench site {site_id}"),
            86_400,
            "carrel-bench",
        )
        .await
        .with_context(|| format!("registering {site_id}"))?;
        identity::enroll(&self.url, &registered.token, dir, "carrel-bench")
            .await
            .with_context(|| format!("enrolling {site_id}"))?;
        // The site makes the benchmark's product: recorded as the benchmark's
        // set-up, not as a person's signature.
        self.shared
            .store
            .qualify_site(&carrel_hub::model::Qualification {
                site_id: site_id.into(),
                recipe_id: PRODUCT.into(),
                min_version: 1,
                max_version: None,
                qualified_by: "carrel-bench".into(),
                qualified_name: "benchmark set-up (no person signed)".into(),
                qualified_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
                meaning: carrel_hub::model::QUALIFICATION_MEANING.into(),
                reason: "A benchmark site, qualified at set-up".into(),
                withdrawn: None,
            })
            .await
            .with_context(|| format!("qualifying {site_id}"))?;
        Ok(())
    }

    /// An order for `site_id`, created as a physician does (validated, stored, and
    /// the site's link woken).
    pub async fn order(&self, site_id: &str) -> anyhow::Result<Order> {
        let n = self
            .orders
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let form = service::OrderForm {
            patient_pseudonym: format!("BENCH-{n:07}"),
            product: PRODUCT.into(),
            site_id: site_id.into(),
            requested_collection_date: (Utc::now().date_naive() + chrono::Days::new(7)).to_string(),
            request_id: String::new(),
            confirm_second_order: false,
        };
        service::create_order(&self.shared, &self.physician, &form)
            .await
            .map_err(|e| anyhow::anyhow!("ordering for {site_id}: {e}"))
    }

    /// Where the hub's web console listens.
    pub fn console_addr(&self) -> std::net::SocketAddr {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.console_addr)
            .expect("the hub is running")
    }

    pub async fn cancel(&self, order_id: Uuid) -> anyhow::Result<()> {
        service::cancel_order(
            &self.shared,
            &self.physician,
            order_id,
            "The benchmark is done; nothing is made.",
        )
        .await
        .map_err(|e| anyhow::anyhow!("cancelling {order_id}: {e}"))?;
        Ok(())
    }

    /// What the hub's writer of site events has committed, as it counts it:
    /// durable transactions (a group commit is one, whatever it holds), requests
    /// and new events.
    pub fn ingest_counts(&self) -> carrel_hub::store::IngestCounts {
        self.shared.store.ingest_counts()
    }

    pub async fn stop(&self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match running {
            Some(running) => self
                .runtime
                .spawn(running.wait())
                .await
                .context("hub task panicked")?,
            None => Ok(()),
        }
    }
}

/// One simulated site: enrolled, with its own agent store and the real link.
pub struct Site {
    pub site_id: String,
    pub dir: std::path::PathBuf,
    pub store: Arc<Store>,
    pub batch_id: Uuid,
    pub coi: String,
    pub link: watch::Receiver<LinkState>,
    /// Events generated by this site so far (drives the event mix).
    pub generated: u64,
    link_stop: CancellationToken,
    link_task: Option<JoinHandle<()>>,
}

/// Starts the real agent link for an enrolled data directory and its store.
pub fn start_link(
    hub_url: &str,
    dir: &Path,
    store: Arc<Store>,
) -> anyhow::Result<(
    watch::Receiver<LinkState>,
    CancellationToken,
    JoinHandle<()>,
)> {
    let identity = identity::Identity::load(dir)?;
    let tls = tls::mtls_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    let defaults = carrel_site_agent::Config::default();
    let (state, receiver) = watch::channel(LinkState::default());
    let link = Link {
        store,
        hubs: vec![hub_url.to_owned()],
        tls,
        reconnect_min: Duration::from_millis(defaults.reconnect_min_ms),
        reconnect_max: Duration::from_millis(defaults.reconnect_max_ms),
        heartbeat_timeout: Duration::from_millis(defaults.heartbeat_timeout_ms),
        events_per_message: defaults.events_per_message,
        state,
        hub_channel: watch::channel(None).0,
        renewal: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(link.run(stop.clone()));
    Ok((receiver, stop, task))
}

/// Waits until the site's store holds the batch (the order command was committed there).
pub async fn wait_for_batch(
    store: &Store,
    batch_id: Uuid,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if store.batch(batch_id).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("batch {batch_id} did not reach the site within {timeout:?}");
        }
        tokio::select! {
            _ = store.batches_changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

impl Site {
    /// Enrolls a site into `dir`, orders a batch for it, opens its store and starts
    /// its link; returns once the order is committed at the site.
    pub async fn create(hub: &Hub, site_id: &str, dir: &Path) -> anyhow::Result<Site> {
        hub.enroll(site_id, dir).await?;
        let order = hub.order(site_id).await?;
        let store = Arc::new(
            Store::open(&dir.join("agent.db"))
                .await
                .with_context(|| format!("opening the store of {site_id}"))?,
        );
        let (link, link_stop, task) = start_link(&hub.url, dir, store.clone())?;
        wait_for_batch(&store, order.batch_id, Duration::from_secs(60)).await?;
        Ok(Site {
            site_id: site_id.to_owned(),
            dir: dir.to_owned(),
            store,
            batch_id: order.batch_id,
            coi: order.coi,
            link,
            generated: 0,
            link_stop,
            link_task: Some(task),
        })
    }

    /// What the hub has acknowledged of this site's log.
    pub fn acked(&self) -> u64 {
        self.link.borrow().hub_acked_event_seq
    }

    /// Records the next event of the mix in the site's store (committed when this returns).
    pub async fn append_next(&mut self) -> anyhow::Result<SiteEvent> {
        let kind = event_kind(self.generated, &self.coi);
        self.generated += 1;
        Ok(self
            .store
            .append(self.batch_id, &carrel_site_agent::store::By::agent(), kind)
            .await?)
    }

    /// Takes the link down (the site keeps recording, as when the network is out).
    pub async fn pause_link(&mut self) {
        self.link_stop.cancel();
        if let Some(task) = self.link_task.take() {
            let _ = task.await;
        }
    }

    /// Brings the link up again.
    pub fn resume_link(&mut self, hub_url: &str) -> anyhow::Result<()> {
        let (link, stop, task) = start_link(hub_url, &self.dir, self.store.clone())?;
        self.link = link;
        self.link_stop = stop;
        self.link_task = Some(task);
        Ok(())
    }

    /// Records `count` more events while the link is down, straight into the
    /// store's table in large transactions (the same rows `append` writes).
    pub async fn record_offline(&mut self, count: u64) -> anyhow::Result<()> {
        let pool = open_pool(&self.dir.join("agent.db"), false).await?;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, sha256 FROM events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&pool)
                .await?;
        let mut chain = Chain::new(self.batch_id, &self.coi);
        if let Some((seq, sha256)) = last {
            chain.next_seq = seq as u64 + 1;
            chain.prev_sha256 = sha256;
        }
        bulk_insert(&pool, "events", None, &mut chain, count, 10_000).await?;
        pool.close().await;
        self.generated += count;
        Ok(())
    }

    pub async fn stop(mut self) {
        self.link_stop.cancel();
        if let Some(task) = self.link_task.take() {
            let _ = task.await;
        }
        self.store.close().await;
    }
}

/// The `i`-th event of a site's realistic mix, for the batch whose COI is `coi`:
/// eight process-parameter samples (5 parameters each) for one custody scan and one
/// QC result. All within specification, so the batch projection stays the same size.
///
/// Values carry two decimals, as instruments report them. (A value with all 17
/// significant digits breaks the site's hash chain at the hub: the agent hashes the
/// value it recorded, then reads it back from JSON before sending, and serde_json
/// without `float_roundtrip` may parse it one unit in the last place off.)
pub fn event_kind(i: u64, coi: &str) -> EventKind {
    let wobble = (i % 17) as f64 / 17.0;
    let two_decimals = |v: f64| (v * 100.0).round() / 100.0;
    match i % 10 {
        4 => EventKind::CustodyScan {
            checkpoint_id: "receipt".into(),
            expected_coi: coi.into(),
            scanned_coi: coi.into(),
            verifiers: vec!["tech.alice".into(), "tech.bob".into()],
            matched: true,
            location: "cleanroom B, bench 2".into(),
            wristband: None,
        },
        9 => EventKind::QcResult {
            test_id: "ip-viability".into(),
            value: QcValue::Numeric(two_decimals(85.0 + wobble * 10.0)),
            unit: "%".into(),
            method: "automated cell counter".into(),
            site_outcome: Outcome::Pass,
            retest_of: None,
        },
        _ => {
            let hours = (i % 42) as f64 * 4.0;
            let sample = |parameter: &str, value: f64, unit: &str| Sample {
                step_hours: hours,
                parameter: parameter.into(),
                value: two_decimals(value),
                unit: unit.into(),
            };
            EventKind::ProcessSamples {
                step_id: "expansion".into(),
                samples: vec![
                    sample("temperature", 36.9 + wobble * 0.2, "degC"),
                    sample("ph", 7.2 - wobble * 0.1, "pH"),
                    sample("dissolved_o2", 60.0 - wobble * 20.0, "%"),
                    sample("viable_cell_density", 0.5 + wobble * 5.0, "x10^6 cells/mL"),
                    sample("viability", 95.0 - wobble * 3.0, "%"),
                ],
            }
        }
    }
}

/// A time as the stores write it (RFC 3339, UTC, microseconds).
pub fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// One site event with what both stores keep of it.
pub struct Row {
    pub event: SiteEvent,
    pub body: String,
    pub sha256: String,
}

/// Makes the events `first_seq..first_seq + count` of a site's log, chained from
/// `prev_sha256`, exactly as the agent's `append` would record them.
pub struct Chain {
    pub batch_id: Uuid,
    pub coi: String,
    pub next_seq: u64,
    pub prev_sha256: String,
}

impl Chain {
    pub fn new(batch_id: Uuid, coi: &str) -> Chain {
        Chain {
            batch_id,
            coi: coi.to_owned(),
            next_seq: 1,
            prev_sha256: GENESIS_SHA256.to_owned(),
        }
    }

    /// The next event as the hub receives it (its canonical JSON and hash made by
    /// the hub's own `Received::new`).
    pub fn next_received(&mut self, now: DateTime<Utc>) -> carrel_hub::store::Received {
        let received = carrel_hub::store::Received::new(self.next_event(now));
        self.prev_sha256 = received.sha256().to_owned();
        received
    }

    /// The next event; the caller moves `prev_sha256` on to its hash.
    fn next_event(&mut self, now: DateTime<Utc>) -> SiteEvent {
        let event = SiteEvent {
            seq: self.next_seq,
            event_id: Uuid::now_v7(),
            recorded_at: now,
            batch_id: self.batch_id,
            recorded_by: RECORDED_BY.into(),
            prev_sha256: std::mem::take(&mut self.prev_sha256),
            identity: carrel_proto::event::Identity::Agent,
            kind: event_kind(self.next_seq - 1, &self.coi),
        };
        self.next_seq += 1;
        event
    }

    pub fn next_row(&mut self, now: DateTime<Utc>) -> Row {
        let event = self.next_event(now);
        let body = event.canonical_json();
        let sha256 = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        self.prev_sha256 = sha256.clone();
        Row {
            event,
            body,
            sha256,
        }
    }
}

/// Writes `count` more events of a site's log straight into a SQLite table with
/// large multi-row INSERTs (`per_txn` rows per transaction). `hub_site` selects the
/// hub's `site_events` shape (with that site id); otherwise the agent's `events`.
pub async fn bulk_insert(
    pool: &sqlx::SqlitePool,
    table: &str,
    hub_site: Option<&str>,
    chain: &mut Chain,
    count: u64,
    per_txn: u64,
) -> anyhow::Result<()> {
    const PER_STATEMENT: usize = 100;
    let mut left = count;
    while left > 0 {
        let in_txn = left.min(per_txn);
        let now = Utc::now();
        let rows: Vec<Row> = (0..in_txn).map(|_| chain.next_row(now)).collect();
        insert_rows(pool, table, hub_site, &rows, PER_STATEMENT).await?;
        left -= in_txn;
    }
    Ok(())
}

/// Inserts `rows` in one transaction, `per_statement` rows per INSERT.
pub async fn insert_rows(
    pool: &sqlx::SqlitePool,
    table: &str,
    hub_site: Option<&str>,
    rows: &[Row],
    per_statement: usize,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for chunk in rows.chunks(per_statement) {
        let columns = if hub_site.is_some() {
            "(site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256)"
        } else {
            "(seq, event_id, batch_id, kind, recorded_at, body, sha256)"
        };
        let mut query = sqlx::QueryBuilder::new(format!("INSERT INTO {table} {columns} "));
        query.push_values(chunk, |mut b, row| {
            let event = &row.event;
            if let Some(site) = hub_site {
                b.push_bind(site.to_owned());
            }
            b.push_bind(event.seq as i64)
                .push_bind(event.event_id.to_string())
                .push_bind(event.batch_id.to_string())
                .push_bind(event.kind.name())
                .push_bind(ts(event.recorded_at));
            if hub_site.is_some() {
                b.push_bind(ts(event.recorded_at));
            }
            b.push_bind(row.body.clone()).push_bind(row.sha256.clone());
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A pool on a SQLite file with the stores' settings: WAL, `synchronous=FULL`.
pub async fn open_pool(path: &Path, foreign_keys: bool) -> anyhow::Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(foreign_keys)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("opening {}", path.display()))
}

/// Mean size of the canonical JSON of the event mix, in bytes.
pub fn mean_event_bytes() -> f64 {
    let mut chain = Chain::new(Uuid::now_v7(), "G123426000001X");
    let now = Utc::now();
    let total: usize = (0..100).map(|_| chain.next_row(now).body.len()).sum();
    total as f64 / 100.0
}

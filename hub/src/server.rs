//! Starting a hub: store, recipes, CA, TLS, and the gRPC server with health and
//! reflection. Used by `carrel-hub serve`, by `carrel-hub dev` and by tests.

use crate::app::Hub;
use crate::grpc;
use crate::pki::{self, Ca};
use crate::store::{postgres::PgStore, sqlite::SqliteStore, Store};
use crate::Config;
use anyhow::Context;
use carrel_proto::pb;
use carrel_proto::recipe::Recipe;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Recipes shipped with the hub, published at every start (publishing is idempotent).
pub const SHIPPED_RECIPES: &[(&str, &str)] = &[
    (
        "cd19-car-t.v1.toml",
        include_str!("../recipes/cd19-car-t.v1.toml"),
    ),
    (
        "bcma-car-t.v1.toml",
        include_str!("../recipes/bcma-car-t.v1.toml"),
    ),
];

/// How long in-flight requests get to finish after shutdown is requested.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A hub that is serving.
pub struct Running {
    pub addr: SocketAddr,
    /// Address of the web console (HTTPS).
    pub console_addr: SocketAddr,
    /// The hub's application state, as its services share it.
    pub shared: Arc<Hub>,
    task: JoinHandle<anyhow::Result<()>>,
    /// The dry-run simulator site's agent, when this hub hosts it.
    simulator: Option<JoinHandle<()>>,
}

impl Running {
    /// Waits until the server stops (after the shutdown token is cancelled, or the
    /// store failed: then with that error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("hub server task panicked")??;
        if let Some(simulator) = self.simulator {
            simulator
                .await
                .context("dry-run simulator site task panicked")?;
        }
        if let Some(why) = crate::store::failure().reason() {
            anyhow::bail!("stopped because the hub's store failed: {why}");
        }
        Ok(())
    }
}

pub use crate::config::redacted;

/// Opens the store named by the config's database URL.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.database_url();
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = std::path::Path::new(rest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let store = SqliteStore::open_checking(
            path,
            config
                .sqlite_check_before_serving_mib
                .saturating_mul(1 << 20),
        )
        .await
        .with_context(|| format!("opening the hub database {}", path.display()))?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The store's errors name the server without the URL's password. Their
        // message already holds their sources, so it is not chained again here.
        let connect = sqlx::postgres::PgConnectOptions::from_str(&url)
            .map_err(|e| anyhow::anyhow!("database URL: {e}"))?;
        let options = crate::store::postgres::Options {
            max_connections: config.database_max_connections,
            statement_timeout: Duration::from_millis(config.database_statement_timeout_ms),
            ..Default::default()
        };
        let store = PgStore::connect(connect, &options)
            .await
            .map_err(|e| anyhow::anyhow!("opening the hub database (PostgreSQL): {e}"))?;
        Ok(Arc::new(store))
    } else {
        // Only the scheme: the rest of a URL may hold a password.
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        anyhow::bail!("database URL scheme {scheme:?} is not supported: use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE")
    }
}

/// Publishes the shipped recipes and any configured recipe files.
pub async fn publish_recipes(store: &dyn Store, config: &Config) -> anyhow::Result<()> {
    for (name, text) in SHIPPED_RECIPES {
        let recipe = Recipe::from_toml(text).with_context(|| format!("shipped recipe {name}"))?;
        store
            .publish_recipe(&recipe)
            .await
            .with_context(|| format!("publishing {name}"))?;
    }
    for path in &config.recipe_files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        let recipe =
            Recipe::from_toml(&text).with_context(|| format!("recipe {}", path.display()))?;
        store
            .publish_recipe(&recipe)
            .await
            .with_context(|| format!("publishing {}", path.display()))?;
    }
    Ok(())
}

pub fn load_ca(config: &Config) -> anyhow::Result<Ca> {
    let (cert, key) = config.ca_paths();
    Ca::load(&cert, &key).context("loading the hub CA")
}

/// Starts serving; stops when `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store = open_store(&config).await?;
    publish_recipes(store.as_ref(), &config).await?;
    let ca = Arc::new(load_ca(&config)?);
    let server_cert = ca.issue_server_cert(&config.server_names)?;

    // Both addresses are bound before either is announced or served: a hub whose
    // console port is taken stops here, before it says it serves.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let console_listener = std::net::TcpListener::bind(config.console_listen)
        .with_context(|| format!("binding the console address {}", config.console_listen))?;
    let console_addr = console_listener.local_addr()?;
    pki::write_file(
        &config.data_dir.join("console.addr"),
        &format!("{console_addr}\n"),
        false,
    )?;
    // Lets scripts and tests that asked for port 0 find the port.
    pki::write_file(
        &config.data_dir.join("hub.addr"),
        &format!("{addr}\n"),
        false,
    )?;

    let hub = Hub::new(store, config.clone(), ca.clone(), shutdown.clone());
    hub.relay_notifications()
        .await
        .context("listening for other hub replicas' notifications")?;
    // Batches stored before the hub kept analytics measures get theirs from their
    // records, once, before anyone is served.
    if let Some(batches) = hub
        .store
        .backfill_measures()
        .await
        .context("making the analytics measures of the batches stored before")?
    {
        if batches > 0 {
            tracing::info!(
                batches,
                "analytics measures made from the records of earlier batches"
            );
        }
    }
    // The sites' witnesses of the audit trail are checked against it before anyone
    // is served: a removed tail shows here; a restored older backup shows when a site
    // that witnessed more connects.
    for finding in hub.store.check_witnesses().await? {
        tracing::error!(site_id = %finding.site_id, detail = %finding.detail, "AUDIT TRAIL INTEGRITY FINDING: people are refused until an administrator acknowledges it");
    }
    hub.refresh_integrity().await;
    tokio::task::spawn_blocking(crate::service::unusable_hash).await?;
    hub.audit_refusals_periodically();
    tokio::spawn(crate::service::schedule::run_replanner(hub.clone()));
    tokio::spawn(crate::service::analytics::run_trend_watch(hub.clone()));
    // A store that failed to keep a commit must not be used on as if it had (see
    // store::Failure): stop serving, so nothing more is acknowledged.
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            why = crate::store::failure().wait() => {
                tracing::error!(
                    error = %why,
                    "stopping the hub because its store failed: check the disk, then start the hub again; \
                     the database recovers what was committed and the sites send again what was not acknowledged"
                );
                stop.cancel();
            }
            _ = stop.cancelled() => {}
        }
    });
    // Notifications: the notifier turns audit entries into outbox rows, the worker
    // delivers them (see crate::notify).
    let sender = crate::notify::deliver::Sender::new(&config.notifications)?;
    tokio::spawn(crate::notify::run_notifier(
        hub.store.clone(),
        config.notifications.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::notify::deliver::run(
        hub.store.clone(),
        sender,
        config.notifications.clone(),
        shutdown.clone(),
    ));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            format!("{}{}", server_cert.cert_pem, ca.server_chain_pem()),
            server_cert.key_pem.clone(),
        ))
        // During a CA rotation, site certificates of the previous CA are trusted too.
        .client_ca_root(Certificate::from_pem(ca.trust_bundle()))
        .client_auth_optional(true);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::site_link_service_server::SiteLinkServiceServer<grpc::site_link::SiteLinkApi>>()
        .await;
    health_reporter
        .set_serving::<pb::order_service_server::OrderServiceServer<grpc::orders::OrderApi>>()
        .await;
    health_reporter
        .set_serving::<pb::release_service_server::ReleaseServiceServer<grpc::release::ReleaseApi>>(
        )
        .await;
    health_reporter
        .set_serving::<pb::admin_service_server::AdminServiceServer<grpc::admin::AdminApi>>()
        .await;
    health_reporter
        .set_serving::<pb::auth_service_server::AuthServiceServer<grpc::auth::AuthApi>>()
        .await;
    health_reporter
        .set_serving::<pb::notification_service_server::NotificationServiceServer<
            grpc::notifications::NotificationApi,
        >>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // Every service reads at most max_message_bytes per message: a bigger one is
    // refused with OUT_OF_RANGE before it is decoded (tonic's default is 4 MiB).
    let max = config.max_message_bytes;
    let router = Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(grpc::refusals::LogRefusalsLayer)
        .add_service(health_service.max_decoding_message_size(max))
        .add_service(reflection.max_decoding_message_size(max))
        .add_service(
            pb::site_link_service_server::SiteLinkServiceServer::new(grpc::site_link::SiteLinkApi(
                hub.clone(),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::auth_service_server::AuthServiceServer::new(grpc::auth::AuthApi(hub.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::order_service_server::OrderServiceServer::new(grpc::orders::OrderApi(hub.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::release_service_server::ReleaseServiceServer::new(grpc::release::ReleaseApi(
                hub.clone(),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::notification_service_server::NotificationServiceServer::new(
                grpc::notifications::NotificationApi(hub.clone()),
            )
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::admin_service_server::AdminServiceServer::new(grpc::admin::AdminApi(hub.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::schedule_service_server::ScheduleServiceServer::new(grpc::schedule::ScheduleApi(
                hub.clone(),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::analytics_service_server::AnalyticsServiceServer::new(
                grpc::analytics::AnalyticsApi(hub.clone()),
            )
            .max_decoding_message_size(max),
        );

    // The console first: whatever can fail (its TLS configuration) fails before the
    // hub says it is serving.
    crate::console::serve(
        hub.clone(),
        console_listener,
        &format!("{}{}", server_cert.cert_pem, ca.server_chain_pem()),
        &server_cert.key_pem,
        shutdown.clone(),
    )?;
    tracing::info!(%addr, ca_fingerprint = %ca.fingerprint(), database = %redacted(&config.database_url()), "hub serving");
    let drain = shutdown.clone();
    let task = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(
            // Without TCP_NODELAY a small message (an acknowledgement, a command)
            // written while the previous one is still unacknowledged waits for the
            // peer's delayed ACK: up to 40 ms on Linux, seen as the latency's p99.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            drain.clone().cancelled_owned(),
        );
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result.context("gRPC server")?,
            _ = async { drain.cancelled().await; tokio::time::sleep(DRAIN_GRACE).await } => {
                tracing::warn!("requests still open after the drain grace period; stopping anyway");
            }
        }
        tracing::info!("hub stopped");
        Ok(())
    });
    tracing::info!(console = %format!("https://{console_addr}"), "web console serving");
    // The listener is bound: the simulator site's agent can dial in now.
    let simulator = config.dry_run_simulator.then(|| {
        let hub = hub.clone();
        let config = config.clone();
        tokio::spawn(async move {
            if let Some(agent) = crate::dry_run::host(&hub, &config, addr, shutdown).await {
                agent.wait().await;
            }
        })
    });
    Ok(Running {
        addr,
        console_addr,
        shared: hub,
        task,
        simulator,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logged_urls() {
        assert_eq!(
            super::redacted("postgres://carrel:s3cret@db:5432/carrel"),
            "postgres://carrel:***@db:5432/carrel"
        );
        assert_eq!(
            super::redacted("postgres://carrel@db/carrel"),
            "postgres://carrel@db/carrel"
        );
        assert_eq!(
            super::redacted("sqlite:///var/lib/hub.db"),
            "sqlite:///var/lib/hub.db"
        );
    }
}

//! Figure 10: process analytics at scale. A hub of its own is given a history of
//! released batches (by `carrel_hub::demo_history`, through the hub's own doors:
//! placed orders, hash-chained site logs ingested, signed releases) at enrolled
//! sites, about 200 process readings each; then QA asks for charts over real TLS
//! gRPC (`AnalyticsService.GetChart`), one attribute after another, and the
//! console's chart page over HTTPS, and the answer times are measured.

use crate::fleet::{Hub, PRODUCT};
use anyhow::Context;
use carrel_hub::model::Role;
use carrel_proto::pb;
use std::path::Path;
use std::time::Instant;
use tokio::runtime::Handle;

pub struct Figures {
    pub batches: usize,
    pub readings_per_batch: usize,
    pub seed_secs: f64,
    /// Answer times (ms) of GetChart and of the console's chart page.
    pub api_ms: Vec<f64>,
    pub page_ms: Vec<f64>,
}

const QA: (&str, &str) = ("bench-qa", "quality-review-password-1234");

pub async fn run(
    runtime: &Handle,
    dir: &Path,
    site_dir: &Path,
    sites: usize,
    batches: usize,
    requests: usize,
) -> anyhow::Result<Figures> {
    let hub = Hub::start(runtime, &dir.join("analytics-hub")).await?;
    let store = hub.shared.store.clone();
    carrel_hub::admin::add_user(
        store.as_ref(),
        QA.0,
        "Benchmark QA (simulated releases)",
        Role::Qa,
        QA.1,
        "carrel-bench",
    )
    .await
    .context("adding the benchmark's QA person")?;
    let site_ids: Vec<String> = (0..sites).map(|i| format!("history-{i:02}")).collect();
    for site_id in &site_ids {
        hub.enroll(site_id, &site_dir.join(site_id)).await?;
    }
    let recipe = store.latest_recipe(PRODUCT).await?.recipe;
    // Readings every so many process hours, for about 200 per batch.
    let parameter_hours: f64 = recipe
        .steps
        .iter()
        .map(|s| s.duration_hours * s.parameters.len() as f64)
        .sum();
    let sample_interval_hours = parameter_hours / 200.0;
    let readings_per_batch =
        carrel_hub::demo_history::readings_per_batch(&recipe, sample_interval_hours);
    let started = Instant::now();
    let made = carrel_hub::demo_history::seed(
        store.as_ref(),
        &carrel_hub::demo_history::Plan {
            product_id: PRODUCT.into(),
            sites: site_ids.clone(),
            batches_per_site: batches.div_ceil(sites),
            sample_interval_hours,
            seed: 10,
            shift: None,
            physician: hub.physician.username.clone(),
            facility: "G1234".into(),
            releaser: Some((QA.0.into(), "Benchmark QA (simulated releases)".into())),
            unreleased_last: 0,
        },
    )
    .await
    .context("seeding the history")?;
    let seed_secs = started.elapsed().as_secs_f64();

    // QA over real TLS gRPC, with a session of their own.
    let ca = std::fs::read_to_string(hub.config.ca_paths().0).context("the hub's CA")?;
    let channel = tonic::transport::Channel::from_shared(hub.url.clone())?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                .domain_name("localhost"),
        )?
        .connect()
        .await
        .context("connecting to the hub")?;
    let token = pb::auth_service_client::AuthServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            username: QA.0.into(),
            password: QA.1.into(),
        })
        .await?
        .into_inner()
        .token;
    let mut api = pb::analytics_service_client::AnalyticsServiceClient::new(channel);
    let attributes: Vec<(String, String)> = store
        .measure_attributes(PRODUCT)
        .await?
        .into_iter()
        .flat_map(|(a, _)| {
            carrel_hub::model::analytics::chart::statistics_of(&a)
                .iter()
                .map(move |s| (a.clone(), s.as_str().to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut api_ms = Vec::new();
    for i in 0..requests {
        let (attribute, statistic) = &attributes[i % attributes.len()];
        let mut request = tonic::Request::new(pb::GetChartRequest {
            product_id: PRODUCT.into(),
            attribute: attribute.clone(),
            statistic: statistic.clone(),
            csv: false,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let t = Instant::now();
        let chart = api
            .get_chart(request)
            .await?
            .into_inner()
            .chart
            .unwrap_or_default();
        api_ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            chart
                .network
                .as_ref()
                .is_some_and(|n| n.points.len() == made.batches),
            "the chart of {attribute} has not every batch"
        );
    }

    // The console's chart page, with QA's session (the console and the API share
    // sessions): one HTTPS connection per page, as a fresh load.
    let console = hub.console_addr();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ));
    let mut page_ms = Vec::new();
    for i in 0..requests {
        let (attribute, statistic) = &attributes[i % attributes.len()];
        let path =
            format!("/analytics/{PRODUCT}/chart?attribute={attribute}&statistic={statistic}");
        let t = Instant::now();
        let (status, body) = https_get(&tls, console, &path, &token).await?;
        page_ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            status == 200 && body.contains("<svg"),
            "the chart page of {attribute} answered {status}"
        );
    }
    hub.stop().await?;
    Ok(Figures {
        batches: made.batches,
        readings_per_batch,
        seed_secs,
        api_ms,
        page_ms,
    })
}

/// One HTTPS GET with the session cookie, the connection closed after it:
/// (status, body).
async fn https_get(
    tls: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    session: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut stream = tls.connect(name, tcp).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {}={session}\r\nConnection: close\r\n\r\n",
                carrel_hub::console::SESSION_COOKIE
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer).await {
        // A server may close without TLS close_notify once it has answered.
        if answer.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(e.into());
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

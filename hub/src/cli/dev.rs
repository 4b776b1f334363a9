//! `carrel-hub dev`: a whole Carrel network on loopback in one command.
//!
//! A hub on a SQLite file in a throw-away (or given) data directory, its CA, demo
//! users, and two simulated hospital sites whose agents enroll with one-time tokens
//! and connect over real mutual-TLS gRPC, exactly as separate machines would. Only
//! the process boundary is saved: the agents run inside this process.

use super::client::{with_token, ClientArgs};
use crate::model::{BatchState, Role};
use crate::server;
use crate::Config;
use anyhow::Context;
use carrel_proto::pb;
use chrono::{SubsecRound, Utc};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Keep state here instead of a throw-away directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Web console listen address (HTTPS; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7444")]
    pub console_listen: SocketAddr,
    /// Place this many demo orders at start, so batches are moving at once.
    #[arg(long, default_value_t = 0)]
    pub demo_orders: u32,
    /// Process seconds per real second in the simulated sites (30000: a 7-day expansion in ~20 s).
    #[arg(long, default_value_t = 30_000.0)]
    pub time_compression: f64,
    /// Simulated past batches of cd19-car-t to seed at each of the four history
    /// sites on first start, so the analytics pages have something to chart (0: none).
    #[arg(long, default_value_t = 40)]
    pub history_batches: usize,
}

/// The products demo orders are placed for, in turn (both shipped recipes).
const DEMO_PRODUCTS: [&str; 2] = ["cd19-car-t", "bcma-car-t"];

/// Demo users: (user name, full name, role, password).
pub const DEMO_USERS: &[(&str, &str, Role, &str)] = &[
    ("admin", "Ada Admin", Role::Admin, "dev-operator-password"),
    (
        "dr.ada",
        "Dr Ada Byron",
        Role::Physician,
        "dev-physician-password",
    ),
    ("qa.grace", "Grace Hopper", Role::Qa, "dev-qa-password"),
    (
        "tech.tom",
        "Tom Kilburn",
        Role::Technician,
        "dev-technician-password",
    ),
];

/// Demo users who work at both demo sites (the site consoles and bedside scans).
pub const SITE_PEOPLE: &[&str] = &["tech.tom", "dr.ada"];

/// Who the audit trail names for what dev mode sets up.
const DEV_ACTOR: &str = "carrel-hub dev";
/// Process hours between a dev site's simulated readings (and the history's).
const DEV_SAMPLE_INTERVAL_HOURS: f64 = 6.0;

/// Demo sites: (site id, name).
pub const DEMO_SITES: &[(&str, &str)] = &[
    ("site-a", "St Elsewhere University Hospital"),
    ("site-b", "Royal Infirmary Cell Therapy Unit"),
];

/// Sites that exist only to hold a simulated history of past batches for the
/// analytics (no agent runs for them): (site id, name).
pub const HISTORY_SITES: &[(&str, &str)] = &[
    (
        "history-north",
        "Northern Cell Therapy Centre (simulated history)",
    ),
    (
        "history-east",
        "Eastern Regional Hospital (simulated history)",
    ),
    (
        "history-south",
        "Southern University Hospital (simulated history)",
    ),
    (
        "history-west",
        "Western General Hospital (simulated history)",
    ),
];

/// The product of the simulated history.
const HISTORY_PRODUCT: &str = "cd19-car-t";

/// The accounts the simulated history is ordered and released under: (user name,
/// full name, role). Their passwords are random and never shown: nobody signs in
/// as them.
const HISTORY_ACCOUNTS: &[(&str, &str, Role)] = &[
    (
        "dr.history",
        "Simulated history (orders of past batches)",
        Role::Physician,
    ),
    (
        "qa.history",
        "Simulated history (releases of past batches, not a person)",
        Role::Qa,
    ),
];

/// What each demo site is qualified to make: site-a one product, site-b both (the
/// demo orders alternate sites and products, so site-a's are all cd19-car-t).
pub const DEMO_QUALIFICATIONS: &[(&str, &str)] = &[
    ("site-a", "cd19-car-t"),
    ("site-b", "cd19-car-t"),
    ("site-b", "bcma-car-t"),
];

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (_temp, root) = match &args.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new().prefix("carrel-dev-").tempdir()?;
            let root = temp.path().to_owned();
            (Some(temp), root)
        }
    };
    let config = Config {
        listen: args.listen,
        console_listen: args.console_listen,
        data_dir: root.join("hub"),
        heartbeat_interval_ms: 1_000,
        heartbeat_timeout_ms: 5_000,
        // Dev mode runs on loopback: a webhook receiver of one's own may be plain
        // http, on this machine, or anywhere.
        notifications: crate::notify::NotificationsConfig {
            allow_http_webhooks: true,
            webhook_allowlist: ["*", "localhost", "127.0.0.1", "::1"]
                .map(str::to_owned)
                .to_vec(),
            ..Default::default()
        },
        // The simulated sites' operators are not people; dev mode may release their work.
        accept_simulated_people: true,
        // QA can dry-run a draft recipe on the hub's simulator site.
        dry_run_simulator: true,
        // Trend signals are looked for soon after results arrive.
        analytics: crate::model::analytics::trend::AnalyticsSettings {
            trend_interval_secs: 5,
            ..Default::default()
        },
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(super::shutdown_signal(shutdown.clone()));
    let hub = server::start(config.clone(), shutdown.clone()).await?;
    let addr = hub.addr;
    let hub_url = format!("https://{addr}");
    let store = hub.shared.store.clone();

    for (username, full_name, role, password) in DEMO_USERS {
        add_user_once(store.as_ref(), username, full_name, *role, password).await?;
    }

    let mut agents = Vec::new();
    for (site_id, name) in DEMO_SITES {
        let data_dir = root.join(site_id);
        if enroll_once(&hub, &hub_url, site_id, name, &data_dir).await? {
            for person in SITE_PEOPLE {
                store
                    .assign_user_to_site(person, site_id, DEV_ACTOR)
                    .await?;
            }
        }
        if store.capacity(site_id).await?.is_none() {
            store
                .set_capacity(site_id, &demo_capacity(), DEV_ACTOR, Utc::now())
                .await?;
        }
        let mut agent_config = carrel_site_agent::Config::load(&data_dir)?;
        agent_config.hub = hub_url.clone();
        agent_config.heartbeat_timeout_ms = 5_000;
        agent_config.reconnect_max_ms = 5_000;
        agent_config.simulator.time_compression = args.time_compression;
        agent_config.simulator.sample_interval_hours = DEV_SAMPLE_INTERVAL_HOURS;
        agent_config.simulator.instrument_id = format!("{site_id}-sim-cps-01");
        // Simulated technicians scan the right label at each manufacturing checkpoint;
        // the bedside scans (hand-over, infusion) are left to the user.
        agent_config.simulator.auto_scan = true;
        agent_config.console_listen = "127.0.0.1:0".parse()?;
        carrel_site_agent::write_config(&agent_config)?;
        agents.push(carrel_site_agent::start(agent_config, shutdown.clone()).await?);
    }

    qualify_demo_sites(store.as_ref()).await?;
    if args.history_batches > 0 {
        seed_history(&hub, &hub_url, &root, args.history_batches).await?;
    }

    let ca_path = config.ca_paths().0;
    let token_file = root.join("token");
    let console_url = format!("https://{}", hub.console_addr);
    let site_consoles: Vec<String> = agents
        .iter()
        .map(|a| format!("{} http://{}", a.site_id, a.console_addr))
        .collect();
    print_welcome(
        &hub_url,
        &console_url,
        &site_consoles,
        &ca_path,
        &token_file,
        &root,
        args.data_dir.is_none(),
    );

    if args.demo_orders > 0 {
        place_demo_orders(&hub_url, &ca_path, args.demo_orders).await?;
    }

    // Follow the batches so the user sees them move.
    let mut changes = hub.shared.changes.subscribe();
    let mut last_state = std::collections::HashMap::new();
    let mut first_awaiting = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            change = changes.recv() => {
                let Ok(batch_id) = change else { continue };
                let Ok(order) = store.order_by_batch(batch_id).await else { continue };
                let shown = (order.state, order.current_step.clone(), order.decision_recorded);
                // Between two steps there is nothing new to say.
                let between_steps = order.state == BatchState::InProcess && order.current_step.is_none();
                if last_state.get(&batch_id) == Some(&shown) || between_steps {
                    continue;
                }
                last_state.insert(batch_id, shown);
                let step = order.current_step.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
                let decided = if order.decision_recorded { ", decision recorded at site" } else { "" };
                println!(
                    "[{:>6.1}s] {} {} at {}: {}{step}{decided}",
                    started.elapsed().as_secs_f64(),
                    order.coi,
                    order.patient_pseudonym,
                    order.site_id,
                    order.state
                );
                if order.state == BatchState::AwaitingRelease && !first_awaiting {
                    first_awaiting = true;
                    println!(
                        "          first batch awaiting QA release {:.1}s after start: carrel-hub release list",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
    for agent in agents {
        agent.wait().await;
    }
    hub.wait().await?;
    println!("Stopped at {}.", Utc::now().format("%H:%M:%S"));
    Ok(())
}

fn print_welcome(
    hub_url: &str,
    console_url: &str,
    site_consoles: &[String],
    ca: &std::path::Path,
    token_file: &std::path::Path,
    root: &std::path::Path,
    throwaway: bool,
) {
    println!();
    println!("Carrel dev network is up (everything on loopback, TLS everywhere).");
    println!();
    println!(
        "  console    {console_url}   (web console; the certificate is signed by the dev CA below)"
    );
    println!("  hub        {hub_url}   (gRPC; health and reflection served)");
    println!(
        "  site consoles (technicians): {}",
        site_consoles.join(", ")
    );
    println!(
        "  sites      {}",
        DEMO_SITES
            .iter()
            .map(|(id, name)| format!("{id} ({name})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  makes      {}   (carrel-hub site qualifications)",
        DEMO_SITES
            .iter()
            .map(|(id, _)| {
                let products: Vec<&str> = DEMO_QUALIFICATIONS
                    .iter()
                    .filter(|(site, _)| site == id)
                    .map(|(_, product)| *product)
                    .collect();
                format!("{id}: {}", products.join(" and "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "  data       {}{}",
        root.display(),
        if throwaway {
            "  (deleted on exit; keep it with --data-dir)"
        } else {
            ""
        }
    );
    println!();
    println!("Demo users (user / password):");
    for (username, _, role, password) in DEMO_USERS {
        println!("  {:<10} {:<10} {password}", role.as_str(), username);
    }
    println!();
    println!("In another shell:");
    println!("  export CARREL_ADDR={hub_url}");
    println!("  export CARREL_CA_CERT={}", ca.display());
    println!("  export CARREL_TOKEN_FILE={}", token_file.display());
    println!("  echo dev-physician-password | carrel-hub login --user dr.ada");
    println!(
        "  carrel-hub order create --patient P-0001 --site site-a --collection-date {}",
        (Utc::now() + chrono::Duration::days(3)).format("%Y-%m-%d")
    );
    println!("  carrel-hub order list");
    println!("  echo dev-qa-password | carrel-hub login --user qa.grace");
    println!("  carrel-hub release list");
    println!("  carrel-hub release show BATCH_ID");
    println!(
        "  carrel-hub release sign BATCH_ID --meaning released --record-sha256 SHA --user qa.grace"
    );
    println!("      (SHA from `release show`; asks for the password, and at a first signature the");
    println!("      acknowledgement that it binds you as your handwritten signature would)");
    println!();
    println!("Site consoles: sign in as {SITE_PEOPLE:?} (their passwords above). The simulated");
    println!("technicians' scans are marked as simulated; only a hub in dev mode releases them.");
    println!("At the bedside, once released (the label comes from `carrel-hub order show`;");
    println!("each person's password is asked, then the label):");
    println!(
        "  carrel-site-agent scan --data-dir {} --batch BATCH_ID --checkpoint handover --user tech.tom",
        root.join("site-a").display()
    );
    println!(
        "  carrel-site-agent scan --data-dir {} --batch BATCH_ID --checkpoint infusion --user tech.tom --second-user dr.ada",
        root.join("site-a").display()
    );
    println!();
    println!("Ctrl-C stops everything.");
    println!();
}

/// Qualifies the demo sites for their products (once): recorded as dev mode's
/// set-up, not as any person's signature.
async fn qualify_demo_sites(store: &dyn crate::store::Store) -> anyhow::Result<()> {
    qualify_once(
        store,
        DEMO_QUALIFICATIONS,
        "A demo site of carrel-hub dev, qualified at set-up",
    )
    .await
}

/// Qualifies each (site, product) at set-up unless a qualification is in force.
async fn qualify_once(
    store: &dyn crate::store::Store,
    pairs: &[(&str, &str)],
    reason: &str,
) -> anyhow::Result<()> {
    let in_force = store.site_qualifications(None).await?;
    for (site_id, product) in pairs {
        if in_force
            .iter()
            .any(|q| q.site_id == *site_id && q.recipe_id == *product && q.in_force())
        {
            continue;
        }
        store
            .qualify_site(&crate::model::Qualification {
                site_id: (*site_id).to_owned(),
                recipe_id: (*product).to_owned(),
                min_version: 1,
                max_version: None,
                qualified_by: DEV_ACTOR.to_owned(),
                qualified_name: "carrel-hub dev set-up (no person signed)".to_owned(),
                qualified_at: Utc::now().trunc_subsecs(6),
                meaning: crate::model::QUALIFICATION_MEANING.to_owned(),
                reason: reason.to_owned(),
                withdrawn: None,
            })
            .await?;
    }
    Ok(())
}

/// Seeds the simulated history (once: a history site that already has records is
/// left as it is): the history sites are registered and enrolled like any site, with
/// no agent, and qualified for the product; see [`crate::demo_history`].
async fn seed_history(
    hub: &server::Running,
    hub_url: &str,
    root: &std::path::Path,
    batches: usize,
) -> anyhow::Result<()> {
    let store = hub.shared.store.clone();
    let started = std::time::Instant::now();
    for (username, full_name, role) in HISTORY_ACCOUNTS {
        let password = format!("{}{}", Uuid::new_v4(), Uuid::new_v4());
        add_user_once(store.as_ref(), username, full_name, *role, &password).await?;
    }
    for (site_id, name) in HISTORY_SITES {
        enroll_once(
            hub,
            hub_url,
            site_id,
            name,
            &root.join("history").join(site_id),
        )
        .await?;
    }
    let pairs: Vec<(&str, &str)> = HISTORY_SITES
        .iter()
        .map(|(site_id, _)| (*site_id, HISTORY_PRODUCT))
        .collect();
    qualify_once(
        store.as_ref(),
        &pairs,
        "A site of carrel-hub dev's simulated history, qualified at set-up",
    )
    .await?;
    let made = crate::demo_history::seed(
        store.as_ref(),
        &crate::demo_history::Plan {
            product_id: HISTORY_PRODUCT.to_owned(),
            sites: HISTORY_SITES
                .iter()
                .map(|(id, _)| (*id).to_owned())
                .collect(),
            batches_per_site: batches,
            // The dev sites' simulated instruments sample as often.
            sample_interval_hours: DEV_SAMPLE_INTERVAL_HOURS,
            seed: 2026,
            // One site drifts: its viability falls by 1.5 standard deviations from its
            // 30th batch, for the charts to find.
            shift: Some(crate::demo_history::Shift {
                site_id: "history-east".to_owned(),
                from_batch: 29,
                test_id: "viability".to_owned(),
                sigmas: -1.5,
            }),
            physician: HISTORY_ACCOUNTS[0].0.to_owned(),
            facility: "G9999".to_owned(),
            releaser: Some((
                HISTORY_ACCOUNTS[1].0.to_owned(),
                HISTORY_ACCOUNTS[1].1.to_owned(),
            )),
            // Each site's latest two batches await QA's review.
            unreleased_last: 2,
        },
    )
    .await?;
    if made.batches > 0 {
        println!(
            "Seeded a simulated history for analytics: {} past batches of {HISTORY_PRODUCT} ({} records) at {} history sites in {:.1}s.",
            made.batches,
            made.events,
            HISTORY_SITES.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Adds a user at set-up, unless they exist.
async fn add_user_once(
    store: &dyn crate::store::Store,
    username: &str,
    full_name: &str,
    role: Role,
    password: &str,
) -> anyhow::Result<()> {
    match crate::admin::add_user(store, username, full_name, role, password, DEV_ACTOR).await {
        Ok(_) | Err(crate::admin::Error::Store(crate::store::Error::AlreadyExists(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Registers a site and enrolls it into `data_dir` with the hub's CA, unless it
/// already is; true when it was enrolled now.
async fn enroll_once(
    hub: &server::Running,
    hub_url: &str,
    site_id: &str,
    name: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<bool> {
    if carrel_site_agent::identity::Identity::is_enrolled(data_dir) {
        return Ok(false);
    }
    let registered = crate::admin::register_site(
        hub.shared.store.as_ref(),
        &hub.shared.ca,
        site_id,
        name,
        600,
        DEV_ACTOR,
    )
    .await?;
    carrel_site_agent::identity::enroll(
        hub_url,
        &registered.token,
        data_dir,
        env!("CARGO_PKG_VERSION"),
    )
    .await
    .with_context(|| format!("enrolling {site_id}"))?;
    Ok(true)
}

/// Places orders through the real API, signed in as the demo physician.
async fn place_demo_orders(hub_url: &str, ca: &std::path::Path, count: u32) -> anyhow::Result<()> {
    let client = ClientArgs {
        addr: hub_url.to_owned(),
        ca_cert: Some(ca.to_owned()),
        token_file: None,
        json: false,
    };
    let channel = super::client::connect(&client).await?;
    let login = pb::auth_service_client::AuthServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            username: "dr.ada".into(),
            password: "dev-physician-password".into(),
        })
        .await?
        .into_inner();
    let mut orders = pb::order_service_client::OrderServiceClient::new(with_token(
        channel.clone(),
        &login.token,
    )?);
    let mut schedule = pb::schedule_service_client::ScheduleServiceClient::new(with_token(
        channel.clone(),
        &login.token,
    )?);
    for i in 0..count {
        let (site_id, _) = DEMO_SITES[i as usize % DEMO_SITES.len()];
        // Both shipped products, side by side: the first order of each, then in turn.
        let product = DEMO_PRODUCTS[i as usize % DEMO_PRODUCTS.len()];
        // The first collection date the site can book, two days from now or later.
        let date = schedule
            .propose_collection(pb::ProposeCollectionRequest {
                product: product.into(),
                site_id: site_id.into(),
                from: (Utc::now() + chrono::Duration::days(2))
                    .format("%Y-%m-%d")
                    .to_string(),
                other_sites: false,
                count: 1,
            })
            .await?
            .into_inner()
            .proposals
            .first()
            .map(|p| p.collection_date.clone())
            .with_context(|| format!("no collection date is free at {site_id}"))?;
        let order = orders
            .create_order(pb::CreateOrderRequest {
                patient_pseudonym: format!("DEMO-{:04}", i + 1),
                product: product.into(),
                site_id: site_id.into(),
                requested_collection_date: date,
                request_id: uuid::Uuid::now_v7().to_string(),
                // A demo patient of an earlier run may still have an open order.
                confirm_second_order: true,
            })
            .await?
            .into_inner()
            .order
            .context("no order returned")?;
        println!(
            "Demo order {} for {} at {site_id}: COI {}",
            order.order_id, order.patient_pseudonym, order.coi
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// The demo sites' capacity: open every day, with room for many demo orders.
fn demo_capacity() -> crate::schedule::Capacity {
    let mut capacity = crate::schedule::Capacity::example();
    capacity.working_days = (0..7)
        .filter_map(|d| chrono::Weekday::try_from(d).ok())
        .collect();
    capacity.collection_slots_per_day = 4;
    capacity.instruments.insert("apheresis".into(), 2);
    capacity
        .instruments
        .insert("closed-processing-system".into(), 12);
    capacity
}

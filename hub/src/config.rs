//! The hub's configuration: defaults, then a TOML file, then `CARREL_HUB_*`
//! environment variables, then command-line flags, then [`Config::validate`].
//!
//! The process environment is read only here, while loading.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Everything `carrel-hub serve` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC server (sites and people). Env: `CARREL_HUB_LISTEN`.
    pub listen: SocketAddr,
    /// Address of the web console (HTTPS) for people. Env: `CARREL_HUB_CONSOLE_LISTEN`.
    pub console_listen: SocketAddr,
    /// Directory for the CA, the SQLite database and runtime files. Env: `CARREL_HUB_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Database URL; default `sqlite://<data_dir>/hub.db`. Env: `CARREL_HUB_DATABASE`.
    pub database: Option<String>,
    /// PostgreSQL only: most connections this process opens (every replica opens its
    /// own pool). Env: `CARREL_HUB_DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// PostgreSQL only: longest one statement may run or wait for a lock.
    /// Env: `CARREL_HUB_DATABASE_STATEMENT_TIMEOUT_MS`.
    pub database_statement_timeout_ms: u64,
    /// SQLite only: a database file up to this size (MiB) is checked whole (`PRAGMA
    /// quick_check` and `foreign_key_check`) before the hub serves. In a bigger one,
    /// every table but the site event log is checked before serving, and the whole
    /// file right after, while the hub serves; damage found then stops the hub. The
    /// log is nearly all of a grown database and is only ever appended to, so a
    /// hub with 10 million events starts in about a second instead of six.
    /// Env: `CARREL_HUB_SQLITE_CHECK_BEFORE_SERVING_MIB`.
    pub sqlite_check_before_serving_mib: u64,
    /// DNS names and IP addresses the hub's server certificate carries.
    /// Env: `CARREL_HUB_SERVER_NAMES` (comma-separated).
    pub server_names: Vec<String>,
    /// CA certificate and key (PEM); default `<data_dir>/pki/ca.crt` and `ca.key`,
    /// created on first start when both are missing.
    /// Env: `CARREL_HUB_CA_CERT`, `CARREL_HUB_CA_KEY`.
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    /// Facility identification number (a letter and four digits) used in COI identifiers.
    /// Env: `CARREL_HUB_FACILITY`.
    pub facility: String,
    /// How often each side of a site link sends a heartbeat. Env: `CARREL_HUB_HEARTBEAT_INTERVAL_MS`.
    pub heartbeat_interval_ms: u32,
    /// A site link that is silent this long is closed. Env: `CARREL_HUB_HEARTBEAT_TIMEOUT_MS`.
    pub heartbeat_timeout_ms: u32,
    /// How often the hub sends a site the head of its audit trail to witness (besides
    /// when the link opens), and checks what the site reports having witnessed.
    /// Env: `CARREL_HUB_AUDIT_WITNESS_INTERVAL_SECS`.
    pub audit_witness_interval_secs: u32,
    /// Largest gRPC message the hub reads, in bytes, on every service (sites and
    /// people alike); a bigger one is refused with OUT_OF_RANGE before it is decoded.
    /// The hub tells site agents in its Welcome, and they keep each batch below it.
    /// Env: `CARREL_HUB_MAX_MESSAGE_BYTES`.
    pub max_message_bytes: usize,
    /// Messages a site may send on its link per second, sustained (events, acks and
    /// heartbeats alike). A site that sends faster than this, beyond
    /// `site_link_message_burst`, has its link closed with RESOURCE_EXHAUSTED.
    /// Env: `CARREL_HUB_SITE_LINK_MAX_MESSAGES_PER_SECOND`.
    pub site_link_max_messages_per_second: u32,
    /// Messages a site may send at once above the sustained rate.
    /// Env: `CARREL_HUB_SITE_LINK_MESSAGE_BURST`.
    pub site_link_message_burst: u32,
    /// Refused site-link requests (a suspended or unknown site, a certificate not
    /// issued to the site, events for another site's batch, a bad enrollment token)
    /// are audited at most once per site and reason in this many seconds; the
    /// refusals in between are counted into one entry at the end of the window.
    /// Env: `CARREL_HUB_AUDIT_REFUSALS_WINDOW_SECS`.
    pub audit_refusals_window_secs: u32,
    /// Lifetime of a person's session token. Env: `CARREL_HUB_SESSION_TTL_SECS`.
    pub session_ttl_secs: u32,
    /// Release batches whose records were made by a site simulator's operators
    /// rather than people (dev mode and tests only: a production hub refuses to
    /// release them). Env: `CARREL_HUB_ACCEPT_SIMULATED_PEOPLE`.
    pub accept_simulated_people: bool,
    /// Host the simulator site where drafts of recipes are dry-run (`dry-run`): a
    /// site agent inside this process, enrolled with the hub's own CA on first start,
    /// its state in `<data_dir>/dry-run-site`. On one replica only: the site has one
    /// agent. Env: `CARREL_HUB_DRY_RUN_SIMULATOR`.
    pub dry_run_simulator: bool,
    /// Failed sign-ins (and signings) in one window after which a user name is locked
    /// for the rest of the window, counted per user name (known or not) and source
    /// address: a stranger elsewhere cannot lock the person out.
    /// Env: `CARREL_HUB_SIGN_IN_MAX_FAILURES`.
    pub sign_in_max_failures: u32,
    /// The window failed sign-ins are counted in, and so the longest a lock lasts.
    /// Env: `CARREL_HUB_SIGN_IN_LOCKOUT_SECS`.
    pub sign_in_lockout_secs: u32,
    /// Failed sign-ins from one source address, for any user names, after which that
    /// source is refused for the rest of the window.
    /// Env: `CARREL_HUB_SIGN_IN_SOURCE_MAX_FAILURES`.
    pub sign_in_source_max_failures: u32,
    /// Default lifetime of a site enrollment token. Env: `CARREL_HUB_ENROLLMENT_TTL_SECS`.
    pub enrollment_ttl_secs: u32,
    /// Extra recipe files (TOML) to publish at start, besides the ones shipped with the hub.
    pub recipe_files: Vec<PathBuf>,
    /// Lifetime of a site certificate issued at enrollment or renewal.
    /// Env: `CARREL_HUB_SITE_CERTIFICATE_DAYS`.
    pub site_certificate_days: u32,
    /// A site whose certificate expires within this many days is asked to renew it
    /// over its link (less than half the lifetime). Env: `CARREL_HUB_SITE_CERTIFICATE_RENEW_DAYS`.
    pub site_certificate_renew_days: u32,
    /// Certificates (sites', the CA's) expiring within this many days are shown as
    /// expiring on the admin console and counted in metrics.
    /// Env: `CARREL_HUB_CERTIFICATE_WARNING_DAYS`.
    pub certificate_warning_days: u32,
    /// Notifications by e-mail and webhook (`[notifications]`).
    pub notifications: NotificationsConfig,
    /// OpenTelemetry: send traces over OTLP/gRPC to this collector endpoint
    /// (e.g. `http://127.0.0.1:4317`); none when unset. Env: `CARREL_HUB_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Planning of the vein-to-vein clock and re-planning of bookings.
    pub schedule: crate::clock::ScheduleSettings,
    /// Process analytics: which signals reach people as trend signals.
    pub analytics: crate::model::analytics::trend::AnalyticsSettings,
}

/// tonic's own default: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The smallest `max_message_bytes` accepted: room for a batch of ordinary events.
pub const MIN_MAX_MESSAGE_BYTES: usize = 16 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            console_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            data_dir: PathBuf::from("/var/lib/carrel-hub"),
            database: None,
            database_max_connections: 16,
            database_statement_timeout_ms: 30_000,
            sqlite_check_before_serving_mib: 1024,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            ca_cert: None,
            ca_key: None,
            facility: "G1234".into(),
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 20_000,
            audit_witness_interval_secs: 30,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            site_link_max_messages_per_second: 1_000,
            site_link_message_burst: 2_000,
            audit_refusals_window_secs: 60,
            session_ttl_secs: 3_600,
            accept_simulated_people: false,
            dry_run_simulator: false,
            enrollment_ttl_secs: 86_400,
            sign_in_max_failures: 5,
            sign_in_lockout_secs: 900,
            sign_in_source_max_failures: 50,
            recipe_files: Vec::new(),
            site_certificate_days: 730,
            site_certificate_renew_days: 30,
            certificate_warning_days: 30,
            notifications: Default::default(),
            otlp_endpoint: None,
            schedule: crate::clock::ScheduleSettings::default(),
            analytics: Default::default(),
        }
    }
}

fn env_var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// How often a live site link records its site's last contact: often enough
    /// for the link-down check to tell a quiet link from a lost one (a third of its
    /// delay, at most a minute), and no more often than heartbeats come.
    pub fn site_touch_every(&self) -> std::time::Duration {
        (self.notifications.link_down_after() / 3)
            .min(std::time::Duration::from_secs(60))
            .max(std::time::Duration::from_millis(u64::from(
                self.heartbeat_interval_ms,
            )))
    }
}

/// The address a client on this machine dials to reach a hub listening on
/// `listen`: that address, or loopback when the hub listens on every address (the
/// dry-run simulator site's agent dials it).
pub fn dialled_ip(listen: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match listen {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

fn env_parse<T: std::str::FromStr>(name: &'static str, target: &mut T) -> Result<(), Error>
where
    T::Err: std::fmt::Display,
{
    if let Some(value) = env_var(name) {
        *target = value.parse().map_err(|e: T::Err| Error::Env {
            name,
            message: format!("{value:?}: {e}"),
        })?;
    }
    Ok(())
}

impl Config {
    /// Defaults overlaid with the file (if any) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, Error> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn apply_env(&mut self) -> Result<(), Error> {
        env_parse("CARREL_HUB_LISTEN", &mut self.listen)?;
        env_parse("CARREL_HUB_CONSOLE_LISTEN", &mut self.console_listen)?;
        env_parse("CARREL_HUB_DATA_DIR", &mut self.data_dir)?;
        if let Some(v) = env_var("CARREL_HUB_DATABASE") {
            self.database = Some(v);
        }
        if let Some(v) = env_var("CARREL_HUB_SERVER_NAMES") {
            self.server_names = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = env_var("CARREL_HUB_CA_CERT") {
            self.ca_cert = Some(v.into());
        }
        if let Some(v) = env_var("CARREL_HUB_CA_KEY") {
            self.ca_key = Some(v.into());
        }
        env_parse("CARREL_HUB_FACILITY", &mut self.facility)?;
        self.notifications.apply_env()?;
        env_parse(
            "CARREL_HUB_SITE_CERTIFICATE_DAYS",
            &mut self.site_certificate_days,
        )?;
        env_parse(
            "CARREL_HUB_SITE_CERTIFICATE_RENEW_DAYS",
            &mut self.site_certificate_renew_days,
        )?;
        env_parse(
            "CARREL_HUB_CERTIFICATE_WARNING_DAYS",
            &mut self.certificate_warning_days,
        )?;
        if let Some(v) = env_var("CARREL_HUB_OTLP_ENDPOINT") {
            self.otlp_endpoint = Some(v);
        }
        env_parse(
            "CARREL_HUB_DATABASE_MAX_CONNECTIONS",
            &mut self.database_max_connections,
        )?;
        env_parse(
            "CARREL_HUB_DATABASE_STATEMENT_TIMEOUT_MS",
            &mut self.database_statement_timeout_ms,
        )?;
        env_parse(
            "CARREL_HUB_SQLITE_CHECK_BEFORE_SERVING_MIB",
            &mut self.sqlite_check_before_serving_mib,
        )?;
        env_parse(
            "CARREL_HUB_HEARTBEAT_INTERVAL_MS",
            &mut self.heartbeat_interval_ms,
        )?;
        env_parse(
            "CARREL_HUB_AUDIT_WITNESS_INTERVAL_SECS",
            &mut self.audit_witness_interval_secs,
        )?;
        env_parse(
            "CARREL_HUB_HEARTBEAT_TIMEOUT_MS",
            &mut self.heartbeat_timeout_ms,
        )?;
        env_parse("CARREL_HUB_MAX_MESSAGE_BYTES", &mut self.max_message_bytes)?;
        env_parse(
            "CARREL_HUB_SITE_LINK_MAX_MESSAGES_PER_SECOND",
            &mut self.site_link_max_messages_per_second,
        )?;
        env_parse(
            "CARREL_HUB_SITE_LINK_MESSAGE_BURST",
            &mut self.site_link_message_burst,
        )?;
        env_parse(
            "CARREL_HUB_AUDIT_REFUSALS_WINDOW_SECS",
            &mut self.audit_refusals_window_secs,
        )?;
        env_parse("CARREL_HUB_SESSION_TTL_SECS", &mut self.session_ttl_secs)?;
        env_parse(
            "CARREL_HUB_ACCEPT_SIMULATED_PEOPLE",
            &mut self.accept_simulated_people,
        )?;
        env_parse("CARREL_HUB_DRY_RUN_SIMULATOR", &mut self.dry_run_simulator)?;
        env_parse(
            "CARREL_HUB_SIGN_IN_MAX_FAILURES",
            &mut self.sign_in_max_failures,
        )?;
        env_parse(
            "CARREL_HUB_SIGN_IN_LOCKOUT_SECS",
            &mut self.sign_in_lockout_secs,
        )?;
        env_parse(
            "CARREL_HUB_SIGN_IN_SOURCE_MAX_FAILURES",
            &mut self.sign_in_source_max_failures,
        )?;
        env_parse(
            "CARREL_HUB_ENROLLMENT_TTL_SECS",
            &mut self.enrollment_ttl_secs,
        )?;
        Ok(())
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), Error> {
        carrel_proto::coi::Coi::new(&self.facility, 2000, 1).map_err(|e| {
            Error::Invalid(format!(
                "facility {:?} must be a letter and four digits ({e})",
                self.facility
            ))
        })?;
        if self.facility.len() != 5 {
            return Err(Error::Invalid(format!(
                "facility {:?} must be a letter and four digits",
                self.facility
            )));
        }
        if self.heartbeat_interval_ms < 100 {
            return Err(Error::Invalid(
                "heartbeat_interval_ms must be at least 100".into(),
            ));
        }
        if self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms {
            return Err(Error::Invalid(
                "heartbeat_timeout_ms must be at least twice heartbeat_interval_ms".into(),
            ));
        }
        if self.database_max_connections == 0 || self.database_statement_timeout_ms == 0 {
            return Err(Error::Invalid(
                "database_max_connections and database_statement_timeout_ms must be positive"
                    .into(),
            ));
        }
        if self.sign_in_max_failures == 0
            || self.sign_in_lockout_secs == 0
            || self.sign_in_source_max_failures == 0
        {
            return Err(Error::Invalid(
                "sign_in_max_failures, sign_in_lockout_secs and sign_in_source_max_failures must be positive".into(),
            ));
        }
        if self.max_message_bytes < MIN_MAX_MESSAGE_BYTES {
            return Err(Error::Invalid(format!(
                "max_message_bytes must be at least {MIN_MAX_MESSAGE_BYTES}"
            )));
        }
        if self.site_link_max_messages_per_second == 0 || self.site_link_message_burst == 0 {
            return Err(Error::Invalid(
                "site_link_max_messages_per_second and site_link_message_burst must be positive"
                    .into(),
            ));
        }
        self.schedule.check().map_err(Error::Invalid)?;
        self.analytics.check().map_err(Error::Invalid)?;
        if self.audit_refusals_window_secs == 0 {
            return Err(Error::Invalid(
                "audit_refusals_window_secs must be positive".into(),
            ));
        }
        if self.server_names.is_empty() {
            return Err(Error::Invalid(
                "server_names needs at least one name".into(),
            ));
        }
        if self.dry_run_simulator {
            let dialled = dialled_ip(self.listen.ip()).to_string();
            if !self.server_names.contains(&dialled) {
                return Err(Error::Invalid(format!(
                    "dry_run_simulator: the simulator site dials the hub at {dialled}, which server_names must include"
                )));
            }
        }
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            return Err(Error::Invalid(
                "ca_cert and ca_key are given together or not at all".into(),
            ));
        }
        if self.site_certificate_days == 0
            || 2 * self.site_certificate_renew_days >= self.site_certificate_days
        {
            return Err(Error::Invalid(format!(
                "site_certificate_days ({}) must be positive and more than twice site_certificate_renew_days ({}), \
                 or a fresh certificate would already be due for renewal",
                self.site_certificate_days, self.site_certificate_renew_days
            )));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(Error::Invalid(format!(
                    "otlp_endpoint {endpoint:?} must be an http:// or https:// URL (OTLP/gRPC, usually port 4317)"
                )));
            }
        }
        if self.session_ttl_secs == 0 || self.enrollment_ttl_secs == 0 {
            return Err(Error::Invalid(
                "session_ttl_secs and enrollment_ttl_secs must be positive".into(),
            ));
        }
        self.notifications.validate()
    }

    /// The configuration as it may be shown or logged: passwords in the database
    /// and SMTP URLs replaced by `***`.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        shown.database = shown.database.as_deref().map(redacted);
        shown.notifications.smtp_url = shown.notifications.smtp_url.as_deref().map(redacted);
        shown
    }

    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("hub.db").display()))
    }

    pub fn ca_paths(&self) -> (PathBuf, PathBuf) {
        match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => (
                self.data_dir.join("pki/ca.crt"),
                self.data_dir.join("pki/ca.key"),
            ),
        }
    }
}

/// `[notifications]` in the hub's config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// SMTP server for e-mail notifications: `smtp://host:port` (plain, for a relay on
    /// the same machine), `smtp://host:port?tls=required` (STARTTLS) or
    /// `smtps://host:port`; user and password may be given in the URL. E-mail
    /// subscriptions are refused while unset. Env: `CARREL_HUB_SMTP_URL`.
    pub smtp_url: Option<String>,
    /// Sender address of notification e-mail. Env: `CARREL_HUB_SMTP_FROM`.
    pub smtp_from: String,
    /// Accept `http://` webhook URLs (dev mode and tests only; outside them a
    /// webhook must be `https://`). Env: `CARREL_HUB_ALLOW_HTTP_WEBHOOKS`.
    pub allow_http_webhooks: bool,
    /// Where webhooks may go: hosts (`hooks.example.org`, `10.1.2.3`), subdomain
    /// wildcards (`*.example.org`) or `*` for any. An internal address (loopback,
    /// link-local, private; as written or as DNS resolves it) must be listed by
    /// itself. Empty (the default): no webhooks. Env: `CARREL_HUB_WEBHOOK_ALLOWLIST`
    /// (comma-separated).
    pub webhook_allowlist: Vec<String>,
    /// How often the notifier reads new audit entries and the worker looks for due
    /// deliveries, in milliseconds.
    pub poll_interval_ms: u64,
    /// Longest one delivery (an HTTP request, an SMTP conversation) may take.
    pub request_timeout_ms: u64,
    /// Delay before the first retry; it doubles with each failed attempt...
    pub retry_base_ms: u64,
    /// ...up to this.
    pub retry_max_ms: u64,
    /// Attempts after which a notification is marked failed (an admin can requeue it).
    pub max_attempts: u32,
    /// A site not heard from for this long has its link reported down (once per
    /// outage), and restored when it is heard from again.
    /// Env: `CARREL_HUB_LINK_DOWN_AFTER_SECS`.
    pub link_down_after_secs: u64,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            smtp_url: None,
            smtp_from: "carrel@localhost".into(),
            allow_http_webhooks: false,
            webhook_allowlist: Vec::new(),
            poll_interval_ms: 1_000,
            request_timeout_ms: 10_000,
            retry_base_ms: 5_000,
            retry_max_ms: 30 * 60 * 1_000,
            max_attempts: 12,
            link_down_after_secs: 600,
        }
    }
}

impl NotificationsConfig {
    pub fn apply_env(&mut self) -> Result<(), Error> {
        let var = |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("CARREL_HUB_SMTP_URL") {
            self.smtp_url = Some(v);
        }
        if let Some(v) = var("CARREL_HUB_SMTP_FROM") {
            self.smtp_from = v;
        }
        if let Some(v) = var("CARREL_HUB_WEBHOOK_ALLOWLIST") {
            self.webhook_allowlist = v
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = var("CARREL_HUB_ALLOW_HTTP_WEBHOOKS") {
            self.allow_http_webhooks = v.parse().map_err(|e| Error::Env {
                name: "CARREL_HUB_ALLOW_HTTP_WEBHOOKS",
                message: format!("{v:?}: {e}"),
            })?;
        }
        if let Some(v) = var("CARREL_HUB_LINK_DOWN_AFTER_SECS") {
            self.link_down_after_secs = v.parse().map_err(|e| Error::Env {
                name: "CARREL_HUB_LINK_DOWN_AFTER_SECS",
                message: format!("{v:?}: {e}"),
            })?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |m: String| Err(Error::Invalid(format!("notifications: {m}")));
        if let Some(url) = &self.smtp_url {
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return invalid(format!(
                    "smtp_url {url:?} must start with smtp:// or smtps://"
                ));
            }
        }
        if crate::model::notification::check_email(&self.smtp_from).is_err() {
            return invalid(format!(
                "smtp_from {:?} is not an e-mail address",
                self.smtp_from
            ));
        }
        if self.poll_interval_ms == 0
            || self.request_timeout_ms == 0
            || self.retry_base_ms == 0
            || self.max_attempts == 0
            || self.link_down_after_secs == 0
        {
            return invalid("poll_interval_ms, request_timeout_ms, retry_base_ms, max_attempts and link_down_after_secs must be positive".into());
        }
        if self.retry_max_ms < self.retry_base_ms {
            return invalid("retry_max_ms must be at least retry_base_ms".into());
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn link_down_after(&self) -> Duration {
        Duration::from_secs(self.link_down_after_secs)
    }

    /// When to try again after `attempts` failed attempts; `None` once they are used up.
    pub fn retry_delay(&self, attempts: u32) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let doublings = attempts.saturating_sub(1).min(30);
        let delay = self.retry_base_ms.saturating_mul(1 << doublings);
        Some(Duration::from_millis(delay.min(self.retry_max_ms)))
    }
}

/// A URL (of a database, of an SMTP server) fit for a log line or a config dump: a
/// password in the user information (`user:PASSWORD@host`) and the value of any
/// query parameter that names one (`?password=`, `sslpassword=`, as libpq and sqlx
/// accept them) replaced by `***`. The URL is read by the same parser sqlx and the
/// mail client read it with (`url`), so what they take as a password (a percent-
/// encoded key included) is what is hidden; a URL that parser refuses shows
/// nothing after its scheme, since where a password would end cannot be told.
pub fn redacted(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        // A path (`/var/lib/carrel/hub.db`) carries no credentials.
        return text.to_owned();
    };
    let Ok(mut url) = url::Url::parse(text) else {
        return format!("{}://***", &text[..scheme_end]);
    };
    if url.password().is_some() {
        // Refused only for URLs that cannot have a password, which this one has.
        let _ = url.set_password(Some("***"));
    }
    let is_secret = |key: &str| key.to_ascii_lowercase().contains("password");
    if url.query_pairs().any(|(key, _)| is_secret(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_secret(&key) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_shows_every_setting() {
        let example = include_str!("../../deploy/hub.example.toml");
        // Settings with no default are shown too (commented out in the example).
        let config = Config {
            database: Some("postgres://u@h/db".into()),
            ca_cert: Some("/c".into()),
            ca_key: Some("/k".into()),
            otlp_endpoint: Some("http://c".into()),
            notifications: NotificationsConfig {
                smtp_url: Some("smtp://m".into()),
                ..NotificationsConfig::default()
            },
            ..Config::default()
        };
        let defaults = toml::Value::try_from(&config).expect("the defaults as TOML");
        let missing = carrel_proto::config_example::settings_not_shown(&defaults, example);
        assert!(
            missing.is_empty(),
            "deploy/hub.example.toml does not show {missing:?}"
        );
        // And the example, comments left out, is a valid config.
        let parsed: Config = toml::from_str(example).expect("the example parses");
        parsed.validate().expect("the example validates");
    }

    #[test]
    fn redaction_hides_every_password_a_url_can_carry() {
        assert_eq!(
            redacted("postgres://carrel:s3cret@db:5432/carrel"),
            "postgres://carrel:***@db:5432/carrel"
        );
        assert_eq!(
            redacted("postgres://carrel@db/carrel?sslmode=require&password=s3cret"),
            "postgres://carrel@db/carrel?sslmode=require&password=***"
        );
        assert_eq!(
            redacted("postgres://db/c?sslpassword=k3y&PASSWORD=p&application_name=hub"),
            "postgres://db/c?sslpassword=***&PASSWORD=***&application_name=hub"
        );
        assert_eq!(
            redacted("postgres://u:p%40ss@db/c?password=x"),
            "postgres://u:***@db/c?password=***"
        );
        assert_eq!(
            redacted("sqlite:///var/lib/hub.db"),
            "sqlite:///var/lib/hub.db"
        );
        assert_eq!(redacted("/var/lib/hub.db"), "/var/lib/hub.db");
        // sqlx decodes query keys: an encoded "password" is a password too.
        assert_eq!(
            redacted("postgres://u@db/c?pass%77ord=s3cret"),
            "postgres://u@db/c?password=***"
        );
        // A raw '?' or '/' in the password: the parser cannot tell where it ends,
        // so nothing after the scheme is shown.
        assert_eq!(redacted("postgres://u:pa?ss@db/c"), "postgres://***");
        assert_eq!(redacted("postgres://u:pa/ss@db/c"), "postgres://***");
        let dumped = Config {
            database: Some("postgres://carrel@db/carrel?password=s3cret".into()),
            notifications: NotificationsConfig {
                smtp_url: Some("smtps://mail:m41l@smtp.example.org".into()),
                ..NotificationsConfig::default()
            },
            ..Config::default()
        }
        .redacted();
        let text = toml::to_string_pretty(&dumped).expect("dump");
        assert!(!text.contains("s3cret") && !text.contains("m41l"), "{text}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn bad_settings_are_named() {
        let config = Config {
            facility: "12345".into(),
            ..Config::default()
        };
        assert!(config
            .validate()
            .expect_err("bad facility")
            .to_string()
            .contains("facility"));
        let config = Config {
            heartbeat_timeout_ms: 1000,
            ..Config::default()
        };
        assert!(config
            .validate()
            .expect_err("timeout")
            .to_string()
            .contains("heartbeat_timeout_ms"));
        let config = Config {
            max_message_bytes: 100,
            ..Config::default()
        };
        assert!(config
            .validate()
            .expect_err("tiny messages")
            .to_string()
            .contains("max_message_bytes"));
        let config = Config {
            site_link_message_burst: 0,
            ..Config::default()
        };
        assert!(config
            .validate()
            .expect_err("no burst")
            .to_string()
            .contains("site_link_message_burst"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_adress = 3\n").expect("write");
        let err = Config::from_file(&path).expect_err("unknown key");
        assert!(err.to_string().contains("listen_adress"), "{err}");
    }
}

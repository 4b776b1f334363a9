//! The site agent's configuration: defaults, then `<data_dir>/agent.toml` (written at
//! enrollment, editable), then `CARREL_AGENT_*` environment variables, then flags,
//! then [`Config::validate`]. The process environment is read only here.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// The largest `reconnect_max_ms` accepted: past it, a site would wait too long to
/// come back after its hub returns.
pub const RECONNECT_MAX_LIMIT_MS: u64 = 30_000;

/// Everything `carrel-site-agent run` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory with the site's key, certificates and store. Env: `CARREL_AGENT_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Hub address, e.g. `https://hub.example.org:7443`. Env: `CARREL_AGENT_HUB`.
    pub hub: String,
    /// Further addresses of the same hub (replicas on one database), tried in turn
    /// when the link is lost. Env: `CARREL_AGENT_HUBS` (comma-separated).
    pub hubs: Vec<String>,
    /// First reconnect delay after a lost link; doubles up to `reconnect_max_ms`, with jitter.
    pub reconnect_min_ms: u64,
    /// The longest wait between two attempts (5 s by default): a site reconnects
    /// within this long of its hub answering again. At most `RECONNECT_MAX_LIMIT_MS`.
    pub reconnect_max_ms: u64,
    /// The link is dropped when nothing is heard from the hub for this long.
    /// Env: `CARREL_AGENT_HEARTBEAT_TIMEOUT_MS`.
    pub heartbeat_timeout_ms: u64,
    /// Events per message sent to the hub.
    pub events_per_message: usize,
    /// The site console for technicians (plain HTTP: keep it on loopback or behind a
    /// TLS proxy). Env: `CARREL_AGENT_CONSOLE_LISTEN`.
    pub console_listen: std::net::SocketAddr,
    /// Host names the site console answers to besides loopback names (`localhost`,
    /// `127.0.0.1`, `[::1]`) and the address it listens on: a request naming any
    /// other host is refused, so a web page elsewhere cannot reach the console by
    /// DNS rebinding. Env: `CARREL_AGENT_CONSOLE_HOSTS` (comma-separated).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console_hosts: Vec<String>,
    /// A console session ends after this many minutes without a request from the
    /// person (the bench screen goes back to sign-in). Env: `CARREL_AGENT_CONSOLE_IDLE_MINUTES`.
    pub console_idle_minutes: u64,
    /// Failed sign-ins (console or command line) after which a person is locked at
    /// this site until the hub sends their entry again. Env: `CARREL_AGENT_SIGN_IN_ATTEMPTS`.
    pub sign_in_attempts: u32,
    /// The site's IANA time zone (`Europe/London`; the one its calendar at the hub
    /// declares): the console and `events` show times in it, with its abbreviation.
    pub time_zone: String,
    /// Instrument simulation: runs every recipe step that `steps` does not map to
    /// another instrument.
    pub simulator: SimulatorConfig,
    /// The site's instruments (SiLA 2 servers, OPC UA servers), by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instruments: Vec<InstrumentConfig>,
    /// Which instrument runs which recipe step, with which command and parameters,
    /// and where the step's process parameters are read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepMapping>,
}

/// One instrument: the protocol it speaks (`kind`), its name and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum InstrumentConfig {
    /// The simulated instrument (`[simulator]` section); useful to name it in a mapping.
    Simulator {
        name: String,
    },
    Sila2(SilaConfig),
    Opcua(OpcuaConfig),
}

impl InstrumentConfig {
    /// Name the step mappings use; also the instrument id written into step records.
    pub fn name(&self) -> &str {
        match self {
            InstrumentConfig::Simulator { name } => name,
            InstrumentConfig::Sila2(c) => &c.name,
            InstrumentConfig::Opcua(c) => &c.name,
        }
    }
}

/// A SiLA 2 server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilaConfig {
    /// Name the step mappings use; also the instrument id written into step records.
    pub name: String,
    /// `host:port` of the server, e.g. `10.20.0.12:50052`.
    pub address: String,
    /// PEM file with the server's own certificate. The agent accepts exactly this
    /// certificate (SiLA servers present self-signed ones, often naming only their IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_certificate: Option<PathBuf>,
    /// Instead of `pinned_certificate`: PEM file with the CA that issues the server's
    /// certificate (the site's own instrument CA). The certificate must chain to it
    /// and name `server_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<PathBuf>,
    /// The name the server's certificate must carry when `ca_certificate` is pinned
    /// (a DNS name or an IP address); without it, the host of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Plain HTTP/2 without TLS. Only for an instrument network the site vouches for.
    #[serde(default)]
    pub insecure: bool,
    /// Fully qualified identifiers of the features the server must implement, e.g.
    /// `org.carrel/bioprocess/CellExpansionController/v1`; checked at connection.
    #[serde(default)]
    pub features: Vec<String>,
    /// The server's SiLA server UUID, when the site wants the agent to refuse any other
    /// server at this address (a swapped or re-installed instrument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_uuid: Option<String>,
    /// Bound on connecting and on each unary call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// An OPC UA server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaConfig {
    /// Name the step mappings use; also the instrument id written into step records.
    pub name: String,
    /// Endpoint URL, e.g. `opc.tcp://10.20.0.13:4840/carrel/`.
    pub endpoint: String,
    /// `Basic256Sha256` (the default) or `None` (only with `insecure = true`).
    #[serde(default = "default_security_policy")]
    pub security_policy: String,
    /// `SignAndEncrypt` (the default), `Sign`, or `None` (only with `insecure = true`).
    #[serde(default = "default_security_mode")]
    pub security_mode: String,
    /// The agent's application instance certificate (DER or PEM) and its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// The server's certificate (DER or PEM), trusted for this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<PathBuf>,
    /// Allows security policy and mode `None`.
    #[serde(default)]
    pub insecure: bool,
    /// Bound on each connection attempt and each request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The user the agent signs in as (a UserName identity token), with the file
    /// holding the password (its first line; keep it readable by the agent only).
    /// Without a user or a user certificate the session is anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Or an X.509 user identity: a certificate (DER or PEM) and its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_key: Option<PathBuf>,
}

fn default_timeout_ms() -> u64 {
    5_000
}

fn default_security_policy() -> String {
    "Basic256Sha256".into()
}

fn default_security_mode() -> String {
    "SignAndEncrypt".into()
}

/// One recipe step run on a configured instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepMapping {
    /// The recipe step id (e.g. `expansion`), or `operation:<operation>` for every step
    /// of that operation.
    pub step: String,
    /// The instrument (by name) that runs the step.
    pub instrument: String,
    /// The command: for SiLA 2, `<feature id>/Command/<Command>` or just `<Command>`
    /// when the instrument lists one feature; for OPC UA, `<object node id>|<method node id>`.
    #[serde(default)]
    pub command: String,
    /// Command parameters by identifier: a literal (number, boolean, string), or one of
    /// the placeholders `{batch_id}`, `{step_id}`, `{duration_hours}`.
    #[serde(default)]
    pub parameters: toml::Table,
    /// Process parameters read while the step runs.
    #[serde(default)]
    pub readings: Vec<ReadingMapping>,
    /// Seconds between two samples of `readings`.
    #[serde(default = "default_sample_interval_s")]
    pub sample_interval_s: f64,
    /// Defined execution errors (identifiers, e.g. `InstrumentBusy`) that mean the
    /// command did not run and may be started again after `retry_interval_s`, rather
    /// than a failed step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
    /// Seconds between two attempts after a `retry_on` error.
    #[serde(default = "default_retry_interval_s")]
    pub retry_interval_s: f64,
    /// In-process QC results the instrument measures: which recipe test each command
    /// result is. A test of the step that no entry names is entered by a person at
    /// the site console; until then the record says it is missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qc: Vec<QcMapping>,
    /// How the step's end is known when it is not the command's own end (a method
    /// that starts a long run and returns at once): a value the step's instrument
    /// reaches. Until then the readings go on being sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_when: Option<DoneWhen>,
}

/// One QC result: a result the command returned, or a value read from the step's
/// instrument when the step ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QcMapping {
    /// The recipe's test id, e.g. `ip-viability`.
    pub test: String,
    /// The command result it is, e.g. `Viability` (a SiLA response identifier, or an
    /// OPC UA output argument `out1`, `out2`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Or: a SiLA property or OPC UA variable node id of the step's instrument, read
    /// when the step ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    /// The unit the instrument gives it in; it must be the recipe test's unit.
    pub unit: String,
}

impl QcMapping {
    /// Where the value comes from, in words: `Viability`, or `read ns=2;s=X`.
    pub fn source(&self) -> String {
        match (&self.result, &self.read) {
            (Some(result), _) => result.clone(),
            (None, Some(read)) => format!("read {read}"),
            (None, None) => String::new(),
        }
    }
}

/// A step is done when `source` on the step's instrument reads `equals` (compared as
/// numbers when both are, as text otherwise); it failed when it reads one of `failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneWhen {
    /// A SiLA property or OPC UA variable node id, e.g. `ns=2;s=Bioreactor.State`.
    pub source: String,
    pub equals: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

fn default_retry_interval_s() -> f64 {
    30.0
}

fn default_sample_interval_s() -> f64 {
    60.0
}

/// One recipe process parameter read from an instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingMapping {
    /// Recipe parameter name, e.g. `temperature`.
    pub parameter: String,
    /// Instrument (by name) to read it from.
    pub instrument: String,
    /// SiLA 2 property identifier (`<feature id>/Property/<P>` or `<P>`), or OPC UA
    /// variable node id (e.g. `ns=2;s=Bioreactor.Temperature`).
    pub source: String,
    /// Unit recorded with the value.
    pub unit: String,
}

/// Fault switches, set in site configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Viability falls during expansion, ending well below 70 %.
    pub low_viability: bool,
    /// Bacterial contamination: sterility shows growth, endotoxin is high, pH falls, DO collapses.
    pub contamination: bool,
    /// Step id at which the instrument raises a temperature excursion alarm halfway through.
    pub alarm_at_step: Option<String>,
}

/// The simulated closed cell-processing system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Instrument id written into step records.
    pub instrument_id: String,
    /// Process seconds per real second: 1 is real time, 3600 runs a process hour per
    /// second, 30000 a 7-day expansion in about 20 s. Env: `CARREL_AGENT_TIME_COMPRESSION`.
    pub time_compression: f64,
    /// Process hours between two recorded samples of the process parameters.
    pub sample_interval_hours: f64,
    /// Seed of the simulated process, combined with each batch id. Env: `CARREL_AGENT_SEED`.
    pub seed: u64,
    /// Faults to inject.
    pub faults: Faults,
    /// Simulated operators scan the right label at each manufacturing custody
    /// checkpoint, so a demonstration runs unattended. For `carrel-hub dev` and tests;
    /// never on a real site, where technicians scan (`carrel-site-agent scan`).
    pub auto_scan: bool,
    /// The simulator stands in for the QC laboratory too: for a batch it makes from
    /// start to end it records the release tests (each marked simulated). Off,
    /// people enter every release test at the site console, as at a site with real
    /// instruments; a result that may follow release (sterility) can then arrive
    /// after QA released the batch conditionally.
    pub qc_laboratory: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            instrument_id: "sim-cps-01".into(),
            time_compression: 3_600.0,
            sample_interval_hours: 4.0,
            seed: 1,
            faults: Faults::default(),
            auto_scan: false,
            qc_laboratory: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/carrel-site-agent"),
            hub: String::new(),
            hubs: Vec::new(),
            reconnect_min_ms: 200,
            reconnect_max_ms: 5_000,
            heartbeat_timeout_ms: 20_000,
            events_per_message: 200,
            console_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7445)),
            console_hosts: Vec::new(),
            console_idle_minutes: 5,
            sign_in_attempts: 10,
            time_zone: "UTC".into(),
            simulator: SimulatorConfig::default(),
            instruments: Vec::new(),
            steps: Vec::new(),
        }
    }
}

fn env_var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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
    /// Every hub address, the enrolled one first, without repeats.
    pub fn hub_addresses(&self) -> Vec<String> {
        let mut all = vec![self.hub.clone()];
        for hub in &self.hubs {
            if !all.contains(hub) {
                all.push(hub.clone());
            }
        }
        all
    }

    pub const FILE: &'static str = "agent.toml";

    /// Loads `<data_dir>/agent.toml` (if present) and the environment.
    pub fn load(data_dir: &Path) -> Result<Config, Error> {
        let path = data_dir.join(Self::FILE);
        let mut config = if path.exists() {
            Self::from_file(&path)?
        } else {
            Config::default()
        };
        config.data_dir = data_dir.to_owned();
        env_parse("CARREL_AGENT_HUB", &mut config.hub)?;
        if let Some(list) = env_var("CARREL_AGENT_HUBS") {
            config.hubs = list
                .split(',')
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect();
        }
        env_parse("CARREL_AGENT_CONSOLE_LISTEN", &mut config.console_listen)?;
        if let Some(list) = env_var("CARREL_AGENT_CONSOLE_HOSTS") {
            config.console_hosts = list
                .split(',')
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect();
        }
        env_parse(
            "CARREL_AGENT_CONSOLE_IDLE_MINUTES",
            &mut config.console_idle_minutes,
        )?;
        env_parse(
            "CARREL_AGENT_SIGN_IN_ATTEMPTS",
            &mut config.sign_in_attempts,
        )?;
        env_parse(
            "CARREL_AGENT_HEARTBEAT_TIMEOUT_MS",
            &mut config.heartbeat_timeout_ms,
        )?;
        env_parse(
            "CARREL_AGENT_TIME_COMPRESSION",
            &mut config.simulator.time_compression,
        )?;
        env_parse("CARREL_AGENT_SEED", &mut config.simulator.seed)?;
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

    /// The site's time zone ([`Config::time_zone`]).
    pub fn zone(&self) -> Result<chrono_tz::Tz, Error> {
        self.time_zone.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "time_zone {:?} is not an IANA time zone name (such as Europe/London or UTC)",
                self.time_zone
            ))
        })
    }

    pub fn validate(&self) -> Result<(), Error> {
        if !self.hub.starts_with("https://") {
            return Err(Error::Invalid(format!(
                "hub {:?} must be an https:// address (set at enrollment, or CARREL_AGENT_HUB)",
                self.hub
            )));
        }
        if let Some(bad) = self.hubs.iter().find(|h| !h.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "hubs: {bad:?} must be an https:// address"
            )));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(Error::Invalid(
                "reconnect_min_ms must be positive and at most reconnect_max_ms".into(),
            ));
        }
        if self.reconnect_max_ms > RECONNECT_MAX_LIMIT_MS {
            return Err(Error::Invalid(format!(
                "reconnect_max_ms is {}: at most {RECONNECT_MAX_LIMIT_MS} (a site waiting longer stays away from a hub that is back)",
                self.reconnect_max_ms
            )));
        }
        if self.heartbeat_timeout_ms < 200 {
            return Err(Error::Invalid(
                "heartbeat_timeout_ms must be at least 200".into(),
            ));
        }
        if !(1..=1_000).contains(&self.events_per_message) {
            return Err(Error::Invalid(
                "events_per_message must be 1 to 1000".into(),
            ));
        }
        if !(1..=480).contains(&self.console_idle_minutes) {
            return Err(Error::Invalid(format!(
                "console_idle_minutes must be 1 to 480, not {}",
                self.console_idle_minutes
            )));
        }
        if !(3..=100).contains(&self.sign_in_attempts) {
            return Err(Error::Invalid(format!(
                "sign_in_attempts must be 3 to 100, not {}",
                self.sign_in_attempts
            )));
        }
        self.zone()?;
        let sim = &self.simulator;
        if !(sim.time_compression.is_finite() && sim.time_compression > 0.0) {
            return Err(Error::Invalid(
                "simulator.time_compression must be a positive number".into(),
            ));
        }
        if !(sim.sample_interval_hours.is_finite() && sim.sample_interval_hours > 0.0) {
            return Err(Error::Invalid(
                "simulator.sample_interval_hours must be positive".into(),
            ));
        }
        self.validate_instruments()
    }

    /// The instrument named `name`.
    pub fn instrument(&self, name: &str) -> Option<&InstrumentConfig> {
        self.instruments.iter().find(|i| i.name() == name)
    }

    fn validate_instruments(&self) -> Result<(), Error> {
        let bad = |message: String| Err(Error::Invalid(message));
        let mut names = std::collections::HashSet::new();
        for instrument in &self.instruments {
            let name = instrument.name();
            if name.is_empty() {
                return bad("instruments: an instrument has no name".into());
            }
            if !names.insert(name) {
                return bad(format!("instruments: {name:?} is configured twice"));
            }
            let must_exist = |what: &str, path: &Option<PathBuf>| -> Result<(), Error> {
                match path {
                    Some(path) if !path.exists() => Err(Error::Invalid(format!(
                        "instrument {name:?}: {what} {} does not exist",
                        path.display()
                    ))),
                    _ => Ok(()),
                }
            };
            match instrument {
                InstrumentConfig::Simulator { .. } => {}
                InstrumentConfig::Sila2(sila) => {
                    if sila.address.is_empty() || sila.address.contains("://") {
                        return bad(format!(
                            "instrument {name:?}: address must be host:port, not {:?}",
                            sila.address
                        ));
                    }
                    match (&sila.pinned_certificate, &sila.ca_certificate, sila.insecure) {
                        (None, None, false) => return bad(format!(
                            "instrument {name:?}: pin the server's own certificate (pinned_certificate) or the CA that issued it (ca_certificate, with server_name), or set insecure = true for a plain connection"
                        )),
                        (Some(_), Some(_), _) => return bad(format!(
                            "instrument {name:?}: pinned_certificate and ca_certificate are two ways to pin the server; give one"
                        )),
                        (Some(_), None, true) | (None, Some(_), true) => return bad(format!(
                            "instrument {name:?}: a pinned certificate and insecure = true contradict each other"
                        )),
                        _ => {}
                    }
                    if sila.server_name.is_some() && sila.ca_certificate.is_none() {
                        return bad(format!(
                            "instrument {name:?}: server_name is checked only against a pinned CA (ca_certificate); a pinned_certificate is the identity itself"
                        ));
                    }
                    if let Some(server_name) = &sila.server_name {
                        if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
                            return bad(format!(
                                "instrument {name:?}: server_name {server_name:?} is not a DNS name or IP address"
                            ));
                        }
                    }
                    must_exist("pinned_certificate", &sila.pinned_certificate)?;
                    must_exist("ca_certificate", &sila.ca_certificate)?;
                    if sila.timeout_ms == 0 {
                        return bad(format!("instrument {name:?}: timeout_ms must be positive"));
                    }
                }
                InstrumentConfig::Opcua(ua) => {
                    if !ua.endpoint.starts_with("opc.tcp://") {
                        return bad(format!(
                            "instrument {name:?}: endpoint must be an opc.tcp:// URL, not {:?}",
                            ua.endpoint
                        ));
                    }
                    let policy_none = ua.security_policy == "None";
                    let mode_none = ua.security_mode == "None";
                    if !["None", "Basic256Sha256"].contains(&ua.security_policy.as_str()) {
                        return bad(format!(
                            "instrument {name:?}: security_policy {:?} is not supported (Basic256Sha256, or None with insecure = true)",
                            ua.security_policy
                        ));
                    }
                    if !["None", "Sign", "SignAndEncrypt"].contains(&ua.security_mode.as_str()) {
                        return bad(format!(
                            "instrument {name:?}: security_mode {:?} is not one of SignAndEncrypt, Sign, None",
                            ua.security_mode
                        ));
                    }
                    if (policy_none || mode_none) && !ua.insecure {
                        return bad(format!(
                            "instrument {name:?}: security None needs insecure = true"
                        ));
                    }
                    if policy_none != mode_none {
                        return bad(format!(
                            "instrument {name:?}: security_policy and security_mode must both be None or neither"
                        ));
                    }
                    if !policy_none {
                        for (what, path) in [
                            ("client_certificate", &ua.client_certificate),
                            ("client_key", &ua.client_key),
                            ("server_certificate", &ua.server_certificate),
                        ] {
                            if path.is_none() {
                                return bad(format!(
                                    "instrument {name:?}: {what} is required with security_policy {}",
                                    ua.security_policy
                                ));
                            }
                            must_exist(what, path)?;
                        }
                    }
                    if ua.timeout_ms == 0 {
                        return bad(format!("instrument {name:?}: timeout_ms must be positive"));
                    }
                    if ua.username.is_some() != ua.password_file.is_some() {
                        return bad(format!(
                            "instrument {name:?}: username and password_file go together"
                        ));
                    }
                    if ua.user_certificate.is_some() != ua.user_key.is_some() {
                        return bad(format!(
                            "instrument {name:?}: user_certificate and user_key go together"
                        ));
                    }
                    if ua.username.is_some() && ua.user_certificate.is_some() {
                        return bad(format!(
                            "instrument {name:?}: sign in with a username or a user_certificate, not both"
                        ));
                    }
                }
            }
        }
        let mut mapped = std::collections::HashSet::new();
        for mapping in &self.steps {
            if !mapped.insert(mapping.step.as_str()) {
                return bad(format!("steps: step {:?} is mapped twice", mapping.step));
            }
            let Some(instrument) = self.instrument(&mapping.instrument) else {
                return bad(format!(
                    "steps: step {:?} names instrument {:?}, which is not configured",
                    mapping.step, mapping.instrument
                ));
            };
            if let InstrumentConfig::Sila2(sila) = instrument {
                if sila.features.is_empty() {
                    return bad(format!(
                        "steps: step {:?} runs command {:?} on SiLA 2 instrument {:?}, which lists no features: name the feature that has the command (features = [\"<feature id>\"])",
                        mapping.step, mapping.command, mapping.instrument
                    ));
                }
            }
            if !matches!(instrument, InstrumentConfig::Simulator { .. })
                && mapping.command.is_empty()
            {
                return bad(format!(
                    "steps: step {:?} runs on {:?} but names no command",
                    mapping.step, mapping.instrument
                ));
            }
            // SiLA takes lists and structures (arrays and tables here); OPC UA
            // methods here take single values only.
            if matches!(instrument, InstrumentConfig::Opcua(_)) {
                for (key, value) in &mapping.parameters {
                    if matches!(value, toml::Value::Array(_) | toml::Value::Table(_)) {
                        return bad(format!(
                            "steps: step {:?}: parameter {key:?} must be a number, a boolean, text or a date and time (this OPC UA adapter sends no arrays or structures)",
                            mapping.step
                        ));
                    }
                }
            }
            if !(mapping.retry_interval_s.is_finite() && mapping.retry_interval_s > 0.0) {
                return bad(format!(
                    "steps: step {:?}: retry_interval_s must be positive",
                    mapping.step
                ));
            }
            if !(mapping.sample_interval_s.is_finite() && mapping.sample_interval_s > 0.0) {
                return bad(format!(
                    "steps: step {:?}: sample_interval_s must be positive",
                    mapping.step
                ));
            }
            let mut tests = std::collections::HashSet::new();
            for qc in &mapping.qc {
                let named = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
                if qc.test.trim().is_empty() || named(&qc.result) == named(&qc.read) {
                    return bad(format!(
                        "steps: step {:?}: each qc entry names a test and either the command result it comes from (result) or what to read at the step's end (read)",
                        mapping.step
                    ));
                }
                if !tests.insert(qc.test.as_str()) {
                    return bad(format!(
                        "steps: step {:?}: QC test {:?} is mapped twice",
                        mapping.step, qc.test
                    ));
                }
            }
            if let Some(done) = &mapping.done_when {
                if done.source.trim().is_empty() || done.equals.trim().is_empty() {
                    return bad(format!(
                        "steps: step {:?}: done_when names a source and the value it reaches when the step is done (equals)",
                        mapping.step
                    ));
                }
                if matches!(instrument, InstrumentConfig::Simulator { .. }) {
                    return bad(format!(
                        "steps: step {:?}: done_when needs an instrument to read; the simulator ends its steps itself",
                        mapping.step
                    ));
                }
            }
            for reading in &mapping.readings {
                match self.instrument(&reading.instrument) {
                    None => {
                        return bad(format!(
                            "steps: step {:?} reads {:?} from instrument {:?}, which is not configured",
                            mapping.step, reading.parameter, reading.instrument
                        ))
                    }
                    Some(InstrumentConfig::Simulator { .. }) => {
                        return bad(format!(
                            "steps: step {:?} reads {:?} from the simulator, which has no values to read",
                            mapping.step, reading.parameter
                        ))
                    }
                    Some(InstrumentConfig::Sila2(sila)) if sila.features.is_empty() => {
                        return bad(format!(
                            "steps: step {:?} reads {:?} from SiLA 2 instrument {:?}, which lists no features: name the feature that has the property",
                            mapping.step, reading.parameter, reading.instrument
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// What in the step mappings does not fit `recipe`: a step it does not have, a
    /// reading of a parameter the step does not have or in another unit, a QC test
    /// that is not one of the step's in-process tests or is in another unit. Empty
    /// when everything fits.
    pub fn check_against(&self, recipe: &carrel_proto::recipe::Recipe) -> Vec<String> {
        let mut problems = Vec::new();
        let of = format!("recipe {} v{}", recipe.id, recipe.version);
        for mapping in &self.steps {
            let steps: Vec<&carrel_proto::recipe::Step> = recipe
                .steps
                .iter()
                .filter(|s| {
                    mapping.step == s.id
                        || mapping.step.strip_prefix("operation:") == Some(s.operation.as_str())
                })
                .collect();
            if steps.is_empty() {
                problems.push(format!(
                    "step {:?} is not a step or operation:<operation> of {of} (its steps: {})",
                    mapping.step,
                    recipe
                        .steps
                        .iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            for step in steps {
                for reading in &mapping.readings {
                    match step.parameters.iter().find(|p| p.name == reading.parameter) {
                        None => problems.push(format!(
                            "step {:?}: reading {:?} is not a parameter of step {} in {of} (its parameters: {})",
                            mapping.step,
                            reading.parameter,
                            step.id,
                            step.parameters.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                        )),
                        Some(p) if p.unit != reading.unit => problems.push(format!(
                            "step {:?}: reading {:?} is in {:?}; {of} has it in {:?}",
                            mapping.step, reading.parameter, reading.unit, p.unit
                        )),
                        Some(_) => {}
                    }
                }
                for qc in &mapping.qc {
                    match step.in_process_tests.iter().find(|t| t.id == qc.test) {
                        None => problems.push(format!(
                            "step {:?}: QC test {:?} is not an in-process test of step {} in {of}",
                            mapping.step, qc.test, step.id
                        )),
                        Some(t) if t.unit != qc.unit => problems.push(format!(
                            "step {:?}: QC test {:?} is given in {:?}; {of} has it in {:?}",
                            mapping.step, qc.test, qc.unit, t.unit
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
        problems
    }
}

/// The mapping of a recipe step, by step id first, then by `operation:<operation>`.
pub fn mapping_for<'a>(
    steps: &'a [StepMapping],
    step: &carrel_proto::recipe::Step,
) -> Option<&'a StepMapping> {
    let by_operation = format!("operation:{}", step.operation);
    steps
        .iter()
        .find(|m| m.step == step.id)
        .or_else(|| steps.iter().find(|m| m.step == by_operation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_shows_every_setting() {
        let example = include_str!("../../deploy/agent.example.toml");
        let defaults = toml::Value::try_from(Config::default()).expect("the defaults as TOML");
        let missing: Vec<_> = carrel_proto::config_example::settings_not_shown(&defaults, example)
            .into_iter()
            // The data directory is given on the command line, not in the file.
            .filter(|key| key != "data_dir")
            .collect();
        assert!(
            missing.is_empty(),
            "deploy/agent.example.toml does not show {missing:?}"
        );
    }

    #[test]
    fn defaults_need_only_a_hub() {
        let mut config = Config::default();
        assert!(config.validate().is_err(), "no hub address");
        config.hub = "https://127.0.0.1:7443".into();
        config.validate().expect("valid");
    }

    fn with_instruments(extra: &str) -> Result<(), Error> {
        let text = format!("hub = \"https://h:1\"\n{extra}");
        let config: Config = toml::from_str(&text).map_err(|e| Error::Invalid(e.to_string()))?;
        config.validate()
    }

    #[test]
    fn instrument_mappings_are_checked_on_load() {
        let sila = "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\ninsecure = true\nfeatures = [\"org.carrel/bioprocess/CellExpansionController/v1\"]\n";
        with_instruments(&format!(
            "{sila}[[steps]]\nstep = \"expansion\"\ninstrument = \"cps\"\ncommand = \"RunExpansion\"\nparameters = {{ DurationHours = \"{{duration_hours}}\", TargetDensity = 8.0 }}\n"
        ))
        .expect("a valid mapping");
        let unknown = with_instruments(
            "[[steps]]\nstep = \"expansion\"\ninstrument = \"nope\"\ncommand = \"X\"\n",
        )
        .expect_err("unknown instrument");
        assert!(unknown.to_string().contains("not configured"), "{unknown}");
        let twice = with_instruments(&format!(
            "{sila}[[steps]]\nstep = \"expansion\"\ninstrument = \"cps\"\ncommand = \"X\"\n[[steps]]\nstep = \"expansion\"\ninstrument = \"cps\"\ncommand = \"Y\"\n"
        ))
        .expect_err("mapped twice");
        assert!(twice.to_string().contains("mapped twice"), "{twice}");
        let no_pin = with_instruments(
            "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\n",
        )
        .expect_err("neither pin nor insecure");
        assert!(
            no_pin.to_string().contains("pinned_certificate"),
            "{no_pin}"
        );
        let missing = with_instruments(
            "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\npinned_certificate = \"/nonexistent/cps.pem\"\n",
        )
        .expect_err("missing certificate file");
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let both = with_instruments(
            "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\npinned_certificate = \"/etc/hosts\"\nca_certificate = \"/etc/hosts\"\n",
        )
        .expect_err("two pins");
        assert!(both.to_string().contains("give one"), "{both}");
        let name_without_ca = with_instruments(
            "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\npinned_certificate = \"/etc/hosts\"\nserver_name = \"cps.lab\"\n",
        )
        .expect_err("a name checked against nothing");
        assert!(
            name_without_ca
                .to_string()
                .contains("only against a pinned CA"),
            "{name_without_ca}"
        );
        let bad_name = with_instruments(
            "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\nca_certificate = \"/etc/hosts\"\nserver_name = \"not a name\"\n",
        )
        .expect_err("not a DNS name");
        assert!(
            bad_name.to_string().contains("not a DNS name"),
            "{bad_name}"
        );
        let plain_ua = with_instruments(
            "[[instruments]]\nname = \"plc\"\nkind = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:4840\"\nsecurity_policy = \"None\"\nsecurity_mode = \"None\"\n",
        )
        .expect_err("security None without insecure");
        assert!(plain_ua.to_string().contains("insecure"), "{plain_ua}");
    }

    /// The README's example of a site's instrument mapping is a valid config.
    #[test]
    fn qc_and_done_when_mappings_are_checked_on_load() {
        let sila = "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\ninsecure = true\nfeatures = [\"org.carrel/bioprocess/CellExpansionController/v1\"]\n[[steps]]\nstep = \"expansion\"\ninstrument = \"cps\"\ncommand = \"RunExpansion\"\n";
        with_instruments(&format!(
            "{sila}qc = [{{ test = \"ip-viability\", result = \"Viability\", unit = \"%\" }}, {{ test = \"ip-count\", read = \"CellCount\", unit = \"\" }}]\ndone_when = {{ source = \"InstrumentState\", equals = \"Completed\", failed = [\"Faulted\"] }}\n"
        ))
        .expect("a valid mapping");
        for (extra, expected) in [
            (
                "qc = [{ test = \"ip-viability\", result = \"Viability\", read = \"V\", unit = \"%\" }]\n",
                "either the command result",
            ),
            (
                "qc = [{ test = \"ip-viability\", unit = \"%\" }]\n",
                "either the command result",
            ),
            (
                "qc = [{ test = \"t\", result = \"A\", unit = \"%\" }, { test = \"t\", result = \"B\", unit = \"%\" }]\n",
                "mapped twice",
            ),
            (
                "done_when = { source = \"InstrumentState\", equals = \"\" }\n",
                "done_when names a source",
            ),
        ] {
            let refused = with_instruments(&format!("{sila}{extra}")).expect_err(extra);
            assert!(refused.to_string().contains(expected), "{extra}: {refused}");
        }
        let simulated = with_instruments(
            "[[instruments]]\nname = \"sim\"\nkind = \"simulator\"\n[[steps]]\nstep = \"expansion\"\ninstrument = \"sim\"\ndone_when = { source = \"S\", equals = \"done\" }\n",
        )
        .expect_err("the simulator has nothing to read");
        assert!(
            simulated
                .to_string()
                .contains("done_when needs an instrument"),
            "{simulated}"
        );
    }

    #[test]
    fn readme_instrument_example_parses() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Mapping a site's instruments")
            .nth(1)
            .expect("the README section");
        let example = section
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block");
        let config: Config = toml::from_str(&format!("hub = \"https://h:1\"\n{example}"))
            .unwrap_or_else(|e| panic!("README example: {e}"));
        assert_eq!(config.instruments.len(), 2);
        assert_eq!(config.steps.len(), 3);
        assert!(config.steps[0].qc.len() == 1 && config.steps[2].done_when.is_some());
        let error = config
            .validate()
            .expect_err("its certificate files are not here");
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    #[test]
    fn bad_time_compression_is_named() {
        let mut config = Config {
            hub: "https://h:1".into(),
            ..Config::default()
        };
        config.simulator.time_compression = 0.0;
        assert!(config
            .validate()
            .expect_err("zero")
            .to_string()
            .contains("time_compression"));
    }
}

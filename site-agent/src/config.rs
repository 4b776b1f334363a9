//! The site agent's configuration: defaults, then `<data_dir>/agent.toml` (written at
//! enrollment, editable), then `CARREL_AGENT_*` environment variables, then flags,
//! then [`Config::validate`]. The process environment is read only here.

use crate::simulator::Faults;
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
    pub reconnect_max_ms: u64,
    /// The link is dropped when nothing is heard from the hub for this long.
    /// Env: `CARREL_AGENT_HEARTBEAT_TIMEOUT_MS`.
    pub heartbeat_timeout_ms: u64,
    /// Events per message sent to the hub.
    pub events_per_message: usize,
    /// The site console for technicians (plain HTTP: keep it on loopback or behind a
    /// TLS proxy). Env: `CARREL_AGENT_CONSOLE_LISTEN`.
    pub console_listen: std::net::SocketAddr,
    /// Instrument simulation (this build's instrument adapter).
    pub simulator: SimulatorConfig,
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
            reconnect_max_ms: 30_000,
            heartbeat_timeout_ms: 20_000,
            events_per_message: 200,
            console_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7445)),
            simulator: SimulatorConfig::default(),
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_a_hub() {
        let mut config = Config::default();
        assert!(config.validate().is_err(), "no hub address");
        config.hub = "https://127.0.0.1:7443".into();
        config.validate().expect("valid");
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

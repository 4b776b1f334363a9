//! The Carrel hub: the control site's service.
//!
//! It issues per-patient batch orders to site agents, stores every record the sites
//! replicate (with the order and batch state derived from them in the same
//! transaction), lets QA review batch records by exception and sign release, and lets
//! physicians follow their orders. Sites connect to it; it never connects to a site.
//!
//! Map: [`server`] wires everything; [`app`] is the state one hub process shares
//! (store, config, CA, live links) and knows no door; [`service`] is what people do,
//! whichever door they come in by, and the only place where roles are checked;
//! [`grpc`] is the API edge (wire types end there) and [`console`] the web console,
//! the two doors over [`service`];
//! [`model`] is the domain (people, sites, orders, the batch record, and how site
//! events move a batch), with no I/O; [`store`] is the database behind one
//! interface; [`record`] builds and hashes the batch record; [`pki`] is the CA;
//! [`auth`] holds passwords and tokens; [`admin`] registers sites and users;
//! [`cli`] is the command line for people ([`cli::dev`] runs a whole network on
//! loopback); [`telemetry`] writes the logs and traces;
//! [`notify`] turns the audit trail into e-mail and webhook notifications.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client_address;
pub mod clock;
pub mod config;
pub mod console;
pub mod demo_history;
pub mod dry_run;
pub mod export;
pub mod fhir;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod pki;
pub mod record;
pub mod schedule;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

pub use config::Config;

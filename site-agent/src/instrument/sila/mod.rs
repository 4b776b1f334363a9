//! The SiLA 2 adapter: drives a SiLA 2 server (gRPC over HTTP/2) through the features
//! the site maps, without code generated for any particular feature.
//!
//! On connecting it reads the server's SiLAService (name, UUID, implemented features),
//! checks that the features the site expects are implemented, and fetches their
//! feature definitions (FDL XML) from the server itself. The FDL says how a command's
//! parameters and responses are laid out on the wire (field N is the Nth parameter, each
//! a SiLA basic type wrapped in its framework message), so parameters are encoded and
//! responses decoded from it at run time.
//!
//! - Observable command `X`: `X` returns a command execution UUID (recorded by the
//!   executor before it waits); `X_Info` streams status and progress;
//!   `X_Intermediate` streams intermediate responses; `X_Result` gives the responses
//!   or the error. Unobservable command: `X` returns the responses.
//! - Property `P`: `Get_P` (unobservable) or `Subscribe_P` (observable).
//! - Errors: gRPC `ABORTED` with a base64-encoded `SiLAError` in the message, decoded
//!   into [`Error::Validation`], [`Error::DefinedExecution`],
//!   [`Error::UndefinedExecution`] or [`Error::Framework`].
//! - TLS with the server's certificate pinned exactly, or with the site's instrument CA
//!   pinned and the server's name checked; plain HTTP/2 only when the site configures
//!   `insecure = true`. A server the pin does not name is [`crate::instrument::Error::Untrusted`].
//!
//! Supported data types: the basic types String, Integer, Real, Boolean, Date, Time and
//! Timestamp (as ISO 8601 text with the UTC offset), constrained or in lists; structures
//! (a [`crate::instrument::Value::Structure`]); the feature's own data types. Binaries,
//! Any and SiLA client metadata are not (a mapping that needs them is refused with a
//! clear error).
//!
//! The code is split by concern: `fdl` reads feature definitions, `codec` encodes
//! and decodes the messages and errors on the wire, and `client` connects to the
//! server and runs commands and reads properties.

mod client;
mod codec;
mod fdl;

pub use client::{Server, SilaInstrument};
pub use codec::error_from_status;
pub use fdl::{Command, DataType, Element, Feature, Property};

/// The SiLA 2 framework messages (`SiLAFramework.proto`).
#[allow(clippy::doc_lazy_continuation, clippy::enum_variant_names)]
pub mod pb {
    tonic::include_proto!("sila2.org.silastandard");
}

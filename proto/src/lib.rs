//! The contract between Carrel's hub and its site agents, and the vocabulary
//! both sides share.
//!
//! - [`pb`]: the generated protobuf and gRPC types of `package carrel.v1`. They are
//!   wire types: convert them to domain types at the edge (ARCHITECTURE.md, invariant 8).
//! - [`batch`]: the states of a batch, as hub and site agent both name them.
//! - [`coi`]: chain-of-identity identifiers (ISBT 128 style, ISO 7064 mod 37-2 check).
//! - [`recipe`]: the master batch record (recipe) model and the evaluation of QC
//!   results against its specification.
//! - [`event`]: the domain form of site events and hub commands, converted from and to
//!   the wire form in one place.
//! - [`link`]: the site link's protocol as two state machines without I/O (sans-IO).
//! - [`golden`]: the golden batch's bins of time in step, a batch's points over the
//!   band, and where it leaves it.
//! - [`qc`]: which QC result counts when a test was run more than once.
//! - [`people`]: the people of a site's directory, and which role may make which record.
//! - [`suspension`]: who suspended a site and why, as the hub's refusal of its link tells it.
//!
//! It holds no I/O and no state.
#![forbid(unsafe_code)]

pub mod pb {
    //! Generated code for `package carrel.v1`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("carrel.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("carrel_descriptor");
}

pub mod batch;
pub mod closed_stdout;
pub mod coi;
pub mod config_example;
pub mod enrollment;
pub mod event;
pub mod golden;
pub mod link;
pub mod people;
pub mod qc;
pub mod recipe;
pub mod suspension;

/// The site link protocol's version, exchanged in `Hello` and `Welcome`.
pub mod protocol {
    /// This build's version of the site link protocol. Bump the minor for a
    /// compatible change (a new optional field or message), the major for an
    /// incompatible one.
    ///
    /// 1.1: Welcome carries the CA bundle to trust and a request to renew; the site
    /// renews its certificate over the link (CertificateRequest / CertificateIssued).
    /// 1.2: the site's directory of people (PersonUpdated commands), who made each
    /// record and how the site knew (Identity), and PersonLocked.
    /// 1.3: the hub's audit head in Welcome and heartbeats; the site witnesses it and
    /// reports the last one it witnessed (Hello, heartbeats).
    /// 1.4: release meanings "released conditionally" and "release completed", and
    /// the tests a release waits for (ReleaseDecision.outstanding_tests). The hub
    /// sends them only to a site whose agent speaks 1.4 or later.
    pub const VERSION: (u32, u32) = (1, 4);

    /// The first version whose agents read conditional releases and completions.
    pub const CONDITIONAL_RELEASE: (u32, u32) = (1, 4);

    /// Why a peer's protocol version is not accepted.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("{0}")]
    pub struct Incompatible(pub String);

    /// `Ok` when a peer speaking `theirs` ("MAJOR.MINOR", empty for a peer older than
    /// versioning, read as 1.0) can talk to this build: same major, minors at most one apart.
    pub fn check(theirs: &str) -> Result<(u32, u32), Incompatible> {
        let text = if theirs.trim().is_empty() {
            "1.0"
        } else {
            theirs.trim()
        };
        let parsed = text.split_once('.').and_then(|(major, minor)| {
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        });
        let Some((major, minor)) = parsed else {
            return Err(Incompatible(format!(
                "protocol version {theirs:?} is not MAJOR.MINOR"
            )));
        };
        let (our_major, our_minor) = VERSION;
        if major != our_major || minor.abs_diff(our_minor) > 1 {
            return Err(Incompatible(format!(
                "the peer speaks site link protocol {major}.{minor}, this build {our_major}.{our_minor}: \
                 upgrade the older side (a difference of one minor version is supported)"
            )));
        }
        Ok((major, minor))
    }

    pub fn current() -> String {
        format!("{}.{}", VERSION.0, VERSION.1)
    }

    /// Whether a peer that spoke `version` ("MAJOR.MINOR") speaks at least `needed`;
    /// false for an empty or unreadable version.
    pub fn at_least(version: &str, needed: (u32, u32)) -> bool {
        version
            .trim()
            .split_once('.')
            .and_then(|(major, minor)| {
                Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
            })
            .is_some_and(|spoken| spoken >= needed)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn one_minor_apart_works_and_more_does_not() {
            assert!(check("1.3").is_ok());
            assert!(check("1.4").is_ok());
            assert!(check("1.5").is_ok());
            assert!(check("1.2").is_err());
            assert!(check("").is_err(), "a peer from before versioning is 1.0");
            assert!(check("1.6").is_err());
            assert!(check("2.0").is_err());
            assert!(check("one").is_err());
        }

        #[test]
        fn at_least_compares_versions_as_numbers() {
            assert!(at_least("1.4", CONDITIONAL_RELEASE));
            assert!(at_least("1.10", (1, 4)));
            assert!(at_least("2.0", (1, 4)));
            assert!(!at_least("1.3", CONDITIONAL_RELEASE));
            assert!(!at_least("", CONDITIONAL_RELEASE));
            assert!(!at_least("one", CONDITIONAL_RELEASE));
        }
    }
}

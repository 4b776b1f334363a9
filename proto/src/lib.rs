//! The contract between Carrel's hub and its site agents, and the vocabulary
//! both sides share.
//!
//! - [`pb`]: the generated protobuf and gRPC types of `package carrel.v1`. They are
//!   wire types: convert them to domain types at the edge (ARCHITECTURE.md, invariant 8).
//! - [`coi`]: chain-of-identity identifiers (ISBT 128 style, ISO 7064 mod 37-2 check).
//! - [`recipe`]: the master batch record (recipe) model and the evaluation of QC
//!   results against its specification.
//! - [`event`]: the domain form of site events and hub commands, converted from and to
//!   the wire form in one place.
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

pub mod coi;
pub mod enrollment;
pub mod event;
pub mod recipe;

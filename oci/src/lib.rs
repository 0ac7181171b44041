//! strait's OCI vocabulary, shared by the builder (which writes images and speaks to
//! registries) and the registry (which stores and serves them).
//!
//! Descriptors, manifests, indexes, platforms, media types and the Distribution error
//! codes are the `oci-spec` crate's own types, re-exported here so both crates name one
//! version of them. This crate adds only what `oci-spec` does not fit:
//!
//! - [`Digest`]: sha256 only, 64 lowercase hex digits. Both crates name files by a
//!   digest's hex, so a digest is a path component and must be stricter than the image
//!   spec's grammar, which `oci_spec::image::Digest` follows (any algorithm). Ours tells a
//!   malformed digest from one of another algorithm (the registry answers them
//!   differently), orders (the builder keeps sorted maps of blobs), and is one pointer
//!   and a length (the registry makes one per request); [`Digest::to_spec`] gives
//!   oci-spec's for a descriptor.
//! - [`Blob`]: an oci-spec descriptor with its digest checked to be a [`Digest`].
//! - [`names`]: the repository-name component and tag grammars.
//! - [`Reference`]: image references as docker writes them. `oci_spec::distribution::Reference`
//!   refuses bracketed IPv6 registries (`[::1]:5000/app`), fills in `latest` where no tag
//!   was written (the builder must know), accepts upper-case hex and other algorithms in
//!   digests, and gives no reason when it refuses.
//! - [`media`]: docker's v2 media types, which `oci-spec`'s `MediaType` knows only as
//!   `Other`, and their OCI equivalents.
//!
//! Nothing here does I/O.

#![forbid(unsafe_code)]

pub mod blob;
pub mod digest;
pub mod media;
pub mod names;
pub mod platform;
pub mod reference;

pub use blob::Blob;
pub use digest::{Digest, DigestError};
pub use oci_spec;
pub use oci_spec::distribution::ErrorCode;
pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, Platform};
pub use reference::{Reference, ReferenceError};

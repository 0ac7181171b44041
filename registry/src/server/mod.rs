//! The HTTP API: every endpoint of the OCI Distribution Spec v1.1, a file per resource.
//! Each file imports only from those above it in this list:
//!
//! - `parts`: request inputs checked (names, digests, lengths), storage keys, responses.
//! - `state`: [`Registry`] (storage, configuration, auth, open upload sessions, metrics)
//!   and the authorization every request passes.
//! - `listing`: the catalog and tag lists, in pages.
//! - `manifests`: manifests by tag or digest, and referrers.
//! - `blobs`: blobs, with byte ranges.
//! - `uploads`: the upload state machine (a blob is visible only when whole and verified).
//! - `upkeep`: stale uploads expire; storage gauges.
//! - `token`: `/token`.
//! - `routing`: path to endpoint, the dispatcher, per-request metrics.

mod blobs;
mod listing;
mod manifests;
mod parts;
mod routing;
mod state;
mod token;
mod upkeep;
mod uploads;

pub use parts::Params;
pub use state::Registry;

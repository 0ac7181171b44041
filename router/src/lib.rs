//! strait's router: an HTTP/1.1 and HTTP/2 reverse proxy (and TCP routes) on pingora,
//! serving from routing tables compiled out of discovery snapshots and hot-swapped with
//! `arc-swap`.
//!
//! The modules form layers; each imports only from the layers below it (a test checks:
//! `tests/it/tidy.rs`). Bottom to top:
//!
//! 1. [`wire`]: request and response heads, framing, chunked decoding, header, host and
//!    path checks, the ClientHello's SNI. Imports nothing of the crate. [`io`]: stream
//!    helpers (idle timeout, splice, a stream with a head pushed back).
//! 2. [`config`]: the `[router]` section.
//! 3. [`tls`]: certificates by SNI (downstream) and TLS to upstream services.
//! 4. [`pool`]: per-service pools (balancers, outlier ejection, state that survives
//!    table swaps), built from snapshots; idle upstream connections per thread.
//! 5. [`table`]: a snapshot compiled into hosts, routes and TCP routes (control plane),
//!    looked up per request (hot path).
//! 6. [`metrics`], [`heads`] (the HTTP/1 head writers), [`explain`] (`route explain`),
//!    [`access_log`].
//! 7. [`request`]: the request core: the one routing prologue, `hash_key`, the request
//!    state and the retry rules every HTTP path uses.
//! 8. [`paths`]: the HTTP/1 pump, HTTP/2 streams, pingora's proxy for HTTP/2 services,
//!    TCP routes, health checks.
//! 9. [`front`]: the front door every connection enters.
//! 10. [`service`]: wiring: the table-follower thread and the pingora server.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod config;
pub mod explain;
pub mod front;
pub mod heads;
pub mod io;
pub mod metrics;
pub mod paths;
pub mod pool;
pub mod request;
pub mod service;
pub mod table;
pub mod tls;
pub mod wire;

pub use config::RouterConfig;
pub use service::{Router, RouterError, RouterHandle, StartOptions};
pub use table::Table;

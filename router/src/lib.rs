//! strait's router: an HTTP/1.1 and HTTP/2 reverse proxy on pingora, serving from routing
//! tables compiled out of discovery snapshots and hot-swapped with `arc-swap`.
//!
//! * [`table`]: compile a `Snapshot` into a [`Table`] (control plane) and look up routes
//!   (hot path).
//! * [`pool`]: per-service endpoint pools, balancers, outlier ejection; state that
//!   survives table swaps.
//! * [`front`]: strict HTTP/1 head reading and validation before pingora sees a request.
//! * [`pump`]: the per-request hot path for HTTP/1 (parse, route, relay; own upstream
//!   pool in [`upstream_pool`], wire pieces in [`h1`]).
//! * [`proxy`]: the shared request state and pingora's `ProxyHttp` for HTTP/2.
//! * [`health`]: active health checks, when services ask for them.
//! * [`tls`]: certificates by SNI, hot-reloaded; TLS to upstream services.
//! * [`service`]: wiring: the table-follower thread and the pingora server.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod config;
pub mod explain;
pub mod front;
pub mod heads;
pub mod health;
pub mod io;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod pump;
pub mod pump_h2;
pub mod service;
pub mod table;
pub mod tcp;
pub mod tls;
pub mod wire;

pub use config::RouterConfig;
pub use service::{Router, RouterError, RouterHandle, StartOptions};
pub use table::Table;

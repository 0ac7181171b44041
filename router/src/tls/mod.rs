//! TLS, both ways: [`downstream`] terminates client connections (certificates by SNI,
//! hot-reloaded); [`upstream`] connects to services that ask for it (per-service roots,
//! SNI, client certificates). Both are loaded and checked once, at startup.

pub mod downstream;
pub mod upstream;

pub use downstream::{CertError, CertInfo, CertStore};
pub use upstream::{UpstreamTls, UpstreamTlsError, UpstreamTlsSet, peer};

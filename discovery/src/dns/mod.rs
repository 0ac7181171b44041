//! strait's DNS server: A/AAAA/SRV answers for healthy instances, from tables compiled
//! out of discovery snapshots. Control plane: [`table::compile`] pre-encodes every answer
//! to wire bytes. Hot path: [`answer::respond`] parses the header and question, looks the
//! name up, copies the pre-encoded records and patches the header — no allocation per
//! query. See docs/dns.md for the names it answers.

pub mod answer;
pub mod server;
pub mod table;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8600))
}

fn default_domain() -> String {
    "strait".into()
}

fn default_ttl() -> Duration {
    Duration::from_secs(5)
}

/// The `[dns]` section of strait's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP listen address (port 0 picks a free port).
    #[serde(default = "default_addr")]
    pub addr: SocketAddr,
    /// The domain strait is authoritative for; everything else is REFUSED.
    #[serde(default = "default_domain", deserialize_with = "domain")]
    pub domain: String,
    /// TTL of answers (and of the SOA's negative caching).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Answer with `warning` instances too.
    #[serde(default)]
    pub serve_warning: bool,
}

/// Whether `domain` (dots at either end ignored) is a domain name of DNS labels.
pub fn is_domain(domain: &str) -> bool {
    let domain = domain.trim_matches('.');
    !domain.is_empty()
        && domain.len() <= 200
        && domain.split('.').all(|l| {
            crate::model::validate_dns_label("dns.domain", &l.to_ascii_lowercase()).is_ok()
        })
}

fn domain<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let domain = String::deserialize(deserializer)?;
    if is_domain(&domain) {
        Ok(domain)
    } else {
        Err(serde::de::Error::custom(format!(
            "`{domain}` is not a domain name (labels of a-z, 0-9 and '-', dot-separated)"
        )))
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            addr: default_addr(),
            domain: default_domain(),
            ttl: default_ttl(),
            serve_warning: false,
        }
    }
}

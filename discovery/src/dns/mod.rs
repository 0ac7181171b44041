//! strait's DNS server: A/AAAA/SRV answers for healthy instances, from tables compiled
//! out of discovery snapshots. Layers, bottom-up: [`wire`] reads a query without
//! allocating; [`table::compile`] (control plane) encodes every answer with hickory-proto;
//! [`answer::respond`] (hot path) reads the query, looks the name up, copies the
//! pre-encoded answer and patches the header — no allocation per query; [`server`] runs
//! one UDP socket per worker and a TCP listener; [`oracle`] checks [`wire`] against
//! hickory-proto's decoder (tests and fuzzing). See docs/dns.md.

pub mod answer;
pub mod oracle;
pub mod server;
pub mod table;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
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
    /// UDP sockets (`SO_REUSEPORT`), each served by a thread of its own. Default: the
    /// number of cores.
    #[serde(default, deserialize_with = "workers")]
    pub workers: Option<NonZeroUsize>,
    /// The name server's addresses: `ns.<domain>` A/AAAA, the target of the apex NS and
    /// the SOA's MNAME. Default: `addr`'s IP (loopback when that is unspecified).
    #[serde(default)]
    pub ns_addresses: Vec<IpAddr>,
    /// Answers `id.server.` and `hostname.bind.` CH TXT with this (RFC 4892). Off when
    /// absent.
    #[serde(default, deserialize_with = "identity")]
    pub identity: Option<String>,
    /// Sent as NSID (RFC 5001) to queries that ask for it. Off when absent.
    #[serde(default, deserialize_with = "identity")]
    pub nsid: Option<String>,
}

impl DnsConfig {
    /// UDP workers: `workers`, or the number of cores.
    pub fn worker_count(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            NonZeroUsize::get,
        )
    }

    /// `ns_addresses`, or the listen address (loopback for an unspecified one).
    pub fn name_server_addresses(&self) -> Vec<IpAddr> {
        if !self.ns_addresses.is_empty() {
            return self.ns_addresses.clone();
        }
        match self.addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            IpAddr::V6(v6) if v6.is_unspecified() => vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
            ip => vec![ip],
        }
    }
}

/// Most workers `dns.workers` takes.
const MAX_WORKERS: usize = 256;

fn workers<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<NonZeroUsize>, D::Error> {
    let n = usize::deserialize(deserializer)?;
    match NonZeroUsize::new(n) {
        Some(n) if n.get() <= MAX_WORKERS => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is out of range: 1 to {MAX_WORKERS} (leave it out for one per core)"
        ))),
    }
}

/// Longest identity: a TXT character-string holds 255 bytes; NSID is kept as short.
const MAX_IDENTITY: usize = 255;

fn identity<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let id = String::deserialize(deserializer)?;
    if id.is_empty()
        || id.len() > MAX_IDENTITY
        || !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(serde::de::Error::custom(format!(
            "`{id}`: use 1 to {MAX_IDENTITY} printable ASCII characters (or leave it out to send none)"
        )));
    }
    Ok(Some(id))
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
            workers: None,
            ns_addresses: Vec::new(),
            identity: None,
            nsid: None,
        }
    }
}

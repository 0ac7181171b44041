//! The `[router]` section of strait's configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a service's instances are chosen for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerKind {
    /// Power of two random choices, fewest outstanding requests (weighted). The default.
    #[default]
    LeastRequest,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Consistent hashing (ring) with bounded load, keyed by `hash_on`.
    ConsistentHash,
    /// Weighted random.
    Random,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    ClientIp,
}

/// The protocol strait speaks to a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext (h2c), e.g. for gRPC.
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN (`h2`); needs `tls = true`.
    H2,
}

/// An integer setting within `min..=max`: a value outside makes the router refuse every
/// request (0 headers) or cannot work (0 threads), so it is a configuration error.
fn in_range<'de, D, T>(deserializer: D, min: T, max: T) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + std::fmt::Display,
{
    let value = T::deserialize(deserializer)?;
    if value < min || value > max {
        return Err(serde::de::Error::custom(format!(
            "{value} is out of range: {min} to {max}"
        )));
    }
    Ok(value)
}

fn threads<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 1, 1024)
}

fn max_headers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 1, 10_000)
}

fn max_header_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 1024, 16 << 20)
}

fn h2_streams<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, 1, 10_000)
}

fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, 0, 100)
}

/// `[router.services.<name>]`: names as the data model has them, each service's settings
/// workable (a health check that cannot run is refused here, not at startup).
fn services<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, ServiceSettings>, D::Error> {
    let services = BTreeMap::<String, ServiceSettings>::deserialize(deserializer)?;
    for (name, settings) in &services {
        discovery::model::validate_service_name(name)
            .map_err(|e| serde::de::Error::custom(format!("service `{name}`: {e}")))?;
        if let Some(problem) = settings.health_check.as_ref().and_then(|c| c.problem()) {
            return Err(serde::de::Error::custom(format!(
                "service `{name}`: health_check: {problem}"
            )));
        }
    }
    Ok(services)
}

/// Per-service router settings (`[router.services.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    #[serde(default)]
    pub balancer: BalancerKind,
    /// For `consistent-hash`: `{ header = "x-user" }`, `{ cookie = "session" }` or `"client-ip"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// `http1` (default), `h2c` (cleartext) or `h2` (over TLS).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Connect to the service's instances over TLS (see [`crate::tls::upstream`]).
    #[serde(default)]
    pub tls: bool,
    /// TLS: the server name sent (SNI) and verified. Without it, the instance's IP
    /// address is verified (no SNI is sent for an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// TLS: trust only the CA certificates in this PEM file (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// TLS: verify the instance's certificate (default). `false` is for testing only.
    #[serde(default = "default_verify")]
    pub verify: bool,
    /// TLS: a client certificate chain (PEM) presented to the instances (mTLS); with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// TLS: the private key (PEM) of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Active health checks of the service's instances by the router (see
    /// [`crate::paths::health`]); off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheckKind {
    /// `GET path`; a 2xx or 3xx answer passes. Over TLS for a `tls` service.
    #[default]
    Http,
    /// A TCP connect (and TLS handshake for a `tls` service) passes.
    Tcp,
}

/// `[router.services.<name>.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// HTTP: the path asked for.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// HTTP: the Host header sent (default: the service's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Time between two checks of one instance.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A check that takes longer fails.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed checks that take an instance out of the pool.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that bring it back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

impl HealthCheckConfig {
    /// Why these settings cannot work, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.kind == HealthCheckKind::Http
            && (!self.path.starts_with('/') || self.path.bytes().any(|b| b <= b' ' || b == 0x7f))
        {
            return Some(format!(
                "path {:?} must start with / and have no spaces or control characters",
                self.path
            ));
        }
        if let Some(host) = &self.host
            && !crate::wire::is_plain_host(host)
        {
            return Some(format!("host {host:?} is not a host name"));
        }
        if self.interval < Duration::from_millis(100) {
            return Some("interval must be at least 100ms".into());
        }
        if self.timeout.is_zero() {
            return Some("timeout must be more than 0".into());
        }
        if self.unhealthy_threshold == 0 || self.healthy_threshold == 0 {
            return Some("thresholds must be at least 1".into());
        }
        None
    }
}

fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            balancer: BalancerKind::default(),
            hash_on: None,
            protocol: UpstreamProtocol::default(),
            tls: false,
            sni: None,
            ca: None,
            verify: default_verify(),
            cert: None,
            key: None,
            health_check: None,
        }
    }
}

fn default_verify() -> bool {
    true
}

fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_threads() -> usize {
    1
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_retries() -> u32 {
    2
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_keepalive() -> Duration {
    Duration::from_secs(2)
}
fn default_max_connections() -> usize {
    65_536
}
fn default_request_buffer_bytes() -> usize {
    64 * 1024
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_hops() -> u32 {
    8
}
fn default_mass_removal_fraction() -> u32 {
    50
}
fn default_mass_removal_hold() -> Duration {
    Duration::from_secs(60)
}
fn default_min_local_endpoints() -> usize {
    1
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(5)
}
fn default_max_ejection_percent() -> u32 {
    50
}
fn default_retry_budget_percent() -> u32 {
    20
}
fn default_h2_max_streams() -> u32 {
    100
}

/// A certificate chain and its private key, PEM files. Reloaded when they change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS-terminating listener (`[[router.tls]]`): HTTP/1.1 and HTTP/2 by ALPN. The
/// certificate for a connection is chosen by SNI among `certificates` (the first whose
/// subject names cover the server name); the first one is the default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub certificates: Vec<CertificateFiles>,
    /// Open connections this listener takes at most (default: `router.max_connections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Idle keep-alive timeout on this listener (default: `router.idle_timeout`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub idle_timeout: Option<Duration>,
}

/// The mass-removal guard: a pool whose eligible instances would drop by more than
/// `fraction` percent in one update keeps the vanished ones (stale) for `hold`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MassRemovalConfig {
    /// Share of a pool's eligible instances (percent) whose vanishing in one update
    /// triggers the guard; 100 turns it off.
    #[serde(
        default = "default_mass_removal_fraction",
        deserialize_with = "percent"
    )]
    pub fraction: u32,
    /// How long vanished instances stay routable.
    #[serde(default = "default_mass_removal_hold", with = "humantime_serde")]
    pub hold: Duration,
}

impl Default for MassRemovalConfig {
    fn default() -> Self {
        MassRemovalConfig {
            fraction: default_mass_removal_fraction(),
            hold: default_mass_removal_hold(),
        }
    }
}

/// Passive outlier detection: eject endpoints that keep failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive connect failures or 5xx responses before an ejection.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection lasts this long; each further one doubles it (capped at 5 minutes).
    #[serde(default = "default_base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Never eject more than this share of a pool (Envoy's panic threshold idea).
    #[serde(default = "default_max_ejection_percent", deserialize_with = "percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Plain-HTTP listener (HTTP/1.1 and h2c). Port 0 picks a free port.
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// Worker threads for the data plane.
    #[serde(default = "default_threads", deserialize_with = "threads")]
    pub threads: usize,
    /// This router's zone: instances in it are preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Use only local-zone instances while at least this many are eligible.
    #[serde(default = "default_min_local_endpoints")]
    pub min_local_endpoints: usize,
    /// Send traffic to instances whose health is `warning` too.
    #[serde(default)]
    pub serve_warning: bool,
    /// Request head (request line + headers) size limit; larger heads get 431.
    #[serde(
        default = "default_max_header_bytes",
        deserialize_with = "max_header_bytes"
    )]
    pub max_header_bytes: usize,
    /// Header count limit; more get 431.
    #[serde(default = "default_max_headers", deserialize_with = "max_headers")]
    pub max_headers: usize,
    /// The whole request head must arrive within this long of its first byte (slowloris).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Default upstream connect timeout (a route's `timeouts.connect` overrides it).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Default upstream request timeout (a route's `timeouts.request` overrides it).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connect failures are always retried on another instance, this many times.
    #[serde(default = "default_connect_retries")]
    pub connect_retries: u32,
    /// Retries may add at most this percentage of the requests in flight.
    #[serde(default = "default_retry_budget_percent", deserialize_with = "percent")]
    pub retry_budget_percent: u32,
    /// On SIGTERM, wait at most this long for in-flight requests.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// While draining (shutdown, binary upgrade), an idle HTTP/1 keep-alive connection
    /// waits this long (at most `drain_timeout`) for one more request, answered with
    /// `Connection: close`, before it is closed.
    #[serde(default = "default_drain_keepalive", with = "humantime_serde")]
    pub drain_keepalive: Duration,
    /// Open connections the plain HTTP listener takes at most (TLS listeners: their own
    /// `max_connections`, this by default); past it new ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections one client address may hold (all listeners together); 0: no
    /// limit.
    #[serde(default)]
    pub max_connections_per_ip: usize,
    /// Request bodies up to this size are read whole before an upstream is chosen and
    /// connected (nginx's `proxy_request_buffering`); larger ones stream. 0: always
    /// stream.
    #[serde(default = "default_request_buffer_bytes")]
    pub request_buffer_bytes: usize,
    /// Each read of a request body must bring bytes within this long, else 408 (a
    /// buffered body) or the request is cut off (a streamed one).
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Requests that have passed through more strait routers than this (their `Via`
    /// entries) get 508, as do those that passed through this one already.
    #[serde(default = "default_max_hops")]
    pub max_hops: u32,
    #[serde(default)]
    pub mass_removal: MassRemovalConfig,
    /// HTTP/2: concurrent streams per connection.
    #[serde(default = "default_h2_max_streams", deserialize_with = "h2_streams")]
    pub h2_max_concurrent_streams: u32,
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Per-service settings, by service name.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "services"
    )]
    pub services: BTreeMap<String, ServiceSettings>,
    /// TLS-terminating listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsListener>,
    /// JSON-lines access log: `stdout`, `stderr` or a file path. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogTarget>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            http_addr: default_http_addr(),
            threads: default_threads(),
            zone: None,
            min_local_endpoints: default_min_local_endpoints(),
            serve_warning: false,
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            connect_retries: default_connect_retries(),
            retry_budget_percent: default_retry_budget_percent(),
            drain_timeout: default_drain_timeout(),
            drain_keepalive: default_drain_keepalive(),
            max_connections: default_max_connections(),
            max_connections_per_ip: 0,
            request_buffer_bytes: default_request_buffer_bytes(),
            body_timeout: default_body_timeout(),
            max_hops: default_max_hops(),
            mass_removal: MassRemovalConfig::default(),
            h2_max_concurrent_streams: default_h2_max_streams(),
            outlier: OutlierConfig::default(),
            services: BTreeMap::new(),
            tls: Vec::new(),
            access_log: None,
        }
    }
}

/// Where access log lines go: `stdout`, `stderr`, or a file path (appended to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl From<String> for AccessLogTarget {
    fn from(s: String) -> Self {
        match s.as_str() {
            "stdout" | "-" => AccessLogTarget::Stdout,
            "stderr" => AccessLogTarget::Stderr,
            _ => AccessLogTarget::File(PathBuf::from(s)),
        }
    }
}

impl From<AccessLogTarget> for String {
    fn from(t: AccessLogTarget) -> String {
        match t {
            AccessLogTarget::Stdout => "stdout".into(),
            AccessLogTarget::Stderr => "stderr".into(),
            AccessLogTarget::File(p) => p.display().to_string(),
        }
    }
}

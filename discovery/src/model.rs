//! The discovery data model: services and their instances, HTTP and TCP routes.
//!
//! These are the shapes the admin API accepts and the store persists. Every value that
//! crosses a trust boundary is checked by a `validate` here, so the store and the tables
//! compiled from it can assume well-formed data. `docs/data-model.md` is the user-facing
//! description of the same rules.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A value that breaks the data model's rules. `field` is the dotted path of the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ModelError {
    pub field: String,
    pub message: String,
}

impl ModelError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError {
            field: field.into(),
            message: message.into(),
        }
    }
}

const MAX_ID_LEN: usize = 128;
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_VALUE_LEN: usize = 512;
const MAX_TAGS: usize = 64;
const MAX_HEADER_MATCHES: usize = 32;
const MAX_SPLIT: usize = 16;
/// Compiled-size cap for route regexes, so a route cannot make the router allocate without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Service names, tags and zones are DNS labels (RFC 1123), lowercase, because they
/// appear in DNS names such as `<tag>.<service>.service.strait`.
pub fn validate_dns_label(field: &str, value: &str) -> Result<(), ModelError> {
    let fail = |why: &str| Err(ModelError::new(field, format!("`{value}` {why}")));
    if value.is_empty() {
        return Err(ModelError::new(field, "must not be empty"));
    }
    if value.len() > 63 {
        return fail("is longer than 63 characters (a DNS label)");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("may contain only lowercase letters a-z, digits and '-'");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return fail("must not start or end with '-'");
    }
    Ok(())
}

pub fn validate_service_name(name: &str) -> Result<(), ModelError> {
    validate_dns_label("service", name)
}

/// Instance ids and route names: `[A-Za-z0-9._-]{1,128}`, not `.` or `..`; they are path
/// segments in URLs and znode paths.
pub fn validate_id(field: &str, value: &str) -> Result<(), ModelError> {
    if value.is_empty() {
        return Err(ModelError::new(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(ModelError::new(
            field,
            format!("is longer than {MAX_ID_LEN} characters"),
        ));
    }
    if value == "." || value == ".." {
        return Err(ModelError::new(field, format!("`{value}` is not allowed")));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ModelError::new(
            field,
            format!("`{value}` may contain only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// Health of an instance, as its health checks (or an operator) last reported it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving. The default for a registration without checks, as in Consul.
    #[default]
    Passing,
    /// Serving but degraded; receives traffic only where configured.
    Warning,
    /// Failing checks; receives no traffic.
    Critical,
    /// Drained by an operator; receives no new traffic.
    Maintenance,
}

impl Health {
    pub const ALL: [Health; 4] = [
        Health::Passing,
        Health::Warning,
        Health::Critical,
        Health::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Maintenance => "maintenance",
        }
    }
}

fn default_weight() -> u16 {
    1
}

fn is_default_weight(weight: &u16) -> bool {
    *weight == default_weight()
}

/// What a registration says about one instance: the body of
/// `PUT /v1/services/{service}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    #[schema(value_type = String, example = "10.0.0.7")]
    pub address: IpAddr,
    pub port: u16,
    /// Named ports (`grpc`, `admin`, …), answered as `_<name>._tcp.<service>` SRV records.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Relative share of traffic (and SRV weight), 1..=65535.
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    pub weight: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Health,
}

impl InstanceSpec {
    pub fn new(address: IpAddr, port: u16) -> Self {
        InstanceSpec {
            address,
            port,
            ports: BTreeMap::new(),
            zone: None,
            weight: default_weight(),
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            health: Health::Passing,
        }
    }

    /// Checks the rules and normalises (sorts and de-duplicates tags).
    pub fn validate(&mut self) -> Result<(), ModelError> {
        if self.port == 0 {
            return Err(ModelError::new("port", "must be between 1 and 65535"));
        }
        if self.address.is_unspecified() {
            return Err(ModelError::new(
                "address",
                format!(
                    "`{}` is unspecified; give the address peers connect to",
                    self.address
                ),
            ));
        }
        for (name, port) in &self.ports {
            validate_dns_label("ports", name)?;
            if *port == 0 {
                return Err(ModelError::new(
                    format!("ports.{name}"),
                    "must be between 1 and 65535",
                ));
            }
        }
        if let Some(zone) = &self.zone {
            validate_dns_label("zone", zone)?;
        }
        if self.weight == 0 {
            return Err(ModelError::new("weight", "must be between 1 and 65535"));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ModelError::new("tags", format!("at most {MAX_TAGS} tags")));
        }
        for tag in &self.tags {
            validate_dns_label("tags", tag)?;
        }
        self.tags.sort();
        self.tags.dedup();
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(ModelError::new(
                "metadata",
                format!("at most {MAX_METADATA_ENTRIES} entries"),
            ));
        }
        for (key, value) in &self.metadata {
            validate_id("metadata key", key)?;
            if value.len() > MAX_METADATA_VALUE_LEN {
                return Err(ModelError::new(
                    format!("metadata.{key}"),
                    format!("is longer than {MAX_METADATA_VALUE_LEN} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// One registered instance of a service, as stored and as seen in snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub service: String,
    pub id: String,
    #[serde(flatten)]
    pub spec: InstanceSpec,
}

impl Instance {
    /// Builds a validated instance from the names in a URL and a registration body.
    pub fn new(service: &str, id: &str, mut spec: InstanceSpec) -> Result<Self, ModelError> {
        validate_service_name(service)?;
        validate_id("instance id", id)?;
        spec.validate()?;
        Ok(Instance {
            service: service.to_string(),
            id: id.to_string(),
            spec,
        })
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.spec.address, self.spec.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    #[default]
    Http,
    Tcp,
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// A request header predicate: exactly one of `exact`, `prefix`, `regex`, `present`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Match when the predicate does not hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedService {
    pub service: String,
    pub weight: u32,
    /// Only the service's instances with this tag (a subset, as Consul's service-resolver
    /// and Envoy's subset balancer select them): one version of an app during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5s")]
    pub connect: Option<Duration>,
    /// Whole request, first byte sent to last byte received.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5s")]
    pub request: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5s")]
    pub idle: Option<Duration>,
}

impl Timeouts {
    fn is_empty(&self) -> bool {
        self == &Timeouts::default()
    }
}

/// When to retry a request on another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectFailure,
    /// 502, 503 and 504.
    GatewayError,
    /// Any 5xx.
    ServerError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryOn>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "5s")]
    pub per_try_timeout: Option<Duration>,
    /// Retry non-idempotent methods (POST, PATCH) on gateway/server errors too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewrite {
    /// Set these headers, replacing any values already present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderRewrite {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    fn validate(&self, field: &str) -> Result<(), ModelError> {
        for (name, value) in &self.set {
            validate_header_name(&format!("{field}.set"), name)?;
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(ModelError::new(
                    format!("{field}.set.{name}"),
                    "must not contain CR, LF or NUL",
                ));
            }
        }
        for name in &self.remove {
            validate_header_name(&format!("{field}.remove"), name)?;
        }
        Ok(())
    }

    /// The rules a new rewrite must also pass (see [`Route::validate_for_write`]).
    fn validate_for_write(&self, field: &str) -> Result<(), ModelError> {
        let request = field == "request_headers";
        for (name, value) in &self.set {
            let key = format!("{field}.set.{name}");
            refuse_framing_header(&key, name)?;
            if request && name.eq_ignore_ascii_case("host") && !is_host_value(value) {
                return Err(ModelError::new(
                    key,
                    format!("{value:?} is not a host name (host or host:port)"),
                ));
            }
        }
        for name in &self.remove {
            let key = format!("{field}.remove");
            refuse_framing_header(&key, name)?;
            if request && name.eq_ignore_ascii_case("host") {
                return Err(ModelError::new(
                    key,
                    "`host` cannot be removed: HTTP/1.1 requires it (set it to rewrite it)",
                ));
            }
        }
        Ok(())
    }
}

/// Headers that frame a message or manage its connection are the router's to write: a
/// rewrite of one could desynchronise the next hop (request smuggling, response
/// splitting), so no route may set or remove them.
fn refuse_framing_header(key: &str, name: &str) -> Result<(), ModelError> {
    if is_framing_header(name) {
        return Err(ModelError::new(
            key,
            format!(
                "`{name}` frames the message or manages the connection; the router writes it, a route cannot rewrite it"
            ),
        ));
    }
    Ok(())
}

/// Whether a header frames a message or manages its connection (the router's to write).
pub fn is_framing_header(name: &str) -> bool {
    const FRAMING: [&str; 8] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ];
    FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f))
}

/// `host`, `host:port` or `[v6]:port`, made of the characters host names have.
fn is_host_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// A route: which requests (HTTP) or connections (TCP) go to which service(s).
///
/// One flat shape for both kinds so the minimal body `{"host":"…","service":"…"}` is a
/// whole route; `validate` rejects fields that do not apply to the kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub kind: RouteKind,

    // HTTP match.
    /// `example.com`, `*.example.com` (any subdomain), or `*` (any host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,

    // TCP match.
    /// The address a TCP listener binds for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "127.0.0.1:5432")]
    pub listen: Option<SocketAddr>,
    /// TLS server name peeked from the ClientHello (passthrough, no termination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,

    // Action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Weighted split across services (canary); exclusive with `service`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedService>,
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Replaces the matched path prefix (requires a `prefix` path match); `/` strips it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "HeaderRewrite::is_empty")]
    pub request_headers: HeaderRewrite,
    #[serde(default, skip_serializing_if = "HeaderRewrite::is_empty")]
    pub response_headers: HeaderRewrite,
}

impl Route {
    /// The minimal HTTP route: every request for `host` goes to `service`.
    pub fn http(host: &str, service: &str) -> Self {
        Route {
            kind: RouteKind::Http,
            host: Some(host.to_string()),
            path: None,
            methods: Vec::new(),
            headers: Vec::new(),
            listen: None,
            sni: None,
            service: Some(service.to_string()),
            split: Vec::new(),
            timeouts: Timeouts::default(),
            retry: None,
            prefix_rewrite: None,
            request_headers: HeaderRewrite::default(),
            response_headers: HeaderRewrite::default(),
        }
    }

    /// The services this route can send traffic to.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.service
            .as_deref()
            .into_iter()
            .chain(self.split.iter().map(|s| s.service.as_str()))
    }

    /// Checks every rule and normalises (lowercases host and header names, uppercases methods).
    pub fn validate(&mut self) -> Result<(), ModelError> {
        match (&self.service, self.split.is_empty()) {
            (Some(_), false) => {
                return Err(ModelError::new(
                    "service",
                    "`service` and `split` are exclusive; use one",
                ));
            }
            (None, true) => {
                return Err(ModelError::new(
                    "service",
                    "a route needs `service` or a non-empty `split`",
                ));
            }
            _ => {}
        }
        if let Some(service) = &self.service {
            validate_service_name(service)?;
        }
        if self.split.len() > MAX_SPLIT {
            return Err(ModelError::new(
                "split",
                format!("at most {MAX_SPLIT} services"),
            ));
        }
        let mut total = 0u64;
        for (i, target) in self.split.iter().enumerate() {
            validate_dns_label(&format!("split[{i}].service"), &target.service)?;
            if let Some(tag) = &target.tag {
                validate_dns_label(&format!("split[{i}].tag"), tag)?;
            }
            total += u64::from(target.weight);
        }
        if !self.split.is_empty() && total == 0 {
            return Err(ModelError::new("split", "weights must not all be 0"));
        }
        if let Some(retry) = &self.retry
            && retry.attempts > 10
        {
            return Err(ModelError::new("retry.attempts", "at most 10"));
        }
        for (field, value) in [
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.request", self.timeouts.request),
            ("timeouts.idle", self.timeouts.idle),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(ModelError::new(field, "must be greater than 0"));
            }
        }
        match self.kind {
            RouteKind::Http => self.validate_http(),
            RouteKind::Tcp => self.validate_tcp(),
        }
    }

    fn validate_http(&mut self) -> Result<(), ModelError> {
        if self.listen.is_some() || self.sni.is_some() {
            return Err(ModelError::new(
                "kind",
                "`listen` and `sni` are for tcp routes; set `kind = \"tcp\"`",
            ));
        }
        let Some(host) = &mut self.host else {
            return Err(ModelError::new(
                "host",
                "an http route needs a host (`*` matches any)",
            ));
        };
        *host = host.to_ascii_lowercase();
        validate_host_pattern("host", host)?;
        match &self.path {
            Some(PathMatch::Exact(p)) | Some(PathMatch::Prefix(p)) => {
                if !p.starts_with('/') {
                    return Err(ModelError::new(
                        "path",
                        format!("`{p}` must start with '/'"),
                    ));
                }
                if p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    return Err(ModelError::new(
                        "path",
                        "must not contain spaces or control characters",
                    ));
                }
            }
            Some(PathMatch::Regex(r)) => compile_regex("path.regex", r)?,
            None => {}
        }
        for method in &mut self.methods {
            *method = method.to_ascii_uppercase();
            if method.is_empty() || !method.bytes().all(is_token_byte) {
                return Err(ModelError::new(
                    "methods",
                    format!("`{method}` is not an HTTP method token"),
                ));
            }
        }
        if self.headers.len() > MAX_HEADER_MATCHES {
            return Err(ModelError::new(
                "headers",
                format!("at most {MAX_HEADER_MATCHES} header matches"),
            ));
        }
        for (i, header) in self.headers.iter_mut().enumerate() {
            let field = format!("headers[{i}]");
            header.name = header.name.to_ascii_lowercase();
            validate_header_name(&format!("{field}.name"), &header.name)?;
            let predicates = usize::from(header.exact.is_some())
                + usize::from(header.prefix.is_some())
                + usize::from(header.regex.is_some())
                + usize::from(header.present.is_some());
            if predicates != 1 {
                return Err(ModelError::new(
                    field,
                    "needs exactly one of `exact`, `prefix`, `regex`, `present`",
                ));
            }
            if let Some(regex) = &header.regex {
                compile_regex(&format!("{field}.regex"), regex)?;
            }
        }
        if let Some(rewrite) = &self.prefix_rewrite {
            if !matches!(self.path, Some(PathMatch::Prefix(_))) {
                return Err(ModelError::new(
                    "prefix_rewrite",
                    "needs a `prefix` path match to rewrite",
                ));
            }
            if !rewrite.starts_with('/') {
                return Err(ModelError::new(
                    "prefix_rewrite",
                    format!("`{rewrite}` must start with '/'"),
                ));
            }
        }
        self.request_headers.validate("request_headers")?;
        self.response_headers.validate("response_headers")?;
        Ok(())
    }

    fn validate_tcp(&mut self) -> Result<(), ModelError> {
        let http_only = self.host.is_some()
            || self.path.is_some()
            || !self.methods.is_empty()
            || !self.headers.is_empty()
            || self.prefix_rewrite.is_some()
            || self.retry.is_some()
            || !self.request_headers.is_empty()
            || !self.response_headers.is_empty();
        if http_only {
            return Err(ModelError::new(
                "kind",
                "tcp routes match on `listen` and `sni` only; host, path, methods, headers, \
                 retry, prefix_rewrite and header rewrites are for http routes",
            ));
        }
        let Some(listen) = self.listen else {
            return Err(ModelError::new(
                "listen",
                "a tcp route needs a listen address",
            ));
        };
        if listen.port() == 0 {
            return Err(ModelError::new(
                "listen",
                "needs a port between 1 and 65535",
            ));
        }
        if let Some(sni) = &mut self.sni {
            *sni = sni.to_ascii_lowercase();
            if sni == "*" {
                return Err(ModelError::new(
                    "sni",
                    "`*` is not a server name; leave `sni` out to match every connection",
                ));
            }
            validate_host_pattern("sni", sni)?;
        }
        Ok(())
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Route {
    /// [`Route::validate`] plus the rules a route being written must pass and a stored
    /// one is not held to: a route stored before a rule existed still loads (the store
    /// opens, and ZooKeeper's copy is not dropped); it cannot be written again unchanged.
    pub fn validate_for_write(&mut self) -> Result<(), ModelError> {
        self.validate()?;
        self.request_headers.validate_for_write("request_headers")?;
        self.response_headers.validate_for_write("response_headers")
    }

    /// Whether this TCP route and `other` would claim the same connections, so both cannot
    /// be live: one port on overlapping addresses that could not both be bound (equal,
    /// or a wildcard over the other; `[::]` takes IPv4 too), or one address with the same
    /// server name (or neither naming one).
    pub fn tcp_overlaps(&self, other: &Route) -> bool {
        let (RouteKind::Tcp, RouteKind::Tcp) = (self.kind, other.kind) else {
            return false;
        };
        let (Some(a), Some(b)) = (self.listen, other.listen) else {
            return false;
        };
        if a.port() != b.port() {
            return false;
        }
        if a.ip() == b.ip() {
            return self.sni == other.sni;
        }
        let wildcard_over = |w: IpAddr, x: IpAddr| {
            w.is_unspecified() && (w.is_ipv6() || w.is_ipv4() == x.is_ipv4())
        };
        wildcard_over(a.ip(), b.ip()) || wildcard_over(b.ip(), a.ip())
    }
}

fn validate_header_name(field: &str, name: &str) -> Result<(), ModelError> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(ModelError::new(
            field,
            format!("`{name}` is not a valid header name"),
        ));
    }
    Ok(())
}

/// `*`, `*.example.com` or `example.com` (lowercase, labels of a-z 0-9 '-', no port).
fn validate_host_pattern(field: &str, host: &str) -> Result<(), ModelError> {
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(ModelError::new(
            field,
            format!("`{host}` is not a host name"),
        ));
    }
    for label in name.split('.') {
        validate_dns_label(field, label).map_err(|_| {
            ModelError::new(
                field,
                format!(
                    "`{host}` is not a host name (labels of a-z, 0-9 and '-'; \
                     a leading `*.` for any subdomain; no port)"
                ),
            )
        })?;
    }
    Ok(())
}

fn compile_regex(field: &str, pattern: &str) -> Result<(), ModelError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| ModelError::new(field, format!("invalid regex: {e}")))
}

#[cfg(test)]
mod tests;

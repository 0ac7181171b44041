//! strait's configuration document: each crate's section, composed.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The built-in demo configuration `strait up` uses when no `--config` is given: the
/// defaults, and the `[demo]` service.
pub const DEMO_CONFIG: &str = include_str!("../etc/strait.toml");

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub store: discovery::StoreConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub router: router::RouterConfig,
    #[serde(default)]
    pub dns: discovery::dns::DnsConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub registry: registry::RegistryConfig,
    /// Who may change what: read scope, admins, LDAP, the audit log (docs/security.md).
    #[serde(default)]
    pub auth: access::AuthConfig,
    /// `[[team]]`: teams and what they own.
    #[serde(default, rename = "team")]
    pub teams: access::Teams,
    /// The first-run demo (the built-in config has it; docs/operations.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo: Option<crate::demo::DemoConfig>,
}

/// The `[agent]` section: local services to register and health-check, and whether this
/// host runs deployed containers (see docs/deploy.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// A TOML file of `[[service]]` definitions (see docs/agent.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<std::path::PathBuf>,
    /// `podman`: run the deployments' containers on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// This agent's id among the agents (default: the host name).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "agent_id"
    )]
    pub id: Option<String>,
    /// The zone this host is in (default `default`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "zone"
    )]
    pub zone: Option<String>,
    /// The address containers are reached at (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<std::net::IpAddr>,
    /// Ports handed to containers, `low-high` (default `20000-29999`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// The podman binary (default `podman` on the PATH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman: Option<std::path::PathBuf>,
    /// SIGTERM to SIGKILL when a container stops (default 10s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub stop_timeout: Option<std::time::Duration>,
}

/// The container engine an agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Podman,
}

fn agent_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let id = String::deserialize(d)?;
    deploy::supervisor::validate_agent_id(&id).map_err(serde::de::Error::custom)?;
    Ok(Some(id))
}

fn zone<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let zone = String::deserialize(d)?;
    discovery::model::validate_dns_label("zone", &zone).map_err(serde::de::Error::custom)?;
    Ok(Some(zone))
}

/// `low-high`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a port range like 20000-29999");
        let (low, high) = s.split_once('-').ok_or_else(bad)?;
        let (low, high): (u16, u16) = (
            low.trim().parse().map_err(|_| bad())?,
            high.trim().parse().map_err(|_| bad())?,
        );
        if low == 0 || low > high {
            return Err(bad());
        }
        Ok(PortRange(low, high))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}-{}", self.0, self.1))
    }
}

impl AgentConfig {
    /// The supervisor's settings when this host runs containers. `api_port`: the port of
    /// the API this agent is reached on (its registration in `strait-agent`).
    /// `registry`: strait's own registry (`host:port`), where `STRAIT_REGISTRY_AUTH` goes
    /// (`STRAIT_REGISTRY` names another).
    pub fn supervisor(
        &self,
        api_port: u16,
        registry: Option<&str>,
    ) -> Option<deploy::SupervisorConfig> {
        self.runtime?;
        Some(deploy::SupervisorConfig {
            id: self
                .id
                .clone()
                .unwrap_or_else(deploy::supervisor::default_agent_id),
            zone: self
                .zone
                .clone()
                .unwrap_or_else(|| discovery::apps::DEFAULT_ZONE.to_string()),
            advertise: self
                .advertise
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            ports: self.ports.map_or((20000, 29999), |r| (r.0, r.1)),
            podman: self
                .podman
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from("podman")),
            stop_timeout: self
                .stop_timeout
                .unwrap_or(std::time::Duration::from_secs(10)),
            api_port: api_port.max(1),
            registry_credentials: std::env::var("STRAIT_REGISTRY_AUTH")
                .ok()
                .filter(|c| !c.is_empty()),
            registry_credentials_for: std::env::var("STRAIT_REGISTRY")
                .ok()
                .filter(|r| !r.is_empty())
                .or_else(|| registry.map(str::to_string)),
        })
    }
}

/// The `[admin]` section. A non-loopback `addr` requires a `token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawAdminConfig")]
pub struct AdminConfig {
    pub addr: SocketAddr,
    /// Bearer token required on every `/v1/*` and `/metrics` request when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: default_admin_addr(),
            token: None,
        }
    }
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminConfig {
    #[serde(default = "default_admin_addr")]
    addr: SocketAddr,
    #[serde(default)]
    token: Option<String>,
}

impl TryFrom<RawAdminConfig> for AdminConfig {
    type Error = String;

    fn try_from(raw: RawAdminConfig) -> Result<Self, Self::Error> {
        let config = AdminConfig {
            addr: raw.addr,
            token: raw.token,
        };
        config.check()?;
        Ok(config)
    }
}

pub const MIN_TOKEN_LEN: usize = 16;

impl AdminConfig {
    /// The admin API controls all traffic: off loopback it must be authenticated.
    pub fn check(&self) -> Result<(), String> {
        if let Some(token) = &self.token
            && token.len() < MIN_TOKEN_LEN
        {
            return Err(format!(
                "admin token is shorter than {MIN_TOKEN_LEN} characters; use a long random one"
            ));
        }
        if !self.addr.ip().is_loopback() && self.token.is_none() {
            return Err(format!(
                "admin addr {} is not loopback; set an admin token (config `admin.token` or \
                 STRAIT_ADMIN_TOKEN) or listen on 127.0.0.1",
                self.addr
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Teams are managed by the admin: with teams, `admin.token` must be set (it makes
    /// the first team tokens), and every admin user must be a plain name.
    pub fn check_teams(&self) -> Result<(), String> {
        if !self.teams.configs.is_empty() && self.admin.token.is_none() {
            return Err(
                "teams are configured but `admin.token` is not: set it (or STRAIT_ADMIN_TOKEN); \
                 the admin makes the teams' tokens with `strait token create`"
                    .into(),
            );
        }
        Ok(())
    }

    /// The registry's storage root: `registry.root`, or `registry/` in the data dir.
    pub fn registry_root(&self) -> std::path::PathBuf {
        self.registry
            .root
            .clone()
            .unwrap_or_else(|| self.store.data_dir.join("registry"))
    }

    pub fn load(path: Option<&Path>) -> Result<Self, config::ConfigError> {
        match path {
            Some(path) => config::load(path),
            None => config::parse(config::Source::Builtin("demo config"), DEMO_CONFIG),
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn check(text: &str, expected: Expect) {
        let actual = match config::parse::<Settings>(config::Source::Builtin("test"), text) {
            Ok(settings) => format!(
                "ok: store={} admin={}",
                settings.store.url, settings.admin.addr
            ),
            Err(e) => e.to_string(),
        };
        expected.assert_eq(&actual);
    }

    #[test]
    fn demo_config_is_valid() {
        check(
            DEMO_CONFIG,
            expect!["ok: store=embedded admin=127.0.0.1:9901"],
        );
    }

    #[test]
    fn zookeeper_url() {
        check(
            "[store]\nurl = \"zk://127.0.0.1:2181,127.0.0.2:2181/prod\"\n",
            expect!["ok: store=zk://127.0.0.1:2181,127.0.0.2:2181/prod admin=127.0.0.1:9901"],
        );
    }

    #[test]
    fn bad_store_url() {
        check(
            "[store]\nurl = \"etcd://x\"\n",
            expect![
                "<test>:2:7: key `store.url`: `etcd://x` is not a store URL: use `embedded` or `zk://host:port[,host:port]/chroot`"
            ],
        );
    }

    #[test]
    fn zk_url_without_port() {
        check(
            "[store]\nurl = \"zk://localhost/strait\"\n",
            expect![
                "<test>:2:7: key `store.url`: `zk://localhost/strait`: `localhost` is not host:port"
            ],
        );
    }

    #[test]
    fn unknown_section() {
        check(
            "[stor]\nurl = \"embedded\"\n",
            expect![
                "<test>:1:2: key `stor`: unknown field `stor`, expected one of `store`, `admin`, `router`, `dns`, `agent`, `registry`, `auth`, `team`, `demo` (remove it or check its spelling)"
            ],
        );
    }

    #[test]
    fn public_admin_needs_token() {
        check(
            "[admin]\naddr = \"0.0.0.0:9901\"\n",
            expect![
                "<test>:1:1: key `admin`: admin addr 0.0.0.0:9901 is not loopback; set an admin token (config `admin.token` or STRAIT_ADMIN_TOKEN) or listen on 127.0.0.1"
            ],
        );
    }

    #[test]
    fn short_token() {
        check(
            "[admin]\ntoken = \"abc\"\n",
            expect![
                "<test>:1:1: key `admin`: admin token is shorter than 16 characters; use a long random one"
            ],
        );
    }

    /// What `strait up` would refuse (or could not work with) fails the check too.
    #[test]
    fn values_that_cannot_work() {
        check(
            "[router]\nmax_headers = 0\n",
            expect!["<test>:2:15: key `router.max_headers`: 0 is out of range: 1 to 10000"],
        );
        check(
            "[router]\nthreads = 0\n",
            expect!["<test>:2:11: key `router.threads`: 0 is out of range: 1 to 1024"],
        );
        check(
            "[router.outlier]\nmax_ejection_percent = 150\n",
            expect![
                "<test>:2:24: key `router.outlier.max_ejection_percent`: 150 is out of range: 0 to 100"
            ],
        );
        check(
            "[dns]\ndomain = \"Bad Domain\"\n",
            expect![
                "<test>:2:10: key `dns.domain`: `Bad Domain` is not a domain name (labels of a-z, 0-9 and '-', dot-separated)"
            ],
        );
        check(
            "[dns]\nworkers = 0\n",
            expect![
                "<test>:2:11: key `dns.workers`: 0 is out of range: 1 to 256 (leave it out for one per core)"
            ],
        );
        check(
            "[dns]\nnsid = \"\"\n",
            expect![
                "<test>:2:8: key `dns.nsid`: ``: use 1 to 255 printable ASCII characters (or leave it out to send none)"
            ],
        );
        check(
            "[router.services.Web]\nprotocol = \"h2c\"\n",
            expect![
                "<test>:1:9: key `router.services`: service `Web`: service: `Web` may contain only lowercase letters a-z, digits and '-'"
            ],
        );
        check(
            "[router.services.web.health_check]\npath = \"x\"\n",
            expect![[
                r#"<test>:1:9: key `router.services`: service `web`: health_check: path "x" must start with / and have no spaces or control characters"#
            ]],
        );
    }

    #[test]
    fn bad_duration() {
        check(
            "[store]\nsession_timeout = 10\n",
            expect![
                "<test>:2:19: key `store.session_timeout`: invalid type: integer `10`, expected a duration"
            ],
        );
    }
}

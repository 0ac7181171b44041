//! The `[[team]]` and `[auth]` sections.
//!
//! ```toml
//! [auth]
//! read = "all"                 # or "own": teams read only what they own
//! admins = ["carol"]           # registry (or LDAP) users who may do everything
//!
//! [auth.ldap]                  # optional: users and their groups from a directory
//! url = "ldap://127.0.0.1:389"
//! user_dn = "uid={user},ou=people,dc=example,dc=com"
//! group_base = "ou=groups,dc=example,dc=com"
//!
//! [[team]]
//! name = "web"
//! members = ["alice"]          # registry users in the team
//! ldap_group = "web-devs"      # and the members of this LDAP group
//! [team.owns]
//! services = ["web", "web-*"]  # services and apps
//! hosts = ["web.example.com", "*.web.example.com"]
//! tcp = ["*:5432"]
//! repositories = ["web/*"]
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::patterns::{HostPattern, ListenPattern, NamePattern};

/// What teams may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadScope {
    /// Every authenticated identity reads everything (the default).
    #[default]
    All,
    /// Teams read only the objects they own.
    Own,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_ldap_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_group_filter() -> String {
    "(&(objectClass=groupOfNames)(member={dn}))".into()
}
fn default_group_attribute() -> String {
    "cn".into()
}

/// `[auth.ldap]`: users bind with their own password; their groups name their teams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:port` (`ldaps://` for TLS).
    pub url: String,
    /// A user's DN, `{user}` replaced by the (escaped) user name.
    pub user_dn: String,
    /// Where groups are searched (subtree).
    pub group_base: String,
    /// `{dn}` replaced by the user's DN.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// The attribute of a group that names it (matched against teams' `ldap_group`).
    #[serde(default = "default_group_attribute")]
    pub group_attribute: String,
    /// How long a successful login (its groups) is remembered: requests within it need no
    /// round trip, and an unreachable directory is bridged for that long.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default = "default_ldap_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub read: ReadScope,
    /// Users (of the registry's htpasswd, or LDAP) who are admins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    /// The audit log's file (JSON lines); default `audit.log` in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapConfig>,
}

/// What a team owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owns {
    /// Services and apps (an app is the service of its instances).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Route hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// TCP route listen addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<String>,
    /// Registry repositories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

/// One `[[team]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// A DNS label.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// The LDAP group (its `group_attribute`, e.g. cn) whose members are in the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap_group: Option<String>,
    #[serde(default)]
    pub owns: Owns,
}

/// A team's patterns, parsed.
#[derive(Debug, Clone)]
pub struct Team {
    pub name: String,
    pub members: BTreeSet<String>,
    pub ldap_group: Option<String>,
    pub services: Vec<NamePattern>,
    pub hosts: Vec<HostPattern>,
    pub tcp: Vec<ListenPattern>,
    pub repositories: Vec<NamePattern>,
}

fn valid_team_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The `[[team]]` list, checked whole: names are DNS labels and unique, patterns parse, and
/// no two teams own overlapping patterns (the error names both).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<TeamConfig>", into = "Vec<TeamConfig>")]
pub struct Teams {
    pub configs: Vec<TeamConfig>,
    #[serde(skip)]
    pub teams: Vec<Team>,
}

impl From<Teams> for Vec<TeamConfig> {
    fn from(teams: Teams) -> Self {
        teams.configs
    }
}

impl TryFrom<Vec<TeamConfig>> for Teams {
    type Error = String;

    fn try_from(configs: Vec<TeamConfig>) -> Result<Self, Self::Error> {
        let mut teams: Vec<Team> = Vec::with_capacity(configs.len());
        for config in &configs {
            let name = &config.name;
            if !valid_team_name(name) {
                return Err(format!(
                    "team `{name}`: a team name is a DNS label (a-z, 0-9, '-')"
                ));
            }
            if teams.iter().any(|t| &t.name == name) {
                return Err(format!("team `{name}` is defined twice"));
            }
            fn parse<T>(name: &str, what: &str, r: Result<T, String>) -> Result<T, String> {
                r.map_err(|e| format!("team `{name}`: owns.{what}: {e}"))
            }
            let team = Team {
                name: name.clone(),
                members: config.members.iter().cloned().collect(),
                ldap_group: config.ldap_group.clone(),
                services: config
                    .owns
                    .services
                    .iter()
                    .map(|p| parse(name, "services", NamePattern::parse(p)))
                    .collect::<Result<_, _>>()?,
                hosts: config
                    .owns
                    .hosts
                    .iter()
                    .map(|p| parse(name, "hosts", HostPattern::parse(p)))
                    .collect::<Result<_, _>>()?,
                tcp: config
                    .owns
                    .tcp
                    .iter()
                    .map(|p| parse(name, "tcp", ListenPattern::parse(p)))
                    .collect::<Result<_, _>>()?,
                repositories: config
                    .owns
                    .repositories
                    .iter()
                    .map(|p| parse(name, "repositories", NamePattern::parse(p)))
                    .collect::<Result<_, _>>()?,
            };
            for other in &teams {
                if let Some(overlap) = overlap(other, &team) {
                    return Err(format!(
                        "teams `{}` and `{}` both own {overlap}; a name has one owner",
                        other.name, team.name
                    ));
                }
            }
            teams.push(team);
        }
        Ok(Teams { configs, teams })
    }
}

/// The first pattern two teams both own, described.
fn overlap(a: &Team, b: &Team) -> Option<String> {
    for p in &a.services {
        if let Some(q) = b.services.iter().find(|q| p.overlaps(q)) {
            return Some(format!("services `{p}` and `{q}`"));
        }
    }
    for p in &a.hosts {
        if let Some(q) = b.hosts.iter().find(|q| p.overlaps(q)) {
            return Some(format!("hosts `{p}` and `{q}`"));
        }
    }
    for p in &a.tcp {
        if let Some(q) = b.tcp.iter().find(|q| p.overlaps(q)) {
            return Some(format!("tcp `{p}` and `{q}`"));
        }
    }
    for p in &a.repositories {
        if let Some(q) = b.repositories.iter().find(|q| p.overlaps(q)) {
            return Some(format!("repositories `{p}` and `{q}`"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teams(toml_text: &str) -> Result<Teams, String> {
        #[derive(Deserialize)]
        struct Doc {
            team: Teams,
        }
        toml::from_str::<Doc>(toml_text)
            .map(|d| d.team)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn overlapping_teams_are_refused_naming_both() {
        let text = r#"
[[team]]
name = "web"
owns = { hosts = ["*.example.com"] }
[[team]]
name = "api"
owns = { hosts = ["api.example.com"] }
"#;
        assert_eq!(
            teams(text).err().as_deref(),
            Some(
                "teams `web` and `api` both own hosts `*.example.com` and `api.example.com`; a name has one owner"
            )
        );
        let text = r#"
[[team]]
name = "web"
owns = { services = ["web-*"], repositories = ["web/*"] }
[[team]]
name = "api"
owns = { services = ["api-*"], repositories = ["api/*"], hosts = ["api.example.com"] }
"#;
        let ok = teams(text).expect("disjoint");
        assert_eq!(ok.teams.len(), 2);
        let text = r#"
[[team]]
name = "Web"
"#;
        assert!(teams(text).err().is_some_and(|e| e.contains("DNS label")));
        let text = r#"
[[team]]
name = "web"
owns = { hosts = ["bad host"] }
"#;
        assert!(teams(text).err().is_some_and(|e| e.contains("owns.hosts")));
    }
}

//! Who may change what. An [`Identity`] is the admin, a set of teams (a team token, a
//! registry or LDAP user), or anonymous; [`Policy`] answers, for each kind of object,
//! whether it may be written, and names the owner when it may not.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::config::{AuthConfig, ReadScope, Team, Teams};
use crate::patterns::{HostPattern, ListenPattern};

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Everything, teams included (`admin.token`, an admin token, an `[auth] admins` user).
    Admin {
        /// `admin-token`, `token:<id>` or `user:<name>`.
        who: String,
    },
    /// Acts for these teams.
    Teams {
        who: String,
        teams: BTreeSet<String>,
    },
    /// No credentials (allowed only where no authentication is configured at all).
    Anonymous,
}

impl Identity {
    pub fn label(&self) -> &str {
        match self {
            Identity::Admin { who } | Identity::Teams { who, .. } => who,
            Identity::Anonymous => "anonymous",
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Identity::Admin { .. })
    }

    /// The teams, for metrics and the audit log (`admin` for the admin).
    pub fn team_label(&self) -> String {
        match self {
            Identity::Admin { .. } => "admin".into(),
            Identity::Teams { teams, .. } => teams.iter().cloned().collect::<Vec<_>>().join(","),
            Identity::Anonymous => "anonymous".into(),
        }
    }

    fn acts_for(&self, team: &str) -> bool {
        match self {
            Identity::Admin { .. } => true,
            Identity::Teams { teams, .. } => teams.contains(team),
            Identity::Anonymous => false,
        }
    }
}

/// A write that is not allowed, and why (the API's 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// The teams and the rules, compiled from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    teams: Vec<Team>,
    admins: BTreeSet<String>,
    read: ReadScope,
}

impl Policy {
    pub fn new(teams: &Teams, auth: &AuthConfig) -> Policy {
        Policy {
            teams: teams.teams.clone(),
            admins: auth.admins.iter().cloned().collect(),
            read: auth.read,
        }
    }

    /// Whether any team is configured (without teams, every authenticated identity is
    /// the admin, as before teams existed).
    pub fn has_teams(&self) -> bool {
        !self.teams.is_empty()
    }

    pub fn team_names(&self) -> impl Iterator<Item = &str> {
        self.teams.iter().map(|t| t.name.as_str())
    }

    pub fn is_team(&self, name: &str) -> bool {
        self.teams.iter().any(|t| t.name == name)
    }

    pub fn read_scope(&self) -> ReadScope {
        self.read
    }

    /// The identity of a directory user: an admin, or the teams that list them as a
    /// member or whose LDAP group they are in.
    pub fn user_identity(&self, user: &str, groups: &BTreeSet<String>) -> Identity {
        let who = format!("user:{user}");
        if self.admins.contains(user) {
            return Identity::Admin { who };
        }
        let teams = self
            .teams
            .iter()
            .filter(|t| {
                t.members.contains(user)
                    || t.ldap_group.as_ref().is_some_and(|g| groups.contains(g))
            })
            .map(|t| t.name.clone())
            .collect();
        Identity::Teams { who, teams }
    }

    pub fn service_owner(&self, name: &str) -> Option<&str> {
        self.teams
            .iter()
            .find(|t| t.services.iter().any(|p| p.matches(name)))
            .map(|t| t.name.as_str())
    }

    pub fn repository_owner(&self, name: &str) -> Option<&str> {
        self.teams
            .iter()
            .find(|t| t.repositories.iter().any(|p| p.matches(name)))
            .map(|t| t.name.as_str())
    }

    /// The team one of whose patterns covers `host` whole.
    pub fn host_owner(&self, host: &HostPattern) -> Option<&str> {
        self.teams
            .iter()
            .find(|t| t.hosts.iter().any(|p| p.covers(host)))
            .map(|t| t.name.as_str())
    }

    /// The team one of whose TCP patterns matches `addr`.
    pub fn listen_owner(&self, addr: &SocketAddr) -> Option<&str> {
        self.teams
            .iter()
            .find(|t| t.tcp.iter().any(|p| p.matches(addr)))
            .map(|t| t.name.as_str())
    }

    fn check(&self, identity: &Identity, what: &str, owner: Option<&str>) -> Result<(), Denied> {
        if identity.is_admin() {
            return Ok(());
        }
        match owner {
            Some(team) if identity.acts_for(team) => Ok(()),
            Some(team) => Err(Denied(format!(
                "{what} belongs to team `{team}`; {} may not change it",
                identity.label()
            ))),
            None => Err(Denied(format!(
                "{what} belongs to no team (only the admin may change it)"
            ))),
        }
    }

    /// A service's (or app's) instances, health, deployments, drains.
    pub fn may_write_service(&self, identity: &Identity, service: &str) -> Result<(), Denied> {
        self.check(
            identity,
            &format!("service `{service}`"),
            self.service_owner(service),
        )
    }

    /// A route's host.
    pub fn may_claim_host(&self, identity: &Identity, host: &HostPattern) -> Result<(), Denied> {
        self.check(identity, &format!("host `{host}`"), self.host_owner(host))
    }

    /// A TCP route's listen address: one of the identity's teams' patterns must match it.
    /// An address no pattern matches but another team's overlaps (`0.0.0.0:5432` takes
    /// the connections to that team's `127.0.0.1:5432`) is refused naming that team.
    pub fn may_listen(&self, identity: &Identity, addr: &SocketAddr) -> Result<(), Denied> {
        let what = format!("listen address `{addr}`");
        let owner = self.listen_owner(addr);
        if owner.is_none() && !identity.is_admin() {
            let wanted = ListenPattern::Exact(*addr);
            let overlapped = self
                .teams
                .iter()
                .filter(|t| !identity.acts_for(&t.name))
                .find_map(|t| t.tcp.iter().find(|p| p.overlaps(&wanted)).map(|p| (t, p)));
            if let Some((team, pattern)) = overlapped {
                return Err(Denied(format!(
                    "{what} overlaps `{pattern}`, which team `{}` owns; {} may not claim it",
                    team.name,
                    identity.label()
                )));
            }
        }
        self.check(identity, &what, owner)
    }

    /// Pushing to or deleting from a repository.
    pub fn may_write_repository(
        &self,
        identity: &Identity,
        repository: &str,
    ) -> Result<(), Denied> {
        self.check(
            identity,
            &format!("repository `{repository}`"),
            self.repository_owner(repository),
        )
    }

    /// Whether `identity` may read an object owned by `owner` (`read = "own"`).
    pub fn may_read(&self, identity: &Identity, owner: Option<&str>) -> bool {
        match self.read {
            ReadScope::All => true,
            ReadScope::Own => identity.is_admin() || owner.is_some_and(|o| identity.acts_for(o)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Owns, TeamConfig};

    fn policy() -> Policy {
        let teams = Teams::try_from(vec![
            TeamConfig {
                name: "web".into(),
                members: vec!["alice".into()],
                ldap_group: Some("web-devs".into()),
                owns: Owns {
                    services: vec!["web".into(), "web-*".into()],
                    hosts: vec!["web.example.com".into(), "*.web.example.com".into()],
                    tcp: vec!["*:5432".into()],
                    repositories: vec!["web/*".into()],
                },
            },
            TeamConfig {
                name: "api".into(),
                members: vec!["bob".into()],
                ldap_group: None,
                owns: Owns {
                    services: vec!["api".into()],
                    hosts: vec!["api.example.com".into()],
                    tcp: vec!["127.0.0.1:6379".into()],
                    ..Owns::default()
                },
            },
        ])
        .expect("teams");
        Policy::new(
            &teams,
            &AuthConfig {
                admins: vec!["carol".into()],
                ..AuthConfig::default()
            },
        )
    }

    #[test]
    fn teams_write_what_they_own() {
        let p = policy();
        let alice = p.user_identity("alice", &BTreeSet::new());
        let dave = p.user_identity("dave", &BTreeSet::from(["web-devs".to_string()]));
        let carol = p.user_identity("carol", &BTreeSet::new());
        assert!(carol.is_admin());
        assert_eq!(
            dave,
            Identity::Teams {
                who: "user:dave".into(),
                teams: BTreeSet::from(["web".to_string()])
            }
        );
        assert!(p.may_write_service(&alice, "web-api").is_ok());
        assert_eq!(
            p.may_write_service(&alice, "api")
                .err()
                .map(|d| d.0)
                .as_deref(),
            Some("service `api` belongs to team `api`; user:alice may not change it")
        );
        assert!(p.may_write_service(&alice, "orphan").is_err());
        assert!(p.may_write_service(&carol, "orphan").is_ok());
        let host = |h: &str| HostPattern::parse(h).expect("host");
        assert!(p.may_claim_host(&alice, &host("x.web.example.com")).is_ok());
        assert!(p.may_claim_host(&alice, &host("*.web.example.com")).is_ok());
        assert!(p.may_claim_host(&alice, &host("*.example.com")).is_err());
        assert!(p.may_claim_host(&alice, &host("api.example.com")).is_err());
        assert!(p.may_write_repository(&dave, "web/app").is_ok());
        assert!(p.may_write_repository(&dave, "api/app").is_err());
        assert!(
            p.may_listen(&alice, &"0.0.0.0:5432".parse().expect("addr"))
                .is_ok()
        );
        let listen = |who: &Identity, addr: &str| {
            p.may_listen(who, &addr.parse().expect("addr"))
                .err()
                .map(|d| d.0)
        };
        assert_eq!(
            listen(&alice, "127.0.0.1:6379").as_deref(),
            Some(
                "listen address `127.0.0.1:6379` belongs to team `api`; user:alice may not change it"
            )
        );
        // An address that merely overlaps another team's: refused naming that team.
        assert_eq!(
            listen(&alice, "0.0.0.0:6379").as_deref(),
            Some(
                "listen address `0.0.0.0:6379` overlaps `127.0.0.1:6379`, which team `api` owns; \
                 user:alice may not claim it"
            )
        );
        assert!(
            listen(&alice, "[::]:6379").is_some_and(|m| m.contains("team `api`")),
            "the IPv6 wildcard overlaps too"
        );
        let bob = p.user_identity("bob", &BTreeSet::new());
        assert_eq!(listen(&bob, "127.0.0.1:6379"), None);
        assert!(listen(&bob, "0.0.0.0:5432").is_some_and(|m| m.contains("team `web`")));
        // Wider than the team's own address, overlapping no other team's: no team's.
        assert!(listen(&bob, "0.0.0.0:6379").is_some_and(|m| m.contains("belongs to no team")));
        assert_eq!(
            listen(&alice, "127.0.0.2:6379").as_deref(),
            Some(
                "listen address `127.0.0.2:6379` belongs to no team (only the admin may change it)"
            )
        );
        assert_eq!(listen(&carol, "0.0.0.0:6379"), None);
    }
}

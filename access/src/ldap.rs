//! Users and their groups from an LDAP directory (as Atlantis takes teams from LDAP): a
//! user binds with their own password at `user_dn`; the groups whose `group_filter`
//! matches their DN name their teams (a team's `ldap_group`). A successful login is
//! remembered for `cache_ttl` (keyed by user and a hash of the password): requests within
//! it need no round trip, and a directory that goes down is bridged for that long; after
//! it, a login against an unreachable directory fails closed, saying why.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::config::LdapConfig;

/// How a login went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Valid {
        groups: BTreeSet<String>,
    },
    /// Wrong user or password.
    Invalid,
    /// The directory cannot be asked (and no recent login of this user is remembered).
    Unavailable(String),
}

/// (user, SHA-256 of the password) -> (when it logged in, its groups).
type LoginCache = HashMap<(String, [u8; 32]), (Instant, BTreeSet<String>)>;

pub struct Ldap {
    config: LdapConfig,
    cache: Mutex<LoginCache>,
}

impl Ldap {
    pub fn new(config: LdapConfig) -> Ldap {
        Ldap {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn login(&self, user: &str, password: &str) -> Login {
        // An empty password is an anonymous bind to most servers: never a login.
        // An empty password is an anonymous bind to most servers; a name with outer spaces
        // or controls would bind as another (servers trim) and be another identity here.
        if user.is_empty()
            || password.is_empty()
            || user.trim() != user
            || user.chars().any(char::is_control)
        {
            return Login::Invalid;
        }
        let key = (
            user.to_string(),
            <[u8; 32]>::from(Sha256::digest(password.as_bytes())),
        );
        if let Some(groups) = self.cached(&key) {
            return Login::Valid { groups };
        }
        match tokio::time::timeout(self.config.timeout, self.ask(user, password)).await {
            Ok(Ok(Some(groups))) => {
                if let Ok(mut cache) = self.cache.lock() {
                    let ttl = self.config.cache_ttl;
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                    cache.insert(key, (Instant::now(), groups.clone()));
                }
                Login::Valid { groups }
            }
            Ok(Ok(None)) => Login::Invalid,
            Ok(Err(e)) => {
                warn!(url = %self.config.url, error = %e, "LDAP directory unavailable");
                Login::Unavailable(format!(
                    "the LDAP directory at {} cannot be reached: {e}",
                    self.config.url
                ))
            }
            Err(_) => Login::Unavailable(format!(
                "the LDAP directory at {} did not answer within {}",
                self.config.url,
                humantime::format_duration(self.config.timeout)
            )),
        }
    }

    fn cached(&self, key: &(String, [u8; 32])) -> Option<BTreeSet<String>> {
        let cache = self.cache.lock().ok()?;
        let (at, groups) = cache.get(key)?;
        (at.elapsed() < self.config.cache_ttl).then(|| groups.clone())
    }

    /// `Ok(None)`: the directory refused the credentials.
    async fn ask(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<BTreeSet<String>>, ldap3::LdapError> {
        let settings = LdapConnSettings::new().set_conn_timeout(self.config.timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url).await?;
        ldap3::drive!(conn);
        let dn = self.config.user_dn.replace("{user}", &dn_escape(user));
        let bound = ldap.simple_bind(&dn, password).await?;
        // 49: invalidCredentials; 32: noSuchObject (some servers for an unknown DN).
        if matches!(bound.rc, 49 | 32) {
            let _ = ldap.unbind().await;
            return Ok(None);
        }
        bound.success()?;
        let filter = self
            .config
            .group_filter
            .replace("{dn}", &ldap_escape(&dn))
            .replace("{user}", &ldap_escape(user));
        let (entries, _) = ldap
            .search(
                &self.config.group_base,
                Scope::Subtree,
                &filter,
                vec![self.config.group_attribute.as_str()],
            )
            .await?
            .success()?;
        let groups = entries
            .into_iter()
            .map(SearchEntry::construct)
            .flat_map(|entry| {
                entry
                    .attrs
                    .get(&self.config.group_attribute)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let _ = ldap.unbind().await;
        Ok(Some(groups))
    }
}

/// Escapes a value for a DN attribute (RFC 4514): the specials with a backslash, NUL as
/// `\00`, a leading `#` or space and a trailing space.
fn dn_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(dn_escape("alice"), "alice");
        assert_eq!(dn_escape("a,ou=admins"), "a\\,ou\\=admins");
        assert_eq!(dn_escape("#x"), "\\#x");
        assert_eq!(dn_escape("a\0b"), "a\\00b");
        assert_eq!(dn_escape("x "), "x\\ ");
    }
}

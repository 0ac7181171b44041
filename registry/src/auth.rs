//! Who may pull and push. Credentials come from an htpasswd file (bcrypt only). Clients
//! send them as Basic auth on every request, or exchange them at `/token` for a short-lived
//! bearer token (the registry token flow docker-style clients use): the 401 challenge is
//! `Bearer realm="<registry>/token",service="strait-registry",scope="repository:<name>:<actions>"`.
//!
//! Tokens are `base64url(claims).base64url(hmac-sha256)`, signed with a key generated at
//! start: they are valid only on the process that issued them, for `token_ttl`. The claims
//! name the user and their teams too, so a request made with a token is audited as its
//! user's.
//!
//! Every answer says who asked ([`Requester`]): the registry's audit records and write
//! metrics name them, refused requests included.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};

pub const SERVICE: &str = "strait-registry";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// What a request is for: a repository, or the catalog.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    Repository(&'a str),
    Catalog,
    /// `GET /v2/`: only checks that credentials, if any, are valid.
    Base,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}:{line}: {message}")]
    Htpasswd {
        path: String,
        line: usize,
        message: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Who a request is.
enum Identity {
    Anonymous,
    /// A user of the htpasswd file or the LDAP directory, with their LDAP groups.
    User(String, BTreeSet<String>),
    /// A bearer token.
    Token(TokenClaims),
    /// Credentials that cannot be checked now (the LDAP directory is unreachable).
    Unavailable {
        user: String,
        message: String,
    },
}

/// What a verified bearer token says.
struct TokenClaims {
    /// Whom it was issued to; `None` for an anonymous token.
    user: Option<access::Identity>,
    grants: Vec<Grant>,
}

/// Who made a request, for the audit log and the write metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// `user:<name>` (Basic auth, or a bearer token issued to the user), `anonymous` (no
    /// credentials, or an anonymous token), `invalid-credentials`, or `unverified:<name>`
    /// (the LDAP directory could not be asked).
    pub who: String,
    /// `admin`, the user's teams (comma-separated), `none` (a user of no team), or
    /// `anonymous` (anyone not authenticated).
    pub teams: String,
}

impl Requester {
    pub fn anonymous() -> Requester {
        Requester::unauthenticated("anonymous")
    }

    fn unauthenticated(who: impl Into<String>) -> Requester {
        Requester {
            who: who.into(),
            teams: "anonymous".into(),
        }
    }

    fn of(identity: &access::Identity) -> Requester {
        let teams = identity.team_label();
        Requester {
            who: identity.label().to_owned(),
            teams: if teams.is_empty() {
                "none".into()
            } else {
                teams
            },
        }
    }
}

/// A request refused: who made it, and the 401 or 403 to send.
#[derive(Debug)]
pub struct Refused {
    pub requester: Requester,
    pub error: ApiError,
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> ApiError {
        refused.error
    }
}

/// Teams and users beyond the htpasswd file: who may push where, and LDAP logins.
#[derive(Clone, Default)]
pub struct TeamAccess {
    pub policy: Arc<access::Policy>,
    pub ldap: Option<Arc<access::ldap::Ldap>>,
}

/// How a password check went.
enum Checked {
    User(BTreeSet<String>),
    Invalid,
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// `repository:<name>` or `registry:catalog`.
    resource: String,
    actions: Vec<String>,
}

type VerifiedKey = (String, [u8; 32]);

pub struct Auth {
    users: HashMap<String, String>,
    anonymous_pull: bool,
    realm: Option<String>,
    token_ttl: Duration,
    key: [u8; 32],
    /// Basic credentials that passed bcrypt recently, so each request does not pay ~50 ms
    /// of bcrypt. Keyed by user and a hash of the password; entries expire.
    verified: Mutex<HashMap<VerifiedKey, Instant>>,
    teams: TeamAccess,
}

const VERIFIED_FOR: Duration = Duration::from_secs(300);

impl Auth {
    pub fn load(config: &AuthConfig) -> Result<Auth, AuthError> {
        let users = parse_htpasswd(&config.htpasswd)?;
        Ok(Auth {
            users,
            anonymous_pull: config.anonymous_pull,
            realm: config.realm.clone(),
            token_ttl: config.token_ttl,
            key: rand::random(),
            verified: Mutex::new(HashMap::new()),
            teams: TeamAccess::default(),
        })
    }

    /// With teams configured and no `[registry.auth]`: no htpasswd users (only LDAP ones,
    /// if any), anonymous pull, and pushes only by a team's users.
    pub fn teams_only(teams: TeamAccess) -> Auth {
        Auth {
            users: HashMap::new(),
            anonymous_pull: true,
            realm: None,
            token_ttl: Duration::from_secs(300),
            key: rand::random(),
            verified: Mutex::new(HashMap::new()),
            teams,
        }
    }

    /// Pushes and deletes by team ownership; users from LDAP too.
    pub fn with_teams(mut self, teams: TeamAccess) -> Auth {
        self.teams = teams;
        self
    }

    /// A directory user as the teams' rules see them: without teams, every user is the
    /// admin (as before teams existed).
    fn user_identity(&self, user: &str, groups: &BTreeSet<String>) -> access::Identity {
        let policy = &self.teams.policy;
        if policy.has_teams() {
            policy.user_identity(user, groups)
        } else {
            access::Identity::Admin {
                who: format!("user:{user}"),
            }
        }
    }

    /// Whether `identity` may do `action` to repository `name` by the teams' rules; the
    /// message names the owner when not.
    fn identity_allows(
        &self,
        identity: &access::Identity,
        name: &str,
        action: Action,
    ) -> Result<(), String> {
        let policy = &self.teams.policy;
        if action == Action::Pull || !policy.has_teams() {
            return Ok(());
        }
        policy.may_write_repository(identity, name).map_err(|d| d.0)
    }

    /// Whether `user` may do `action` to repository `name` by the teams' rules.
    fn team_allows(
        &self,
        user: &str,
        groups: &BTreeSet<String>,
        name: &str,
        action: Action,
    ) -> Result<(), String> {
        self.identity_allows(&self.user_identity(user, groups), name, action)
    }

    /// Who `identity` is, for the audit log.
    fn requester(&self, identity: Option<&Identity>) -> Requester {
        match identity {
            None => Requester::unauthenticated("invalid-credentials"),
            Some(Identity::Anonymous) => Requester::anonymous(),
            Some(Identity::User(user, groups)) => Requester::of(&self.user_identity(user, groups)),
            Some(Identity::Token(claims)) => claims
                .user
                .as_ref()
                .map_or_else(Requester::anonymous, Requester::of),
            Some(Identity::Unavailable { user, .. }) => {
                Requester::unauthenticated(format!("unverified:{user}"))
            }
        }
    }

    /// Checks the request's credentials against what `resource`/`action` needs: who asked,
    /// or the 401 (with a challenge) or 403 to send.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        action: Action,
        secure: bool,
    ) -> Result<Requester, Refused> {
        let identity = self.identify(headers).await;
        let requester = self.requester(identity.as_ref());
        let refuse = |error: ApiError| Refused {
            requester: requester.clone(),
            error,
        };
        if let Some(Identity::Unavailable { message, .. }) = &identity {
            return Err(refuse(
                ApiError::new(ErrorCode::Unauthorized, message.clone())
                    .with_status(StatusCode::UNAUTHORIZED),
            ));
        }
        if let (Some(Identity::User(user, groups)), Resource::Repository(name)) =
            (&identity, resource)
            && let Err(message) = self.team_allows(user, groups, name, action)
        {
            return Err(refuse(
                ApiError::new(ErrorCode::Denied, message).with_status(StatusCode::FORBIDDEN),
            ));
        }
        let allowed = match (&identity, resource) {
            (Some(Identity::User(..)), _) => true,
            (Some(Identity::Unavailable { .. }), _) => false,
            (Some(Identity::Token(_)), Resource::Base) => true,
            (Some(Identity::Token(claims)), Resource::Repository(name)) => {
                claims.grants.iter().any(|g| {
                    g.resource == format!("repository:{name}")
                        && g.actions.iter().any(|a| a == action.as_str() || a == "*")
                })
            }
            (Some(Identity::Token(claims)), Resource::Catalog) => claims
                .grants
                .iter()
                .any(|g| g.resource == "registry:catalog"),
            (Some(Identity::Anonymous), Resource::Base) => false,
            (Some(Identity::Anonymous), _) => self.anonymous_pull && action == Action::Pull,
            (None, _) => false,
        };
        if allowed {
            return Ok(requester);
        }
        let scope = match resource {
            Resource::Repository(name) => match action {
                Action::Pull => format!("repository:{name}:pull"),
                Action::Push => format!("repository:{name}:pull,push"),
                Action::Delete => format!("repository:{name}:delete"),
            },
            Resource::Catalog => "registry:catalog:*".to_owned(),
            Resource::Base => String::new(),
        };
        let realm = self.realm(headers, secure);
        let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
        if !scope.is_empty() {
            challenge.push_str(&format!(",scope=\"{scope}\""));
        }
        let (code, message) = match &identity {
            // A user's token without push (or delete) to another team's repository: the
            // refusal names the owner, as a Basic-auth request's does.
            Some(Identity::Token(TokenClaims {
                user: Some(user), ..
            })) => match resource {
                Resource::Repository(name) => match self.identity_allows(user, name, action) {
                    Err(message) => (ErrorCode::Denied, message),
                    Ok(()) => (
                        ErrorCode::Denied,
                        "the credentials do not grant this access".into(),
                    ),
                },
                _ => (
                    ErrorCode::Denied,
                    "the credentials do not grant this access".into(),
                ),
            },
            Some(Identity::User(..) | Identity::Token(_) | Identity::Unavailable { .. }) => (
                ErrorCode::Denied,
                "the credentials do not grant this access".into(),
            ),
            None => (ErrorCode::Unauthorized, "invalid credentials".into()),
            Some(Identity::Anonymous) => {
                (ErrorCode::Unauthorized, "authentication required".into())
            }
        };
        let mut error = ApiError::new(code, message).with_status(StatusCode::UNAUTHORIZED);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            error = error.with_header(header::WWW_AUTHENTICATE, value);
        }
        Err(refuse(error))
    }

    fn realm(&self, headers: &HeaderMap, secure: bool) -> String {
        if let Some(realm) = &self.realm {
            return realm.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            .unwrap_or("localhost");
        let scheme = if secure { "https" } else { "http" };
        format!("{scheme}://{host}/token")
    }

    /// `None` when credentials were sent but are wrong.
    async fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Some(Identity::Anonymous);
        };
        let value = value.to_str().ok()?;
        let (scheme, credentials) = value.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = decode_basic(credentials.trim())?;
            match self.check_password(&user, &password).await {
                Checked::User(groups) => Some(Identity::User(user, groups)),
                Checked::Invalid => None,
                Checked::Unavailable(message) => Some(Identity::Unavailable { user, message }),
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.verify_token(credentials.trim()).map(Identity::Token)
        } else {
            None
        }
    }

    async fn check_password(&self, user: &str, password: &str) -> Checked {
        let Some(hash) = self.users.get(user) else {
            // Not a file user: the directory's, if there is one.
            return match &self.teams.ldap {
                Some(ldap) => match ldap.login(user, password).await {
                    access::ldap::Login::Valid { groups } => Checked::User(groups),
                    access::ldap::Login::Invalid => Checked::Invalid,
                    access::ldap::Login::Unavailable(message) => Checked::Unavailable(message),
                },
                None => Checked::Invalid,
            };
        };
        let key: VerifiedKey = (user.to_owned(), sha256(password.as_bytes()));
        if let Ok(verified) = self.verified.lock()
            && verified
                .get(&key)
                .is_some_and(|at| at.elapsed() < VERIFIED_FOR)
        {
            return Checked::User(BTreeSet::new());
        }
        let (hash, password) = (hash.clone(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if ok && let Ok(mut verified) = self.verified.lock() {
            verified.retain(|_, at| at.elapsed() < VERIFIED_FOR);
            verified.insert(key, Instant::now());
        }
        if ok {
            Checked::User(BTreeSet::new())
        } else {
            Checked::Invalid
        }
    }

    /// `GET /token?service=&scope=...`: a bearer token for what the caller may do of what it
    /// asks. Without credentials: an anonymous token (pull, if anonymous pull is on).
    pub async fn issue_token(
        &self,
        headers: &HeaderMap,
        scopes: &[String],
    ) -> Result<serde_json::Value, ApiError> {
        let user = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let credentials = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
                    .and_then(|(_, c)| decode_basic(c.trim()));
                let checked = match &credentials {
                    Some((user, password)) => self.check_password(user, password).await,
                    None => Checked::Invalid,
                };
                match (credentials, checked) {
                    (Some((user, _)), Checked::User(groups)) => Some((user, groups)),
                    (_, Checked::Unavailable(message)) => {
                        return Err(ApiError::new(ErrorCode::Unauthorized, message));
                    }
                    _ => {
                        return Err(
                            ApiError::new(ErrorCode::Unauthorized, "invalid credentials")
                                .with_header(
                                    header::WWW_AUTHENTICATE,
                                    HeaderValue::from_static("Basic realm=\"strait-registry\""),
                                ),
                        );
                    }
                }
            }
        };
        let mut grants = Vec::new();
        for scope in scopes.iter().flat_map(|s| s.split(' ')) {
            let Some((kind, rest)) = scope.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let mut granted: Vec<String> = Vec::new();
            for action in actions.split(',') {
                let grant = match (&user, action) {
                    // A team's repositories only (pull is as configured).
                    (Some((user, groups)), "push" | "delete") if kind == "repository" => {
                        let wanted = if action == "delete" {
                            Action::Delete
                        } else {
                            Action::Push
                        };
                        self.team_allows(user, groups, name, wanted)
                            .is_ok()
                            .then_some(action)
                    }
                    // Everything, or what of it the user may: pull (a client asking for
                    // `*` to delete then reaches the refusal that names the owner).
                    (Some((user, groups)), "*") if kind == "repository" => {
                        let all = self.team_allows(user, groups, name, Action::Push).is_ok()
                            && self.team_allows(user, groups, name, Action::Delete).is_ok();
                        Some(if all { "*" } else { "pull" })
                    }
                    (Some(_), _) => Some(action),
                    (None, "pull") => self.anonymous_pull.then_some(action),
                    (None, "*") if kind == "registry" => self.anonymous_pull.then_some(action),
                    (None, "*") => self.anonymous_pull.then_some("pull"),
                    (None, _) => None,
                };
                if let Some(grant) = grant
                    && !granted.iter().any(|g| g == grant)
                {
                    granted.push(grant.to_owned());
                }
            }
            if !granted.is_empty() && matches!(kind, "repository" | "registry") {
                grants.push(Grant {
                    resource: format!("{kind}:{name}"),
                    actions: granted,
                });
            }
        }
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + self.token_ttl.as_secs();
        let mut claims = serde_json::json!({
            "sub": user.as_ref().map(|(user, _)| user.as_str()).unwrap_or_default(),
            "exp": expires,
            "access": grants.iter().map(|g| serde_json::json!({"resource": g.resource, "actions": g.actions})).collect::<Vec<_>>(),
        });
        // Whom the token acts for, as they were when it was issued (LDAP groups included).
        match user
            .as_ref()
            .map(|(user, groups)| self.user_identity(user, groups))
        {
            Some(access::Identity::Admin { .. }) => claims["admin"] = true.into(),
            Some(access::Identity::Teams { teams, .. }) => {
                claims["teams"] = serde_json::json!(teams)
            }
            Some(access::Identity::Anonymous) | None => {}
        }
        let token = self.sign(&claims.to_string());
        Ok(serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": self.token_ttl.as_secs(),
        }))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    fn sign(&self, claims: &str) -> String {
        let payload = URL_SAFE_NO_PAD.encode(claims);
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    fn verify_token(&self, token: &str) -> Option<TokenClaims> {
        let (payload, signature) = token.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        if claims.get("exp")?.as_u64()? < now {
            return None;
        }
        let grants = claims
            .get("access")?
            .as_array()?
            .iter()
            .filter_map(|g| {
                Some(Grant {
                    resource: g.get("resource")?.as_str()?.to_owned(),
                    actions: g
                        .get("actions")?
                        .as_array()?
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect(),
                })
            })
            .collect();
        let sub = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or_default();
        let user = (!sub.is_empty()).then(|| {
            let who = format!("user:{sub}");
            if claims.get("admin").and_then(serde_json::Value::as_bool) == Some(true) {
                access::Identity::Admin { who }
            } else {
                let teams = claims
                    .get("teams")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect();
                access::Identity::Teams { who, teams }
            }
        });
        Some(TokenClaims { user, grants })
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(bytes).into()
}

fn decode_basic(credentials: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(STANDARD.decode(credentials).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn parse_htpasswd(path: &Path) -> Result<HashMap<String, String>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |message: &str| AuthError::Htpasswd {
            path: path.display().to_string(),
            line: i + 1,
            message: message.to_owned(),
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| error("expected user:hash"))?;
        if user.is_empty() {
            return Err(error("empty user name"));
        }
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(error(
                "only bcrypt hashes are accepted (create with `htpasswd -B` or `strait registry passwd`)",
            ));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

/// An htpasswd line for `user` with a bcrypt hash of `password`.
pub fn htpasswd_line(user: &str, password: &str) -> Result<String, bcrypt::BcryptError> {
    Ok(format!(
        "{user}:{}",
        bcrypt::hash(password, bcrypt::DEFAULT_COST)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(anonymous_pull: bool) -> Auth {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        let line = format!("{}\n", {
            let h = bcrypt::hash("secret", 4).expect("hash");
            format!("alice:{h}")
        });
        std::fs::write(&path, line).expect("write");
        Auth::load(&AuthConfig {
            htpasswd: path,
            anonymous_pull,
            realm: None,
            token_ttl: Duration::from_secs(60),
        })
        .expect("load")
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("value"),
        );
        headers
    }

    #[tokio::test]
    async fn anonymous_pull_but_not_push() {
        let auth = auth(true);
        let none = HeaderMap::new();
        assert!(
            auth.authorize(&none, Resource::Repository("a"), Action::Pull, false)
                .await
                .is_ok()
        );
        let denied = auth
            .authorize(&none, Resource::Repository("a"), Action::Push, false)
            .await
            .expect_err("push needs credentials");
        assert_eq!(denied.error.status, StatusCode::UNAUTHORIZED);
        assert_eq!(denied.requester, Requester::anonymous());
        let challenge = denied.error.headers[0]
            .1
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(
            challenge,
            "Bearer realm=\"http://localhost/token\",service=\"strait-registry\",scope=\"repository:a:pull,push\""
        );
    }

    #[tokio::test]
    async fn basic_and_token() {
        let auth = auth(false);
        let basic = with_auth(&format!("Basic {}", STANDARD.encode("alice:secret")));
        assert!(
            auth.authorize(&basic, Resource::Repository("a"), Action::Push, false)
                .await
                .is_ok()
        );
        let wrong = with_auth(&format!("Basic {}", STANDARD.encode("alice:nope")));
        assert!(
            auth.authorize(&wrong, Resource::Repository("a"), Action::Pull, false)
                .await
                .is_err()
        );
        assert!(
            auth.authorize(
                &HeaderMap::new(),
                Resource::Repository("a"),
                Action::Pull,
                false
            )
            .await
            .is_err()
        );

        let token = auth
            .issue_token(&basic, &["repository:a:pull,push".to_owned()])
            .await
            .expect("token");
        let token = token["token"].as_str().expect("string");
        let bearer = with_auth(&format!("Bearer {token}"));
        assert!(
            auth.authorize(&bearer, Resource::Repository("a"), Action::Push, false)
                .await
                .is_ok()
        );
        assert!(
            auth.authorize(&bearer, Resource::Repository("b"), Action::Pull, false)
                .await
                .is_err()
        );
        let tampered = with_auth(&format!("Bearer {}x", token));
        assert!(
            auth.authorize(&tampered, Resource::Repository("a"), Action::Pull, false)
                .await
                .is_err()
        );

        let anonymous = auth
            .issue_token(&HeaderMap::new(), &["repository:a:pull,push".to_owned()])
            .await
            .expect("anonymous token");
        let bearer = with_auth(&format!(
            "Bearer {}",
            anonymous["token"].as_str().expect("string")
        ));
        assert!(
            auth.authorize(&bearer, Resource::Repository("a"), Action::Pull, false)
                .await
                .is_err()
        );
    }

    /// `alice` in team web (which owns `web/*`), `api/*` team api's.
    fn team_auth() -> Auth {
        let teams = access::Teams::try_from(vec![
            access::config::TeamConfig {
                name: "web".into(),
                members: vec!["alice".into()],
                ldap_group: None,
                owns: access::config::Owns {
                    repositories: vec!["web/*".into()],
                    ..Default::default()
                },
            },
            access::config::TeamConfig {
                name: "api".into(),
                members: vec![],
                ldap_group: None,
                owns: access::config::Owns {
                    repositories: vec!["api/*".into()],
                    ..Default::default()
                },
            },
        ])
        .expect("teams");
        let policy = access::Policy::new(&teams, &access::AuthConfig::default());
        auth(true).with_teams(TeamAccess {
            policy: Arc::new(policy),
            ldap: None,
        })
    }

    #[tokio::test]
    async fn requests_say_who_asked_and_a_token_carries_its_users_teams() {
        let auth = team_auth();
        let basic = with_auth(&format!("Basic {}", STANDARD.encode("alice:secret")));
        let alice = Requester {
            who: "user:alice".into(),
            teams: "web".into(),
        };
        let requester = auth
            .authorize(&basic, Resource::Repository("web/app"), Action::Push, false)
            .await
            .expect("alice pushes to web/*");
        assert_eq!(requester, alice);
        let refused = auth
            .authorize(
                &basic,
                Resource::Repository("api/app"),
                Action::Delete,
                false,
            )
            .await
            .expect_err("not to api/*");
        assert_eq!(refused.requester, alice);
        assert_eq!(refused.error.status, StatusCode::FORBIDDEN);
        assert_eq!(
            refused.error.message,
            "repository `api/app` belongs to team `api`; user:alice may not change it"
        );

        // A token issued to alice is audited as alice, and names the owner when it lacks
        // push to another team's repository.
        let token = auth
            .issue_token(
                &basic,
                &[
                    "repository:web/app:pull,push".to_owned(),
                    "repository:api/app:pull,push".to_owned(),
                ],
            )
            .await
            .expect("token");
        let bearer = with_auth(&format!(
            "Bearer {}",
            token["token"].as_str().expect("token")
        ));
        let requester = auth
            .authorize(
                &bearer,
                Resource::Repository("web/app"),
                Action::Push,
                false,
            )
            .await
            .expect("push granted");
        assert_eq!(requester, alice);
        let refused = auth
            .authorize(
                &bearer,
                Resource::Repository("api/app"),
                Action::Push,
                false,
            )
            .await
            .expect_err("push not granted");
        assert_eq!(refused.requester, alice);
        assert_eq!(refused.error.status, StatusCode::UNAUTHORIZED);
        assert!(
            refused.error.message.contains("belongs to team `api`"),
            "{}",
            refused.error.message
        );
        assert!(
            auth.authorize(
                &bearer,
                Resource::Repository("api/app"),
                Action::Pull,
                false
            )
            .await
            .is_ok()
        );
        // `*` grants what of it the user may.
        let token = auth
            .issue_token(
                &basic,
                &[
                    "repository:web/app:*".to_owned(),
                    "repository:api/app:*".to_owned(),
                ],
            )
            .await
            .expect("token");
        let claims = token["token"]
            .as_str()
            .and_then(|t| t.split_once('.'))
            .and_then(|(payload, _)| URL_SAFE_NO_PAD.decode(payload).ok())
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .expect("claims");
        assert_eq!(
            claims["access"],
            serde_json::json!([
                {"resource": "repository:web/app", "actions": ["*"]},
                {"resource": "repository:api/app", "actions": ["pull"]},
            ])
        );
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["teams"], serde_json::json!(["web"]));

        // Wrong or no credentials.
        let wrong = with_auth(&format!("Basic {}", STANDARD.encode("alice:nope")));
        let refused = auth
            .authorize(&wrong, Resource::Repository("web/app"), Action::Push, false)
            .await
            .expect_err("wrong password");
        assert_eq!(refused.requester.who, "invalid-credentials");
        let anonymous = auth
            .issue_token(
                &HeaderMap::new(),
                &["repository:web/app:pull,push".to_owned()],
            )
            .await
            .expect("anonymous token");
        let bearer = with_auth(&format!(
            "Bearer {}",
            anonymous["token"].as_str().expect("token")
        ));
        let refused = auth
            .authorize(
                &bearer,
                Resource::Repository("web/app"),
                Action::Push,
                false,
            )
            .await
            .expect_err("anonymous push");
        assert_eq!(refused.requester, Requester::anonymous());
    }

    #[test]
    fn htpasswd_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "# users\nbob:{SHA}abc\n").expect("write");
        let error = parse_htpasswd(&path).expect_err("sha1 refused").to_string();
        assert!(error.ends_with(":2: only bcrypt hashes are accepted (create with `htpasswd -B` or `strait registry passwd`)"), "{error}");
    }
}

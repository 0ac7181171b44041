//! Who may change what through the admin API: authentication (the bearer token names an
//! [`Identity`]), authorisation of every write against the teams' ownership (one policy
//! function for every endpoint, so no handler can forget it), the `read = "own"` filter,
//! and the audit log of every write, refused ones included.
//!
//! Without teams and without `admin.token` nothing changes from before teams existed:
//! the API is loopback-only and every caller is the admin. With `admin.token` alone, that
//! token is the admin. With teams, every request needs a token: `admin.token` or one made
//! with `strait token create`; a team token may write only what its teams own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use access::audit::{AuditLog, AuditRecord};
use access::patterns::HostPattern;
use access::{Identity, Policy, ReadScope};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use discovery::admin::ApiError;
use discovery::model::RouteKind;
use discovery::{Leases, Route, Snapshot, Store};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;

/// Bodies the policy reads are bounded by the admin API's own body limit.
const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct Authz {
    pub policy: Arc<Policy>,
    admin_token: Option<Arc<str>>,
    audit: Option<Arc<AuditLog>>,
    store: Arc<dyn Store>,
    leases: Arc<Leases>,
    /// The agent of this process, to know whose instance a TTL check belongs to.
    agent: Option<Arc<discovery::agent::Agent>>,
    /// Who granted each lease (leases live in this process): a team may renew, revoke
    /// and register under only its own. A lease granted elsewhere (before an upgrade) has
    /// no entry and is checked by its instances alone.
    lease_owners: Arc<std::sync::Mutex<std::collections::HashMap<String, Identity>>>,
    writes: IntCounterVec,
    denied: IntCounterVec,
}

/// The identity of a request, for handlers that need it (the token API).
#[derive(Clone)]
pub struct Caller(pub Identity);

impl Authz {
    pub fn new(
        policy: Arc<Policy>,
        admin_token: Option<Arc<str>>,
        audit: Option<Arc<AuditLog>>,
        store: Arc<dyn Store>,
        leases: Arc<Leases>,
        agent: Option<Arc<discovery::agent::Agent>>,
        registry: &Registry,
    ) -> anyhow::Result<Authz> {
        let writes = IntCounterVec::new(
            Opts::new(
                "strait_admin_writes_total",
                "Admin API writes by team (or admin) and result: ok, denied, error",
            ),
            &["team", "result"],
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "strait_admin_denied_writes_total",
                "Admin API writes refused by the teams' ownership rules, by team",
            ),
            &["team"],
        )?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(denied.clone()))?;
        Ok(Authz {
            policy,
            admin_token,
            audit,
            store,
            leases,
            agent,
            lease_owners: Default::default(),
            writes,
            denied,
        })
    }

    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether requests must authenticate.
    fn required(&self) -> bool {
        self.admin_token.is_some() || self.policy.has_teams()
    }

    /// The identity a request's `Authorization` header names; the error is the 401.
    pub fn identify(&self, headers: &axum::http::HeaderMap) -> Result<Identity, ApiError> {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 11.1), the token is not.
            let (scheme, token) = v.as_bytes().split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
        });
        let Some(given) = given else {
            if !self.required() {
                return Ok(Identity::Admin {
                    who: "anonymous".into(),
                });
            }
            return Err(unauthorized(
                "this admin API requires `Authorization: Bearer <token>`",
            ));
        };
        if let Some(admin) = &self.admin_token
            && access::token::constant_time_eq(admin.as_bytes(), given)
        {
            return Ok(Identity::Admin {
                who: "admin-token".into(),
            });
        }
        let given = std::str::from_utf8(given).unwrap_or("");
        let Some((id, secret)) = access::token::parse(given) else {
            if !self.required() {
                // No authentication configured: a stray header does not lock anyone out.
                return Ok(Identity::Admin {
                    who: "anonymous".into(),
                });
            }
            return Err(unauthorized("the bearer token is not valid here"));
        };
        let snapshot = self.store.snapshot();
        let record = snapshot
            .tokens
            .get(id)
            .filter(|record| access::token::verify(secret, &record.hash))
            .ok_or_else(|| unauthorized("unknown or revoked token"))?;
        if record.expired(SystemTime::now()) {
            return Err(unauthorized(&format!(
                "token {id} expired at {}",
                record
                    .expires
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default()
            )));
        }
        let who = format!("token:{id}");
        if record.admin {
            return Ok(Identity::Admin { who });
        }
        let teams: BTreeSet<String> = record
            .teams
            .iter()
            .filter(|t| self.policy.is_team(t))
            .cloned()
            .collect();
        if teams.is_empty() {
            return Err(unauthorized(&format!(
                "token {id} is for team(s) {} that are no longer configured",
                record.teams.join(", ")
            )));
        }
        Ok(Identity::Teams { who, teams })
    }

    /// Whether `identity` may make this write; the error is the 403 naming the owner.
    #[allow(clippy::too_many_arguments)]
    fn authorize_write(
        &self,
        identity: &Identity,
        method: &Method,
        segments: &[&str],
        query: &str,
        body: &[u8],
        snapshot: &Snapshot,
    ) -> Result<(), String> {
        if identity.is_admin() {
            return Ok(());
        }
        let policy = &self.policy;
        let service = |name: &str| policy.may_write_service(identity, name).map_err(|d| d.0);
        let own_lease = |id: &str| -> Result<(), String> {
            let owners = self.lease_owners.lock().unwrap_or_else(|p| p.into_inner());
            match owners.get(id) {
                Some(owner) if shares_a_team(owner, identity) => Ok(()),
                Some(owner) => Err(format!(
                    "lease {id} was granted to {}; {} may not use it",
                    owner.label(),
                    identity.label()
                )),
                None => Ok(()),
            }
        };
        match segments {
            ["v1", "services", s, "instances", _] => {
                service(s)?;
                match query_value(query, "lease") {
                    Some(lease) => own_lease(&lease),
                    None => Ok(()),
                }
            }
            ["v1", "services", s, "instances", _, "health"] => service(s),
            ["v1", "agent", "services", s, _, "maintenance"] => service(s),
            ["v1", "agent", "checks", id, "pass"] => {
                match self.agent.as_ref().and_then(|a| a.check_service(id)) {
                    Some(s) => service(&s),
                    None => Ok(()),
                }
            }
            ["v1", "explain"] | ["v1", "leases"] => Ok(()),
            ["v1", "leases", id, "renew"] => own_lease(id),
            ["v1", "leases", id] => {
                own_lease(id)?;
                match self.leases.get(id) {
                    Some(lease) => lease
                        .instances
                        .iter()
                        .try_for_each(|key| service(key.split('/').next().unwrap_or(""))),
                    None => Ok(()),
                }
            }
            ["v1", "routes", name] => {
                if let Some(existing) = snapshot.routes.get(*name) {
                    self.may_change_route(identity, name, existing)?;
                }
                if *method == Method::DELETE {
                    return Ok(());
                }
                // A body that is no route is the handler's 400 to give.
                let Ok(mut route) = serde_json::from_slice::<Route>(body) else {
                    return Ok(());
                };
                if route.validate().is_err() {
                    return Ok(());
                }
                self.may_write_route(identity, name, &route, snapshot)
            }
            ["v1", "apps", app, ..] => {
                service(app)?;
                // A deployment manages the route named after its app: it must be the
                // identity's to change.
                if let Some(existing) = snapshot.routes.get(*app) {
                    self.may_change_route(identity, app, existing)?;
                }
                // A deployment that routes a host claims it.
                if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body)
                    && let Some(host) = fields.get("host").and_then(Value::as_str)
                {
                    let mut route = Route::http(host, app);
                    if route.validate().is_ok() {
                        return self.may_write_route(identity, app, &route, snapshot);
                    }
                }
                Ok(())
            }
            ["v1", "tokens", ..] => Err(format!(
                "only the admin manages tokens; {} is a team's",
                identity.label()
            )),
            _ => Err(format!("{} {} is the admin's", method, segments.join("/"))),
        }
    }

    /// The team an existing route belongs to: its host's owner, else its listen
    /// address's, else its first service's.
    fn route_owner(&self, route: &Route) -> Option<String> {
        let policy = &self.policy;
        let by_host = route
            .host
            .as_deref()
            .and_then(|h| HostPattern::parse(h).ok())
            .and_then(|h| policy.host_owner(&h).map(str::to_string));
        let by_listen = route
            .listen
            .and_then(|addr| policy.listen_owner(&addr).map(str::to_string));
        by_host.or(by_listen).or_else(|| {
            route
                .services()
                .find_map(|s| policy.service_owner(s).map(str::to_string))
        })
    }

    fn may_change_route(
        &self,
        identity: &Identity,
        name: &str,
        route: &Route,
    ) -> Result<(), String> {
        match self.route_owner(route) {
            Some(owner) if identity_has(identity, &owner) => Ok(()),
            Some(owner) => Err(format!(
                "route `{name}` belongs to team `{owner}`; {} may not change it",
                identity.label()
            )),
            None => Err(format!(
                "route `{name}` belongs to no team (only the admin may change it)"
            )),
        }
    }

    /// A new or replaced route: its host (or listen address) and services must be the
    /// identity's, and it must not reach a host another team's route serves.
    fn may_write_route(
        &self,
        identity: &Identity,
        name: &str,
        route: &Route,
        snapshot: &Snapshot,
    ) -> Result<(), String> {
        let policy = &self.policy;
        let services = || {
            route
                .services()
                .try_for_each(|s| policy.may_write_service(identity, s).map_err(|d| d.0))
        };
        match route.kind {
            RouteKind::Tcp => {
                if let Some(listen) = route.listen {
                    policy.may_listen(identity, &listen).map_err(|d| d.0)?;
                }
                services()
            }
            RouteKind::Http => {
                let Some(host) = route
                    .host
                    .as_deref()
                    .and_then(|h| HostPattern::parse(h).ok())
                else {
                    return services();
                };
                // Another team's route first: the refusal names who serves the host.
                for (other, existing) in snapshot.routes.iter() {
                    if **other == *name || existing.kind != RouteKind::Http {
                        continue;
                    }
                    let Some(theirs) = existing
                        .host
                        .as_deref()
                        .and_then(|h| HostPattern::parse(h).ok())
                    else {
                        continue;
                    };
                    if !theirs.overlaps(&host) {
                        continue;
                    }
                    match self.route_owner(existing) {
                        Some(owner) if identity_has(identity, &owner) => {}
                        owner => {
                            return Err(format!(
                                "host `{host}` overlaps `{theirs}`, which route `{other}` of {} already serves",
                                owner.map_or("no team (the admin's)".to_string(), |o| format!(
                                    "team `{o}`"
                                ))
                            ));
                        }
                    }
                }
                policy.may_claim_host(identity, &host).map_err(|d| d.0)?;
                services()
            }
        }
    }

    /// `read = "own"`: whether `identity` may read the object a GET names.
    fn may_read(&self, identity: &Identity, segments: &[&str], snapshot: &Snapshot) -> bool {
        let policy = &self.policy;
        if policy.read_scope() == ReadScope::All || identity.is_admin() {
            return true;
        }
        match segments {
            ["v1", "services", s, ..] | ["v1", "apps", s, ..] => {
                policy.may_read(identity, policy.service_owner(s))
            }
            ["v1", "routes", name] => snapshot
                .routes
                .get(*name)
                .is_none_or(|r| policy.may_read(identity, self.route_owner(r).as_deref())),
            ["v1", "leases", id, ..] => self
                .lease_owners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(*id)
                .is_some_and(|owner| shares_a_team(owner, identity)),
            // What answers for everything at once: the admin's under `read = "own"`.
            ["metrics"] | ["v1", "explain"] | ["v1", "status"] => false,
            _ => true,
        }
    }

    /// `read = "own"`: a list's items the identity may not read are left out.
    fn filter_list(&self, identity: &Identity, segments: &[&str], body: &mut Value) {
        let policy = &self.policy;
        let mine = |owner: Option<String>| policy.may_read(identity, owner.as_deref());
        let service_owner = |s: &str| policy.service_owner(s).map(str::to_string);
        match segments {
            ["v1", "services"] => {
                if let Some(list) = body["services"].as_array_mut() {
                    list.retain(|s| mine(s["name"].as_str().and_then(service_owner)));
                }
            }
            ["v1", "apps"] => {
                if let Some(list) = body["apps"].as_array_mut() {
                    list.retain(|a| mine(a["name"].as_str().and_then(service_owner)));
                }
            }
            ["v1", "routes"] | ["v1", "snapshot"] => {
                if let Some(routes) = body["routes"].as_object_mut() {
                    routes.retain(|_, r| {
                        serde_json::from_value::<Route>(r.clone())
                            .is_ok_and(|r| mine(self.route_owner(&r)))
                    });
                }
                if let Some(services) = body["services"].as_object_mut() {
                    services.retain(|s, _| mine(service_owner(s)));
                }
            }
            _ => {}
        }
    }

    fn record(&self, identity: &Identity, record: AuditRecord) {
        let result = record.result.as_str();
        let team = identity.team_label();
        self.writes.with_label_values(&[&team, result]).inc();
        if result == "denied" {
            self.denied.with_label_values(&[&team]).inc();
        }
        if let Some(audit) = &self.audit {
            audit.append(record);
        }
    }
}

/// Whether `b` acts for one of `a`'s teams (the admin for everything).
fn shares_a_team(a: &Identity, b: &Identity) -> bool {
    match (a, b) {
        (_, Identity::Admin { .. }) => true,
        (Identity::Teams { teams: x, .. }, Identity::Teams { teams: y, .. }) => {
            x.intersection(y).next().is_some()
        }
        _ => false,
    }
}

/// The decoded value of `key` in a query string (the first, as the handlers' `Query`
/// extractor reads it).
fn query_value(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn identity_has(identity: &Identity, team: &str) -> bool {
    match identity {
        Identity::Admin { .. } => true,
        Identity::Teams { teams, .. } => teams.contains(team),
        Identity::Anonymous => false,
    }
}

fn too_large() -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request bodies are at most {MAX_BODY} bytes"),
    )
    .into_response()
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

/// What a write names, for the audit log: `route web`, `instance web/web-1`, …
fn object_of(segments: &[&str]) -> String {
    match segments {
        ["v1", "services", s, "instances", id, ..] => format!("instance {s}/{id}"),
        ["v1", "routes", name] => format!("route {name}"),
        ["v1", "apps", app, "deployments", id] => format!("deployment {app}/{id}"),
        ["v1", "apps", app, ..] => format!("app {app}"),
        ["v1", "leases", id, ..] => format!("lease {id}"),
        ["v1", "leases"] => "lease".into(),
        ["v1", "tokens", id] => format!("token {id}"),
        ["v1", "tokens"] => "token".into(),
        ["v1", "agent", "services", s, id, _] => format!("instance {s}/{id}"),
        ["v1", "agent", "checks", id, _] => format!("check {id}"),
        other => other.join("/"),
    }
}

fn audit_record(
    identity: &Identity,
    method: &Method,
    path: &str,
    segments: &[&str],
    revision_before: u64,
) -> AuditRecord {
    AuditRecord {
        seq: 0,
        time: SystemTime::now(),
        who: identity.label().to_string(),
        token: identity.label().strip_prefix("token:").map(str::to_string),
        teams: identity.team_label(),
        method: method.to_string(),
        path: path.to_string(),
        object: object_of(segments),
        revision_before,
        revision_after: revision_before,
        status: 0,
        result: String::new(),
        message: None,
    }
}

/// The admin API's gate: authenticate, authorise, filter, audit.
pub async fn enforce(State(authz): State<Authz>, request: Request, next: Next) -> Response {
    // Tokens in URLs end up in access logs, shell histories and Referer headers.
    if request.uri().query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            matches!(key, "token" | "access_token" | "api_key")
        })
    }) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a token goes in the `Authorization: Bearer` header, never in the URL",
        )
        .into_response();
    }
    let identity = match authz.identify(request.headers()) {
        Ok(identity) => identity,
        Err(error) => {
            let mut response = error.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    };
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    // The segments as the handlers' `Path` extractors will see them: percent-decoded
    // (`%77eb` is `web`). One that decodes to a `/`, a NUL or not UTF-8 names nothing.
    let decoded: Option<Vec<String>> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
                .filter(|d| !d.contains(['/', '\0']))
        })
        .collect();
    let Some(decoded) = decoded else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a path segment decodes to `/`, NUL or bytes that are not UTF-8",
        )
        .into_response();
    };
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let snapshot = authz.store.snapshot();
    let is_read = method == Method::GET || method == Method::HEAD || segments == ["v1", "explain"];
    if is_read {
        if !authz.may_read(&identity, &segments, &snapshot) {
            return forbidden(format!(
                "{} may read only what its teams own (auth.read = \"own\")",
                identity.label()
            ));
        }
        let mut request = request;
        request.extensions_mut().insert(Caller(identity.clone()));
        let response = next.run(request).await;
        if authz.policy.read_scope() == ReadScope::Own
            && !identity.is_admin()
            && response.status().is_success()
        {
            return filtered(&authz, &identity, &segments, response).await;
        }
        return response;
    }
    // A write: read its body (bounded), decide, audit. A declared length over the limit
    // is refused before reading anything (the client may still be sending).
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut record = audit_record(&identity, &method, &path, &segments, snapshot.revision);
    let refuse_too_large = |mut record: AuditRecord| {
        record.status = StatusCode::PAYLOAD_TOO_LARGE.as_u16();
        record.result = "error".into();
        record.message = Some(format!("body over {MAX_BODY} bytes"));
        authz.record(&identity, record);
        too_large()
    };
    if declared.is_some_and(|n| n > MAX_BODY) {
        return refuse_too_large(record);
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(_) => return refuse_too_large(record),
    };
    if let Err(message) =
        authz.authorize_write(&identity, &method, &segments, &query, &body, &snapshot)
    {
        record.status = StatusCode::FORBIDDEN.as_u16();
        record.result = "denied".into();
        record.message = Some(message.clone());
        tracing::warn!(who = %identity.label(), %method, %path, reason = %message, "admin API: write denied");
        authz.record(&identity, record);
        return forbidden(message);
    }
    let mut request = Request::from_parts(parts, Body::from(body));
    request.extensions_mut().insert(Caller(identity.clone()));
    // In a task of its own: a client that goes away mid-write cancels neither the write
    // nor its audit record.
    let task = {
        let authz = authz.clone();
        tokio::spawn(async move {
            let response = next.run(request).await;
            let status = response.status();
            record.status = status.as_u16();
            record.revision_after = authz.store.snapshot().revision;
            record.result = if status.is_success() { "ok" } else { "error" }.into();
            if status.is_success() {
                let lease_grant = record.method == "POST" && record.path == "/v1/leases";
                authz.record(&identity, record);
                if !lease_grant {
                    return response;
                }
                let (parts, body) = response.into_parts();
                let bytes = axum::body::to_bytes(body, MAX_BODY)
                    .await
                    .unwrap_or_default();
                if let Some(id) = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                {
                    authz
                        .lease_owners
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, identity.clone());
                }
                return Response::from_parts(parts, Body::from(bytes));
            }
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .unwrap_or_default();
            record.message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string));
            authz.record(&identity, record);
            Response::from_parts(parts, Body::from(bytes))
        })
    };
    match task.await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "the write's task failed; see the log",
        )
        .into_response(),
    }
}

async fn filtered(
    authz: &Authz,
    identity: &Identity,
    segments: &[&str],
    response: Response,
) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "response too large",
        )
        .into_response();
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    authz.filter_list(identity, segments, &mut value);
    let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::{object_of, query_value};

    #[test]
    fn query_values() {
        assert_eq!(query_value("lease=ab12", "lease").as_deref(), Some("ab12"));
        assert_eq!(
            query_value("x=1&lease=a%2Fb&lease=c", "lease").as_deref(),
            Some("a/b")
        );
        assert_eq!(query_value("leases=1&lease", "lease").as_deref(), Some(""));
        assert_eq!(query_value("x=1", "lease"), None);
        assert_eq!(query_value("", "lease"), None);
    }

    #[test]
    fn audit_objects() {
        assert_eq!(object_of(&["v1", "routes", "web"]), "route web");
        assert_eq!(
            object_of(&["v1", "services", "web", "instances", "w1", "health"]),
            "instance web/w1"
        );
        assert_eq!(object_of(&["v1", "apps", "web", "deployments"]), "app web");
        assert_eq!(
            object_of(&["v1", "apps", "web", "deployments", "3"]),
            "deployment web/3"
        );
    }
}

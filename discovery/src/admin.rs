//! The discovery part of the admin API (`/v1/services`, `/v1/routes`, `/v1/snapshot`,
//! `/v1/leases`). The binary mounts it next to `/metrics`, `/healthz` and `/readyz` and
//! puts authentication in front of it. Reference: `docs/admin-api.md`.
//!
//! Every error is JSON `{"error": "<code>", "message": "<what is wrong>"}` with a 4xx/5xx
//! status; bodies are parsed strictly (unknown fields are errors).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::lease::Leases;
use crate::model::{Health, Instance, InstanceSpec, Route, validate_id, validate_service_name};
use crate::snapshot::Snapshot;
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub leases: Arc<Leases>,
}

/// The discovery endpoints, relative to the admin root.
pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/v1/services", get(list_services))
        .route("/v1/services/{service}", get(get_service))
        .route(
            "/v1/services/{service}/instances/{id}",
            put(register).delete(deregister).get(get_instance),
        )
        .route(
            "/v1/services/{service}/instances/{id}/health",
            put(set_health),
        )
        .route("/v1/routes", get(list_routes))
        .route(
            "/v1/routes/{name}",
            put(put_route).delete(delete_route).get(get_route),
        )
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/leases", axum::routing::post(grant_lease))
        .route("/v1/leases/{id}", get(get_lease).delete(revoke_lease))
        .route("/v1/leases/{id}/renew", put(renew_lease))
        .with_state(state)
}

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn not_found(kind: &str, name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} `{name}` not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match &e {
            StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            StoreError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<crate::model::ModelError> for ApiError {
    fn from(e: crate::model::ModelError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

/// Parses a JSON body strictly, naming the offending field and position on error.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" || path.is_empty() {
            ApiError::invalid(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::invalid(format!("invalid JSON body: field `{path}`: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

#[derive(Serialize)]
struct ServiceSummary<'a> {
    name: &'a str,
    instances: usize,
    passing: usize,
}

async fn list_services(State(state): State<AdminState>) -> Response {
    let snapshot = state.store.snapshot();
    let services: Vec<_> = snapshot
        .services
        .iter()
        .map(|(name, service)| ServiceSummary {
            name,
            instances: service.instances.len(),
            passing: service.count(Health::Passing),
        })
        .collect();
    Json(json!({"revision": snapshot.revision, "services": services})).into_response()
}

async fn get_service(
    State(state): State<AdminState>,
    Path(service): Path<String>,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    let snapshot = state.store.snapshot();
    let entry = snapshot
        .services
        .get(service.as_str())
        .ok_or_else(|| ApiError::not_found("service", &service))?;
    let instances: Vec<&Instance> = entry.instances.values().collect();
    Ok(
        Json(json!({"revision": snapshot.revision, "name": service, "instances": instances}))
            .into_response(),
    )
}

async fn get_instance(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    validate_id("instance id", &id)?;
    let snapshot = state.store.snapshot();
    let instance = snapshot
        .instance(&service, &id)
        .ok_or_else(|| ApiError::not_found("instance", &format!("{service}/{id}")))?;
    Ok(Json(instance).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterQuery {
    lease: Option<String>,
}

async fn register(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
    Query(query): Query<RegisterQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec: InstanceSpec = parse_body(&body)?;
    let instance = Instance::new(&service, &id, spec)?;
    state
        .leases
        .register(instance.clone(), query.lease.as_deref())
        .await?;
    Ok((StatusCode::OK, Json(instance)).into_response())
}

async fn deregister(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    validate_id("instance id", &id)?;
    if state.leases.deregister(&service, &id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("instance", &format!("{service}/{id}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthBody {
    health: Health,
}

async fn set_health(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    validate_id("instance id", &id)?;
    let HealthBody { health } = parse_body(&body)?;
    state.store.set_health(&service, &id, health).await?;
    Ok(Json(json!({"service": service, "id": id, "health": health})).into_response())
}

async fn list_routes(State(state): State<AdminState>) -> Response {
    let snapshot = state.store.snapshot();
    Json(json!({"revision": snapshot.revision, "routes": &*snapshot.routes})).into_response()
}

async fn get_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_id("route name", &name)?;
    let snapshot = state.store.snapshot();
    let route = snapshot
        .routes
        .get(name.as_str())
        .ok_or_else(|| ApiError::not_found("route", &name))?;
    Ok(Json(route.as_ref()).into_response())
}

async fn put_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_id("route name", &name)?;
    let mut route: Route = parse_body(&body)?;
    route
        .validate_for_write()
        .map_err(|e| ApiError::invalid(format!("route `{name}`: {e}")))?;
    // A second TCP route for the same connections would be dropped when the table is
    // built (or fail to bind): refused here, where the operator sees it.
    if let Some((other, _)) = state
        .store
        .snapshot()
        .routes
        .iter()
        .find(|(other, existing)| ***other != *name && route.tcp_overlaps(existing))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "route `{name}`: route `{other}` already takes these connections (the same port on an overlapping address, and the same server name); change or delete it first"
            ),
        ));
    }
    state.store.put_route(&name, route.clone()).await?;
    Ok(Json(route).into_response())
}

async fn delete_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_id("route name", &name)?;
    if state.store.delete_route(&name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("route", &name))
    }
}

/// `GET /v1/snapshot`: the whole state plus how fresh it is.
#[derive(Serialize)]
struct SnapshotView<'a> {
    revision: u64,
    backend: &'static str,
    connected: bool,
    age_seconds: f64,
    services: BTreeMap<&'a str, Vec<&'a Instance>>,
    routes: &'a crate::snapshot::RouteMap,
}

async fn snapshot(State(state): State<AdminState>) -> Response {
    let snapshot: Arc<Snapshot> = state.store.snapshot();
    let status = state.store.status();
    let view = SnapshotView {
        revision: snapshot.revision,
        backend: status.backend,
        connected: status.connected,
        age_seconds: status.age_seconds,
        services: snapshot
            .services
            .iter()
            .map(|(name, service)| (name.as_ref(), service.instances.values().collect()))
            .collect(),
        routes: &snapshot.routes,
    };
    Json(view).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

async fn grant_lease(State(state): State<AdminState>, body: Bytes) -> Result<Response, ApiError> {
    let LeaseBody { ttl } = parse_body(&body)?;
    let info = state.leases.grant(ttl).map_err(ApiError::invalid)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn get_lease(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = state
        .leases
        .get(&id)
        .ok_or_else(|| ApiError::not_found("lease", &id))?;
    Ok(Json(info).into_response())
}

async fn renew_lease(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = state
        .leases
        .renew(&id)
        .ok_or_else(|| ApiError::not_found("lease", &id))?;
    Ok(Json(info).into_response())
}

async fn revoke_lease(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.leases.revoke(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("lease", &id))
    }
}

//! `/v1/apps…` on the admin API: the catalogue (apps and their specs) and the inventory
//! (deployments and their instances) as separate resources, as FIWARE's PaaS Manager has
//! them. Creating a deployment answers `202 Accepted` with a `Location` to poll; errors are
//! the admin API's JSON shape. Reference: `docs/deploy.md`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use discovery::Snapshot;
use discovery::admin::{ApiError, parse_body};
use discovery::apps::{AppSpec, Deployment, validate_app_name};
use discovery::model::{Health, Instance};
use serde::Serialize;
use serde_json::json;

use crate::controller::{
    Controller, DeployError, DeployRequest, current, in_progress, instances_of,
};

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let (status, code) = match &e {
            DeployError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            DeployError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DeployError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            DeployError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            DeployError::Registry(_) => (StatusCode::BAD_GATEWAY, "registry"),
            DeployError::Store(_) => match e {
                DeployError::Store(e) => return ApiError::from(e),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            },
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The apps endpoints, relative to the admin root.
pub fn router(controller: Arc<Controller>) -> axum::Router {
    axum::Router::new()
        .route("/v1/apps", get(list_apps))
        .route(
            "/v1/apps/{app}",
            get(get_app).put(put_app).delete(delete_app),
        )
        .route(
            "/v1/apps/{app}/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route(
            "/v1/apps/{app}/deployments/{id}",
            get(get_deployment).delete(cancel_deployment),
        )
        .route("/v1/apps/{app}/rollback", post(rollback))
        .with_state(controller)
}

/// A deployment with its instances, as the API shows it.
#[derive(Serialize)]
struct DeploymentView<'a> {
    #[serde(flatten)]
    deployment: &'a Deployment,
    wanted: u32,
    passing: usize,
    instances: Vec<&'a Instance>,
}

fn view<'a>(snapshot: &'a Snapshot, deployment: &'a Deployment) -> DeploymentView<'a> {
    let instances: Vec<&Instance> = instances_of(snapshot, deployment).collect();
    DeploymentView {
        deployment,
        wanted: deployment.wanted(),
        passing: instances
            .iter()
            .filter(|i| i.spec.health == Health::Passing)
            .count(),
        instances,
    }
}

fn parse_id(app: &str, id: &str) -> Result<u64, ApiError> {
    validate_app_name(app)?;
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("deployment id `{id}` is not a number"),
        )
    })
}

fn accepted(deployment: &Deployment, snapshot: &Snapshot) -> Response {
    let location = format!("/v1/apps/{}/deployments/{}", deployment.app, deployment.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view(snapshot, deployment)),
    )
        .into_response()
}

async fn list_apps(State(controller): State<Arc<Controller>>) -> Response {
    let snapshot = controller.store().snapshot();
    let apps: Vec<_> = snapshot
        .apps
        .values()
        .map(|app| {
            let current = current(&snapshot, &app.name);
            let running = in_progress(&snapshot, &app.name);
            let passing = current.as_ref().map_or(0, |d| view(&snapshot, d).passing);
            json!({
                "name": app.name,
                "image": current.as_ref().map_or(app.spec.image.as_str(), |d| d.image.as_str()),
                "instances": current.as_ref().map_or(0, |d| d.wanted()),
                "passing": passing,
                "current": current.as_ref().map(|d| d.id),
                "in_progress": running.as_ref().map(|d| d.id),
                "host": app.spec.host,
                "removing": app.removing,
            })
        })
        .collect();
    Json(json!({"revision": snapshot.revision, "apps": apps})).into_response()
}

async fn get_app(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let snapshot = controller.store().snapshot();
    let record = snapshot.apps.get(app.as_str()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app `{app}` not found"),
        )
    })?;
    let current = current(&snapshot, &app);
    let running = in_progress(&snapshot, &app);
    Ok(Json(json!({
        "revision": snapshot.revision,
        "name": record.name,
        "spec": record.spec,
        "removing": record.removing,
        "current": current.as_deref().map(|d| view(&snapshot, d)),
        "in_progress": running.as_deref().map(|d| view(&snapshot, d)),
    }))
    .into_response())
}

async fn put_app(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let spec: AppSpec = parse_body(&body)?;
    let record = controller.put_app(&app, spec).await?;
    Ok(Json(record).into_response())
}

async fn delete_app(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    controller.remove_app(&app).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"app": app, "removing": true})),
    )
        .into_response())
}

async fn list_deployments(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let snapshot = controller.store().snapshot();
    if !snapshot.apps.contains_key(app.as_str()) && snapshot.deployments_of(&app).next().is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app `{app}` not found"),
        ));
    }
    let deployments: Vec<_> = snapshot
        .deployments_of(&app)
        .rev()
        .map(|d| view(&snapshot, d))
        .collect();
    Ok(Json(json!({"app": app, "deployments": deployments})).into_response())
}

async fn create_deployment(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let request: DeployRequest = parse_body(&body)?;
    let deployment = controller.create(&app, request).await?;
    Ok(accepted(&deployment, &controller.store().snapshot()))
}

async fn rollback(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    let deployment = controller.rollback(&app).await?;
    Ok(accepted(&deployment, &controller.store().snapshot()))
}

async fn get_deployment(
    State(controller): State<Arc<Controller>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&app, &id)?;
    let snapshot = controller.store().snapshot();
    let deployment = snapshot.deployment(&app, id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("deployment {app}/{id} not found"),
        )
    })?;
    Ok(Json(view(&snapshot, deployment)).into_response())
}

async fn cancel_deployment(
    State(controller): State<Arc<Controller>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&app, &id)?;
    let deployment = controller.cancel(&app, id).await?;
    Ok(accepted(&deployment, &controller.store().snapshot()))
}

//! The admin API's OpenAPI 3.1 document, served at `/openapi.json`.
//!
//! Nothing here lists the paths: each handler's `#[utoipa::path]` annotation (method,
//! path, parameters, body and response types) is both its route and its entry, because
//! the routers register handlers with utoipa-axum's `routes!` (`src/admin.rs` composes
//! them: discovery's, deploy's, the agent's and its own). A new endpoint is a handler
//! with its annotation and one `.routes(routes!(handler))` line in a router; this module
//! only adds what is the same for all of them: the document's info, the bearer scheme,
//! which operations it guards (all but the public ones) with their 401, and 413 for
//! bodies over the limit.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use discovery::admin::ErrorBody;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Server, Tag,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The JSON text of the finished document, set once the routers are composed.
pub type Spec = Arc<OnceLock<String>>;

/// `/openapi.json`.
pub fn routes(spec: Spec) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .with_state(spec)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = serde_json::Value)))]
async fn openapi_json(State(spec): State<Spec>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        spec.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

const BEARER: &str = "bearer";

/// Finishes the document the routers' annotations made. `public`: the paths served
/// without the token (everything else requires it when one is configured).
pub fn document(mut doc: OpenApi, public: &BTreeSet<String>) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("strait admin API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The discovery store, routes, deployments, the agent and the router's own \
             state. Every error is `{\"error\", \"message\"}`. When the admin token is \
             configured, every operation but the public ones requires \
             `Authorization: Bearer <token>` (never a query parameter). Reference: \
             docs/admin-api.md.",
        ))
        .build();
    doc.servers = Some(vec![Server::new("/")]);
    doc.tags = Some(
        [
            ("services", "Service instances and their health"),
            ("routes", "HTTP and TCP routes"),
            ("snapshot", "The store's whole state"),
            ("leases", "Registrations owned by a remote process"),
            ("apps", "Apps and their deployments (docs/deploy.md)"),
            ("agent", "This host's agent: TTL checks, maintenance"),
            ("router", "The live routing table"),
            ("meta", "Health, metrics, this document, the status page"),
        ]
        .into_iter()
        .map(|(name, description)| {
            let mut tag = Tag::new(name);
            tag.description = Some(description.to_string());
            tag
        })
        .collect(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The admin token (`admin.token`, STRAIT_ADMIN_TOKEN)"))
                .build(),
        ),
    );
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name(
                        <ErrorBody as utoipa::ToSchema>::name(),
                    ))))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = public.contains(path);
        for operation in operations(item) {
            // OpenAPI 3.1 requires a description for every response.
            for (status, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    response.description = status
                        .parse::<axum::http::StatusCode>()
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Response")
                        .to_string();
                }
            }
            if public {
                operation.security = Some(vec![SecurityRequirement::default()]);
            } else {
                operation.security =
                    Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                operation.responses.responses.insert(
                    "401".into(),
                    RefOr::T(error("No or wrong `Authorization: Bearer` token")),
                );
            }
            if operation.request_body.is_some() {
                operation.responses.responses.insert(
                    "413".into(),
                    RefOr::T(error("The body is larger than the limit (1 MiB)")),
                );
            }
        }
    }
    doc
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
    ]
    .into_iter()
    .flatten()
}

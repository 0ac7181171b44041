//! `GET /token`: bearer tokens for what the caller may do of what it asks (the token
//! flow docker-style clients use; see `crate::auth`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};
use crate::server::state::Registry;

pub(super) async fn token(
    State(registry): State<Arc<Registry>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(auth) = &registry.auth else {
        return ApiError::new(
            ErrorCode::Unsupported,
            "this registry has no authentication",
        )
        .with_status(StatusCode::NOT_FOUND)
        .into_response();
    };
    // `scope` may repeat: every one counts.
    let scopes: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(key, _)| key == "scope")
        .map(|(_, value)| value.into_owned())
        .collect();
    let result = auth.issue_token(&headers, &scopes).await;
    registry
        .metrics
        .requests
        .with_label_values(&["token", "GET", if result.is_ok() { "200" } else { "401" }])
        .inc();
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

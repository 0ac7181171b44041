//! The status page at `/ui` (and `/` redirecting there): plain HTML, a stylesheet and a
//! script, shipped inside the binary. The shell is public and holds no data; its script
//! polls the API (`/v1/status`, `/v1/snapshot`, `/v1/apps`) with the admin token, which
//! it asks for when the API answers 401 and sends as `Authorization: Bearer` — a token is
//! never taken from a URL. A strict Content-Security-Policy allows only these files and
//! requests to this origin.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(page))
        .routes(routes!(script))
        .routes(routes!(style))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// To the status page.
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 303, description = "See `/ui`", headers(("location" = String)))))]
async fn root() -> Redirect {
    Redirect::to("/ui")
}

/// The status page (its data comes from the API, with the token).
#[utoipa::path(get, path = "/ui", tag = "meta",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The status page's script.
#[utoipa::path(get, path = "/ui/app.js", tag = "meta",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)))]
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The status page's stylesheet.
#[utoipa::path(get, path = "/ui/style.css", tag = "meta",
    responses((status = 200, description = "The stylesheet", content_type = "text/css", body = String)))]
async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

//! No self-routing. An instance registered at one of this strait's own listeners would
//! make the router send traffic to strait itself: at the admin API, unauthenticated
//! admin requests through the public router; at the router, a loop. So, in front of the
//! admin API:
//!
//! - a request that came through this strait's router (its `Via` names the router,
//!   `Router::hop_token`, which a binary upgrade hands on) is refused with 403;
//! - `PUT /v1/services/{service}/instances/{id}` is refused with 400 when the instance's
//!   address and port are one of this process's listeners (router, TLS, admin, registry,
//!   DNS, a TCP route's `listen`): the same address, or any local address for a listener
//!   on `0.0.0.0`/`::`. The router's active health checks probe that same address, so
//!   they are covered too.
//!
//! The router itself refuses a request that comes back to it (its own `Via` name) with
//! 508 (`strait_router_loops_total`), whatever registered the instance.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use discovery::admin::ApiError;

/// The most of an instance registration read here; the admin API's own body limit
/// (1 MiB) refuses larger bodies after.
const BODY_LIMIT: usize = 1 << 20;

/// This process's listening addresses, known once everything is bound.
pub struct OwnListeners {
    addrs: RwLock<Vec<SocketAddr>>,
    router: Arc<router::Router>,
}

impl OwnListeners {
    pub fn new(router: Arc<router::Router>) -> Arc<OwnListeners> {
        Arc::new(OwnListeners {
            addrs: RwLock::default(),
            router,
        })
    }

    pub fn set(&self, addrs: Vec<SocketAddr>) {
        *self.addrs.write().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// The listener `target` would reach, if it is one of ours.
    pub fn listener_at(&self, target: SocketAddr) -> Option<SocketAddr> {
        let mut ours = self.addrs.read().unwrap_or_else(|e| e.into_inner()).clone();
        // TCP routes listen where the live table says.
        ours.extend(self.router.table().tcp.keys().copied());
        ours.into_iter().find(|own| reaches(target, *own))
    }
}

/// Whether a connection to `target` lands on a socket listening on `own`.
fn reaches(target: SocketAddr, own: SocketAddr) -> bool {
    if target.port() != own.port() {
        return false;
    }
    let (to, on) = (canonical(target.ip()), canonical(own.ip()));
    to == on || (on.is_unspecified() && is_local(to))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address of this host: loopback, or one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

fn refused(status: StatusCode, code: &'static str, message: String) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// The admin API's guard (an axum middleware).
pub async fn guard(State(own): State<Arc<OwnListeners>>, request: Request, next: Next) -> Response {
    let token = own.router.hop_token();
    let through_router = request.headers().get_all("via").iter().any(|v| {
        v.as_bytes()
            .windows(token.len())
            .any(|w| w == token.as_bytes())
    });
    if through_router {
        return refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin API does not answer requests that came through this strait's router".into(),
        );
    }
    let is_instance_put = request.method() == Method::PUT && {
        let parts: Vec<&str> = request.uri().path().split('/').collect();
        matches!(parts.as_slice(), ["", "v1", "services", _, "instances", _])
    };
    // A body over the limit is the API's to refuse (413), as any other.
    let oversized = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > BODY_LIMIT);
    if !is_instance_put || oversized {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body too large".into(),
        );
    };
    // Only the address is read here; the API parses the whole body strictly after.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        let address = value["address"]
            .as_str()
            .and_then(|a| a.parse::<IpAddr>().ok());
        let port = value["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        if let (Some(address), Some(port)) = (address, port)
            && let Some(listener) = own.listener_at(SocketAddr::new(address, port))
        {
            return refused(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "address: {address}:{port} is this strait's own listener {listener}: \
                     traffic routed to it would come back to strait (a loop, or the admin \
                     API through the router)"
                ),
            );
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_reaches_a_listener_on_it_or_on_any_local_address() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(reaches(at("127.0.0.1:8080"), at("127.0.0.1:8080")));
        assert!(reaches(at("127.0.0.1:8080"), at("0.0.0.0:8080")));
        assert!(reaches(at("[::ffff:127.0.0.1]:8080"), at("127.0.0.1:8080")));
        assert!(reaches(at("[::1]:8080"), at("[::]:8080")));
        assert!(!reaches(at("127.0.0.1:8081"), at("0.0.0.0:8080")));
        assert!(!reaches(at("127.0.0.2:8080"), at("127.0.0.1:8080")));
        // TEST-NET-3: no host has it.
        assert!(!reaches(at("203.0.113.7:8080"), at("0.0.0.0:8080")));
    }
}

//! `GET /v1/status`: what the status page shows beside the snapshot and the apps, in one
//! answer: this build, the store's freshness (fail static visible), the router's table
//! revision and propagation latency, and the TLS certificates with their expiry.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use discovery::Store;
use prometheus::Registry;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
pub struct StatusState {
    pub store: Arc<dyn Store>,
    pub router: Arc<router::Router>,
    pub registry: Registry,
}

pub fn routes(state: StatusState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(status))
        .with_state(state)
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    pub version: &'static str,
    pub commit: &'static str,
    pub uptime_seconds: f64,
    pub store: StoreView,
    pub router: RouterView,
    pub certificates: Vec<CertificateView>,
}

#[derive(Serialize, ToSchema)]
pub struct StoreView {
    /// `embedded` or `zookeeper`.
    pub backend: &'static str,
    pub connected: bool,
    pub ready: bool,
    /// The snapshot's revision.
    pub revision: u64,
    /// Seconds since the store last confirmed the snapshot current (0 while connected;
    /// growing while disconnected: the last snapshot is served as it is).
    pub age_seconds: f64,
}

#[derive(Serialize, ToSchema)]
pub struct RouterView {
    /// The revision of the snapshot the routing table was compiled from.
    pub table_revision: u64,
    /// Store write to routing table live, over this process's life.
    pub propagation: Propagation,
}

#[derive(Serialize, ToSchema)]
pub struct Propagation {
    pub count: u64,
    /// Estimated from the histogram's buckets, as Prometheus' `histogram_quantile` does;
    /// `null` before the first change.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct CertificateView {
    /// The TLS listener's address.
    pub listener: String,
    /// The certificate file.
    pub cert: String,
    pub names: Vec<String>,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    /// Negative once expired.
    pub expires_in_seconds: i64,
}

fn started() -> Instant {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// Starts the uptime clock (called when the server starts).
pub fn start_clock() {
    started();
}

/// This strait's state for the status page.
#[utoipa::path(get, path = "/v1/status", tag = "meta",
    responses((status = 200, body = Status)))]
async fn status(State(state): State<StatusState>) -> Json<Status> {
    let store = state.store.status();
    let now = unix_now();
    let (count, p50, p99) = propagation(&state.registry);
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("STRAIT_COMMIT"),
        uptime_seconds: started().elapsed().as_secs_f64(),
        store: StoreView {
            backend: store.backend,
            connected: store.connected,
            ready: store.ready,
            revision: state.store.snapshot().revision,
            age_seconds: store.age_seconds,
        },
        router: RouterView {
            table_revision: state.router.table().revision,
            propagation: Propagation {
                count,
                p50_seconds: p50,
                p99_seconds: p99,
            },
        },
        certificates: state
            .router
            .certificates()
            .into_iter()
            .flat_map(|(listener, certs)| {
                certs.into_iter().map(move |c| CertificateView {
                    listener: listener.to_string(),
                    cert: c.cert.display().to_string(),
                    names: c.names,
                    not_after: c.not_after,
                    expires_in_seconds: c.not_after - now,
                })
            })
            .collect(),
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The propagation histogram's count and its p50 and p99.
fn propagation(registry: &Registry) -> (u64, Option<f64>, Option<f64>) {
    let families = registry.gather();
    let Some(histogram) = families
        .iter()
        .find(|f| f.name() == "strait_router_propagation_seconds")
        .and_then(|f| f.get_metric().first())
        .map(|m| m.get_histogram())
    else {
        return (0, None, None);
    };
    let buckets: Vec<(f64, u64)> = histogram
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    let count = histogram.get_sample_count();
    (
        count,
        quantile(0.5, &buckets, count),
        quantile(0.99, &buckets, count),
    )
}

/// `histogram_quantile`: linear interpolation inside the bucket the rank falls in; the
/// highest finite bound when it falls in `+Inf`.
fn quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = (cumulative - lower.1) as f64;
            if in_bucket == 0.0 {
                return Some(bound);
            }
            return Some(lower.0 + (bound - lower.0) * (rank - lower.1 as f64) / in_bucket);
        }
        lower = (bound, cumulative);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let buckets = [(0.001, 50), (0.01, 90), (0.1, 100)];
        assert_eq!(quantile(0.5, &buckets, 100), Some(0.001));
        let p99 = quantile(0.99, &buckets, 100).expect("p99");
        assert!((p99 - 0.091).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &buckets, 0), None);
        // Beyond the last finite bucket: its bound.
        assert_eq!(quantile(0.99, &[(0.001, 10)], 20), Some(0.001));
    }
}

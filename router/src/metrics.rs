//! Router metrics, under `strait_router_*`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct RouterMetrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_connect_errors: IntCounterVec,
    pub upstream_tls_errors: IntCounterVec,
    pub retries: IntCounterVec,
    pub ejections: IntCounterVec,
    pub active_requests: IntGauge,
    pub active_connections: IntGauge,
    /// Of those, the idle HTTP/1 connections parked without a task (front/parking.rs).
    pub parked_connections: IntGauge,
    /// Open TCP-route connections (layer 4), which a drain waits for too.
    pub tcp_connections: IntGauge,
    pub rejected: IntCounterVec,
    pub table_revision: IntGauge,
    pub table_swaps: IntCounter,
    pub table_build: Histogram,
    pub propagation: Histogram,
    pub access_log_dropped: IntCounter,
    pub health_checks: IntCounterVec,
    /// HTTP/2 GOAWAY and RST_STREAM frames, resolved per code for the connection watch.
    pub h2: std::sync::Arc<crate::io::h2_watch::H2Counters>,
    /// Connections closed on arrival: a listener's `max_connections`, or a client's.
    pub connections_refused: IntCounterVec,
    /// Requests refused as a routing loop (508): they came through this router already,
    /// or through more strait routers than `max_hops`.
    pub loops: IntCounter,
    /// Instances kept routable by the mass-removal guard though they left the store.
    pub stale_endpoints: IntGaugeVec,
    /// Updates the mass-removal guard held back, by service.
    pub mass_removals: IntCounterVec,
}

/// One counter of `vec` per HTTP/2 error code, with `fixed` before the code label.
fn by_code(vec: &IntCounterVec, fixed: &[&str]) -> crate::io::h2_watch::ByCode {
    std::array::from_fn(|i| {
        let mut labels = fixed.to_vec();
        labels.push(crate::wire::ERROR_CODES[i]);
        vec.with_label_values(&labels)
    })
}

impl RouterMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let goaways = IntCounterVec::new(
            Opts::new(
                "strait_router_h2_goaways_sent_total",
                "HTTP/2 GOAWAY frames the router sent, by error code (NO_ERROR: a graceful \
                 close, as on drain)",
            ),
            &["code"],
        )?;
        let connection_errors = IntCounterVec::new(
            Opts::new(
                "strait_router_h2_connection_errors_total",
                "HTTP/2 connection errors (GOAWAY with an error code), by who detected it \
                 (router: the client broke the protocol; client) and code",
            ),
            &["by", "code"],
        )?;
        let stream_errors = IntCounterVec::new(
            Opts::new(
                "strait_router_h2_stream_errors_total",
                "HTTP/2 stream errors (RST_STREAM), by who sent it (router, client) and code",
            ),
            &["by", "code"],
        )?;
        registry.register(Box::new(goaways.clone()))?;
        registry.register(Box::new(connection_errors.clone()))?;
        registry.register(Box::new(stream_errors.clone()))?;
        let h2 = std::sync::Arc::new(crate::io::h2_watch::H2Counters {
            goaways_sent: by_code(&goaways, &[]),
            connection_errors_by_router: by_code(&connection_errors, &["router"]),
            connection_errors_by_client: by_code(&connection_errors, &["client"]),
            stream_errors_by_router: by_code(&stream_errors, &["router"]),
            stream_errors_by_client: by_code(&stream_errors, &["client"]),
        });
        let m = RouterMetrics {
            h2,
            requests: IntCounterVec::new(
                Opts::new(
                    "strait_router_requests_total",
                    "Requests by route, service, subset (a split's tag; empty for the whole service) and status class",
                ),
                &["route", "service", "subset", "class"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "strait_router_request_duration_seconds",
                    "Downstream request duration, head received to response done",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "strait_router_upstream_duration_seconds",
                    "Upstream time per attempt, connect to response done",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["service"],
            )?,
            upstream_connect_errors: IntCounterVec::new(
                Opts::new(
                    "strait_router_upstream_connect_errors_total",
                    "Failed upstream connects",
                ),
                &["service"],
            )?,
            upstream_tls_errors: IntCounterVec::new(
                Opts::new(
                    "strait_router_upstream_tls_errors_total",
                    "Failed upstream TLS handshakes (also counted as failed connects), by \
                     reason: certificate (not trusted, expired, wrong name) or handshake",
                ),
                &["service", "reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new("strait_router_retries_total", "Retried upstream attempts"),
                &["service"],
            )?,
            ejections: IntCounterVec::new(
                Opts::new(
                    "strait_router_ejections_total",
                    "Endpoints ejected by outlier detection",
                ),
                &["service"],
            )?,
            active_requests: IntGauge::new("strait_router_active_requests", "Requests in flight")?,
            active_connections: IntGauge::new(
                "strait_router_active_connections",
                "Open downstream HTTP/1 connections",
            )?,
            parked_connections: IntGauge::new(
                "strait_router_parked_connections",
                "Idle downstream HTTP/1 connections parked without a task (counted in active_connections too)",
            )?,
            tcp_connections: IntGauge::new(
                "strait_router_tcp_connections",
                "Open TCP-route connections",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "strait_router_rejected_requests_total",
                    "Requests refused before routing (malformed, oversize, slow heads) or matching no route (no_route)",
                ),
                &["reason"],
            )?,
            table_revision: IntGauge::new(
                "strait_router_table_revision",
                "Snapshot revision of the routing table in use",
            )?,
            table_swaps: IntCounter::new(
                "strait_router_table_swaps_total",
                "Routing tables swapped in",
            )?,
            table_build: Histogram::with_opts(
                HistogramOpts::new(
                    "strait_router_table_build_seconds",
                    "Time to compile a routing table",
                )
                .buckets(vec![
                    0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            propagation: Histogram::with_opts(
                HistogramOpts::new(
                    "strait_router_propagation_seconds",
                    "Store write to routing table live",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            access_log_dropped: IntCounter::new(
                "strait_router_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            )?,
            health_checks: IntCounterVec::new(
                Opts::new(
                    "strait_router_health_checks_total",
                    "Active health checks by service and result (pass, fail)",
                ),
                &["service", "result"],
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "strait_router_connections_refused_total",
                    "Connections closed on arrival, by listener and reason \
                     (max_connections, max_connections_per_ip)",
                ),
                &["listener", "reason"],
            )?,
            loops: IntCounter::new(
                "strait_router_loops_total",
                "Requests refused with 508: they had come through this router already \
                 or through more strait routers than max_hops",
            )?,
            stale_endpoints: IntGaugeVec::new(
                Opts::new(
                    "strait_router_stale_endpoints",
                    "Instances that left the store but stay routable (mass-removal guard)",
                ),
                &["service"],
            )?,
            mass_removals: IntCounterVec::new(
                Opts::new(
                    "strait_router_mass_removals_total",
                    "Updates that would have removed more than mass_removal.fraction of a \
                     pool's instances at once, held back by the guard",
                ),
                &["service"],
            )?,
        };
        registry.register(Box::new(m.connections_refused.clone()))?;
        registry.register(Box::new(m.loops.clone()))?;
        registry.register(Box::new(m.stale_endpoints.clone()))?;
        registry.register(Box::new(m.mass_removals.clone()))?;
        registry.register(Box::new(m.health_checks.clone()))?;
        registry.register(Box::new(m.access_log_dropped.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.upstream_connect_errors.clone()))?;
        registry.register(Box::new(m.upstream_tls_errors.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.ejections.clone()))?;
        registry.register(Box::new(m.active_requests.clone()))?;
        registry.register(Box::new(m.active_connections.clone()))?;
        registry.register(Box::new(m.parked_connections.clone()))?;
        registry.register(Box::new(m.tcp_connections.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.table_revision.clone()))?;
        registry.register(Box::new(m.table_swaps.clone()))?;
        registry.register(Box::new(m.table_build.clone()))?;
        registry.register(Box::new(m.propagation.clone()))?;
        Ok(m)
    }

    /// Counts a failed upstream attempt (a refused connect, or a 5xx when `connect` is
    /// false) against endpoint `index`, and the ejection it may cause.
    pub fn upstream_failure(
        &self,
        pool: &crate::pool::Pool,
        index: usize,
        outlier: &crate::config::OutlierConfig,
        now_ms: u64,
        connect: bool,
    ) {
        if connect {
            self.upstream_connect_errors
                .with_label_values(&[&pool.service])
                .inc();
        }
        if pool.record_failure(index, outlier, now_ms) {
            self.ejections.with_label_values(&[&pool.service]).inc();
        }
    }

    /// Counts a finished request by route, service and status class, and its duration.
    /// The labelled series are looked up once per table and kept in the route (a label
    /// lookup hashes and locks; this runs on every request).
    pub fn count_request(
        &self,
        route: &crate::table::CompiledRoute,
        target: usize,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        if let Some(target) = route.targets.list.get(target) {
            target.requests[class]
                .get_or_init(|| {
                    self.requests.with_label_values(&[
                        &*route.name,
                        &*target.service,
                        target.tag.as_deref().unwrap_or(""),
                        STATUS_CLASSES[class],
                    ])
                })
                .inc();
        }
        if !elapsed.is_zero() {
            route
                .request_duration
                .get_or_init(|| self.request_duration.with_label_values(&[&*route.name]))
                .observe(elapsed.as_secs_f64());
        }
    }

    /// The upstream duration histogram of a pool's service (looked up once per table).
    pub fn upstream_duration<'p>(&self, pool: &'p crate::pool::Pool) -> &'p Histogram {
        pool.upstream_duration
            .get_or_init(|| self.upstream_duration.with_label_values(&[&pool.service]))
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Counts an open connection until the guard drops.
    pub fn connection(&self) -> GaugeGuard {
        GaugeGuard::new(&self.active_connections)
    }
}

/// Increments a gauge now and decrements it on drop.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

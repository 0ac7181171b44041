//! The registry's Prometheus metrics.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub upload_duration: Histogram,
    pub uploads_in_progress: IntGauge,
    pub storage_bytes: IntGauge,
    pub blobs: IntGauge,
    /// Pushes and deletes (audited ones: a completed upload, a manifest put, a delete;
    /// every refused request) by team and result.
    pub writes: IntCounterVec,
    /// Pushes and deletes refused, by team: alert on its rate.
    pub denied_writes: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let metrics = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "strait_registry_requests_total",
                    "Registry requests by endpoint, method and status",
                ),
                &["endpoint", "method", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "strait_registry_request_duration_seconds",
                    "Time to the response head, by endpoint",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["endpoint"],
            )?,
            bytes_received: IntCounter::new(
                "strait_registry_bytes_received_total",
                "Blob and manifest bytes received",
            )?,
            bytes_sent: IntCounter::new(
                "strait_registry_bytes_sent_total",
                "Blob and manifest bytes sent",
            )?,
            upload_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "strait_registry_upload_duration_seconds",
                    "From the start of an upload to its verified completion",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
            )?,
            uploads_in_progress: IntGauge::new(
                "strait_registry_uploads_in_progress",
                "Upload sessions open in this process",
            )?,
            storage_bytes: IntGauge::new(
                "strait_registry_storage_bytes",
                "Bytes of blobs in storage (rescanned periodically)",
            )?,
            blobs: IntGauge::new("strait_registry_blobs", "Blobs in storage")?,
            writes: IntCounterVec::new(
                Opts::new(
                    "strait_registry_writes_total",
                    "Registry pushes and deletes by team (or admin, anonymous) and result: ok, denied, error",
                ),
                &["team", "result"],
            )?,
            denied_writes: IntCounterVec::new(
                Opts::new(
                    "strait_registry_denied_writes_total",
                    "Registry pushes and deletes refused (401 or 403), by team",
                ),
                &["team"],
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.request_duration.clone()))?;
        registry.register(Box::new(metrics.bytes_received.clone()))?;
        registry.register(Box::new(metrics.bytes_sent.clone()))?;
        registry.register(Box::new(metrics.upload_duration.clone()))?;
        registry.register(Box::new(metrics.uploads_in_progress.clone()))?;
        registry.register(Box::new(metrics.storage_bytes.clone()))?;
        registry.register(Box::new(metrics.blobs.clone()))?;
        registry.register(Box::new(metrics.writes.clone()))?;
        registry.register(Box::new(metrics.denied_writes.clone()))?;
        Ok(metrics)
    }
}

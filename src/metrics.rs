//! The process's own metrics: `strait_build_info` (version and commit) and the
//! `process_*` family (CPU seconds, resident memory, open and maximum file descriptors,
//! start time, threads) from the `prometheus` crate's collector, which reads `/proc/self`.

use prometheus::{IntGaugeVec, Opts, Registry};

pub fn register_process_metrics(registry: &Registry) -> anyhow::Result<()> {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "strait_build_info",
            "Always 1; the labels say which strait this is (version, commit)",
        ),
        &["version", "commit"],
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("STRAIT_COMMIT")])
        .set(1);
    registry.register(Box::new(build_info))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

/// `strait_router_certificate_expiry_timestamp_seconds{listener, cert}`: each TLS
/// listener's certificates as served now (after hot reloads), read at every scrape.
pub struct CertificateExpiry {
    router: std::sync::Arc<router::Router>,
    gauge: prometheus::IntGaugeVec,
}

impl CertificateExpiry {
    pub fn register(
        registry: &Registry,
        router: std::sync::Arc<router::Router>,
    ) -> anyhow::Result<()> {
        let gauge = Self::gauge()?;
        registry.register(Box::new(CertificateExpiry { router, gauge }))?;
        Ok(())
    }

    fn gauge() -> prometheus::Result<prometheus::IntGaugeVec> {
        IntGaugeVec::new(
            Opts::new(
                "strait_router_certificate_expiry_timestamp_seconds",
                "notAfter of each certificate a TLS listener serves, seconds since the Unix epoch",
            ),
            &["listener", "cert"],
        )
    }
}

impl prometheus::core::Collector for CertificateExpiry {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        // A fresh vector each time, so a certificate replaced by a reload leaves no series.
        let Ok(gauge) = Self::gauge() else {
            return Vec::new();
        };
        for (listener, certs) in self.router.certificates() {
            for cert in certs {
                gauge
                    .with_label_values(&[&listener.to_string(), &cert.cert.display().to_string()])
                    .set(cert.not_after);
            }
        }
        prometheus::core::Collector::collect(&gauge)
    }
}

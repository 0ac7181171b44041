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

/// Per-service health and the routes' targets, read from the store's snapshot at every
/// scrape: `strait_discovery_service_instances{service, health}` (every health state,
/// zeros included) and `strait_discovery_route_targets{route, service}` (1 for each
/// service a route sends to), so an alert can find a routed service with no passing
/// instance.
pub struct ServiceHealth {
    store: std::sync::Arc<dyn discovery::Store>,
    instances: IntGaugeVec,
    targets: IntGaugeVec,
}

impl ServiceHealth {
    pub fn register(
        registry: &Registry,
        store: std::sync::Arc<dyn discovery::Store>,
    ) -> anyhow::Result<()> {
        let (instances, targets) = Self::vectors()?;
        registry.register(Box::new(ServiceHealth {
            store,
            instances,
            targets,
        }))?;
        Ok(())
    }

    fn vectors() -> prometheus::Result<(IntGaugeVec, IntGaugeVec)> {
        Ok((
            IntGaugeVec::new(
                Opts::new(
                    "strait_discovery_service_instances",
                    "Registered instances per service and health",
                ),
                &["service", "health"],
            )?,
            IntGaugeVec::new(
                Opts::new(
                    "strait_discovery_route_targets",
                    "1 for each service a route sends traffic to",
                ),
                &["route", "service"],
            )?,
        ))
    }
}

impl prometheus::core::Collector for ServiceHealth {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = self.instances.desc();
        descs.extend(self.targets.desc());
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Ok((instances, targets)) = Self::vectors() else {
            return Vec::new();
        };
        let snapshot = self.store.snapshot();
        for (name, service) in snapshot.services.iter() {
            for health in discovery::model::Health::ALL {
                instances
                    .with_label_values(&[name.as_ref(), health.as_str()])
                    .set(i64::try_from(service.count(health)).unwrap_or(i64::MAX));
            }
        }
        for (route, spec) in snapshot.routes.iter() {
            for service in spec.services() {
                targets.with_label_values(&[route.as_ref(), service]).set(1);
            }
        }
        let mut families = prometheus::core::Collector::collect(&instances);
        families.extend(prometheus::core::Collector::collect(&targets));
        families
    }
}

/// `strait_discovery_health_changes_total{service}`: instances whose health changed
/// between one snapshot and the next (agents' checks, operators, deployments); a
/// service whose count climbs fast has flapping checks.
pub fn follow_health_changes(
    registry: &Registry,
    mut snapshots: tokio::sync::watch::Receiver<std::sync::Arc<discovery::Snapshot>>,
) -> anyhow::Result<()> {
    let changes = prometheus::IntCounterVec::new(
        Opts::new(
            "strait_discovery_health_changes_total",
            "Instance health changes seen in the store's snapshots, by service",
        ),
        &["service"],
    )?;
    registry.register(Box::new(changes.clone()))?;
    tokio::spawn(async move {
        let mut previous = snapshots.borrow_and_update().clone();
        while snapshots.changed().await.is_ok() {
            let next = snapshots.borrow_and_update().clone();
            for (name, service) in next.services.iter() {
                let before = previous.services.get(name);
                let changed = service
                    .instances
                    .iter()
                    .filter(|(id, instance)| {
                        before
                            .and_then(|b| b.instances.get(*id))
                            .is_some_and(|old| old.spec.health != instance.spec.health)
                    })
                    .count();
                if changed > 0 {
                    changes
                        .with_label_values(&[name.as_ref()])
                        .inc_by(u64::try_from(changed).unwrap_or(u64::MAX));
                }
            }
            previous = next;
        }
    });
    Ok(())
}

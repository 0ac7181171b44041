//! Active health checks: the router probes the instances of services that ask for it
//! (`[router.services.<name>.health_check]`) and takes those that keep failing out of
//! their pool until they pass again.
//!
//! The host-local agent already checks instances where they run and reports their health
//! to the store; these checks add the router's own view of the path to them (a network
//! problem between router and instance, a process that answers its agent but not the
//! network). The verdict lives in each endpoint's `EndpointState`, which is carried across
//! table swaps, so a swap neither forgets a failing instance nor re-probes a healthy one.
//! An instance is in the pool until `unhealthy_threshold` checks in a row fail; when all
//! of a pool's instances fail, picks ignore the verdict (Envoy's panic mode): sending to a
//! possibly broken instance beats sending nowhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::connectors::TransportConnector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::{HealthCheckConfig, HealthCheckKind};
use crate::metrics::RouterMetrics;
use crate::pool::{Clock, EndpointState, Pool};
use crate::table::Table;
use crate::tls::UpstreamTls;

/// How often the checker looks for instances due for a check.
const TICK: Duration = Duration::from_millis(100);
/// Largest response head read from a health check.
const MAX_HEAD: usize = 16 * 1024;

pub struct HealthChecker {
    pub table: Arc<ArcSwap<Table>>,
    pub connector: TransportConnector,
    pub metrics: RouterMetrics,
    pub clock: Clock,
}

/// One check of one instance.
struct Probe {
    service: Arc<str>,
    addr: SocketAddr,
    check: Arc<HealthCheckConfig>,
    tls: Option<Arc<UpstreamTls>>,
    state: Arc<EndpointState>,
}

impl HealthChecker {
    /// Runs for ever: every tick, starts the checks that are due, each on its own task.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let table = self.table.load_full();
            let now = self.clock.now_ms();
            for pool in table.pools.values() {
                self.start_due(pool, now);
            }
        }
    }

    fn start_due(self: &Arc<Self>, pool: &Pool, now: u64) {
        let Some(check) = &pool.health_check else {
            return;
        };
        let interval = u64::try_from(check.interval.as_millis()).unwrap_or(u64::MAX);
        for endpoint in &pool.endpoints {
            let state = &endpoint.state;
            if state.next_check_ms.load(Ordering::Relaxed) > now
                || state.checking.swap(true, Ordering::Relaxed)
            {
                continue;
            }
            state
                .next_check_ms
                .store(now.saturating_add(interval), Ordering::Relaxed);
            let probe = Probe {
                service: Arc::clone(&pool.service),
                addr: endpoint.addr,
                check: Arc::clone(check),
                tls: pool.tls.clone(),
                state: Arc::clone(&endpoint.state),
            };
            let checker = Arc::clone(self);
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(probe.check.timeout, checker.probe(&probe))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
                checker.record(&probe, outcome);
                probe.state.checking.store(false, Ordering::Relaxed);
            });
        }
    }

    /// Connects (with TLS for a TLS service) and, for an HTTP check, asks for the path.
    async fn probe(&self, probe: &Probe) -> Result<(), String> {
        let mut peer = crate::tls::peer(probe.tls.as_deref(), probe.addr);
        peer.options.connection_timeout = Some(probe.check.timeout);
        peer.options.total_connection_timeout = Some(probe.check.timeout);
        let mut stream = self
            .connector
            .new_stream(&peer)
            .await
            .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
        if probe.check.kind == HealthCheckKind::Tcp {
            return Ok(());
        }
        let host = probe.check.host.as_deref().unwrap_or(&probe.service);
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: strait-health-check\r\nconnection: close\r\n\r\n",
            probe.check.path
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.flush().await.map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::with_capacity(1024);
        loop {
            let mut chunk = [0u8; 1024];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before answering".into());
            }
            head.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&head) {
                Ok(httparse::Status::Complete(_)) => {
                    let status = response.code.unwrap_or(0);
                    return if (200..400).contains(&status) {
                        Ok(())
                    } else {
                        Err(format!("status {status}"))
                    };
                }
                Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
                _ => return Err("not an HTTP response".into()),
            }
        }
    }

    /// Counts a check and moves the instance out of or back into its pool.
    fn record(&self, probe: &Probe, outcome: Result<(), String>) {
        let state = &probe.state;
        let result = if outcome.is_ok() { "pass" } else { "fail" };
        self.metrics
            .health_checks
            .with_label_values(&[&probe.service, result])
            .inc();
        match outcome {
            Ok(()) => {
                state.check_failures.store(0, Ordering::Relaxed);
                let passes = state.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
                if passes >= probe.check.healthy_threshold
                    && state.failing_checks.swap(false, Ordering::Relaxed)
                {
                    info!(service = %probe.service, instance = %probe.addr, "passing health checks again: back in the pool");
                }
            }
            Err(reason) => {
                state.check_passes.store(0, Ordering::Relaxed);
                let failures = state.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= probe.check.unhealthy_threshold
                    && !state.failing_checks.swap(true, Ordering::Relaxed)
                {
                    warn!(service = %probe.service, instance = %probe.addr, %reason, failures, "failing health checks: out of the pool");
                }
            }
        }
    }
}

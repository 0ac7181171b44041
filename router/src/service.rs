//! Running the router: the control-plane thread that compiles snapshots into tables, and
//! the pingora server (its own threads and runtimes) that serves from them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use discovery::Snapshot;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use prometheus::Registry;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::config::RouterConfig;
use crate::front::{ConnLimits, Front, ListenerSpec, Parking};
use crate::metrics::RouterMetrics;
use crate::paths::pingora_proxy::PingoraProxy;
use crate::paths::pump::Pump;
use crate::paths::pump_h2::H2App;
use crate::paths::tcp::{TcpListeners, TcpProxy};
use crate::pool::Clock;
use crate::request::Proxy;
use crate::table::{Table, TableState, compile};
use crate::tls::UpstreamTlsSet;
use crate::wire::HeadLimits;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the router did not start listening on {0} within 10s")]
    NotListening(SocketAddr),
    #[error("cannot start router thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    AccessLog(std::io::Error),
    #[error("upstream TLS: {0}")]
    UpstreamTls(#[from] crate::tls::UpstreamTlsError),
    #[error("router.services.{service}.health_check: {message}")]
    HealthCheck { service: String, message: String },
    #[error("TLS listener {addr}: {error}")]
    Tls {
        addr: SocketAddr,
        error: crate::tls::CertError,
    },
}

/// The router: its current table, config and metrics.
pub struct Router {
    table: Arc<ArcSwap<Table>>,
    /// Bumped on every swap, for followers of the table (the TCP listeners).
    swaps: watch::Sender<u64>,
    config: Arc<RouterConfig>,
    /// Upstream TLS per service, loaded once here (files read, certificates checked).
    upstream_tls: UpstreamTlsSet,
    metrics: RouterMetrics,
    clock: Clock,
    tcp_listeners: Arc<TcpListeners>,
    /// One certificate store per `config.tls` listener, in order.
    certificates: Vec<Arc<crate::tls::CertStore>>,
    /// This router's `Via` name; a binary upgrade hands it on (`adopt_hop_token`), so
    /// that the successor recognises a loop through either process.
    hop_token: std::sync::RwLock<Arc<str>>,
}

impl Router {
    /// Checks the configuration's files (upstream TLS roots and client certificates) too:
    /// one that does not load is an error naming it.
    pub fn new(config: RouterConfig, registry: &Registry) -> Result<Self, RouterError> {
        for (service, settings) in &config.services {
            if let Some(message) = settings.health_check.as_ref().and_then(|c| c.problem()) {
                return Err(RouterError::HealthCheck {
                    service: service.clone(),
                    message,
                });
            }
        }
        let upstream_tls = UpstreamTlsSet::load(&config)?;
        // Loaded here, not when serving starts, so a binary upgrade finds a bad
        // certificate before the running process is asked to hand over.
        let certificates = config
            .tls
            .iter()
            .map(|listener| {
                crate::tls::CertStore::load(listener.certificates.clone()).map_err(|error| {
                    RouterError::Tls {
                        addr: listener.addr,
                        error,
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Router {
            certificates,
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            swaps: watch::Sender::new(0),
            upstream_tls,
            config: Arc::new(config),
            metrics: RouterMetrics::new(registry)?,
            clock: Clock::new(),
            tcp_listeners: Arc::default(),
            hop_token: std::sync::RwLock::new(
                format!("strait-{:016x}", rand::random::<u64>()).into(),
            ),
        })
    }

    /// This router's `Via` name (`strait-<hex>`), which it adds to every request it sends
    /// upstream. The admin API refuses requests that carry it: they came through the
    /// router.
    pub fn hop_token(&self) -> Arc<str> {
        Arc::clone(&self.hop_token.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes the predecessor's `Via` name (a binary upgrade), before `start`. A name that
    /// is not one (`strait-` and hex digits) is ignored.
    pub fn adopt_hop_token(&self, token: &str) {
        let valid = token
            .strip_prefix("strait-")
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if valid {
            *self.hop_token.write().unwrap_or_else(|e| e.into_inner()) = token.into();
        }
    }

    /// Explains how the live table would route a request.
    pub fn explain(
        &self,
        method: &http::Method,
        host: &str,
        path: &str,
        headers: &http::HeaderMap,
    ) -> crate::explain::Explanation {
        self.table
            .load()
            .explain(method, host, path, headers, self.clock.now_ms())
    }

    /// Each TLS listener's address (as configured) and the certificates it serves now.
    pub fn certificates(&self) -> Vec<(SocketAddr, Vec<crate::tls::CertInfo>)> {
        self.config
            .tls
            .iter()
            .zip(&self.certificates)
            .map(|(listener, store)| (listener.addr, store.certificates()))
            .collect()
    }

    /// The table in use now.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Requests answered so far through `route` to `service` (`subset`: a split target's
    /// tag, `""` for the whole service): (all, 5xx). A deployment's controller watches a new
    /// version with it.
    pub fn requests_answered(&self, route: &str, service: &str, subset: &str) -> (u64, u64) {
        let count = |class: &str| {
            self.metrics
                .requests
                .get_metric_with_label_values(&[route, service, subset, class])
                .map_or(0, |c| c.get())
        };
        let errors = count("5xx");
        let total = crate::metrics::STATUS_CLASSES
            .iter()
            .map(|c| count(c))
            .sum();
        (total, errors)
    }

    /// Compiles every snapshot the watch yields into a table and swaps it in, on a thread
    /// of its own so a large build never stalls the async control plane. Always builds
    /// from the newest snapshot (the watch coalesces a storm of changes).
    pub fn follow(
        &self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ) -> Result<JoinHandle<()>, RouterError> {
        let table = Arc::clone(&self.table);
        let config = Arc::clone(&self.config);
        let metrics = self.metrics.clone();
        let swaps = self.swaps.clone();
        let upstream_tls = self.upstream_tls.clone();
        // A runtime of its own, for the waits: the next snapshot, or the time a
        // mass-removal hold is up (then the same snapshot is compiled again).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(RouterError::Thread)?;
        std::thread::Builder::new()
            .name("strait-tables".into())
            .spawn(move || {
                let mut states = TableState::with_upstream_tls(upstream_tls);
                let mut stale_services = Vec::<Arc<str>>::new();
                // Propagation is observed once per new revision: a snapshot published
                // again unchanged (a ZooKeeper reconnect) carries an old write time.
                let mut observed_revision = None;
                loop {
                    let snapshot = snapshots.borrow_and_update().clone();
                    let started = Instant::now();
                    let next = compile(&snapshot, &config, &mut states);
                    metrics.table_build.observe(started.elapsed().as_secs_f64());
                    metrics.table_revision.set(next.revision as i64);
                    for service in states.pools_mut().take_mass_removals() {
                        metrics.mass_removals.with_label_values(&[&service]).inc();
                    }
                    for service in stale_services.drain(..) {
                        metrics
                            .stale_endpoints
                            .with_label_values(&[&service])
                            .set(0);
                    }
                    for (service, count) in states.pools().stale_counts() {
                        metrics
                            .stale_endpoints
                            .with_label_values(&[service])
                            .set(count as i64);
                        stale_services.push(Arc::clone(service));
                    }
                    table.store(Arc::new(next));
                    metrics.table_swaps.inc();
                    swaps.send_modify(|n| *n += 1);
                    if observed_revision != Some(snapshot.revision)
                        && let Some(written) = snapshot.changed_at
                        && let Ok(elapsed) = SystemTime::now().duration_since(written)
                    {
                        metrics.propagation.observe(elapsed.as_secs_f64());
                    }
                    observed_revision = Some(snapshot.revision);
                    let changed = runtime.block_on(async {
                        match states.pools().next_expiry() {
                            Some(at) => tokio::time::timeout_at(at.into(), snapshots.changed())
                                .await
                                .unwrap_or(Ok(())),
                            None => snapshots.changed().await,
                        }
                    });
                    if changed.is_err() {
                        return;
                    }
                }
            })
            .map_err(RouterError::Thread)
    }

    /// Starts serving on `config.http_addr` (port 0 picks a free port).
    pub fn start(&self) -> Result<RouterHandle, RouterError> {
        self.start_with(StartOptions::default())
    }

    /// Starts serving, taking the listeners over from a predecessor when `options` say so
    /// (a binary upgrade).
    pub fn start_with(&self, start: StartOptions) -> Result<RouterHandle, RouterError> {
        // On a hand-over the address is in use, by the very socket we are about to get.
        let addr = if start.inherit {
            self.config.http_addr
        } else {
            resolve_port(self.config.http_addr)?
        };
        let mut conf = ServerConf {
            threads: self.config.threads.max(1),
            // One single-threaded runtime per worker thread: no cross-thread task
            // stealing or wake-ups on the hot path.
            work_stealing: false,
            grace_period_seconds: Some(self.config.drain_timeout.as_secs()),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        if let Some(socket) = &start.upgrade_socket {
            conf.upgrade_sock = socket.to_string_lossy().into_owned();
        }
        let opt = Opt {
            upgrade: start.inherit,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
        let phases = server.watch_execution_phase();
        // With `inherit`, this waits for the predecessor's sockets (pingora's hand-off).
        server.bootstrap();

        let access_log = match &self.config.access_log {
            Some(target) => Some(
                crate::access_log::AccessLog::start(
                    target,
                    self.metrics.access_log_dropped.clone(),
                )
                .map_err(RouterError::AccessLog)?,
            ),
            None => None,
        };
        let proxy = Arc::new(Proxy {
            table: Arc::clone(&self.table),
            connector: pingora::connectors::TransportConnector::new(None),
            config: Arc::clone(&self.config),
            metrics: self.metrics.clone(),
            clock: self.clock,
            access_log,
            hop_token: self.hop_token(),
        });
        let mut app =
            pingora::proxy::http_proxy(&server.configuration, PingoraProxy(Arc::clone(&proxy)));
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
        let mut h2 = pingora::protocols::http::v2::server::H2Options::new();
        h2.max_concurrent_streams(self.config.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.config.max_header_bytes).unwrap_or(u32::MAX))
            // Rapid reset (CVE-2023-44487): streams the client resets before we answer
            // count against this; past it the connection gets GOAWAY.
            .max_pending_accept_reset_streams(50)
            .max_local_error_reset_streams(Some(256));
        app.h2_options = Some(h2.clone());
        let app = Arc::new(app);
        let mut h2_server_options = pingora::apps::HttpServerOptions::default();
        h2_server_options.h2c = true;
        let h2_app = Arc::new(H2App {
            proxy: Arc::clone(&proxy),
            fallback: Arc::clone(&app),
            h2_options: h2,
            server_options: h2_server_options,
        });
        // The TLS listeners' addresses (a port 0 resolved) first: the front door's limits
        // name every listener.
        let mut tls_addrs = Vec::new();
        for listener in &self.config.tls {
            tls_addrs.push(if start.inherit {
                listener.addr
            } else {
                resolve_port(listener.addr)?
            });
        }
        let mut specs = vec![ListenerSpec {
            addr,
            max_connections: self.config.max_connections,
            idle_timeout: self.config.idle_timeout,
        }];
        for (listener, tls_addr) in self.config.tls.iter().zip(&tls_addrs) {
            specs.push(ListenerSpec {
                addr: *tls_addr,
                max_connections: listener
                    .max_connections
                    .unwrap_or(self.config.max_connections),
                idle_timeout: listener.idle_timeout.unwrap_or(self.config.idle_timeout),
            });
        }
        let front = Front {
            app,
            h2: h2_app,
            pump: Pump::new(proxy),
            limits: HeadLimits {
                max_bytes: self.config.max_header_bytes,
                max_headers: self.config.max_headers,
                head_timeout: self.config.header_timeout,
                idle_timeout: self.config.idle_timeout,
            },
            h2c: true,
            metrics: self.metrics.clone(),
            connections: ConnLimits::new(
                &specs,
                self.config.max_connections_per_ip,
                self.config.idle_timeout,
                &self.metrics,
            ),
            drain_keepalive: self.config.drain_keepalive.min(self.config.drain_timeout),
            parking: Parking::default(),
        };
        let mut service = Service::new("strait-http".to_string(), front);
        // No L4 buffers: the front door reads into its own buffer (released when the
        // connection idles) and writes whole heads; pingora's default 64 KiB read buffer
        // per connection was most of an idle connection's cost.
        service.add_listener(
            ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::unbuffered()),
        );
        for ((listener, certs), tls_addr) in self
            .config
            .tls
            .iter()
            .zip(&self.certificates)
            .zip(tls_addrs.iter().copied())
        {
            let certs = Arc::clone(certs);
            certs
                .watch(Duration::from_secs(1))
                .map_err(RouterError::Thread)?;
            let mut settings =
                pingora::listeners::tls::TlsSettings::intermediate("", "").map_err(|e| {
                    RouterError::Tls {
                        addr: listener.addr,
                        error: crate::tls::CertError {
                            path: "router.tls".into(),
                            message: e.to_string(),
                        },
                    }
                })?;
            settings.set_cert_resolver(certs);
            settings.enable_h2();
            service.add_listener(
                ListenerConfig::tcp(tls_addr.to_string())
                    .tls(settings)
                    .l4_buffer(L4BufferSettings::unbuffered()),
            );
        }
        server.add_service(service);

        self.tcp_listeners.inherit(start.tcp_listeners);
        self.start_tcp()?;
        self.start_health_checks()?;
        let stop = Arc::new(Notify::new());
        let upgrade = Arc::new(AtomicBool::new(false));
        let signal = StopSignal {
            stop: Arc::clone(&stop),
            upgrade: Arc::clone(&upgrade),
        };
        let thread = std::thread::Builder::new()
            .name("strait-router".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(signal),
                })
            })
            .map_err(RouterError::Thread)?;
        wait_listening(addr)?;
        info!(addr = %addr, "HTTP router listening on {addr}");
        // The TLS listeners belong to the same pingora service and are bound with the
        // plain one; probing them would only log a failed handshake.
        for tls_addr in &tls_addrs {
            info!(addr = %tls_addr, "HTTPS router listening on {tls_addr}");
        }
        Ok(RouterHandle {
            addr,
            tls_addrs,
            stop,
            upgrade,
            phases,
            tcp_listeners: Arc::clone(&self.tcp_listeners),
            thread,
            metrics: self.metrics.clone(),
        })
    }
}

impl Router {
    /// Active health checks run on a thread of their own, when a service asks for them.
    fn start_health_checks(&self) -> Result<(), RouterError> {
        if self
            .config
            .services
            .values()
            .all(|s| s.health_check.is_none())
        {
            return Ok(());
        }
        let checker = Arc::new(crate::paths::health::HealthChecker {
            table: Arc::clone(&self.table),
            connector: pingora::connectors::TransportConnector::new(None),
            metrics: self.metrics.clone(),
            clock: self.clock,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RouterError::Thread)?;
        std::thread::Builder::new()
            .name("strait-health".into())
            .spawn(move || runtime.block_on(checker.run()))
            .map_err(RouterError::Thread)?;
        Ok(())
    }

    /// TCP routes run on a runtime of their own, beside pingora's.
    fn start_tcp(&self) -> Result<(), RouterError> {
        let proxy = Arc::new(TcpProxy {
            table: Arc::clone(&self.table),
            config: Arc::clone(&self.config),
            metrics: self.metrics.clone(),
            clock: self.clock,
            listeners: Arc::clone(&self.tcp_listeners),
        });
        let swaps = self.swaps.subscribe();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RouterError::Thread)?;
        std::thread::Builder::new()
            .name("strait-tcp".into())
            .spawn(move || runtime.block_on(proxy.run(swaps)))
            .map_err(RouterError::Thread)?;
        Ok(())
    }
}

/// Binds `addr` once ourselves: pingora binds by address string, cannot report an
/// ephemeral port, and panics in its own thread when the address is taken, so port 0 is
/// resolved and a taken address reported here, as a clear error.
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr, RouterError> {
    let probe = TcpListener::bind(addr).map_err(|error| RouterError::Listen { addr, error })?;
    probe
        .local_addr()
        .map_err(|error| RouterError::Listen { addr, error })
}

fn wait_listening(addr: SocketAddr) -> Result<(), RouterError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(RouterError::NotListening(addr))
}

/// How the router starts: on its own sockets, or on a predecessor's.
#[derive(Default)]
pub struct StartOptions {
    /// Where pingora's listening sockets are handed over on an upgrade (sent to by this
    /// process when it hands over; received on when `inherit`).
    pub upgrade_socket: Option<PathBuf>,
    /// Receive the HTTP and TLS listeners from the predecessor instead of binding.
    pub inherit: bool,
    /// TCP route listeners the predecessor handed over.
    pub tcp_listeners: Vec<std::net::TcpListener>,
}

struct StopSignal {
    stop: Arc<Notify>,
    upgrade: Arc<AtomicBool>,
}

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.stop.notified().await;
        if self.upgrade.load(Ordering::Acquire) {
            // pingora sends its listening sockets to the upgrade socket, keeps accepting
            // for a few seconds beside the successor, then shuts down gracefully.
            ShutdownSignal::GracefulUpgrade
        } else {
            ShutdownSignal::GracefulTerminate
        }
    }
}

/// A running router.
pub struct RouterHandle {
    addr: SocketAddr,
    tls_addrs: Vec<SocketAddr>,
    stop: Arc<Notify>,
    upgrade: Arc<AtomicBool>,
    phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    tcp_listeners: Arc<TcpListeners>,
    thread: JoinHandle<()>,
    metrics: RouterMetrics,
}

impl RouterHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP listener's address, then the TLS listeners'.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.tls_addrs.iter().copied())
            .collect()
    }

    /// Binary upgrade, first step: stops accepting on the TCP route listeners and returns
    /// them. `take_back` undoes it if the successor fails.
    pub fn hand_over_tcp(&self) -> Vec<(SocketAddr, OwnedFd)> {
        self.tcp_listeners.hand_over()
    }

    /// Serves TCP route sockets again after a failed hand-over.
    pub fn take_back_tcp(&self, listeners: Vec<std::net::TcpListener>) {
        self.tcp_listeners.inherit(listeners);
    }

    /// Binary upgrade, last step: pingora sends the HTTP and TLS listeners to the
    /// successor, accepts beside it for a few seconds, then stops; in-flight requests
    /// finish (at most `timeout`).
    pub async fn hand_over_and_drain(mut self, timeout: Duration) {
        self.upgrade.store(true, Ordering::Release);
        self.stop.notify_one();
        loop {
            match self.phases.recv().await {
                Ok(ExecutionPhase::ShutdownStarted)
                | Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
        info!("listeners handed over; draining");
        self.wait_for_requests(timeout).await;
    }

    /// Stops accepting, lets in-flight requests and TCP-route connections finish (at
    /// most `timeout`), and returns. Idle keep-alive connections are closed by pingora's
    /// shutdown.
    pub async fn drain(self, timeout: Duration) {
        self.stop.notify_one();
        // Closing the TCP route listeners: their copies are dropped here.
        drop(self.tcp_listeners.hand_over());
        self.wait_for_requests(timeout).await;
    }

    async fn wait_for_requests(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Give pingora a moment to stop its listeners before counting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Connections too: an idle HTTP/1 one closes itself once it has waited
        // `drain_keepalive` for a last request, an HTTP/2 one once its GOAWAY is done.
        let busy = || {
            self.metrics.active_requests.get() > 0
                || self.metrics.tcp_connections.get() > 0
                || self.metrics.active_connections.get() > 0
        };
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (requests, tcp, connections) = (
            self.metrics.active_requests.get(),
            self.metrics.tcp_connections.get(),
            self.metrics.active_connections.get(),
        );
        if requests > 0 || tcp > 0 || connections > 0 {
            warn!(
                requests,
                tcp_connections = tcp,
                connections,
                "drain timeout: abandoning in-flight requests and open connections"
            );
        } else {
            info!("router drained");
        }
        // pingora's own grace period would sleep on; the process exits instead.
        drop(self.thread);
    }
}

//! Running the DNS server: a thread compiling snapshots into tables; `dns.workers` UDP
//! sockets bound to one address with `SO_REUSEPORT` (the kernel spreads queries over them),
//! each read and answered by a thread of its own with blocking calls, no runtime; and one
//! TCP listener on a thread with a single-threaded runtime.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::rr::RecordType;
use prometheus::core::{AtomicU64, GenericLocalCounter};
use prometheus::local::LocalHistogram;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::DnsConfig;
use super::answer::{Outcome, Rcode, Transport, respond};
use super::table::{DnsTable, compile};
use crate::snapshot::Snapshot;

/// An idle TCP client is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often a UDP worker looks up from its socket (to stop, to flush its metrics).
const UDP_WAKE: Duration = Duration::from_millis(100);
/// A worker publishes its counts after this many queries (or when idle).
const FLUSH_EVERY: u32 = 1024;
/// Receive buffer asked for each UDP socket (the kernel caps it at `rmem_max`).
const UDP_RECV_BUFFER: usize = 4 << 20;

#[derive(Clone)]
struct DnsMetrics {
    queries: IntCounterVec,
    truncated: IntCounter,
    tcp_fallbacks: IntCounter,
    latency: Histogram,
    revision: IntGauge,
}

impl DnsMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = DnsMetrics {
            queries: IntCounterVec::new(
                Opts::new(
                    "strait_dns_queries_total",
                    "DNS queries by query type and response code",
                ),
                &["qtype", "rcode"],
            )?,
            truncated: IntCounter::new(
                "strait_dns_truncated_total",
                "UDP answers truncated (TC set)",
            )?,
            tcp_fallbacks: IntCounter::new(
                "strait_dns_tcp_fallbacks_total",
                "TCP queries whose answer would not have fitted the same query over UDP",
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "strait_dns_query_duration_seconds",
                    "Time to answer a query",
                )
                .buckets(vec![
                    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005,
                ]),
            )?,
            revision: IntGauge::new(
                "strait_dns_table_revision",
                "Snapshot revision of the DNS table in use",
            )?,
        };
        registry.register(Box::new(m.queries.clone()))?;
        registry.register(Box::new(m.truncated.clone()))?;
        registry.register(Box::new(m.tcp_fallbacks.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.revision.clone()))?;
        Ok(m)
    }
}

/// The name of a query type for the `qtype` label: every type hickory-proto knows by
/// name, `other` for the rest (a label per number would let anyone grow the series).
fn qtype_label(qtype: u16) -> &'static str {
    match RecordType::from(qtype) {
        _ if qtype == 0 => "none",
        RecordType::Unknown(_) => "other",
        known => known.into(),
    }
}

/// One thread's metrics: local counters published every [`FLUSH_EVERY`] queries, so
/// workers do not contend on shared atomics.
struct LocalMetrics {
    shared: DnsMetrics,
    queries: HashMap<(u16, Rcode), GenericLocalCounter<AtomicU64>>,
    truncated: GenericLocalCounter<AtomicU64>,
    tcp_fallbacks: GenericLocalCounter<AtomicU64>,
    latency: LocalHistogram,
    pending: u32,
}

impl LocalMetrics {
    fn new(shared: &DnsMetrics) -> Self {
        LocalMetrics {
            queries: HashMap::new(),
            truncated: shared.truncated.local(),
            tcp_fallbacks: shared.tcp_fallbacks.local(),
            latency: shared.latency.local(),
            shared: shared.clone(),
            pending: 0,
        }
    }

    fn observe(&mut self, outcome: Outcome, started: Instant) {
        let label = qtype_label(outcome.qtype);
        let known = if label == "other" { 1 } else { outcome.qtype };
        self.queries
            .entry((known, outcome.rcode))
            .or_insert_with(|| {
                self.shared
                    .queries
                    .with_label_values(&[label, outcome.rcode.as_str()])
                    .local()
            })
            .inc();
        if outcome.truncated {
            self.truncated.inc();
        }
        if outcome.tcp_fallback {
            self.tcp_fallbacks.inc();
        }
        self.latency.observe(started.elapsed().as_secs_f64());
        self.pending += 1;
        if self.pending >= FLUSH_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.pending = 0;
        for counter in self.queries.values_mut() {
            counter.flush();
        }
        self.truncated.flush();
        self.tcp_fallbacks.flush();
        self.latency.flush();
    }
}

impl Drop for LocalMetrics {
    fn drop(&mut self) {
        self.flush();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("DNS cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("DNS domain `{0}` is not a domain name")]
    Domain(String),
    #[error("cannot start DNS thread: {0}")]
    Thread(std::io::Error),
}

/// The sockets DNS serves: one UDP socket per worker, all on one address, and the TCP
/// listener on the same port.
pub struct DnsSockets {
    pub udp: Vec<StdUdpSocket>,
    pub tcp: StdTcpListener,
}

pub struct DnsServer {
    table: Arc<ArcSwap<DnsTable>>,
    config: DnsConfig,
    metrics: DnsMetrics,
    /// The sockets being served (copies, for a binary upgrade) and the threads.
    serving: Mutex<Option<Serving>>,
}

struct Serving {
    udp: Vec<OwnedFd>,
    tcp: OwnedFd,
    stop: Arc<AtomicBool>,
    stop_tcp: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl DnsServer {
    pub fn new(config: DnsConfig, registry: &Registry) -> Result<Self, DnsError> {
        if !super::is_domain(&config.domain) {
            return Err(DnsError::Domain(config.domain.clone()));
        }
        Ok(DnsServer {
            table: Arc::new(ArcSwap::from_pointee(DnsTable::default())),
            config,
            metrics: DnsMetrics::new(registry)?,
            serving: Mutex::new(None),
        })
    }

    /// Compiles every snapshot the watch yields, on a thread of its own. The first one is
    /// compiled before this returns, so a server started after it never answers from an
    /// empty table (after a binary upgrade, queries are already waiting).
    pub fn follow(&self, mut snapshots: watch::Receiver<Arc<Snapshot>>) -> Result<(), DnsError> {
        let (table, config, metrics) = (
            Arc::clone(&self.table),
            self.config.clone(),
            self.metrics.clone(),
        );
        let first = compile(&snapshots.borrow_and_update(), &config);
        metrics.revision.set(first.revision as i64);
        table.store(Arc::new(first));
        std::thread::Builder::new()
            .name("strait-dns-tables".into())
            .spawn(move || {
                loop {
                    if futures::executor::block_on(snapshots.changed()).is_err() {
                        return;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    let next = compile(&snapshot, &config);
                    metrics.revision.set(next.revision as i64);
                    table.store(Arc::new(next));
                }
            })
            .map(drop)
            .map_err(DnsError::Thread)
    }

    /// Binds `dns.workers` UDP sockets and the TCP listener on the configured address and
    /// serves them. Returns the bound address.
    pub fn start(&self) -> Result<SocketAddr, DnsError> {
        // Bound here, synchronously, so errors reach the caller.
        let sockets = bind(self.config.addr, self.config.worker_count())?;
        self.serve(sockets)
    }

    /// Serves sockets a predecessor handed over (binary upgrade) instead of binding. With
    /// fewer UDP sockets than workers, more join them on the same address (they were bound
    /// with `SO_REUSEPORT`); with more, the extra ones are served too.
    pub fn start_inherited(&self, mut sockets: DnsSockets) -> Result<SocketAddr, DnsError> {
        let addr = self.config.addr;
        let listen_error = |error| DnsError::Listen { addr, error };
        if let Some(first) = sockets.udp.first() {
            let bound = first.local_addr().map_err(listen_error)?;
            while sockets.udp.len() < self.config.worker_count() {
                match udp_socket(bound) {
                    Ok(socket) => sockets.udp.push(socket),
                    Err(error) => {
                        warn!(error = %error, "DNS: cannot add a UDP worker beside the inherited sockets");
                        break;
                    }
                }
            }
        }
        self.serve(sockets)
    }

    /// Binary upgrade: stops answering (queries wait in the sockets for the successor)
    /// and returns the sockets: every UDP one, then TCP.
    pub fn hand_over(&self) -> Option<(Vec<OwnedFd>, OwnedFd)> {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        serving.stop.store(true, Ordering::Relaxed);
        serving.stop_tcp.send_replace(true);
        // Each worker looks up within UDP_WAKE; none reads after this returns.
        for worker in serving.workers {
            let _ = worker.join();
        }
        Some((serving.udp, serving.tcp))
    }

    fn serve(&self, sockets: DnsSockets) -> Result<SocketAddr, DnsError> {
        let listen_error = |error| DnsError::Listen {
            addr: self.config.addr,
            error,
        };
        let addr = sockets.tcp.local_addr().map_err(listen_error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DnsError::Thread)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_tcp, stopped) = watch::channel(false);
        let mut copies = Vec::with_capacity(sockets.udp.len());
        let mut workers = Vec::with_capacity(sockets.udp.len() + 1);
        let tcp_copy = sockets
            .tcp
            .as_fd()
            .try_clone_to_owned()
            .map_err(listen_error)?;
        sockets.tcp.set_nonblocking(true).map_err(listen_error)?;
        let udp_count = sockets.udp.len();
        for (i, udp) in sockets.udp.into_iter().enumerate() {
            copies.push(udp.as_fd().try_clone_to_owned().map_err(listen_error)?);
            udp.set_nonblocking(false).map_err(listen_error)?;
            udp.set_read_timeout(Some(UDP_WAKE)).map_err(listen_error)?;
            let (table, metrics, stop) = (
                Arc::clone(&self.table),
                self.metrics.clone(),
                Arc::clone(&stop),
            );
            workers.push(
                std::thread::Builder::new()
                    .name(format!("strait-dns-{i}"))
                    .spawn(move || serve_udp(&udp, &table, &metrics, &stop))
                    .map_err(DnsError::Thread)?,
            );
        }
        let (table, metrics, tcp) = (Arc::clone(&self.table), self.metrics.clone(), sockets.tcp);
        workers.push(
            std::thread::Builder::new()
                .name("strait-dns-tcp".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let Ok(tcp) = TcpListener::from_std(tcp) else {
                            tracing::error!("the DNS TCP listener could not join its runtime");
                            return;
                        };
                        serve_tcp(tcp, table, metrics, stopped).await;
                    });
                })
                .map_err(DnsError::Thread)?,
        );
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Some(Serving {
            udp: copies,
            tcp: tcp_copy,
            stop,
            stop_tcp,
            workers,
        });
        info!(addr = %addr, workers = udp_count, "DNS listening on {addr} (UDP and TCP)");
        Ok(addr)
    }
}

/// A UDP socket on `addr` that others may join (`SO_REUSEPORT`).
fn udp_socket(addr: SocketAddr) -> std::io::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if let Err(e) = socket.set_recv_buffer_size(UDP_RECV_BUFFER) {
        debug!(error = %e, "DNS: receive buffer left as it is");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `workers` UDP sockets and a TCP listener on one port; with port 0, the port the first
/// UDP socket got is tried for the rest (a few times).
fn bind(addr: SocketAddr, workers: usize) -> Result<DnsSockets, DnsError> {
    let listen_error = |error| DnsError::Listen { addr, error };
    let mut last = None;
    for _ in 0..10 {
        let first = udp_socket(addr).map_err(listen_error)?;
        let bound = first.local_addr().map_err(listen_error)?;
        let mut udp = vec![first];
        let rest: std::io::Result<()> = (1..workers).try_for_each(|_| {
            udp.push(udp_socket(bound)?);
            Ok(())
        });
        let tcp = rest.and_then(|()| StdTcpListener::bind(bound));
        match tcp {
            Ok(tcp) => return Ok(DnsSockets { udp, tcp }),
            Err(error) if addr.port() == 0 => last = Some(error),
            Err(error) => return Err(listen_error(error)),
        }
    }
    Err(listen_error(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

/// One UDP worker: blocking receive, answer, send, until `stop`.
fn serve_udp(
    socket: &StdUdpSocket,
    table: &ArcSwap<DnsTable>,
    metrics: &DnsMetrics,
    stop: &AtomicBool,
) {
    let mut query = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    let mut local = LocalMetrics::new(metrics);
    let mut rotation = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut query) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                local.flush();
                continue;
            }
            Err(e) => {
                debug!(error = %e, "DNS receive failed");
                continue;
            }
        };
        let started = Instant::now();
        rotation = rotation.wrapping_add(1);
        let Some(outcome) = respond(
            &table.load(),
            &query[..len],
            Transport::Udp,
            rotation,
            &mut out,
        ) else {
            continue;
        };
        if outcome.rcode == Rcode::FormErr && out.len() > len {
            continue; // never answer a malformed query with more than it sent
        }
        if let Err(e) = socket.send_to(&out, peer) {
            debug!(peer = %peer, error = %e, "DNS send failed");
        }
        local.observe(outcome, started);
    }
}

async fn serve_tcp(
    listener: TcpListener,
    table: Arc<ArcSwap<DnsTable>>,
    metrics: DnsMetrics,
    mut stopped: watch::Receiver<bool>,
) {
    // Shared by the connections: a client asking once per connection still sees the
    // answers rotate.
    let rotation = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (table, metrics, rotation) =
            (Arc::clone(&table), metrics.clone(), Arc::clone(&rotation));
        tokio::spawn(async move {
            let _ = serve_tcp_connection(stream, &table, &metrics, &rotation).await;
        });
    }
}

/// RFC 7766 framing: each message preceded by its 2-byte length; several per connection.
async fn serve_tcp_connection(
    mut stream: TcpStream,
    table: &ArcSwap<DnsTable>,
    metrics: &DnsMetrics,
    rotation: &AtomicUsize,
) -> std::io::Result<()> {
    let mut query = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    let mut framed = Vec::with_capacity(4098);
    let mut local = LocalMetrics::new(metrics);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let len = usize::from(u16::from_be_bytes(len));
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query[..len]))
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "slow TCP query"))??;
        let started = Instant::now();
        let turn = rotation.fetch_add(1, Ordering::Relaxed);
        let Some(outcome) = respond(&table.load(), &query[..len], Transport::Tcp, turn, &mut out)
        else {
            return Ok(());
        };
        framed.clear();
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
        local.observe(outcome, started);
        local.flush();
    }
}

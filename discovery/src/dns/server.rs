//! Running the DNS server: a thread compiling snapshots into tables, and a thread with its
//! own single-threaded runtime answering UDP and TCP from the current table.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info};

use super::DnsConfig;
use super::answer::{Outcome, Rcode, Transport, respond};
use super::table::{DnsTable, TYPE_A, TYPE_AAAA, TYPE_SRV, compile};
use crate::snapshot::Snapshot;

/// An idle TCP client is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct DnsMetrics {
    queries: IntCounterVec,
    truncated: IntCounter,
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
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.revision.clone()))?;
        Ok(m)
    }

    fn observe(&self, outcome: Outcome, started: Instant) {
        let qtype = match outcome.qtype {
            TYPE_A => "A",
            TYPE_AAAA => "AAAA",
            TYPE_SRV => "SRV",
            0 => "none",
            _ => "other",
        };
        self.queries
            .with_label_values(&[qtype, outcome.rcode.as_str()])
            .inc();
        if outcome.truncated {
            self.truncated.inc();
        }
        self.latency.observe(started.elapsed().as_secs_f64());
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

pub struct DnsServer {
    table: Arc<ArcSwap<DnsTable>>,
    config: DnsConfig,
    metrics: DnsMetrics,
    /// The sockets being served (copies, for a binary upgrade) and the stop switch.
    serving: Mutex<Option<Serving>>,
}

struct Serving {
    udp: OwnedFd,
    tcp: OwnedFd,
    stop: watch::Sender<bool>,
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

    /// Binds UDP and TCP on the configured address and serves on a thread of its own.
    /// Returns the bound address.
    pub fn start(&self) -> Result<SocketAddr, DnsError> {
        // Bound here, synchronously, so errors reach the caller; registered with the
        // DNS thread's own runtime there.
        let (udp, tcp) = bind(self.config.addr)?;
        self.serve(udp, tcp)
    }

    /// Serves sockets a predecessor handed over (binary upgrade) instead of binding.
    pub fn start_inherited(
        &self,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> Result<SocketAddr, DnsError> {
        let addr = self.config.addr;
        udp.set_nonblocking(true)
            .map_err(|error| DnsError::Listen { addr, error })?;
        tcp.set_nonblocking(true)
            .map_err(|error| DnsError::Listen { addr, error })?;
        self.serve(udp, tcp)
    }

    /// Binary upgrade: stops answering (queries wait in the sockets for the successor)
    /// and returns the sockets, UDP then TCP.
    pub fn hand_over(&self) -> Option<(OwnedFd, OwnedFd)> {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        serving.stop.send_replace(true);
        Some((serving.udp, serving.tcp))
    }

    fn serve(
        &self,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> Result<SocketAddr, DnsError> {
        let listen_error = |error| DnsError::Listen {
            addr: self.config.addr,
            error,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DnsError::Thread)?;
        let addr = udp.local_addr().map_err(listen_error)?;
        let (stop, mut stopped) = watch::channel(false);
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Some(Serving {
            udp: udp.as_fd().try_clone_to_owned().map_err(listen_error)?,
            tcp: tcp.as_fd().try_clone_to_owned().map_err(listen_error)?,
            stop,
        });
        let (table, metrics) = (Arc::clone(&self.table), self.metrics.clone());
        std::thread::Builder::new()
            .name("strait-dns".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (Ok(udp), Ok(tcp)) = (UdpSocket::from_std(udp), TcpListener::from_std(tcp))
                    else {
                        tracing::error!("DNS sockets could not join the runtime");
                        return;
                    };
                    let rotation = Arc::new(AtomicUsize::new(0));
                    tokio::spawn(serve_tcp(
                        tcp,
                        Arc::clone(&table),
                        metrics.clone(),
                        Arc::clone(&rotation),
                        stopped.clone(),
                    ));
                    serve_udp(udp, table, metrics, rotation, &mut stopped).await;
                });
            })
            .map_err(DnsError::Thread)?;
        info!(addr = %addr, "DNS listening on {addr} (UDP and TCP)");
        Ok(addr)
    }
}

/// UDP and TCP on one port; with port 0, the port UDP got is tried for TCP (a few times).
fn bind(addr: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let mut last = None;
    for _ in 0..10 {
        let udp =
            std::net::UdpSocket::bind(addr).map_err(|error| DnsError::Listen { addr, error })?;
        let bound = udp
            .local_addr()
            .map_err(|error| DnsError::Listen { addr, error })?;
        match std::net::TcpListener::bind(bound) {
            Ok(tcp) => {
                udp.set_nonblocking(true)
                    .map_err(|error| DnsError::Listen { addr, error })?;
                tcp.set_nonblocking(true)
                    .map_err(|error| DnsError::Listen { addr, error })?;
                return Ok((udp, tcp));
            }
            Err(error) if addr.port() == 0 => last = Some(error),
            Err(error) => return Err(DnsError::Listen { addr, error }),
        }
    }
    Err(DnsError::Listen {
        addr,
        error: last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")),
    })
}

async fn serve_udp(
    socket: UdpSocket,
    table: Arc<ArcSwap<DnsTable>>,
    metrics: DnsMetrics,
    rotation: Arc<AtomicUsize>,
    stopped: &mut watch::Receiver<bool>,
) {
    let mut query = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        // `recv_from` is cancel-safe: a datagram not yet taken stays for the successor.
        let received = tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => return,
            received = socket.recv_from(&mut query) => received,
        };
        let Ok((len, peer)) = received else {
            continue;
        };
        let started = Instant::now();
        let turn = rotation.fetch_add(1, Ordering::Relaxed);
        let Some(outcome) = respond(&table.load(), &query[..len], Transport::Udp, turn, &mut out)
        else {
            continue;
        };
        if outcome.rcode == Rcode::FormErr && out.len() > len {
            continue; // never answer a malformed query with more than it sent
        }
        if let Err(e) = socket.send_to(&out, peer).await {
            debug!(peer = %peer, error = %e, "DNS send failed");
        }
        metrics.observe(outcome, started);
    }
}

async fn serve_tcp(
    listener: TcpListener,
    table: Arc<ArcSwap<DnsTable>>,
    metrics: DnsMetrics,
    rotation: Arc<AtomicUsize>,
    mut stopped: watch::Receiver<bool>,
) {
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
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let len = usize::from(u16::from_be_bytes(len));
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query[..len]))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow TCP query"))??;
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
        metrics.observe(outcome, started);
    }
}

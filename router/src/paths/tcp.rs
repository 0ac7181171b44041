//! TCP routes: layer-4 proxying from a route's `listen` address to a service, optionally
//! chosen by the TLS server name (SNI) peeked from the ClientHello, passed through without
//! termination.
//!
//! Listeners follow the routing table: a watcher binds the addresses new routes name and
//! closes those no route names any more (connections already open run to completion). The
//! per-connection path loads the table once, picks an endpoint with the same pools and
//! balancers as HTTP, retries the connect on another instance, then copies both ways.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::config::RouterConfig;
use crate::metrics::{GaugeGuard, RouterMetrics};
use crate::pool::{Clock, Pool, Tried};
use crate::table::{Table, TcpTarget};
use crate::wire::client_hello::{Incomplete, client_hello_sni};

/// How long a client may take to send its ClientHello when SNI routing is in use.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest ClientHello record strait reads to find the server name.
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Follows the routing table, keeping one accept loop per TCP route address.
pub struct TcpProxy {
    pub table: Arc<ArcSwap<Table>>,
    pub config: Arc<RouterConfig>,
    pub metrics: RouterMetrics,
    pub clock: Clock,
    pub listeners: Arc<TcpListeners>,
}

/// The TCP route listeners, shared with the router handle for a binary upgrade.
#[derive(Default)]
pub struct TcpListeners {
    state: Mutex<ListenerState>,
    /// Wakes the reconciling loop (after a hand-over is taken back).
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct ListenerState {
    /// Address -> accept loop, and a copy of its socket to hand over.
    open: BTreeMap<SocketAddr, (tokio::task::JoinHandle<()>, OwnedFd)>,
    /// Sockets from a predecessor (or taken back), used instead of binding.
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
    /// Handed over: accept nothing, bind nothing.
    handed_over: bool,
}

impl TcpListeners {
    fn lock(&self) -> MutexGuard<'_, ListenerState> {
        // Each critical section is a few map operations: a poisoned guard is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sockets to serve instead of binding their addresses (a binary upgrade).
    pub fn inherit(&self, listeners: Vec<std::net::TcpListener>) {
        let mut state = self.lock();
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                state.inherited.insert(addr, listener);
            }
        }
        state.handed_over = false;
        drop(state);
        self.changed.notify_one();
    }

    /// Binary upgrade: stops accepting (connections wait in the sockets for the
    /// successor; open ones run on) and returns the listening sockets.
    pub fn hand_over(&self) -> Vec<(SocketAddr, OwnedFd)> {
        let mut state = self.lock();
        state.handed_over = true;
        std::mem::take(&mut state.open)
            .into_iter()
            .map(|(addr, (task, socket))| {
                task.abort();
                (addr, socket)
            })
            .collect()
    }
}

impl TcpProxy {
    /// Runs until the process exits: reconciles listeners with each new table.
    pub async fn run(self: Arc<Self>, mut tables: tokio::sync::watch::Receiver<u64>) {
        loop {
            let table = self.table.load_full();
            self.reconcile(&table).await;
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { return },
                () = self.listeners.changed.notified() => {}
            }
        }
    }

    async fn reconcile(self: &Arc<Self>, table: &Table) {
        let wanted: Vec<SocketAddr> = {
            let mut state = self.listeners.lock();
            if state.handed_over {
                return;
            }
            let open = std::mem::take(&mut state.open);
            for (addr, (task, socket)) in open {
                if table.tcp.contains_key(&addr) && !task.is_finished() {
                    state.open.insert(addr, (task, socket));
                } else {
                    task.abort();
                    info!(addr = %addr, "TCP route listener closed");
                }
            }
            table
                .tcp
                .keys()
                .filter(|addr| !state.open.contains_key(addr))
                .copied()
                .collect()
        };
        for addr in wanted {
            let inherited = self.listeners.lock().inherited.remove(&addr);
            let listener = match inherited {
                Some(listener) => listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(listener)),
                None => TcpListener::bind(addr).await,
            };
            let listener = listener.and_then(|l| Ok((l.as_fd().try_clone_to_owned()?, l)));
            match listener {
                Ok((socket, listener)) => {
                    info!(addr = %addr, "TCP route listening on {addr}");
                    let task = tokio::spawn(Arc::clone(self).accept_loop(addr, listener));
                    self.listeners.lock().open.insert(addr, (task, socket));
                }
                Err(e) => {
                    // Retried on the next table change.
                    warn!(addr = %addr, error = %e, "cannot listen for TCP route");
                    self.metrics.rejected("tcp route listen failed");
                }
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, addr: SocketAddr, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let proxy = Arc::clone(&self);
                    tokio::spawn(async move {
                        if let Err(e) = proxy.handle(addr, stream).await {
                            debug!(addr = %addr, error = %e, "TCP connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(addr = %addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(&self, addr: SocketAddr, mut client: TcpStream) -> std::io::Result<()> {
        let _connection = GaugeGuard::new(&self.metrics.tcp_connections);
        let _ = client.set_nodelay(true);
        let table = self.table.load_full();
        let Some(routes) = table.tcp.get(&addr) else {
            return Ok(());
        };
        let mut hello = Vec::new();
        let sni = if routes.needs_sni() {
            read_client_hello(&mut client, &mut hello).await?
        } else {
            None
        };
        let Some(route) = routes.lookup(sni.as_deref()) else {
            self.metrics.rejected("tcp: no route for server name");
            return Ok(());
        };
        let target = route.targets.pick();
        let Some(pool) = target.pool.as_ref().filter(|p| !p.is_empty()) else {
            self.metrics.rejected("tcp: no healthy instance");
            return Ok(());
        };
        let (mut upstream, index) = self.connect(pool, route).await?;
        let endpoint = &pool.endpoints[index];
        endpoint.state.outstanding.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .requests
            .with_label_values(&[
                &route.route,
                &pool.service,
                target.tag.as_deref().unwrap_or(""),
                "tcp",
            ])
            .inc();
        let activity = crate::io::idle::Activity::new();
        let result = async {
            upstream.write_all(&hello).await?;
            let tracked = route.idle_timeout.map(|_| &activity);
            let relay = crate::io::splice::relay(&client, &upstream, tracked);
            crate::io::idle::bounded(&activity, route.idle_timeout, relay).await
        }
        .await;
        endpoint.state.outstanding.fetch_sub(1, Ordering::Relaxed);
        result.map(drop)
    }

    /// Connects to an instance, retrying others on failure.
    async fn connect(
        &self,
        pool: &Arc<Pool>,
        route: &TcpTarget,
    ) -> std::io::Result<(TcpStream, usize)> {
        let mut tried = Tried::default();
        let mut last_error = None;
        for _ in 0..=self.config.connect_retries {
            let Some(index) = pool.pick(self.clock.now_ms(), &tried, None) else {
                break;
            };
            tried.push(index);
            let addr = pool.endpoints[index].addr;
            match tokio::time::timeout(route.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    pool.record_success(index);
                    return Ok((stream, index));
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    last_error = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
            let now = self.clock.now_ms();
            self.metrics
                .upstream_failure(pool, index, &self.config.outlier, now, true);
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no instance to connect to")))
    }
}

/// Reads the first TLS record (the ClientHello) into `buf` and returns its SNI.
async fn read_client_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match client_hello_sni(buf) {
                Ok(sni) => return Ok(sni),
                Err(Incomplete) if buf.len() >= MAX_CLIENT_HELLO => return Ok(None),
                Err(Incomplete) => {}
            }
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read)
        .await
        .unwrap_or(Ok(None))
}

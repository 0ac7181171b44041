//! The front door every connection enters (pingora's `ServerApp`): HTTP/2 connections
//! (ALPN h2, h2c prior knowledge) go to pingora's HTTP/2 server and the stream path
//! ([`crate::paths::pump_h2`]); for HTTP/1 it reads each request head itself, under a
//! whole-head deadline and size/count limits, and hands it to the pump
//! ([`crate::paths::pump`]), which validates and routes it. Requests to services spoken
//! to over HTTP/2 go to pingora's proxy, the head pushed back in front of the stream.
//!
//! Why not leave heads to pingora: pingora's only head timeout is per read (a slowloris
//! client dripping a byte every few seconds is never cut off), its limits are 1 MiB and
//! 256 headers and not configurable, and on `Content-Length` + `Transfer-Encoding` it
//! drops `Content-Length` rather than refusing the request. An edge must refuse.
//!
//! Phase order per connection: [a listener's or a client's connection limit: close] ->
//! [TLS/ALPN h2 or h2c preface -> pingora's HTTP/2] else loop { wait for the first byte,
//! holding no buffer (idle timeout; while draining, `drain_keepalive`) -> an active
//! stretch, its buffers allocated once: loop { read head (deadline, size) -> the pump
//! plans it (validate, route) -> forward it, answer it, or pingora proxies it -> wait
//! for the next request with the buffers kept for `IDLE_RELEASE`, then release them } }.
//!
//! Draining (shutdown, binary upgrade) never closes a connection under a request that
//! may be on the wire: a connection stops reading only at a request boundary. The
//! response to a request planned while draining says `Connection: close`; one that was
//! under way when the drain began keeps its keep-alive answer, and the connection waits
//! (`drain_keepalive`) for one more request, answered with `close`; a new connection
//! (accepted just before the listeners stopped) is served the same way. An idle
//! connection is closed only when that wait ends with nothing read (a byte that came
//! before the deadline's wake-up is read first: the wait is biased to the read), by
//! which time the successor (a binary upgrade) has long been accepting.

mod limits;
mod parking;

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, GetSocketDigest, SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use self::limits::Admitted;
pub use self::limits::{ConnLimits, ListenerSpec};
pub use self::parking::Parking;
use self::parking::{Lot, Parked};
use crate::heads::{ClientInfo, write_local_response};
use crate::io::h2_watch::H2Watched;
use crate::io::prefixed::Prefixed;
use crate::metrics::{GaugeGuard, RouterMetrics};
use crate::paths::pump::{ConnBuffers, Plan, Pump};
use crate::paths::pump_h2::H2App;
use crate::wire::request::reject;
use crate::wire::{HeadLimits, Rejection, head_end};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection with no request keeps its buffers: a busy keep-alive
/// connection reuses them (no allocation per request); an idle one gives them back, as
/// nginx does, so that it costs only its socket and a small task.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// What reading a head produced.
enum Head {
    /// A complete head (and possibly more) is in the buffer.
    Complete,
    /// The connection is an HTTP/2 prior-knowledge (h2c) connection.
    H2c,
    /// Closed before the head was whole.
    Gone,
    Rejected(Rejection),
}

/// Reads the rest of a request head (its first bytes are in `buf`) under the whole-head
/// deadline and the size limit.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limits: &HeadLimits,
    check_h2c: bool,
) -> Head {
    let deadline = Instant::now() + limits.head_timeout;
    loop {
        if check_h2c && buf.len() <= H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
            if buf.len() == H2_PREFACE.len() {
                return Head::H2c;
            }
        } else if check_h2c && buf.starts_with(H2_PREFACE) {
            return Head::H2c;
        } else if let Some(end) = head_end(buf) {
            if end > limits.max_bytes {
                return Head::Rejected(reject(431, "request head too large"));
            }
            return Head::Complete;
        }
        if buf.len() > limits.max_bytes {
            return Head::Rejected(reject(431, "request head too large"));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
            Err(_) => return Head::Rejected(reject(408, "request head not received in time")),
        }
    }
}

async fn respond_and_close(stream: &mut Stream, rejection: Rejection) {
    let mut response = Vec::with_capacity(128);
    let body = format!("{}\n", rejection.reason);
    write_local_response(&mut response, rejection.status, body.as_bytes(), true);
    let write = async {
        stream.write_all(&response).await?;
        stream.flush().await
    };
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), write).await {
        // A refused head's body may be on its way.
        crate::io::linger::linger(stream).await;
    }
}

/// A connection's view of the drain: whether it has begun, and the deadline of its idle
/// waits from when this connection first saw it.
struct Drain {
    watch: ShutdownWatch,
    deadline: Option<Instant>,
    keepalive: Duration,
}

impl Drain {
    fn draining(&mut self) -> bool {
        if self.deadline.is_none() && *self.watch.borrow() {
            self.deadline = Some(Instant::now() + self.keepalive);
        }
        self.deadline.is_some()
    }

    /// Resolves when the shutdown watch changes (or can no longer tell: then the
    /// connection drains).
    async fn changed(&mut self) {
        if self.watch.changed().await.is_err() {
            self.deadline = Some(Instant::now() + self.keepalive);
        }
    }
}

/// What an HTTP/1 connection holds for its whole life, parked or not: its admission
/// under the connection limits, its client, and its place in the open-connections gauge.
struct Http1<'a> {
    admitted: Admitted<'a>,
    client_ip: Option<IpAddr>,
    counted: GaugeGuard,
}

/// How an active stretch of an HTTP/1 connection ended.
enum Active {
    /// No request for `IDLE_RELEASE` (or draining): buffers released; the connection
    /// may stay idle until the instant given.
    Idle(Stream, Instant),
    /// HTTP/2 with prior knowledge: the preface read, pushed back in front.
    H2c(Stream),
    Closed,
}

/// Waits for the first byte of the next request, holding no buffer: until `idle_until`,
/// and while draining until the drain's deadline. `None`: close the connection.
async fn wait_first_byte(
    stream: &mut Stream,
    drain: &mut Drain,
    idle_until: Instant,
) -> Option<u8> {
    let mut byte = [0u8; 1];
    loop {
        let draining = drain.draining();
        let until = drain.deadline.map_or(idle_until, |d| d.min(idle_until));
        tokio::select! {
            // A byte that came before the deadline's wake-up is read, not cut off.
            biased;
            read = stream.read(&mut byte) => {
                return match read {
                    Ok(1) => Some(byte[0]),
                    _ => None,
                };
            }
            () = tokio::time::sleep_until(until) => return None,
            () = drain.changed(), if !draining => {}
        }
    }
}

/// The front door: reads each request head under its limits and hands it to the pump, or
/// to pingora's proxy (`app`) for services spoken to over HTTP/2; HTTP/2 connections go
/// to `h2`.
pub struct Front<A> {
    pub app: Arc<A>,
    /// HTTP/2 connections (ALPN h2, h2c prior knowledge).
    pub h2: Arc<H2App>,
    pub pump: Pump,
    pub limits: HeadLimits,
    pub h2c: bool,
    pub metrics: RouterMetrics,
    /// Per listener and per client address; each listener's idle timeout.
    pub connections: ConnLimits,
    /// While draining, how long an idle connection waits for one more request.
    pub drain_keepalive: Duration,
    /// The parked (idle, taskless) connections.
    pub parking: Parking,
}

#[async_trait]
impl<A> ServerApp for Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The connection goes on in a task of its own: pingora's per-connection task
        // holds its accept handshake's future inline (~8 KiB, the TLS variant's, for
        // every connection, for its whole life); ours holds only what an idle
        // connection needs.
        tokio::spawn(Arc::clone(self).connection(stream, shutdown.clone()));
        None
    }
}

impl<A> Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn connection(self: Arc<Self>, stream: Stream, shutdown: ShutdownWatch) {
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let client_ip = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        drop(digest);
        let Some(admitted) = self.connections.admit(local, client_ip) else {
            return;
        };
        let counted = self.metrics.connection();
        // TLS with ALPN h2: straight to pingora's HTTP/2 server.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let watched = H2Watched::new(stream, Arc::clone(&self.metrics.h2));
            self.h2.process_new(Box::new(watched), &shutdown).await;
            return;
        }
        let idle_until = Instant::now() + admitted.idle_timeout();
        let connection = Http1 {
            admitted,
            client_ip,
            counted,
        };
        self.http1(stream, connection, idle_until, &shutdown).await;
    }

    /// A parked connection taken up again: a request (or the client's close) is there.
    async fn resume(self: Arc<Self>, parked: Parked, shutdown: ShutdownWatch) {
        let admitted = self.connections.readmit(parked.admission);
        let socket = std::net::TcpStream::from(parked.socket);
        let Ok(socket) = tokio::net::TcpStream::from_std(socket) else {
            return;
        };
        let mut stream = L4Stream::from(socket);
        stream.set_socket_digest(SocketDigest::from_raw_fd(stream.as_raw_fd()));
        let connection = Http1 {
            admitted,
            client_ip: parked.client_ip,
            counted: parked.counted,
        };
        self.http1(Box::new(stream), connection, parked.until, &shutdown)
            .await;
    }

    /// An HTTP/1 connection (or an h2c one, found out from its preface), from a wait for
    /// its next request's first byte until it closes or is parked.
    async fn http1(
        self: &Arc<Self>,
        stream: Stream,
        mut connection: Http1<'_>,
        mut idle_until: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let tls = stream.get_ssl_digest().is_some();
        let check_h2c = self.h2c && !tls;
        let client = ClientInfo::new(connection.client_ip, tls);
        let idle_timeout = connection.admitted.idle_timeout();
        let mut drain = Drain {
            watch: shutdown.clone(),
            deadline: None,
            keepalive: self.drain_keepalive,
        };
        let mut stream = stream;
        loop {
            let Some(first) = wait_first_byte(&mut stream, &mut drain, idle_until).await else {
                return;
            };
            // Boxed: the idle connection's own future stays small; the box lives for the
            // whole active stretch, however many requests it serves.
            let active = Box::pin(self.serve_active(
                stream,
                first,
                &client,
                check_h2c,
                idle_timeout,
                &mut drain,
                shutdown,
            ));
            match active.await {
                Active::Idle(idle, until) => {
                    let until = drain.deadline.map_or(until, |d| d.min(until));
                    match self.park(idle, connection, until, shutdown) {
                        // Parked: this task ends; a request or the deadline decides next.
                        Ok(()) => return,
                        Err((idle, kept)) => {
                            stream = idle;
                            connection = kept;
                            idle_until = until;
                        }
                    }
                }
                Active::H2c(prefixed) => {
                    let watched = H2Watched::new(prefixed, Arc::clone(&self.metrics.h2));
                    self.h2.process_new(Box::new(watched), shutdown).await;
                    return;
                }
                Active::Closed => return,
            }
        }
    }

    /// Parks an idle plain-TCP connection in the lot (started, with its thread, by the
    /// first). What cannot be parked (TLS; no lot on this host; no descriptor to spare)
    /// is handed back, to wait in its task.
    #[allow(clippy::result_large_err)]
    fn park<'a>(
        self: &'a Arc<Self>,
        stream: Stream,
        connection: Http1<'a>,
        until: Instant,
        shutdown: &ShutdownWatch,
    ) -> Result<(), (Stream, Http1<'a>)> {
        // Its time is up already (an idle timeout under a second): its task ends the wait.
        if until <= Instant::now() {
            return Err((stream, connection));
        }
        let Some(fd) = stream
            .as_any()
            .downcast_ref::<L4Stream>()
            .map(AsRawFd::as_raw_fd)
        else {
            return Err((stream, connection));
        };
        let Some(lot) = self.parking.lot.get_or_init(|| self.open_lot(shutdown)) else {
            return Err((stream, connection));
        };
        let Ok(socket) = lot.duplicate(fd) else {
            return Err((stream, connection));
        };
        // The stream and its tokio registration go; the duplicate keeps the socket open.
        drop(stream);
        let parked = Parked {
            socket,
            until,
            client_ip: connection.client_ip,
            admission: connection.admitted.into_token(),
            counted: connection.counted,
            runtime: tokio::runtime::Handle::current(),
        };
        if let Err(refused) = lot.park(parked) {
            // Idle, and the epoll set would not take it: closed, as an idle timeout would.
            self.close_parked(*refused);
        }
        Ok(())
    }

    /// The lot and its thread; `None` (and a warning) where this host allows no parking.
    fn open_lot(self: &Arc<Self>, shutdown: &ShutdownWatch) -> Option<Arc<Lot>> {
        let lot = match Lot::new() {
            Ok(lot) => Arc::new(lot),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "idle connections cannot be parked here (epoll, pidfd_getfd): each keeps its task"
                );
                return None;
            }
        };
        let front = Arc::clone(self);
        let watched = Arc::clone(&lot);
        let shutdown = shutdown.clone();
        let started = std::thread::Builder::new()
            .name("strait-parking".into())
            .spawn(move || front.tend(&watched, &shutdown));
        match started {
            Ok(_) => Some(lot),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the parked connections' thread");
                None
            }
        }
    }

    /// Closes a parked connection (its socket and gauge count go with it) and gives
    /// its admission back.
    fn close_parked(&self, parked: Parked) {
        drop(self.connections.readmit(parked.admission));
    }

    /// The lot's thread: hands each connection whose request has come to a task on its
    /// runtime, closes those whose time is up, and shortens every wait when the drain
    /// begins. Runs for the life of the process.
    fn tend(self: Arc<Self>, lot: &Lot, shutdown: &ShutdownWatch) {
        let mut events = parking::Events::new();
        let mut moved = Vec::new();
        let mut draining = false;
        let mut next_sweep = Instant::now() + parking::SWEEP;
        loop {
            if let Err(e) = lot.wait_ready(parking::SWEEP, &mut events, &mut moved) {
                tracing::warn!(error = %e, "waiting on parked connections failed");
                std::thread::sleep(parking::SWEEP);
            }
            for parked in moved.drain(..) {
                let runtime = parked.runtime.clone();
                // A runtime already shut down drops the task, and the connection with it.
                runtime.spawn(Arc::clone(&self).resume(parked, shutdown.clone()));
            }
            let now = Instant::now();
            if !draining && *shutdown.borrow() {
                draining = true;
                lot.drain(now + self.drain_keepalive);
            }
            if now >= next_sweep {
                next_sweep = now + parking::SWEEP;
                lot.take_expired(now, &mut moved);
                for parked in moved.drain(..) {
                    self.close_parked(parked);
                }
                self.metrics.parked_connections.set(lot.len() as i64);
            }
        }
    }

    /// Serves requests of an HTTP/1 connection from its first byte until it goes idle
    /// (`Active::Idle`, its buffers released), is closed, or turns out to be h2c.
    #[allow(clippy::too_many_arguments)]
    async fn serve_active(
        &self,
        mut stream: Stream,
        first: u8,
        client: &ClientInfo,
        check_h2c: bool,
        idle_timeout: Duration,
        drain: &mut Drain,
        shutdown: &ShutdownWatch,
    ) -> Active {
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_u8(first);
        let mut bufs = ConnBuffers::default();
        loop {
            if buf.is_empty() {
                // Between requests.
                let idle_until = Instant::now() + idle_timeout;
                if drain.draining() {
                    return Active::Idle(stream, idle_until);
                }
                let release = (Instant::now() + IDLE_RELEASE).min(idle_until);
                tokio::select! {
                    biased;
                    read = stream.read_buf(&mut buf) => match read {
                        Ok(n) if n > 0 => {}
                        _ => return Active::Closed,
                    },
                    () = tokio::time::sleep_until(release) => {
                        return Active::Idle(stream, idle_until);
                    }
                    () = drain.changed() => continue,
                }
            }
            match read_head(&mut stream, &mut buf, &self.limits, check_h2c).await {
                Head::Gone => return Active::Closed,
                Head::H2c => return Active::H2c(Box::new(Prefixed::new(buf, stream))),
                Head::Rejected(rejection) => {
                    self.metrics.rejected(rejection.reason);
                    respond_and_close(&mut stream, rejection).await;
                    return Active::Closed;
                }
                Head::Complete => {}
            }
            let end = head_end(&buf).unwrap_or(buf.len());
            // Planned while draining: the last request of this connection.
            let closing = drain.draining();
            let keep_alive = match self.pump.plan(&buf[..end], &self.limits, client, &mut bufs) {
                Plan::Reject(rejection) => {
                    self.metrics.rejected(rejection.reason);
                    respond_and_close(&mut stream, rejection).await;
                    return Active::Closed;
                }
                Plan::Local(local) => {
                    self.pump
                        .answer_locally(&mut stream, &mut buf, local, &mut bufs, client.ip, closing)
                        .await
                }
                Plan::Forward(request) => {
                    self.pump
                        .forward(&mut stream, &mut buf, request, &mut bufs, client, closing)
                        .await
                }
                Plan::Pingora => {
                    let Some((next, reused)) = self.pingora_h1(stream, buf, shutdown).await else {
                        return Active::Closed;
                    };
                    stream = next;
                    buf = reused;
                    continue;
                }
            };
            if !keep_alive {
                return Active::Closed;
            }
        }
    }

    /// One HTTP/1 request through pingora's proxy (a service spoken to over HTTP/2): the
    /// head bytes already read are pushed back in front of the stream. Returns the
    /// connection and any bytes read past the request, if it can be reused.
    async fn pingora_h1(
        &self,
        stream: Stream,
        buf: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, BytesMut)> {
        let prefixed: Stream = Box::new(Prefixed::new(buf, stream));
        let mut session = ServerSession::new_http1(prefixed);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.limits.idle_timeout.as_secs().max(1)));
        }
        let reused = self.app.process_new_http(session, shutdown).await?;
        let (reused_stream, _settings) = reused.consume();
        // Unwrap our wrapper so connections do not nest one per request; bytes it still
        // holds (a pipelined next request) become the next head's start.
        match reused_stream.into_any().downcast::<Prefixed>() {
            Ok(prefixed) => {
                let (rest, inner) = prefixed.into_parts();
                Some((inner, rest))
            }
            Err(_) => None,
        }
    }
}

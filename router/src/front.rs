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
//! Phase order per connection: [TLS/ALPN h2 or h2c preface -> pingora's HTTP/2] else loop
//! { wait for first byte (idle timeout) -> read head (deadline, size) -> the pump plans it
//! (validate, route) -> forward it, answer it, or pingora proxies it -> next request if
//! the connection is reusable }.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::heads::{ClientInfo, write_local_response};
use crate::io::h2_watch::H2Watched;
use crate::io::prefixed::Prefixed;
use crate::metrics::RouterMetrics;
use crate::paths::pump::{ConnBuffers, Plan, Pump};
use crate::paths::pump_h2::H2App;
use crate::wire::request::reject;
use crate::wire::{HeadLimits, Rejection, head_end};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What reading a head produced.
enum Head {
    /// A complete head (and possibly more) is in the buffer.
    Complete,
    /// The connection is an HTTP/2 prior-knowledge (h2c) connection.
    H2c,
    /// Closed or idle before a request began: close quietly.
    Gone,
    Rejected(Rejection),
}

async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limits: &HeadLimits,
    check_h2c: bool,
) -> Head {
    // Idle: wait for the first byte of a request.
    if buf.is_empty() {
        match tokio::time::timeout(limits.idle_timeout, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Head::Gone,
        }
    }
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
        let _ = stream.write_all(&response).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
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
        let _connection = self.metrics.connection();
        // TLS with ALPN h2: straight to pingora's HTTP/2 server.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let watched = H2Watched::new(stream, Arc::clone(&self.metrics.h2));
            return self.h2.process_new(Box::new(watched), shutdown).await;
        }
        let tls = stream.get_ssl_digest().is_some();
        let check_h2c = self.h2c && !tls;
        let client_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let client = ClientInfo::new(client_ip, tls);
        let mut stream = stream;
        let mut buf = BytesMut::with_capacity(4096);
        let mut bufs = ConnBuffers::default();
        let mut shutting_down = shutdown.clone();
        loop {
            if *shutting_down.borrow() {
                return None;
            }
            let idle = buf.is_empty();
            let head = tokio::select! {
                head = read_head(&mut stream, &mut buf, &self.limits, check_h2c) => head,
                // Shutdown closes idle keep-alive connections at once.
                _ = shutting_down.changed(), if idle => return None,
            };
            match head {
                Head::Gone => return None,
                Head::H2c => {
                    let prefixed = Prefixed::new(buf, stream);
                    let watched = H2Watched::new(Box::new(prefixed), Arc::clone(&self.metrics.h2));
                    return self.h2.process_new(Box::new(watched), shutdown).await;
                }
                Head::Rejected(rejection) => {
                    self.metrics.rejected(rejection.reason);
                    respond_and_close(&mut stream, rejection).await;
                    return None;
                }
                Head::Complete => {}
            }
            let end = head_end(&buf).unwrap_or(buf.len());
            let closing = *shutdown.borrow();
            let keep_alive = match self
                .pump
                .plan(&buf[..end], &self.limits, &client, &mut bufs)
            {
                Plan::Reject(rejection) => {
                    self.metrics.rejected(rejection.reason);
                    respond_and_close(&mut stream, rejection).await;
                    return None;
                }
                Plan::Local(local) => {
                    self.pump
                        .answer_locally(&mut stream, &mut buf, local, &mut bufs, client.ip, closing)
                        .await
                }
                Plan::Forward(request) => {
                    self.pump
                        .forward(&mut stream, &mut buf, request, &mut bufs, &client, closing)
                        .await
                }
                Plan::Pingora => {
                    let (next, reused) = self.pingora_h1(stream, buf, shutdown).await?;
                    stream = next;
                    buf = reused;
                    continue;
                }
            };
            if !keep_alive {
                return None;
            }
        }
    }
}

impl<A> Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
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

//! An HTTP/2 connection's stream, watched as it passes to and from pingora's h2 server:
//! the GOAWAY and RST_STREAM frames either side sends are counted by error code
//! ([`crate::wire::h2_frames`]), and a GOAWAY with an error code is logged (at most once
//! a second). pingora's h2 keeps its protocol errors to itself (a debug log line at
//! most); on the wire they cannot hide.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::{ERROR_CODES, FrameScanner, H2Event, error_code_index};

/// One counter per error code (the order of [`ERROR_CODES`]).
pub type ByCode = [IntCounter; ERROR_CODES.len()];

/// The counters the watch increments, resolved once (the metrics layer makes them).
pub struct H2Counters {
    /// Every GOAWAY the router sent (`NO_ERROR`: a graceful close, as on drain).
    pub goaways_sent: ByCode,
    /// GOAWAYs with an error code: sent (the client broke the protocol) or received.
    pub connection_errors_by_router: ByCode,
    pub connection_errors_by_client: ByCode,
    /// RST_STREAM frames: sent or received.
    pub stream_errors_by_router: ByCode,
    pub stream_errors_by_client: ByCode,
}

/// A stream whose HTTP/2 frames are watched both ways.
pub struct H2Watched {
    inner: Stream,
    from_client: FrameScanner,
    from_router: FrameScanner,
    counters: Arc<H2Counters>,
}

impl H2Watched {
    /// `inner` starts at the client's connection preface (read, or pushed back in front).
    pub fn new(inner: Stream, counters: Arc<H2Counters>) -> Self {
        H2Watched {
            inner,
            from_client: FrameScanner::from_client(),
            from_router: FrameScanner::from_server(),
            counters,
        }
    }
}

fn count_received(counters: &H2Counters, event: H2Event) {
    match event {
        H2Event::GoAway { code: 0 } => {}
        H2Event::GoAway { code } => {
            counters.connection_errors_by_client[error_code_index(code)].inc()
        }
        H2Event::RstStream { code } => {
            counters.stream_errors_by_client[error_code_index(code)].inc()
        }
    }
}

fn count_sent(counters: &H2Counters, event: H2Event, inner: &Stream) {
    match event {
        H2Event::GoAway { code } => {
            counters.goaways_sent[error_code_index(code)].inc();
            if code != 0 {
                counters.connection_errors_by_router[error_code_index(code)].inc();
                log_connection_error(code, inner);
            }
        }
        H2Event::RstStream { code } => {
            counters.stream_errors_by_router[error_code_index(code)].inc()
        }
    }
}

/// A connection the router ended for a protocol error, in the log: at most one line a
/// second for the process (a flood of broken clients must not flood the log), each
/// saying how many were left out before it.
fn log_connection_error(code: u32, inner: &Stream) {
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static LEFT_OUT: AtomicU64 = AtomicU64::new(0);
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_SECOND.swap(second, Ordering::Relaxed) == second {
        LEFT_OUT.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let client = inner
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(ToString::to_string));
    tracing::warn!(
        client = client.as_deref().unwrap_or("unknown"),
        code = ERROR_CODES[error_code_index(code)],
        left_out = LEFT_OUT.swap(0, Ordering::Relaxed),
        "HTTP/2 connection error: GOAWAY sent (strait_router_h2_connection_errors_total)"
    );
}

impl fmt::Debug for H2Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Watched")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for H2Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = out.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, out);
        if let Poll::Ready(Ok(())) = polled {
            let counters = &this.counters;
            this.from_client
                .feed(&out.filled()[before..], |e| count_received(counters, e));
        }
        polled
    }
}

impl AsyncWrite for H2Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            let (counters, inner) = (&this.counters, &this.inner);
            this.from_router.feed(&data[..n.min(data.len())], |e| {
                count_sent(counters, e, inner)
            });
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            let (counters, inner) = (&this.counters, &this.inner);
            for buf in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(buf.len());
                this.from_router
                    .feed(&buf[..take], |e| count_sent(counters, e, inner));
                n -= take;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for H2Watched {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for H2Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for H2Watched {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for H2Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for H2Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for H2Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for H2Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

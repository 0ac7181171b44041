//! A route's idle timeout for long-lived relays (TCP routes, WebSocket tunnels): the relay
//! ends when no byte has moved either way for that long, as Envoy's `idle_timeout` and
//! HAProxy's `timeout tunnel` do.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved, in milliseconds since the relay started. One relay's halves run
/// in one task; the atomic only makes it shareable between them.
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Bytes moved now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Completes once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            tokio::time::sleep_until(deadline).await;
            if self.last() + idle <= Instant::now() {
                return;
            }
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// Runs `relay` until it ends or, with `idle` set, until nothing has moved for that long
/// (then a `TimedOut` error).
pub async fn bounded<T>(
    activity: &Activity,
    idle: Option<Duration>,
    relay: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let Some(idle) = idle else {
        return relay.await;
    };
    tokio::select! {
        result = relay => result,
        () = activity.idle_for(idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("idle for {idle:?}"),
        )),
    }
}

/// A stream that records each read and write that moves bytes.
pub struct Tracked<'a, S> {
    pub inner: S,
    pub activity: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ends_only_after_a_quiet_stretch() {
        let activity = Activity::new();
        let idle = Duration::from_secs(10);
        // Activity every 6 s keeps it alive past 10 s; then 10 quiet seconds end it.
        let relay = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                activity.touch();
            }
            std::future::pending::<io::Result<()>>().await
        };
        let started = Instant::now();
        let error = bounded(&activity, Some(idle), relay)
            .await
            .expect_err("idle");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(28));
        // Without a timeout the relay's own end is the end.
        let done = bounded(&activity, None, async { Ok(7) }).await;
        assert_eq!(done.expect("relay result"), 7);
    }
}

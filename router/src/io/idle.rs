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

    /// When the relay goes idle if nothing moves before; `None` beyond what an `Instant`
    /// can hold (a timeout of centuries: never).
    fn deadline(&self, idle: Duration) -> Option<Instant> {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.checked_add(last)?.checked_add(idle)
    }

    /// Completes once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let Some(deadline) = self.deadline(idle) else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(deadline).await;
            if self.deadline(idle).is_some_and(|d| d <= Instant::now()) {
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

/// A stream that records each read and write that moves bytes, and counts the bytes
/// written through it.
pub struct Tracked<'a, S> {
    inner: S,
    activity: &'a Activity,
    pub written: u64,
}

impl<'a, S> Tracked<'a, S> {
    pub fn new(inner: S, activity: &'a Activity) -> Self {
        Tracked {
            inner,
            activity,
            written: 0,
        }
    }
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
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            self.activity.touch();
            self.written += n as u64;
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

    #[tokio::test(start_paused = true)]
    async fn a_timeout_beyond_any_instant_never_fires() {
        let activity = Activity::new();
        let relay = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(1)
        };
        let done = bounded(&activity, Some(Duration::from_secs(u64::MAX)), relay).await;
        assert_eq!(done.expect("the relay ends first"), 1);
    }
}

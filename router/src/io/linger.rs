//! Lingering close (nginx's `lingering_close`): after a response that ends a connection
//! whose request was not read to its end, the client may still be sending. Closing a
//! socket with unread bytes sends a reset, and a reset makes the client's kernel drop the
//! response it had not read yet (RFC 9112 section 9.6), so the client sees an error
//! instead of the 404 or 400 it was sent. Shut the write side, then read and drop what
//! comes for a bounded time.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest a connection lingers, and the longest it waits for the next bytes
/// (nginx: 30 s and 5 s; shorter here, the client has its answer already).
const LINGER_FOR: Duration = Duration::from_secs(5);
const LINGER_IDLE: Duration = Duration::from_secs(1);

/// Shuts `stream`'s write side and drains it until the client closes, goes quiet for
/// [`LINGER_IDLE`], or [`LINGER_FOR`] passes.
pub async fn linger(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
    if tokio::time::timeout(LINGER_IDLE, stream.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER_FOR, async {
        while let Ok(Ok(n)) = tokio::time::timeout(LINGER_IDLE, stream.read(&mut sink)).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
}

//! Zero-copy relaying for TCP routes: `splice(2)` moves bytes from one socket into a pipe
//! and from the pipe into the other socket inside the kernel, never through user space.
//!
//! Each direction owns a pipe and alternates: fill it from the reader (the pipe is empty,
//! so `EAGAIN` can only mean the socket has nothing), then drain it into the writer (the
//! pipe has data, so `EAGAIN` can only mean the socket is full). That keeps tokio's
//! readiness right: it is cleared only when the socket itself would block.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice` call: the default pipe's capacity (16 pages).
const CHUNK: usize = 64 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Pipe { read, write })
    }
}

/// Relays both ways until both sides have finished, like `copy_bidirectional`: when one
/// side ends its sending, the other side's sending is shut down. Returns the bytes moved
/// each way.
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (a_to_b, b_to_a) = (Pipe::new()?, Pipe::new()?);
    tokio::try_join!(one_way(a, b, &a_to_b), one_way(b, a, &b_to_a))
}

async fn one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut total = 0u64;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    CHUNK,
                    flags,
                )?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            // The sender finished: pass its FIN on. The peer may be gone already.
            let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    &pipe.read, None, to, None, left, flags,
                )?)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
    }
}

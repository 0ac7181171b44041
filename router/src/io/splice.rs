//! Relaying for TCP routes, zero-copy where it pays: `splice(2)` moves bytes from one
//! socket into a pipe and from the pipe into the other socket inside the kernel, never
//! through user space.
//!
//! Each direction starts with plain reads and writes through a small buffer, which is
//! cheapest for small messages (measured: `bench tcp`, small load). The first read that
//! fills the buffer shows a bulk transfer: that direction then creates its pipe and
//! splices for the rest of the connection, as HAProxy's `splice-auto` does.
//!
//! Spliced, a direction alternates: fill the pipe from the reader (the pipe is empty, so
//! `EAGAIN` can only mean the socket has nothing), then drain it into the writer (the pipe
//! has data, so `EAGAIN` can only mean the socket is full). That keeps tokio's readiness
//! right: it is cleared only when the socket itself would block.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::idle::Activity;

/// Bytes moved per `splice` call: the default pipe's capacity (16 pages).
const CHUNK: usize = 64 * 1024;
/// The copy buffer; a read that fills it switches the direction to splicing.
const BUFFER: usize = 16 * 1024;

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
/// `activity`, when given, hears of every read and write that moves bytes (for an idle
/// timeout; without one no clock is read).
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    activity: Option<&Activity>,
) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b, activity), one_way(b, a, activity))
}

async fn one_way(from: &TcpStream, to: &TcpStream, activity: Option<&Activity>) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buffer = [0u8; BUFFER];
    loop {
        let read = loop {
            from.readable().await?;
            match from.try_read(&mut buffer) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if read == 0 {
            finish(to);
            return Ok(total);
        }
        touch(activity);
        write_all(to, &buffer[..read], activity).await?;
        total += read as u64;
        if read == BUFFER {
            // A bulk transfer: splice the rest. Without a pipe (out of descriptors),
            // copying goes on.
            if let Ok(pipe) = Pipe::new() {
                return spliced(from, to, &pipe, total, activity).await;
            }
        }
    }
}

async fn write_all(
    to: &TcpStream,
    mut bytes: &[u8],
    activity: Option<&Activity>,
) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                // A slow reader taking bytes is not idle.
                touch(activity);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn touch(activity: Option<&Activity>) {
    if let Some(activity) = activity {
        activity.touch();
    }
}

/// The sender finished: pass its FIN on. The peer may be gone already.
fn finish(to: &TcpStream) {
    let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
}

async fn spliced(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    mut total: u64,
    activity: Option<&Activity>,
) -> io::Result<u64> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
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
            finish(to);
            return Ok(total);
        }
        touch(activity);
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    &pipe.read, None, to, None, left, flags,
                )?)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    touch(activity);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
    }
}

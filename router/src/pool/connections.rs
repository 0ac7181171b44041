//! Idle upstream HTTP/1 connections, kept per worker thread.
//!
//! Each pingora worker runs one single-threaded runtime, so a request's task never
//! leaves its thread: a thread-local pool needs no lock, no task per idle connection and
//! no channel (pingora's own pool spends all three on every request). A connection is
//! checked for a close or stray bytes with one non-blocking read when taken; one the
//! upstream closed in the meantime is caught there, or by the pump's retry of a request on
//! a reused connection that failed before any response byte.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

use crate::tls::UpstreamTls;

/// Idle connections kept per upstream address, per thread; the oldest goes first.
const MAX_IDLE_PER_KEY: usize = 256;
/// How often each thread closes idle connections that are closed or expired.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// An idle connection is closed after this many sweeps unused (60 to 70 s): ages are
/// counted in sweeps so that taking and returning a connection reads no clock.
const IDLE_SWEEPS: u8 = 6;

/// Which connections are interchangeable: same address, same TLS settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    addr: SocketAddr,
    /// The service's TLS settings (their address; 0: cleartext). They are loaded once
    /// per process, so equal settings are the same allocation.
    tls: usize,
}

impl PoolKey {
    pub fn new(addr: SocketAddr, tls: Option<&Arc<UpstreamTls>>) -> PoolKey {
        PoolKey {
            addr,
            tls: tls.map_or(0, |t| Arc::as_ptr(t) as usize),
        }
    }
}

struct Idle {
    stream: Stream,
    /// Sweeps this connection has sat through unused.
    sweeps: u8,
}

type IdleMap = HashMap<PoolKey, VecDeque<Idle>, foldhash::fast::RandomState>;

thread_local! {
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Whether an idle connection is still usable: open, and nothing unasked-for to read.
fn usable(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // Pending means open and quiet. Ready: closed (0), broken, or stray data.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

/// Takes the most recently used idle connection for `key`, if one is still usable.
pub fn take(key: &PoolKey) -> Option<Stream> {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(key)?;
        while let Some(mut conn) = list.pop_back() {
            if usable(&mut conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    })
}

/// Keeps a connection whose last exchange ended cleanly for reuse.
pub fn put(key: PoolKey, stream: Stream) {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            list.pop_front();
        }
        list.push_back(Idle { stream, sweeps: 0 });
    });
    if !SWEEPING.get() {
        SWEEPING.set(true);
        // The current-thread runtime of this worker runs it, on this thread.
        tokio::spawn(sweep());
    }
}

/// Closes this thread's expired or closed idle connections, periodically.
async fn sweep() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        IDLE.with_borrow_mut(|idle| {
            idle.retain(|_, list| {
                list.retain_mut(|conn| {
                    conn.sweeps += 1;
                    conn.sweeps <= IDLE_SWEEPS && usable(&mut conn.stream)
                });
                !list.is_empty()
            });
        });
    }
}

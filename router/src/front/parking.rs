//! Parked connections: an HTTP/1 keep-alive connection over plain TCP that has had no
//! request for `IDLE_RELEASE` gives up its task, its pingora stream and its tokio
//! registration too, and waits as a bare socket in the lot: one epoll set for the
//! process, a slot of ~100 bytes per connection, watched by one thread of its own. When
//! a request arrives that thread spawns a task, on the runtime the connection came
//! from, that takes it up where it left off; when the idle timeout (while draining,
//! `drain_keepalive`) passes first, the thread closes it. nginx keeps an idle keep-alive
//! connection in a few hundred bytes; a task, a pingora stream and a tokio registration
//! were ~2 KB.
//!
//! Only plain TCP is parked: a TLS connection's state lives in rustls and stays with
//! its task. The listeners are unbuffered (service.rs), so a pingora stream holds no
//! bytes of its own when parked: what was read has been served, what was written
//! flushed.

use std::io;
use std::net::IpAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::epoll;
use rustix::process::{PidfdFlags, PidfdGetfdFlags};
use tokio::time::Instant;

use super::limits::AdmissionToken;
use crate::metrics::GaugeGuard;

/// How long the lot's thread waits for events before it looks for expired connections:
/// an idle timeout ends at most this late.
pub(super) const SWEEP: Duration = Duration::from_millis(250);

/// The most events read from the epoll set per call.
const BATCH: usize = 256;

/// Where a router's idle connections are parked: the lot, opened with the first.
#[derive(Default)]
pub struct Parking {
    /// `None` where this host allows no parking (then idle connections keep their tasks).
    pub(super) lot: std::sync::OnceLock<Option<std::sync::Arc<Lot>>>,
}

/// A connection waiting in the lot, with what its task needs to take it up again.
pub(super) struct Parked {
    pub socket: OwnedFd,
    /// When it is closed if nothing comes (idle timeout, or the drain's deadline).
    pub until: Instant,
    pub client_ip: Option<IpAddr>,
    pub admission: AdmissionToken,
    /// The open-connections gauge's count for this connection.
    pub counted: GaugeGuard,
    /// The runtime (worker thread) it came from, and goes back to.
    pub runtime: tokio::runtime::Handle,
}

/// The buffer the lot's thread reads events into.
pub(super) struct Events(Vec<epoll::Event>);

impl Events {
    pub fn new() -> Events {
        Events(Vec::with_capacity(BATCH))
    }
}

/// The parked connections of a process.
pub(super) struct Lot {
    epoll: OwnedFd,
    /// This process as a pidfd, to duplicate a descriptor by its number (see `duplicate`).
    own_pidfd: OwnedFd,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Option<Parked>>,
    free: Vec<u32>,
    /// Set once draining: no connection waits past it.
    drain_deadline: Option<Instant>,
}

impl Lot {
    pub fn new() -> io::Result<Lot> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let own_pidfd =
            rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty())?;
        let lot = Lot {
            epoll,
            own_pidfd,
            slots: Mutex::default(),
        };
        // Fails where pidfd_getfd is not allowed (a seccomp filter): no parking then.
        drop(lot.duplicate(std::os::fd::AsRawFd::as_raw_fd(&lot.epoll))?);
        Ok(lot)
    }

    /// A second descriptor of a socket the caller holds open, for when the pingora stream
    /// holding the first (and its tokio registration) is dropped. pingora's stream gives
    /// only the descriptor's number, and this crate has no `unsafe` to turn a number into
    /// a borrowed descriptor for dup(2); pidfd_getfd(2) on this process's own pidfd is
    /// the same duplicate, through a safe call.
    pub fn duplicate(&self, fd: RawFd) -> io::Result<OwnedFd> {
        Ok(rustix::process::pidfd_getfd(
            &self.own_pidfd,
            fd,
            PidfdGetfdFlags::empty(),
        )?)
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks a connection; on failure (the epoll set refused it) it is handed back.
    pub fn park(&self, mut parked: Parked) -> Result<(), Box<Parked>> {
        let mut slots = self.slots();
        if let Some(deadline) = slots.drain_deadline {
            parked.until = parked.until.min(deadline);
        }
        let index = match slots.free.pop() {
            Some(index) => index,
            None => match u32::try_from(slots.slots.len()) {
                Ok(index) => {
                    slots.slots.push(None);
                    index
                }
                Err(_) => return Err(Box::new(parked)),
            },
        };
        // Under the lock: the lot's thread cannot see the event before the slot is filled.
        let interest = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        if epoll::add(
            &self.epoll,
            &parked.socket,
            epoll::EventData::new_u64(u64::from(index)),
            interest,
        )
        .is_err()
        {
            slots.free.push(index);
            return Err(Box::new(parked));
        }
        slots.slots[index as usize] = Some(parked);
        Ok(())
    }

    /// Waits up to `timeout` for parked connections to become readable (a request, or
    /// the client closing) and takes them out, at most `BATCH` (`events`: the lot
    /// thread's buffer, kept across calls).
    pub fn wait_ready(
        &self,
        timeout: Duration,
        events: &mut Events,
        ready: &mut Vec<Parked>,
    ) -> io::Result<()> {
        let events = &mut events.0;
        events.clear();
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            Some(&timeout),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let mut slots = self.slots();
        for event in events.iter() {
            if let Some(parked) = slots.take(event.data.u64()) {
                // Out of the set before its task registers it with tokio.
                let _ = epoll::delete(&self.epoll, &parked.socket);
                ready.push(parked);
            }
        }
        Ok(())
    }

    /// Takes out the connections whose time is up at `now`.
    pub fn take_expired(&self, now: Instant, expired: &mut Vec<Parked>) {
        let mut slots = self.slots();
        let mut index = 0;
        // `take` may shrink the slots when the last one goes: bounds checked each time.
        while let Some(slot) = slots.slots.get(index) {
            if slot.as_ref().is_some_and(|p| p.until <= now)
                && let Some(parked) = slots.take(index as u64)
            {
                let _ = epoll::delete(&self.epoll, &parked.socket);
                expired.push(parked);
            }
            index += 1;
        }
    }

    /// Draining: no connection parked now or later waits past `deadline`.
    pub fn drain(&self, deadline: Instant) {
        let mut slots = self.slots();
        slots.drain_deadline = Some(deadline);
        for parked in slots.slots.iter_mut().flatten() {
            parked.until = parked.until.min(deadline);
        }
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.slots().len()
    }
}

impl Slots {
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn take(&mut self, index: u64) -> Option<Parked> {
        let slot = self.slots.get_mut(usize::try_from(index).ok()?)?;
        let parked = slot.take()?;
        self.free.push(u32::try_from(index).ok()?);
        // Give the memory back once a crowd of idle connections has gone.
        if self.len() == 0 && self.slots.len() > 1024 {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some(parked)
    }
}

//! `strait up --upgrade`: a new binary takes over from the running one with no failed
//! request and no lost registration.
//!
//! 1. The new process binds `<data dir>/upgrade.sock` and sends SIGQUIT to the old one
//!    (whose pid is in `<data dir>/strait.pid`).
//! 2. The old one stops accepting on its admin API, registry, DNS and TCP-route sockets,
//!    stops its agent and lease reaper, releases the store, and sends those sockets
//!    (`SCM_RIGHTS`) with what it owned (instances, leases). Connections and queries that
//!    arrive meanwhile wait in the sockets' queues: the sockets never close.
//! 3. The new one opens the store, adopts the instances and leases, builds its tables and
//!    answers `ready`; it then receives the HTTP/TLS listeners through pingora's own
//!    hand-off (`upgrade-router.sock`) and serves everything.
//! 4. On `ready` the old one lets pingora send those listeners, accepts beside the new one
//!    for pingora's 5 s, drains its in-flight requests and exits. Without `ready` (the new
//!    process failed), it takes everything back and goes on serving.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use discovery::lease::LeaseHandover;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Linux passes at most 253 descriptors in one message (`SCM_MAX_FD`).
const MAX_SOCKETS: usize = 253;
/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
const READY: u8 = b'R';
/// The old process's answer to `READY`: it hands over the rest now. Without it the
/// successor does not go on (the old one may have given up and taken everything back).
const GO: u8 = b'G';
/// How long the successor waits for `GO` after `READY`.
const GO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the two processes meet: derived from the (canonical) data directory, so both
/// find the same files whatever their working directories.
#[derive(Clone)]
pub struct Paths {
    pub pid_file: PathBuf,
    pub socket: PathBuf,
    /// pingora's own hand-off of the HTTP and TLS listeners.
    pub router_socket: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> anyhow::Result<Paths> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let dir = std::fs::canonicalize(data_dir)
            .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
        Ok(Paths {
            pid_file: dir.join("strait.pid"),
            socket: dir.join("upgrade.sock"),
            router_socket: dir.join("upgrade-router.sock"),
        })
    }

    /// The sockets' paths must fit a Unix socket address (pingora panics otherwise).
    pub fn check_socket_length(&self) -> anyhow::Result<()> {
        for path in [&self.socket, &self.router_socket] {
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                bail!(
                    "{}: the data directory's path is too long for a Unix socket \
                     ({MAX_SOCKET_PATH} bytes at most); use a shorter --data-dir",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Records this process as the one to upgrade from.
    pub fn write_pid(&self) -> anyhow::Result<()> {
        std::fs::write(&self.pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write {}", self.pid_file.display()))
    }

    /// Removes the pid file if it is still this process's (a successor overwrote it).
    pub fn remove_pid(&self) {
        let ours = std::fs::read_to_string(&self.pid_file)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// What the old process sends besides its sockets.
#[derive(Serialize, Deserialize)]
pub struct Transfer {
    /// One name per socket, in the order the sockets are attached.
    pub sockets: Vec<SocketKind>,
    pub store: discovery::Handover,
    pub leases: Vec<LeaseHandover>,
    /// The router's `Via` name, kept by the successor: a loop through either process,
    /// and a request through either router to the admin API, is recognised. (Absent from
    /// an older predecessor's transfer: the successor keeps its own.)
    #[serde(default)]
    pub hop_token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketKind {
    Admin,
    Registry,
    DnsUdp,
    DnsTcp,
    TcpRoute,
}

/// The sockets a successor serves instead of binding.
#[derive(Default)]
pub struct Sockets {
    pub admin: Option<TcpListener>,
    pub registry: Option<TcpListener>,
    /// DNS: every UDP socket (one per worker), and the TCP listener.
    pub dns: Option<(Vec<UdpSocket>, TcpListener)>,
    pub tcp_routes: Vec<TcpListener>,
}

impl Sockets {
    /// Copies of the sockets, each named, to send.
    pub fn to_send(&self) -> std::io::Result<Vec<(SocketKind, OwnedFd)>> {
        let mut out = Vec::new();
        if let Some(admin) = &self.admin {
            out.push((SocketKind::Admin, admin.as_fd().try_clone_to_owned()?));
        }
        if let Some(registry) = &self.registry {
            out.push((SocketKind::Registry, registry.as_fd().try_clone_to_owned()?));
        }
        if let Some((udp, tcp)) = &self.dns {
            for udp in udp {
                out.push((SocketKind::DnsUdp, udp.as_fd().try_clone_to_owned()?));
            }
            out.push((SocketKind::DnsTcp, tcp.as_fd().try_clone_to_owned()?));
        }
        for listener in &self.tcp_routes {
            out.push((SocketKind::TcpRoute, listener.as_fd().try_clone_to_owned()?));
        }
        Ok(out)
    }

    fn from_received(kinds: &[SocketKind], fds: Vec<OwnedFd>) -> anyhow::Result<Sockets> {
        if kinds.len() != fds.len() {
            bail!(
                "the running strait named {} sockets but sent {}",
                kinds.len(),
                fds.len()
            );
        }
        let mut sockets = Sockets::default();
        let mut dns_udp = Vec::new();
        let mut dns_tcp = None;
        for (kind, fd) in kinds.iter().zip(fds) {
            match kind {
                SocketKind::Admin => sockets.admin = Some(TcpListener::from(fd)),
                SocketKind::Registry => sockets.registry = Some(TcpListener::from(fd)),
                SocketKind::DnsUdp => dns_udp.push(UdpSocket::from(fd)),
                SocketKind::DnsTcp => dns_tcp = Some(TcpListener::from(fd)),
                SocketKind::TcpRoute => sockets.tcp_routes.push(TcpListener::from(fd)),
            }
        }
        sockets.dns = dns_tcp
            .filter(|_| !dns_udp.is_empty())
            .map(|tcp| (dns_udp, tcp));
        Ok(sockets)
    }
}

/// The new process's side, between signalling the old one and confirming.
pub struct Successor {
    listener: UnixListener,
    socket: PathBuf,
}

impl Successor {
    /// Binds the hand-over socket and asks the process in the pid file to hand over.
    pub fn signal(paths: &Paths) -> anyhow::Result<Successor> {
        paths.check_socket_length()?;
        let text = std::fs::read_to_string(&paths.pid_file).with_context(|| {
            format!(
                "--upgrade: no running strait recorded in {} (start without --upgrade)",
                paths.pid_file.display()
            )
        })?;
        let pid = text
            .trim()
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .with_context(|| format!("{}: not a process id", paths.pid_file.display()))?;
        if pid == rustix::process::getpid() {
            bail!("--upgrade: {} names this process", paths.pid_file.display());
        }
        // A stale pid file may name a process that reused the number: never signal that.
        let exe = std::fs::read_link(format!("/proc/{}/exe", pid.as_raw_nonzero())).with_context(
            || {
                format!(
                    "--upgrade: process {} from {} is not running (start without --upgrade)",
                    pid.as_raw_nonzero(),
                    paths.pid_file.display()
                )
            },
        )?;
        if !exe
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("strait"))
        {
            bail!(
                "--upgrade: process {} from {} is {}, not strait",
                pid.as_raw_nonzero(),
                paths.pid_file.display(),
                exe.display()
            );
        }
        let _ = std::fs::remove_file(&paths.socket);
        let listener = UnixListener::bind(&paths.socket)
            .with_context(|| format!("cannot listen on {}", paths.socket.display()))?;
        rustix::process::kill_process(pid, rustix::process::Signal::QUIT).with_context(|| {
            format!(
                "--upgrade: cannot signal strait process {} from {}",
                pid.as_raw_nonzero(),
                paths.pid_file.display()
            )
        })?;
        Ok(Successor {
            listener,
            socket: paths.socket.clone(),
        })
    }

    /// Waits (at most `timeout`) for the old process's sockets and state.
    pub fn receive(self, timeout: Duration) -> anyhow::Result<(Transfer, Sockets, Handshake)> {
        let stream = accept_within(&self.listener, timeout).with_context(|| {
            format!(
                "--upgrade: the running strait did not hand over on {}",
                self.socket.display()
            )
        })?;
        let _ = std::fs::remove_file(&self.socket);
        stream.set_read_timeout(Some(timeout))?;
        let (payload, fds) = receive_message(&stream)?;
        let transfer: Transfer =
            serde_json::from_slice(&payload).context("--upgrade: unreadable hand-over")?;
        let sockets = Sockets::from_received(&transfer.sockets, fds)?;
        Ok((transfer, sockets, Handshake(stream)))
    }
}

/// The open connection to the old process: `confirm` tells it to hand over the rest.
pub struct Handshake(UnixStream);

impl Handshake {
    /// Says `ready` and waits for the old process's `go`.
    pub fn confirm(mut self) -> anyhow::Result<()> {
        let gone = "--upgrade: the running strait gave up on this process before it was ready";
        self.0.write_all(&[READY]).context(gone)?;
        self.0.set_read_timeout(Some(GO_TIMEOUT))?;
        match read_byte(&mut self.0, Instant::now() + GO_TIMEOUT) {
            Ok(Some(GO)) => Ok(()),
            _ => bail!(gone),
        }
    }
}

/// One byte, retrying reads interrupted by signals, until `deadline`. `None` at EOF.
fn read_byte(stream: &mut UnixStream, deadline: Instant) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

/// The old process's side: sends the sockets and state, and waits for `ready`.
/// `Ok(false)`: the successor failed before taking over.
pub fn hand_over(
    paths: &Paths,
    transfer: &Transfer,
    sockets: &[(SocketKind, OwnedFd)],
    timeout: Duration,
) -> anyhow::Result<bool> {
    let mut stream = UnixStream::connect(&paths.socket)
        .with_context(|| format!("cannot connect to {}", paths.socket.display()))?;
    // A stopped successor must not hang this process with its sockets handed over.
    stream.set_write_timeout(Some(timeout))?;
    let payload = serde_json::to_vec(transfer)?;
    let fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    if fds.len() > MAX_SOCKETS {
        bail!("{} sockets to hand over; at most {MAX_SOCKETS}", fds.len());
    }
    let length = (payload.len() as u64).to_be_bytes();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        bail!("cannot attach {} sockets", fds.len());
    }
    // The sockets travel with the first byte; the rest is an ordinary stream.
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&length)],
        &mut control,
        SendFlags::empty(),
    )?;
    stream.write_all(&length[sent..])?;
    stream.write_all(&payload)?;
    stream.set_read_timeout(Some(timeout))?;
    if !matches!(
        read_byte(&mut stream, Instant::now() + timeout),
        Ok(Some(READY))
    ) {
        return Ok(false);
    }
    // Only a successor that hears `go` goes on; one that does not exits.
    Ok(stream.write_all(&[GO]).is_ok())
}

fn accept_within(listener: &UnixListener, timeout: Duration) -> std::io::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nothing within {}", humantime::format_duration(timeout)),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads the length-prefixed payload and the sockets attached to its first bytes.
fn receive_message(mut stream: &UnixStream) -> anyhow::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut length = [0u8; 8];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut length)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.bytes == 0 {
        bail!("--upgrade: the running strait closed the hand-over connection");
    }
    stream.read_exact(&mut length[received.bytes..])?;
    let length = u64::from_be_bytes(length);
    // Instances and leases: generous, but a bound.
    if length > 1 << 30 {
        bail!("--upgrade: a hand-over of {length} bytes is not believable");
    }
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload)?;
    Ok((payload, fds))
}

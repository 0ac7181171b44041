//! TCP routes: plain layer-4 proxying, and TLS passthrough chosen by SNI to real TLS
//! servers (`openssl s_server`), checked with curl verifying each server's certificate.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Strait, eventually, free_port};
use crate::http::{Backend, Client};
use crate::tls::{curl, make_ca, make_leaf};

struct TlsServer(Child);

impl TlsServer {
    fn start(dir: &std::path::Path, leaf: &str) -> (TlsServer, u16) {
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-cert",
                &format!("{leaf}.pem"),
                "-key",
                &format!("{leaf}.key"),
            ])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        eventually(Duration::from_secs(10), "s_server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        (TlsServer(child), port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Service `raw` (`backend`) behind TCP route `raw` on a free port, with `extra` route
/// fields (`,"key":value...`); returns the route's address.
fn raw_tcp_route(strait: &Strait, backend: &Backend, extra: &str) -> std::net::SocketAddr {
    strait.put("/v1/services/raw/instances/r1", &backend.instance());
    let port = free_port();
    let (status, body) = strait.put(
        "/v1/routes/raw",
        &format!(r#"{{"kind":"tcp","listen":"127.0.0.1:{port}","service":"raw"{extra}}}"#),
    );
    assert_eq!(status, 200, "{body}");
    format!("127.0.0.1:{port}").parse().expect("addr")
}

#[test]
fn plain_tcp_route_follows_the_table() {
    let strait = Strait::builder().start();
    let backend = Backend::start("raw");
    let addr = raw_tcp_route(&strait, &backend, "");
    eventually(
        Duration::from_secs(10),
        "TCP route to carry a request",
        || {
            let response = Client::new(addr)
                .get("anything", "/via-tcp")
                .map_err(|e| e.to_string())?;
            match response.backend() {
                Some(b) if b == "raw" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    assert_eq!(strait.delete("/v1/routes/raw").0, 204);
    eventually(
        Duration::from_secs(10),
        "the listener to close with its route",
        || match std::net::TcpStream::connect(addr) {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".to_string()),
        },
    );
}

/// A TCP route's `timeouts.idle`: a connection carrying traffic outlives it; one quiet
/// for that long is closed.
#[test]
fn tcp_route_idle_timeout_closes_quiet_connections() {
    use std::io::{Read, Write};
    let strait = Strait::builder().start();
    let backend = Backend::start("raw");
    let addr = raw_tcp_route(&strait, &backend, r#","timeouts":{"idle":"1s"}"#);
    eventually(Duration::from_secs(10), "the TCP listener", || {
        std::net::TcpStream::connect(addr)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let exchange = |stream: &mut std::net::TcpStream| {
        stream
            .write_all(b"GET /idle HTTP/1.1\r\nHost: raw\r\n\r\n")
            .expect("send");
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("response");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    };
    // Requests every 200 ms keep it open well past 1 s.
    for _ in 0..8 {
        exchange(&mut stream);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    assert!(
        matches!(read, Ok(0)),
        "the idle connection is still open: {read:?}"
    );
}

#[test]
fn tls_passthrough_by_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "ca");
    make_leaf(d, "ca", "a", &["a.example.com"]);
    make_leaf(d, "ca", "b", &["*.b.example.com"]);
    let (_a, a_port) = TlsServer::start(d, "a");
    let (_b, b_port) = TlsServer::start(d, "b");
    let strait = Strait::builder().start();
    strait.put(
        "/v1/services/tls-a/instances/a",
        &format!(r#"{{"address":"127.0.0.1","port":{a_port}}}"#),
    );
    strait.put(
        "/v1/services/tls-b/instances/b",
        &format!(r#"{{"address":"127.0.0.1","port":{b_port}}}"#),
    );
    let port = free_port();
    for (name, sni, service) in [
        ("a", "a.example.com", "tls-a"),
        ("b", "*.b.example.com", "tls-b"),
    ] {
        let (status, body) = strait.put(
            &format!("/v1/routes/{name}"),
            &format!(r#"{{"kind":"tcp","listen":"127.0.0.1:{port}","sni":"{sni}","service":"{service}"}}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    // Each name reaches the server holding its certificate (curl verifies it end to end:
    // strait never terminates the TLS).
    for name in ["a.example.com", "x.b.example.com"] {
        eventually(
            Duration::from_secs(10),
            &format!("{name} through SNI passthrough"),
            || {
                let (ok, _, stderr) = curl(d, "ca", name, port, &[]);
                if ok { Ok(()) } else { Err(stderr) }
            },
        );
    }
    let (ok, _, _) = curl(d, "ca", "other.example.com", port, &[]);
    assert!(!ok, "an unknown server name has no route");
}

/// Bulk both ways and half-close through a TCP route: the client sends 4 MiB and ends
/// its side; the backend reads to that end, answers with the count and 3 MiB, and closes.
/// Every byte arrives, in order, and each FIN is passed on.
#[test]
fn tcp_route_carries_bulk_data_and_half_close() {
    use std::io::{Read, Write};
    let strait = Strait::builder().start();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let backend_port = backend.local_addr().expect("addr").port();
    let served = std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut conn, _)) = backend.accept() else {
                return;
            };
            let mut received = Vec::new();
            if conn.read_to_end(&mut received).is_err() {
                continue;
            }
            let sum: u64 = received.iter().map(|&b| u64::from(b)).sum();
            let reply: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
            let _ = conn.write_all(format!("{} {sum}\n", received.len()).as_bytes());
            let _ = conn.write_all(&reply);
        }
    });
    strait.put(
        "/v1/services/bulk/instances/b1",
        &format!(r#"{{"address":"127.0.0.1","port":{backend_port}}}"#),
    );
    let port = free_port();
    let (status, body) = strait.put(
        "/v1/routes/bulk",
        &format!(r#"{{"kind":"tcp","listen":"127.0.0.1:{port}","service":"bulk"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let conn = eventually(Duration::from_secs(10), "the TCP route to listen", || {
        std::net::TcpStream::connect(addr).map_err(|e| e.to_string())
    });
    let mut conn = conn;
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let sent: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    let sum: u64 = sent.iter().map(|&b| u64::from(b)).sum();
    conn.write_all(&sent).expect("send 4 MiB");
    conn.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .expect("read to the backend's close");
    let newline = answer
        .iter()
        .position(|&b| b == b'\n')
        .expect("a count line");
    assert_eq!(
        String::from_utf8_lossy(&answer[..newline]),
        format!("{} {sum}", sent.len())
    );
    let reply = &answer[newline + 1..];
    assert_eq!(reply.len(), 3 << 20);
    assert!(
        reply.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "the reply arrived altered"
    );
    drop(conn);
    drop(strait);
    let _ = std::net::TcpStream::connect(("127.0.0.1", backend_port));
    served.join().expect("backend thread");
}

/// SIGTERM: a TCP route stops accepting, an open connection keeps working, and strait
/// exits as soon as it closes (the drain waits for TCP-route connections too).
#[test]
fn sigterm_drains_open_tcp_route_connections() {
    use std::io::{BufRead, BufReader, Write};
    let mut strait = Strait::builder().start();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let backend_port = backend.local_addr().expect("addr").port();
    // A line echo server.
    std::thread::spawn(move || {
        for conn in backend.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    if writeln!(writer, "echo {line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    strait.put(
        "/v1/services/echo/instances/e1",
        &format!(r#"{{"address":"127.0.0.1","port":{backend_port}}}"#),
    );
    let port = free_port();
    let (status, body) = strait.put(
        "/v1/routes/echo",
        &format!(r#"{{"kind":"tcp","listen":"127.0.0.1:{port}","service":"echo"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let conn = eventually(Duration::from_secs(10), "the TCP route to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = conn.try_clone().expect("clone");
    let mut reader = BufReader::new(conn);
    let mut ask = |text: &str| {
        writeln!(writer, "{text}").expect("write");
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        line
    };
    assert_eq!(ask("one"), "echo one\n");
    crate::harness::signal(strait.pid(), "TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ask("two"), "echo two\n", "the open connection is served on");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the TCP route still accepts after SIGTERM"
    );
    let closed = std::time::Instant::now();
    drop(writer);
    drop(reader);
    strait.stop();
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "strait waited {:?} after the last connection closed",
        closed.elapsed()
    );
}

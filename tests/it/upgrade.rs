//! `strait up --upgrade`: a second process takes over a running one's sockets,
//! instances and leases while clients keep using HTTP, a TCP route, DNS and the admin
//! API, and none of them sees a failure.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{Strait, StraitBuilder, dig, eventually, free_port, http, signal};
use crate::http::{Backend, Client};

struct Ports {
    http: u16,
    admin: u16,
    dns: u16,
    registry: u16,
}

fn on(ports: &Ports, data: &std::path::Path) -> StraitBuilder {
    let addr = |port: u16| format!("127.0.0.1:{port}");
    Strait::builder()
        .data_dir(data)
        .arg("--http-addr")
        .arg(addr(ports.http))
        .arg("--admin-addr")
        .arg(addr(ports.admin))
        .arg("--dns-addr")
        .arg(addr(ports.dns))
        .arg("--registry-addr")
        .arg(addr(ports.registry))
}

/// One request of a client loop.
type Probe = dyn Fn() -> Result<(), String> + Send;

/// Counts successes and records failures of one kind of client.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => self
                .failures
                .lock()
                .expect("lock")
                .push(format!("{what}: {e}")),
        }
    }
}

fn tcp_route_request(addr: SocketAddr) -> Result<(), String> {
    // A fresh connection each time: each is a new accept on the route's listener.
    match Client::new(addr).get("raw", "/via-tcp") {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("{} {}", r.status, r.text())),
        Err(e) => Err(e.to_string()),
    }
}

fn dns_query(port: u16) -> Result<(), String> {
    let text = dig(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &["+time=3", "+short", "web.service.strait", "A"],
    );
    if text.lines().any(|line| line == "127.0.0.1") {
        Ok(())
    } else {
        Err(format!("dig answered {text:?}"))
    }
}

fn renew(admin: u16, lease: &str) -> Result<(), String> {
    let send = || {
        ureq::put(&format!("http://127.0.0.1:{admin}/v1/leases/{lease}/renew"))
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .send_empty()
    };
    // The old process closes its idle keep-alive admin connections when it hands over; a
    // request sent on one just then meets the close unanswered. A renewal is idempotent,
    // so it is sent again on a new connection, as RFC 9112 §9.3.1 has clients do.
    let response = match send() {
        Err(ureq::Error::Io(_)) => send(),
        other => other,
    }
    .map_err(|e| e.to_string())?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(format!("renew answered {status}")),
    }
}

#[test]
fn upgrade_under_load_fails_nothing_and_keeps_registrations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ports = Ports {
        http: free_port(),
        admin: free_port(),
        dns: free_port(),
        registry: free_port(),
    };
    let mut old = on(&ports, &data).start();
    let a = Backend::start("a");
    let b = Backend::start("b");
    // `a` is this process's own; `b` is held by a lease, as a remote agent holds it.
    let (status, body) = old.put("/v1/services/web/instances/a", &a.instance());
    assert_eq!(status, 200, "{body}");
    let (status, lease) = http(&old, "POST", "/v1/leases", Some(r#"{"ttl":"5s"}"#), None);
    assert_eq!(status, 201, "{lease}");
    let lease = lease["id"].as_str().expect("lease id").to_string();
    let (status, body) = old.put(
        &format!("/v1/services/web/instances/b?lease={lease}"),
        &b.instance(),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = old.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let tcp_port = free_port();
    let (status, body) = old.put(
        "/v1/routes/raw",
        &format!(r#"{{"kind":"tcp","listen":"127.0.0.1:{tcp_port}","service":"web"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().expect("addr");
    let http_addr = old.http;
    eventually(Duration::from_secs(10), "the routes to serve", || {
        Client::new(http_addr)
            .get("web.example.com", "/")
            .map_err(|e| e.to_string())
            .and_then(|r| (r.status == 200).then_some(()).ok_or(r.text()))?;
        tcp_route_request(tcp_addr)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let keep_alive = Arc::new(Tally::default());
    let fresh = Arc::new(Tally::default());
    let tcp = Arc::new(Tally::default());
    let dns = Arc::new(Tally::default());
    let admin = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (stop, tally) = (Arc::clone(&stop), Arc::clone(&keep_alive));
        clients.push(std::thread::spawn(move || {
            let mut client = Client::new(http_addr);
            while !stop.load(Ordering::SeqCst) {
                let outcome = match client.get("web.example.com", "/") {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("{} {}", r.status, r.text())),
                    Err(e) => Err(e.to_string()),
                };
                tally.record("keep-alive GET", outcome);
            }
        }));
    }
    let loops: [(Arc<Tally>, Box<Probe>); 4] = [
        (
            Arc::clone(&fresh),
            Box::new(
                move || match Client::new(http_addr).get("web.example.com", "/") {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("{} {}", r.status, r.text())),
                    Err(e) => Err(e.to_string()),
                },
            ),
        ),
        (
            Arc::clone(&tcp),
            Box::new(move || tcp_route_request(tcp_addr)),
        ),
        (Arc::clone(&dns), Box::new(move || dns_query(ports.dns))),
        (
            Arc::clone(&admin),
            Box::new({
                let lease = lease.clone();
                move || renew(ports.admin, &lease)
            }),
        ),
    ];
    for (tally, request) in loops {
        let stop = Arc::clone(&stop);
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                tally.record("request", request());
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let new = on(&ports, &data).arg("--upgrade").start();
    let status = old.wait_for_exit(Duration::from_secs(40));
    assert!(status.success(), "old strait exited with {status}");
    let took = started.elapsed();
    // Traffic to the new process alone for a while.
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    for (what, tally, at_least) in [
        ("keep-alive HTTP", &keep_alive, 200),
        ("new-connection HTTP", &fresh, 50),
        ("TCP route", &tcp, 50),
        ("DNS", &dns, 20),
        ("admin lease renewal", &admin, 20),
    ] {
        let failures = tally.failures.lock().expect("lock");
        let ok = tally.ok.load(Ordering::SeqCst);
        assert!(
            failures.is_empty(),
            "{what}: {} failed of {}: {:?}\nold log:\n{}\nnew log:\n{}",
            failures.len(),
            ok + failures.len(),
            &failures[..failures.len().min(5)],
            old.log_text(),
            new.log_text()
        );
        assert!(ok >= at_least, "{what}: only {ok} requests");
        eprintln!("{what}: {ok} requests, none failed");
    }
    eprintln!("upgrade took {took:?} from start to the old process's exit");

    // The new process has everything: both instances, the lease, the store's lock.
    assert_eq!(new.instance_ids("web"), ["a", "b"]);
    renew(ports.admin, &lease).expect("the lease lives on in the new process");
    let (status, body) = new.put(
        "/v1/routes/web2",
        r#"{"host":"web2.example.com","service":"web"}"#,
    );
    assert_eq!(status, 200, "the new process owns the store: {body}");
    let pid = std::fs::read_to_string(data.join("strait.pid")).expect("pid file");
    assert_eq!(pid.trim(), new.pid().to_string());
    assert!(
        old.log_text()
            .contains("the new process has taken over; draining"),
        "{}",
        old.log_text()
    );
    // The lease still expires when its owner stops renewing: the reaper was handed over
    // with it.
    eventually(Duration::from_secs(15), "the lease to expire", || {
        let ids = new.instance_ids("web");
        (ids == ["a"]).then_some(()).ok_or(format!("{ids:?}"))
    });
}

/// A successor that connects and goes away without taking over: the running strait
/// takes everything back and goes on serving, its store writable.
#[test]
fn failed_upgrade_leaves_the_running_strait_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let strait = Strait::builder().data_dir(&data).start();
    let backend = Backend::start("web");
    let (status, body) = strait.put("/v1/services/web/instances/w1", &backend.instance());
    assert_eq!(status, 200, "{body}");
    let socket_path = std::fs::canonicalize(&data)
        .expect("data dir")
        .join("upgrade.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).expect("bind");
    signal(strait.pid(), "QUIT");
    listener.set_nonblocking(true).expect("nonblocking");
    let (mut conn, _) = eventually(Duration::from_secs(20), "the strait to connect", || {
        listener.accept().map_err(|e| e.to_string())
    });
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut some = [0u8; 64];
    let read = conn.read(&mut some).expect("read the hand-over");
    assert!(read > 0, "nothing was sent");
    drop(conn);
    drop(listener);
    eventually(Duration::from_secs(10), "the strait to serve on", || {
        let (status, body) = strait.put(
            "/v1/routes/web",
            r#"{"host":"web.example.com","service":"web"}"#,
        );
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    });
    assert_eq!(strait.instance_ids("web"), ["w1"]);
    let mut client = Client::new(strait.http);
    eventually(Duration::from_secs(10), "HTTP through the router", || {
        let r = client
            .get("web.example.com", "/")
            .map_err(|e| e.to_string())?;
        (r.status == 200).then_some(()).ok_or(r.text())
    });
    dns_query(strait.dns.port()).expect("DNS answers again");
    assert!(
        strait
            .log_text()
            .contains("the new process failed before taking over; serving on"),
        "{}",
        strait.log_text()
    );
}

/// A successor whose configuration is broken (here a certificate that does not load)
/// fails before it asks the running strait for anything: that one never hears of it.
#[test]
fn broken_successor_fails_before_touching_the_running_strait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let strait = Strait::builder().data_dir(&data).start();
    let stderr = Strait::builder()
        .data_dir(&data)
        .arg("--upgrade")
        .config("[[router.tls]]\naddr = \"127.0.0.1:0\"\ncertificates = [{ cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }]\n")
        .start_expecting_failure();
    assert!(
        stderr.contains("/nonexistent/c.pem: cannot read"),
        "{stderr}"
    );
    let pid = std::fs::read_to_string(data.join("strait.pid")).expect("pid file");
    assert_eq!(pid.trim(), strait.pid().to_string());
    let (status, body) = strait.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !strait.log_text().contains("upgrade"),
        "{}",
        strait.log_text()
    );
}

/// A keep-alive client that never retries: a request that fails, on a new connection or
/// a reused one, is a failure. It opens a connection at first and after the server said
/// `Connection: close`, never otherwise.
struct StrictClient {
    addr: SocketAddr,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
    /// Connections the server closed with `Connection: close`.
    closed_by_server: usize,
}

impl StrictClient {
    fn new(addr: SocketAddr) -> StrictClient {
        StrictClient {
            addr,
            conn: None,
            closed_by_server: 0,
        }
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> Result<(), String> {
        use std::io::Write;
        let reused = self.conn.is_some();
        if self.conn.is_none() {
            let stream =
                std::net::TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(std::io::BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: web.example.com\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = conn
            .get_mut()
            .write_all(request.as_bytes())
            .and_then(|()| crate::http::read_response(conn));
        let which = if reused { "reused" } else { "new" };
        match answer {
            Ok((response, keep)) => {
                if !keep {
                    self.conn = None;
                    self.closed_by_server += 1;
                }
                if response.status != 200 {
                    return Err(format!(
                        "{method} on a {which} connection: {}",
                        response.status
                    ));
                }
                let echoed = response.json()["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if echoed != body {
                    return Err(format!("{method}: the body came back as {echoed:?}"));
                }
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                Err(format!("{method} on a {which} connection: {e}"))
            }
        }
    }
}

/// Twenty binary upgrades in a row under keep-alive clients that never retry, GETs and
/// POSTs, some sending back to back, some pausing between requests: not one request
/// fails. The old process stops reading only at a request boundary, says
/// `Connection: close` on the last response of each connection, and closes an idle
/// connection only after a last wait for a request (issue 23, item 1).
#[test]
fn twenty_upgrades_fail_no_request_of_clients_that_never_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ports = Ports {
        http: free_port(),
        admin: free_port(),
        dns: free_port(),
        registry: free_port(),
    };
    let config = "[router]\ndrain_timeout = \"5s\"\n";
    let mut current = on(&ports, &data).config(config).start();
    let backend = Backend::start("web");
    let (status, body) = current.put("/v1/services/web/instances/a", &backend.instance());
    assert_eq!(status, 200, "{body}");
    let (status, body) = current.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let http_addr = current.http;
    eventually(Duration::from_secs(10), "the route to serve", || {
        StrictClient::new(http_addr).send("GET", "/", "")
    });

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let closes = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..8u64 {
        let (stop, tally, closes) = (Arc::clone(&stop), Arc::clone(&tally), Arc::clone(&closes));
        clients.push(std::thread::spawn(move || {
            let mut client = StrictClient::new(http_addr);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (method, body) = if (n + i).is_multiple_of(2) {
                    ("POST", format!("upload {i}-{n} {}", "x".repeat(512)))
                } else {
                    ("GET", String::new())
                };
                tally.record(method, client.send(method, "/", &body));
                // Half the clients pause between requests (0-60 ms), half send back to
                // back.
                if i % 2 == 1 {
                    std::thread::sleep(Duration::from_millis((n * 7 + i * 13) % 61));
                }
            }
            closes.fetch_add(client.closed_by_server, Ordering::SeqCst);
        }));
    }
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let mut old = Vec::new();
    for _ in 0..20 {
        let next = on(&ports, &data).config(config).arg("--upgrade").start();
        old.push(std::mem::replace(&mut current, next));
    }
    let upgrades_took = started.elapsed();
    for mut process in old {
        let status = process.wait_for_exit(Duration::from_secs(30));
        assert!(status.success(), "an old strait exited with {status}");
        assert!(
            process
                .log_text()
                .contains("the new process has taken over; draining"),
            "{}",
            process.log_text()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    let failures = tally.failures.lock().expect("lock");
    let ok = tally.ok.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across 20 upgrades: {:?}\nlast log:\n{}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)],
        current.log_text()
    );
    let closes = closes.load(Ordering::SeqCst);
    assert!(ok >= 1000, "only {ok} requests");
    assert!(
        closes >= 20,
        "the old processes ended their connections with `Connection: close` ({closes})"
    );
    eprintln!(
        "20 upgrades in {upgrades_took:?} (all old processes gone after {:?}): {ok} requests, \
         none failed; {closes} connections ended by `Connection: close`",
        started.elapsed()
    );
    assert_eq!(current.instance_ids("web"), ["a"]);
}

/// Idle keep-alive connections are parked without a task after a second; an upgrade
/// still treats them as the issue asks: one that sends a request during the drain is
/// answered (with `Connection: close`, by the old process), and one that sends nothing
/// is closed cleanly (end of stream, no reset) once `drain_keepalive` has passed.
#[test]
fn parked_connections_are_answered_or_closed_cleanly_across_an_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ports = Ports {
        http: free_port(),
        admin: free_port(),
        dns: free_port(),
        registry: free_port(),
    };
    let config = "[router]\ndrain_timeout = \"5s\"\ndrain_keepalive = \"2s\"\n";
    let current = on(&ports, &data).config(config).start();
    let backend = Backend::start("web");
    let (status, body) = current.put("/v1/services/web/instances/a", &backend.instance());
    assert_eq!(status, 200, "{body}");
    let (status, body) = current.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let http_addr = current.http;
    eventually(Duration::from_secs(10), "the route to serve", || {
        StrictClient::new(http_addr).send("GET", "/", "")
    });
    let mut talker = StrictClient::new(http_addr);
    let mut silent = StrictClient::new(http_addr);
    talker.send("GET", "/", "").expect("talker's first request");
    silent.send("GET", "/", "").expect("silent's first request");
    eventually(Duration::from_secs(10), "both connections parked", || {
        let parked = current
            .metric("strait_router_parked_connections")
            .unwrap_or(0.0);
        (parked >= 2.0)
            .then_some(())
            .ok_or(format!("{parked} parked"))
    });

    let mut old = current;
    let _next = on(&ports, &data).config(config).arg("--upgrade").start();
    // The drain begins once pingora has handed the listeners over.
    eventually(Duration::from_secs(20), "the old process draining", || {
        old.log_text()
            .contains("listeners handed over; draining")
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    talker
        .send("POST", "/", "during the drain")
        .expect("a parked connection's request during the drain");
    assert_eq!(
        talker.closed_by_server, 1,
        "answered with `Connection: close`"
    );
    // The silent one: closed by the old process at the drain's keep-alive deadline,
    // with a FIN (read gives 0), not a reset.
    let conn = silent.conn.as_mut().expect("still connected");
    conn.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let read = conn.get_mut().read(&mut byte);
    assert!(
        matches!(read, Ok(0)),
        "the idle connection ended with {read:?}, not a clean close"
    );
    let status = old.wait_for_exit(Duration::from_secs(30));
    assert!(status.success(), "the old strait exited with {status}");
}

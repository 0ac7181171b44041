//! Test fixtures for the router: real HTTP/1.1 backends (std threads, keep-alive) and a
//! small raw HTTP/1.1 client that lets tests send exactly the bytes they mean to.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// A backend that answers every request with JSON naming itself and echoing the request.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    /// Status to answer with (200 by default; 0 closes the connection unanswered).
    status: Arc<AtomicU16>,
    /// Delay before answering, in ms.
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let backend = Backend {
            name: name.to_string(),
            addr,
            served: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
            stop: Arc::default(),
            connections: Arc::default(),
        };
        let (name, served, status, delay, stop, connections) = (
            backend.name.clone(),
            Arc::clone(&backend.served),
            Arc::clone(&backend.status),
            Arc::clone(&backend.delay_ms),
            Arc::clone(&backend.stop),
            Arc::clone(&backend.connections),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    connections.lock().expect("lock").push(clone);
                }
                let (name, served, status, delay) = (
                    name.clone(),
                    Arc::clone(&served),
                    Arc::clone(&status),
                    Arc::clone(&delay),
                );
                std::thread::spawn(move || {
                    serve_connection(stream, &name, &served, &status, &delay)
                });
            }
        });
        backend
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.connections.lock().expect("lock").len()
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Registration body for this backend.
    pub fn instance(&self) -> String {
        format!(r#"{{"address":"127.0.0.1","port":{}}}"#, self.addr.port())
    }

    /// Stops accepting and closes every open connection (a crashed instance).
    pub fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for c in self.connections.lock().expect("lock").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve_connection(
    stream: TcpStream,
    name: &str,
    served: &AtomicUsize,
    status: &AtomicU16,
    delay: &AtomicU64,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers
                    .entry(k.trim().to_ascii_lowercase())
                    .and_modify(|e: &mut String| {
                        e.push_str(", ");
                        e.push_str(v.trim());
                    })
                    .or_insert_with(|| v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        served.fetch_add(1, Ordering::SeqCst);
        if headers
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            // Switch protocols, then echo every byte (enough of WebSocket for a proxy test).
            let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            if writer.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if writer.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
        let wait = delay.load(Ordering::SeqCst);
        if wait > 0 {
            std::thread::sleep(Duration::from_millis(wait));
        }
        let code = status.load(Ordering::SeqCst);
        if code == 0 {
            // A crashing instance: the connection closes with no answer (shut down, as
            // `connections` holds a clone that would keep it open).
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
        let reply = json!({
            "backend": name,
            "method": method,
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\nx-backend: {name}\r\nx-internal: secret\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A response read by [`Client`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Which backend answered (from the echo), if one did.
    pub fn backend(&self) -> Option<String> {
        self.json()["backend"].as_str().map(str::to_string)
    }
}

/// A keep-alive HTTP/1.1 client over one TCP connection (reconnects when closed).
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<Response> {
        self.request("GET", host, path, &[], b"")
    }

    /// The local address of the connection it holds, if any (to tell a reused
    /// connection from a new one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.conn.as_ref()?.get_ref().local_addr().ok()
    }

    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        // One retry on a connection the server closed while idle.
        match self.round_trip(&bytes) {
            Err(_) if self.conn.is_none() => self.round_trip(&bytes),
            other => other,
        }
    }

    fn round_trip(&mut self, bytes: &[u8]) -> std::io::Result<Response> {
        let fresh = self.conn.is_none();
        if fresh {
            let stream = TcpStream::connect(self.addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected");
        let result = conn
            .get_mut()
            .write_all(bytes)
            .and_then(|()| read_response(conn));
        match result {
            Ok((response, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.conn = None;
                if fresh {
                    Err(e)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        e.to_string(),
                    ))
                }
            }
        }
    }
}

/// Reads one response; returns it and whether the connection stays open.
pub fn read_response(conn: &mut BufReader<TcpStream>) -> std::io::Result<(Response, bool)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut status_line = String::new();
    if conn.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if let Some(length) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(length, 0);
        conn.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        conn.read_to_end(&mut body)?;
        return Ok((
            Response {
                status,
                headers,
                body,
            },
            false,
        ));
    }
    let keep = !headers
        .get("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep,
    ))
}

/// Sends raw bytes on a new connection and reads one response (or `None` if the server
/// closed without answering).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream.write_all(bytes).ok()?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader).ok().map(|(r, _)| r)
}

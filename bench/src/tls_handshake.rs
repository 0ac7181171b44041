//! `tls-handshake`: a fresh TLS 1.3 connection per request (ECDSA P-256 certificate,
//! X25519 key exchange), one `GET` on it, closed; with full handshakes and, in the
//! `resumed` rows, with each connection resuming a session ticket an earlier one got.
//! The client is rustls on [`CLIENTS`] threads. It checks the server's handshake
//! signature but not its certificate chain (the benchmark's own self-signed certificate),
//! which keeps the client's share of the two cores small and the same for every peer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme};

use crate::Sample;

/// Concurrent client threads: enough to keep a one-worker server busy between the
/// client's own handshakes.
const CLIENTS: usize = 16;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.example.com\r\nConnection: close\r\n\r\n";

/// Accepts the benchmark's certificate without a chain; checks every signature.
#[derive(Debug)]
struct SignaturesOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignaturesOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(resume: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut provider = rustls::crypto::ring::default_provider();
    // X25519, as every peer prefers it; no hybrid post-quantum group (OpenSSL 3.0 has none).
    provider
        .kx_groups
        .retain(|group| group.name() == rustls::NamedGroup::X25519);
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignaturesOnly(provider)))
        .with_no_client_auth();
    config.resumption = if resume {
        Resumption::in_memory_sessions(4)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// One connection: handshake, request, the whole response, close. Returns whether the
/// handshake resumed a session.
fn one(port: u16, config: &Arc<rustls::ClientConfig>) -> anyhow::Result<bool> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("bench.example.com")?;
    let conn = rustls::ClientConnection::new(Arc::clone(config), name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(REQUEST)?;
    let mut response = Vec::with_capacity(512);
    // `Connection: close`: the response ends with the connection (a peer may skip the
    // TLS close_notify: that is the end too).
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    if !response.starts_with(b"HTTP/1.1 200") {
        anyhow::bail!(
            "answered {:?}",
            String::from_utf8_lossy(&response[..response.len().min(40)])
        );
    }
    Ok(tls.conn.handshake_kind() == Some(HandshakeKind::Resumed))
}

/// Connections per second to `port` for `seconds`, with per-connection latency
/// percentiles. With `resume`, fails unless most handshakes resumed.
pub fn run(port: u16, seconds: u64, resume: bool) -> anyhow::Result<Sample> {
    // A config, and so a ticket cache, per client thread, as a client that reconnects
    // keeps its own; a first connection fills each.
    let configs = (0..CLIENTS)
        .map(|_| {
            let config = client_config(resume)?;
            one(port, &config).context("the first TLS connection")?;
            Ok(config)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let threads: Vec<_> = configs
        .into_iter()
        .map(|config| {
            let (stop, errors, resumed, latencies, first_error) = (
                Arc::clone(&stop),
                Arc::clone(&errors),
                Arc::clone(&resumed),
                Arc::clone(&latencies),
                Arc::clone(&first_error),
            );
            std::thread::spawn(move || {
                let mut mine = Vec::with_capacity(64 * 1024);
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    match one(port, &config) {
                        Ok(was_resumed) => {
                            mine.push(at.elapsed().as_secs_f64() * 1000.0);
                            if was_resumed {
                                resumed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_by(f64::total_cmp);
    let requests = latencies.len() as u64;
    if requests == 0 {
        anyhow::bail!(
            "no TLS connection to port {port} succeeded: {:?}",
            first_error.lock().unwrap_or_else(|p| p.into_inner())
        );
    }
    let resumed = resumed.load(Ordering::Relaxed);
    if resume && resumed * 10 < requests * 9 {
        anyhow::bail!("port {port} resumed only {resumed} of {requests} handshakes");
    }
    if !resume && resumed > 0 {
        anyhow::bail!("port {port} resumed {resumed} handshakes with resumption off");
    }
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok(Sample {
        rps: requests as f64 / elapsed,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        errors: errors.load(Ordering::Relaxed),
        requests,
        mb_s: 0.0,
    })
}

//! The access log: one JSON line per request, written by a thread of its own.
//!
//! The request path only fills a small record and `try_send`s it on a bounded channel;
//! if the writer falls behind, records are dropped and counted
//! (`strait_router_access_log_dropped_total`) rather than slowing requests down.

use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use prometheus::IntCounter;
use serde::Serialize;
use tracing::warn;

use crate::config::AccessLogTarget;

const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// Unix time in milliseconds when the request head arrived.
    pub time_ms: u128,
    pub client: Option<IpAddr>,
    pub method: String,
    /// Downstream protocol: `1.1` or `2`.
    pub http: &'static str,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub duration_ms: f64,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
    pub request_id: Option<String>,
    pub bytes_sent: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct AccessLog {
    sender: SyncSender<Entry>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(target: &AccessLogTarget, dropped: IntCounter) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::Stderr => Box::new(std::io::stderr()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("access log {}: {e}", path.display()))
                    })?,
            ),
        };
        let (sender, receiver) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("strait-access-log".into())
            .spawn(move || write_loop(receiver, BufWriter::new(out)))?;
        Ok(AccessLog { sender, dropped })
    }

    /// Queues an entry; never blocks.
    pub fn log(&self, entry: Entry) {
        match self.sender.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_loop(receiver: Receiver<Entry>, mut out: BufWriter<Box<dyn Write + Send>>) {
    while let Ok(entry) = receiver.recv() {
        let mut batch = vec![entry];
        batch.extend(receiver.try_iter().take(1024));
        for entry in batch {
            if serde_json::to_writer(&mut out, &entry).is_err() || out.write_all(b"\n").is_err() {
                warn!("access log write failed");
            }
        }
        // Flush whenever the queue is drained, so lines appear promptly when idle.
        let _ = out.flush();
    }
}

pub fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

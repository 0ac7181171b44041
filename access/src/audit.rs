//! The audit log: every write to the admin API and every push and delete to the registry
//! (and every one refused), who made it (identity, token id, teams), what it did (method,
//! path, object), the store revision before and after (admin API writes), and the result.
//! Appended as JSON lines to a file (one `write` per record, so lines never interleave)
//! and kept in memory, the newest [`KEPT`], for `GET /v1/audit?since=`. A log that cannot
//! be written is warned about, and the write itself still answers: the audit never takes
//! the API down.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Records kept in memory.
pub const KEPT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Increasing within the log (across restarts: continued from the file).
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub time: SystemTime,
    /// The identity's label: `admin-token`, `token:<id>`, `user:<name>`, `anonymous`;
    /// the registry's also `invalid-credentials` and `unverified:<name>`.
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `admin`, or the identity's teams.
    pub teams: String,
    pub method: String,
    pub path: String,
    /// What was written: `route web`, `instance web/web-1`, `app web`…; in the registry
    /// `manifest web/app:v1`, `manifest web/app@<digest>`, `blob web/app@<digest>`.
    pub object: String,
    /// The store's revisions (0 for the registry, which has none).
    pub revision_before: u64,
    pub revision_after: u64,
    pub status: u16,
    /// `ok`, `denied` or `error`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
    kept: Mutex<VecDeque<AuditRecord>>,
    next: AtomicU64,
}

impl AuditLog {
    /// Opens (creating) the log at `path` and reads back its newest records.
    pub fn open(path: &Path) -> Result<AuditLog, std::io::Error> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut kept = VecDeque::new();
        if let Ok(file) = File::open(path) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                // A torn last line (a crash mid-write) or garbage is skipped.
                if let Ok(record) = serde_json::from_str::<AuditRecord>(&line) {
                    if kept.len() == KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(record);
                }
            }
        }
        let next = kept.back().map_or(1, |r: &AuditRecord| r.seq + 1);
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(Some(file)),
            kept: Mutex::new(kept),
            next: AtomicU64::new(next),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record (its `seq` and `time` are set here) and returns it. Numbered,
    /// written and kept under one lock, so the file and `query` see records in `seq`
    /// order (a reader polling `since=<seq>` never skips one).
    pub fn append(&self, mut record: AuditRecord) -> AuditRecord {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        record.seq = self.next.fetch_add(1, Ordering::Relaxed);
        record.time = SystemTime::now();
        match serde_json::to_vec(&record) {
            Ok(mut line) => {
                line.push(b'\n');
                let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(f) = file.as_mut()
                    && let Err(e) = f.write_all(&line)
                {
                    warn!(path = %self.path.display(), error = %e, "cannot write the audit log");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode an audit record"),
        }
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(record.clone());
        record
    }

    /// Records after sequence number `after_seq`, or at or after `since`, oldest first,
    /// at most `limit`.
    pub fn query(
        &self,
        after_seq: Option<u64>,
        since: Option<SystemTime>,
        limit: usize,
    ) -> Vec<AuditRecord> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .filter(|r| after_seq.is_none_or(|s| r.seq > s))
            .filter(|r| since.is_none_or(|t| r.time >= t))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> AuditRecord {
        AuditRecord {
            seq: 0,
            time: SystemTime::UNIX_EPOCH,
            who: "token:0123456789abcdef".into(),
            token: Some("0123456789abcdef".into()),
            teams: "web".into(),
            method: "PUT".into(),
            path: path.into(),
            object: "route web".into(),
            revision_before: 1,
            revision_after: 2,
            status: 200,
            result: "ok".into(),
            message: None,
        }
    }

    #[test]
    fn records_survive_a_restart_and_are_queried_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        {
            let log = AuditLog::open(&path).expect("open");
            log.append(record("/v1/routes/a"));
            log.append(record("/v1/routes/b"));
        }
        // A torn line at the end, as a crash would leave.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"{\"seq\":3,\"ti").expect("write");
        let log = AuditLog::open(&path).expect("reopen");
        let third = log.append(record("/v1/routes/c"));
        assert_eq!(third.seq, 3);
        let all: Vec<String> = log
            .query(None, None, 100)
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(all, ["/v1/routes/a", "/v1/routes/b", "/v1/routes/c"]);
        assert_eq!(log.query(Some(2), None, 100).len(), 1);
        assert_eq!(log.query(None, None, 1).len(), 1);
    }
}

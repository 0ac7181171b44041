//! The embedded store's routes on disk: a snapshot file plus an append-only log.
//!
//! * `routes.json`: every route as of a revision (`{"format":1,"revision":N,"routes":{}}`),
//!   replaced atomically (temporary file, fsync, rename, fsync of the directory).
//! * `routes.log`: one line per route write since: `<crc32, 8 hex digits> <json>\n`, the
//!   JSON `{"revision":N,"op":{"put":{"name":..,"route":{..}}}}` or `{..,"op":{"delete":
//!   {"name":..}}}`. A write appends its line and `fdatasync`s before it is applied, so an
//!   acknowledged write survives a crash; that is one small write and one sync, where
//!   rewriting the whole file cost a file creation, a rename and two syncs, and grew
//!   with the number of routes.
//!
//! When the log outgrows the snapshot it is folded into a new `routes.json` and emptied.
//! A crash between the two leaves records the snapshot already holds; loading skips
//! records whose revision the snapshot covers. Only the last line can be torn by a crash
//! (a write is acknowledged after its sync, and the next one starts after that): loading
//! drops a torn last line. A bad line anywhere else is corruption: loading stops with an
//! error naming the file and line, and the file is left as it is for the operator.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::Route;
use crate::snapshot::{self, RouteMap};

pub const ROUTES_FILE: &str = "routes.json";
pub const LOG_FILE: &str = "routes.log";
const FORMAT: u32 = 1;
/// The log is folded into the snapshot once it is larger than this and than the snapshot.
const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// `routes.json`. Read as owned routes; written from the live map (same JSON, no copy).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile<Routes> {
    format: u32,
    revision: u64,
    routes: Routes,
}

/// A route write, as the log records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteOp {
    Put { name: String, route: Box<Route> },
    Delete { name: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogRecord<Op> {
    revision: u64,
    op: Op,
}

impl RouteOp {
    /// Applies the write to `routes`; false when it changes nothing.
    pub fn apply(self, routes: &mut Arc<RouteMap>) -> bool {
        match self {
            RouteOp::Put { name, route } => snapshot::upsert_route(routes, &name, *route),
            RouteOp::Delete { name } => snapshot::remove_route(routes, &name),
        }
    }

    /// Whether applying it to `routes` would change anything.
    pub fn changes(&self, routes: &RouteMap) -> bool {
        match self {
            RouteOp::Put { name, route } => {
                routes.get(name.as_str()).map(|r| r.as_ref()) != Some(&**route)
            }
            RouteOp::Delete { name } => routes.contains_key(name.as_str()),
        }
    }
}

pub(super) fn storage_error(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("{}: {what}: {e}", path.display()))
}

/// The routes read from a data directory, and the log to append to.
pub struct Loaded {
    pub routes: Arc<RouteMap>,
    pub revision: u64,
    pub log: RouteLog,
}

/// The open log. Route writes are serialised by the store, so this is used by one at a time.
pub struct RouteLog {
    dir: PathBuf,
    file: File,
    /// Bytes of whole records in the log: where the next one starts.
    len: u64,
    /// Size of the last snapshot written or read, to decide when to fold the log into it.
    snapshot_len: u64,
    /// Compact once the log is larger than this and than the snapshot.
    compact_min: u64,
    /// A failed append could not be cut off again: the log's tail is unknown, so the next
    /// write rewrites the snapshot and starts an empty log instead of appending.
    needs_snapshot: bool,
}

/// Reads `routes.json` and replays `routes.log` over it; drops a torn last log line.
pub fn load(dir: &Path) -> Result<Loaded, StoreError> {
    let path = dir.join(ROUTES_FILE);
    let mut routes = RouteMap::new();
    let mut revision = 0;
    let mut snapshot_len = 0;
    match fs::read(&path) {
        Ok(bytes) => {
            snapshot_len = bytes.len() as u64;
            let file: RoutesFile<BTreeMap<String, Route>> = serde_json::from_slice(&bytes)
                .map_err(|e| {
                    storage_error(
                        &path,
                        "corrupt routes file (not replaced; fix or move it)",
                        e,
                    )
                })?;
            if file.format != FORMAT {
                return Err(storage_error(&path, "unsupported format", file.format));
            }
            for (name, mut route) in file.routes {
                crate::model::validate_id("route name", &name)
                    .and_then(|()| route.validate())
                    .map_err(|e| storage_error(&path, &format!("route `{name}` is invalid"), e))?;
                routes.insert(Arc::from(name.as_str()), Arc::new(route));
            }
            revision = file.revision;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(storage_error(&path, "cannot read", e)),
    }
    // A temporary file left by a crash mid-write is garbage: the rename never happened.
    let _ = fs::remove_file(dir.join(format!("{ROUTES_FILE}.tmp")));

    let log_path = dir.join(LOG_FILE);
    let file = File::options()
        .read(true)
        .append(true)
        .create(true)
        .open(&log_path)
        .map_err(|e| storage_error(&log_path, "cannot open", e))?;
    // The file's directory entry must be durable before a record in it counts (a crash
    // may have come between its creation and a sync); once per start.
    sync_dir(dir)?;
    let mut bytes = Vec::new();
    (&file)
        .read_to_end(&mut bytes)
        .map_err(|e| storage_error(&log_path, "cannot read", e))?;
    let mut routes = Arc::new(routes);
    let mut good = 0usize;
    let mut lines = bytes
        .split_inclusive(|b| *b == b'\n')
        .enumerate()
        .peekable();
    while let Some((index, line)) = lines.next() {
        let last = lines.peek().is_none();
        match parse_record(line) {
            Ok(LogRecord {
                revision: record_revision,
                mut op,
            }) => {
                if record_revision > revision {
                    if let RouteOp::Put { name, route } = &mut op {
                        crate::model::validate_id("route name", name)
                            .and_then(|()| route.validate())
                            .map_err(|e| {
                                storage_error(
                                    &log_path,
                                    &format!("line {}: route `{name}` is invalid", index + 1),
                                    e,
                                )
                            })?;
                    }
                    revision = record_revision;
                    op.apply(&mut routes);
                }
                good += line.len();
            }
            Err(why) if last => {
                tracing::warn!(
                    path = %log_path.display(),
                    line = index + 1,
                    "dropping a torn last record of the routes log ({why}): a write cut off by a crash, never acknowledged"
                );
                file.set_len(good as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| storage_error(&log_path, "cannot cut off a torn record", e))?;
            }
            Err(why) => {
                return Err(storage_error(
                    &log_path,
                    &format!(
                        "corrupt routes log at line {} (not replaced; fix or move it)",
                        index + 1
                    ),
                    why,
                ));
            }
        }
    }
    Ok(Loaded {
        routes,
        revision,
        log: RouteLog {
            dir: dir.to_path_buf(),
            file,
            len: good as u64,
            snapshot_len,
            compact_min: COMPACT_MIN_BYTES,
            needs_snapshot: false,
        },
    })
}

fn parse_record(line: &[u8]) -> Result<LogRecord<RouteOp>, String> {
    let Some(line) = line.strip_suffix(b"\n") else {
        return Err("no end of line".into());
    };
    let (crc, json) = match (line.get(..8), line.get(8), line.get(9..)) {
        (Some(crc), Some(b' '), Some(json)) => (crc, json),
        _ => return Err("no checksum".into()),
    };
    let crc = std::str::from_utf8(crc)
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or("bad checksum field")?;
    if crc32fast::hash(json) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

impl RouteLog {
    /// Makes `op` durable as the write of `revision`. `routes` is the state it applies to,
    /// for when the log is folded into a new snapshot instead.
    pub fn append(
        &mut self,
        revision: u64,
        op: &RouteOp,
        routes: &Arc<RouteMap>,
    ) -> Result<(), StoreError> {
        if self.needs_snapshot {
            let mut next = Arc::clone(routes);
            op.clone().apply(&mut next);
            return self.write_snapshot(revision, &next);
        }
        let json = serde_json::to_vec(&LogRecord { revision, op })
            .map_err(|e| storage_error(&self.path(), "encode", e))?;
        let mut line = Vec::with_capacity(json.len() + 10);
        line.extend_from_slice(format!("{:08x} ", crc32fast::hash(&json)).as_bytes());
        line.extend_from_slice(&json);
        line.push(b'\n');
        let written = (&self.file)
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut the partial record off, so the next one does not follow garbage. If
            // even that fails, the next write starts a new snapshot and an empty log.
            if self.file.set_len(self.len).is_err() {
                self.needs_snapshot = true;
            }
            return Err(storage_error(&self.path(), "append", e));
        }
        self.len += line.len() as u64;
        Ok(())
    }

    /// After `append`: folds the log into a new snapshot (`routes` with `op` applied) once
    /// it has outgrown the last one. A failure leaves the log as it is (it is still
    /// complete) and is only logged.
    pub fn maybe_compact(&mut self, revision: u64, routes: &Arc<RouteMap>, op: &RouteOp) {
        if self.len < self.compact_min.max(self.snapshot_len) {
            return;
        }
        let mut next = Arc::clone(routes);
        op.clone().apply(&mut next);
        if let Err(e) = self.write_snapshot(revision, &next) {
            tracing::warn!(error = %e, "could not fold the routes log into routes.json; appending on");
        }
    }

    /// Folds a non-empty log into the snapshot now (shutdown, hand-over). A failure is
    /// only logged: the log still holds everything.
    pub fn fold(&mut self, revision: u64, routes: &RouteMap) {
        if self.len == 0 && !self.needs_snapshot {
            return;
        }
        if let Err(e) = self.write_snapshot(revision, routes) {
            tracing::warn!(error = %e, "could not fold the routes log into routes.json");
        }
    }

    /// Writes `routes` at `revision` as the snapshot, then empties the log.
    fn write_snapshot(&mut self, revision: u64, routes: &RouteMap) -> Result<(), StoreError> {
        let file = RoutesFile {
            format: FORMAT,
            revision,
            routes,
        };
        self.snapshot_len = persist_snapshot(&self.dir, &file)?;
        // The snapshot holds every record now; one left behind by a crash here is skipped
        // on load by its revision.
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| storage_error(&self.path(), "empty after snapshot", e))?;
        self.len = 0;
        self.needs_snapshot = false;
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_error(dir, "fsync directory", e))
}

/// Replaces `routes.json` atomically; returns its size.
fn persist_snapshot(dir: &Path, file: &RoutesFile<&RouteMap>) -> Result<u64, StoreError> {
    let path = dir.join(ROUTES_FILE);
    let tmp = dir.join(format!("{ROUTES_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| storage_error(&path, "encode", e))?;
    let mut out = File::create(&tmp).map_err(|e| storage_error(&tmp, "create", e))?;
    out.write_all(&bytes)
        .map_err(|e| storage_error(&tmp, "write", e))?;
    out.sync_all()
        .map_err(|e| storage_error(&tmp, "fsync", e))?;
    drop(out);
    fs::rename(&tmp, &path).map_err(|e| storage_error(&path, "rename", e))?;
    sync_dir(dir)?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(name: &str, host: &str) -> RouteOp {
        RouteOp::Put {
            name: name.into(),
            route: Box::new(Route::http(host, "web")),
        }
    }

    /// Appends `ops` as consecutive revisions after what `dir` holds; returns the routes.
    fn write(dir: &Path, ops: Vec<RouteOp>) -> Arc<RouteMap> {
        write_compacting_at(dir, ops, COMPACT_MIN_BYTES)
    }

    fn write_compacting_at(dir: &Path, ops: Vec<RouteOp>, compact_min: u64) -> Arc<RouteMap> {
        let Loaded {
            mut routes,
            mut revision,
            mut log,
        } = load(dir).expect("load");
        log.compact_min = compact_min;
        for op in ops {
            revision += 1;
            log.append(revision, &op, &routes).expect("append");
            log.maybe_compact(revision, &routes, &op);
            op.apply(&mut routes);
        }
        routes
    }

    fn hosts(routes: &RouteMap) -> Vec<(String, String)> {
        routes
            .iter()
            .map(|(name, route)| (name.to_string(), route.host.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn writes_replay_in_order_across_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), vec![put("a", "a.test"), put("b", "b.test")]);
        write(
            dir.path(),
            vec![
                RouteOp::Delete { name: "a".into() },
                put("b", "b2.test"),
                put("c", "c.test"),
            ],
        );
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.revision, 5);
        assert_eq!(
            hosts(&loaded.routes),
            [
                ("b".into(), "b2.test".into()),
                ("c".into(), "c.test".into())
            ]
        );
        assert!(
            !dir.path().join(ROUTES_FILE).exists(),
            "a short log is not folded into a snapshot"
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_appending_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), vec![put("a", "a.test"), put("b", "b.test")]);
        let log_path = dir.path().join(LOG_FILE);
        let whole = fs::read(&log_path).expect("read");
        // A crash in the middle of the third append.
        let mut torn = whole.clone();
        torn.extend_from_slice(b"0badc0de {\"revision\":3,\"op\":{\"put\":{\"na");
        fs::write(&log_path, &torn).expect("write");
        let loaded = load(dir.path()).expect("a torn tail is not corruption");
        assert_eq!(loaded.revision, 2);
        assert_eq!(fs::read(&log_path).expect("read"), whole, "cut back");
        drop(loaded);
        write(dir.path(), vec![put("c", "c.test")]);
        assert_eq!(load(dir.path()).expect("load").routes.len(), 3);
    }

    #[test]
    fn a_bad_record_before_the_last_is_corruption_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            vec![put("a", "a.test"), put("b", "b.test"), put("c", "c.test")],
        );
        let log_path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log_path).expect("read");
        // Flip a byte inside the first record's JSON: its checksum no longer matches.
        let at = bytes
            .windows(6)
            .position(|w| w == b"a.test")
            .expect("first record");
        bytes[at] = b'x';
        fs::write(&log_path, &bytes).expect("write");
        let error = load(dir.path()).err().expect("corruption is refused");
        let text = error.to_string();
        assert!(
            text.contains("routes.log") && text.contains("line 1") && text.contains("checksum"),
            "{text}"
        );
        assert_eq!(fs::read(&log_path).expect("read"), bytes, "not touched");
    }

    #[test]
    fn a_long_log_is_folded_into_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        // ~150-byte records against a 16 KiB threshold: folded every ~100 writes.
        let ops = (0..1200)
            .map(|i| put(&format!("r{}", i % 7), &format!("host-{i}.test")))
            .collect();
        let routes = write_compacting_at(dir.path(), ops, 16 << 10);
        let log_len = fs::metadata(dir.path().join(LOG_FILE)).expect("log").len();
        assert!(
            dir.path().join(ROUTES_FILE).exists(),
            "a snapshot was written"
        );
        assert!(log_len < 16 << 10, "the log was emptied: {log_len}");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.revision, 1200);
        assert_eq!(hosts(&loaded.routes), hosts(&routes));
    }

    #[test]
    fn records_the_snapshot_already_holds_are_skipped() {
        // A crash after the snapshot was written and before the log was emptied. The
        // snapshot names another host than the log's records, so replaying them would show.
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), vec![put("a", "a.test"), put("a", "a2.test")]);
        let mut routes = RouteMap::new();
        routes.insert(
            Arc::from("a"),
            Arc::new(Route::http("snapshot.test", "web")),
        );
        let snapshot = RoutesFile {
            format: FORMAT,
            revision: 2,
            routes: &routes,
        };
        persist_snapshot(dir.path(), &snapshot).expect("snapshot");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.revision, 2);
        assert_eq!(
            hosts(&loaded.routes),
            [("a".into(), "snapshot.test".into())]
        );
        drop(loaded);
        write(dir.path(), vec![RouteOp::Delete { name: "a".into() }]);
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.revision, 3);
        assert!(loaded.routes.is_empty(), "{:?}", hosts(&loaded.routes));
    }
}

//! The local cache: content-addressed blobs and two small maps.
//!
//! ```text
//! <cache>/blobs/sha256/<hex>              compressed layers, configs, manifests, base blobs
//! <cache>/stat/<stat key hex>             diff_id of the tar built from files with those stamps
//! <cache>/compressed/<compression id>/<diff_id hex>   "<digest> <size>" of that tar compressed
//! <cache>/tmp/                            blobs being written (renamed into place when whole)
//! ```
//!
//! Every write is a temp file renamed into place, so concurrent builds and crashes leave
//! only whole entries. An entry naming a blob that is gone is a miss.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingWriter};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {}: {error}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("no cache directory: set --cache-dir, STRAIT_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoDir,
    #[error("{what}: expected {expected}, got {actual} ({size} bytes)")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
        size: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |error| CacheError::Io {
        path: path.to_path_buf(),
        error,
    }
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// `--cache-dir`, else `$STRAIT_CACHE_DIR`, else `$XDG_CACHE_HOME/strait`, else
/// `~/.cache/strait`.
pub fn default_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    let env = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("STRAIT_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("strait")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("strait")))
}

impl Cache {
    pub fn open(explicit: Option<&Path>) -> Result<Cache, CacheError> {
        let root = default_dir(explicit).ok_or(CacheError::NoDir)?;
        for sub in ["blobs/sha256", "stat", "compressed", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is here (with this size, when given).
    pub fn has_blob(&self, digest: &Digest, size: Option<u64>) -> bool {
        fs::metadata(self.blob_path(digest))
            .is_ok_and(|m| m.is_file() && size.is_none_or(|s| s == m.len()))
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64), CacheError> {
        let mut writer = self.blob_writer()?;
        writer.write_all(bytes).map_err(io_err(&self.root))?;
        writer.commit(None)
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, CacheError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(io_err(&path))
    }

    /// A writer for a new blob; `commit` names it by its digest.
    pub fn blob_writer(&self) -> Result<BlobWriter, CacheError> {
        let dir = self.root.join("tmp");
        let file = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        let handle = file.reopen().map_err(io_err(&dir))?;
        let syncer = file.reopen().map_err(io_err(&dir))?;
        Ok(BlobWriter {
            cache: self.clone(),
            temp: file,
            out: HashingWriter::new(BufWriter::with_capacity(1 << 20, handle)),
            writeback: Writeback {
                file: std::sync::Arc::new(syncer),
                unsynced: 0,
                running: None,
            },
        })
    }

    /// The diff_id recorded for a [`crate::tar::stat_key`].
    pub fn stat_diff_id(&self, key: &Digest) -> Option<Digest> {
        let text = fs::read_to_string(self.root.join("stat").join(key.hex())).ok()?;
        Digest::parse(text.trim()).ok()
    }

    pub fn set_stat_diff_id(&self, key: &Digest, diff_id: &Digest) -> Result<(), CacheError> {
        self.write_record(&self.root.join("stat").join(key.hex()), diff_id.as_str())
    }

    /// Whether any layer compressed by `compression_id` is recorded: if none is, no layer
    /// can be found by its content, and hashing one before building it is wasted.
    pub fn holds_compressed(&self, compression_id: &str) -> bool {
        fs::read_dir(self.root.join("compressed").join(compression_id))
            .is_ok_and(|mut entries| entries.next().is_some())
    }

    /// The compressed blob of `diff_id` made by `compression_id`, if it is still here.
    pub fn compressed(&self, compression_id: &str, diff_id: &Digest) -> Option<(Digest, u64)> {
        let path = self
            .root
            .join("compressed")
            .join(compression_id)
            .join(diff_id.hex());
        let text = fs::read_to_string(path).ok()?;
        let (digest, size) = text.trim().split_once(' ')?;
        let digest = Digest::parse(digest).ok()?;
        let size = size.parse().ok()?;
        self.has_blob(&digest, Some(size)).then_some((digest, size))
    }

    pub fn set_compressed(
        &self,
        compression_id: &str,
        diff_id: &Digest,
        digest: &Digest,
        size: u64,
    ) -> Result<(), CacheError> {
        let dir = self.root.join("compressed").join(compression_id);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        self.write_record(&dir.join(diff_id.hex()), &format!("{digest} {size}"))
    }

    fn write_record(&self, path: &Path, text: &str) -> Result<(), CacheError> {
        let dir = self.root.join("tmp");
        let mut file = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        file.write_all(text.as_bytes()).map_err(io_err(path))?;
        file.persist(path).map_err(|e| CacheError::Io {
            path: path.to_path_buf(),
            error: e.error,
        })?;
        Ok(())
    }
}

/// A blob being written into the cache.
pub struct BlobWriter {
    cache: Cache,
    temp: tempfile::NamedTempFile,
    out: HashingWriter<BufWriter<fs::File>>,
    writeback: Writeback,
}

/// Bytes written between background syncs.
const SYNC_EVERY: u64 = 8 << 20;

/// Syncs a blob to disk in the background while it is written, so the sync that makes
/// it durable before it is named finds little left to do (for a 90 MB layer it was a
/// quarter of a second of the whole build, with every core idle).
struct Writeback {
    file: std::sync::Arc<fs::File>,
    unsynced: u64,
    running: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Writeback {
    fn wrote(&mut self, n: usize) {
        self.unsynced += n as u64;
        if self.unsynced < SYNC_EVERY || self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.unsynced = 0;
        let file = std::sync::Arc::clone(&self.file);
        // A failed background sync is only lost time: the final `sync_all` reports errors.
        self.running = std::thread::Builder::new()
            .name("blob-writeback".into())
            .spawn(move || file.sync_data())
            .ok();
    }

    fn finish(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.join();
        }
    }
}

impl BlobWriter {
    pub fn written(&self) -> u64 {
        self.out.count()
    }

    /// Names the blob by its digest; with `expected`, refuses (and drops) any other content.
    pub fn commit(
        mut self,
        expected: Option<(&Digest, &str)>,
    ) -> Result<(Digest, u64), CacheError> {
        self.writeback.finish();
        let (buffered, digest, size) = self.out.finish();
        let path = self.temp.path().to_path_buf();
        buffered
            .into_inner()
            .map_err(|e| CacheError::Io {
                path: path.clone(),
                error: e.into_error(),
            })?
            .sync_all()
            .map_err(io_err(&path))?;
        if let Some((expected, what)) = expected
            && *expected != digest
        {
            return Err(CacheError::DigestMismatch {
                what: what.to_string(),
                expected: expected.clone(),
                actual: digest,
                size,
            });
        }
        let target = self.cache.blob_path(&digest);
        self.temp.persist(&target).map_err(|e| CacheError::Io {
            path: target.clone(),
            error: e.error,
        })?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.writeback.wrote(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

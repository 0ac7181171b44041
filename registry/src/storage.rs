//! Where the registry keeps its bytes, behind a trait so an object store can back it
//! when one disk is not enough. The filesystem is the default and the only backend today.
//!
//! Three kinds of data, each with its own guarantees:
//! - **blobs**: content-addressed, immutable, shared by all repositories. A blob becomes
//!   visible only by an atomic rename of a fully written, fsynced, digest-verified upload;
//!   a crash never leaves a partial blob visible. Their modification time is their "last
//!   used" time (refreshed when a client is told the blob exists), which garbage
//!   collection honours with a grace period.
//! - **uploads**: staging files of in-progress pushes, appended in order.
//! - **metadata**: small files under `repositories/<name>/_…` (tags, manifest and layer
//!   links, referrers), each written atomically (temp file + rename).
//!
//! Keys passed in are built from validated names (see `names`); the filesystem backend
//! checks them again, so a bug upstream cannot make it write outside its root.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite};

use crate::names::Digest;

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A stored blob and when it was last used.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub last_used: SystemTime,
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Size of a blob, or `None` when it does not exist.
    async fn blob_size(&self, digest: &Digest) -> io::Result<Option<u64>>;
    /// Reads `len` bytes of a blob from `offset`.
    async fn blob_read(&self, digest: &Digest, offset: u64, len: u64) -> io::Result<Reader>;
    /// Reads a small blob (a manifest) whole, if it exists and is at most `limit` bytes.
    async fn blob_read_small(&self, digest: &Digest, limit: u64) -> io::Result<Option<Vec<u8>>>;
    /// Stores a small blob (a manifest) the caller has hashed.
    async fn blob_write_small(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()>;
    /// Marks a blob as used now, so garbage collection's grace period protects it.
    async fn blob_touch(&self, digest: &Digest) -> io::Result<()>;
    async fn blob_delete(&self, digest: &Digest) -> io::Result<bool>;
    async fn blob_list(&self) -> io::Result<Vec<BlobInfo>>;

    /// A new, empty upload into repository `repo` (recorded, so that after a restart the
    /// session still belongs to it alone).
    async fn upload_create(&self, id: &str, repo: &str) -> io::Result<()>;
    /// The repository an upload was started in: `None` when there is no such upload,
    /// `Some(None)` for an upload without a record (started by an older strait).
    async fn upload_repo(&self, id: &str) -> io::Result<Option<Option<String>>>;
    /// Records `repo` as the repository of an upload that has none; `false` when another
    /// record was made first (the record is created, never overwritten).
    async fn upload_claim(&self, id: &str, repo: &str) -> io::Result<bool>;
    /// Current length of an upload, or `None` when there is no such upload.
    async fn upload_size(&self, id: &str) -> io::Result<Option<u64>>;
    /// A writer appending to the upload.
    async fn upload_append(&self, id: &str) -> io::Result<Writer>;
    /// Starts moving what was written so far to stable storage (called while a large
    /// upload streams, so that the final sync before promotion has little left to do).
    async fn upload_sync(&self, id: &str) -> io::Result<()>;
    /// Cuts an upload back to `len` bytes (a chunk that failed midway).
    async fn upload_truncate(&self, id: &str, len: u64) -> io::Result<()>;
    async fn upload_read(&self, id: &str) -> io::Result<Reader>;
    /// Makes a complete, verified upload visible as blob `digest` (atomically; if the blob
    /// already exists the upload is dropped).
    async fn upload_promote(&self, id: &str, digest: &Digest) -> io::Result<()>;
    async fn upload_delete(&self, id: &str) -> io::Result<()>;
    /// Every upload and when it last received data.
    async fn upload_list(&self) -> io::Result<Vec<(String, SystemTime)>>;

    /// Metadata of `key` (`<repo>/_tags/<tag>` and the like), if present.
    async fn meta_get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    async fn meta_put(&self, key: &str, value: &[u8]) -> io::Result<()>;
    async fn meta_delete(&self, key: &str) -> io::Result<bool>;
    /// Names of the entries directly under `prefix` (empty when there are none).
    async fn meta_list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// When `key` was last written.
    async fn meta_modified(&self, key: &str) -> io::Result<Option<SystemTime>>;
    /// Every repository (a directory with a `_layers` or `_manifests` entry), sorted.
    async fn repositories(&self) -> io::Result<Vec<String>>;
}

/// The filesystem backend.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
    /// Whether blobs reach the disk (fsync) before they become visible.
    durable: bool,
}

fn not_found_as_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn invalid_key(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing storage key {key:?}"),
    )
}

impl FsStorage {
    /// Opens (creating if needed) a storage root.
    pub fn open(root: &Path) -> io::Result<FsStorage> {
        for dir in [
            "blobs/sha256",
            "uploads",
            "upload-owners",
            "repositories",
            "tmp",
        ] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(FsStorage {
            root: root.to_path_buf(),
            durable: true,
        })
    }

    /// Without fsync: a promoted blob is whole after a process crash (it is renamed into
    /// place only once complete) but may not be after a power loss or kernel crash.
    pub fn without_fsync(mut self) -> FsStorage {
        self.durable = false;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    fn upload_path(&self, id: &str) -> io::Result<PathBuf> {
        if crate::names::is_upload_id(id) {
            Ok(self.root.join("uploads").join(id))
        } else {
            Err(invalid_key(id))
        }
    }

    /// Where the repository an upload belongs to is recorded (outside `uploads/`, which
    /// holds only upload data).
    fn upload_owner_path(&self, id: &str) -> io::Result<PathBuf> {
        if crate::names::is_upload_id(id) {
            Ok(self.root.join("upload-owners").join(id))
        } else {
            Err(invalid_key(id))
        }
    }

    fn meta_path(&self, key: &str) -> io::Result<PathBuf> {
        let safe = !key.is_empty()
            && key.split('/').all(|c| {
                !c.is_empty() && c != "." && c != ".." && !c.contains('\\') && !c.contains('\0')
            });
        if safe {
            Ok(self.root.join("repositories").join(key))
        } else {
            Err(invalid_key(key))
        }
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{:032x}", rand::random::<u128>()))
    }

    /// Writes `bytes` to `path` atomically: a temp file in the same filesystem, renamed.
    /// One blocking task for the whole sequence: each `tokio::fs` call would be a
    /// thread hand-off of its own.
    async fn write_atomic(&self, path: PathBuf, bytes: Vec<u8>, durable: bool) -> io::Result<()> {
        let temp = self.temp_path();
        blocking(move || {
            let write = || -> io::Result<()> {
                let mut file = create_with_parents(&temp, &path)?;
                std::io::Write::write_all(&mut file, &bytes)?;
                if durable {
                    file.sync_data()?;
                }
                std::fs::rename(&temp, &path)
            };
            let result = write();
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result
        })
        .await
    }
}

/// Runs blocking filesystem work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// Creates `temp` for writing, after creating `target`'s parent directories if needed.
fn create_with_parents(temp: &Path, target: &Path) -> io::Result<std::fs::File> {
    if let Some(parent) = target.parent()
        && !parent.is_dir()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(temp)
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        Ok(not_found_as_none(tokio::fs::metadata(self.blob_path(digest)).await)?.map(|m| m.len()))
    }

    async fn blob_read(&self, digest: &Digest, offset: u64, len: u64) -> io::Result<Reader> {
        let mut file = tokio::fs::File::open(self.blob_path(digest)).await?;
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset)).await?;
        }
        Ok(Box::new(tokio::io::AsyncReadExt::take(file, len)))
    }

    async fn blob_read_small(&self, digest: &Digest, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.blob_path(digest);
        let Some(meta) = not_found_as_none(tokio::fs::metadata(&path).await)? else {
            return Ok(None);
        };
        if meta.len() > limit {
            return Ok(None);
        }
        not_found_as_none(tokio::fs::read(path).await)
    }

    async fn blob_write_small(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let path = self.blob_path(digest);
        if tokio::fs::metadata(&path).await.is_ok() {
            return self.blob_touch(digest).await;
        }
        self.write_atomic(path, bytes.to_vec(), self.durable).await
    }

    async fn blob_touch(&self, digest: &Digest) -> io::Result<()> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::options().write(true).open(path)?;
            let modified = file.metadata()?.modified()?;
            // Refresh at most once a minute: a HEAD storm must not become a write storm.
            let now = SystemTime::now();
            if now.duration_since(modified).unwrap_or_default() > Duration::from_secs(60) {
                file.set_modified(now)?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn blob_delete(&self, digest: &Digest) -> io::Result<bool> {
        Ok(not_found_as_none(tokio::fs::remove_file(self.blob_path(digest)).await)?.is_some())
    }

    async fn blob_list(&self) -> io::Result<Vec<BlobInfo>> {
        let root = self.root.join("blobs/sha256");
        tokio::task::spawn_blocking(move || {
            let mut blobs = Vec::new();
            for fan in std::fs::read_dir(&root)? {
                let fan = fan?;
                if !fan.file_type()?.is_dir() {
                    continue;
                }
                for entry in std::fs::read_dir(fan.path())? {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(digest) = name.to_str().and_then(Digest::from_hex) else {
                        continue;
                    };
                    let Some(meta) = not_found_as_none(entry.metadata())? else {
                        continue;
                    };
                    blobs.push(BlobInfo {
                        digest,
                        size: meta.len(),
                        last_used: meta.modified()?,
                    });
                }
            }
            Ok(blobs)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn upload_create(&self, id: &str, repo: &str) -> io::Result<()> {
        // The owner first, so that no upload is ever seen without one.
        if !self.upload_claim(id, repo).await? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("upload {id} exists"),
            ));
        }
        if let Err(e) = tokio::fs::File::create_new(self.upload_path(id)?).await {
            let _ = tokio::fs::remove_file(self.upload_owner_path(id)?).await;
            return Err(e);
        }
        Ok(())
    }

    async fn upload_repo(&self, id: &str) -> io::Result<Option<Option<String>>> {
        if not_found_as_none(tokio::fs::metadata(self.upload_path(id)?).await)?.is_none() {
            return Ok(None);
        }
        let owner = not_found_as_none(tokio::fs::read(self.upload_owner_path(id)?).await)?;
        Ok(Some(owner.and_then(|bytes| String::from_utf8(bytes).ok())))
    }

    async fn upload_claim(&self, id: &str, repo: &str) -> io::Result<bool> {
        let path = self.upload_owner_path(id)?;
        let temp = self.temp_path();
        let (repo, durable) = (repo.to_owned(), self.durable);
        // Written whole to a temporary file, then linked into place: a crash never leaves a
        // partial record, and `hard_link` fails if a record exists (one claim wins). Synced
        // when blobs are: a synced upload that lost its record could not resume.
        blocking(move || {
            let mut file = std::fs::File::create(&temp)?;
            std::io::Write::write_all(&mut file, repo.as_bytes())?;
            if durable {
                file.sync_data()?;
            }
            let linked = std::fs::hard_link(&temp, &path);
            let _ = std::fs::remove_file(&temp);
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn upload_size(&self, id: &str) -> io::Result<Option<u64>> {
        Ok(not_found_as_none(tokio::fs::metadata(self.upload_path(id)?).await)?.map(|m| m.len()))
    }

    async fn upload_append(&self, id: &str) -> io::Result<Writer> {
        let file = tokio::fs::File::options()
            .append(true)
            .open(self.upload_path(id)?)
            .await?;
        Ok(Box::new(file))
    }

    async fn upload_sync(&self, id: &str) -> io::Result<()> {
        if !self.durable {
            return Ok(());
        }
        let path = self.upload_path(id)?;
        blocking(move || std::fs::File::open(path)?.sync_data()).await
    }

    async fn upload_truncate(&self, id: &str, len: u64) -> io::Result<()> {
        let file = tokio::fs::File::options()
            .write(true)
            .open(self.upload_path(id)?)
            .await?;
        file.set_len(len).await
    }

    async fn upload_read(&self, id: &str) -> io::Result<Reader> {
        Ok(Box::new(
            tokio::fs::File::open(self.upload_path(id)?).await?,
        ))
    }

    async fn upload_promote(&self, id: &str, digest: &Digest) -> io::Result<()> {
        let upload = self.upload_path(id)?;
        let owner = self.upload_owner_path(id)?;
        let blob = self.blob_path(digest);
        let durable = self.durable;
        blocking(move || {
            if blob.exists() {
                std::fs::remove_file(&upload)?;
                // The record goes last: a record without an upload is harmless, an upload
                // without one could be claimed by another repository.
                not_found_as_none(std::fs::remove_file(&owner))?;
                // Refresh its last use: the caller is about to reference it.
                return std::fs::File::options()
                    .write(true)
                    .open(&blob)?
                    .set_modified(SystemTime::now());
            }
            // Durable before visible: the data reaches the disk before the rename publishes
            // it. (The upload's modification time, its last write, is the blob's last use.)
            if durable {
                std::fs::File::open(&upload)?.sync_data()?;
            }
            if let Some(parent) = blob.parent()
                && !parent.is_dir()
            {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&upload, &blob)?;
            not_found_as_none(std::fs::remove_file(&owner)).map(drop)
        })
        .await
    }

    async fn upload_delete(&self, id: &str) -> io::Result<()> {
        not_found_as_none(tokio::fs::remove_file(self.upload_path(id)?).await)?;
        not_found_as_none(tokio::fs::remove_file(self.upload_owner_path(id)?).await).map(|_| ())
    }

    async fn upload_list(&self) -> io::Result<Vec<(String, SystemTime)>> {
        let mut uploads = Vec::new();
        let mut dir = tokio::fs::read_dir(self.root.join("uploads")).await?;
        while let Some(entry) = dir.next_entry().await? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(meta) = not_found_as_none(entry.metadata().await)? {
                uploads.push((name, meta.modified()?));
            }
        }
        Ok(uploads)
    }

    async fn meta_get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.meta_path(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            // A directory where a file was expected (e.g. a tag named like a subdirectory)
            // is simply not that entry.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::IsADirectory =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn meta_put(&self, key: &str, value: &[u8]) -> io::Result<()> {
        let path = self.meta_path(key)?;
        if value.is_empty() {
            // A link: creating the empty file is atomic by itself, no temp file needed.
            return blocking(move || {
                if let Some(parent) = path.parent()
                    && !parent.is_dir()
                {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::File::options()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map(drop)
            })
            .await;
        }
        self.write_atomic(path, value.to_vec(), false).await
    }

    async fn meta_delete(&self, key: &str) -> io::Result<bool> {
        Ok(not_found_as_none(tokio::fs::remove_file(self.meta_path(key)?).await)?.is_some())
    }

    async fn meta_list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let path = self.meta_path(prefix)?;
        let mut dir = match tokio::fs::read_dir(&path).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        while let Some(entry) = dir.next_entry().await? {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn meta_modified(&self, key: &str) -> io::Result<Option<SystemTime>> {
        let path = self.meta_path(key)?;
        not_found_as_none(tokio::fs::metadata(path).await)?
            .map(|m| m.modified())
            .transpose()
    }

    async fn repositories(&self) -> io::Result<Vec<String>> {
        let root = self.root.join("repositories");
        tokio::task::spawn_blocking(move || {
            let mut repositories = Vec::new();
            let mut stack = vec![(root.clone(), String::new())];
            while let Some((dir, name)) = stack.pop() {
                let mut is_repository = false;
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?;
                    let Some(child) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if child == "_layers" || child == "_manifests" {
                        is_repository = true;
                    } else if !child.starts_with('_') && entry.file_type()?.is_dir() {
                        let child_name = if name.is_empty() {
                            child
                        } else {
                            format!("{name}/{child}")
                        };
                        stack.push((entry.path(), child_name));
                    }
                }
                if is_repository {
                    repositories.push(name);
                }
            }
            repositories.sort();
            Ok(repositories)
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path()).expect("open");
        for key in ["../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b"] {
            assert!(storage.meta_put(key, b"x").await.is_err(), "{key}");
            assert!(storage.meta_get(key).await.is_err(), "{key}");
        }
        assert!(storage.upload_create("../../x", "r").await.is_err());
        assert!(!dir.path().parent().expect("parent").join("x").exists());
    }

    #[tokio::test]
    async fn upload_becomes_a_blob_only_when_promoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path()).expect("open");
        let id = "0123456789abcdef0123456789abcdef";
        storage.upload_create(id, "r").await.expect("create");
        assert_eq!(
            storage.upload_repo(id).await.expect("owner"),
            Some(Some("r".to_string()))
        );
        let mut writer = storage.upload_append(id).await.expect("append");
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"hello")
            .await
            .expect("write");
        tokio::io::AsyncWriteExt::flush(&mut writer)
            .await
            .expect("flush");
        let digest = Digest::of(b"hello");
        assert_eq!(storage.blob_size(&digest).await.expect("size"), None);
        storage.upload_promote(id, &digest).await.expect("promote");
        assert_eq!(storage.blob_size(&digest).await.expect("size"), Some(5));
        assert_eq!(storage.upload_size(id).await.expect("size"), None);
        assert_eq!(storage.upload_repo(id).await.expect("owner"), None);
        let blobs = storage.blob_list().await.expect("list");
        assert_eq!(blobs.len(), 1);
        assert_eq!(blobs[0].digest, digest);
    }
}

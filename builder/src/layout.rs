//! The OCI image layout output: built whole in a temporary directory next to the target,
//! then renamed into place, so a failed build leaves nothing half-written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci::Blob;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::image;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{}: {error}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("{}: exists and is not an OCI image layout; refusing to replace it", .0.display())]
    NotALayout(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |error| LayoutError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Writes (or replaces) the layout at `dir` with `top` tagged `tag` and `blobs` from the
/// cache.
pub fn write(
    dir: &Path,
    cache: &Cache,
    blobs: &[Digest],
    top: &Blob,
    tag: &str,
) -> Result<(), LayoutError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("oci")
        .to_string();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let existing = match fs::symlink_metadata(dir) {
        Ok(meta) => {
            let empty = meta.is_dir() && fs::read_dir(dir).map_err(io_err(dir))?.next().is_none();
            if !empty && !dir.join("oci-layout").is_file() {
                return Err(LayoutError::NotALayout(dir.to_path_buf()));
            }
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(dir)(e)),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}.strait-"))
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    let root = temp.path();
    fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io_err(root))?;
    let blob_dir = root.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).map_err(io_err(&blob_dir))?;
    for digest in blobs {
        let from = cache.blob_path(digest);
        let to = blob_dir.join(digest.hex());
        if to.exists() {
            continue;
        }
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(io_err(&from))?;
        }
    }
    let mut descriptor = top.descriptor().clone();
    descriptor.set_annotations(Some(image::annotation(oci::media::REF_NAME, tag)));
    let index = image::index(vec![descriptor]).map_err(|e| io_err(root)(io::Error::other(e)))?;
    let bytes = image::canonical_json(&index).map_err(|e| io_err(root)(e.into()))?;
    fs::write(root.join("index.json"), bytes).map_err(io_err(root))?;

    if existing {
        let old = tempfile::Builder::new()
            .prefix(&format!(".{name}.old-"))
            .tempdir_in(&parent)
            .map_err(io_err(&parent))?;
        let old_path = old.path().join("layout");
        fs::rename(dir, &old_path).map_err(io_err(dir))?;
        if let Err(e) = fs::rename(root, dir) {
            // Put the previous layout back.
            let _ = fs::rename(&old_path, dir);
            return Err(io_err(dir)(e));
        }
        // `old` removes the previous layout when dropped.
    } else {
        fs::rename(root, dir).map_err(io_err(dir))?;
    }
    // The temporary directory was renamed away; nothing is left for it to remove.
    let _ = temp.keep();
    Ok(())
}

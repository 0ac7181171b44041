//! Layer contents: the entries a layer holds ([`collect`]) and the deterministic tar
//! stream written from them ([`write`]).
//!
//! Determinism rules: entries sorted by path (parents first), every mtime the same fixed
//! value, uid/gid 0 unless the layer names an owner, empty uname/gname, no atime or ctime,
//! no xattrs unless the layer asks (then PAX `SCHILY.xattr.*` records, sorted by name),
//! modes normalised (0644/0755 unless the layer sets one), ustar headers with a PAX
//! record only when a value does not fit, and nothing else: the same entries always
//! make the same bytes. Files hard-linked to each other in the source are one file and
//! hard links to it in the layer (as docker and umoci store them), the first path in
//! sorted order holding the content.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::LayerPlan;
use crate::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File {
        source: PathBuf,
        size: u64,
        /// Its identity and times when collected: a change is noticed while writing, and
        /// unchanged files make an unchanged [`stat_key`].
        stamp: Stamp,
        /// (device, inode) of a file with other hard links, to find them.
        linked: Option<(u64, u64)>,
    },
    Symlink {
        target: String,
    },
    /// Another path of the file at `target` (an image path, as entries name it).
    HardLink {
        target: String,
    },
    /// An OCI whiteout (`dir/.wh.name`, empty): `dir/name` is deleted from the layers
    /// below.
    Whiteout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path in the image; directories end with `/`.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Extended attributes (name, value), sorted by name; empty unless the layer asks.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Extended attributes never stored, being the build host's state rather than the
/// file's: an SELinux label (runtimes label containers themselves; docker and buildkit
/// skip it too), and overlayfs's own bookkeeping on an overlay's upper directory.
fn host_only_xattr(name: &str) -> bool {
    name == "security.selinux"
        || name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
}

/// Whether `read_xattrs` reads a symlink's own attributes or its target's.
#[derive(Clone, Copy)]
enum Follow {
    /// Entries found inside a directory: a symlink is stored as a symlink.
    No,
    /// The layer's `src` itself: a symlink there stands for its target, whose content
    /// is stored.
    Yes,
}

/// The extended attributes of `path`, sorted by name. A file system without xattrs has
/// none.
fn read_xattrs(path: &Path, follow: Follow) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    use rustix::io::Errno;
    let unsupported = |e: Errno| e == Errno::NOTSUP || e == Errno::OPNOTSUPP;
    let failed = |what: String, e: Errno| TarError::Io {
        path: path.to_path_buf(),
        error: io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}")),
    };
    let list_query = |p: &Path| match follow {
        Follow::No => rustix::fs::llistxattr_query(p),
        Follow::Yes => rustix::fs::listxattr_query(p),
    };
    let list = |p: &Path, buf: &mut [u8]| match follow {
        Follow::No => rustix::fs::llistxattr(p, buf),
        Follow::Yes => rustix::fs::listxattr(p, buf),
    };
    let get_query = |p: &Path, name: &str| match follow {
        Follow::No => rustix::fs::lgetxattr_query(p, name),
        Follow::Yes => rustix::fs::getxattr_query(p, name),
    };
    let get = |p: &Path, name: &str, buf: &mut [u8]| match follow {
        Follow::No => rustix::fs::lgetxattr(p, name, buf),
        Follow::Yes => rustix::fs::getxattr(p, name, buf),
    };
    // Sized by a query first; a list that grows in between (ERANGE) is asked for again.
    let names = loop {
        let size = match list_query(path) {
            Ok(size) => size,
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(failed("listing extended attributes".into(), e)),
        };
        let mut list_buf = vec![0u8; size];
        match list(path, &mut list_buf[..]) {
            Ok(n) => {
                list_buf.truncate(n);
                break list_buf;
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(failed("listing extended attributes".into(), e)),
        }
    };
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).map_err(|_| TarError::Unsupported {
            path: path.to_path_buf(),
            message: "extended attribute names must be UTF-8".into(),
        })?;
        if host_only_xattr(name) {
            continue;
        }
        // A PAX record's key ends at its first `=`.
        if name.contains('=') {
            return Err(TarError::Unsupported {
                path: path.to_path_buf(),
                message: format!(
                    "extended attribute {name:?}: a name with `=` cannot be stored in a tar PAX record"
                ),
            });
        }
        let reading = || format!("reading extended attribute {name}");
        let value = loop {
            let size = match get_query(path, name) {
                Ok(size) => size,
                // Removed since it was listed.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(failed(reading(), e)),
            };
            let mut value = vec![0u8; size];
            match get(path, name, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    break Some(value);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(failed(reading(), e)),
            }
        };
        if let Some(value) = value {
            xattrs.push((name.to_string(), value));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

/// `read_xattrs` when the layer asks for them.
fn xattrs_of(
    layer: &LayerPlan,
    path: &Path,
    follow: Follow,
) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    if layer.xattrs {
        read_xattrs(path, follow)
    } else {
        Ok(Vec::new())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{}: {error}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Unsupported { path: PathBuf, message: String },
    #[error("writing the layer: {0}")]
    Write(#[source] io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TarError + '_ {
    move |error| TarError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A file's identity and times. `ctime` changes with any write to the file and cannot be
/// set back by users, so an equal stamp means the same content (within a clock tick:
/// see [`stat_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

/// Files changed this recently are not trusted by their stamp: the kernel's file clock
/// ticks coarsely, so a second write in the same tick can leave the stamp as it was
/// (git's "racy clean" problem).
const RACY_NS: i64 = 2_000_000_000;

/// The entries of `layer` for the source `src`, sorted, with their parent directories.
/// Reads no file content: [`write`] does, once per pass.
pub fn collect(layer: &LayerPlan, src: &Path) -> Result<Vec<Entry>, TarError> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let meta = fs::metadata(src).map_err(io_err(src))?;
    let dest_is_dir = layer.dest.is_empty() || layer.dest.ends_with('/');
    let dir_entry = |path: String, mode: u32, uid: u32, gid: u32, xattrs| Entry {
        path,
        kind: Kind::Dir,
        mode,
        uid,
        gid,
        xattrs,
    };
    let root_dir = if meta.is_dir() {
        let dest = if dest_is_dir {
            layer.dest.clone()
        } else {
            format!("{}/", layer.dest)
        };
        if !dest.is_empty() {
            let xattrs = xattrs_of(layer, src, Follow::Yes)?;
            entries.insert(
                dest.clone(),
                dir_entry(dest.clone(), layer.dir_mode, layer.uid, layer.gid, xattrs),
            );
        }
        walk(layer, src, "", &dest, &mut entries)?;
        dest
    } else {
        let name =
            src.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| TarError::Unsupported {
                    path: src.to_path_buf(),
                    message: "file names must be UTF-8".into(),
                })?;
        let path = if dest_is_dir {
            format!("{}{name}", layer.dest)
        } else {
            layer.dest.clone()
        };
        // `meta` followed a symlink `src` to its target, whose content is stored: its
        // attributes go with it.
        let entry = file_entry(layer, src, &meta, path.clone(), Follow::Yes)?;
        entries.insert(path.clone(), entry);
        path
    };
    // Parent directories above the destination (or the single file), root-owned.
    let mut parent = root_dir.trim_end_matches('/').to_string();
    while let Some(i) = parent.rfind('/') {
        parent.truncate(i);
        let key = format!("{parent}/");
        entries
            .entry(key.clone())
            .or_insert_with(|| dir_entry(key, 0o755, 0, 0, Vec::new()));
    }
    for deleted in &layer.delete {
        let (dir, name) = deleted.rsplit_once('/').unwrap_or(("", deleted));
        if entries.contains_key(deleted.as_str()) || entries.contains_key(&format!("{deleted}/")) {
            return Err(TarError::Unsupported {
                path: PathBuf::from(format!("/{deleted}")),
                message: "the layer both adds and deletes it".into(),
            });
        }
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        // Without entries for its directories: those are the base's, and an entry
        // here would replace their owner and mode.
        entries.insert(
            path.clone(),
            Entry {
                path,
                kind: Kind::Whiteout,
                mode: 0o644,
                uid: 0,
                gid: 0,
                xattrs: Vec::new(),
            },
        );
    }
    let mut entries: Vec<Entry> = entries.into_values().collect();
    link_hard_links(&mut entries);
    Ok(entries)
}

/// Turns every later path of a multiply-linked file into a hard link to its first path.
fn link_hard_links(entries: &mut [Entry]) {
    let mut first: std::collections::HashMap<(u64, u64), String> = std::collections::HashMap::new();
    for entry in entries.iter_mut() {
        let Kind::File {
            linked: Some(id), ..
        } = &entry.kind
        else {
            continue;
        };
        match first.get(id) {
            Some(target) => {
                entry.kind = Kind::HardLink {
                    target: target.clone(),
                };
                // They are the inode's, stored with the first path.
                entry.xattrs.clear();
            }
            None => {
                first.insert(*id, entry.path.clone());
            }
        }
    }
}

fn matches(set: &Option<globset::GlobSet>, rel: &str) -> bool {
    set.as_ref().is_some_and(|s| s.is_match(rel))
}

/// Adds what `dir` (at `rel` under the source) holds; returns whether it added anything.
fn walk(
    layer: &LayerPlan,
    dir: &Path,
    rel: &str,
    dest: &str,
    entries: &mut BTreeMap<String, Entry>,
) -> Result<bool, TarError> {
    let mut names = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name();
        let name = name.to_str().ok_or_else(|| TarError::Unsupported {
            path: item.path(),
            message: "file names must be UTF-8".into(),
        })?;
        names.push(name.to_string());
    }
    names.sort();
    let mut added = false;
    for name in names {
        let path = dir.join(&name);
        let rel_path = format!("{rel}{name}");
        if matches(&layer.exclude, &rel_path) {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            let key = format!("{dest}{rel_path}/");
            let explicitly = matches(&layer.include, &rel_path);
            let inner = walk(layer, &path, &format!("{rel_path}/"), dest, entries)?;
            if inner || explicitly || layer.include.is_none() {
                let xattrs = xattrs_of(layer, &path, Follow::No)?;
                entries.insert(
                    key.clone(),
                    Entry {
                        path: key,
                        kind: Kind::Dir,
                        mode: layer.dir_mode,
                        uid: layer.uid,
                        gid: layer.gid,
                        xattrs,
                    },
                );
                added = true;
            }
            continue;
        }
        if layer.include.is_some() && !matches(&layer.include, &rel_path) {
            continue;
        }
        let key = format!("{dest}{rel_path}");
        let entry = file_entry(layer, &path, &meta, key.clone(), Follow::No)?;
        entries.insert(key, entry);
        added = true;
    }
    Ok(added)
}

fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp {
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        ino: meta.ino(),
        dev: meta.dev(),
    }
}

fn file_entry(
    layer: &LayerPlan,
    path: &Path,
    meta: &fs::Metadata,
    key: String,
    follow: Follow,
) -> Result<Entry, TarError> {
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        let target = target.to_str().ok_or_else(|| TarError::Unsupported {
            path: path.to_path_buf(),
            message: "symlink targets must be UTF-8".into(),
        })?;
        Kind::Symlink {
            target: target.to_string(),
        }
    } else if file_type.is_file() {
        Kind::File {
            source: path.to_path_buf(),
            size: meta.len(),
            stamp: stamp(meta),
            linked: (meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
        }
    } else {
        return Err(TarError::Unsupported {
            path: path.to_path_buf(),
            message: "only regular files, directories and symlinks can go in a layer".into(),
        });
    };
    let mode = match &kind {
        Kind::Symlink { .. } => 0o777,
        _ => layer
            .mode
            .unwrap_or(if meta.permissions().mode() & 0o100 != 0 {
                0o755
            } else {
                0o644
            }),
    };
    Ok(Entry {
        path: key,
        kind,
        mode,
        uid: layer.uid,
        gid: layer.gid,
        xattrs: xattrs_of(layer, path, follow)?,
    })
}

/// A cache key for the layer from what `collect` saw, without reading any content: every
/// entry's path, mode, owner and kind, and for files their source, size and [`Stamp`].
/// Equal keys mean equal tar streams. `None` when a file changed within the last two
/// seconds before `now` (its stamp cannot be trusted yet): the content decides then.
pub fn stat_key(entries: &[Entry], mtime: u64, now: std::time::SystemTime) -> Option<Digest> {
    let now_ns = now
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())?;
    let mut text = format!("strait-layer-stat-v1 mtime={mtime}\n");
    for entry in entries {
        let what = match &entry.kind {
            Kind::Dir => "dir".to_string(),
            Kind::File {
                source,
                size,
                stamp,
                ..
            } => {
                if stamp.mtime_ns.max(stamp.ctime_ns) > now_ns - RACY_NS {
                    return None;
                }
                format!(
                    "file {source:?} {size} {} {} {} {}",
                    stamp.dev, stamp.ino, stamp.mtime_ns, stamp.ctime_ns
                )
            }
            Kind::Symlink { target } => format!("symlink {target:?}"),
            Kind::HardLink { target } => format!("hardlink {target:?}"),
            Kind::Whiteout => "whiteout".to_string(),
        };
        text.push_str(&format!(
            "{:?} {:o} {}:{} {what}",
            entry.path, entry.mode, entry.uid, entry.gid
        ));
        for (name, value) in &entry.xattrs {
            text.push_str(&format!(" xattr {name:?}={value:02x?}"));
        }
        text.push('\n');
    }
    Some(Digest::of(text.as_bytes()))
}

const BLOCK: usize = 512;

/// Writes the tar stream of `entries` (already sorted) to `out`. Checks that each file
/// still has the content it was collected with. `progress` gets byte counts as they go.
pub fn write<W: Write>(
    entries: &[Entry],
    mtime: u64,
    out: &mut W,
    progress: &mut dyn FnMut(u64),
) -> Result<(), TarError> {
    let mut buf = vec![0u8; 256 * 1024];
    for entry in entries {
        let (typeflag, size, link) = match &entry.kind {
            Kind::Dir => (b'5', 0, ""),
            Kind::File { size, .. } => (b'0', *size, ""),
            Kind::Symlink { target } => (b'2', 0, target.as_str()),
            Kind::HardLink { target } => (b'1', 0, target.as_str()),
            Kind::Whiteout => (b'0', 0, ""),
        };
        write_header(
            out,
            &entry.path,
            typeflag,
            size,
            link,
            entry.mode,
            entry.uid,
            entry.gid,
            mtime,
            &entry.xattrs,
        )
        .map_err(TarError::Write)?;
        if let Kind::File {
            source,
            size,
            stamp: collected,
            ..
        } = &entry.kind
        {
            let mut file = fs::File::open(source).map_err(io_err(source))?;
            let mut left = *size;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = file.read(&mut buf[..want]).map_err(io_err(source))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(TarError::Write)?;
                left -= n as u64;
                progress(n as u64);
            }
            // Unchanged since it was collected, or a stat key (and a hash-only pass before
            // this one) would name other bytes.
            let now = file.metadata().map_err(io_err(source))?;
            if left != 0 || now.len() != *size || stamp(&now) != *collected {
                return Err(TarError::Io {
                    path: source.clone(),
                    error: io::Error::other("the file changed during the build"),
                });
            }
            pad(out, *size).map_err(TarError::Write)?;
        }
    }
    out.write_all(&[0u8; BLOCK * 2]).map_err(TarError::Write)?;
    Ok(())
}

fn pad<W: Write>(out: &mut W, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// The latest mtime a ustar header holds (11 octal digits); `SOURCE_DATE_EPOCH` is
/// checked against it.
pub const MAX_MTIME: u64 = 0o777_7777_7777;

fn octal(field: &mut [u8], value: u64) -> bool {
    // `len - 1` digits and a NUL.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    true
}

#[allow(clippy::too_many_arguments)]
fn write_header<W: Write>(
    out: &mut W,
    path: &str,
    typeflag: u8,
    size: u64,
    link: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: &[(String, Vec<u8>)],
) -> io::Result<()> {
    let mut pax: Vec<(Cow<str>, Cow<[u8]>)> = Vec::new();
    let (prefix, name) = split_name(path).unwrap_or_else(|| {
        pax.push(("path".into(), path.as_bytes().into()));
        ("", truncate(path, 100))
    });
    if link.len() > 100 {
        pax.push(("linkpath".into(), link.as_bytes().into()));
    }
    let mut header = [0u8; BLOCK];
    if !octal(&mut header[108..116], u64::from(uid)) {
        pax.push(("uid".into(), uid.to_string().into_bytes().into()));
    }
    if !octal(&mut header[116..124], u64::from(gid)) {
        pax.push(("gid".into(), gid.to_string().into_bytes().into()));
    }
    if !octal(&mut header[124..136], size) {
        pax.push(("size".into(), size.to_string().into_bytes().into()));
    }
    for (name, value) in xattrs {
        // GNU tar's and Go's archive/tar's key; values are raw bytes (the record's length
        // delimits them, so NULs in a capability set are fine).
        pax.push((
            format!("SCHILY.xattr.{name}").into(),
            value.as_slice().into(),
        ));
    }
    if !pax.is_empty() {
        let mut records = Vec::new();
        for (key, value) in &pax {
            // "<len> <key>=<value>\n", where <len> counts itself.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + rest.to_string().len();
            if len.to_string().len() + rest != len {
                len = rest + len.to_string().len();
            }
            records.extend_from_slice(format!("{len} {key}=").as_bytes());
            records.extend_from_slice(value);
            records.push(b'\n');
        }
        write_header(
            out,
            "././@PaxHeader",
            b'x',
            records.len() as u64,
            "",
            0o644,
            0,
            0,
            mtime,
            &[],
        )?;
        out.write_all(&records)?;
        pad(out, records.len() as u64)?;
    }
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[136..148], mtime);
    header[156] = typeflag;
    let link = truncate(link, 100);
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    out.write_all(&header)
}

/// ustar's name (≤ 100 bytes) and prefix (≤ 155 bytes), split at a `/`.
fn split_name(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    // The name part keeps a directory's trailing slash.
    let search = path.trim_end_matches('/');
    for (i, _) in search.match_indices('/') {
        let (prefix, name) = (&path[..i], &path[i + 1..]);
        if prefix.len() <= 155 && name.len() <= 100 && !name.is_empty() {
            return Some((prefix, name));
        }
    }
    None
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests;

//! Garbage collection: mark and sweep of untagged manifests and unreferenced blobs.
//!
//! Mark: in each repository, every tagged manifest is kept, with what it reaches: an
//! index's entries, and referrers (manifests whose `subject` is kept). Manifests written
//! within the grace period are kept too, tagged or not: a push in progress writes an
//! index's children before the index, and a referrer may arrive before a tag moves. Every
//! kept manifest marks its own blob, its config and its layers.
//!
//! Sweep: untagged, unreachable manifests lose their link; blobs that no kept manifest
//! references are deleted **only if unused for the grace period**. A blob's "last used"
//! time is refreshed when an upload completes, when a client is told it exists (HEAD) and
//! when it is mounted, so a push that uploaded layers and has yet to PUT its manifest never
//! loses them. That is what makes collection safe while the registry serves.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::time::{Duration, SystemTime};

use crate::manifest::Manifest;
use crate::names::Digest;
use crate::storage::Storage;

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Blobs and manifests used more recently than this are never collected.
    pub grace: Duration,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub repositories: usize,
    pub manifests_kept: usize,
    pub manifests_removed: usize,
    pub blobs_kept: usize,
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    /// Unreferenced blobs spared because they were used within the grace period.
    pub blobs_in_grace: usize,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} repositories; manifests: {} kept, {} removed; blobs: {} kept, {} removed ({} bytes), {} unreferenced but recently used",
            self.repositories,
            self.manifests_kept,
            self.manifests_removed,
            self.blobs_kept,
            self.blobs_removed,
            self.bytes_removed,
            self.blobs_in_grace
        )
    }
}

/// Manifests are small; anything bigger than this is not one we accepted.
const MANIFEST_LIMIT: u64 = 64 << 20;

fn within(time: Option<SystemTime>, grace: Duration) -> bool {
    time.is_some_and(|t| t.elapsed().unwrap_or_default() < grace)
}

pub async fn collect(storage: &dyn Storage, options: &GcOptions) -> io::Result<GcReport> {
    let mut report = GcReport::default();
    // Listed before marking: a blob that appears later is newer than the grace anyway.
    let blobs = storage.blob_list().await?;
    let mut marked: HashSet<Digest> = HashSet::new();

    let repositories = storage.repositories().await?;
    report.repositories = repositories.len();
    for repo in &repositories {
        let manifests: BTreeSet<Digest> = storage
            .meta_list(&format!("{repo}/_manifests"))
            .await?
            .iter()
            .filter_map(|hex| Digest::from_hex(hex))
            .collect();
        let mut roots: Vec<Digest> = Vec::new();
        for tag in storage.meta_list(&format!("{repo}/_tags")).await? {
            if let Some(target) = storage.meta_get(&format!("{repo}/_tags/{tag}")).await?
                && let Ok(digest) = Digest::parse(String::from_utf8_lossy(&target).trim())
            {
                roots.push(digest);
            }
        }
        for digest in &manifests {
            let key = format!("{repo}/_manifests/{}", digest.hex());
            if within(storage.meta_modified(&key).await?, options.grace) {
                roots.push(digest.clone());
            }
        }

        let mut kept: HashSet<Digest> = HashSet::new();
        while let Some(digest) = roots.pop() {
            if !manifests.contains(&digest) || !kept.insert(digest.clone()) {
                continue;
            }
            marked.insert(digest.clone());
            let media_type = storage
                .meta_get(&format!("{repo}/_manifests/{}", digest.hex()))
                .await?
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .unwrap_or_default();
            if let Some(bytes) = storage.blob_read_small(&digest, MANIFEST_LIMIT).await?
                && let Some(manifest) = Manifest::parse_stored(&media_type, &bytes)
            {
                marked.extend(manifest.blobs);
                roots.extend(manifest.children);
            }
            for referrer in storage
                .meta_list(&format!("{repo}/_referrers/{}", digest.hex()))
                .await?
            {
                if let Some(referrer) = Digest::from_hex(&referrer) {
                    roots.push(referrer);
                }
            }
        }
        report.manifests_kept += kept.len();

        for digest in manifests.iter().filter(|d| !kept.contains(d)) {
            report.manifests_removed += 1;
            if options.dry_run {
                continue;
            }
            let media_type = storage
                .meta_get(&format!("{repo}/_manifests/{}", digest.hex()))
                .await?
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .unwrap_or_default();
            if let Some(bytes) = storage.blob_read_small(digest, MANIFEST_LIMIT).await?
                && let Some(subject) =
                    Manifest::parse_stored(&media_type, &bytes).and_then(|m| m.subject)
            {
                storage
                    .meta_delete(&format!(
                        "{repo}/_referrers/{}/{}",
                        subject.hex(),
                        digest.hex()
                    ))
                    .await?;
            }
            storage
                .meta_delete(&format!("{repo}/_manifests/{}", digest.hex()))
                .await?;
        }
    }

    let mut removed: HashSet<Digest> = HashSet::new();
    for blob in &blobs {
        if marked.contains(&blob.digest) {
            report.blobs_kept += 1;
        } else if blob.last_used.elapsed().unwrap_or_default() < options.grace {
            report.blobs_in_grace += 1;
        } else {
            report.blobs_removed += 1;
            report.bytes_removed += blob.size;
            if !options.dry_run {
                storage.blob_delete(&blob.digest).await?;
            }
            removed.insert(blob.digest.clone());
        }
    }

    // Links to deleted blobs go too: a repository never claims a blob it cannot serve.
    if !options.dry_run && !removed.is_empty() {
        for repo in &repositories {
            for hex in storage.meta_list(&format!("{repo}/_layers")).await? {
                let Some(digest) = Digest::from_hex(&hex) else {
                    continue;
                };
                // Re-pushed since it was deleted? Then the link is the new push's.
                if removed.contains(&digest) && storage.blob_size(&digest).await?.is_none() {
                    storage
                        .meta_delete(&format!("{repo}/_layers/{hex}"))
                        .await?;
                }
            }
        }
    }
    Ok(report)
}

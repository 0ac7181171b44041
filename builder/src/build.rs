//! The build: plan -> base image -> layers -> config -> manifest(s) -> outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use oci::{Blob, ImageIndex, ImageManifest, MediaType, Reference};
use serde_json::Value;

use crate::cache::Cache;
use crate::compress::{Compression, ParallelCompressor};
use crate::config::{Base, LayerPlan, Plan, Platform};
use crate::digest::{Digest, HashingWriter};
use crate::error::Error;
use crate::image::{self, NewLayer};
use crate::progress::{Progress, mib};
use crate::registry::{Access, Registry, RegistryError};
use crate::tar;

/// How to build, beyond the plan.
pub struct Options {
    pub cache: Cache,
    pub mtime: u64,
    pub threads: usize,
    /// How to reach the base image's registry and the one pushed to.
    pub access: Access,
}

/// A finished image, all of whose blobs are in the cache.
pub struct Built {
    /// The manifest (one platform) or the index (several).
    pub top: Blob,
    /// Every blob the image needs, in push order: layers, configs, then per-platform
    /// manifests (when there is an index), without duplicates.
    pub blobs: Vec<Digest>,
    /// Blobs that came from the base image, with the repository they came from.
    pub base_blobs: BTreeMap<Digest, Reference>,
    /// Per-platform manifests under an index (pushed by digest before the index).
    pub manifests: Vec<Blob>,
    pub layers_built: usize,
    pub layers_cached: usize,
    pub base_downloaded: usize,
    pub base_cached: usize,
    /// Uncompressed bytes written into new layers, and the time spent on them.
    pub bytes_built: u64,
    pub build_seconds: f64,
}

/// A base image for one platform: its config and layer descriptors.
struct BaseImage {
    config: Value,
    layers: Vec<Blob>,
}

pub fn build(plan: &Plan, options: &Options, progress: &mut Progress) -> Result<Built, Error> {
    let cache = &options.cache;
    let mut built = Built {
        top: Blob::new(MediaType::Other(String::new()), Digest::of(b""), 0),
        blobs: Vec::new(),
        base_blobs: BTreeMap::new(),
        manifests: Vec::new(),
        layers_built: 0,
        layers_cached: 0,
        base_downloaded: 0,
        base_cached: 0,
        bytes_built: 0,
        build_seconds: 0.0,
    };

    // Base image, per platform.
    let mut bases: BTreeMap<Platform, BaseImage> = BTreeMap::new();
    if let Base::Image(reference) = &plan.base {
        let wrap = |source: RegistryError| Error::Base {
            reference: reference.to_string(),
            source,
        };
        let mut registry = options.access.client(reference).map_err(wrap)?;
        registry.add_scope(&reference.repository, "pull");
        for platform in &plan.platforms {
            let base = pull_base(
                &mut registry,
                reference,
                platform,
                cache,
                progress,
                &mut built,
            )
            .map_err(wrap)?;
            for layer in &base.layers {
                built
                    .base_blobs
                    .insert(layer.digest().clone(), reference.clone());
            }
            bases.insert(platform.clone(), base);
        }
    }

    // Our layers; one build per distinct source (platforms share a layer when `src` names
    // no placeholder).
    let started = Instant::now();
    let mut layer_results: BTreeMap<(usize, PathBuf), (Digest, Blob)> = BTreeMap::new();
    let count = plan.layers.len();
    for (index, layer) in plan.layers.iter().enumerate() {
        let sources: BTreeSet<&PathBuf> = layer.src.values().collect();
        for src in sources {
            let label = format!(
                "layer {}/{count} {} -> {}",
                index + 1,
                layer.src_text,
                layer.dest_text
            );
            let (diff_id, blob, fresh) = build_layer(
                layer,
                src,
                &label,
                plan.compression,
                options,
                progress,
                &mut built,
            )
            .map_err(|error| match error {
                LayerError::Tar(error) => Error::Layer {
                    layer: format!("{} -> {}", layer.src_text, layer.dest_text),
                    error,
                },
                LayerError::Cache(e) => Error::Cache(e),
            })?;
            if fresh {
                built.layers_built += 1;
            } else {
                built.layers_cached += 1;
            }
            progress.line(&format!(
                "{label}: {} {} ({})",
                if fresh { "built" } else { "cached" },
                blob.digest(),
                mib(blob.size())
            ));
            layer_results.insert((index, src.clone()), (diff_id, blob));
        }
    }
    built.build_seconds = started.elapsed().as_secs_f64();

    // Config and manifest per platform.
    let mut manifests = Vec::new();
    for platform in &plan.platforms {
        let base = bases.get(platform);
        let mut layers: Vec<Blob> = base.map(|b| b.layers.clone()).unwrap_or_default();
        let mut new_layers = Vec::new();
        for (index, layer) in plan.layers.iter().enumerate() {
            let Some(src) = layer.src.get(platform) else {
                continue;
            };
            let Some((diff_id, blob)) = layer_results.get(&(index, src.clone())) else {
                continue;
            };
            layers.push(blob.clone());
            new_layers.push(NewLayer {
                diff_id: diff_id.clone(),
                created_by: format!("strait build: {} -> {}", layer.src_text, layer.dest_text),
            });
        }
        let config = image::image_config(
            base.map(|b| &b.config),
            &plan.image,
            platform,
            &new_layers,
            options.mtime,
        );
        let config_bytes = image::canonical_json(&config).map_err(Error::Json)?;
        let (config_digest, config_size) = cache.put_blob(&config_bytes)?;
        let manifest = image::manifest(
            Blob::new(MediaType::ImageConfig, config_digest.clone(), config_size).into_descriptor(),
            layers.iter().map(|l| l.descriptor().clone()).collect(),
        )
        .map_err(Error::Spec)?;
        let manifest_bytes = image::canonical_json(&manifest).map_err(Error::Json)?;
        let (digest, size) = cache.put_blob(&manifest_bytes)?;
        for layer in &layers {
            push_unique(&mut built.blobs, layer.digest());
        }
        push_unique(&mut built.blobs, &config_digest);
        manifests.push(
            Blob::new(MediaType::ImageManifest, digest, size)
                .with_platform(Some(platform.to_spec())),
        );
    }

    if let [single] = manifests.as_slice() {
        let top = single.clone().with_platform(None);
        push_unique(&mut built.blobs, top.digest());
        built.top = top;
    } else {
        let index = image::index(manifests.iter().map(|m| m.descriptor().clone()).collect())
            .map_err(Error::Spec)?;
        let bytes = image::canonical_json(&index).map_err(Error::Json)?;
        let (digest, size) = cache.put_blob(&bytes)?;
        for m in &manifests {
            push_unique(&mut built.blobs, m.digest());
        }
        push_unique(&mut built.blobs, &digest);
        built.manifests = manifests;
        built.top = Blob::new(MediaType::ImageIndex, digest, size);
    }
    Ok(built)
}

fn push_unique(list: &mut Vec<Digest>, digest: &Digest) {
    if !list.contains(digest) {
        list.push(digest.clone());
    }
}

enum LayerError {
    Tar(tar::TarError),
    Cache(crate::cache::CacheError),
}

impl From<tar::TarError> for LayerError {
    fn from(e: tar::TarError) -> Self {
        LayerError::Tar(e)
    }
}

impl From<crate::cache::CacheError> for LayerError {
    fn from(e: crate::cache::CacheError) -> Self {
        LayerError::Cache(e)
    }
}

/// Builds (or finds in the cache) one layer. Returns its diff_id, blob and whether it was
/// built now.
fn build_layer(
    layer: &LayerPlan,
    src: &std::path::Path,
    label: &str,
    compression: Compression,
    options: &Options,
    progress: &mut Progress,
    built: &mut Built,
) -> Result<(Digest, Blob, bool), LayerError> {
    let cache = &options.cache;
    let entries = tar::collect(layer, src)?;
    let stat_key = tar::stat_key(&entries, options.mtime, std::time::SystemTime::now());
    let compression_id = compression.id();
    let descriptor = |digest: Digest, size: u64| Blob::new(compression.media_type(), digest, size);
    // Files as they were at the last build: nothing to read.
    if let Some(key) = &stat_key
        && let Some(diff_id) = cache.stat_diff_id(key)
        && let Some((digest, size)) = cache.compressed(&compression_id, &diff_id)
    {
        return Ok((diff_id, descriptor(digest, size), false));
    }
    let total: u64 = entries
        .iter()
        .map(|e| match &e.kind {
            tar::Kind::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    // Otherwise the content decides. If this cache holds layers compressed the same way,
    // one pass that only hashes finds out (a fresh checkout of unchanged files, say)
    // before anything is compressed; if it holds none, that pass could find nothing, and
    // the layer is hashed while it is compressed.
    let mut hashed = None;
    if cache.holds_compressed(&compression_id) {
        let mut hashing = HashingWriter::new(std::io::sink());
        let mut done = 0u64;
        tar::write(&entries, options.mtime, &mut hashing, &mut |n| {
            done += n;
            progress.status(&format!("{label} (hashing)"), done, Some(total));
        })?;
        let (_, diff_id, tar_size) = hashing.finish();
        if let Some((digest, size)) = cache.compressed(&compression_id, &diff_id) {
            progress.clear();
            if let Some(key) = &stat_key {
                cache.set_stat_diff_id(key, &diff_id)?;
            }
            return Ok((diff_id, descriptor(digest, size), false));
        }
        hashed = Some((diff_id, tar_size));
    }
    let blob = cache.blob_writer()?;
    let mut compressor = ParallelCompressor::new(blob, compression, options.threads);
    let mut done = 0u64;
    let mut report = |n| {
        done += n;
        progress.status(label, done, Some(total));
    };
    let (compressor, diff_id, tar_size) = match hashed {
        // `write` checks every file is as it was collected, so with trusted stamps this
        // pass writes the bytes the hashing pass hashed: no need to hash them again.
        Some((diff_id, tar_size)) if stat_key.is_some() => {
            tar::write(&entries, options.mtime, &mut compressor, &mut report)?;
            (compressor, diff_id, tar_size)
        }
        // A file changed in the last two seconds could change again within a clock tick
        // without its stamp showing it: hash again, and the two passes must agree.
        _ => {
            let mut hashing = HashingWriter::new(compressor);
            tar::write(&entries, options.mtime, &mut hashing, &mut report)?;
            let (compressor, diff_id, tar_size) = hashing.finish();
            if let Some((first, _)) = &hashed
                && *first != diff_id
            {
                return Err(tar::TarError::Write(std::io::Error::other(
                    "a file of the layer changed during the build",
                ))
                .into());
            }
            (compressor, diff_id, tar_size)
        }
    };
    let blob = compressor.finish().map_err(tar::TarError::Write)?;
    let (digest, size) = blob.commit(None)?;
    progress.clear();
    built.bytes_built += tar_size;
    cache.set_compressed(&compression_id, &diff_id, &digest, size)?;
    if let Some(key) = &stat_key {
        cache.set_stat_diff_id(key, &diff_id)?;
    }
    Ok((diff_id, descriptor(digest, size), true))
}

/// Fetches the base image's manifest for `platform`, its config and its layers into the
/// cache (blobs already there are not downloaded again).
fn pull_base(
    registry: &mut Registry,
    reference: &Reference,
    platform: &Platform,
    cache: &Cache,
    progress: &mut Progress,
    built: &mut Built,
) -> Result<BaseImage, RegistryError> {
    let repository = &reference.repository;
    let (bytes, media_type, _) =
        fetch_manifest(registry, cache, repository, &reference.reference())?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| protocol(registry, format!("manifest is not JSON: {e}")))?;
    let media_type = json
        .get("mediaType")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or(media_type);
    let media_type = MediaType::from(media_type.as_str());
    let manifest_bytes = if oci::media::ManifestKind::of(&media_type)
        == Some(oci::media::ManifestKind::Index)
        || json.get("manifests").is_some()
    {
        let index: ImageIndex = serde_json::from_value(json)
            .map_err(|e| protocol(registry, format!("bad image index: {e}")))?;
        let entries = index
            .manifests()
            .iter()
            .map(|entry| sha256(entry, registry, "bad image index"))
            .collect::<Result<Vec<_>, _>>()?;
        let chosen = pick_platform(&entries, platform).ok_or_else(|| {
            protocol(
                registry,
                format!(
                    "{reference} has no image for {platform} (it has {})",
                    entries
                        .iter()
                        .filter_map(|m| m.descriptor().platform().as_ref())
                        .map(oci::platform::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        fetch_manifest(registry, cache, repository, chosen.digest().as_str())?.0
    } else {
        bytes
    };
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| protocol(registry, format!("bad image manifest: {e}")))?;
    let config = sha256(manifest.config(), registry, "bad image manifest")?;
    let base_layers = manifest
        .layers()
        .iter()
        .map(|layer| sha256(layer, registry, "bad image manifest"))
        .collect::<Result<Vec<_>, _>>()?;
    let config_digest = config.digest().clone();
    fetch_blob(registry, cache, repository, &config, progress, built)?;
    let config_bytes = cache.read_blob(&config_digest)?;
    let config: Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| protocol(registry, format!("bad image config {config_digest}: {e}")))?;
    let mut layers = Vec::new();
    for layer in base_layers {
        fetch_blob(registry, cache, repository, &layer, progress, built)?;
        // Only what a layer's descriptor must say: media type (docker's as OCI's, the
        // same bytes), digest and size.
        layers.push(Blob::new(
            oci::media::to_oci(layer.media_type()),
            layer.digest().clone(),
            layer.size(),
        ));
    }
    Ok(BaseImage { config, layers })
}

/// A base image's descriptor, whose digest must be sha256 (the cache names blobs by it).
fn sha256(
    descriptor: &oci::Descriptor,
    registry: &Registry,
    what: &str,
) -> Result<Blob, RegistryError> {
    Blob::checked(descriptor.clone()).map_err(|_| {
        protocol(
            registry,
            format!("{what}: `{}` is not a sha256 digest", descriptor.digest()),
        )
    })
}

fn protocol(registry: &Registry, message: String) -> RegistryError {
    RegistryError::Protocol {
        registry: registry.name().to_string(),
        message,
    }
}

/// A manifest by tag (always asked) or by digest (from the cache when there).
fn fetch_manifest(
    registry: &mut Registry,
    cache: &Cache,
    repository: &str,
    reference: &str,
) -> Result<(Vec<u8>, String, Digest), RegistryError> {
    if let Ok(digest) = Digest::parse(reference)
        && cache.has_blob(&digest, None)
    {
        return Ok((cache.read_blob(&digest)?, String::new(), digest));
    }
    let (bytes, media_type, digest) = registry.get_manifest(repository, reference)?;
    cache.put_blob(&bytes)?;
    Ok((bytes, media_type, digest))
}

fn fetch_blob(
    registry: &mut Registry,
    cache: &Cache,
    repository: &str,
    blob: &Blob,
    progress: &mut Progress,
    built: &mut Built,
) -> Result<(), RegistryError> {
    if cache.has_blob(blob.digest(), Some(blob.size())) {
        built.base_cached += 1;
        return Ok(());
    }
    let writer = cache.blob_writer()?;
    let label = format!("pull {}", blob.digest());
    let mut done = 0u64;
    let size = registry.get_blob(repository, blob.digest(), writer, &mut |n| {
        done += n;
        progress.status(&label, done, Some(blob.size()));
    })?;
    progress.line(&format!("pulled {} ({})", blob.digest(), mib(size)));
    built.base_downloaded += 1;
    Ok(())
}

/// The index entry for `platform`: same os and architecture, and variant when ours names
/// one, compared as containerd normalises them (`arm64` is `arm64/v8`, `arm` is `arm/v7`,
/// `aarch64` is `arm64`, `x86_64` is `amd64`); an exact variant wins over another one.
/// Attestation manifests (`unknown/unknown`) never match.
fn pick_platform<'a>(manifests: &'a [Blob], platform: &Platform) -> Option<&'a Blob> {
    let owned = |(os, arch, variant): (&str, &str, &str)| {
        (os.to_string(), arch.to_string(), variant.to_string())
    };
    let wanted = owned(normal_platform(
        &platform.os,
        &platform.architecture,
        platform.variant.as_deref(),
    ));
    let of = |m: &Blob| {
        m.descriptor().platform().as_ref().map(|p| {
            let (os, arch) = (p.os().to_string(), p.architecture().to_string());
            owned(normal_platform(&os, &arch, p.variant().as_deref()))
        })
    };
    manifests
        .iter()
        .find(|m| of(m).as_ref() == Some(&wanted))
        .or_else(|| {
            // No variant named: any variant of the architecture will do.
            platform.variant.is_none().then(|| {
                manifests
                    .iter()
                    .find(|m| of(m).is_some_and(|(os, arch, _)| os == wanted.0 && arch == wanted.1))
            })?
        })
}

/// (os, architecture, variant) in containerd's normal form: the names Go and the kernel
/// use for the same machine made one, and each architecture's default variant explicit.
fn normal_platform<'a>(
    os: &'a str,
    architecture: &'a str,
    variant: Option<&'a str>,
) -> (&'a str, &'a str, &'a str) {
    let variant = variant.unwrap_or("");
    let (architecture, variant) = match (architecture, variant) {
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", "5") => ("arm", "v5"),
        ("arm", "6") => ("arm", "v6"),
        ("arm", "8") => ("arm", "v8"),
        ("i386" | "386", v) => ("386", v),
        (a, v) => (a, v),
    };
    (os, architecture, variant)
}

/// Counts of a push.
#[derive(Debug, Default)]
pub struct PushSummary {
    pub uploaded: usize,
    pub present: usize,
    pub mounted: usize,
    pub bytes_uploaded: u64,
}

/// Pushes every blob (HEAD first; a mount from the base's repository when it is on the same
/// registry), then the manifests, the top one under the tag.
pub fn push(
    built: &Built,
    target: &Reference,
    options: &Options,
    progress: &mut Progress,
) -> Result<PushSummary, RegistryError> {
    let cache = &options.cache;
    let mut registry = options.access.client(target)?;
    let repository = &target.repository;
    registry.add_scope(repository, "pull,push");
    for base in built.base_blobs.values() {
        if base.registry == target.registry && base.repository != *repository {
            registry.add_scope(&base.repository, "pull");
        }
    }
    let mut summary = PushSummary::default();
    let manifests: BTreeSet<&Digest> = built.manifests.iter().map(Blob::digest).collect();
    for digest in &built.blobs {
        if manifests.contains(digest) || digest == built.top.digest() {
            continue;
        }
        if registry.blob_exists(repository, digest)? {
            summary.present += 1;
            progress.line(&format!("blob {digest}: already in {target}"));
            continue;
        }
        let mut location = None;
        if let Some(base) = built.base_blobs.get(digest)
            && base.registry == target.registry
            && base.repository != *repository
        {
            match registry.mount_blob(repository, digest, &base.repository)? {
                None => {
                    summary.mounted += 1;
                    progress.line(&format!("blob {digest}: mounted from {}", base.repository));
                    continue;
                }
                Some(upload) => location = Some(upload),
            }
        }
        let path = cache.blob_path(digest);
        let size = std::fs::metadata(&path)
            .map_err(|error| RegistryError::File {
                path: path.clone(),
                error,
            })?
            .len();
        let label = format!("push {digest}");
        let mut done = 0u64;
        registry.upload_blob(repository, digest, &path, size, location, &mut |n| {
            done += n;
            progress.status(&label, done, Some(size));
        })?;
        progress.clear();
        progress.line(&format!("blob {digest}: uploaded ({})", mib(size)));
        summary.uploaded += 1;
        summary.bytes_uploaded += size;
    }
    for manifest in &built.manifests {
        let bytes = cache.read_blob(manifest.digest())?;
        registry.put_manifest(
            repository,
            manifest.digest().as_str(),
            manifest.media_type().as_ref(),
            &bytes,
        )?;
    }
    let bytes = cache.read_blob(built.top.digest())?;
    registry.put_manifest(
        repository,
        target.tag_or_latest(),
        built.top.media_type().as_ref(),
        &bytes,
    )?;
    Ok(summary)
}

/// Writes the build summary to stdout; the last line is the image digest.
pub fn report(built: &Built, push: Option<&PushSummary>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "layers: {} built, {} cached",
        built.layers_built, built.layers_cached
    );
    if built.base_downloaded + built.base_cached > 0 {
        let _ = writeln!(
            out,
            "base blobs: {} downloaded, {} cached",
            built.base_downloaded, built.base_cached
        );
    }
    if let Some(push) = push {
        let _ = writeln!(
            out,
            "blobs: {} uploaded, {} present, {} mounted",
            push.uploaded, push.present, push.mounted
        );
    }
    let _ = writeln!(out, "{}", built.top.digest());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, architecture: &str, variant: Option<&str>, n: u8) -> Blob {
        Blob::new(MediaType::ImageManifest, Digest::of(&[n]), 1)
            .with_platform(Some(oci::platform::platform(os, architecture, variant)))
    }

    fn pick(manifests: &[Blob], wanted: &str) -> Option<String> {
        let platform = Platform::parse(wanted).expect("platform");
        pick_platform(manifests, &platform)
            .and_then(|m| m.descriptor().platform().as_ref())
            .map(oci::platform::name)
    }

    #[test]
    fn platforms_match_as_containerd_normalises_them() {
        let plain = [
            entry("linux", "amd64", None, 0),
            entry("linux", "arm64", None, 1),
        ];
        assert_eq!(
            pick(&plain, "linux/arm64/v8").as_deref(),
            Some("linux/arm64")
        );
        assert_eq!(pick(&plain, "linux/arm64").as_deref(), Some("linux/arm64"));
        assert_eq!(pick(&plain, "linux/arm64/v9"), None);
        let with_variants = [
            entry("linux", "arm", Some("v6"), 2),
            entry("linux", "arm", Some("v7"), 3),
            entry("linux", "arm64", Some("v8"), 4),
            entry("unknown", "unknown", None, 5),
        ];
        assert_eq!(
            pick(&with_variants, "linux/arm64").as_deref(),
            Some("linux/arm64/v8")
        );
        // `arm` means v7, not the first arm entry.
        assert_eq!(
            pick(&with_variants, "linux/arm").as_deref(),
            Some("linux/arm/v7")
        );
        assert_eq!(
            pick(&with_variants, "linux/arm/v6").as_deref(),
            Some("linux/arm/v6")
        );
        assert_eq!(pick(&with_variants, "linux/amd64"), None);
        // Without a v7 entry, an unnamed variant takes what there is.
        let v6_only = [entry("linux", "arm", Some("v6"), 6)];
        assert_eq!(pick(&v6_only, "linux/arm").as_deref(), Some("linux/arm/v6"));
        assert_eq!(pick(&v6_only, "linux/arm/v7"), None);
        let kernel_names = [
            entry("linux", "x86_64", None, 7),
            entry("linux", "aarch64", None, 8),
        ];
        assert_eq!(
            pick(&kernel_names, "linux/amd64").as_deref(),
            Some("linux/x86_64")
        );
        assert_eq!(
            pick(&kernel_names, "linux/arm64/v8").as_deref(),
            Some("linux/aarch64")
        );
    }
}

//! The manifest kinds the registry accepts, and what each references: blobs that must
//! exist (config and layers), child manifests (of an index) and the `subject` that makes
//! a manifest a referrer.
//!
//! A document is read twice: once for which members it has (oci-spec's types drop members
//! they do not define, and a document with both `config` and `manifests` is neither
//! kind), then as oci-spec's `ImageManifest` or `ImageIndex`, whose descriptors must be
//! well-formed (digest grammar, sizes, string annotations, platforms with os and
//! architecture), and whose digests must then be sha256 ones.

use std::collections::HashMap;

use oci::media::ManifestKind;
use oci::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::names::Digest;

/// The members a document has, whatever their values.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Members {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
    manifests: Option<IgnoredAny>,
}

/// A parsed, validated manifest.
#[derive(Debug)]
pub struct Manifest {
    pub media_type: MediaType,
    /// Blobs that must exist in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Manifests that must exist in the repository (an index's entries).
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<MediaType>,
    pub annotations: Option<HashMap<String, String>>,
}

fn descriptor_digest(descriptor: &Descriptor, what: &str) -> Result<Digest, String> {
    Digest::try_from(descriptor.digest()).map_err(|_| {
        format!(
            "{what} digest {:?} is not a sha256 digest",
            descriptor.digest().as_ref()
        )
    })
}

impl Manifest {
    /// Parses `body` sent with `content_type` (the request's `Content-Type`, without
    /// parameters). The `mediaType` field, when present, must agree with it.
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Manifest, String> {
        let members: Members =
            serde_json::from_slice(body).map_err(|e| format!("not a JSON manifest: {e}"))?;
        if members.schema_version != Some(2) {
            return Err("schemaVersion must be 2".into());
        }
        if let Some(media_type) = &members.media_type
            && media_type != content_type
        {
            return Err(format!(
                "mediaType {media_type:?} does not match Content-Type {content_type:?}"
            ));
        }
        let media_type = MediaType::from(content_type);
        let manifest = match ManifestKind::of(&media_type) {
            Some(ManifestKind::Image) => {
                if members.config.is_none() {
                    return Err("an image manifest needs a config".into());
                }
                if members.layers.is_none() {
                    return Err("an image manifest needs layers".into());
                }
                if members.manifests.is_some() {
                    return Err("an image manifest has no `manifests`".into());
                }
                let image: ImageManifest = serde_json::from_slice(body)
                    .map_err(|e| format!("not an image manifest: {e}"))?;
                let mut blobs = vec![descriptor_digest(image.config(), "config")?];
                for (i, layer) in image.layers().iter().enumerate() {
                    blobs.push(descriptor_digest(layer, &format!("layers[{i}]"))?);
                }
                // Artifacts are typed by artifactType, or else by their config's type.
                let artifact_type = image.artifact_type().clone().or_else(|| {
                    let config = image.config().media_type();
                    (*config != MediaType::EmptyJSON).then(|| config.clone())
                });
                Manifest {
                    media_type,
                    blobs,
                    children: Vec::new(),
                    subject: image
                        .subject()
                        .as_ref()
                        .map(|s| descriptor_digest(s, "subject"))
                        .transpose()?,
                    artifact_type,
                    annotations: image.annotations().clone(),
                }
            }
            Some(ManifestKind::Index) => {
                if members.manifests.is_none() {
                    return Err("an index needs `manifests`".into());
                }
                if members.config.is_some() || members.layers.is_some() {
                    return Err("an index has no config or layers".into());
                }
                let index: ImageIndex =
                    serde_json::from_slice(body).map_err(|e| format!("not an index: {e}"))?;
                let mut children = Vec::new();
                for (i, entry) in index.manifests().iter().enumerate() {
                    children.push(descriptor_digest(entry, &format!("manifests[{i}]"))?);
                }
                Manifest {
                    media_type,
                    blobs: Vec::new(),
                    children,
                    subject: index
                        .subject()
                        .as_ref()
                        .map(|s| descriptor_digest(s, "subject"))
                        .transpose()?,
                    artifact_type: index.artifact_type().clone(),
                    annotations: index.annotations().clone(),
                }
            }
            None => return Err(format!("unsupported manifest media type {content_type:?}")),
        };
        Ok(manifest)
    }

    /// Parses a manifest already stored (for garbage collection and referrer removal).
    pub fn parse_stored(media_type: &str, body: &[u8]) -> Option<Manifest> {
        Manifest::parse(media_type, body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_references_config_and_layers() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest('a'), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest('b'), "size": 3}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest('c'), "size": 4},
        });
        let manifest = Manifest::parse(OCI_MANIFEST, body.to_string().as_bytes()).expect("valid");
        assert_eq!(manifest.blobs.len(), 2);
        assert_eq!(manifest.subject.map(|d| d.to_string()), Some(digest('c')));
        assert_eq!(manifest.artifact_type, Some(MediaType::ImageConfig));
    }

    #[test]
    fn docker_list_references_its_manifests() {
        let list = "application/vnd.docker.distribution.manifest.list.v2+json";
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": list,
            "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": digest('d'), "size": 5,
                           "platform": {"architecture": "amd64", "os": "linux", "features": ["sse4"]}}],
        });
        let manifest = Manifest::parse(list, body.to_string().as_bytes()).expect("valid");
        assert_eq!(manifest.children.len(), 1);
        assert!(manifest.blobs.is_empty());
    }

    #[test]
    fn rejects() {
        for (content_type, body) in [
            (OCI_MANIFEST, "{}".to_string()),
            (OCI_MANIFEST, "not json".to_string()),
            (OCI_MANIFEST, serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).to_string()),
            (OCI_MANIFEST, serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:../x", "size": 1}, "layers": []}).to_string()),
            (OCI_MANIFEST, serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": digest('a'), "size": -1}, "layers": []}).to_string()),
            (OCI_MANIFEST, serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": format!("sha512:{}", "a".repeat(128)), "size": 1}, "layers": []}).to_string()),
            (OCI_MANIFEST, serde_json::json!({"schemaVersion": 3, "config": {"mediaType": "x", "digest": digest('a'), "size": 1}, "layers": []}).to_string()),
            (OCI_INDEX, serde_json::json!({"schemaVersion": 2}).to_string()),
            (OCI_INDEX, serde_json::json!({"schemaVersion": 2, "manifests": [], "layers": []}).to_string()),
            (OCI_INDEX, serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:abc", "size": 1}]}).to_string()),
            ("text/plain", serde_json::json!({"schemaVersion": 2}).to_string()),
        ] {
            assert!(Manifest::parse(content_type, body.as_bytes()).is_err(), "{body}");
        }
    }
}

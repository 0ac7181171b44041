//! The manifest kinds the registry accepts, and what each references: blobs that must
//! exist (config and layers), child manifests (of an index) and the `subject` that makes
//! a manifest a referrer.

use serde::{Deserialize, Serialize};

use crate::names::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI's empty config (`{}`), used by artifacts without a config of their own.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A parsed, validated manifest.
#[derive(Debug)]
pub struct Manifest {
    pub media_type: String,
    /// Blobs that must exist in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Manifests that must exist in the repository (an index's entries).
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

fn descriptor_digest(descriptor: &Descriptor, what: &str) -> Result<Digest, String> {
    if descriptor.size < 0 {
        return Err(format!("{what} has a negative size"));
    }
    Digest::parse(&descriptor.digest).map_err(|_| {
        format!(
            "{what} digest {:?} is not a sha256 digest",
            descriptor.digest
        )
    })
}

impl Manifest {
    /// Parses `body` sent with `content_type` (the request's `Content-Type`, without
    /// parameters). The `mediaType` field, when present, must agree with it.
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Manifest, String> {
        let raw: RawManifest =
            serde_json::from_slice(body).map_err(|e| format!("not a JSON manifest: {e}"))?;
        if raw.schema_version != Some(2) {
            return Err("schemaVersion must be 2".into());
        }
        if let Some(media_type) = &raw.media_type
            && media_type != content_type
        {
            return Err(format!(
                "mediaType {media_type:?} does not match Content-Type {content_type:?}"
            ));
        }
        let mut manifest = Manifest {
            media_type: content_type.to_owned(),
            blobs: Vec::new(),
            children: Vec::new(),
            subject: None,
            artifact_type: raw.artifact_type.clone(),
            annotations: raw.annotations,
        };
        match content_type {
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let config = raw.config.ok_or("an image manifest needs a config")?;
                let layers = raw.layers.ok_or("an image manifest needs layers")?;
                manifest.blobs.push(descriptor_digest(&config, "config")?);
                for (i, layer) in layers.iter().enumerate() {
                    manifest
                        .blobs
                        .push(descriptor_digest(layer, &format!("layers[{i}]"))?);
                }
                // Artifacts are typed by artifactType, or else by their config's type.
                if manifest.artifact_type.is_none() && config.media_type != OCI_EMPTY {
                    manifest.artifact_type = Some(config.media_type);
                }
                if raw.manifests.is_some() {
                    return Err("an image manifest has no `manifests`".into());
                }
            }
            OCI_INDEX | DOCKER_MANIFEST_LIST => {
                let entries = raw.manifests.ok_or("an index needs `manifests`")?;
                for (i, entry) in entries.iter().enumerate() {
                    manifest
                        .children
                        .push(descriptor_digest(entry, &format!("manifests[{i}]"))?);
                }
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err("an index has no config or layers".into());
                }
            }
            other => return Err(format!("unsupported manifest media type {other:?}")),
        }
        if let Some(subject) = &raw.subject {
            manifest.subject = Some(descriptor_digest(subject, "subject")?);
        }
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
        assert_eq!(
            manifest.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn rejects() {
        for (content_type, body) in [
            (OCI_MANIFEST, "{}".to_string()),
            (OCI_MANIFEST, "not json".to_string()),
            (OCI_MANIFEST, serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).to_string()),
            (OCI_MANIFEST, serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:../x", "size": 1}, "layers": []}).to_string()),
            (OCI_INDEX, serde_json::json!({"schemaVersion": 2}).to_string()),
            ("text/plain", serde_json::json!({"schemaVersion": 2}).to_string()),
        ] {
            assert!(Manifest::parse(content_type, body.as_bytes()).is_err(), "{body}");
        }
    }
}

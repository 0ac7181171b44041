//! Media types beyond `oci_spec::image::MediaType`'s named ones: docker's v2 schema 2
//! types, which registries still serve and accept (`MediaType::Other` holds them).

use oci_spec::image::MediaType;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The OCI image index type as a `&'static str` (a static header value; `MediaType`
/// gives only owned strings).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The `Accept` of a manifest request: every manifest kind strait reads (OCI and docker,
/// images and indexes).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The annotation naming an image in an OCI layout's `index.json`.
pub const REF_NAME: &str = oci_spec::image::ANNOTATION_REF_NAME;

/// What a manifest document is, by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An OCI image manifest or a docker v2 manifest: a config and layers.
    Image,
    /// An OCI image index or a docker manifest list: manifests.
    Index,
}

impl ManifestKind {
    /// The kind of a manifest of `media_type`; `None` for anything else.
    pub fn of(media_type: &MediaType) -> Option<ManifestKind> {
        match media_type {
            MediaType::ImageManifest => Some(ManifestKind::Image),
            MediaType::ImageIndex => Some(ManifestKind::Index),
            MediaType::Other(other) if other == DOCKER_MANIFEST => Some(ManifestKind::Image),
            MediaType::Other(other) if other == DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
            _ => None,
        }
    }
}

/// The OCI media type of a docker v2 blob type (the bytes are the same); others as they are.
pub fn to_oci(media_type: &MediaType) -> MediaType {
    match media_type {
        MediaType::Other(other) => match other.as_str() {
            DOCKER_LAYER_GZIP => MediaType::ImageLayerGzip,
            DOCKER_CONFIG => MediaType::ImageConfig,
            DOCKER_LAYER_TAR => MediaType::ImageLayer,
            _ => media_type.clone(),
        },
        known => known.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_names_are_oci_specs() {
        assert_eq!(OCI_INDEX, MediaType::ImageIndex.to_string());
        let accepted: Vec<&str> = MANIFEST_ACCEPT.split(", ").collect();
        let kinds = [
            MediaType::ImageIndex.to_string(),
            MediaType::ImageManifest.to_string(),
            DOCKER_MANIFEST_LIST.to_string(),
            DOCKER_MANIFEST.to_string(),
        ];
        assert_eq!(
            accepted,
            kinds.iter().map(String::as_str).collect::<Vec<_>>()
        );
        for kind in &accepted {
            assert!(
                ManifestKind::of(&MediaType::from(*kind)).is_some(),
                "{kind}"
            );
        }
    }

    #[test]
    fn kinds_and_docker_equivalents() {
        assert_eq!(
            ManifestKind::of(&MediaType::from(DOCKER_MANIFEST_LIST)),
            Some(ManifestKind::Index)
        );
        assert_eq!(
            ManifestKind::of(&MediaType::from(
                "application/vnd.oci.image.manifest.v1+json"
            )),
            Some(ManifestKind::Image)
        );
        assert_eq!(ManifestKind::of(&MediaType::from("text/plain")), None);
        assert_eq!(
            to_oci(&MediaType::from(DOCKER_LAYER_GZIP)),
            MediaType::ImageLayerGzip
        );
        assert_eq!(
            to_oci(&MediaType::from(DOCKER_LAYER_TAR)).to_string(),
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(
            to_oci(&MediaType::from("application/x-other")).to_string(),
            "application/x-other"
        );
    }
}

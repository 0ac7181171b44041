//! The builder's error: what `strait build` reports.

use crate::registry::RegistryError;
use crate::{cache, layout, tar};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ::config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Reference(#[from] oci::ReferenceError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error("layer `{layer}`: {error}")]
    Layer {
        layer: String,
        #[source]
        error: tar::TarError,
    },
    #[error("base image {reference}: {source}")]
    Base {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("resolving {reference}: {source}")]
    Resolve {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("pushing {reference}: {source}")]
    Push {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("OCI layout: {0}")]
    Layout(#[from] layout::LayoutError),
    #[error("encoding JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("building an OCI document: {0}")]
    Spec(#[source] crate::image::SpecError),
}

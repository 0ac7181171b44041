//! Tags to digests: a deployment runs `repo@sha256:…`, resolved once when it is created,
//! so a tag moved later changes nothing that runs. Asks the registry with the builder's
//! Distribution client (the same credentials rules as `strait build`: `STRAIT_REGISTRY_AUTH`,
//! else docker's config; plain HTTP for loopback registries).

use builder::reference::Reference;
use builder::registry::{Credentials, Registry, RegistryError};

use crate::controller::{ImageResolver, ResolveError, ResolvedImage};

/// Resolves through the registry each reference names.
pub struct RegistryResolver {
    /// `user:password` for every registry (else docker's config per registry).
    pub credentials: Option<String>,
}

impl RegistryResolver {
    fn resolve_blocking(&self, image: &str) -> Result<ResolvedImage, ResolveError> {
        let reference =
            Reference::parse(image).map_err(|e| ResolveError::Invalid(e.to_string()))?;
        let credentials = match &self.credentials {
            Some(text) => Credentials::parse(text),
            None => builder::registry::docker_credentials(&reference.registry)
                .map_err(|e| ResolveError::Registry(e.to_string()))?,
        };
        let mut registry = Registry::new(&reference, false, None, credentials);
        registry.add_scope(&reference.repository, "pull");
        let name = format!("{}/{}", reference.registry, reference.repository);
        match registry.get_manifest(&reference.repository, &reference.reference()) {
            Ok((_, _, digest)) => Ok(ResolvedImage {
                pinned: format!("{name}@{digest}"),
                digest: digest.to_string(),
            }),
            Err(RegistryError::Status { status: 404, .. }) => Err(ResolveError::NotFound(format!(
                "image {image}: no such manifest in the registry (is it pushed? `strait build --push {image}`)"
            ))),
            Err(
                e @ (RegistryError::Status {
                    status: 401 | 403, ..
                }
                | RegistryError::Auth { .. }),
            ) => Err(ResolveError::Registry(format!(
                "image {image}: the registry refused: {e}"
            ))),
            Err(e) => Err(ResolveError::Registry(format!("image {image}: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl ImageResolver for RegistryResolver {
    async fn resolve(&self, image: &str) -> Result<ResolvedImage, ResolveError> {
        let this = RegistryResolver {
            credentials: self.credentials.clone(),
        };
        let image = image.to_string();
        tokio::task::spawn_blocking(move || this.resolve_blocking(&image))
            .await
            .map_err(|e| ResolveError::Registry(format!("resolving task failed: {e}")))?
    }
}

//! Tags to digests: a deployment runs `repo@sha256:…`, resolved once when it is created,
//! so a tag moved later changes nothing that runs. Asks the registry through
//! [`builder::resolve`], the same client and credential rules as `strait build`
//! (`STRAIT_REGISTRY_AUTH`, else docker's config; plain HTTP for loopback registries).

use builder::registry::RegistryError;

use crate::controller::{ImageResolver, ResolveError, ResolvedImage};

/// Resolves through the registry each reference names.
pub struct RegistryResolver {
    /// `user:password` for `credentials_for` (else docker's config per registry): never
    /// sent to a registry a deployment merely names.
    pub credentials: Option<String>,
    /// The registry (`host:port`) the credentials are for: strait's own.
    pub credentials_for: Option<String>,
}

fn resolve_blocking(
    credentials: Option<&str>,
    credentials_for: Option<&str>,
    image: &str,
) -> Result<ResolvedImage, ResolveError> {
    // Without a registry to send them to, no credentials go anywhere.
    let credentials = credentials.filter(|_| credentials_for.is_some());
    let access = builder::access(false, &[], credentials, credentials_for)
        .map_err(|e| ResolveError::Invalid(e.to_string()))?;
    match builder::resolve(image, &access) {
        Ok((reference, resolved)) => Ok(ResolvedImage {
            pinned: format!(
                "{}/{}@{}",
                reference.registry, reference.repository, resolved.digest
            ),
            digest: resolved.digest.to_string(),
        }),
        Err(builder::Error::Resolve { source, .. }) => Err(match source {
            RegistryError::Status { status: 404, .. } => ResolveError::NotFound(format!(
                "image {image}: no such manifest in the registry (is it pushed? `strait build --push {image}`)"
            )),
            e @ (RegistryError::Status {
                status: 401 | 403, ..
            }
            | RegistryError::Auth { .. }) => ResolveError::Registry(format!(
                "image {image}: the registry refused: {e}{}",
                refusal_hint(image, credentials, credentials_for)
            )),
            e => ResolveError::Registry(format!("image {image}: {e}")),
        }),
        Err(e) => Err(ResolveError::Invalid(e.to_string())),
    }
}

/// What a deployment's refusal can be helped by: the builder's own words name `strait
/// build`'s flags, not how `strait up` gets its credentials.
fn refusal_hint(image: &str, credentials: Option<&str>, credentials_for: Option<&str>) -> String {
    let registry = image.split('/').next().unwrap_or_default();
    match (credentials, credentials_for) {
        (None, _) => " (strait resolves and its agents pull with the credentials in \
                      STRAIT_REGISTRY_AUTH=user:password, for strait's own registry)"
            .into(),
        (Some(_), Some(own)) if own != registry => format!(
            " (STRAIT_REGISTRY_AUTH goes only to strait's own registry {own}, not to {registry})"
        ),
        _ => String::new(),
    }
}

#[async_trait::async_trait]
impl ImageResolver for RegistryResolver {
    async fn resolve(&self, image: &str) -> Result<ResolvedImage, ResolveError> {
        let credentials = self.credentials.clone();
        let credentials_for = self.credentials_for.clone();
        let image = image.to_string();
        tokio::task::spawn_blocking(move || {
            resolve_blocking(credentials.as_deref(), credentials_for.as_deref(), &image)
        })
        .await
        .map_err(|e| ResolveError::Registry(format!("resolving task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::refusal_hint;

    #[test]
    fn a_refusal_says_where_the_credentials_come_from() {
        let own = Some("127.0.0.1:5000");
        assert!(refusal_hint("127.0.0.1:5000/web:v1", None, own).contains("STRAIT_REGISTRY_AUTH="));
        assert_eq!(
            refusal_hint("registry.example:443/web:v1", Some("u:p"), own),
            " (STRAIT_REGISTRY_AUTH goes only to strait's own registry 127.0.0.1:5000, \
             not to registry.example:443)"
        );
        assert_eq!(refusal_hint("127.0.0.1:5000/web:v1", Some("u:p"), own), "");
    }
}

//! [`Blob`]: an oci-spec descriptor whose digest is known to be sha256.

use oci_spec::image::{Descriptor, MediaType, Platform};

use crate::digest::{Digest, DigestError};

/// A descriptor whose digest is a sha256 [`Digest`], checked once, with that digest at
/// hand: content strait can name a file by. The descriptor itself is oci-spec's, and is
/// what gets written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    digest: Digest,
    descriptor: Descriptor,
}

impl Blob {
    pub fn new(media_type: MediaType, digest: Digest, size: u64) -> Blob {
        Blob {
            descriptor: Descriptor::new(media_type, size, digest.to_spec()),
            digest,
        }
    }

    /// A descriptor read from elsewhere (a base image's manifest, a pushed manifest).
    pub fn checked(descriptor: Descriptor) -> Result<Blob, DigestError> {
        Ok(Blob {
            digest: Digest::try_from(descriptor.digest())?,
            descriptor,
        })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn media_type(&self) -> &MediaType {
        self.descriptor.media_type()
    }

    pub fn size(&self) -> u64 {
        self.descriptor.size()
    }

    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    pub fn into_descriptor(self) -> Descriptor {
        self.descriptor
    }

    /// The same content described with `platform` (as an index lists a manifest).
    pub fn with_platform(mut self, platform: Option<Platform>) -> Blob {
        self.descriptor.set_platform(platform);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_digest_once() {
        let blob = Blob::new(MediaType::ImageConfig, Digest::of(b"{}"), 2);
        let again = Blob::checked(blob.descriptor().clone()).expect("sha256");
        assert_eq!(again, blob);
        assert_eq!(again.media_type(), &MediaType::ImageConfig);
        assert_eq!(again.size(), 2);
        let json = serde_json::to_string(blob.descriptor()).expect("json");
        expect_test::expect![[r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}"#]].assert_eq(&json);
        let sha512 = Descriptor::new(
            MediaType::ImageConfig,
            2,
            oci_spec::image::Digest::try_from(format!("sha512:{}", "a".repeat(128)))
                .expect("valid"),
        );
        assert_eq!(Blob::checked(sha512), Err(DigestError::Unsupported));
    }
}

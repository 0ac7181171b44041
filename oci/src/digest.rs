//! sha256 digests: `sha256:<64 lowercase hex>`, the only kind strait stores or names a
//! file by.

use std::fmt;

use sha2::Digest as _;

/// A validated `sha256:<64 lowercase hex>` digest. Its hex part is safe as a file name.
/// Small (one pointer and a length): the registry makes one per request, and errors
/// carry two.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(Box<str>);

/// Why text is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not `algorithm:encoded` at all, or sha256 without 64 lowercase hex digits.
    Malformed,
    /// A well-formed digest of an algorithm strait does not store.
    Unsupported,
}

const PREFIX: &str = "sha256:";

impl Digest {
    /// Parses `sha256:<hex>`. Text of the form `algorithm:encoded` with another algorithm
    /// is [`DigestError::Unsupported`]; anything else that is not a sha256 digest is
    /// [`DigestError::Malformed`].
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, encoded)) = text.split_once(':') else {
            return Err(DigestError::Malformed);
        };
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        let encoded_ok = !encoded.is_empty()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
        if !algorithm_ok || !encoded_ok {
            return Err(DigestError::Malformed);
        }
        if algorithm != "sha256" {
            return Err(DigestError::Unsupported);
        }
        Digest::from_hex(encoded).ok_or(DigestError::Malformed)
    }

    /// A digest from its 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Digest(format!("{PREFIX}{hex}").into()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(sha2::Sha256::new_with_prefix(bytes))
    }

    /// The digest of what `hasher` was fed.
    pub fn from_hasher(hasher: sha2::Sha256) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(hasher.finalize())).into())
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same digest as oci-spec's type, for its descriptors.
    pub fn to_spec(&self) -> oci_spec::image::Digest {
        // `sha256:` and 64 lowercase hex digits, which oci-spec's grammar (a superset of
        // ours) accepts, so this never fails; `tests::spec_accepts_every_sha256` holds
        // oci-spec to it.
        match oci_spec::image::Digest::try_from(self.as_str()) {
            Ok(digest) => digest,
            Err(error) => unreachable!("oci-spec refuses the sha256 digest {self}: {error}"),
        }
    }
}

/// A descriptor's digest, if it is a sha256 one.
impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;

    fn try_from(digest: &oci_spec::image::Digest) -> Result<Digest, DigestError> {
        match digest.algorithm() {
            oci_spec::image::DigestAlgorithm::Sha256 => {
                Digest::from_hex(digest.digest()).ok_or(DigestError::Malformed)
            }
            _ => Err(DigestError::Unsupported),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a sha256 digest")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let hex = "a".repeat(64);
        assert_eq!(
            Digest::parse(&format!("sha256:{hex}")).map(|d| d.to_string()),
            Ok(format!("sha256:{hex}"))
        );
        assert_eq!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(DigestError::Unsupported)
        );
        assert_eq!(Digest::parse("md5:0123"), Err(DigestError::Unsupported));
        for bad in [
            "sha256:".to_string(),
            "sha256".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:../{}", "a".repeat(61)),
            format!(":{hex}"),
        ] {
            assert_eq!(Digest::parse(&bad), Err(DigestError::Malformed), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let d = Digest::of(b"x");
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::from_hex(d.hex()), Some(d.clone()));
        assert_eq!(Digest::try_from(&d.to_spec()), Ok(d));
    }

    #[test]
    fn spec_accepts_every_sha256() {
        // Every hex digit in every position, through the one conversion that assumes it.
        for digit in "0123456789abcdef".chars() {
            let hex: String = std::iter::repeat_n(digit, 64).collect();
            let digest = Digest::from_hex(&hex).expect("hex");
            assert_eq!(digest.to_spec().digest(), hex);
        }
    }

    #[test]
    fn other_algorithms_are_not_ours() {
        let spec = oci_spec::image::Digest::try_from(format!("sha512:{}", "a".repeat(128)))
            .expect("valid sha512");
        assert_eq!(Digest::try_from(&spec), Err(DigestError::Unsupported));
    }

    #[test]
    fn serde_round_trip() {
        let d = Digest::of(b"y");
        let json = serde_json::to_string(&d).expect("serialize");
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("parse"), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
    }
}

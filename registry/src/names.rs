//! What a repository name, tag, digest or upload id may be. Everything that reaches the
//! storage layer has passed through here, so no input can name a path outside the root:
//! names are lowercase `[a-z0-9]` components joined by `.`, `_`, `__` or `-`, separated by
//! `/`; components never start with `_` (storage keeps its own entries under `_`-names)
//! and never are `.` or `..`.

use std::fmt;

/// The spec's limit on a repository name (path components included).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name, e.g. `library/alpine`, validated against the spec's
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(name: &str) -> Option<RepoName> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return None;
        }
        name.split('/')
            .all(valid_component)
            .then(|| RepoName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or one or more `-`; then an alnum must follow.
        let run_end = bytes[i..]
            .iter()
            .position(|&c| alnum(c))
            .map_or(bytes.len(), |p| i + p);
        let run = &component[i..run_end];
        let ok = matches!(run, "." | "_" | "__") || run.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
        i = run_end;
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(reference: &str) -> bool {
    let bytes = reference.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 128
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A `sha256:<64 lowercase hex>` digest: the only algorithm the registry stores. Holds
/// the hex part; it is safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not `algorithm:encoded` at all.
    Malformed,
    /// A well-formed digest of an algorithm this registry does not store.
    Unsupported,
}

impl Digest {
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

    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(hex.to_owned()))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(hex::encode(sha2::Sha256::digest(bytes)))
    }

    pub fn from_hasher(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        Digest(hex::encode(hasher.finalize()))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Upload session ids are ours: 32 lowercase hex characters.
pub fn is_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for good in [
            "a",
            "library/alpine",
            "a.b_c__d-e---f",
            "0/1/2",
            "ghcr.io/x/y",
        ] {
            assert!(RepoName::parse(good).is_some(), "{good} should be valid");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            "_a",
            "a/_manifests",
            "a..b",
            "a___b",
            "a_-b",
            "-a",
            "a-",
            "a b",
            "a\\b",
            "a%2fb",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_none(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn tags() {
        assert!(is_tag("latest"));
        assert!(is_tag("_x.Y-1"));
        assert!(is_tag(&"a".repeat(128)));
        assert!(!is_tag(&"a".repeat(129)));
        assert!(!is_tag(".x"));
        assert!(!is_tag("-x"));
        assert!(!is_tag("a/b"));
        assert!(!is_tag(""));
        assert!(!is_tag("sha256:abc"));
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        assert_eq!(
            Digest::parse(&format!("sha256:{hex}")).map(|d| d.to_string()),
            Ok(format!("sha256:{hex}"))
        );
        assert_eq!(
            Digest::parse(&format!("sha512:{}", "a".repeat(128))),
            Err(DigestError::Unsupported)
        );
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
    }
}

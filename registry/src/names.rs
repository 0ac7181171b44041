//! What a repository name, tag, digest or upload id may be. Everything that reaches the
//! storage layer has passed through here, so no input can name a path outside the root:
//! names are lowercase `[a-z0-9]` components joined by `.`, `_`, `__` or `-`, separated by
//! `/`; components never start with `_` (storage keeps its own entries under `_`-names)
//! and never are `.` or `..`.

use std::fmt;

pub use oci::names::{MAX_NAME_LEN, is_tag};
pub use oci::{Digest, DigestError};

/// A repository name, e.g. `library/alpine`, validated against the spec's
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*` and its
/// length limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(name: &str) -> Option<RepoName> {
        (name.len() <= MAX_NAME_LEN && oci::names::is_repository_path(name))
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

    /// The grammar is `oci::names`'s (tested there); the length limit is ours.
    #[test]
    fn repository_names() {
        let longest = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        for good in ["a", "library/alpine", longest.as_str()] {
            assert!(RepoName::parse(good).is_some(), "{good} should be valid");
        }
        for bad in ["", "..", "a/_manifests", "a%2fb", &"a".repeat(256)] {
            assert!(RepoName::parse(bad).is_none(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn upload_ids() {
        assert!(is_upload_id(&"0a".repeat(16)));
        assert!(!is_upload_id(&"0A".repeat(16)));
        assert!(!is_upload_id("../x"));
    }
}

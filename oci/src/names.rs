//! The Distribution spec's grammars for repository names and tags, which the registry
//! enforces on every request and the builder on every reference it is given.

/// The spec's limit on a repository name (path components included).
pub const MAX_NAME_LEN: usize = 255;

/// Whether `name` is `/`-separated [path components](is_path_component), e.g.
/// `library/alpine`: the spec's
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, without its
/// length limit ([`MAX_NAME_LEN`]), which the registry adds.
pub fn is_repository_path(name: &str) -> bool {
    !name.is_empty() && name.split('/').all(is_path_component)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: never empty, never `.` or `..`, never starting
/// with `_`.
pub fn is_path_component(component: &str) -> bool {
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
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or one or more `-`; then an alnum must follow.
        let run_end = bytes[i..]
            .iter()
            .position(|&c| alnum(c))
            .map_or(bytes.len(), |p| i + p);
        let run = &component[i..run_end];
        if !(matches!(run, "." | "_" | "__") || run.bytes().all(|c| c == b'-')) {
            return false;
        }
        i = run_end;
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 128
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths() {
        for good in [
            "a",
            "library/alpine",
            "a.b_c__d-e---f",
            "0/1/2",
            "ghcr.io/x/y",
        ] {
            assert!(is_repository_path(good), "{good} should be valid");
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
            "Upper/case",
        ] {
            assert!(!is_repository_path(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn tags() {
        assert!(is_tag("latest"));
        assert!(is_tag("_x.Y-1"));
        assert!(is_tag("3.20"));
        assert!(is_tag(&"a".repeat(128)));
        assert!(!is_tag(&"a".repeat(129)));
        assert!(!is_tag(".x"));
        assert!(!is_tag("-x"));
        assert!(!is_tag("a/b"));
        assert!(!is_tag(""));
        assert!(!is_tag("sha256:abc"));
    }
}

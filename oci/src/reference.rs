//! Image references: `[registry/]repository[:tag][@digest]`, with docker's defaults
//! (`docker.io`, `library/` for one-component names, tag `latest`). Why not
//! `oci_spec::distribution::Reference`: see the crate's documentation.

use std::fmt;

use crate::digest::Digest;
use crate::names;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` when none was).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference `{reference}`: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

const DOCKER_HUB: &str = "docker.io";

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.len() > 255 + 128 + 72 {
            return Err(fail("it is too long"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(Digest::parse(digest).map_err(|_| {
                    fail("the digest after `@` must be `sha256:` and 64 lowercase hex digits")
                })?),
            ),
            None => (text, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path)
            }
            _ => (DOCKER_HUB.to_string(), rest),
        };
        if !valid_host(&registry) {
            return Err(fail("the registry must be `host` or `host:port`"));
        }
        // A tag is after the last colon that follows the last slash.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last_slash..].rfind(':') {
            Some(i) => (
                &path[..last_slash + i],
                Some(path[last_slash + i + 1..].to_string()),
            ),
            None => (path, None),
        };
        if let Some(tag) = &tag
            && !names::is_tag(tag)
        {
            return Err(fail(
                "a tag is 1-128 characters of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`",
            ));
        }
        if !names::is_repository_path(repository) {
            return Err(fail(
                "repository path components are lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
            ));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest if pinned, else the tag (default `latest`).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The tag to publish under (`latest` when none was given).
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The host to connect to (docker.io's API lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// Loopback registries are spoken to over plain HTTP, as docker does.
    pub fn is_loopback(&self) -> bool {
        let host = host_part(&self.registry);
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

fn host_part(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.split_once(']').map_or(registry, |(h, _)| h);
    }
    registry.split(':').next().unwrap_or(registry)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) => {
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                ("x", port.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let name_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    port_ok && name_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn show(text: &str) -> String {
        match Reference::parse(text) {
            Ok(r) => format!(
                "{} | {} | {:?} | {:?}",
                r.registry,
                r.repository,
                r.tag,
                r.digest.map(|d| d.to_string())
            ),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_references() {
        let cases = [
            "alpine",
            "alpine:3.20",
            "127.0.0.1:5000/app/web:v1",
            "localhost/app",
            "registry.example.com/a/b/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "[::1]:5000/x:y",
            "Upper/case",
            "app:",
            "app:-bad",
            "host:notaport/app",
            "app@sha256:abc",
            "a//b",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c} => {}", show(c)))
            .collect();
        expect![[r#"
            alpine => docker.io | library/alpine | None | None
            alpine:3.20 => docker.io | library/alpine | Some("3.20") | None
            127.0.0.1:5000/app/web:v1 => 127.0.0.1:5000 | app/web | Some("v1") | None
            localhost/app => localhost | app | None | None
            registry.example.com/a/b/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef => registry.example.com | a/b/c | None | Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
            [::1]:5000/x:y => [::1]:5000 | x | Some("y") | None
            Upper/case => invalid image reference `Upper/case`: repository path components are lowercase letters and digits, separated by `.`, `_`, `__` or `-`
            app: => invalid image reference `app:`: a tag is 1-128 characters of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`
            app:-bad => invalid image reference `app:-bad`: a tag is 1-128 characters of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`
            host:notaport/app => invalid image reference `host:notaport/app`: the registry must be `host` or `host:port`
            app@sha256:abc => invalid image reference `app@sha256:abc`: the digest after `@` must be `sha256:` and 64 lowercase hex digits
            a//b => invalid image reference `a//b`: repository path components are lowercase letters and digits, separated by `.`, `_`, `__` or `-`"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn loopback() {
        for (text, want) in [
            ("127.0.0.1:5000/a", true),
            ("localhost:80/a", true),
            ("[::1]:5000/a", true),
            ("example.com/a", false),
            ("10.0.0.1:5000/a", false),
        ] {
            assert_eq!(
                Reference::parse(text).map(|r| r.is_loopback()),
                Ok(want),
                "{text}"
            );
        }
    }
}

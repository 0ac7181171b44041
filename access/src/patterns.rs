//! What a team owns, as patterns: host names (`web.example.com`, `*.web.example.com`),
//! names of services, apps and repositories (`web`, `web-*`, `web/*`), and TCP listen
//! addresses (`0.0.0.0:5432`, `*:5432`). Each kind knows whether it covers a value (a
//! route's host may itself be a wildcard) and whether two patterns overlap — two teams
//! may never own overlapping patterns.

use std::fmt;
use std::net::SocketAddr;

/// A host pattern: an exact name, `*.suffix` (any subdomain), or `*` (any host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `*.example.com` -> `.example.com`.
    Subdomains(String),
    Any,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.to_ascii_lowercase();
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        };
        if text == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(suffix) = text.strip_prefix("*.") {
            if valid_name(suffix) {
                return Ok(HostPattern::Subdomains(format!(".{suffix}")));
            }
        } else if valid_name(&text) {
            return Ok(HostPattern::Exact(text));
        }
        Err(format!(
            "`{text}` is not a host pattern (`name.example.com`, `*.example.com` or `*`)"
        ))
    }

    /// Whether every host `other` matches is one this pattern matches.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) => true,
            (_, HostPattern::Any) => false,
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(_), HostPattern::Subdomains(_)) => false,
            (HostPattern::Subdomains(s), HostPattern::Exact(h)) => h.ends_with(s.as_str()),
            (HostPattern::Subdomains(s), HostPattern::Subdomains(t)) => t.ends_with(s.as_str()),
        }
    }

    /// Whether some host matches both.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        self.covers(other)
            || other.covers(self)
            || match (self, other) {
                (HostPattern::Subdomains(s), HostPattern::Subdomains(t)) => {
                    s.ends_with(t.as_str()) || t.ends_with(s.as_str())
                }
                _ => false,
            }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Subdomains(s) => write!(f, "*{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// A name pattern with `*` wildcards (any run of characters, `/` included): `web`,
/// `web-*`, `web/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn parse(text: &str) -> Result<NamePattern, String> {
        let ok = !text.is_empty()
            && text.len() <= 256
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./*".contains(&b));
        if ok {
            Ok(NamePattern(text.to_string()))
        } else {
            Err(format!(
                "`{text}` is not a name pattern (lowercase letters, digits, `-_./` and `*` wildcards)"
            ))
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    fn literal_prefix(&self) -> &str {
        self.0.split('*').next().unwrap_or("")
    }

    fn literal_suffix(&self) -> &str {
        self.0.rsplit('*').next().unwrap_or("")
    }

    /// Whether some name matches both. Exact for patterns with at most one `*` each;
    /// with more it may answer yes where no name matches both (two teams are then told to
    /// write their patterns apart, never let through).
    pub fn overlaps(&self, other: &NamePattern) -> bool {
        let wild = |p: &NamePattern| p.0.contains('*');
        match (wild(self), wild(other)) {
            (false, _) => other.matches(&self.0),
            (_, false) => self.matches(&other.0),
            (true, true) => {
                let (p, q) = (self.literal_prefix(), other.literal_prefix());
                let (s, t) = (self.literal_suffix(), other.literal_suffix());
                (p.starts_with(q) || q.starts_with(p)) && (s.ends_with(t) || t.ends_with(s))
            }
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` matches any run of bytes.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A TCP listen address pattern: `ip:port`, or `*:port` (any address on that port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenPattern {
    Exact(SocketAddr),
    AnyAddress(u16),
}

impl ListenPattern {
    pub fn parse(text: &str) -> Result<ListenPattern, String> {
        if let Some(port) = text.strip_prefix("*:") {
            return port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(ListenPattern::AnyAddress)
                .ok_or_else(|| format!("`{text}`: not a port"));
        }
        text.parse::<SocketAddr>()
            .map(ListenPattern::Exact)
            .map_err(|_| format!("`{text}` is not a listen address (`ip:port` or `*:port`)"))
    }

    pub fn matches(&self, addr: &SocketAddr) -> bool {
        match self {
            ListenPattern::Exact(a) => a == addr,
            ListenPattern::AnyAddress(port) => addr.port() == *port,
        }
    }

    pub fn overlaps(&self, other: &ListenPattern) -> bool {
        let port = |p: &ListenPattern| match p {
            ListenPattern::Exact(a) => a.port(),
            ListenPattern::AnyAddress(port) => *port,
        };
        match (self, other) {
            (ListenPattern::Exact(a), ListenPattern::Exact(b)) => {
                a.port() == b.port()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }
            _ => port(self) == port(other),
        }
    }
}

impl fmt::Display for ListenPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenPattern::Exact(a) => write!(f, "{a}"),
            ListenPattern::AnyAddress(port) => write!(f, "*:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> HostPattern {
        HostPattern::parse(s).expect("host pattern")
    }

    fn name(s: &str) -> NamePattern {
        NamePattern::parse(s).expect("name pattern")
    }

    #[test]
    fn hosts_cover_and_overlap() {
        assert!(host("*.web.example.com").covers(&host("a.web.example.com")));
        assert!(host("*.web.example.com").covers(&host("*.api.web.example.com")));
        assert!(!host("*.web.example.com").covers(&host("web.example.com")));
        assert!(!host("web.example.com").covers(&host("*.web.example.com")));
        assert!(host("*").covers(&host("*.x.com")));
        assert!(!host("*.x.com").covers(&host("*")));
        // A wildcard that merely overlaps a host.
        assert!(host("*.example.com").overlaps(&host("web.example.com")));
        assert!(host("*.example.com").overlaps(&host("*.web.example.com")));
        assert!(!host("*.example.com").overlaps(&host("example.com")));
        assert!(!host("*.a.com").overlaps(&host("*.b.com")));
        assert!(host("Web.Example.com") == host("web.example.com"));
        assert!(HostPattern::parse("web.example.com:80").is_err());
        assert!(HostPattern::parse("*web.com").is_err());
    }

    #[test]
    fn names_match_and_overlap() {
        assert!(name("web-*").matches("web-api"));
        assert!(!name("web-*").matches("web"));
        assert!(name("web/*").matches("web/app/v1"));
        assert!(name("*-db").matches("orders-db"));
        assert!(name("web").overlaps(&name("web")));
        assert!(name("web-*").overlaps(&name("web-api")));
        assert!(name("web-*").overlaps(&name("web-a*")));
        assert!(!name("web-*").overlaps(&name("api-*")));
        assert!(!name("web/*").overlaps(&name("api/*")));
        assert!(name("*").overlaps(&name("x")));
        assert!(NamePattern::parse("Web").is_err());
    }

    #[test]
    fn listen_addresses() {
        let any = ListenPattern::parse("*:5432").expect("pattern");
        let exact = ListenPattern::parse("127.0.0.1:5432").expect("pattern");
        let wildcard = ListenPattern::parse("0.0.0.0:5432").expect("pattern");
        assert!(any.matches(&"10.0.0.1:5432".parse().expect("addr")));
        assert!(exact.matches(&"127.0.0.1:5432".parse().expect("addr")));
        assert!(any.overlaps(&exact));
        assert!(wildcard.overlaps(&exact));
        assert!(!exact.overlaps(&ListenPattern::parse("127.0.0.2:5432").expect("pattern")));
        assert!(ListenPattern::parse("*:0").is_err());
        assert!(ListenPattern::parse("host:1").is_err());
    }
}

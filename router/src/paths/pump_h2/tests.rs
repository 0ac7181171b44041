use http::header::HeaderValue;

use super::*;
use crate::config::HashOn;
use crate::pool::fnv1a;
use crate::request::hash_key;

/// Route conditions see an HTTP/2 request's headers as sent; the hash key sees them as
/// the upstream head carries them (`host` from `:authority`, cookie crumbs joined).
#[test]
fn conditions_see_headers_as_sent_hash_keys_as_forwarded() {
    let mut sent = HeaderMap::new();
    sent.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
    sent.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
    let upstream = [
        httparse::Header {
            name: "host",
            value: b"a.example:8443",
        },
        httparse::Header {
            name: "cookie",
            value: b"a=1; b=2",
        },
    ];
    let lookup = H2Headers {
        sent: &sent,
        upstream: &upstream,
    };
    assert_eq!(lookup.first(&HOST), None);
    assert_eq!(lookup.first(&http::header::COOKIE), Some(&b"a=1"[..]));
    let key = |on: HashOn| hash_key(&on, &lookup, None);
    assert_eq!(
        key(HashOn::Header("host".into())),
        Some(fnv1a(&[b"a.example:8443"]))
    );
    assert_eq!(
        key(HashOn::Header("cookie".into())),
        Some(fnv1a(&[b"a=1; b=2"]))
    );
    assert_eq!(key(HashOn::Cookie("b".into())), Some(fnv1a(&[b"2"])));
}

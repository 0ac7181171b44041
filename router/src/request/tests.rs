use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderName, HeaderValue};

use super::*;

fn header_map(headers: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

fn parsed(headers: &[(&'static str, &'static str)]) -> Vec<httparse::Header<'static>> {
    headers
        .iter()
        .map(|(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect()
}

/// A parsed head (the pump) and a `HeaderMap` (HTTP/2, pingora's path) hash alike, so a
/// client lands on the same instance whichever way it comes.
#[test]
fn hash_keys_agree_across_header_views() {
    let headers = [
        ("X-User", "alice"),
        ("x-user", "bob"),
        ("cookie", "a=1; session=s-42"),
        ("Cookie", "later=9"),
    ];
    let (map, list) = (header_map(&headers), parsed(&headers));
    let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    for on in [
        HashOn::Header("x-user".into()),
        HashOn::Header("X-USER".into()),
        HashOn::Cookie("session".into()),
        HashOn::Cookie("later".into()),
        HashOn::Cookie("missing".into()),
        HashOn::Header("missing".into()),
        HashOn::ClientIp,
    ] {
        assert_eq!(
            hash_key(&on, &map, ip),
            hash_key(&on, list.as_slice(), ip),
            "{on:?}"
        );
    }
    let on_user = HashOn::Header("x-user".into());
    assert_eq!(hash_key(&on_user, &map, ip), Some(fnv1a(&[b"alice"])));
    let on_session = HashOn::Cookie("session".into());
    assert_eq!(hash_key(&on_session, &map, ip), Some(fnv1a(&[b"s-42"])));
    assert_eq!(hash_key(&HashOn::Cookie("missing".into()), &map, ip), None);
    assert_eq!(hash_key(&HashOn::ClientIp, &map, None), None);
}

/// The client-IP key hashes the address as text: the same key as every earlier version,
/// so an upgrade does not move clients to other instances.
#[test]
fn client_ip_keys_hash_the_address_text() {
    for ip in [
        IpAddr::V4(Ipv4Addr::new(192, 168, 100, 200)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::new(
            0xfe80, 0x1234, 0x5678, 0x9abc, 0xdef0, 0x1234, 0x5678, 0x9abc,
        )),
        IpAddr::V6(Ipv4Addr::new(255, 255, 255, 255).to_ipv6_mapped()),
    ] {
        assert_eq!(
            hash_key(&HashOn::ClientIp, &http::HeaderMap::new(), Some(ip)),
            Some(fnv1a(&[ip.to_string().as_bytes()])),
            "{ip}"
        );
    }
}

use expect_test::{Expect, expect};

use super::*;

fn limits() -> HeadLimits {
    HeadLimits {
        max_bytes: 1024,
        max_headers: 8,
        head_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    }
}

fn check(head: &[u8], expected: Expect) {
    let actual = match validate_head(head, &limits()) {
        Ok(()) => "ok".to_string(),
        Err(r) => format!("{} {}", r.status, r.reason),
    };
    expected.assert_eq(&actual);
}

#[test]
fn valid_heads() {
    check(b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n", expect!["ok"]);
    check(b"GET / HTTP/1.0\r\n\r\n", expect!["ok"]);
    check(b"OPTIONS * HTTP/1.1\r\nHost: a.com\r\n\r\n", expect!["ok"]);
    check(
        b"GET http://a.com/x HTTP/1.1\r\nHost: a.com\r\n\r\n",
        expect!["ok"],
    );
    check(
        b"POST /x HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: Chunked\r\n\r\n",
        expect!["ok"],
    );
    check(
        b"POST /x HTTP/1.1\r\nHost: a.com\r\nContent-Length: 10\r\n\r\n",
        expect!["ok"],
    );
}

#[test]
fn framing_attacks() {
    check(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        expect!["400 both Content-Length and Transfer-Encoding"],
    );
    check(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n",
        expect!["400 duplicate Content-Length"],
    );
    check(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        expect!["400 duplicate Transfer-Encoding"],
    );
    check(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        expect!["400 unsupported Transfer-Encoding (only `chunked`)"],
    );
    check(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n",
        expect!["400 invalid Content-Length"],
    );
    check(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        expect!["400 invalid Content-Length"],
    );
    check(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        expect!["400 invalid Content-Length"],
    );
    check(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        expect!["400 Transfer-Encoding in an HTTP/1.0 request"],
    );
    check(
        b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
        expect!["400 obsolete header line folding"],
    );
    check(
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 malformed request line"],
    );
    check(
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        expect!["505 unsupported HTTP version"],
    );
    check(
        b"GET / HTTP/1.1\nHost: a\n\n",
        expect!["400 bare LF in request head"],
    );
    check(
        b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
        expect!["400 bare CR in request head"],
    );
    check(
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        expect!["400 malformed request head"],
    );
    check(
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        expect!["400 invalid Host header"],
    );
    check(
        b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        expect!["400 invalid Host header"],
    );
    check(
        b"GET x HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 invalid request target"],
    );
    check(
        b"GET / HTTP/1.1\r\n\r\n",
        expect!["400 missing Host header"],
    );
    check(
        b"GET http://admin.internal/x HTTP/1.1\r\nHost: public.example.com\r\n\r\n",
        expect!["400 request target authority differs from Host"],
    );
    check(
        b"GET http://A.com:80/x HTTP/1.1\r\nHost: a.com:80\r\n\r\n",
        expect!["ok"],
    );
    check(
        b"GET / HTTP/1.1\r\nHost: a\",for=6.6.6.6;x=\".example.com\r\n\r\n",
        expect!["400 invalid Host header"],
    );
    check(
        b"GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\nG: 1\r\nH: 1\r\nI: 1\r\n\r\n",
        expect!["431 too many request headers"],
    );
}

#[test]
fn request_targets_and_methods() {
    check(
        b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 request target has a fragment"],
    );
    check(
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 request target has bytes other than visible ASCII"],
    );
    check(
        b"GET /a?b=\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 malformed request head"],
    );
    check(
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 invalid method (methods are upper-case tokens)"],
    );
    check(
        b"Get / HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 invalid method (methods are upper-case tokens)"],
    );
    check(b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n", expect!["ok"]);
    check(
        b"VERSION-CONTROL / HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["ok"],
    );
    check(
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["400 asterisk-form target without OPTIONS"],
    );
    check(
        b"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n",
        expect!["405 CONNECT is not supported"],
    );
    check(
        b"GET HTTP://a.com/x HTTP/1.1\r\nHost: a.com\r\n\r\n",
        expect!["ok"],
    );
    check(
        b"GET http:///x HTTP/1.1\r\nHost: a.com\r\n\r\n",
        expect!["400 invalid authority in the request target"],
    );
    check(
        b"GET http://u@a.com/x HTTP/1.1\r\nHost: a.com\r\n\r\n",
        expect!["400 invalid authority in the request target"],
    );
    check(
        b"GET a.com:80 HTTP/1.1\r\nHost: a.com\r\n\r\n",
        expect!["400 invalid request target"],
    );
    check(
        b"GET /a/b;c=d?e=f&g=%41~!$'()*+,:@ HTTP/1.1\r\nHost: a\r\n\r\n",
        expect!["ok"],
    );
}

#[test]
fn head_end_finds_crlf_and_bare_lf_terminators() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    assert_eq!(head_end(b""), None);
}

/// Any bytes at all: validation answers, never panics.
#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..2000 {
        let bytes: Vec<u8> = (0..len % 300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Bias towards bytes that matter to HTTP parsing.
                const ALPHABET: &[u8] = b"GET / HTTP/1.1\r\n: \tHost:ax\x00\x7f\xff";
                ALPHABET[(seed % ALPHABET.len() as u64) as usize]
            })
            .collect();
        let _ = validate_head(&bytes, &limits());
        let _ = head_end(&bytes);
    }
}

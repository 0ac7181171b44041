use expect_test::{Expect, expect};

use super::*;

fn response(text: &str, head_request: bool) -> String {
    let mut storage = [httparse::EMPTY_HEADER; 16];
    match parse_response(text.as_bytes(), &mut storage, head_request) {
        Ok(Some(r)) => format!(
            "{} {:?} keep-alive={} len={}",
            r.status, r.body, r.keep_alive, r.len
        ),
        Ok(None) => "partial".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn response_framing() {
    let check = |text: &str, head: bool, expected: Expect| {
        expected.assert_eq(&response(text, head));
    };
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        false,
        expect!["200 Length(5) keep-alive=true len=38"],
    );
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        true,
        expect!["200 None keep-alive=true len=38"],
    );
    check(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
        expect!["200 Chunked keep-alive=true len=47"],
    );
    check(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        false,
        expect!["200 Chunked keep-alive=false len=66"],
    );
    check(
        "HTTP/1.1 200 OK\r\n\r\n",
        false,
        expect!["200 UntilClose keep-alive=false len=19"],
    );
    check(
        "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
        false,
        expect!["200 Length(1) keep-alive=false len=38"],
    );
    check(
        "HTTP/1.1 204 No Content\r\n\r\n",
        false,
        expect!["204 None keep-alive=true len=27"],
    );
    check(
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        false,
        expect!["304 None keep-alive=true len=48"],
    );
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        false,
        expect!["Length"],
    );
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        false,
        expect!["Length"],
    );
    check("HTTP/1.1 200 OK\r\nContent-Le", false, expect!["partial"]);
    check("SSH-2.0-OpenSSH\r\n\r\n", false, expect!["Malformed"]);
}

use expect_test::{Expect, expect};

use super::*;

/// Runs `input` through a tracker in pieces of `step` bytes; returns the data and the
/// bytes consumed, or the error.
fn dechunk(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), BadChunk> {
    let mut chunked = Chunked::new();
    let mut data = Vec::new();
    let mut consumed = 0;
    for piece in input.chunks(step) {
        let n = chunked.advance(piece, |r| data.extend_from_slice(&piece[r]))?;
        consumed += n;
        if chunked.is_done() {
            break;
        }
    }
    Ok((data, consumed))
}

#[test]
fn chunked_bodies_end_where_they_should_in_any_split() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    for step in 1..=body.len() {
        let (data, consumed) = dechunk(body, step).expect("valid");
        assert_eq!(data, b"hello world", "step {step}");
        assert_eq!(
            consumed,
            body.len() - 4,
            "step {step}: stops before the next message"
        );
    }
}

#[test]
fn chunked_framing_errors() {
    let check = |input: &[u8], expected: Expect| {
        let actual = match dechunk(input, input.len()) {
            Ok((_, n)) => format!("ok {n}"),
            Err(BadChunk(reason)) => reason.to_string(),
        };
        expected.assert_eq(&actual);
    };
    check(b"0\r\n\r\n", expect!["ok 5"]);
    check(b"x\r\n", expect!["invalid chunk size"]);
    check(b"\r\n", expect!["invalid chunk size"]);
    check(b"5\nhello\r\n", expect!["invalid chunk size"]);
    check(
        b"3\r\nhello\r\n",
        expect!["chunk data longer than its size"],
    );
    check(b"10000000000000000\r\n", expect!["chunk size too large"]);
    check(b"0\r\nX: y\n\r\n", expect!["invalid trailer"]);
    check(b"0\r\n\rX", expect!["bare CR after last chunk"]);
    let long_extension = [b"1;".as_slice(), &[b'a'; 5000]].concat();
    check(&long_extension, expect!["chunk extension too long"]);
}

#[test]
fn arbitrary_chunked_input_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let len = (seed % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"0123456789abcdefABCDEF;\r\n \tXYZ:";
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        let _ = dechunk(&bytes, 1 + (seed % 7) as usize);
    }
}

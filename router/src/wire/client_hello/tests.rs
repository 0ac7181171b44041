use super::{Incomplete, client_hello_sni};

/// A minimal TLS 1.2 ClientHello with an SNI extension for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let name = name.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = Vec::new();
    extensions.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
    extensions.extend_from_slice(&0u16.to_be_bytes());
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn finds_sni() {
    let hello = client_hello("DB.Example.com");
    assert_eq!(
        client_hello_sni(&hello),
        Ok(Some("db.example.com".to_string()))
    );
    // Partial records ask for more bytes.
    for cut in [0, 3, 5, 40, hello.len() - 1] {
        assert_eq!(
            client_hello_sni(&hello[..cut]),
            Err(Incomplete),
            "cut at {cut}"
        );
    }
    assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n\r\n"), Ok(None));
}

#[test]
fn garbage_never_panics() {
    let hello = client_hello("a.example.com");
    let mut seed = 0x1234_5678u64;
    for i in 0..5000 {
        let mut bytes = hello.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed as usize) % bytes.len();
        bytes[at] = (seed >> 32) as u8;
        bytes.truncate(bytes.len() - (i % 7));
        let _ = client_hello_sni(&bytes);
    }
}

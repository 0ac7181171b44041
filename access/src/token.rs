//! Admin API tokens: `strait_<id>_<secret>`, 16 hex digits of id and 64 of secret, both
//! random. strait keeps the id and the SHA-256 of the secret; the secret is shown once,
//! when the token is made. A presented token is checked by its id's record, comparing
//! hashes in constant time.

use sha2::{Digest, Sha256};

const PREFIX: &str = "strait_";

/// A new token: (id, the whole token to hand out, the hash to keep).
pub fn mint() -> (String, String, String) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let hash = hash(&secret);
    (id.clone(), format!("{PREFIX}{id}_{secret}"), hash)
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The (id, secret) of a token in strait's format.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Whether `secret` hashes to `stored` (constant time in the hash).
pub fn verify(secret: &str, stored: &str) -> bool {
    constant_time_eq(hash(secret).as_bytes(), stored.as_bytes())
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let (id, token, stored) = mint();
        let (parsed_id, secret) = parse(&token).expect("parses");
        assert_eq!(parsed_id, id);
        assert!(verify(secret, &stored));
        let (_, other, _) = mint();
        let (_, wrong) = parse(&other).expect("parses");
        assert!(!verify(wrong, &stored));
        assert!(parse("strait_zz_00").is_none());
        assert!(parse(&token[1..]).is_none());
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}

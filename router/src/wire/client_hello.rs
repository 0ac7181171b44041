//! The server name (SNI) of a TLS ClientHello, for TCP routes chosen by it: a
//! bounds-checked parser of the first record, never panicking on any input.

/// The ClientHello record is not complete yet: read more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incomplete;

/// Extracts the SNI host name from a TLS ClientHello record, if `buf` holds one.
/// `Err(Incomplete)` when more bytes are needed. Never panics on any input.
pub fn client_hello_sni(buf: &[u8]) -> Result<Option<String>, Incomplete> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Some(head)
    }
    fn u16_at(bytes: &[u8]) -> usize {
        usize::from(bytes[0]) << 8 | usize::from(bytes[1])
    }
    if buf.len() < 5 {
        return Err(Incomplete);
    }
    if buf[0] != 22 {
        return Ok(None); // not a TLS handshake record
    }
    let record_len = u16_at(&buf[3..5]);
    if buf.len() < 5 + record_len {
        return Err(Incomplete);
    }
    let parse = || -> Option<Option<String>> {
        let mut p = &buf[5..5 + record_len];
        let header = take(&mut p, 4)?;
        if header[0] != 1 {
            return Some(None); // not a ClientHello
        }
        take(&mut p, 2 + 32)?; // version, random
        let session_len = usize::from(take(&mut p, 1)?[0]);
        take(&mut p, session_len)?;
        let suites_len = u16_at(take(&mut p, 2)?);
        take(&mut p, suites_len)?;
        let compression_len = usize::from(take(&mut p, 1)?[0]);
        take(&mut p, compression_len)?;
        if p.is_empty() {
            return Some(None);
        }
        let extensions_len = u16_at(take(&mut p, 2)?);
        let mut extensions = take(&mut p, extensions_len)?;
        while extensions.len() >= 4 {
            let kind = u16_at(take(&mut extensions, 2)?);
            let len = u16_at(take(&mut extensions, 2)?);
            let mut data = take(&mut extensions, len)?;
            if kind != 0 {
                continue;
            }
            let list_len = u16_at(take(&mut data, 2)?);
            let mut list = take(&mut data, list_len)?;
            while list.len() >= 3 {
                let name_type = take(&mut list, 1)?[0];
                let name_len = u16_at(take(&mut list, 2)?);
                let name = take(&mut list, name_len)?;
                if name_type == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
        }
        Some(None)
    };
    Ok(parse().flatten())
}

#[cfg(test)]
mod tests;

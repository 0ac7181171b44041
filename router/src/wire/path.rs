//! Path checks.

/// Whether a request path has `.` or `..` segments (also percent-encoded): refused, so a
/// prefix match and rewrite cannot be escaped by a backend that normalizes paths. Segments
/// end at `/` and at what such a backend may take for one: `%2f`, `\` and `%5c`, also
/// encoded twice (`%252f`); dots before a `;` path parameter (`..;x`) count too.
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Dots in the current segment, and whether it held anything else.
    let (mut dots, mut only_dots) = (0u32, true);
    let mut i = 0;
    loop {
        let (byte, width) = match bytes.get(i) {
            None => (b'/', 1),
            Some(b'%') => match bytes.get(i + 1..i + 3) {
                Some([b'2', c]) if c | 0x20 == b'e' => (b'.', 3),
                Some([b'2', c]) if c | 0x20 == b'f' => (b'/', 3),
                Some([b'5', c]) if c | 0x20 == b'c' => (b'/', 3),
                // Encoded twice (`%252e`): a backend that decodes twice sees a dot.
                Some(b"25") => match bytes.get(i + 3..i + 5) {
                    Some([b'2', c]) if c | 0x20 == b'e' => (b'.', 5),
                    Some([b'2', c]) if c | 0x20 == b'f' => (b'/', 5),
                    Some([b'5', c]) if c | 0x20 == b'c' => (b'/', 5),
                    _ => (b'%', 1),
                },
                _ => (b'%', 1),
            },
            Some(b'\\') => (b'/', 1),
            Some(&other) => (other, 1),
        };
        match byte {
            // `..;x` is `..` with a path parameter to Tomcat and Spring.
            b'/' | b';' => {
                if only_dots && (dots == 1 || dots == 2) {
                    return true;
                }
                if byte == b';' {
                    only_dots = false;
                    i += width;
                    continue;
                }
                if i >= bytes.len() {
                    return false;
                }
                (dots, only_dots) = (0, true);
            }
            b'.' => dots += 1,
            _ => only_dots = false,
        }
        i += width;
    }
}

#[cfg(test)]
mod tests;

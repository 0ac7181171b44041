//! Just enough of HTTP/2's framing (RFC 9113 section 4.1) to see the frames that end
//! things: GOAWAY (a connection ends; with an error code, a connection error) and
//! RST_STREAM (a stream error), with their codes, in a byte stream as it passes. Frame
//! boundaries come from each 9-byte header's length; payloads are skipped but for the
//! error codes. Counts, never decides: pingora's h2 does the protocol.

/// GOAWAY and RST_STREAM frame types.
const GOAWAY: u8 = 0x7;
const RST_STREAM: u8 = 0x3;

/// The client connection preface (RFC 9113 section 3.4), before the client's frames.
pub const CLIENT_PREFACE_LEN: usize = 24;

/// The error codes of RFC 9113 section 7 by value; [`error_code_index`] maps any other
/// value to the last entry.
pub const ERROR_CODES: [&str; 15] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
    "other",
];

/// The index of `code` in [`ERROR_CODES`].
pub fn error_code_index(code: u32) -> usize {
    usize::try_from(code)
        .ok()
        .filter(|&i| i < ERROR_CODES.len() - 1)
        .unwrap_or(ERROR_CODES.len() - 1)
}

/// A frame that ends a connection or a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Event {
    GoAway { code: u32 },
    RstStream { code: u32 },
}

/// Follows one direction of an HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Preface bytes still to pass before the first frame.
    preface: usize,
    header: [u8; 9],
    header_len: usize,
    /// In a payload: its frame type, bytes left, and position.
    kind: u8,
    left: usize,
    at: usize,
    code: [u8; 4],
}

impl FrameScanner {
    /// For what a client sends (the preface first).
    pub fn from_client() -> Self {
        Self::new(CLIENT_PREFACE_LEN)
    }

    /// For what a server sends.
    pub fn from_server() -> Self {
        Self::new(0)
    }

    fn new(preface: usize) -> Self {
        FrameScanner {
            preface,
            header: [0; 9],
            header_len: 0,
            kind: 0,
            left: 0,
            at: 0,
            code: [0; 4],
        }
    }

    /// Where a frame's error code is in its payload.
    fn code_at(kind: u8) -> Option<usize> {
        match kind {
            GOAWAY => Some(4),
            RST_STREAM => Some(0),
            _ => None,
        }
    }

    /// Feeds the next bytes of the stream; calls `on` for each ending frame completed.
    pub fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(H2Event)) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                data = &data[n..];
                continue;
            }
            if self.left == 0 {
                let n = (9 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    self.left = usize::from(self.header[0]) << 16
                        | usize::from(self.header[1]) << 8
                        | usize::from(self.header[2]);
                    self.kind = self.header[3];
                    self.at = 0;
                }
                continue;
            }
            let n = self.left.min(data.len());
            if let Some(start) = Self::code_at(self.kind) {
                for (offset, byte) in data[..n].iter().enumerate() {
                    let position = self.at + offset;
                    if (start..start + 4).contains(&position) {
                        self.code[position - start] = *byte;
                        if position == start + 3 {
                            let code = u32::from_be_bytes(self.code);
                            on(match self.kind {
                                GOAWAY => H2Event::GoAway { code },
                                _ => H2Event::RstStream { code },
                            });
                        }
                    }
                }
            }
            self.at += n;
            self.left -= n;
            data = &data[n..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn sees_goaway_and_rst_stream_codes_across_any_split() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(0x4, 0, &[0; 12])); // SETTINGS
        stream.extend(frame(0x0, 1, b"hello")); // DATA
        stream.extend(frame(RST_STREAM, 3, &8u32.to_be_bytes())); // CANCEL
        let mut goaway = 5u32.to_be_bytes().to_vec();
        goaway.extend(1u32.to_be_bytes());
        goaway.extend(b"debug data");
        stream.extend(frame(GOAWAY, 0, &goaway)); // PROTOCOL_ERROR
        for chunk in 1..=stream.len() {
            let mut scanner = FrameScanner::from_client();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner.feed(piece, |e| seen.push(e));
            }
            assert_eq!(
                seen,
                [H2Event::RstStream { code: 8 }, H2Event::GoAway { code: 1 }],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn codes_by_name() {
        assert_eq!(ERROR_CODES[error_code_index(0)], "NO_ERROR");
        assert_eq!(ERROR_CODES[error_code_index(0xd)], "HTTP_1_1_REQUIRED");
        assert_eq!(ERROR_CODES[error_code_index(0xe)], "other");
        assert_eq!(ERROR_CODES[error_code_index(u32::MAX)], "other");
    }
}

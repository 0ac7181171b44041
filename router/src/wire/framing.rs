//! How a message body is delimited, and a strict tracker of chunked framing.

use std::ops::Range;

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the connection closes.
    UntilClose,
}

/// Bad chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Longest chunk extension, and all trailers together.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Follows chunked framing over a body passing through, to find where it ends and, for
/// an HTTP/1.0 client, which bytes are data. Strict: sizes of at most 16 hex digits, CRLF
/// line ends, bounded extensions and trailers.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes of extension or trailer seen (bounded).
    extra: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            extra: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Advances over `input`, calling `data` with each range of chunk data in it. Returns
    /// how many bytes belong to the body: all of `input` unless the body ends inside it.
    pub fn advance(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, BadChunk> {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - at);
                    data(at..at + take);
                    at += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err(BadChunk("chunk size too large"));
                        }
                        let digit = (byte as char).to_digit(16).unwrap_or(0);
                        self.size = (self.size << 4) | u64::from(digit);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = ChunkState::Extension;
                        self.extra = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk("invalid chunk size")),
                },
                ChunkState::Extension => match byte {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' | 0 => return Err(BadChunk("invalid chunk extension")),
                    _ => {
                        self.extra += 1;
                        if self.extra > MAX_EXTENSION {
                            return Err(BadChunk("chunk extension too long"));
                        }
                    }
                },
                ChunkState::SizeLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR after chunk size"));
                    }
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                        self.extra = 0;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::DataCr => {
                    if byte != b'\r' {
                        return Err(BadChunk("chunk data longer than its size"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR after chunk data"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match byte {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' | b' ' | b'\t' | 0 => return Err(BadChunk("invalid trailer")),
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::Trailer => match byte {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' | 0 => return Err(BadChunk("invalid trailer")),
                    _ => {}
                },
                ChunkState::TrailerLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR in trailer"));
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR after last chunk"));
                    }
                    self.state = ChunkState::Done;
                }
            }
            if matches!(
                self.state,
                ChunkState::Trailer | ChunkState::TrailerLf | ChunkState::TrailerStart
            ) {
                self.extra += 1;
                if self.extra > MAX_TRAILERS {
                    return Err(BadChunk("trailers too long"));
                }
            }
            at += 1;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests;

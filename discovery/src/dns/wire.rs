//! Reading a DNS query without allocating: the first phase of the hot path.
//!
//! [`parse`] walks the whole message — header, every question, every record of the three
//! record sections — with the rules of hickory-proto's decoder (the oracle: the property
//! test in `wire/tests.rs` and the `dns_query` fuzz target decode every input with both
//! and compare), keeping only what an answer needs: the first question (its bytes as sent
//! and its name lowercased into a stack buffer) and the EDNS OPT record. hickory's own
//! decoder would allocate a `Vec` per section and per name.
//!
//! Where strait is stricter than hickory it says so: [`Malformed::is_stricter_than_hickory`].

/// Length of the DNS header.
pub const HEADER: usize = 12;
pub const TYPE_OPT: u16 = 41;
const TYPE_SIG: u16 = 24;
const TYPE_TSIG: u16 = 250;
const OPCODE_UPDATE: u8 = 5;
/// EDNS option codes read here.
pub const OPTION_NSID: u16 = 3;
const OPTION_SUBNET: u16 = 8;
/// The DO bit in the OPT record's flags (RFC 3225).
pub const EDNS_DO: u16 = 0x8000;

/// Why a message cannot be read. Each is a FORMERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The message ends inside a name, a field or a record.
    Truncated,
    /// A label length byte of the reserved kinds `0b01` / `0b10` (RFC 1035 4.1.4, RFC 6891 5).
    LabelKind,
    /// A name longer than 255 bytes (RFC 1035 3.1).
    NameTooLong,
    /// A compression pointer that does not point before the name (or label) it is in: a
    /// loop or a forward reference.
    Pointer,
    /// A record's RDLENGTH runs past the end of the message.
    RdataLength,
    /// An OPT record whose owner is not the root (RFC 6891 6.1.2).
    OptOwner,
    /// OPT, SIG or TSIG outside the additional section (RFC 6891 6.1.1, RFC 8945 5.1).
    OutsideAdditional,
    /// A record with no RDATA in a message that is not an UPDATE (RFC 2136 uses those).
    EmptyRecord,
    /// More than one OPT record (RFC 6891 6.1.1).
    DuplicateOpt,
    /// An EDNS option header that runs past the OPT record's data.
    OptionLength,
    /// An EDNS option whose data runs past the OPT record's data, or OPT data that ends
    /// inside an option header. hickory drops the options and goes on; strait, as Knot,
    /// answers FORMERR (RFC 6891 6.1.2: the options fill RDATA).
    OptionOverrun,
    /// A client subnet option (RFC 7871 6) of an unknown family or shorter than its
    /// source prefix needs.
    Subnet,
    /// Bytes after the last record. hickory ignores them; strait, as Knot, answers FORMERR
    /// (RFC 1035 4.1: a message is its header and four sections).
    TrailingBytes,
}

impl Malformed {
    /// The verdicts where strait refuses what hickory's decoder accepts (each with the
    /// reason above); everything hickory refuses, strait refuses too.
    pub fn is_stricter_than_hickory(self) -> bool {
        matches!(self, Malformed::OptionOverrun | Malformed::TrailingBytes)
    }
}

/// The first question, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question<'q> {
    /// The name as it came: an answer echoes it, case and all (resolvers check the case
    /// they randomised). `None` when it was compressed (a pointer into the header): then
    /// the answer carries the lowercased name.
    pub sent: Option<&'q [u8]>,
    /// Length of the name in uncompressed wire form.
    pub name_len: usize,
    pub qtype: u16,
    pub qclass: u16,
}

/// The query's OPT record (RFC 6891 6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requestor's UDP payload size, as sent (values below 512 mean 512).
    pub payload: u16,
    pub version: u8,
    /// The upper 8 bits of the extended RCODE (0 in a query).
    pub ext_rcode: u8,
    /// The 16 flag bits; [`EDNS_DO`] is the only one defined.
    pub flags: u16,
    /// An NSID option was present (RFC 5001 2.1: the requestor asks for the server's id).
    pub nsid: bool,
}

impl Edns {
    pub fn dnssec_ok(&self) -> bool {
        self.flags & EDNS_DO != 0
    }
}

/// What [`parse`] read. `error` set means FORMERR; `question` and `edns` are what could
/// be read before the error (so a FORMERR can still echo them).
#[derive(Debug, Clone)]
pub struct Query<'q> {
    pub id: u16,
    /// Header bytes 2 and 3: QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE.
    pub flags: [u8; 2],
    /// QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT.
    pub counts: [u16; 4],
    pub question: Option<Question<'q>>,
    /// The first question's name in wire form, lowercased (`lower[..name_len]`).
    pub lower: [u8; 255],
    pub edns: Option<Edns>,
    pub error: Option<Malformed>,
}

impl<'q> Query<'q> {
    pub fn is_response(&self) -> bool {
        self.flags[0] & 0x80 != 0
    }

    pub fn opcode(&self) -> u8 {
        (self.flags[0] >> 3) & 0x0f
    }

    pub fn recursion_desired(&self) -> bool {
        self.flags[0] & 0x01 != 0
    }

    /// The first question's lowercased name in wire form.
    pub fn name(&self) -> &[u8] {
        match &self.question {
            Some(q) => &self.lower[..q.name_len],
            None => &[],
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Reads `message` as a query. `None` when it is shorter than a header (nothing can be
/// answered, not even the id).
pub fn parse(message: &[u8]) -> Option<Query<'_>> {
    if message.len() < HEADER {
        return None;
    }
    let counts = [
        u16::from_be_bytes([message[4], message[5]]),
        u16::from_be_bytes([message[6], message[7]]),
        u16::from_be_bytes([message[8], message[9]]),
        u16::from_be_bytes([message[10], message[11]]),
    ];
    let mut query = Query {
        id: u16::from_be_bytes([message[0], message[1]]),
        flags: [message[2], message[3]],
        counts,
        question: None,
        lower: [0; 255],
        edns: None,
        error: None,
    };
    query.error = walk(message, &mut query).err();
    Some(query)
}

/// Every section in order; fills `query` as it goes.
fn walk<'q>(message: &'q [u8], query: &mut Query<'q>) -> Result<(), Malformed> {
    let mut at = HEADER;
    for i in 0..query.counts[0] {
        let start = at;
        let lower = if i == 0 { Some(&mut query.lower) } else { None };
        let (end, name_len, compressed) = name(message, at, lower)?;
        at = end;
        let (Some(qtype), Some(qclass)) = (u16_at(message, at), u16_at(message, at + 2)) else {
            return Err(Malformed::Truncated);
        };
        if i == 0 {
            query.question = Some(Question {
                sent: (!compressed).then(|| &message[start..at + 4]),
                name_len,
                qtype,
                qclass,
            });
        }
        at += 4;
    }
    let update = query.opcode() == OPCODE_UPDATE;
    for section in 1..4 {
        for _ in 0..query.counts[section] {
            at = record(message, at, section == 3, update, &mut query.edns)?;
        }
    }
    if at != message.len() {
        return Err(Malformed::TrailingBytes);
    }
    Ok(())
}

/// One record from `at`; returns where the next begins.
fn record(
    message: &[u8],
    at: usize,
    additional: bool,
    update: bool,
    edns: &mut Option<Edns>,
) -> Result<usize, Malformed> {
    let (at, owner_len, _) = name(message, at, None)?;
    let (Some(rtype), Some(class), Some(ttl), Some(rdlen)) = (
        u16_at(message, at),
        u16_at(message, at + 2),
        u32_at(message, at + 4),
        u16_at(message, at + 8),
    ) else {
        return Err(Malformed::Truncated);
    };
    let rdata = at + 10;
    let rdlen = usize::from(rdlen);
    if rtype == TYPE_OPT && owner_len != 1 {
        return Err(Malformed::OptOwner);
    }
    if rdlen > message.len() - rdata {
        return Err(Malformed::RdataLength);
    }
    if rtype == TYPE_OPT {
        let nsid = options(message, rdata, rdlen);
        if !additional {
            return Err(Malformed::OutsideAdditional);
        }
        if edns.is_some() {
            return Err(nsid.err().unwrap_or(Malformed::DuplicateOpt));
        }
        // An OPT record whose options are framed right but one of which is wrong is
        // still an OPT record: the FORMERR carries one back (RFC 6891 6.1.1).
        if matches!(nsid, Ok(_) | Err(Malformed::Subnet)) {
            *edns = Some(Edns {
                payload: class,
                ext_rcode: (ttl >> 24) as u8,
                version: (ttl >> 16) as u8,
                flags: ttl as u16,
                nsid: nsid.unwrap_or(false),
            });
        }
        nsid?;
        return Ok(rdata + rdlen);
    }
    if rdlen == 0 && !update {
        return Err(Malformed::EmptyRecord);
    }
    if !additional && matches!(rtype, TYPE_SIG | TYPE_TSIG) {
        return Err(Malformed::OutsideAdditional);
    }
    Ok(rdata + rdlen)
}

/// The options of an OPT record's data (`len` bytes from `at`), in the order hickory reads
/// them: whether NSID was asked for.
fn options(message: &[u8], at: usize, len: usize) -> Result<bool, Malformed> {
    let end = at + len;
    let mut i = at;
    let mut nsid = false;
    while i < end {
        // hickory reads a whole option header even across the end of RDATA, and fails
        // then; but RDATA that ends right after an option code it takes, options dropped.
        match end - i {
            1 | 3 => return Err(Malformed::OptionLength),
            2 => return Err(Malformed::OptionOverrun),
            _ => {}
        }
        let code = u16::from_be_bytes([message[i], message[i + 1]]);
        let olen = usize::from(u16::from_be_bytes([message[i + 2], message[i + 3]]));
        if olen > len {
            return Err(Malformed::OptionLength);
        }
        let data = i + 4;
        if olen > end - data {
            return Err(Malformed::OptionOverrun);
        }
        let value = &message[data..data + olen];
        match code {
            OPTION_NSID => nsid = true,
            OPTION_SUBNET => subnet(value)?,
            _ => {}
        }
        i = data + olen;
    }
    Ok(nsid)
}

/// RFC 7871 6: FAMILY (1 IPv4, 2 IPv6), SOURCE and SCOPE PREFIX-LENGTH, then as many
/// address bytes as SOURCE needs (at most the family's address length).
fn subnet(value: &[u8]) -> Result<(), Malformed> {
    let (Some(family), Some(&source)) = (u16_at(value, 0), value.get(2)) else {
        return Err(Malformed::Subnet);
    };
    let max = match family {
        1 => 4,
        2 => 16,
        _ => return Err(Malformed::Subnet),
    };
    let needed = usize::from(source).div_ceil(8);
    if value.len() < 4 || needed > max || value.len() < 4 + needed {
        return Err(Malformed::Subnet);
    }
    Ok(())
}

/// The offset after the name at `at`, if it is one.
pub fn skip_name(message: &[u8], at: usize) -> Option<usize> {
    name(message, at, None).ok().map(|(end, _, _)| end)
}

/// One name from `at` (labels and backward compression pointers). Returns the offset
/// after it in the message (after the first pointer, if any), its uncompressed length and
/// whether it was compressed. With `lower`, the name is written there in uncompressed,
/// lowercase wire form.
fn name(
    message: &[u8],
    start: usize,
    mut lower: Option<&mut [u8; 255]>,
) -> Result<(usize, usize, bool), Malformed> {
    let mut at = start;
    // Where this name continues in the message once a pointer is followed.
    let mut after = None;
    // The start of the current run of labels; a pointer must point before it, and
    // once one was followed, labels must not run into the run they were reached from.
    let mut run_start = start;
    let mut limit: Option<usize> = None;
    let mut len = 0usize;
    loop {
        if limit.is_some_and(|limit| at >= limit) {
            return Err(Malformed::Pointer);
        }
        let Some(&byte) = message.get(at) else {
            return Err(Malformed::Truncated);
        };
        match byte & 0xC0 {
            0x00 if byte == 0 => {
                if let Some(lower) = lower.as_deref_mut() {
                    lower[len] = 0;
                }
                return Ok((after.unwrap_or(at + 1), len + 1, after.is_some()));
            }
            0x00 => {
                let label = usize::from(byte);
                let Some(bytes) = message.get(at + 1..at + 1 + label) else {
                    return Err(Malformed::Truncated);
                };
                // The whole name, this label and the root's byte included, fits 255.
                if len + 1 + label + 1 > 255 {
                    return Err(Malformed::NameTooLong);
                }
                if let Some(lower) = lower.as_deref_mut() {
                    lower[len] = byte;
                    for (to, from) in lower[len + 1..len + 1 + label].iter_mut().zip(bytes) {
                        *to = from.to_ascii_lowercase();
                    }
                }
                len += 1 + label;
                at += 1 + label;
            }
            0xC0 => {
                let Some(pointer) = u16_at(message, at) else {
                    return Err(Malformed::Truncated);
                };
                let target = usize::from(pointer & 0x3FFF);
                if target >= run_start {
                    return Err(Malformed::Pointer);
                }
                after.get_or_insert(at + 2);
                limit = Some(run_start);
                run_start = target;
                at = target;
            }
            _ => return Err(Malformed::LabelKind),
        }
    }
}

#[cfg(test)]
mod tests;

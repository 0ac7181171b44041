//! The DNS query hot path. Phase order: header -> question -> EDNS -> lookup -> copy
//! pre-encoded records into the caller's buffer -> patch header. No allocation: the name
//! is lowercased into a stack buffer and the response written into a reused `Vec`.
//! Malformed input gets FORMERR (a bare header, never larger than the query) or nothing.

use super::table::{DnsTable, NameEntry, RecordSet, TYPE_A, TYPE_AAAA, TYPE_SOA, TYPE_SRV};

const HEADER: usize = 12;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;
/// Payload size strait advertises in its OPT record (the DNS flag day value).
const EDNS_PAYLOAD: u16 = 1232;
const MAX_UDP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

impl Rcode {
    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
        }
    }
}

/// What was answered, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub qtype: u16,
    pub rcode: Rcode,
    pub truncated: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn write_header(
    out: &mut Vec<u8>,
    id: [u8; 2],
    opcode: u8,
    rd: bool,
    rcode: Rcode,
    counts: [u16; 4],
) {
    out.extend_from_slice(&id);
    // QR, opcode, AA (we are authoritative), RD copied from the query.
    out.push(0x80 | (opcode << 3) | 0x04 | u8::from(rd));
    out.push(rcode as u8);
    for count in counts {
        out.extend_from_slice(&count.to_be_bytes());
    }
}

/// Answers `query` into `out` (cleared first). Returns `None` when nothing should be sent
/// (too short to answer, or not a query). `rotation` varies the order of answers.
pub fn respond(
    table: &DnsTable,
    query: &[u8],
    transport: Transport,
    rotation: usize,
    out: &mut Vec<u8>,
) -> Option<Outcome> {
    out.clear();
    if query.len() < HEADER {
        return None;
    }
    let id = [query[0], query[1]];
    let flags = query[2];
    if flags & 0x80 != 0 {
        return None; // a response: never answer one (no reflection loops)
    }
    let opcode = (flags >> 3) & 0x0f;
    let rd = flags & 0x01 != 0;
    let bare = |out: &mut Vec<u8>, rcode: Rcode| {
        write_header(out, id, opcode, rd, rcode, [0; 4]);
        Some(Outcome {
            qtype: 0,
            rcode,
            truncated: false,
        })
    };
    if opcode != 0 {
        return bare(out, Rcode::NotImp);
    }
    if u16_at(query, 4) != Some(1) {
        return bare(out, Rcode::FormErr);
    }
    // Question name: plain labels only, lowercased into a stack buffer for the lookup.
    let mut name = [0u8; 255];
    let mut name_len = 0;
    let mut at = HEADER;
    loop {
        let Some(&len) = query.get(at) else {
            return bare(out, Rcode::FormErr);
        };
        if len & 0xC0 != 0 || name_len + 1 + usize::from(len) > name.len() {
            return bare(out, Rcode::FormErr);
        }
        let Some(label) = query.get(at + 1..at + 1 + usize::from(len)) else {
            return bare(out, Rcode::FormErr);
        };
        name[name_len] = len;
        for (i, b) in label.iter().enumerate() {
            name[name_len + 1 + i] = b.to_ascii_lowercase();
        }
        name_len += 1 + usize::from(len);
        at += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    let (Some(qtype), Some(qclass)) = (u16_at(query, at), u16_at(query, at + 2)) else {
        return bare(out, Rcode::FormErr);
    };
    let question_end = at + 4;
    let question = &query[HEADER..question_end];
    let name = &name[..name_len];

    // EDNS: an OPT record in the additional section sets the UDP payload size.
    let has_opt = u16_at(query, 6) == Some(0)
        && u16_at(query, 8) == Some(0)
        && u16_at(query, 10).is_some_and(|n| n >= 1)
        && query.get(question_end) == Some(&0)
        && u16_at(query, question_end + 1) == Some(TYPE_OPT);
    let edns = if has_opt {
        u16_at(query, question_end + 3).map(|size| usize::from(size.max(512)))
    } else {
        None
    };
    let limit = match (transport, edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(size)) => size.min(MAX_UDP),
        (Transport::Udp, None) => 512,
    };
    let opt_len = if edns.is_some() { 11 } else { 0 };

    let answer =
        |out: &mut Vec<u8>, rcode: Rcode, set: Option<&RecordSet>, soa: bool, truncated: bool| {
            let (answers, additional) = match set {
                Some(set) if !truncated => (set.answers.len(), set.additional.len()),
                _ => (0, 0),
            };
            // A table not compiled yet has no SOA: never count a record not written.
            let authority = usize::from(soa && !truncated && !table.soa.is_empty());
            let counts = [
                1,
                answers as u16,
                authority as u16,
                (additional + usize::from(edns.is_some())) as u16,
            ];
            write_header(out, id, 0, rd, rcode, counts);
            if truncated {
                out[2] |= 0x02;
            }
            out.extend_from_slice(question);
            if let Some(set) = set.filter(|_| !truncated) {
                let n = set.answers.len();
                for k in 0..n {
                    out.extend_from_slice(&set.answers[(rotation + k) % n]);
                }
                for record in &set.additional {
                    out.extend_from_slice(record);
                }
            }
            if authority == 1 {
                out.extend_from_slice(&table.soa);
            }
            if edns.is_some() {
                out.extend_from_slice(&[0, 0, TYPE_OPT as u8, 0, 0, 0, 0, 0, 0, 0, 0]);
                let at = out.len() - 8;
                out[at..at + 2].copy_from_slice(&EDNS_PAYLOAD.to_be_bytes());
            }
            Some(Outcome {
                qtype,
                rcode,
                truncated,
            })
        };

    if qclass != CLASS_IN && qclass != CLASS_ANY {
        return answer(out, Rcode::Refused, None, false, false);
    }
    if !name.ends_with(&table.domain) || !is_label_boundary(name, name.len() - table.domain.len()) {
        return answer(out, Rcode::Refused, None, false, false);
    }
    // No zone transfers: the zone is the live snapshot, not a file to copy.
    if qtype == TYPE_AXFR || qtype == TYPE_IXFR {
        return answer(out, Rcode::Refused, None, false, false);
    }
    let Some(entry) = table.names.get(name) else {
        return answer(out, Rcode::NxDomain, None, true, false);
    };
    let set = select(entry, qtype);
    match set {
        Some(set) if !set.answers.is_empty() => {
            let size = HEADER + question.len() + set.wire_len() + opt_len;
            let truncated = transport == Transport::Udp && size > limit;
            answer(out, Rcode::NoError, Some(set), false, truncated)
        }
        // Known name, nothing of that type (or no healthy instance): NODATA with SOA.
        _ => answer(out, Rcode::NoError, None, true, false),
    }
}

fn select(entry: &NameEntry, qtype: u16) -> Option<&RecordSet> {
    match qtype {
        TYPE_A => Some(&entry.a),
        TYPE_AAAA => Some(&entry.aaaa),
        TYPE_SRV => Some(&entry.srv),
        TYPE_SOA => Some(&entry.soa),
        // RFC 8482: a minimal answer to ANY.
        TYPE_ANY if !entry.a.answers.is_empty() => Some(&entry.a),
        TYPE_ANY if !entry.aaaa.answers.is_empty() => Some(&entry.aaaa),
        TYPE_ANY => Some(&entry.soa),
        _ => None,
    }
}

/// Whether `at` starts a label in the wire-form `name` (so `xstrait.` is not under `strait.`).
fn is_label_boundary(name: &[u8], at: usize) -> bool {
    let mut i = 0;
    while i < name.len() {
        if i == at {
            return true;
        }
        i += 1 + usize::from(name[i]);
    }
    i == at
}

#[cfg(test)]
mod tests;

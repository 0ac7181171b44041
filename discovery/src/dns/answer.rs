//! The DNS query hot path. Phase order: read the query ([`wire::parse`]: header,
//! question, every record, EDNS) -> verdict (FORMERR, NOTIMP, BADVERS, REFUSED) -> look the
//! name up -> copy the pre-encoded answer into the caller's buffer (question as asked,
//! answers rotated, glue while it fits) -> move the compression pointers that point into
//! moved bytes -> append the OPT record -> write the header. No allocation: the name is
//! lowercased into a stack buffer and the response written into a reused `Vec`.
//!
//! Replies to queries that are not answered from the zone (FORMERR, NOTIMP, BADVERS,
//! REFUSED) are not authoritative (no AA); they keep the question and an OPT record
//! whenever the query had them readable (RFC 6891 6.1.1), and a FORMERR is never larger
//! than the query.

use super::table::{Answer, DnsTable, EDNS_PAYLOAD, TYPE_TXT};
use super::wire::{self, HEADER, Query};

const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_CH: u16 = 3;
const CLASS_ANY: u16 = 255;
/// Without EDNS a UDP answer holds 512 bytes (RFC 1035 4.2.1).
const UDP_PLAIN: usize = 512;
/// A DNS message over TCP is at most this long (its 2-byte length prefix).
const TCP_MAX: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
    /// 16: the header holds its low 4 bits (0), the OPT record the rest (RFC 6891 6.1.3).
    BadVers = 16,
}

impl Rcode {
    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
        }
    }

    fn low(self) -> u8 {
        (self as u8) & 0x0f
    }
}

/// What was answered, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The question's type (0 when there was no readable question).
    pub qtype: u16,
    pub rcode: Rcode,
    /// TC set: the answer did not fit the UDP limit.
    pub truncated: bool,
    /// Over TCP, an answer that would not have fitted the same query's UDP limit: a
    /// client that fell back to TCP after TC (or would have had to).
    pub tcp_fallback: bool,
}

/// Answers `query` into `out` (cleared first). Returns `None` when nothing should be sent
/// (shorter than a header, or a response). `rotation` varies the order of answers.
pub fn respond(
    table: &DnsTable,
    query: &[u8],
    transport: Transport,
    rotation: usize,
    out: &mut Vec<u8>,
) -> Option<Outcome> {
    out.clear();
    let q = wire::parse(query)?;
    if q.is_response() {
        return None; // never answer a response (no reflection loops)
    }
    let qtype = q.question.map_or(0, |question| question.qtype);
    let refuse = |out: &mut Vec<u8>, rcode: Rcode| {
        error_reply(table, &q, rcode, query.len(), out);
        Some(Outcome {
            qtype,
            rcode,
            truncated: false,
            tcp_fallback: false,
        })
    };
    if q.error.is_some() {
        return refuse(out, Rcode::FormErr);
    }
    if q.opcode() != 0 {
        return refuse(out, Rcode::NotImp);
    }
    // QUERY carries one question (RFC 9619 4).
    let Some(question) = q.question.filter(|_| q.counts[0] == 1) else {
        return refuse(out, Rcode::FormErr);
    };
    if q.edns.is_some_and(|edns| edns.version > 0) {
        return refuse(out, Rcode::BadVers);
    }
    // TYPE 0 is reserved (RFC 6895 3.1): not a question strait implements (as Knot).
    if question.qtype == 0 {
        return refuse(out, Rcode::NotImp);
    }
    let name = q.name();
    let answer = match question.qclass {
        CLASS_IN | CLASS_ANY => {
            if !in_zone(name, &table.domain) {
                return refuse(out, Rcode::Refused);
            }
            // No zone transfers: the zone is the live snapshot, not a file to copy. Over
            // UDP they are not defined at all (RFC 5936 4.2).
            if question.qtype == TYPE_AXFR || question.qtype == TYPE_IXFR {
                return refuse(
                    out,
                    match transport {
                        Transport::Udp => Rcode::NotImp,
                        Transport::Tcp => Rcode::Refused,
                    },
                );
            }
            match table.names.get(name) {
                Some(entry) => entry.select(question.qtype),
                None => &table.nxdomain,
            }
        }
        CLASS_CH if matches!(question.qtype, TYPE_TXT | TYPE_ANY) => match table.chaos.get(name) {
            Some(answer) => answer,
            None => return refuse(out, Rcode::Refused),
        },
        _ => return refuse(out, Rcode::Refused),
    };
    let rcode = if answer.rcode == 3 {
        Rcode::NxDomain
    } else {
        Rcode::NoError
    };
    let (truncated, tcp_fallback) = write_answer(table, &q, answer, transport, rotation, out);
    Some(Outcome {
        qtype,
        rcode,
        truncated,
        tcp_fallback,
    })
}

/// Whether `name` (lowercase wire form) is `domain` or under it, at a label boundary (so
/// `xstrait.` is not under `strait.`).
fn in_zone(name: &[u8], domain: &[u8]) -> bool {
    if !name.ends_with(domain) {
        return false;
    }
    let at = name.len() - domain.len();
    let mut i = 0;
    while i < at {
        i += 1 + usize::from(name[i]);
    }
    i == at
}

fn header(out: &mut Vec<u8>, q: &Query<'_>, authoritative: bool, rcode: Rcode) {
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, the opcode, AA, RD copied (RFC 1035 4.1.1); TC later; RA, AD, CD clear.
    out.push(
        0x80 | (q.opcode() << 3) | (u8::from(authoritative) << 2) | u8::from(q.recursion_desired()),
    );
    out.push(rcode.low());
    out.extend_from_slice(&[0; 8]);
}

fn set_counts(out: &mut [u8], counts: [usize; 4]) {
    for (i, count) in counts.into_iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&(count as u16).to_be_bytes());
    }
}

/// The question as asked (its lowercase form when it came compressed).
fn question(out: &mut Vec<u8>, q: &Query<'_>) {
    let Some(question) = q.question else {
        return;
    };
    match question.sent {
        Some(sent) => out.extend_from_slice(sent),
        None => {
            out.extend_from_slice(q.name());
            out.extend_from_slice(&question.qtype.to_be_bytes());
            out.extend_from_slice(&question.qclass.to_be_bytes());
        }
    }
}

/// A reply without records: header, the question and an OPT record when the query had
/// them readable. A FORMERR sheds them rather than grow past the query.
fn error_reply(table: &DnsTable, q: &Query<'_>, rcode: Rcode, query_len: usize, out: &mut Vec<u8>) {
    let with_question = q.question.is_some() && q.counts[0] == 1;
    let opt = q.edns.map(|edns| {
        table
            .opt
            .get(edns.dnssec_ok(), false, rcode == Rcode::BadVers)
    });
    for (keep_question, keep_opt) in [(true, true), (false, true), (false, false)] {
        out.clear();
        header(out, q, false, rcode);
        let qd = with_question && keep_question;
        if qd {
            question(out, q);
        }
        let opt = opt.filter(|opt| keep_opt && !opt.is_empty());
        if let Some(opt) = opt {
            out.extend_from_slice(opt);
        }
        set_counts(out, [usize::from(qd), 0, 0, usize::from(opt.is_some())]);
        if rcode != Rcode::FormErr || out.len() <= query_len {
            return;
        }
    }
}

/// Writes `answer` for `q`; returns (truncated, needed TCP).
fn write_answer(
    table: &DnsTable,
    q: &Query<'_>,
    answer: &Answer,
    transport: Transport,
    rotation: usize,
    out: &mut Vec<u8>,
) -> (bool, bool) {
    let opt: &[u8] = match q.edns {
        Some(edns) => table
            .opt
            .get(edns.dnssec_ok(), edns.nsid && table.nsid, false),
        None => &[],
    };
    let opt_count = usize::from(!opt.is_empty());
    // The smaller of the client's payload size and strait's (DNS flag day 2020).
    let udp_limit = match q.edns {
        Some(edns) => usize::from(edns.payload.clamp(512, EDNS_PAYLOAD)),
        None => UDP_PLAIN,
    };
    let limit = match transport {
        Transport::Udp => udp_limit,
        Transport::Tcp => TCP_MAX,
    };
    header(
        out,
        q,
        answer.authoritative,
        if answer.rcode == 3 {
            Rcode::NxDomain
        } else {
            Rcode::NoError
        },
    );
    question(out, q);
    let question_end = out.len();
    if answer.wire.len() < HEADER || answer.answers.is_empty() || answer.extra.is_empty() {
        // A table not compiled yet: no records to give.
        out.extend_from_slice(opt);
        set_counts(out, [1, 0, 0, opt_count]);
        return (false, false);
    }
    let full = question_end
        + usize::from(answer.extra[answer.extra.len() - 1] - answer.question_end)
        + opt.len();
    let tcp_fallback = transport == Transport::Tcp && full > udp_limit;
    if question_end + answer.required_len() + opt.len() > limit {
        // Not even the answers fit: TC and no records; the client asks again over TCP.
        out[2] |= 0x02;
        out.extend_from_slice(opt);
        set_counts(out, [1, 0, 0, opt_count]);
        return (true, tcp_fallback);
    }
    let wire = &answer.wire[..];
    let starts = &answer.answers[..];
    let n = answer.answer_count();
    let turn = if answer.rotate { rotation % n } else { 0 };
    for k in 0..n {
        let i = (turn + k) % n;
        out.extend_from_slice(&wire[usize::from(starts[i])..usize::from(starts[i + 1])]);
    }
    // Authority records always; additional ones (glue) while they fit, without TC
    // (RFC 2181 9).
    let extra = &answer.extra[..];
    let authority = usize::from(answer.authority);
    let mut kept = 0;
    for k in 0..answer.extra_count() {
        let record = &wire[usize::from(extra[k])..usize::from(extra[k + 1])];
        if k >= authority && out.len() + record.len() + opt.len() > limit {
            break;
        }
        out.extend_from_slice(record);
        kept += 1;
    }
    let delta = question_end as isize - answer.question_end as isize;
    if turn != 0 || delta != 0 {
        relocate(answer, out, question_end, delta, turn, kept);
    }
    out.extend_from_slice(opt);
    set_counts(out, [1, n, authority, kept - authority + opt_count]);
    (false, tcp_fallback)
}

/// Rewrites the compression pointers whose targets moved: into the question's name (when
/// the asked name is longer than the template's) and into rotated answer records.
fn relocate(
    answer: &Answer,
    out: &mut [u8],
    question_end: usize,
    delta: isize,
    turn: usize,
    kept: usize,
) {
    let starts = &answer.answers[..];
    let n = answer.answer_count();
    let first = usize::from(starts[0]);
    let total = usize::from(starts[n]) - first;
    let rotated_from = usize::from(starts[turn]) - first;
    let map = |offset: u16, segment: u16| -> Option<usize> {
        let segment = usize::from(segment);
        let offset = usize::from(offset);
        if segment == 0 || segment > n {
            if segment > n && segment - n > kept {
                return None; // a record left out
            }
            return offset.checked_add_signed(delta);
        }
        let start = usize::from(starts[segment - 1]);
        let position = start - first;
        let moved = if position >= rotated_from {
            position - rotated_from
        } else {
            total - rotated_from + position
        };
        Some(question_end + moved + (offset - start))
    };
    for relocation in &answer.relocations[..] {
        if relocation.to_segment == 0 && delta == 0 {
            continue; // into the question, which has not moved
        }
        let (Some(at), Some(to)) = (
            map(relocation.at, relocation.at_segment),
            map(relocation.to, relocation.to_segment),
        ) else {
            continue;
        };
        if to < 0x4000 && at + 2 <= out.len() {
            out[at..at + 2].copy_from_slice(&(0xC000 | to as u16).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests;

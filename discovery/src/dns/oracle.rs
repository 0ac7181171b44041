//! hickory-proto's decoder as the oracle of strait's query reader ([`super::wire`]): the
//! property test (`wire/tests.rs`) and the `dns_query` fuzz target give every input to
//! both and call [`check`]. Never on the query path (hickory allocates).
//!
//! The rules:
//! - hickory refuses ⇒ strait refuses, unless hickory's refusal lies only in the RDATA of
//!   a record type strait does not interpret (it skips those records by their RDLENGTH):
//!   [`check`] then retypes such records as an opaque private type and hickory must read
//!   the result.
//! - hickory reads it ⇒ strait reads it, with the same id, flags, counts, first question
//!   (name compared case-insensitively, type, class) and EDNS (payload, version, extended
//!   RCODE, flags, NSID asked), unless strait's verdict is one of the few where it is
//!   knowingly stricter ([`super::wire::Malformed::is_stricter_than_hickory`]).

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::EdnsCode;

use super::wire::{self, HEADER, Query, TYPE_OPT};

/// A private-use type (RFC 6895 3.1) hickory reads as opaque bytes.
const OPAQUE_TYPE: u16 = 65_280;

/// Whether strait's reading of `input` agrees with hickory's; the disagreement otherwise.
pub fn check(input: &[u8]) -> Result<(), String> {
    let ours = wire::parse(input);
    let theirs = Message::from_vec(input);
    match (ours, theirs) {
        (None, Err(_)) => Ok(()),
        (None, Ok(_)) => Err("hickory read a message shorter than a header".into()),
        (Some(q), Ok(m)) => match q.error {
            Some(error) if error.is_stricter_than_hickory() => Ok(()),
            Some(error) => Err(format!("strait: {error:?}; hickory read {m:?}")),
            None => same(&q, &m),
        },
        (Some(q), Err(e)) => {
            if q.error.is_some() {
                return Ok(());
            }
            let opaque = retyped(input, &q);
            match Message::from_vec(&opaque) {
                Ok(m) => {
                    same(&q, &m).map_err(|d| format!("{d} (hickory refused the original: {e})"))
                }
                Err(e2) => Err(format!(
                    "strait read it; hickory refused it ({e}) and its opaque form ({e2})"
                )),
            }
        }
    }
}

/// `input` with every record that is not OPT retyped as an opaque type. A type byte that a
/// name reached through a pointer reads as a length keeps its value.
fn retyped(input: &[u8], q: &Query<'_>) -> Vec<u8> {
    let mut out = input.to_vec();
    let mut targets = std::collections::BTreeSet::new();
    let mut at = HEADER;
    for _ in 0..q.counts[0] {
        let Some(end) = walk_name(input, at, &mut targets) else {
            return out;
        };
        at = end + 4;
    }
    let mut types = Vec::new();
    let records: usize = q.counts[1..].iter().map(|&c| usize::from(c)).sum();
    for _ in 0..records {
        let Some(end) = walk_name(input, at, &mut targets) else {
            return out;
        };
        let Some(fixed) = input.get(end..end + 10) else {
            return out;
        };
        if u16::from_be_bytes([fixed[0], fixed[1]]) != TYPE_OPT {
            types.push(end);
        }
        at = end + 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    }
    for at in types {
        let (high, low) = (input[at], input[at + 1]);
        let pinned = (targets.contains(&at), targets.contains(&(at + 1)));
        let candidates = (0..=255u8).map(|free| match pinned {
            (false, false) => Some(OPAQUE_TYPE | u16::from(free)),
            (true, false) => Some(u16::from(high) << 8 | u16::from(free)),
            (false, true) => Some(u16::from(free) << 8 | u16::from(low)),
            (true, true) => None,
        });
        let opaque = candidates
            .flatten()
            .find(|&t| matches!(RecordType::from(t), RecordType::Unknown(_)) && t != TYPE_OPT);
        if let Some(opaque) = opaque {
            out[at..at + 2].copy_from_slice(&opaque.to_be_bytes());
        }
    }
    out
}

/// Walks a name of a message strait has read (pointers point back), noting every offset
/// read as a length or pointer byte; returns the offset after the name.
fn walk_name(
    input: &[u8],
    start: usize,
    structure: &mut std::collections::BTreeSet<usize>,
) -> Option<usize> {
    let end = wire::skip_name(input, start)?;
    let mut at = start;
    loop {
        let len = *input.get(at)?;
        structure.insert(at);
        match len & 0xC0 {
            0xC0 => {
                structure.insert(at + 1);
                at = usize::from(u16::from_be_bytes([len, *input.get(at + 1)?]) & 0x3FFF);
            }
            _ if len == 0 => return Some(end),
            _ => at += 1 + usize::from(len),
        }
    }
}

fn same(q: &Query<'_>, m: &Message) -> Result<(), String> {
    let differ = |what: &str, ours: String, theirs: String| -> Result<(), String> {
        if ours == theirs {
            Ok(())
        } else {
            Err(format!("{what}: strait {ours}, hickory {theirs}"))
        }
    };
    differ("id", q.id.to_string(), m.metadata.id.to_string())?;
    differ(
        "opcode",
        q.opcode().to_string(),
        u8::from(m.metadata.op_code).to_string(),
    )?;
    differ(
        "rd",
        q.recursion_desired().to_string(),
        m.metadata.recursion_desired.to_string(),
    )?;
    differ(
        "questions",
        q.counts[0].to_string(),
        m.queries.len().to_string(),
    )?;
    let opt = usize::from(q.edns.is_some());
    differ(
        "records",
        format!(
            "{} {} {}",
            q.counts[1],
            q.counts[2],
            usize::from(q.counts[3]) - opt
        ),
        format!(
            "{} {} {}",
            m.answers.len(),
            m.authorities.len(),
            m.additionals.len()
        ),
    )?;
    match (&q.question, m.queries.first()) {
        (None, None) => {}
        (Some(ours), Some(theirs)) => {
            let mut name = Vec::new();
            for label in theirs.name().iter() {
                name.push(label.len() as u8);
                name.extend(label.iter().map(u8::to_ascii_lowercase));
            }
            name.push(0);
            differ("name", format!("{:?}", q.name()), format!("{name:?}"))?;
            differ(
                "qtype",
                ours.qtype.to_string(),
                u16::from(theirs.query_type()).to_string(),
            )?;
            differ(
                "qclass",
                ours.qclass.to_string(),
                u16::from(theirs.query_class()).to_string(),
            )?;
        }
        (ours, theirs) => return Err(format!("question: strait {ours:?}, hickory {theirs:?}")),
    }
    match (&q.edns, &m.edns) {
        (None, None) => Ok(()),
        (Some(ours), Some(theirs)) => {
            differ(
                "payload",
                ours.payload.max(512).to_string(),
                theirs.max_payload().to_string(),
            )?;
            differ(
                "version",
                ours.version.to_string(),
                theirs.version().to_string(),
            )?;
            differ(
                "extended rcode",
                ours.ext_rcode.to_string(),
                theirs.rcode_high().to_string(),
            )?;
            differ(
                "flags",
                format!("{} {}", ours.dnssec_ok(), ours.flags & 0x7fff),
                format!("{} {}", theirs.flags().dnssec_ok, theirs.flags().z),
            )?;
            differ(
                "nsid",
                ours.nsid.to_string(),
                theirs.option(EdnsCode::NSID).is_some().to_string(),
            )
        }
        (ours, theirs) => Err(format!("EDNS: strait {ours:?}, hickory {theirs:?}")),
    }
}

/// Inputs the oracle must see, for the fuzz corpus and the property test's seeds.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let question = |name: &str, qtype: u16| {
        let mut q = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    };
    let header = |ar: u8| vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, ar];
    let with = |ar: u8, tail: &[u8]| {
        let mut m = header(ar);
        m.extend(question("web.service.strait", 1));
        m.extend_from_slice(tail);
        m
    };
    let opt = [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];
    vec![
        ("plain", with(0, &[])),
        ("edns", with(1, &opt)),
        (
            "edns-do-nsid",
            with(1, &[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 4, 0, 3, 0, 0]),
        ),
        // Issue 23: an OPT record whose RDLENGTH runs past the end of the packet.
        (
            "opt-rdlen-past-end",
            with(1, &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0x10]),
        ),
        ("two-opt", with(2, &[opt, opt].concat())),
        (
            "edns-version-1",
            with(1, &[0, 0, 41, 0x04, 0xd0, 0, 1, 0, 0, 0, 0]),
        ),
        (
            "option-overrun",
            with(
                1,
                &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 6, 0, 3, 0, 4, 1, 2],
            ),
        ),
        (
            "subnet",
            with(
                1,
                &[
                    0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 2,
                ],
            ),
        ),
        ("compressed-question", {
            let mut m = header(0);
            m.extend_from_slice(&[0xC0, 0x05, 0, 1, 0, 1]);
            m
        }),
        ("pointer-loop", {
            let mut m = header(0);
            m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
            m
        }),
        ("trailing", with(0, b"xyz")),
        (
            "additional-a",
            with(1, &[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]),
        ),
        (
            "additional-a-short",
            with(1, &[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 3, 10, 0, 0]),
        ),
        ("notify", {
            let mut m = header(0);
            m[2] = 0x20;
            m.extend(question("strait", 6));
            m
        }),
    ]
}

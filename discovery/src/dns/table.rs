//! Compiling a snapshot into pre-encoded DNS answers (control plane).
//!
//! Names (`D` is the domain, `strait` by default):
//!
//! ```text
//! D                                     SOA, NS ns.D (+ its addresses as glue)
//! ns.D                                  A / AAAA of the name server (dns.ns_addresses)
//! <service>.service.D                   A / AAAA of healthy instances; SRV (main port)
//! <tag>.<service>.service.D             the same, only instances with that tag
//! <service>.service.<zone>.zone.D       the same, only instances in that zone
//! _<port>._tcp.<service>.service.D      SRV of a named port (SRV only)
//! <target>.<service>.instance.D         A / AAAA of one instance (the SRV targets)
//! ```
//!
//! Every answer is a whole response built with hickory-proto's `Message` and `Record`
//! types and encoded by its encoder (name compression, section counts), with id 0 and
//! the question in lowercase. The hot path copies it, writes the header and the question
//! as asked, rotates the answer records and moves the compression pointers that point into
//! them ([`Answer::relocations`], found here once), so it only copies bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::op::{
    Edns, EmitAndCount, Message, MessageType, OpCode, Query, ResponseCode, emit_message_parts,
};
use hickory_proto::rr::rdata::opt::{EdnsOption, NSIDPayload};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use crate::model::{Health, Instance};
use crate::snapshot::Snapshot;

use super::DnsConfig;
use super::wire::HEADER;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
/// The payload size strait advertises and the most it sends over UDP (DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Hashing for the name map: names are looked up once per query.
pub type NameMap<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;

/// A compression pointer in an [`Answer`]: the two bytes at `at` point at `to`. Each end
/// is given as (segment, offset in the template), segment 0 being the header and question,
/// 1..=n the answer records, n+1.. the authority and additional records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocation {
    pub at: u16,
    pub at_segment: u16,
    pub to: u16,
    pub to_segment: u16,
}

/// One response, encoded by hickory-proto.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The whole message: header (id 0), question (lowercase), records.
    pub wire: Box<[u8]>,
    /// The header's RCODE (NOERROR or NXDOMAIN) and AA.
    pub rcode: u8,
    pub authoritative: bool,
    /// Where the question ends (= where the first record begins).
    pub question_end: u16,
    /// Start of each answer record, then the end of the last.
    pub answers: Box<[u16]>,
    /// Authority records (counted from the first record after the answers).
    pub authority: u16,
    /// Start of each authority and additional record, then the end of the last.
    pub extra: Box<[u16]>,
    /// Every compression pointer whose target moves when the question's length changes
    /// or the answers rotate.
    pub relocations: Box<[Relocation]>,
    /// Answer records may be rotated (no pointer between them, small enough that moved
    /// targets stay below the 14-bit pointer limit).
    pub rotate: bool,
}

impl Answer {
    pub fn answer_count(&self) -> usize {
        self.answers.len().saturating_sub(1)
    }

    pub fn extra_count(&self) -> usize {
        self.extra.len().saturating_sub(1)
    }

    /// Bytes of the answer and authority sections (what a response cannot do without).
    pub fn required_len(&self) -> usize {
        let authority_end = self.extra[usize::from(self.authority)];
        usize::from(authority_end - self.question_end)
    }
}

/// Everything known about one name. A name with no records at all is an empty
/// non-terminal (`service.strait` above `web.service.strait`): NODATA, not NXDOMAIN
/// (RFC 8020).
#[derive(Debug, Default)]
pub struct NameEntry {
    pub a: Option<Answer>,
    pub ns: Option<Answer>,
    pub soa: Option<Answer>,
    pub aaaa: Option<Answer>,
    pub srv: Option<Answer>,
    /// NOERROR, no answer, the SOA in the authority section (RFC 2308 2.2).
    pub nodata: Answer,
}

impl NameEntry {
    /// The answer to `qtype` (NODATA when the name has no records of it). `ANY` gets one
    /// RRset, the lowest type the name has (RFC 8482 4.1), as Knot answers.
    pub fn select(&self, qtype: u16) -> &Answer {
        let set = match qtype {
            TYPE_A => self.a.as_ref(),
            TYPE_NS => self.ns.as_ref(),
            TYPE_SOA => self.soa.as_ref(),
            TYPE_AAAA => self.aaaa.as_ref(),
            TYPE_SRV => self.srv.as_ref(),
            255 => self
                .a
                .as_ref()
                .or(self.ns.as_ref())
                .or(self.soa.as_ref())
                .or(self.aaaa.as_ref())
                .or(self.srv.as_ref()),
            _ => None,
        };
        set.unwrap_or(&self.nodata)
    }
}

/// The OPT records of responses (RFC 6891 6.1.2), encoded by hickory-proto: payload
/// [`EDNS_PAYLOAD`], version 0, the DO bit copied from the query (RFC 3225 3), NSID when
/// configured and asked for (RFC 5001), BADVERS in the extended RCODE.
#[derive(Debug, Default)]
pub struct OptRecords {
    /// Indexed by `do | nsid << 1 | badvers << 2`.
    pub variants: [Box<[u8]>; 8],
}

impl OptRecords {
    pub fn get(&self, dnssec_ok: bool, nsid: bool, badvers: bool) -> &[u8] {
        &self.variants[usize::from(dnssec_ok) | usize::from(nsid) << 1 | usize::from(badvers) << 2]
    }
}

/// The compiled DNS table, swapped whole.
#[derive(Debug, Default)]
pub struct DnsTable {
    pub revision: u64,
    /// The domain in lowercase wire form (`\x06strait\x00`).
    pub domain: Box<[u8]>,
    /// Keyed by the lowercase wire form of the full name.
    pub names: NameMap<NameEntry>,
    /// NXDOMAIN with the SOA, encoded for the apex as question (the hot path writes the
    /// asked name and moves the pointers into it).
    pub nxdomain: Answer,
    pub opt: OptRecords,
    /// CH TXT answers for `id.server.` and `hostname.bind.` (RFC 4892), when an
    /// identity is configured.
    pub chaos: NameMap<Answer>,
    /// Whether NSID is configured.
    pub nsid: bool,
}

/// Dotted name (no trailing dot) to lowercase wire form. Labels are validated upstream
/// (DNS labels from the data model, the domain by config validation).
pub fn wire_name(dotted: &str) -> Vec<u8> {
    let mut wire = Vec::with_capacity(dotted.len() + 2);
    for label in dotted.split('.').filter(|l| !l.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    wire
}

/// The label an instance's SRV target gets: its id when that is a DNS label, else a
/// stable hash of it.
fn target_label(id: &str) -> String {
    if crate::model::validate_dns_label("id", id).is_ok() {
        return id.to_string();
    }
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("i{hash:016x}")
}

/// A name from labels validated upstream; the root if it cannot be one (never, by
/// construction: ids that are not DNS labels become hashes).
fn name(dotted: &str) -> Name {
    let mut name = Name::from_ascii(format!("{dotted}.")).unwrap_or_else(|_| Name::root());
    name.set_fqdn(true);
    name
}

fn address_record(owner: &Name, address: IpAddr, ttl: u32) -> Record {
    let rdata = match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), ttl, rdata)
}

/// Emits a section's records through hickory's encoder, noting where each begins.
struct Noting<'r> {
    records: &'r [Record],
    starts: Vec<usize>,
}

impl EmitAndCount for Noting<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, hickory_proto::ProtoError> {
        for record in self.records {
            self.starts.push(encoder.offset());
            record.emit(encoder)?;
        }
        Ok(self.records.len())
    }
}

/// What a response holds, before encoding.
struct Response {
    question: Name,
    qtype: RecordType,
    qclass: DNSClass,
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
}

impl Response {
    fn new(question: &Name, qtype: RecordType) -> Response {
        Response {
            question: question.clone(),
            qtype,
            qclass: DNSClass::IN,
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }

    fn message(&self) -> Message {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.metadata.authoritative = self.authoritative;
        message.metadata.response_code = self.rcode;
        let mut query = Query::query(self.question.clone(), self.qtype);
        query.set_query_class(self.qclass);
        message.add_query(query);
        message.add_answers(self.answers.iter().cloned());
        message.add_authorities(self.authority.iter().cloned());
        message.add_additionals(self.additional.iter().cloned());
        message
    }

    /// hickory's wire form, with record boundaries and relocations.
    fn encode(&self) -> Answer {
        let message = self.message();
        let mut wire = Vec::with_capacity(512);
        let mut answers = Noting {
            records: &message.answers,
            starts: Vec::new(),
        };
        let mut authority = Noting {
            records: &message.authorities,
            starts: Vec::new(),
        };
        let mut additional = Noting {
            records: &message.additionals,
            starts: Vec::new(),
        };
        let encoded = {
            let mut encoder = BinEncoder::new(&mut wire);
            emit_message_parts(
                &message.metadata,
                &mut message.queries.iter(),
                &mut answers,
                &mut authority,
                &mut additional,
                None,
                None,
                &mut encoder,
            )
        };
        if let Err(e) = encoded {
            // Only a name or message over the format's limits fails; the records come
            // from validated instances, so this is a bug: answer SERVFAIL-free NODATA.
            tracing::error!(error = %e, name = %self.question, "DNS answer cannot be encoded");
            return Answer::default();
        }
        // The question is the first name: never compressed.
        let mut question_end = HEADER;
        while wire.get(question_end).is_some_and(|&len| len != 0) {
            question_end += 1 + usize::from(wire[question_end]);
        }
        let question_end = question_end + 1 + 4;
        let end = wire.len();
        let first_extra = authority
            .starts
            .first()
            .or(additional.starts.first())
            .copied()
            .unwrap_or(end);
        let mut answer_starts = answers.starts.clone();
        answer_starts.push(first_extra);
        let mut extra: Vec<usize> = authority.starts.clone();
        extra.extend(&additional.starts);
        extra.push(end);
        let to16 = |v: &[usize]| -> Box<[u16]> { v.iter().map(|&x| x as u16).collect() };
        let segment_of = |offset: usize| -> u16 {
            if offset < question_end {
                return 0;
            }
            if offset < first_extra {
                let i = answer_starts.partition_point(|&s| s <= offset);
                return i as u16;
            }
            let k = extra.partition_point(|&s| s <= offset);
            (answers.starts.len() + k) as u16
        };
        // Only pointers whose target can move: into the question's name (moves when the
        // asked name is longer, as NXDOMAIN's is) or into a record (moves on rotation).
        let relocations: Vec<Relocation> = pointers(&wire, question_end, end)
            .into_iter()
            .filter(|&(_, to)| to >= HEADER)
            .map(|(at, to)| Relocation {
                at: at as u16,
                at_segment: segment_of(at),
                to: to as u16,
                to_segment: segment_of(to),
            })
            .collect();
        let n = answers.starts.len() as u16;
        let between_answers = relocations
            .iter()
            .any(|r| (1..=n).contains(&r.at_segment) && (1..=n).contains(&r.to_segment));
        Answer {
            rotate: n > 1 && !between_answers && end < 0x3F00,
            rcode: self.rcode.low(),
            authoritative: self.authoritative,
            question_end: question_end as u16,
            answers: to16(&answer_starts),
            authority: authority.starts.len() as u16,
            extra: to16(&extra),
            relocations: relocations.into_boxed_slice(),
            wire: wire.into_boxed_slice(),
        }
    }
}

/// Every compression pointer in the records of `wire` from `from` to `end`, as (where,
/// target). Knows the record types compiled here (names in the RDATA of NS, SOA, SRV).
fn pointers(wire: &[u8], from: usize, end: usize) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut at = from;
    // A name's pointer, if any; returns the offset after the name.
    let skip_name = |mut i: usize, found: &mut Vec<(usize, usize)>| -> usize {
        while i < wire.len() {
            let len = wire[i];
            if len & 0xC0 == 0xC0 {
                let target = usize::from(u16::from_be_bytes([len, wire[i + 1]]) & 0x3FFF);
                found.push((i, target));
                return i + 2;
            }
            if len == 0 {
                return i + 1;
            }
            i += 1 + usize::from(len);
        }
        i
    };
    while at < end {
        at = skip_name(at, &mut found);
        let rtype = u16::from_be_bytes([wire[at], wire[at + 1]]);
        let rdlen = usize::from(u16::from_be_bytes([wire[at + 8], wire[at + 9]]));
        let rdata = at + 10;
        match rtype {
            TYPE_NS => {
                skip_name(rdata, &mut found);
            }
            TYPE_SOA => {
                let next = skip_name(rdata, &mut found);
                skip_name(next, &mut found);
            }
            TYPE_SRV => {
                skip_name(rdata + 6, &mut found);
            }
            _ => {}
        }
        at = rdata + rdlen;
    }
    found
}

fn opt_records(nsid: Option<&str>) -> OptRecords {
    let mut variants: [Box<[u8]>; 8] = Default::default();
    for (i, variant) in variants.iter_mut().enumerate() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_version(0);
        edns.set_dnssec_ok(i & 1 != 0);
        if i & 4 != 0 {
            edns.set_rcode_high(ResponseCode::BADVERS.high());
        }
        if i & 2 != 0
            && let Some(Ok(payload)) = nsid.map(|id| NSIDPayload::new(id.as_bytes().to_vec()))
        {
            edns.options_mut().insert(EdnsOption::NSID(payload));
        }
        let record = Record::from(&edns);
        let mut wire = Vec::with_capacity(32);
        if record.emit(&mut BinEncoder::new(&mut wire)).is_ok() {
            *variant = wire.into_boxed_slice();
        }
    }
    OptRecords { variants }
}

/// The records of one name, before encoding.
#[derive(Default)]
struct Records {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    srv: Vec<Record>,
    /// Glue of the SRV records: addresses of their targets.
    glue: Vec<Record>,
}

/// Compiles the snapshot's healthy instances into pre-encoded answers.
pub fn compile(snapshot: &Snapshot, config: &DnsConfig) -> DnsTable {
    let domain = config.domain.trim_matches('.').to_ascii_lowercase();
    let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
    let mut names: BTreeMap<String, Records> = BTreeMap::new();
    let mut seen_addresses: HashMap<String, BTreeSet<IpAddr>> = HashMap::new();
    let mut add = |owner: String,
                   instances: &[&Instance],
                   port_of: &dyn Fn(&Instance) -> Option<u16>,
                   addresses: bool,
                   service: &str| {
        let owner_name = name(&owner);
        let seen = seen_addresses.entry(owner.clone()).or_default();
        let records = names.entry(owner).or_default();
        for instance in instances {
            let address = instance.spec.address;
            // One record per address: instances sharing an IP (different ports) would
            // repeat it, and an RRset has no duplicates (RFC 2181 5).
            if addresses && seen.insert(address) {
                let record = address_record(&owner_name, address, ttl);
                match address {
                    IpAddr::V4(_) => records.a.push(record),
                    IpAddr::V6(_) => records.aaaa.push(record),
                }
            }
            if let Some(port) = port_of(instance) {
                let target = name(&format!(
                    "{}.{service}.instance.{domain}",
                    target_label(&instance.id)
                ));
                records.srv.push(Record::from_rdata(
                    owner_name.clone(),
                    ttl,
                    RData::SRV(SRV::new(1, instance.spec.weight, port, target.clone())),
                ));
                records.glue.push(address_record(&target, address, ttl));
            }
        }
    };
    let main_port = |i: &Instance| Some(i.spec.port);
    for (service, entry) in snapshot.services.iter() {
        let healthy: Vec<&Instance> = entry
            .instances
            .values()
            .filter(|i| {
                i.spec.health == Health::Passing
                    || (config.serve_warning && i.spec.health == Health::Warning)
            })
            .collect();
        // Known even with no healthy instance: NOERROR and no records, as Consul does.
        add(
            format!("{service}.service.{domain}"),
            &healthy,
            &main_port,
            true,
            service,
        );
        let tags: BTreeSet<&str> = entry
            .instances
            .values()
            .flat_map(|i| i.spec.tags.iter().map(String::as_str))
            .collect();
        for tag in tags {
            let tagged: Vec<&Instance> = healthy
                .iter()
                .copied()
                .filter(|i| i.spec.tags.iter().any(|t| t == tag))
                .collect();
            add(
                format!("{tag}.{service}.service.{domain}"),
                &tagged,
                &main_port,
                true,
                service,
            );
        }
        let zones: BTreeSet<&str> = entry
            .instances
            .values()
            .filter_map(|i| i.spec.zone.as_deref())
            .collect();
        for zone in zones {
            let local: Vec<&Instance> = healthy
                .iter()
                .copied()
                .filter(|i| i.spec.zone.as_deref() == Some(zone))
                .collect();
            add(
                format!("{service}.service.{zone}.zone.{domain}"),
                &local,
                &main_port,
                true,
                service,
            );
        }
        let port_names: BTreeSet<&str> = entry
            .instances
            .values()
            .flat_map(|i| i.spec.ports.keys().map(String::as_str))
            .collect();
        for port_name in port_names {
            let named = |i: &Instance| i.spec.ports.get(port_name).copied();
            // SRV only: the name says "port", not "host" (docs/dns.md).
            add(
                format!("_{port_name}._tcp.{service}.service.{domain}"),
                &healthy,
                &named,
                false,
                service,
            );
        }
        for instance in &healthy {
            let owner = format!("{}.{service}.instance.{domain}", target_label(&instance.id));
            add(
                owner,
                std::slice::from_ref(instance),
                &|_| None,
                true,
                service,
            );
        }
    }

    let apex = name(&domain);
    let ns_name = name(&format!("ns.{domain}"));
    let soa = Record::from_rdata(
        apex.clone(),
        ttl,
        RData::SOA(SOA::new(
            ns_name.clone(),
            name(&format!("hostmaster.{domain}")),
            snapshot.revision as u32,
            3600,
            600,
            86400,
            ttl, // minimum: the negative caching TTL (RFC 2308 4)
        )),
    );
    // The name server: its own addresses, so the SOA's MNAME and the apex NS resolve.
    let ns_glue: Vec<Record> = config
        .name_server_addresses()
        .into_iter()
        .map(|address| address_record(&ns_name, address, ttl))
        .collect();
    {
        let records = names.entry(format!("ns.{domain}")).or_default();
        for record in &ns_glue {
            match record.record_type() {
                RecordType::A => records.a.push(record.clone()),
                _ => records.aaaa.push(record.clone()),
            }
        }
    }

    let negative = |question: &Name, qtype: RecordType, rcode: ResponseCode| {
        let mut response = Response::new(question, qtype);
        response.rcode = rcode;
        response.authority.push(soa.clone());
        response.encode()
    };
    let positive =
        |question: &Name, qtype: RecordType, answers: &[Record], additional: &[Record]| {
            let mut response = Response::new(question, qtype);
            response.answers = answers.to_vec();
            response.additional = additional.to_vec();
            response.encode()
        };

    let domain_wire = wire_name(&domain);
    let mut table_names: NameMap<NameEntry> = NameMap::default();
    for (owner, records) in &names {
        let owner_name = name(owner);
        let set = |rtype: RecordType, records: &[Record], glue: &[Record]| {
            (!records.is_empty()).then(|| positive(&owner_name, rtype, records, glue))
        };
        let entry = NameEntry {
            a: set(RecordType::A, &records.a, &[]),
            aaaa: set(RecordType::AAAA, &records.aaaa, &[]),
            srv: set(RecordType::SRV, &records.srv, &records.glue),
            ns: None,
            soa: None,
            nodata: negative(&owner_name, RecordType::A, ResponseCode::NoError),
        };
        table_names.insert(wire_name(owner).into_boxed_slice(), entry);
    }
    // Every name between an owner and the apex exists (empty non-terminals).
    let owners: Vec<Box<[u8]>> = table_names.keys().cloned().collect();
    for owner in owners {
        let mut at = 0;
        while owner.len() - at > domain_wire.len() {
            at += 1 + usize::from(owner[at]);
            let between: Box<[u8]> = owner[at..].into();
            if let std::collections::hash_map::Entry::Vacant(vacant) = table_names.entry(between) {
                let question = name(&dotted(vacant.key()));
                vacant.insert(NameEntry {
                    nodata: negative(&question, RecordType::A, ResponseCode::NoError),
                    ..NameEntry::default()
                });
            }
        }
    }
    let ns_record = Record::from_rdata(apex.clone(), ttl, RData::NS(NS(ns_name.clone())));
    let apex_entry = table_names
        .entry(domain_wire.clone().into_boxed_slice())
        .or_insert_with(|| NameEntry {
            nodata: negative(&apex, RecordType::A, ResponseCode::NoError),
            ..NameEntry::default()
        });
    apex_entry.soa = Some(positive(
        &apex,
        RecordType::SOA,
        std::slice::from_ref(&soa),
        &[],
    ));
    apex_entry.ns = Some(positive(
        &apex,
        RecordType::NS,
        std::slice::from_ref(&ns_record),
        &ns_glue,
    ));

    let mut chaos = NameMap::default();
    if let Some(identity) = &config.identity {
        for owner in ["id.server", "hostname.bind"] {
            let owner_name = name(owner);
            let mut record = Record::from_rdata(
                owner_name.clone(),
                0,
                RData::TXT(TXT::new(vec![identity.clone()])),
            );
            record.dns_class = DNSClass::CH;
            let mut response = Response::new(&owner_name, RecordType::TXT);
            response.qclass = DNSClass::CH;
            response.authoritative = false;
            response.answers.push(record);
            chaos.insert(wire_name(owner).into_boxed_slice(), response.encode());
        }
    }

    DnsTable {
        revision: snapshot.revision,
        nxdomain: negative(&apex, RecordType::A, ResponseCode::NXDomain),
        domain: domain_wire.into_boxed_slice(),
        names: table_names,
        opt: opt_records(config.nsid.as_deref()),
        chaos,
        nsid: config.nsid.is_some(),
    }
}

/// Wire form to dotted (labels validated: they came from `wire_name`).
fn dotted(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < wire.len() && wire[at] != 0 {
        let len = usize::from(wire[at]);
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(&wire[at + 1..at + 1 + len]));
        at += 1 + len;
    }
    out
}

#[cfg(test)]
mod tests;

//! Compiling a snapshot into pre-encoded DNS answers (control plane).
//!
//! Names (`D` is the domain, `strait` by default):
//!
//! ```text
//! <service>.service.D                   A / AAAA of healthy instances; SRV (main port)
//! <tag>.<service>.service.D             the same, only instances with that tag
//! <service>.service.<zone>.zone.D       the same, only instances in that zone
//! _<port>._tcp.<service>.service.D      SRV of a named port
//! <target>.<service>.instance.D         A / AAAA of one instance (the SRV targets)
//! ```
//!
//! Every answer record is encoded once here, with its owner name as a compression
//! pointer to the question (offset 12), so the hot path only copies bytes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::model::{Health, Instance};
use crate::snapshot::Snapshot;

use super::DnsConfig;

pub const TYPE_A: u16 = 1;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
/// Owner name = the question's name.
const OWNER_IS_QUESTION: [u8; 2] = [0xC0, 0x0C];

/// Records for one (name, type).
#[derive(Debug, Default)]
pub struct RecordSet {
    /// Answer records, each complete; rotated per query.
    pub answers: Vec<Box<[u8]>>,
    /// Additional records (A/AAAA glue for SRV targets).
    pub additional: Vec<Box<[u8]>>,
}

impl RecordSet {
    pub fn wire_len(&self) -> usize {
        self.answers
            .iter()
            .chain(&self.additional)
            .map(|r| r.len())
            .sum()
    }
}

/// Everything known about one name. A name with no records at all is an empty
/// non-terminal (`service.strait` above `web.service.strait`): NODATA, not NXDOMAIN
/// (RFC 8020).
#[derive(Debug, Default)]
pub struct NameEntry {
    pub a: RecordSet,
    pub aaaa: RecordSet,
    pub srv: RecordSet,
    /// The zone's SOA, at the apex only.
    pub soa: RecordSet,
}

/// The compiled DNS table, swapped whole.
#[derive(Debug, Default)]
pub struct DnsTable {
    pub revision: u64,
    /// The domain in lowercase wire form (`\x06strait\x00`).
    pub domain: Box<[u8]>,
    /// Keyed by the lowercase wire form of the full name.
    pub names: HashMap<Box<[u8]>, NameEntry>,
    /// The zone's SOA record, for the authority section of negative answers.
    pub soa: Box<[u8]>,
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

fn record(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Box<[u8]> {
    let mut r = Vec::with_capacity(owner.len() + 10 + rdata.len());
    r.extend_from_slice(owner);
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r.into_boxed_slice()
}

fn address_record(owner: &[u8], address: IpAddr, ttl: u32) -> Box<[u8]> {
    match address {
        IpAddr::V4(v4) => record(owner, TYPE_A, ttl, &v4.octets()),
        IpAddr::V6(v6) => record(owner, TYPE_AAAA, ttl, &v6.octets()),
    }
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

/// Fills A, AAAA and SRV sets for `instances` answering under `name`.
fn fill(
    entry: &mut NameEntry,
    instances: &[&Instance],
    port_of: impl Fn(&Instance) -> Option<u16>,
    service: &str,
    domain: &str,
    ttl: u32,
) {
    for instance in instances {
        let record = address_record(&OWNER_IS_QUESTION, instance.spec.address, ttl);
        match instance.spec.address {
            IpAddr::V4(_) => entry.a.answers.push(record),
            IpAddr::V6(_) => entry.aaaa.answers.push(record),
        }
        if let Some(port) = port_of(instance) {
            let target = wire_name(&format!(
                "{}.{service}.instance.{domain}",
                target_label(&instance.id)
            ));
            let mut rdata = Vec::with_capacity(6 + target.len());
            rdata.extend_from_slice(&1u16.to_be_bytes()); // priority
            rdata.extend_from_slice(&instance.spec.weight.to_be_bytes());
            rdata.extend_from_slice(&port.to_be_bytes());
            rdata.extend_from_slice(&target);
            entry.srv.answers.push(record_owned(TYPE_SRV, ttl, &rdata));
            entry
                .srv
                .additional
                .push(address_record(&target, instance.spec.address, ttl));
        }
    }
}

fn record_owned(rtype: u16, ttl: u32, rdata: &[u8]) -> Box<[u8]> {
    record(&OWNER_IS_QUESTION, rtype, ttl, rdata)
}

/// Compiles the snapshot's healthy instances into pre-encoded answers.
pub fn compile(snapshot: &Snapshot, config: &DnsConfig) -> DnsTable {
    let domain = config.domain.trim_matches('.').to_ascii_lowercase();
    let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
    let mut names: HashMap<Box<[u8]>, NameEntry> = HashMap::new();
    let mut add = |name: String,
                   instances: &[&Instance],
                   port_of: &dyn Fn(&Instance) -> Option<u16>,
                   service: &str| {
        let entry = names
            .entry(wire_name(&name).into_boxed_slice())
            .or_default();
        fill(entry, instances, port_of, service, &domain, ttl);
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
            add(
                format!("_{port_name}._tcp.{service}.service.{domain}"),
                &healthy,
                &named,
                service,
            );
        }
        for instance in &healthy {
            let name = format!("{}.{service}.instance.{domain}", target_label(&instance.id));
            add(name, std::slice::from_ref(instance), &|_| None, service);
        }
    }
    // One record per address: instances sharing an IP (different ports) would repeat it,
    // and an RRset has no duplicates (RFC 2181 5).
    for entry in names.values_mut() {
        for set in [&mut entry.a, &mut entry.aaaa] {
            set.answers.sort_unstable();
            set.answers.dedup();
        }
    }
    let domain_wire = wire_name(&domain);
    // Every name between an owner and the apex exists (empty non-terminals), and so
    // does the apex.
    let owners: Vec<Box<[u8]>> = names.keys().cloned().collect();
    for owner in owners {
        let mut at = 0;
        while owner.len() - at > domain_wire.len() {
            at += 1 + usize::from(owner[at]);
            names.entry(owner[at..].into()).or_default();
        }
    }
    let mut soa_rdata = wire_name(&format!("ns.{domain}"));
    soa_rdata.extend_from_slice(&wire_name(&format!("hostmaster.{domain}")));
    soa_rdata.extend_from_slice(&(snapshot.revision as u32).to_be_bytes()); // serial
    for value in [3600u32, 600, 86400, ttl] {
        // refresh, retry, expire, minimum (negative caching TTL)
        soa_rdata.extend_from_slice(&value.to_be_bytes());
    }
    names
        .entry(domain_wire.clone().into_boxed_slice())
        .or_default()
        .soa
        .answers = vec![record_owned(TYPE_SOA, ttl, &soa_rdata)];
    DnsTable {
        revision: snapshot.revision,
        soa: record(&domain_wire, TYPE_SOA, ttl, &soa_rdata),
        domain: domain_wire.into_boxed_slice(),
        names,
    }
}

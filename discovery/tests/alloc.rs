//! The DNS query path allocates nothing: every answer is copied from the pre-encoded
//! table into a reused buffer. A counting global allocator (its own test binary, so no
//! other test allocates meanwhile) checks it across the kinds of answer: A with rotation,
//! SRV with glue (rotated, its pointers moved), NXDOMAIN with SOA (pointers moved to the
//! asked name), EDNS with DO and NSID, BADVERS, truncation, CH TXT, malformed packets.

use std::collections::BTreeMap;
use std::sync::Arc;

use discovery::dns::DnsConfig;
use discovery::dns::answer::{Transport, respond};
use discovery::dns::table::{compile, wire_name};
use discovery::model::{Instance, InstanceSpec};
use discovery::snapshot::{Service, Snapshot};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&wire_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// With an OPT record: `version`, the DO bit, an NSID option.
fn query_edns(name: &str, qtype: u16, version: u8) -> Vec<u8> {
    let mut q = query(name, qtype);
    q[11] = 1;
    q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, version, 0x80, 0, 0, 4, 0, 3, 0, 0]);
    q
}

#[test]
fn answering_a_query_allocates_nothing() {
    let mut service = Service::default();
    for i in 0..40u8 {
        let id = format!("w{i}");
        let mut spec = InstanceSpec::new(format!("10.0.0.{i}").parse().expect("ip"), 8080);
        spec.ports.insert("grpc".into(), 9090);
        service.instances.insert(
            Arc::from(id.as_str()),
            Instance::new("web", &id, spec).expect("valid"),
        );
    }
    let mut services = BTreeMap::new();
    services.insert(Arc::from("web"), Arc::new(service));
    let snapshot = Snapshot {
        revision: 1,
        services: Arc::new(services),
        ..Snapshot::default()
    };
    let config = DnsConfig {
        nsid: Some("dns-1".into()),
        identity: Some("dns-1".into()),
        ..DnsConfig::default()
    };
    let table = compile(&snapshot, &config);
    let mut chaos = query("id.server", 16);
    let len = chaos.len();
    chaos[len - 1] = 3; // class CH
    let queries = [
        (query("web.service.strait", 1), Transport::Udp),
        (query("web.service.strait", 33), Transport::Udp), // SRV + glue, truncated at 512
        (query("web.service.strait", 33), Transport::Tcp),
        (query("_grpc._tcp.web.service.strait", 33), Transport::Tcp),
        (query("nope.service.strait", 1), Transport::Udp), // NXDOMAIN + SOA
        (query_edns("web.service.strait", 33, 0), Transport::Udp), // SRV + glue, EDNS
        (
            query_edns("a.b.c.d.nope.service.strait", 1, 0),
            Transport::Udp,
        ), // moved SOA
        (query_edns("web.service.strait", 1, 1), Transport::Udp), // BADVERS
        (chaos, Transport::Udp),
        (query("example.com", 1), Transport::Udp), // REFUSED
        (
            vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a'],
            Transport::Udp,
        ), // malformed
    ];
    let mut out = Vec::with_capacity(65_535);
    for (q, transport) in &queries {
        respond(&table, q, *transport, 0, &mut out);
    }
    let region = Region::new(GLOBAL);
    let mut answered = 0;
    for rotation in 0..10_000 {
        for (q, transport) in &queries {
            if respond(&table, q, *transport, rotation, &mut out).is_some() {
                answered += 1;
            }
        }
    }
    let change = region.change();
    assert!(answered >= 100_000, "only {answered} answers");
    // The counter is process-wide: the test harness's own threads may allocate a few
    // times meanwhile. One allocation per answer would be 110,000.
    assert!(
        change.allocations + change.reallocations < 50,
        "the DNS hot path allocated: {change:?} over {answered} answers"
    );
}

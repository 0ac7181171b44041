use std::sync::Arc;

use super::*;
use crate::dns::DnsConfig;
use crate::dns::table::compile;
use crate::model::{Instance, InstanceSpec};
use crate::snapshot::{Service, Snapshot};

fn table() -> DnsTable {
    let mut service = Service::default();
    // w4 shares w1's address on another port: one A record for both.
    for (id, addr, port) in [
        ("w1", "10.0.0.1", 8080),
        ("w2", "10.0.0.2", 8080),
        ("w3", "fd00::3", 8080),
        ("w4", "10.0.0.1", 8081),
    ] {
        let mut spec = InstanceSpec::new(addr.parse().expect("ip"), port);
        spec.tags = vec!["v2".into()];
        spec.ports.insert("grpc".into(), 9090);
        service.instances.insert(
            Arc::from(id),
            Instance::new("web", id, spec).expect("valid"),
        );
    }
    let mut services = std::collections::BTreeMap::new();
    services.insert(Arc::from("web"), Arc::new(service));
    let snapshot = Snapshot {
        revision: 3,
        services: Arc::new(services),
        ..Snapshot::default()
    };
    compile(&snapshot, &DnsConfig::default())
}

fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = vec![
        0x12,
        0x34,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(edns.is_some()),
    ];
    q.extend_from_slice(&crate::dns::table::wire_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

fn ask(table: &DnsTable, q: &[u8], transport: Transport) -> (Option<Outcome>, Vec<u8>) {
    let mut out = Vec::new();
    let outcome = respond(table, q, transport, 0, &mut out);
    (outcome, out)
}

#[test]
fn answers_and_codes() {
    let t = table();
    let (o, out) = ask(&t, &query("web.service.strait", 1, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::NoError));
    assert_eq!(&out[..2], &[0x12, 0x34], "id echoed");
    assert_eq!(
        u16::from_be_bytes([out[6], out[7]]),
        2,
        "two A records (w1 and w4 share one)"
    );
    let (o, _) = ask(&t, &query("WEB.Service.STRAIT", 28, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::NoError));
    let (o, out) = ask(&t, &query("nope.service.strait", 1, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::NxDomain));
    assert_eq!(u16::from_be_bytes([out[8], out[9]]), 1, "SOA in authority");
    let (o, out) = ask(&t, &query("web.service.strait", 15, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::NoError));
    assert_eq!(u16::from_be_bytes([out[6], out[7]]), 0, "NODATA");
    // The apex has the SOA; names between an owner and the apex exist, empty (RFC 8020).
    let (o, out) = ask(&t, &query("strait", 6, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::NoError));
    assert_eq!(u16::from_be_bytes([out[6], out[7]]), 1, "SOA in the answer");
    for name in [
        "strait",
        "service.strait",
        "instance.strait",
        "_tcp.web.service.strait",
    ] {
        let (o, out) = ask(&t, &query(name, 1, None), Transport::Udp);
        assert_eq!(o.map(|o| o.rcode), Some(Rcode::NoError), "{name}");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 0, "{name}: NODATA");
        assert_eq!(u16::from_be_bytes([out[8], out[9]]), 1, "{name}: SOA");
    }
    let (o, _) = ask(&t, &query("x.service.strait", 1, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::NxDomain));
    let (o, _) = ask(&t, &query("strait", 252, None), Transport::Tcp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::Refused), "no AXFR");
    let (o, _) = ask(&t, &query("example.com", 1, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::Refused));
    let (o, _) = ask(&t, &query("xstrait", 1, None), Transport::Udp);
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::Refused), "label boundary");
    let (o, out) = ask(
        &t,
        &query("_grpc._tcp.web.service.strait", 33, Some(4096)),
        Transport::Udp,
    );
    assert_eq!(o.map(|o| o.rcode), Some(Rcode::NoError));
    assert_eq!(u16::from_be_bytes([out[6], out[7]]), 4, "four SRV");
    assert_eq!(u16::from_be_bytes([out[10], out[11]]), 5, "four glue + OPT");
}

#[test]
fn truncation_over_udp_full_answer_over_tcp() {
    let mut service = Service::default();
    for i in 0..60u8 {
        let id = format!("i{i}");
        let spec = InstanceSpec::new(std::net::IpAddr::from([10, 0, 1, i]), 80);
        service.instances.insert(
            Arc::from(id.as_str()),
            Instance::new("big", &id, spec).expect("valid"),
        );
    }
    let mut services = std::collections::BTreeMap::new();
    services.insert(Arc::from("big"), Arc::new(service));
    let snapshot = Snapshot {
        revision: 1,
        services: Arc::new(services),
        ..Snapshot::default()
    };
    let t = compile(&snapshot, &DnsConfig::default());
    let q = query("big.service.strait", 1, None);
    let (o, out) = ask(&t, &q, Transport::Udp);
    let o = o.expect("answered");
    assert!(o.truncated, "60 A records do not fit in 512 bytes");
    assert_eq!(out[2] & 0x02, 0x02, "TC set");
    assert!(out.len() <= 512);
    let (o, out) = ask(&t, &q, Transport::Tcp);
    assert!(!o.expect("answered").truncated);
    assert_eq!(
        u16::from_be_bytes([out[6], out[7]]),
        60,
        "all records over TCP"
    );
    // With EDNS 4096 they fit over UDP too.
    let (o, _) = ask(
        &t,
        &query("big.service.strait", 1, Some(4096)),
        Transport::Udp,
    );
    assert!(!o.expect("answered").truncated);
}

#[test]
fn malformed_queries_never_panic_or_amplify() {
    let t = table();
    let good = query("web.service.strait", 1, Some(1232));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..20_000 {
        let mut q = good.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed as usize) % q.len();
        q[at] = (seed >> 40) as u8;
        q.truncate(q.len().saturating_sub(i % 5));
        let mut out = Vec::new();
        if let Some(o) = respond(&t, &q, Transport::Udp, i, &mut out)
            && o.rcode == Rcode::FormErr
        {
            assert!(
                out.len() <= q.len().max(12),
                "FORMERR larger than the query"
            );
        }
    }
    // A compression loop in the question is refused, not followed.
    let mut looped = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
    let mut out = Vec::new();
    assert_eq!(
        respond(&t, &looped, Transport::Udp, 0, &mut out).map(|o| o.rcode),
        Some(Rcode::FormErr)
    );
    looped[2] = 0x80;
    assert_eq!(
        respond(&t, &looped, Transport::Udp, 0, &mut out),
        None,
        "responses are never answered"
    );
}

/// A table not compiled yet (before the first snapshot) has no SOA: its negative answer
/// must not count an authority record it does not carry (dig: "malformed message").
#[test]
fn an_uncompiled_table_answers_well_formed() {
    let empty = DnsTable::default();
    let q = query("web.service.strait", 1, None);
    let (outcome, out) = ask(&empty, &q, Transport::Udp);
    assert!(outcome.is_some());
    let authority = u16::from_be_bytes([out[8], out[9]]);
    assert_eq!(authority, 0, "no SOA to count");
    assert_eq!(out.len(), q.len(), "header and question only");
}

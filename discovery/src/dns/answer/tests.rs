//! The hot path's answers, each decoded strictly by hickory-proto, and one test per RFC
//! rule strait once broke (issue 20), quoting the rule.

use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::*;
use crate::dns::DnsConfig;
use crate::dns::table::compile;
use crate::model::{Instance, InstanceSpec};
use crate::snapshot::{Service, Snapshot};

fn snapshot(instances: &[(&str, &str, &str, u16)]) -> Snapshot {
    let mut services = std::collections::BTreeMap::new();
    for &(service_name, id, addr, port) in instances {
        let mut spec = InstanceSpec::new(addr.parse().expect("ip"), port);
        spec.tags = vec!["v2".into()];
        spec.ports.insert("grpc".into(), 9090);
        let service: &mut Arc<Service> = services
            .entry(Arc::from(service_name))
            .or_insert_with(|| Arc::new(Service::default()));
        Arc::make_mut(service).instances.insert(
            Arc::from(id),
            Instance::new(service_name, id, spec).expect("valid"),
        );
    }
    Snapshot {
        revision: 3,
        services: Arc::new(services),
        ..Snapshot::default()
    }
}

fn table() -> DnsTable {
    // w4 shares w1's address on another port: one A record for both.
    compile(
        &snapshot(&[
            ("web", "w1", "10.0.0.1", 8080),
            ("web", "w2", "10.0.0.2", 8080),
            ("web", "w3", "fd00::3", 8080),
            ("web", "w4", "10.0.0.1", 8081),
        ]),
        &DnsConfig::default(),
    )
}

/// A query: `edns` is (payload, flags, version, options).
fn query_with(name: &str, qtype: u16, qclass: u16, edns: Option<(u16, u16, u8, &[u8])>) -> Vec<u8> {
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
    q.extend_from_slice(&qclass.to_be_bytes());
    if let Some((size, flags, version, options)) = edns {
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, version]);
        q.extend_from_slice(&flags.to_be_bytes());
        q.extend_from_slice(&(options.len() as u16).to_be_bytes());
        q.extend_from_slice(options);
    }
    q
}

fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    query_with(name, qtype, 1, edns.map(|size| (size, 0, 0, &[][..])))
}

/// Answers `q` and decodes the answer strictly with hickory-proto.
fn ask_on(
    table: &DnsTable,
    q: &[u8],
    transport: Transport,
    rotation: usize,
) -> (Outcome, Message, Vec<u8>) {
    let mut out = Vec::new();
    let outcome = respond(table, q, transport, rotation, &mut out).expect("answered");
    let message = Message::from_vec(&out)
        .unwrap_or_else(|e| panic!("hickory cannot read strait's answer ({e}): {out:02x?}"));
    assert_eq!(message.metadata.id, 0x1234, "id echoed");
    (outcome, message, out)
}

fn ask(table: &DnsTable, q: &[u8]) -> (Outcome, Message) {
    let (outcome, message, _) = ask_on(table, q, Transport::Udp, 0);
    (outcome, message)
}

fn addresses(message: &Message) -> Vec<String> {
    let mut found: Vec<String> = message
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    found.sort();
    found
}

#[test]
fn answers_and_codes() {
    let t = table();
    let (o, m) = ask(&t, &query("web.service.strait", 1, None));
    assert_eq!(o.rcode, Rcode::NoError);
    assert_eq!(
        addresses(&m),
        ["10.0.0.1", "10.0.0.2"],
        "w1 and w4 share one A"
    );
    assert!(m.metadata.authoritative);
    let q = query("WEB.Service.STRAIT", 28, None);
    let (o, m, out) = ask_on(&t, &q, Transport::Udp, 0);
    assert_eq!(o.rcode, Rcode::NoError);
    assert_eq!(addresses(&m), ["fd00::3"]);
    assert_eq!(
        &out[12..q.len()],
        &q[12..],
        "the question is echoed as asked"
    );
    let (o, m) = ask(&t, &query("nope.service.strait", 1, None));
    assert_eq!(o.rcode, Rcode::NxDomain);
    assert_eq!(m.authorities.len(), 1, "SOA in authority");
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert!(m.metadata.authoritative);
    let (o, m) = ask(&t, &query("web.service.strait", 15, None));
    assert_eq!(o.rcode, Rcode::NoError);
    assert!(m.answers.is_empty(), "NODATA");
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // The apex has the SOA; names between an owner and the apex exist, empty (RFC 8020).
    let (_, m) = ask(&t, &query("strait", 6, None));
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    for name in [
        "strait",
        "service.strait",
        "instance.strait",
        "_tcp.web.service.strait",
    ] {
        let (o, m) = ask(&t, &query(name, 1, None));
        assert_eq!(o.rcode, Rcode::NoError, "{name}");
        assert!(m.answers.is_empty(), "{name}: NODATA");
        assert_eq!(m.authorities.len(), 1, "{name}: SOA");
    }
    let (o, _) = ask(&t, &query("x.service.strait", 1, None));
    assert_eq!(o.rcode, Rcode::NxDomain);
    let (o, _, _) = ask_on(&t, &query("strait", 252, None), Transport::Tcp, 0);
    assert_eq!(o.rcode, Rcode::Refused, "no AXFR");
    let (o, _) = ask(&t, &query("example.com", 1, None));
    assert_eq!(o.rcode, Rcode::Refused);
    let (o, _) = ask(&t, &query("xstrait", 1, None));
    assert_eq!(o.rcode, Rcode::Refused, "label boundary");
    let (o, m) = ask(&t, &query("_grpc._tcp.web.service.strait", 33, Some(4096)));
    assert_eq!(o.rcode, Rcode::NoError);
    assert_eq!(m.answers.len(), 4, "four SRV");
    assert_eq!(m.additionals.len(), 4, "four glue");
    assert!(m.edns.is_some());
}

#[test]
fn rotation_keeps_glue_pointers_right() {
    let t = table();
    let q = query("web.service.strait", 33, Some(1232));
    let mut firsts = std::collections::BTreeSet::new();
    for rotation in 0..8 {
        let (_, m, _) = ask_on(&t, &q, Transport::Udp, rotation);
        firsts.insert(format!("{:?}", m.answers[0].data));
        let glue: Vec<String> = m.additionals.iter().map(|r| r.name.to_ascii()).collect();
        for srv in &m.answers {
            let RData::SRV(srv) = &srv.data else {
                panic!("not SRV: {srv:?}");
            };
            assert!(
                glue.contains(&srv.target.to_ascii()),
                "glue for {} in {glue:?} (rotation {rotation})",
                srv.target
            );
        }
    }
    assert_eq!(firsts.len(), 4, "each SRV comes first in turn");
}

#[test]
fn nxdomain_pointers_follow_the_asked_name() {
    let t = table();
    for name in [
        "a.strait",
        "very-long-label-here.x.y.z.service.strait",
        "NoPe.StRaIt",
    ] {
        let (o, m) = ask(&t, &query(name, 1, Some(1232)));
        assert_eq!(o.rcode, Rcode::NxDomain, "{name}");
        let soa = &m.authorities[0];
        assert_eq!(soa.name.to_ascii().to_lowercase(), "strait.", "{name}");
        let RData::SOA(soa) = &soa.data else {
            panic!("not a SOA");
        };
        assert_eq!(soa.mname.to_ascii().to_lowercase(), "ns.strait.");
        assert_eq!(soa.rname.to_ascii().to_lowercase(), "hostmaster.strait.");
    }
}

#[test]
fn truncation_over_udp_full_answer_over_tcp() {
    let instances: Vec<(String, String)> = (0..60u8)
        .map(|i| (format!("i{i}"), format!("10.0.1.{i}")))
        .collect();
    let list: Vec<(&str, &str, &str, u16)> = instances
        .iter()
        .map(|(id, addr)| ("big", id.as_str(), addr.as_str(), 80))
        .collect();
    let t = compile(&snapshot(&list), &DnsConfig::default());
    let q = query("big.service.strait", 1, None);
    let (o, m, out) = ask_on(&t, &q, Transport::Udp, 0);
    assert!(o.truncated, "60 A records do not fit in 512 bytes");
    assert!(m.metadata.truncation, "TC set");
    assert!(out.len() <= 512);
    let (o, m, _) = ask_on(&t, &q, Transport::Tcp, 0);
    assert!(!o.truncated);
    assert!(o.tcp_fallback, "over TCP, an answer too big for UDP");
    assert_eq!(m.answers.len(), 60, "all records over TCP");
    // With EDNS they fit the smaller of 4096 and 1232.
    let (o, _, out) = ask_on(
        &t,
        &query("big.service.strait", 1, Some(4096)),
        Transport::Udp,
        0,
    );
    assert!(!o.truncated);
    assert!(out.len() <= 1232);
}

/// "The UDP payload size is the minimum of the requestor's and the responder's"
/// (DNS Flag Day 2020: 1232; RFC 6891 6.2.5: a responder "MUST NOT" exceed the
/// requestor's). strait once sent 1,789 bytes to a client that said 4096.
#[test]
fn udp_answers_are_capped_at_1232_whatever_the_client_says() {
    let instances: Vec<(String, String)> = (0..60u8)
        .map(|i| (format!("instance-{i}"), format!("10.0.2.{i}")))
        .collect();
    let list: Vec<(&str, &str, &str, u16)> = instances
        .iter()
        .map(|(id, addr)| ("big", id.as_str(), addr.as_str(), 80))
        .collect();
    let t = compile(&snapshot(&list), &DnsConfig::default());
    for size in [512, 1232, 4096, 65535] {
        let (o, m, out) = ask_on(
            &t,
            &query("big.service.strait", 33, Some(size)),
            Transport::Udp,
            0,
        );
        assert!(
            out.len() <= usize::from(size.min(1232)),
            "{} bytes at {size}",
            out.len()
        );
        // Glue that does not fit is left out without TC (RFC 2181 9) as long as the
        // answers fit; 60 SRV do not fit 1232.
        assert!(o.truncated && m.answers.is_empty(), "{size}");
    }
    let (_, m, out) = ask_on(
        &t,
        &query("big.service.strait", 33, None),
        Transport::Tcp,
        0,
    );
    assert_eq!((m.answers.len(), m.additionals.len()), (60, 60));
    // Glue owners point at the SRV targets (hickory's compression): Knot answers these
    // 60 SRV in 4,658 bytes with the same names as strait's first encoder's 5,309.
    assert!(out.len() < 4_700, "{} bytes", out.len());
}

#[test]
fn glue_is_trimmed_not_truncated() {
    let instances: Vec<(String, String)> = (0..7u8)
        .map(|i| (format!("instance-long-id-{i:03}"), format!("10.0.3.{i}")))
        .collect();
    let list: Vec<(&str, &str, &str, u16)> = instances
        .iter()
        .map(|(id, addr)| ("svc", id.as_str(), addr.as_str(), 80))
        .collect();
    let t = compile(&snapshot(&list), &DnsConfig::default());
    let (o, m, out) = ask_on(
        &t,
        &query("svc.service.strait", 33, None),
        Transport::Udp,
        0,
    );
    assert!(out.len() <= 512);
    assert!(
        !o.truncated,
        "RFC 2181 9: no TC for left-out additional data"
    );
    assert_eq!(m.answers.len(), 7);
    assert!(
        (1..7).contains(&m.additionals.len()),
        "some glue left out: {}",
        m.additionals.len()
    );
}

/// RFC 3225 3: "the DO bit of the query MUST be copied in the response".
#[test]
fn do_bit_is_copied() {
    let t = table();
    for (flags, dnssec_ok) in [(0x8000, true), (0, false)] {
        let (_, m) = ask(
            &t,
            &query_with("web.service.strait", 1, 1, Some((1232, flags, 0, &[]))),
        );
        let edns = m.edns.expect("OPT in the answer (RFC 6891 6.1.1)");
        assert_eq!(edns.flags().dnssec_ok, dnssec_ok);
        assert_eq!(edns.max_payload(), 1232);
        assert_eq!(edns.version(), 0);
    }
}

/// RFC 6891 6.1.3: "If a responder does not implement the VERSION level of the request,
/// then it MUST respond with RCODE=BADVERS."
#[test]
fn edns_version_1_gets_badvers() {
    let t = table();
    let (o, m) = ask(
        &t,
        &query_with("web.service.strait", 1, 1, Some((1232, 0x8000, 1, &[]))),
    );
    assert_eq!(o.rcode, Rcode::BadVers);
    // hickory names extended RCODE 16 BADSIG (TSIG's name for it); it is BADVERS here.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert!(m.answers.is_empty());
    let edns = m.edns.expect("OPT");
    assert_eq!(edns.version(), 0, "the version strait implements");
    assert!(edns.flags().dnssec_ok, "DO still copied");
    assert_eq!(m.queries.len(), 1, "the question kept");
}

/// RFC 6891 6.1.1: "If a query message with more than one OPT RR is received, a FORMERR
/// (RCODE=1) MUST be returned."
#[test]
fn two_opt_records_get_formerr() {
    let t = table();
    let mut q = query("web.service.strait", 1, Some(1232));
    q[11] = 2;
    q.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    let mut out = Vec::new();
    let o = respond(&t, &q, Transport::Udp, 0, &mut out).expect("answered");
    assert_eq!(o.rcode, Rcode::FormErr);
    let m = Message::from_vec(&out).expect("hickory reads it");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(out.len() <= q.len());
}

/// RFC 1035 4.1.1: AA "specifies that the responding name server is an authority for the
/// domain name in question section". Not for names outside the zone, other classes, or
/// queries it could not read.
#[test]
fn aa_only_where_authoritative() {
    let t = table();
    for (q, rcode) in [
        (query("example.com", 1, None), Rcode::Refused),
        (query_with("web.service.strait", 1, 3, None), Rcode::Refused),
        (query_with("web.service.strait", 1, 4, None), Rcode::Refused),
        (
            query_with("web.service.strait", 1, 254, None),
            Rcode::Refused,
        ),
        (
            {
                let mut q = query("web.service.strait", 1, None);
                q[2] = 0x11; // opcode 2 (STATUS)
                q
            },
            Rcode::NotImp,
        ),
        (
            {
                let mut q = query("web.service.strait", 1, None);
                q.push(0);
                q
            },
            Rcode::FormErr,
        ),
    ] {
        let (o, m) = ask(&t, &q);
        assert_eq!(o.rcode, rcode);
        assert!(!m.metadata.authoritative, "{rcode:?}: no AA");
    }
    let (_, m) = ask(&t, &query("web.service.strait", 1, None));
    assert!(m.metadata.authoritative);
    let (_, m) = ask(&t, &query("nope.service.strait", 1, None));
    assert!(
        m.metadata.authoritative,
        "NXDOMAIN from the zone is authoritative"
    );
}

/// RFC 1034 4.2.1: a zone's apex holds "one SOA RR" and the NS RRs of its name servers;
/// RFC 1035 3.3.13: MNAME is "the name server that was the original or primary source of
/// data for this zone" — it must resolve.
#[test]
fn apex_has_ns_and_the_mname_resolves() {
    let t = table();
    let (_, m) = ask(&t, &query("strait", 2, None));
    assert_eq!(m.answers.len(), 1);
    let RData::NS(ns) = &m.answers[0].data else {
        panic!("not NS: {:?}", m.answers[0]);
    };
    assert_eq!(ns.0.to_ascii(), "ns.strait.");
    assert_eq!(m.additionals.len(), 1, "glue for ns.strait.");
    let (_, m) = ask(&t, &query("strait", 6, None));
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("not SOA");
    };
    assert_eq!(soa.mname.to_ascii(), "ns.strait.");
    let (o, m) = ask(&t, &query("ns.strait", 1, None));
    assert_eq!(o.rcode, Rcode::NoError);
    assert_eq!(addresses(&m), ["127.0.0.1"], "dns.addr's IP");
}

/// RFC 6891 6.1.1: "If an OPT record is present in a received request, compliant
/// responders MUST include an OPT record in their respective responses" — NOTIMP and
/// FORMERR replies included, with the question when it was readable.
#[test]
fn error_replies_keep_question_and_opt() {
    let t = table();
    let mut notimp = query("strait", 6, Some(1232));
    notimp[2] = 0x10; // STATUS
    let (o, m) = ask(&t, &notimp);
    assert_eq!(o.rcode, Rcode::NotImp);
    assert_eq!(m.queries.len(), 1);
    assert!(m.edns.is_some());
    let mut formerr = query("web.service.strait", 1, Some(1232));
    formerr.extend_from_slice(b"junk");
    let (o, m, out) = ask_on(&t, &formerr, Transport::Udp, 0);
    assert_eq!(o.rcode, Rcode::FormErr);
    assert_eq!(m.queries.len(), 1);
    assert!(m.edns.is_some());
    assert!(out.len() <= formerr.len());
}

/// docs/dns.md: `_<port>._tcp.<service>.service.D` answers SRV; it is no host name.
#[test]
fn srv_only_names_answer_no_address() {
    let t = table();
    let (o, m) = ask(&t, &query("_grpc._tcp.web.service.strait", 1, None));
    assert_eq!(o.rcode, Rcode::NoError);
    assert!(m.answers.is_empty(), "NODATA: {m:?}");
    let (_, m) = ask(&t, &query("_grpc._tcp.web.service.strait", 33, None));
    assert_eq!(m.answers.len(), 4);
}

/// Issue 23: an OPT record whose RDLENGTH runs past the packet (RFC 1035 4.1.3: RDLENGTH
/// "specifies the length in octets of the RDATA field").
#[test]
fn opt_rdlength_past_the_end_gets_formerr() {
    let t = table();
    let mut q = query("web.service.strait", 1, Some(1232));
    let len = q.len();
    q[len - 2..].copy_from_slice(&[0, 16]);
    let mut out = Vec::new();
    let o = respond(&t, &q, Transport::Udp, 0, &mut out).expect("answered");
    assert_eq!(o.rcode, Rcode::FormErr);
    let m = Message::from_vec(&out).expect("hickory reads it");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.edns.is_none(), "the OPT record was unreadable");
    assert!(out.len() <= q.len());
}

/// RFC 5001 2.1/2.2 and RFC 4892 (off by default).
#[test]
fn nsid_and_chaos_identity_when_configured() {
    let t = table();
    let nsid_query = query_with(
        "web.service.strait",
        1,
        1,
        Some((1232, 0, 0, &[0, 3, 0, 0])),
    );
    let (_, m) = ask(&t, &nsid_query);
    assert!(
        m.edns
            .expect("OPT")
            .option(hickory_proto::rr::rdata::opt::EdnsCode::NSID)
            .is_none(),
        "off by default"
    );
    let (o, _) = ask(&t, &query_with("id.server", 16, 3, None));
    assert_eq!(o.rcode, Rcode::Refused, "off by default");
    let config = DnsConfig {
        identity: Some("dns-1".into()),
        nsid: Some("dns-1".into()),
        ..DnsConfig::default()
    };
    let t = compile(&snapshot(&[("web", "w1", "10.0.0.1", 80)]), &config);
    let (_, m) = ask(&t, &nsid_query);
    let edns = m.edns.expect("OPT");
    let Some(hickory_proto::rr::rdata::opt::EdnsOption::NSID(id)) =
        edns.option(hickory_proto::rr::rdata::opt::EdnsCode::NSID)
    else {
        panic!("no NSID: {edns:?}");
    };
    assert_eq!(id.as_ref(), b"dns-1");
    for name in ["id.server", "hostname.bind", "ID.SERVER"] {
        let (o, m) = ask(&t, &query_with(name, 16, 3, None));
        assert_eq!(o.rcode, Rcode::NoError, "{name}");
        let RData::TXT(txt) = &m.answers[0].data else {
            panic!("not TXT");
        };
        assert_eq!(txt.to_string(), "dns-1");
    }
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
        if let Some(o) = respond(&t, &q, Transport::Udp, i, &mut out) {
            if o.rcode == Rcode::FormErr {
                assert!(
                    out.len() <= q.len().max(12),
                    "FORMERR larger than the query"
                );
            }
            Message::from_vec(&out)
                .unwrap_or_else(|e| panic!("unreadable answer ({e}) to {q:02x?}"));
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
    let (_, m, out) = ask_on(&empty, &q, Transport::Udp, 0);
    assert!(m.authorities.is_empty(), "no SOA to count");
    assert_eq!(out.len(), q.len(), "header and question only");
}

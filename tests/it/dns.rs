//! The DNS server through `strait up`, queried with `dig` (Debian `dnsutils`), `kdig`
//! (`knot-dnsutils`) and with raw malformed packets over UDP and TCP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::harness::{Strait, dig, eventually};

fn kdig(server: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+retry=0"])
        .args(args)
        .output()
        .expect("run kdig (Debian package knot-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn short(server: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = dig(server, &[args, &["+short"]].concat())
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines
}

/// Sends `query` (wire bytes) over UDP, or over TCP with its length prefix, and reads the
/// answer with hickory-proto's decoder, strictly: an answer hickory cannot read fails.
fn exchange(server: SocketAddr, query: &[u8], tcp: bool) -> (Vec<u8>, Message) {
    let bytes = if tcp {
        let mut stream = TcpStream::connect(server).expect("connect over TCP");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let length = u16::try_from(query.len()).expect("a query under 64 KiB");
        stream.write_all(&length.to_be_bytes()).expect("send");
        stream.write_all(query).expect("send");
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).expect("an answer's length");
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut answer).expect("an answer");
        answer
    } else {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket.send_to(query, server).expect("send");
        let mut buf = [0u8; 65_535];
        let (n, _) = socket.recv_from(&mut buf).expect("an answer");
        buf[..n].to_vec()
    };
    let message = Message::from_vec(&bytes)
        .unwrap_or_else(|e| panic!("hickory cannot read strait's answer ({e}): {bytes:02x?}"));
    (bytes, message)
}

/// A plain query (no EDNS) built by hickory-proto.
fn query_wire(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    query.to_vec().expect("encode")
}

fn register(strait: &Strait, service: &str, id: &str, body: &str) {
    let (status, response) = strait.put(&format!("/v1/services/{service}/instances/{id}"), body);
    assert_eq!(status, 200, "{response}");
}

#[test]
fn answers_a_aaaa_srv_tags_zones_and_negative_answers() {
    let strait = Strait::builder().start();
    let dns = strait.dns;
    register(
        &strait,
        "web",
        "w1",
        r#"{"address":"10.0.0.1","port":8080,"tags":["v2"],"zone":"eu-1","ports":{"grpc":9090},"weight":5}"#,
    );
    register(
        &strait,
        "web",
        "w2",
        r#"{"address":"10.0.0.2","port":8080,"zone":"us-1"}"#,
    );
    register(
        &strait,
        "web",
        "w3",
        r#"{"address":"fd00::3","port":8081,"tags":["v2"]}"#,
    );
    register(
        &strait,
        "web",
        "sick",
        r#"{"address":"10.0.0.9","port":8080,"health":"critical"}"#,
    );
    register(
        &strait,
        "down",
        "d1",
        r#"{"address":"10.0.1.1","port":80,"health":"critical"}"#,
    );
    eventually(Duration::from_secs(10), "A records", || {
        let a = short(dns, &["web.service.strait", "A"]);
        if a == ["10.0.0.1", "10.0.0.2"] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    assert_eq!(
        short(dns, &["WEB.Service.Strait", "AAAA"]),
        ["fd00::3"],
        "case-insensitive"
    );
    assert_eq!(
        short(dns, &["v2.web.service.strait", "A"]),
        ["10.0.0.1"],
        "tag filter"
    );
    assert_eq!(
        short(dns, &["web.service.eu-1.zone.strait", "A"]),
        ["10.0.0.1"],
        "zone filter"
    );
    assert_eq!(
        short(dns, &["web.service.strait", "SRV"]),
        [
            "1 1 8080 w2.web.instance.strait.",
            "1 1 8081 w3.web.instance.strait.",
            "1 5 8080 w1.web.instance.strait."
        ],
        "SRV weight is the instance weight"
    );
    assert_eq!(
        short(dns, &["_grpc._tcp.web.service.strait", "SRV"]),
        ["1 5 9090 w1.web.instance.strait."]
    );
    let srv = dig(dns, &["web.service.strait", "SRV", "+noall", "+additional"]);
    assert!(
        srv.contains("w1.web.instance.strait.") && srv.contains("10.0.0.1"),
        "glue: {srv}"
    );
    assert!(srv.contains("fd00::3"), "AAAA glue: {srv}");
    assert_eq!(short(dns, &["w1.web.instance.strait", "A"]), ["10.0.0.1"]);

    let nx = dig(dns, &["nope.service.strait", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.contains("AUTHORITY: 1") && nx.contains("SOA"),
        "SOA in authority: {nx}"
    );
    let nodata = dig(dns, &["web.service.strait", "MX"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    assert!(nodata.contains("SOA"), "{nodata}");
    let all_down = dig(dns, &["down.service.strait", "A"]);
    assert!(
        all_down.contains("status: NOERROR") && all_down.contains("ANSWER: 0"),
        "{all_down}"
    );
    let refused = dig(dns, &["example.com", "A"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let aa = dig(dns, &["web.service.strait", "A"]);
    assert!(aa.contains("flags: qr aa"), "authoritative: {aa}");

    // Changes show in the next answer: health, then deregistration.
    strait.put(
        "/v1/services/web/instances/w2/health",
        r#"{"health":"critical"}"#,
    );
    eventually(Duration::from_secs(10), "w2 out of answers", || {
        let a = short(dns, &["web.service.strait", "A"]);
        if a == ["10.0.0.1"] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    strait.delete("/v1/services/web/instances/w1");
    eventually(Duration::from_secs(10), "w1 gone", || {
        let a = short(dns, &["web.service.strait", "A"]);
        if a.is_empty() {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    // Workers publish their counts every 1,024 queries or when idle for 100 ms.
    eventually(Duration::from_secs(5), "query metrics", || {
        let a = strait.metric("strait_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}");
        let mx = strait.metric("strait_dns_queries_total{qtype=\"MX\",rcode=\"NOERROR\"}");
        let refused = strait.metric("strait_dns_queries_total{qtype=\"A\",rcode=\"REFUSED\"}");
        match (a, mx, refused) {
            (Some(a), Some(mx), Some(refused)) if a >= 1.0 && mx >= 1.0 && refused >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// The rules of issue 20 through real clients (kdig from knot-dnsutils, dig), each
/// against its RFC (the unit tests in discovery/src/dns/answer/tests.rs quote them).
#[test]
fn rfc_rules_over_the_wire() {
    let strait = Strait::builder().start();
    let dns = strait.dns;
    register(
        &strait,
        "web",
        "w1",
        r#"{"address":"10.0.0.1","port":8080,"ports":{"grpc":9090}}"#,
    );
    eventually(Duration::from_secs(10), "A records", || {
        let a = short(dns, &["web.service.strait", "A"]);
        if a == ["10.0.0.1"] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    // RFC 3225 3: the DO bit is copied.
    let with_do = kdig(dns, &["web.service.strait", "A", "+dnssec"]);
    assert!(with_do.contains("flags: do"), "{with_do}");
    // RFC 6891 6.1.3: BADVERS for an EDNS version strait does not implement.
    let v1 = kdig(dns, &["web.service.strait", "A", "+edns=1"]);
    assert!(v1.contains("BADVERS"), "{v1}");
    // RFC 1034 4.2.1: the apex has its NS, and the SOA's MNAME resolves.
    assert_eq!(short(dns, &["strait", "NS"]), ["ns.strait."]);
    assert_eq!(short(dns, &["ns.strait", "A"]), ["127.0.0.1"]);
    // AA only from the zone (RFC 1035 4.1.1).
    let refused = dig(dns, &["example.com", "A"]);
    assert!(
        refused.contains("status: REFUSED") && !refused.contains(" aa"),
        "{refused}"
    );
    // SRV-only names answer no address.
    assert!(short(dns, &["_grpc._tcp.web.service.strait", "A"]).is_empty());
    assert_eq!(
        short(dns, &["_grpc._tcp.web.service.strait", "SRV"]),
        ["1 1 9090 w1.web.instance.strait."]
    );
    // NOTIMP keeps the question and OPT (RFC 6891 6.1.1).
    let notify = dig(dns, &["strait", "SOA", "+opcode=notify"]);
    assert!(
        notify.contains("status: NOTIMP") && notify.contains("OPT PSEUDOSECTION"),
        "{notify}"
    );
    // Issue 23: an OPT record whose RDLENGTH runs past the packet gets FORMERR.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut query = vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    query.extend_from_slice(b"\x03web\x07service\x06strait\x00\x00\x01\x00\x01");
    query.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0x10]);
    let (bytes, answer) = exchange(dns, &query, false);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert!(bytes.len() <= query.len());
    // An answer too big for a plain UDP query's 512 bytes is truncated (TC, RFC 1035
    // 4.2.1: what fits, glue left out); over TCP it comes whole; both are counted.
    for i in 0..40 {
        register(
            &strait,
            "big",
            &format!("b{i:02}"),
            &format!(r#"{{"address":"10.1.0.{i}","port":8080}}"#),
        );
    }
    eventually(Duration::from_secs(10), "40 SRV records", || {
        let (_, whole) = exchange(
            dns,
            &query_wire("big.service.strait.", RecordType::SRV),
            true,
        );
        (whole.answers.len() == 40)
            .then_some(())
            .ok_or_else(|| format!("{} answers", whole.answers.len()))
    });
    let srv = query_wire("big.service.strait.", RecordType::SRV);
    let (bytes, truncated) = exchange(dns, &srv, false);
    assert!(truncated.metadata.truncation, "TC not set");
    assert!(bytes.len() <= 512, "{} bytes over UDP", bytes.len());
    let (bytes, whole) = exchange(dns, &srv, true);
    assert!(!whole.metadata.truncation && whole.answers.len() == 40);
    assert!(bytes.len() > 512);
    assert_eq!(whole.additionals.len(), 40, "the glue, one A per instance");
    // Metrics: every qtype by name, rcodes.
    for qtype in ["TXT", "SOA", "NS"] {
        dig(dns, &["web.service.strait", qtype]);
    }
    eventually(Duration::from_secs(5), "qtypes by name", || {
        let text = strait.metrics_text();
        let missing: Vec<&str> = [
            "qtype=\"TXT\"",
            "qtype=\"SOA\"",
            "qtype=\"NS\"",
            "rcode=\"BADVERS\"",
            "rcode=\"FORMERR\"",
            "rcode=\"NOTIMP\"",
        ]
        .into_iter()
        .filter(|label| !text.contains(label))
        .collect();
        let truncated = strait.metric("strait_dns_truncated_total").unwrap_or(0.0);
        let fallbacks = strait
            .metric("strait_dns_tcp_fallbacks_total")
            .unwrap_or(0.0);
        if missing.is_empty() && truncated >= 1.0 && fallbacks >= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "{missing:?}, truncated {truncated}, TCP fallbacks {fallbacks}"
            ))
        }
    });
}

/// `dns.workers` UDP sockets share the port (SO_REUSEPORT), every one answers; NSID and
/// the CH TXT identity when configured.
#[test]
fn workers_nsid_and_identity() {
    let strait = Strait::builder()
        .config("[dns]\naddr = \"127.0.0.1:0\"\nworkers = 3\nnsid = \"dns-it\"\nidentity = \"dns-it\"\n")
        .start();
    let dns = strait.dns;
    register(&strait, "web", "w1", r#"{"address":"10.0.0.1","port":80}"#);
    eventually(Duration::from_secs(10), "A records", || {
        let a = short(dns, &["web.service.strait", "A"]);
        if a == ["10.0.0.1"] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    // Three UDP sockets bound to the port (/proc/net/udp: local address in hex).
    let port = format!(":{:04X} ", dns.port());
    let udp = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    assert_eq!(
        udp.lines().filter(|l| l.contains(&port)).count(),
        3,
        "{udp}"
    );
    // Queries from many source ports (the kernel hashes them over the sockets) are all
    // answered.
    for i in 0..30u8 {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut query = vec![i, i, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(b"\x03web\x07service\x06strait\x00\x00\x01\x00\x01");
        socket.send_to(&query, dns).expect("send");
        let mut buf = [0u8; 512];
        let (n, _) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("query {i}: {e}"));
        assert!(n > query.len() && buf[..2] == [i, i], "query {i}");
    }
    let nsid = kdig(dns, &["web.service.strait", "A", "+nsid"]);
    assert!(nsid.contains("NSID: ") && nsid.contains("dns-it"), "{nsid}");
    assert_eq!(short(dns, &["id.server", "CH", "TXT"]), ["\"dns-it\""]);
    assert_eq!(short(dns, &["hostname.bind", "CH", "TXT"]), ["\"dns-it\""]);
}

#[test]
fn truncation_and_tcp() {
    let strait = Strait::builder().start();
    let dns = strait.dns;
    for i in 0..60 {
        register(
            &strait,
            "big",
            &format!("i{i}"),
            &format!(r#"{{"address":"10.1.0.{i}","port":80}}"#),
        );
    }
    eventually(Duration::from_secs(10), "all 60 over TCP", || {
        let n = short(dns, &["big.service.strait", "A", "+tcp"]).len();
        if n == 60 { Ok(()) } else { Err(n.to_string()) }
    });
    let udp = dig(dns, &["big.service.strait", "A", "+noedns", "+ignore"]);
    assert!(
        udp.contains(" tc"),
        "truncated over UDP without EDNS: {udp}"
    );
    let edns = dig(
        dns,
        &["big.service.strait", "A", "+bufsize=4096", "+ignore"],
    );
    assert!(
        !edns.contains(" tc") && edns.contains("ANSWER: 60"),
        "fits in 4096: {edns}"
    );
    // dig retries over TCP by itself when TC is set.
    assert_eq!(
        short(dns, &["big.service.strait", "A", "+noedns"]).len(),
        60
    );
    // Answers rotate, so clients spread load.
    let first = |_: usize| {
        dig(
            dns,
            &["big.service.strait", "A", "+tcp", "+noall", "+answer"],
        )
        .lines()
        .next()
        .map(str::to_string)
    };
    let firsts: std::collections::BTreeSet<_> = (0..6).map(first).collect();
    assert!(
        firsts.len() > 1,
        "the first record changes between queries: {firsts:?}"
    );
}

#[test]
fn malformed_packets_leave_the_server_answering() {
    let strait = Strait::builder().start();
    let dns = strait.dns;
    register(&strait, "web", "w1", r#"{"address":"10.0.0.1","port":80}"#);
    eventually(Duration::from_secs(10), "answers", || {
        let a = short(dns, &["web.service.strait", "A"]);
        if a == ["10.0.0.1"] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![1, 2, 3],                                      // truncated header
        vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 70, b'a'], // label longer than the packet
        vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1], // compression loop
        vec![0, 1, 1, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1], // five questions
        vec![0, 1, 0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1], // a response
        vec![0xff; 512],
    ];
    for packet in &packets {
        let _ = socket.send_to(packet, dns);
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            assert!(
                n <= packet.len().max(12),
                "no amplification: {n} bytes for {}",
                packet.len()
            );
        }
    }
    let mut tcp = TcpStream::connect(dns).expect("tcp");
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let garbage = [0u8, 5, 1, 2, 3, 4, 5];
    tcp.write_all(&garbage).expect("write");
    let mut buf = [0u8; 64];
    let _ = tcp.read(&mut buf);
    drop(tcp);
    assert_eq!(
        short(dns, &["web.service.strait", "A"]),
        ["10.0.0.1"],
        "UDP still answers"
    );
    assert_eq!(
        short(dns, &["web.service.strait", "A", "+tcp"]),
        ["10.0.0.1"],
        "TCP still answers"
    );
}

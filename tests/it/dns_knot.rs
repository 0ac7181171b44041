//! strait's DNS against Knot DNS (Debian `knot`): the same records served by both, a
//! corpus of queries sent to both by a real client (dnspython, `dns_diff.py`), and every
//! difference either listed in [`ALLOWED`] with the RFC's reason or a failure. Each listed
//! difference must still occur, so the table (also in docs/dns.md) stays exact. Every
//! answer strait sends is also read by hickory-proto's decoder.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Strait, eventually, free_port, spawn_guarded};

/// One identity for both servers: NSID and CH TXT id.server / hostname.bind.
const IDENTITY: &str = "diff-test";

/// Differences with Knot 3.2 that strait keeps: (query, field, why).
pub const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "notify",
        "rcode",
        "Knot NOTAUTH, strait NOTIMP: strait implements no NOTIFY (RFC 1996 3.7: a server \
         that does not implement NOTIFY answers NOTIMP)",
    ),
    (
        "update",
        "rcode",
        "Knot NOTAUTH, strait NOTIMP: strait implements no UPDATE (RFC 2136 2.2: NOTIMP)",
    ),
    (
        "two-opt",
        "edns",
        "strait keeps an OPT record in the FORMERR (RFC 6891 6.1.1: a responder to a request \
         with an OPT record MUST include one); Knot drops it",
    ),
    (
        "qdcount-2",
        "answered",
        "Knot is silent, strait answers FORMERR (RFC 9619 4: QDCOUNT > 1 with OPCODE 0 MUST \
         be treated as an incorrectly formatted message, RCODE FORMERR)",
    ),
    (
        "forward-pointer",
        "answered",
        "Knot is silent, strait answers FORMERR, a bare header (RFC 1035 4.1.1: FORMERR, the \
         name server was unable to interpret the query)",
    ),
    (
        "truncated-question",
        "answered",
        "Knot is silent, strait answers FORMERR, a bare header (RFC 1035 4.1.1, as above)",
    ),
    (
        "opt-owner-not-root",
        "rcode",
        "Knot answers, strait FORMERR (RFC 6891 6.1.2: the OPT record's NAME MUST be 0, the \
         root domain)",
    ),
    (
        "opt-owner-not-root",
        "answer",
        "the same: the FORMERR carries no records",
    ),
    (
        "opt-owner-not-root",
        "flags",
        "the same: a FORMERR is not authoritative",
    ),
    (
        "opt-owner-not-root",
        "edns",
        "the same: the unreadable OPT record gets none back",
    ),
    (
        "subnet-bad-family",
        "rcode",
        "Knot ignores the option, strait FORMERR (RFC 7871 7.1.1: a FAMILY the server does \
         not support SHOULD be answered FORMERR)",
    ),
    (
        "subnet-bad-family",
        "answer",
        "the same: the FORMERR carries no records",
    ),
    (
        "subnet-bad-family",
        "flags",
        "the same: a FORMERR is not authoritative",
    ),
    (
        "out-of-zone",
        "edns",
        "Knot adds Extended DNS Error 20 (Not Authoritative) to REFUSED; RFC 8914 makes \
         EDE optional (MAY), strait sends none",
    ),
    (
        "axfr-tcp",
        "rcode",
        "Knot NOTAUTH, strait REFUSED: both refuse the transfer (RFC 5936 2.2.1 allows \
         either; REFUSED says it is policy: the zone is the live snapshot)",
    ),
    (
        "version-bind",
        "rcode",
        "Knot tells its version (CH TXT version.bind); strait gives none: REFUSED, as for \
         every CH name but id.server and hostname.bind (RFC 4892 makes these optional)",
    ),
    ("version-bind", "answer", "the same"),
];

/// Instances of the differential zone: (service, id, address, port, tags, zone, ports, weight).
type Spec = (
    &'static str,
    String,
    String,
    u16,
    &'static [&'static str],
    Option<&'static str>,
    Option<u16>,
    u16,
);

fn instances() -> Vec<Spec> {
    let mut all: Vec<Spec> = vec![
        (
            "web",
            "w1".into(),
            "10.0.0.1".into(),
            8080,
            &["v2"],
            Some("eu-1"),
            Some(9090),
            5,
        ),
        (
            "web",
            "w2".into(),
            "10.0.0.2".into(),
            8080,
            &[],
            Some("us-1"),
            None,
            1,
        ),
        (
            "web",
            "w3".into(),
            "fd00::3".into(),
            8081,
            &["v2"],
            None,
            None,
            1,
        ),
    ];
    for i in 0..60 {
        all.push((
            "big",
            format!("big-instance-{i:02}"),
            format!("10.1.0.{i}"),
            80,
            &[],
            None,
            None,
            1,
        ));
    }
    all
}

/// The zone file Knot serves: what strait's table compiler makes of `instances()`.
fn zone(serial: u32) -> String {
    let mut zone = format!(
        "$ORIGIN strait.\n$TTL 5\n@ SOA ns.strait. hostmaster.strait. {serial} 3600 600 86400 5\n\
         @ NS ns.strait.\nns A 127.0.0.1\n"
    );
    let address = |addr: &str| {
        if addr.contains(':') {
            format!("AAAA {addr}")
        } else {
            format!("A {addr}")
        }
    };
    let mut add =
        |owner: String, set: &[&Spec], srv_port: &dyn Fn(&Spec) -> Option<u16>, addresses: bool| {
            let mut seen = std::collections::BTreeSet::new();
            for spec in set {
                if addresses && seen.insert(spec.2.clone()) {
                    zone.push_str(&format!("{owner} {}\n", address(&spec.2)));
                }
                if let Some(port) = srv_port(spec) {
                    zone.push_str(&format!(
                        "{owner} SRV 1 {} {port} {}.{}.instance\n",
                        spec.7, spec.1, spec.0
                    ));
                }
            }
        };
    let all = instances();
    for service in ["web", "big"] {
        let members: Vec<&Spec> = all.iter().filter(|s| s.0 == service).collect();
        add(format!("{service}.service"), &members, &|s| Some(s.3), true);
        let tagged: Vec<&Spec> = members
            .iter()
            .copied()
            .filter(|s| s.4.contains(&"v2"))
            .collect();
        if !tagged.is_empty() {
            add(
                format!("v2.{service}.service"),
                &tagged,
                &|s| Some(s.3),
                true,
            );
        }
        for z in ["eu-1", "us-1"] {
            let local: Vec<&Spec> = members.iter().copied().filter(|s| s.5 == Some(z)).collect();
            if !local.is_empty() {
                add(
                    format!("{service}.service.{z}.zone"),
                    &local,
                    &|s| Some(s.3),
                    true,
                );
            }
        }
        if members.iter().any(|s| s.6.is_some()) {
            add(
                format!("_grpc._tcp.{service}.service"),
                &members,
                &|s| s.6,
                false,
            );
        }
        for spec in &members {
            add(
                format!("{}.{service}.instance", spec.1),
                &[spec],
                &|_| None,
                true,
            );
        }
    }
    zone
}

/// knotd on a free loopback port, killed on drop.
struct Knot {
    child: Child,
    watchdog: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Knot {
    fn start(zone: &str) -> Knot {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(dir.path().join("strait.zone"), zone).expect("zone");
        std::fs::write(
            dir.path().join("knot.conf"),
            format!(
                "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    \
                 tcp-workers: 1\n    background-workers: 1\n    identity: \"{IDENTITY}\"\n    \
                 nsid: \"{IDENTITY}\"\nlog:\n  - target: stderr\n    any: warning\n\
                 database:\n    storage: \"{d}\"\nzone:\n  - domain: strait\n    storage: \"{d}\"\n    \
                 file: \"strait.zone\"\n"
            ),
        )
        .expect("knot.conf");
        let (child, watchdog) = spawn_guarded(
            // Debian puts knotd in /usr/sbin, not always on a user's PATH.
            Command::new(if Path::new("/usr/sbin/knotd").exists() {
                "/usr/sbin/knotd"
            } else {
                "knotd"
            })
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("knot.log")).expect("log")),
        );
        let knot = Knot {
            child,
            watchdog,
            port,
            dir,
        };
        eventually(Duration::from_secs(10), "knotd answering", || {
            soa_serial(knot.port).map(drop)
        });
        knot
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        for child in [&mut self.child, &mut self.watchdog] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("knot.log")).unwrap_or_default();
            eprintln!("--- knotd log ---\n{log}");
        }
    }
}

/// The SOA serial a server answers for `strait.`, through hickory-proto.
fn soa_serial(port: u16) -> Result<u32, String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("strait.").map_err(|e| e.to_string())?,
        RecordType::SOA,
    ));
    let wire = query.to_vec().map_err(|e| e.to_string())?;
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&wire, ("127.0.0.1", port))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
    let answer = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    match answer.answers.first().map(|r| &r.data) {
        Some(RData::SOA(soa)) => Ok(soa.serial),
        other => Err(format!("no SOA: {other:?}")),
    }
}

/// The corpus: every kind of answer, the RFC rules of issue 20, malformed queries.
fn corpus() -> Vec<Value> {
    let q = |id: &str, name: &str, rtype: &str| json!({"id": id, "name": name, "type": rtype});
    let e = |id: &str, name: &str, rtype: &str, edns: Value| json!({"id": id, "name": name, "type": rtype, "edns": edns});
    let raw = |id: &str, hex: String| json!({"id": id, "raw": hex});
    let header = |flags: u16, qd: u16, an: u16, ar: u16| {
        format!("4242{flags:04x}{qd:04x}{an:04x}0000{ar:04x}")
    };
    let question = |name: &str, qtype: u16, qclass: u16| {
        let mut hex = String::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            hex.push_str(&format!("{:02x}", label.len()));
            for byte in label.bytes() {
                hex.push_str(&format!("{byte:02x}"));
            }
        }
        format!("{hex}00{qtype:04x}{qclass:04x}")
    };
    let web = question("web.service.strait", 1, 1);
    let opt = "0000290400000000000000".to_string();
    let mut cases = vec![
        q("a", "web.service.strait", "A"),
        q("aaaa", "web.service.strait", "AAAA"),
        q("srv", "web.service.strait", "SRV"),
        q("any", "web.service.strait", "ANY"),
        q("mx-nodata", "web.service.strait", "MX"),
        q("txt-nodata", "web.service.strait", "TXT"),
        q("tag", "v2.web.service.strait", "A"),
        q("tag-srv", "v2.web.service.strait", "SRV"),
        q("zone", "web.service.eu-1.zone.strait", "A"),
        q("port-srv", "_grpc._tcp.web.service.strait", "SRV"),
        q("port-a", "_grpc._tcp.web.service.strait", "A"),
        q("instance", "w1.web.instance.strait", "A"),
        q("instance-aaaa", "w3.web.instance.strait", "AAAA"),
        q("case", "WeB.SeRvIcE.StRaIt", "A"),
        q("nxdomain", "nope.service.strait", "A"),
        q("nxdomain-deep", "a.b.c.nope.web.instance.strait", "SRV"),
        q("empty-non-terminal", "service.strait", "A"),
        q("empty-non-terminal-2", "_tcp.web.service.strait", "SRV"),
        q("apex-soa", "strait", "SOA"),
        q("apex-ns", "strait", "NS"),
        q("apex-a", "strait", "A"),
        q("apex-any", "strait", "ANY"),
        q("ns-a", "ns.strait", "A"),
        q("ns-aaaa", "ns.strait", "AAAA"),
        e("out-of-zone", "example.com", "A", json!({})),
        q("label-boundary", "xstrait", "A"),
        q("rrsig", "web.service.strait", "RRSIG"),
        q("maila", "web.service.strait", "MAILA"),
        e("edns", "web.service.strait", "A", json!({})),
        e("do", "web.service.strait", "A", json!({"do": true})),
        e(
            "do-nxdomain",
            "nope.service.strait",
            "A",
            json!({"do": true}),
        ),
        e("nsid", "web.service.strait", "A", json!({"nsid": true})),
        e(
            "edns-version-1",
            "web.service.strait",
            "A",
            json!({"version": 1, "do": true}),
        ),
        e(
            "payload-512",
            "big.service.strait",
            "A",
            json!({"payload": 512}),
        ),
        e(
            "payload-4096",
            "big.service.strait",
            "A",
            json!({"payload": 4096}),
        ),
        e(
            "big-srv-udp-4096",
            "big.service.strait",
            "SRV",
            json!({"payload": 4096}),
        ),
        q("big-a-no-edns", "big.service.strait", "A"),
        json!({"id": "big-srv-tcp", "name": "big.service.strait", "type": "SRV", "tcp": true}),
        json!({"id": "big-a-tcp", "name": "big.service.strait", "type": "A", "tcp": true}),
        json!({"id": "axfr-tcp", "name": "strait", "type": "AXFR", "tcp": true}),
        json!({"id": "id-server", "name": "id.server", "type": "TXT", "class": "CH"}),
        json!({"id": "hostname-bind", "name": "hostname.bind", "type": "TXT", "class": "CH"}),
        json!({"id": "version-bind", "name": "version.bind", "type": "TXT", "class": "CH"}),
        json!({"id": "id-server-a", "name": "id.server", "type": "A", "class": "CH"}),
        json!({"id": "chaos-zone", "name": "web.service.strait", "type": "A", "class": "CH"}),
        json!({"id": "hesiod", "name": "web.service.strait", "type": "A", "class": "HS"}),
        json!({"id": "class-any", "name": "web.service.strait", "type": "A", "class": "ANY"}),
        json!({"id": "class-none", "name": "web.service.strait", "type": "A", "class": "NONE"}),
        json!({"id": "status", "name": "strait", "type": "SOA", "opcode": "STATUS", "edns": {}}),
        json!({"id": "notify", "name": "strait", "type": "SOA", "opcode": "NOTIFY", "edns": {}}),
        json!({"id": "update", "name": "strait", "type": "SOA", "opcode": "UPDATE", "edns": {}}),
        json!({"id": "no-rd", "name": "web.service.strait", "type": "A", "nord": true}),
        raw(
            "axfr-udp",
            format!("{}{}", header(0x0100, 1, 0, 0), question("strait", 252, 1)),
        ),
        raw("qdcount-0", header(0x0100, 0, 0, 0)),
        raw("qdcount-0-opt", format!("{}{opt}", header(0x0100, 0, 0, 1))),
        raw(
            "qdcount-2",
            format!("{}{web}{web}", header(0x0100, 2, 0, 0)),
        ),
        raw(
            "two-opt",
            format!("{}{web}{opt}{opt}", header(0x0100, 1, 0, 2)),
        ),
        raw(
            "opt-rdlen-past-end",
            format!("{}{web}00002904d000000000ff10", header(0x0100, 1, 0, 1)),
        ),
        raw(
            "option-overrun",
            format!(
                "{}{web}00002904d00000000000060003000401",
                header(0x0100, 1, 0, 1)
            ),
        ),
        raw(
            "opt-owner-not-root",
            format!("{}{web}01610000290400000000000000", header(0x0100, 1, 0, 1)),
        ),
        raw(
            "subnet-bad-family",
            format!(
                "{}{web}00002904d00000000000080008000400091800",
                header(0x0100, 1, 0, 1)
            ),
        ),
        raw(
            "trailing-bytes",
            format!("{}{web}78797a", header(0x0100, 1, 0, 0)),
        ),
        raw(
            "answer-record",
            format!(
                "{}{web}c00c000100010000000500040a000001",
                header(0x0100, 1, 1, 0)
            ),
        ),
        raw(
            "empty-additional",
            format!("{}{web}c00c00010001000000050000", header(0x0100, 1, 0, 1)),
        ),
        raw(
            "opt-in-answer",
            format!("{}{web}{opt}", header(0x0100, 1, 1, 0)),
        ),
        raw(
            "forward-pointer",
            format!("{}c0200001000001", header(0x0100, 1, 0, 0)),
        ),
        raw("response", format!("{}{web}", header(0x8100, 1, 0, 0))),
        raw(
            "truncated-question",
            format!("{}0377656207", header(0x0100, 1, 0, 0)),
        ),
        raw(
            "type-0",
            format!(
                "{}{}",
                header(0x0100, 1, 0, 0),
                question("web.service.strait", 0, 1)
            ),
        ),
        raw(
            "qtype-opt",
            format!(
                "{}{}",
                header(0x0100, 1, 0, 0),
                question("web.service.strait", 41, 1)
            ),
        ),
        raw(
            "qtype-128",
            format!(
                "{}{}",
                header(0x0100, 1, 0, 0),
                question("web.service.strait", 128, 1)
            ),
        ),
        raw(
            "qtype-tkey",
            format!(
                "{}{}",
                header(0x0100, 1, 0, 0),
                question("web.service.strait", 249, 1)
            ),
        ),
        raw(
            "qtype-mailb",
            format!(
                "{}{}",
                header(0x0100, 1, 0, 0),
                question("web.service.strait", 253, 1)
            ),
        ),
        raw(
            "qtype-private",
            format!(
                "{}{}",
                header(0x0100, 1, 0, 0),
                question("web.service.strait", 65280, 1)
            ),
        ),
        raw(
            "qtype-65535",
            format!(
                "{}{}",
                header(0x0100, 1, 0, 0),
                question("web.service.strait", 65535, 1)
            ),
        ),
    ];
    cases.retain(|c| c.is_object());
    cases
}

/// Fields compared (`size` and `wire` only inform).
const FIELDS: &[&str] = &[
    "answered",
    "unreadable",
    "rcode",
    "flags",
    "question",
    "answer",
    "authority",
    "additional",
    "edns",
];

fn python() -> PathBuf {
    // Debian's python3-dnspython installs for the system interpreter.
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        system
    } else {
        PathBuf::from("python3")
    }
}

fn run_client(corpus: &Path, knot: u16, strait: u16) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/dns_diff.py");
    let output = Command::new(python())
        .arg(script)
        .arg(corpus)
        .arg(format!("knot={knot}"))
        .arg(format!("strait={strait}"))
        .output()
        .expect("run python3 (Debian python3-dnspython; scripts/test installs it)");
    assert!(
        output.status.success(),
        "dns_diff.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[test]
fn strait_answers_as_knot_does() {
    let started = Instant::now();
    let strait = Strait::builder()
        .config(&format!(
            "[dns]\naddr = \"127.0.0.1:0\"\nidentity = \"{IDENTITY}\"\nnsid = \"{IDENTITY}\"\n"
        ))
        .start();
    let port = strait.dns.port();
    for (service, id, addr, svc_port, tags, zone, grpc, weight) in instances() {
        let mut body = json!({"address": addr, "port": svc_port, "tags": tags, "weight": weight});
        if let Some(zone) = zone {
            body["zone"] = json!(zone);
        }
        if let Some(grpc) = grpc {
            body["ports"] = json!({"grpc": grpc});
        }
        let (status, response) = strait.put(
            &format!("/v1/services/{service}/instances/{id}"),
            &body.to_string(),
        );
        assert_eq!(status, 200, "{response}");
    }
    // Registered; the table may lag: wait for the last one.
    let serial = eventually(Duration::from_secs(10), "every instance in DNS", || {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+short",
                "big-instance-59.big.instance.strait",
                "A",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&out.stdout).trim() == "10.1.0.59" {
            soa_serial(port)
        } else {
            Err("not yet".into())
        }
    });
    let knot = Knot::start(&zone(serial));

    let dir = tempfile::tempdir().expect("tempdir");
    let corpus_path = dir.path().join("corpus.json");
    let corpus = corpus();
    std::fs::write(&corpus_path, serde_json::to_vec(&corpus).expect("json")).expect("corpus");
    let rows = run_client(&corpus_path, knot.port, port);
    assert_eq!(rows.len(), corpus.len(), "an answer row per query");

    let mut unexpected = Vec::new();
    let mut used: BTreeMap<(&str, &str), bool> = ALLOWED
        .iter()
        .map(|(case, field, _)| ((*case, *field), false))
        .collect();
    let mut table = String::new();
    for row in &rows {
        let case = row["case"].as_str().unwrap_or_default();
        let (k, s) = (&row["knot"], &row["strait"]);
        // hickory-proto reads everything strait sends, strictly.
        if let Some(wire) = s["wire"].as_str() {
            let bytes: Vec<u8> = (0..wire.len() / 2)
                .filter_map(|i| u8::from_str_radix(&wire[2 * i..2 * i + 2], 16).ok())
                .collect();
            if let Err(e) = hickory_proto::op::Message::from_vec(&bytes) {
                unexpected.push(format!("{case}: hickory cannot read strait's answer: {e}"));
            }
        }
        // When one of them is silent, that is the difference.
        let fields = if k["answered"] == s["answered"] {
            FIELDS
        } else {
            &FIELDS[..1]
        };
        for field in fields {
            if k[field] == s[field] {
                continue;
            }
            let line = format!("{case} {field}: knot {} / strait {}", k[field], s[field]);
            table.push_str(&line);
            table.push('\n');
            match used.iter_mut().find(|((c, f), _)| *c == case && f == field) {
                Some((_, seen)) => *seen = true,
                None => unexpected.push(line),
            }
        }
    }
    // Name compression at least as good as Knot's where glue is plenty.
    let size = |case: &str, who: &str| {
        rows.iter()
            .find(|r| r["case"] == case)
            .and_then(|r| r[who]["size"].as_u64())
            .unwrap_or(0)
    };
    for case in ["big-srv-tcp", "srv", "tag-srv", "apex-ns", "nxdomain"] {
        if size(case, "strait") > size(case, "knot") {
            unexpected.push(format!(
                "{case}: strait's answer is {} bytes, Knot's {}",
                size(case, "strait"),
                size(case, "knot")
            ));
        }
    }
    let stale: Vec<_> = used
        .iter()
        .filter(|(_, seen)| !**seen)
        .map(|(k, _)| k)
        .collect();
    assert!(
        unexpected.is_empty() && stale.is_empty(),
        "differences from Knot not in ALLOWED:\n{}\n\nALLOWED entries that no longer differ: {stale:?}\n\nall differences:\n{table}",
        unexpected.join("\n")
    );
    eprintln!(
        "{} queries, {} allowed differences, big SRV over TCP: strait {} bytes, Knot {}; {:?}",
        rows.len(),
        ALLOWED.len(),
        size("big-srv-tcp", "strait"),
        size("big-srv-tcp", "knot"),
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded in time"
    );
}

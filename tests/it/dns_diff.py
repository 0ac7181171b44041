"""The client side of tests/it/dns_knot.rs: sends each query of a corpus to two DNS
servers with dnspython and prints, per query, both answers in a normalised form (JSON
lines) for the Rust test to compare.

usage: dns_diff.py CORPUS.json NAME=PORT NAME=PORT
"""

import json
import socket
import struct
import sys

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

TIMEOUT = 1.0


def build(case):
    """The query's wire form: raw bytes, or built by dnspython."""
    if "raw" in case:
        return bytes.fromhex(case["raw"])
    edns = case.get("edns")
    q = dns.message.make_query(
        case["name"],
        dns.rdatatype.from_text(case.get("type", "A")),
        dns.rdataclass.from_text(case.get("class", "IN")),
        use_edns=-1 if edns is None else edns.get("version", 0),
        payload=1232 if edns is None else edns.get("payload", 1232),
        want_dnssec=bool(edns and edns.get("do")),
        options=[dns.edns.GenericOption(3, b"")] if edns and edns.get("nsid") else [],
    )
    q.id = 0x4242
    if case.get("opcode"):
        q.set_opcode(dns.opcode.from_text(case["opcode"]))
    if case.get("nord"):
        q.flags &= ~dns.flags.RD
    return q.to_wire()


def exchange(wire, port, tcp):
    """The raw answer, or None when the server said nothing."""
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(struct.pack(">H", len(wire)) + wire)
            head = b""
            while len(head) < 2:
                chunk = s.recv(2 - len(head))
                if not chunk:
                    return None
                head += chunk
            (length,) = struct.unpack(">H", head)
            body = b""
            while len(body) < length:
                chunk = s.recv(length - len(body))
                if not chunk:
                    return None
                body += chunk
            return body
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(65535)
            return data
        except socket.timeout:
            return None


def section(rrsets):
    out = []
    for rrset in rrsets:
        for rr in rrset:
            out.append(
                "%s %d %s %s %s"
                % (
                    rrset.name.to_text().lower(),
                    rrset.ttl,
                    dns.rdataclass.to_text(rrset.rdclass),
                    dns.rdatatype.to_text(rrset.rdtype),
                    rr.to_text().lower(),
                )
            )
    return sorted(out)


def normalise(data):
    if data is None:
        return {"answered": False}
    try:
        m = dns.message.from_wire(data)
    except Exception as e:  # a client that cannot read the answer: say so
        return {"answered": True, "unreadable": type(e).__name__, "size": len(data)}
    edns = None
    if m.edns >= 0:
        edns = {
            "version": m.edns,
            "payload": m.payload,
            "do": bool(m.ednsflags & dns.flags.DO),
            "options": sorted(
                "%d:%s" % (o.otype, o.to_wire().hex()) for o in m.options
            ),
        }
    return {
        "answered": True,
        "rcode": dns.rcode.to_text(m.rcode()),
        "flags": dns.flags.to_text(m.flags).lower(),
        "question": [q.to_text().lower() for q in m.question],
        "answer": section(m.answer),
        "authority": section(m.authority),
        "additional": section(m.additional),
        "edns": edns,
        "size": len(data),
        "wire": data.hex(),
    }


def main():
    corpus = json.load(open(sys.argv[1]))
    servers = [(arg.split("=")[0], int(arg.split("=")[1])) for arg in sys.argv[2:]]
    for case in corpus:
        wire = build(case)
        row = {"case": case["id"]}
        for name, port in servers:
            row[name] = normalise(exchange(wire, port, case.get("tcp", False)))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

//! The DNS query hot path against hickory-proto: any bytes, over UDP and TCP, are read by
//! strait as hickory's decoder reads them (`oracle::check`), never panic, get an answer
//! hickory reads back strictly, and a FORMERR is never larger than the query.
//! Seeds: `fuzz/seeds/dns_query` (`cargo +nightly fuzz run dns_query corpus/dns_query
//! seeds/dns_query`: new inputs go to the first directory, which git ignores).
#![no_main]

use std::sync::{Arc, OnceLock};

use discovery::dns::DnsConfig;
use discovery::dns::answer::{Rcode, Transport, respond};
use discovery::dns::oracle;
use discovery::dns::table::{DnsTable, compile};
use discovery::model::{Instance, InstanceSpec};
use discovery::snapshot::{Service, Snapshot};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static DnsTable {
    static TABLE: OnceLock<DnsTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut service = Service::default();
        for i in 0..40u8 {
            let mut spec = InstanceSpec::new([10, 0, 0, i].into(), 80);
            spec.tags = vec!["v2".into()];
            spec.ports.insert("grpc".into(), 9090);
            let id = format!("instance-{i}");
            if let Ok(instance) = Instance::new("web", &id, spec) {
                service.instances.insert(Arc::from(id.as_str()), instance);
            }
        }
        let mut services = std::collections::BTreeMap::new();
        services.insert(Arc::from("web"), Arc::new(service));
        let snapshot = Snapshot { revision: 1, services: Arc::new(services), ..Snapshot::default() };
        let config = DnsConfig {
            nsid: Some("fuzz".into()),
            identity: Some("fuzz".into()),
            ..DnsConfig::default()
        };
        compile(&snapshot, &config)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Err(disagreement) = oracle::check(data) {
        panic!("strait and hickory read {data:02x?} differently: {disagreement}");
    }
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(outcome) = respond(table(), data, transport, data.len(), &mut out) {
            if outcome.rcode == Rcode::FormErr {
                assert!(out.len() <= data.len().max(12), "FORMERR larger than the query");
            }
            if let Err(e) = hickory_proto::op::Message::from_vec(&out) {
                panic!("hickory cannot read the answer {out:02x?} to {data:02x?}: {e}");
            }
            if transport == Transport::Udp {
                assert!(out.len() <= 1232, "UDP answer over 1232 bytes");
            }
        }
    }
});

//! The DNS query hot path: any bytes, over UDP and TCP, never panic, and a FORMERR is
//! never larger than the query.
#![no_main]

use std::sync::{Arc, OnceLock};

use discovery::dns::DnsConfig;
use discovery::dns::answer::{Rcode, Transport, respond};
use discovery::dns::table::{DnsTable, compile};
use discovery::model::{Instance, InstanceSpec};
use discovery::snapshot::{Service, Snapshot};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static DnsTable {
    static TABLE: OnceLock<DnsTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut service = Service::default();
        for i in 0..8u8 {
            let mut spec = InstanceSpec::new([10, 0, 0, i].into(), 80);
            spec.tags = vec!["v2".into()];
            spec.ports.insert("grpc".into(), 9090);
            let id = format!("i{i}");
            if let Ok(instance) = Instance::new("web", &id, spec) {
                service.instances.insert(Arc::from(id.as_str()), instance);
            }
        }
        let mut services = std::collections::BTreeMap::new();
        services.insert(Arc::from("web"), Arc::new(service));
        let snapshot = Snapshot { revision: 1, services: Arc::new(services), ..Snapshot::default() };
        compile(&snapshot, &DnsConfig::default())
    })
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(outcome) = respond(table(), data, transport, data.len(), &mut out) {
            if outcome.rcode == Rcode::FormErr {
                assert!(out.len() <= data.len().max(12));
            }
        }
    }
});

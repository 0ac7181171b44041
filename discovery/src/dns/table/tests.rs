use std::sync::Arc;

use hickory_proto::op::Message;

use super::*;
use crate::model::InstanceSpec;
use crate::snapshot::Service;

/// Every pre-encoded answer is a message hickory-proto reads, and the boundaries the hot
/// path relies on are where hickory put the records.
#[test]
fn every_answer_is_hickory_readable_and_its_boundaries_right() {
    let mut service = Service::default();
    for i in 0..20u8 {
        let mut spec = InstanceSpec::new(IpAddr::from([10, 0, 0, i]), 80);
        spec.ports.insert("grpc".into(), 9090);
        spec.zone = Some("eu-1".into());
        let id = format!("w{i}");
        service.instances.insert(
            Arc::from(id.as_str()),
            Instance::new("web", &id, spec).expect("valid"),
        );
    }
    let mut services = BTreeMap::new();
    services.insert(Arc::from("web"), Arc::new(service));
    let snapshot = Snapshot {
        revision: 9,
        services: Arc::new(services),
        ..Snapshot::default()
    };
    let table = compile(&snapshot, &DnsConfig::default());
    let mut answers: Vec<&Answer> = vec![&table.nxdomain];
    for entry in table.names.values() {
        answers.extend(
            [&entry.a, &entry.ns, &entry.soa, &entry.aaaa, &entry.srv]
                .into_iter()
                .flatten(),
        );
        answers.push(&entry.nodata);
    }
    assert!(answers.len() > 60, "{} answers", answers.len());
    for answer in answers {
        let message = Message::from_vec(&answer.wire).expect("hickory reads it");
        assert_eq!(answer.answer_count(), message.answers.len());
        assert_eq!(
            answer.extra_count(),
            message.authorities.len() + message.additionals.len()
        );
        assert_eq!(usize::from(answer.authority), message.authorities.len());
        assert_eq!(
            usize::from(answer.extra[answer.extra.len() - 1]),
            answer.wire.len()
        );
        assert_eq!(answer.answers[0], answer.question_end);
        for relocation in &answer.relocations[..] {
            assert!(relocation.to < relocation.at, "pointers point back");
        }
    }
    let srv = &table.names[&wire_name("web.service.strait")[..]];
    let srv = srv.srv.as_ref().expect("SRV");
    assert!(srv.rotate, "SRV answers rotate");
    let into_answers = srv.relocations.iter().filter(|r| r.to_segment != 0).count();
    assert_eq!(
        into_answers, 20,
        "one pointer per glue record into its SRV record"
    );
}

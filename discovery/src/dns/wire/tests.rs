//! strait's query reader against hickory-proto's decoder (the oracle): generated messages,
//! well-formed and broken, must get the same reading from both ([`oracle::check`]).
//! `STRAIT_DNS_ORACLE_CASES` sets the number of cases (default 4,000).

use proptest::prelude::*;

use super::*;
use crate::dns::oracle;

fn label() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => "[a-zA-Z0-9-]{1,12}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..70),
    ]
}

/// A name: labels (possibly too long), then the root or a pointer.
fn name() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            12 => proptest::collection::vec(label(), 0..5),
            1 => proptest::collection::vec("[a-z]{50,63}".prop_map(String::into_bytes), 4..6),
        ],
        prop_oneof![
            24 => Just(None),
            3 => (0u16..40).prop_map(Some),
            1 => any::<u16>().prop_map(Some),
        ],
    )
        .prop_map(|(labels, pointer)| {
            let mut wire = Vec::new();
            for label in labels {
                let len = label.len().min(63);
                wire.push(len as u8);
                wire.extend_from_slice(&label[..len]);
            }
            match pointer {
                Some(p) => wire.extend_from_slice(&(0xC000 | (p & 0x3FFF)).to_be_bytes()),
                None => wire.push(0),
            }
            wire
        })
}

/// EDNS options: well-formed (NSID, client subnet, cookies), then maybe a broken one.
fn options() -> impl Strategy<Value = Vec<u8>> {
    let option = prop_oneof![
        Just(vec![0, 3, 0, 0]),
        (
            0u16..3,
            0u8..140,
            proptest::collection::vec(any::<u8>(), 0..18)
        )
            .prop_map(|(family, source, address)| {
                let mut data = family.to_be_bytes().to_vec();
                data.push(source);
                data.push(0);
                data.extend(address);
                let mut o = vec![0, 8];
                o.extend_from_slice(&(data.len() as u16).to_be_bytes());
                o.extend(data);
                o
            }),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(code, data)| {
            let mut o = code.to_be_bytes().to_vec();
            o.extend_from_slice(&(data.len() as u16).to_be_bytes());
            o.extend(data);
            o
        }),
    ];
    (
        proptest::collection::vec(option, 0..3),
        prop_oneof![6 => Just(vec![]), 1 => proptest::collection::vec(any::<u8>(), 1..4)],
    )
        .prop_map(|(options, tail)| {
            let mut data = options.concat();
            data.extend(tail);
            data
        })
}

/// A record: an OPT (root owner, mostly) or another type, RDATA of any bytes, RDLENGTH
/// mostly right.
fn record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![opt_record(), other_record()]
}

fn opt_record() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![16 => Just(vec![0u8]), 1 => name()],
        any::<u16>(),
        any::<u32>(),
        options(),
        prop_oneof![16 => Just(0i32), 1 => -3i32..20],
    )
        .prop_map(|(owner, payload, ttl, data, skew)| {
            let mut r = owner;
            r.extend_from_slice(&41u16.to_be_bytes());
            r.extend_from_slice(&payload.to_be_bytes());
            r.extend_from_slice(&ttl.to_be_bytes());
            let len = (data.len() as i32 + skew).clamp(0, 0xffff) as u16;
            r.extend_from_slice(&len.to_be_bytes());
            r.extend(data);
            r
        })
}

fn other_record() -> impl Strategy<Value = Vec<u8>> {
    (
            name(),
            prop_oneof![4 => Just(1u16), 2 => Just(28), 2 => Just(33), 1 => Just(250), 1 => Just(24), 2 => any::<u16>()],
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..24),
            prop_oneof![16 => Just(0i32), 1 => -3i32..20],
        )
            .prop_map(|(owner, rtype, ttl, data, skew)| {
                let mut r = owner;
                r.extend_from_slice(&rtype.to_be_bytes());
                r.extend_from_slice(&1u16.to_be_bytes());
                r.extend_from_slice(&ttl.to_be_bytes());
                let len = (data.len() as i32 + skew).clamp(0, 0xffff) as u16;
                r.extend_from_slice(&len.to_be_bytes());
                r.extend(data);
                r
            })
}

/// A message: a header whose counts mostly match, questions, records in the three
/// sections, sometimes trailing bytes; then maybe a byte changed or the end cut.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 4]>(),
        proptest::collection::vec(name(), 0..3),
        proptest::collection::vec(prop_oneof![8 => other_record(), 1 => opt_record()], 0..2),
        proptest::collection::vec(prop_oneof![8 => other_record(), 1 => opt_record()], 0..2),
        proptest::collection::vec(record(), 0..3),
        prop_oneof![6 => Just(None), 1 => any::<[u16; 4]>().prop_map(Some)],
        prop_oneof![8 => Just(vec![]), 1 => proptest::collection::vec(any::<u8>(), 1..4)],
        prop_oneof![5 => Just(None), 1 => (any::<usize>(), any::<u8>()).prop_map(Some)],
        prop_oneof![6 => Just(None), 1 => any::<usize>().prop_map(Some)],
    )
        .prop_map(
            |(idflags, questions, answers, authority, additional, counts, tail, flip, cut)| {
                let counts = counts.unwrap_or([
                    questions.len() as u16,
                    answers.len() as u16,
                    authority.len() as u16,
                    additional.len() as u16,
                ]);
                let mut m = idflags.to_vec();
                for count in counts {
                    m.extend_from_slice(&(count % 8).to_be_bytes());
                }
                for q in questions {
                    m.extend(q);
                    m.extend_from_slice(&[0, 1, 0, 1]);
                }
                for r in answers.into_iter().chain(authority).chain(additional) {
                    m.extend(r);
                }
                m.extend(tail);
                if let Some((at, byte)) = flip {
                    let at = at % m.len();
                    m[at] = byte;
                }
                if let Some(cut) = cut {
                    m.truncate(cut % (m.len() + 1));
                }
                m
            },
        )
}

fn cases() -> u32 {
    std::env::var("STRAIT_DNS_ORACLE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn strait_reads_queries_as_hickory_does(m in message()) {
        if let Err(disagreement) = oracle::check(&m) {
            prop_assert!(false, "{disagreement}\ninput: {m:02x?}");
        }
    }

    #[test]
    fn any_bytes_agree_too(m in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Err(disagreement) = oracle::check(&m) {
            prop_assert!(false, "{disagreement}\ninput: {m:02x?}");
        }
    }
}

/// The generator reaches every verdict, and well-formed messages often enough.
#[test]
fn the_generator_covers_every_verdict() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut verdicts = std::collections::BTreeMap::new();
    for _ in 0..4000 {
        let Ok(tree) = message().new_tree(&mut runner) else {
            continue;
        };
        if let Some(q) = parse(&tree.current()) {
            *verdicts.entry(format!("{:?}", q.error)).or_insert(0) += 1;
        }
    }
    assert!(
        verdicts.get("None").copied().unwrap_or(0) > 400,
        "{verdicts:#?}"
    );
    assert_eq!(
        verdicts.len(),
        14,
        "every Malformed and None: {verdicts:#?}"
    );
}

#[test]
fn the_seeds_agree() {
    for (name, input) in oracle::seeds() {
        if let Err(disagreement) = oracle::check(&input) {
            panic!("{name}: {disagreement}");
        }
    }
}

#[test]
fn verdicts_of_the_seeds() {
    let verdict = |name: &str| {
        let (_, input) = oracle::seeds()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("a seed");
        parse(&input).expect("a header").error
    };
    assert_eq!(verdict("plain"), None);
    assert_eq!(verdict("edns"), None);
    assert_eq!(verdict("opt-rdlen-past-end"), Some(Malformed::RdataLength));
    assert_eq!(verdict("two-opt"), Some(Malformed::DuplicateOpt));
    assert_eq!(verdict("option-overrun"), Some(Malformed::OptionOverrun));
    assert_eq!(verdict("pointer-loop"), Some(Malformed::Pointer));
    assert_eq!(verdict("trailing"), Some(Malformed::TrailingBytes));
    assert_eq!(verdict("additional-a-short"), None, "A RDATA is not read");
    let seeds = oracle::seeds();
    let q = parse(&seeds[2].1).expect("a header");
    let edns = q.edns.expect("OPT");
    assert!(edns.dnssec_ok() && edns.nsid);
}

/// `fuzz/seeds/dns_query` holds the oracle's seeds, one file each (issue 23's malformed
/// OPT among them); `STRAIT_WRITE_SEEDS=1` rewrites them.
#[test]
fn the_fuzz_seeds_are_the_oracle_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/dns_query");
    let write = std::env::var_os("STRAIT_WRITE_SEEDS").is_some();
    for (name, input) in oracle::seeds() {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).expect("seed dir");
            std::fs::write(&path, &input).expect("write seed");
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(on_disk, input, "{name}: run with STRAIT_WRITE_SEEDS=1");
    }
}

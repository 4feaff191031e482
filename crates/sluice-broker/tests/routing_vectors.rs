//! Routing against vectors computed independently with Python's `hashlib`
//! (`fixtures/make_routing_vectors.py`): the exact range boundaries for 1, 2, 3, 4, 7 and 16
//! partitions, and key → MD5 → partition, both in the pure functions and through a real put.

use sluice_broker::routing::{hash_key, uniform};
use sluice_broker::{Broker, BrokerOptions, PutRecord, StreamConfig};

struct Vectors {
    ranges: Vec<(u32, u32, u128, u128)>,
    keys: Vec<(u32, Vec<u8>, u128, u32)>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vectors {
    let text = include_str!("fixtures/routing_vectors.txt");
    let mut v = Vectors {
        ranges: Vec::new(),
        keys: Vec::new(),
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[0] {
            "range" => v.ranges.push((
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )),
            "key" => v.keys.push((
                f[1].parse().unwrap(),
                unhex(f[2]),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )),
            other => panic!("unknown fixture line kind {other}"),
        }
    }
    assert_eq!(v.ranges.len(), 1 + 2 + 3 + 4 + 7 + 16);
    assert!(v.keys.len() >= 6 * 50);
    v
}

#[test]
fn range_boundaries_match_kinesis() {
    for (n, i, start, end) in vectors().ranges {
        let r = uniform(n)[i as usize];
        assert_eq!(
            (r.start, r.end),
            (start, end),
            "{n} partitions, partition {i}"
        );
    }
}

#[test]
fn keys_hash_and_route_as_computed_by_python() {
    let v = vectors();
    for (_, key, md5, _) in &v.keys {
        assert_eq!(hash_key(key), *md5, "md5 of {key:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    for n in [1u32, 2, 3, 4, 7, 16] {
        let name = format!("s{n}");
        broker
            .create_stream(
                &name,
                StreamConfig {
                    partitions: n,
                    ..StreamConfig::default()
                },
            )
            .unwrap();
        let cases: Vec<_> = v.keys.iter().filter(|k| k.0 == n).collect();
        let records: Vec<PutRecord> = cases
            .iter()
            .map(|(_, key, _, _)| PutRecord::new(key.clone(), "v"))
            .collect();
        let acks = broker.put(&name, &records).unwrap();
        for ((_, key, _, expected), ack) in cases.iter().zip(&acks) {
            assert_eq!(ack.partition, *expected, "{n} partitions, key {key:?}");
        }
    }
}

//! Producer-framed puts (`Broker::submit_batches`): batches built by the protocol crate's
//! `BatchBuilder` and routed with its `hash_key`, as the client does, are stored exactly as a
//! plain put stores the same records; anything wrong with any batch refuses the whole request
//! before a byte is written; a batch for a partition a reshard closed is left out and says so.

use std::time::Duration;

use bytes::BytesMut;
use sluice_broker::{
    BatchOutcome, Broker, BrokerOptions, Error, FramedPut, PutRecord, StreamConfig,
};
use sluice_log::{FramedError, ReadLimits};
use sluice_protocol::batch::{BatchBuilder, FramedBatch, hash_key};

fn open(dir: &std::path::Path) -> Broker {
    Broker::open(dir, BrokerOptions::default()).unwrap()
}

fn stream(b: &Broker, partitions: u32) {
    b.create_stream(
        "s",
        StreamConfig {
            partitions,
            retention: Duration::from_secs(3600),
            ..StreamConfig::default()
        },
    )
    .unwrap();
}

/// Routes `(key, value)` records as a client does: by the MD5 rule against the open partitions.
fn route(b: &Broker, records: &[(String, Vec<u8>)]) -> Vec<FramedBatch> {
    let d = b.describe_stream("s").unwrap();
    let mut builders: Vec<(u32, BatchBuilder)> = Vec::new();
    for (k, v) in records {
        let h = hash_key(k.as_bytes());
        let p = d
            .partitions
            .iter()
            .find(|p| p.state == sluice_broker::PartitionState::Open && p.range.contains(h))
            .unwrap()
            .id;
        if !builders.iter().any(|(id, _)| *id == p) {
            builders.push((p, BatchBuilder::new(p)));
        }
        let (_, builder) = builders.iter_mut().find(|(id, _)| *id == p).unwrap();
        builder.push(k.as_bytes(), v).unwrap();
    }
    builders
        .into_iter()
        .filter_map(|(_, b)| b.finish())
        .collect()
}

fn framed(batches: Vec<FramedBatch>) -> Vec<FramedPut<BytesMut>> {
    batches
        .into_iter()
        .map(|f| FramedPut {
            partition: f.partition,
            records_crc: f.records_crc,
            batch: f.batch,
        })
        .collect()
}

fn ends(b: &Broker) -> Vec<u64> {
    b.describe_stream("s")
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.end_offset)
        .collect()
}

fn records(n: usize, tag: &str) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("key-{}", i % 37), format!("{tag}-{i}").into_bytes()))
        .collect()
}

#[test]
fn framed_batches_are_stored_as_a_plain_put_stores_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    stream(&b, 4);
    let recs = records(200, "a");
    // The same records through the broker's own routing, then framed by the client.
    let plain: Vec<PutRecord> = recs
        .iter()
        .map(|(k, v)| PutRecord::new(k.clone(), v.clone()))
        .collect();
    let acks = b.put("s", &plain).unwrap();
    let batches = route(&b, &recs);
    let outcomes = b
        .submit_batches("s", framed(batches.clone()))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(outcomes.len(), batches.len());
    for (o, f) in outcomes.iter().zip(&batches) {
        assert_eq!(o.partition, f.partition);
        assert_eq!(o.record_count, f.record_count());
    }
    // The client's hash rule is the broker's: every key went to the partition the broker chose
    // for it, and each partition holds the plain copy then the framed copy, in order.
    for p in 0..4u32 {
        let plain_here: Vec<&(String, Vec<u8>)> = recs
            .iter()
            .zip(&acks)
            .filter(|(_, a)| a.partition == p)
            .map(|(r, _)| r)
            .collect();
        let stored = b.read("s", p, 0, ReadLimits::default()).unwrap();
        assert_eq!(stored.len(), plain_here.len() * 2, "partition {p}");
        let (first, second) = stored.split_at(plain_here.len());
        for (i, ((s1, s2), r)) in first.iter().zip(second).zip(&plain_here).enumerate() {
            assert_eq!(s1.offset, i as u64);
            assert_eq!(s2.offset, (plain_here.len() + i) as u64);
            for s in [s1, s2] {
                assert_eq!((&s.key[..], &s.value[..]), (r.0.as_bytes(), &r.1[..]));
            }
        }
        let o: &BatchOutcome = outcomes.iter().find(|o| o.partition == p).unwrap();
        assert_eq!(o.first_offset, Some(plain_here.len() as u64));
    }
    // Reads above checked every batch's CRC, so the headers the log filled in are right; a
    // reopened broker finds the same ends.
    drop(b);
    let b = open(dir.path());
    assert_eq!(ends(&b).iter().sum::<u64>(), 400);
}

#[test]
fn anything_wrong_with_any_batch_refuses_the_whole_request() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    stream(&b, 2);
    let before = ends(&b);
    let good = route(&b, &records(20, "g"));
    assert_eq!(good.len(), 2);

    // A bit flipped in the second batch's records: its CRC no longer matches.
    let mut bad = good.clone();
    let last = bad[1].batch.len() - 1;
    bad[1].batch[last] ^= 0x40;
    let e = b.submit_batches("s", framed(bad)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadBatch {
                index: 1,
                reason: FramedError::Layout(sluice_log::CorruptionKind::ChecksumMismatch { .. })
            }
        ),
        "{e}"
    );
    // A producer that set the base offset.
    let mut bad = good.clone();
    bad[0].batch[16] = 7;
    assert!(matches!(
        b.submit_batches("s", framed(bad)),
        Err(Error::BadBatch {
            index: 0,
            reason: FramedError::ServerFieldsSet
        })
    ));
    // A partition the stream does not have.
    let mut bad = good.clone();
    bad[1].partition = 9;
    assert!(matches!(
        b.submit_batches("s", framed(bad)),
        Err(Error::PartitionNotFound { partition: 9, .. })
    ));
    // The put limits apply over all the batches: 2 x 300 records.
    let big = route(&b, &records(600, "x"));
    assert!(matches!(
        b.submit_batches("s", framed(big)),
        Err(Error::TooManyRecords {
            count: 600,
            max: 500
        })
    ));
    // Keys the broker refuses in a plain put, here framed: empty, and 257 bytes.
    for key in [String::new(), "k".repeat(257)] {
        let mut builder = BatchBuilder::new(0);
        builder.push(b"fine", b"v").unwrap();
        builder.push(key.as_bytes(), b"v").unwrap();
        let one = builder.finish().unwrap();
        assert!(matches!(
            b.submit_batches("s", framed(vec![one])),
            Err(Error::InvalidPartitionKey { index: 1, len }) if len == key.len()
        ));
    }
    // A record over the stream's limit (1 MiB by default), and no batch at all.
    let mut builder = BatchBuilder::new(1);
    builder.push(b"k", &vec![0u8; (1 << 20) + 1]).unwrap();
    assert!(matches!(
        b.submit_batches("s", framed(vec![builder.finish().unwrap()])),
        Err(Error::RecordTooLarge { index: 0, .. })
    ));
    // Over several batches the index counts across them: the bad key is the request's fourth
    // record (the first batch holds three).
    let batch = |partition: u32, keys: &[&[u8]], value: &[u8]| {
        let mut builder = BatchBuilder::new(partition);
        for k in keys {
            builder.push(k, value).unwrap();
        }
        builder.finish().unwrap()
    };
    let two = vec![
        batch(0, &[b"a", b"b", b"c"], b"v"),
        batch(1, &[b"", b"d"], b"v"),
    ];
    assert!(matches!(
        b.submit_batches("s", framed(two)),
        Err(Error::InvalidPartitionKey { index: 3, len: 0 })
    ));
    // A bad record is named even when the put is also over its byte limit.
    let near_max = vec![7u8; (1 << 20) - 100];
    let mut both: Vec<FramedBatch> = (0..2)
        .map(|p| batch(p, &[&b"k"[..]; 3], &near_max))
        .collect();
    both.push(batch(0, &[b""], b"v"));
    assert!(matches!(
        b.submit_batches("s", framed(both)),
        Err(Error::InvalidPartitionKey { index: 6, len: 0 })
    ));
    assert_eq!(ends(&b), before, "a refused request wrote something");
    // At the limits exactly: a 256-byte key and a record of exactly 1 MiB are taken.
    let at_limit = vec![
        batch(0, &[&[b'k'; 256][..]], b"v"),
        batch(1, &[b"k"], &vec![0u8; (1 << 20) - 1]),
    ];
    b.submit_batches("s", framed(at_limit))
        .unwrap()
        .wait()
        .unwrap();
    let before = ends(&b);
    // Records each within the limit whose batches together are over the put's 5 MiB.
    let over: Vec<FramedBatch> = (0..2)
        .map(|partition| {
            let mut builder = BatchBuilder::new(partition);
            for _ in 0..3 {
                builder.push(b"k", &near_max).unwrap();
            }
            builder.finish().unwrap()
        })
        .collect();
    assert!(matches!(
        b.submit_batches("s", framed(over)),
        Err(Error::PutTooLarge { bytes, max: 5_242_880 }) if bytes == 6 * ((1 << 20) - 99)
    ));
    assert!(matches!(
        b.submit_batches("s", Vec::<FramedPut<BytesMut>>::new()),
        Err(Error::EmptyPut)
    ));
    // More batches than records allowed, refused before any is looked at.
    let one = route(&b, &records(1, "o"));
    assert!(matches!(
        b.submit_batches("s", framed(vec![one[0].clone(); 501])),
        Err(Error::TooManyRecords {
            count: 501,
            max: 500
        })
    ));
    assert_eq!(ends(&b), before, "a refused request wrote something");
    // The good request still goes through.
    b.submit_batches("s", framed(good)).unwrap().wait().unwrap();
    assert_eq!(
        ends(&b).iter().sum::<u64>(),
        before.iter().sum::<u64>() + 20
    );
}

#[test]
fn a_batch_for_a_closed_partition_is_left_out_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    stream(&b, 2);
    // Routed before the split: the batch for partition 0 is stale afterwards.
    let stale = route(&b, &records(50, "s"));
    b.split("s", 0, None).unwrap();
    let outcomes = b
        .submit_batches("s", framed(stale.clone()))
        .unwrap()
        .wait()
        .unwrap();
    let closed = outcomes.iter().find(|o| o.partition == 0).unwrap();
    assert_eq!(closed.first_offset, None);
    let open_one = outcomes.iter().find(|o| o.partition == 1).unwrap();
    assert_eq!(open_one.first_offset, Some(0));
    let d = b.describe_stream("s").unwrap();
    let end_of = |id: u32| d.partitions.iter().find(|p| p.id == id).unwrap().end_offset;
    assert_eq!(end_of(0), 0, "nothing reached the closed partition");
    assert_eq!(
        end_of(1),
        u64::from(
            stale
                .iter()
                .find(|f| f.partition == 1)
                .unwrap()
                .record_count()
        )
    );
}

/// Every record of `stored`, as `(key, value)`.
fn pairs(stored: &[sluice_log::StoredRecord]) -> Vec<(String, Vec<u8>)> {
    stored
        .iter()
        .map(|r| (String::from_utf8(r.key.to_vec()).unwrap(), r.value.to_vec()))
        .collect()
}

#[test]
fn requests_written_together_keep_their_order_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    stream(&b, 4);
    let sent: Vec<Vec<(String, Vec<u8>)>> =
        (0..5).map(|r| records(120, &format!("r{r}"))).collect();
    let mut requests: Vec<Vec<FramedBatch>> = sent.iter().map(|r| route(&b, r)).collect();
    // The third request has a damaged batch, the fifth has none.
    let last = requests[2][1].batch.len() - 1;
    requests[2][1].batch[last] ^= 0x40;
    requests[4].clear();
    let results = b.submit_batches_many("s", requests.iter().cloned().map(framed).collect());
    assert_eq!(results.len(), 5);
    let mut results = results.into_iter();
    let mut outcomes = Vec::new();
    for r in 0..5 {
        let result = results.next().unwrap();
        match r {
            2 => assert!(matches!(result, Err(Error::BadBatch { index: 1, .. }))),
            4 => assert!(matches!(result, Err(Error::EmptyPut))),
            _ => outcomes.push(result.unwrap().wait().unwrap()),
        }
    }
    // Each partition holds the good requests' records in the order the requests came, at the
    // offsets their outcomes name, and nothing of the refused ones.
    for p in 0..4u32 {
        let mut expected = Vec::new();
        let mut next = 0;
        for (r, o) in [0usize, 1, 3].into_iter().zip(&outcomes) {
            let batch = requests[r].iter().find(|f| f.partition == p).unwrap();
            let here = route_of(&b, &sent[r], p);
            let outcome = o.iter().find(|o| o.partition == p).unwrap();
            assert_eq!(
                outcome.first_offset,
                Some(next),
                "partition {p}, request {r}"
            );
            assert_eq!(outcome.record_count, batch.record_count());
            next += u64::from(batch.record_count());
            expected.extend(here);
        }
        let stored = b.read("s", p, 0, ReadLimits::default()).unwrap();
        assert_eq!(pairs(&stored), expected, "partition {p}");
    }
    drop(b);
    let b = open(dir.path());
    assert_eq!(ends(&b).iter().sum::<u64>(), 360);
}

/// The records of `sent` that route to partition `p`, in order.
fn route_of(b: &Broker, sent: &[(String, Vec<u8>)], p: u32) -> Vec<(String, Vec<u8>)> {
    let d = b.describe_stream("s").unwrap();
    let range = d.partitions.iter().find(|x| x.id == p).unwrap().range;
    sent.iter()
        .filter(|(k, _)| range.contains(hash_key(k.as_bytes())))
        .cloned()
        .collect()
}

#[test]
fn a_failed_write_of_requests_written_together_fails_each_of_them_and_stores_nothing() {
    use std::sync::Arc;

    use sluice_log::io::sim::SimFs;
    let fs = SimFs::new();
    let b = Broker::open_with_fs(Arc::new(fs.clone()), "/data", BrokerOptions::default()).unwrap();
    stream(&b, 2);
    let requests: Vec<Vec<FramedBatch>> = (0..3)
        .map(|r| route(&b, &records(40, &format!("r{r}"))))
        .collect();
    fs.fail_writes(std::io::ErrorKind::StorageFull, true);
    let results = b.submit_batches_many("s", requests.iter().cloned().map(framed).collect());
    assert_eq!(results.len(), 3);
    for r in results {
        assert!(
            matches!(&r, Err(Error::Log(sluice_log::Error::Io { source, .. })) if source.kind() == std::io::ErrorKind::StorageFull),
            "{r:?}"
        );
    }
    assert_eq!(ends(&b), [0, 0], "what reached the files was taken back");
    // Once the disk has room, the same requests go in whole, in order.
    fs.clear_write_error();
    let results = b.submit_batches_many("s", requests.iter().cloned().map(framed).collect());
    for r in results {
        r.unwrap().wait().unwrap();
    }
    assert_eq!(ends(&b).iter().sum::<u64>(), 120);
    for p in 0..2u32 {
        let expected: Vec<_> = (0..3)
            .flat_map(|r| route_of(&b, &records(40, &format!("r{r}")), p))
            .collect();
        let stored = b.read("s", p, 0, ReadLimits::default()).unwrap();
        assert_eq!(pairs(&stored), expected, "partition {p}");
    }
}

#[test]
fn a_request_whose_batch_fails_writes_none_of_its_later_batches_there() {
    // The first of a request's two batches for one partition needs a new segment, which cannot
    // be made; the second would fit in the old one. Written, it would sit in the log ahead of
    // the first when the producer sends the failed request again.
    use std::sync::Arc;

    use sluice_log::io::sim::SimFs;
    let fs = SimFs::new();
    let options = BrokerOptions {
        log: sluice_log::LogOptions::default().segment_bytes_max(8192),
        ..BrokerOptions::default()
    };
    let b = Broker::open_with_fs(Arc::new(fs.clone()), "/data", options).unwrap();
    stream(&b, 1);
    let batch = |n: usize, tag: &str| {
        let mut builder = BatchBuilder::new(0);
        for i in 0..n {
            builder
                .push(b"k", format!("{tag}-{i}-{}", "v".repeat(90)).as_bytes())
                .unwrap();
        }
        builder.finish().unwrap()
    };
    b.submit_batches("s", framed(vec![batch(40, "first")]))
        .unwrap()
        .wait()
        .unwrap();
    let before = ends(&b);
    fs.fail_creates(Some(std::io::ErrorKind::Other));
    let e = b
        .submit_batches("s", framed(vec![batch(60, "big"), batch(2, "small")]))
        .unwrap_err();
    assert!(matches!(e, Error::Log(_)), "{e}");
    assert_eq!(
        ends(&b),
        before,
        "nothing of the failed request was written"
    );
    // Once segments can be made again, the request goes in whole, in order.
    fs.fail_creates(None);
    b.submit_batches("s", framed(vec![batch(60, "big"), batch(2, "small")]))
        .unwrap()
        .wait()
        .unwrap();
    let stored = b.read("s", 0, 0, ReadLimits::default()).unwrap();
    let values: Vec<String> = stored
        .iter()
        .map(|r| String::from_utf8(r.value[..r.value.len() - 91].to_vec()).unwrap())
        .collect();
    assert_eq!(values.len(), 102);
    assert_eq!(values[40], "big-0");
    assert_eq!(values[100], "small-0");
}

//! The wire protocol's frame codec (`sluice-protocol`) on its own, without sockets or a server:
//! encoding and decoding a `Put` request for 500 × 1 KiB, 500 × 100 B and 1 × 1 KiB records,
//! and a `Read` response of 500 × 1 KiB records.
//!
//! Every put and every read crosses this code once on each side of the connection, so its cost
//! per record and per byte sets a ceiling on what the server and the client can move, whatever
//! the disk does. Comparing these figures with `e2e.rs` shows how much of an end-to-end put is
//! spent in the codec.
//!
//! Encoding writes into one buffer that is cleared between iterations, as a connection reuses
//! its write buffer, so the figures leave out the allocator. Decoding starts from a whole frame
//! already in memory: it reads the 16-byte header, then the body. Keys and values are handed
//! out as zero-copy slices of the frame, so decoding costs per record rather than per byte, and
//! its throughput for large records runs far above any copy's.
//!
//! The group also measures the server's check of a batch a producer framed itself (`PutBatches`):
//! the CRC recomputed over the records and the walk over their headers, for one partition's share
//! of a put of 500 × 1 KiB across four partitions (125 records) and for 500 × 100 B, plus the walk
//! on its own, which every read of the log repeats.
//!
//! Throughput counts the bytes of the whole encoded frame (header and body), which is what
//! travels on the wire. A record of size *n* is a 16-byte key and an (*n* − 16)-byte value, as
//! in the other benchmarks.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::{records, size_label};
use sluice_log::PreparedBatch;
use sluice_log::format::batch::{BatchHeader, for_each_record};
use sluice_protocol::batch::BatchBuilder;
use sluice_protocol::frame::{FrameHeader, HEADER_LEN};
use sluice_protocol::message::{PutRecord, ReadResponse, WireRecord};
use sluice_protocol::{Request, Response};

/// The largest body a decode accepts: the client's default limit, far above any frame here.
const MAX_BODY: u32 = 8 << 20;

/// The correlation id of every frame; its value does not change the cost.
const CORRELATION_ID: u64 = 42;

/// (record size, records per put) of the put benchmarks: many small records, many 1 KiB
/// records, and a put of a single record, where the fixed cost per frame dominates.
const PUT_SHAPES: [(usize, usize); 3] = [(1024, 500), (100, 500), (1024, 1)];

/// (record size, records per batch) of the batch checks: one partition's quarter of a put of
/// 500 × 1 KiB, and many small records, where the walk's cost per record shows most.
const BATCH_SHAPES: [(usize, usize); 2] = [(1024, 125), (100, 500)];

/// A `Put` request of `count` records of `size` bytes each.
fn put_request(count: usize, size: usize) -> Request {
    let records = records(count, size)
        .into_iter()
        .map(|r| PutRecord {
            partition_key: r.key,
            explicit_hash_key: None,
            value: r.value,
        })
        .collect();
    Request::Put {
        stream: "bench".into(),
        records,
    }
}

/// A `Read` response of `count` records of `size` bytes each, at consecutive offsets.
fn read_response(count: usize, size: usize) -> Response {
    let records: Vec<WireRecord> = records(count, size)
        .into_iter()
        .zip(0u64..)
        .map(|(r, offset)| WireRecord {
            offset,
            timestamp_ms: 1_700_000_000_000 + offset,
            key: r.key,
            value: r.value,
        })
        .collect();
    let end = records.len() as u64;
    Response::Read(ReadResponse {
        start_offset: 0,
        end_offset: end,
        next_offset: end,
        records,
    })
}

/// Reads the header at the start of `frame` and returns its kind and body, as a connection does
/// once a whole frame has arrived.
fn split_frame(frame: &Bytes) -> (u16, Bytes) {
    let header = FrameHeader::decode(frame, MAX_BODY)
        .expect("a valid header")
        .expect("a whole header");
    let body = frame.slice(HEADER_LEN..HEADER_LEN + header.body_len as usize);
    (header.kind, body)
}

/// One request encoded into a fresh buffer, to learn its size and to give decoding its input.
fn encoded(encode: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    encode(&mut out);
    out.freeze()
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");

    for (size, count) in PUT_SHAPES {
        let shape = format!("{} x{count}", size_label(size as u64));
        let request = put_request(count, size);
        let frame = encoded(|out| request.encode(CORRELATION_ID, out));
        // The frame must decode to the request encoded, or the figures measure the wrong thing.
        let (kind, body) = split_frame(&frame);
        assert_eq!(Request::decode(kind, body).expect("decode put"), request);
        group.throughput(Throughput::Bytes(frame.len() as u64));

        let mut out = BytesMut::with_capacity(frame.len());
        group.bench_function(BenchmarkId::new("encode put", &shape), |b| {
            b.iter(|| {
                out.clear();
                black_box(&request).encode(CORRELATION_ID, &mut out);
                out.len()
            })
        });

        // Criterion drops the decoded request inside the timed loop, as a server does once it
        // has handed the records to the log, so the drop is part of the cost.
        group.bench_function(BenchmarkId::new("decode put", &shape), |b| {
            b.iter(|| {
                let (kind, body) = split_frame(black_box(&frame));
                Request::decode(kind, body).expect("decode put")
            })
        });
    }

    // A full read response, as a consumer receives it: the server encodes it from records read
    // out of the log, and the client decodes it.
    let (size, count) = (1024, 500);
    let shape = format!("{} x{count}", size_label(size as u64));
    let response = read_response(count, size);
    let frame = encoded(|out| response.encode(CORRELATION_ID, out));
    let (kind, body) = split_frame(&frame);
    assert_eq!(
        Response::decode(kind, body).expect("decode read response"),
        response
    );
    group.throughput(Throughput::Bytes(frame.len() as u64));

    let mut out = BytesMut::with_capacity(frame.len());
    group.bench_function(BenchmarkId::new("encode read response", &shape), |b| {
        b.iter(|| {
            out.clear();
            black_box(&response).encode(CORRELATION_ID, &mut out);
            out.len()
        })
    });

    group.bench_function(BenchmarkId::new("decode read response", &shape), |b| {
        b.iter(|| {
            let (kind, body) = split_frame(black_box(&frame));
            Response::decode(kind, body).expect("decode read response")
        })
    });

    for (size, count) in BATCH_SHAPES {
        let shape = format!("{} x{count}", size_label(size as u64));
        let mut builder = BatchBuilder::new(0);
        for r in records(count, size) {
            builder
                .push(&r.key, &r.value)
                .expect("a record within the limits");
        }
        let framed = builder.finish().expect("a batch of at least one record");
        let mut batch = framed.batch.to_vec();
        group.throughput(Throughput::Bytes(batch.len() as u64));

        group.bench_function(BenchmarkId::new("check framed batch", &shape), |b| {
            b.iter(|| {
                PreparedBatch::framed(black_box(batch.as_mut_slice()), framed.records_crc)
                    .expect("a well-framed batch")
                    .record_count()
            })
        });

        let header = BatchHeader::decode(&batch).expect("a valid header");
        group.bench_function(BenchmarkId::new("walk records", &shape), |b| {
            b.iter(|| {
                let mut n = 0u32;
                for_each_record(&header, black_box(&batch), |_| n += 1).expect("valid records");
                n
            })
        });
    }

    group.finish();
}

criterion_group! {
    name = benches;
    config = sluice_benches::criterion_config(Duration::from_secs(3));
    targets = codec
}
criterion_main!(benches);

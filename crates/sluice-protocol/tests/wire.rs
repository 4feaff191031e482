//! Guards the wire format as clients in other languages see it.
//!
//! The hex examples in `docs/protocol.md` are read out of the page itself and decoded here, so the
//! documentation and the code cannot drift apart; the page's kind and error-code tables are checked
//! against the crate as well. Property tests round-trip every request and response variant through
//! a real frame, pin every decoding failure to its exact `WireError`, and feed arbitrary and
//! mutated bytes to every decoder, which must answer with an error rather than panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sluice_protocol::ErrorCode;
use sluice_protocol::batch::{BatchAck, FramedBatch};
use sluice_protocol::error::WireError;
use sluice_protocol::frame::{FLAG_ERROR, FLAG_RESPONSE, FrameHeader, HEADER_LEN};
use sluice_protocol::message::{
    CommitLease, CreateStream, ErrorResponse, GroupInfo, GroupPartitionInfo, GroupSummary,
    Heartbeat, InitialPosition, JoinGroup, Joined, Kind, LeaseInfo, MemberInfo, MemberRef,
    PartitionInfo, PartitionRef, PutAck, PutRecord, ReadFrom, ReadRequest, ReadResponse, Request,
    Response, ServerStats, StreamInfo, StreamStats, WireRecord,
};

/// The server's default limit on a frame body.
const MAX_BODY: u32 = 8 << 20;

// ---------------------------------------------------------------------------------------------
// Allocation tracking.
//
// A decoder that trusts a record count would reserve memory for every claimed record before
// finding out that the bytes are not there. The only way to see that it does not is to watch the
// allocator, so this test binary records the largest allocation each thread makes.
// ---------------------------------------------------------------------------------------------

thread_local! {
    static LARGEST_ALLOCATION: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    // `try_with` because the allocator is also called while a thread's locals are torn down.
    let _ = LARGEST_ALLOCATION.try_with(|l| l.set(l.get().max(size)));
}

struct TrackingAllocator;

#[allow(unsafe_code)]
// SAFETY: every method forwards its arguments unchanged to the system allocator, so the contract
// of `GlobalAlloc` is exactly `System`'s; the wrapper only records sizes in a thread-local cell,
// which is const-initialised and has no destructor, so recording never allocates.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: the caller meets `alloc`'s requirements (a non-zero-sized layout).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: `ptr` was allocated by this allocator, which is `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, which is `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator;

/// Runs `f` and returns its result with the largest single allocation this thread made meanwhile.
fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST_ALLOCATION.with(|l| l.set(0));
    let out = f();
    (out, LARGEST_ALLOCATION.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// The examples in docs/protocol.md.
// ---------------------------------------------------------------------------------------------

const DOC: &str = include_str!("../../../docs/protocol.md");

/// The bytes of the example fenced by `<!-- BEGIN wire-example {name} -->` and its END marker.
/// Each row is `offset | hex bytes | field`; the offset column must agree with the bytes before
/// it, so a row dropped or added by hand is caught too.
fn doc_example(name: &str) -> Vec<u8> {
    let begin = format!("<!-- BEGIN wire-example {name} -->");
    let end = format!("<!-- END wire-example {name} -->");
    let start = DOC
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/protocol.md has no example `{name}`"))
        + begin.len();
    let len = DOC[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("example `{name}` is not closed"));
    let mut bytes = Vec::new();
    for line in DOC[start..start + len].lines() {
        let mut cols = line.splitn(3, '|');
        let (Some(offset), Some(hex), Some(_field)) = (cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        // The column titles are the one row whose offset is not a number.
        let Ok(offset) = offset.trim().parse::<usize>() else {
            continue;
        };
        assert_eq!(
            offset,
            bytes.len(),
            "example `{name}`: a row says offset {offset} but the rows above hold {} bytes",
            bytes.len()
        );
        for pair in hex.split_whitespace() {
            assert_eq!(pair.len(), 2, "example `{name}`: `{pair}` is not one byte");
            bytes.push(u8::from_str_radix(pair, 16).unwrap());
        }
    }
    assert!(bytes.len() >= HEADER_LEN, "example `{name}` holds no frame");
    bytes
}

/// Every example name in the page, in order.
fn doc_example_names() -> Vec<&'static str> {
    let marker = "<!-- BEGIN wire-example ";
    DOC.match_indices(marker)
        .map(|(i, _)| {
            let rest = &DOC[i + marker.len()..];
            rest[..rest.find(" -->").unwrap()].trim()
        })
        .collect()
}

/// Splits a frame into its header (which must announce exactly the rest) and its body.
fn split_frame(frame: &[u8]) -> (FrameHeader, Bytes) {
    let header = FrameHeader::decode(frame, MAX_BODY).unwrap().unwrap();
    assert_eq!(header.body_len as usize, frame.len() - HEADER_LEN);
    (header, Bytes::copy_from_slice(&frame[HEADER_LEN..]))
}

fn encode_request(req: &Request, correlation_id: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    req.encode(correlation_id, &mut out);
    out.to_vec()
}

fn encode_response(resp: &Response, correlation_id: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    resp.encode(correlation_id, &mut out);
    out.to_vec()
}

fn the_put() -> Request {
    Request::Put {
        stream: "orders".into(),
        records: vec![
            PutRecord {
                partition_key: Bytes::from_static(b"user-1"),
                explicit_hash_key: None,
                value: Bytes::from_static(b"hello"),
            },
            PutRecord {
                partition_key: Bytes::from_static(b"user-2"),
                explicit_hash_key: Some(42),
                value: Bytes::new(),
            },
        ],
    }
}

#[test]
fn doc_put_request_decodes_field_by_field() {
    let frame = doc_example("put-request");
    assert_eq!(frame.len(), 75);
    let (header, body) = split_frame(&frame);
    assert_eq!(header.body_len, 59);
    assert_eq!(header.kind, Kind::Put as u16);
    assert_eq!(header.kind, 6);
    assert_eq!(header.flags, 0);
    assert!(!header.is_response() && !header.is_error());
    assert_eq!(header.correlation_id, 1);

    let req = Request::decode(header.kind, body).unwrap();
    let Request::Put { stream, records } = &req else {
        panic!("decoded as {req:?}");
    };
    assert_eq!(stream, "orders");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].explicit_hash_key, None);
    assert_eq!(&records[0].partition_key[..], b"user-1");
    assert_eq!(&records[0].value[..], b"hello");
    assert_eq!(records[1].explicit_hash_key, Some(42));
    assert_eq!(&records[1].partition_key[..], b"user-2");
    assert!(records[1].value.is_empty());
    assert_eq!(req, the_put());

    assert_eq!(
        encode_request(&req, 1),
        frame,
        "re-encoding changed the bytes"
    );
}

#[test]
fn doc_put_response_decodes_field_by_field() {
    let frame = doc_example("put-response");
    assert_eq!(frame.len(), 44);
    let (header, body) = split_frame(&frame);
    assert_eq!(header.body_len, 28);
    assert_eq!(header.kind, 6);
    assert_eq!(header.flags, FLAG_RESPONSE);
    assert!(header.is_response() && !header.is_error());
    assert_eq!(header.correlation_id, 1);

    let resp = Response::decode(header.kind, body).unwrap();
    let Response::Put(acks) = &resp else {
        panic!("decoded as {resp:?}");
    };
    assert_eq!(
        acks,
        &[
            PutAck {
                partition: 0,
                offset: 41
            },
            PutAck {
                partition: 3,
                offset: 7
            },
        ]
    );
    assert_eq!(
        encode_response(&resp, 1),
        frame,
        "re-encoding changed the bytes"
    );
}

/// The other examples on the page: each decodes to the value its text describes, and that value
/// encodes to exactly the bytes shown.
#[test]
fn doc_examples_decode_to_what_the_page_says() {
    let requests = [
        ("hello-request", 0, Request::Hello { version: 1 }),
        (
            "describe-stream-request",
            2,
            Request::DescribeStream {
                name: "orders".into(),
            },
        ),
        (
            "create-stream-request",
            4,
            Request::CreateStream(CreateStream {
                name: "orders".into(),
                partitions: 4,
                retention_ms: 86_400_000,
                partition_bytes_max: None,
                record_bytes_max: Some(1 << 20),
            }),
        ),
        (
            "read-request",
            3,
            Request::Read(ReadRequest {
                stream: "orders".into(),
                partition: 3,
                from: ReadFrom::Offset(7),
                max_records: 100,
                max_bytes: 1 << 20,
                max_wait_ms: 500,
            }),
        ),
    ];
    for (name, id, expected) in requests {
        let frame = doc_example(name);
        let (header, body) = split_frame(&frame);
        assert_eq!(
            (header.kind, header.flags, header.correlation_id),
            (expected.kind() as u16, 0, id),
            "{name}"
        );
        assert_eq!(
            Request::decode(header.kind, body).unwrap(),
            expected,
            "{name}"
        );
        assert_eq!(encode_request(&expected, id), frame, "{name}");
    }

    let responses = [
        ("hello-response", 0, Response::Hello { version: 1 }),
        (
            "read-response",
            3,
            Response::Read(ReadResponse {
                start_offset: 0,
                end_offset: 9,
                next_offset: 8,
                records: vec![WireRecord {
                    offset: 7,
                    timestamp_ms: 1_700_000_000_000,
                    key: Bytes::from_static(b"user-2"),
                    value: Bytes::new(),
                }],
            }),
        ),
    ];
    for (name, id, expected) in responses {
        let frame = doc_example(name);
        let (header, body) = split_frame(&frame);
        assert_eq!(
            (header.kind, header.flags, header.correlation_id),
            (expected.kind() as u16, FLAG_RESPONSE, id),
            "{name}"
        );
        assert_eq!(
            Response::decode(header.kind, body).unwrap(),
            expected,
            "{name}"
        );
        assert_eq!(encode_response(&expected, id), frame, "{name}");
    }

    let frame = doc_example("error-response");
    let (header, body) = split_frame(&frame);
    assert_eq!(header.kind, Kind::DescribeStream as u16);
    assert_eq!(header.flags, FLAG_RESPONSE | FLAG_ERROR);
    assert!(header.is_response() && header.is_error());
    assert_eq!(header.correlation_id, 2);
    let err = ErrorResponse::decode(body).unwrap();
    assert_eq!(err.error_code(), Some(ErrorCode::StreamNotFound));
    assert_eq!(err.message, "no stream orders");
    let mut out = BytesMut::new();
    err.encode(header.kind, 2, &mut out);
    assert_eq!(out.to_vec(), frame);
}

#[test]
fn every_example_on_the_page_is_checked() {
    let checked = [
        "hello-request",
        "hello-response",
        "read-request",
        "read-response",
        "describe-stream-request",
        "create-stream-request",
        "error-response",
        "put-request",
        "put-response",
    ];
    let mut on_page = doc_example_names();
    let mut expected = checked.to_vec();
    on_page.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        on_page, expected,
        "an example on the page is not tested, or one went missing"
    );
}

/// Rows `| number | `Name` | ...` of the markdown table that follows `heading`.
fn doc_table(heading: &str) -> Vec<(u16, String)> {
    let start = DOC
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in DOC[start..].lines().skip(1) {
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (Ok(n), Some(name)) = (cols[1].parse::<u16>(), cols.get(2)) {
            rows.push((n, name.trim_matches('`').to_owned()));
        }
    }
    rows
}

#[test]
fn the_error_code_table_on_the_page_is_complete_and_right() {
    let on_page = doc_table("| code | name | meaning |");
    let in_code: Vec<(u16, String)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_u16(), format!("{c:?}")))
        .collect();
    assert_eq!(on_page, in_code);
}

#[test]
fn the_kind_table_on_the_page_is_complete_and_right() {
    let on_page = doc_table("| kind | name | request body | response body |");
    assert_eq!(on_page.len(), 20);
    for (n, name) in on_page {
        let kind = Kind::from_u16(n).unwrap();
        assert_eq!(kind as u16, n);
        assert_eq!(format!("{kind:?}"), name);
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------------

/// Any UTF-8 text, not only valid stream names: the protocol carries names the server refuses.
/// Up to 100 characters of up to 4 bytes each crosses the one-byte varint and `u16` boundaries.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,100}"
}

fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn partition_ref() -> impl Strategy<Value = PartitionRef> {
    (text(), any::<u32>()).prop_map(|(stream, partition)| PartitionRef { stream, partition })
}

fn put_record() -> impl Strategy<Value = PutRecord> {
    (blob(300), any::<Option<u128>>(), blob(600)).prop_map(
        |(partition_key, explicit_hash_key, value)| PutRecord {
            partition_key,
            explicit_hash_key,
            value,
        },
    )
}

fn read_from() -> impl Strategy<Value = ReadFrom> {
    prop_oneof![
        any::<u64>().prop_map(ReadFrom::Offset),
        Just(ReadFrom::Earliest),
        Just(ReadFrom::Latest),
        any::<u64>().prop_map(ReadFrom::Timestamp),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<u16>().prop_map(|version| Request::Hello { version }),
        (
            text(),
            any::<u32>(),
            any::<u64>(),
            any::<Option<u64>>(),
            any::<Option<u64>>()
        )
            .prop_map(
                |(name, partitions, retention_ms, partition_bytes_max, record_bytes_max)| {
                    Request::CreateStream(CreateStream {
                        name,
                        partitions,
                        retention_ms,
                        partition_bytes_max,
                        record_bytes_max,
                    })
                }
            ),
        text().prop_map(|name| Request::DeleteStream { name }),
        Just(Request::ListStreams),
        text().prop_map(|name| Request::DescribeStream { name }),
        (text(), proptest::collection::vec(put_record(), 0..6))
            .prop_map(|(stream, records)| Request::Put { stream, records }),
        (
            text(),
            any::<u32>(),
            read_from(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(stream, partition, from, max_records, max_bytes, max_wait_ms)| {
                    Request::Read(ReadRequest {
                        stream,
                        partition,
                        from,
                        max_records,
                        max_bytes,
                        max_wait_ms,
                    })
                }
            ),
        (partition_ref(), any::<Option<u128>>())
            .prop_map(|(target, at)| Request::Split { target, at }),
        (text(), any::<u32>(), any::<u32>()).prop_map(|(stream, a, b)| Request::Merge {
            stream,
            a,
            b
        }),
        (text(), any::<u64>()).prop_map(|(stream, retention_ms)| Request::SetRetention {
            stream,
            retention_ms
        }),
        (text(), partition_ref(), any::<u64>()).prop_map(|(group, target, offset)| {
            Request::CommitCheckpoint {
                group,
                target,
                offset,
            }
        }),
        (text(), partition_ref())
            .prop_map(|(group, target)| Request::FetchCheckpoint { group, target }),
        Just(Request::Stats),
        (text(), text(), text(), any::<u32>(), initial_position()).prop_map(
            |(group, stream, member_name, session_timeout_ms, initial)| {
                Request::JoinGroup(JoinGroup {
                    group,
                    stream,
                    member_name,
                    session_timeout_ms,
                    initial,
                })
            }
        ),
        (
            member_ref(),
            proptest::collection::vec(any::<(u32, u64)>(), 0..4)
        )
            .prop_map(|(member, released)| Request::Heartbeat(Heartbeat { member, released })),
        (member_ref(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(member, partition, epoch, offset)| Request::CommitLease(CommitLease {
                member,
                partition,
                epoch,
                offset
            })
        ),
        member_ref().prop_map(Request::LeaveGroup),
        (text(), text()).prop_map(|(group, stream)| Request::DescribeGroup { group, stream }),
        Just(Request::ListGroups),
        (
            text(),
            proptest::collection::vec((any::<u32>(), any::<u32>(), blob(200)), 0..4)
        )
            .prop_map(|(stream, batches)| Request::PutBatches {
                stream,
                batches: batches
                    .into_iter()
                    .map(|(partition, records_crc, b)| FramedBatch {
                        partition,
                        records_crc,
                        batch: BytesMut::from(b.as_ref()),
                    })
                    .collect(),
            }),
    ]
}

fn initial_position() -> impl Strategy<Value = InitialPosition> {
    prop_oneof![
        Just(InitialPosition::Earliest),
        Just(InitialPosition::Latest)
    ]
}

fn member_ref() -> impl Strategy<Value = MemberRef> {
    (text(), text(), text()).prop_map(|(group, stream, member_id)| MemberRef {
        group,
        stream,
        member_id,
    })
}

fn group_info() -> impl Strategy<Value = GroupInfo> {
    let member = (
        text(),
        text(),
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(any::<u32>(), 0..4),
    )
        .prop_map(
            |(member_id, name, session_timeout_ms, last_seen_ms_ago, partitions)| MemberInfo {
                member_id,
                name,
                session_timeout_ms,
                last_seen_ms_ago,
                partitions,
            },
        );
    let partition = (
        any::<u32>(),
        any::<bool>(),
        text(),
        any::<Option<String>>(),
        any::<u64>(),
        any::<Option<u64>>(),
        any::<[u64; 4]>(),
    )
        .prop_map(
            |(partition, open, state, owner, epoch, checkpoint, [start, end, lag, lag_ms])| {
                GroupPartitionInfo {
                    partition,
                    open,
                    state,
                    owner,
                    epoch,
                    checkpoint,
                    start_offset: start,
                    end_offset: end,
                    lag_records: lag,
                    lag_ms,
                }
            },
        );
    (
        text(),
        text(),
        initial_position(),
        proptest::collection::vec(member, 0..3),
        proptest::collection::vec(partition, 0..4),
    )
        .prop_map(|(group, stream, initial, members, partitions)| GroupInfo {
            group,
            stream,
            initial,
            members,
            partitions,
        })
}

fn partition_info() -> impl Strategy<Value = PartitionInfo> {
    (
        any::<u32>(),
        any::<bool>(),
        any::<u128>(),
        any::<u128>(),
        proptest::collection::vec(any::<u32>(), 0..3),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, open, hash_start, hash_end, parents, start_offset, end_offset)| PartitionInfo {
                id,
                open,
                hash_start,
                hash_end,
                parents,
                start_offset,
                end_offset,
            },
        )
}

fn stream_info() -> impl Strategy<Value = StreamInfo> {
    (
        text(),
        any::<u64>(),
        any::<Option<u64>>(),
        any::<u64>(),
        proptest::collection::vec(partition_info(), 0..4),
    )
        .prop_map(
            |(name, retention_ms, partition_bytes_max, record_bytes_max, partitions)| StreamInfo {
                name,
                retention_ms,
                partition_bytes_max,
                record_bytes_max,
                partitions,
            },
        )
}

fn server_stats() -> impl Strategy<Value = ServerStats> {
    let stream = (text(), any::<[u64; 4]>()).prop_map(|(name, [ri, bi, ro, bo])| StreamStats {
        name,
        records_in: ri,
        bytes_in: bi,
        records_out: ro,
        bytes_out: bo,
    });
    (any::<[u64; 11]>(), proptest::collection::vec(stream, 0..4)).prop_map(|(n, streams)| {
        ServerStats {
            uptime_ms: n[0],
            connections_open: n[1],
            connections_total: n[2],
            puts: n[3],
            fsyncs: n[4],
            fsync_latency_us_p50: n[5],
            fsync_latency_us_p99: n[6],
            fsync_latency_us_max: n[7],
            put_latency_us_p50: n[8],
            put_latency_us_p99: n[9],
            put_latency_us_max: n[10],
            streams,
        }
    })
}

fn wire_record() -> impl Strategy<Value = WireRecord> {
    (any::<u64>(), any::<u64>(), blob(300), blob(600)).prop_map(
        |(offset, timestamp_ms, key, value)| WireRecord {
            offset,
            timestamp_ms,
            key,
            value,
        },
    )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        any::<u16>().prop_map(|version| Response::Hello { version }),
        stream_info().prop_map(Response::CreateStream),
        Just(Response::DeleteStream),
        proptest::collection::vec(text(), 0..6).prop_map(Response::ListStreams),
        stream_info().prop_map(Response::DescribeStream),
        proptest::collection::vec(
            (any::<u32>(), any::<u64>())
                .prop_map(|(partition, offset)| PutAck { partition, offset }),
            0..20
        )
        .prop_map(Response::Put),
        (
            any::<[u64; 3]>(),
            proptest::collection::vec(wire_record(), 0..6)
        )
            .prop_map(|([start_offset, end_offset, next_offset], records)| {
                Response::Read(ReadResponse {
                    start_offset,
                    end_offset,
                    next_offset,
                    records,
                })
            }),
        any::<[u32; 2]>().prop_map(Response::Split),
        any::<u32>().prop_map(Response::Merge),
        Just(Response::SetRetention),
        Just(Response::CommitCheckpoint),
        any::<Option<u64>>().prop_map(Response::FetchCheckpoint),
        server_stats().prop_map(Response::Stats),
        (text(), any::<u32>()).prop_map(|(member_id, heartbeat_interval_ms)| {
            Response::JoinGroup(Joined {
                member_id,
                heartbeat_interval_ms,
            })
        }),
        proptest::collection::vec(
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(partition, epoch, start_offset, revoking)| LeaseInfo {
                    partition,
                    epoch,
                    start_offset,
                    revoking,
                }
            ),
            0..4
        )
        .prop_map(Response::Heartbeat),
        Just(Response::CommitLease),
        Just(Response::LeaveGroup),
        group_info().prop_map(Response::DescribeGroup),
        proptest::collection::vec(
            (text(), text(), any::<u32>(), any::<u32>()).prop_map(
                |(group, stream, members, checkpoints)| GroupSummary {
                    group,
                    stream,
                    members,
                    checkpoints,
                }
            ),
            0..4
        )
        .prop_map(Response::ListGroups),
        proptest::collection::vec(
            (any::<u32>(), any::<u16>(), any::<u32>(), any::<u64>()).prop_map(
                |(partition, status, record_count, base_offset)| BatchAck {
                    partition,
                    status,
                    record_count,
                    base_offset,
                }
            ),
            0..6
        )
        .prop_map(Response::PutBatches),
    ]
}

/// Any kind number worth trying: mostly the defined ones and their neighbours, sometimes any.
fn kind_number() -> impl Strategy<Value = u16> {
    prop_oneof![4 => 0u16..=21, 1 => any::<u16>()]
}

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Encode, decode the header as a reader would, decode the body: the same request, and
    /// re-encoding it gives the same bytes.
    #[test]
    fn every_request_round_trips_through_a_frame(req in request(), id in any::<u64>()) {
        let frame = encode_request(&req, id);
        let header = FrameHeader::decode(&frame, u32::MAX).unwrap().unwrap();
        prop_assert_eq!(header.body_len as usize, frame.len() - HEADER_LEN);
        prop_assert_eq!(header.kind, req.kind() as u16);
        prop_assert_eq!(header.flags, 0);
        prop_assert_eq!(header.correlation_id, id);
        let body = Bytes::copy_from_slice(&frame[HEADER_LEN..]);
        let decoded = Request::decode(header.kind, body).unwrap();
        prop_assert_eq!(&decoded, &req);
        prop_assert_eq!(encode_request(&decoded, id), frame);
    }

    #[test]
    fn every_response_round_trips_through_a_frame(resp in response(), id in any::<u64>()) {
        let frame = encode_response(&resp, id);
        let header = FrameHeader::decode(&frame, u32::MAX).unwrap().unwrap();
        prop_assert_eq!(header.body_len as usize, frame.len() - HEADER_LEN);
        prop_assert_eq!(header.kind, resp.kind() as u16);
        prop_assert_eq!(header.flags, FLAG_RESPONSE);
        prop_assert_eq!(header.correlation_id, id);
        let body = Bytes::copy_from_slice(&frame[HEADER_LEN..]);
        let decoded = Response::decode(header.kind, body).unwrap();
        prop_assert_eq!(&decoded, &resp);
        prop_assert_eq!(encode_response(&decoded, id), frame);
    }

    #[test]
    fn error_responses_round_trip_through_a_frame(
        code in any::<u16>(),
        message in "\\PC{0,200}",
        kind in 1u16..=13,
        id in any::<u64>(),
    ) {
        let err = ErrorResponse { code, message };
        let mut out = BytesMut::new();
        err.encode(kind, id, &mut out);
        let header = FrameHeader::decode(&out, u32::MAX).unwrap().unwrap();
        prop_assert_eq!(header.body_len as usize, out.len() - HEADER_LEN);
        prop_assert_eq!((header.kind, header.flags, header.correlation_id), (kind, FLAG_RESPONSE | FLAG_ERROR, id));
        let decoded = ErrorResponse::decode(out.split_off(HEADER_LEN).freeze()).unwrap();
        prop_assert_eq!(decoded, err);
    }

    /// Bodies are self-delimiting only together with the frame's length: any strict prefix of a
    /// body that has one (the empty bodies have none) is refused, with the error of a short
    /// body.
    #[test]
    fn every_strict_prefix_of_a_body_is_refused(req in request(), resp in response(), cut in any::<prop::sample::Index>()) {
        let frame = encode_request(&req, 0);
        let body = Bytes::copy_from_slice(&frame[HEADER_LEN..]);
        if !body.is_empty() {
            let at = cut.index(body.len());
            let err = Request::decode(req.kind() as u16, body.slice(..at)).unwrap_err();
            prop_assert!(is_short_body_error(&err), "prefix {} of {:?}: {:?}", at, req, err);
        }
        let frame = encode_response(&resp, 0);
        let body = Bytes::copy_from_slice(&frame[HEADER_LEN..]);
        if !body.is_empty() {
            let at = cut.index(body.len());
            let err = Response::decode(resp.kind() as u16, body.slice(..at)).unwrap_err();
            prop_assert!(is_short_body_error(&err), "prefix {} of {:?}: {:?}", at, resp, err);
        }
    }

    /// Bytes after the last field are refused with their exact count, for every kind.
    #[test]
    fn trailing_bytes_are_refused_with_their_count(
        req in request(),
        resp in response(),
        junk in proptest::collection::vec(any::<u8>(), 1..40),
    ) {
        let mut frame = encode_request(&req, 0);
        frame.extend_from_slice(&junk);
        prop_assert_eq!(
            Request::decode(req.kind() as u16, Bytes::copy_from_slice(&frame[HEADER_LEN..])),
            Err(WireError::TrailingBytes(junk.len()))
        );
        let mut frame = encode_response(&resp, 0);
        frame.extend_from_slice(&junk);
        prop_assert_eq!(
            Response::decode(resp.kind() as u16, Bytes::copy_from_slice(&frame[HEADER_LEN..])),
            Err(WireError::TrailingBytes(junk.len()))
        );
        let mut out = BytesMut::new();
        ErrorResponse::new(ErrorCode::Busy, "retry").encode(6, 0, &mut out);
        out.extend_from_slice(&junk);
        prop_assert_eq!(
            ErrorResponse::decode(out.split_off(HEADER_LEN).freeze()),
            Err(WireError::TrailingBytes(junk.len()))
        );
    }
}

/// The errors a body cut short can produce: a field ended early, a count that the remaining bytes
/// cannot hold, or (for postcard bodies) postcard's end of input.
fn is_short_body_error(err: &WireError) -> bool {
    matches!(
        err,
        WireError::Truncated { .. }
            | WireError::Invalid("record count" | "ack count" | "batch count")
            | WireError::Postcard(_)
    )
}

// ---------------------------------------------------------------------------------------------
// Each decoding failure and its exact error.
// ---------------------------------------------------------------------------------------------

/// The body of the page's Put example.
fn put_body() -> Vec<u8> {
    doc_example("put-request")[HEADER_LEN..].to_vec()
}

#[test]
fn a_put_body_cut_at_every_byte_names_the_field_it_ends_in() {
    let body = put_body();
    // The fields of the example body in order, as the decoder names them; a string's length and
    // bytes share the string's name. Record 1's value is empty, so no cut can land in it.
    let fields: [(&str, usize); 13] = [
        ("stream name", 2),
        ("stream name", 6),
        ("record count", 4),
        ("record flags", 1),
        ("key length", 2),
        ("key", 6),
        ("value length", 4),
        ("value", 5),
        ("record flags", 1),
        ("explicit hash key", 16),
        ("key length", 2),
        ("key", 6),
        ("value length", 4),
    ];
    assert_eq!(fields.iter().map(|f| f.1).sum::<usize>(), body.len());
    // The count (2) is checked against the bytes after it before any record is read: it needs
    // at least 7 bytes per record.
    let records_start = 12;
    for cut in 0..body.len() {
        let got = Request::decode(Kind::Put as u16, Bytes::copy_from_slice(&body[..cut]));
        let expected = if cut >= records_start && cut - records_start < 2 * 7 {
            WireError::Invalid("record count")
        } else {
            let mut start = 0;
            let mut expected = None;
            for (field, len) in fields {
                if cut < start + len {
                    expected = Some(WireError::Truncated {
                        field,
                        need: len,
                        have: cut - start,
                    });
                    break;
                }
                start += len;
            }
            expected.unwrap()
        };
        assert_eq!(got, Err(expected), "cut at byte {cut}");
    }
    // The whole body still decodes, so the cuts above failed only for being short.
    assert!(Request::decode(Kind::Put as u16, Bytes::from(body)).is_ok());
}

#[test]
fn record_flags_other_than_0_and_1_are_refused() {
    let body = put_body();
    // Byte 12 of the body is the first record's flags.
    assert_eq!(body[12], 0);
    for flags in 2..=u8::MAX {
        let mut bad = body.clone();
        bad[12] = flags;
        assert_eq!(
            Request::decode(Kind::Put as u16, Bytes::from(bad)),
            Err(WireError::Invalid("record flags")),
            "flags {flags}"
        );
    }
}

#[test]
fn header_flag_bits_other_than_response_and_error_are_refused() {
    let mut header = FrameHeader {
        body_len: 0,
        kind: 6,
        flags: 0,
        correlation_id: 9,
    };
    for flags in 0..=3 {
        header.flags = flags;
        assert_eq!(
            FrameHeader::decode(&header.encode(), MAX_BODY),
            Ok(Some(header))
        );
    }
    for bit in 2..16 {
        for known in 0..=3 {
            header.flags = (1 << bit) | known;
            assert_eq!(
                FrameHeader::decode(&header.encode(), MAX_BODY),
                Err(WireError::UnknownFlags(header.flags))
            );
        }
    }
}

#[test]
fn read_position_tags_other_than_0_to_3_are_refused() {
    let frame = doc_example("read-request");
    let body = &frame[HEADER_LEN..];
    // Byte 12 of the body is `from_kind`, after the name (8 bytes) and the partition (4).
    assert_eq!(body[12], 0);
    for tag in 0..=u8::MAX {
        let mut b = body.to_vec();
        b[12] = tag;
        let got = Request::decode(Kind::Read as u16, Bytes::from(b));
        if tag <= 3 {
            assert!(got.is_ok(), "tag {tag}: {got:?}");
        } else {
            assert_eq!(
                got,
                Err(WireError::Invalid("read position kind")),
                "tag {tag}"
            );
        }
    }
}

#[test]
fn unknown_kinds_are_refused_by_both_decoders() {
    let body = Bytes::from(put_body());
    for kind in 0..=u16::MAX {
        let known = (1..=20).contains(&kind);
        assert_eq!(Kind::from_u16(kind).is_ok(), known, "kind {kind}");
        if !known {
            assert_eq!(
                Request::decode(kind, body.clone()),
                Err(WireError::UnknownKind(kind))
            );
            assert_eq!(
                Response::decode(kind, Bytes::new()),
                Err(WireError::UnknownKind(kind))
            );
        }
    }
}

/// A body of `prefix`, a `u32` count, then `tail`.
fn with_count(prefix: &[u8], count: u32, tail: &[u8]) -> Bytes {
    let mut b = prefix.to_vec();
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(tail);
    Bytes::from(b)
}

#[test]
fn counts_larger_than_their_bytes_are_refused_before_allocating() {
    // The Put example's stream name, then a count, then 100 bytes: room for at most 14 records of
    // the smallest size (7 bytes).
    let name = &put_body()[..8];
    let tail = [0u8; 100];
    for count in [15, 1000, 1 << 20, u32::MAX] {
        let body = with_count(name, count, &tail);
        let (got, largest) =
            largest_allocation_during(|| Request::decode(Kind::Put as u16, body.clone()));
        assert_eq!(
            got,
            Err(WireError::Invalid("record count")),
            "count {count}"
        );
        // Reserving even 15 records would take 15 × size_of::<PutRecord>() bytes; only the
        // stream name may be allocated.
        assert!(
            largest < 15 * size_of::<PutRecord>(),
            "count {count}: an allocation of {largest} bytes"
        );
    }

    // Acks take 12 bytes each and read records at least 22.
    for count in [9, u32::MAX] {
        let body = with_count(&[], count, &tail);
        let (got, largest) =
            largest_allocation_during(|| Response::decode(Kind::Put as u16, body.clone()));
        assert_eq!(got, Err(WireError::Invalid("ack count")), "count {count}");
        assert!(largest < 9 * size_of::<PutAck>(), "{largest} bytes");
    }
    for count in [5, u32::MAX] {
        let body = with_count(&[0; 24], count, &tail);
        let (got, largest) =
            largest_allocation_during(|| Response::decode(Kind::Read as u16, body.clone()));
        assert_eq!(
            got,
            Err(WireError::Invalid("record count")),
            "count {count}"
        );
        assert!(largest < 5 * size_of::<WireRecord>(), "{largest} bytes");
    }

    // The largest counts that do fit are accepted: all-zero records are valid ones.
    assert!(Request::decode(Kind::Put as u16, with_count(name, 14, &[0; 98])).is_ok());
    assert!(Response::decode(Kind::Put as u16, with_count(&[], 8, &[0; 96])).is_ok());
    assert!(Response::decode(Kind::Read as u16, with_count(&[0; 24], 4, &[0; 88])).is_ok());
}

#[test]
fn oversized_frames_are_refused_from_the_header_alone() {
    let mut header = FrameHeader {
        body_len: u32::MAX,
        kind: 6,
        flags: 0,
        correlation_id: 1,
    };
    let (got, largest) =
        largest_allocation_during(|| FrameHeader::decode(&header.encode(), MAX_BODY));
    assert_eq!(
        got,
        Err(WireError::FrameTooLarge {
            len: u32::MAX,
            max: MAX_BODY
        })
    );
    assert_eq!(largest, 0, "decoding a header allocates nothing");
    header.body_len = MAX_BODY + 1;
    assert_eq!(
        FrameHeader::decode(&header.encode(), MAX_BODY),
        Err(WireError::FrameTooLarge {
            len: MAX_BODY + 1,
            max: MAX_BODY
        })
    );
    header.body_len = MAX_BODY;
    assert_eq!(
        FrameHeader::decode(&header.encode(), MAX_BODY),
        Ok(Some(header))
    );
    // Fewer than 16 bytes are not an error, only not a header yet.
    let bytes = header.encode();
    for len in 0..HEADER_LEN {
        assert_eq!(FrameHeader::decode(&bytes[..len], MAX_BODY), Ok(None));
    }
}

#[test]
fn text_that_is_not_utf8_is_refused() {
    let mut put = put_body();
    put[2] = 0xff;
    assert_eq!(
        Request::decode(Kind::Put as u16, Bytes::from(put)),
        Err(WireError::BadUtf8("stream name"))
    );
    let mut read = doc_example("read-request")[HEADER_LEN..].to_vec();
    read[2] = 0xc0;
    assert_eq!(
        Request::decode(Kind::Read as u16, Bytes::from(read)),
        Err(WireError::BadUtf8("stream name"))
    );
    let mut err = doc_example("error-response")[HEADER_LEN..].to_vec();
    err[4] = 0x80;
    assert_eq!(
        ErrorResponse::decode(Bytes::from(err)),
        Err(WireError::BadUtf8("message"))
    );
    // Postcard strings: the DescribeStream body is a varint length, then the bytes.
    assert!(matches!(
        Request::decode(
            Kind::DescribeStream as u16,
            Bytes::from_static(&[2, 0xff, 0xfe])
        ),
        Err(WireError::Postcard(_))
    ));
}

#[test]
fn hello_needs_its_magic() {
    assert_eq!(
        Request::decode(Kind::Hello as u16, Bytes::from_static(b"SLCX\x01\x00")),
        Err(WireError::Invalid("hello magic"))
    );
    assert_eq!(
        Request::decode(Kind::Hello as u16, Bytes::from_static(b"SLC")),
        Err(WireError::Truncated {
            field: "hello magic",
            need: 4,
            have: 3
        })
    );
    assert_eq!(
        Request::decode(Kind::Hello as u16, Bytes::from_static(b"SLCE\x01")),
        Err(WireError::Truncated {
            field: "version",
            need: 2,
            have: 1
        })
    );
}

#[test]
fn error_bodies_cut_short_name_the_field() {
    let body = doc_example("error-response")[HEADER_LEN..].to_vec();
    let fields: [(&str, usize); 3] = [("error code", 2), ("message length", 2), ("message", 16)];
    assert_eq!(fields.iter().map(|f| f.1).sum::<usize>(), body.len());
    let mut start = 0;
    for (field, len) in fields {
        for have in 0..len {
            assert_eq!(
                ErrorResponse::decode(Bytes::copy_from_slice(&body[..start + have])),
                Err(WireError::Truncated {
                    field,
                    need: len,
                    have
                })
            );
        }
        start += len;
    }
}

#[test]
fn postcard_bodies_with_bad_tags_are_refused() {
    // `Option` tags are 0 or 1.
    assert!(matches!(
        Response::decode(Kind::FetchCheckpoint as u16, Bytes::from_static(&[2, 7])),
        Err(WireError::Postcard(_))
    ));
    // `bool` is 0 or 1: a StreamInfo with one partition whose `open` byte is 2.
    let mut info = vec![1, b's', 0, 0, 0, 1];
    info.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0]);
    assert!(matches!(
        Response::decode(Kind::DescribeStream as u16, Bytes::from(info.clone())),
        Err(WireError::Postcard(_))
    ));
    info[7] = 1;
    assert!(Response::decode(Kind::DescribeStream as u16, Bytes::from(info)).is_ok());
    // An empty body where a value is expected.
    assert!(matches!(
        Request::decode(Kind::Merge as u16, Bytes::new()),
        Err(WireError::Postcard(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes.
// ---------------------------------------------------------------------------------------------

/// Decoding arbitrary bytes must never panic; whatever decodes must survive a round trip.
fn decode_everything(kind: u16, body: &Bytes) -> Result<(), TestCaseError> {
    // The server's zero-copy decoder agrees with the plain one on every input, errors included.
    prop_assert_eq!(
        Request::decode_mut(kind, BytesMut::from(body.as_ref())),
        Request::decode(kind, body.clone())
    );
    if let Ok(req) = Request::decode(kind, body.clone()) {
        let frame = encode_request(&req, 0);
        let again = Request::decode(kind, Bytes::copy_from_slice(&frame[HEADER_LEN..]));
        prop_assert_eq!(again, Ok(req));
    }
    if let Ok(resp) = Response::decode(kind, body.clone()) {
        let frame = encode_response(&resp, 0);
        let again = Response::decode(kind, Bytes::copy_from_slice(&frame[HEADER_LEN..]));
        prop_assert_eq!(again, Ok(resp));
    }
    if let Ok(err) = ErrorResponse::decode(body.clone()) {
        // Messages longer than the encoder sends are cut on the way out, so only shorter ones
        // come back whole.
        if err.message.len() <= sluice_protocol::message::ERROR_MESSAGE_BYTES_MAX {
            let mut out = BytesMut::new();
            err.encode(kind, 0, &mut out);
            prop_assert_eq!(
                ErrorResponse::decode(out.split_off(HEADER_LEN).freeze()),
                Ok(err)
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(
        kind in kind_number(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        decode_everything(kind, &Bytes::from(body))?;
    }

    /// Random bytes rarely get past the first length field, so valid bodies are also damaged a
    /// few bytes at a time and decoded as every kind.
    #[test]
    fn damaged_bodies_never_panic(
        req in request(),
        resp in response(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut body in [
            encode_request(&req, 0).split_off(HEADER_LEN),
            encode_response(&resp, 0).split_off(HEADER_LEN),
        ] {
            if body.is_empty() {
                continue;
            }
            for (at, byte) in &edits {
                let i = at.index(body.len());
                body[i] = *byte;
            }
            let body = Bytes::from(body);
            for kind in 0..=21 {
                decode_everything(kind, &body)?;
                decode_everything(kind, &body.slice(..cut.index(body.len())))?;
            }
        }
    }

    #[test]
    fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40), max in any::<u32>()) {
        match FrameHeader::decode(&bytes, max) {
            Ok(Some(header)) => prop_assert_eq!(&header.encode()[..], &bytes[..HEADER_LEN]),
            Ok(None) => prop_assert!(bytes.len() < HEADER_LEN),
            Err(WireError::FrameTooLarge { len, max: m }) => prop_assert!(len > max && m == max),
            Err(WireError::UnknownFlags(f)) => prop_assert!(f & !3 != 0),
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
        }
    }
}

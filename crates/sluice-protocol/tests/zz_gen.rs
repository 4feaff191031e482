use bytes::{Bytes, BytesMut};
use sluice_protocol::message::*;

fn hex(b: &[u8]) -> String { b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ") }

fn seed(dir: &str, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(format!("/tmp/seeds/{dir}")).unwrap();
    std::fs::write(format!("/tmp/seeds/{dir}/{name}"), bytes).unwrap();
}

#[test]
fn generate() {
    let put = Request::Put { stream: "orders".into(), records: vec![
        PutRecord { partition_key: Bytes::from_static(b"user-1"), explicit_hash_key: None, value: Bytes::from_static(b"hello") },
        PutRecord { partition_key: Bytes::from_static(b"user-2"), explicit_hash_key: Some(42), value: Bytes::new() },
    ]};
    let mut out = BytesMut::new();
    put.encode(1, &mut out);
    println!("PUT {} bytes\n{}", out.len(), hex(&out));
    let resp = Response::Put(vec![PutAck { partition: 0, offset: 41 }, PutAck { partition: 3, offset: 7 }]);
    let mut out2 = BytesMut::new();
    resp.encode(1, &mut out2);
    println!("PUTRESP {} bytes\n{}", out2.len(), hex(&out2));
    let mut o = BytesMut::new();
    Request::DescribeStream { name: "orders".into() }.encode(2, &mut o);
    println!("DESCRIBE {}", hex(&o));
    let mut o = BytesMut::new();
    Request::Hello { version: 1 }.encode(0, &mut o);
    println!("HELLO {}", hex(&o));
    let mut o = BytesMut::new();
    Response::Hello { version: 1 }.encode(0, &mut o);
    println!("HELLORESP {}", hex(&o));
    let mut o = BytesMut::new();
    ErrorResponse::new(sluice_protocol::ErrorCode::StreamNotFound, "no stream orders").encode(5, 2, &mut o);
    println!("ERR {}", hex(&o));
    let mut o = BytesMut::new();
    Request::Read(ReadRequest { stream: "orders".into(), partition: 3, from: ReadFrom::Offset(7), max_records: 100, max_bytes: 1<<20, max_wait_ms: 500 }).encode(3, &mut o);
    println!("READ {}", hex(&o));
    let mut o = BytesMut::new();
    Response::Read(ReadResponse { start_offset: 0, end_offset: 9, next_offset: 8, records: vec![WireRecord{offset:7, timestamp_ms: 1_700_000_000_000, key: Bytes::from_static(b"user-2"), value: Bytes::new()}] }).encode(3, &mut o);
    println!("READRESP {}", hex(&o));
    let mut o = BytesMut::new();
    Request::CreateStream(CreateStream{ name: "orders".into(), partitions: 4, retention_ms: 86_400_000, partition_bytes_max: None, record_bytes_max: Some(1<<20)}).encode(4, &mut o);
    println!("CREATE {}", hex(&o));
    let mut o = BytesMut::new();
    Request::Split{ target: PartitionRef{stream:"orders".into(), partition: 0}, at: Some(1u128<<127)}.encode(4, &mut o);
    println!("SPLIT {}", hex(&o));
    let mut o = BytesMut::new();
    Request::CommitCheckpoint{ group: "billing".into(), target: PartitionRef{stream:"orders".into(), partition: 3}, offset: 300}.encode(4, &mut o);
    println!("COMMIT {}", hex(&o));
}

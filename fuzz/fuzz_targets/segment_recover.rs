//! Opens a log on a partition directory whose files hold arbitrary bytes.
//!
//! Input layout (all integers little-endian):
//!
//! ```text
//! flags u8 | clock_ms u64 | file*
//! file: kind u8 | base_offset u64 | len u16 | bytes[len]   (cut short at the end of the input)
//! ```
//!
//! `kind % 5` picks the file: 0 segment (`{base}.log`), 1 offset index, 2 time index, 3 the
//! clean-shutdown marker (base ignored), 4 a leftover temporary file (`{base}.log.tmp`). At most
//! sixteen files are read. Flag bits: 0 rolls segments at 256 bytes instead of 256 MiB; 1 writes an
//! index entry every 64 bytes instead of 4 KiB; 2 recomputes the CRC of every batch-shaped run of
//! bytes in the segment files, so that mutations inside a batch reach the checks behind the CRC;
//! 3 recomputes the marker's CRC for the same reason. The clock is fixed at `clock_ms`.
//!
//! Opening must never panic. When it succeeds, every offset from the start to the end must be
//! readable in order (reads may fail with a corruption error only where sealed data or a trusted
//! marker let damage in without a scan), an append must succeed, and what was readable before
//! must read the same after a clean close and a reopen. When crash recovery would keep the opened
//! log whole, the appended record must also be readable at once, after a power loss, and after the
//! close and reopen. Two constants below narrow the checks around known findings.
//!
//! With one segment and no marker that open could trust, the outcome is known exactly: recovery
//! must keep precisely the longest prefix of valid, continuing batches, cut the file there, and
//! serve exactly those records. A model below computes that prefix from the bytes independently.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sluice_log::format::batch::{self, BatchHeader};
use sluice_log::format::marker::{CleanMarker, MARKER_LEN};
use sluice_log::format::{
    CLEAN_MARKER_NAME, FILE_HEADER_LEN, FileKind, TEMP_SUFFIX, decode_file_header,
};
use sluice_log::io::sim::{CrashMode, SimFs};
use sluice_log::{Clock, Error, Log, LogOptions, ReadLimits, Record, StoredRecord};

const DIR: &str = "/fuzz/partition";
const MAX_FILES: usize = 16;

const FLAG_SMALL_SEGMENTS: u8 = 1 << 0;
const FLAG_SMALL_INDEX_INTERVAL: u8 = 1 << 1;
const FLAG_RESEAL_BATCHES: u8 = 1 << 2;
const FLAG_RESEAL_MARKER: u8 = 1 << 3;

#[derive(Debug)]
struct FixedClock(u64);

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Segment,
    OffsetIndex,
    TimeIndex,
    Marker,
    Temp,
}

#[derive(Debug)]
struct Scenario {
    flags: u8,
    clock_ms: u64,
    files: Vec<(Kind, u64, Vec<u8>)>,
}

fn parse(data: &[u8]) -> Option<Scenario> {
    let (&flags, rest) = data.split_first()?;
    let (clock, mut rest) = rest.split_first_chunk::<8>()?;
    let mut files = Vec::new();
    while files.len() < MAX_FILES {
        let Some((&kind, r)) = rest.split_first() else { break };
        let Some((base, r)) = r.split_first_chunk::<8>() else { break };
        let Some((len, r)) = r.split_first_chunk::<2>() else { break };
        let len = usize::from(u16::from_le_bytes(*len)).min(r.len());
        let (bytes, r) = r.split_at(len);
        rest = r;
        let kind = match kind % 5 {
            0 => Kind::Segment,
            1 => Kind::OffsetIndex,
            2 => Kind::TimeIndex,
            3 => Kind::Marker,
            _ => Kind::Temp,
        };
        files.push((kind, u64::from_le_bytes(*base), bytes.to_vec()));
    }
    Some(Scenario {
        flags,
        clock_ms: u64::from_le_bytes(*clock),
        files,
    })
}

fn path_of(kind: Kind, base: u64) -> PathBuf {
    let dir = Path::new(DIR);
    match kind {
        Kind::Segment => dir.join(FileKind::Segment.file_name(base)),
        Kind::OffsetIndex => dir.join(FileKind::OffsetIndex.file_name(base)),
        Kind::TimeIndex => dir.join(FileKind::TimeIndex.file_name(base)),
        Kind::Marker => dir.join(CLEAN_MARKER_NAME),
        Kind::Temp => dir.join(format!("{}.{TEMP_SUFFIX}", FileKind::Segment.file_name(base))),
    }
}

/// Rewrites the CRC of each run of bytes that has the shape of a batch, walking from the end of
/// the file header the way a scan does.
fn reseal_batches(bytes: &mut [u8]) {
    let mut position = FILE_HEADER_LEN;
    while position + batch::BATCH_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[position + 4..position + 8].try_into().unwrap()) as usize;
        if len < batch::BATCH_HEADER_LEN || len > bytes.len() - position {
            return;
        }
        let crc = crc32(&bytes[position + 4..position + len]);
        bytes[position..position + 4].copy_from_slice(&crc.to_le_bytes());
        position += len;
    }
}

fn reseal_marker(bytes: &mut [u8]) {
    if bytes.len() == MARKER_LEN {
        let crc = crc32(&bytes[..MARKER_LEN - 4]);
        bytes[MARKER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// CRC-32/ISO-HDLC computed bit by bit, independently of the crate under test.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A record as the model and the log see it: offset, timestamp, key, value.
type Rec = (u64, u64, Vec<u8>, Vec<u8>);

fn rec(r: &StoredRecord) -> Rec {
    (r.offset, r.timestamp_ms, r.key.to_vec(), r.value.to_vec())
}

/// What crash recovery of a lone active segment must produce.
#[derive(Debug)]
enum Expected {
    /// The header is damaged but a valid first batch follows it: open must refuse.
    Refuse,
    /// The log holds exactly these records and the segment file is cut to `valid_len`.
    Prefix { end: u64, valid_len: u64, records: Vec<Rec> },
}

fn model_lone_segment(base: u64, bytes: &[u8]) -> Expected {
    let header_ok = bytes.len() >= FILE_HEADER_LEN
        && decode_file_header(FileKind::Segment, base, &bytes[..FILE_HEADER_LEN]).is_ok();
    let empty = Expected::Prefix {
        end: base,
        valid_len: FILE_HEADER_LEN as u64,
        records: Vec::new(),
    };
    if !header_ok {
        let after = bytes.get(FILE_HEADER_LEN..).unwrap_or_default();
        let first_batch_valid = BatchHeader::decode(after).is_ok_and(|h| {
            (h.batch_len as usize) <= after.len()
                && batch::verify(&h, &after[..h.batch_len as usize]).is_ok()
                && h.base_offset == base
        });
        return if first_batch_valid { Expected::Refuse } else { empty };
    }
    let mut position = FILE_HEADER_LEN;
    let mut end = base;
    let mut max_ts = 0u64;
    let mut records = Vec::new();
    while position < bytes.len() {
        let Ok((h, batch_records)) = batch::decode(&bytes[position..]) else { break };
        let fits_32_bits = h.end_offset() - base <= u64::from(u32::MAX) && position <= u32::MAX as usize;
        if h.base_offset != end || !fits_32_bits || h.first_timestamp_ms < max_ts {
            break;
        }
        records.extend(
            batch_records
                .iter()
                .map(|r| (r.offset, r.timestamp_ms, r.key.to_vec(), r.value.to_vec())),
        );
        end = h.end_offset();
        max_ts = h.max_timestamp_ms;
        position += h.batch_len as usize;
    }
    Expected::Prefix {
        end,
        valid_len: position as u64,
        records,
    }
}

/// Reads the whole log from its start, checking that offsets are dense. Returns the records and
/// the offset and error that stopped the reading early, if any.
fn read_all(log: &Log) -> (Vec<Rec>, Option<(u64, Error)>) {
    let start = log.start_offset();
    let end = log.end_offset();
    let mut next = start;
    let mut out = Vec::new();
    while next < end {
        match log.read_from(next, ReadLimits { records_max: 64, bytes_max: 1 << 16 }) {
            Ok(records) => {
                assert!(
                    !records.is_empty(),
                    "read_from({next}) returned nothing before the end {end}"
                );
                for r in &records {
                    assert_eq!(r.offset, next, "offsets not dense: expected {next}, got {}", r.offset);
                    next += 1;
                    out.push(rec(r));
                }
            }
            Err(e) => {
                assert!(e.is_corruption(), "read_from({next}) failed with a non-corruption error: {e}");
                return (out, Some((next, e)));
            }
        }
    }
    assert_eq!(next, end, "read past the end");
    assert!(log.read_from(end, ReadLimits::default()).is_ok_and(|r| r.is_empty()));
    (out, None)
}

fn options(s: &Scenario) -> LogOptions {
    let mut o = LogOptions::default().clock(Arc::new(FixedClock(s.clock_ms)));
    if s.flags & FLAG_SMALL_SEGMENTS != 0 {
        o = o.segment_bytes_max(256);
    }
    if s.flags & FLAG_SMALL_INDEX_INTERVAL != 0 {
        o = o.index_interval_bytes(64);
    }
    o
}

fuzz_target!(|data: &[u8]| {
    let Some(mut scenario) = parse(data) else { return };
    for (kind, _, bytes) in &mut scenario.files {
        match kind {
            Kind::Segment if scenario.flags & FLAG_RESEAL_BATCHES != 0 => reseal_batches(bytes),
            Kind::Marker if scenario.flags & FLAG_RESEAL_MARKER != 0 => reseal_marker(bytes),
            _ => {}
        }
    }

    let fs = SimFs::new();
    for (kind, base, bytes) in &scenario.files {
        fs.set_contents(&path_of(*kind, *base), bytes.clone());
    }

    // The exact model applies when open can only take the crash path on a single segment.
    let segments: Vec<(u64, Vec<u8>)> = fs
        .file_names()
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            match FileKind::parse_file_name(name)? {
                (FileKind::Segment, base) => Some((base, fs.contents(p)?)),
                _ => None,
            }
        })
        .collect();
    let marker = fs
        .contents(&Path::new(DIR).join(CLEAN_MARKER_NAME))
        .and_then(|b| CleanMarker::decode(&b).ok());
    let expected = match segments.as_slice() {
        [(base, bytes)] if marker.is_none_or(|m| m.active_base_offset != *base) => {
            Some((*base, model_lone_segment(*base, bytes)))
        }
        _ => None,
    };

    let log = match Log::open_with_fs(Arc::new(fs.clone()), DIR, options(&scenario)) {
        Ok(log) => log,
        Err(e) => {
            assert!(e.is_corruption(), "open failed with a non-corruption error: {e}");
            assert!(
                expected.as_ref().is_none_or(|(_, x)| matches!(x, Expected::Refuse)),
                "open refused a lone segment that has a valid prefix: {e}"
            );
            return;
        }
    };

    let (before, read_error) = read_all(&log);
    if let Some((base, expected)) = &expected {
        let Expected::Prefix { end, valid_len, records } = expected else {
            panic!("open accepted a lone segment whose header is damaged under a valid batch");
        };
        assert!(read_error.is_none(), "reading a recovered active segment failed: {read_error:?}");
        assert_eq!(log.start_offset(), *base);
        assert_eq!(log.end_offset(), *end, "recovery kept a different prefix than the model");
        assert_eq!(&before, records, "recovered records differ from the valid prefix");
        let on_disk = fs.contents(&path_of(Kind::Segment, *base)).map(|b| b.len() as u64);
        assert_eq!(on_disk, Some(*valid_len), "segment not cut at the end of the valid prefix");
    }

    let start = log.start_offset();
    let end = log.end_offset();
    let active_base = fs
        .file_names()
        .iter()
        .filter_map(|p| match FileKind::parse_file_name(p.file_name()?.to_str()?)? {
            (FileKind::Segment, base) => Some(base),
            _ => None,
        })
        .max()
        .expect("an open log has an active segment");

    // Whatever open accepted, a power loss straight afterwards must keep: appends acknowledged
    // from here on may only ever sit behind data that crash recovery keeps whole.
    let image = fs.crash_image(CrashMode::DropUnsynced, 0);
    let reopened = Log::open_with_fs(Arc::new(image), DIR, options(&scenario))
        .unwrap_or_else(|e| panic!("a power loss right after open makes the log unopenable: {e}"));
    assert_eq!(
        (reopened.start_offset(), reopened.end_offset()),
        (start, end),
        "a power loss right after open loses part of the opened log"
    );
    drop(reopened);
    // Crash recovery accepted every batch of the active segment, so all of it must read.
    if let Some((offset, e)) = &read_error {
        assert!(*offset < active_base, "reading the active segment at {offset} failed: {e}");
    }

    let key = b"fuzz-key".as_slice();
    let value = b"fuzz-value".as_slice();
    let appended = match log.append(&[Record::new(key, value)]) {
        Ok(offset) => offset,
        // With every offset used up, refusing the append is the right answer.
        Err(_) if end == u64::MAX => return,
        Err(e) => panic!("append after a successful open failed: {e}"),
    };
    assert_eq!(appended, end, "append did not take the next offset");
    assert!(appended < u64::MAX, "append took offset u64::MAX, past the last representable end");
    let check_appended = |log: &Log, when: &str| {
        assert_eq!(log.end_offset(), appended + 1, "{when}: end offset");
        let got = log
            .read_from(appended, ReadLimits::default())
            .unwrap_or_else(|e| panic!("{when}: reading the appended record failed: {e}"));
        let first = got.first().unwrap_or_else(|| panic!("{when}: the appended record is missing"));
        assert_eq!(
            (first.offset, first.key.as_ref(), first.value.as_ref()),
            (appended, key, value),
            "{when}: wrong appended record"
        );
    };
    check_appended(&log, "after append");

    // An acknowledged append survives a power loss.
    let image = fs.crash_image(CrashMode::DropUnsynced, 0);
    let crashed = Log::open_with_fs(Arc::new(image), DIR, options(&scenario))
        .unwrap_or_else(|e| panic!("reopen after a power loss failed: {e}"));
    check_appended(&crashed, "after a power loss");

    log.close().unwrap_or_else(|e| panic!("close failed: {e}"));
    let reopened = Log::open_with_fs(Arc::new(fs.clone()), DIR, options(&scenario))
        .unwrap_or_else(|e| panic!("reopen after a clean close failed: {e}"));
    assert_eq!(reopened.start_offset(), start, "start offset moved across close and reopen");
    check_appended(&reopened, "after close and reopen");
    let (after, after_error) = read_all(&reopened);
    assert!(
        after.len() >= before.len(),
        "fewer records readable after reopen ({} < {}): {after_error:?}",
        after.len(),
        before.len()
    );
    assert_eq!(&after[..before.len()], &before[..], "records changed across close and reopen");
    if read_error.is_none() {
        assert!(after_error.is_none(), "reading failed only after reopen: {after_error:?}");
        assert_eq!(after.len() as u64, appended + 1 - start);
    }
    reopened.close().unwrap_or_else(|e| panic!("second close failed: {e}"));
});

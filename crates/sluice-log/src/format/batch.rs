//! Record batches: the unit of append, of CRC protection and of recovery.
//!
//! ```text
//! batch header (40 B), all integers little-endian:
//!   0  crc32              u32   CRC-32/ISO-HDLC (crc32fast) of bytes [4, batch_len)
//!   4  batch_len          u32   the whole batch in bytes, this header included
//!   8  magic              [2]   "SB"
//!  10  version            u16   1
//!  12  record_count       u32   >= 1
//!  16  base_offset        u64   offset of the first record
//!  24  first_timestamp_ms u64   timestamp of the first record
//!  32  max_timestamp_ms   u64   largest record timestamp in the batch
//! then record_count records (14 B + key + value each):
//!   0  offset_delta       u32   record offset - base_offset; always the record's index
//!   4  timestamp_delta    u32   record timestamp - first_timestamp_ms
//!   8  key_len            u16
//!  10  value_len          u32
//!  14  key [key_len] | value [value_len]
//! ```
//!
//! The CRC sits first so that it can cover everything a reader trusts, the length included. The
//! records part of a batch does not depend on its base offset or timestamp (deltas only), so the
//! expensive part of encoding and checksumming can happen before the log assigns offsets; only the
//! header is filled in under the log's lock, and its CRC is combined with the records' CRC.

use bytes::Bytes;

use super::{CorruptionKind, FORMAT_VERSION, Reader};

/// Magic of a record batch.
pub const BATCH_MAGIC: [u8; 2] = *b"SB";
/// Length of the batch header.
pub const BATCH_HEADER_LEN: usize = 40;
/// Length of a record's fixed fields.
pub const RECORD_HEADER_LEN: usize = 14;
/// The largest batch this format writes or reads. A larger length read from disk is corruption,
/// and bounds the allocation a damaged length could otherwise cause.
pub const BATCH_BYTES_MAX: u32 = 64 << 20;
/// The largest key a record may carry (its length is a `u16`).
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;

const CRC_OFFSET: usize = 0;
const LEN_OFFSET: usize = CRC_OFFSET + 4;
const MAGIC_OFFSET: usize = LEN_OFFSET + 4;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 2;
const COUNT_OFFSET: usize = VERSION_OFFSET + 2;
const BASE_OFFSET_OFFSET: usize = COUNT_OFFSET + 4;
const FIRST_TS_OFFSET: usize = BASE_OFFSET_OFFSET + 8;
const MAX_TS_OFFSET: usize = FIRST_TS_OFFSET + 8;
const _: () = assert!(MAX_TS_OFFSET + 8 == BATCH_HEADER_LEN);
const _: () = assert!(RECORD_HEADER_LEN == 4 + 4 + 2 + 4);

/// The decoded fixed fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Stored CRC-32 of bytes `[4, batch_len)`.
    pub crc: u32,
    /// Length of the whole batch.
    pub batch_len: u32,
    /// Number of records, at least one.
    pub record_count: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Timestamp of the first record, in ms since the Unix epoch.
    pub first_timestamp_ms: u64,
    /// Largest record timestamp, in ms since the Unix epoch.
    pub max_timestamp_ms: u64,
}

impl BatchHeader {
    /// One past the offset of the last record.
    pub fn end_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count))
    }

    /// Decodes and checks the 40-byte header at the start of `bytes`. The CRC is not checked
    /// here (that needs the whole batch); see [`verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptionKind> {
        let mut r = Reader::new(bytes);
        let crc = r.u32()?;
        let batch_len = r.u32()?;
        let magic = r.array::<2>()?;
        if magic != BATCH_MAGIC {
            let mut expected = [0u8; 4];
            let mut found = [0u8; 4];
            expected[..2].copy_from_slice(&BATCH_MAGIC);
            found[..2].copy_from_slice(&magic);
            return Err(CorruptionKind::BadMagic { expected, found });
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(CorruptionKind::UnsupportedVersion(version));
        }
        if (batch_len as usize) < BATCH_HEADER_LEN + RECORD_HEADER_LEN
            || batch_len > BATCH_BYTES_MAX
        {
            return Err(CorruptionKind::BadBatchLength(batch_len));
        }
        let record_count = r.u32()?;
        if record_count == 0 {
            return Err(CorruptionKind::EmptyBatch);
        }
        let base_offset = r.u64()?;
        if base_offset.checked_add(u64::from(record_count)).is_none() {
            return Err(CorruptionKind::OffsetOverflow);
        }
        let first_timestamp_ms = r.u64()?;
        let max_timestamp_ms = r.u64()?;
        if max_timestamp_ms < first_timestamp_ms {
            return Err(CorruptionKind::BadTimestamp { index: u32::MAX });
        }
        Ok(Self {
            crc,
            batch_len,
            record_count,
            base_offset,
            first_timestamp_ms,
            max_timestamp_ms,
        })
    }
}

/// Checks the CRC of a whole batch (`bytes` is exactly `batch_len` long).
pub fn verify(header: &BatchHeader, bytes: &[u8]) -> Result<(), CorruptionKind> {
    let covered = bytes.get(LEN_OFFSET..).ok_or(CorruptionKind::Truncated {
        need: BATCH_HEADER_LEN as u64,
        have: bytes.len() as u64,
    })?;
    let actual = crc32fast::hash(covered);
    if actual != header.crc {
        return Err(CorruptionKind::ChecksumMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(())
}

/// One record of a decoded batch, borrowing the batch's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Offset of the record.
    pub offset: u64,
    /// Timestamp of the record, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Partition key.
    pub key: &'a [u8],
    /// Value.
    pub value: &'a [u8],
}

/// Decodes one whole batch from the start of `bytes`: header, CRC and every record. Returns the
/// header and the records; the batch occupies `header.batch_len` bytes of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<(BatchHeader, Vec<RecordRef<'_>>), CorruptionKind> {
    let header = BatchHeader::decode(bytes)?;
    let batch = bytes
        .get(..header.batch_len as usize)
        .ok_or(CorruptionKind::Truncated {
            need: u64::from(header.batch_len),
            have: bytes.len() as u64,
        })?;
    verify(&header, batch)?;
    let mut records = Vec::with_capacity(header.record_count.min(4096) as usize);
    for_each_record(&header, batch, |r| {
        records.push(r);
    })?;
    Ok((header, records))
}

/// Walks the records of a batch whose CRC has been verified, checking the layout and calling
/// `f` for each. `batch` is exactly the batch's bytes.
///
/// Every framed put and every read of the log walks its records here, so the walk checks the
/// bounds once per record header rather than once per field; a header cut short by the end of
/// the batch is decoded field by field ([`short_record_header`]), so that its error is the one
/// a field-by-field walk would give.
pub fn for_each_record<'a>(
    header: &BatchHeader,
    batch: &'a [u8],
    mut f: impl FnMut(RecordRef<'a>),
) -> Result<(), CorruptionKind> {
    let mut rest = batch
        .get(BATCH_HEADER_LEN..)
        .ok_or(CorruptionKind::Truncated {
            need: BATCH_HEADER_LEN as u64,
            have: batch.len() as u64,
        })?;
    for index in 0..header.record_count {
        let Some((fixed, tail)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Err(short_record_header(header, rest, index));
        };
        let [o0, o1, o2, o3, t0, t1, t2, t3, k0, k1, v0, v1, v2, v3] = *fixed;
        let offset_delta = u32::from_le_bytes([o0, o1, o2, o3]);
        if offset_delta != index {
            return Err(CorruptionKind::BadOffsetDelta {
                index,
                found: offset_delta,
            });
        }
        let timestamp_ms = record_timestamp(header, u32::from_le_bytes([t0, t1, t2, t3]), index)?;
        let key_len = usize::from(u16::from_le_bytes([k0, k1]));
        let value_len = u32::from_le_bytes([v0, v1, v2, v3]) as usize;
        let layout = CorruptionKind::BadRecordLayout { index };
        if value_len > tail.len() || key_len > tail.len() - value_len {
            return Err(layout);
        }
        let (key, tail) = tail.split_at(key_len);
        let (value, tail) = tail.split_at(value_len);
        rest = tail;
        f(RecordRef {
            offset: header.base_offset.saturating_add(u64::from(index)),
            timestamp_ms,
            key,
            value,
        });
    }
    if !rest.is_empty() {
        return Err(CorruptionKind::BadRecordLayout {
            index: header.record_count,
        });
    }
    Ok(())
}

/// The timestamp of record `index` from its delta, which must keep it within the batch's range.
#[inline]
fn record_timestamp(header: &BatchHeader, delta: u32, index: u32) -> Result<u64, CorruptionKind> {
    header
        .first_timestamp_ms
        .checked_add(u64::from(delta))
        .filter(|ts| *ts <= header.max_timestamp_ms)
        .ok_or(CorruptionKind::BadTimestamp { index })
}

/// The error for record `index` whose fixed fields are cut short by the end of the batch: the
/// fields that are there are still checked in order, as a field-by-field walk would.
#[cold]
fn short_record_header(header: &BatchHeader, rest: &[u8], index: u32) -> CorruptionKind {
    let layout = CorruptionKind::BadRecordLayout { index };
    let mut r = Reader::new(rest);
    let Ok(offset_delta) = r.u32() else {
        return layout;
    };
    if offset_delta != index {
        return CorruptionKind::BadOffsetDelta {
            index,
            found: offset_delta,
        };
    }
    let Ok(timestamp_delta) = r.u32() else {
        return layout;
    };
    match record_timestamp(header, timestamp_delta, index) {
        Err(e) => e,
        Ok(_) => layout,
    }
}

/// A record read back from the log. Key and value share the batch's buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Offset of the record in its partition.
    pub offset: u64,
    /// Arrival timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Partition key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
}

impl StoredRecord {
    /// An owned copy of `r` that shares the buffer of `batch`, the batch `r` was decoded from
    /// (no copy of the key or value).
    pub fn share(batch: &Bytes, r: &RecordRef<'_>) -> Self {
        // The slices point into `batch`; turn them into ranges of it to share the buffer.
        let base = batch.as_ptr() as usize;
        let key_start = r.key.as_ptr() as usize - base;
        let value_start = r.value.as_ptr() as usize - base;
        Self {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: batch.slice(key_start..key_start + r.key.len()),
            value: batch.slice(value_start..value_start + r.value.len()),
        }
    }
}

/// Decodes the records of a verified batch into owned records that share `batch`'s buffer.
pub fn records_of(
    header: &BatchHeader,
    batch: &Bytes,
) -> Result<Vec<StoredRecord>, CorruptionKind> {
    let mut out = Vec::with_capacity(header.record_count.min(4096) as usize);
    for_each_record(header, batch, |r| out.push(StoredRecord::share(batch, &r)))?;
    Ok(out)
}

/// A batch whose records are encoded and checksummed but whose header (base offset and
/// timestamps) is not yet filled in. Built outside the log's lock; finished under it.
///
/// It is built either here from records ([`PreparedBatch::new`]) or from a batch a producer
/// framed itself ([`PreparedBatch::framed`]), whose buffer (`B`, any mutable byte buffer such as
/// a slice of the request it came in) becomes the batch written to disk without a copy.
#[derive(Debug)]
pub struct PreparedBatch<B = Vec<u8>> {
    buf: B,
    records_crc: crc32fast::Hasher,
    record_count: u32,
    sizes: RecordSizes,
}

/// Sizes of a batch's records, gathered while the batch is built or checked, so that limits on
/// keys and records can be checked without walking the records a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSizes {
    /// The shortest key, in bytes.
    pub key_min: usize,
    /// The longest key, in bytes.
    pub key_max: usize,
    /// The largest key plus value of a single record, in bytes.
    pub record_max: usize,
    /// Key and value bytes of all the records together.
    pub total: u64,
}

impl RecordSizes {
    /// Before the first record; a batch always holds at least one, which replaces `key_min`.
    const NONE: Self = Self {
        key_min: usize::MAX,
        key_max: 0,
        record_max: 0,
        total: 0,
    };

    #[inline]
    fn add(&mut self, key: usize, value: usize) {
        self.key_min = self.key_min.min(key);
        self.key_max = self.key_max.max(key);
        self.record_max = self.record_max.max(key + value);
        self.total += (key + value) as u64;
    }
}

/// Why a producer-framed batch is refused (see [`PreparedBatch::framed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramedError {
    /// The header or the records do not follow the batch layout, or the records' CRC does not
    /// match the one sent with them.
    #[error("{0}")]
    Layout(CorruptionKind),
    /// The header's length is not the length of the bytes sent.
    #[error("the batch header says {declared} bytes but the batch is {actual}")]
    LengthMismatch {
        /// `batch_len` in the header.
        declared: u32,
        /// Bytes in the buffer.
        actual: usize,
    },
    /// The producer filled in a field the log owns.
    #[error(
        "the base offset, the timestamps and the CRC of a framed batch are set by the log and must be zero"
    )]
    ServerFieldsSet,
}

/// Why a set of records cannot form a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// No records.
    Empty,
    /// A key longer than [`KEY_BYTES_MAX`].
    KeyTooLong {
        /// Index of the record.
        index: usize,
        /// Its key length.
        len: usize,
    },
    /// The batch would exceed [`BATCH_BYTES_MAX`].
    BatchTooLarge {
        /// Encoded size the records need.
        bytes: u64,
    },
}

/// Bytes a batch of these records occupies on disk.
pub fn encoded_len<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    records
        .into_iter()
        .fold(BATCH_HEADER_LEN as u64, |acc, (k, v)| {
            acc + (RECORD_HEADER_LEN + k.len() + v.len()) as u64
        })
}

impl PreparedBatch<Vec<u8>> {
    /// Encodes records `(key, value)` that all share one timestamp (the usual case: the log
    /// stamps a batch with its arrival time).
    pub fn new<'a, I>(records: I) -> Result<Self, EncodeError>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
        I::IntoIter: Clone,
    {
        let iter = records.into_iter();
        let total = encoded_len(iter.clone());
        if total > u64::from(BATCH_BYTES_MAX) {
            return Err(EncodeError::BatchTooLarge { bytes: total });
        }
        // `total` fits in u32 (checked just above), so this cannot truncate.
        let total = total as usize;
        let mut buf = Vec::with_capacity(total);
        buf.resize(BATCH_HEADER_LEN, 0);
        let mut count: u32 = 0;
        let mut sizes = RecordSizes::NONE;
        for (index, (key, value)) in iter.enumerate() {
            if key.len() > KEY_BYTES_MAX {
                return Err(EncodeError::KeyTooLong {
                    index,
                    len: key.len(),
                });
            }
            buf.extend_from_slice(&count.to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.extend_from_slice(&(key.len() as u16).to_le_bytes());
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(key);
            buf.extend_from_slice(value);
            sizes.add(key.len(), value.len());
            count += 1;
        }
        if count == 0 {
            return Err(EncodeError::Empty);
        }
        debug_assert_eq!(buf.len(), total);
        let mut records_crc = crc32fast::Hasher::new();
        records_crc.update(buf.get(BATCH_HEADER_LEN..).unwrap_or_default());
        Ok(Self {
            buf,
            records_crc,
            record_count: count,
            sizes,
        })
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> PreparedBatch<B> {
    /// Takes a batch a producer framed itself: the whole batch in this module's layout, with
    /// the base offset, both timestamps and the CRC left zero (the log fills them in when it
    /// writes the batch), every `offset_delta` equal to the record's index and every
    /// `timestamp_delta` zero, plus `records_crc`, the CRC-32 of the bytes after the header.
    ///
    /// Everything is checked before the batch is accepted: the header, the records' layout, and
    /// the records' CRC, computed here over the bytes as received. The records are then never
    /// copied; [`PreparedBatch::finish`] writes the header into the same buffer.
    pub fn framed(buf: B, records_crc: u32) -> Result<Self, FramedError> {
        let bytes = buf.as_ref();
        let header = BatchHeader::decode(bytes).map_err(FramedError::Layout)?;
        if header.batch_len as usize != bytes.len() {
            return Err(FramedError::LengthMismatch {
                declared: header.batch_len,
                actual: bytes.len(),
            });
        }
        if header.crc != 0
            || header.base_offset != 0
            || header.first_timestamp_ms != 0
            || header.max_timestamp_ms != 0
        {
            return Err(FramedError::ServerFieldsSet);
        }
        let records = bytes.get(BATCH_HEADER_LEN..).unwrap_or_default();
        let mut crc = crc32fast::Hasher::new();
        crc.update(records);
        let actual = crc.clone().finalize();
        if actual != records_crc {
            return Err(FramedError::Layout(CorruptionKind::ChecksumMismatch {
                expected: records_crc,
                actual,
            }));
        }
        // With both timestamps zero, the walk also refuses any non-zero timestamp delta.
        let mut sizes = RecordSizes::NONE;
        for_each_record(&header, bytes, |r| sizes.add(r.key.len(), r.value.len()))
            .map_err(FramedError::Layout)?;
        Ok(Self {
            record_count: header.record_count,
            buf,
            records_crc: crc,
            sizes,
        })
    }

    /// Calls `f` with each record's key and value, in order.
    pub fn for_each_record(&self, mut f: impl FnMut(&[u8], &[u8])) {
        let bytes = self.buf.as_ref();
        // Only a framed batch has a header yet, and its layout was checked when it was built;
        // a batch built by `new` walks the records from a header made for the purpose.
        let header = BatchHeader::decode(bytes).unwrap_or(BatchHeader {
            crc: 0,
            batch_len: bytes.len() as u32,
            record_count: self.record_count,
            base_offset: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
        });
        let _ = for_each_record(&header, bytes, |r| f(r.key, r.value));
    }

    /// Number of records in the batch.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Sizes of its keys and records, gathered when it was built or checked.
    pub fn sizes(&self) -> RecordSizes {
        self.sizes
    }

    /// Encoded size of the whole batch.
    pub fn len(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// Always false: a prepared batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Fills in the header for a base offset and a timestamp shared by every record, computes
    /// the CRC, and returns the finished header and the bytes to write.
    pub fn finish(&mut self, base_offset: u64, timestamp_ms: u64) -> (BatchHeader, &[u8]) {
        let batch_len = self.len() as u32;
        let mut header = [0u8; BATCH_HEADER_LEN];
        header[LEN_OFFSET..MAGIC_OFFSET].copy_from_slice(&batch_len.to_le_bytes());
        header[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&BATCH_MAGIC);
        header[VERSION_OFFSET..COUNT_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[COUNT_OFFSET..BASE_OFFSET_OFFSET].copy_from_slice(&self.record_count.to_le_bytes());
        header[BASE_OFFSET_OFFSET..FIRST_TS_OFFSET].copy_from_slice(&base_offset.to_le_bytes());
        header[FIRST_TS_OFFSET..MAX_TS_OFFSET].copy_from_slice(&timestamp_ms.to_le_bytes());
        header[MAX_TS_OFFSET..].copy_from_slice(&timestamp_ms.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[LEN_OFFSET..]);
        crc.combine(&self.records_crc);
        let crc = crc.finalize();
        header[CRC_OFFSET..LEN_OFFSET].copy_from_slice(&crc.to_le_bytes());
        if let Some(head) = self.buf.as_mut().get_mut(..BATCH_HEADER_LEN) {
            head.copy_from_slice(&header);
        }
        let decoded = BatchHeader {
            crc,
            batch_len,
            record_count: self.record_count,
            base_offset,
            first_timestamp_ms: timestamp_ms,
            max_timestamp_ms: timestamp_ms,
        };
        (decoded, self.buf.as_ref())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn encode(records: &[(&[u8], &[u8])], base: u64, ts: u64) -> Vec<u8> {
        let mut p = PreparedBatch::new(records.iter().copied()).unwrap();
        p.finish(base, ts).1.to_vec()
    }

    /// The example batch of docs/format.md, byte for byte.
    #[test]
    fn golden_bytes_match_the_format_document() {
        let bytes = encode(&[(b"k1", b"hello"), (b"k2", b"")], 5, 1_700_000_000_000);
        let expected_hex = "\
            5473dc99 4d000000 5342 0100 02000000 0500000000000000 \
            0068e5cf8b010000 0068e5cf8b010000 \
            00000000 00000000 0200 05000000 6b31 68656c6c6f \
            01000000 00000000 0200 00000000 6b32";
        let expected: Vec<u8> = expected_hex
            .split_whitespace()
            .flat_map(|w| {
                (0..w.len())
                    .step_by(2)
                    .map(move |i| u8::from_str_radix(&w[i..i + 2], 16).unwrap())
            })
            .collect();
        assert_eq!(hex(&bytes), hex(&expected));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn round_trip() {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..50u32)
            .map(|i| {
                (
                    format!("key-{i}").into_bytes(),
                    vec![i as u8; i as usize * 7],
                )
            })
            .collect();
        let bytes = encode(
            &records
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect::<Vec<_>>(),
            1000,
            77,
        );
        let (header, decoded) = decode(&bytes).unwrap();
        assert_eq!(header.base_offset, 1000);
        assert_eq!(header.record_count, 50);
        assert_eq!(header.end_offset(), 1050);
        assert_eq!(header.batch_len as usize, bytes.len());
        for (i, (r, (k, v))) in decoded.iter().zip(&records).enumerate() {
            assert_eq!(r.offset, 1000 + i as u64);
            assert_eq!(r.timestamp_ms, 77);
            assert_eq!(r.key, k.as_slice());
            assert_eq!(r.value, v.as_slice());
        }
        let owned = records_of(&header, &Bytes::from(bytes.clone())).unwrap();
        assert_eq!(owned.len(), 50);
        assert_eq!(owned[3].key.as_ref(), b"key-3");
        assert_eq!(owned[3].value.as_ref(), &[3u8; 21][..]);
    }

    /// A batch as a producer frames it: the log's own encoding with the header's log-owned
    /// fields zeroed, and the records' CRC.
    fn framed_bytes(records: &[(&[u8], &[u8])]) -> (Vec<u8>, u32) {
        let p = PreparedBatch::new(records.iter().copied()).unwrap();
        let mut buf = p.buf.clone();
        let len = buf.len() as u32;
        buf[LEN_OFFSET..MAGIC_OFFSET].copy_from_slice(&len.to_le_bytes());
        buf[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&BATCH_MAGIC);
        buf[VERSION_OFFSET..COUNT_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf[COUNT_OFFSET..BASE_OFFSET_OFFSET].copy_from_slice(&p.record_count.to_le_bytes());
        let crc = crc32fast::hash(&buf[BATCH_HEADER_LEN..]);
        (buf, crc)
    }

    #[test]
    fn a_framed_batch_finishes_to_the_same_bytes_as_one_built_here() {
        let records: [(&[u8], &[u8]); 3] = [(b"k1", b"hello"), (b"k2", b""), (b"k3", b"xyz")];
        let (buf, crc) = framed_bytes(&records);
        let mut framed = PreparedBatch::framed(buf, crc).unwrap();
        assert_eq!(framed.record_count(), 3);
        // Sizes gathered by the check, as by the encoder: keys of 2 bytes, "k1hello" the
        // largest record, 14 key and value bytes in all.
        let sizes = RecordSizes {
            key_min: 2,
            key_max: 2,
            record_max: 7,
            total: 14,
        };
        assert_eq!(framed.sizes(), sizes);
        assert_eq!(
            PreparedBatch::new(records.iter().copied()).unwrap().sizes(),
            sizes
        );
        let mut seen = Vec::new();
        framed.for_each_record(|k, v| seen.push((k.to_vec(), v.to_vec())));
        let expected: Vec<_> = records
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(seen, expected);
        let (h1, b1) = framed.finish(41, 1_700_000_000_000);
        let b1 = b1.to_vec();
        assert_eq!(b1, encode(&records, 41, 1_700_000_000_000));
        assert_eq!(decode(&b1).unwrap().0, h1);
    }

    #[test]
    fn framed_batches_with_any_fault_are_refused() {
        let records: [(&[u8], &[u8]); 2] = [(b"k1", b"hello"), (b"k2", b"world")];
        let (good, crc) = framed_bytes(&records);
        assert!(PreparedBatch::framed(good.clone(), crc).is_ok());

        // A flipped bit in the records, or a CRC that does not match them.
        let mut b = good.clone();
        b[BATCH_HEADER_LEN + 20] ^= 1;
        assert!(matches!(
            PreparedBatch::framed(b, crc),
            Err(FramedError::Layout(CorruptionKind::ChecksumMismatch { .. }))
        ));
        assert!(matches!(
            PreparedBatch::framed(good.clone(), crc ^ 1),
            Err(FramedError::Layout(CorruptionKind::ChecksumMismatch { .. }))
        ));
        // Fields the log owns, set by the producer.
        for at in [
            CRC_OFFSET,
            BASE_OFFSET_OFFSET,
            FIRST_TS_OFFSET,
            MAX_TS_OFFSET,
        ] {
            let mut b = good.clone();
            b[at] = 1;
            if at == FIRST_TS_OFFSET {
                b[MAX_TS_OFFSET] = 1;
            }
            assert_eq!(
                PreparedBatch::framed(b, crc).unwrap_err(),
                FramedError::ServerFieldsSet,
                "field at {at}"
            );
        }
        // A header length that is not the buffer's, either way.
        let mut short = good.clone();
        short.pop();
        assert!(matches!(
            PreparedBatch::framed(short, crc),
            Err(FramedError::LengthMismatch { .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            PreparedBatch::framed(long, crc),
            Err(FramedError::LengthMismatch { .. })
        ));
        // A bad magic, and a record count the records do not fill.
        let mut b = good.clone();
        b[MAGIC_OFFSET] = b'X';
        assert!(matches!(
            PreparedBatch::framed(b, crc),
            Err(FramedError::Layout(CorruptionKind::BadMagic { .. }))
        ));
        let mut b = good.clone();
        b[COUNT_OFFSET] = 3;
        assert!(matches!(
            PreparedBatch::framed(b, crc),
            Err(FramedError::Layout(CorruptionKind::BadRecordLayout { .. }))
        ));
        // A record timestamp delta (the log stamps a batch with one arrival time), and an
        // offset delta out of order, both under a CRC that matches.
        for (at, what) in [(4usize, "timestamp"), (0, "offset")] {
            let mut b = good.clone();
            b[BATCH_HEADER_LEN + at] = 9;
            let crc = crc32fast::hash(&b[BATCH_HEADER_LEN..]);
            assert!(
                matches!(
                    PreparedBatch::framed(b, crc),
                    Err(FramedError::Layout(
                        CorruptionKind::BadTimestamp { .. } | CorruptionKind::BadOffsetDelta { .. }
                    ))
                ),
                "{what} delta"
            );
        }
    }

    #[test]
    fn encode_rejects_bad_input() {
        assert_eq!(
            PreparedBatch::new(std::iter::empty()).unwrap_err(),
            EncodeError::Empty
        );
        let long_key = vec![0u8; KEY_BYTES_MAX + 1];
        assert_eq!(
            PreparedBatch::new([(&b"ok"[..], &b""[..]), (&long_key[..], &b""[..])]).unwrap_err(),
            EncodeError::KeyTooLong {
                index: 1,
                len: KEY_BYTES_MAX + 1
            }
        );
        let big = vec![0u8; BATCH_BYTES_MAX as usize];
        assert!(matches!(
            PreparedBatch::new([(&b"k"[..], &big[..])]).unwrap_err(),
            EncodeError::BatchTooLarge { .. }
        ));
    }

    fn good() -> Vec<u8> {
        encode(&[(b"a", b"xyz"), (b"b", b"")], 9, 100)
    }

    /// Rewrites the CRC after tampering so that the structural checks behind it are reached.
    fn reseal(mut b: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn every_bad_input_maps_to_its_error() {
        let g = good();
        assert_eq!(
            decode(&g[..10]).unwrap_err(),
            CorruptionKind::Truncated { need: 12, have: 10 }
        );
        let mut m = g.clone();
        m[8] = b'X';
        assert_eq!(
            decode(&m).unwrap_err(),
            CorruptionKind::BadMagic {
                expected: *b"SB\0\0",
                found: *b"XB\0\0"
            }
        );
        let mut v = g.clone();
        v[10] = 2;
        assert_eq!(
            decode(&v).unwrap_err(),
            CorruptionKind::UnsupportedVersion(2)
        );
        let mut l = g.clone();
        l[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode(&l).unwrap_err(), CorruptionKind::BadBatchLength(3));
        let mut l = g.clone();
        l[4..8].copy_from_slice(&(BATCH_BYTES_MAX + 1).to_le_bytes());
        assert_eq!(
            decode(&l).unwrap_err(),
            CorruptionKind::BadBatchLength(BATCH_BYTES_MAX + 1)
        );
        assert_eq!(
            decode(&g[..g.len() - 1]).unwrap_err(),
            CorruptionKind::Truncated {
                need: g.len() as u64,
                have: g.len() as u64 - 1
            }
        );
        let mut c = g.clone();
        c[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&c).unwrap_err(), CorruptionKind::EmptyBatch);
        let mut t = g.clone();
        t[32..40].copy_from_slice(&99u64.to_le_bytes());
        assert_eq!(
            decode(&t).unwrap_err(),
            CorruptionKind::BadTimestamp { index: u32::MAX }
        );
        let mut o = g.clone();
        o[16..24].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert_eq!(decode(&o).unwrap_err(), CorruptionKind::OffsetOverflow);
        let mut flipped = g.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(matches!(
            decode(&flipped).unwrap_err(),
            CorruptionKind::ChecksumMismatch { .. }
        ));
        // Structural errors behind a valid CRC.
        let mut d = g.clone();
        d[40..44].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            decode(&reseal(d)).unwrap_err(),
            CorruptionKind::BadOffsetDelta { index: 0, found: 1 }
        );
        let mut ts = g.clone();
        ts[44..48].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            decode(&reseal(ts)).unwrap_err(),
            CorruptionKind::BadTimestamp { index: 0 }
        );
        let mut vl = g.clone();
        vl[50..54].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            decode(&reseal(vl)).unwrap_err(),
            CorruptionKind::BadRecordLayout { index: 0 }
        );
        let mut count = g.clone();
        count[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            decode(&reseal(count)).unwrap_err(),
            CorruptionKind::BadRecordLayout { index: 1 }
        );
    }

    /// The record walk as the format document reads: one bounds-checked field at a time. The
    /// walk in use checks each record header at once and must give the same records and errors.
    fn field_by_field_walk<'a>(
        header: &BatchHeader,
        batch: &'a [u8],
    ) -> Result<Vec<RecordRef<'a>>, CorruptionKind> {
        let mut r = Reader::new(&batch[BATCH_HEADER_LEN..]);
        let mut out = Vec::new();
        for index in 0..header.record_count {
            let layout = |_| CorruptionKind::BadRecordLayout { index };
            let offset_delta = r.u32().map_err(layout)?;
            if offset_delta != index {
                return Err(CorruptionKind::BadOffsetDelta {
                    index,
                    found: offset_delta,
                });
            }
            let timestamp_ms = header
                .first_timestamp_ms
                .checked_add(u64::from(r.u32().map_err(layout)?))
                .filter(|ts| *ts <= header.max_timestamp_ms)
                .ok_or(CorruptionKind::BadTimestamp { index })?;
            let key_len = r.u16().map_err(layout)?;
            let value_len = r.u32().map_err(layout)?;
            let key = r.take(usize::from(key_len)).map_err(layout)?;
            let value = r.take(value_len as usize).map_err(layout)?;
            out.push(RecordRef {
                offset: header.base_offset + u64::from(index),
                timestamp_ms,
                key,
                value,
            });
        }
        if r.position() != batch.len() - BATCH_HEADER_LEN {
            return Err(CorruptionKind::BadRecordLayout {
                index: header.record_count,
            });
        }
        Ok(out)
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let g = good();
        for byte in 0..g.len() {
            for bit in 0..8 {
                let mut b = g.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    decode(&b).is_err(),
                    "flip of bit {bit} in byte {byte} went unseen"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn prop_round_trip(
            records in proptest::collection::vec(
                (proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                 proptest::collection::vec(proptest::num::u8::ANY, 0..300)), 1..20),
            base in 0u64..u64::MAX / 2,
            ts in 0u64..u64::MAX / 2,
        ) {
            let refs: Vec<(&[u8], &[u8])> = records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            let bytes = encode(&refs, base, ts);
            proptest::prop_assert_eq!(bytes.len() as u64, encoded_len(refs.iter().copied()));
            // The sizes a framed batch's check gathers are the records' own.
            let (buf, crc) = framed_bytes(&refs);
            let sizes = PreparedBatch::framed(buf, crc).unwrap().sizes();
            proptest::prop_assert_eq!(sizes.key_min, records.iter().map(|(k, _)| k.len()).min().unwrap());
            proptest::prop_assert_eq!(sizes.key_max, records.iter().map(|(k, _)| k.len()).max().unwrap());
            proptest::prop_assert_eq!(sizes.record_max, records.iter().map(|(k, v)| k.len() + v.len()).max().unwrap());
            proptest::prop_assert_eq!(sizes.total, records.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>());
            let (h, decoded) = decode(&bytes).unwrap();
            proptest::prop_assert_eq!(h.base_offset, base);
            proptest::prop_assert_eq!(decoded.len(), records.len());
            for (r, (k, v)) in decoded.iter().zip(&records) {
                proptest::prop_assert_eq!(r.key, k.as_slice());
                proptest::prop_assert_eq!(r.value, v.as_slice());
                proptest::prop_assert_eq!(r.timestamp_ms, ts);
            }
        }

        #[test]
        fn prop_the_walk_agrees_with_a_field_by_field_walk(
            records in proptest::collection::vec(
                (proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                 proptest::collection::vec(proptest::num::u8::ANY, 0..24)), 1..6),
            damage in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
            cut in 0usize..8,
            count_change in -1i64..2,
            first_ts in 0u64..4,
            max_ts in 0u64..4,
        ) {
            let refs: Vec<(&[u8], &[u8])> = records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            let mut bytes = encode(&refs, 7, 0);
            let body_len = bytes.len() - BATCH_HEADER_LEN;
            for (at, byte) in damage {
                bytes[BATCH_HEADER_LEN + at % body_len] = byte;
            }
            bytes.truncate(bytes.len() - cut.min(body_len));
            let header = BatchHeader {
                crc: 0,
                batch_len: bytes.len() as u32,
                record_count: (records.len() as i64 + count_change).max(0) as u32,
                base_offset: 7,
                first_timestamp_ms: first_ts,
                max_timestamp_ms: max_ts,
            };
            let mut seen = Vec::new();
            let walked = for_each_record(&header, &bytes, |r| seen.push(r)).map(|()| seen);
            proptest::prop_assert_eq!(walked, field_by_field_walk(&header, &bytes));
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok((h, records)) = decode(&bytes) {
                proptest::prop_assert_eq!(records.len() as u32, h.record_count);
            }
        }
    }
}

//! Producer-framed batches, the records of a `PutBatches` request.
//!
//! A `Put` sends records one by one and the server routes, encodes and checksums each of them.
//! With `PutBatches` the producer does that work, as Kafka's producers do: it routes each record
//! to its partition itself (the MD5 of the key against the stream's hash ranges, [`hash_key`],
//! the rule the server applies to a `Put`), and sends each partition's records already laid out
//! as the batch that will be stored (`docs/format.md`), with the CRC of its records. The server
//! checks the batch (its layout, and the CRC recomputed over the bytes it received), fills in the
//! base offset, the timestamps and the batch CRC, and writes the bytes as they came.
//!
//! The layout here is the storage format's, version 1: the header's log-owned fields (CRC, base
//! offset, timestamps) are sent as zero, each record's offset delta is its index and its
//! timestamp delta is zero (the server stamps a batch with its arrival time).

use bytes::{BufMut, BytesMut};
use md5::{Digest, Md5};

/// Length of a batch header.
pub const BATCH_HEADER_LEN: usize = 40;
/// Length of a record's fixed fields.
pub const RECORD_HEADER_LEN: usize = 14;
/// Magic of a batch.
pub const BATCH_MAGIC: [u8; 2] = *b"SB";
/// Version of the batch layout.
pub const BATCH_VERSION: u16 = 1;

/// The hash key of a partition key: its MD5 digest read as a big-endian unsigned integer. A
/// record belongs to the partition whose hash range holds this number (Kinesis's rule).
pub fn hash_key(partition_key: &[u8]) -> u128 {
    let digest: [u8; 16] = Md5::digest(partition_key).into();
    // The one big-endian read in the protocol: Kinesis reads the digest this way, and it is part
    // of the routing rule, not of a wire layout.
    #[allow(clippy::big_endian_bytes)]
    u128::from_be_bytes(digest)
}

/// One partition's batch in a `PutBatches` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedBatch {
    /// The partition it is for.
    pub partition: u32,
    /// CRC-32 (ISO-HDLC, as `crc32fast` computes it) of the bytes after the batch header.
    pub records_crc: u32,
    /// The whole batch, header included. It is mutable so that a server can fill in the header
    /// where the batch arrived instead of copying it.
    pub batch: BytesMut,
}

impl FramedBatch {
    /// Number of records, as the header says.
    pub fn record_count(&self) -> u32 {
        self.batch
            .get(12..16)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_le_bytes)
    }
}

/// Why a record cannot join a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A key longer than the layout's 16-bit length field holds.
    #[error(
        "a key of {len} bytes is longer than a batch can hold ({} bytes)",
        u16::MAX
    )]
    KeyTooLong {
        /// Key length.
        len: usize,
    },
    /// A value longer than the layout's 32-bit length field holds, or a batch past 4 GiB.
    #[error("the batch would be larger than its 32-bit length field can describe")]
    TooLarge,
}

/// Builds one partition's [`FramedBatch`], record by record.
///
/// ```
/// use sluice_protocol::batch::BatchBuilder;
///
/// let mut b = BatchBuilder::new(3);
/// b.push(b"user-1", b"{\"clicks\":1}").unwrap();
/// b.push(b"user-1", b"{\"clicks\":2}").unwrap();
/// let batch = b.finish().unwrap();
/// assert_eq!((batch.partition, batch.record_count()), (3, 2));
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    partition: u32,
    buf: BytesMut,
    count: u32,
}

impl BatchBuilder {
    /// An empty batch for `partition`.
    pub fn new(partition: u32) -> Self {
        Self::with_capacity(partition, 0)
    }

    /// An empty batch for `partition` with room for `bytes` of records (each record takes
    /// [`RECORD_HEADER_LEN`] bytes plus its key and value).
    pub fn with_capacity(partition: u32, bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_LEN + bytes);
        buf.put_bytes(0, BATCH_HEADER_LEN);
        Self {
            partition,
            buf,
            count: 0,
        }
    }

    /// Appends a record.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), BatchError> {
        let key_len =
            u16::try_from(key.len()).map_err(|_| BatchError::KeyTooLong { len: key.len() })?;
        let value_len = u32::try_from(value.len()).map_err(|_| BatchError::TooLarge)?;
        let after = self.buf.len() + RECORD_HEADER_LEN + key.len() + value.len();
        if u32::try_from(after).is_err() {
            return Err(BatchError::TooLarge);
        }
        self.buf
            .reserve(RECORD_HEADER_LEN + key.len() + value.len());
        self.buf.put_u32_le(self.count);
        self.buf.put_u32_le(0);
        self.buf.put_u16_le(key_len);
        self.buf.put_u32_le(value_len);
        self.buf.put_slice(key);
        self.buf.put_slice(value);
        self.count += 1;
        Ok(())
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the batch so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The finished batch, or `None` if it holds no record (the layout has no empty batch).
    pub fn finish(mut self) -> Option<FramedBatch> {
        if self.count == 0 {
            return None;
        }
        // `push` keeps the length within 32 bits.
        let len = self.buf.len() as u32;
        let records_crc = crc32fast::hash(self.buf.get(BATCH_HEADER_LEN..).unwrap_or_default());
        if let Some(h) = self.buf.get_mut(..BATCH_HEADER_LEN) {
            // crc (0..4), base offset (16..24) and timestamps (24..40) stay zero.
            h[4..8].copy_from_slice(&len.to_le_bytes());
            h[8..10].copy_from_slice(&BATCH_MAGIC);
            h[10..12].copy_from_slice(&BATCH_VERSION.to_le_bytes());
            h[12..16].copy_from_slice(&self.count.to_le_bytes());
        }
        Some(FramedBatch {
            partition: self.partition,
            records_crc,
            batch: self.buf,
        })
    }
}

/// Where one batch of a `PutBatches` request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAck {
    /// The partition it was for.
    pub partition: u32,
    /// `0` when the batch was written; otherwise the [`ErrorCode`](crate::ErrorCode) number of
    /// why it was not (only `PartitionClosed`: a reshard closed the partition, so the producer
    /// routes these records again with a fresh description of the stream). Nothing of a batch
    /// that was not written is in the log.
    pub status: u16,
    /// Records in the batch.
    pub record_count: u32,
    /// Offset of its first record when written (its records have consecutive offsets).
    pub base_offset: u64,
}

impl BatchAck {
    /// Whether the batch was written.
    pub fn is_written(&self) -> bool {
        self.status == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_follow_kinesis() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e, read big-endian.
        assert_eq!(hash_key(b""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn a_batch_has_the_storage_layout() {
        let mut b = BatchBuilder::new(7);
        assert!(b.is_empty());
        assert!(BatchBuilder::new(7).finish().is_none());
        b.push(b"k1", b"hello").unwrap();
        b.push(b"k2", b"").unwrap();
        let f = b.finish().unwrap();
        // The records of the golden batch in docs/format.md, with the log-owned fields zero.
        let expected = "00000000 4d000000 5342 0100 02000000 0000000000000000 \
            0000000000000000 0000000000000000 \
            00000000 00000000 0200 05000000 6b31 68656c6c6f \
            01000000 00000000 0200 00000000 6b32";
        let hex: String = f.batch.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(hex, expected.split_whitespace().collect::<String>());
        assert_eq!(f.records_crc, crc32fast::hash(&f.batch[BATCH_HEADER_LEN..]));
        assert_eq!((f.partition, f.record_count()), (7, 2));
    }

    #[test]
    fn oversized_keys_are_refused() {
        let mut b = BatchBuilder::new(0);
        assert_eq!(
            b.push(&vec![0; 70_000], b"v"),
            Err(BatchError::KeyTooLong { len: 70_000 })
        );
        assert!(b.is_empty());
    }
}

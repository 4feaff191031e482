//! Reading batches out of a segment file, in chunks, checking each one's header and CRC.

use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};
use crate::format::CorruptionKind;
use crate::format::batch::{BATCH_HEADER_LEN, BatchHeader, verify};
use crate::io::FileHandle;

/// Read-ahead of a scan that reads a whole segment (recovery, index rebuilds).
pub(crate) const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// First read-ahead of a read that may want only a few records: it doubles with every refill
/// up to [`SCAN_CHUNK_BYTES`], so a point read costs one small read plus its batch, and a long
/// sequential read soon reads in large chunks.
pub(crate) const READ_CHUNK_BYTES: usize = 64 << 10;

/// One batch read from a segment: where it starts, its header, and its bytes (exactly
/// `header.batch_len` long, CRC verified).
#[derive(Debug, Clone)]
pub(crate) struct ScannedBatch {
    pub position: u64,
    pub header: BatchHeader,
    pub bytes: Bytes,
}

/// Walks the batches of a segment file between two positions. Every batch it yields has a valid
/// header and CRC; the first damaged or incomplete batch ends the walk with a `Corruption` error
/// that names its position. The scan never reads at or past `end`.
#[derive(Debug)]
pub(crate) struct BatchScanner<'a> {
    file: &'a dyn FileHandle,
    path: &'a Path,
    position: u64,
    end: u64,
    chunk: usize,
    chunk_max: usize,
    buf: Bytes,
    buf_start: u64,
    failed: bool,
}

impl<'a> BatchScanner<'a> {
    pub(crate) fn new(
        file: &'a dyn FileHandle,
        path: &'a Path,
        position: u64,
        end: u64,
        chunk: usize,
    ) -> Self {
        Self {
            file,
            path,
            position,
            end,
            chunk: chunk.max(BATCH_HEADER_LEN),
            chunk_max: chunk.max(SCAN_CHUNK_BYTES),
            buf: Bytes::new(),
            buf_start: position,
            failed: false,
        }
    }

    /// Makes sure `[position, position + need)` is in the buffer; `need <= end - position`.
    fn fill(&mut self, need: u64) -> Result<()> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.position >= self.buf_start && self.position + need <= buf_end {
            return Ok(());
        }
        let len = need.max(self.chunk as u64).min(self.end - self.position);
        // `len` is bounded by a batch length (at most BATCH_BYTES_MAX) or the chunk size.
        let v = self
            .file
            .read_exact_vec_at(len as usize, self.position)
            .at(self.path)?;
        self.buf = Bytes::from(v);
        self.buf_start = self.position;
        self.chunk = self.chunk.saturating_mul(2).min(self.chunk_max);
        Ok(())
    }

    fn corrupt(&mut self, kind: CorruptionKind) -> Error {
        self.failed = true;
        Error::corruption(self.path, self.position, kind)
    }

    fn next_batch(&mut self) -> Result<ScannedBatch> {
        let left = self.end - self.position;
        if left < BATCH_HEADER_LEN as u64 {
            return Err(self.corrupt(CorruptionKind::Truncated {
                need: BATCH_HEADER_LEN as u64,
                have: left,
            }));
        }
        self.fill(BATCH_HEADER_LEN as u64)?;
        let rel = (self.position - self.buf_start) as usize;
        let header = match BatchHeader::decode(self.buf.get(rel..).unwrap_or_default()) {
            Ok(h) => h,
            Err(kind) => return Err(self.corrupt(kind)),
        };
        let len = u64::from(header.batch_len);
        if len > left {
            return Err(self.corrupt(CorruptionKind::Truncated {
                need: len,
                have: left,
            }));
        }
        self.fill(len)?;
        let rel = (self.position - self.buf_start) as usize;
        let bytes = self.buf.slice(rel..rel + len as usize);
        if let Err(kind) = verify(&header, &bytes) {
            return Err(self.corrupt(kind));
        }
        let position = self.position;
        self.position += len;
        Ok(ScannedBatch {
            position,
            header,
            bytes,
        })
    }
}

impl Iterator for BatchScanner<'_> {
    type Item = Result<ScannedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.end {
            return None;
        }
        let item = self.next_batch();
        if item.is_err() {
            self.failed = true;
        }
        Some(item)
    }
}

//! Segments: the sealed ones (immutable, indexes mapped) and the active one (appended to, index
//! kept in memory until it is sealed or the log is closed cleanly).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::error::{Error, IoContext, Result};
use crate::format::batch::{BATCH_HEADER_LEN, BatchHeader, for_each_record};
use crate::format::index::{
    OFFSET_ENTRY_LEN, OffsetEntry, OffsetIndexView, TIME_ENTRY_LEN, TimeEntry, TimeIndexView,
    decode_offset_entries, decode_time_entries,
};
use crate::format::{
    CorruptionKind, FILE_HEADER_LEN, FileKind, decode_file_header, encode_file_header,
};
use crate::io::{FileHandle, FileSystem, MappedBytes, OpenMode};
use crate::options::RecoveryMode;
use crate::scan::{BatchScanner, SCAN_CHUNK_BYTES, ScannedBatch};

pub(crate) fn file_path(dir: &Path, kind: FileKind, base_offset: u64) -> PathBuf {
    dir.join(kind.file_name(base_offset))
}

/// The sparse index of a segment while it is being written or rebuilt.
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexBuilder {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    bytes_since_entry: u64,
    /// The last batch seen: relative offset, position and max timestamp.
    last: Option<(u32, u32, u64)>,
}

impl IndexBuilder {
    /// Records a batch appended at `position`; adds entries every `interval` bytes.
    pub fn on_batch(
        &mut self,
        relative_offset: u32,
        position: u32,
        header: &BatchHeader,
        interval: u32,
    ) {
        if self.last.is_some() && self.bytes_since_entry >= u64::from(interval) {
            self.push_offset(relative_offset, position);
            self.push_time(header.max_timestamp_ms, relative_offset);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += u64::from(header.batch_len);
        self.last = Some((relative_offset, position, header.max_timestamp_ms));
    }

    fn push_offset(&mut self, relative_offset: u32, position: u32) {
        if self
            .offsets
            .last()
            .is_none_or(|e| e.relative_offset < relative_offset)
        {
            self.offsets.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
    }

    fn push_time(&mut self, timestamp_ms: u64, relative_offset: u32) {
        if self
            .times
            .last()
            .is_none_or(|e| e.timestamp_ms < timestamp_ms && e.relative_offset < relative_offset)
        {
            self.times.push(TimeEntry {
                timestamp_ms,
                relative_offset,
            });
        }
    }

    /// Adds entries for the last batch, so that a sealed index names its segment's last batch.
    pub fn finish(&mut self) {
        if let Some((rel, pos, ts)) = self.last {
            self.push_offset(rel, pos);
            self.push_time(ts, rel);
        }
    }

    pub fn encode_offsets(&self, base_offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(FILE_HEADER_LEN + self.offsets.len() * OFFSET_ENTRY_LEN);
        out.extend_from_slice(&encode_file_header(FileKind::OffsetIndex, base_offset));
        for e in &self.offsets {
            out.extend_from_slice(&e.encode());
        }
        out
    }

    pub fn encode_times(&self, base_offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(FILE_HEADER_LEN + self.times.len() * TIME_ENTRY_LEN);
        out.extend_from_slice(&encode_file_header(FileKind::TimeIndex, base_offset));
        for e in &self.times {
            out.extend_from_slice(&e.encode());
        }
        out
    }

    /// The position to start scanning from for `relative_offset`, and the relative offset of the
    /// batch found there.
    pub fn floor(&self, relative_offset: u32) -> (u32, u64) {
        let i = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        match i.checked_sub(1).and_then(|i| self.offsets.get(i)) {
            Some(e) => (e.relative_offset, u64::from(e.position)),
            None => (0, FILE_HEADER_LEN as u64),
        }
    }

    /// Relative offset of the last indexed batch whose max timestamp is before `timestamp_ms`.
    pub fn last_before(&self, timestamp_ms: u64) -> u32 {
        let i = self
            .times
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        i.checked_sub(1)
            .and_then(|i| self.times.get(i))
            .map_or(0, |e| e.relative_offset)
    }
}

/// A segment that is no longer written. Its index files are mapped read-only.
pub(crate) struct SealedSegment {
    pub base_offset: u64,
    pub end_offset: u64,
    pub len: u64,
    pub max_timestamp_ms: u64,
    pub path: PathBuf,
    pub file: Arc<dyn FileHandle>,
    offset_index: MappedBytes,
    time_index: MappedBytes,
}

impl std::fmt::Debug for SealedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSegment")
            .field("base_offset", &self.base_offset)
            .field("end_offset", &self.end_offset)
            .field("len", &self.len)
            .field("max_timestamp_ms", &self.max_timestamp_ms)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SealedSegment {
    fn offsets(&self) -> OffsetIndexView<'_> {
        let b: &[u8] = (*self.offset_index).as_ref();
        OffsetIndexView::new(b.get(FILE_HEADER_LEN..).unwrap_or_default())
    }

    fn times(&self) -> TimeIndexView<'_> {
        let b: &[u8] = (*self.time_index).as_ref();
        TimeIndexView::new(b.get(FILE_HEADER_LEN..).unwrap_or_default())
    }

    pub fn floor(&self, relative_offset: u32) -> (u32, u64) {
        match self.offsets().floor(relative_offset) {
            Some(e) => (e.relative_offset, u64::from(e.position)),
            None => (0, FILE_HEADER_LEN as u64),
        }
    }

    pub fn last_before(&self, timestamp_ms: u64) -> u32 {
        self.times()
            .last_before(timestamp_ms)
            .map_or(0, |e| e.relative_offset)
    }

    /// Paths of the segment's three files.
    pub fn paths(&self, dir: &Path) -> [PathBuf; 3] {
        [
            self.path.clone(),
            file_path(dir, FileKind::OffsetIndex, self.base_offset),
            file_path(dir, FileKind::TimeIndex, self.base_offset),
        ]
    }

    /// Seals an active segment whose data and index files are durable.
    pub fn from_active(fs: &dyn FileSystem, dir: &Path, a: &ActiveSegment) -> Result<Self> {
        let (offset_index, time_index) = map_indexes(fs, dir, a.base_offset)?;
        Ok(Self {
            base_offset: a.base_offset,
            end_offset: a.next_offset,
            len: a.len,
            max_timestamp_ms: a.max_timestamp_ms,
            path: a.path.clone(),
            file: Arc::clone(&a.file),
            offset_index,
            time_index,
        })
    }

    /// Opens a sealed segment. Its indexes are checked without reading the data (their last
    /// entry must name a batch that ends the file at `next_base`); when they fail the check,
    /// they are rebuilt from a scan of the segment.
    pub fn open(
        fs: &dyn FileSystem,
        dir: &Path,
        base_offset: u64,
        next_base: u64,
        mode: RecoveryMode,
        index_interval: u32,
    ) -> Result<Self> {
        let path = file_path(dir, FileKind::Segment, base_offset);
        let file = fs.open(&path, OpenMode::Read).at(&path)?;
        let len = file.len().at(&path)?;
        check_segment_header(&*file, &path, base_offset, len, mode)?;
        match fast_open(fs, dir, &*file, base_offset, len, next_base) {
            Ok(Some((offset_index, time_index, max_timestamp_ms))) => {
                return Ok(Self {
                    base_offset,
                    end_offset: next_base,
                    len,
                    max_timestamp_ms,
                    path,
                    file,
                    offset_index,
                    time_index,
                });
            }
            Ok(None) => {}
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => warn!(error = %e, "index of a sealed segment is unusable; rebuilding it"),
        }
        let scan = scan_segment(&*file, &path, base_offset, len, None, index_interval)?;
        let damage = scan.error.or_else(|| {
            (scan.end_offset != next_base).then(|| {
                Error::corruption(
                    &path,
                    scan.valid_len,
                    CorruptionKind::MissingRecords {
                        expected_end: next_base,
                        found_end: scan.end_offset,
                    },
                )
            })
        });
        if let Some(err) = damage {
            if mode == RecoveryMode::AbsoluteConsistency {
                return Err(err);
            }
            // Damage inside sealed data: the valid prefix is indexed, reads that reach the damage
            // fail with a `Corruption` error, and the rest of the log stays readable. Nothing is
            // deleted: the damage may be repairable from a backup.
            warn!(error = %err, "sealed segment is damaged; reads that reach the damage will fail");
        }
        let mut index = scan.index;
        index.finish();
        write_indexes(fs, dir, base_offset, &index)?;
        let (offset_index, time_index) = map_indexes(fs, dir, base_offset)?;
        Ok(Self {
            base_offset,
            end_offset: next_base,
            len,
            max_timestamp_ms: scan.max_timestamp_ms,
            path,
            file,
            offset_index,
            time_index,
        })
    }
}

/// What [`SealedSegment::open_unflushed`] found.
#[derive(Debug)]
pub(crate) enum Unflushed {
    /// Every batch is whole and the segment ends where the next one begins: it is flushed and
    /// indexed now.
    Whole(SealedSegment),
    /// The first damage found, or records missing at its end: the log ends in this segment.
    Torn(Error),
}

impl SealedSegment {
    /// Opens, after a crash, a sealed segment at or past the recovery point: one that may have
    /// been sealed without its data reaching the disk. Its index may name bytes the disk never
    /// got, so every batch is checked in full, as for the active segment. A whole segment is
    /// flushed (its bytes may so far exist only in the page cache) and its indexes rewritten.
    /// Damage is [`Unflushed::Torn`], or an error under `AbsoluteConsistency`.
    pub fn open_unflushed(
        fs: &dyn FileSystem,
        dir: &Path,
        base_offset: u64,
        next_base: u64,
        mode: RecoveryMode,
        index_interval: u32,
    ) -> Result<Unflushed> {
        let path = file_path(dir, FileKind::Segment, base_offset);
        let file = fs.open(&path, OpenMode::ReadWrite).at(&path)?;
        let len = file.len().at(&path)?;
        let torn = match read_segment_header(&*file, &path, base_offset, len)? {
            Err(kind) => Error::corruption(&path, 0, kind),
            Ok(()) => {
                let scan = scan_segment(&*file, &path, base_offset, len, None, index_interval)?;
                if let Some(e) = scan.error {
                    e
                } else if scan.end_offset != next_base {
                    Error::corruption(
                        &path,
                        scan.valid_len,
                        CorruptionKind::MissingRecords {
                            expected_end: next_base,
                            found_end: scan.end_offset,
                        },
                    )
                } else {
                    file.sync_data().at(&path)?;
                    let mut index = scan.index;
                    index.finish();
                    write_indexes(fs, dir, base_offset, &index)?;
                    let (offset_index, time_index) = map_indexes(fs, dir, base_offset)?;
                    return Ok(Unflushed::Whole(Self {
                        base_offset,
                        end_offset: next_base,
                        len,
                        max_timestamp_ms: scan.max_timestamp_ms,
                        path,
                        file,
                        offset_index,
                        time_index,
                    }));
                }
            }
        };
        if mode == RecoveryMode::AbsoluteConsistency {
            return Err(torn);
        }
        Ok(Unflushed::Torn(torn))
    }
}

/// Reads and decodes a segment's file header: the outer error is I/O, the inner one damage.
fn read_segment_header(
    file: &dyn FileHandle,
    path: &Path,
    base_offset: u64,
    len: u64,
) -> Result<std::result::Result<(), CorruptionKind>> {
    if len < FILE_HEADER_LEN as u64 {
        return Ok(Err(CorruptionKind::Truncated {
            need: FILE_HEADER_LEN as u64,
            have: len,
        }));
    }
    let mut header = [0u8; FILE_HEADER_LEN];
    file.read_exact_at(&mut header, 0).at(path)?;
    Ok(decode_file_header(FileKind::Segment, base_offset, &header))
}

fn check_segment_header(
    file: &dyn FileHandle,
    path: &Path,
    base_offset: u64,
    len: u64,
    mode: RecoveryMode,
) -> Result<()> {
    match read_segment_header(file, path, base_offset, len)? {
        Ok(()) => Ok(()),
        Err(kind) if mode == RecoveryMode::AbsoluteConsistency => {
            Err(Error::corruption(path, 0, kind))
        }
        Err(kind) => {
            warn!(path = %path.display(), %kind, "damaged segment header; reading batches regardless");
            Ok(())
        }
    }
}

type Indexes = (MappedBytes, MappedBytes, u64);

/// Checks index file contents against their segment without reading its data: headers, whole
/// and strictly increasing entries, and a last entry that names a batch ending the file exactly
/// at `end_offset`. Only that batch's 40-byte header is read; it is returned.
fn check_index(
    dir: &Path,
    base_offset: u64,
    (obytes, tbytes): (&[u8], &[u8]),
    file: &dyn FileHandle,
    len: u64,
    end_offset: u64,
) -> Result<BatchHeader> {
    let opath = file_path(dir, FileKind::OffsetIndex, base_offset);
    let tpath = file_path(dir, FileKind::TimeIndex, base_offset);
    let bad = |path: &Path, kind| Error::corruption(path, 0, kind);
    decode_file_header(FileKind::OffsetIndex, base_offset, obytes).map_err(|k| bad(&opath, k))?;
    decode_file_header(FileKind::TimeIndex, base_offset, tbytes).map_err(|k| bad(&tpath, k))?;
    let offsets = decode_offset_entries(obytes.get(FILE_HEADER_LEN..).unwrap_or_default())
        .map_err(|k| bad(&opath, k))?;
    let times = decode_time_entries(tbytes.get(FILE_HEADER_LEN..).unwrap_or_default())
        .map_err(|k| bad(&tpath, k))?;
    let last = *offsets
        .last()
        .ok_or_else(|| bad(&opath, CorruptionKind::BadIndex("no entries")))?;
    let segment = file_path(dir, FileKind::Segment, base_offset);
    let last_header = read_header_at(file, &segment, u64::from(last.position), len)?;
    let names_last_batch = Some(last_header.base_offset)
        == base_offset.checked_add(u64::from(last.relative_offset))
        && u64::from(last.position) + u64::from(last_header.batch_len) == len
        && last_header.end_offset() == end_offset;
    let time_ok = times.last().is_none_or(|t| {
        t.timestamp_ms <= last_header.max_timestamp_ms && t.relative_offset <= last.relative_offset
    });
    if !names_last_batch || !time_ok {
        return Err(bad(
            &opath,
            CorruptionKind::BadIndex("last entry does not name the segment's last batch"),
        ));
    }
    Ok(last_header)
}

/// Maps and checks a sealed segment's index files. `Ok(None)` when one is missing.
fn fast_open(
    fs: &dyn FileSystem,
    dir: &Path,
    file: &dyn FileHandle,
    base_offset: u64,
    len: u64,
    next_base: u64,
) -> Result<Option<Indexes>> {
    let opath = file_path(dir, FileKind::OffsetIndex, base_offset);
    let tpath = file_path(dir, FileKind::TimeIndex, base_offset);
    if !fs.exists(&opath).at(&opath)? || !fs.exists(&tpath).at(&tpath)? {
        return Ok(None);
    }
    let (omap, tmap) = map_indexes(fs, dir, base_offset)?;
    let bytes = ((*omap).as_ref(), (*tmap).as_ref());
    let last_header = check_index(dir, base_offset, bytes, file, len, next_base)?;
    Ok(Some((omap, tmap, last_header.max_timestamp_ms)))
}

/// Reads and decodes the batch header at `position`, checking that the batch fits in `len`.
pub(crate) fn read_header_at(
    file: &dyn FileHandle,
    path: &Path,
    position: u64,
    len: u64,
) -> Result<BatchHeader> {
    let have = len.saturating_sub(position);
    if have < BATCH_HEADER_LEN as u64 {
        return Err(Error::corruption(
            path,
            position,
            CorruptionKind::Truncated {
                need: BATCH_HEADER_LEN as u64,
                have,
            },
        ));
    }
    let mut buf = [0u8; BATCH_HEADER_LEN];
    file.read_exact_at(&mut buf, position).at(path)?;
    let header = BatchHeader::decode(&buf).map_err(|k| Error::corruption(path, position, k))?;
    if u64::from(header.batch_len) > have {
        return Err(Error::corruption(
            path,
            position,
            CorruptionKind::Truncated {
                need: u64::from(header.batch_len),
                have,
            },
        ));
    }
    Ok(header)
}

fn map_indexes(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
) -> Result<(MappedBytes, MappedBytes)> {
    let opath = file_path(dir, FileKind::OffsetIndex, base_offset);
    let tpath = file_path(dir, FileKind::TimeIndex, base_offset);
    Ok((
        fs.map_readonly(&opath).at(&opath)?,
        fs.map_readonly(&tpath).at(&tpath)?,
    ))
}

/// Writes both index files of a segment in place of any old ones (temp file, rename) without an
/// fsync, for a segment sealed without one: the caller's directory fsync makes the names
/// durable and the background flusher the contents ([`sync_indexes`]). Until then the segment
/// is at or past the recovery point, and recovery rebuilds these files.
pub(crate) fn write_indexes_unsynced(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
    index: &IndexBuilder,
) -> Result<()> {
    let files = [
        (
            file_path(dir, FileKind::OffsetIndex, base_offset),
            index.encode_offsets(base_offset),
        ),
        (
            file_path(dir, FileKind::TimeIndex, base_offset),
            index.encode_times(base_offset),
        ),
    ];
    for (path, bytes) in files {
        let tmp = crate::io::temp_path(&path);
        if fs.exists(&tmp).at(&tmp)? {
            fs.remove_file(&tmp).at(&tmp)?;
        }
        fs.open(&tmp, OpenMode::CreateNew)
            .and_then(|f| f.write_all_at(&bytes, 0))
            .at(&tmp)?;
        fs.rename(&tmp, &path).at(&path)?;
    }
    Ok(())
}

/// Writes both index files of a segment atomically (temp, fsync, rename, fsync dir).
pub(crate) fn write_indexes(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
    index: &IndexBuilder,
) -> Result<()> {
    let opath = file_path(dir, FileKind::OffsetIndex, base_offset);
    let tpath = file_path(dir, FileKind::TimeIndex, base_offset);
    fs.write_atomic(&opath, &index.encode_offsets(base_offset))
        .at(&opath)?;
    fs.write_atomic(&tpath, &index.encode_times(base_offset))
        .at(&tpath)
}

/// The outcome of scanning a segment's data from its first batch.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub index: IndexBuilder,
    /// One past the last valid record.
    pub end_offset: u64,
    /// End of the last valid batch.
    pub valid_len: u64,
    pub first_timestamp_ms: Option<u64>,
    pub max_timestamp_ms: u64,
    /// The first damage found, if the scan stopped before the end of the file.
    pub error: Option<Error>,
}

/// Validates every batch of a segment (CRC, offsets continuing from `base_offset`, timestamps
/// never decreasing, record layout) and rebuilds its index. I/O errors are returned; damage
/// stops the scan and is reported in `error`.
pub(crate) fn scan_segment(
    file: &dyn FileHandle,
    path: &Path,
    base_offset: u64,
    len: u64,
    previous_max_timestamp_ms: Option<u64>,
    index_interval: u32,
) -> Result<SegmentScan> {
    let mut scan = SegmentScan::new(base_offset, previous_max_timestamp_ms);
    scan.scan_rest(file, path, base_offset, len, index_interval)?;
    Ok(scan)
}

impl SegmentScan {
    fn new(base_offset: u64, previous_max_timestamp_ms: Option<u64>) -> Self {
        Self {
            index: IndexBuilder::default(),
            end_offset: base_offset,
            valid_len: FILE_HEADER_LEN as u64,
            first_timestamp_ms: None,
            max_timestamp_ms: previous_max_timestamp_ms.unwrap_or(0),
            error: None,
        }
    }

    /// Records a batch that passed its checks.
    fn accept(&mut self, position: u64, h: &BatchHeader, base_offset: u64, index_interval: u32) {
        // The checks guarantee the relative offset and position fit in 32 bits.
        self.index.on_batch(
            (h.base_offset - base_offset) as u32,
            position as u32,
            h,
            index_interval,
        );
        self.first_timestamp_ms.get_or_insert(h.first_timestamp_ms);
        self.max_timestamp_ms = h.max_timestamp_ms;
        self.end_offset = h.end_offset();
        self.valid_len = position + u64::from(h.batch_len);
    }

    /// Checks every batch from `valid_len` to `len` in full (CRC, offsets, timestamps, layout),
    /// stopping at the first damage, which goes to `error`.
    fn scan_rest(
        &mut self,
        file: &dyn FileHandle,
        path: &Path,
        base_offset: u64,
        len: u64,
        index_interval: u32,
    ) -> Result<()> {
        let start = self.valid_len.min(len);
        for item in BatchScanner::new(file, path, start, len, SCAN_CHUNK_BYTES) {
            let batch = match item {
                Ok(b) => b,
                Err(e @ Error::Corruption { .. }) => {
                    self.error = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            };
            if let Err(kind) =
                check_batch(&batch, self.end_offset, self.max_timestamp_ms, base_offset)
            {
                self.error = Some(Error::corruption(path, batch.position, kind));
                break;
            }
            self.accept(batch.position, &batch.header, base_offset, index_interval);
        }
        Ok(())
    }

    /// Walks batch headers from `valid_len` up to `until` without reading the batches (no CRC):
    /// enough to rebuild the index of a prefix known to have reached the disk. Damage in a header
    /// is an error. `Ok(false)` if the headers do not end exactly at `until`, which means `until`
    /// was not a batch boundary and cannot be trusted.
    fn walk_headers(
        &mut self,
        file: &dyn FileHandle,
        path: &Path,
        base_offset: u64,
        until: u64,
        index_interval: u32,
    ) -> Result<bool> {
        while self.valid_len < until {
            let position = self.valid_len;
            let h = read_header_at(file, path, position, until)?;
            let fits = h.end_offset() - base_offset <= u64::from(u32::MAX)
                && position <= u64::from(u32::MAX);
            if h.base_offset != self.end_offset {
                return Err(Error::corruption(
                    path,
                    position,
                    CorruptionKind::OffsetMismatch {
                        expected: self.end_offset,
                        found: h.base_offset,
                    },
                ));
            }
            if h.first_timestamp_ms < self.max_timestamp_ms {
                return Err(Error::corruption(
                    path,
                    position,
                    CorruptionKind::TimestampRegression {
                        previous_ms: self.max_timestamp_ms,
                        found_ms: h.first_timestamp_ms,
                    },
                ));
            }
            if !fits {
                return Err(Error::corruption(
                    path,
                    position,
                    CorruptionKind::BadIndex("batch beyond 32-bit relative offset or position"),
                ));
            }
            self.accept(position, &h, base_offset, index_interval);
        }
        Ok(self.valid_len == until)
    }
}

/// The checks a batch must pass beyond its CRC to belong at this point of the log.
pub(crate) fn check_batch(
    batch: &ScannedBatch,
    expected_offset: u64,
    previous_max_timestamp_ms: u64,
    segment_base: u64,
) -> Result<(), CorruptionKind> {
    let h = &batch.header;
    if h.base_offset != expected_offset {
        return Err(CorruptionKind::OffsetMismatch {
            expected: expected_offset,
            found: h.base_offset,
        });
    }
    if h.end_offset() - segment_base > u64::from(u32::MAX) || batch.position > u64::from(u32::MAX) {
        return Err(CorruptionKind::BadIndex(
            "batch beyond 32-bit relative offset or position",
        ));
    }
    if h.first_timestamp_ms < previous_max_timestamp_ms {
        return Err(CorruptionKind::TimestampRegression {
            previous_ms: previous_max_timestamp_ms,
            found_ms: h.first_timestamp_ms,
        });
    }
    for_each_record(h, &batch.bytes, |_| {})
}

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub base_offset: u64,
    pub next_offset: u64,
    pub len: u64,
    pub first_timestamp_ms: Option<u64>,
    pub max_timestamp_ms: u64,
    pub path: PathBuf,
    pub file: Arc<dyn FileHandle>,
    /// A second descriptor of the same file, for a second fdatasync running beside one on
    /// `file`. Each concurrent fdatasync needs its own descriptor: the kernel reports a
    /// writeback error once per open file description, so two fsyncs sharing one could see one
    /// of them succeed over data the other was told is lost.
    pub spare: Arc<dyn FileHandle>,
    pub index: IndexBuilder,
    /// Blocks are reserved up to here ([`FileHandle::preallocate`]); at or below `len` when
    /// none are reserved past the end, as after opening.
    pub preallocated_end: u64,
}

impl ActiveSegment {
    /// Creates a new, empty segment file. The caller makes the directory entry durable.
    pub fn create(fs: &dyn FileSystem, dir: &Path, base_offset: u64) -> Result<Self> {
        let path = file_path(dir, FileKind::Segment, base_offset);
        let file = fs.open(&path, OpenMode::CreateNew).at(&path)?;
        file.write_all_at(&encode_file_header(FileKind::Segment, base_offset), 0)
            .at(&path)?;
        Self::empty(fs, path, file, base_offset)
    }

    fn empty(
        fs: &dyn FileSystem,
        path: PathBuf,
        file: Arc<dyn FileHandle>,
        base_offset: u64,
    ) -> Result<Self> {
        let spare = fs.open(&path, OpenMode::ReadWrite).at(&path)?;
        Ok(Self {
            base_offset,
            next_offset: base_offset,
            len: FILE_HEADER_LEN as u64,
            first_timestamp_ms: None,
            max_timestamp_ms: 0,
            path,
            file,
            spare,
            index: IndexBuilder::default(),
            preallocated_end: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }

    /// Opens the last segment after a crash: scans every batch, cuts a torn or corrupt tail
    /// (under `TolerateTailCorruption`) and rebuilds the index in memory.
    pub fn recover(
        fs: &dyn FileSystem,
        dir: &Path,
        base_offset: u64,
        previous_max_timestamp_ms: Option<u64>,
        mode: RecoveryMode,
        index_interval: u32,
        synced_len: u64,
    ) -> Result<Self> {
        let path = file_path(dir, FileKind::Segment, base_offset);
        let file = fs.open(&path, OpenMode::ReadWrite).at(&path)?;
        let len = file.len().at(&path)?;
        let mut header = [0u8; FILE_HEADER_LEN];
        let header_ok = len >= FILE_HEADER_LEN as u64 && {
            file.read_exact_at(&mut header, 0).at(&path)?;
            decode_file_header(FileKind::Segment, base_offset, &header).is_ok()
        };
        if !header_ok {
            // A torn header means the segment was being created when the process died, unless
            // a valid first batch follows it (then the header rotted on disk: refuse).
            let first_batch_valid = len > FILE_HEADER_LEN as u64
                && BatchScanner::new(&*file, &path, FILE_HEADER_LEN as u64, len, SCAN_CHUNK_BYTES)
                    .next()
                    .is_some_and(|r| r.is_ok_and(|b| b.header.base_offset == base_offset));
            if first_batch_valid
                || mode == RecoveryMode::AbsoluteConsistency
                || synced_len > FILE_HEADER_LEN as u64
            {
                let kind = decode_file_header(FileKind::Segment, base_offset, &header)
                    .err()
                    .unwrap_or(CorruptionKind::Truncated {
                        need: FILE_HEADER_LEN as u64,
                        have: len,
                    });
                return Err(Error::corruption(&path, 0, kind));
            }
            warn!(path = %path.display(), len, "active segment has a torn header; recreating it empty");
            file.set_len(0).at(&path)?;
            file.write_all_at(&encode_file_header(FileKind::Segment, base_offset), 0)
                .at(&path)?;
            file.sync_data().at(&path)?;
            return Self::empty(fs, path, file, base_offset);
        }
        // Below the synced point the data reached the disk before anything in it was
        // acknowledged: only its batch headers are walked, to rebuild the index. Past it, every
        // batch is checked in full, and the first bad one starts the torn tail.
        let mut scan = SegmentScan::new(base_offset, previous_max_timestamp_ms);
        let synced_len = synced_len.min(len);
        let walked = synced_len > FILE_HEADER_LEN as u64
            && scan.walk_headers(&*file, &path, base_offset, synced_len, index_interval)?;
        if !walked {
            // No usable synced point (none recorded, or it does not fall on a batch boundary):
            // check the whole segment.
            scan = SegmentScan::new(base_offset, previous_max_timestamp_ms);
        }
        let synced_len = if walked { synced_len } else { 0 };
        scan.scan_rest(&*file, &path, base_offset, len, index_interval)?;
        if let Some(err) = scan.error {
            // Below the synced point the bytes were on disk before anything was acknowledged from
            // them: damage there is not a torn write but lost acknowledged data, which is never
            // cut off quietly. The log refuses to open, naming the file and position.
            if mode == RecoveryMode::AbsoluteConsistency || scan.valid_len < synced_len {
                return Err(err);
            }
            warn!(
                error = %err,
                truncated_bytes = len - scan.valid_len,
                "cutting a torn or corrupt tail off the active segment"
            );
            file.set_len(scan.valid_len).at(&path)?;
        }
        // Whatever survived in the page cache is made durable before anyone is told it exists.
        file.sync_data().at(&path)?;
        let spare = fs.open(&path, OpenMode::ReadWrite).at(&path)?;
        Ok(Self {
            base_offset,
            next_offset: scan.end_offset,
            len: scan.valid_len,
            first_timestamp_ms: scan.first_timestamp_ms,
            max_timestamp_ms: scan.max_timestamp_ms,
            path,
            file,
            spare,
            index: scan.index,
            preallocated_end: 0,
        })
    }
}

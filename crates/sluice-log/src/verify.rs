//! Offline checks of a log's files, for tools that run on a stopped server's data directory.
//!
//! [`inspect_file`] decodes one segment or index file and lists what it holds. [`verify_dir`]
//! walks a directory tree, treats every directory holding segment files as a partition, and
//! checks everything the format promises: every file header, every batch's CRC and record
//! layout, offsets that continue without a gap from batch to batch and from segment to segment,
//! timestamps that never go back, every index entry against the batch it names, and the
//! clean-shutdown marker against the files. Damage in a segment past the recovery point (one
//! that may have been sealed without an fsync) is a torn tail that the next open cuts.
//!
//! Opening a log reads only what it needs (the active segment after a crash, and the one batch
//! each sealed index names), so damage inside sealed data is found only when a reader reaches
//! it. These checks read every byte instead, so an operator can find such damage first. Nothing
//! here writes, and nothing trusts the bytes it reads: damage is reported as a [`Problem`] with
//! the file and the byte position, never as a panic, because these checks exist to be run on
//! damaged files.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::format::index::{
    OFFSET_ENTRY_LEN, OffsetEntry, OffsetIndexView, TIME_ENTRY_LEN, TimeEntry, TimeIndexView,
    decode_offset_entries, decode_time_entries,
};
use crate::format::marker::{CleanMarker, RecoveryPoint};
use crate::format::{
    CLEAN_MARKER_NAME, CorruptionKind, FILE_HEADER_LEN, FileKind, RECOVERY_POINT_NAME,
    decode_file_header,
};
use crate::io::{FileSystem, OpenMode};
use crate::scan::{BatchScanner, SCAN_CHUNK_BYTES, ScannedBatch};
use crate::segment::check_batch;

const HEADER_LEN: u64 = FILE_HEADER_LEN as u64;

/// One batch of a segment: where it starts and what its header says. A batch is listed only
/// once its CRC, its record layout, its offsets and its timestamps have been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// Byte position of the batch in the segment file.
    pub position: u64,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Number of records.
    pub record_count: u32,
    /// Timestamp of its first record, in ms since the Unix epoch.
    pub first_timestamp_ms: u64,
    /// Its largest record timestamp, in ms since the Unix epoch.
    pub max_timestamp_ms: u64,
    /// Length of the whole batch in bytes, header included.
    pub batch_len: u32,
    /// Its CRC-32, which matched the bytes.
    pub crc: u32,
}

impl BatchSummary {
    /// One past the offset of its last record.
    pub fn end_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count))
    }

    fn from_scanned(b: &ScannedBatch) -> Self {
        let h = &b.header;
        Self {
            position: b.position,
            base_offset: h.base_offset,
            record_count: h.record_count,
            first_timestamp_ms: h.first_timestamp_ms,
            max_timestamp_ms: h.max_timestamp_ms,
            batch_len: h.batch_len,
            crc: h.crc,
        }
    }
}

/// What a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContents {
    /// A segment's batches in file order, up to the first damaged one.
    Segment(Vec<BatchSummary>),
    /// Every whole entry of an offset index, in file order (out-of-order entries included; the
    /// report's problems say where the order breaks).
    OffsetIndex(Vec<OffsetEntry>),
    /// Every whole entry of a time index, in file order.
    TimeIndex(Vec<TimeEntry>),
}

/// What [`inspect_file`] found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// The base offset its name gives, or its header when the name is not a segment file name.
    pub base_offset: u64,
    /// Length of the file in bytes.
    pub len: u64,
    /// Its batches or entries.
    pub contents: FileContents,
    /// Damage, in file order: a damaged header, then the first damaged batch or entry.
    pub problems: Vec<Problem>,
}

impl FileReport {
    /// The kind of file.
    pub fn kind(&self) -> FileKind {
        match self.contents {
            FileContents::Segment(_) => FileKind::Segment,
            FileContents::OffsetIndex(_) => FileKind::OffsetIndex,
            FileContents::TimeIndex(_) => FileKind::TimeIndex,
        }
    }

    /// True when nothing in the file is damaged.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`verify_dir`] found under a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Every partition directory found (a directory holding at least one segment file), in the
    /// order they were checked.
    pub partitions: Vec<PathBuf>,
    /// Number of segment files checked.
    pub segments: usize,
    /// Everything found wrong, partition by partition and, within one, in file order.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One thing wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The damaged (or missing) file.
    pub path: PathBuf,
    /// Byte position in the file of the damaged structure: a batch, an index entry, or 0 for a
    /// file header or a whole file.
    pub position: u64,
    /// What is wrong.
    pub kind: ProblemKind,
    /// What the next open of the log does about it.
    pub remedy: Remedy,
}

/// What is wrong, for a [`Problem`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Bytes that the format does not allow.
    Corruption(CorruptionKind),
    /// A sealed segment has no index file of this kind.
    MissingIndex(FileKind),
    /// The clean-shutdown marker describes other files than the ones present.
    MarkerMismatch {
        /// The marker's field that does not match.
        field: &'static str,
        /// What the marker records.
        marker: u64,
        /// What the files hold.
        files: u64,
    },
    /// The file or directory could not be read.
    Unreadable(String),
}

/// What the next open of the log does about a [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remedy {
    /// Nothing: reads that reach the damage fail, and only a copy of the data can repair it.
    None,
    /// The index is rebuilt from the segment data.
    IndexRebuilt,
    /// The active segment is cut back to the last whole batch before the damage, dropping
    /// everything from there on.
    TailCut,
    /// The marker is ignored and the log is recovered as after a crash.
    MarkerIgnored,
    /// A segment past the recovery point (sealed without an fsync, then torn by a power loss) is
    /// cut back to the last whole batch before the damage, and every later segment is removed.
    LogCut,
    /// The recovery point is ignored: after a crash every sealed segment is checked in full, and
    /// the log is cut at the first damage.
    RecoveryPointIgnored,
}

impl ProblemKind {
    /// A short, stable, machine-readable name (`checksum_mismatch`, `missing_index`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Corruption(kind) => match kind {
                CorruptionKind::BadMagic { .. } => "bad_magic",
                CorruptionKind::UnsupportedVersion(_) => "unsupported_version",
                CorruptionKind::UnsupportedFlags(_) => "unsupported_flags",
                CorruptionKind::ChecksumMismatch { .. } => "checksum_mismatch",
                CorruptionKind::Truncated { .. } => "truncated",
                CorruptionKind::BadBatchLength(_) => "bad_batch_length",
                CorruptionKind::EmptyBatch => "empty_batch",
                CorruptionKind::BadRecordLayout { .. } => "bad_record_layout",
                CorruptionKind::BadOffsetDelta { .. } => "bad_offset_delta",
                CorruptionKind::BadTimestamp { .. } => "bad_timestamp",
                CorruptionKind::OffsetMismatch { .. } => "offset_mismatch",
                CorruptionKind::TimestampRegression { .. } => "timestamp_regression",
                CorruptionKind::BaseOffsetMismatch { .. } => "base_offset_mismatch",
                CorruptionKind::BadIndex(_) => "bad_index",
                CorruptionKind::OffsetOverflow => "offset_overflow",
                CorruptionKind::MissingRecords { .. } => "missing_records",
            },
            Self::MissingIndex(_) => "missing_index",
            Self::MarkerMismatch { .. } => "marker_mismatch",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corruption(kind) => write!(f, "{kind}"),
            Self::MissingIndex(FileKind::TimeIndex) => write!(f, "missing time index"),
            Self::MissingIndex(_) => write!(f, "missing offset index"),
            Self::MarkerMismatch {
                field,
                marker,
                files,
            } => write!(
                f,
                "clean-shutdown marker records {field} {marker}, but the files hold {files}"
            ),
            Self::Unreadable(why) => write!(f, "cannot read: {why}"),
        }
    }
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "",
            Self::IndexRebuilt => "the next open rebuilds it from the segment data",
            Self::TailCut => "the next open cuts the active segment here, dropping what follows",
            Self::MarkerIgnored => "the next open ignores the marker and recovers as after a crash",
            Self::LogCut => {
                "the segment was sealed without an fsync: the next open cuts the log here and \
                 removes the segments after it"
            }
            Self::RecoveryPointIgnored => {
                "the next open checks every sealed segment in full and cuts the log at the first \
                 damage"
            }
        })
    }
}

impl Problem {
    fn new(path: &Path, position: u64, kind: ProblemKind, remedy: Remedy) -> Self {
        Self {
            path: path.to_path_buf(),
            position,
            kind,
            remedy,
        }
    }

    fn corruption(path: &Path, position: u64, kind: CorruptionKind) -> Self {
        Self::new(path, position, ProblemKind::Corruption(kind), Remedy::None)
    }

    fn unreadable(path: &Path, e: &io::Error) -> Self {
        Self::new(
            path,
            0,
            ProblemKind::Unreadable(e.to_string()),
            Remedy::None,
        )
    }

    /// Turns an error met while checking `path` into a problem with it, so that one unreadable
    /// file does not stop the checks of the others.
    fn from_error(path: &Path, e: Error) -> Self {
        match e {
            Error::Io { path, source } => Self::unreadable(&path, &source),
            Error::Corruption {
                path,
                position,
                kind,
            } => Self::corruption(&path, position, kind),
            other => Self::new(
                path,
                0,
                ProblemKind::Unreadable(other.to_string()),
                Remedy::None,
            ),
        }
    }

    /// True when the next open of the log repairs the problem by itself.
    pub fn is_repairable(&self) -> bool {
        !matches!(self.remedy, Remedy::None)
    }

    /// What is wrong and, when the next open repairs it, how, in one line.
    pub fn message(&self) -> String {
        match self.remedy {
            Remedy::None => self.kind.to_string(),
            remedy => format!("{}; {remedy}", self.kind),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: byte {}: {}",
            self.path.display(),
            self.position,
            self.message()
        )
    }
}

/// Decodes one segment (`.log`), offset index (`.index`) or time index (`.timeindex`) file.
///
/// The kind and base offset come from the file name; a file whose name is not a segment file
/// name is recognised by the magic at its start instead. A segment's batches are listed up to
/// the first damaged one, with every check [`verify_dir`] makes inside one segment (the first
/// batch must start at the file's base offset). An index's entries are all listed; the first
/// entry that breaks the index's order is reported as a problem.
///
/// Errors are I/O failures only (a missing file, or one that is not a Sluice file at all, is an
/// `Error::Io`); damage is reported in the returned [`FileReport::problems`].
pub fn inspect_file(fs: &dyn FileSystem, path: &Path) -> Result<FileReport> {
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(FileKind::parse_file_name);
    let (kind, base_offset) = match named {
        Some(found) => found,
        None => sniff(fs, path)?,
    };
    match kind {
        FileKind::Segment => {
            let mut batches = Vec::new();
            let check = check_segment(fs, path, base_offset, 0, |b| batches.push(*b))?;
            Ok(FileReport {
                path: path.to_path_buf(),
                base_offset,
                len: check.len,
                contents: FileContents::Segment(batches),
                problems: check.header.into_iter().chain(check.damage).collect(),
            })
        }
        FileKind::OffsetIndex | FileKind::TimeIndex => {
            let bytes = fs.read_all(path).at(path)?;
            let mut problems = Vec::new();
            if let Err(k) = decode_file_header(kind, base_offset, &bytes) {
                problems.push(Problem::new(
                    path,
                    0,
                    ProblemKind::Corruption(k),
                    Remedy::IndexRebuilt,
                ));
            }
            let body = bytes.get(FILE_HEADER_LEN..).unwrap_or_default();
            let (contents, damage) = match kind {
                FileKind::TimeIndex => {
                    let (entries, damage) = time_entries(body);
                    (FileContents::TimeIndex(entries), damage)
                }
                _ => {
                    let (entries, damage) = offset_entries(body);
                    (FileContents::OffsetIndex(entries), damage)
                }
            };
            problems.extend(damage.map(|(at, k)| {
                Problem::new(path, at, ProblemKind::Corruption(k), Remedy::IndexRebuilt)
            }));
            Ok(FileReport {
                path: path.to_path_buf(),
                base_offset,
                len: bytes.len() as u64,
                contents,
                problems,
            })
        }
    }
}

/// Finds the kind and base offset of a file whose name does not tell them, from its header.
fn sniff(fs: &dyn FileSystem, path: &Path) -> Result<(FileKind, u64)> {
    let file = fs.open(path, OpenMode::Read).at(path)?;
    let len = file.len().at(path)?;
    let mut header = [0u8; FILE_HEADER_LEN];
    let have = header.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    if let Some(buf) = header.get_mut(..have) {
        file.read_exact_at(buf, 0).at(path)?;
    }
    let (magic, rest) = header.split_at(4);
    let kind = [
        FileKind::Segment,
        FileKind::OffsetIndex,
        FileKind::TimeIndex,
    ]
    .into_iter()
    .find(|k| k.magic() == magic)
    .ok_or_else(|| {
        Error::io(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a Sluice segment or index file: the name is not \
                     <20 digits>.log, .index or .timeindex and the file starts with no known magic",
            ),
        )
    })?;
    let mut base = [0u8; 8];
    base.copy_from_slice(rest.get(4..12).unwrap_or(&[0; 8]));
    Ok((kind, u64::from_le_bytes(base)))
}

/// Position of entry `i` of an index file.
fn entry_position(i: usize, entry_len: usize) -> u64 {
    (i as u64)
        .saturating_mul(entry_len as u64)
        .saturating_add(HEADER_LEN)
}

/// Every whole entry of an offset index body, and the first damage with its byte position in
/// the file. The verdict is the decoder's (the one open uses); only its position is found here.
fn offset_entries(body: &[u8]) -> (Vec<OffsetEntry>, Option<(u64, CorruptionKind)>) {
    let view = OffsetIndexView::new(body);
    let entries: Vec<OffsetEntry> = (0..view.len()).filter_map(|i| view.get(i)).collect();
    let damage = decode_offset_entries(body).err().map(|kind| {
        let at = if !body.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            entries.len()
        } else if entries
            .first()
            .is_some_and(|e| u64::from(e.position) < HEADER_LEN)
        {
            0
        } else {
            entries
                .windows(2)
                .position(|w| {
                    matches!(w, [a, b] if b.relative_offset <= a.relative_offset
                        || b.position <= a.position)
                })
                .map_or(0, |i| i + 1)
        };
        (entry_position(at, OFFSET_ENTRY_LEN), kind)
    });
    (entries, damage)
}

/// Every whole entry of a time index body, and the first damage with its position.
fn time_entries(body: &[u8]) -> (Vec<TimeEntry>, Option<(u64, CorruptionKind)>) {
    let view = TimeIndexView::new(body);
    let entries: Vec<TimeEntry> = (0..view.len()).filter_map(|i| view.get(i)).collect();
    let damage = decode_time_entries(body).err().map(|kind| {
        let at = if !body.len().is_multiple_of(TIME_ENTRY_LEN) {
            entries.len()
        } else {
            entries
                .windows(2)
                .position(|w| {
                    matches!(w, [a, b] if b.timestamp_ms <= a.timestamp_ms
                        || b.relative_offset <= a.relative_offset)
                })
                .map_or(0, |i| i + 1)
        };
        (entry_position(at, TIME_ENTRY_LEN), kind)
    });
    (entries, damage)
}

/// The outcome of reading a segment's batches from the first one to the first damage.
#[derive(Debug)]
struct SegmentCheck {
    len: u64,
    /// A damaged file header. The batches are read regardless, as open does.
    header: Option<Problem>,
    /// The first damaged batch; the scan stops there, since nothing after it can be located.
    damage: Option<Problem>,
    /// One past the last record of the last whole batch (the base offset when there is none).
    end_offset: u64,
    /// Max timestamp of the last whole batch, or the one given when there is none.
    max_timestamp_ms: u64,
    last_batch: Option<BatchSummary>,
}

/// Reads every batch of a segment, checking each one's CRC, record layout, offset (continuing
/// from `base_offset`) and timestamps (never before `previous_max_timestamp_ms`). Calls
/// `on_batch` for each batch that passes. Only I/O failures are errors.
fn check_segment(
    fs: &dyn FileSystem,
    path: &Path,
    base_offset: u64,
    previous_max_timestamp_ms: u64,
    mut on_batch: impl FnMut(&BatchSummary),
) -> Result<SegmentCheck> {
    let file = fs.open(path, OpenMode::Read).at(path)?;
    let len = file.len().at(path)?;
    let header = if len < HEADER_LEN {
        Some(CorruptionKind::Truncated {
            need: HEADER_LEN,
            have: len,
        })
    } else {
        let mut buf = [0u8; FILE_HEADER_LEN];
        file.read_exact_at(&mut buf, 0).at(path)?;
        decode_file_header(FileKind::Segment, base_offset, &buf).err()
    };
    let mut check = SegmentCheck {
        len,
        header: header.map(|k| Problem::corruption(path, 0, k)),
        damage: None,
        end_offset: base_offset,
        max_timestamp_ms: previous_max_timestamp_ms,
        last_batch: None,
    };
    for item in BatchScanner::new(&*file, path, HEADER_LEN.min(len), len, SCAN_CHUNK_BYTES) {
        let batch = match item {
            Ok(b) => b,
            Err(Error::Corruption { position, kind, .. }) => {
                check.damage = Some(Problem::corruption(path, position, kind));
                break;
            }
            Err(e) => return Err(e),
        };
        if let Err(kind) = check_batch(
            &batch,
            check.end_offset,
            check.max_timestamp_ms,
            base_offset,
        ) {
            check.damage = Some(Problem::corruption(path, batch.position, kind));
            break;
        }
        let summary = BatchSummary::from_scanned(&batch);
        on_batch(&summary);
        check.end_offset = summary.end_offset();
        check.max_timestamp_ms = summary.max_timestamp_ms;
        check.last_batch = Some(summary);
    }
    Ok(check)
}

/// Checks every directory under `dir` (and `dir` itself) that holds segment files as the
/// directory of one partition's log.
///
/// For each partition: every segment's header; every batch's CRC and record layout; offsets
/// continuing across batches and across segments (a segment ends exactly where the next one
/// begins); timestamps never decreasing; each sealed segment's offset and time index (present,
/// header, entries strictly increasing, each offset entry at the start of a batch with that
/// relative offset, each time entry naming a batch whose max timestamp it holds, the last
/// entries naming the segment's last batch). The last (active) segment's index files are written
/// only by a clean close, so they may be missing; when present they are checked the same way,
/// and they must cover the whole segment when a valid clean-shutdown marker vouches for it. The
/// marker, when present, must decode and match the last segment's name, length and end offset.
///
/// The result lists every problem found; a file that cannot be read is a problem too. Only a
/// `dir` that cannot be listed is an error.
pub fn verify_dir(fs: &dyn FileSystem, dir: &Path) -> Result<VerifyReport> {
    let root_names = fs.list_dir(dir).at(dir)?;
    let mut report = VerifyReport::default();
    let mut pending = vec![(dir.to_path_buf(), Some(root_names))];
    while let Some((d, names)) = pending.pop() {
        let names = match names {
            Some(names) => Ok(names),
            None => fs.list_dir(&d),
        };
        let mut names = match names {
            Ok(names) => names,
            Err(e) => {
                report.problems.push(Problem::unreadable(&d, &e));
                continue;
            }
        };
        names.sort();
        let is_partition = names
            .iter()
            .any(|n| matches!(FileKind::parse_file_name(n), Some((FileKind::Segment, _))));
        if is_partition {
            verify_partition(fs, &d, &names, &mut report);
        }
        let mut subdirs = match fs.list_subdirs(&d) {
            Ok(subdirs) => subdirs,
            Err(e) => {
                report.problems.push(Problem::unreadable(&d, &e));
                Vec::new()
            }
        };
        // Partitions are numbered directories: visit them in numeric order, then the rest by name.
        subdirs.sort_by_key(|s| (s.parse::<u64>().map_or((1, 0), |n| (0, n)), s.clone()));
        pending.extend(subdirs.into_iter().rev().map(|s| (d.join(s), None)));
    }
    Ok(report)
}

/// What the clean-shutdown marker of a partition says, as far as it can be read.
#[derive(Debug)]
enum MarkerState {
    Absent,
    /// Damaged, unreadable or not matching the files: open would ignore it.
    Ignored,
    /// Decoded and naming the last segment with its current length: open would trust it, and
    /// the last segment's index must then cover it whole.
    Trusted(CleanMarker),
}

fn verify_partition(fs: &dyn FileSystem, dir: &Path, names: &[String], report: &mut VerifyReport) {
    report.partitions.push(dir.to_path_buf());
    let mut present: BTreeMap<u64, [bool; 3]> = BTreeMap::new();
    for name in names {
        if let Some((kind, base)) = FileKind::parse_file_name(name) {
            let slots = present.entry(base).or_default();
            match kind {
                FileKind::Segment => slots[0] = true,
                FileKind::OffsetIndex => slots[1] = true,
                FileKind::TimeIndex => slots[2] = true,
            }
        }
    }
    // Index files without a segment are left over from retention; open removes them.
    let bases: Vec<(u64, [bool; 3])> = present
        .into_iter()
        .filter(|(_, [segment, ..])| *segment)
        .collect();
    report.segments += bases.len();
    let problems = &mut report.problems;

    // The marker is read first, since it decides how much the last segment's index must cover,
    // but its problems are listed after the segments', in file name order.
    let marker_path = dir.join(CLEAN_MARKER_NAME);
    let last_base = bases.last().map(|(b, _)| *b);
    let mut marker_problems = Vec::new();
    let marker = if names.iter().any(|n| n == CLEAN_MARKER_NAME) {
        check_marker(fs, dir, &marker_path, last_base, &mut marker_problems)
    } else {
        MarkerState::Absent
    };

    // After a crash, open checks the sealed segments from the recovery point on in full and cuts
    // the log at the first damage among them; a trusted marker means a clean close flushed all.
    let point_path = dir.join(RECOVERY_POINT_NAME);
    let recovery_point = if names.iter().any(|n| n == RECOVERY_POINT_NAME) {
        let point = fs
            .read_all(&point_path)
            .map_err(|e| Problem::unreadable(&point_path, &e))
            .and_then(|b| {
                RecoveryPoint::decode(&b).map_err(|k| {
                    Problem::new(
                        &point_path,
                        0,
                        ProblemKind::Corruption(k),
                        Remedy::RecoveryPointIgnored,
                    )
                })
            });
        match point {
            Ok(p) => Some(p.offset),
            Err(problem) => {
                marker_problems.push(problem);
                Some(0)
            }
        }
    } else {
        None
    };
    let unflushed_from = match marker {
        MarkerState::Trusted(_) => None,
        _ => recovery_point,
    };

    let mut previous_max_timestamp_ms = 0;
    let mut iter = bases.iter().peekable();
    while let Some(&(base, [_, has_offsets, has_times])) = iter.next() {
        let next_base = iter.peek().map(|(b, _)| *b);
        let sealed = next_base.is_some();
        let trusted = match marker {
            MarkerState::Trusted(m) if !sealed => Some(m),
            _ => None,
        };
        let segment_path = dir.join(FileKind::Segment.file_name(base));
        let mut offsets = IndexCheck::load(fs, dir, FileKind::OffsetIndex, base, has_offsets);
        let mut times = IndexCheck::load(fs, dir, FileKind::TimeIndex, base, has_times);
        let check = check_segment(fs, &segment_path, base, previous_max_timestamp_ms, |b| {
            offsets.on_batch(b, base);
            times.on_batch(b, base);
        });
        let check = match check {
            Ok(check) => check,
            Err(e) => {
                problems.push(Problem::from_error(&segment_path, e));
                for index in [offsets, times] {
                    problems.extend(index.problem(sealed));
                }
                continue;
            }
        };
        // A sealed segment past the recovery point may be torn: open cuts the log in it.
        let unflushed = sealed && unflushed_from.is_some_and(|point| base >= point);
        let mut header = check.header;
        if unflushed && let Some(p) = header.as_mut() {
            p.remedy = Remedy::LogCut;
        }
        problems.extend(header);
        let complete = check.damage.is_none();
        if let Some(mut damage) = check.damage {
            // After a crash, open scans the active segment and cuts it at the first damage; a
            // segment that is sealed and flushed, or vouched for by the marker, is never cut.
            if unflushed {
                damage.remedy = Remedy::LogCut;
            } else if !sealed && trusted.is_none() {
                damage.remedy = Remedy::TailCut;
            }
            problems.push(damage);
        } else if let Some(next) = next_base
            && check.end_offset != next
        {
            let mut missing = Problem::corruption(
                &segment_path,
                check.len,
                CorruptionKind::MissingRecords {
                    expected_end: next,
                    found_end: check.end_offset,
                },
            );
            if unflushed {
                missing.remedy = Remedy::LogCut;
            }
            problems.push(missing);
        }
        // Entries past a damaged batch cannot be checked, and a segment that is neither sealed
        // nor vouched for may carry index files from an earlier clean close that cover only its
        // beginning.
        let whole = complete && (sealed || trusted.is_some());
        let last = check.last_batch.as_ref();
        offsets.finish(complete, whole, last);
        times.finish(complete, whole, last);
        for index in [offsets, times] {
            problems.extend(index.problem(sealed));
        }
        if let Some(m) = trusted
            && complete
            && m.end_offset != check.end_offset
        {
            marker_problems.push(Problem::new(
                &marker_path,
                0,
                ProblemKind::MarkerMismatch {
                    field: "end offset",
                    marker: m.end_offset,
                    files: check.end_offset,
                },
                Remedy::None,
            ));
        }
        previous_max_timestamp_ms = check.max_timestamp_ms;
    }
    problems.append(&mut marker_problems);
}

/// Reads the clean-shutdown marker and reports what open would ignore it for.
fn check_marker(
    fs: &dyn FileSystem,
    dir: &Path,
    path: &Path,
    last_base: Option<u64>,
    problems: &mut Vec<Problem>,
) -> MarkerState {
    let ignored = |kind| Problem::new(path, 0, kind, Remedy::MarkerIgnored);
    let marker = match fs.read_all(path) {
        Ok(bytes) => CleanMarker::decode(&bytes),
        Err(e) => {
            problems.push(Problem::unreadable(path, &e));
            return MarkerState::Ignored;
        }
    };
    let marker = match marker {
        Ok(m) => m,
        Err(kind) => {
            problems.push(ignored(ProblemKind::Corruption(kind)));
            return MarkerState::Ignored;
        }
    };
    let Some(last_base) = last_base else {
        return MarkerState::Ignored;
    };
    if marker.active_base_offset != last_base {
        problems.push(ignored(ProblemKind::MarkerMismatch {
            field: "last segment",
            marker: marker.active_base_offset,
            files: last_base,
        }));
        return MarkerState::Ignored;
    }
    let last = dir.join(FileKind::Segment.file_name(last_base));
    // An unreadable segment is reported when its batches are read.
    let Ok(len) = fs.open(&last, OpenMode::Read).and_then(|f| f.len()) else {
        return MarkerState::Ignored;
    };
    if marker.active_len != len {
        problems.push(ignored(ProblemKind::MarkerMismatch {
            field: "last segment length",
            marker: marker.active_len,
            files: len,
        }));
        return MarkerState::Ignored;
    }
    MarkerState::Trusted(marker)
}

/// The entries of one index file, checked against the batches of its segment as a scan passes
/// them. Both entries and batches strictly increase, so one walk over each suffices.
#[derive(Debug)]
struct IndexCheck {
    path: PathBuf,
    kind: FileKind,
    /// `None` when there is nothing (more) to check: the file is absent or already failed.
    entries: Option<Entries>,
    /// Index of the next entry no batch has matched yet.
    next: usize,
    missing: bool,
    problem: Option<Problem>,
}

#[derive(Debug)]
enum Entries {
    Offsets(Vec<OffsetEntry>),
    Times(Vec<TimeEntry>),
}

impl Entries {
    fn len(&self) -> usize {
        match self {
            Self::Offsets(e) => e.len(),
            Self::Times(e) => e.len(),
        }
    }
}

impl IndexCheck {
    /// Reads and decodes an index file; a damaged header or body is its one problem.
    fn load(
        fs: &dyn FileSystem,
        dir: &Path,
        kind: FileKind,
        base_offset: u64,
        present: bool,
    ) -> Self {
        let path = dir.join(kind.file_name(base_offset));
        let mut check = Self {
            path,
            kind,
            entries: None,
            next: 0,
            missing: !present,
            problem: None,
        };
        if !present {
            return check;
        }
        let bytes = match fs.read_all(&check.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                check.problem = Some(Problem::unreadable(&check.path, &e));
                return check;
            }
        };
        if let Err(k) = decode_file_header(kind, base_offset, &bytes) {
            check.fail_at(0, k);
            return check;
        }
        let body = bytes.get(FILE_HEADER_LEN..).unwrap_or_default();
        let (entries, damage) = match kind {
            FileKind::TimeIndex => {
                let (e, damage) = time_entries(body);
                (Entries::Times(e), damage)
            }
            _ => {
                let (e, damage) = offset_entries(body);
                (Entries::Offsets(e), damage)
            }
        };
        match damage {
            Some((at, k)) => check.fail_at(at, k),
            None => check.entries = Some(entries),
        }
        check
    }

    fn entry_len(&self) -> usize {
        match self.kind {
            FileKind::TimeIndex => TIME_ENTRY_LEN,
            _ => OFFSET_ENTRY_LEN,
        }
    }

    fn fail_at(&mut self, position: u64, kind: CorruptionKind) {
        self.entries = None;
        self.problem = Some(Problem::new(
            &self.path,
            position,
            ProblemKind::Corruption(kind),
            Remedy::IndexRebuilt,
        ));
    }

    fn fail(&mut self, entry: usize, why: &'static str) {
        let position = entry_position(entry, self.entry_len());
        self.fail_at(position, CorruptionKind::BadIndex(why));
    }

    /// Matches the next entry against a batch that passed its checks. An entry that lies
    /// before the batch was passed over by every batch before it, so it names no batch.
    fn on_batch(&mut self, b: &BatchSummary, segment_base: u64) {
        let relative = b.base_offset.saturating_sub(segment_base);
        let i = self.next;
        let verdict = match &self.entries {
            Some(Entries::Offsets(e)) => e.get(i).map(|e| {
                let at = u64::from(e.position);
                if at < b.position {
                    Err("entry does not point at the start of a batch")
                } else if at > b.position {
                    Ok(false)
                } else if u64::from(e.relative_offset) != relative {
                    Err("entry's relative offset is not that of the batch at its position")
                } else {
                    Ok(true)
                }
            }),
            Some(Entries::Times(e)) => e.get(i).map(|e| {
                let r = u64::from(e.relative_offset);
                if r < relative {
                    Err("entry names an offset where no batch starts")
                } else if r > relative {
                    Ok(false)
                } else if e.timestamp_ms != b.max_timestamp_ms {
                    Err("entry's timestamp is not its batch's max timestamp")
                } else {
                    Ok(true)
                }
            }),
            None => None,
        };
        match verdict {
            Some(Ok(true)) => self.next += 1,
            Some(Err(why)) => self.fail(i, why),
            Some(Ok(false)) | None => {}
        }
    }

    /// Ends the walk. `complete`: the scan reached the end of the segment without damage, so
    /// an entry no batch matched names nothing. `whole`: the index must also name the segment's
    /// last batch (`last`), as a sealed index always does.
    fn finish(&mut self, complete: bool, whole: bool, last: Option<&BatchSummary>) {
        let Some(entries) = &self.entries else {
            return;
        };
        if !complete {
            return;
        }
        let n = entries.len();
        if self.next < n {
            let why = match entries {
                Entries::Offsets(_) => "entry points past the last batch",
                Entries::Times(_) => "entry names an offset past the last batch",
            };
            self.fail(self.next, why);
            return;
        }
        let Some(last) = last else {
            return;
        };
        if !whole {
            return;
        }
        let names_last = match entries {
            Entries::Offsets(e) => e
                .last()
                .is_some_and(|e| u64::from(e.position) == last.position),
            // Equal timestamps are indexed once, so the last time entry may name an earlier
            // batch, but never an older timestamp than the newest batch's.
            Entries::Times(e) => e
                .last()
                .is_some_and(|e| e.timestamp_ms == last.max_timestamp_ms),
        };
        if !names_last {
            let why = if n == 0 {
                "no entries"
            } else {
                "last entry does not name the segment's last batch"
            };
            self.fail(n.saturating_sub(1), why);
        }
    }

    /// The problem found, if any; a sealed segment's missing index is one.
    fn problem(self, sealed: bool) -> Option<Problem> {
        if self.missing && sealed {
            return Some(Problem::new(
                &self.path,
                0,
                ProblemKind::MissingIndex(self.kind),
                Remedy::IndexRebuilt,
            ));
        }
        self.problem
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::io::sim::SimFs;
    use crate::{Clock, Log, LogOptions, Record};

    /// A clock that moves 1 ms every time it is read, so every batch has its own timestamp and
    /// the time index has an entry wherever the offset index has one.
    #[derive(Debug)]
    struct TickingClock(AtomicU64);

    impl Clock for TickingClock {
        fn now_ms(&self) -> u64 {
            self.0.fetch_add(1, Ordering::SeqCst)
        }
    }

    fn dir() -> PathBuf {
        PathBuf::from("/data/streams/s.1/0")
    }

    fn seg(base: u64) -> PathBuf {
        dir().join(FileKind::Segment.file_name(base))
    }

    fn index(kind: FileKind, base: u64) -> PathBuf {
        dir().join(kind.file_name(base))
    }

    /// A log of 12 batches of 3 records, about 4 batches per segment, indexed every other
    /// batch; closed cleanly when `close`, else dropped as in a crash.
    fn written(close: bool) -> SimFs {
        let fs = SimFs::new();
        let options = LogOptions::default()
            .segment_bytes_max(700)
            .index_interval_bytes(200)
            .clock(Arc::new(TickingClock(AtomicU64::new(1_700_000_000_000))));
        let log = Log::open_with_fs(Arc::new(fs.clone()), dir(), options).unwrap();
        for b in 0..12u64 {
            let batch: Vec<Record> = (0..3)
                .map(|i| Record::new(format!("k{i}"), vec![b as u8; 40]))
                .collect();
            log.append(&batch).unwrap();
        }
        if close {
            log.close().unwrap();
        }
        fs
    }

    fn bases(fs: &SimFs) -> Vec<u64> {
        let mut out: Vec<u64> = fs
            .file_names()
            .iter()
            .filter_map(|p| FileKind::parse_file_name(p.file_name()?.to_str()?))
            .filter(|(k, _)| *k == FileKind::Segment)
            .map(|(_, b)| b)
            .collect();
        out.sort();
        out
    }

    fn batches(fs: &SimFs, base: u64) -> Vec<BatchSummary> {
        match inspect_file(fs, &seg(base)).unwrap().contents {
            FileContents::Segment(b) => b,
            other => panic!("not a segment: {other:?}"),
        }
    }

    fn verify(fs: &SimFs) -> VerifyReport {
        verify_dir(fs, Path::new("/data")).unwrap()
    }

    #[test]
    fn a_clean_log_verifies_clean_whether_closed_or_crashed() {
        for close in [true, false] {
            let fs = written(close);
            let report = verify(&fs);
            assert_eq!(report.problems, vec![], "close: {close}");
            assert_eq!(report.partitions, vec![dir()]);
            let bases = bases(&fs);
            assert!(bases.len() >= 3, "{bases:?}");
            assert_eq!(report.segments, bases.len());
        }
    }

    #[test]
    fn a_reopened_and_closed_log_verifies_clean() {
        let fs = written(true);
        // Reopening after a clean close seals the last segment and starts an empty one, which a
        // close without appends leaves empty, with empty index files and a marker for it.
        for append in [true, false, false, true] {
            let log =
                Log::open_with_fs(Arc::new(fs.clone()), dir(), LogOptions::default()).unwrap();
            if append {
                log.append(&[Record::new("k", "v")]).unwrap();
            }
            log.close().unwrap();
            assert_eq!(verify(&fs).problems, vec![]);
        }
        // Index files left by a clean close of an empty segment cover only its start once it
        // is appended to after the next open; that is no problem after a crash either.
        let log = Log::open_with_fs(Arc::new(fs.clone()), dir(), LogOptions::default()).unwrap();
        log.append(&[Record::new("k", "v")]).unwrap();
        drop(log);
        assert_eq!(verify(&fs).problems, vec![]);
    }

    #[test]
    fn inspect_lists_every_batch_and_entry() {
        let fs = written(true);
        let bases = bases(&fs);
        let mut next = 0;
        let mut total = 0;
        for &base in &bases {
            let report = inspect_file(&fs, &seg(base)).unwrap();
            assert!(report.is_intact(), "{report:?}");
            assert_eq!(report.kind(), FileKind::Segment);
            assert_eq!(report.base_offset, base);
            let FileContents::Segment(batches) = report.contents else {
                unreachable!()
            };
            let mut position = HEADER_LEN;
            for b in &batches {
                assert_eq!(b.position, position);
                assert_eq!(b.base_offset, next);
                assert_eq!(b.record_count, 3);
                position += u64::from(b.batch_len);
                next = b.end_offset();
            }
            assert_eq!(position, report.len);
            total += batches.len();
        }
        assert_eq!(total, 12);

        let first = batches(&fs, 0);
        let offsets = inspect_file(&fs, &index(FileKind::OffsetIndex, 0)).unwrap();
        assert!(offsets.is_intact());
        let FileContents::OffsetIndex(entries) = offsets.contents else {
            panic!("{offsets:?}")
        };
        assert!(entries.len() >= 2, "{entries:?}");
        let last = entries.last().unwrap();
        assert_eq!(u64::from(last.position), first.last().unwrap().position);
        let times = inspect_file(&fs, &index(FileKind::TimeIndex, 0)).unwrap();
        assert_eq!(times.kind(), FileKind::TimeIndex);
        assert!(times.is_intact());
    }

    #[test]
    fn a_flipped_byte_in_a_sealed_segment_is_one_checksum_problem() {
        let fs = written(true);
        let path = seg(0);
        let second = batches(&fs, 0)[1];
        let mut bytes = fs.contents(&path).unwrap();
        bytes[(second.position + 50) as usize] ^= 0x10;
        fs.set_contents(&path, bytes);
        let report = verify(&fs);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let p = &report.problems[0];
        assert_eq!(p.path, path);
        assert_eq!(p.position, second.position);
        assert!(matches!(
            p.kind,
            ProblemKind::Corruption(CorruptionKind::ChecksumMismatch { .. })
        ));
        assert_eq!(p.kind.name(), "checksum_mismatch");
        assert!(!p.is_repairable());

        // Inspect lists the batch before the damage, then the damage.
        let report = inspect_file(&fs, &path).unwrap();
        assert_eq!(report.problems, vec![p.clone()]);
        assert!(matches!(&report.contents, FileContents::Segment(b) if b.len() == 1));
    }

    #[test]
    fn a_segment_cut_inside_a_batch_is_one_truncation_problem() {
        let fs = written(true);
        let path = seg(0);
        let last = *batches(&fs, 0).last().unwrap();
        let bytes = fs.contents(&path).unwrap();
        fs.set_contents(&path, bytes[..(last.position + 30) as usize].to_vec());
        let problems = verify(&fs).problems;
        assert_eq!(
            problems,
            vec![Problem {
                path,
                position: last.position,
                kind: ProblemKind::Corruption(CorruptionKind::Truncated { need: 40, have: 30 }),
                remedy: Remedy::None,
            }]
        );
    }

    #[test]
    fn damage_past_the_recovery_point_is_where_the_next_open_cuts_the_log() {
        let fs = written(false);
        let b = bases(&fs);
        let path = seg(b[1]);
        let last = *batches(&fs, b[1]).last().unwrap();
        let bytes = fs.contents(&path).unwrap();
        fs.set_contents(&path, bytes[..last.position as usize + 10].to_vec());
        let point = dir().join(RECOVERY_POINT_NAME);
        let remedies = |fs: &SimFs| -> Vec<(PathBuf, Remedy)> {
            verify(fs)
                .problems
                .into_iter()
                .filter(|p| p.path == path || p.path == point)
                .map(|p| (p.path, p.remedy))
                .collect()
        };
        // Past the point: a torn tail of a segment sealed without an fsync.
        fs.set_contents(&point, RecoveryPoint { offset: b[1] }.encode().to_vec());
        assert_eq!(remedies(&fs), vec![(path.clone(), Remedy::LogCut)]);
        // Below it: damage to flushed data, which nothing repairs.
        fs.set_contents(&point, RecoveryPoint { offset: b[2] }.encode().to_vec());
        assert_eq!(remedies(&fs), vec![(path.clone(), Remedy::None)]);
        // A damaged point counts every sealed segment as unflushed.
        fs.set_contents(&point, b"SRCP".to_vec());
        assert_eq!(
            remedies(&fs),
            vec![
                (path.clone(), Remedy::LogCut),
                (point.clone(), Remedy::RecoveryPointIgnored)
            ]
        );
        // And the next open does what the report says.
        let log = Log::open_with_fs(Arc::new(fs.clone()), dir(), LogOptions::default()).unwrap();
        assert_eq!(log.end_offset(), last.base_offset);
        assert_eq!(bases(&fs), b[..2].to_vec());
    }

    #[test]
    fn a_segment_cut_between_batches_misses_records_and_its_index_points_past_it() {
        let fs = written(true);
        let path = seg(0);
        let all = batches(&fs, 0);
        let last = *all.last().unwrap();
        let bytes = fs.contents(&path).unwrap();
        fs.set_contents(&path, bytes[..last.position as usize].to_vec());
        let problems = verify(&fs).problems;
        let next_base = bases(&fs)[1];
        let entries = |kind| match inspect_file(&fs, &index(kind, 0)).unwrap().contents {
            FileContents::OffsetIndex(e) => e.len(),
            FileContents::TimeIndex(e) => e.len(),
            FileContents::Segment(_) => unreachable!(),
        };
        assert_eq!(
            problems,
            vec![
                Problem::corruption(
                    &path,
                    last.position,
                    CorruptionKind::MissingRecords {
                        expected_end: next_base,
                        found_end: last.base_offset,
                    },
                ),
                Problem::new(
                    &index(FileKind::OffsetIndex, 0),
                    entry_position(entries(FileKind::OffsetIndex) - 1, OFFSET_ENTRY_LEN),
                    ProblemKind::Corruption(CorruptionKind::BadIndex(
                        "entry points past the last batch"
                    )),
                    Remedy::IndexRebuilt,
                ),
                Problem::new(
                    &index(FileKind::TimeIndex, 0),
                    entry_position(entries(FileKind::TimeIndex) - 1, TIME_ENTRY_LEN),
                    ProblemKind::Corruption(CorruptionKind::BadIndex(
                        "entry names an offset past the last batch"
                    )),
                    Remedy::IndexRebuilt,
                ),
            ]
        );
    }

    #[test]
    fn a_damaged_index_entry_is_one_problem_at_that_entry() {
        let fs = written(true);
        let path = index(FileKind::OffsetIndex, 0);
        let mut bytes = fs.contents(&path).unwrap();
        // Entry 0's position moves one byte into its batch.
        bytes[20] = bytes[20].wrapping_add(1);
        fs.set_contents(&path, bytes.clone());
        assert_eq!(
            verify(&fs).problems,
            vec![Problem::new(
                &path,
                16,
                ProblemKind::Corruption(CorruptionKind::BadIndex(
                    "entry does not point at the start of a batch"
                )),
                Remedy::IndexRebuilt,
            )]
        );

        // Entry 1 made equal to entry 0 breaks the order; inspect finds it too.
        let (e0, rest) = bytes.split_at_mut(24);
        rest[..8].copy_from_slice(&e0[16..24]);
        fs.set_contents(&path, bytes);
        let expected = vec![Problem::new(
            &path,
            24,
            ProblemKind::Corruption(CorruptionKind::BadIndex("offset entries out of order")),
            Remedy::IndexRebuilt,
        )];
        assert_eq!(verify(&fs).problems, expected);
        assert_eq!(inspect_file(&fs, &path).unwrap().problems, expected);
    }

    #[test]
    fn a_time_entry_with_another_timestamp_is_a_problem() {
        let fs = written(true);
        let path = index(FileKind::TimeIndex, 0);
        let mut bytes = fs.contents(&path).unwrap();
        let n = (bytes.len() - 16) / TIME_ENTRY_LEN;
        // The last entry's timestamp goes up by one: still in order, but no longer its batch's.
        let at = 16 + (n - 1) * TIME_ENTRY_LEN;
        bytes[at] = bytes[at].wrapping_add(1);
        fs.set_contents(&path, bytes);
        let problems = verify(&fs).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, path);
        assert_eq!(problems[0].position, at as u64);
    }

    #[test]
    fn a_missing_index_of_a_sealed_segment_is_one_repairable_problem() {
        let fs = written(true);
        let path = index(FileKind::TimeIndex, 0);
        fs.remove_file(&path).unwrap();
        let problems = verify(&fs).problems;
        assert_eq!(
            problems,
            vec![Problem::new(
                &path,
                0,
                ProblemKind::MissingIndex(FileKind::TimeIndex),
                Remedy::IndexRebuilt
            )]
        );
        assert!(problems[0].is_repairable());
        assert_eq!(
            problems[0].to_string(),
            format!(
                "{}: byte 0: missing time index; the next open rebuilds it from the segment data",
                path.display()
            )
        );
    }

    #[test]
    fn the_active_segment_may_lack_its_index_but_a_damaged_tail_is_reported() {
        let fs = written(false);
        let last_base = *bases(&fs).last().unwrap();
        let path = seg(last_base);
        assert!(!fs.exists(&index(FileKind::OffsetIndex, last_base)).unwrap());
        let mut bytes = fs.contents(&path).unwrap();
        let cut = bytes.len() - 5;
        bytes.truncate(cut);
        fs.set_contents(&path, bytes);
        let last = *batches(&fs, last_base).last().unwrap();
        let problems = verify(&fs).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, path);
        assert_eq!(
            problems[0].position,
            last.position + u64::from(last.batch_len)
        );
        assert_eq!(problems[0].remedy, Remedy::TailCut);
    }

    #[test]
    fn a_missing_segment_leaves_a_gap_in_the_offsets() {
        let fs = written(true);
        let bases = bases(&fs);
        for kind in [
            FileKind::Segment,
            FileKind::OffsetIndex,
            FileKind::TimeIndex,
        ] {
            fs.remove_file(&index(kind, bases[1])).unwrap();
        }
        let problems = verify(&fs).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, seg(0));
        assert_eq!(
            problems[0].kind,
            ProblemKind::Corruption(CorruptionKind::MissingRecords {
                expected_end: bases[2],
                found_end: bases[1],
            })
        );
    }

    #[test]
    fn the_marker_is_checked() {
        let fs = written(true);
        let marker = dir().join(CLEAN_MARKER_NAME);
        let mut bytes = fs.contents(&marker).unwrap();
        bytes[9] ^= 1;
        fs.set_contents(&marker, bytes.clone());
        let problems = verify(&fs).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, marker);
        assert_eq!(problems[0].kind.name(), "checksum_mismatch");
        assert_eq!(problems[0].remedy, Remedy::MarkerIgnored);

        // A marker for a longer last segment than the one present.
        bytes[9] ^= 1;
        let mut m = CleanMarker::decode(&bytes).unwrap();
        m.active_len += 1;
        fs.set_contents(&marker, m.encode().to_vec());
        let problems = verify(&fs).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind.name(), "marker_mismatch");
    }

    #[test]
    fn damaged_headers_are_reported_at_byte_zero() {
        let fs = written(true);
        let path = seg(0);
        let mut bytes = fs.contents(&path).unwrap();
        bytes[8] ^= 1;
        fs.set_contents(&path, bytes);
        let problems = verify(&fs).problems;
        assert_eq!(
            problems,
            vec![Problem::corruption(
                &path,
                0,
                CorruptionKind::BaseOffsetMismatch {
                    expected: 0,
                    found: 1
                }
            )]
        );
    }

    #[test]
    fn files_that_are_not_sluice_files_are_errors_and_missing_dirs_too() {
        let fs = written(true);
        let junk = PathBuf::from("/data/notes.txt");
        fs.set_contents(&junk, b"hello".to_vec());
        assert!(matches!(inspect_file(&fs, &junk), Err(Error::Io { .. })));
        assert!(matches!(
            inspect_file(&fs, Path::new("/data/none.log")),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            verify_dir(&fs, Path::new("/nowhere")),
            Err(Error::Io { .. })
        ));
        // A renamed segment is recognised by its magic.
        let copy = PathBuf::from("/data/copy");
        fs.set_contents(&copy, fs.contents(&seg(0)).unwrap());
        let report = inspect_file(&fs, &copy).unwrap();
        assert_eq!(report.kind(), FileKind::Segment);
        assert!(report.is_intact());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any damage to any file is reported, never a panic. The one undetectable change is
        /// a crashed log's active segment cut between two batches: that is a shorter log.
        #[test]
        fn damage_anywhere_is_reported_without_panicking(
            file in 0usize..64,
            at in 0usize..4096,
            xor in 1u8..=255,
            cut in proptest::bool::ANY,
        ) {
            let closed = file % 2 == 0;
            let fs = written(closed);
            let active = seg(*bases(&fs).last().unwrap());
            // The synced-point hint is advisory (stale or damaged, it only makes recovery more
            // careful), so damage to it is not damage to the log.
            let names: Vec<PathBuf> = fs
                .file_names()
                .into_iter()
                .filter(|p| !p.ends_with(crate::format::SYNCED_POINT_NAME))
                .collect();
            let path = names[file % names.len()].clone();
            let mut bytes = fs.contents(&path).unwrap();
            if bytes.is_empty() {
                return Ok(());
            }
            let at = at % bytes.len();
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] ^= xor;
            }
            fs.set_contents(&path, bytes);
            let report = verify(&fs);
            let partition = dir();
            for p in &report.problems {
                proptest::prop_assert_eq!(p.path.parent(), Some(partition.as_path()));
            }
            if !(cut && !closed && path == active) {
                proptest::prop_assert!(!report.is_clean(), "{} at {}", path.display(), at);
            }
            let _ = inspect_file(&fs, &path);
        }
    }
}

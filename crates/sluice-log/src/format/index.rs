//! Sparse offset and time indexes of a segment, as bytes.
//!
//! ```text
//! offset index {base_offset:020}.index:      file header (16 B, magic "SIDX") then entries of 8 B:
//!   relative_offset u32 | position u32       the batch with base offset base_offset + relative_offset
//!                                            starts at byte `position` of the segment file
//! time index {base_offset:020}.timeindex:    file header (16 B, magic "STIX") then entries of 12 B:
//!   timestamp_ms u64 | relative_offset u32   the batch at base_offset + relative_offset has max
//!                                            timestamp timestamp_ms
//! ```
//!
//! Entries are written every `index_interval_bytes` of appended data, plus one final entry for the
//! last batch when a segment is sealed, so a sealed segment's last batch (and therefore its end
//! offset and newest timestamp) is found without reading the data. Both relative offsets and
//! timestamps strictly increase (timestamps never decrease in a partition; equal timestamps are
//! not indexed twice). Index files carry no checksum: they are checked for consistency when
//! opened and rebuilt from the segment when they fail the check.

use super::{CorruptionKind, FILE_HEADER_LEN, Reader};

/// Size of one offset index entry.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Size of one time index entry.
pub const TIME_ENTRY_LEN: usize = 12;

/// An offset index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Batch base offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
}

impl OffsetEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> [u8; OFFSET_ENTRY_LEN] {
        let mut out = [0u8; OFFSET_ENTRY_LEN];
        let (a, b) = out.split_at_mut(4);
        a.copy_from_slice(&self.relative_offset.to_le_bytes());
        b.copy_from_slice(&self.position.to_le_bytes());
        out
    }
}

/// A time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Max timestamp of the batch, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Batch base offset minus the segment's base offset.
    pub relative_offset: u32,
}

impl TimeEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> [u8; TIME_ENTRY_LEN] {
        let mut out = [0u8; TIME_ENTRY_LEN];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.timestamp_ms.to_le_bytes());
        b.copy_from_slice(&self.relative_offset.to_le_bytes());
        out
    }
}

/// Decodes all offset entries of an index file body (the bytes after the file header), checking
/// that it is a whole number of entries with strictly increasing offsets and positions.
pub fn decode_offset_entries(body: &[u8]) -> Result<Vec<OffsetEntry>, CorruptionKind> {
    if !body.len().is_multiple_of(OFFSET_ENTRY_LEN) {
        return Err(CorruptionKind::BadIndex(
            "length is not a whole number of entries",
        ));
    }
    let mut r = Reader::new(body);
    let mut out: Vec<OffsetEntry> = Vec::with_capacity(body.len() / OFFSET_ENTRY_LEN);
    while r.position() < body.len() {
        let e = OffsetEntry {
            relative_offset: r.u32()?,
            position: r.u32()?,
        };
        check_offset_order(out.last(), &e)?;
        out.push(e);
    }
    Ok(out)
}

/// Decodes all time entries of a time index file body, with the same checks.
pub fn decode_time_entries(body: &[u8]) -> Result<Vec<TimeEntry>, CorruptionKind> {
    if !body.len().is_multiple_of(TIME_ENTRY_LEN) {
        return Err(CorruptionKind::BadIndex(
            "length is not a whole number of entries",
        ));
    }
    let mut r = Reader::new(body);
    let mut out: Vec<TimeEntry> = Vec::with_capacity(body.len() / TIME_ENTRY_LEN);
    while r.position() < body.len() {
        let e = TimeEntry {
            timestamp_ms: r.u64()?,
            relative_offset: r.u32()?,
        };
        if let Some(prev) = out.last()
            && (e.timestamp_ms <= prev.timestamp_ms || e.relative_offset <= prev.relative_offset)
        {
            return Err(CorruptionKind::BadIndex("time entries out of order"));
        }
        out.push(e);
    }
    Ok(out)
}

fn check_offset_order(prev: Option<&OffsetEntry>, e: &OffsetEntry) -> Result<(), CorruptionKind> {
    match prev {
        Some(p) if e.relative_offset <= p.relative_offset || e.position <= p.position => {
            Err(CorruptionKind::BadIndex("offset entries out of order"))
        }
        None if e.position < FILE_HEADER_LEN as u32 => Err(CorruptionKind::BadIndex(
            "entry points into the file header",
        )),
        _ => Ok(()),
    }
}

/// A read-only view of an index body (mapped or in memory) that answers lookups by binary
/// search without decoding the whole file.
#[derive(Debug, Clone, Copy)]
pub struct OffsetIndexView<'a> {
    body: &'a [u8],
}

impl<'a> OffsetIndexView<'a> {
    /// Wraps a body whose length is a whole number of entries (checked by the caller when the
    /// file was opened; a ragged tail is ignored here).
    pub fn new(body: &'a [u8]) -> Self {
        Self { body }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.body.len() / OFFSET_ENTRY_LEN
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry number `i`.
    pub fn get(&self, i: usize) -> Option<OffsetEntry> {
        let start = i.checked_mul(OFFSET_ENTRY_LEN)?;
        let bytes = self.body.get(start..start.checked_add(OFFSET_ENTRY_LEN)?)?;
        let mut r = Reader::new(bytes);
        Some(OffsetEntry {
            relative_offset: r.u32().ok()?,
            position: r.u32().ok()?,
        })
    }

    /// The last entry whose relative offset is at most `relative_offset`.
    pub fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let n = self.len();
        let idx = partition_point(n, |i| {
            self.get(i)
                .is_some_and(|e| e.relative_offset <= relative_offset)
        });
        idx.checked_sub(1).and_then(|i| self.get(i))
    }
}

/// A read-only view of a time index body.
#[derive(Debug, Clone, Copy)]
pub struct TimeIndexView<'a> {
    body: &'a [u8],
}

impl<'a> TimeIndexView<'a> {
    /// Wraps a time index body.
    pub fn new(body: &'a [u8]) -> Self {
        Self { body }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.body.len() / TIME_ENTRY_LEN
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry number `i`.
    pub fn get(&self, i: usize) -> Option<TimeEntry> {
        let start = i.checked_mul(TIME_ENTRY_LEN)?;
        let bytes = self.body.get(start..start.checked_add(TIME_ENTRY_LEN)?)?;
        let mut r = Reader::new(bytes);
        Some(TimeEntry {
            timestamp_ms: r.u64().ok()?,
            relative_offset: r.u32().ok()?,
        })
    }

    /// The last entry.
    pub fn last(&self) -> Option<TimeEntry> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// The last entry whose timestamp is strictly before `timestamp_ms`: every record at or
    /// before that entry's batch is older than the target, so a search can start there.
    pub fn last_before(&self, timestamp_ms: u64) -> Option<TimeEntry> {
        let idx = partition_point(self.len(), |i| {
            self.get(i).is_some_and(|e| e.timestamp_ms < timestamp_ms)
        });
        idx.checked_sub(1).and_then(|i| self.get(i))
    }
}

/// Index of the first `i` in `0..n` for which `pred(i)` is false, given a predicate that is true
/// on a prefix and false after it.
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn offset_body(entries: &[(u32, u32)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(o, p)| {
                OffsetEntry {
                    relative_offset: o,
                    position: p,
                }
                .encode()
            })
            .collect()
    }

    #[test]
    fn golden_entries() {
        // docs/format.md, "Offset index" and "Time index".
        let e = OffsetEntry {
            relative_offset: 3,
            position: 0x1234,
        };
        assert_eq!(e.encode(), [3, 0, 0, 0, 0x34, 0x12, 0, 0]);
        let t = TimeEntry {
            timestamp_ms: 1_700_000_000_000,
            relative_offset: 3,
        };
        assert_eq!(
            t.encode(),
            [0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0, 3, 0, 0, 0]
        );
    }

    #[test]
    fn decode_checks_shape_and_order() {
        let body = offset_body(&[(1, 100), (5, 300)]);
        assert_eq!(decode_offset_entries(&body).unwrap().len(), 2);
        assert_eq!(
            decode_offset_entries(&body[..9]).unwrap_err(),
            CorruptionKind::BadIndex("length is not a whole number of entries")
        );
        assert_eq!(
            decode_offset_entries(&offset_body(&[(5, 100), (5, 300)])).unwrap_err(),
            CorruptionKind::BadIndex("offset entries out of order")
        );
        assert_eq!(
            decode_offset_entries(&offset_body(&[(1, 100), (5, 50)])).unwrap_err(),
            CorruptionKind::BadIndex("offset entries out of order")
        );
        assert_eq!(
            decode_offset_entries(&offset_body(&[(1, 3)])).unwrap_err(),
            CorruptionKind::BadIndex("entry points into the file header")
        );
        let t: Vec<u8> = [(10u64, 1u32), (10, 2)]
            .iter()
            .flat_map(|&(ts, o)| {
                TimeEntry {
                    timestamp_ms: ts,
                    relative_offset: o,
                }
                .encode()
            })
            .collect();
        assert_eq!(
            decode_time_entries(&t).unwrap_err(),
            CorruptionKind::BadIndex("time entries out of order")
        );
    }

    proptest::proptest! {
        /// Binary-search lookups agree with a linear scan.
        #[test]
        fn floor_matches_linear_scan(
            steps in proptest::collection::vec((1u32..50, 1u32..5000), 0..200),
            target in 0u32..12000,
        ) {
            let mut entries = Vec::new();
            let (mut o, mut p) = (0u32, 16u32);
            for (dof, dpos) in steps {
                o += dof;
                p += dpos;
                entries.push((o, p));
            }
            let body = offset_body(&entries);
            let view = OffsetIndexView::new(&body);
            let expected = entries.iter().rev().find(|(eo, _)| *eo <= target).map(|&(o, p)| OffsetEntry { relative_offset: o, position: p });
            proptest::prop_assert_eq!(view.floor(target), expected);

            let tbody: Vec<u8> = entries.iter().flat_map(|&(o, p)| TimeEntry { timestamp_ms: u64::from(p), relative_offset: o }.encode()).collect();
            let tview = TimeIndexView::new(&tbody);
            let expected = entries.iter().rev().find(|(_, p)| u64::from(*p) < u64::from(target)).map(|&(o, p)| TimeEntry { timestamp_ms: u64::from(p), relative_offset: o });
            proptest::prop_assert_eq!(tview.last_before(u64::from(target)), expected);
        }
    }
}

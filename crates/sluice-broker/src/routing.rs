//! Hash-key routing, exactly as Kinesis does it: a record's hash key is the MD5 digest of its
//! partition key read as a big-endian `u128`, unless the producer gives an explicit hash key;
//! each open partition owns a contiguous range of `[0, 2^128 - 1]`, and together the open
//! partitions tile that space. Everything here is pure: no I/O, no state.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An inclusive range of hash keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashRange {
    /// First hash key of the range.
    pub start: u128,
    /// Last hash key of the range (inclusive).
    pub end: u128,
}

impl HashRange {
    /// The whole hash-key space.
    pub const ALL: HashRange = HashRange {
        start: 0,
        end: u128::MAX,
    };

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }

    /// The default split key: the start of the upper half (for an odd number of keys the lower
    /// child gets the extra one). `None` for a range of a single key, which cannot be split.
    pub fn middle(&self) -> Option<u128> {
        (self.start < self.end).then(|| self.start + (self.end - self.start) / 2 + 1)
    }

    /// Splits the range so that keys at or above `at` go to the upper child (Kinesis's
    /// `NewStartingHashKey`). `at` must leave both children non-empty: `start < at <= end`.
    pub fn split_at(&self, at: u128) -> Option<(HashRange, HashRange)> {
        (self.start < at && at <= self.end).then(|| {
            (
                HashRange {
                    start: self.start,
                    end: at - 1,
                },
                HashRange {
                    start: at,
                    end: self.end,
                },
            )
        })
    }

    /// The union of two ranges that touch with no gap and no overlap, in either order.
    pub fn merge(&self, other: &HashRange) -> Option<HashRange> {
        let (lo, hi) = if self.start < other.start {
            (self, other)
        } else {
            (other, self)
        };
        (lo.end.checked_add(1) == Some(hi.start)).then_some(HashRange {
            start: lo.start,
            end: hi.end,
        })
    }
}

/// The ranges of a stream created with `n` partitions: partition `i` starts at
/// `i * floor(2^128 / n)` and the last one ends at `2^128 - 1` (Kinesis's boundaries).
pub fn uniform(n: u32) -> Vec<HashRange> {
    if n <= 1 {
        return vec![HashRange::ALL];
    }
    let n128 = u128::from(n);
    // floor(2^128 / n) without a 129-bit number: 2^128 = n * q + r + 1 where q and r are the
    // quotient and remainder of (2^128 - 1) / n, so the floor is q + 1 exactly when r + 1 == n.
    let (q, r) = (u128::MAX / n128, u128::MAX % n128);
    let step = if r + 1 == n128 { q + 1 } else { q };
    (0..n128)
        .map(|i| HashRange {
            start: i * step,
            end: if i + 1 == n128 {
                u128::MAX
            } else {
                (i + 1) * step - 1
            },
        })
        .collect()
}

/// The hash key of a partition key: its MD5 digest as a big-endian unsigned integer.
pub fn hash_key(partition_key: &[u8]) -> u128 {
    let digest: [u8; 16] = Md5::digest(partition_key).into();
    // Kinesis reads the digest as a big-endian number; this is the one big-endian read in
    // Sluice, and it is part of the routing contract, not of an on-disk or wire layout.
    #[allow(clippy::big_endian_bytes)]
    u128::from_be_bytes(digest)
}

/// Parses an explicit hash key: a decimal integer in `0..=2^128 - 1` written as Kinesis's
/// `ExplicitHashKey` is (`0|([1-9]\d{0,38})`: no sign, no leading zero, no spaces).
pub fn parse_hash_key(text: &str) -> Result<u128> {
    let well_formed = !text.is_empty()
        && text.len() <= 39
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !well_formed {
        return Err(Error::InvalidHashKey(text.chars().take(64).collect()));
    }
    text.parse::<u128>()
        .map_err(|_| Error::InvalidHashKey(text.to_owned()))
}

/// The open partitions of a stream by range, for routing by binary search.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    /// Sorted by range start; the ranges tile the hash-key space.
    entries: Vec<(HashRange, u32)>,
}

impl RoutingTable {
    /// Builds a table from open partitions. Returns `None` unless the ranges tile
    /// `[0, 2^128 - 1]` exactly, with no gap and no overlap.
    pub fn new(mut entries: Vec<(HashRange, u32)>) -> Option<Self> {
        entries.sort_by_key(|(r, _)| r.start);
        let mut next: Option<u128> = Some(0);
        for (r, _) in &entries {
            if next != Some(r.start) || r.end < r.start {
                return None;
            }
            next = r.end.checked_add(1);
        }
        // After the last range, `next` must have run off the end of the space.
        (next.is_none() && !entries.is_empty()).then_some(Self { entries })
    }

    /// The partition that owns `hash_key`.
    pub fn route(&self, hash_key: u128) -> u32 {
        let i = self.entries.partition_point(|(r, _)| r.start <= hash_key);
        // The ranges tile the whole space and the first starts at 0, so `i >= 1`.
        self.entries
            .get(i.saturating_sub(1))
            .map_or(0, |(_, id)| *id)
    }

    /// The open partitions, in hash-key order.
    pub fn entries(&self) -> &[(HashRange, u32)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinesis_boundaries() {
        let two = uniform(2);
        assert_eq!(two[0].end, 170141183460469231731687303715884105727);
        assert_eq!(two[1].start, 170141183460469231731687303715884105728);
        let three = uniform(3);
        assert_eq!(three[1].start, 113427455640312821154458202477256070485);
        assert_eq!(three[2].start, 226854911280625642308916404954512140970);
        assert_eq!(three[2].end, u128::MAX);
        assert_eq!(uniform(1), vec![HashRange::ALL]);
    }

    #[test]
    fn explicit_hash_keys() {
        assert_eq!(parse_hash_key("0").unwrap(), 0);
        assert_eq!(
            parse_hash_key("340282366920938463463374607431768211455").unwrap(),
            u128::MAX
        );
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            " 1",
            "1 ",
            "1.0",
            "0x10",
            "340282366920938463463374607431768211456",
            "9999999999999999999999999999999999999999",
        ] {
            assert!(
                matches!(parse_hash_key(bad), Err(Error::InvalidHashKey(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn split_and_merge_ranges() {
        let all = HashRange::ALL;
        let mid = all.middle().unwrap();
        assert_eq!(mid, 1u128 << 127);
        let (lo, hi) = all.split_at(mid).unwrap();
        assert_eq!(lo.merge(&hi), Some(all));
        assert_eq!(hi.merge(&lo), Some(all));
        assert_eq!(all.split_at(0), None, "the lower child would be empty");
        assert!(
            all.split_at(u128::MAX).is_some(),
            "the upper child may be one key"
        );
        let one = HashRange { start: 5, end: 5 };
        assert_eq!(one.middle(), None);
        let gap = HashRange { start: 7, end: 9 };
        assert_eq!(one.merge(&gap), None);
        assert_eq!(one.merge(&one), None);
    }

    #[test]
    fn routing_table_requires_a_tiling() {
        assert!(RoutingTable::new(vec![]).is_none());
        assert!(
            RoutingTable::new(vec![(
                HashRange {
                    start: 1,
                    end: u128::MAX
                },
                0
            )])
            .is_none()
        );
        let parts: Vec<_> = uniform(4).into_iter().zip(0..).collect();
        let t = RoutingTable::new(parts.clone()).unwrap();
        assert_eq!(t.route(0), 0);
        assert_eq!(t.route(u128::MAX), 3);
        assert_eq!(t.route(parts[2].0.start), 2);
        assert_eq!(t.route(parts[2].0.start - 1), 1);
        let mut overlapping = parts;
        overlapping[1].0.end += 1;
        assert!(RoutingTable::new(overlapping).is_none());
    }

    proptest::proptest! {
        /// After any sequence of splits and merges the open ranges tile the space, and every key
        /// routes to exactly one open range, the one that contains it.
        #[test]
        fn reshards_keep_a_tiling(
            initial in 1u32..20,
            ops in proptest::collection::vec((proptest::bool::ANY, proptest::num::u64::ANY, proptest::num::u128::ANY), 0..60),
            probes in proptest::collection::vec(proptest::num::u128::ANY, 1..20),
        ) {
            let mut open: Vec<(HashRange, u32)> = uniform(initial).into_iter().zip(0..).collect();
            let mut next_id = initial;
            for (split, pick, key) in ops {
                let i = (pick % open.len() as u64) as usize;
                if split {
                    let r = open[i].0;
                    let at = if r.start == r.end { None } else { Some(r.start + 1 + key % (r.end - r.start)) };
                    if let Some((lo, hi)) = at.and_then(|at| r.split_at(at)) {
                        open.remove(i);
                        open.push((lo, next_id));
                        open.push((hi, next_id + 1));
                        next_id += 2;
                    }
                } else {
                    open.sort_by_key(|(r, _)| r.start);
                    if i + 1 < open.len() {
                        let merged = open[i].0.merge(&open[i + 1].0);
                        proptest::prop_assert!(merged.is_some(), "neighbours in a tiling are adjacent");
                        open.remove(i + 1);
                        open[i] = (merged.unwrap(), next_id);
                        next_id += 1;
                    }
                }
            }
            let table = RoutingTable::new(open.clone());
            proptest::prop_assert!(table.is_some(), "the open ranges no longer tile the space");
            let table = table.unwrap();
            for key in probes.into_iter().chain([0, u128::MAX]) {
                let owners: Vec<u32> = open.iter().filter(|(r, _)| r.contains(key)).map(|(_, id)| *id).collect();
                proptest::prop_assert_eq!(owners.len(), 1);
                proptest::prop_assert_eq!(table.route(key), owners[0]);
            }
        }
    }
}

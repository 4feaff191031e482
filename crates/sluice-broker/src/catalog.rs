//! The stream catalog: which streams exist, their settings, and their partitions' hash ranges,
//! states and lineage. It lives in one file, `<data_dir>/catalog`, replaced atomically on every
//! change, so a crash at any step leaves either the old catalog or the new one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name;
use crate::routing::{HashRange, RoutingTable};

/// Magic of the catalog file.
pub const CATALOG_MAGIC: [u8; 4] = *b"SCAT";
/// Name of the catalog file in the data directory.
pub const CATALOG_FILE: &str = "catalog";

/// Every stream, by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Next stream uid to hand out. Uids are never reused, so a stream deleted and created again
    /// gets a new directory and none of the old one's checkpoints.
    pub next_stream_uid: u64,
    /// The streams.
    pub streams: BTreeMap<String, StreamMeta>,
}

/// One stream's settings and partitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Unique id of this stream incarnation.
    pub uid: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Records older than this are removed (a whole segment at a time).
    pub retention_ms: u64,
    /// Optional size cap per partition.
    pub partition_bytes_max: Option<u64>,
    /// Largest record (key and value) accepted.
    pub record_bytes_max: u64,
    /// Id the next child partition gets.
    pub next_partition_id: u32,
    /// Partitions by id, open and closed.
    pub partitions: BTreeMap<u32, PartitionMeta>,
}

/// One partition's range, lineage and state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionMeta {
    /// The hash keys it owns (owned while open; owned before it closed).
    pub range: HashRange,
    /// The partitions it was split or merged from.
    pub parents: Vec<u32>,
    /// `Some(end offset)` once closed by a reshard.
    pub closed_end: Option<u64>,
}

impl StreamMeta {
    /// The routing table of the open partitions.
    pub fn routing(&self) -> Option<RoutingTable> {
        RoutingTable::new(
            self.partitions
                .iter()
                .filter(|(_, p)| p.closed_end.is_none())
                .map(|(id, p)| (p.range, *id))
                .collect(),
        )
    }

    /// Directory name of this stream under `streams/`: the name and the uid, so that a stream
    /// created again under an old name never meets the old one's files.
    pub fn dir_name(&self, name: &str) -> String {
        format!("{name}.{}", self.uid)
    }
}

impl Catalog {
    /// Checks what a catalog read from disk promises: valid names, partitions that tile the
    /// hash-key space, ids below the next id, uids below the next uid and unique.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let corrupt = |reason: String| Error::CorruptMetadata {
            path: path.to_path_buf(),
            reason,
        };
        let mut uids = std::collections::BTreeSet::new();
        for (name, s) in &self.streams {
            name::validate(name).map_err(|e| corrupt(e.to_string()))?;
            if s.uid >= self.next_stream_uid || !uids.insert(s.uid) {
                return Err(corrupt(format!("stream {name:?} has a bad uid {}", s.uid)));
            }
            if s.routing().is_none() {
                return Err(corrupt(format!(
                    "the open partitions of {name:?} do not cover the hash-key space exactly"
                )));
            }
            if let Some((id, _)) = s.partitions.iter().find(|(id, p)| {
                **id >= s.next_partition_id || p.parents.iter().any(|parent| parent >= id)
            }) {
                return Err(corrupt(format!("stream {name:?}: bad partition id {id}")));
            }
        }
        Ok(())
    }
}

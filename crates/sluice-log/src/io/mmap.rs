//! The one place that maps files into memory, and so one of the two modules allowed `unsafe`
//! (the other is `fallocate`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::MappedBytes;

/// Maps a sealed index file read-only.
pub(super) fn map_sealed(file: &File) -> io::Result<MappedBytes> {
    if file.metadata()?.len() == 0 {
        // Mapping zero bytes is an error on Linux; an empty file has nothing to share anyway.
        return Ok(Arc::new(Vec::<u8>::new()));
    }
    // SAFETY: only sealed index files are mapped. The log never writes, extends or truncates an
    // index file after sealing it (a rebuilt index is written under a temporary name and renamed
    // over the old one), and retention unlinks whole files, which leaves existing maps valid.
    // Another process modifying the data directory is excluded by the broker's directory lock.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Arc::new(map))
}

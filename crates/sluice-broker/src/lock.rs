//! The data-directory lock: one broker per directory, across processes and within one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// An exclusive `flock` on `<data_dir>/LOCK`, held for the broker's lifetime. The kernel drops it
/// when the process dies, so a crash never leaves a stale lock. A second open in the same
/// process conflicts too: `flock` locks belong to the open file, not to the process.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, or fails with [`Error::Locked`] naming the holder's pid when known.
    pub fn acquire(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder's note is advisory; a failed read just leaves it unknown.
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Locked {
                    dir: data_dir.to_path_buf(),
                    holder: (!holder.is_empty()).then(|| holder.chars().take(200).collect()),
                });
            }
            Err(TryLockError::Error(e)) => return Err(e).at(&path),
        }
        let note = format!("pid {}\n", std::process::id());
        file.set_len(0).at(&path)?;
        file.seek(SeekFrom::Start(0)).at(&path)?;
        file.write_all(note.as_bytes()).at(&path)?;
        Ok(Self { _file: file })
    }
}

//! The file-system seam. The log does all of its I/O through [`FileSystem`] and [`FileHandle`],
//! so tests can swap in [`sim::SimFs`], which keeps written and synced bytes apart and can
//! simulate a power loss or inject I/O errors at any operation.

mod fallocate;
mod mmap;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod std_fs;

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fallocate::{preallocate, read_exact_vec_at, write_all_vectored_at};
pub use std_fs::StdFs;

/// Read-only bytes of a whole file: a memory map for the real file system.
pub type MappedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create a new file for reading and writing; fail if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Open an existing file for reading only.
    Read,
}

/// One open file. Reads and writes are positional, so a handle can be shared between threads
/// without a seek cursor.
#[allow(clippy::len_without_is_empty)] // a file's length is an I/O call, not a collection size
pub trait FileHandle: Send + Sync + Debug {
    /// Reads exactly `buf.len()` bytes at `position`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
    /// Reads exactly `len` bytes at `position` into a new vector, or fails with
    /// `UnexpectedEof`: for the real file system without zeroing the memory first
    /// ([`read_exact_vec_at`]). The default reads into a zeroed vector.
    fn read_exact_vec_at(&self, len: usize, position: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_exact_at(&mut v, position)?;
        Ok(v)
    }
    /// Writes all of `buf` at `position`. On error, any prefix of `buf` may have been written.
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Writes all of `bufs`, one after another, at `position`: for the real file system one
    /// `pwritev` ([`write_all_vectored_at`]). On error, any prefix of the bytes may have been
    /// written. The default writes them one by one.
    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut position: u64) -> io::Result<()> {
        for b in bufs {
            self.write_all_at(b, position)?;
            position += b.len() as u64;
        }
        Ok(())
    }
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Current length of the file.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file. Blocks reserved past the new length by
    /// [`FileHandle::preallocate`] are given back, even when the length does not change.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk blocks for `[position, position + len)` without changing the file's
    /// length, so that appends there find their blocks allocated ([`preallocate`]). Only a hint:
    /// the default does nothing, and callers carry on past its error.
    fn preallocate(&self, position: u64, len: u64) -> io::Result<()> {
        let _ = (position, len);
        Ok(())
    }
}

/// The directory operations the log needs.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of a directory (files only; order unspecified).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything below it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the subdirectories of a directory (order unspecified).
    fn list_subdirs(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Atomically renames a file, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Maps a file that will never be written, truncated or extended again, read-only.
    fn map_readonly(&self, path: &Path) -> io::Result<MappedBytes>;

    /// Creates a directory and any missing parents, and makes each new entry durable by syncing
    /// the directory that holds it.
    fn create_dir_all_durable(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        for a in dir.ancestors() {
            if a.as_os_str().is_empty() || self.exists(a)? {
                break;
            }
            missing.push(a.to_path_buf());
        }
        self.create_dir_all(dir)?;
        for new in &missing {
            self.sync_dir(&parent(new))?;
        }
        Ok(())
    }

    /// Reads a whole small file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path, OpenMode::Read)?;
        let len = usize::try_from(file.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Writes a small file atomically: temp file, fsync, rename, fsync of the directory. A crash
    /// at any step leaves either the old file or the new one.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let dir = parent(path);
        let tmp = temp_path(path);
        if self.exists(&tmp)? {
            self.remove_file(&tmp)?;
        }
        let file = self.open(&tmp, OpenMode::CreateNew)?;
        file.write_all_at(bytes, 0)?;
        file.sync_data()?;
        drop(file);
        self.rename(&tmp, path)?;
        self.sync_dir(&dir)
    }
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary name used while writing `path` atomically.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(".");
    name.push(crate::format::TEMP_SUFFIX);
    path.with_file_name(name)
}

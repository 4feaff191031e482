//! Preallocation of file blocks, the second module allowed `unsafe` (one `fallocate` call).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// Reserves disk blocks for `[position, position + len)` of `file` without changing its length
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`). Writes into reserved blocks skip the file system's
/// block reservation for each page they dirty (ext4's delayed allocation), which is a large part
/// of what an append costs the CPU. Truncating the file to its own length gives back the blocks
/// reserved past its end.
///
/// Fails with the file system's error (`EOPNOTSUPP` where it has no such call, `ENOSPC` when the
/// disk is full); where the operating system has no `fallocate`, does nothing.
pub fn preallocate(file: &File, position: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    imp::preallocate(file, position, len)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    pub(super) fn preallocate(file: &File, position: u64, len: u64) -> io::Result<()> {
        let too_far = |_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "range past what a file can hold",
            )
        };
        let offset = libc::off_t::try_from(position).map_err(too_far)?;
        let len = libc::off_t::try_from(len).map_err(too_far)?;
        loop {
            // SAFETY: `fallocate` takes a descriptor and two integers and touches no memory of
            // ours; the descriptor is open for as long as `file` is borrowed.
            let rc = unsafe {
                libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len)
            };
            if rc == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::fs::File;
    use std::io;

    pub(super) fn preallocate(_file: &File, _position: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Bytes of disk the file holds, from `st_blocks` (512-byte units).
    fn allocated(file: &File) -> u64 {
        file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn reserves_blocks_past_the_end_and_a_truncate_to_the_same_length_gives_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[7u8; 100], 0).unwrap();
        match preallocate(&file, 100, 4 << 20) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!(
                    "skipped: the file system under {} has no fallocate",
                    dir.path().display()
                );
                return;
            }
            Err(e) => panic!("fallocate: {e}"),
        }
        assert_eq!(file.metadata().unwrap().len(), 100, "the length is kept");
        assert!(
            allocated(&file) >= 4 << 20,
            "blocks reserved: {}",
            allocated(&file)
        );
        file.set_len(100).unwrap();
        assert!(
            allocated(&file) < 1 << 20,
            "blocks given back: {}",
            allocated(&file)
        );
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 100]);
    }

    #[test]
    fn an_empty_range_is_no_call_and_a_range_past_any_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        preallocate(&file, u64::MAX, 0).unwrap();
        let err = preallocate(&file, u64::MAX, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

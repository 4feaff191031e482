//! The file calls `std` does not offer: reserving blocks (`fallocate`), a positional vectored
//! write (`pwritev`), and a positional read into memory not zeroed first (`pread` into a
//! vector's spare capacity). The second module allowed `unsafe`, for these calls.
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
/// disk is full); anywhere but 64-bit Linux, does nothing.
pub fn preallocate(file: &File, position: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    imp::preallocate(file, position, len)
}

/// Writes all of `bufs`, one after another, at `position` of `file`: one `pwritev` for many
/// buffers where the operating system has it (a loop of positional writes elsewhere), repeated
/// for what a short write left. On error, any prefix of the bytes may have been written.
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], position: u64) -> io::Result<()> {
    imp::write_all_vectored_at(file, bufs, position)
}

/// Reads `len` bytes at `position` of `file` into a new vector, or fails with `UnexpectedEof`
/// if the file ends first. Unlike reading into `vec![0; len]`, the memory is not zeroed before
/// the read overwrites it: for a catch-up read of chunks of up to 1 MiB that zeroing cost about
/// a sixteenth of the server's CPU.
pub fn read_exact_vec_at(file: &File, len: usize, position: u64) -> io::Result<Vec<u8>> {
    imp::read_exact_vec_at(file, len, position)
}

// `off_t` is 64 bits only on 64-bit Linux; elsewhere the portable fallback below serves, so no
// offset past 2 GiB is ever refused.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
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

    pub(super) fn read_exact_vec_at(file: &File, len: usize, position: u64) -> io::Result<Vec<u8>> {
        let mut v: Vec<u8> = Vec::with_capacity(len);
        while v.len() < len {
            let offset = position
                .checked_add(v.len() as u64)
                .and_then(|p| libc::off_t::try_from(p).ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "position past what a file can hold",
                    )
                })?;
            let want = len - v.len();
            let spare = v.spare_capacity_mut();
            // SAFETY: the pointer and length describe the vector's spare capacity (at least
            // `want` bytes, as its capacity is `len`), which `pread` only writes into; the
            // descriptor is open for as long as `file` is borrowed.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    spare.as_mut_ptr().cast::<libc::c_void>(),
                    want,
                    offset,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            // `pread` never returns more than it was asked for.
            let n = (n as usize).min(want);
            // SAFETY: `pread` initialised the first `n` bytes of the spare capacity.
            unsafe { v.set_len(v.len() + n) };
        }
        Ok(v)
    }

    /// The most buffers one `pwritev` takes (`IOV_MAX` on Linux).
    const IOV_MAX: usize = 1024;

    pub(super) fn write_all_vectored_at(
        file: &File,
        bufs: &[&[u8]],
        mut position: u64,
    ) -> io::Result<()> {
        // Whole buffers left, and how much of the first of them is already written.
        let mut rest = bufs;
        let mut skip = 0usize;
        while let Some(first) = rest.first() {
            if skip == first.len() {
                rest = rest.get(1..).unwrap_or_default();
                skip = 0;
                continue;
            }
            let iov: Vec<libc::iovec> = rest
                .iter()
                .take(IOV_MAX)
                .enumerate()
                .map(|(i, b)| {
                    let b = if i == 0 {
                        b.get(skip..).unwrap_or_default()
                    } else {
                        b
                    };
                    libc::iovec {
                        iov_base: b.as_ptr() as *mut libc::c_void,
                        iov_len: b.len(),
                    }
                })
                .collect();
            let offset = libc::off_t::try_from(position).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "position past what a file can hold",
                )
            })?;
            // SAFETY: every iovec points into a slice borrowed for this call, with its length;
            // `pwritev` only reads them, and the descriptor is open while `file` is borrowed.
            let n = unsafe {
                libc::pwritev(
                    file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    offset,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            // Step over what was written: whole buffers, then part of the next.
            let mut n = n as usize;
            position += n as u64;
            while n > 0 {
                let Some(first) = rest.first() else { break };
                let left = first.len() - skip;
                if n >= left {
                    n -= left;
                    rest = rest.get(1..).unwrap_or_default();
                    skip = 0;
                } else {
                    skip += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
mod imp {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;

    pub(super) fn preallocate(_file: &File, _position: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn read_exact_vec_at(file: &File, len: usize, position: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        file.read_exact_at(&mut v, position)?;
        Ok(v)
    }

    pub(super) fn write_all_vectored_at(
        file: &File,
        bufs: &[&[u8]],
        mut position: u64,
    ) -> io::Result<()> {
        for b in bufs {
            file.write_all_at(b, position)?;
            position += b.len() as u64;
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A new, empty file in a directory of its own.
    fn new_file() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        (dir, path, file)
    }

    /// Bytes of disk the file holds, from `st_blocks` (512-byte units).
    fn allocated(file: &File) -> u64 {
        file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn reserves_blocks_past_the_end_and_a_truncate_to_the_same_length_gives_them_back() {
        let (dir, path, file) = new_file();
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
    fn a_vectored_write_lands_every_buffer_in_order_past_the_iov_limit() {
        let (_dir, path, file) = new_file();
        std::os::unix::fs::FileExt::write_all_at(&file, b"head", 0).unwrap();
        // More buffers than one call takes, empty ones among them.
        let owned: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let bufs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        write_all_vectored_at(&file, &bufs, 4).unwrap();
        let mut expected = b"head".to_vec();
        expected.extend(owned.iter().flatten());
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        write_all_vectored_at(&file, &[], 2).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            expected,
            "nothing to write changes nothing"
        );
    }

    #[test]
    fn a_read_into_a_new_vector_returns_the_bytes_or_eof_past_the_end() {
        let (_dir, _path, file) = new_file();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &data, 0).unwrap();
        assert_eq!(read_exact_vec_at(&file, data.len(), 0).unwrap(), data);
        assert_eq!(
            read_exact_vec_at(&file, 1000, 12_345).unwrap(),
            &data[12_345..13_345]
        );
        assert_eq!(
            read_exact_vec_at(&file, 0, 1 << 40).unwrap(),
            Vec::<u8>::new()
        );
        let err = read_exact_vec_at(&file, 10, data.len() as u64 - 5).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = read_exact_vec_at(&file, 1, u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
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

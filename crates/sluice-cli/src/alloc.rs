//! Tuning of the C library's allocator for Sluice's allocation pattern.
//!
//! The server allocates a buffer of up to a few megabytes for every put it reads and every read
//! it answers, and frees it a few milliseconds later, from several threads. With its default,
//! self-adjusting thresholds, glibc serves such blocks from `mmap` or trims them off the heap
//! when they are freed, so each new buffer is fresh memory the kernel must fault in and zero
//! page by page: about a sixth of the server's CPU time under load (`perf`, see
//! `docs/benchmarks.md`). Raising the thresholds keeps freed buffers in the heap for the next
//! request. What stays reserved is memory the process used at its peak, at most the trim
//! threshold's 64 MiB at the top of each arena (glibc makes up to eight per core as threads
//! contend); the peak itself is bounded by the server's per-connection budgets, and `sluice
//! bench` reports it (about 150 MiB consuming, 40 MiB producing).
//!
//! This is process-wide, so it belongs to the binary, not to the libraries an application may
//! embed. Other C libraries are left alone.

/// Blocks above this come from `mmap` (the default starts at 128 KiB and adjusts itself). Puts
/// and read answers are up to 8 MiB, the default frame limit.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 8 << 20;
/// Free memory at the top of a heap beyond this goes back to the kernel. Four consumers'
/// answers of 4 MiB each, with the 1 MiB chunks their reads fill, often leave more than 16 MiB
/// free at the top of a heap, and what is trimmed is faulted in again page by page for the next
/// answers: a catch-up read of 1 GB faulted in 49,000-72,000 pages at 16 MiB, 21,000-24,000 at
/// 64 MiB (`docs/benchmarks.md`). What it keeps is memory the server just used, so it does not
/// raise the peak; it keeps the resident size near the peak after a burst.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 << 20;

/// Sets the thresholds. Call first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: `mallopt` takes plain integers and only changes the allocator's parameters; it is
    // called before any other thread exists, so nothing allocates concurrently. A refused value
    // (a return of 0) leaves the default in place, which is only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Nothing to tune for other C libraries.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

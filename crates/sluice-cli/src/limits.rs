//! The process's open-file limit, which bounds how many connections the server can hold.
//!
//! Each connection runs on a thread of its own under its own single-threaded runtime, and so
//! takes three file descriptors: its socket, and the runtime's epoll instance and wake-up
//! eventfd. Many systems start processes with a soft limit of 1024 descriptors, which would cap
//! the server near 340 connections, well under its default `max_connections` of 1024, while the
//! hard limit allows far more. Raising the soft limit to the hard one is what servers commonly
//! do; it is process-wide, so it belongs to the binary.

/// Descriptors one connection takes (see the module docs).
pub const DESCRIPTORS_PER_CONNECTION: u64 = 3;

/// Descriptors kept for everything else: the listener, the data directory's lock, segment and
/// index files, the server runtime's own.
pub const DESCRIPTORS_RESERVED: u64 = 256;

/// Raises the soft limit on open files to the hard limit, and returns the soft limit in force
/// afterwards (`None` where it cannot be read).
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live, properly aligned
    // local; it has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads one `rlimit` from a live local; raising the soft limit up to
        // the hard one needs no privilege. If it is refused, the old limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

/// Nothing to read or raise elsewhere.
#[cfg(not(unix))]
pub fn raise_open_files() -> Option<u64> {
    None
}

/// How many connections an open-file limit leaves room for.
pub fn connections_within(open_files: u64) -> u64 {
    open_files.saturating_sub(DESCRIPTORS_RESERVED) / DESCRIPTORS_PER_CONNECTION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_for_connections_leaves_the_reserve() {
        assert_eq!(connections_within(0), 0);
        assert_eq!(connections_within(DESCRIPTORS_RESERVED), 0);
        assert_eq!(connections_within(1024), 256);
        assert_eq!(connections_within(20_000), 6581);
    }

    #[cfg(unix)]
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let soft = raise_open_files().expect("the limit can be read");
        // A second call finds nothing left to raise.
        assert_eq!(raise_open_files(), Some(soft));
        assert!(soft >= 1, "{soft}");
    }
}

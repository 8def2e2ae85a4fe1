//! The open-file limit. Every client connection is a descriptor, and so is every upstream,
//! PostgreSQL and Redis connection behind it; container runtimes (Docker 29, containerd 2) and
//! shells start a process with a soft limit of 1024, which would refuse accepts from about a
//! thousand connections however the edge or the API was sized. The soft limit may be raised to
//! the hard one without privilege, as nginx's `worker_rlimit_nofile` does for its workers.

/// The soft `RLIMIT_NOFILE` now.
pub fn soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives for the call.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// Descriptors the process holds now (entries of `/proc/self/fd`, less the one reading it).
pub fn open_now() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (before, after).
pub fn raise_to_hard() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

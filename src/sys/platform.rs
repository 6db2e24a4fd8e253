//! What differs between Linux and macOS or the BSDs, in one place: everything else of the crate
//! is written once for all of them.
//!
//! | need | Linux | macOS, BSDs |
//! |---|---|---|
//! | a pipe, a socket, close-on-exec from birth | `pipe2`, `SOCK_CLOEXEC` | `pipe`/`socket`, then `fcntl(FD_CLOEXEC)`: another thread that forks in between could leak the fd into its child; mcluster forks on its driver thread only |
//! | mark or close every fd from N up, in a forked child | `close_range` (kernels before 5.11: skipped) | a loop of `fcntl`/`close` up to the fd limit read before fork |
//! | the child dies with its parent | `PR_SET_PDEATHSIG` | FreeBSD: `procctl(PROC_PDEATHSIG_CTL)`; macOS: none — the master's guard kills the worker's group when the master dies |
//! | a process name for `ps` (the guard) | `PR_SET_NAME` | none: the guard shows as the master's name |
//! | `errno` in a forked child | `nix::errno::Errno::last_raw` everywhere | |
//! | who is at the other end of a unix socket | `SO_PEERCRED` | `getpeereid` |

use std::ffi::c_int;
use std::io;
use std::os::fd::OwnedFd;

use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType};

/// A pipe whose ends are both close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let (read, write) = nix::unistd::pipe()?;
        set_cloexec(&read)?;
        set_cloexec(&write)?;
        Ok((read, write))
    }
}

/// A stream socket, close-on-exec, non-blocking if asked.
pub(crate) fn stream_socket(family: AddressFamily, nonblocking: bool) -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let mut flags = SockFlag::SOCK_CLOEXEC;
        if nonblocking {
            flags |= SockFlag::SOCK_NONBLOCK;
        }
        Ok(nix::sys::socket::socket(
            family,
            SockType::Stream,
            flags,
            None,
        )?)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let fd = nix::sys::socket::socket(family, SockType::Stream, SockFlag::empty(), None)?;
        set_cloexec(&fd)?;
        if nonblocking {
            let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        }
        Ok(fd)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(())
}

/// How many fd numbers a forked child must look at to find every fd it inherited: the soft
/// limit, read before fork (capped, so that a huge limit costs no long loop; Linux does not
/// loop at all).
pub(crate) fn fd_limit() -> c_int {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    c_int::try_from(limit.min(65_536)).unwrap_or(65_536)
}

/// In a forked child: marks every fd from `first` up close-on-exec (`limit` from [`fd_limit`]).
///
/// # Safety
/// Async-signal-safe: only `close_range` or `fcntl`; call it between fork and exec only.
pub(crate) unsafe fn cloexec_from(first: c_int, limit: c_int) {
    #[cfg(target_os = "linux")]
    {
        let _ = limit;
        // SAFETY: a plain syscall on fd numbers; kernels without close_range (before 5.11)
        // answer ENOSYS and nothing happens.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::try_from(first).unwrap_or(libc::c_uint::MAX),
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    for fd in first..limit {
        // SAFETY: fcntl on a number that may not be open fails with EBADF, harmlessly.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// In a forked child: closes every fd from `first` up (`limit` from [`fd_limit`]).
///
/// # Safety
/// Async-signal-safe; call it between fork and exec (or `_exit`) only, where no other code
/// owns those fds.
pub(crate) unsafe fn close_from(first: c_int, limit: c_int) {
    #[cfg(target_os = "linux")]
    {
        let _ = limit;
        // SAFETY: a plain syscall on fd numbers; see `cloexec_from`.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::try_from(first).unwrap_or(libc::c_uint::MAX),
                libc::c_uint::MAX,
                0 as libc::c_uint,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    for fd in first..limit {
        // SAFETY: close on a number that may not be open fails with EBADF, harmlessly.
        unsafe {
            libc::close(fd);
        }
    }
}

/// In a forked child: asks for SIGKILL when the parent dies. `Ok(false)` where the OS offers no
/// such thing (macOS): the master's guard covers it.
///
/// # Safety
/// Async-signal-safe; call it between fork and exec only.
#[cfg_attr(
    not(any(target_os = "linux", target_os = "freebsd")),
    allow(clippy::unnecessary_wraps)
)]
pub(crate) unsafe fn die_with_parent() -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with two integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::from_raw_os_error(errno()));
        }
        Ok(true)
    }
    #[cfg(target_os = "freebsd")]
    {
        let mut signal: c_int = libc::SIGKILL;
        // SAFETY: procctl on ourselves (P_PID 0) with a pointer to a live c_int.
        let done = unsafe {
            libc::procctl(
                libc::P_PID,
                0,
                libc::PROC_PDEATHSIG_CTL,
                std::ptr::from_mut(&mut signal).cast(),
            )
        };
        if done != 0 {
            return Err(io::Error::from_raw_os_error(errno()));
        }
        Ok(true)
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    {
        Ok(false)
    }
}

/// In a forked child: names the process for `ps` where the OS allows it (Linux).
///
/// # Safety
/// Async-signal-safe; `name` must be at most 15 bytes.
pub(crate) unsafe fn set_name(name: &std::ffi::CStr) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// The uid of the process at the other end of a connected unix socket.
pub(crate) fn peer_uid(socket: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let credentials =
            nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok(credentials.uid())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let (uid, _) = nix::unistd::getpeereid(socket)?;
        Ok(uid.as_raw())
    }
}

/// The calling thread's errno; async-signal-safe.
pub(crate) fn errno() -> c_int {
    nix::errno::Errno::last_raw()
}

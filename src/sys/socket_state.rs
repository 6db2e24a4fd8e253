//! The state of one TCP connection a worker holds, read through a duplicate of its fd: the
//! master's cheap way to tell whether a worker steered away from has a request in progress.
//!
//! The kernel's socket diagnostics (`sock_diag`) answer for every connection at once, but each
//! dump walks the kernel's whole table of connections (`TIME_WAIT` ones included): 4–8 ms of a
//! core on an idle machine, 20–35 ms on a busy one, on the master's loop at every look at a
//! draining worker. A worker holds a few connections: `pidfd_getfd` (Linux 5.6) duplicates
//! each for a few system calls (`fstat`, `getsockname`, `TCP_INFO`, `SIOCINQ`, `SIOCOUTQ`) and
//! closes the duplicate at once. It needs the access `ptrace` would (the worker's user, or root; an ancestor under
//! Yama's `ptrace_scope=1`), which the master has over its own workers; where it is refused
//! (an older kernel, a seccomp filter, a worker that made itself non-dumpable) the caller falls
//! back to the dump.
//!
//! The duplicate is the file the worker holds, not a copy: while the master holds it, a
//! `close` by the worker does not end the connection; the master's `close` a few microseconds
//! later does, as the worker's would have (a FIN, or a reset if bytes wait unread); a worker
//! that set `SO_LINGER` with a timeout and closes in that window would make the master's close
//! wait out its linger (rare, and bounded by the worker's own setting). Nothing is written to
//! or read from the connection, and no option of it is changed.

use nix::libc;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A process whose fds the master may duplicate: a pidfd (`pidfd_open`), which names the
/// process itself, not whatever process later takes its pid.
#[cfg(target_os = "linux")]
pub(crate) struct ProcessFds(OwnedFd);

#[cfg(target_os = "linux")]
impl ProcessFds {
    /// The process `pid`; `ESRCH` when there is none.
    pub(crate) fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: a plain syscall on a pid and flags, no memory involved; a non-negative
        // result is a new fd that nothing else owns.
        owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }).map(Self)
    }

    /// A duplicate of its fd `fd` (`pidfd_getfd`), close-on-exec; `EBADF` when `fd` is not
    /// open.
    pub(crate) fn duplicate(&self, fd: i32) -> io::Result<OwnedFd> {
        // SAFETY: a plain syscall on an fd we own, a number and flags, no memory involved; the
        // kernel sets close-on-exec on the fd it returns, which nothing else owns.
        owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.0.as_raw_fd(), fd, 0) })
    }
}

/// The fd a syscall returned, or its error.
#[cfg(target_os = "linux")]
fn owned(result: libc::c_long) -> io::Result<OwnedFd> {
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(result)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "an fd out of range"))?;
    // SAFETY: the syscall returned this new fd to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel says of a TCP socket: its `struct tcp_info` (as long as this kernel's is, at
/// most `MAX_TCP_INFO` bytes), the bytes that wait unread (`SIOCINQ`: a FIN received is not
/// counted), and those written and not acknowledged yet (`SIOCOUTQ`).
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpState {
    pub(crate) info: Vec<u8>,
    pub(crate) unread: u32,
    pub(crate) unacknowledged: u32,
}

/// More than any kernel's `struct tcp_info` so far (232 bytes in Linux 6.x); a longer one is cut
/// there, and the fields read are near its start.
#[cfg(target_os = "linux")]
const MAX_TCP_INFO: usize = 512;

/// The state of the TCP socket `socket` (see [`TcpState`]); an error for any other socket, and
/// for a listening one (`SIOCOUTQ` is refused there).
#[cfg(target_os = "linux")]
pub(crate) fn tcp_state(socket: &OwnedFd) -> io::Result<TcpState> {
    let fd = socket.as_raw_fd();
    let mut info = vec![0_u8; MAX_TCP_INFO];
    let mut length = libc::socklen_t::try_from(info.len()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: the kernel writes at most `length` bytes into `info`, which has that many, and
    // the length it wrote into `length`.
    let done = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut length,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    info.truncate(usize::try_from(length).unwrap_or(0));
    let queue = |request| -> io::Result<u32> {
        let mut bytes: libc::c_int = 0;
        // SAFETY: SIOCINQ and SIOCOUTQ write one int, into `bytes`.
        if unsafe { libc::ioctl(fd, request, &raw mut bytes) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u32::try_from(bytes).unwrap_or(0))
    };
    Ok(TcpState {
        info,
        unread: queue(libc::FIONREAD)?,
        unacknowledged: queue(libc::TIOCOUTQ)?,
    })
}

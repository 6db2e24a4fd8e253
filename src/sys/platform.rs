//! What differs between Linux and macOS or the BSDs, in one place: everything else of the crate
//! is written once for all of them.
//!
//! | need | Linux | macOS, BSDs |
//! |---|---|---|
//! | a pipe, a socket, close-on-exec from birth | `pipe2`, `SOCK_CLOEXEC` | `pipe`/`socket`, then `fcntl(FD_CLOEXEC)`: another thread that forks in between could leak the fd into its child; mcluster forks on its driver thread only |
//! | mark or close every fd from N up, in a forked child | `close_range`; where it fails (before 5.9, `CLOSE_RANGE_CLOEXEC` before 5.11, seccomp), each fd `/proc/self/fd` lists, or without `/proc` a loop up to the fd limit | a loop of `fcntl`/`close` up to the fd limit read before fork |
//! | the child dies with its parent | `PR_SET_PDEATHSIG` | FreeBSD: `procctl(PROC_PDEATHSIG_CTL)`; macOS: none — the master's guard kills the worker's group when the master dies |
//! | a process name for `ps` (the guard) | `PR_SET_NAME` | none: the guard shows as the master's name |
//! | `errno` in a forked child | `nix::errno::Errno::last_raw` everywhere | |
//! | who is at the other end of a unix socket | `SO_PEERCRED` | `getpeereid` |
//! | file systems whose changes the native watcher does not hear (made by another machine) | `statfs` magic: 9p, NFS, SMB, CIFS, FUSE, VirtualBox, AFS, CephFS | `statfs` type name: nfs, smbfs, afpfs, webdav, fuse |

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
/// limit, read before fork (capped, so that a huge limit costs no long loop; Linux loops only
/// where neither `close_range` nor `/proc` works).
pub(crate) fn fd_limit() -> c_int {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    c_int::try_from(limit.min(65_536)).unwrap_or(65_536)
}

/// What [`sweep_fds_from`] does to each fd.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// Marks it close-on-exec.
    Cloexec,
    /// Closes it.
    Close,
}

/// In a forked child: marks close-on-exec, or closes, every fd from `first` up (`limit` from
/// [`fd_limit`]).
///
/// On Linux `close_range` does it in one call, but it may fail: kernels before 5.9 do not have
/// it (ENOSYS), 5.9 and 5.10 refuse `CLOSE_RANGE_CLOEXEC` (EINVAL), and a seccomp profile that
/// does not know it answers ENOSYS or EPERM. Whatever the error, the fds are then walked one
/// by one: those listed in `/proc/self/fd` (read with `getdents64` into a buffer on this
/// stack), or without `/proc` every number up to `limit`.
///
/// # Safety
/// Async-signal-safe: only `close_range`, `open`, `getdents64`, `lseek`, `fcntl` or `close` on
/// memory of this stack frame; call it between fork and exec (or `_exit`) only, where no other
/// code owns those fds.
pub(crate) unsafe fn sweep_fds_from(first: c_int, limit: c_int, how: Sweep) {
    #[cfg(target_os = "linux")]
    {
        let flags = match how {
            Sweep::Cloexec => libc::CLOSE_RANGE_CLOEXEC,
            Sweep::Close => 0,
        };
        // SAFETY: a plain syscall on fd numbers, no memory involved.
        let done = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::try_from(first).unwrap_or(libc::c_uint::MAX),
                libc::c_uint::MAX,
                flags,
            )
        };
        // SAFETY: as this function's contract.
        if done == 0 || unsafe { sweep_listed_fds(first, how) } {
            return;
        }
    }
    for fd in first..limit {
        // SAFETY: fcntl or close on a number that may not be open fails with EBADF, harmlessly.
        unsafe { sweep_one(fd, how) };
    }
}

/// Marks or closes one fd.
///
/// # Safety
/// As [`sweep_fds_from`].
unsafe fn sweep_one(fd: c_int, how: Sweep) {
    // SAFETY: fcntl or close on a number that may not be open fails with EBADF, harmlessly.
    unsafe {
        match how {
            Sweep::Cloexec => libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC),
            Sweep::Close => libc::close(fd),
        };
    }
}

/// The fallback of [`sweep_fds_from`] on Linux: every fd from `first` up that `/proc/self/fd`
/// lists. `false` if `/proc` could not be read (then nothing was swept).
///
/// # Safety
/// As [`sweep_fds_from`].
#[cfg(target_os = "linux")]
unsafe fn sweep_listed_fds(first: c_int, how: Sweep) -> bool {
    /// `struct linux_dirent64`: `d_ino` (8 bytes), `d_off` (8), `d_reclen` (2), `d_type` (1),
    /// `d_name`.
    const NAME: usize = 19;
    const RECLEN: usize = 16;
    // SAFETY: open of a NUL-terminated literal.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return false;
    }
    // 8-byte aligned, as the kernel's records are.
    let mut buffer = [0u64; 512];
    loop {
        // Closing fds while the directory is read may make the kernel skip entries: after a
        // pass that closed any, read it again from the start, until a pass finds nothing left.
        let mut swept_any = false;
        loop {
            // SAFETY: getdents64 writes at most the buffer's length into the buffer.
            let got = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dir,
                    buffer.as_mut_ptr(),
                    std::mem::size_of_val(&buffer),
                )
            };
            let Ok(got) = usize::try_from(got) else {
                // SAFETY: closes the directory opened above.
                unsafe { libc::close(dir) };
                return false;
            };
            if got == 0 {
                break;
            }
            let bytes = buffer.as_ptr().cast::<u8>();
            let mut at = 0;
            while at + NAME < got {
                // SAFETY: the kernel wrote `got` bytes of whole records; a record's length
                // field is at RECLEN and its NUL-terminated name at NAME, inside the record.
                let (length, fd) = unsafe {
                    let length = usize::from(u16::from_ne_bytes([
                        *bytes.add(at + RECLEN),
                        *bytes.add(at + RECLEN + 1),
                    ]));
                    (length, parse_fd(bytes.add(at + NAME)))
                };
                if length == 0 {
                    break;
                }
                if let Some(fd) = fd
                    && fd >= first
                    && fd != dir
                {
                    // SAFETY: as this function's contract.
                    unsafe { sweep_one(fd, how) };
                    swept_any = true;
                }
                at += length;
            }
        }
        // Marking close-on-exec changes no listing: one pass is enough.
        if how == Sweep::Cloexec || !swept_any {
            break;
        }
        // SAFETY: lseek on the directory opened above.
        if unsafe { libc::lseek(dir, 0, libc::SEEK_SET) } != 0 {
            break;
        }
    }
    // SAFETY: closes the directory opened above.
    unsafe { libc::close(dir) };
    true
}

/// The fd number of a `/proc/self/fd` entry's name (`None` for `.` and `..`).
///
/// # Safety
/// `name` must point to a NUL-terminated string.
#[cfg(target_os = "linux")]
unsafe fn parse_fd(name: *const u8) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut at = 0;
    loop {
        // SAFETY: the string is NUL-terminated: reading stops at the NUL.
        let byte = unsafe { *name.add(at) };
        if byte == 0 {
            return (at > 0).then_some(value);
        }
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(c_int::from(byte - b'0'))?;
        at += 1;
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
pub(crate) fn peer_uid(socket: &impl std::os::fd::AsFd) -> io::Result<u32> {
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

/// The file system of `dir`, if the native watcher (inotify, `FSEvents`, kqueue) does not hear
/// the changes made to it (they are made by another machine, or the VM's host): what to call it
/// in the line that says mcluster polls there.
pub(crate) fn blind_file_system(dir: &std::path::Path) -> Option<&'static str> {
    let stat = nix::sys::statfs::statfs(dir).ok()?;
    #[cfg(target_os = "linux")]
    {
        // `fs_type_t` is an `i64` on x86_64 glibc, but not on every target.
        #[allow(clippy::useless_conversion)]
        blind_by_magic(i64::from(stat.filesystem_type().0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        blind_by_name(stat.filesystem_type_name())
    }
}

/// Linux's file systems that inotify is blind on, by `statfs` magic. FUSE counts too: Docker
/// Desktop's bind mounts and virtiofs are FUSE, and so are sshfs and rclone.
#[cfg(any(target_os = "linux", test))]
fn blind_by_magic(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x0102_1997 => "9p (a WSL2 Windows drive or a VM's shared folder)",
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x6573_5546 => "FUSE (a Docker Desktop bind mount, virtiofs, sshfs…)",
        0x786F_4256 => "a VirtualBox shared folder",
        0x5346_414F => "AFS",
        0x00C3_6400 => "CephFS",
        _ => return None,
    })
}

/// macOS's and the BSDs' network and FUSE file systems, by `statfs` type name.
#[cfg(any(not(target_os = "linux"), test))]
fn blind_by_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "nfs" => "NFS",
        "smbfs" => "SMB",
        "afpfs" => "AFP",
        "webdav" => "WebDAV",
        name if name.contains("fuse") => "FUSE (sshfs, a container's shared folder…)",
        _ => return None,
    })
}

/// The calling thread's errno; async-signal-safe.
pub(crate) fn errno() -> c_int {
    nix::errno::Errno::last_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_systems_the_native_watcher_is_blind_on_are_known() {
        for (magic, name) in [
            (0x0102_1997, "9p"),
            (0x6969, "NFS"),
            (0x517B, "SMB"),
            (0xFF53_4D42, "CIFS"),
            (0xFE53_4D42, "SMB2"),
            (0x6573_5546, "FUSE"),
            (0x786F_4256, "VirtualBox"),
        ] {
            assert!(
                blind_by_magic(magic).is_some_and(|found| found.contains(name)),
                "{magic:#x}"
            );
        }
        // ext4, btrfs, xfs, tmpfs, overlayfs: inotify sees every change.
        for magic in [0xEF53, 0x9123_683E, 0x5846_5342, 0x0102_1994, 0x794C_7630] {
            assert_eq!(blind_by_magic(magic), None, "{magic:#x}");
        }
        assert_eq!(blind_by_name("nfs"), Some("NFS"));
        assert!(blind_by_name("macfuse").is_some());
        assert_eq!(blind_by_name("apfs"), None);
        assert_eq!(
            blind_file_system(std::env::temp_dir().as_path()),
            None,
            "the test's temporary directory is local"
        );
    }
}

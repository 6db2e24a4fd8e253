//! Adopting inherited listening sockets (the receiving side of socket passing).
//!
//! A process started with the systemd socket-passing protocol finds its listening sockets at fd 3
//! and up. Those fds belong to nobody in the Rust sense until something claims them: this module
//! checks that an fd really is a listening stream socket and only then takes ownership of it.

use std::io;
use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
#[cfg(feature = "channel")]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname};
use nix::sys::socket::{getsockopt, sockopt};

/// An inherited listening socket, typed by its address family.
#[derive(Debug)]
pub(crate) enum AdoptedListener {
    /// An `AF_INET` or `AF_INET6` stream socket.
    Tcp(TcpListener),
    /// An `AF_UNIX` stream socket.
    Unix(UnixListener),
}

/// The kind of listener an fd can become, decided before ownership is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Unix,
}

/// Set once the inherited fds have been claimed, so they can never be owned twice.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// Claims the fds this process inherited through `LISTEN_FDS`: `true` the first time in the
/// process, `false` ever after. Callers adopt the fds only after a `true`, which keeps
/// [`adopt_listener`]'s contract (whether the worker helpers or an embedded master asks).
pub(crate) fn claim_inherited_fds() -> bool {
    !CLAIMED.swap(true, Ordering::SeqCst)
}

/// Takes ownership of an inherited fd that must be a listening `SOCK_STREAM` socket
/// (`AF_INET`/`AF_INET6` become [`AdoptedListener::Tcp`], `AF_UNIX` becomes
/// [`AdoptedListener::Unix`]) and sets `FD_CLOEXEC` on it.
///
/// The caller must not use `fd` afterwards except through the returned listener, and nothing else
/// in the process may own it: this is meant for fds inherited at exec (fd 3 and up) and claimed
/// once.
///
/// # Errors
///
/// An [`io::Error`] naming the fd if it is not open, not a socket, not a stream socket, not
/// listening, or of an unsupported address family. On error the fd is left untouched (still open,
/// still owned by nobody).
pub(crate) fn adopt_listener(fd: RawFd) -> io::Result<AdoptedListener> {
    // `getsockname` takes a raw fd and is safe to call on any number: it is our probe for "open"
    // and "a socket" before any `BorrowedFd` is made.
    let addr: SockaddrStorage = getsockname(fd).map_err(|errno| match errno {
        Errno::EBADF => invalid(fd, "is not open"),
        Errno::ENOTSOCK => invalid(fd, "is not a socket"),
        other => with_context(fd, "getsockname", other),
    })?;
    let kind = match addr.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Kind::Tcp,
        Some(AddressFamily::Unix) => Kind::Unix,
        Some(family) => {
            return Err(invalid(
                fd,
                &format!("has unsupported address family {family:?} (want IPv4, IPv6 or unix)"),
            ));
        }
        None => return Err(invalid(fd, "has an unknown address family")),
    };

    // SAFETY: `getsockname` just succeeded on `fd`, so it is an open descriptor (and therefore
    // not -1). The borrow lives only for the checks below, within this call; per this function's
    // contract nobody else owns or closes `fd` meanwhile.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        // SO_TYPE values nix does not know come back as EINVAL.
        Ok(_) | Err(Errno::EINVAL) => return Err(invalid(fd, "is not a stream socket")),
        Err(other) => return Err(with_context(fd, "getsockopt(SO_TYPE)", other)),
    }
    match getsockopt(&borrowed, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => return Err(invalid(fd, "is a stream socket but not listening")),
        Err(other) => return Err(with_context(fd, "getsockopt(SO_ACCEPTCONN)", other)),
    }
    let flags = fcntl(borrowed, FcntlArg::F_GETFD).map_err(|e| with_context(fd, "fcntl", e))?;
    let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
    fcntl(borrowed, FcntlArg::F_SETFD(flags)).map_err(|e| with_context(fd, "fcntl", e))?;

    // SAFETY: `fd` is open (checked above) and, per this function's contract, owned by nothing
    // else in the process: it was inherited at exec and is claimed exactly once. From here on the
    // `OwnedFd` (and the listener built from it) is its only owner and closes it on drop.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(match kind {
        Kind::Tcp => AdoptedListener::Tcp(TcpListener::from(owned)),
        Kind::Unix => AdoptedListener::Unix(UnixListener::from(owned)),
    })
}

/// Set once the inherited channel fd has been claimed.
#[cfg(feature = "channel")]
static CHANNEL_CLAIMED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the inherited message channel's fd (`MCLUSTER_CHANNEL_FD`), which must be
/// an `AF_UNIX` stream socket, and sets `FD_CLOEXEC` on it, so that the worker's own children
/// do not hold it. Succeeds once per process: a second call is an `AlreadyExists` error.
///
/// # Errors
///
/// An [`io::Error`] naming the fd if it is not open, not a unix stream socket, or was claimed
/// already. On error the fd is left untouched.
#[cfg(feature = "channel")]
pub(crate) fn adopt_channel(fd: RawFd) -> io::Result<UnixStream> {
    let not_channel = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "inherited fd {fd} {what}; expected the master's channel, a unix stream socket"
            ),
        )
    };
    let addr: SockaddrStorage = getsockname(fd).map_err(|errno| match errno {
        Errno::EBADF => not_channel("is not open"),
        Errno::ENOTSOCK => not_channel("is not a socket"),
        other => with_context(fd, "getsockname", other),
    })?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(not_channel("is not a unix socket"));
    }
    // SAFETY: `getsockname` just succeeded on `fd`, so it is open; the borrow lives only for
    // the checks below, within this call, and nobody closes `fd` meanwhile (it is claimed once,
    // by this function, and only after the flag below).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(_) | Err(Errno::EINVAL) => return Err(not_channel("is not a stream socket")),
        Err(other) => return Err(with_context(fd, "getsockopt(SO_TYPE)", other)),
    }
    let flags = fcntl(borrowed, FcntlArg::F_GETFD).map_err(|e| with_context(fd, "fcntl", e))?;
    if CHANNEL_CLAIMED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the channel is taken already: mcluster::worker::channel() succeeds once per process",
        ));
    }
    let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
    fcntl(borrowed, FcntlArg::F_SETFD(flags)).map_err(|e| with_context(fd, "fcntl", e))?;
    // SAFETY: `fd` is open (checked above) and owned by nothing else in the process: it was
    // inherited at exec, and the flag above makes this the only claim of it. From here on the
    // `UnixStream` is its only owner and closes it on drop.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A validation failure: the fd is not something we can adopt.
fn invalid(fd: RawFd, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("inherited fd {fd} {what}; expected a listening stream socket"),
    )
}

/// A system call failed for another reason; keep its errno-derived kind.
fn with_context(fd: RawFd, call: &str, errno: Errno) -> io::Error {
    let err = io::Error::from(errno);
    io::Error::new(
        err.kind(),
        format!("inherited fd {fd}: {call} failed: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::{UnixDatagram, UnixStream};

    fn is_cloexec(fd: RawFd) -> bool {
        // SAFETY: test helper, called only on fds the test keeps open for the duration.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let flags = fcntl(borrowed, FcntlArg::F_GETFD).unwrap();
        FdFlag::from_bits_retain(flags).contains(FdFlag::FD_CLOEXEC)
    }

    /// A dup of `fd` without `FD_CLOEXEC`, handed over as a raw number like an inherited fd.
    fn inheritable_dup(fd: &impl std::os::fd::AsFd) -> RawFd {
        let dup = fd.as_fd().try_clone_to_owned().unwrap();
        let flags = fcntl(&dup, FcntlArg::F_GETFD).unwrap();
        let flags = FdFlag::from_bits_retain(flags) - FdFlag::FD_CLOEXEC;
        fcntl(&dup, FcntlArg::F_SETFD(flags)).unwrap();
        dup.into_raw_fd()
    }

    #[test]
    fn adopts_a_tcp_listener_and_sets_cloexec() {
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = original.local_addr().unwrap();
        let raw = inheritable_dup(&original);
        assert!(!is_cloexec(raw));

        let AdoptedListener::Tcp(adopted) = adopt_listener(raw).unwrap() else {
            panic!("expected a TCP listener");
        };
        assert_eq!(adopted.as_raw_fd(), raw);
        assert!(is_cloexec(raw));
        assert_eq!(adopted.local_addr().unwrap(), addr);

        let _client = TcpStream::connect(addr).unwrap();
        let (_conn, peer) = adopted.accept().unwrap();
        assert!(peer.ip().is_loopback());
    }

    #[test]
    fn adopts_an_ipv6_listener_when_available() {
        let Ok(original) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback in this sandbox
        };
        let raw = inheritable_dup(&original);
        assert!(matches!(
            adopt_listener(raw).unwrap(),
            AdoptedListener::Tcp(_)
        ));
    }

    #[test]
    fn adopts_a_unix_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let original = UnixListener::bind(&path).unwrap();
        let raw = inheritable_dup(&original);

        let AdoptedListener::Unix(adopted) = adopt_listener(raw).unwrap() else {
            panic!("expected a unix listener");
        };
        assert!(is_cloexec(raw));
        let _client = UnixStream::connect(&path).unwrap();
        adopted.accept().unwrap();
    }

    fn adopt_err(raw: RawFd) -> String {
        let err = adopt_listener(raw).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        err.to_string()
    }

    #[test]
    fn rejects_a_pipe_and_leaves_it_open() {
        let (reader, writer) = std::io::pipe().unwrap();
        let raw = reader.as_raw_fd();
        let msg = adopt_err(raw);
        assert!(msg.contains("is not a socket"), "{msg}");
        assert!(msg.contains(&format!("fd {raw}")), "{msg}");
        // Still open and still the pipe's: data goes through.
        let (mut reader, mut writer) = (reader, writer);
        std::io::Write::write_all(&mut writer, b"x").unwrap();
        let mut buf = [0u8; 1];
        std::io::Read::read_exact(&mut reader, &mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn rejects_a_closed_fd() {
        // A closed fd that a parallel test cannot reopen under us: far above any fd limit.
        let msg = adopt_err(RawFd::MAX - 1);
        assert!(msg.contains("is not open"), "{msg}");
        assert!(adopt_err(-1).contains("is not open"));
    }

    #[test]
    fn rejects_datagram_sockets() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(adopt_err(udp.as_raw_fd()).contains("not a stream socket"));
        let (a, _b) = UnixDatagram::pair().unwrap();
        assert!(adopt_err(a.as_raw_fd()).contains("not a stream socket"));
    }

    #[test]
    fn rejects_a_connected_stream_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(adopt_err(a.as_raw_fd()).contains("not listening"));
    }
}

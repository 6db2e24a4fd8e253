//! The three socket calls of per-generation listeners that nix does not wrap, or wraps for
//! Linux only: steering a `SO_REUSEPORT` group with a classic BPF program, taking the program
//! off, and reading a listening socket's accept queue. What they do in the kernel, and why
//! mcluster relies on it, is told in `crate::listener::steering`.
//!
//! On macOS and the BSDs none of them exists (FreeBSD's `SO_REUSEPORT_LB` balances but cannot be
//! steered): each returns [`io::ErrorKind::Unsupported`], and the caller keeps one shared socket.

use std::io;
use std::os::fd::BorrowedFd;

/// `SO_DETACH_REUSEPORT_BPF` (Linux 5.3), which the libc crate exports only for Android:
/// `include/uapi/asm-generic/socket.h` gives 68, sparc's own `socket.h` 0x47.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "sparc", target_arch = "sparc64")
))]
const SO_DETACH_REUSEPORT_BPF: nix::libc::c_int = 0x47;
#[cfg(all(
    target_os = "linux",
    not(any(target_arch = "sparc", target_arch = "sparc64"))
))]
const SO_DETACH_REUSEPORT_BPF: nix::libc::c_int = 68;

/// The index a program returns to leave the choice to the kernel's hash: any index at least the
/// group's size does (`run_bpf_filter` returns no socket, `reuseport_select_sock` then hashes).
#[cfg(target_os = "linux")]
const NO_INDEX: u32 = u32::MAX;

/// Attaches to the reuseport group of the listening socket `fd` the program `ret #index`: every
/// new connection to the group goes to its socket number `index` (in the kernel's order), or, if
/// the group has no such socket, wherever the kernel's hash sends it. Replaces the group's
/// previous program.
#[cfg(target_os = "linux")]
pub(crate) fn attach_steering(fd: BorrowedFd<'_>, index: u32) -> io::Result<()> {
    use nix::libc::{BPF_K, BPF_RET, sock_fprog};
    use nix::sys::socket::{setsockopt, sockopt};

    let mut program = [instruction(BPF_RET | BPF_K, 0, 0, index)];
    // The kernel copies the program during the call (`sk_reuseport_attach_filter` →
    // `__get_filter` → `copy_from_sockptr`): the pointer need not outlive it.
    let fprog = sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    setsockopt(&fd, sockopt::AttachReusePortCbpf, &fprog)?;
    Ok(())
}

/// Makes the listening TCP socket `fd` take no new connection: a socket filter
/// (`SO_ATTACH_FILTER`) that drops a SYN without ACK (a new connection's first segment, which its
/// client sends again a second later and then finds the port closed) and lets every other
/// segment through. The listener's filter also sees the last ACK of a handshake under way
/// (`tcp_v4_rcv` → `tcp_filter` on the listener, for a request socket): let through, it
/// completes the connection into the accept queue, which the workers drain, where dropping it
/// left a client that had sent its request to be reset once the listener closed. The
/// connections already in the queue are sockets of their own, created without the filter.
#[cfg(target_os = "linux")]
pub(crate) fn refuse_connections(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::libc::{BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET};
    attach_socket_filter(
        fd,
        &[
            // The filter runs on the segment from its TCP header on: byte 13 holds the flags.
            instruction(BPF_LD | BPF_B | BPF_ABS, 0, 0, TCP_FLAGS_OFFSET),
            instruction(BPF_ALU | BPF_AND | BPF_K, 0, 0, TCP_SYN | TCP_ACK),
            // SYN without ACK: on to the drop; anything else: past it.
            instruction(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, TCP_SYN),
            instruction(BPF_RET | BPF_K, 0, 0, 0),
            // Kept whole (a filter's result is the length to keep).
            instruction(BPF_RET | BPF_K, 0, 0, u32::MAX),
        ],
    )
}

/// Where a TCP header holds its flags, and two of them.
#[cfg(target_os = "linux")]
const TCP_FLAGS_OFFSET: u32 = 13;
#[cfg(target_os = "linux")]
const TCP_SYN: u32 = 0x02;
#[cfg(target_os = "linux")]
const TCP_ACK: u32 = 0x10;

/// One classic BPF instruction.
#[cfg(target_os = "linux")]
fn instruction(code: u32, jump_true: u8, jump_false: u8, k: u32) -> nix::libc::sock_filter {
    nix::libc::sock_filter {
        // Every code built here is a sum of flags below 0x100.
        code: u16::try_from(code).unwrap_or(u16::MAX),
        jt: jump_true,
        jf: jump_false,
        k,
    }
}

/// Attaches `program` to the socket `fd` as its socket filter (`SO_ATTACH_FILTER`), in place of
/// any it had.
#[cfg(target_os = "linux")]
fn attach_socket_filter(fd: BorrowedFd<'_>, program: &[nix::libc::sock_filter]) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    let fprog = nix::libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fd` is a borrowed open descriptor, valid for the call. The option value points
    // to a live local `sock_fprog` with its exact size as the length, whose `filter` points to
    // `len` live instructions (borrowed from `program` for the call); the kernel copies the
    // program during the call (`sk_attach_filter` → `copy_from_sockptr`) and writes nothing
    // back, through that pointer or any other.
    let result = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&fprog).cast(),
            nix::libc::socklen_t::try_from(size_of::<nix::libc::sock_fprog>()).unwrap_or(16),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes the program off the reuseport group of `fd`: the kernel's hash spreads connections over
/// the group again. A group without a program is no error. Before Linux 5.3 (no
/// `SO_DETACH_REUSEPORT_BPF`: `ENOPROTOOPT`), a program returning an index no group has does the
/// same.
#[cfg(target_os = "linux")]
pub(crate) fn detach_steering(fd: BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    let unused: nix::libc::c_int = 0;
    // SAFETY: `fd` is a borrowed open descriptor, valid for the call. The option value is a
    // pointer to a live local `c_int` with its exact size as the length; the kernel reads no
    // value for this option (`sock_setsockopt` → `reuseport_detach_prog`) and writes nothing.
    let result = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            std::ptr::from_ref(&unused).cast(),
            nix::libc::socklen_t::try_from(size_of::<nix::libc::c_int>()).unwrap_or(4),
        )
    };
    if result == 0 {
        return Ok(());
    }
    match nix::errno::Errno::last() {
        // `reuseport_detach_prog`: the group has no program.
        nix::errno::Errno::ENOENT => Ok(()),
        nix::errno::Errno::ENOPROTOOPT => attach_steering(fd, NO_INDEX),
        other => Err(other.into()),
    }
}

/// How many connections wait in the accept queue of the listening TCP socket `fd`, and its
/// backlog: `TCP_INFO`'s `tcpi_unacked` and `tcpi_sacked`, which `tcp_get_info`
/// (net/ipv4/tcp.c) fills for a socket in `TCP_LISTEN` with `sk_ack_backlog` (children ready for
/// `accept`) and `sk_max_ack_backlog` — the same numbers `ss -lnt` shows as Recv-Q and Send-Q.
/// Handshakes still under way (request sockets) are not counted.
#[cfg(target_os = "linux")]
pub(crate) fn accept_queue(fd: BorrowedFd<'_>) -> io::Result<AcceptQueue> {
    use std::os::fd::AsRawFd;

    const TCP_LISTEN: u8 = 10;
    // SAFETY: `tcp_info` is plain integers: all zeroes is a valid value.
    let mut info: nix::libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = nix::libc::socklen_t::try_from(size_of::<nix::libc::tcp_info>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is a borrowed open descriptor, valid for the call; `info` is a live, writable
    // `tcp_info` and `length` its size, so the kernel writes at most that many bytes (it copies
    // `min(len, sizeof(info))`) and stores the length it wrote in `length`.
    let result = unsafe {
        nix::libc::getsockopt(
            fd.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &raw mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    if info.tcpi_state != TCP_LISTEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket is not listening",
        ));
    }
    Ok(AcceptQueue {
        queued: info.tcpi_unacked,
        backlog: info.tcpi_sacked,
    })
}

/// A listening socket's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AcceptQueue {
    /// Connections established and waiting for `accept`.
    pub(crate) queued: u32,
    /// The most the queue holds (the `listen` backlog, capped by `net.core.somaxconn`).
    pub(crate) backlog: u32,
}

/// No steering outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn attach_steering(_fd: BorrowedFd<'_>, _index: u32) -> io::Result<()> {
    Err(unsupported())
}

/// No steering outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn detach_steering(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Err(unsupported())
}

/// See the Linux version: nothing to filter with here.
#[cfg(not(target_os = "linux"))]
pub(crate) fn refuse_connections(_fd: BorrowedFd<'_>) -> io::Result<()> {
    Err(unsupported())
}

/// No accept-queue length outside Linux (FreeBSD's `TCP_INFO` has no listener fields).
#[cfg(not(target_os = "linux"))]
pub(crate) fn accept_queue(_fd: BorrowedFd<'_>) -> io::Result<AcceptQueue> {
    Err(unsupported())
}

#[cfg(not(target_os = "linux"))]
fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "steering needs Linux's SO_ATTACH_REUSEPORT_CBPF",
    )
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    #[test]
    fn the_accept_queue_counts_established_connections_and_tells_the_backlog() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let queue = accept_queue(listener.as_fd()).unwrap();
        assert_eq!(queue.queued, 0);
        // std listens with a backlog of 128, capped by net.core.somaxconn.
        assert!(queue.backlog > 0 && queue.backlog <= 128, "{queue:?}");
        let clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        // The child is queued when the client's last ACK is processed, which may come just
        // after `connect` returns.
        let deadline = Instant::now() + Duration::from_secs(30);
        while accept_queue(listener.as_fd()).unwrap().queued != 3 {
            assert!(Instant::now() < deadline, "3 connections never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(listener.accept().unwrap());
        assert_eq!(accept_queue(listener.as_fd()).unwrap().queued, 2);
        drop(clients);
    }

    /// A handshake under way when the listener starts refusing connections completes into its
    /// accept queue: its last ACK goes through the filter (dropping it, as a filter dropping
    /// everything did, left a client that had sent its request to be reset at the close).
    #[test]
    fn refusing_connections_lets_a_handshake_under_way_complete() {
        use std::io::{Read as _, Write as _};

        use nix::libc::{
            BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET,
        };

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        // First a filter that drops the ACK ending a handshake: the client is connected and
        // sends its request while the listener holds only a request socket.
        attach_socket_filter(
            listener.as_fd(),
            &[
                instruction(BPF_LD | BPF_B | BPF_ABS, 0, 0, TCP_FLAGS_OFFSET),
                instruction(BPF_ALU | BPF_AND | BPF_K, 0, 0, TCP_SYN | TCP_ACK),
                instruction(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, TCP_ACK),
                instruction(BPF_RET | BPF_K, 0, 0, 0),
                instruction(BPF_RET | BPF_K, 0, 0, u32::MAX),
            ],
        )
        .unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(accept_queue(listener.as_fd()).unwrap().queued, 0);
        refuse_connections(listener.as_fd()).unwrap();
        // The request's segment carries the ACK again.
        client.write_all(b"ping").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut accepted, peer) = loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the handshake never completed");
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(peer, client.local_addr().unwrap());
        accepted.set_nonblocking(false).unwrap();
        let mut request = [0u8; 4];
        accepted.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"ping");
        // A new connection's SYN is dropped: its client waits for an answer that never comes.
        let refused =
            TcpStream::connect_timeout(&listener.local_addr().unwrap(), Duration::from_millis(300));
        assert_eq!(
            refused.map(drop).map_err(|e| e.kind()),
            Err(io::ErrorKind::TimedOut)
        );
    }

    #[test]
    fn the_accept_queue_of_a_socket_not_listening_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(accept_queue(client.as_fd()).is_err());
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(accept_queue(unix.as_fd()).is_err());
    }

    #[test]
    fn steering_needs_a_reuseport_group_and_detaching_twice_is_no_error() {
        // std's listener has no SO_REUSEPORT: no group to attach to.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(attach_steering(plain.as_fd(), 0).is_err());
        let socket =
            crate::sys::stream_socket(nix::sys::socket::AddressFamily::Inet, false).unwrap();
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReusePort, &true).unwrap();
        nix::sys::socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0),
        )
        .unwrap();
        nix::sys::socket::listen(&socket, nix::sys::socket::Backlog::MAXCONN).unwrap();
        detach_steering(socket.as_fd()).unwrap();
        attach_steering(socket.as_fd(), 0).unwrap();
        detach_steering(socket.as_fd()).unwrap();
        detach_steering(socket.as_fd()).unwrap();
    }
}

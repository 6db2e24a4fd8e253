//! Which accepted TCP connections have a request in progress, from the kernel's socket
//! diagnostics (`NETLINK_SOCK_DIAG`, `inet_diag`: what `ss -ti` reads), for every socket of the
//! network namespace at once and without touching the workers' descriptors. No privilege is
//! needed: `inet_diag` dumps every TCP socket of the namespace to any user.
//!
//! `/proc/net/tcp` shows a connection's queues but not a worker that read a request and is still
//! computing the answer (both queues empty); `TCP_INFO`, which the dump carries as
//! `INET_DIAG_INFO`, does: how long ago data was last received and last sent.
//!
//! The request and reply structures are written here (a few fixed layouts of
//! `include/uapi/linux/{netlink,inet_diag,tcp}.h`, each field read with a bounds check) rather
//! than taken from `netlink-packet-sock-diag`: that crate brings six crates (anyhow, bitflags 1,
//! byteorder, smallvec, netlink-packet-core and -utils) for four structures, and its `TcpInfo`
//! parser wants the whole structure of the kernel it was written for, where we read three fields
//! and must accept an older kernel's shorter one. nix makes the three socket calls, so the module
//! has no `unsafe`.
//!
//! Outside Linux there is no `inet_diag`: [`accepted_connections`] returns
//! [`io::ErrorKind::Unsupported`].

use nix::sys::socket::SockaddrStorage;
use std::collections::HashMap;
use std::io;

/// Whether a request is in progress on an accepted connection, and if so what shows it. The
/// rules are checked in this order; the first that holds names the answer.
// Outside Linux nothing builds one: the rules are the platform's, the dump Linux's.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InProgress {
    /// Bytes wait unread: the client sent (part of) a request the worker has not read yet
    /// (`idiag_rqueue > 0`; in `CLOSE_WAIT`, `idiag_rqueue > 1`, since the kernel counts the
    /// client's FIN there until the worker reads the end of the stream).
    Unread,
    /// Bytes the worker wrote are not acknowledged by the client yet (`idiag_wqueue > 0`) and
    /// either some are not even sent (`tcpi_notsent_bytes > 0`, Linux 4.6; unknown counts as
    /// some: a slow reader's window is full, the answer is mid-way) or bytes wait unread (the
    /// worker's close would be a reset, which drops what is not acknowledged). An answer all
    /// sent, with nothing unread, is delivered by the kernel even if the worker exits now.
    Unacknowledged,
    /// The worker read a request and has not answered yet: the client sent bytes and none the
    /// worker sent was acknowledged, nor waits to be (`tcpi_bytes_received > 0`,
    /// `tcpi_bytes_acked == 0` and `idiag_wqueue == 0`, Linux 4.1; a FIN counts as no byte);
    /// on an older kernel, data was received more recently than data was last sent
    /// (`tcpi_last_data_recv < tcpi_last_data_sent`), where both times have the resolution of
    /// a jiffy (1–10 ms), so equal times count as answered. A connection on which the client
    /// never sent a byte (a browser's preconnect) is idle.
    Answering,
    /// The client has sent nothing yet on a connection that came in less than [`ARRIVING`]
    /// ago (`tcpi_bytes_received == 0`, and `tcpi_last_data_recv`, which the kernel sets at
    /// the connection's creation, under it): a request is surely on its way (a client sends it
    /// right after connecting; on a busy machine its thread may take a while). Past it, such a
    /// connection is idle (a browser's preconnect) and closing it loses nothing the client
    /// would not retry.
    Arriving,
    /// The connection carried one request (`tcpi_data_segs_in == 1`, Linux 4.6), bytes of
    /// its answer were acknowledged (`tcpi_bytes_acked > 0`), and bytes were sent less than
    /// [`ANSWER_PAUSE`] ago: the answer may be mid-way (servers write a status line, headers
    /// and a body apart, microseconds to milliseconds apart, and the client, which has the
    /// first ones, would not send the request again), or done, the connection about to be
    /// closed. In progress; past [`ANSWER_PAUSE`] without a byte sent, a kept-alive connection
    /// or a stream between two events ([`InProgress::Reused`]: a stream is cut at the stop
    /// signal, as ever). A request larger than a segment looks like two, and its connection
    /// like a reused one.
    FirstAnswer,
    /// The connection already delivered an answer (`tcpi_bytes_acked > 0`, Linux 4.1) and no
    /// answer is on its way: a kept-alive connection, idle or with a next request not answered
    /// yet. Not in progress: an HTTP client sends a request again on a new connection when a
    /// reused one closes before any byte of its answer (RFC 9110 9.2.2, for idempotent
    /// requests; what hyper's client and browsers do). A busy kept-alive client would otherwise
    /// hold its worker until the drain deadline.
    Reused,
    /// None of the above: the connection is idle between requests (or before its first), and
    /// closing it loses nothing a client would not retry.
    No,
}

impl InProgress {
    /// Whether a request is in progress on the connection.
    pub(crate) fn is_in_progress(self) -> bool {
        !matches!(self, Self::No | Self::Reused)
    }

    /// Applies the rules of [`InProgress`] to one socket's queues and, where the kernel's
    /// `tcp_info` has them, its times. Unknown times (a `tcp_info` too short, or none) leave
    /// the decision to the queues.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn judge(unread: u32, unacknowledged: u32, times: Option<Times>) -> Self {
        // An answer all sent and awaiting its acknowledgement is delivered by the kernel
        // whatever the worker does next (a close sends what is left, then the FIN), unless
        // unread bytes make that close a reset; one not all sent yet (the client's window is
        // full: a slow reader, mid-answer) is in progress.
        let not_sent = times.and_then(|times| times.not_sent);
        if unacknowledged > 0 && (unread > 0 || not_sent != Some(0)) {
            return Self::Unacknowledged;
        }
        if let Some(times) = times {
            let sending = u128::from(times.last_data_sent_ms) < ANSWER_PAUSE.as_millis();
            if times.bytes_acked.is_some_and(|acked| acked > 0) {
                if times.data_segs_in == Some(1) && sending {
                    return Self::FirstAnswer;
                }
                return Self::Reused;
            }
            // The first bytes of the first answer, all sent and not acknowledged yet: the
            // rest may follow.
            if unacknowledged > 0 && times.bytes_received.is_some_and(|bytes| bytes > 0) && sending
            {
                return Self::FirstAnswer;
            }
        }
        if unread > 0 {
            return Self::Unread;
        }
        match times {
            // Counted, this is exact; the times would count a request that came in the jiffy
            // the connection was made as answered.
            Some(Times {
                bytes_received: Some(received),
                bytes_acked: Some(0),
                ..
            }) if received > 0 && unacknowledged == 0 => Self::Answering,
            Some(times)
                if times.bytes_received != Some(0)
                    && times.last_data_recv_ms < times.last_data_sent_ms =>
            {
                Self::Answering
            }
            Some(Times {
                bytes_received: Some(0),
                last_data_recv_ms,
                ..
            }) if u128::from(last_data_recv_ms) < ARRIVING.as_millis() => Self::Arriving,
            _ => Self::No,
        }
    }

    /// [`InProgress::judge`] for a connection the client closed (`CLOSE_WAIT`), whose
    /// `unread` bytes do not count the FIN: the FIN counts as a byte received, and no request
    /// is on its way any more.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn judge_closed(unread: u32, unacknowledged: u32, times: Option<Times>) -> Self {
        match Self::judge(unread, unacknowledged, times.map(Times::after_fin)) {
            Self::Arriving => Self::No,
            judged => judged,
        }
    }
}

/// How long after its last byte sent an answer, the first on its connection, may still be
/// mid-way ([`InProgress::FirstAnswer`]): a few jiffies (their resolution is 1–10 ms), more
/// than the pauses between a server's writes of one answer, even on a busy machine.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const ANSWER_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a connection on which the client has sent nothing yet counts as a request on its
/// way ([`InProgress::Arriving`]).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const ARRIVING: std::time::Duration = std::time::Duration::from_secs(1);

impl Times {
    /// The times of a connection the client closed (`CLOSE_WAIT`): its FIN takes a sequence
    /// number, which `tcpi_bytes_received` (the advance of `rcv_nxt`) counts as a byte.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn after_fin(self) -> Self {
        Self {
            bytes_received: self.bytes_received.map(|bytes| bytes.saturating_sub(1)),
            ..self
        }
    }
}

/// An address family of TCP listeners, which a dump asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `AF_INET`.
    V4,
    /// `AF_INET6` (IPv4-mapped connections to a dual-stack socket included).
    V6,
}

/// The port and address family of an IPv4 or IPv6 socket address; `None` for another kind.
pub(crate) fn tcp_address(address: &SockaddrStorage) -> Option<(u16, Family)> {
    address
        .as_sockaddr_in()
        .map(|v4| (v4.port(), Family::V4))
        .or_else(|| address.as_sockaddr_in6().map(|v6| (v6.port(), Family::V6)))
}

/// The fields of `struct tcp_info` the rules read.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    /// `tcpi_last_data_recv`: milliseconds since data was last received.
    last_data_recv_ms: u32,
    /// `tcpi_last_data_sent`: milliseconds since data was last sent.
    last_data_sent_ms: u32,
    /// `tcpi_bytes_received` (Linux 4.1), `None` on older kernels.
    bytes_received: Option<u64>,
    /// `tcpi_bytes_acked` (Linux 4.1): bytes sent and acknowledged, `None` on older kernels.
    bytes_acked: Option<u64>,
    /// `tcpi_notsent_bytes` (Linux 4.6): bytes written and not sent yet, `None` on older
    /// kernels.
    not_sent: Option<u32>,
    /// `tcpi_data_segs_in` (Linux 4.6): segments received with data, `None` on older kernels.
    data_segs_in: Option<u32>,
}

/// The TCP connections of this network namespace whose local port is one of `ports`, in state
/// `ESTABLISHED` or `CLOSE_WAIT`, by socket inode, each with whether a request is in progress on it.
///
/// "In progress" means: bytes wait unread (`idiag_rqueue > 0`), or bytes sent but not
/// acknowledged (`idiag_wqueue > 0`), or data was received more recently than data was last sent
/// (`tcpi_last_data_recv < tcpi_last_data_sent`, and `tcpi_bytes_received > 0` where the kernel
/// reports it; equal times count as answered, since both have a millisecond resolution). In
/// `CLOSE_WAIT` the client's FIN, which `idiag_rqueue` counts until it is read, is not a byte. On a
/// kernel whose `tcp_info` lacks the times, only the queues decide. See [`InProgress`].
///
/// Only the address families of `families` are read: the connections accepted on a listener
/// are of its own family (IPv4-mapped connections to a dual-stack IPv6 socket are listed by the
/// IPv6 dump). Each dump walks the kernel's whole table of connections, `TIME_WAIT` ones
/// included, whatever its filter (some 4 ms per family with 260,000 buckets, 8 ms with 11,000
/// sockets in `TIME_WAIT`), so a family without a listener is not asked for. Connections still
/// in a listener's accept queue have no socket inode yet and are left out: the listener's
/// accept queue counts them. A listening socket is never listed.
///
/// The inode is the number of `socket:[N]` in `/proc/PID/fd`. The dump streams through a fixed
/// 64 KiB buffer and keeps only the connections of `ports`, so a namespace with 100,000 sockets
/// costs time but no memory beyond the answer.
#[cfg(target_os = "linux")]
pub(crate) fn accepted_connections(
    ports: &[u16],
    families: &[Family],
) -> io::Result<HashMap<u64, InProgress>> {
    linux::accepted_connections(ports, families)
}

/// Whether one of the sockets `sockets` (fd number and socket inode) of the process `pid`
/// carries a request in progress ([`InProgress`]), the search stopping at the first, among
/// those that are TCP
/// connections, `ESTABLISHED` or `CLOSE_WAIT`, with a local port of `ports`; read through a
/// duplicate of each fd (`super::socket_state`), a few system calls a connection where a dump
/// walks every socket of the namespace. A socket closed meanwhile, another file at its fd
/// number now, or one that is no such connection is left out; so is every socket of a process
/// gone. An error when the fds cannot be duplicated (a kernel older than 5.6, no `ptrace`
/// access, a seccomp filter): [`accepted_connections`] tells it then.
#[cfg(target_os = "linux")]
pub(crate) fn held_request_in_progress(
    pid: i32,
    sockets: &[(i32, u64)],
    ports: &[u16],
) -> io::Result<bool> {
    linux::held_request_in_progress(pid, sockets, ports)
}

/// Whether one of the sockets `sockets` (fd number and socket inode) of the process `pid` is a
/// connection accepted on a listener of ours: connected, its local address one of the
/// listeners' (a TCP port of `ports`, a path of `paths`; an accepted socket has its listener's
/// address). Read through a duplicate of each fd, as [`held_request_in_progress`], the search
/// stopping at the first. The inodes of those read and found to be no such connection are
/// added to `not_accepted`: a socket never becomes one later (an accepted connection is a new
/// socket). `false` for a process gone; an error when its fds cannot be duplicated.
#[cfg(target_os = "linux")]
pub(crate) fn accepted_connection_among(
    pid: i32,
    sockets: &[(i32, u64)],
    ports: &[u16],
    paths: &[String],
    not_accepted: &mut Vec<u64>,
) -> io::Result<bool> {
    linux::accepted_connection_among(pid, sockets, ports, paths, not_accepted)
}

/// The error of the readings through duplicates of a worker's fds where there is no
/// `pidfd_getfd`.
#[cfg(not(target_os = "linux"))]
fn no_pidfd_getfd() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "reading a worker's connections needs Linux's pidfd_getfd",
    )
}

/// No `pidfd_getfd` outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn accepted_connection_among(
    _pid: i32,
    _sockets: &[(i32, u64)],
    _ports: &[u16],
    _paths: &[String],
    _not_accepted: &mut Vec<u64>,
) -> io::Result<bool> {
    Err(no_pidfd_getfd())
}

/// No `pidfd_getfd` outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn held_request_in_progress(
    _pid: i32,
    _sockets: &[(i32, u64)],
    _ports: &[u16],
) -> io::Result<bool> {
    Err(no_pidfd_getfd())
}

/// No `inet_diag` outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn accepted_connections(
    _ports: &[u16],
    _families: &[Family],
) -> io::Result<HashMap<u64, InProgress>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "the connections' requests in progress need Linux's NETLINK_SOCK_DIAG",
    ))
}

#[cfg(target_os = "linux")]
mod linux {
    use super::super::socket_state::{ProcessFds, tcp_state};
    use super::{Family, InProgress, Times};
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, getpeername,
        getsockname, recv, send, socket,
    };
    use std::collections::HashMap;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;

    // include/uapi/linux/netlink.h
    const NLMSG_HDRLEN: usize = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_MULTI: u16 = 0x2;
    /// `NLM_F_ROOT | NLM_F_MATCH`.
    const NLM_F_DUMP: u16 = 0x300;
    // include/uapi/linux/sock_diag.h
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    // include/uapi/linux/inet_diag.h
    /// `struct inet_diag_req_v2`: family, protocol, ext, pad (u8 each), states (u32), then a
    /// 48-byte `struct inet_diag_sockid`.
    const REQ_V2_LEN: usize = 56;
    /// `struct inet_diag_msg`: family, state, timer, retrans (u8 each), the 48-byte
    /// `inet_diag_sockid`, then expires, rqueue, wqueue, uid, inode (u32 each).
    const MSG_LEN: usize = 72;
    /// In `inet_diag_sockid`, which starts at offset 4 of `inet_diag_msg`: the local port, in
    /// network byte order.
    const MSG_SPORT: usize = 4;
    const MSG_RQUEUE: usize = 56;
    const MSG_WQUEUE: usize = 60;
    const MSG_INODE: usize = 68;
    const MSG_STATE: usize = 1;
    const INET_DIAG_INFO: u16 = 2;
    /// `struct rtattr`: length and type, u16 each.
    const RTA_HDRLEN: usize = 4;
    // include/net/tcp_states.h
    const TCP_ESTABLISHED: u8 = 1;
    const TCP_CLOSE_WAIT: u8 = 8;
    // include/uapi/linux/tcp.h, struct tcp_info: offsets of the fields read (the structure only
    // grows at its end, so an offset never changes; a test checks them against libc's).
    pub(super) const TCPI_LAST_DATA_SENT: usize = 44;
    pub(super) const TCPI_LAST_DATA_RECV: usize = 52;
    pub(super) const TCPI_BYTES_ACKED: usize = 120;
    pub(super) const TCPI_BYTES_RECEIVED: usize = 128;
    pub(super) const TCPI_NOTSENT_BYTES: usize = 144;
    pub(super) const TCPI_DATA_SEGS_IN: usize = 152;

    /// The receive buffer. A dump's datagrams hold at most 32 KiB (`netlink_dump` allocates at
    /// most `max_recvmsg_len`, which it caps at 32 KiB); twice that leaves room for a kernel that
    /// sends more, and a datagram that does not fit is an error, never half-read.
    const BUFFER: usize = 64 * 1024;

    pub(super) fn accepted_connections(
        ports: &[u16],
        families: &[Family],
    ) -> io::Result<HashMap<u64, InProgress>> {
        if ports.is_empty() || families.is_empty() {
            return Ok(HashMap::new());
        }
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        let mut buffer = vec![0_u8; BUFFER];
        let mut found = HashMap::new();
        for (sequence, family) in [(1, Family::V4), (2, Family::V6)] {
            if !families.contains(&family) {
                continue;
            }
            let family = match family {
                Family::V4 => nix::libc::AF_INET,
                Family::V6 => nix::libc::AF_INET6,
            };
            dump(&socket, family, sequence, &mut buffer, &mut |connection| {
                if ports.contains(&connection.port) && connection.inode != 0 {
                    found.insert(u64::from(connection.inode), connection.in_progress);
                }
            })?;
        }
        Ok(found)
    }

    /// Hands each of the sockets `sockets` (fd number and inode) of the process `pid` to
    /// `found`, as a duplicate of its fd, until `found` says it is the one: a socket closed
    /// meanwhile, or another file at its fd number now, is left out; a process gone holds none.
    /// An error when its fds cannot be duplicated.
    fn any_duplicate(
        pid: i32,
        sockets: &[(i32, u64)],
        mut found: impl FnMut(OwnedFd, u64) -> bool,
    ) -> io::Result<bool> {
        let process = match ProcessFds::open(pid) {
            Ok(process) => process,
            // Gone: so are its connections.
            Err(error) if error.raw_os_error() == Some(nix::libc::ESRCH) => return Ok(false),
            Err(error) => return Err(error),
        };
        for &(fd, inode) in sockets {
            let duplicate = match process.duplicate(fd) {
                Ok(duplicate) => duplicate,
                // Closed meanwhile.
                Err(error) if error.raw_os_error() == Some(nix::libc::EBADF) => continue,
                // Exited meanwhile.
                Err(error) if error.raw_os_error() == Some(nix::libc::ESRCH) => return Ok(false),
                Err(error) => return Err(error),
            };
            // The fd number may be another file's by now.
            if nix::sys::stat::fstat(&duplicate).map(|stat| stat.st_ino) != Ok(inode) {
                continue;
            }
            if found(duplicate, inode) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(super) fn accepted_connection_among(
        pid: i32,
        sockets: &[(i32, u64)],
        ports: &[u16],
        paths: &[String],
        not_accepted: &mut Vec<u64>,
    ) -> io::Result<bool> {
        any_duplicate(pid, sockets, |duplicate, inode| {
            let ours = getsockname::<SockaddrStorage>(duplicate.as_raw_fd()).is_ok_and(|address| {
                super::tcp_address(&address).map_or_else(
                    || {
                        address
                            .as_unix_addr()
                            .and_then(nix::sys::socket::UnixAddr::path)
                            .is_some_and(|path| paths.iter().any(|ours| path == Path::new(ours)))
                    },
                    |(port, _)| ports.contains(&port),
                )
            });
            // A listener of the worker's own on that address has no peer; a socket not yet
            // connected may still become a client, never a connection it accepted.
            let accepted = ours && getpeername::<SockaddrStorage>(duplicate.as_raw_fd()).is_ok();
            if !accepted {
                not_accepted.push(inode);
            }
            accepted
        })
    }

    pub(super) fn held_request_in_progress(
        pid: i32,
        sockets: &[(i32, u64)],
        ports: &[u16],
    ) -> io::Result<bool> {
        any_duplicate(pid, sockets, |duplicate, _| {
            let Ok(address) = getsockname::<SockaddrStorage>(duplicate.as_raw_fd()) else {
                return false;
            };
            let port = super::tcp_address(&address).map(|(port, _)| port);
            if !port.is_some_and(|port| ports.contains(&port)) {
                return false;
            }
            let Ok(state) = tcp_state(&duplicate) else {
                return false;
            };
            drop(duplicate);
            let times = parse_tcp_info(&state.info);
            // `SIOCINQ`, unlike `idiag_rqueue`, does not count a FIN received.
            let in_progress = match state.info.first() {
                Some(&TCP_ESTABLISHED) => {
                    InProgress::judge(state.unread, state.unacknowledged, times)
                }
                Some(&TCP_CLOSE_WAIT) => {
                    InProgress::judge_closed(state.unread, state.unacknowledged, times)
                }
                _ => return false,
            };
            in_progress.is_in_progress()
        })
    }

    /// One connection of a dump.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Connection {
        pub(super) port: u16,
        pub(super) inode: u32,
        pub(super) in_progress: InProgress,
    }

    /// Asks for the TCP sockets of `family` in `ESTABLISHED` or `CLOSE_WAIT` with their `tcp_info`,
    /// and hands each to `each` as its datagrams arrive, until the dump's `NLMSG_DONE`.
    fn dump(
        socket: &OwnedFd,
        family: i32,
        sequence: u32,
        buffer: &mut [u8],
        each: &mut dyn FnMut(Connection),
    ) -> io::Result<()> {
        let request = request(family, sequence)?;
        let sent = send(socket.as_raw_fd(), &request, MsgFlags::empty())?;
        if sent != request.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the socket-diagnostics request was sent in part",
            ));
        }
        loop {
            // MSG_TRUNC: the length returned is the datagram's, even when it did not fit.
            let length = recv(socket.as_raw_fd(), buffer, MsgFlags::MSG_TRUNC)?;
            let Some(datagram) = buffer.get(..length) else {
                return Err(invalid(
                    "a socket-diagnostics reply was larger than the buffer",
                ));
            };
            if parse_datagram(datagram, sequence, each)? == Parsed::Done {
                return Ok(());
            }
        }
    }

    /// The dump request: a netlink header and an `inet_diag_req_v2`.
    pub(super) fn request(family: i32, sequence: u32) -> io::Result<Vec<u8>> {
        let mut request = Vec::with_capacity(NLMSG_HDRLEN + REQ_V2_LEN);
        let length = u32::try_from(NLMSG_HDRLEN + REQ_V2_LEN).map_err(|_| invalid("length"))?;
        request.extend_from_slice(&length.to_ne_bytes());
        request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend_from_slice(&sequence.to_ne_bytes());
        // The port id: 0 lets the kernel assign one.
        request.extend_from_slice(&0_u32.to_ne_bytes());
        request.push(u8::try_from(family).map_err(|_| invalid("address family"))?);
        request.push(u8::try_from(nix::libc::IPPROTO_TCP).map_err(|_| invalid("protocol"))?);
        // idiag_ext: bit (INET_DIAG_INFO - 1) asks for `tcp_info`.
        request.push(1 << (INET_DIAG_INFO - 1));
        request.push(0);
        let states = (1_u32 << TCP_ESTABLISHED) | (1_u32 << TCP_CLOSE_WAIT);
        request.extend_from_slice(&states.to_ne_bytes());
        // The socket id is not a filter in a dump: zeroes.
        request.resize(NLMSG_HDRLEN + REQ_V2_LEN, 0);
        Ok(request)
    }

    /// Whether a datagram ended the dump.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Parsed {
        More,
        Done,
    }

    /// Reads the netlink messages of one datagram of the reply to request `sequence`.
    pub(super) fn parse_datagram(
        mut datagram: &[u8],
        sequence: u32,
        each: &mut dyn FnMut(Connection),
    ) -> io::Result<Parsed> {
        while !datagram.is_empty() {
            let length = usize::try_from(read_u32(datagram, 0)?).map_err(|_| invalid("length"))?;
            if length < NLMSG_HDRLEN || length > datagram.len() {
                return Err(invalid(
                    "a socket-diagnostics message has an impossible length",
                ));
            }
            let kind = read_u16(datagram, 4)?;
            let flags = read_u16(datagram, 6)?;
            let message_sequence = read_u32(datagram, 8)?;
            let payload = &datagram[NLMSG_HDRLEN..length];
            // Messages are 4-byte aligned; the last one may end the datagram without padding.
            datagram = datagram.get(align(length)..).unwrap_or(&[]);
            if message_sequence != sequence {
                // Not an answer to this dump (nothing else is asked on this socket): skip it.
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(Parsed::Done),
                NLMSG_ERROR => {
                    // `struct nlmsgerr`: a negative errno, then the request's header.
                    let errno = i32::from_ne_bytes(read_array(payload, 0)?);
                    if errno == 0 {
                        // An acknowledgement, which a dump does not send unless asked.
                        continue;
                    }
                    return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
                }
                SOCK_DIAG_BY_FAMILY => each(parse_socket(payload)?),
                // Other control messages (NLMSG_NOOP, NLMSG_OVERRUN) carry no socket.
                _ => {}
            }
            if flags & NLM_F_MULTI == 0 {
                // A lone answer ends the exchange.
                return Ok(Parsed::Done);
            }
        }
        Ok(Parsed::More)
    }

    /// One `inet_diag_msg` and its attributes.
    pub(super) fn parse_socket(payload: &[u8]) -> io::Result<Connection> {
        if payload.len() < MSG_LEN {
            return Err(invalid("a socket-diagnostics message is too short"));
        }
        let port = u16::from_be_bytes(read_array(payload, MSG_SPORT)?);
        let state = payload[MSG_STATE];
        let unread = read_u32(payload, MSG_RQUEUE)?;
        let unacknowledged = read_u32(payload, MSG_WQUEUE)?;
        let inode = read_u32(payload, MSG_INODE)?;
        let mut times = None;
        let mut attributes = payload.get(align(MSG_LEN)..).unwrap_or(&[]);
        while attributes.len() >= RTA_HDRLEN {
            let length = usize::from(read_u16(attributes, 0)?);
            let kind = read_u16(attributes, 2)?;
            if length < RTA_HDRLEN || length > attributes.len() {
                return Err(invalid(
                    "a socket-diagnostics attribute has an impossible length",
                ));
            }
            if kind == INET_DIAG_INFO {
                times = parse_tcp_info(&attributes[RTA_HDRLEN..length]);
            }
            attributes = attributes.get(align(length)..).unwrap_or(&[]);
        }
        // A socket in another state, which the request's filter should have left out: say it
        // is busy, so that it never lets a worker be stopped early.
        let in_progress = if state == TCP_ESTABLISHED {
            InProgress::judge(unread, unacknowledged, times)
        } else if state == TCP_CLOSE_WAIT {
            // The client's FIN takes a sequence number, which `idiag_rqueue` (`rcv_nxt -
            // copied_seq`) counts until the worker reads the end of the stream: after a FIN,
            // unread bytes are one fewer.
            InProgress::judge_closed(unread.saturating_sub(1), unacknowledged, times)
        } else {
            InProgress::Unacknowledged
        };
        Ok(Connection {
            port,
            inode,
            in_progress,
        })
    }

    /// The times of a `tcp_info`, `None` if it is too short to hold them; `bytes_received` is
    /// `None` on a kernel older than the field (4.1).
    pub(super) fn parse_tcp_info(info: &[u8]) -> Option<Times> {
        Some(Times {
            last_data_recv_ms: read_u32(info, TCPI_LAST_DATA_RECV).ok()?,
            last_data_sent_ms: read_u32(info, TCPI_LAST_DATA_SENT).ok()?,
            bytes_received: read_array(info, TCPI_BYTES_RECEIVED)
                .ok()
                .map(u64::from_ne_bytes),
            bytes_acked: read_array(info, TCPI_BYTES_ACKED)
                .ok()
                .map(u64::from_ne_bytes),
            not_sent: read_u32(info, TCPI_NOTSENT_BYTES).ok(),
            data_segs_in: read_u32(info, TCPI_DATA_SEGS_IN).ok(),
        })
    }

    /// Netlink's 4-byte alignment of messages and attributes.
    fn align(length: usize) -> usize {
        length.saturating_add(3) & !3
    }

    fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> io::Result<[u8; N]> {
        offset
            .checked_add(N)
            .and_then(|end| bytes.get(offset..end))
            .and_then(|slice| <[u8; N]>::try_from(slice).ok())
            .ok_or_else(|| invalid("a socket-diagnostics message is truncated"))
    }

    fn read_u32(bytes: &[u8], offset: usize) -> io::Result<u32> {
        read_array(bytes, offset).map(u32::from_ne_bytes)
    }

    fn read_u16(bytes: &[u8], offset: usize) -> io::Result<u16> {
        read_array(bytes, offset).map(u16::from_ne_bytes)
    }

    fn invalid(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
    }
}

#[cfg(all(test, target_os = "linux"))]
pub(crate) mod tests {
    use super::linux::{
        Connection, Parsed, TCPI_BYTES_ACKED, TCPI_BYTES_RECEIVED, TCPI_DATA_SEGS_IN,
        TCPI_LAST_DATA_RECV, TCPI_LAST_DATA_SENT, TCPI_NOTSENT_BYTES, parse_datagram, parse_socket,
        parse_tcp_info, request,
    };
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::{Duration, Instant};

    const DEADLINE: Duration = Duration::from_secs(30);

    /// A listener on `address` (port 0) and one connection to it, accepted.
    struct Pair {
        listener: TcpListener,
        client: TcpStream,
        server: TcpStream,
    }

    impl Pair {
        fn new(address: &str) -> io::Result<Self> {
            let listener = TcpListener::bind(address)?;
            let client = TcpStream::connect(listener.local_addr()?)?;
            let (server, _) = listener.accept()?;
            Ok(Self {
                listener,
                client,
                server,
            })
        }

        fn port(&self) -> u16 {
            self.listener.local_addr().unwrap().port()
        }

        fn family(&self) -> Family {
            match self.listener.local_addr().unwrap() {
                SocketAddr::V4(_) => Family::V4,
                SocketAddr::V6(_) => Family::V6,
            }
        }

        /// What `accepted_connections` says of the server's socket (which must be listed).
        fn state(&self) -> InProgress {
            let found = accepted_connections(&[self.port()], &[self.family()]).unwrap();
            let inode = inode(&self.server);
            assert_eq!(found.len(), 1, "{found:?}");
            *found
                .get(&inode)
                .unwrap_or_else(|| panic!("the accepted socket {inode} is not listed: {found:?}"))
        }

        /// Waits until the server's socket is in `expected`, or panics with the last state.
        fn wait_for(&self, expected: InProgress) {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let state = self.state();
                if state == expected {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "still {state:?}, never {expected:?}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        /// Reads the client's one-byte request (in progress until answered), answers it, and
        /// waits past that first answer.
        fn answer_the_request(&mut self) {
            let mut request = [0_u8; 1];
            self.server.read_exact(&mut request).unwrap();
            assert_eq!(self.state(), InProgress::Answering);
            let written = Instant::now();
            self.server.write_all(b"y").unwrap();
            self.wait_past_first_answer(written);
        }

        /// After the server wrote the first answer of the connection at `written`: in progress
        /// ([`InProgress::FirstAnswer`]) while its last byte was sent less than
        /// [`ANSWER_PAUSE`] ago (checked while less than 5 ms passed here: a jiffy is at most
        /// 10 ms), then a reused connection.
        fn wait_past_first_answer(&self, written: Instant) {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let early = written.elapsed() < Duration::from_millis(5);
                let state = self.state();
                if early {
                    assert_eq!(state, InProgress::FirstAnswer);
                }
                match state {
                    InProgress::Reused => return,
                    InProgress::FirstAnswer => {}
                    other => panic!("{other:?} after the first answer"),
                }
                assert!(Instant::now() < deadline, "never past the first answer");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// The socket inode of `stream`, as `/proc/self/fd` names it.
    fn inode(stream: &TcpStream) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", stream.as_raw_fd())).unwrap();
        let link = link.to_str().unwrap();
        link.strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `TCP_INFO` of a socket of this process, read directly: what the kernel's clock says.
    fn tcp_info(stream: &TcpStream) -> nix::libc::tcp_info {
        // SAFETY: `tcp_info` is plain integers: all zeroes is a valid value.
        let mut info: nix::libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut length = nix::libc::socklen_t::try_from(size_of::<nix::libc::tcp_info>()).unwrap();
        // SAFETY: `stream` is open for the call; `info` is a live, writable `tcp_info` and
        // `length` its size, so the kernel writes at most that many bytes and stores the length
        // it wrote in `length`.
        let result = unsafe {
            nix::libc::getsockopt(
                stream.as_raw_fd(),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_INFO,
                std::ptr::from_mut(&mut info).cast(),
                &raw mut length,
            )
        };
        assert_eq!(result, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info
    }

    /// Waits until the server socket sent its last data (or, with none, was created) at least
    /// 20 ms ago, so that data received from now on is strictly more recent at the
    /// millisecond (and jiffy) resolution of the times.
    pub(crate) fn wait_until_sending_is_old(server: &TcpStream) {
        let deadline = Instant::now() + DEADLINE;
        while tcp_info(server).tcpi_last_data_sent < 20 {
            assert!(
                Instant::now() < deadline,
                "the clock of TCP_INFO does not move"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_connection_on_which_nothing_was_sent_is_arriving_for_a_second_then_idle() {
        let pair = Pair::new("127.0.0.1:0").unwrap();
        // Its request is on its way (a client thread that has not run yet).
        assert_eq!(pair.state(), InProgress::Arriving);
        // A second later, nothing sent yet: a preconnect, idle.
        let deadline = Instant::now() + DEADLINE;
        while u128::from(tcp_info(&pair.server).tcpi_last_data_recv) < ARRIVING.as_millis() {
            assert!(
                Instant::now() < deadline,
                "the clock of TCP_INFO does not move"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pair.state(), InProgress::No);
    }

    #[test]
    fn a_request_not_read_yet_is_in_progress_then_one_read_and_not_answered_then_answered_is_not() {
        let mut pair = Pair::new("127.0.0.1:0").unwrap();
        wait_until_sending_is_old(&pair.server);
        pair.client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        pair.wait_for(InProgress::Unread);

        let mut request = [0_u8; 18];
        pair.server.read_exact(&mut request).unwrap();
        // Received after the connection's last send (its creation, 20 ms or more before).
        assert_eq!(pair.state(), InProgress::Answering);
        let info = tcp_info(&pair.server);
        assert!(
            info.tcpi_last_data_recv < info.tcpi_last_data_sent,
            "{info:?}"
        );

        pair.server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap();
        // The first answer of the connection, which may go on for a moment; then a kept-alive
        // connection.
        pair.wait_past_first_answer(Instant::now());
        let mut answer = [0_u8; 27];
        pair.client.read_exact(&mut answer).unwrap();
        assert_eq!(pair.state(), InProgress::Reused);
        // Its next request, unread or read and not answered: a client would send it again.
        pair.client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        pair.wait_for(InProgress::Reused);
    }

    #[test]
    fn an_answer_the_client_does_not_read_is_in_progress_until_it_reads() {
        let mut pair = Pair::new("127.0.0.1:0").unwrap();
        pair.server.set_nonblocking(true).unwrap();
        // Fill the client's receive buffer and then the server's send buffer.
        let chunk = vec![7_u8; 64 * 1024];
        let mut written = 0_usize;
        loop {
            match pair.server.write(&chunk) {
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("write: {error}"),
            }
        }
        assert!(written > 0);
        assert_eq!(pair.state(), InProgress::Unacknowledged);

        // The client reads everything: every byte gets acknowledged.
        let mut sink = vec![0_u8; 64 * 1024];
        let mut read = 0_usize;
        while read < written {
            read += pair.client.read(&mut sink).unwrap();
        }
        pair.wait_for(InProgress::Reused);
    }

    #[test]
    fn connections_on_other_ports_and_listeners_are_not_listed() {
        let pair = Pair::new("127.0.0.1:0").unwrap();
        let other = Pair::new("127.0.0.1:0").unwrap();
        let found = accepted_connections(&[pair.port()], &[Family::V4]).unwrap();
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            [inode(&pair.server)]
        );
        let both = accepted_connections(&[pair.port(), other.port()], &[Family::V4]).unwrap();
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both.contains_key(&inode(&other.server)));
        // Nor the client's end, nor the listener.
        assert!(!both.contains_key(&inode(&pair.client)));
        // Nor a connection still in the accept queue (it has no inode yet).
        let _queued = TcpStream::connect(("127.0.0.1", pair.port())).unwrap();
        let deadline = Instant::now() + DEADLINE;
        while crate::sys::accept_queue(pair.listener.as_fd())
            .unwrap()
            .queued
            != 1
        {
            assert!(Instant::now() < deadline, "the connection never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            pair.state(),
            InProgress::Arriving,
            "the accepted one, as it was"
        );
        assert!(
            accepted_connections(&[], &[Family::V4, Family::V6])
                .unwrap()
                .is_empty()
        );
        assert!(
            !accepted_connections(&[pair.port()], &[Family::V6])
                .unwrap()
                .contains_key(&inode(&pair.server)),
            "an IPv4 connection is not in the IPv6 dump"
        );
        assert_eq!(
            accepted_connections(&[pair.port()], &[]).unwrap().len(),
            0,
            "no family, no dump"
        );
    }

    /// Waits until the server's socket is in `CLOSE_WAIT` (`tcp_states.h`: 8).
    fn wait_for_close_wait(server: &TcpStream) {
        let deadline = Instant::now() + DEADLINE;
        while tcp_info(server).tcpi_state != 8 {
            assert!(Instant::now() < deadline, "never in CLOSE_WAIT");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_connection_the_client_closed_is_idle_though_its_fin_is_unread() {
        let mut pair = Pair::new("127.0.0.1:0").unwrap();
        pair.client.shutdown(std::net::Shutdown::Write).unwrap();
        wait_for_close_wait(&pair.server);
        // idiag_rqueue is 1 here: the FIN.
        assert_eq!(pair.state(), InProgress::No);
        assert_eq!(pair.server.read(&mut [0; 8]).unwrap(), 0);
        assert_eq!(pair.state(), InProgress::No);
    }

    /// A request sent at once, in the jiffy the connection was made (equal times, which the
    /// rules alone would take for answered): read and not answered, it is in progress.
    #[test]
    fn a_request_sent_at_once_and_read_is_in_progress_until_answered() {
        let mut pair = Pair::new("127.0.0.1:0").unwrap();
        pair.client.write_all(b"x").unwrap();
        pair.answer_the_request();
    }

    #[test]
    fn a_request_followed_by_the_clients_fin_is_in_progress_until_answered() {
        let mut pair = Pair::new("127.0.0.1:0").unwrap();
        wait_until_sending_is_old(&pair.server);
        pair.client.write_all(b"x").unwrap();
        pair.client.shutdown(std::net::Shutdown::Write).unwrap();
        wait_for_close_wait(&pair.server);
        assert_eq!(pair.state(), InProgress::Unread);
        pair.answer_the_request();
    }

    #[test]
    fn ipv6_connections_are_listed() {
        let pair = match Pair::new("[::1]:0") {
            Ok(pair) => pair,
            Err(error) => {
                println!("skipped: cannot use ::1 ({error})");
                return;
            }
        };
        let SocketAddr::V6(_) = pair.listener.local_addr().unwrap() else {
            panic!("not IPv6");
        };
        let mut pair = pair;
        assert_eq!(pair.state(), InProgress::Arriving);
        assert!(
            !accepted_connections(&[pair.port()], &[Family::V4])
                .unwrap()
                .contains_key(&inode(&pair.server)),
            "an IPv6 connection is not in the IPv4 dump"
        );
        pair.client.write_all(b"x").unwrap();
        pair.wait_for(InProgress::Unread);
    }

    #[test]
    fn the_rules_decide_in_order_and_counts_before_times() {
        let times = |recv, sent, bytes| {
            Some(Times {
                last_data_recv_ms: recv,
                last_data_sent_ms: sent,
                bytes_received: bytes,
                bytes_acked: Some(0),
                not_sent: Some(0),
                data_segs_in: Some(1),
            })
        };
        assert_eq!(
            InProgress::judge(1, 0, times(1, 2, Some(5))),
            InProgress::Unread
        );
        assert_eq!(
            InProgress::judge(1, 1, times(1, 2, Some(5))),
            InProgress::Unacknowledged,
            "an answer on its way, with bytes unread: a close would reset it"
        );
        // All sent, nothing unread: the kernel delivers it whatever the worker does; the first
        // bytes of a first answer, though, may have more to follow for ANSWER_PAUSE.
        assert_eq!(
            InProgress::judge(0, 1, times(30, 20, Some(5))),
            InProgress::No
        );
        assert_eq!(
            InProgress::judge(0, 1, times(3, 2, Some(5))),
            InProgress::FirstAnswer
        );
        let window_full = Some(Times {
            not_sent: Some(4096),
            ..times(3, 2, Some(5)).unwrap()
        });
        assert_eq!(
            InProgress::judge(0, 1, window_full),
            InProgress::Unacknowledged
        );
        let unknown = Some(Times {
            not_sent: None,
            ..times(3, 2, Some(5)).unwrap()
        });
        assert_eq!(InProgress::judge(0, 1, unknown), InProgress::Unacknowledged);
        // A connection that already delivered an answer: a next request not answered yet is
        // no request in progress (a client sends it again), an answer on its way is.
        let reused = |recv, sent| {
            Some(Times {
                last_data_recv_ms: recv,
                last_data_sent_ms: sent,
                bytes_received: Some(40),
                bytes_acked: Some(120),
                not_sent: Some(0),
                data_segs_in: Some(2),
            })
        };
        // Its first answer, bytes of it acknowledged: maybe mid-way, in progress until nothing
        // was sent for ANSWER_PAUSE.
        let first = |sent| {
            Some(Times {
                data_segs_in: Some(1),
                ..reused(3, sent).unwrap()
            })
        };
        assert_eq!(InProgress::judge(0, 0, first(0)), InProgress::FirstAnswer);
        assert_eq!(InProgress::judge(0, 0, first(19)), InProgress::FirstAnswer);
        assert_eq!(InProgress::judge(0, 0, first(20)), InProgress::Reused);
        assert!(InProgress::FirstAnswer.is_in_progress());
        assert_eq!(InProgress::judge(1, 0, reused(1, 2)), InProgress::Reused);
        assert_eq!(InProgress::judge(0, 0, reused(1, 2)), InProgress::Reused);
        // An answer all sent on it awaits only its acknowledgement: no hold-up either (a busy
        // kept-alive client has one in flight at most looks); one mid-way is in progress.
        assert_eq!(InProgress::judge(0, 3, reused(1, 2)), InProgress::Reused);
        let mid_way = Some(Times {
            not_sent: Some(100),
            ..reused(1, 2).unwrap()
        });
        assert_eq!(InProgress::judge(0, 3, mid_way), InProgress::Unacknowledged);
        assert!(!InProgress::Reused.is_in_progress());
        assert!(
            InProgress::judge(0, 1, times(1, 2, Some(5))).is_in_progress(),
            "all sent, but a request came after it"
        );
        assert_eq!(
            InProgress::judge(0, 0, times(1, 2, Some(5))),
            InProgress::Answering
        );
        // Bytes received and nothing sent acknowledged nor waiting: a request read and not
        // answered, whatever the times say (a request that came in the jiffy the connection
        // was made has equal times).
        assert_eq!(
            InProgress::judge(0, 0, times(2, 2, Some(5))),
            InProgress::Answering
        );
        assert_eq!(
            InProgress::judge(0, 0, times(3, 2, Some(5))),
            InProgress::Answering
        );
        // Without the counts (Linux 2.6 to 4.0), the times decide, equal ones as answered.
        let uncounted = |recv, sent| {
            Some(Times {
                last_data_recv_ms: recv,
                last_data_sent_ms: sent,
                bytes_received: None,
                bytes_acked: None,
                not_sent: None,
                data_segs_in: None,
            })
        };
        assert_eq!(
            InProgress::judge(0, 0, uncounted(1, 2)),
            InProgress::Answering
        );
        assert_eq!(InProgress::judge(0, 0, uncounted(2, 2)), InProgress::No);
        assert_eq!(InProgress::judge(0, 0, uncounted(3, 2)), InProgress::No);
        // The client closed: its FIN counts as a byte received, and nothing is on its way.
        assert_eq!(
            InProgress::judge_closed(0, 0, times(1, 2, Some(1))),
            InProgress::No
        );
        assert_eq!(
            InProgress::judge_closed(0, 0, times(2, 2, Some(6))),
            InProgress::Answering
        );
        // Nothing ever received: a request on its way for a second, then idle, whatever the
        // other time says.
        assert_eq!(
            InProgress::judge(0, 0, times(1, 2, Some(0))),
            InProgress::Arriving
        );
        assert_eq!(
            InProgress::judge(0, 0, times(999, 2, Some(0))),
            InProgress::Arriving
        );
        assert_eq!(
            InProgress::judge(0, 0, times(1000, 2, Some(0))),
            InProgress::No
        );
        // A kernel without tcpi_bytes_received: the times decide.
        assert_eq!(
            InProgress::judge(0, 0, times(1, 2, None)),
            InProgress::Answering
        );
        // No times: the queues decide.
        assert_eq!(InProgress::judge(0, 0, None), InProgress::No);
        assert_eq!(InProgress::judge(3, 0, None), InProgress::Unread);
        assert!(!InProgress::No.is_in_progress());
        assert!(InProgress::Answering.is_in_progress());
    }

    #[test]
    fn the_tcp_info_offsets_are_the_kernel_headers() {
        assert_eq!(
            std::mem::offset_of!(nix::libc::tcp_info, tcpi_last_data_sent),
            TCPI_LAST_DATA_SENT
        );
        assert_eq!(
            std::mem::offset_of!(nix::libc::tcp_info, tcpi_last_data_recv),
            TCPI_LAST_DATA_RECV
        );
        #[cfg(target_env = "gnu")]
        assert_eq!(
            std::mem::offset_of!(nix::libc::tcp_info, tcpi_bytes_received),
            TCPI_BYTES_RECEIVED
        );
        #[cfg(target_env = "gnu")]
        assert_eq!(
            std::mem::offset_of!(nix::libc::tcp_info, tcpi_bytes_acked),
            TCPI_BYTES_ACKED
        );
        #[cfg(target_env = "gnu")]
        assert_eq!(
            std::mem::offset_of!(nix::libc::tcp_info, tcpi_notsent_bytes),
            TCPI_NOTSENT_BYTES
        );
        #[cfg(target_env = "gnu")]
        assert_eq!(
            std::mem::offset_of!(nix::libc::tcp_info, tcpi_data_segs_in),
            TCPI_DATA_SEGS_IN
        );
    }

    /// A `tcp_info` of `length` bytes with the given times and byte count (where they fit).
    fn info_bytes(length: usize, recv: u32, sent: u32, bytes: u64) -> Vec<u8> {
        let mut info = vec![0_u8; 232];
        info[TCPI_LAST_DATA_RECV..][..4].copy_from_slice(&recv.to_ne_bytes());
        info[TCPI_LAST_DATA_SENT..][..4].copy_from_slice(&sent.to_ne_bytes());
        info[TCPI_BYTES_RECEIVED..][..8].copy_from_slice(&bytes.to_ne_bytes());
        info[TCPI_BYTES_ACKED..][..8].copy_from_slice(&0_u64.to_ne_bytes());
        info[TCPI_NOTSENT_BYTES..][..4].copy_from_slice(&3_u32.to_ne_bytes());
        info[TCPI_DATA_SEGS_IN..][..4].copy_from_slice(&1_u32.to_ne_bytes());
        info.truncate(length);
        info
    }

    #[test]
    fn an_older_kernels_shorter_tcp_info_leaves_unknown_fields_unknown() {
        assert_eq!(
            parse_tcp_info(&info_bytes(232, 1, 2, 9)),
            Some(Times {
                last_data_recv_ms: 1,
                last_data_sent_ms: 2,
                bytes_received: Some(9),
                bytes_acked: Some(0),
                not_sent: Some(3),
                data_segs_in: Some(1),
            })
        );
        // Linux 2.6 to 4.0: no tcpi_bytes_received.
        assert_eq!(
            parse_tcp_info(&info_bytes(104, 1, 2, 9)),
            Some(Times {
                last_data_recv_ms: 1,
                last_data_sent_ms: 2,
                bytes_received: None,
                bytes_acked: None,
                not_sent: None,
                data_segs_in: None,
            })
        );
        assert_eq!(parse_tcp_info(&info_bytes(55, 1, 2, 9)), None);
        assert_eq!(parse_tcp_info(&[]), None);
    }

    /// A reply message: netlink header, `inet_diag_msg`, then the attribute `tcp_info`.
    fn message(
        sequence: u32,
        port: u16,
        state: u8,
        rqueue: u32,
        inode: u32,
        info: &[u8],
    ) -> Vec<u8> {
        let mut diag = vec![0_u8; 72];
        diag[0] = 2;
        diag[1] = state;
        diag[4..6].copy_from_slice(&port.to_be_bytes());
        diag[56..60].copy_from_slice(&rqueue.to_ne_bytes());
        diag[68..72].copy_from_slice(&inode.to_ne_bytes());
        let attribute_length = u16::try_from(4 + info.len()).unwrap();
        diag.extend_from_slice(&attribute_length.to_ne_bytes());
        diag.extend_from_slice(&2_u16.to_ne_bytes());
        diag.extend_from_slice(info);
        while !diag.len().is_multiple_of(4) {
            diag.push(0);
        }
        let mut message = Vec::new();
        message.extend_from_slice(&u32::try_from(16 + diag.len()).unwrap().to_ne_bytes());
        message.extend_from_slice(&20_u16.to_ne_bytes());
        message.extend_from_slice(&2_u16.to_ne_bytes());
        message.extend_from_slice(&sequence.to_ne_bytes());
        message.extend_from_slice(&0_u32.to_ne_bytes());
        message.extend_from_slice(&diag);
        message
    }

    fn control(kind: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&u32::try_from(16 + payload.len()).unwrap().to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&2_u16.to_ne_bytes());
        message.extend_from_slice(&sequence.to_ne_bytes());
        message.extend_from_slice(&0_u32.to_ne_bytes());
        message.extend_from_slice(payload);
        message
    }

    fn parse(datagram: &[u8]) -> (io::Result<Parsed>, Vec<Connection>) {
        let mut seen = Vec::new();
        let parsed = parse_datagram(datagram, 7, &mut |connection| seen.push(connection));
        (parsed, seen)
    }

    #[test]
    fn replies_are_parsed_until_done_and_errors_and_bad_lengths_are_errors() {
        let mut datagram = message(7, 8080, 1, 0, 11, &info_bytes(232, 1, 2, 9));
        datagram.extend(message(6, 8080, 1, 0, 12, &info_bytes(232, 1, 2, 9)));
        datagram.extend(message(7, 8081, 8, 4, 13, &info_bytes(40, 1, 2, 9)));
        let (parsed, seen) = parse(&datagram);
        assert_eq!(parsed.unwrap(), Parsed::More);
        assert_eq!(
            seen,
            [
                Connection {
                    port: 8080,
                    inode: 11,
                    in_progress: InProgress::Answering
                },
                Connection {
                    port: 8081,
                    inode: 13,
                    in_progress: InProgress::Unread
                },
            ]
        );

        datagram.extend(control(3, 7, &0_i32.to_ne_bytes()));
        datagram.extend(message(7, 8080, 1, 0, 14, &[]));
        let (parsed, seen) = parse(&datagram);
        assert_eq!(parsed.unwrap(), Parsed::Done);
        assert_eq!(seen.len(), 2, "nothing after NLMSG_DONE");

        let error = control(2, 7, &(-nix::libc::EACCES).to_ne_bytes());
        let (parsed, _) = parse(&error);
        assert_eq!(parsed.unwrap_err().raw_os_error(), Some(nix::libc::EACCES));

        let mut truncated = message(7, 8080, 1, 0, 11, &[]);
        truncated.truncate(40);
        assert!(parse(&truncated).0.is_err());
        let mut too_long = message(7, 8080, 1, 0, 11, &[]);
        too_long[0..4].copy_from_slice(&1000_u32.to_ne_bytes());
        assert!(parse(&too_long).0.is_err());
        assert!(parse(&[1, 2, 3]).0.is_err());
        let mut bad_attribute = message(7, 8080, 1, 0, 11, &[0; 8]);
        let at = 16 + 72;
        bad_attribute[at..at + 2].copy_from_slice(&200_u16.to_ne_bytes());
        assert!(parse(&bad_attribute).0.is_err());
        assert!(parse_socket(&[0; 71]).is_err());
    }

    #[test]
    fn the_request_asks_for_established_and_close_wait_tcp_sockets_with_tcp_info() {
        let request = request(nix::libc::AF_INET6, 5).unwrap();
        assert_eq!(request.len(), 72);
        assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(request[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(request[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(request[8..12].try_into().unwrap()), 5);
        assert_eq!(request[16], 10);
        assert_eq!(request[17], 6);
        assert_eq!(request[18], 2);
        assert_eq!(
            u32::from_ne_bytes(request[20..24].try_into().unwrap()),
            (1 << 1) | (1 << 8)
        );
    }
}

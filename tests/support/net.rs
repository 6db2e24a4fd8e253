//! Talking to the workers: one line out, one line back, on a fresh connection each time.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::process::{DEADLINE, wait_until};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for the slowest request the tests make (`sleep 1500`) on a busy machine.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens a connection to `127.0.0.1:port` and sends `line`, without waiting for the reply.
pub(crate) fn send(port: u16, line: &str) -> io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    Ok(stream)
}

/// Reads the one-line reply of a connection made by [`send`], without its newline.
pub(crate) fn receive(stream: TcpStream) -> io::Result<String> {
    read_reply(stream)
}

/// Sends `line` to `127.0.0.1:port` on a new connection and returns the one-line reply.
pub(crate) fn try_request(port: u16, line: &str) -> io::Result<String> {
    receive(send(port, line)?)
}

/// [`try_request`] that fails the test on any error.
#[track_caller]
pub(crate) fn request(port: u16, line: &str) -> String {
    match try_request(port, line) {
        Ok(reply) => reply,
        Err(e) => panic!("request {line:?} to 127.0.0.1:{port} failed: {e}"),
    }
}

/// Sends `line` to the unix socket at `path` and returns the one-line reply.
#[track_caller]
pub(crate) fn request_unix(path: &Path, line: &str) -> String {
    let attempt = || -> io::Result<String> {
        let mut stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(format!("{line}\n").as_bytes())?;
        read_reply(stream)
    };
    attempt().unwrap_or_else(|e| panic!("request {line:?} to {} failed: {e}", path.display()))
}

fn read_reply(stream: impl io::Read) -> io::Result<String> {
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if !reply.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed before a full reply (got {reply:?})"),
        ));
    }
    reply.pop();
    Ok(reply)
}

/// A reply of the echo fixture: `pid=<pid> gen=<generation> id=<slot> <request>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) pid: i32,
    pub(crate) generation: u64,
    pub(crate) slot: usize,
    pub(crate) echo: String,
}

impl Reply {
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let mut words = line.splitn(4, ' ');
        let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
        let generation = words.next()?.strip_prefix("gen=")?.parse().ok()?;
        let slot = words.next()?.strip_prefix("id=")?.parse().ok()?;
        let echo = words.next()?.to_owned();
        Some(Self {
            pid,
            generation,
            slot,
            echo,
        })
    }
}

/// Sends `line` to the echo fixture and checks that the reply echoes it.
#[track_caller]
pub(crate) fn echo(port: u16, line: &str) -> Reply {
    let reply = request(port, line);
    let parsed = Reply::parse(&reply).unwrap_or_else(|| panic!("not an echo reply: {reply:?}"));
    assert_eq!(parsed.echo, line, "echo reply to {line:?}: {reply:?}");
    parsed
}

/// Sends requests until every pid in `expected` has answered one, and checks that no other pid
/// answers meanwhile. The kernel picks the worker for each connection, so this takes a few tries.
#[track_caller]
pub(crate) fn wait_served_by(port: u16, expected: &[i32], reply_pid: impl Fn(&str) -> i32) {
    let expected: BTreeSet<i32> = expected.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let start = Instant::now();
    while seen != expected {
        assert!(
            start.elapsed() < DEADLINE,
            "only pids {seen:?} of {expected:?} answered on port {port} in {DEADLINE:?}"
        );
        let reply = request(port, "who");
        let pid = reply_pid(&reply);
        assert!(
            expected.contains(&pid),
            "pid {pid} answered, expected only {expected:?}: {reply:?}"
        );
        seen.insert(pid);
    }
}

/// The pid in a reply of the echo fixture.
#[track_caller]
pub(crate) fn echo_pid(reply: &str) -> i32 {
    Reply::parse(reply)
        .unwrap_or_else(|| panic!("not an echo reply: {reply:?}"))
        .pid
}

/// Waits until a worker has accepted the connection `stream`: the kernel gives the server side of
/// a connection an inode only when accept(2) hands it to a process (`/proc/net/tcp`).
#[track_caller]
pub(crate) fn wait_accepted(stream: &TcpStream) {
    let (SocketAddr::V4(client), SocketAddr::V4(server)) =
        (stream.local_addr().unwrap(), stream.peer_addr().unwrap())
    else {
        panic!("wait_accepted handles IPv4 connections only");
    };
    wait_until("a worker to accept the connection", || {
        server_side_inode(server, client).is_some_and(|inode| inode != 0)
    });
}

/// The inode of the socket with local address `local` and remote `remote`, from `/proc/net/tcp`.
fn server_side_inode(local: SocketAddrV4, remote: SocketAddrV4) -> Option<u64> {
    let (local, remote) = (proc_net_addr(local), proc_net_addr(remote));
    tcp_row(
        |fields| fields[1] == local && fields[2] == remote,
        |fields| fields.get(9)?.parse().ok(),
    )
}

/// How many connections wait in the accept queue of the socket listening on `127.0.0.1:port`
/// (the `rx_queue` of its `LISTEN` row in `/proc/net/tcp`), or `None` when none listens there.
pub(crate) fn accept_queue(port: u16) -> Option<usize> {
    let local = proc_net_addr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    // Field 3 is the state (0A: LISTEN), field 4 `tx_queue:rx_queue` in hex.
    tcp_row(
        |fields| fields[1] == local && fields[3] == "0A",
        |fields| {
            let (_, waiting) = fields.get(4)?.split_once(':')?;
            usize::from_str_radix(waiting, 16).ok()
        },
    )
}

/// What `read` takes from the first row of `/proc/net/tcp` (its fields split on blanks) that
/// `wanted` picks.
fn tcp_row<T>(wanted: impl Fn(&[&str]) -> bool, read: impl Fn(&[&str]) -> Option<T>) -> Option<T> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        (fields.len() > 4 && wanted(&fields))
            .then(|| read(&fields))
            .flatten()
    })
}

/// An address as `/proc/net/tcp` prints it: the raw (network order) address as a native u32,
/// then the port, both in hex.
fn proc_net_addr(addr: SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    )
}

/// Whether nothing listens on `127.0.0.1:port` any more.
pub(crate) fn is_refused(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    matches!(
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// `GET /` on a fresh connection: the whole response.
pub(crate) fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(10))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    // The address as `Host`, as a browser sends it (the dev master's building page answers
    // only its own names).
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// A client of `address` (IPv4) with a receive buffer as small as the kernel allows and a small
/// segment size, that has sent `request` and will read nothing until the test says so: a page
/// that never reads, whose window closes after a few KiB. The segment size is a slow link's:
/// the kernel sizes the server's send buffer from it (twice ten segments), so a few dozen KiB
/// fill that buffer too, where loopback's 64 KiB segments would let it take over a MiB.
pub(crate) fn stalled_client(address: SocketAddr, request: &str) -> TcpStream {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(v4) = address else {
        panic!("stalled_client handles IPv4 addresses only: {address}")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    // Before connect(2): the window offered in the handshake follows the buffer.
    setsockopt(&fd, sockopt::RcvBuf, &2048).expect("SO_RCVBUF");
    setsockopt(&fd, sockopt::TcpMaxSeg, &536).expect("TCP_MAXSEG");
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).expect("connect");
    let mut stream = TcpStream::from(fd);
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    stream
}

//! Helpers for writing a worker: take the inherited listeners, report readiness, know who you are.
//!
//! A worker needs none of this code: mcluster speaks the same protocols as systemd, so any program
//! that supports socket activation and `sd_notify` works unchanged. These helpers are a small,
//! dependency-free (no async runtime) implementation of the worker side for Rust programs.
//!
//! # The protocol a worker follows
//!
//! 1. **Take the listening sockets.** They are already bound and listening, at fd 3, 4, … —
//!    `LISTEN_FDS` says how many, `LISTEN_PID` holds the pid they are meant for, and
//!    `LISTEN_FDNAMES` gives colon-separated names (`NAME=` in `--listen NAME=ADDR`). A process must
//!    only take them if `LISTEN_PID` is its own pid; a child that inherited the environment must
//!    not. [`listeners()`] does all of this, the way `sd_listen_fds_with_names` does (except that
//!    it also takes them when `LISTEN_PID` is unset, as `systemfd --no-pid` leaves it), and marks
//!    the fds close-on-exec so children of the worker do not hold them.
//! 2. **Accept connections** on them. Every worker shares the same sockets; the kernel hands each
//!    connection to one worker.
//! 3. **Say `READY=1`** once the worker can serve ([`ready()`]): a datagram to the socket named by
//!    `NOTIFY_SOCKET`. With `--ready notify` the master waits for it before it counts the worker
//!    as up (and, during a roll, before it stops an old worker). Other messages: `STATUS=…`
//!    ([`status()`]), `STOPPING=1` ([`stopping()`]), `WATCHDOG=1` ([`watchdog()`]).
//! 4. **Drain on SIGTERM** (the default stop signal): stop accepting, finish the requests already
//!    accepted, then exit 0. Connections still waiting in the listen queue are not lost: the
//!    socket stays open in the master and in the other workers, which accept them. If the worker
//!    is still alive after `--kill-timeout`, its process group gets SIGKILL.
//!
//! 5. **Talk to the master** if it wants to: `channel()` (feature `channel`) is its message channel
//!    (`MCLUSTER_CHANNEL_FD`), JSON values both ways, one per line. What a worker sends reaches
//!    the embedder's `Master::on_message` (which may reply) and `mcluster events`; `mcluster
//!    send` and `Handle::send` reach the worker.
//!
//! The master also tells each worker who it is: [`worker_id()`] (its slot, `0..workers`, reused by
//! a replacement), [`generation()`] (bumped by every reload) and [`workers()`] (cluster size).
//!
//! # Examples
//!
//! A minimal worker that answers every TCP connection with one line, then closes it:
//!
//! ```no_run
//! use std::io::Write;
//!
//! fn main() -> std::io::Result<()> {
//!     let listener = mcluster::worker::listeners()?
//!         .into_iter()
//!         .find_map(mcluster::worker::Listener::into_tcp)
//!         .expect("run me under mcluster with a TCP --listen");
//!     mcluster::worker::ready()?;
//!     for conn in listener.incoming() {
//!         writeln!(conn?, "hello from worker {:?}", mcluster::worker::worker_id())?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! The `hello` example in the repository adds HTTP and a graceful drain on SIGTERM.

use std::env;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

#[cfg(feature = "channel")]
use crate::sys::adopt_channel;
use crate::sys::{AdoptedListener, adopt_listener, claim_inherited_fds};

/// The first inherited fd, fixed by the protocol (after stdin, stdout and stderr).
const LISTEN_FDS_START: RawFd = 3;

/// The name a listener gets when `LISTEN_FDNAMES` gives none (as in `sd_listen_fds_with_names`).
const UNKNOWN_NAME: &str = "unknown";

/// A listening socket inherited from the master, with its name.
///
/// Get them from [`listeners()`]. mcluster creates its sockets in blocking mode; call
/// [`Socket::set_nonblocking`] to poll them (and read its note on sharing first).
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: Socket,
}

/// An inherited listening socket: TCP (IPv4 or IPv6) or a Unix domain stream socket.
#[derive(Debug)]
pub enum Socket {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix domain stream listener.
    Unix(UnixListener),
}

/// An accepted connection from [`Socket::accept`].
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain stream connection.
    Unix(UnixStream),
}

impl Listener {
    /// The listener's name from `LISTEN_FDNAMES` (`"unknown"` if it has none).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// for listener in mcluster::worker::listeners()? {
    ///     eprintln!("{} on {}", listener.name(), listener.socket());
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket, borrowed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let listeners = mcluster::worker::listeners()?;
    /// let first = listeners.first().expect("no listeners");
    /// let conn = first.socket().accept()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Gives up the name and returns the socket.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mcluster::worker::Socket;
    ///
    /// for listener in mcluster::worker::listeners()? {
    ///     match listener.into_socket() {
    ///         Socket::Tcp(tcp) => eprintln!("tcp {}", tcp.local_addr()?),
    ///         Socket::Unix(unix) => eprintln!("unix {:?}", unix.local_addr()?),
    ///     }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn into_socket(self) -> Socket {
        self.socket
    }

    /// Returns the name and the socket.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let named: Vec<(String, mcluster::worker::Socket)> = mcluster::worker::listeners()?
    ///     .into_iter()
    ///     .map(mcluster::worker::Listener::into_parts)
    ///     .collect();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn into_parts(self) -> (String, Socket) {
        (self.name, self.socket)
    }

    /// The TCP listener, if this is one (otherwise the listener is dropped and closed).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let tcp: Vec<std::net::TcpListener> = mcluster::worker::listeners()?
    ///     .into_iter()
    ///     .filter_map(mcluster::worker::Listener::into_tcp)
    ///     .collect();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn into_tcp(self) -> Option<TcpListener> {
        match self.socket {
            Socket::Tcp(tcp) => Some(tcp),
            Socket::Unix(_) => None,
        }
    }

    /// The Unix listener, if this is one (otherwise the listener is dropped and closed).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let unix = mcluster::worker::listeners()?
    ///     .into_iter()
    ///     .find_map(mcluster::worker::Listener::into_unix);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn into_unix(self) -> Option<UnixListener> {
        match self.socket {
            Socket::Unix(unix) => Some(unix),
            Socket::Tcp(_) => None,
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Socket {
    /// Accepts one connection, TCP or Unix alike.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::io::Write;
    ///
    /// let listeners = mcluster::worker::listeners()?;
    /// let socket = listeners.first().expect("no listeners").socket();
    /// loop {
    ///     let mut conn = socket.accept()?;
    ///     conn.write_all(b"hi\n")?;
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Socket::Tcp(tcp) => tcp.accept().map(|(s, _)| Stream::Tcp(s)),
            Socket::Unix(unix) => unix.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// Moves the socket into or out of non-blocking mode (then [`accept`](Self::accept) fails
    /// with [`io::ErrorKind::WouldBlock`] when no connection is waiting).
    ///
    /// The mode belongs to the socket itself, which every worker shares with the master and with
    /// the others (the fds refer to one open file description), so the change is seen by all of
    /// them, including workers started later. That is fine when all workers run the same program;
    /// it is also why a worker that polls must expect `WouldBlock` after a wake-up: another
    /// worker may have taken the connection first.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// for listener in mcluster::worker::listeners()? {
    ///     listener.socket().set_nonblocking(true)?;
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Socket::Tcp(tcp) => tcp.set_nonblocking(nonblocking),
            Socket::Unix(unix) => unix.set_nonblocking(nonblocking),
        }
    }
}

/// Shows the bound address: `127.0.0.1:8080`, `[::1]:8080`, `unix:/run/app.sock`,
/// `unix:@abstract`, or `unix:(unnamed)`.
impl fmt::Display for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socket::Tcp(tcp) => match tcp.local_addr() {
                Ok(addr) => write!(f, "{addr}"),
                Err(_) => f.write_str("tcp:(unknown)"),
            },
            Socket::Unix(unix) => match unix.local_addr() {
                Ok(addr) => write!(f, "unix:{}", describe_unix_addr(&addr)),
                Err(_) => f.write_str("unix:(unknown)"),
            },
        }
    }
}

fn describe_unix_addr(addr: &SocketAddr) -> String {
    if let Some(path) = addr.as_pathname() {
        return path.display().to_string();
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        if let Some(name) = addr.as_abstract_name() {
            return format!("@{}", String::from_utf8_lossy(name));
        }
    }
    "(unnamed)".to_owned()
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(tcp) => tcp.as_fd(),
            Socket::Unix(unix) => unix.as_fd(),
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl From<Socket> for OwnedFd {
    fn from(socket: Socket) -> OwnedFd {
        match socket {
            Socket::Tcp(tcp) => tcp.into(),
            Socket::Unix(unix) => unix.into(),
        }
    }
}

impl Stream {
    /// Moves the connection into or out of non-blocking mode.
    ///
    /// Connections accepted from a non-blocking listener may inherit its mode on some systems
    /// (not on Linux); call this with `false` to be sure a connection thread blocks.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let listeners = mcluster::worker::listeners()?;
    /// let socket = listeners.first().expect("no listeners").socket();
    /// socket.set_nonblocking(true)?;
    /// let conn = socket.accept()?;
    /// conn.set_nonblocking(false)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(nonblocking),
            Stream::Unix(s) => s.set_nonblocking(nonblocking),
        }
    }

    /// Sets a timeout for reads (`None` blocks forever).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let listeners = mcluster::worker::listeners()?;
    /// let conn = listeners.first().expect("no listeners").socket().accept()?;
    /// conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    /// Shuts down the read half, the write half, or both.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::io::Write;
    /// use std::net::Shutdown;
    ///
    /// let listeners = mcluster::worker::listeners()?;
    /// let mut conn = listeners.first().expect("no listeners").socket().accept()?;
    /// conn.write_all(b"bye\n")?;
    /// conn.shutdown(Shutdown::Write)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Takes the listening sockets passed to this process (systemd's socket-passing protocol).
///
/// Reads `LISTEN_FDS` and `LISTEN_PID`: if `LISTEN_FDS` is unset, or `LISTEN_PID` is set to
/// another process's pid, there is nothing for this process and the result is an empty list. An
/// unset `LISTEN_PID` is accepted, as the `listenfd` crate accepts it, so that a worker also runs
/// under `systemfd --no-pid` (mcluster and systemd always set it). Otherwise fds 3 to `3 + LISTEN_FDS - 1` are checked (each must
/// be a listening stream socket: TCP or Unix), marked close-on-exec, and returned in order, named
/// from `LISTEN_FDNAMES` (missing or empty names become `"unknown"`).
///
/// The environment is left as it is (changing it is `unsafe` once threads may exist), so a child
/// process inherits `LISTEN_*` — with a `LISTEN_PID` that is not its own, so it takes nothing.
/// Within this process the fds can be taken only once.
///
/// # Errors
///
/// - `LISTEN_FDS` or `LISTEN_PID` is not a number;
/// - the listeners were already taken by an earlier call;
/// - one of the fds is not open or not a listening TCP or Unix stream socket. The fds adopted
///   before it are closed, and later calls fail with "already taken".
///
/// # Examples
///
/// ```no_run
/// let listeners = mcluster::worker::listeners()?;
/// if listeners.is_empty() {
///     eprintln!("no sockets passed; run me under mcluster or systemd");
/// }
/// for listener in &listeners {
///     eprintln!("listening on {} ({})", listener.socket(), listener.name());
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn listeners() -> io::Result<Vec<Listener>> {
    let count = passed_fd_count(
        env::var("LISTEN_FDS").ok().as_deref(),
        env::var("LISTEN_PID").ok().as_deref(),
        std::process::id(),
    )?;
    if count == 0 {
        return Ok(Vec::new());
    }
    check_last_fd_open(count)?;
    if !claim_inherited_fds() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "listeners already taken: mcluster::worker::listeners() succeeds only once per process",
        ));
    }
    let names = fd_names(env::var("LISTEN_FDNAMES").ok().as_deref(), count);
    let mut listeners = Vec::with_capacity(count);
    for (fd, name) in (LISTEN_FDS_START..).zip(names) {
        let socket = match adopt_listener(fd)? {
            AdoptedListener::Tcp(tcp) => Socket::Tcp(tcp),
            AdoptedListener::Unix(unix) => Socket::Unix(unix),
        };
        listeners.push(Listener { name, socket });
    }
    Ok(listeners)
}

/// How many fds were passed to the process with pid `my_pid`, given `LISTEN_FDS` and
/// `LISTEN_PID` (`None` = unset).
fn passed_fd_count(
    listen_fds: Option<&str>,
    listen_pid: Option<&str>,
    my_pid: u32,
) -> io::Result<usize> {
    let Some(listen_fds) = listen_fds else {
        return Ok(0);
    };
    if let Some(listen_pid) = listen_pid {
        let pid: u32 = listen_pid
            .trim()
            .parse()
            .map_err(|_| invalid_env(format!("LISTEN_PID={listen_pid:?} is not a process id")))?;
        if pid != my_pid {
            return Ok(0);
        }
    }
    let count: usize = listen_fds
        .trim()
        .parse()
        .map_err(|_| invalid_env(format!("LISTEN_FDS={listen_fds:?} is not a number")))?;
    // The last fd, 3 + count - 1, must be a valid fd number.
    let max = usize::try_from(RawFd::MAX - LISTEN_FDS_START).unwrap_or(usize::MAX);
    if count > max {
        return Err(invalid_env(format!("LISTEN_FDS={count} is too large")));
    }
    Ok(count)
}

/// Refuses a count of fds whose last one, `3 + count - 1`, is not open: no more fds were
/// passed than are open, so nothing sized by the count (the names) can outgrow the fds that
/// exist (`LISTEN_FDS=2147483000` once meant 51 GB of names and an abort). Nothing is adopted
/// yet: the fds are left as they are.
fn check_last_fd_open(count: usize) -> io::Result<()> {
    let last = RawFd::try_from(count - 1)
        .ok()
        .and_then(|offset| LISTEN_FDS_START.checked_add(offset))
        .ok_or_else(|| invalid_env(format!("LISTEN_FDS={count} is too large")))?;
    // `getsockname` takes any number and tells an open fd (even one that is no socket) from
    // one that is not: it is the probe `adopt_listener` uses too.
    match nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(last) {
        Err(nix::errno::Errno::EBADF) => Err(invalid_env(format!(
            "LISTEN_FDS={count} names fds {LISTEN_FDS_START} to {last}, but fd {last} is not \
             open: fewer fds were passed"
        ))),
        _ => Ok(()),
    }
}

/// The names for `count` fds from `LISTEN_FDNAMES` (`None` = unset): colon-separated, in fd order;
/// missing or empty ones are `"unknown"`, extra ones are ignored.
fn fd_names(listen_fdnames: Option<&str>, count: usize) -> Vec<String> {
    let mut given = listen_fdnames.map(|v| v.split(':')).into_iter().flatten();
    (0..count)
        .map(|_| match given.next() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => UNKNOWN_NAME.to_owned(),
        })
        .collect()
}

fn invalid_env(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Sends one notification message to the master (systemd's notify protocol).
///
/// `state` is one or more newline-separated `KEY=VALUE` lines, such as `"READY=1"` or
/// `"READY=1\nSTATUS=warm"`. It goes as one datagram to the socket named by `NOTIFY_SOCKET`: a
/// filesystem path, or `@name` for a name in Linux's abstract namespace. If `NOTIFY_SOCKET` is
/// unset or empty the process is not supervised and this does nothing.
///
/// # Errors
///
/// The socket cannot be created or the message cannot be sent (for example the master is gone),
/// or `NOTIFY_SOCKET` is an abstract name on a system without them.
///
/// # Examples
///
/// ```no_run
/// mcluster::worker::notify("READY=1\nSTATUS=serving from a warm cache")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn notify(state: &str) -> io::Result<()> {
    match env::var_os("NOTIFY_SOCKET") {
        Some(target) if !target.is_empty() => send_to(Path::new(&target), state),
        _ => Ok(()),
    }
}

/// Sends `state` as one datagram to the notify socket `target` (a path or `@abstract`).
fn send_to(target: &Path, state: &str) -> io::Result<()> {
    let addr = notify_addr(target)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket
        .send_to_addr(state.as_bytes(), &addr)
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("notify socket {}: {err}", target.display()),
            )
        })?;
    if sent == state.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("notify socket {}: short datagram", target.display()),
        ))
    }
}

fn notify_addr(target: &Path) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;

    if let Some(name) = target.as_os_str().as_bytes().strip_prefix(b"@") {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(name);
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "NOTIFY_SOCKET names an abstract socket, which this system does not have",
            ));
        }
    }
    SocketAddr::from_pathname(target)
}

/// Tells the master this worker is ready to serve (`READY=1`).
///
/// Call it once the worker has taken its listeners and can answer requests. A no-op outside a
/// supervisor (no `NOTIFY_SOCKET`).
///
/// # Examples
///
/// ```no_run
/// let listeners = mcluster::worker::listeners()?;
/// // ... load configuration, warm caches ...
/// mcluster::worker::ready()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn ready() -> io::Result<()> {
    notify("READY=1")
}

/// Sets a one-line status text for this worker (`STATUS=…`), shown by the master.
///
/// Newlines in `text` would start a new message field, so they are replaced by spaces.
///
/// # Examples
///
/// ```no_run
/// mcluster::worker::status("loading 3 of 10 models")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn status(text: &str) -> io::Result<()> {
    notify(&status_message(text))
}

fn status_message(text: &str) -> String {
    format!("STATUS={}", text.replace(['\r', '\n'], " "))
}

/// Tells the master this worker is shutting down (`STOPPING=1`).
///
/// # Examples
///
/// ```no_run
/// // on SIGTERM:
/// mcluster::worker::stopping()?;
/// // ... finish in-flight requests, then exit(0) ...
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn stopping() -> io::Result<()> {
    notify("STOPPING=1")
}

/// Pings the watchdog (`WATCHDOG=1`).
///
/// When the worker was started with `WATCHDOG_USEC` (see [`watchdog_interval`]), it must ping at
/// least that often or be replaced; send it about every half interval.
///
/// # Examples
///
/// ```no_run
/// if let Some(every) = mcluster::worker::watchdog_interval() {
///     std::thread::spawn(move || loop {
///         let _ = mcluster::worker::watchdog();
///         std::thread::sleep(every / 2);
///     });
/// }
/// ```
pub fn watchdog() -> io::Result<()> {
    notify("WATCHDOG=1")
}

/// The watchdog interval asked of this process (`WATCHDOG_USEC`, honoured only if `WATCHDOG_PID`
/// is unset or this process's pid, as in `sd_watchdog_enabled`); `None` if there is none.
///
/// # Examples
///
/// ```no_run
/// match mcluster::worker::watchdog_interval() {
///     Some(every) => eprintln!("must ping the watchdog every {every:?}"),
///     None => eprintln!("no watchdog"),
/// }
/// ```
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        env::var("WATCHDOG_USEC").ok().as_deref(),
        env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != my_pid
    {
        return None;
    }
    match usec?.trim().parse::<u64>().ok()? {
        0 => None,
        usec => Some(Duration::from_micros(usec)),
    }
}

/// This worker's slot in the cluster, `0..workers` (`MCLUSTER_WORKER_ID`). A replacement worker
/// gets the slot of the one it replaces. `None` when not run by mcluster.
///
/// # Examples
///
/// ```no_run
/// let id = mcluster::worker::worker_id().unwrap_or(0);
/// eprintln!("worker {id} starting");
/// ```
#[must_use]
pub fn worker_id() -> Option<usize> {
    env_number("MCLUSTER_WORKER_ID")
}

/// The generation this worker belongs to (`MCLUSTER_GENERATION`): every reload starts a new one.
/// `None` when not run by mcluster.
///
/// # Examples
///
/// ```no_run
/// if let Some(generation) = mcluster::worker::generation() {
///     mcluster::worker::status(&format!("generation {generation}"))?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use]
pub fn generation() -> Option<u64> {
    env_number("MCLUSTER_GENERATION")
}

/// The `<script>` tag of `mcluster dev`'s live reload, for a page template to include in dev
/// only: the page then reloads itself when a save's new build serves, and shows a failed build's
/// errors. `None` when not run by `mcluster dev` with live reload (`MCLUSTER_LIVERELOAD` unset, or
/// not a plain `http://` URL).
///
/// # Examples
///
/// ```no_run
/// let page = format!(
///     "<html><body><h1>Hello</h1>{}</body></html>",
///     mcluster::worker::livereload_tag().unwrap_or_default()
/// );
/// ```
#[must_use]
pub fn livereload_tag() -> Option<String> {
    script_tag(&std::env::var("MCLUSTER_LIVERELOAD").ok()?)
}

/// The tag for the live-reload script at `url`. The URL goes into HTML: only the plain form the
/// dev master itself writes is taken.
fn script_tag(url: &str) -> Option<String> {
    let plain = url.starts_with("http://")
        && url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:.-_[]".contains(&b));
    plain.then(|| format!("<script src=\"{url}\"></script>"))
}

/// The number of workers in the cluster (`MCLUSTER_WORKERS`). `None` when not run by mcluster.
///
/// # Examples
///
/// ```no_run
/// let threads = 16 / mcluster::worker::workers().unwrap_or(1).max(1);
/// ```
#[must_use]
pub fn workers() -> Option<usize> {
    env_number("MCLUSTER_WORKERS")
}

#[cfg(feature = "channel")]
/// The longest message [`Channel::recv`] takes, in bytes: the master sends none longer.
pub const CHANNEL_MAX_LINE: usize = 1024 * 1024;

/// This worker's message channel to the master (`MCLUSTER_CHANNEL_FD`; feature `channel`, part
/// of the default `master`): `Ok(None)` when not run by mcluster. The fd is taken once per process (a second call is an error) and marked
/// close-on-exec, so that the worker's children do not hold it.
///
/// A message is one JSON value on one line, both ways. The master reads what the worker sends
/// as fast as it handles it, and no faster: a worker that sends faster waits in
/// [`Channel::send`] (the socket's buffer is full) rather than costing the master memory. What
/// the master sends waits in a bounded queue of the master's: a worker that does not read
/// makes the master's sends fail, never wait.
///
/// # Examples
///
/// Answers every message from the master, and says hello first:
///
/// ```no_run
/// use serde_json::json;
///
/// let mut channel = mcluster::worker::channel()?.expect("run me under mcluster");
/// channel.send(&json!({"hello": mcluster::worker::worker_id()}))?;
/// while let Some(message) = channel.recv()? {
///     channel.send(&json!({"got": message}))?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[cfg(feature = "channel")]
pub fn channel() -> io::Result<Option<Channel>> {
    let Ok(fd) = env::var("MCLUSTER_CHANNEL_FD") else {
        return Ok(None);
    };
    let fd: RawFd = fd
        .trim()
        .parse()
        .map_err(|_| invalid_env(format!("MCLUSTER_CHANNEL_FD={fd:?} is not an fd number")))?;
    let stream = adopt_channel(fd)?;
    Ok(Some(Channel::from_stream(stream)?))
}

/// The worker's end of its message channel ([`channel()`]).
#[cfg(feature = "channel")]
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    /// What was read past the last line returned.
    buffer: Vec<u8>,
}

#[cfg(feature = "channel")]
impl Channel {
    fn from_stream(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Sends `message` to the master, blocking while the channel's buffer is full.
    ///
    /// # Errors
    ///
    /// A message longer than [`CHANNEL_MAX_LINE`] (the master would drop it), or the write's
    /// error (the master is gone).
    pub fn send(&self, message: &serde_json::Value) -> io::Result<()> {
        let line = encode(message)?;
        (&self.stream).write_all(&line)
    }

    /// The next message from the master, blocking until one arrives; `None` when the master
    /// closed the channel.
    ///
    /// # Errors
    ///
    /// The read's error, or `InvalidData` for a line that is not JSON or too long (the master
    /// sends neither).
    pub fn recv(&mut self) -> io::Result<Option<serde_json::Value>> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(message) = next_message(&mut self.buffer)? {
                return Ok(Some(message));
            }
            let read = match (&self.stream).read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// Another handle to the same channel, for sending from one thread while another receives
    /// (each message is written whole by one `write_all`; messages of two threads sent at once
    /// may interleave only when longer than the pipe's atomic size, so send from one thread at
    /// a time).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            stream: self.stream.try_clone()?,
            buffer: Vec::new(),
        })
    }

    /// The channel for a tokio runtime (feature `hyper`): must be called within one.
    #[cfg(feature = "hyper")]
    pub fn into_async(self) -> io::Result<AsyncChannel> {
        self.stream.set_nonblocking(true)?;
        Ok(AsyncChannel {
            stream: tokio::net::UnixStream::from_std(self.stream)?,
            buffer: self.buffer,
        })
    }
}

/// The worker's end of its message channel on a tokio runtime ([`Channel::into_async`]).
#[cfg(all(feature = "hyper", feature = "channel"))]
#[derive(Debug)]
pub struct AsyncChannel {
    stream: tokio::net::UnixStream,
    buffer: Vec<u8>,
}

#[cfg(all(feature = "hyper", feature = "channel"))]
impl AsyncChannel {
    /// Sends `message` to the master, waiting while the channel's buffer is full.
    ///
    /// # Errors
    ///
    /// As [`Channel::send`].
    pub async fn send(&self, message: &serde_json::Value) -> io::Result<()> {
        let line = encode(message)?;
        let mut written = 0;
        while written < line.len() {
            self.stream.writable().await?;
            match self.stream.try_write(&line[written..]) {
                Ok(sent) => written += sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message from the master; `None` when the master closed the channel.
    ///
    /// # Errors
    ///
    /// As [`Channel::recv`].
    pub async fn recv(&mut self) -> io::Result<Option<serde_json::Value>> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(message) = next_message(&mut self.buffer)? {
                return Ok(Some(message));
            }
            self.stream.readable().await?;
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `message` as one line, newline included.
#[cfg(feature = "channel")]
fn encode(message: &serde_json::Value) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    if line.len() > CHANNEL_MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the message is {} bytes, more than the {CHANNEL_MAX_LINE} a channel line may have",
                line.len()
            ),
        ));
    }
    line.push(b'\n');
    Ok(line)
}

/// Takes the first complete line of `buffer` that is not blank, parsed.
#[cfg(feature = "channel")]
fn next_message(buffer: &mut Vec<u8>) -> io::Result<Option<serde_json::Value>> {
    while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buffer.drain(..=end).collect();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
    }
    if buffer.len() > CHANNEL_MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line of the channel is longer than {CHANNEL_MAX_LINE} bytes"),
        ));
    }
    Ok(None)
}

fn env_number<T: std::str::FromStr>(key: &str) -> Option<T> {
    env::var(key).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_livereload_tag_takes_only_a_plain_http_url() {
        assert_eq!(
            script_tag("http://127.0.0.1:35729/livereload.js").as_deref(),
            Some(r#"<script src="http://127.0.0.1:35729/livereload.js"></script>"#)
        );
        assert_eq!(script_tag("javascript:alert(1)"), None);
        assert_eq!(script_tag("http://x/\"><img src=x onerror=alert(1)>"), None);
    }

    use super::*;

    #[cfg(all(feature = "hyper", feature = "channel"))]
    #[test]
    fn the_async_channel_sends_lines_and_receives_messages_written_in_pieces() {
        use std::io::{BufRead as _, Write as _};
        let (ours, theirs) = UnixStream::pair().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut channel = Channel::from_stream(ours).unwrap().into_async().unwrap();
            channel
                .send(&serde_json::json!({"hello": 1}))
                .await
                .unwrap();
            let mut master = std::io::BufReader::new(theirs.try_clone().unwrap());
            let mut line = String::new();
            master.read_line(&mut line).unwrap();
            assert_eq!(line, "{\"hello\":1}\n");
            // One message in two writes, a blank line, a second one, then the end.
            let mut writer = theirs;
            let peer = std::thread::spawn(move || {
                writer.write_all(b"{\"a\":").unwrap();
                writer.write_all(b"[1,2]}\n\n\"b\"\n").unwrap();
            });
            assert_eq!(
                channel.recv().await.unwrap(),
                Some(serde_json::json!({"a": [1, 2]}))
            );
            assert_eq!(channel.recv().await.unwrap(), Some(serde_json::json!("b")));
            peer.join().unwrap();
            drop(master);
            assert_eq!(
                channel.recv().await.unwrap(),
                None,
                "the master closed its end"
            );
        });
    }

    #[test]
    fn no_fds_without_listen_fds() {
        assert_eq!(passed_fd_count(None, None, 42).unwrap(), 0);
        assert_eq!(passed_fd_count(None, Some("42"), 42).unwrap(), 0);
    }

    #[test]
    fn an_unset_listen_pid_is_accepted_as_systemfd_no_pid_leaves_it() {
        assert_eq!(passed_fd_count(Some("2"), None, 42).unwrap(), 2);
    }

    #[test]
    fn listen_pid_must_be_ours() {
        assert_eq!(passed_fd_count(Some("2"), Some("42"), 42).unwrap(), 2);
        assert_eq!(passed_fd_count(Some("2"), Some("41"), 42).unwrap(), 0);
        assert_eq!(passed_fd_count(Some("0"), Some("42"), 42).unwrap(), 0);
        // A mismatched pid means "not for us", even if LISTEN_FDS is garbage.
        assert_eq!(passed_fd_count(Some("x"), Some("41"), 42).unwrap(), 0);
    }

    #[test]
    fn malformed_numbers_are_errors() {
        for (fds, pid) in [
            ("2", ""),
            ("2", "abc"),
            ("", "42"),
            ("-1", "42"),
            ("two", "42"),
        ] {
            let err = passed_fd_count(Some(fds), Some(pid), 42).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{fds:?} {pid:?}");
        }
        let too_many = passed_fd_count(Some("4294967296"), Some("42"), 42);
        assert!(too_many.is_err());
    }

    #[test]
    fn a_count_beyond_the_open_fds_is_refused_before_anything_is_sized_by_it() {
        for count in [2_147_483_000, 1_000_000] {
            let error = check_last_fd_open(count).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("LISTEN_FDS={count} names fds 3 to ")),
                "{error}"
            );
            assert!(error.to_string().contains("is not open"), "{error}");
        }
        let too_large = usize::try_from(RawFd::MAX).unwrap();
        assert!(
            check_last_fd_open(too_large)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        // An open fd as the last one passes (0, 1 and 2 are open in a test; fd 3 is the
        // first a count of 1 names, whatever it is).
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let count = usize::try_from(fd - LISTEN_FDS_START + 1).unwrap();
        assert!(check_last_fd_open(count).is_ok());
    }

    #[test]
    fn names_come_from_listen_fdnames_in_order() {
        assert_eq!(fd_names(Some("http:admin"), 2), ["http", "admin"]);
        assert_eq!(fd_names(Some("http:admin:extra"), 2), ["http", "admin"]);
    }

    #[test]
    fn missing_or_empty_names_are_unknown() {
        assert_eq!(fd_names(None, 2), ["unknown", "unknown"]);
        assert_eq!(fd_names(Some("http"), 3), ["http", "unknown", "unknown"]);
        assert_eq!(fd_names(Some(":admin"), 2), ["unknown", "admin"]);
        assert_eq!(fd_names(Some(""), 1), ["unknown"]);
        assert!(fd_names(Some("http"), 0).is_empty());
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(status_message("ok"), "STATUS=ok");
        assert_eq!(status_message("a\nb\r\nc"), "STATUS=a b  c");
    }

    #[test]
    fn watchdog_interval_checks_pid_and_value() {
        let ms = Some(Duration::from_millis(500));
        assert_eq!(watchdog_interval_from(Some("500000"), None, 7), ms);
        assert_eq!(watchdog_interval_from(Some("500000"), Some("7"), 7), ms);
        assert_eq!(watchdog_interval_from(Some("500000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }

    #[test]
    fn sends_one_datagram_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(&path, "READY=1\nSTATUS=warm").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=warm");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;

        let name = format!("mcluster-test-{}-notify", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(Path::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn sending_to_a_missing_socket_fails_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let err = send_to(&path, "READY=1").unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn socket_display_shows_the_address() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        assert_eq!(Socket::Tcp(tcp).to_string(), addr.to_string());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let unix = UnixListener::bind(&path).unwrap();
        assert_eq!(
            Socket::Unix(unix).to_string(),
            format!("unix:{}", path.display())
        );
    }

    #[test]
    fn socket_accepts_tcp_and_unix_alike() {
        let tcp = Socket::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        let Socket::Tcp(inner) = &tcp else {
            unreachable!()
        };
        let mut client = TcpStream::connect(inner.local_addr().unwrap()).unwrap();
        let mut conn = tcp.accept().unwrap();
        conn.write_all(b"ping").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "ping");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let unix = Socket::Unix(UnixListener::bind(&path).unwrap());
        unix.set_nonblocking(true).unwrap();
        assert_eq!(unix.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let mut client = UnixStream::connect(&path).unwrap();
        let mut conn = unix.accept().unwrap();
        conn.set_nonblocking(false).unwrap();
        client.write_all(b"pong").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got, "pong");
    }
}

//! The shared listening sockets: parsed from `--listen`, bound once by the master, or inherited
//! from the master's own parent (systemd socket activation, systemfd).
//!
//! # Protocol
//!
//! Each worker gets every listener at fd 3, 4, … in `--listen` order (inherited ones first), with
//! `LISTEN_FDS=<count>`, `LISTEN_PID=<the worker's own pid>` and `LISTEN_FDNAMES=<name:name…>`,
//! exactly as systemd sets them. A listener without a `NAME=` prefix is named `unknown`, as
//! `sd_listen_fds_with_names` reports unnamed fds. In the master every listener is close-on-exec,
//! so nothing but a worker (a build, say) inherits it.
//!
//! # Unix socket files
//!
//! `unix:PATH` creates a socket file at `PATH` with mode [`DEFAULT_UNIX_MODE`] (0600: only the
//! master's user may connect), or the mode given as `unix,mode=0660:PATH` — the options come
//! before the `:`, so everything after it is the path, whatever characters it holds. The mode is
//! exactly the one asked for, not the umask's: the socket is made with at most those bits (the
//! umask can only take some away) and then set to them.
//!
//! Only a socket file nobody accepts on (left by a master killed with SIGKILL) is ever replaced;
//! anything else at `PATH` — a regular file, a FIFO, a directory, a symlink, a socket someone
//! accepts on, a socket we may not connect to — is an error naming the path, and stays as it
//! is. Masters starting at once on one path take turns: each holds an exclusive `flock` on the
//! socket's directory from its look at `PATH` to its `listen`, so the later one finds the
//! earlier one's socket accepting and fails. The lock is on the directory itself, so no lock
//! file is ever created or left behind. The master removes its socket file when it exits, under
//! the same lock and only if `PATH` still is the file it made.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, SockaddrIn, SockaddrIn6, UnixAddr, bind, connect, listen, setsockopt,
    sockopt,
};
use nix::sys::stat::{Mode, fchmod};

mod steering;

pub(crate) use steering::Generations;

use crate::config::Error;
use crate::sys::{AdoptedListener, adopt_listener, claim_inherited_fds};

/// The name a listener gets without a `NAME=` prefix.
pub(crate) const DEFAULT_NAME: &str = "unknown";

/// The mode of a unix socket file without `mode=`: only the master's user may connect. A socket
/// is an open door to the app; a wider one (`mode=0660` for a proxy in the group) is asked for,
/// never a surprise.
pub(crate) const DEFAULT_UNIX_MODE: u32 = 0o600;

/// The longest path a unix socket can be bound to (`sun_path` holds 108 bytes with the NUL).
pub(crate) const MAX_UNIX_PATH: usize = 107;

/// Where to listen: one `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// The fd name for `LISTEN_FDNAMES`, from a `NAME=` prefix.
    pub name: Option<String>,
    /// The address.
    pub kind: ListenKind,
}

/// The kinds of address a listener can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenKind {
    /// A TCP address (`HOST:PORT`, `[v6]:PORT`, `:PORT` for every interface).
    Tcp(SocketAddr),
    /// A Unix stream socket file (`unix:PATH`, `unix,mode=0660:PATH`).
    Unix {
        /// Where the socket file is made.
        path: PathBuf,
        /// Its permission bits (`0o600` unless `mode=` says otherwise).
        mode: u32,
    },
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name}=")?;
        }
        match &self.kind {
            ListenKind::Tcp(addr) => write!(f, "{addr}"),
            ListenKind::Unix { path, mode } if *mode == DEFAULT_UNIX_MODE => {
                write!(f, "unix:{}", path.display())
            }
            ListenKind::Unix { path, mode } => write!(f, "unix,mode={mode:04o}:{}", path.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| format!("invalid listen address '{text}': {why}");
        let (name, rest) = match text.split_once('=') {
            // `unix,mode=0660:PATH` has an `=` before any `:` but no name.
            Some((name, rest)) if !name.contains([':', '/', '[']) && !name.starts_with("unix,") => {
                if name.is_empty()
                    || name.len() > 255
                    || !name.chars().all(|c| c.is_ascii_graphic())
                {
                    return Err(invalid(
                        "a name is 1 to 255 printable characters without ':'",
                    ));
                }
                (Some(name.to_owned()), rest)
            }
            _ => (None, text),
        };
        let expected = "expected HOST:PORT, [V6]:PORT, :PORT or unix:PATH";
        let kind = if let Some(spec) = rest
            .strip_prefix("unix")
            .filter(|spec| spec.starts_with([':', ',']))
        {
            let (options, path) = spec
                .split_once(':')
                .ok_or_else(|| invalid("expected unix,mode=MODE:PATH"))?;
            let mut mode = DEFAULT_UNIX_MODE;
            for option in options.split(',').skip(1) {
                mode = option
                    .strip_prefix("mode=")
                    .filter(|m| (1..=4).contains(&m.len()))
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .filter(|&m| m <= 0o777)
                    .ok_or_else(|| {
                        invalid(&format!(
                            "unknown unix socket option '{option}' (expected mode=0000 to mode=0777)"
                        ))
                    })?;
            }
            if path.is_empty() {
                return Err(invalid("the unix socket path is empty"));
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(invalid(&too_long(Path::new(path))));
            }
            ListenKind::Unix {
                path: PathBuf::from(path),
                mode,
            }
        } else if let Some(port) = rest.strip_prefix(':') {
            let port: u16 = port.parse().map_err(|_| invalid(expected))?;
            ListenKind::Tcp(SocketAddr::from(([0, 0, 0, 0], port)))
        } else if let Ok(addr) = rest.parse::<SocketAddr>() {
            ListenKind::Tcp(addr)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid(expected))?;
            let port: u16 = port.parse().map_err(|_| invalid(expected))?;
            if host.is_empty() || host.contains([':', '[', ']']) {
                return Err(invalid(expected));
            }
            let addr = (host, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| invalid(&format!("cannot resolve host '{host}'")))?;
            ListenKind::Tcp(addr)
        };
        Ok(ListenAddr { name, kind })
    }
}

/// A listening socket the master holds for its whole life.
#[derive(Debug)]
pub(crate) struct Listener {
    name: String,
    fd: OwnedFd,
    shown: String,
    /// The socket file this master made, removed when the listener is dropped.
    unix_file: Option<SocketFile>,
    /// Passed by the master's parent (`LISTEN_FDS`), not bound here: never shut down, since the
    /// parent (systemd) keeps using it.
    inherited: bool,
}

impl Listener {
    /// The fd name passed in `LISTEN_FDNAMES`.
    #[must_use]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The address actually bound, e.g. `127.0.0.1:41234` or `unix:/run/app.sock`.
    #[must_use]
    pub(crate) fn address(&self) -> &str {
        &self.shown
    }

    /// A duplicate of the socket as a std listener, if it is a TCP one (for the dev master's
    /// building page, which answers on the app's own listeners before any worker runs).
    pub(crate) fn tcp_duplicate(&self) -> Option<std::net::TcpListener> {
        use nix::sys::socket::SockaddrLike as _;
        let address: nix::sys::socket::SockaddrStorage =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&self.fd)).ok()?;
        matches!(
            address.family(),
            Some(AddressFamily::Inet | AddressFamily::Inet6)
        )
        .then(|| self.fd.try_clone().ok().map(std::net::TcpListener::from))
        .flatten()
    }

    /// Binds `addr`: `SO_REUSEADDR` (never `SO_REUSEPORT`), a large backlog, close-on-exec; a
    /// unix socket file as the module's doc says.
    pub(crate) fn bind(addr: &ListenAddr) -> Result<Self, Error> {
        Self::bind_steerable(addr, false)
    }

    /// As [`bind`](Self::bind), and for a TCP address with `steerable`, `SO_REUSEPORT` set
    /// between `bind` and `listen`, so that [`Generations`] can add sockets of later generations
    /// to its reuseport group. Set after `bind`, the option still makes the group (the kernel
    /// groups sockets at `listen`: `inet_reuseport_add_sock`) while `bind` itself stays
    /// exclusive: a port another socket holds, with `SO_REUSEPORT` or not, is refused as
    /// "address already in use", exactly as without steering.
    pub(crate) fn bind_steerable(addr: &ListenAddr, steerable: bool) -> Result<Self, Error> {
        let name = addr.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let context = || format!("cannot listen on {addr}");
        match &addr.kind {
            ListenKind::Tcp(socket_addr) => {
                let fd = bind_tcp(*socket_addr, steerable).map_err(|e| Error::io(context(), e))?;
                let listener = TcpListener::from(fd);
                let local = listener.local_addr().map_err(|e| Error::io(context(), e))?;
                Ok(Listener {
                    name,
                    fd: listener.into(),
                    shown: local.to_string(),
                    unix_file: None,
                    inherited: false,
                })
            }
            ListenKind::Unix { path, mode } => {
                let (fd, file) = bind_unix(addr, path, *mode)?;
                Ok(Listener {
                    name,
                    fd,
                    shown: format!("unix:{}", path.display()),
                    unix_file: Some(file),
                    inherited: false,
                })
            }
        }
    }

    /// Takes the sockets the master's own parent passed with `LISTEN_FDS` (when `LISTEN_PID` is
    /// unset or names this process).
    pub(crate) fn inherited() -> Result<Vec<Self>, Error> {
        let Some(count) = std::env::var("LISTEN_FDS").ok() else {
            return Ok(Vec::new());
        };
        if let Ok(pid) = std::env::var("LISTEN_PID")
            && !pid.is_empty()
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return Ok(Vec::new());
        }
        // A count of fds, 0 or more (`-1` was taken as none, while `x` was refused).
        let count: i32 = count
            .parse::<u32>()
            .ok()
            .and_then(|count| i32::try_from(count).ok())
            .ok_or_else(|| {
                Error::usage(format!(
                    "invalid LISTEN_FDS '{count}' in the environment: expected the number of \
                     fds passed, 0 or more"
                ))
            })?;
        if count > 0 && !claim_inherited_fds() {
            return Err(Error::io(
                "cannot use the inherited sockets (LISTEN_FDS)",
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "already taken in this process",
                ),
            ));
        }
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names.split(':');
        (0..count)
            .map(|index| {
                let fd = 3 + index;
                let adopted = adopt_listener(fd)
                    .map_err(|e| Error::io(format!("cannot use inherited fd {fd}"), e))?;
                let (fd, shown) = match adopted {
                    AdoptedListener::Tcp(listener) => {
                        let shown = listener
                            .local_addr()
                            .map_or_else(|_| format!("fd {fd}"), |addr| addr.to_string());
                        (OwnedFd::from(listener), shown)
                    }
                    AdoptedListener::Unix(listener) => {
                        let shown = listener
                            .local_addr()
                            .ok()
                            .and_then(|addr| {
                                addr.as_pathname().map(|p| format!("unix:{}", p.display()))
                            })
                            .unwrap_or_else(|| format!("fd {fd}"));
                        (OwnedFd::from(listener), shown)
                    }
                };
                let name = names
                    .next()
                    .filter(|name| !name.is_empty())
                    .unwrap_or(DEFAULT_NAME)
                    .to_owned();
                Ok(Listener {
                    name,
                    fd,
                    shown: format!("{shown} (inherited)"),
                    unix_file: None,
                    inherited: true,
                })
            })
            .collect()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Still listening here (the fd closes after this): nobody can take the file for stale.
        if let Some(file) = &self.unix_file {
            file.remove();
        }
    }
}

/// A socket file a listener made: its path, and its identity to tell it from a later one.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Removes the file if `path` still is the one this master made.
    fn remove(&self) {
        let _lock = lock_dir(directory_of(&self.path));
        if fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino)
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The one-line reason a unix socket path is refused for its length.
fn too_long(path: &Path) -> String {
    format!(
        "the path is {} bytes, more than the {MAX_UNIX_PATH} a unix socket address holds",
        path.as_os_str().len()
    )
}

/// The directory a socket file is made in.
fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Takes the exclusive `flock` on `dir` that masters making socket files in it take turns with;
/// it is released when the returned file is closed.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let dir = File::open(dir)?;
    dir.lock()?;
    Ok(dir)
}

/// Makes a listening unix socket at `path` with exactly `mode` (see the module's doc).
fn bind_unix(addr: &ListenAddr, path: &Path, mode: u32) -> Result<(OwnedFd, SocketFile), Error> {
    let context = || format!("cannot listen on {addr}");
    if path.as_os_str().len() > MAX_UNIX_PATH {
        return Err(Error::usage(format!("{}: {}", context(), too_long(path))));
    }
    let dir = directory_of(path);
    let _lock = lock_dir(dir).map_err(|e| {
        Error::io(
            format!("{}: cannot lock its directory {}", context(), dir.display()),
            e,
        )
    })?;
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(context(), e)),
        Ok(meta) if meta.file_type().is_socket() => match accepting(path) {
            Ok(true) => return Err(Error::io(context(), Errno::EADDRINUSE.into())),
            // A socket file nobody accepts on: left by a master that was killed.
            Ok(false) => fs::remove_file(path).map_err(|e| Error::io(context(), e))?,
            Err(e) => return Err(Error::io(context(), e)),
        },
        Ok(meta) => {
            return Err(Error::usage(format!(
                "{}: the path exists and is {}, not a socket",
                context(),
                describe_file_type(meta.file_type())
            )));
        }
    }
    let fd = crate::sys::stream_socket(AddressFamily::Unix, false)
        .map_err(|e| Error::io(context(), e))?;
    // `bind` makes the file with the socket's own mode less the umask: never more than `mode`.
    let socket_mode =
        Mode::from_bits_truncate(nix::sys::stat::mode_t::try_from(mode).unwrap_or(0o600));
    fchmod(&fd, socket_mode).map_err(|e| Error::io(context(), e.into()))?;
    let address = UnixAddr::new(path).map_err(|e| Error::io(context(), e.into()))?;
    bind(fd.as_raw_fd(), &address).map_err(|e| Error::io(context(), e.into()))?;
    // From here on, an error removes the file (dropping a `SocketFile` would need our lock).
    let finish = || {
        let bound = fs::symlink_metadata(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        listen(&fd, Backlog::MAXCONN)?;
        io::Result::Ok(SocketFile {
            path: path.to_owned(),
            dev: bound.dev(),
            ino: bound.ino(),
        })
    };
    let file = finish().map_err(|e| {
        let _ = fs::remove_file(path);
        Error::io(context(), e)
    })?;
    Ok((fd, file))
}

/// Whether a process accepts on the socket file at `path` (`false`: a stale file). The probe does
/// not block, even on a listener whose backlog is full.
fn accepting(path: &Path) -> io::Result<bool> {
    let probe = crate::sys::stream_socket(AddressFamily::Unix, true)?;
    match connect(probe.as_raw_fd(), &UnixAddr::new(path)?) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Ok(true),
        Err(Errno::ECONNREFUSED) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What a file that is not a socket is, in words.
fn describe_file_type(kind: fs::FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// A listening TCP socket on `addr`; with `reuseport`, `SO_REUSEPORT` is set after `bind` (see
/// [`Listener::bind_steerable`]).
fn bind_tcp(addr: SocketAddr, reuseport: bool) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = crate::sys::stream_socket(family, false)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(v4) => bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(v6))?,
    }
    if reuseport {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    listen(&fd, Backlog::MAXCONN)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn parse(text: &str) -> Result<ListenAddr, String> {
        text.parse()
    }

    #[test]
    fn addresses_of_every_form() {
        assert_eq!(
            parse("127.0.0.1:0").unwrap().kind,
            ListenKind::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            parse("[::1]:80").unwrap().kind,
            ListenKind::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse(":8080").unwrap().kind,
            ListenKind::Tcp("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            parse("unix:/tmp/a.sock").unwrap().kind,
            ListenKind::Unix {
                path: "/tmp/a.sock".into(),
                mode: DEFAULT_UNIX_MODE
            }
        );
        // Options come before the `:`; after it, everything is the path.
        let with_mode = parse("unix,mode=0660:/tmp/a,mode=0600:b").unwrap();
        assert_eq!(
            with_mode.kind,
            ListenKind::Unix {
                path: "/tmp/a,mode=0600:b".into(),
                mode: 0o660
            }
        );
        assert_eq!(with_mode.name, None);
        assert_eq!(with_mode.to_string(), "unix,mode=0660:/tmp/a,mode=0600:b");
        let named = parse("api=unix,mode=666:run/api.sock").unwrap();
        assert_eq!(named.name.as_deref(), Some("api"));
        assert_eq!(
            named.kind,
            ListenKind::Unix {
                path: "run/api.sock".into(),
                mode: 0o666
            }
        );
        let named = parse("http=localhost:3000").unwrap();
        assert_eq!(named.name.as_deref(), Some("http"));
        assert!(matches!(named.kind, ListenKind::Tcp(addr) if addr.port() == 3000));
    }

    #[test]
    fn malformed_addresses_name_the_culprit() {
        for bad in [
            "3000",
            "127.0.0.1",
            "127.0.0.1:99999",
            "unix:",
            "unix,mode=0660",
            "unix,mode=0660:",
            "unix,mode=0999:/tmp/a.sock",
            "unix,mode=01777:/tmp/a.sock",
            "unix,mode=:/tmp/a.sock",
            "unix,owner=me:/tmp/a.sock",
            format!("unix:/{}", "a".repeat(107)).as_str(),
            "=1.2.3.4:5",
            "a:b:c",
            ":x",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(&format!("'{bad}'")), "{bad}: {error}");
        }
    }

    #[test]
    fn bind_reports_the_bound_port_and_a_port_in_use() {
        let listener = Listener::bind(&parse("127.0.0.1:0").unwrap()).unwrap();
        assert!(listener.address().starts_with("127.0.0.1:"));
        assert!(!listener.address().ends_with(":0"));
        let again = Listener::bind(&parse(listener.address()).unwrap()).unwrap_err();
        assert!(
            again.to_string().contains("address already in use"),
            "{again}"
        );
    }

    #[test]
    fn a_unix_listener_removes_its_file_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let addr = parse(&format!("unix:{}", path.display())).unwrap();
        let first = Listener::bind(&addr).unwrap();
        assert!(Listener::bind(&addr).is_err(), "in use");
        drop(first);
        assert!(!path.exists());
        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = Listener::bind(&addr).unwrap();
        drop(second);
        assert!(!path.exists());
    }

    #[test]
    fn a_listener_removes_only_the_file_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let first = Listener::bind(&parse(&format!("unix:{}", path.display())).unwrap()).unwrap();
        // Someone removed it by hand and made another socket there.
        fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap();
        drop(first);
        assert!(path.exists(), "another's socket file was removed");
    }

    #[test]
    fn a_path_too_long_is_named_when_the_address_is_built_directly() {
        let path = PathBuf::from(format!("/tmp/{}", "s".repeat(103)));
        let addr = ListenAddr {
            name: None,
            kind: ListenKind::Unix {
                path: path.clone(),
                mode: DEFAULT_UNIX_MODE,
            },
        };
        let error = Listener::bind(&addr).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("108 bytes"), "{error}");
    }
}

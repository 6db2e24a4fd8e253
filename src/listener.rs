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

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen, setsockopt,
    socket, sockopt,
};

use crate::config::Error;
use crate::sys::{AdoptedListener, adopt_listener, claim_inherited_fds};

/// The name a listener gets without a `NAME=` prefix.
pub const DEFAULT_NAME: &str = "unknown";

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
    /// A Unix stream socket at this path (`unix:PATH`).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name}=")?;
        }
        match &self.kind {
            ListenKind::Tcp(addr) => write!(f, "{addr}"),
            ListenKind::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| format!("invalid listen address '{text}': {why}");
        let (name, rest) = match text.split_once('=') {
            Some((name, rest)) if !name.contains([':', '/', '[']) => {
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
        let kind = if let Some(path) = rest.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("the unix socket path is empty"));
            }
            ListenKind::Unix(PathBuf::from(path))
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
pub struct Listener {
    name: String,
    fd: OwnedFd,
    shown: String,
    /// The socket file this master created, removed when the listener is dropped.
    unix_path: Option<PathBuf>,
}

impl Listener {
    /// The fd name passed in `LISTEN_FDNAMES`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address actually bound, e.g. `127.0.0.1:41234` or `unix:/run/app.sock`.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.shown
    }

    /// Binds `addr`: `SO_REUSEADDR` (never `SO_REUSEPORT`), a large backlog, close-on-exec.
    pub fn bind(addr: &ListenAddr) -> Result<Self, Error> {
        let name = addr.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let context = || format!("cannot listen on {addr}");
        match &addr.kind {
            ListenKind::Tcp(socket_addr) => {
                let fd = bind_tcp(*socket_addr).map_err(|e| Error::io(context(), e))?;
                let listener = TcpListener::from(fd);
                let local = listener.local_addr().map_err(|e| Error::io(context(), e))?;
                Ok(Listener {
                    name,
                    fd: listener.into(),
                    shown: local.to_string(),
                    unix_path: None,
                })
            }
            ListenKind::Unix(path) => {
                if path.exists() {
                    match UnixStream::connect(path) {
                        Ok(_) => {
                            return Err(Error::io(context(), io::ErrorKind::AddrInUse.into()));
                        }
                        // A socket file nobody listens on: left by a master that was killed.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            std::fs::remove_file(path).map_err(|e| Error::io(context(), e))?;
                        }
                        Err(_) => {
                            return Err(Error::usage(format!(
                                "cannot listen on {addr}: the path exists and is not a socket"
                            )));
                        }
                    }
                }
                let listener = UnixListener::bind(path).map_err(|e| Error::io(context(), e))?;
                Ok(Listener {
                    name,
                    fd: listener.into(),
                    shown: format!("unix:{}", path.display()),
                    unix_path: Some(path.clone()),
                })
            }
        }
    }

    /// Takes the sockets the master's own parent passed with `LISTEN_FDS` (when `LISTEN_PID` is
    /// unset or names this process).
    pub fn inherited() -> Result<Vec<Self>, Error> {
        let Some(count) = std::env::var("LISTEN_FDS").ok() else {
            return Ok(Vec::new());
        };
        if let Ok(pid) = std::env::var("LISTEN_PID")
            && !pid.is_empty()
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return Ok(Vec::new());
        }
        let count: i32 = count.parse().map_err(|_| {
            Error::usage(format!("invalid LISTEN_FDS '{count}' in the environment"))
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
                    unix_path: None,
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
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(v4) => bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(v6))?,
    }
    listen(&fd, Backlog::MAXCONN)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ListenKind::Unix("/tmp/a.sock".into())
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
}

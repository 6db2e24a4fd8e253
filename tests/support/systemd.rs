//! Playing systemd: a service manager's notify socket, and a master started on a socket its
//! parent bound (socket activation, `systemfd`).

use std::ffi::OsStr;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use nix::cmsg_space;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use tempfile::TempDir;

use super::fixture::python3;
use super::harness::{Master, MasterBuilder};
use super::process::DEADLINE;

/// A service manager's end of the notify protocol: the datagram socket a `Type=notify` service
/// finds in `NOTIFY_SOCKET`. Each message comes with the sender's pid (`SO_PASSCRED`), as systemd
/// sees it: with the default `NotifyAccess=main` it ignores every other process.
pub(crate) struct ManagerSocket {
    _dir: TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

/// One datagram received by a [`ManagerSocket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The sending process.
    pub(crate) pid: i32,
    pub(crate) text: String,
}

impl Message {
    /// Whether the message holds the assignment `line` (such as `READY=1`).
    pub(crate) fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
}

impl ManagerSocket {
    pub(crate) fn bind() -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next message, waiting up to [`DEADLINE`] for it; `None` if none came.
    pub(crate) fn recv(&self) -> Option<Message> {
        self.receive(MsgFlags::empty())
    }

    /// A message already received, without waiting.
    pub(crate) fn try_recv(&self) -> Option<Message> {
        self.receive(MsgFlags::MSG_DONTWAIT)
    }

    fn receive(&self, flags: MsgFlags) -> Option<Message> {
        let mut buf = [0u8; 4096];
        let mut control = cmsg_space!(UnixCredentials);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = loop {
            match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut control), flags) {
                Ok(msg) => break msg,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return None,
                Err(e) => panic!("recvmsg on the notify socket: {e}"),
            }
        };
        let pid = msg
            .cmsgs()
            .unwrap()
            .find_map(|cmsg| match cmsg {
                ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                _ => None,
            })
            .expect("SO_PASSCRED gives every message its sender");
        let len = msg.bytes;
        Some(Message {
            pid,
            text: String::from_utf8_lossy(&buf[..len]).into_owned(),
        })
    }
}

/// What an activated master finds in `LISTEN_PID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenPid {
    /// Unset, like `systemfd --no-pid`.
    Unset,
    /// The master's own pid, like systemd.
    Own,
}

/// The launcher: binds a listening socket on `127.0.0.1:0`, puts it at fd 3 (inheritable), sets
/// `LISTEN_FDS=1` (and `LISTEN_PID`, `LISTEN_FDNAMES` as asked), says which port it bound on
/// stderr, and execs the master in its own place, so that the master keeps its pid.
const LAUNCHER: &str = r#"
import os, socket, sys
listen_pid, names, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
if sock.fileno() != 3:
    os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ)
env["LISTEN_FDS"] = "1"
if listen_pid == "own":
    env["LISTEN_PID"] = str(os.getpid())
if names != "-":
    env["LISTEN_FDNAMES"] = names
print("launcher: bound 127.0.0.1:%d" % sock.getsockname()[1], file=sys.stderr, flush=True)
os.execve(argv[0], argv, env)
"#;

/// The prefix of the launcher's one line on stderr.
const BOUND: &str = "launcher: bound 127.0.0.1:";

/// Starts `mcluster start OPTIONS -- PROGRAM ARGS…` on a socket bound by its parent (through
/// [`LAUNCHER`], which execs it: [`Master::pid`] is the master's), with `LISTEN_FDNAMES=names`
/// if given; returns the master and the port its parent bound. `options` should not add
/// listeners of their own.
#[track_caller]
pub(crate) fn start_activated(
    listen_pid: ListenPid,
    names: Option<&str>,
    options: &[&str],
    program: impl AsRef<OsStr>,
    args: &[&str],
) -> (Master, u16) {
    let listen_pid = match listen_pid {
        ListenPid::Unset => "unset",
        ListenPid::Own => "own",
    };
    let master = MasterBuilder::inheriting(options, program, args)
        .via(
            python3(),
            &["-c", LAUNCHER, listen_pid, names.unwrap_or("-")],
        )
        .start();
    let line = master.wait_for_stderr(BOUND);
    let port = line[BOUND.len()..]
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}\n{}", master.dump()));
    (master, port)
}

//! Playing systemd: a service manager's notify socket, and a master started on a socket its
//! parent bound (socket activation, `systemfd`).

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, IoSliceMut, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::cmsg_space;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::fixture::{mcluster, python3};
use super::process::{DEADLINE, children_of, stat};

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

/// Variables of the test's own environment that would change what the master does.
const SCRUBBED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "MCLUSTER_WORKER_ID",
    "MCLUSTER_GENERATION",
    "MCLUSTER_WORKERS",
    "EXTRA",
    "ECHO_NO_READY",
];

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

/// Processes seen, as (pid, start time): enough to kill the very process later, never another
/// one that got its pid.
type Seen = Arc<Mutex<Vec<(i32, u64)>>>;

/// A master started on an inherited socket, through [`LAUNCHER`]. Dropping it SIGKILLs the
/// master and its workers.
pub(crate) struct Activated {
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    /// Every worker announced ready, as (pid, start time).
    workers: Seen,
    status: Option<ExitStatus>,
    _tmp: TempDir,
}

impl Activated {
    /// Starts `mcluster start OPTIONS -- PROGRAM ARGS…` on a socket bound by its parent, with
    /// `LISTEN_FDNAMES=names` if given. `options` should not add listeners of their own.
    #[track_caller]
    pub(crate) fn start(
        listen_pid: ListenPid,
        names: Option<&str>,
        options: &[&str],
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Self {
        let tmp = TempDir::new().unwrap();
        let mut launcher: Vec<OsString> = vec![
            "-c".into(),
            LAUNCHER.into(),
            match listen_pid {
                ListenPid::Unset => "unset",
                ListenPid::Own => "own",
            }
            .into(),
            names.unwrap_or("-").into(),
            mcluster().into(),
            "start".into(),
        ];
        launcher.extend(options.iter().map(OsString::from));
        launcher.push("--".into());
        launcher.push(program.as_ref().to_owned());
        launcher.extend(args.iter().map(OsString::from));
        let mut command = Command::new(python3());
        command
            .args(&launcher)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("TMPDIR", tmp.path())
            .env("XDG_RUNTIME_DIR", tmp.path());
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        let mut child = command.spawn().expect("spawn python3 (the launcher)");
        let workers = Arc::new(Mutex::new(Vec::new()));
        let stdout = Lines::collect(child.stdout.take().unwrap(), None);
        let stderr = Lines::collect(child.stderr.take().unwrap(), Some(Arc::clone(&workers)));
        Self {
            child,
            stdout,
            stderr,
            workers,
            status: None,
            _tmp: tmp,
        }
    }

    /// The master's pid (the launcher's: it execs the master).
    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// The port the launcher bound.
    #[track_caller]
    pub(crate) fn bound_port(&self) -> u16 {
        let line = self.wait_for_stderr(BOUND);
        line[BOUND.len()..]
            .parse()
            .unwrap_or_else(|_| panic!("{line:?}"))
    }

    /// The pids of the workers announced ready so far (`mcluster: w<slot> ready (pid <pid>, …`).
    pub(crate) fn ready_pids(&self) -> Vec<i32> {
        self.stderr
            .lines()
            .iter()
            .filter_map(|line| ready_pid(line))
            .collect()
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the master");
    }

    /// Waits for a stderr line containing `needle` and returns it.
    #[track_caller]
    pub(crate) fn wait_for_stderr(&self, needle: &str) -> String {
        self.wait_in(&self.stderr, needle)
    }

    /// Waits for a stdout line containing `needle` and returns it.
    #[track_caller]
    pub(crate) fn wait_for_stdout(&self, needle: &str) -> String {
        self.wait_in(&self.stdout, needle)
    }

    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines()
    }

    /// Waits for the master to exit and its output to end; returns its exit code.
    #[track_caller]
    pub(crate) fn wait_exit_code(&mut self) -> i32 {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the master did not exit within {DEADLINE:?}\n{}",
                self.dump()
            );
            thread::sleep(Duration::from_millis(10));
        };
        self.status = Some(status);
        for output in [&self.stdout, &self.stderr] {
            assert!(
                output.wait_closed(DEADLINE.saturating_sub(start.elapsed())),
                "the master exited ({status}) but its {} is still open: something outlived it\n{}",
                output.name,
                self.dump()
            );
        }
        status
            .code()
            .unwrap_or_else(|| panic!("the master was killed: {status}\n{}", self.dump()))
    }

    /// Both output streams so far, for failure messages.
    pub(crate) fn dump(&self) -> String {
        let mut text = String::from("--- launcher and master stderr ---\n");
        for line in self.stderr.lines() {
            let _ = writeln!(text, "{line}");
        }
        text.push_str("--- master stdout ---\n");
        for line in self.stdout.lines() {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    #[track_caller]
    fn wait_in(&self, output: &Lines, needle: &str) -> String {
        output.wait_for(needle).unwrap_or_else(|closed| {
            panic!(
                "{} waiting for a line containing {needle:?} on the master's {}\n{}",
                if closed {
                    "the stream ended".to_owned()
                } else {
                    format!("timed out after {DEADLINE:?}")
                },
                output.name,
                self.dump()
            )
        })
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        // As `Master` does: the master's children (noted while it still runs, so the pid is
        // surely its own) and every worker it announced, each killed only if still the same
        // process.
        let mut doomed = self.workers.lock().unwrap().clone();
        if self.status.is_none() {
            doomed.extend(
                children_of(self.pid())
                    .into_iter()
                    .filter_map(|pid| Some((pid, stat(pid)?.start_time))),
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for (pid, start_time) in doomed {
            if stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z') {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The pid in `mcluster: w<slot> ready (pid <pid>, generation <g>)`.
fn ready_pid(line: &str) -> Option<i32> {
    let rest = line.strip_prefix("mcluster: w")?;
    let (_, rest) = rest.split_once(" ready (pid ")?;
    rest.split_once(", generation ")?.0.parse().ok()
}

/// One output stream, read into lines by a thread.
struct Lines {
    name: &'static str,
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    /// Reads `pipe` line by line on a thread; with `workers` (stderr), notes each worker
    /// announced ready at once, while its process can still be identified.
    fn collect(pipe: impl Read + Send + 'static, workers: Option<Seen>) -> Arc<Self> {
        let lines = Arc::new(Self {
            name: if workers.is_some() {
                "stderr"
            } else {
                "stdout"
            },
            state: Mutex::new((Vec::new(), false)),
            changed: Condvar::new(),
        });
        let writer = Arc::clone(&lines);
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                if let (Some(workers), Some(pid)) = (&workers, ready_pid(&text))
                    && let Some(s) = stat(pid)
                {
                    workers.lock().unwrap().push((pid, s.start_time));
                }
                writer.state.lock().unwrap().0.push(text);
                writer.changed.notify_all();
            }
            writer.state.lock().unwrap().1 = true;
            writer.changed.notify_all();
        });
        lines
    }

    fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap().0.clone()
    }

    /// The first line containing `needle`, waiting up to [`DEADLINE`]; `Err(true)` if the stream
    /// ended without one, `Err(false)` on the timeout.
    fn wait_for(&self, needle: &str) -> Result<String, bool> {
        let deadline = Instant::now() + DEADLINE;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(line) = state.0.iter().find(|line| line.contains(needle)) {
                return Ok(line.clone());
            }
            if state.1 {
                return Err(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(false);
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        while !state.1 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
        true
    }
}

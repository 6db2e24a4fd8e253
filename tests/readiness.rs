//! The readiness probe (`mcluster::readiness`) on real worker processes: each gets a fresh TCP
//! listener at fd 3 from `fixtures/workers/with_listener.py`, which reports the listener's socket
//! device and inode (what the master knows of its own listeners), then execs the app.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use mcluster::readiness::{Accepting, ListenerInodes, Starting, probe};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::support::process::DEADLINE;
use crate::support::{fixture, is_alive, python3};

/// How often a starting worker is probed: what the master does.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// An app started with a listener at fd 3, in a process group of its own, killed (the whole
/// group) on drop.
struct App {
    child: Child,
    lines: Receiver<String>,
    listeners: ListenerInodes,
}

impl App {
    /// Starts `program args…` through the launcher.
    fn start(program: impl AsRef<OsStr>, args: &[&str]) -> Self {
        let launcher = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/workers/with_listener.py");
        let mut child = Command::new(python3())
            .arg(launcher)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the launcher");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut app = Self {
            child,
            lines,
            listeners: ListenerInodes::default(),
        };
        let first = app.line();
        let numbers: Vec<u64> = first
            .split_whitespace()
            .map(|word| word.parse().unwrap())
            .collect();
        let [_port, device, inode] = numbers[..] else {
            panic!("launcher said {first:?}, not `PORT DEVICE INODE`");
        };
        app.listeners = ListenerInodes::new(device, [inode]);
        app
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// The next line the app prints.
    #[track_caller]
    fn line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("the app printed no line (it exited, or hangs)")
    }

    /// Probes the app's process group until it is seen accepting.
    #[track_caller]
    fn wait_seen(&self) -> Accepting {
        let mut starting = Starting::new(self.pid());
        let start = Instant::now();
        loop {
            if let Some(accepting) = starting.probe(&self.listeners) {
                return accepting;
            }
            assert!(is_alive(self.pid()), "the app exited");
            assert!(
                start.elapsed() < DEADLINE,
                "not seen accepting after {DEADLINE:?}"
            );
            thread::sleep(PROBE_EVERY);
        }
    }

    /// Probes the app's process group for `period` as the master would, and asserts it is never
    /// seen accepting and stays alive.
    #[track_caller]
    fn assert_never_seen_for(&self, period: Duration) {
        let mut starting = Starting::new(self.pid());
        let start = Instant::now();
        while start.elapsed() < period {
            assert_eq!(starting.probe(&self.listeners), None);
            thread::sleep(PROBE_EVERY);
        }
        assert!(
            is_alive(self.pid()),
            "the app exited: the check proves nothing"
        );
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn a_blocking_accept_loop_is_seen_blocked_in_accept() {
    let app = App::start(fixture("fixture-accept"), &["block"]);
    assert_eq!(app.line(), "accepting");
    assert_eq!(app.wait_seen(), Accepting::BlockedInAccept);
}

#[test]
fn a_tokio_accept_loop_is_seen_in_epoll() {
    let app = App::start(fixture("fixture-tokio-accept"), &[]);
    assert_eq!(app.line(), "accepting");
    assert_eq!(app.wait_seen(), Accepting::Epoll);
}

#[test]
fn a_listener_moved_to_another_fd_is_still_seen() {
    let app = App::start(fixture("fixture-accept"), &["dup"]);
    let line = app.line();
    let fd = line.strip_prefix("accepting on fd ").expect(&line);
    assert_ne!(fd, "3");
    assert!(
        std::fs::read_link(format!("/proc/{}/fd/3", app.pid())).is_err(),
        "fd 3 should be closed"
    );
    assert_eq!(app.wait_seen(), Accepting::BlockedInAccept);
}

#[test]
fn a_worker_holding_its_listener_without_accepting_is_never_seen() {
    let app = App::start(fixture("fixture-accept"), &["hold"]);
    assert_eq!(app.line(), "holding");
    app.assert_never_seen_for(Duration::from_secs(1));
}

/// `fixtures/workers/python_listener.py MODE` with a listener at fd 3.
fn python_app(mode: &str) -> App {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/workers/python_listener.py");
    App::start(python3(), &[script.to_str().unwrap(), mode])
}

#[test]
fn a_python_asyncio_server_is_seen_in_epoll() {
    let app = python_app("asyncio");
    assert_eq!(app.line(), "accepting");
    assert_eq!(app.wait_seen(), Accepting::Epoll);
}

#[test]
fn a_python_socketserver_is_seen_polling() {
    let app = python_app("socketserver");
    assert_eq!(app.line(), "accepting");
    assert_eq!(app.wait_seen(), Accepting::Polling);
}

#[test]
fn a_select_loop_is_seen_polling() {
    let app = python_app("select");
    assert_eq!(app.line(), "accepting");
    assert_eq!(app.wait_seen(), Accepting::Polling);
}

#[test]
fn a_poll_for_output_only_is_no_sign() {
    let app = python_app("pollout");
    assert_eq!(app.line(), "polling");
    app.assert_never_seen_for(Duration::from_secs(1));
}

#[test]
fn an_epoll_registration_for_output_only_is_no_sign() {
    let app = python_app("epollout");
    assert_eq!(app.line(), "registered");
    app.assert_never_seen_for(Duration::from_secs(1));
}

#[test]
fn an_app_behind_a_shell_wrapper_is_seen_through_its_process_group() {
    let accept = fixture("fixture-accept");
    // LISTEN_PID names the shell: unset, it lets the app take the fds (as in the `tree` tests).
    let app = App::start(
        "sh",
        &[
            "-c",
            r#"unset LISTEN_PID; "$0" block; exit"#,
            accept.to_str().unwrap(),
        ],
    );
    assert_eq!(app.line(), "accepting");
    assert_eq!(app.wait_seen(), Accepting::BlockedInAccept);
    // The shell itself holds the listener but only waits for its child.
    assert_eq!(probe(app.pid(), &app.listeners), None);
}

/// A replacement stopped by SIGSTOP was said to "accept in a way mcluster cannot see": the
/// master says it is stopped, and what it needs.
#[test]
fn a_stopped_replacement_is_reported_as_stopped() {
    use crate::support::{Master, Script};
    let echo = fixture("fixture-echo");
    let script = Script::exec(&echo);
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1"],
        "/bin/sh",
        &[script.arg()],
        1,
    );
    script.rewrite(&format!(
        "kill -STOP $$\n{}",
        crate::support::script::exec_line(&echo)
    ));
    let mark = master.stderr_mark();
    master.signal(nix::sys::signal::Signal::SIGHUP);
    let (_, line) = master.wait_for_stderr_after(mark, "(pid ");
    assert!(
        line.contains(": it is stopped (SIGSTOP or a job control signal)")
            && line.contains("until it gets SIGCONT")
            && !line.contains("cannot see"),
        "{line}\n{}",
        master.dump()
    );
}

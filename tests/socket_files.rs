//! What the master makes on disk besides its output: unix socket files (`-l unix:PATH` replaces
//! only a stale socket, sets the socket's mode, lets one of two racing masters win, reports an
//! OS refusal as itself) and its notify directory (an unusable `$TMPDIR` is one error line, a
//! killed master's directory is swept by the next master, a user's look-alike is left alone).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::support::net::request_unix;
use crate::support::script::quote;
use crate::support::{Master, MasterBuilder, Reply, Script, fixture};

/// A worker program that leaves a mark if it ever runs, for masters that must fail first.
struct NoWorker {
    script: Script,
}

impl NoWorker {
    fn new() -> Self {
        let script = Script::new("");
        let mark = script.dir().join("spawned");
        script.rewrite(&format!("touch {}\nexec sleep 60", quote(&mark)));
        Self { script }
    }

    fn master(&self, options: &[&str]) -> MasterBuilder {
        Master::builder(options, "/bin/sh", &[self.script.arg()])
    }

    /// Runs the master; checks that it exits with `code` after exactly one stderr line
    /// `mcluster: error: …` naming each of `culprits` (ignoring case), printed nothing else,
    /// spawned no worker and left nothing in its `$TMPDIR`.
    #[track_caller]
    fn rejects(&self, master: MasterBuilder, code: i32, culprits: &[&str]) {
        let mut master = master.start();
        assert_eq!(master.wait_exit_code(), code, "{}", master.dump());
        let lines = master.stderr_lines();
        assert_eq!(lines.len(), 1, "not one line\n{}", master.dump());
        assert!(lines[0].starts_with("mcluster: error: "), "{lines:?}");
        for culprit in culprits {
            assert!(
                lines[0].to_lowercase().contains(&culprit.to_lowercase()),
                "{:?} does not name {culprit:?}",
                lines[0]
            );
        }
        assert_eq!(master.stdout_lines(), Vec::<String>::new());
        assert_eq!(names(self.script.dir()), ["worker.sh"], "a worker ran");
        assert_eq!(names(master.tmpdir()), Vec::<String>::new(), "left behind");
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file under `dir` with its type, mode and content.
fn tree(dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for name in names(dir) {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path).unwrap();
        all.push(format!("{name} {:o}", meta.mode()));
        if meta.is_dir() {
            all.extend(
                tree(&path)
                    .into_iter()
                    .map(|inner| format!("{name}/{inner}")),
            );
        } else if meta.is_file() {
            all.push(fs::read_to_string(&path).unwrap());
        }
    }
    all
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A pid that no process has (one that just exited).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Stops `master` gracefully and checks it exits 0.
#[track_caller]
fn stop(master: &mut Master) {
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
}

/// A master of one echo worker on `options`, with `$TMPDIR` and `$XDG_RUNTIME_DIR` at `tmp`.
fn echo_master(options: &[&str], tmp: &Path) -> Master {
    Master::builder(options, fixture("fixture-echo"), &[])
        .env("TMPDIR", tmp)
        .env("XDG_RUNTIME_DIR", tmp)
        .start()
}

#[test]
fn a_stale_socket_is_replaced_and_removed_at_exit() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("app.sock");
    // Bound, then closed without unlinking: what a master killed by SIGKILL leaves.
    drop(UnixListener::bind(&path).unwrap());
    let listen = format!("unix:{}", path.display());
    let (mut master, workers) =
        Master::start_ready(&["-l", &listen, "-n", "1"], fixture("fixture-echo"), &[], 1);
    let reply = request_unix(&path, "hi");
    assert_eq!(Reply::parse(&reply).unwrap().pid, workers[0].pid, "{reply}");
    stop(&mut master);
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[test]
fn the_socket_mode_is_the_one_asked_for_whatever_the_umask() {
    for umask in ["077", "000"] {
        let dir = TempDir::new().unwrap();
        let unix = |spec: &str, name: &str| format!("{spec}:{}", dir.path().join(name).display());
        let (plain, open, group) = (
            unix("unix", "plain.sock"),
            unix("unix,mode=0666", "open.sock"),
            unix("unix,mode=640", "group.sock"),
        );
        let options = ["-l", &plain, "-l", &open, "-l", &group, "-n", "1"];
        let mut master = Master::builder(&options, fixture("fixture-echo"), &[])
            .via(
                "/bin/sh",
                &["-c", &format!("umask {umask} && exec \"$@\""), "sh"],
            )
            .start();
        master.wait_ready(1);
        let modes: Vec<u32> = ["plain.sock", "open.sock", "group.sock"]
            .iter()
            .map(|name| mode(&dir.path().join(name)))
            .collect();
        assert_eq!(modes, [0o600, 0o666, 0o640], "umask {umask}");
        stop(&mut master);
        assert_eq!(names(dir.path()), Vec::<String>::new());
    }
}

/// `strace` arguments that make every `connect` of a master take 200 ms longer, if `strace` can
/// trace here. `-D` keeps the master the process the harness spawned.
fn slow_connect() -> Option<[&'static str; 8]> {
    let args = [
        "-D",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=connect",
        "-e",
        "inject=connect:delay_exit=200000",
    ];
    let works = std::process::Command::new("strace")
        .args(args)
        .arg("true")
        .status()
        .is_ok_and(|status| status.success());
    works.then_some(args)
}

#[test]
fn of_two_masters_racing_for_one_path_one_wins() {
    // Each finds a stale socket, and with `slow_connect` takes its time to find it stale: time
    // for the other to replace it first. (Without strace the race is real but rarely lost.)
    let slow = slow_connect();
    if slow.is_none() {
        eprintln!("strace cannot trace here: racing without slowed connects");
    }
    for round in 0..5 {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("app.sock");
        drop(UnixListener::bind(&path).unwrap());
        let listen = format!("unix:{}", path.display());
        let options = ["-l", &listen, "-n", "1"];
        let start = || {
            let master = Master::builder(&options, fixture("fixture-echo"), &[]);
            match &slow {
                Some(args) => master.via("strace", args),
                None => master,
            }
            .start()
        };
        let masters = [start(), start()];
        let failed = |master: &Master| {
            master
                .stderr_lines()
                .iter()
                .any(|l| l.starts_with("mcluster: error: "))
        };
        for master in &masters {
            master.wait_until("the master to be ready or to fail", || {
                failed(master)
                    || master
                        .stderr_lines()
                        .iter()
                        .any(|l| l.starts_with(&crate::support::all_ready(1)))
            });
        }
        let dumps = format!("round {round}\n{}{}", masters[0].dump(), masters[1].dump());
        let (mut losers, mut winners): (Vec<Master>, Vec<Master>) =
            masters.into_iter().partition(|m| failed(m));
        assert_eq!((winners.len(), losers.len()), (1, 1), "{dumps}");
        let (winner, loser) = (&mut winners[0], &mut losers[0]);
        assert_eq!(loser.wait_exit_code(), 1, "{}", loser.dump());
        let lines = loser.stderr_lines();
        assert_eq!(lines.len(), 1, "{}", loser.dump());
        assert!(
            lines[0].contains(&listen) && lines[0].contains("in use"),
            "{lines:?}"
        );
        let reply = request_unix(&path, "who");
        let worker = winner.wait_ready(1)[0];
        assert_eq!(Reply::parse(&reply).unwrap().pid, worker.pid, "{reply}");
        stop(winner);
        assert_eq!(names(dir.path()), Vec::<String>::new(), "round {round}");
        for master in [&*winner, &*loser] {
            assert_eq!(names(master.tmpdir()), Vec::<String>::new());
        }
    }
}

#[test]
fn a_socket_with_a_full_backlog_is_in_use_and_not_waited_on() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
    };
    use std::os::fd::AsRawFd;
    let worker = NoWorker::new();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("busy.sock");
    let listener = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    let address = UnixAddr::new(&path).unwrap();
    bind(listener.as_raw_fd(), &address).unwrap();
    listen(&listener, Backlog::new(1).unwrap()).unwrap();
    // Connections nobody accepts, until one more would wait.
    let mut pending = Vec::new();
    loop {
        let client = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        match connect(client.as_raw_fd(), &address) {
            Ok(()) => pending.push(client),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("connect: {e}"),
        }
        assert!(pending.len() < 100, "the backlog never filled");
    }
    let listen = format!("unix:{}", path.display());
    worker.rejects(worker.master(&["-l", &listen]), 1, &[&listen, "in use"]);
    assert_eq!(names(dir.path()), ["busy.sock"]);
}

/// Runs `master` as `nobody` when the tests run as root, whom permissions do not stop.
fn unprivileged(master: MasterBuilder, probe: &Path) -> MasterBuilder {
    if fs::metadata(probe).unwrap().uid() == 0 {
        master.via(
            "setpriv",
            &["--reuid=65534", "--regid=65534", "--clear-groups"],
        )
    } else {
        master
    }
}

#[test]
fn a_refusal_of_the_os_is_reported_as_itself() {
    let worker = NoWorker::new();
    let dir = TempDir::new().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A socket someone accepts on, which we may not connect to.
    let closed = dir.path().join("closed.sock");
    let _listener = UnixListener::bind(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();
    // A stale socket in a directory we may not change.
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    let stale = locked.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    // A directory we may not enter.
    let shut = dir.path().join("shut");
    fs::create_dir(&shut).unwrap();
    fs::set_permissions(&shut, fs::Permissions::from_mode(0o500)).unwrap();
    let before = tree(dir.path());
    for path in [closed.clone(), stale, shut.join("app.sock")] {
        let listen = format!("unix:{}", path.display());
        let master = unprivileged(worker.master(&["-l", &listen]), dir.path());
        worker.rejects(master, 1, &[&listen, "permission denied"]);
    }
    assert_eq!(tree(dir.path()), before);
    UnixStream::connect(&closed).expect("the socket is still there and accepting");
}

#[test]
fn a_users_look_alike_directories_in_tmpdir_survive_a_start() {
    let tmp = TempDir::new().unwrap();
    let dead = dead_pid();
    let checkout = tmp.path().join(format!("mcluster-{dead}"));
    fs::create_dir_all(checkout.join("src")).unwrap();
    fs::write(checkout.join("Cargo.toml"), "[package]\n").unwrap();
    fs::write(checkout.join("src/main.rs"), "fn main() {}\n").unwrap();
    // Even named like a master's directory, with mode 0700: it has no marker.
    let lookalike = tmp.path().join(format!("mcluster-{dead}-0123456789ab"));
    fs::create_dir(&lookalike).unwrap();
    fs::set_permissions(&lookalike, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(lookalike.join("notes.txt"), "mine\n").unwrap();
    let before = tree(tmp.path());
    let mut master = echo_master(&["-l", "127.0.0.1:0", "-n", "1"], tmp.path());
    master.wait_ready(1);
    stop(&mut master);
    assert_eq!(tree(tmp.path()), before);
}

#[test]
fn a_killed_masters_notify_directory_is_swept_by_the_next_one() {
    let tmp = TempDir::new().unwrap();
    // The control socket elsewhere: the killed master leaves it too (tests/control.rs).
    let control = TempDir::new().unwrap();
    let control = control.path().join("control.sock");
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--control",
        control.to_str().unwrap(),
    ];
    let mut killed = echo_master(&options, tmp.path());
    killed.wait_ready(1);
    let left = names(tmp.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with(&format!("mcluster-{}", killed.pid())),
        "{left:?}"
    );
    killed.signal(Signal::SIGKILL);
    killed.wait_exit();
    assert_eq!(names(tmp.path()), left, "a killed master cannot clean up");

    let mut next = echo_master(&options, tmp.path());
    next.wait_ready(1);
    let now = names(tmp.path());
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(
        now[0].starts_with(&format!("mcluster-{}", next.pid())),
        "{now:?}"
    );
    stop(&mut next);
    assert_eq!(names(tmp.path()), Vec::<String>::new());
}

#[test]
fn an_unusable_notify_directory_base_is_one_error_line() {
    let worker = NoWorker::new();
    let bases = TempDir::new().unwrap();
    let file = bases.path().join("file");
    fs::write(&file, "").unwrap();
    let missing = bases.path().join("missing");
    let long = bases.path().join("d".repeat(100));
    fs::create_dir(&long).unwrap();
    let sockets = TempDir::new().unwrap();
    let listen = format!("unix:{}", sockets.path().join("app.sock").display());
    let options = ["-l", listen.as_str()];
    let file_text = file.display().to_string();
    worker.rejects(
        worker.master(&options).env("XDG_RUNTIME_DIR", &file),
        1,
        &[&file_text, "$XDG_RUNTIME_DIR", "not a directory"],
    );
    let missing_text = missing.display().to_string();
    worker.rejects(
        worker
            .master(&options)
            .env("XDG_RUNTIME_DIR", "")
            .env("TMPDIR", &missing),
        1,
        &[&missing_text, "$TMPDIR", "no such file"],
    );
    let long_text = long.display().to_string();
    worker.rejects(
        worker
            .master(&options)
            .env("XDG_RUNTIME_DIR", "")
            .env("TMPDIR", &long),
        1,
        &[&long_text, "$TMPDIR", "too long"],
    );
    assert_eq!(names(sockets.path()), Vec::<String>::new());
    assert_eq!(names(&long), Vec::<String>::new());
    assert_eq!(
        names(bases.path()),
        [long_text.rsplit('/').next().unwrap(), "file"]
    );
}

//! Guarantees 5 and 6 where `close_range` fails: on Linux before 5.9 (ENOSYS), with
//! `CLOSE_RANGE_CLOEXEC` on 5.9 and 5.10 (EINVAL), and under a seccomp profile that does not
//! know the call (ENOSYS or EPERM, as older container runtimes answer). Each master runs under
//! `fixtures/seccomp_close_range.py`, which installs such a filter, leaks an fd to the master
//! (at 100, without close-on-exec) and execs it: a graceful stop ends, a SIGKILL of the master
//! takes every process of every tree with it and frees the port, and neither a worker nor the
//! guard holds an fd it should not.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::net::is_refused;
use crate::support::process::{every_child_of, group_members, stat, wait_until};
use crate::support::script::quote;
use crate::support::{Master, MasterBuilder, Script, fixture, python3};

/// The helper that runs a program under a filter making `close_range` fail.
fn seccomp_helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seccomp_close_range.py")
}

/// How `close_range` fails: the errno, and whether only calls with `CLOSE_RANGE_CLOEXEC` do.
#[derive(Debug, Clone, Copy)]
struct Failure {
    errno: &'static str,
    when: &'static str,
}

/// A master under the filter, running `program args` on a free port.
fn start(failure: Failure, options: &[&str], program: &str, args: &[&str]) -> Master {
    let helper = seccomp_helper();
    let helper = helper.to_str().unwrap();
    let master = Master::builder(options, program, args)
        .via(python3(), &[helper, failure.errno, failure.when])
        .start();
    // The master announces its listener long after the helper's exec.
    master.listening(1);
    let status = fs::read_to_string(format!("/proc/{}/status", master.pid())).unwrap_or_default();
    assert!(
        status.contains("Seccomp:\t2"),
        "{failure:?}: the master runs without the filter\n{status}"
    );
    master
}

/// `fd number → what it is` for every open fd of `pid`.
fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut fds: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let fd = entry.file_name().to_str()?.parse().ok()?;
                    let target = fs::read_link(entry.path()).ok()?;
                    Some((fd, target.display().to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// Processes a test saw, killed when it ends, passing or not: where the fallback is
/// missing, the guard and the app behind a wrapper outlive the master.
#[derive(Default)]
struct Reaper(Vec<(i32, u64)>);

impl Reaper {
    fn note(&mut self, pid: i32) {
        if let Some(s) = stat(pid) {
            self.0.push((pid, s.start_time));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &(pid, start_time) in &self.0 {
            // Only the very process seen: pids are reused.
            if stat(pid).is_some_and(|s| s.start_time == start_time) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The master's guard process (in dev mode, it starts once the first build is under way).
fn guard_of(master: &Master) -> i32 {
    let mut guard = None;
    master.wait_until("the master's guard", || {
        guard = every_child_of(master.pid()).into_iter().find(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "mcluster-guard\n")
        });
        guard.is_some()
    });
    guard.unwrap_or(0)
}

/// Waits until the worker `pid`, a `/bin/sleep`, sleeps: ready at once (`--ready-delay 0`), it
/// may still be starting, and its start-up opens locale files for a moment, fds it did not
/// inherit.
fn wait_asleep(master: &Master, pid: i32) {
    use nix::libc::{SYS_clock_nanosleep, SYS_nanosleep};
    master.wait_until("the worker asleep", || {
        fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|line| {
            line.split(' ')
                .next()
                .and_then(|number| number.parse::<i64>().ok())
                .is_some_and(|number| number == SYS_clock_nanosleep || number == SYS_nanosleep)
        })
    });
}

/// A worker process holds 0–2, its one listener at 3 and its message channel at 4, nothing
/// else; the guard 0–2 and the read end of its pipe; a graceful stop ends.
fn stops_and_passes_on_only_what_it_should(failure: Failure) {
    let mut master = start(
        failure,
        &["-l", "127.0.0.1:0", "-n", "2", "--ready-delay", "0"],
        "/bin/sleep",
        &["1000"],
    );
    let workers = master.wait_ready(2);
    let guard = guard_of(&master);
    let mut reaper = Reaper::default();
    reaper.note(guard);
    for worker in &workers {
        wait_asleep(&master, worker.pid);
        let held = fds(worker.pid);
        let numbers: Vec<i32> = held.iter().map(|(fd, _)| *fd).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4], "{failure:?}: worker fds {held:?}");
        assert!(held[3].1.starts_with("socket:"), "{failure:?}: {held:?}");
        assert!(held[4].1.starts_with("socket:"), "{failure:?}: {held:?}");
    }
    let held = fds(guard);
    assert_eq!(
        held.iter()
            .map(|(fd, what)| (*fd, what.split(':').next().unwrap_or("")))
            .collect::<Vec<_>>(),
        [
            (0, "/dev/null"),
            (1, "/dev/null"),
            (2, "/dev/null"),
            (3, "pipe")
        ],
        "{failure:?}: the guard's fds {held:?}"
    );
    let port = master.port();
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{failure:?}");
    assert!(is_refused(port), "{failure:?}: port {port} still open");
    master.wait_dead(guard);
}

/// The app behind a shell wrapper that does not `exec` (and so is out of reach of the
/// parent-death signal) dies with a killed master, and the port is freed.
fn every_tree_dies_with_a_sigkilled_master(failure: Failure) {
    let script = Script::new(&format!(
        "unset LISTEN_PID\n{}\nexit $?",
        quote(&fixture("fixture-echo"))
    ));
    let mut master = start(
        failure,
        &["-l", "127.0.0.1:0", "-n", "2"],
        "/bin/sh",
        &[script.arg()],
    );
    let workers = master.wait_ready(2);
    let port = master.port();
    let members: Vec<i32> = workers
        .iter()
        .flat_map(|worker| group_members(worker.pid))
        .collect();
    assert!(members.len() >= 4, "{failure:?}: {members:?}");
    let mut reaper = Reaper::default();
    reaper.note(guard_of(&master));
    for &pid in &members {
        reaper.note(pid);
    }
    for &pid in &members {
        assert!(
            fds(pid)
                .iter()
                .all(|(fd, what)| *fd != 100 && !what.ends_with("seccomp_close_range.py")),
            "{failure:?}: pid {pid} inherited the master's stray fd: {:?}",
            fds(pid)
        );
    }
    master.signal(Signal::SIGKILL);
    wait_until(
        "every tree to die with the master, and the port to be free",
        || members.iter().all(|&pid| !crate::support::is_alive(pid)) && is_refused(port),
    );
    master.wait_exit();
}

const ENOSYS: Failure = Failure {
    errno: "ENOSYS",
    when: "always",
};
const EPERM: Failure = Failure {
    errno: "EPERM",
    when: "always",
};
const EINVAL_FOR_CLOEXEC: Failure = Failure {
    errno: "EINVAL",
    when: "cloexec",
};

#[test]
fn without_close_range_enosys_a_stop_ends_and_workers_inherit_only_their_fds() {
    stops_and_passes_on_only_what_it_should(ENOSYS);
}

#[test]
fn without_close_range_enosys_every_tree_dies_with_a_sigkilled_master() {
    every_tree_dies_with_a_sigkilled_master(ENOSYS);
}

#[test]
fn with_close_range_refused_eperm_a_stop_ends_and_workers_inherit_only_their_fds() {
    stops_and_passes_on_only_what_it_should(EPERM);
}

#[test]
fn with_close_range_refused_eperm_every_tree_dies_with_a_sigkilled_master() {
    every_tree_dies_with_a_sigkilled_master(EPERM);
}

#[test]
fn with_close_range_cloexec_refused_einval_a_stop_ends_and_workers_inherit_only_their_fds() {
    stops_and_passes_on_only_what_it_should(EINVAL_FOR_CLOEXEC);
}

#[test]
fn with_close_range_cloexec_refused_einval_every_tree_dies_with_a_sigkilled_master() {
    every_tree_dies_with_a_sigkilled_master(EINVAL_FOR_CLOEXEC);
}

/// A build (here `--build CMD`, a `sh -c` of the master's) inherits none of the master's fds
/// but its stdio either: not the fd the master's parent leaked, whether `close_range` works or
/// not.
#[test]
fn a_build_inherits_none_of_the_master_s_stray_fds() {
    let dir = tempfile::tempdir().unwrap();
    let listing = dir.path().join("build-fds");
    let build = format!(
        "ls -l /proc/$$/fd > {}.next && mv {0}.next {0}",
        quote(&listing)
    );
    let helper = seccomp_helper();
    let mut master = MasterBuilder::raw(&[
        "dev",
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "-w",
        dir.path().to_str().unwrap(),
        "--build",
        &build,
        "--",
        fixture("fixture-echo").to_str().unwrap(),
    ])
    .via(
        python3(),
        &[helper.to_str().unwrap(), ENOSYS.errno, ENOSYS.when],
    )
    .start();
    let mut reaper = Reaper::default();
    reaper.note(guard_of(&master));
    master.wait_until("the build to list its fds", || listing.exists());
    let fds = fs::read_to_string(&listing).unwrap();
    // The shell's own fds (a saved stdout for the redirection) are of no concern.
    assert!(
        fds.lines()
            .all(|line| !line.contains("seccomp_close_range.py")),
        "the build's shell inherited the master's stray fd:\n{fds}"
    );
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0);
}

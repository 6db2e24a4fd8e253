//! The guard (`mcluster-guard`) kills only what is the master's, and is always there: a
//! spawn that failed after the child announced itself is taken back (its pid, reused by
//! someone else's process group, survives the master's stop — forced pid reuse through
//! `/proc/sys/kernel/ns_last_pid`, as root), and a guard killed from outside is noticed and
//! replaced by one that guards every live group.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::net::is_refused;
use crate::support::process::{every_child_of, group_members, stat, wait_until};
use crate::support::script::quote;
use crate::support::{Master, Script, fixture, is_alive};

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// The master's guard process.
fn guard_of(master: &Master) -> Option<i32> {
    every_child_of(master.pid()).into_iter().find(|&pid| {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "mcluster-guard\n")
    })
}

/// The master's guard other than `old`, waited for: the master forks the guard, and the child
/// names itself `mcluster-guard` (`PR_SET_NAME`) only when it runs, which on a busy machine can
/// be after the master has logged the new guard's pid.
fn wait_for_guard(master: &Master, old: Option<i32>) -> i32 {
    let mut found = None;
    master.wait_until("the master's guard to run under its name", || {
        found = guard_of(master).filter(|&pid| Some(pid) != old);
        found.is_some()
    });
    found.expect("a guard")
}

fn last_pid() -> i32 {
    fs::read_to_string(NS_LAST_PID)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Processes the test started, killed however the test ends.
#[derive(Default)]
struct Planted(Vec<Child>);

impl Drop for Planted {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A process killed when the test ends, passing or not, if it is still the one seen (pid and
/// start time).
struct KillOnDrop(i32, u64);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if stat(self.0).is_some_and(|s| s.start_time == self.1) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Starts a process that leads a process group and session of its own (`setsid sleep`, as a
/// shell job or a daemon would) with exactly the pid `pid`, by setting the kernel's last pid
/// just before; `None` if another process took the number first every time.
fn plant_group_leader(pid: i32) -> Option<Child> {
    for _ in 0..20 {
        if stat(pid).is_some() {
            return None;
        }
        fs::write(NS_LAST_PID, (pid - 1).to_string()).ok()?;
        let mut child = Command::new("setsid")
            .args(["sleep", "1000"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        if i32::try_from(child.id()) == Ok(pid) {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// Whether this test may force pid reuse (root, with a writable `ns_last_pid`).
fn can_force_pids() -> bool {
    nix::unistd::geteuid().is_root() && fs::OpenOptions::new().write(true).open(NS_LAST_PID).is_ok()
}

/// Guarantee 5's other side: a spawn whose exec failed had announced its pid to the guard; the
/// pid is free again at once, and the process group an unrelated job (a shell job, a `setsid`
/// daemon) makes with it is not the master's to kill, even at its graceful stop.
#[test]
fn a_failed_spawn_s_pid_is_taken_back_from_the_guard() {
    if !can_force_pids() {
        eprintln!("skipped: forcing pid reuse needs root and a writable {NS_LAST_PID}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("worker.sh");
    fs::write(
        &program,
        format!("#!/bin/sh\nexec {}\n", quote(&fixture("fixture-echo"))),
    )
    .unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let (mut master, _) = Master::start_ready(&["-l", "127.0.0.1:0", "-n", "1"], &program, &[], 1);
    // The next generation's exec fails: the roll's replacement announces itself to the guard,
    // then fails.
    fs::remove_file(&program).unwrap();
    let before = last_pid();
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    master.wait_for_stderr_after(mark, "could not be spawned: no such file or directory");
    let after = last_pid();
    // The failed child's pid is one of those handed out meanwhile: every one that is free
    // now becomes the group of an unrelated job.
    let mut planted = Planted::default();
    for pid in before + 1..=after {
        if let Some(child) = plant_group_leader(pid) {
            planted.0.push(child);
        }
    }
    assert!(
        !planted.0.is_empty(),
        "no pid between {before} and {after} could be planted"
    );
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0);
    for child in &mut planted.0 {
        assert_eq!(
            child.try_wait().unwrap(),
            None,
            "the master's stop killed pid {}, a process group that is not its own (pids {}..={after} planted)\n{}",
            child.id(),
            before + 1,
            master.dump()
        );
    }
    eprintln!(
        "{} of the {} pids handed out during the failed spawn planted",
        planted.0.len(),
        after - before
    );
}

/// A guard killed from outside is noticed (one line), replaced, and the new guard kills every
/// tree when the master is killed (SIGKILL): also the app behind a wrapper that does not `exec`, in a
/// group started before the old guard died and in one started after.
#[test]
fn a_guard_killed_from_outside_is_replaced_by_one_that_guards_every_live_group() {
    let script = Script::new(&format!(
        "unset LISTEN_PID\n{}\nexit $?",
        quote(&fixture("fixture-echo"))
    ));
    let (mut master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        "/bin/sh",
        &[script.arg()],
        2,
    );
    let port = master.port();
    let old = wait_for_guard(&master, None);
    let mark = master.stderr_mark();
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
    let (mark, line) = master.wait_for_stderr_after(mark, "the guard process ");
    assert_eq!(
        line.split_once(" (pid ").map(|(start, _)| start),
        Some("mcluster: the guard process killed by signal SIGKILL; a new one"),
        "{line}"
    );
    assert!(line.ends_with("guards the 2 live process groups"), "{line}");
    let new = wait_for_guard(&master, Some(old));
    assert_ne!(new, old);
    assert!(line.contains(&format!("(pid {new})")), "{line}");
    // Replace one of the workers: its new group is announced to the new guard.
    let _ = crate::support::net::try_request(port, "exit 3");
    master.wait_for_stderr_after(mark, "exited with status 3; restarting in ");
    let (_, _) = master.wait_for_stderr_after(mark, "ready (pid ");
    let all: Vec<i32> = master.ready_workers().iter().map(|w| w.pid).collect();
    assert!(all.len() >= 3, "{all:?}");
    let members: Vec<i32> = all.iter().flat_map(|&pid| group_members(pid)).collect();
    assert!(members.len() >= 4, "{members:?}");
    drop(workers);
    master.signal(Signal::SIGKILL);
    wait_until(
        "every tree to die with the master, and the port to be free",
        || members.iter().all(|&pid| !is_alive(pid)) && is_refused(port),
    );
    master.wait_exit();
    wait_until("the new guard to exit", || !is_alive(new));
}

/// A guard stopped from outside (SIGSTOP, which it cannot ignore) never reads its pipe: the
/// master's stop still ends (it waits for the guard a bounded time, then kills it).
#[test]
fn a_stopped_guard_does_not_hang_the_master_s_stop() {
    let echo = fixture("fixture-echo");
    let (mut master, workers) =
        Master::start_ready(&["-l", "127.0.0.1:0", "-n", "1"], &echo, &[], 1);
    let guard = wait_for_guard(&master, None);
    let _kill_guard = KillOnDrop(guard, stat(guard).unwrap().start_time);
    kill(Pid::from_raw(guard), Signal::SIGSTOP).unwrap();
    master.wait_until("the guard to stop", || {
        stat(guard).is_some_and(|s| s.state == 'T')
    });
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0);
    assert!(!is_alive(workers[0].pid));
    assert!(!is_alive(guard), "the stopped guard outlived the master");
}

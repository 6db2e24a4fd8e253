//! Guarantees 5 and 6 for real process trees: a worker is its whole process group. Workers that
//! are shell wrappers without `exec`, and workers that leave a background child holding the
//! listener, are rolled, restarted, resized, stopped and orphaned (SIGKILL of the master), and
//! nothing of any tree outlives its worker or the master. Also: HUP by the servers' convention
//! (a production master whose terminal closed still rolls; dev stops), an aborted roll never
//! empties a slot, and an embedder's own children stay its own.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::load::{Load, StopOnDrop};
use crate::support::net::is_refused;
use crate::support::process::{children_of, group_members, stat, wait_until};
use crate::support::script::quote;
use crate::support::{
    Master, MasterBuilder, Script, Worker, echo, echo_pid, fixture, pids, python3,
};

/// The shapes of worker trees users run.
#[derive(Debug, Clone, Copy)]
enum Tree {
    /// `#!/bin/sh` that runs the app as its child (no `exec`), as `npm start` does.
    Wrapper,
    /// The app with a background child that inherited the listener (`sleep 1000 &`).
    BackgroundChild,
}

const TREES: [Tree; 2] = [Tree::Wrapper, Tree::BackgroundChild];

impl Tree {
    fn script(self) -> Script {
        let app = quote(&fixture("fixture-echo"));
        Script::new(&match self {
            // The app is the shell's child: LISTEN_PID names the shell, so the app (like
            // listenfd with systemfd --no-pid) takes the fds without it. The trailing `exit`
            // keeps any shell from exec'ing its last command.
            Tree::Wrapper => format!("unset LISTEN_PID\n{app}\nexit $?"),
            Tree::BackgroundChild => format!("sleep 1000 &\nexec {app}"),
        })
    }
}

/// A master running `size` workers of `script` on a free port; returns it and its workers.
fn start(script: &Script, options: &[&str], size: usize) -> (Master, Vec<Worker>) {
    let size_text = size.to_string();
    let mut all = vec!["-l", "127.0.0.1:0", "-n", &size_text];
    all.extend_from_slice(options);
    Master::start_ready(&all, "/bin/sh", &[script.arg()], size)
}

/// Every process of the workers' groups (each worker leads its own group).
fn tree_members(workers: &[Worker]) -> Vec<i32> {
    workers
        .iter()
        .flat_map(|worker| group_members(worker.pid))
        .collect()
}

#[track_caller]
fn wait_trees_gone(master: &Master, workers: &[Worker]) {
    master.wait_until("every process of the old trees to be gone", || {
        tree_members(workers).is_empty()
    });
}

/// The pid of the process that answers, and the group it belongs to.
fn answering_group(port: u16) -> i32 {
    let pid = echo_pid(&crate::support::request(port, "who"));
    stat(pid).map_or(0, |s| s.pgrp)
}

#[test]
fn a_roll_under_load_replaces_whole_trees_and_only_the_new_generation_answers() {
    for tree in TREES {
        let script = tree.script();
        let (master, old) = start(&script, &[], 2);
        assert!(
            tree_members(&old).len() > old.len(),
            "{tree:?}: each tree has more than one process"
        );
        let port = master.port();
        let (load, threads) = Load::start(port, 4);
        let _stop = StopOnDrop(Arc::clone(&load));
        let mark = master.stderr_mark();
        master.signal(Signal::SIGHUP);
        master.wait_for_stderr_after(mark, "mcluster: rolled 2 workers to generation 2 in ");
        wait_trees_gone(&master, &old);
        let before = load.answered.load(Ordering::SeqCst);
        master.wait_until("more requests answered after the roll", || {
            load.answered.load(Ordering::SeqCst) > before + 8
        });
        load.stop.store(true, Ordering::SeqCst);
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(load.failures(), Vec::<String>::new(), "{tree:?}");
        let new: BTreeSet<i32> = pids(&master.generation(2)).into_iter().collect();
        for _ in 0..20 {
            assert_eq!(echo(port, "after").generation, 2, "{tree:?}");
            assert!(new.contains(&answering_group(port)), "{tree:?}");
        }
    }
}

#[test]
fn a_crashed_worker_s_tree_is_cleaned_up_and_the_slot_restarted() {
    for tree in TREES {
        let script = tree.script();
        let (master, old) = start(&script, &[], 1);
        let port = master.port();
        let mark = master.stderr_mark();
        // The app crashes; for the background shape, its child lives on and holds the port.
        let _ = crate::support::net::try_request(port, "exit 3");
        master.wait_for_stderr_after(mark, "exited with status 3; restarting in ");
        wait_trees_gone(&master, &old);
        let (_, line) = master.wait_for_stderr_after(mark, "mcluster: w0 ready (pid ");
        let new = master.ready_workers().last().copied().unwrap();
        assert!(line.contains(&new.pid.to_string()));
        for _ in 0..10 {
            assert_eq!(answering_group(port), new.pid, "{tree:?}");
        }
    }
}

#[test]
fn shrinking_stops_the_whole_tree_of_the_slot() {
    for tree in TREES {
        let script = tree.script();
        let (master, workers) = start(&script, &[], 2);
        master.signal(Signal::SIGTTOU);
        master.wait_for_stderr("mcluster: resizing to 1 worker");
        wait_trees_gone(&master, &workers[1..]);
        assert!(!group_members(workers[0].pid).is_empty(), "{tree:?}");
    }
}

#[test]
fn graceful_and_hard_stops_leave_no_process_of_any_tree() {
    for tree in TREES {
        for (signal, code) in [(Signal::SIGTERM, 0), (Signal::SIGQUIT, 1)] {
            let script = tree.script();
            let (mut master, workers) = start(&script, &[], 2);
            let port = master.port();
            master.signal(signal);
            assert_eq!(master.wait_exit_code(), code, "{tree:?} {signal}");
            assert_eq!(
                tree_members(&workers),
                Vec::<i32>::new(),
                "{tree:?} {signal}"
            );
            assert!(
                is_refused(port),
                "{tree:?} {signal}: port {port} still open"
            );
        }
    }
}

/// Guarantee 6: SIGKILL of the master, 20 times; each time every process of every tree dies
/// and the port is freed.
#[test]
fn every_tree_dies_with_a_sigkilled_master() {
    let script = Script::new(&format!(
        "sleep 1000 &\nunset LISTEN_PID\n{}\nexit $?",
        quote(&fixture("fixture-echo"))
    ));
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        let (mut master, workers) = start(&script, &[], 2);
        let port = master.port();
        let members = tree_members(&workers);
        assert!(members.len() >= 6, "round {round}: {members:?}");
        master.signal(Signal::SIGKILL);
        let killed = Instant::now();
        wait_until("every tree to die with the master", || {
            tree_members(&workers).is_empty() && is_refused(port)
        });
        slowest = slowest.max(killed.elapsed());
        master.wait_exit();
    }
    eprintln!("slowest: trees gone and port free {slowest:?} after SIGKILL of the master");
}

/// A dev master's `--build` command runs in a group of its own, killed with the master too.
#[test]
fn a_build_s_children_die_with_a_sigkilled_dev_master() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("build-started");
    let build = format!("sleep 1000 & touch {} && sleep 1000", quote(&started));
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
    .start();
    master.wait_until("the build to start", || started.exists());
    let build_group = children_of(master.pid())
        .into_iter()
        .find(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sh\n")
        })
        .expect("the build's shell");
    // `started` exists once `touch` ran: the shell forks the second sleep just after.
    master.wait_until("the build's shell and its two sleeps", || {
        group_members(build_group).len() >= 3
    });
    master.signal(Signal::SIGKILL);
    wait_until("the build's processes to die with the master", || {
        group_members(build_group).is_empty()
    });
    master.wait_exit();
}

/// Guarantee 3, end to end: with one worker, a roll whose replacement fails after the old
/// worker died must not leave the slot empty.
#[test]
fn an_aborted_roll_never_leaves_a_slot_without_a_worker() {
    let script = Script::new(&format!(
        "if [ \"$MCLUSTER_GENERATION\" = 2 ]; then echo 'stub: started'; sleep 0.5; exit 1; fi\n\
         exec {}",
        quote(&fixture("fixture-echo"))
    ));
    let (master, old) = start(&script, &["--ready", "notify"], 1);
    let port = master.port();
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    master.wait_for_stdout("stub: started");
    kill(Pid::from_raw(old[0].pid), Signal::SIGKILL).unwrap();
    let (mark, aborted) =
        master.wait_for_stderr_after(mark, "mcluster: roll to generation 2 aborted: ");
    assert!(aborted.ends_with("generation 1 keeps serving"), "{aborted}");
    master.wait_for_stderr_after(mark, "mcluster: w0 ready (pid ");
    let back = master.ready_workers().last().copied().unwrap();
    assert_eq!(back.generation, 1);
    assert_eq!(echo(port, "back").pid, back.pid);
}

/// Runs a master on a pseudo-terminal of its own (its controlling terminal, as in an
/// interactive shell); once it is ready, prints `master PID` and `port PORT`, closes the
/// terminal at a line on stdin, and prints how the master ended (`status N`) or, after 60 s,
/// kills it.
const PTY_LAUNCHER: &str = r#"
import os, pty, re, select, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
deadline = time.time() + 30
while not re.search(rb"ready in \d", out) and time.time() < deadline:
    if select.select([fd], [], [], 0.5)[0]:
        try:
            out += os.read(fd, 4096)
        except OSError:
            break
port = re.search(rb"listening on 127\.0\.0\.1:(\d+)", out)
print("master", pid, flush=True)
print("port", port.group(1).decode() if port else "none", flush=True)
sys.stdin.readline()
os.close(fd)
deadline = time.time() + 60
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("status", os.waitstatus_to_exitcode(status), flush=True)
        sys.exit(0)
    time.sleep(0.01)
os.kill(pid, signal.SIGKILL)
print("status still running after 60 s", flush=True)
"#;

/// A master started by [`PTY_LAUNCHER`], and the launcher's report lines.
struct OnPty {
    launcher: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    master: i32,
    port: u16,
    /// The master's runtime directory: its control socket goes there, not to the one default
    /// path of the test's working directory that a concurrent test would take too.
    _runtime: tempfile::TempDir,
}

impl OnPty {
    fn start(args: &[&str]) -> Self {
        let runtime = tempfile::TempDir::new().unwrap();
        let mut launcher = Command::new(python3())
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args(["-c", PTY_LAUNCHER])
            .arg(crate::support::fixture::mcluster())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
        let mut next = |prefix: &str| -> String {
            let line = lines.next().and_then(Result::ok).unwrap_or_default();
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .to_owned()
        };
        let master = next("master ").parse().unwrap();
        let port = next("port ").parse().expect("the master's port");
        Self {
            launcher,
            lines,
            master,
            port,
            _runtime: runtime,
        }
    }

    /// Closes the master's terminal.
    fn hang_up(&mut self) {
        use std::io::Write as _;
        let stdin = self.launcher.stdin.as_mut().unwrap();
        stdin.write_all(b"close\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The launcher's `status …` line: how the master ended.
    fn status(&mut self) -> String {
        let line = self.lines.next().and_then(Result::ok).unwrap_or_default();
        line.strip_prefix("status ").unwrap_or(&line).to_owned()
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.master), Signal::SIGKILL);
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
    }
}

/// Answers until a process of a group other than `old` answers; returns that group.
/// The process group of a worker of `generation`, once one answers. Samples are taken until
/// then: during a roll the kernel may still hand a connection to an old worker (until it
/// closes its listener, issue 19's subject), or reset one an old worker took as it stopped; so
/// the group of one sample alone is no proof of a roll, its generation is.
fn wait_generation_group(port: u16, generation: u64) -> i32 {
    let mut group = 0;
    wait_until("a worker of the new generation to answer", || {
        let reply = crate::support::net::try_request(port, "who")
            .ok()
            .and_then(|reply| crate::support::net::Reply::parse(&reply));
        group = reply
            .filter(|reply| reply.generation == generation)
            .and_then(|reply| stat(reply.pid))
            .map_or(0, |s| s.pgrp);
        group != 0
    });
    group
}

/// A deploy's `kill -HUP` rolls a production master, also after the terminal it was started in
/// closed (nohup, `&` then logout, a closed tmux pane).
#[test]
fn hup_rolls_a_start_master_whose_terminal_closed() {
    let echo_program = fixture("fixture-echo");
    let mut run = OnPty::start(&[
        "start",
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--ready",
        "notify",
        "--",
        echo_program.to_str().unwrap(),
    ]);
    let first = answering_group(run.port);
    run.hang_up();
    // The terminal's own hangup rolls too (the servers' convention): wait for its end.
    let second = wait_generation_group(run.port, 2);
    assert_ne!(second, first);
    assert!(stat(run.master).is_some(), "the master ended at the hangup");
    kill(Pid::from_raw(run.master), Signal::SIGHUP).unwrap();
    let third = wait_generation_group(run.port, 3);
    assert!(
        third != first && third != second,
        "{first} {second} {third}"
    );
    kill(Pid::from_raw(run.master), Signal::SIGTERM).unwrap();
    assert_eq!(run.status(), "0");
}

/// `mcluster dev` is interactive: when its terminal closes, it stops.
#[test]
fn closing_its_terminal_stops_a_dev_master() {
    let dir = tempfile::tempdir().unwrap();
    let echo_program = fixture("fixture-echo");
    let mut run = OnPty::start(&[
        "dev",
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--ready",
        "notify",
        "-w",
        dir.path().to_str().unwrap(),
        "--no-build",
        "--",
        echo_program.to_str().unwrap(),
    ]);
    let worker = answering_group(run.port);
    run.hang_up();
    assert_eq!(run.status(), "0", "a hangup is a graceful stop");
    wait_until("the worker to be gone", || group_members(worker).is_empty());
}

/// The master reaps only its own children: a program embedding it keeps its own.
#[test]
fn an_embedder_waits_for_its_own_children() {
    let mut master = MasterBuilder::embedded(
        fixture("fixture-embedded-master"),
        &[fixture("fixture-echo")],
    )
    .start();
    master.wait_ready(2);
    master.send("child");
    let line = master.wait_for_stdout("embedder's child ");
    assert_eq!(line, "embedder's child exited: exit status: 7");
    master.send("quit");
    assert_eq!(master.wait_exit_code(), 0);
}

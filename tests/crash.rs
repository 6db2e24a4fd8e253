//! Crashes: a crashed worker is replaced, a crash loop backs off, a first generation that never
//! becomes ready ends the master with the worker's status.

use std::fs;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::script::{exec_line, quote};
use crate::support::{Master, Script, Worker, echo, echo_pid, fixture, wait_served_by};

/// Waits for the worker announced ready in `slot` after `mark`.
#[track_caller]
fn wait_ready_in_slot(master: &Master, mark: usize, slot: usize) -> Worker {
    let (_, line) = master.wait_for_stderr_after(mark, &format!("mcluster: w{slot} ready (pid "));
    master
        .ready_workers()
        .into_iter()
        .find(|w| line.contains(&format!("(pid {}, ", w.pid)))
        .unwrap()
}

#[test]
fn crashed_worker_is_restarted_in_its_slot() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    let port = master.port();

    let crashed = echo(port, "exit 7");
    let (mark, _) = master.wait_for_stderr_after(
        0,
        &format!(
            "mcluster: w{} (pid {}) exited with status 7; restarting in ",
            crashed.slot, crashed.pid
        ),
    );
    let replacement = wait_ready_in_slot(&master, mark, crashed.slot);
    assert_ne!(replacement.pid, crashed.pid);
    assert_eq!(replacement.generation, 1);
    master.wait_dead(crashed.pid);

    let survivor = workers.iter().find(|w| w.pid != crashed.pid).unwrap();
    wait_served_by(port, &[survivor.pid, replacement.pid], echo_pid);
}

#[test]
fn killed_worker_is_reported_and_restarted() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1"],
        fixture("fixture-echo"),
        &[],
        1,
    );
    let victim = workers[0];
    kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
    let (mark, line) = master.wait_for_stderr_after(
        0,
        &format!("mcluster: w0 (pid {}) killed by signal ", victim.pid),
    );
    assert!(
        line.contains("KILL") && line.contains("; restarting in "),
        "{line:?}"
    );
    let replacement = wait_ready_in_slot(&master, mark, 0);
    wait_served_by(master.port(), &[replacement.pid], echo_pid);
}

/// Parses the `<dur>` of `restarting in <dur>`: `0s`, `100ms`, `1.6s`, `2m`…
#[track_caller]
fn restart_delay(line: &str) -> Duration {
    let text = line.rsplit_once("restarting in ").unwrap().1;
    let text = text.split(' ').next().unwrap_or_default();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("{line:?}"));
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "µs" | "us" => number / 1_000_000.0,
        _ => panic!("unknown unit in {line:?}"),
    };
    Duration::from_secs_f64(seconds)
}

/// Guarantee 7: a worker that crashes on every start is restarted with growing delays, not in a
/// tight loop, and comes back when the cause goes away.
#[test]
fn crash_loop_is_restarted_with_backoff() {
    let echo_program = fixture("fixture-echo");
    let script = Script::new("");
    let marker = script.dir().join("broken");
    script.rewrite(&format!(
        "if [ -e {} ]; then echo 'crasher: broken' >&2; exit 1; fi\n{}",
        quote(&marker),
        exec_line(&echo_program)
    ));
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1"],
        "/bin/sh",
        &[script.arg()],
        1,
    );
    let port = master.port();

    fs::write(&marker, "").unwrap();
    let start = master.stderr_mark();
    echo(port, "exit 1");
    // `… exited with status 1; restarting in <dur>` (or `… status 1 before it was ready; …`).
    let is_crash = |line: &str| {
        line.starts_with("mcluster: w0 (pid ")
            && line.contains(") exited with status 1")
            && line.contains("; restarting in ")
    };
    let mut mark = start;
    for _ in 0..5 {
        mark = master
            .wait_for_stderr_where(mark, "a crash line", is_crash)
            .0;
    }
    let crashes: Vec<_> = master.stderr_timed()[start..]
        .iter()
        .filter(|(_, line)| is_crash(line))
        .take(5)
        .cloned()
        .collect();

    // The announced delays grow: first at once, then 100 ms, 200 ms, 400 ms, …
    let delays: Vec<Duration> = crashes.iter().map(|(_, l)| restart_delay(l)).collect();
    assert!(delays.is_sorted(), "{delays:?}\n{}", master.dump());
    assert!(delays[4] >= Duration::from_millis(400), "{delays:?}");
    // And they are kept: five crashes take at least 0 + 100 + 200 + 400 ms (half of it is
    // asked, as the lines may be read late), where a tight loop takes a few milliseconds.
    let span = crashes[4].0 - crashes[0].0;
    assert!(
        span >= Duration::from_millis(350),
        "{span:?}\n{}",
        master.dump()
    );

    fs::remove_file(&marker).unwrap();
    let healed = wait_ready_in_slot(&master, mark, 0);
    wait_served_by(port, &[healed.pid], echo_pid);
}

/// The first generation never becomes ready: the master gives up after 3 attempts, shows the
/// worker's last words, and exits with its status.
#[test]
fn first_generation_never_ready_exits_with_the_worker_status() {
    let mut master = Master::start(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-crash-on-start"),
        &[],
    );
    assert_eq!(master.wait_exit_code(), 3, "{}", master.dump());

    let lines = master.stderr_lines();
    let error = lines
        .iter()
        .find(|l| l.starts_with("mcluster: error: no worker became ready after 3 attempts: w"))
        .unwrap_or_else(|| panic!("{}", master.dump()));
    assert!(error.contains(") exited with status 3"), "{error:?}");
    let slot = error
        .split(": w")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    let last_words = format!("mcluster: w{slot} stderr: crash-on-start: cannot open database");
    assert!(lines.contains(&last_words), "{}", master.dump());
    assert!(
        !lines.iter().any(|l| l.contains(" ready (pid ")),
        "{}",
        master.dump()
    );
}

#[test]
fn a_worker_that_stops_pinging_its_watchdog_is_replaced() {
    let (master, workers) = Master::start_ready(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            "1",
            "--watchdog",
            "1s",
            "-e",
            "ECHO_WATCHDOG_PINGS=6",
        ],
        fixture("fixture-echo"),
        &[],
        1,
    );
    let hung = workers[0].pid;
    // Six pings, 250 ms apart, span one and a half watchdogs: while it pings, it stays.
    let (pinged, _) = master.wait_for_stderr_after(0, "[w0·g1] echo: watchdog ping 6");
    assert!(
        !master.stderr_lines()[..pinged]
            .iter()
            .any(|l| l.contains("sent no WATCHDOG=1")),
        "{}",
        master.dump()
    );
    let (mark, _) = master.wait_for_stderr_after(
        pinged,
        &format!("mcluster: w0 (pid {hung}) sent no WATCHDOG=1 for 1.00s; restarting in "),
    );
    let replacement = wait_ready_in_slot(&master, mark, 0);
    assert_ne!(replacement.pid, hung);
    // Stopped like any worker: the stop signal, and it drains.
    master.wait_dead(hung);
    master.wait_for_stderr("[w0·g1] echo: draining");
}

#[test]
fn a_worker_leaving_by_itself_is_replaced_before_it_exits_and_is_no_crash() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1", "--ready", "notify"],
        fixture("fixture-echo"),
        &[],
        1,
    );
    let port = master.port();
    let leaving = workers[0].pid;
    echo(port, "leave 1500");
    let (mark, _) = master.wait_for_stderr_after(
        0,
        &format!("mcluster: w0 (pid {leaving}) is stopping by itself (STOPPING=1); starting its replacement"),
    );
    let replacement = wait_ready_in_slot(&master, mark, 0);
    assert!(
        crate::support::is_alive(leaving),
        "replaced before it exited"
    );
    master.wait_dead(leaving);
    wait_served_by(port, &[replacement.pid], echo_pid);
    assert!(
        !master
            .stderr_lines()
            .iter()
            .any(|l| l.contains("restarting in")),
        "its exit is no crash\n{}",
        master.dump()
    );
}

/// Issue 16, item 14: a worker that was ready and served, killed from outside again and again
/// (an OOM killer, a chaos test), is restarted at once every time: it is no crash loop.
#[test]
fn a_served_worker_killed_again_and_again_is_restarted_at_once_every_time() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    let mut victim = workers[0];
    let mut mark = master.stderr_mark();
    for _ in 0..4 {
        // It serves a while: the backoff's stable period (1 s), with a margin.
        let ready = master
            .stderr_timed()
            .into_iter()
            .rev()
            .find(|(_, line)| line.contains(&format!("(pid {}, ", victim.pid)))
            .map(|(at, _)| at)
            .unwrap();
        master.wait_until("the worker served 1.5 s", || {
            ready.elapsed() >= Duration::from_millis(1500)
        });
        kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
        let (next, line) = master.wait_for_stderr_after(
            mark,
            &format!("mcluster: w0 (pid {}) killed by signal SIGKILL", victim.pid),
        );
        assert!(
            line.contains("restarting in 0ms"),
            "{line}\n{}",
            master.dump()
        );
        victim = wait_ready_in_slot(&master, next, 0);
        mark = master.stderr_mark();
    }
}

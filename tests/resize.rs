//! Resizing (SIGTTIN / SIGTTOU): one worker more, one worker fewer.

use nix::sys::signal::Signal;

use crate::support::{Master, Worker, echo_pid, fixture, is_alive, pids, wait_served_by};

#[test]
fn ttin_adds_a_worker_and_ttou_removes_one() {
    let (master, mut workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    let port = master.port();

    let mark = master.stderr_mark();
    master.signal(Signal::SIGTTIN);
    master.wait_for_stderr_after(mark, "mcluster: resizing to 3 workers");
    let (_, line) = master.wait_for_stderr_after(mark, "mcluster: w2 ready (pid ");
    let added = master
        .ready_workers()
        .into_iter()
        .find(|w| line.contains(&format!("(pid {}, ", w.pid)))
        .unwrap();
    assert_eq!((added.slot, added.generation), (2, 1), "{line:?}");
    workers.push(added);
    wait_served_by(port, &pids(&workers), echo_pid);

    let mark = master.stderr_mark();
    master.signal(Signal::SIGTTOU);
    master.wait_for_stderr_after(mark, "mcluster: resizing to 2 workers");
    master.wait_until("one worker to be stopped", || {
        workers.iter().filter(|w| is_alive(w.pid)).count() == 2
    });
    let remaining: Vec<Worker> = workers.into_iter().filter(|w| is_alive(w.pid)).collect();
    wait_served_by(port, &pids(&remaining), echo_pid);
    assert!(
        !master.stderr_lines()[mark..]
            .iter()
            .any(|l| l.contains("restarting in")),
        "a stopped worker is not a crash\n{}",
        master.dump()
    );
}

/// Issue 17: only a starting worker is told it is not seen accepting. One asked to stop before
/// it was ready (a shrink), and still stopping five seconds on (its stop signal is one it
/// ignores), gets no advice about READY=1: it is leaving.
#[test]
fn a_worker_stopped_while_starting_is_not_told_it_is_unseen() {
    let master = Master::builder(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            "2",
            "--stop-signal",
            "WINCH",
            "--kill-timeout",
            "60s",
        ],
        fixture("fixture-accept"),
        &["hold"],
    )
    .start();
    // Both hold their listener and never accept: neither gets ready.
    master.wait_for_stdout("[w0·g1] holding");
    master.wait_for_stdout("[w1·g1] holding");
    master.signal(Signal::SIGTTOU);
    master.wait_for_stderr("mcluster: resizing to 1 worker");
    let lingering = master.wait_for_stderr("mcluster: w1 (pid ");
    assert!(
        lingering.contains("is still stopping"),
        "{lingering}\n{}",
        master.dump()
    );
    // The starting one gets its advice; then a line the driver writes after any advice of the
    // same round.
    master.wait_for_stderr(" is not seen accepting after 5.00s");
    master.signal(Signal::SIGTTIN);
    master.wait_for_stderr("mcluster: resizing to 2 workers");
    let unseen: Vec<String> = master
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("not seen accepting") || l.contains("is not ready after"))
        .collect();
    assert!(
        unseen.iter().all(|l| l.starts_with("mcluster: w0 ")),
        "{unseen:?}\n{}",
        master.dump()
    );
}

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

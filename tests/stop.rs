//! Stopping: graceful (INT, TERM), hard (second INT, QUIT), the kill timeout, the stop signal,
//! and SIGKILL of the master itself.

use std::os::unix::process::ExitStatusExt;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::net::{is_refused, receive, send, wait_accepted};
use crate::support::process::children_of;
use crate::support::script::quote;
use crate::support::{Master, Reply, Script, echo, fixture, pids, python3};

/// Far below the kill timeout the graceful tests set (60 s): a master that waited for it fails.
const PROMPT: Duration = Duration::from_secs(20);

/// Guarantee 5: the stop signal, in-flight work finishes, the master exits as soon as the
/// workers have, with status 0.
#[track_caller]
fn stops_gracefully_on(signal: Signal) {
    let (mut master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2", "--kill-timeout", "60s"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    let port = master.port();
    let in_flight = send(port, "sleep 1500").unwrap();
    wait_accepted(&in_flight);
    let reply = thread::spawn(move || (receive(in_flight), Instant::now()));

    master.signal(signal);
    master.wait_for_stderr("mcluster: stopping 2 workers");
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    let exited = Instant::now();

    let (reply, answered) = reply.join().unwrap();
    let reply = reply.expect("the in-flight request is answered");
    // The master returns once its workers are done, not at the kill timeout.
    assert!(exited - answered < PROMPT, "{:?}", exited - answered);
    let reply = Reply::parse(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(reply.echo, "sleep 1500");
    assert!(pids(&workers).contains(&reply.pid));

    let lines = master.stderr_lines();
    assert!(
        lines.iter().any(|l| l == "mcluster: stopped"),
        "{}",
        master.dump()
    );
    assert!(
        !lines.iter().any(|l| l.contains("workers hard")),
        "{}",
        master.dump()
    );
    assert!(is_refused(port), "port {port} still open after the stop");
}

#[test]
fn sigint_stops_gracefully() {
    stops_gracefully_on(Signal::SIGINT);
}

#[test]
fn sigterm_stops_gracefully() {
    stops_gracefully_on(Signal::SIGTERM);
}

/// Guarantee 5: a worker that ignores the stop signal gets SIGKILL after the kill timeout, and
/// the master exits right then.
#[test]
fn worker_ignoring_term_is_killed_after_the_kill_timeout() {
    let (mut master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2", "--kill-timeout", "500ms"],
        fixture("fixture-ignore-term"),
        &[],
        2,
    );
    let start = Instant::now();
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500),
        "killed before the timeout: {elapsed:?}"
    );
    assert!(elapsed < PROMPT, "{elapsed:?}");
    for worker in &workers {
        master.wait_dead(worker.pid);
    }
}

/// The master of workers that will not stop, stopped hard by `signals` (sent once each master
/// has shown it got the previous one): SIGKILL at once, exit status 1.
#[track_caller]
fn stops_hard_on(signals: &[Signal]) {
    let (mut master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2", "--kill-timeout", "60s"],
        fixture("fixture-ignore-term"),
        &[],
        2,
    );
    let start = Instant::now();
    let (last, first) = signals.split_last().unwrap();
    for &signal in first {
        let mark = master.stderr_mark();
        master.signal(signal);
        master.wait_for_stderr_after(mark, "mcluster: stopping 2 workers");
    }
    master.signal(*last);
    assert_eq!(master.wait_exit_code(), 1, "{}", master.dump());
    assert!(start.elapsed() < PROMPT, "{:?}", start.elapsed());
    assert!(
        master
            .stderr_lines()
            .iter()
            .any(|l| l == "mcluster: stopping 2 workers hard"),
        "{}",
        master.dump()
    );
    for worker in &workers {
        master.wait_dead(worker.pid);
    }
}

#[test]
fn second_sigint_stops_hard() {
    stops_hard_on(&[Signal::SIGINT, Signal::SIGINT]);
}

#[test]
fn sigquit_stops_hard() {
    stops_hard_on(&[Signal::SIGQUIT]);
}

#[test]
fn stop_signal_option_chooses_the_signal() {
    let script = Script::new(
        "trap 'echo \"stub: got USR1\"; exit 0' USR1\n\
         while :; do sleep 0.1; done",
    );
    let (mut master, _) = Master::start_ready(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            "1",
            "--ready-delay",
            "200ms",
            "--stop-signal",
            "USR1",
            "--kill-timeout",
            "60s",
        ],
        "/bin/sh",
        &[script.arg()],
        1,
    );
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    assert!(
        master
            .stdout_lines()
            .iter()
            .any(|l| l == "[w0·g1] stub: got USR1"),
        "{}",
        master.dump()
    );
}

/// Guarantee 6: SIGKILL of the master takes its workers with it and frees the port.
#[test]
fn sigkill_of_the_master_takes_the_workers_and_the_port() {
    let (mut master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    let port = master.port();
    echo(port, "alive");

    master.signal(Signal::SIGKILL);
    // Waiting for the exit also waits for the master's pipes to close, which the workers hold.
    let status = master.wait_exit();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    for worker in &workers {
        master.wait_dead(worker.pid);
    }
    assert!(
        is_refused(port),
        "port {port} still open with the master dead"
    );
}

/// A stopping worker that is still alive 2 s after the stop signal is said so, once: which
/// worker, that it has an open connection, when SIGKILL comes, and that a second Ctrl-C forces
/// it; the SIGKILL line names it with its generation.
#[test]
fn a_lingering_worker_is_reported_and_its_sigkill_names_it() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1", "--kill-timeout", "4s"],
        fixture("fixture-echo"),
        &[],
        1,
    );
    let port = master.port();
    // In-flight work longer than the kill timeout.
    let held = send(port, "sleep 60000").unwrap();
    wait_accepted(&held);
    master.signal(Signal::SIGINT);
    let pid = workers[0].pid;
    let lingering = master.wait_for_stderr(&format!(
        "mcluster: w0 (pid {pid}, generation 1) is still stopping 2.00s after the stop signal"
    ));
    assert!(
        lingering.contains(" with 1 open connection; SIGKILL in ")
            && lingering.ends_with(" (Ctrl-C again to kill it now)"),
        "{lingering}"
    );
    master.wait_for_stderr(&format!(
        "mcluster: w0 (pid {pid}, generation 1) did not stop within 4.00s; sending SIGKILL"
    ));
    drop(held);
}

/// Makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`, kept across exec) and execs the
/// rest of its command line: the master then adopts its workers' orphans and, not being PID 1,
/// never reaps them — as under a parent that does not reap (an init, a container's shell).
const NON_REAPING_SUBREAPER: &str = "import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit('prctl(PR_SET_CHILD_SUBREAPER): ' + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])";

/// Issue 16, item 3: a hard stop ends though a killed worker's group leaves a zombie nobody
/// reaps (the app behind a shell wrapper, orphaned to the master that does not reap it).
#[test]
fn a_hard_stop_ends_though_a_killed_group_leaves_a_zombie_nobody_reaps() {
    let script = Script::new(&format!("{} &\nwait", quote(&fixture("fixture-echo"))));
    let mut master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1", "--kill-timeout", "60s"],
        "/bin/sh",
        &[script.arg()],
    )
    .via(python3(), &["-c", NON_REAPING_SUBREAPER])
    .start();
    let workers = master.wait_ready(1);
    let app = children_of(workers[0].pid);
    assert_eq!(app.len(), 1, "{}", master.dump());
    let start = Instant::now();
    master.signal(Signal::SIGQUIT);
    // The app's zombie is the master's child now, and no one reaps it (for as long as the
    // master lives: not waited for here, it may be gone).
    assert_eq!(master.wait_exit_code(), 1, "{}", master.dump());
    assert!(start.elapsed() < PROMPT, "{:?}", start.elapsed());
}

/// Issue 16, item 3: a graceful stop does not wait its kill timeout for a group whose only
/// process left is a zombie nobody reaps: a group of zombies is gone.
#[test]
fn a_graceful_stop_ends_though_a_stopped_group_leaves_a_zombie_nobody_reaps() {
    // The app's parent (the leader) and the app end together at the stop signal; either way
    // the app's zombie ends with the master, which does not reap it.
    let script = Script::new(&format!(
        "{} &\nexec sleep 1000",
        quote(&fixture("fixture-echo"))
    ));
    // A kill timeout longer than any wait of the harness: were the zombie waited for, the
    // master would not exit in time.
    let mut master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1", "--kill-timeout", "60m"],
        "/bin/sh",
        &[script.arg()],
    )
    .via(python3(), &["-c", NON_REAPING_SUBREAPER])
    .start();
    let workers = master.wait_ready(1);
    let app = children_of(workers[0].pid);
    assert_eq!(app.len(), 1, "{}", master.dump());
    master.signal(Signal::SIGTERM);
    // (The zombie lasts only as long as the master: not waited for here, it may be gone.)
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    assert!(
        !master.stderr_lines().iter().any(|l| l.contains("SIGKILL")),
        "{}",
        master.dump()
    );
}

/// Issue 21's `podman stop` under load, and guarantee 1 at a stop: the listeners refuse new
/// connections from the stop signal on, and each worker gets its own only once drained, so a
/// worker that dies at once on SIGTERM (Python's `http.server`) fails no request it was sent:
/// a client is either answered or never connected (refused, which it can retry elsewhere).
#[test]
fn a_graceful_stop_under_load_fails_no_request_a_worker_was_sent() {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    // The clients stop even when the test fails.
    struct StopFlag(Arc<AtomicBool>);
    impl Drop for StopFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let script = crate::support::naive_http_py();
    let mut master = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        python3(),
        &[script.to_str().unwrap()],
        2,
    )
    .0;
    let port = master.port();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, answered, failures) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&failures),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        // Refused: the master is gone or going; nothing was sent.
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    let mut reply = String::new();
                    let outcome = stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .and_then(|()| stream.read_to_string(&mut reply));
                    match outcome {
                        Ok(_) if reply.starts_with("HTTP/1.1 200") => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => failures.lock().unwrap().push(format!("{reply:?}")),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    let _stop = StopFlag(Arc::clone(&stop));
    master.wait_until("the load to be answered", || {
        answered.load(Ordering::SeqCst) >= 200
    });
    master.signal(Signal::SIGTERM);
    let status = master.wait_exit();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert!(status.success(), "{status:?}\n{}", master.dump());
    assert_eq!(
        *failures.lock().unwrap(),
        Vec::<String>::new(),
        "{}",
        master.dump()
    );
}

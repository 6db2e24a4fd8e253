//! The readiness probe behind `--ready auto`, on real apps under a real master: each app gets
//! the master's listener at fd 3, never sends `READY=1`, and the master's ready line says how it
//! was seen accepting (blocked in `accept`, in epoll, polling) — or, for an app that holds its
//! listener without accepting, that it was never seen, and why. (`mcluster start`'s own test of
//! the common cases is in `start`; these are the ways of waiting a probe must tell apart.)

use std::ffi::OsStr;
use std::path::Path;

use crate::support::{Master, fixture, python3};

/// The options every app here runs under: one worker on a fresh port, readiness seen.
const OPTIONS: [&str; 4] = ["-l", "127.0.0.1:0", "-n", "1"];

/// How the master saw `program args…` accepting: the end of its ready line.
#[track_caller]
fn seen(program: impl AsRef<OsStr>, args: &[&str]) -> String {
    let master = Master::builder(&OPTIONS, program, args).start();
    let line = master.wait_for_stderr("mcluster: w0 ready (pid ");
    let (_, how) = line
        .split_once("generation 1): ")
        .unwrap_or_else(|| panic!("no generation in {line:?}\n{}", master.dump()));
    how.to_owned()
}

/// `program args…` says `says` once it holds its listener the way it means to, and the master
/// never calls it ready: it tells, after its wait, that the app was not seen accepting.
#[track_caller]
fn never_seen(program: impl AsRef<OsStr>, args: &[&str], says: &str) {
    let master = Master::builder(&OPTIONS, program, args).start();
    master.wait_for_stdout(says);
    let hint = master.wait_for_stderr(" is not seen accepting after ");
    assert!(hint.contains("--ready-delay"), "{hint}");
    assert!(
        !master
            .stderr_lines()
            .iter()
            .any(|line| line.contains(" ready (pid ")),
        "called ready:\n{}",
        master.dump()
    );
}

/// `fixtures/workers/python_listener.py MODE`.
fn python_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/workers/python_listener.py")
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_blocking_accept_loop_is_seen_blocked_in_accept() {
    assert_eq!(
        seen(fixture("fixture-accept"), &["block"]),
        "seen blocked in accept"
    );
}

#[test]
fn a_tokio_accept_loop_is_seen_in_epoll() {
    assert_eq!(
        seen(fixture("fixture-tokio-accept"), &[]),
        "seen accepting (epoll)"
    );
}

/// The probe knows the listener by its socket, not by the fd number it was given at.
#[test]
fn a_listener_moved_to_another_fd_is_still_seen() {
    let master = Master::builder(&OPTIONS, fixture("fixture-accept"), &["dup"]).start();
    let moved = master.wait_for_stdout("accepting on fd ");
    assert!(!moved.ends_with("accepting on fd 3"), "{moved}");
    let line = master.wait_for_stderr("mcluster: w0 ready (pid ");
    assert!(line.ends_with("): seen blocked in accept"), "{line}");
}

#[test]
fn a_worker_holding_its_listener_without_accepting_is_never_seen() {
    never_seen(fixture("fixture-accept"), &["hold"], "holding");
}

#[test]
fn a_python_asyncio_server_is_seen_in_epoll() {
    assert_eq!(
        seen(python3(), &[&python_script(), "asyncio"]),
        "seen accepting (epoll)"
    );
}

#[test]
fn a_python_socketserver_is_seen_polling() {
    assert_eq!(
        seen(python3(), &[&python_script(), "socketserver"]),
        "seen accepting (poll)"
    );
}

#[test]
fn a_select_loop_is_seen_polling() {
    assert_eq!(
        seen(python3(), &[&python_script(), "select"]),
        "seen accepting (poll)"
    );
}

#[test]
fn a_poll_for_output_only_is_no_sign() {
    never_seen(python3(), &[&python_script(), "pollout"], "polling");
}

#[test]
fn an_epoll_registration_for_output_only_is_no_sign() {
    never_seen(python3(), &[&python_script(), "epollout"], "registered");
}

/// The shell holds the listener too, but only waits for its child: the worker is its process
/// group, and the app in it is what is seen.
#[test]
fn an_app_behind_a_shell_wrapper_is_seen_through_its_process_group() {
    let accept = fixture("fixture-accept");
    // LISTEN_PID names the shell: unset, it lets the app take the fds (as in the `tree` tests).
    assert_eq!(
        seen(
            "sh",
            &[
                "-c",
                r#"unset LISTEN_PID; "$0" block; exit"#,
                accept.to_str().unwrap(),
            ],
        ),
        "seen blocked in accept"
    );
}

/// A replacement stopped by SIGSTOP was said to "accept in a way mcluster cannot see": the
/// master says it is stopped, and what it needs.
#[test]
fn a_stopped_replacement_is_reported_as_stopped() {
    use crate::support::Script;
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

//! The master as a systemd service: its own notify messages (`Type=notify`), and socket
//! activation (its listening socket bound by its parent, as systemd or `systemfd` do).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::support::net::is_refused;
use crate::support::process::DEADLINE;
use crate::support::script::{exec_line, quote};
use crate::support::systemd::{ListenPid, ManagerSocket, Message, start_activated};
use crate::support::{Master, Script, echo, echo_pid, fixture, pids, wait_served_by};

/// The next message to the service manager, which must come from the master itself (systemd's
/// default `NotifyAccess=main` ignores any other sender).
#[track_caller]
fn next_message(manager: &ManagerSocket, master: &Master) -> Message {
    let message = manager.recv().unwrap_or_else(|| {
        panic!(
            "no message on the master's NOTIFY_SOCKET within {DEADLINE:?}\n{}",
            master.dump()
        )
    });
    assert_eq!(
        message.pid,
        master.pid(),
        "{message:?} was not sent by the master\n{}",
        master.dump()
    );
    message
}

/// Checks that no message has reached the service manager so far.
#[track_caller]
fn assert_no_message(manager: &ManagerSocket, master: &Master, when: &str) {
    if let Some(message) = manager.try_recv() {
        panic!("{message:?} {when}\n{}", master.dump());
    }
}

/// A print-env line, `pid=… KEY=VALUE …` without its `[w<slot>] ` prefix, as a map.
fn env_map(report: &str) -> BTreeMap<String, String> {
    report
        .split(' ')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("{report:?}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// Every print-env report on the master's stdout so far, as maps.
fn env_reports(lines: &[String]) -> Vec<BTreeMap<String, String>> {
    lines
        .iter()
        .filter_map(|line| line.split_once("] pid=").map(|(_, rest)| rest))
        .map(|rest| env_map(&format!("pid={rest}")))
        .collect()
}

/// Workers that each wait for their gate file (`gate-<generation>-<slot>`) before becoming the
/// print-env fixture, which then says `READY=1`: with `--ready notify`, the test decides when
/// each worker becomes ready.
fn gated_print_env(gates: &Path) -> Script {
    Script::new(&format!(
        "gate={}/gate-$MCLUSTER_GENERATION-$MCLUSTER_WORKER_ID\n\
         echo \"waiting at gate-$MCLUSTER_GENERATION-$MCLUSTER_WORKER_ID\"\n\
         while [ ! -e \"$gate\" ]; do sleep 0.01; done\n\
         {}",
        quote(gates),
        exec_line(&fixture("fixture-print-env")),
    ))
}

#[test]
fn master_tells_its_service_manager_ready_reloading_and_stopping() {
    let manager = ManagerSocket::bind();
    let gates = TempDir::new().unwrap();
    let open = |generation: u64, slot: usize| {
        fs::write(gates.path().join(format!("gate-{generation}-{slot}")), "").unwrap();
    };
    let script = gated_print_env(gates.path());
    let mut master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "2", "--ready", "notify"],
        "/bin/sh",
        &[script.arg()],
    )
    .env("NOTIFY_SOCKET", manager.path())
    .start();

    // Not ready while the first generation is not: none of it, then half of it.
    master.wait_for_stdout("[w0·g1] waiting at gate-1-0");
    master.wait_for_stdout("[w1·g1] waiting at gate-1-1");
    assert_no_message(&manager, &master, "before any worker was ready");
    open(1, 0);
    master.wait_for_stderr("mcluster: w0 ready (pid ");
    assert_no_message(&manager, &master, "with 1 of 2 workers ready");
    open(1, 1);
    let ready = next_message(&manager, &master);
    assert!(ready.has("READY=1"), "{ready:?}\n{}", master.dump());
    // (It prints this line before it sends READY=1, so the line is there or on its way.)
    master.wait_for_stderr("mcluster: all 2 workers ready in ");

    // A roll: RELOADING=1 at once, READY=1 only when the last replacement is ready.
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    let reloading = next_message(&manager, &master);
    assert!(
        reloading.has("RELOADING=1") && !reloading.has("READY=1"),
        "{reloading:?}\n{}",
        master.dump()
    );
    // Type=notify-reload wants the CLOCK_MONOTONIC time of the reload request with it.
    let monotonic = reloading
        .text
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|usec| usec.parse::<u64>().ok());
    assert!(monotonic.is_some_and(|usec| usec > 0), "{reloading:?}");
    master.wait_for_stdout("[w0·g2] waiting at gate-2-0");
    assert_no_message(
        &manager,
        &master,
        "while the first replacement was not ready",
    );
    open(2, 0);
    master.wait_for_stderr_after(mark, "mcluster: w0 ready (pid ");
    master.wait_for_stdout("[w1·g2] waiting at gate-2-1");
    assert_no_message(&manager, &master, "with 1 of 2 replacements ready");
    open(2, 1);
    let ready = next_message(&manager, &master);
    assert!(ready.has("READY=1"), "{ready:?}\n{}", master.dump());
    master.wait_for_stderr_after(mark, "mcluster: rolled 2 workers to generation 2 in ");

    // The workers never saw the master's NOTIFY_SOCKET: each has its own.
    // (A worker's stdout is relayed apart from its READY=1: its line may come after its ready.)
    master.wait_until("a report from each of the 4 workers", || {
        env_reports(&master.stdout_lines()).len() == 4
    });
    let reports = env_reports(&master.stdout_lines());
    let ours = manager.path().to_str().unwrap();
    for generation in ["1", "2"] {
        let sockets: BTreeSet<&str> = reports
            .iter()
            .filter(|env| env["MCLUSTER_GENERATION"] == generation)
            .map(|env| env["NOTIFY_SOCKET"].as_str())
            .collect();
        assert_eq!(sockets.len(), 2, "{reports:?}");
        assert!(
            !sockets.contains(ours) && !sockets.contains("-"),
            "{sockets:?}, the master's is {ours}"
        );
    }

    // A graceful stop: STOPPING=1, and nothing after it.
    master.signal(Signal::SIGTERM);
    let stopping = next_message(&manager, &master);
    assert!(
        stopping.has("STOPPING=1"),
        "{stopping:?}\n{}",
        master.dump()
    );
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    assert_no_message(&manager, &master, "after STOPPING=1");
}

/// The master started on a socket its parent bound, with `LISTEN_FDS=1` and no `--listen`:
/// it serves on that socket only, and passes it on under the parent's name for it.
#[track_caller]
fn serves_on_the_inherited_socket(listen_pid: ListenPid, names: Option<&str>, name: &str) {
    // What the workers see.
    let (mut master, port) = start_activated(
        listen_pid,
        names,
        &["-n", "2"],
        fixture("fixture-print-env"),
        &[],
    );
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let listening: Vec<String> = master
        .stderr_lines()
        .into_iter()
        .filter(|line| line.starts_with("mcluster: listening on "))
        .collect();
    assert_eq!(
        listening,
        [format!(
            "mcluster: listening on 127.0.0.1:{port} (inherited) (master pid {})",
            master.pid()
        )],
        "{}",
        master.dump()
    );
    let ready = pids(&master.ready_workers());
    assert_eq!(ready.len(), 2, "{}", master.dump());
    for pid in ready {
        let line = master.wait_for_stdout(&format!("] pid={pid} "));
        let env = env_map(line.split_once("] ").unwrap().1);
        let context = format!("{env:?}\n{}", master.dump());
        assert_eq!(env["LISTEN_PID"], pid.to_string(), "{context}");
        assert_eq!(env["LISTEN_FDS"], "1", "{context}");
        assert_eq!(env["LISTEN_FDNAMES"], name, "{context}");
        assert_eq!(env["fd3"], "tcp", "{context}");
    }
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());

    // The workers answer on it.
    let (mut master, port) = start_activated(
        listen_pid,
        names,
        &["-n", "2"],
        fixture("fixture-echo"),
        &[],
    );
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    master.wait_for_stderr(&format!(
        "mcluster: listening on 127.0.0.1:{port} (inherited)"
    ));
    wait_served_by(port, &pids(&master.ready_workers()), echo_pid);
    assert_eq!(echo(port, "activated").generation, 1);
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    assert!(is_refused(port), "port {port} still open after the stop");
}

/// `systemfd --no-pid`: `LISTEN_FDS` without `LISTEN_PID` or names.
#[test]
fn socket_activated_without_listen_pid() {
    serves_on_the_inherited_socket(ListenPid::Unset, None, "unknown");
}

/// systemd: `LISTEN_PID` is the master's pid, and the socket is named.
#[test]
fn socket_activated_with_listen_pid_and_name() {
    serves_on_the_inherited_socket(ListenPid::Own, Some("web"), "web");
}

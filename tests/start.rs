//! Starting a cluster: the workers share the master's sockets and get the promised environment.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempDir;

use crate::support::net::request_unix;
use crate::support::process::{children_of, stat};
use crate::support::{
    Master, Reply, Script, echo, echo_pid, fixture, is_alive, pids, python3, request,
    strict_listen_pid_py, wait_served_by,
};

#[test]
fn workers_share_one_port_with_distinct_pids() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "3"],
        fixture("fixture-echo"),
        &[],
        3,
    );
    let port = master.port();

    let slots: Vec<usize> = workers.iter().map(|w| w.slot).collect();
    assert_eq!(slots, [0, 1, 2]);
    let distinct: BTreeSet<i32> = pids(&workers).into_iter().collect();
    assert_eq!(distinct.len(), 3, "{workers:?}");
    assert!(workers.iter().all(|w| is_alive(w.pid)));

    // The socket is bound before any worker starts.
    let lines = master.stderr_lines();
    let listening = lines
        .iter()
        .position(|l| l.starts_with("mcluster: listening on 127.0.0.1:"));
    let first_ready = lines.iter().position(|l| l.contains(" ready (pid "));
    assert!(listening < first_ready, "{}", master.dump());

    // Every worker answers on the one port, and says who it is.
    wait_served_by(port, &pids(&workers), echo_pid);
    for _ in 0..10 {
        let reply = echo(port, "hello");
        let worker = workers.iter().find(|w| w.pid == reply.pid).unwrap();
        assert_eq!(
            (reply.generation, reply.slot),
            (1, worker.slot),
            "{reply:?}"
        );
    }
}

/// One line of the print-env fixture, `[w<slot>] pid=… KEY=VALUE …`, as a map.
fn env_report(master: &Master, slot: usize) -> BTreeMap<String, String> {
    let line = master.wait_for_stdout(&format!("[w{slot}·g1] pid="));
    line[format!("[w{slot}·g1] ").len()..]
        .split(' ')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn workers_get_the_socket_passing_environment() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2", "-e", "EXTRA=from-flag"],
        fixture("fixture-print-env"),
        &[],
        2,
    );
    let mut notify_sockets = BTreeSet::new();
    for worker in &workers {
        let env = env_report(&master, worker.slot);
        let pid = worker.pid.to_string();
        let context = format!("w{}: {env:?}", worker.slot);
        assert_eq!(env["pid"], pid, "{context}");
        // Strict consumers (sd_listen_fds) ignore the fds unless LISTEN_PID is their own pid.
        assert_eq!(env["LISTEN_PID"], pid, "{context}");
        assert_eq!(env["LISTEN_FDS"], "1", "{context}");
        assert_eq!(env["LISTEN_FDNAMES"], "unknown", "{context}");
        assert_eq!(env["fd3"], "tcp", "{context}");
        assert_eq!(
            env["MCLUSTER_WORKER_ID"],
            worker.slot.to_string(),
            "{context}"
        );
        assert_eq!(env["MCLUSTER_GENERATION"], "1", "{context}");
        assert_eq!(env["MCLUSTER_WORKERS"], "2", "{context}");
        assert_eq!(env["EXTRA"], "from-flag", "{context}");

        // No signal blocked. (Its `SigIgn` says nothing of what it inherited: a Rust program
        // ignores SIGPIPE itself before `main`; see the shell worker below.)
        let blocked = u64::from_str_radix(&env["SigBlk"], 16).unwrap();
        assert_eq!(blocked, 0, "{context}");

        // Its own process group, so a terminal's Ctrl-C reaches only the master.
        assert_eq!(env["pgid_is_pid"], "true", "{context}");
        assert_eq!(stat(worker.pid).unwrap().pgrp, worker.pid, "{context}");

        // A notify socket of its own, in a private directory.
        let notify = &env["NOTIFY_SOCKET"];
        assert_ne!(notify, "-", "{context}");
        assert!(
            notify_sockets.insert(notify.clone()),
            "shared NOTIFY_SOCKET; {context}"
        );
        if !notify.starts_with('@') {
            let dir = Path::new(notify).parent().unwrap();
            let mode = dir.metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", dir.display());
        }
    }
}

/// The master (a Rust program) ignores SIGPIPE and handles signals; its workers must start with
/// an empty signal mask and SIGPIPE at its default. A shell keeps what it inherits, so it tells.
#[test]
fn workers_start_with_default_signal_dispositions() {
    let script = Script::new(
        "grep -E '^Sig(Blk|Ign):' /proc/$$/status | tr -d ' \\t'\n\
         while :; do sleep 1; done",
    );
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1", "--ready-delay", "200ms"],
        "/bin/sh",
        &[script.arg()],
        1,
    );
    let mask = |field: &str| {
        let line = master.wait_for_stdout(&format!("[w0·g1] {field}:"));
        let hex = line.rsplit_once(':').unwrap().1;
        u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{line:?}"))
    };
    assert_eq!(mask("SigBlk"), 0, "{}", master.dump());
    // SIGPIPE is signal 13: bit 12.
    assert_eq!(
        mask("SigIgn") & (1 << 12),
        0,
        "SIGPIPE ignored\n{}",
        master.dump()
    );
}

#[test]
fn master_environment_is_passed_through() {
    let master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1"],
        fixture("fixture-print-env"),
        &[],
    )
    .env("EXTRA", "from-master")
    .start();
    master.wait_ready(1);
    assert_eq!(env_report(&master, 0)["EXTRA"], "from-master");
}

#[test]
fn listenfd_app_works_with_auto_readiness() {
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2", "--ready-delay", "200ms"],
        fixture("fixture-listenfd"),
        &[],
        2,
    );
    wait_served_by(master.port(), &pids(&workers), |reply| {
        reply
            .strip_prefix("listenfd pid=")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
    });
}

#[test]
fn strict_listen_pid_python_app_works() {
    let script = strict_listen_pid_py();
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2", "--ready-delay", "200ms"],
        python3(),
        &[script.to_str().unwrap()],
        2,
    );
    wait_served_by(master.port(), &pids(&workers), |reply| {
        reply
            .strip_prefix("python pid=")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
    });
    assert!(
        !master
            .stderr_lines()
            .iter()
            .any(|l| l.contains("strict-listen-pid:")),
        "{}",
        master.dump()
    );
}

#[test]
fn unix_listener_serves() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("echo.sock");
    let listen = format!("unix:{}", path.display());
    let (master, workers) =
        Master::start_ready(&["-l", &listen, "-n", "2"], fixture("fixture-echo"), &[], 2);
    assert_eq!(master.listening(1), [listen]);

    for _ in 0..5 {
        let reply = request_unix(&path, "over unix");
        let reply = Reply::parse(&reply).unwrap_or_else(|| panic!("{reply:?}"));
        assert_eq!(reply.echo, "over unix");
        assert!(pids(&workers).contains(&reply.pid), "{reply:?} {workers:?}");
    }
}

#[test]
fn named_listeners_are_passed_in_order() {
    let options = [
        "-l",
        "web=127.0.0.1:0",
        "-l",
        "admin=127.0.0.1:0",
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
    ];
    let (master, _) = Master::start_ready(&options, fixture("fixture-print-env"), &[], 1);
    assert_eq!(master.listening(3).len(), 3);
    let env = env_report(&master, 0);
    assert_eq!(env["LISTEN_FDS"], "3", "{env:?}");
    assert_eq!(env["LISTEN_FDNAMES"], "web:admin:unknown", "{env:?}");
    assert_eq!(env["fd3"], "tcp", "{env:?}");
}

#[test]
fn worker_serves_every_listener() {
    let options = ["-l", "a=127.0.0.1:0", "-l", "b=127.0.0.1:0", "-n", "1"];
    let (master, workers) = Master::start_ready(&options, fixture("fixture-echo"), &[], 1);
    let ports: Vec<u16> = master
        .listening(2)
        .iter()
        .map(|addr| addr.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    assert_ne!(ports[0], ports[1]);
    for port in ports {
        let reply = request(port, "which");
        assert_eq!(echo_pid(&reply), workers[0].pid, "port {port}: {reply:?}");
    }
}

#[test]
fn as_pid_one_the_master_reaps_orphans() {
    // In a PID namespace of its own the master is PID 1, as in a container: a process orphaned
    // there becomes its child, and only the master can reap it.
    let script = Script::new(&format!(
        "(sleep 1 &)\n{}",
        crate::support::script::exec_line(&fixture("fixture-echo"))
    ));
    let unshare = ["--pid", "--fork", "--mount-proc", "--kill-child"];
    let master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1"],
        "/bin/sh",
        &[script.arg()],
    )
    .via("unshare", &unshare)
    .start();
    master.wait_ready(1);
    let unshare_pid = master.pid();
    let mut pid_one = 0;
    master.wait_until("the master to run as a child of unshare", || {
        pid_one = children_of(unshare_pid).first().copied().unwrap_or(0);
        pid_one != 0
    });
    let mut orphan = 0;
    master.wait_until("the orphaned sleep to become the master's child", || {
        orphan = children_of(pid_one)
            .into_iter()
            .find(|&pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
            })
            .unwrap_or(0);
        orphan != 0
    });
    // Once the sleep exits, a master that did not reap it would leave a zombie in /proc.
    master.wait_until("the orphan to be reaped, not left a zombie", || {
        stat(orphan).is_none()
    });
}

/// `--ready auto` without `--ready-delay`: a worker that never sends `READY=1` is ready when the
/// master sees it accepting, and the log says how; one that holds its listener but never
/// accepts is never called ready, and is told why after a while.
#[test]
fn auto_readiness_sees_unmodified_apps_accepting() {
    for (program, args, how) in [
        (
            fixture("fixture-accept"),
            vec!["block"],
            "seen blocked in accept",
        ),
        (
            fixture("fixture-tokio-accept"),
            vec![],
            "seen accepting (epoll)",
        ),
        (fixture("fixture-echo"), vec![], "seen accepting (poll)"),
    ] {
        let master = Master::builder(&["-l", "127.0.0.1:0", "-n", "1"], &program, &args)
            .env("ECHO_NO_READY", "1")
            .start();
        let line = master.wait_for_stderr("mcluster: w0 ready (pid ");
        assert!(line.ends_with(&format!("generation 1): {how}")), "{line}");
    }
    let master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1"],
        fixture("fixture-accept"),
        &["hold"],
    )
    .start();
    let hint = master.wait_for_stderr(" is not seen accepting after 5.00s and sent no READY=1;");
    assert!(hint.contains("--ready-delay"), "{hint}");
    assert!(
        !master
            .stderr_lines()
            .iter()
            .any(|l| l.contains(" ready (pid ")),
        "{}",
        master.dump()
    );
}

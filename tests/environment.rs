//! What a worker's environment holds beyond the socket-passing contract (`start` checks that):
//! `--env` pairs once each, and nothing of the master's own service manager. And the line that
//! tells the user which process is the master.

use std::fs;

use crate::support::{Master, echo, fixture};

/// The environment of a live process, from `/proc/<pid>/environ`, every entry in order
/// (duplicates included: what C's `getenv` and Python's `os.environ` disagree on).
fn environ(pid: i32) -> Vec<(String, String)> {
    let raw = fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("read the environment of {pid}: {e}"));
    raw.split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=').unwrap_or((&entry, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// The entries of `env` this module is about, for failure messages.
fn relevant(env: &[(String, String)]) -> Vec<&(String, String)> {
    env.iter()
        .filter(|(key, _)| {
            [
                "LISTEN_",
                "NOTIFY_",
                "WATCHDOG_",
                "MCLUSTER_",
                "SYSTEMD_",
                "JOURNAL_",
            ]
            .iter()
            .any(|prefix| key.starts_with(prefix))
                || ["FDSTORE", "INVOCATION_ID", "EXTRA", "OTHER"].contains(&key.as_str())
        })
        .collect()
}

/// The values of `key` in `env`, in order.
fn values<'a>(env: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    env.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn a_repeated_env_key_is_one_entry_with_its_last_value() {
    let (master, workers) = Master::start_ready(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            "1",
            "-e",
            "EXTRA=first",
            "-e",
            "OTHER=kept",
            "-e",
            "EXTRA=last",
        ],
        fixture("fixture-print-env"),
        &[],
        1,
    );
    let env = environ(workers[0].pid);
    let context = format!("{:?}\n{}", relevant(&env), master.dump());
    assert_eq!(values(&env, "EXTRA"), ["last"], "{context}");
    assert_eq!(values(&env, "OTHER"), ["kept"], "{context}");
    // What the worker itself reads.
    let line = master.wait_for_stdout("[w0·g1] pid=");
    assert!(line.ends_with(" EXTRA=last"), "{line:?}\n{context}");
}

/// Under systemd with `WatchdogSec=`, the master gets `WATCHDOG_PID` (its own pid) and
/// `WATCHDOG_USEC`. A worker that saw them would find a pid not its own and ignore its watchdog,
/// and with `--watchdog` be replaced every period. The other variables of the master's service
/// manager name the master's pid, fds or stderr: none of them reaches a worker.
#[test]
fn the_masters_service_manager_variables_never_reach_a_worker() {
    let master_manager = [
        ("WATCHDOG_PID", std::process::id().to_string()),
        ("WATCHDOG_USEC", "123456789".to_owned()),
        ("SYSTEMD_EXEC_PID", std::process::id().to_string()),
        ("JOURNAL_STREAM", "8:12345".to_owned()),
        ("FDSTORE", "16".to_owned()),
        ("INVOCATION_ID", "0123456789abcdef".to_owned()),
    ];
    let mut builder = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1", "--watchdog", "1s"],
        fixture("fixture-echo"),
        &[],
    );
    for (key, value) in &master_manager {
        builder = builder.env(key, value);
    }
    let master = builder.start();
    let workers = master.wait_ready(1);
    let pid = workers[0].pid;
    let env = environ(pid);
    let context = format!("{:?}\n{}", relevant(&env), master.dump());
    assert_eq!(values(&env, "WATCHDOG_USEC"), ["1000000"], "{context}");
    for key in [
        "WATCHDOG_PID",
        "SYSTEMD_EXEC_PID",
        "JOURNAL_STREAM",
        "FDSTORE",
    ] {
        assert_eq!(values(&env, key), Vec::<&str>::new(), "{key}: {context}");
    }
    // What is the whole service's, not the master's process's, is passed on.
    assert_eq!(
        values(&env, "INVOCATION_ID"),
        ["0123456789abcdef"],
        "{context}"
    );

    // The worker pings (four times a second) and is never replaced: six pings span one and a
    // half watchdog periods.
    let port = master.port();
    master.wait_for_stderr("[w0·g1] echo: watchdog ping 6");
    assert!(
        !master
            .stderr_lines()
            .iter()
            .any(|line| line.contains("sent no WATCHDOG=1")),
        "{}",
        master.dump()
    );
    assert_eq!(echo(port, "still").pid, pid, "{}", master.dump());
    assert_eq!(master.ready_workers().len(), 1, "{}", master.dump());
}

/// The user needs the master's pid to roll (`kill -HUP`) or resize it: the first lines give it.
#[test]
fn the_listening_lines_give_the_masters_pid() {
    let dir = tempfile::TempDir::new().unwrap();
    let unix = format!("unix:{}", dir.path().join("s.sock").display());
    let master = Master::start(
        &["-l", "127.0.0.1:0", "-l", &unix, "-n", "1"],
        fixture("fixture-echo"),
        &[],
    );
    let pid = master.pid();
    master.wait_ready(1);
    let lines: Vec<String> = master
        .stderr_lines()
        .into_iter()
        .filter(|line| line.starts_with("mcluster: listening on "))
        .collect();
    assert_eq!(lines.len(), 2, "{}", master.dump());
    assert!(
        lines[0].starts_with("mcluster: listening on 127.0.0.1:")
            && lines[0].ends_with(&format!(" (master pid {pid})")),
        "{}",
        master.dump()
    );
    assert_eq!(
        lines[1],
        format!("mcluster: listening on {unix} (master pid {pid})"),
        "{}",
        master.dump()
    );
    assert_eq!(master.listening(2)[1], unix);
}

//! Worker output: each line prefixed with the worker's slot, or hidden by `--silent`.

use nix::sys::signal::Signal;

use crate::support::{Master, fixture};

#[test]
fn worker_output_is_prefixed_with_its_slot() {
    // stderr of a worker goes to the master's stderr…
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    master.wait_for_stderr("[w0] echo: listening");
    master.wait_for_stderr("[w1] echo: listening");
    assert!(
        !master
            .stdout_lines()
            .iter()
            .any(|l| l.contains("echo: listening")),
        "{}",
        master.dump()
    );
    drop(master);

    // … and its stdout to the master's stdout.
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1"],
        fixture("fixture-print-env"),
        &[],
        1,
    );
    let line = master.wait_for_stdout(&format!("[w0] pid={} ", workers[0].pid));
    assert!(line.starts_with("[w0] pid="), "{line:?}");
    assert!(
        !master.stderr_lines().iter().any(|l| l.contains("pid=")),
        "{}",
        master.dump()
    );
}

#[test]
fn silent_hides_worker_output() {
    for program in ["fixture-echo", "fixture-print-env"] {
        let (mut master, _) = Master::start_ready(
            &["-l", "127.0.0.1:0", "-n", "2", "--silent"],
            fixture(program),
            &[],
            2,
        );
        master.signal(Signal::SIGTERM);
        assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
        // The master still speaks; the workers (which printed at start and on stop) do not.
        let stderr = master.stderr_lines();
        assert!(
            stderr.iter().any(|l| l == "mcluster: stopped"),
            "{}",
            master.dump()
        );
        assert!(
            stderr.iter().all(|l| l.starts_with("mcluster: ")),
            "{program}:\n{}",
            master.dump()
        );
        assert_eq!(master.stdout_lines(), Vec::<String>::new(), "{program}");
    }
}

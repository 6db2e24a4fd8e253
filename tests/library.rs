//! The library's master, embedded in a program of its own (`fixtures/embedded_master.rs`) that
//! drives it through a `Handle` from commands on stdin, with the master's own signal handling
//! off.

use nix::sys::signal::Signal;

use crate::support::script::exec_line;
use crate::support::{Master, MasterBuilder, Script, echo, fixture, is_alive, pids};

fn embedded(worker: &str) -> Master {
    let embedder = fixture("fixture-embedded-master");
    MasterBuilder::embedded(embedder, &[fixture(worker)]).start()
}

#[test]
fn the_handle_rolls_resizes_and_quits_and_messages_reach_the_callback() {
    let mut master = embedded("fixture-echo");
    let first = master.wait_ready(2);
    let port = master.port();
    master.wait_for_stdout("message from w0: READY=1");
    master.wait_for_stdout("message from w1: READY=1");

    master.send("restart");
    master.wait_for_stderr("mcluster: rolled 2 workers to generation 2 in ");
    assert_eq!(echo(port, "x").generation, 2, "{}", master.dump());
    for pid in pids(&first) {
        master.wait_dead(pid);
    }

    master.send("resize 3");
    master.wait_for_stderr("mcluster: resizing to 3 workers");
    master.wait_for_stderr("mcluster: w2 ready (pid ");

    master.send("quit");
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    assert!(
        master
            .stdout_lines()
            .contains(&"outcome: Stopped".to_owned()),
        "{}",
        master.dump()
    );
}

#[test]
fn quit_hard_kills_every_worker_and_reports_it() {
    let mut master = embedded("fixture-ignore-term");
    let workers = master.wait_ready(2);
    master.send("quit hard");
    assert_eq!(master.wait_exit_code(), 1, "{}", master.dump());
    assert!(
        master
            .stdout_lines()
            .contains(&"outcome: Killed".to_owned()),
        "{}",
        master.dump()
    );
    for pid in pids(&workers) {
        assert!(!is_alive(pid), "worker {pid} survived a hard quit");
    }
}

#[test]
fn with_signals_off_the_master_leaves_sighup_to_its_embedder() {
    let mut master = embedded("fixture-echo");
    let workers = master.wait_ready(2);
    // No handler of the master's: SIGHUP's default action ends the embedder, and its workers
    // die with it.
    master.signal(Signal::SIGHUP);
    let status = master.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(Signal::SIGHUP as i32),
        "{}",
        master.dump()
    );
    assert!(
        !master.stderr_lines().iter().any(|l| l.contains("rolling")),
        "{}",
        master.dump()
    );
    for pid in pids(&workers) {
        master.wait_dead(pid);
    }
}

/// The seed's restart callback: an embedder waits for a roll's outcome, and learns whether every
/// slot runs the new generation or which worker failed and how.
#[test]
fn an_embedder_waits_for_the_outcome_of_a_restart() {
    let script = crate::support::Script::new(&format!(
        "if [ \"$MCLUSTER_GENERATION\" = 3 ]; then echo 'app: bad config' >&2; exit 4; fi\n{}",
        crate::support::script::exec_line(&fixture("fixture-echo"))
    ));
    let mut master = MasterBuilder::embedded(
        fixture("fixture-embedded-master"),
        &["/bin/sh", script.arg()],
    )
    .start();
    master.wait_ready(2);
    master.send("restart wait");
    let rolled = master.wait_for_stdout("restart outcome: ");
    assert!(
        rolled.starts_with(r#"restart outcome: {"outcome":"rolled","generation":2,"#),
        "{rolled}"
    );
    let mark = master.stdout_lines().len();
    master.send("restart wait");
    master.wait_until("the second outcome", || {
        master.stdout_lines().len() > mark
            && master.stdout_lines()[mark..]
                .iter()
                .any(|l| l.starts_with("restart outcome: "))
    });
    let aborted = master.stdout_lines()[mark..]
        .iter()
        .find(|l| l.starts_with("restart outcome: "))
        .cloned()
        .unwrap();
    assert!(
        aborted.contains(r#""outcome":"aborted","generation":3"#)
            && aborted.contains("exited with status 4 before it was ready")
            && aborted.contains(r#""stderr":["app: bad config"]"#),
        "{aborted}"
    );
    master.send("resize wait 3");
    let resized = master.wait_for_stdout("resized: ");
    assert_eq!(resized, "resized: 3 workers, ready: true");
    master.send("status");
    let status = master.wait_for_stdout("status: {");
    assert!(
        status.contains(r#""serving_generation":2"#) && status.contains(r#""state":"ready""#),
        "{status}"
    );
    master.send("quit");
    assert_eq!(master.wait_exit_code(), 0);
}

/// Issue 16, item 6: every resize waiter gets an answer: one superseded by a later resize is
/// told so, with the size that won.
#[test]
fn a_superseded_resize_waiter_is_answered_with_the_size_that_won() {
    let script = Script::new(&format!(
        "if [ \"$MCLUSTER_WORKER_ID\" = 2 ]; then {}; fi\n{}",
        exec_line(&fixture("fixture-never-ready")),
        exec_line(&fixture("fixture-echo"))
    ));
    let embedder = fixture("fixture-embedded-master");
    let mut master = MasterBuilder::embedded(embedder, &["/bin/sh", script.arg()]).start();
    master.wait_ready(2);
    master.send("resize wait 3");
    master.wait_for_stderr("mcluster: resizing to 3 workers");
    master.send("resize wait 2");
    master.wait_for_stdout("resize to 3: superseded by 2");
    master.wait_for_stdout("resized: ");
    master.send("resize wait 0");
    master.wait_for_stdout("resize to 0: refused: invalid size 0");
    master.send("quit");
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
}

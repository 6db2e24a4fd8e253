//! Rolling restarts (SIGHUP): replacements first, no dropped request, aborted rolls, coalescing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nix::sys::signal::Signal;

use crate::support::load::{Load, StopOnDrop};
use crate::support::process::children_of;
use crate::support::script::exec_line;
use crate::support::{
    Master, Script, Worker, echo, echo_pid, fixture, is_alive, naive_http_py, pids, python3,
    wait_served_by,
};

/// Sends HUP and waits for the roll to generation `generation` to finish; returns its workers.
#[track_caller]
fn roll(master: &Master, size: usize, generation: u64) -> Vec<Worker> {
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    master.wait_for_stderr_after(
        mark,
        &format!("mcluster: rolling {size} workers to generation {generation}"),
    );
    master.wait_for_stderr_after(
        mark,
        &format!("mcluster: rolled {size} workers to generation {generation} in "),
    );
    let workers = master.generation(generation);
    assert_eq!(workers.len(), size, "{workers:?}\n{}", master.dump());
    workers
}

/// Checks that `new` replaced every one of `old`: other pids, and the old ones have exited.
#[track_caller]
fn assert_replaced(master: &Master, old: &[Worker], new: &[Worker]) {
    let old_pids: BTreeSet<i32> = pids(old).into_iter().collect();
    let new_pids: BTreeSet<i32> = pids(new).into_iter().collect();
    assert_eq!(new_pids.len(), new.len(), "{new:?}");
    assert!(old_pids.is_disjoint(&new_pids), "old {old:?}, new {new:?}");
    for worker in old {
        master.wait_dead(worker.pid);
    }
}

#[test]
fn hup_replaces_every_worker_with_a_new_generation() {
    let (master, old) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    let port = master.port();
    let mark = master.stderr_mark();

    let new = roll(&master, 2, 2);
    assert_replaced(&master, &old, &new);
    wait_served_by(port, &pids(&new), echo_pid);
    assert_eq!(echo(port, "after").generation, 2);

    // Each old worker was stopped only after the replacement in its slot was ready.
    for worker in &new {
        let (drained, _) =
            master.wait_for_stderr_after(mark, &format!("[w{}·g1] echo: draining", worker.slot));
        let lines = master.stderr_lines();
        let ready = lines
            .iter()
            .position(|l| l.contains(&format!("ready (pid {}, generation 2)", worker.pid)))
            .unwrap();
        assert!(
            ready < drained - 1,
            "w{} was stopped before its replacement was ready\n{}",
            worker.slot,
            master.dump()
        );
    }
}

/// Requests on fresh connections from several threads until stopped, recording every outcome.
/// Guarantees 1 and 2: ten rolls under load, and every request is answered.
#[test]
fn rolls_under_load_drop_no_request() {
    const SIZE: usize = 4;
    const LOOPS: usize = 8;
    const ROLLS: u64 = 10;
    let (master, first) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "4", "--kill-timeout", "20s"],
        fixture("fixture-echo"),
        &[],
        SIZE,
    );
    let port = master.port();
    let (load, threads) = Load::start(port, LOOPS);
    let _stop = StopOnDrop(Arc::clone(&load));

    let mut old = first;
    for generation in 2..=ROLLS + 1 {
        let before = load.answered.load(Ordering::SeqCst);
        let new = roll(&master, SIZE, generation);
        assert_replaced(&master, &old, &new);
        assert_eq!(
            load.failures(),
            Vec::<String>::new(),
            "roll to {generation}"
        );
        // The load goes on, now served by the new generation, before the next roll starts.
        master.wait_until(
            &format!("requests answered by generation {generation}"),
            || {
                load.generations.lock().unwrap().contains(&generation)
                    && load.answered.load(Ordering::SeqCst) >= before + LOOPS as u64
            },
        );
        old = new;
    }

    load.stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(load.failures(), Vec::<String>::new());
    let generations = load.generations.lock().unwrap().clone();
    assert_eq!(generations, (1..=ROLLS + 1).collect::<BTreeSet<u64>>());
    eprintln!(
        "{} requests answered across {ROLLS} rolls",
        load.answered.load(Ordering::SeqCst)
    );
}

/// Guarantee 1 for a worker that does nothing special: Python's `http.server` on fd 3 with no
/// SIGTERM handler dies at once on its stop signal, with whatever it accepted. Each generation
/// has sockets of its own, new connections go to the new one at the switch, and an old worker
/// gets its stop signal only once drained: ten rolls under load lose nothing.
#[test]
fn a_worker_that_dies_at_once_on_sigterm_loses_no_request_over_ten_rolls() {
    const SIZE: usize = 4;
    const ROLLS: u64 = 10;
    let script = naive_http_py();
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "4"],
        python3(),
        &[script.to_str().unwrap()],
        SIZE,
    );
    let port = master.port();
    let (load, threads) = Load::start_http(port, 8);
    let _stop = StopOnDrop(Arc::clone(&load));
    for generation in 2..=ROLLS + 1 {
        let before = load.answered.load(Ordering::SeqCst);
        roll(&master, SIZE, generation);
        master.wait_until("the load to go on after the roll", || {
            load.answered.load(Ordering::SeqCst) >= before + 8
        });
    }
    load.stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(load.failures(), Vec::<String>::new(), "{}", master.dump());
    eprintln!(
        "{} requests answered across {ROLLS} rolls",
        load.answered.load(Ordering::SeqCst)
    );
}

/// Where every generation shares one socket (`--no-steering`, systemfd's sockets, `unix:`), a
/// naive worker under load is never seen waiting for a connection (one is always queued): it
/// is seen ready by the connection it accepted, at once, not after the 5 s advice or the ready
/// timeout.
#[test]
fn on_a_shared_socket_under_load_a_worker_that_never_waits_is_seen_by_what_it_accepted() {
    const SIZE: usize = 2;
    let script = naive_http_py();
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2", "--no-steering"],
        python3(),
        &[script.to_str().unwrap()],
        SIZE,
    );
    let (load, threads) = Load::start_http(master.port(), 8);
    let _stop = StopOnDrop(Arc::clone(&load));
    for generation in 2..=4 {
        roll(&master, SIZE, generation);
    }
    load.stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    let unseen: Vec<String> = master
        .stderr_lines()
        .into_iter()
        .filter(|line| line.contains("is not seen accepting"))
        .collect();
    assert_eq!(unseen, Vec::<String>::new(), "{}", master.dump());
}

/// Guarantee 3: a replacement that exits before it is ready aborts the roll.
#[test]
fn roll_aborts_when_a_replacement_exits_before_ready() {
    let echo_program = fixture("fixture-echo");
    let script = Script::exec(&echo_program);
    let (master, old) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        "/bin/sh",
        &[script.arg()],
        2,
    );
    let port = master.port();

    script.rewrite("echo 'replacement: cannot start' >&2\nexit 1");
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    let (_, aborted) =
        master.wait_for_stderr_after(mark, "mcluster: roll to generation 2 aborted: ");
    assert!(
        aborted.ends_with("; generation 1 keeps serving"),
        "{aborted:?}"
    );

    // The old generation is whole and serving.
    assert!(old.iter().all(|w| is_alive(w.pid)), "{}", master.dump());
    assert_eq!(master.generation(2), []);
    wait_served_by(port, &pids(&old), echo_pid);
    assert_eq!(echo(port, "still").generation, 1);

    // The failure did not wedge the master: once the program is fixed, a roll succeeds.
    script.rewrite(&exec_line(&echo_program));
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    let (_, rolled) =
        master.wait_for_stderr_after(mark, "mcluster: rolled 2 workers to generation ");
    let generation: u64 = rolled["mcluster: rolled 2 workers to generation ".len()..]
        .split(' ')
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("{rolled:?}"));
    let new = master.generation(generation);
    assert_eq!(new.len(), 2, "{}", master.dump());
    assert_replaced(&master, &old, &new);
    wait_served_by(port, &pids(&new), echo_pid);
}

/// Guarantee 3: a replacement that misses its ready deadline aborts the roll, and is stopped
/// with the stop signal (well before the kill timeout).
#[test]
fn roll_aborts_when_a_replacement_misses_its_ready_deadline() {
    let script = Script::exec(&fixture("fixture-echo"));
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "2",
        "--ready",
        "notify",
        "--ready-timeout",
        "3s",
        "--kill-timeout",
        "60s",
    ];
    let (master, old) = Master::start_ready(&options, "/bin/sh", &[script.arg()], 2);
    let port = master.port();

    // Never ready, and says so when the stop signal comes.
    script.rewrite(
        "trap 'echo \"stub: got the stop signal\"; exit 0' TERM\n\
         echo 'stub: started'\n\
         while :; do sleep 0.1; done",
    );
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    master.wait_for_stdout("stub: started");
    let (_, aborted) =
        master.wait_for_stderr_after(mark, "mcluster: roll to generation 2 aborted: ");
    assert!(
        aborted.ends_with("; generation 1 keeps serving"),
        "{aborted:?}"
    );
    master.wait_for_stdout("stub: got the stop signal");
    let old_pids: BTreeSet<i32> = pids(&old).into_iter().collect();
    master.wait_until("the replacement to be gone", || {
        children_of(master.pid())
            .into_iter()
            .collect::<BTreeSet<_>>()
            == old_pids
    });

    assert!(old.iter().all(|w| is_alive(w.pid)), "{}", master.dump());
    wait_served_by(port, &pids(&old), echo_pid);
}

/// Many HUPs while a roll runs make at most one more roll.
#[test]
fn hup_burst_coalesces_into_one_queued_roll() {
    // Each generation's workers wait for its gate: the test decides when a roll may end.
    let gates = tempfile::tempdir().unwrap();
    let script = gated_worker(gates.path());
    std::fs::write(gates.path().join("gate-1"), "").unwrap();
    let options = ["-l", "127.0.0.1:0", "-n", "2", "--ready", "notify"];
    let (master, _) = Master::start_ready(&options, "/bin/sh", &[script.arg()], 2);
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    master.wait_for_stderr_after(mark, "mcluster: rolling 2 workers to generation 2");
    let queued = "mcluster: a roll is in progress; one more roll will follow it";
    for sent in 1..=9 {
        // Each HUP is acknowledged before the next is sent: signals pending at once merge in
        // the kernel, and the test wants the master to see every one.
        master.signal(Signal::SIGHUP);
        master.wait_until("the HUP to be acknowledged", || {
            master
                .stderr_lines()
                .iter()
                .filter(|l| *l == queued)
                .count()
                >= sent
        });
    }
    std::fs::write(gates.path().join("gate-2"), "").unwrap();
    std::fs::write(gates.path().join("gate-3"), "").unwrap();
    master.wait_for_stderr_after(mark, "mcluster: rolled 2 workers to generation 3 in ");
    // A further queued roll would start at once; a resize after it shows that none did.
    let resize = master.stderr_mark();
    master.signal(Signal::SIGTTIN);
    master.wait_for_stderr_after(resize, "mcluster: resizing to 3 workers");
    let rolls: Vec<String> = master
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("mcluster: rolling "))
        .collect();
    assert_eq!(
        rolls,
        [
            "mcluster: rolling 2 workers to generation 2",
            "mcluster: rolling 2 workers to generation 3"
        ],
        "{}",
        master.dump()
    );
}

/// A script worker that says `booting` and waits for `gates/gate-<its generation>` before it
/// runs the echo fixture.
fn gated_worker(gates: &std::path::Path) -> Script {
    Script::new(&format!(
        "echo booting\nwhile [ ! -f {}/gate-\"$MCLUSTER_GENERATION\" ]; do sleep 0.02; done\n{}",
        crate::support::script::quote(gates),
        exec_line(&fixture("fixture-echo"))
    ))
}

/// The number of `booting` lines of `generation`'s workers so far.
fn booting(master: &Master, generation: u64) -> usize {
    master
        .stdout_lines()
        .iter()
        .filter(|l| l.ends_with(&format!("·g{generation}] booting")))
        .count()
}

/// `--surge all` (the default): every replacement boots side by side, so a roll takes about one
/// boot, not one per worker; `--surge 1` boots them one at a time.
#[test]
fn a_roll_boots_up_to_the_surge_side_by_side() {
    for (surge, at_once) in [("all", 4), ("1", 1), ("50%", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("gate-2");
        let script = gated_worker(dir.path());
        std::fs::write(dir.path().join("gate-1"), "").unwrap();
        let (master, old) = Master::start_ready(
            &[
                "-l",
                "127.0.0.1:0",
                "-n",
                "4",
                "--ready",
                "notify",
                "--surge",
                surge,
            ],
            "/bin/sh",
            &[script.arg()],
            4,
        );
        master.signal(Signal::SIGHUP);
        master.wait_until(&format!("{at_once} replacements booting"), || {
            booting(&master, 2) == at_once
        });
        // While they boot, every old worker serves.
        assert!(old.iter().all(|w| is_alive(w.pid)), "--surge {surge}");
        std::fs::write(&gate, "").unwrap();
        master.wait_for_stderr("mcluster: rolled 4 workers to generation 2 in ");
        assert_eq!(booting(&master, 2), 4, "--surge {surge}");
        for worker in &old {
            master.wait_dead(worker.pid);
        }
        drop(script);
    }
}

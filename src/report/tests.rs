//! The reporter's words: every report's line, byte for byte, and the records derived from the
//! same facts.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    DriverReport, Lifecycle, Lingering, StartReport, dev_line, driver_line, failed_page, line,
    restart_outcome, start_line, watch_line,
};
use crate::cluster::{
    Aborted, Failure, Pid, ProcessEnd, ReadyBy, Report, Restart, RollEnd, WorkerId, WorkerReady,
};
use crate::dev::lifecycle::{Before, BuildFailure, Changes, DevReport, Keeps};
use crate::status::{Record, RestartOutcome};
use crate::watch::WatchReport;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn worker(slot: usize, pid: Option<i32>, generation: u64) -> WorkerId {
    WorkerId {
        slot,
        pid: pid.map(Pid),
        generation,
    }
}

fn changes(names: &[&str]) -> Changes {
    Changes(names.iter().map(PathBuf::from).collect())
}

/// A roll of `size` workers to generation 2: completed, or aborted by slot `failed`'s
/// replacement, with `slots` the generations after it.
fn roll(size: usize, aborted: Option<(usize, Failure)>, slots: Vec<u64>) -> RollEnd {
    let rolled = slots.iter().filter(|&&generation| generation == 2).count();
    RollEnd {
        generation: 2,
        size,
        rolled,
        elapsed: ms(1320),
        switch: Some(ms(20)),
        aborted: aborted.map(|(slot, failure)| Aborted {
            worker: worker(slot, Some(102), 2),
            failure,
        }),
        failed: None,
        serving: 1,
        slots,
        requests: vec![0],
    }
}

#[test]
fn every_report_of_the_cluster_core_reads_as_before() {
    let w0 = worker(0, Some(100), 1);
    let restart = |delay, generation| Some(Restart { delay, generation });
    let table: Vec<(Report, &str)> = vec![
        (Report::TerminalLost, "the terminal hung up"),
        (
            Report::LeftBehind(w0),
            "w0 (pid 100) left processes behind in its group; stopping them",
        ),
        (
            Report::StoppingByItself(w0),
            "w0 (pid 100) is stopping by itself (STOPPING=1); starting its replacement",
        ),
        (
            Report::Failed {
                worker: w0,
                failure: Failure::Ended(ProcessEnd::Signal(9)),
                restart: None,
            },
            "w0 (pid 100) killed by signal SIGKILL",
        ),
        (
            Report::Failed {
                worker: w0,
                failure: Failure::NoWatchdog(ms(1000)),
                restart: restart(Duration::ZERO, 1),
            },
            "w0 (pid 100) sent no WATCHDOG=1 for 1.00s; restarting in 0ms (generation 1)",
        ),
        (
            Report::Failed {
                worker: w0,
                failure: Failure::EndedStarting(ProcessEnd::Code(3)),
                restart: restart(ms(100), 2),
            },
            "w0 (pid 100) exited with status 3 before it was ready; restarting in 100ms \
             (generation 2)",
        ),
        (
            Report::Failed {
                worker: worker(1, None, 1),
                failure: Failure::NotSpawned("Too many open files".to_owned()),
                restart: restart(ms(200), 1),
            },
            "w1 could not be spawned: Too many open files; restarting in 200ms (generation 1)",
        ),
        (
            Report::Failed {
                worker: w0,
                failure: Failure::Ended(ProcessEnd::Signal(64)),
                restart: None,
            },
            "w0 (pid 100) killed by signal 64",
        ),
        (
            Report::Uncovered {
                slot: 0,
                restart: Restart {
                    delay: ms(100),
                    generation: 1,
                },
            },
            "w0 has no worker; starting one in 100ms (generation 1)",
        ),
        (
            Report::NeverReady {
                worker: w0,
                failure: Failure::NotReadyWithin(ms(60_000)),
                attempts: 3,
                waits: false,
            },
            "error: no worker became ready after 3 attempts: w0 (pid 100) was not ready within \
             60.00s",
        ),
        (
            Report::NeverReady {
                worker: w0,
                failure: Failure::EndedStarting(ProcessEnd::Code(1)),
                attempts: 3,
                waits: true,
            },
            "error: no worker became ready after 3 attempts: w0 (pid 100) exited with status 1 \
             before it was ready; waiting for a change to retry",
        ),
        (
            Report::AllReady {
                size: 1,
                elapsed: ms(85),
            },
            "the worker is ready in 85ms",
        ),
        (
            Report::AllReady {
                size: 3,
                elapsed: ms(1320),
            },
            "all 3 workers ready in 1.32s",
        ),
        (
            Report::Abandoned {
                worker: w0,
                after: ms(1000),
            },
            "what is left of w0 (pid 100, generation 1) still exists 1.00s after SIGKILL \
             (zombies that its parent does not reap); taken for gone",
        ),
        (
            Report::Killing {
                worker: w0,
                rest_of_group: false,
                after: ms(30_000),
            },
            "w0 (pid 100, generation 1) did not stop within 30.00s; sending SIGKILL",
        ),
        (
            Report::Killing {
                worker: w0,
                rest_of_group: true,
                after: ms(30_000),
            },
            "what is left of w0 (pid 100, generation 1) did not stop within 30.00s; sending \
             SIGKILL",
        ),
        (
            Report::RollQueued,
            "a roll is in progress; one more roll will follow it",
        ),
        (Report::Resizing { size: 1 }, "resizing to 1 worker"),
        (Report::Resizing { size: 4 }, "resizing to 4 workers"),
        (
            Report::Stopping {
                live: 0,
                hard: true,
            },
            "stopping",
        ),
        (
            Report::Stopping {
                live: 1,
                hard: false,
            },
            "stopping 1 worker",
        ),
        (
            Report::Stopping {
                live: 2,
                hard: true,
            },
            "stopping 2 workers hard",
        ),
        (Report::Stopped, "stopped"),
    ];
    for (report, text) in table {
        assert_eq!(line(&report), text, "{report:?}");
    }
}

#[test]
fn every_report_of_the_dev_core_reads_as_before() {
    let g1 = Keeps::Generation(1);
    let main = || changes(&["src/main.rs"]);
    let table: Vec<(DevReport, &str)> = vec![
        (
            DevReport::BuildNotStarted {
                why: "cargo is not installed or not in PATH".to_owned(),
                serving: None,
            },
            "error: cannot run the build: cargo is not installed or not in PATH",
        ),
        (
            DevReport::BuildNotStarted {
                why: "cargo: Too many open files".to_owned(),
                serving: Some(1),
            },
            "error: cannot run the build: cargo: Too many open files; generation 1 keeps serving",
        ),
        (
            DevReport::Refused {
                culprit: "cargo does not know --bn".to_owned(),
            },
            "error: cargo does not know --bn",
        ),
        (
            DevReport::BuildFailed {
                changed: main(),
                end: ProcessEnd::Code(101),
                built_in: ms(700),
                keeps: g1,
            },
            "src/main.rs changed → build failed (exited with status 101) after 700ms; generation \
             1 keeps serving",
        ),
        (
            DevReport::BuildFailed {
                changed: Changes::default(),
                end: ProcessEnd::Code(101),
                built_in: ms(0),
                keeps: Keeps::Nothing,
            },
            "build failed (exited with status 101) after 0ms; nothing rebuilds in production mode",
        ),
        (
            DevReport::BuildFailed {
                changed: Changes::default(),
                end: ProcessEnd::Signal(9),
                built_in: ms(0),
                keeps: Keeps::NothingYet,
            },
            "build failed (killed by signal SIGKILL) after 0ms; no generation is serving yet; \
             save a fix to retry",
        ),
        (
            DevReport::Unchanged {
                changed: changes(&["README.md"]),
                built_in: None,
                keeps: g1,
            },
            "README.md changed → nothing to rebuild; generation 1 keeps serving",
        ),
        (
            DevReport::Unchanged {
                changed: main(),
                built_in: Some(ms(900)),
                keeps: g1,
            },
            "src/main.rs changed → built in 900ms, the same binary; generation 1 keeps serving",
        ),
        (
            DevReport::Unusable {
                changed: main(),
                why: "the build made no executable".to_owned(),
                keeps: g1,
            },
            "src/main.rs changed → the build made no executable; generation 1 keeps serving",
        ),
        (
            DevReport::NotKept {
                changed: main(),
                executable: PathBuf::from("/p/target/debug/app"),
                why: "No space left on device".to_owned(),
                keeps: g1,
            },
            "src/main.rs changed → built, but /p/target/debug/app cannot be kept: No space left \
             on device; generation 1 keeps serving",
        ),
        (DevReport::Built { built_in: ms(1500) }, "built in 1.50s"),
        (
            DevReport::StartingAgain {
                changed: Changes::default(),
            },
            "roll requested → starting again",
        ),
        (
            DevReport::Assets {
                changed: changes(&["static/app.css"]),
                css: true,
            },
            "static/app.css changed → stylesheets reloaded in the pages",
        ),
        (
            DevReport::Assets {
                changed: changes(&["static/app.css", "static/index.html"]),
                css: false,
            },
            "static/app.css, static/index.html changed → pages reloaded",
        ),
        (
            DevReport::BuildWrites {
                file: PathBuf::from("src/stamp.rs"),
                rounds: 2,
            },
            "src/stamp.rs changed during each of the last 2 builds it triggered: the build writes \
             it (a build script?); its changes while a build runs are ignored from now on (to \
             ignore it always: -i 'src/stamp.rs')",
        ),
        (
            DevReport::BuildWrites {
                file: PathBuf::from("../dep/src/stamp.rs"),
                rounds: 2,
            },
            "../dep/src/stamp.rs changed during each of the last 2 builds it triggered: the \
             build writes it (a build script?); its changes while a build runs are ignored from \
             now on (to ignore it always: -i 'stamp.rs')",
        ),
        (
            DevReport::Rolled {
                reload: Some((main(), Before::Build(ms(250)))),
                end: roll(2, None, vec![2, 2]),
            },
            "src/main.rs changed → built in 250ms → rolled 2 workers in 1.32s (switch 20ms)",
        ),
        (
            DevReport::Rolled {
                reload: Some((changes(&["app.py"]), Before::Nothing)),
                end: RollEnd {
                    switch: None,
                    ..roll(1, None, vec![2])
                },
            },
            "app.py changed → rolled 1 worker in 1.32s",
        ),
        (
            DevReport::Rolled {
                reload: Some((Changes::default(), Before::Nothing)),
                end: roll(2, None, vec![2, 2]),
            },
            "roll requested → rolled 2 workers in 1.32s (switch 20ms)",
        ),
        (
            DevReport::Rolled {
                reload: Some((main(), Before::Build(ms(0)))),
                end: roll(
                    2,
                    Some((0, Failure::EndedStarting(ProcessEnd::Code(1)))),
                    vec![1, 1],
                ),
            },
            "src/main.rs changed → built in 0ms → not rolled: w0 (pid 102) exited with status 1 \
             before it was ready; generation 1 keeps serving",
        ),
        (
            DevReport::Rolled {
                reload: None,
                end: roll(2, None, vec![2, 2]),
            },
            "rolled 2 workers to generation 2 in 1.32s",
        ),
        (
            DevReport::Rolled {
                reload: Some((changes(&["templates/index.html"]), Before::NotInput)),
                end: roll(2, None, vec![2, 2]),
            },
            "templates/index.html changed → not a build input: rolled 2 workers in 1.32s \
             (switch 20ms)",
        ),
        (
            DevReport::Rolled {
                reload: Some((changes(&["templates/index.html"]), Before::NotInput)),
                end: roll(
                    2,
                    Some((0, Failure::EndedStarting(ProcessEnd::Code(1)))),
                    vec![1, 1],
                ),
            },
            "templates/index.html changed → not a build input: not rolled: w0 (pid 102) exited \
             with status 1 before it was ready; generation 1 keeps serving",
        ),
    ];
    for (report, text) in table {
        assert_eq!(dev_line(&report), text, "{report:?}");
    }
}

#[test]
fn a_partly_aborted_roll_says_which_slot_runs_which_generation() {
    let failed = Some((2, Failure::NotReadyWithin(ms(60_000))));
    let end = roll(4, failed.clone(), vec![2, 2, 1, 1]);
    let expected = "roll to generation 2 aborted: w2 (pid 102) was not ready within 60.00s; \
                    rolled 2 of 4 slots to generation 2; slots 0–1 run generation 2, slots 2–3 \
                    generation 1";
    assert_eq!(Lifecycle::RollEnded(&end).line().unwrap(), expected);
    let end = roll(3, failed, vec![2, 1, 2]);
    assert!(
        Lifecycle::RollEnded(&end)
            .line()
            .unwrap()
            .ends_with("slot 0 runs generation 2, slot 1 generation 1, slot 2 generation 2"),
    );
}

#[test]
fn a_lifecycle_fact_gives_its_line_and_the_record_of_the_same_fact() {
    let ready = WorkerReady {
        slot: 1,
        pid: Some(Pid(101)),
        generation: 1,
        how: ReadyBy::Seen("seen accepting (epoll)".to_owned()),
    };
    let told = Lifecycle::Ready(&ready);
    assert_eq!(
        told.line().unwrap(),
        "w1 ready (pid 101, generation 1): seen accepting (epoll)"
    );
    assert!(told.is_detail());
    assert_eq!(
        told.record(),
        Record::WorkerReady {
            slot: 1,
            pid: Some(101),
            generation: 1,
            how: "seen accepting (epoll)".to_owned(),
        }
    );
    let ready = WorkerReady {
        slot: 0,
        pid: None,
        generation: 2,
        how: ReadyBy::Alive(ms(1000)),
    };
    assert_eq!(
        Lifecycle::Ready(&ready).line().unwrap(),
        "w0 ready (pid ?, generation 2): alive 1.00s"
    );
    let ready = WorkerReady {
        how: ReadyBy::Notified,
        ..ready
    };
    assert!(
        Lifecycle::Ready(&ready)
            .line()
            .unwrap()
            .ends_with(": READY=1")
    );

    let started = Lifecycle::RollStarted {
        generation: 3,
        size: 1,
    };
    assert_eq!(started.line().unwrap(), "rolling 1 worker to generation 3");
    assert_eq!(started.record(), Record::RollStarted { generation: 3 });

    let end = roll(
        2,
        Some((0, Failure::EndedStarting(ProcessEnd::Code(1)))),
        vec![1, 1],
    );
    let why = "w0 (pid 102) exited with status 1 before it was ready";
    assert_eq!(
        Lifecycle::RollEnded(&end).line().unwrap(),
        format!("roll to generation 2 aborted: {why}; generation 1 keeps serving")
    );
    assert!(!Lifecycle::RollEnded(&end).is_detail());
    assert_eq!(
        Lifecycle::RollEnded(&end).record(),
        Record::RollEnded {
            generation: 2,
            completed: false,
            duration_ms: 1320,
            aborted: Some(why.to_owned()),
        }
    );
    assert_eq!(
        restart_outcome(&end, vec!["boom".to_owned()]),
        RestartOutcome::Aborted {
            generation: 2,
            why: format!("{why}; generation 1 keeps serving"),
            stderr: vec!["boom".to_owned()],
            slots: vec![1, 1],
        }
    );
    let end = roll(2, None, vec![2, 2]);
    assert_eq!(
        restart_outcome(&end, Vec::new()),
        RestartOutcome::Rolled {
            generation: 2,
            duration_ms: 1320,
        }
    );
    assert_eq!(Lifecycle::Stopping.line(), None);
    assert_eq!(Lifecycle::Stopping.record(), Record::Stopping);

    let spawned = Lifecycle::Spawned {
        slot: 1,
        pid: 101,
        generation: 2,
    };
    assert_eq!(spawned.line(), None);
    assert_eq!(
        spawned.record(),
        Record::WorkerSpawned {
            slot: 1,
            pid: 101,
            generation: 2,
        }
    );
    for (end, words) in [
        (ProcessEnd::Code(1), "exited with status 1"),
        (ProcessEnd::Signal(9), "killed by signal SIGKILL"),
    ] {
        let exited = Lifecycle::Exited {
            slot: 1,
            pid: 101,
            generation: 2,
            end,
        };
        assert_eq!(exited.line(), None);
        assert_eq!(
            exited.record(),
            Record::WorkerExited {
                slot: 1,
                pid: 101,
                generation: 2,
                end: words.to_owned(),
            }
        );
    }
    let notify = Lifecycle::Notify {
        slot: 0,
        pid: 100,
        message: "STATUS=warming up\nREADY=1",
    };
    assert_eq!(notify.line(), None);
    assert_eq!(
        notify.record(),
        Record::Notify {
            slot: 0,
            pid: 100,
            message: "STATUS=warming up\nREADY=1".to_owned(),
        }
    );
}

#[test]
fn every_fact_of_the_driver_reads_as_before() {
    let w1 = worker(1, Some(101), 2);
    let too_many = io::Error::from_raw_os_error(24);
    let refused = io::Error::other("the guard's pipe is closed");
    let table: Vec<(DriverReport<'_>, &str)> = vec![
        (
            DriverReport::BuildingPageFailed(&too_many),
            "cannot answer with the building page: too many open files",
        ),
        (
            DriverReport::SigttinIgnored {
                why: "invalid size 2049: at most 2048 workers (the most one master runs)",
            },
            "SIGTTIN ignored: invalid size 2049: at most 2048 workers (the most one master runs)",
        ),
        (
            DriverReport::Status {
                slot: 1,
                status: "warming up",
            },
            "w1 status: warming up",
        ),
        (
            DriverReport::NotifyFlood {
                worker: w1,
                dropped: 1234,
            },
            "w1 (pid 101) sent notify messages faster than they were handled: 1234 not passed on \
             (its READY, WATCHDOG, STOPPING and latest STATUS still count)",
        ),
        (
            DriverReport::StoppedStarting {
                worker: w1,
                after: ms(10_000),
                stopped: Pid(101),
            },
            "w1 (pid 101) is not ready after 10.00s: it is stopped (SIGSTOP or a job control \
             signal), and can neither accept nor send READY=1 until it gets SIGCONT",
        ),
        (
            DriverReport::StoppedStarting {
                worker: w1,
                after: ms(10_000),
                stopped: Pid(107),
            },
            "w1 (pid 101) is not ready after 10.00s: its process 107 is stopped (SIGSTOP or a \
             job control signal), and can neither accept nor send READY=1 until it gets SIGCONT",
        ),
        (
            DriverReport::NotSeenAccepting {
                worker: w1,
                after: ms(10_000),
            },
            "w1 (pid 101) is not seen accepting after 10.00s and sent no READY=1; if it serves, \
             it accepts in a way mcluster cannot see (it sees accept, epoll and poll on its \
             listeners, and connections accepted on them): have it send READY=1, or give \
             --ready-delay",
        ),
        (
            DriverReport::GuardReplaced {
                ended: Some(ProcessEnd::Signal(9)),
                pid: 4242,
                groups: 1,
            },
            "the guard process killed by signal SIGKILL; a new one (pid 4242) guards the 1 live \
             process group",
        ),
        (
            DriverReport::GuardReplaced {
                ended: None,
                pid: 4242,
                groups: 3,
            },
            "the guard process is gone; a new one (pid 4242) guards the 3 live process groups",
        ),
        (
            DriverReport::GuardNotReplaced {
                ended: Some(ProcessEnd::Code(1)),
                error: &refused,
            },
            "error: the guard process exited with status 1, and a new one cannot start (the \
             guard's pipe is closed); no worker starts until one does",
        ),
        (
            DriverReport::GuardNotReplaced {
                ended: None,
                error: &too_many,
            },
            "error: the guard process is gone, and a new one cannot start (Too many open files \
             (os error 24)); no worker starts until one does",
        ),
        (
            DriverReport::GuardStarted { pid: 4243 },
            "a new guard process (pid 4243) runs",
        ),
        (
            DriverReport::Lingering(Lingering {
                worker: w1,
                since: ms(5000),
                connections: 2,
                kill_in: Some(ms(25_000)),
                ctrl_c_kills: false,
            }),
            "w1 (pid 101, generation 2) is still stopping 5.00s after the stop signal with 2 open \
             connections; SIGKILL in 25.00s",
        ),
        (
            DriverReport::StderrLine {
                slot: 1,
                line: "thread 'main' panicked at src/main.rs:3:5:",
            },
            "w1 stderr: thread 'main' panicked at src/main.rs:3:5:",
        ),
    ];
    for (told, expected) in table {
        assert_eq!(driver_line(&told), expected, "{told:?}");
    }
}

#[test]
fn every_fact_of_the_master_s_start_reads_as_before() {
    let livereload: SocketAddr = ([127, 0, 0, 1], 35729).into();
    let moved: SocketAddr = ([127, 0, 0, 1], 41234).into();
    let table: Vec<(StartReport<'_>, &str)> = vec![
        (
            StartReport::Listening {
                address: "127.0.0.1:3000",
                master_pid: 4242,
            },
            "listening on 127.0.0.1:3000 (master pid 4242)",
        ),
        (
            StartReport::Listening {
                address: "unix:/run/app.sock",
                master_pid: 4242,
            },
            "listening on unix:/run/app.sock (master pid 4242)",
        ),
        (
            StartReport::LiveReload {
                address: livereload,
                script_tag: "<script src=\"http://127.0.0.1:35729/livereload.js\"></script>",
            },
            "live reload on 127.0.0.1:35729: pages get it with <script \
             src=\"http://127.0.0.1:35729/livereload.js\"></script>",
        ),
        (
            StartReport::LiveReloadMoved {
                taken: livereload,
                address: moved,
            },
            "127.0.0.1:35729 is taken (another dev master?): live reload on 127.0.0.1:41234 \
             instead",
        ),
        (
            StartReport::Metrics {
                address: ([0, 0, 0, 0], 9090).into(),
            },
            "metrics on http://0.0.0.0:9090/metrics",
        ),
        (
            StartReport::AcceptingUnseen { alive: ms(1000) },
            "this system cannot show whether a worker accepts: one that does not send READY=1 \
             counts as ready once alive 1.00s",
        ),
    ];
    for (told, expected) in table {
        assert_eq!(start_line(&told), expected, "{told:?}");
    }
}

#[test]
fn every_fact_of_the_watcher_reads_as_before() {
    let instances = ::notify::Error::io(io::Error::from_raw_os_error(24));
    let limit = ::notify::Error::new(::notify::ErrorKind::MaxFilesWatch);
    let generic = ::notify::Error::generic("no poller here");
    let elsewhere = Path::new("/elsewhere/app");
    let below = std::env::current_dir().unwrap().join("src/static");
    let table: Vec<(WatchReport<'_>, &str)> = vec![
        (
            WatchReport::InotifyUnavailable { error: &instances },
            "cannot use inotify (Too many open files (os error 24)); falling back to polling",
        ),
        (
            WatchReport::LimitReached,
            "the inotify watch limit is reached; falling back to polling (raise it with: sudo \
             sysctl fs.inotify.max_user_watches=524288)",
        ),
        (
            WatchReport::CannotPollEither { error: &limit },
            "cannot poll for changes either: OS file watch limit reached.",
        ),
        (
            WatchReport::BlindPolled {
                root: elsewhere,
                file_system: "9p",
                every: ms(500),
            },
            "/elsewhere/app is on 9p, where inotify sees no change made from the other side: \
             polling it every 500ms (--poll=INTERVAL polls everything)",
        ),
        (
            WatchReport::BlindNotPolled {
                root: elsewhere,
                file_system: "NFS",
                error: &generic,
            },
            "/elsewhere/app is on NFS, where inotify sees no change made from the other side, \
             and it cannot be polled: no poller here",
        ),
        (
            WatchReport::RootRemoved { root: elsewhere },
            "watched directory /elsewhere/app was removed; waiting for it to come back",
        ),
        (
            WatchReport::RootBack { root: elsewhere },
            "watched directory /elsewhere/app is back; watching it again",
        ),
        // A root below the current directory is named relative to it.
        (
            WatchReport::RootRemoved { root: &below },
            "watched directory src/static was removed; waiting for it to come back",
        ),
        (
            WatchReport::RootBack { root: &below },
            "watched directory src/static is back; watching it again",
        ),
    ];
    for (told, expected) in table {
        assert_eq!(watch_line(&told), expected, "{told:?}");
    }
}

#[test]
fn a_lingering_worker_s_line_says_what_it_waits_for() {
    let lingering = Lingering {
        worker: worker(0, Some(100), 1),
        since: ms(5000),
        connections: 0,
        kill_in: None,
        ctrl_c_kills: false,
    };
    assert_eq!(
        driver_line(&DriverReport::Lingering(lingering)),
        "w0 (pid 100, generation 1) is still stopping 5.00s after the stop signal"
    );
    let lingering = Lingering {
        connections: 1,
        kill_in: Some(ms(25_000)),
        ctrl_c_kills: true,
        ..lingering
    };
    assert_eq!(
        driver_line(&DriverReport::Lingering(lingering)),
        "w0 (pid 100, generation 1) is still stopping 5.00s after the stop signal with 1 open \
         connection; SIGKILL in 25.00s (Ctrl-C again to kill it now)"
    );
    assert!(
        driver_line(&DriverReport::Lingering(Lingering {
            connections: 3,
            ..lingering
        }))
        .contains("with 3 open connections;")
    );
}

#[test]
fn a_failed_build_s_page_shows_its_diagnostics_or_points_at_the_terminal() {
    let failure = BuildFailure {
        end: ProcessEnd::Code(101),
        built_in: ms(700),
        diagnostics: "error[E0308]: mismatched types".to_owned(),
    };
    assert_eq!(
        failed_page(&failure),
        "build failed (exited with status 101) after 700ms\n\nerror[E0308]: mismatched types"
    );
    let failure = BuildFailure {
        diagnostics: String::new(),
        built_in: ms(0),
        ..failure
    };
    assert_eq!(
        failed_page(&failure),
        "build failed (exited with status 101) after 0ms: see the terminal"
    );
}

#[test]
fn a_name_with_a_newline_or_control_character_is_quoted_in_the_one_line() {
    let line = dev_line(&DevReport::StartingAgain {
        changed: changes(&["src/a\nb.rs", "src/tab\there.rs", "src/esc\u{1b}[31m.rs"]),
    });
    assert_eq!(
        line,
        r#""src/a\nb.rs", "src/tab\there.rs", "src/esc\u{1b}[31m.rs" changed → starting again"#
    );
    assert!(!line.contains('\n'));
    assert_eq!(
        dev_line(&DevReport::StartingAgain {
            changed: changes(&["src/\u{202e}sr.rs"]),
        }),
        r#""src/\u{202e}sr.rs" changed → starting again"#
    );
}

#[test]
fn ordinary_names_are_shown_as_they_are_the_first_three_and_a_count() {
    assert_eq!(
        dev_line(&DevReport::StartingAgain {
            changed: changes(&["src/main.rs", "it's \"ok\" é.rs", "/elsewhere/x.rs", "d.rs"]),
        }),
        r#"src/main.rs, it's "ok" é.rs, /elsewhere/x.rs and 1 more changed → starting again"#
    );
}

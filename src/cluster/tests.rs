//! Timelines of events against the core: no processes, no clock.

use std::time::{Duration, Instant};

use super::{
    Aborted, Action, Cluster, ClusterConfig, Event, ExitReason, Failure, Hangup, MasterState,
    NeverReady, Pid, ProcessEnd, ReadyBy, Report, ResizeAnswer, Restart, RollEnd, RollTally,
    StopKind, Surge, WorkerId, WorkerKey,
};

/// Owns a cluster and a fake clock; answers every spawn with the next pid.
struct Timeline {
    cluster: Cluster,
    now: Instant,
    next_pid: i32,
    /// Every (key, slot, generation, pid) ever spawned.
    spawned: Vec<(WorkerKey, usize, u64, Pid)>,
    /// Every action, for assertions on the log.
    log: Vec<Action>,
    /// Spawns for these slots fail (as under an fd limit).
    failing_slots: Vec<usize>,
    /// Opening a generation's own listening sockets fails (as under an fd limit).
    listeners_fail: bool,
}

/// One replacement at a time, readiness by `READY=1` only.
fn config(size: usize) -> ClusterConfig {
    ClusterConfig {
        ready_delay: None,
        surge: Surge::Count(1),
        ..ClusterConfig::new(size)
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Timeline {
    fn new(config: ClusterConfig) -> Self {
        Self {
            cluster: Cluster::new(config),
            now: Instant::now(),
            next_pid: 100,
            spawned: Vec::new(),
            log: Vec::new(),
            failing_slots: Vec::new(),
            listeners_fail: false,
        }
    }

    /// Feeds an event; spawns are answered at once. Returns the signals and exits asked for.
    fn feed(&mut self, event: Event) -> Vec<Action> {
        let mut pending = vec![event];
        let mut out = Vec::new();
        while let Some(event) = pending.pop() {
            for action in self.cluster.handle(self.now, event) {
                self.log.push(action.clone());
                match action {
                    Action::Spawn { key, slot, .. } if self.failing_slots.contains(&slot) => {
                        pending.push(Event::SpawnFailed {
                            key,
                            reason: "Too many open files".to_owned(),
                        });
                    }
                    Action::Spawn {
                        key,
                        slot,
                        generation,
                        ..
                    } => {
                        let pid = Pid(self.next_pid);
                        self.next_pid += 1;
                        self.spawned.push((key, slot, generation, pid));
                        pending.push(Event::Spawned { key, pid });
                    }
                    Action::OpenListeners { generation } if self.listeners_fail => {
                        pending.push(Event::ListenersShared { generation });
                    }
                    Action::Signal { .. } | Action::Exit(_) => out.push(action),
                    Action::Report(_)
                    | Action::RollEnded(_)
                    | Action::Lingering { .. }
                    | Action::Ready(_)
                    | Action::RollStarted { .. }
                    | Action::RollRefused { .. }
                    | Action::Abandon { .. }
                    | Action::Notify(_)
                    | Action::ResizeAnswered { .. }
                    | Action::ExitAnswered { .. }
                    | Action::RequestRoll
                    | Action::ProbeStarting { .. }
                    | Action::ProbeRetiring { .. }
                    | Action::CheckGroups { .. }
                    | Action::Unseen { .. }
                    | Action::OpenListeners { .. }
                    | Action::Steer { .. }
                    | Action::CloseListeners { .. }
                    | Action::StopAccepting
                    | Action::ProbeDraining { .. } => {}
                }
            }
        }
        out
    }

    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.feed(Event::Tick)
    }

    fn key_of(&self, pid: Pid) -> WorkerKey {
        self.spawned.iter().find(|s| s.3 == pid).unwrap().0
    }

    fn ready(&mut self, pid: Pid) -> Vec<Action> {
        let key = self.key_of(pid);
        self.feed(Event::Ready { key })
    }

    fn exit(&mut self, pid: Pid, code: i32) -> Vec<Action> {
        self.feed(Event::Exited {
            pid,
            end: ProcessEnd::Code(code),
        })
    }

    /// Every worker asked to stop gracefully that has not exited yet exits (as most do at once
    /// on SIGTERM).
    fn exit_stopped(&mut self) {
        let exited: Vec<Pid> = self
            .log
            .iter()
            .filter_map(|action| match action {
                Action::Signal { pid, .. } => Some(*pid),
                _ => None,
            })
            .collect();
        for pid in exited {
            if self
                .cluster
                .workers
                .iter()
                .any(|worker| worker.pid == Some(pid))
            {
                self.exit(pid, 0);
            }
        }
    }

    /// The worker process exited, leaving processes of its group behind.
    fn leader_exit(&mut self, pid: Pid, code: i32) -> Vec<Action> {
        self.feed(Event::LeaderExited {
            pid,
            end: ProcessEnd::Code(code),
        })
    }

    fn pids(&self) -> Vec<Pid> {
        self.spawned.iter().map(|s| s.3).collect()
    }

    fn last_pid(&self) -> Pid {
        self.spawned.last().unwrap().3
    }

    /// Whether the core reported something `wanted`.
    fn reported(&self, wanted: impl Fn(&Report) -> bool) -> bool {
        self.log.iter().any(|action| match action {
            Action::Report(report) => wanted(report),
            _ => false,
        })
    }

    /// The workers reported ready: slot, pid, generation and rule.
    fn readies(&self) -> Vec<(usize, Option<Pid>, u64, ReadyBy)> {
        self.log
            .iter()
            .filter_map(|action| match action {
                Action::Ready(ready) => {
                    Some((ready.slot, ready.pid, ready.generation, ready.how.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The ends of the rolls, in order.
    fn roll_ends(&self) -> Vec<RollEnd> {
        self.log
            .iter()
            .filter_map(|action| match action {
                Action::RollEnded(end) => Some(end.clone()),
                _ => None,
            })
            .collect()
    }

    /// The failures reported, with the restarts they scheduled.
    fn restarts(&self) -> Vec<(Failure, Option<Restart>)> {
        self.log
            .iter()
            .filter_map(|action| match action {
                Action::Report(Report::Failed {
                    failure, restart, ..
                }) => Some((failure.clone(), *restart)),
                _ => None,
            })
            .collect()
    }
}

/// Whether a roll of `size` workers to `generation` completed.
fn completed(t: &Timeline, size: usize, generation: u64) -> bool {
    t.roll_ends()
        .iter()
        .any(|end| end.aborted.is_none() && end.size == size && end.generation == generation)
}

fn term(pid: Pid) -> Action {
    Action::Signal {
        pid,
        kind: StopKind::Graceful,
    }
}

fn kill(pid: Pid) -> Action {
    Action::Signal {
        pid,
        kind: StopKind::Kill,
    }
}

/// A timeline with `size` workers all ready.
fn running(size: usize) -> Timeline {
    running_with(config(size))
}

/// A timeline of `config` with every worker of its first generation ready.
fn running_with(config: ClusterConfig) -> Timeline {
    let mut t = Timeline::new(config);
    t.feed(Event::Start);
    for pid in t.pids() {
        t.ready(pid);
    }
    t
}

#[test]
fn start_spawns_size_workers_of_generation_one_and_announces_ready() {
    let mut t = Timeline::new(config(3));
    t.feed(Event::Start);
    let slots: Vec<(usize, u64)> = t.spawned.iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(slots, [(0, 1), (1, 1), (2, 1)]);
    t.ready(Pid(100));
    t.ready(Pid(101));
    assert!(!t.log.contains(&Action::Notify(MasterState::Ready)));
    t.ready(Pid(102));
    assert!(t.reported(|r| matches!(r, Report::AllReady { size: 3, .. })));
    assert!(t.log.contains(&Action::Notify(MasterState::Ready)));
}

#[test]
fn auto_readiness_marks_a_live_worker_ready_after_the_delay() {
    let mut t = Timeline::new(ClusterConfig {
        ready_delay: Some(ms(1000)),
        ..config(1)
    });
    t.feed(Event::Start);
    assert_eq!(t.cluster.next_deadline(), Some(t.now + ms(1000)));
    t.advance(ms(999));
    assert!(t.readies().is_empty());
    t.advance(ms(1));
    assert_eq!(
        t.readies(),
        [(0, Some(Pid(100)), 1, ReadyBy::Alive(ms(1000)))]
    );
}

#[test]
fn roll_starts_each_replacement_before_stopping_the_old_worker() {
    let mut t = running(2);
    assert_eq!(t.feed(Event::Roll(0)), []);
    assert_eq!(t.spawned.len(), 3, "exactly one replacement at a time");
    assert_eq!(t.spawned[2].1, 0);
    assert_eq!(t.spawned[2].2, 2);
    // Replacement for slot 0 ready: old w0 stopped, replacement for slot 1 spawned.
    assert_eq!(t.ready(Pid(102)), [term(Pid(100))]);
    assert_eq!((t.spawned[3].1, t.spawned[3].2), (1, 2));
    assert_eq!(t.ready(Pid(103)), [term(Pid(101))]);
    // The switch is complete once no old worker can answer: gone (or seen switched out).
    assert!(t.roll_ends().is_empty());
    assert_eq!(t.exit(Pid(100), 0), []);
    assert!(t.roll_ends().is_empty());
    assert_eq!(t.exit(Pid(101), 0), []);
    assert!(completed(&t, 2, 2));
    assert_eq!(t.cluster.serving_generation(), 2);
    assert_eq!(t.spawned.len(), 4, "a stopped worker is not restarted");
}

#[test]
fn a_replacement_that_exits_before_ready_aborts_the_roll_and_keeps_the_old_workers() {
    let mut t = running(2);
    t.feed(Event::Roll(0));
    assert_eq!(t.exit(Pid(102), 1), []);
    let ends = t.roll_ends();
    assert_eq!(
        ends[0].aborted,
        Some(Aborted {
            worker: WorkerId {
                slot: 0,
                pid: Some(Pid(102)),
                generation: 2
            },
            failure: Failure::EndedStarting(ProcessEnd::Code(1)),
        })
    );
    assert_eq!(
        (ends.len(), ends[0].serving, ends[0].slots.as_slice()),
        (1, 1, &[1, 1][..])
    );
    assert_eq!(t.spawned.len(), 3, "no further replacement");
    assert_eq!(t.cluster.serving_generation(), 1);
    // The next roll gets a new generation number.
    t.feed(Event::Roll(0));
    assert_eq!(t.spawned.last().unwrap().2, 3);
}

#[test]
fn a_replacement_missing_its_deadline_is_stopped_gracefully_then_killed() {
    let mut t = running(1);
    t.feed(Event::Roll(0));
    let replacement = t.last_pid();
    let deadline = t.cluster.config.ready_timeout;
    assert_eq!(t.advance(deadline), [term(replacement)]);
    assert!(matches!(
        t.roll_ends()[..],
        [RollEnd {
            aborted: Some(Aborted {
                failure: Failure::NotReadyWithin(_),
                ..
            }),
            ..
        }]
    ));
    let kill_timeout = t.cluster.config.kill_timeout;
    assert_eq!(t.advance(kill_timeout), [kill(replacement)]);
    assert_eq!(t.exit(replacement, 137), []);
    assert_eq!(t.cluster.serving_generation(), 1);
}

#[test]
fn roll_bursts_coalesce_into_one_running_and_one_queued() {
    let mut t = running(1);
    for _ in 0..10 {
        t.feed(Event::Roll(0));
    }
    assert_eq!(t.spawned.len(), 2);
    let first = t.last_pid();
    t.ready(first);
    t.exit_stopped();
    assert!(completed(&t, 1, 2));
    assert_eq!(t.spawned.len(), 3, "the queued roll started");
    assert_eq!(t.spawned[2].2, 3);
    t.ready(t.last_pid());
    assert_eq!(t.spawned.len(), 3, "nothing more queued");
}

#[test]
fn ready_workers_never_drop_below_size_during_a_roll() {
    let mut t = running(3);
    t.feed(Event::Roll(0));
    let mut stopped = Vec::new();
    for _ in 0..3 {
        let replacement = t.last_pid();
        for action in t.ready(replacement) {
            if let Action::Signal { pid, .. } = action {
                stopped.push(pid);
            }
        }
        // Every stop so far was preceded by a ready replacement of the same slot.
        assert!(stopped.len() <= t.spawned.len() - 3);
    }
    assert_eq!(stopped, [Pid(100), Pid(101), Pid(102)]);
}

#[test]
fn crashes_restart_with_backoff_that_resets_after_a_stable_run() {
    let mut t = running(1);
    t.exit(Pid(100), 1);
    assert_eq!(t.spawned.len(), 2, "first restart is immediate");
    t.ready(Pid(101));
    t.exit(Pid(101), 1);
    assert_eq!(t.spawned.len(), 2, "second waits");
    t.advance(ms(99));
    assert_eq!(t.spawned.len(), 2);
    t.advance(ms(1));
    assert_eq!(t.spawned.len(), 3);
    t.ready(Pid(102));
    t.exit(Pid(102), 1);
    t.advance(ms(199));
    assert_eq!(t.spawned.len(), 3, "third waits 200ms");
    t.advance(ms(1));
    assert_eq!(t.spawned.len(), 4);
    t.ready(Pid(103));
    t.advance(t.cluster.config.backoff.stable);
    t.exit(Pid(103), 1);
    assert_eq!(t.spawned.len(), 5, "a stable run resets the backoff");
}

#[test]
fn a_first_generation_that_never_gets_ready_ends_the_master_with_the_worker_status() {
    let mut t = Timeline::new(config(2));
    t.feed(Event::Start);
    t.exit(Pid(100), 3);
    t.exit(Pid(101), 3);
    t.exit(Pid(102), 3);
    t.exit(Pid(103), 3);
    t.advance(ms(100));
    // Slot 0 failed 3 times, but slot 1's worker may still get ready: no verdict yet.
    assert_eq!(t.exit(Pid(104), 3), []);
    assert!(!t.reported(|r| matches!(r, Report::NeverReady { .. })));
    // Now every slot failed 3 times in a row: the master ends.
    let out = t.exit(Pid(105), 3);
    let [Action::Exit(reason)] = out.as_slice() else {
        panic!("expected an exit, got {out:?}");
    };
    assert!(matches!(reason, ExitReason::NeverReady { slot: 1, .. }));
    assert_eq!(reason.exit_status(), 3);
    assert!(t.reported(|r| matches!(
        r,
        Report::NeverReady {
            attempts: 3,
            waits: false,
            ..
        }
    )));
}

#[test]
fn spawns_failing_in_one_slot_never_kill_a_healthy_worker_of_another() {
    let mut t = Timeline::new(ClusterConfig {
        ready_delay: Some(ms(1000)),
        ..config(2)
    });
    t.failing_slots = vec![1];
    t.feed(Event::Start);
    for _ in 0..5 {
        t.advance(ms(100));
    }
    assert!(t.reported(|r| matches!(
        r,
        Report::Failed { failure: Failure::NotSpawned(why), .. } if why == "Too many open files"
    )));
    assert!(!t.reported(|r| matches!(r, Report::NeverReady { .. })));
    assert!(!t.log.iter().any(|a| matches!(a, Action::Signal { .. })));
    t.advance(ms(500));
    assert_eq!(
        t.readies(),
        [(0, Some(Pid(100)), 1, ReadyBy::Alive(ms(1000)))]
    );
    t.failing_slots.clear();
    t.advance(ms(10_000));
    assert_eq!(
        (t.spawned[1].1, t.spawned[1].2),
        (1, 1),
        "slot 1 comes back"
    );
}

#[test]
fn in_dev_mode_a_first_generation_that_never_gets_ready_waits_for_the_next_start() {
    let mut t = Timeline::new(ClusterConfig {
        never_ready: NeverReady::Wait,
        ..config(1)
    });
    t.feed(Event::Start);
    t.exit(Pid(100), 1);
    t.exit(Pid(101), 1);
    t.advance(ms(100));
    assert_eq!(t.exit(Pid(102), 1), [], "no exit");
    assert!(t.reported(|r| matches!(
        r,
        Report::NeverReady {
            attempts: 3,
            waits: true,
            ..
        }
    )));
    assert!(t.cluster.is_waiting());
    assert_eq!(t.advance(ms(60_000)), []);
    assert_eq!(t.spawned.len(), 3, "no restart while waiting");
    // A new build: a new first generation.
    t.feed(Event::Start);
    assert_eq!((t.spawned[3].1, t.spawned[3].2), (0, 2));
    t.ready(Pid(103));
    assert!(t.reported(|r| matches!(r, Report::AllReady { size: 1, .. })));
    // A roll request while waiting starts again too.
    let mut t = Timeline::new(ClusterConfig {
        never_ready: NeverReady::Wait,
        ..config(1)
    });
    t.feed(Event::Start);
    t.exit(Pid(100), 1);
    t.exit(Pid(101), 1);
    t.advance(ms(100));
    t.exit(Pid(102), 1);
    t.feed(Event::Roll(0));
    assert_eq!(t.spawned.len(), 4);
    assert!(!t.cluster.is_waiting());
}

#[test]
fn once_a_worker_was_ready_start_failures_never_end_the_master() {
    let mut t = running(1);
    for _ in 0..10 {
        t.exit(t.last_pid(), 1);
        t.advance(ms(10_000));
    }
    assert!(!t.log.iter().any(|a| matches!(a, Action::Exit(_))));
    assert_eq!(t.spawned.len(), 11);
}

#[test]
fn graceful_stop_signals_everyone_kills_after_the_timeout_and_exits_zero() {
    let mut t = running(2);
    assert_eq!(
        t.feed(Event::Stop { hard: false }),
        [term(Pid(100)), term(Pid(101))]
    );
    assert_eq!(t.exit(Pid(100), 0), []);
    let out = t.advance(t.cluster.config.kill_timeout);
    assert_eq!(out, [kill(Pid(101))]);
    let out = t.exit(Pid(101), 137);
    assert_eq!(out, [Action::Exit(ExitReason::Stopped)]);
    assert_eq!(ExitReason::Stopped.exit_status(), 0);
}

#[test]
fn a_second_stop_may_escalate_to_hard_and_exits_one() {
    let mut t = running(2);
    t.feed(Event::Stop { hard: false });
    assert_eq!(
        t.feed(Event::Stop { hard: true }),
        [kill(Pid(100)), kill(Pid(101))]
    );
    t.exit(Pid(100), 137);
    assert_eq!(t.exit(Pid(101), 137), [Action::Exit(ExitReason::Killed)]);
    assert_eq!(ExitReason::Killed.exit_status(), 1);
}

#[test]
fn no_restart_and_no_roll_while_stopping() {
    let mut t = running(1);
    t.feed(Event::Stop { hard: false });
    t.feed(Event::Roll(0));
    t.feed(Event::Resize {
        size: 3,
        request: None,
    });
    assert_eq!(t.spawned.len(), 1);
    assert_eq!(t.exit(Pid(100), 1), [Action::Exit(ExitReason::Stopped)]);
    assert_eq!(t.spawned.len(), 1);
}

#[test]
fn resize_grows_with_new_slots_and_shrinks_from_the_top() {
    let mut t = running(2);
    t.feed(Event::Resize {
        size: 3,
        request: None,
    });
    assert_eq!((t.spawned[2].1, t.spawned[2].2), (2, 1));
    t.ready(Pid(102));
    assert_eq!(
        t.feed(Event::Resize {
            size: 1,
            request: None
        }),
        [term(Pid(101)), term(Pid(102))]
    );
    assert_eq!(t.cluster.size(), 1);
    t.exit(Pid(101), 0);
    t.exit(Pid(102), 0);
    assert_eq!(t.spawned.len(), 3);
    assert_eq!(
        t.feed(Event::Resize {
            size: 0,
            request: None
        }),
        [],
        "zero is refused"
    );
}

#[test]
fn crash_restarts_run_the_serving_generation() {
    let mut t = running(1);
    t.feed(Event::Roll(0));
    t.ready(t.last_pid());
    t.exit(Pid(100), 0);
    t.exit(t.last_pid(), 1);
    assert_eq!(t.spawned.last().unwrap().2, 2);
}

#[test]
fn unknown_children_are_ignored() {
    let mut t = running(1);
    assert_eq!(t.exit(Pid(9999), 0), []);
    assert_eq!(t.spawned.len(), 1);
}

#[test]
fn a_worker_whose_watchdog_runs_out_is_stopped_and_replaced() {
    let mut t = Timeline::new(ClusterConfig {
        watchdog: Some(ms(1000)),
        ..config(1)
    });
    t.feed(Event::Start);
    t.ready(Pid(100));
    assert_eq!(t.advance(ms(900)), []);
    let key = t.key_of(Pid(100));
    t.feed(Event::Watchdog { key });
    assert_eq!(t.advance(ms(900)), [], "the ping moved the deadline");
    assert_eq!(t.advance(ms(100)), [term(Pid(100))]);
    assert_eq!(
        t.restarts(),
        [(
            Failure::NoWatchdog(ms(1000)),
            Some(Restart {
                delay: Duration::ZERO,
                generation: 1
            })
        )]
    );
    assert_eq!(t.spawned.len(), 2, "replaced at once");
    assert_eq!(t.exit(Pid(100), 0), [], "its exit is expected");
    assert_eq!(t.spawned.len(), 2);
}

#[test]
fn without_a_watchdog_silence_is_fine() {
    let mut t = running(1);
    assert_eq!(t.cluster.next_deadline(), None);
    assert_eq!(t.advance(ms(3_600_000)), []);
}

#[test]
fn a_worker_stopping_by_itself_is_replaced_at_once_and_its_exit_is_no_crash() {
    let mut t = running(2);
    let key = t.key_of(Pid(100));
    assert_eq!(
        t.feed(Event::Stopping { key }),
        [],
        "no signal: it is leaving anyway"
    );
    assert_eq!(
        (t.spawned[2].1, t.spawned[2].2),
        (0, 1),
        "slot 0 gets a new worker"
    );
    assert_eq!(t.exit(Pid(100), 0), []);
    assert!(t.restarts().is_empty());
    assert_eq!(t.spawned.len(), 3);
    // One that lingers past the kill timeout is killed.
    let key = t.key_of(Pid(101));
    t.feed(Event::Stopping { key });
    assert_eq!(t.advance(t.cluster.config.kill_timeout), [kill(Pid(101))]);
}

#[test]
fn stopping_after_being_asked_to_changes_nothing() {
    let mut t = running(1);
    t.feed(Event::Stop { hard: false });
    let key = t.key_of(Pid(100));
    assert_eq!(t.feed(Event::Stopping { key }), []);
    assert_eq!(t.spawned.len(), 1);
}

/// Issue: an aborted roll left a slot with no worker when its old worker had died while the
/// replacement was starting.
#[test]
fn an_aborted_roll_never_leaves_a_slot_empty_after_its_old_worker_crashed() {
    let mut t = running(1);
    t.feed(Event::Roll(0));
    let replacement = t.last_pid();
    // The old worker dies while the replacement starts: the replacement covers the slot.
    t.exit(Pid(100), 1);
    assert_eq!(t.spawned.len(), 2, "covered by the replacement");
    // Then the replacement fails: the slot must get a worker of its own generation again.
    t.exit(replacement, 1);
    assert!(t.roll_ends().iter().any(|end| end.aborted.is_some()));
    assert_eq!(t.spawned.len(), 3);
    assert_eq!((t.spawned[2].1, t.spawned[2].2), (0, 1));
    assert!(t.reported(|r| matches!(
        r,
        Report::Uncovered {
            slot: 0,
            restart: Restart { generation: 1, .. }
        }
    )));
}

#[test]
fn an_aborted_roll_never_leaves_a_slot_empty_after_a_watchdog_stop_or_a_pending_restart() {
    // The old worker's watchdog ran out while the replacement started.
    let mut t = Timeline::new(ClusterConfig {
        watchdog: Some(ms(1000)),
        ..config(1)
    });
    t.feed(Event::Start);
    t.ready(Pid(100));
    t.feed(Event::Roll(0));
    t.advance(ms(1000));
    t.exit(Pid(100), 0);
    t.exit(t.last_pid(), 1);
    assert_eq!(
        (t.spawned.last().unwrap().1, t.spawned.last().unwrap().2),
        (0, 1)
    );
    // The old worker said STOPPING=1 during the roll.
    let mut t = running(1);
    t.feed(Event::Roll(0));
    let key = t.key_of(Pid(100));
    t.feed(Event::Stopping { key });
    t.exit(Pid(100), 0);
    t.exit(Pid(101), 1);
    assert_eq!(t.spawned.len(), 3);
    assert_eq!((t.spawned[2].1, t.spawned[2].2), (0, 1));
    // A crash restart was pending (backoff) when the roll spawned its replacement.
    let mut t = running(1);
    t.exit(Pid(100), 1);
    t.ready(Pid(101));
    t.exit(Pid(101), 1);
    t.feed(Event::Roll(0));
    let replacement = t.last_pid();
    t.exit(replacement, 1);
    assert!(
        t.cluster.slots[0].restart_at.is_some() || t.spawned.len() == 4,
        "slot 0 has a worker or a scheduled restart"
    );
    t.advance(ms(10_000));
    assert_eq!(t.spawned.last().unwrap().1, 0);
    assert_eq!(t.spawned.len(), 4);
}

#[test]
fn a_partly_aborted_roll_reports_which_slot_runs_which_generation_and_restarts_keep_it() {
    let mut t = running(4);
    t.feed(Event::Roll(0));
    t.ready(t.last_pid());
    t.ready(t.last_pid());
    t.exit(t.last_pid(), 1);
    let end = t.roll_ends().pop().unwrap();
    assert_eq!((end.rolled, end.size, end.generation), (2, 4, 2));
    assert_eq!(end.slots, [2, 2, 1, 1], "{:?}", t.log);
    assert_eq!(t.cluster.slot_generations(), [2, 2, 1, 1]);
    assert_eq!(t.cluster.oldest_generation_in_use(), 1);
    // Slot 0 runs generation 2 now (pid 104); slot 3 still generation 1 (pid 103).
    t.exit(Pid(104), 1);
    assert_eq!(t.spawned.last().unwrap().2, 2);
    assert!(t.restarts().contains(&(
        Failure::Ended(ProcessEnd::Code(1)),
        Some(Restart {
            delay: Duration::ZERO,
            generation: 2
        })
    )));
    t.exit(Pid(103), 1);
    assert_eq!(t.spawned.last().unwrap().2, 1);
    // The next complete roll brings every slot to one generation.
    t.feed(Event::Roll(0));
    for _ in 0..4 {
        t.ready(t.last_pid());
    }
    t.exit_stopped();
    assert_eq!(t.cluster.slot_generations(), [3, 3, 3, 3]);
    assert!(completed(&t, 4, 3));
}

#[test]
fn processes_a_crashed_worker_leaves_in_its_group_are_stopped_then_killed() {
    let mut t = running(1);
    // The worker exits, its group lives on: its slot restarts at once, the group is stopped.
    assert_eq!(t.leader_exit(Pid(100), 1), [term(Pid(100))]);
    assert!(t.reported(|r| *r
        == Report::LeftBehind(WorkerId {
            slot: 0,
            pid: Some(Pid(100)),
            generation: 1
        })));
    assert_eq!(
        t.spawned.len(),
        2,
        "the crash restart does not wait for the leftovers"
    );
    t.ready(Pid(101));
    assert_eq!(t.advance(t.cluster.config.kill_timeout), [kill(Pid(100))]);
    assert!(t.reported(|r| matches!(
        r,
        Report::Killing { worker, rest_of_group: true, .. } if *worker == WorkerId { slot: 0, pid: Some(Pid(100)), generation: 1 }
    )));
    assert_eq!(t.exit(Pid(100), 1), []);
    assert_eq!(t.spawned.len(), 2, "the group's end is no second crash");
}

#[test]
fn a_stopping_worker_s_group_keeps_its_deadline_and_the_master_waits_for_it() {
    let mut t = running(1);
    t.feed(Event::Stop { hard: false });
    t.advance(ms(1000));
    // The shell wrapper exits at once; the app behind it still drains.
    assert_eq!(t.leader_exit(Pid(100), 143), [], "no second stop signal");
    assert!(!t.log.iter().any(|a| matches!(a, Action::Exit(_))));
    let rest = t.cluster.config.kill_timeout.checked_sub(ms(1000)).unwrap();
    assert_eq!(t.advance(rest), [kill(Pid(100))]);
    assert_eq!(
        t.exit(Pid(100), 143),
        [Action::Exit(ExitReason::Stopped)],
        "the master ends once the group is gone"
    );
}

#[test]
fn a_hard_stop_kills_the_leftovers_of_groups_too() {
    let mut t = running(2);
    t.leader_exit(Pid(100), 1);
    let out = t.feed(Event::Stop { hard: true });
    assert!(out.contains(&kill(Pid(100))), "{out:?}");
    assert!(out.contains(&kill(Pid(101))), "{out:?}");
}

#[test]
fn counts_in_messages_are_plural_only_when_they_should_be() {
    let mut t = Timeline::new(config(1));
    t.feed(Event::Start);
    t.ready(Pid(100));
    assert!(t.reported(|r| matches!(r, Report::AllReady { size: 1, .. })));
    t.feed(Event::Stop { hard: false });
    assert!(t.reported(|r| *r
        == Report::Stopping {
            live: 1,
            hard: false
        }));
    // A stop with nothing running says no count at all.
    let mut t = Timeline::new(config(1));
    t.failing_slots = vec![0];
    t.feed(Event::Start);
    t.feed(Event::Stop { hard: true });
    assert!(
        t.reported(|r| *r
            == Report::Stopping {
                live: 0,
                hard: true
            }),
        "{:?}",
        t.log
    );
}

fn roll_ends(t: &Timeline) -> Vec<super::RollEnd> {
    t.log
        .iter()
        .filter_map(|action| match action {
            Action::RollEnded(end) => Some(end.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_surge_of_all_starts_every_replacement_at_once_and_stops_each_old_one_as_its_own_is_ready() {
    let mut t = running_with(ClusterConfig {
        surge: Surge::All,
        ..config(3)
    });
    assert_eq!(t.feed(Event::Roll(7)), []);
    let replacements: Vec<(usize, u64)> = t.spawned[3..].iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(replacements, [(0, 2), (1, 2), (2, 2)], "all at once");
    t.advance(ms(5));
    assert_eq!(t.ready(Pid(104)), [term(Pid(101))], "slot 1's old one only");
    t.advance(ms(10));
    assert_eq!(t.ready(Pid(103)), [term(Pid(100))]);
    assert!(roll_ends(&t).is_empty());
    t.advance(ms(20));
    assert_eq!(t.ready(Pid(105)), [term(Pid(102))]);
    t.exit(Pid(101), 0);
    t.exit(Pid(100), 0);
    assert!(roll_ends(&t).is_empty(), "w2 may still answer");
    t.advance(ms(3));
    t.exit(Pid(102), 0);
    let ends = roll_ends(&t);
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].requests, [7]);
    assert_eq!(
        ends[0].switch,
        Some(ms(33)),
        "first new ready to the last old gone"
    );
    assert_eq!(ends[0].elapsed, ms(38));
    assert!(completed(&t, 3, 2));
}

#[test]
fn a_percentage_surge_rounds_up_and_a_count_is_capped_by_the_size() {
    assert_eq!(Surge::Percent(25).of(8), 2);
    assert_eq!(Surge::Percent(25).of(3), 1);
    assert_eq!(Surge::Percent(1).of(1), 1);
    assert_eq!(Surge::Count(10).of(4), 4);
    assert_eq!(Surge::All.of(6), 6);
    let mut t = running_with(ClusterConfig {
        surge: Surge::Percent(50),
        ..config(4)
    });
    t.feed(Event::Roll(1));
    assert_eq!(t.spawned.len(), 6, "two at a time");
    t.ready(Pid(104));
    assert_eq!(t.spawned.len(), 7, "the next one as soon as one is ready");
    assert_eq!(t.spawned[6].1, 2);
}

#[test]
fn an_aborted_surge_stops_the_replacements_not_yet_ready() {
    let mut t = running_with(ClusterConfig {
        surge: Surge::All,
        ..config(3)
    });
    t.feed(Event::Roll(1));
    t.ready(Pid(103));
    let out = t.exit(Pid(104), 1);
    assert_eq!(out, [term(Pid(105))], "the one still starting is stopped");
    assert_eq!(t.cluster.slot_generations(), [2, 1, 1]);
    let end = t.roll_ends().pop().unwrap();
    assert_eq!((end.rolled, end.size, end.generation), (1, 3, 2));
    // Its exit is expected: slot 2 keeps its old worker, nothing restarts.
    t.exit(Pid(105), 0);
    assert_eq!(t.spawned.len(), 6);
}

#[test]
fn queued_roll_requests_are_answered_by_the_roll_that_serves_them() {
    let mut t = running(1);
    t.feed(Event::Roll(1));
    t.feed(Event::Roll(2));
    t.feed(Event::Roll(3));
    t.ready(t.last_pid());
    t.exit_stopped();
    t.ready(t.last_pid());
    t.exit_stopped();
    let ends = roll_ends(&t);
    assert_eq!(ends.len(), 2);
    assert_eq!(ends[0].requests, [1]);
    assert_eq!(ends[1].requests, [2, 3]);
}

#[test]
fn slots_added_during_a_roll_are_rolled_too() {
    let mut t = running(1);
    t.feed(Event::Roll(1));
    t.feed(Event::Resize {
        size: 2,
        request: None,
    });
    // Slot 1 starts with the serving generation, and the roll replaces it after slot 0.
    assert_eq!((t.spawned[2].1, t.spawned[2].2), (1, 1));
    t.ready(Pid(102));
    t.ready(Pid(101));
    assert_eq!((t.spawned[3].1, t.spawned[3].2), (1, 2));
    t.ready(Pid(103));
    t.exit_stopped();
    assert_eq!(t.cluster.slot_generations(), [2, 2]);
    assert!(completed(&t, 2, 2));
}

#[test]
fn a_stopping_worker_that_lingers_is_reported_once_before_its_sigkill() {
    let mut t = running(2);
    t.feed(Event::Stop { hard: false });
    t.exit(Pid(101), 0);
    t.advance(ms(1999));
    assert!(!t.log.iter().any(|a| matches!(a, Action::Lingering { .. })));
    t.advance(ms(1));
    let lingering: Vec<&Action> = t
        .log
        .iter()
        .filter(|a| matches!(a, Action::Lingering { .. }))
        .collect();
    assert_eq!(
        lingering,
        [&Action::Lingering {
            pid: Pid(100),
            slot: 0,
            generation: 1,
            kill_in: Some(ms(28_000)),
            ctrl_c_kills: false,
        }]
    );
    assert_eq!(t.advance(ms(28_000)), [kill(Pid(100))]);
    assert!(t.reported(|r| *r
        == Report::Killing {
            worker: WorkerId {
                slot: 0,
                pid: Some(Pid(100)),
                generation: 1
            },
            rest_of_group: false,
            after: ms(30_000),
        }));
}

#[test]
fn the_log_says_which_rule_made_a_worker_ready() {
    let mut t = Timeline::new(ClusterConfig {
        ready_delay: Some(ms(1000)),
        ..config(3)
    });
    t.feed(Event::Start);
    t.ready(Pid(100));
    let key = t.key_of(Pid(101));
    t.feed(Event::SeenAccepting {
        key,
        how: "seen accepting (epoll)".to_owned(),
    });
    t.advance(ms(1000));
    assert_eq!(
        t.readies(),
        [
            (0, Some(Pid(100)), 1, ReadyBy::Notified),
            (
                1,
                Some(Pid(101)),
                1,
                ReadyBy::Seen("seen accepting (epoll)".to_owned())
            ),
            (2, Some(Pid(102)), 1, ReadyBy::Alive(ms(1000))),
        ]
    );
}

/// The pids the core gave up on after their SIGKILL.
fn abandoned(t: &Timeline) -> Vec<Pid> {
    t.log
        .iter()
        .filter_map(|action| match action {
            Action::Abandon { pid } => Some(*pid),
            _ => None,
        })
        .collect()
}

#[test]
fn a_hard_stop_ends_a_grace_after_sigkill_though_zombies_of_a_group_remain() {
    let mut t = running(2);
    assert_eq!(
        t.feed(Event::Stop { hard: true }),
        [kill(Pid(100)), kill(Pid(101))]
    );
    // The workers are reaped; zombies of their groups stay, reaped by nobody.
    t.leader_exit(Pid(100), 137);
    t.leader_exit(Pid(101), 137);
    assert_eq!(
        t.advance(super::KILLED_GROUP_GRACE.checked_sub(ms(1)).unwrap()),
        []
    );
    assert!(abandoned(&t).is_empty());
    assert_eq!(
        t.advance(ms(1)),
        [Action::Exit(ExitReason::Killed)],
        "a killed group is gone a grace after its SIGKILL"
    );
    assert_eq!(abandoned(&t), [Pid(100), Pid(101)]);
    assert!(t.reported(|r| *r
        == Report::Abandoned {
            worker: WorkerId {
                slot: 0,
                pid: Some(Pid(100)),
                generation: 1
            },
            after: super::KILLED_GROUP_GRACE,
        }));
}

#[test]
fn a_group_killed_at_its_kill_deadline_is_gone_a_grace_later() {
    let mut t = running(1);
    t.feed(Event::Stop { hard: false });
    t.leader_exit(Pid(100), 143);
    assert_eq!(t.advance(t.cluster.config.kill_timeout), [kill(Pid(100))]);
    assert_eq!(
        t.advance(super::KILLED_GROUP_GRACE),
        [Action::Exit(ExitReason::Stopped)]
    );
    assert_eq!(abandoned(&t), [Pid(100)]);
}

#[test]
fn a_killed_worker_not_yet_reaped_is_waited_for_and_its_group_then_abandoned_at_once() {
    let mut t = running(1);
    t.feed(Event::Stop { hard: true });
    // The worker process itself is our child: its exit is certain to come, and is waited for.
    assert_eq!(t.advance(super::KILLED_GROUP_GRACE * 5), []);
    assert!(abandoned(&t).is_empty());
    t.leader_exit(Pid(100), 137);
    // Its grace ran out 4 s ago: due at once.
    assert!(
        t.cluster
            .next_deadline()
            .is_some_and(|at| Some(at) <= t.now.checked_sub(super::KILLED_GROUP_GRACE * 4))
    );
    assert_eq!(t.feed(Event::Tick), [Action::Exit(ExitReason::Killed)]);
}

#[test]
fn a_crashed_worker_s_killed_leftovers_are_abandoned_while_running_too() {
    let mut t = running(1);
    t.leader_exit(Pid(100), 1);
    t.ready(Pid(101));
    assert_eq!(t.advance(t.cluster.config.kill_timeout), [kill(Pid(100))]);
    t.advance(super::KILLED_GROUP_GRACE);
    assert_eq!(abandoned(&t), [Pid(100)]);
    // A late end of the abandoned group is an unknown pid: nothing happens.
    assert_eq!(t.exit(Pid(100), 137), []);
    assert_eq!(t.spawned.len(), 2);
}

#[test]
fn durations_too_large_for_an_instant_mean_never_and_do_not_panic() {
    let mut t = Timeline::new(ClusterConfig {
        ready_delay: Some(Duration::MAX),
        ready_timeout: Duration::MAX,
        kill_timeout: Duration::MAX,
        watchdog: Some(Duration::MAX),
        linger_note: Some(Duration::MAX),
        ..config(2)
    });
    t.feed(Event::Start);
    t.ready(Pid(100));
    assert_eq!(t.advance(Duration::from_hours(1)), [], "no deadline passed");
    t.feed(Event::Watchdog {
        key: t.key_of(Pid(100)),
    });
    t.ready(Pid(101));
    assert_eq!(
        t.feed(Event::Stop { hard: false }),
        [term(Pid(100)), term(Pid(101))]
    );
    assert_eq!(t.advance(Duration::from_hours(1)), [], "no SIGKILL yet");
    assert!(t.cluster.next_deadline().is_some_and(|at| at > t.now));
    assert_eq!(t.exit(Pid(100), 0), []);
    assert_eq!(t.exit(Pid(101), 0), [Action::Exit(ExitReason::Stopped)]);
}

#[test]
fn ready_workers_killed_from_outside_never_leave_more_than_half_the_slots_waiting() {
    let mut t = running(4);
    // Every worker is killed as soon as it is ready, again and again (a chaos test).
    for _ in 0..6 {
        let live: Vec<Pid> = t
            .cluster
            .workers
            .iter()
            .filter(|w| w.state == super::WorkerState::Ready)
            .filter_map(|w| w.pid)
            .collect();
        for pid in live {
            t.feed(Event::Exited {
                pid,
                end: ProcessEnd::Signal(9),
            });
            let waiting = t
                .cluster
                .slots
                .iter()
                .filter(|s| s.restart_at.is_some())
                .count();
            assert!(waiting <= 2, "{waiting} of 4 slots wait");
        }
        for (_, _, _, pid) in t.spawned.clone() {
            if t.cluster.workers.iter().any(|w| w.pid == Some(pid)) {
                t.ready(pid);
            }
        }
        t.advance(ms(50));
    }
    let delays: Vec<Duration> = t
        .restarts()
        .iter()
        .filter_map(|(_, r)| r.map(|r| r.delay))
        .collect();
    assert!(delays.contains(&Duration::ZERO));
    assert!(delays.contains(&ms(100)), "quick crashes still back off");
}

#[test]
fn a_worker_killed_after_it_served_a_second_restarts_at_once_every_time() {
    let mut t = running(1);
    for round in 0..5 {
        let pid = t.last_pid();
        t.advance(Duration::from_secs(1));
        t.feed(Event::Exited {
            pid,
            end: ProcessEnd::Signal(9),
        });
        assert_eq!(t.spawned.len(), round + 2, "restarted at once");
        t.ready(t.last_pid());
    }
    assert!(
        t.restarts()
            .iter()
            .all(|(_, restart)| restart.is_some_and(|r| r.delay.is_zero()))
    );
}

#[test]
fn failed_starts_back_off_in_every_slot_at_once() {
    let mut t = running(2);
    t.failing_slots = vec![0, 1];
    t.exit(Pid(100), 1);
    t.exit(Pid(101), 1);
    // Both restarts were tried at once and failed to spawn: both slots back off.
    let waiting = t
        .cluster
        .slots
        .iter()
        .filter(|s| s.restart_at.is_some())
        .count();
    assert_eq!(waiting, 2);
}

/// The actions of `t`'s log that `wanted` picks.
fn logged_actions(t: &Timeline, wanted: impl Fn(&Action) -> bool) -> Vec<Action> {
    t.log.iter().filter(|a| wanted(a)).cloned().collect()
}

fn resize_answers(t: &Timeline) -> Vec<(u64, ResizeAnswer)> {
    t.log
        .iter()
        .filter_map(|a| match a {
            Action::ResizeAnswered { request, answer } => Some((*request, *answer)),
            _ => None,
        })
        .collect()
}

fn refused_rolls(t: &Timeline) -> Vec<(u64, &'static str)> {
    t.log
        .iter()
        .filter_map(|a| match a {
            Action::RollRefused { request, why } => Some((*request, *why)),
            _ => None,
        })
        .collect()
}

/// A timeline whose driver probes starting workers.
fn probing(size: usize) -> Timeline {
    Timeline::new(ClusterConfig {
        probe_starting: true,
        ..config(size)
    })
}

#[test]
fn request_numbers_come_from_the_core_and_each_roll_request_gets_one_outcome() {
    let mut t = Timeline::new(config(2));
    let numbers: Vec<u64> = (0..3).map(|_| t.cluster.new_request()).collect();
    assert_eq!(numbers, [1, 2, 3], "never one number twice");
    // Before the start, a roll is refused at once.
    t.feed(Event::Roll(1));
    assert_eq!(refused_rolls(&t), [(1, "the cluster has not started yet")]);
    t.feed(Event::Start);
    for pid in t.pids() {
        t.ready(pid);
    }
    // Dev mode made no roll of the request (nothing serves yet): the core refuses it.
    t.feed(Event::RollDeclined(2));
    assert_eq!(refused_rolls(&t)[1], (2, "no generation serves yet"));
    // A roll that ends answers its request, and no other outcome follows.
    let request = t.cluster.new_request();
    t.feed(Event::Roll(request));
    while t.cluster.is_rolling() {
        t.ready(t.last_pid());
        t.exit_stopped();
    }
    let ends = logged_actions(&t, |a| matches!(a, Action::RollEnded(_)));
    assert!(
        matches!(&ends[..], [Action::RollEnded(end)] if end.requests == [request]),
        "{ends:?}"
    );
    t.feed(Event::Stop { hard: false });
    assert_eq!(refused_rolls(&t).len(), 2);
}

#[test]
fn a_resize_waiter_is_answered_once_every_slot_of_its_size_is_ready() {
    let mut t = running(2);
    let request = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 3,
        request: Some(request),
    });
    assert_eq!(resize_answers(&t), [], "the third worker is not ready yet");
    t.advance(ms(500));
    assert_eq!(resize_answers(&t), []);
    t.ready(t.last_pid());
    assert_eq!(resize_answers(&t), [(request, ResizeAnswer::Resized)]);
    // A waiter for the size the cluster has, every slot ready: answered at once.
    let again = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 3,
        request: Some(again),
    });
    assert_eq!(resize_answers(&t)[1], (again, ResizeAnswer::Resized));
    // A shrink is done once the extra workers are asked to stop.
    let shrink = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 1,
        request: Some(shrink),
    });
    assert_eq!(resize_answers(&t)[2], (shrink, ResizeAnswer::Resized));
}

#[test]
fn a_resize_waiter_is_superseded_by_a_later_size_and_refused_once_stopping() {
    let mut t = running(2);
    let first = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 4,
        request: Some(first),
    });
    let second = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 3,
        request: Some(second),
    });
    assert_eq!(
        resize_answers(&t),
        [(first, ResizeAnswer::Superseded { size: 3 })]
    );
    // A waiter without a number (SIGTTIN) supersedes too.
    t.feed(Event::Resize {
        size: 5,
        request: None,
    });
    assert_eq!(
        resize_answers(&t)[1],
        (second, ResizeAnswer::Superseded { size: 5 })
    );
    let third = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 5,
        request: Some(third),
    });
    let zero = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 0,
        request: Some(zero),
    });
    assert!(matches!(
        resize_answers(&t)[2],
        (request, ResizeAnswer::Refused { .. }) if request == zero
    ));
    t.feed(Event::Stop { hard: false });
    assert_eq!(
        resize_answers(&t)[3],
        (
            third,
            ResizeAnswer::Refused {
                why: "the master is stopping"
            }
        )
    );
    // One answer each, whatever follows.
    t.advance(ms(40_000));
    assert_eq!(resize_answers(&t).len(), 4);
}

#[test]
fn starting_workers_are_probed_on_a_clock_that_thins_out_with_their_number() {
    let probes = |t: &Timeline| {
        t.log
            .iter()
            .filter(|a| matches!(a, Action::ProbeStarting { .. }))
            .count()
    };
    // One or two starting workers: every 10 ms.
    let mut t = probing(2);
    let start = t.now;
    t.feed(Event::Start);
    assert_eq!(t.cluster.next_deadline(), Some(start + ms(10)));
    t.advance(ms(9));
    assert_eq!(probes(&t), 0);
    t.advance(ms(1));
    assert_eq!(probes(&t), 1);
    assert_eq!(t.cluster.next_deadline(), Some(t.now + ms(10)));
    // Once none starts, no more probes: no deadline but the watchdog-free ready workers'.
    for pid in t.pids() {
        t.ready(pid);
    }
    assert_eq!(t.cluster.next_deadline(), None);
    // Eight at once share one budget: a round every 40 ms; twenty, every 50 ms at most.
    for (size, interval) in [(8, 40), (20, 50)] {
        let mut t = probing(size);
        t.feed(Event::Start);
        assert_eq!(t.cluster.next_deadline(), Some(t.now + ms(interval)));
    }
    // A driver that cannot probe is never asked to.
    let mut t = Timeline::new(config(1));
    t.feed(Event::Start);
    assert_eq!(t.cluster.next_deadline(), Some(t.now + ms(60_000)));
    t.advance(ms(10_000));
    assert_eq!(probes(&t), 0);
    assert!(logged_actions(&t, |a| matches!(a, Action::Unseen { .. })).is_empty());
}

#[test]
fn the_pass_for_group_members_is_shared_thins_out_as_workers_start_and_starts_over_at_a_spawn() {
    let rounds =
        |t: &Timeline| logged_actions(t, |a| matches!(a, Action::ProbeStarting { .. })).len();
    let looks = |t: &Timeline| {
        t.log
            .iter()
            .any(|a| matches!(a, Action::ProbeStarting { full: true, .. }))
    };
    let passes = |t: &Timeline| {
        t.log.contains(&Action::ProbeStarting {
            full: true,
            everyone: true,
        })
    };
    // Two workers start: a round every 10 ms, each a single action for both of them.
    let mut t = probing(2);
    t.feed(Event::Start);
    let start = t.now;
    let (mut at, mut everyone_at) = (Vec::new(), Vec::new());
    let mut probed = 0;
    for _ in 0..300 {
        t.log.clear();
        t.advance(ms(10));
        probed += rounds(&t);
        if looks(&t) {
            at.push(t.now.duration_since(start));
        }
        if passes(&t) {
            everyone_at.push(t.now.duration_since(start));
        }
    }
    assert_eq!(probed, 300, "the probes themselves go on every 10 ms");
    // The first round looks for members, then after pauses of 50, 100, 200, 400, 800 ms, then
    // every second at most; a pass over every process at the first, then after 500 ms, then
    // every second.
    assert_eq!(
        at[..10],
        [10, 60, 160, 360, 510, 760, 1510, 1560, 2510, 2560].map(ms),
        "{at:?}"
    );
    assert_eq!(everyone_at, [10, 510, 1510, 2510].map(ms));
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    assert!(gaps.iter().all(|&gap| gap <= ms(1000)), "{gaps:?}");
    // A worker is spawned (the cluster grows): the next round looks for its group's members.
    t.advance(ms(5));
    t.feed(Event::Resize {
        size: 3,
        request: None,
    });
    assert_eq!(t.spawned.len(), 3);
    t.log.clear();
    // Three start now: the next round is 20 ms after the last.
    t.advance(ms(15));
    assert_eq!(rounds(&t), 1);
    assert!(passes(&t), "{:?}", t.log);
}

#[test]
fn leftover_groups_are_checked_every_50ms_until_gone() {
    let checks = |t: &Timeline| {
        t.log
            .iter()
            .filter(|a| matches!(a, Action::CheckGroups { .. }))
            .count()
    };
    let mut t = running(1);
    t.advance(ms(1000));
    t.leader_exit(Pid(100), 1);
    // The poll clock ran while nothing needed it: the first check is due at once.
    t.feed(Event::Tick);
    assert_eq!(checks(&t), 1);
    t.advance(ms(49));
    assert_eq!(checks(&t), 1);
    t.advance(ms(1));
    assert_eq!(checks(&t), 2);
    t.exit(Pid(100), 1);
    t.advance(ms(500));
    assert_eq!(checks(&t), 2, "no group left to check");
}

#[test]
fn the_pass_for_zombie_only_groups_thins_out_as_a_group_lingers_and_starts_over_for_a_new_one() {
    let checks = |t: &Timeline| {
        t.log
            .iter()
            .filter(|a| matches!(a, Action::CheckGroups { .. }))
            .count()
    };
    let mut t = running(2);
    t.leader_exit(Pid(100), 1);
    // Every 50 ms a check; passes for zombies after 0, 50, 150, 350, 750 ms, then every second
    // at most.
    let mut passes = Vec::new();
    let mut checked = 0;
    let start = t.now;
    for _ in 0..100 {
        t.log.clear();
        t.advance(ms(50));
        checked += checks(&t);
        if t.log.contains(&Action::CheckGroups { zombies: true }) {
            passes.push(t.now.duration_since(start));
        }
    }
    assert_eq!(
        passes[..7],
        [50, 100, 200, 400, 800, 1600, 2600].map(ms),
        "{passes:?}"
    );
    let gaps: Vec<Duration> = passes
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    assert!(gaps.iter().all(|&gap| gap <= ms(1000)), "{gaps:?}");
    assert_eq!(checked, 100, "the checks themselves go on every 50 ms");
    // A new group lingers: its first check takes a pass.
    let pid = t.pids()[1];
    t.log.clear();
    t.leader_exit(pid, 1);
    t.advance(ms(50));
    assert!(t.log.contains(&Action::CheckGroups { zombies: true }));
}

#[test]
fn a_starting_worker_not_seen_accepting_is_reported_once_after_5s() {
    let unseen = |t: &Timeline| logged_actions(t, |a| matches!(a, Action::Unseen { .. }));
    let mut t = probing(2);
    t.feed(Event::Start);
    t.ready(Pid(101));
    t.advance(ms(4_990));
    assert_eq!(unseen(&t), []);
    t.advance(ms(10));
    let key = t.key_of(Pid(100));
    assert_eq!(
        unseen(&t),
        [Action::Unseen {
            key,
            after: ms(5_000)
        }]
    );
    t.advance(ms(10_000));
    assert_eq!(unseen(&t).len(), 1, "once");
    // Ready in time: never reported.
    let mut t = probing(1);
    t.feed(Event::Start);
    t.advance(ms(4_000));
    t.ready(Pid(100));
    t.advance(ms(10_000));
    assert_eq!(unseen(&t), []);
}

#[test]
fn a_second_ctrl_c_stops_hard_and_the_lingering_line_says_so() {
    let mut t = running(2);
    assert_eq!(
        t.feed(Event::Interrupt),
        [term(Pid(100)), term(Pid(101))],
        "the first one stops gracefully"
    );
    t.advance(ms(2_000));
    let lingering = logged_actions(&t, |a| matches!(a, Action::Lingering { .. }));
    assert!(
        lingering.iter().all(|a| matches!(
            a,
            Action::Lingering {
                ctrl_c_kills: true,
                ..
            }
        )),
        "{lingering:?}"
    );
    assert_eq!(lingering.len(), 2);
    assert_eq!(
        t.feed(Event::Interrupt),
        [kill(Pid(100)), kill(Pid(101))],
        "the second one kills"
    );
    // A stop that no Ctrl-C began does not offer one.
    let mut t = running(1);
    t.feed(Event::Stop { hard: false });
    t.advance(ms(2_000));
    assert!(
        logged_actions(&t, |a| matches!(a, Action::Lingering { .. }))
            .iter()
            .all(|a| matches!(
                a,
                Action::Lingering {
                    ctrl_c_kills: false,
                    ..
                }
            ))
    );
    // SIGTERM first, then Ctrl-C twice: the second Ctrl-C is the one that kills.
    let mut t = running(1);
    t.feed(Event::Stop { hard: false });
    assert_eq!(t.feed(Event::Interrupt), []);
    assert_eq!(t.feed(Event::Interrupt), [kill(Pid(100))]);
}

#[test]
fn sighup_rolls_a_production_master_and_stops_a_dev_session_whose_terminal_is_gone() {
    let roll_requests = |t: &Timeline| t.log.iter().filter(|a| **a == Action::RequestRoll).count();
    // Production: a roll, whatever became of the terminal.
    for terminal_lost in [false, true] {
        let mut t = running(1);
        assert_eq!(t.feed(Event::Hangup { terminal_lost }), []);
        assert_eq!(roll_requests(&t), 1);
        assert!(!t.cluster.is_stopping());
    }
    let session = || {
        running_with(ClusterConfig {
            hangup: Hangup::StopWithTerminal,
            ..config(1)
        })
    };
    // A dev session whose terminal is still there rolls too.
    let mut t = session();
    t.feed(Event::Hangup {
        terminal_lost: false,
    });
    assert_eq!(roll_requests(&t), 1);
    assert!(!t.cluster.is_stopping());
    // Its terminal gone: one line, and a graceful stop.
    let mut t = session();
    assert_eq!(
        t.feed(Event::Hangup {
            terminal_lost: true
        }),
        [term(Pid(100))]
    );
    assert!(t.reported(|r| *r == Report::TerminalLost));
    assert_eq!(roll_requests(&t), 0);
    assert!(t.cluster.is_stopping());
}

#[test]
fn every_exit_waiter_hears_how_the_master_ended_once() {
    let answers = |t: &Timeline| {
        t.log
            .iter()
            .filter_map(|a| match a {
                Action::ExitAnswered { request, reason } => Some((*request, reason.clone())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut t = running(1);
    let graceful = t.cluster.new_request();
    t.feed(Event::Quit {
        hard: false,
        request: graceful,
    });
    assert_eq!(answers(&t), [], "not before the end");
    let hard = t.cluster.new_request();
    assert_eq!(
        t.feed(Event::Quit {
            hard: true,
            request: hard,
        }),
        [kill(Pid(100))]
    );
    t.exit(Pid(100), 137);
    assert_eq!(
        answers(&t),
        [(graceful, ExitReason::Killed), (hard, ExitReason::Killed)]
    );
    // The driver's end repeats nothing; a late quit hears how it ended.
    t.feed(Event::Ended(ExitReason::Killed));
    let late = t.cluster.new_request();
    t.feed(Event::Quit {
        hard: false,
        request: late,
    });
    assert_eq!(answers(&t).len(), 3);
    assert_eq!(answers(&t)[2], (late, ExitReason::Killed));
    // A quit before the start ends at once.
    let mut t = Timeline::new(config(1));
    let request = t.cluster.new_request();
    t.feed(Event::Quit {
        hard: false,
        request,
    });
    assert_eq!(answers(&t), [(request, ExitReason::Stopped)]);
    // A master ended outside the core while a quit waits answers it with how it ended.
    let mut t = running(1);
    let request = t.cluster.new_request();
    t.feed(Event::Quit {
        hard: false,
        request,
    });
    t.feed(Event::Ended(ExitReason::BuildFailed));
    assert_eq!(answers(&t), [(request, ExitReason::BuildFailed)]);
    // And refuses every other request still pending: a roll in flight, a resize not done.
    let mut t = running(1);
    t.feed(Event::Roll(7));
    let resize = t.cluster.new_request();
    t.feed(Event::Resize {
        size: 3,
        request: Some(resize),
    });
    assert_eq!((refused_rolls(&t), resize_answers(&t)), (vec![], vec![]));
    t.feed(Event::Ended(ExitReason::Killed));
    assert_eq!(refused_rolls(&t), [(7, "the cluster is stopping")]);
    assert_eq!(
        resize_answers(&t),
        [(
            resize,
            ResizeAnswer::Refused {
                why: "the master is stopping"
            }
        )]
    );
}

#[test]
fn the_core_counts_rolls_and_keeps_the_last_one_s_end() {
    let mut t = running(1);
    assert_eq!(t.cluster.roll_tally(), RollTally::default());
    assert_eq!(t.cluster.last_roll(), None);
    t.feed(Event::Roll(1));
    t.ready(t.last_pid());
    t.exit_stopped();
    t.feed(Event::Roll(2));
    t.exit(t.last_pid(), 1);
    t.feed(Event::Roll(3));
    assert_eq!(
        t.cluster.roll_tally(),
        RollTally {
            started: 3,
            completed: 1,
            aborted: 1,
        }
    );
    let last = t.cluster.last_roll().unwrap();
    assert_eq!((last.generation, last.requests.clone()), (3, vec![2]));
    assert!(last.aborted.is_some());
}

#[test]
fn a_roll_ends_when_its_old_workers_can_no_longer_answer_looked_at_less_often_as_they_linger() {
    let mut t = running_with(ClusterConfig {
        probe_starting: true,
        surge: Surge::All,
        ..config(2)
    });
    t.feed(Event::Roll(5));
    t.ready(Pid(102));
    t.ready(Pid(103));
    let looks = |t: &Timeline| {
        t.log
            .iter()
            .filter_map(|action| match action {
                Action::ProbeRetiring { workers } => Some(workers.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(looks(&t).is_empty() && t.roll_ends().is_empty());
    // Both old workers linger: looked at, the pauses doubling from 10 ms up to 200 ms.
    let start = t.now;
    let mut seen_at = Vec::new();
    while t.now < start + ms(1000) {
        let before = looks(&t).len();
        t.advance(ms(1));
        if looks(&t).len() > before {
            seen_at.push((t.now - start).as_millis());
        }
    }
    let last = looks(&t).pop().unwrap();
    assert_eq!(
        last,
        [
            (t.key_of(Pid(100)), Pid(100)),
            (t.key_of(Pid(101)), Pid(101))
        ]
    );
    let pauses: Vec<u128> = seen_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        pauses.windows(2).all(|w| w[1] >= w[0]) && pauses.iter().all(|&p| p <= 200),
        "{seen_at:?}"
    );
    // On a clock of their own: the first a moment after the stop signal, whatever the pace
    // of the probes of starting workers.
    assert_eq!(seen_at[..5], [2, 12, 32, 72, 152], "{seen_at:?}");
    assert!(seen_at.len() <= 10, "{seen_at:?}");
    // One exits, the other is seen switched out (it lingers, but answers nothing).
    t.exit(Pid(100), 0);
    assert!(t.roll_ends().is_empty());
    t.feed(Event::SwitchedOut {
        key: t.key_of(Pid(101)),
    });
    let ends = t.roll_ends();
    assert_eq!(ends.len(), 1);
    assert_eq!((ends[0].generation, &ends[0].requests[..]), (2, &[5][..]));
    // Switched out is not gone: its kill timeout still holds.
    t.advance(t.cluster.config.kill_timeout);
    assert!(t.log.contains(&kill(Pid(101))));
}

#[test]
fn without_probes_a_roll_ends_when_its_old_workers_are_gone() {
    let mut t = running_with(ClusterConfig {
        probe_starting: false,
        ..config(1)
    });
    t.feed(Event::Roll(1));
    t.ready(Pid(101));
    t.advance(ms(500));
    assert!(
        !t.log
            .iter()
            .any(|action| matches!(action, Action::ProbeRetiring { .. }))
    );
    assert!(t.roll_ends().is_empty());
    t.exit(Pid(100), 0);
    assert!(completed(&t, 1, 2));
}

/// A cluster of `size` whose generations get sockets of their own, every replacement at once.
fn steered(size: usize) -> Timeline {
    running_with(ClusterConfig {
        surge: Surge::All,
        steering: true,
        ..config(size)
    })
}

impl Timeline {
    /// The steering actions (open, steer, close) in order, as `(what, generation)`.
    fn steering(&self) -> Vec<(&'static str, u64)> {
        self.log
            .iter()
            .filter_map(|action| match action {
                Action::OpenListeners { generation } => Some(("open", *generation)),
                Action::Steer { generation } => Some(("steer", *generation)),
                Action::CloseListeners { generation } => Some(("close", *generation)),
                _ => None,
            })
            .collect()
    }

    /// The workers the last drain look asked about, by pid.
    fn last_drain_look(&self) -> Vec<Pid> {
        self.log
            .iter()
            .rev()
            .find_map(|action| match action {
                Action::ProbeDraining { workers } => {
                    Some(workers.iter().map(|(_, pid, _)| *pid).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }

    fn drained(&mut self, pid: Pid) -> Vec<Action> {
        let key = self.key_of(pid);
        self.feed(Event::Drained { key })
    }

    fn states(&self) -> Vec<(usize, Option<Pid>, u64, super::RowState)> {
        self.cluster
            .rows()
            .into_iter()
            .map(|row| (row.slot, row.pid, row.generation, row.state))
            .collect()
    }
}

#[test]
fn with_steering_old_workers_serve_until_the_switch_then_stop_once_drained() {
    use super::RowState::{Draining, Ready};
    let mut t = steered(3);
    t.feed(Event::Roll(1));
    assert_eq!(t.steering(), [("open", 2)]);
    let open_at = t
        .log
        .iter()
        .position(|a| matches!(a, Action::OpenListeners { .. }));
    let first_spawn = t
        .log
        .iter()
        .rposition(|a| matches!(a, Action::Spawn { .. }));
    assert!(
        open_at < first_spawn,
        "the sockets exist before a worker of the generation"
    );
    t.advance(ms(5));
    assert_eq!(t.ready(Pid(103)), [], "no stop signal before the switch");
    assert_eq!(t.ready(Pid(104)), []);
    assert!(t.states().contains(&(0, Some(Pid(100)), 1, Draining)));
    assert_eq!(
        t.steering(),
        [("open", 2)],
        "no switch while one replacement starts"
    );
    assert_eq!(t.ready(Pid(105)), [], "the switch signals nobody either");
    assert_eq!(t.steering(), [("open", 2), ("steer", 2)]);
    t.advance(ms(20));
    assert_eq!(t.last_drain_look(), [Pid(100), Pid(101), Pid(102)]);
    assert_eq!(t.drained(Pid(101)), [term(Pid(101))]);
    assert!(t.states().contains(&(0, Some(Pid(103)), 2, Ready)));
    t.advance(ms(40));
    assert_eq!(
        t.last_drain_look(),
        [Pid(100), Pid(102)],
        "looked at again, paced"
    );
    assert_eq!(t.drained(Pid(100)), [term(Pid(100))]);
    assert_eq!(t.drained(Pid(102)), [term(Pid(102))]);
    t.exit_stopped();
    assert!(completed(&t, 3, 2));
    assert_eq!(
        t.steering().last(),
        Some(&("close", 1)),
        "generation 1 is gone"
    );
    // The next roll's switch leaves generation 2 without workers: its sockets close once the
    // last of them is gone.
    t.feed(Event::Roll(2));
    for pid in [106, 107, 108] {
        t.ready(Pid(pid));
    }
    for pid in [103, 104, 105] {
        t.drained(Pid(pid));
    }
    assert_eq!(t.steering().last(), Some(&("steer", 3)));
    t.exit(Pid(103), 0);
    t.exit(Pid(104), 0);
    assert_eq!(
        t.steering().last(),
        Some(&("steer", 3)),
        "one still runs generation 2"
    );
    t.exit(Pid(105), 0);
    assert_eq!(t.steering().last(), Some(&("close", 2)));
}

#[test]
fn a_worker_still_busy_at_its_drain_deadline_gets_the_stop_signal_then() {
    let mut t = steered(1);
    t.feed(Event::Roll(1));
    t.advance(ms(100));
    t.ready(Pid(101));
    let kill_timeout = t.cluster.config.kill_timeout;
    assert_eq!(t.advance(kill_timeout.checked_sub(ms(1)).unwrap()), []);
    assert_eq!(t.advance(ms(1)), [term(Pid(100))]);
    assert!(
        t.reported(|r| matches!(r, Report::NotDrained { after, .. } if *after == kill_timeout))
    );
}

#[test]
fn a_roll_aborted_before_its_switch_keeps_every_old_worker_and_stops_the_new_ones() {
    let mut t = steered(3);
    t.feed(Event::Roll(1));
    t.ready(Pid(103));
    let out = t.exit(Pid(104), 1);
    assert_eq!(
        out,
        [term(Pid(105)), term(Pid(103))],
        "no connection ever went to them"
    );
    assert_eq!(t.cluster.slot_generations(), [1, 1, 1]);
    assert_eq!(t.steering(), [("open", 2)], "never steered");
    let end = t.roll_ends().pop().unwrap();
    assert_eq!((end.rolled, end.serving), (0, 1));
    assert!(
        t.log
            .iter()
            .all(|a| !matches!(a, Action::Signal { pid, .. } if pid.0 < 103))
    );
    t.exit_stopped();
    assert_eq!(t.steering(), [("open", 2), ("close", 2)]);
    assert_eq!(t.spawned.len(), 6, "nothing restarts");
}

#[test]
fn with_a_surge_of_one_the_switch_comes_with_the_first_replacement() {
    let mut t = running_with(ClusterConfig {
        steering: true,
        ..config(2)
    });
    t.feed(Event::Roll(1));
    assert_eq!(t.ready(Pid(102)), []);
    assert_eq!(t.steering(), [("open", 2), ("steer", 2)]);
    assert_eq!(t.drained(Pid(100)), [term(Pid(100))]);
    // The next slot's old worker drains as soon as its replacement is ready.
    assert_eq!(t.ready(Pid(103)), []);
    t.advance(ms(10));
    assert_eq!(t.last_drain_look(), [Pid(101)]);
    assert_eq!(t.drained(Pid(101)), [term(Pid(101))]);
}

#[test]
fn a_resize_down_that_takes_the_replacements_still_starting_switches_to_those_ready() {
    let mut t = steered(3);
    t.feed(Event::Roll(1));
    assert_eq!(t.ready(Pid(103)), []);
    assert_eq!(t.steering(), [("open", 2)], "two replacements still start");
    // Slots 1 and 2 go, with their replacements: the one left is ready, so the switch comes.
    t.feed(Event::Resize {
        size: 1,
        request: None,
    });
    assert_eq!(t.steering(), [("open", 2), ("steer", 2)]);
    t.advance(ms(10));
    assert_eq!(t.drained(Pid(100)), [term(Pid(100))]);
    t.exit_stopped();
    assert!(completed(&t, 1, 2));
}

#[test]
fn a_generation_without_sockets_of_its_own_rolls_as_without_steering() {
    let mut t = steered(2);
    t.listeners_fail = true;
    t.feed(Event::Roll(1));
    assert_eq!(t.ready(Pid(102)), [term(Pid(100))]);
    assert_eq!(t.ready(Pid(103)), [term(Pid(101))]);
    assert_eq!(t.steering(), [("open", 2)]);
}

#[test]
fn a_graceful_stop_refuses_new_connections_and_lets_ready_workers_drain_first() {
    let mut t = steered(2);
    t.feed(Event::Roll(1));
    t.ready(Pid(102));
    let out = t.feed(Event::Stop { hard: false });
    assert_eq!(
        out,
        [term(Pid(103))],
        "only the one still starting, at once"
    );
    assert!(t.log.contains(&Action::StopAccepting));
    t.advance(ms(20));
    assert_eq!(t.last_drain_look().len(), 3, "{:?}", t.log);
    assert_eq!(t.drained(Pid(100)), [term(Pid(100))]);
    // The others at half the kill timeout at the latest.
    let half = t.cluster.config.kill_timeout / 2;
    let out = t.advance(half);
    assert_eq!(out, [term(Pid(101)), term(Pid(102))]);
    assert!(t.reported(|r| matches!(r, Report::NotDrained { after, .. } if *after == half)));
    // A hard stop kills whatever drains.
    let mut t = steered(1);
    t.feed(Event::Stop { hard: false });
    assert_eq!(t.feed(Event::Stop { hard: true }), [kill(Pid(100))]);
}

/// A roll of two steered workers whose old ones never drain: the times of the drain looks after
/// the switch, in ms, until the drain deadline or a second.
fn drain_look_times(drain_settle: Duration) -> (Timeline, Vec<u128>) {
    let mut t = running_with(ClusterConfig {
        surge: Surge::All,
        steering: true,
        drain_settle,
        ..config(2)
    });
    t.advance(ms(3000));
    t.feed(Event::Roll(1));
    t.advance(ms(2));
    let new: Vec<Pid> = t.pids().into_iter().filter(|pid| pid.0 >= 102).collect();
    let switch = t.now;
    for pid in &new {
        t.ready(*pid);
    }
    assert_eq!(t.steering().last(), Some(&("steer", 2)));
    // Never drained: the looks go on until the drain deadline (--kill-timeout, 5 s here).
    let mut looks = Vec::new();
    let mut seen = t.log.len();
    while t.now < switch + ms(1000) {
        let Some(at) = t.cluster.next_deadline() else {
            break;
        };
        t.now = at.max(t.now);
        t.feed(Event::Tick);
        if t.log[seen..]
            .iter()
            .any(|action| matches!(action, Action::ProbeDraining { .. }))
        {
            looks.push((t.now - switch).as_millis());
        }
        seen = t.log.len();
    }
    (t, looks)
}

#[test]
fn draining_workers_are_looked_at_on_a_clock_of_their_own_soon_after_the_switch_then_ever_less_often()
 {
    let (mut t, looks) = drain_look_times(super::DRAIN_SETTLE);
    // The first look once handshakes under way at the switch are done (DRAIN_SETTLE).
    assert_eq!(looks[..8], [5, 7, 11, 19, 35, 67, 131, 259], "{looks:?}");
    // On loopback addresses, there is no round trip to wait for.
    let (_, on_loopback) = drain_look_times(super::LOOPBACK_DRAIN_SETTLE);
    assert_eq!(on_loopback[..4], [1, 3, 7, 15], "{on_loopback:?}");
    assert_eq!(looks[8..11], [459, 659, 859], "at most 200 ms apart");
    assert_eq!(t.last_drain_look(), [Pid(100), Pid(101)]);
    // Once both are drained, no more looks.
    t.drained(Pid(100));
    t.drained(Pid(101));
    let seen = t.log.len();
    t.advance(ms(1000));
    assert!(
        !t.log[seen..]
            .iter()
            .any(|action| matches!(action, Action::ProbeDraining { .. }))
    );
}

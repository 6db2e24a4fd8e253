//! Property tests of the core: random sequences of every event, with the core's invariants
//! checked after every step, and the size and a stop checked to converge at the end.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{
    Action, Cluster, ClusterConfig, Event, NeverReady, Phase, Pid, ProcessEnd, StopKind, Surge,
    WorkerKey, WorkerState,
};

/// One thing that can happen to a cluster. Indices pick among the workers that exist when the
/// step runs (modulo their number).
#[derive(Debug, Clone, Copy)]
enum Step {
    Ready(usize),
    /// A worker process exits; with `true`, processes of its group live on.
    Exit(usize, bool),
    /// What was left of an exited worker's group is gone.
    GroupGone(usize),
    Stopping(usize),
    Watchdog(usize),
    Advance(u64),
    Roll,
    Resize(usize),
    Stop(bool),
    /// From now on spawns fail (`true`) or succeed (`false`).
    SpawnsFail(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<usize>().prop_map(Step::Ready),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, tree)| Step::Exit(i, tree)),
        2 => any::<usize>().prop_map(Step::GroupGone),
        1 => any::<usize>().prop_map(Step::Stopping),
        1 => any::<usize>().prop_map(Step::Watchdog),
        3 => prop_oneof![0..200u64, 0..40_000u64].prop_map(Step::Advance),
        2 => Just(Step::Roll),
        1 => (0..6usize).prop_map(Step::Resize),
        1 => any::<bool>().prop_map(Step::Stop),
        1 => any::<bool>().prop_map(Step::SpawnsFail),
    ]
}

/// A cluster under random events, and what the test knows of its processes.
struct World {
    cluster: Cluster,
    now: Instant,
    next_pid: i32,
    spawns_fail: bool,
    /// Worker processes spawned and not yet exited.
    running: Vec<(WorkerKey, Pid)>,
    /// Exited workers whose group lives on.
    groups: Vec<Pid>,
    /// When each pid was first asked to stop (or said it would, or its leader exited): no
    /// SIGKILL may reach it before this plus the kill timeout, unless the stop is hard.
    stop_asked: HashMap<Pid, Instant>,
    /// Pids that got SIGKILL (they exit at the next chance).
    killed: HashSet<Pid>,
    exits: usize,
    /// The surge bound in force (see `check_invariants`).
    surge: usize,
    /// The bound on slots waiting after a ready worker's exit in force (likewise).
    after_ready_limit: usize,
    /// Roll requests made, and those answered (by a roll's end or a refusal).
    requests: u64,
    answered: HashSet<u64>,
}

impl World {
    fn new(config: ClusterConfig) -> Self {
        let mut world = Self {
            cluster: Cluster::new(config),
            now: Instant::now(),
            next_pid: 100,
            spawns_fail: false,
            running: Vec::new(),
            groups: Vec::new(),
            stop_asked: HashMap::new(),
            killed: HashSet::new(),
            exits: 0,
            surge: 1,
            after_ready_limit: 1,
            requests: 0,
            answered: HashSet::new(),
        };
        world.feed(Event::Start);
        world
    }

    fn hard(&self) -> bool {
        matches!(
            self.cluster.phase,
            Phase::Stopping { hard: true } | Phase::Waiting | Phase::Exited
        )
    }

    fn feed(&mut self, event: Event) {
        let mut pending = vec![event];
        while let Some(event) = pending.pop() {
            let actions = self.cluster.handle(self.now, event);
            for action in actions {
                match action {
                    Action::Spawn { key, .. } if self.spawns_fail => {
                        pending.push(Event::SpawnFailed {
                            key,
                            reason: "no".to_owned(),
                        });
                    }
                    Action::Spawn { key, .. } => {
                        let pid = Pid(self.next_pid);
                        self.next_pid += 1;
                        self.running.push((key, pid));
                        pending.push(Event::Spawned { key, pid });
                    }
                    Action::Signal { pid, kind } => {
                        let known =
                            self.running.iter().any(|r| r.1 == pid) || self.groups.contains(&pid);
                        assert!(known, "signal to a process that is gone: {pid}");
                        match kind {
                            StopKind::Graceful => {
                                self.stop_asked.entry(pid).or_insert(self.now);
                            }
                            StopKind::Kill => {
                                if !self.hard() {
                                    let asked = self.stop_asked.get(&pid).copied();
                                    let limit = self.cluster.config.kill_timeout;
                                    assert!(
                                        asked.is_some_and(|at| at + limit <= self.now),
                                        "SIGKILL to {pid} before its kill deadline"
                                    );
                                }
                                self.killed.insert(pid);
                            }
                        }
                    }
                    Action::Exit(_) => self.exits += 1,
                    Action::Abandon { pid } => {
                        assert!(
                            self.groups.contains(&pid) && self.killed.contains(&pid),
                            "{pid} abandoned, but it is no killed group"
                        );
                        self.groups.retain(|&g| g != pid);
                    }
                    Action::Lingering { pid, .. } => {
                        let asked = self.stop_asked.get(&pid).copied();
                        assert!(asked.is_some() || self.hard(), "{pid} lingers unasked");
                    }
                    Action::RollEnded(end) => {
                        for request in end.requests {
                            assert!(self.answered.insert(request), "{request} answered twice");
                        }
                    }
                    Action::RollRefused { request, .. } => {
                        assert!(self.answered.insert(request), "{request} answered twice");
                    }
                    Action::Log(_)
                    | Action::Detail(_)
                    | Action::Ready(_)
                    | Action::RollStarted { .. }
                    | Action::Notify(_) => {}
                }
            }
        }
        self.check_invariants();
    }

    fn check_invariants(&mut self) {
        // A roll keeps the replacements it started under a larger size (then a shrink): the
        // bound is the largest surge of the roll's life.
        let surge_now = self.cluster.config.surge.of(self.cluster.config.size);
        self.surge = if self.cluster.roll.is_some() {
            self.surge.max(surge_now)
        } else {
            surge_now
        };
        // A shrink keeps the restarts already waiting: the bound is the largest of their life.
        // Half the slots, at least one (the policy, stated again here rather than asked of the
        // core).
        let limit_now = (self.cluster.config.size / 2).max(1);
        let waiting_after_ready = self
            .cluster
            .slots
            .iter()
            .filter(|slot| slot.restart_at.is_some() && slot.waits_after_ready)
            .count();
        self.after_ready_limit = if waiting_after_ready > 0 {
            self.after_ready_limit.max(limit_now)
        } else {
            limit_now
        };
        let cluster = &self.cluster;
        // Every process spawned is tracked until it is reaped (and its group gone).
        for pid in self
            .running
            .iter()
            .map(|r| r.1)
            .chain(self.groups.iter().copied())
        {
            assert!(
                cluster.workers.iter().any(|w| w.pid == Some(pid)),
                "{pid} runs, untracked"
            );
        }
        assert!(self.exits <= 1, "exited twice");
        if cluster.phase != Phase::Running {
            return;
        }
        // Every slot has a live worker or a scheduled restart.
        for slot in 0..cluster.config.size {
            assert!(
                cluster.has_live_worker(slot) || cluster.slots[slot].restart_at.is_some(),
                "slot {slot} has no worker and no restart"
            );
        }
        // Capacity under crashes of ready workers (killed from outside): never more than the
        // limit of slots wait for a restart at once, unless starts fail (a failed start backs
        // off whatever the count).
        let waiting = cluster
            .slots
            .iter()
            .filter(|slot| slot.restart_at.is_some())
            .count();
        let limit = self.after_ready_limit;
        assert!(
            waiting_after_ready <= limit,
            "{waiting_after_ready} slots wait after a ready worker's exit, limit {limit}"
        );
        assert!(
            waiting <= limit
                || cluster
                    .slots
                    .iter()
                    .any(|slot| slot.restart_at.is_some() && !slot.waits_after_ready),
            "{waiting} slots wait for a restart, limit {limit}, and no start failed"
        );
        // Never more than size + surge workers that are not stopping.
        let live = cluster
            .workers
            .iter()
            .filter(|w| !matches!(w.state, WorkerState::Stopping { .. }))
            .count();
        let surge = self.surge;
        assert!(
            live <= cluster.config.size + surge,
            "{live} live workers, size {} + surge {surge}",
            cluster.config.size
        );
    }

    fn pick<T: Copy>(items: &[T], index: usize) -> Option<T> {
        (!items.is_empty()).then(|| items[index % items.len()])
    }

    fn keys_in(&self, wanted: impl Fn(&WorkerState) -> bool) -> Vec<WorkerKey> {
        self.cluster
            .workers
            .iter()
            .filter(|w| w.pid.is_some() && !w.leader_exited && wanted(&w.state))
            .map(|w| w.key)
            .collect()
    }

    fn exit(&mut self, pid: Pid, tree_left: bool) {
        self.running.retain(|r| r.1 != pid);
        let end = ProcessEnd::Code(1);
        if tree_left {
            self.groups.push(pid);
            if !self
                .cluster
                .workers
                .iter()
                .any(|w| w.pid == Some(pid) && matches!(w.state, WorkerState::Stopping { .. }))
            {
                self.stop_asked.insert(pid, self.now);
            }
            self.feed(Event::LeaderExited { pid, end });
        } else {
            self.feed(Event::Exited { pid, end });
        }
    }

    fn group_gone(&mut self, pid: Pid) {
        self.groups.retain(|&g| g != pid);
        self.feed(Event::Exited {
            pid,
            end: ProcessEnd::Signal(9),
        });
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Ready(i) => {
                let starting = self.keys_in(|s| matches!(s, WorkerState::Starting { .. }));
                if let Some(key) = Self::pick(&starting, i) {
                    self.feed(Event::Ready { key });
                }
            }
            Step::Exit(i, tree_left) => {
                let pids: Vec<Pid> = self.running.iter().map(|r| r.1).collect();
                if let Some(pid) = Self::pick(&pids, i) {
                    self.exit(pid, tree_left);
                }
            }
            Step::GroupGone(i) => {
                if let Some(pid) = Self::pick(&self.groups.clone(), i) {
                    self.group_gone(pid);
                }
            }
            Step::Stopping(i) => {
                let ready = self.keys_in(|s| *s == WorkerState::Ready);
                if let Some(key) = Self::pick(&ready, i) {
                    let pid = self.cluster.workers[self.cluster.index_of_key(key).unwrap()]
                        .pid
                        .unwrap();
                    if self.cluster.phase == Phase::Running {
                        self.stop_asked.entry(pid).or_insert(self.now);
                    }
                    self.feed(Event::Stopping { key });
                }
            }
            Step::Watchdog(i) => {
                let ready = self.keys_in(|s| *s == WorkerState::Ready);
                if let Some(key) = Self::pick(&ready, i) {
                    self.feed(Event::Watchdog { key });
                }
            }
            Step::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.feed(Event::Tick);
            }
            Step::Roll => {
                self.requests += 1;
                self.feed(Event::Roll(self.requests));
            }
            Step::Resize(size) => self.feed(Event::Resize(size)),
            Step::Stop(hard) => self.feed(Event::Stop { hard }),
            Step::SpawnsFail(fail) => self.spawns_fail = fail,
        }
    }

    /// Processes that were killed, or asked to stop, leave; starting ones get ready; ready ones
    /// ping their watchdog; a little time passes.
    fn settle_once(&mut self) {
        for key in self.keys_in(|s| matches!(s, WorkerState::Starting { .. })) {
            self.feed(Event::Ready { key });
        }
        for key in self.keys_in(|s| *s == WorkerState::Ready) {
            self.feed(Event::Watchdog { key });
        }
        let leaving: Vec<Pid> = self
            .cluster
            .workers
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Stopping { .. }))
            .filter_map(|w| w.pid)
            .collect();
        for pid in leaving {
            if self.groups.contains(&pid) {
                self.group_gone(pid);
            } else if self.running.iter().any(|r| r.1 == pid) {
                self.exit(pid, false);
            }
        }
        self.now += Duration::from_secs(4);
        self.feed(Event::Tick);
    }
}

fn config(size: usize, never_ready: NeverReady, surge: Surge) -> ClusterConfig {
    ClusterConfig {
        ready_delay: None,
        watchdog: Some(Duration::from_secs(5)),
        never_ready,
        surge,
        ..ClusterConfig::new(size)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_core_keeps_its_invariants_converges_and_always_stops(
        size in 1..5usize,
        wait in any::<bool>(),
        surge in prop_oneof![
            Just(Surge::Count(1)),
            Just(Surge::Count(2)),
            Just(Surge::Percent(50)),
            Just(Surge::All),
        ],
        steps in proptest::collection::vec(step(), 0..80),
    ) {
        let never_ready = if wait { NeverReady::Wait } else { NeverReady::Exit };
        let mut world = World::new(config(size, never_ready, surge));
        for step in steps {
            world.run(step);
        }
        // The size converges: with spawns working and workers getting ready, every slot ends
        // up with exactly one ready worker, of one generation.
        world.spawns_fail = false;
        if world.cluster.phase == Phase::Waiting {
            world.feed(Event::Start);
        }
        if world.cluster.phase == Phase::Running {
            let mut rounds = 0;
            loop {
                world.settle_once();
                let cluster = &world.cluster;
                let settled = cluster.roll.is_none()
                    && cluster.workers.len() == cluster.config.size
                    && (0..cluster.config.size).all(|slot| {
                        cluster
                            .workers
                            .iter()
                            .any(|w| w.slot == slot && w.state == WorkerState::Ready)
                    });
                if settled {
                    break;
                }
                rounds += 1;
                prop_assert!(rounds < 200, "the size did not converge");
            }
        }
        // A stop always ends.
        world.feed(Event::Stop { hard: false });
        let mut rounds = 0;
        while world.exits == 0 {
            world.settle_once();
            rounds += 1;
            prop_assert!(rounds < 50, "the stop did not end");
        }
        prop_assert!(world.running.is_empty() && world.groups.is_empty());
        // Every roll request got its answer: a roll's end, or a refusal.
        prop_assert_eq!(world.answered.len(), usize::try_from(world.requests).unwrap());
    }
}

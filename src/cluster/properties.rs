//! Property tests of the core: random sequences of every event, with the core's invariants
//! checked after every step, and the size and a stop checked to converge at the end.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{
    Action, Cluster, ClusterConfig, Event, ExitReason, GROUP_POLL, Hangup, NeverReady,
    PROBE_INTERVAL_MAX, Phase, Pid, ProcessEnd, ResizeAnswer, RollTally, StopKind, Surge,
    UNSEEN_HINT, WorkerKey, WorkerState,
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
    /// A resize; with `true`, someone waits for its answer.
    Resize(usize, bool),
    /// A stop, hard or not; with `true`, someone waits for the master's end.
    Stop(bool, bool),
    /// Ctrl-C.
    Interrupt,
    /// SIGHUP; with `true`, the terminal is gone.
    Hangup(bool),
    /// One of the old workers the last [`Action::ProbeRetiring`] named is seen switched out.
    SwitchOut(usize),
    /// From now on spawns fail (`true`) or succeed (`false`).
    SpawnsFail(bool),
    /// One of the workers the last [`Action::ProbeDraining`] named is drained.
    Drained(usize),
    /// From now on a generation's own sockets cannot (`true`) or can (`false`) be opened.
    SocketsFail(bool),
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
        2 => (0..6usize, any::<bool>()).prop_map(|(size, wait)| Step::Resize(size, wait)),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(hard, wait)| Step::Stop(hard, wait)),
        1 => Just(Step::Interrupt),
        1 => any::<bool>().prop_map(Step::Hangup),
        1 => any::<bool>().prop_map(Step::SpawnsFail),
        2 => any::<usize>().prop_map(Step::SwitchOut),
        2 => any::<usize>().prop_map(Step::Drained),
        1 => any::<bool>().prop_map(Step::SocketsFail),
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
    roll_requests: HashSet<u64>,
    answered: HashSet<u64>,
    /// Resize requests made, with the size each asked for, and those answered.
    resize_requests: HashMap<u64, usize>,
    resize_answered: HashSet<u64>,
    /// Ctrl-C presses so far.
    interrupts: u32,
    /// Requests waiting for the master's end, and the answers they got.
    exit_requests: HashSet<u64>,
    exit_answers: HashMap<u64, ExitReason>,
    /// How the master ended.
    exit_reason: Option<ExitReason>,
    /// Rolls started, completed and aborted, as the actions told.
    rolls: RollTally,
    /// Every request number the core gave out.
    numbers: HashSet<u64>,
    /// When each worker was spawned, and those reported as unseen.
    spawned_at: HashMap<WorkerKey, Instant>,
    unseen: HashSet<WorkerKey>,
    /// When the last probe of starting workers was asked for.
    probed: Option<Instant>,
    /// The generation each pid was spawned for.
    generations: HashMap<Pid, u64>,
    /// The old workers the last look at retiring workers named.
    retiring: Vec<(WorkerKey, Pid)>,
    /// Pids told to the core as switched out.
    switched_out: HashSet<Pid>,
    sockets_fail: bool,
    /// The generations with sockets of their own, opened and not closed.
    own_sockets: HashSet<u64>,
    /// The generations whose sockets could not be opened.
    shared_sockets: HashSet<u64>,
    /// The generation new connections go to, once steered.
    steered: Option<u64>,
    /// The workers the last look at draining workers named.
    draining: Vec<(WorkerKey, Pid)>,
    /// The listeners refuse new connections (a graceful stop).
    refusing: bool,
}

impl World {
    fn new(config: ClusterConfig) -> Self {
        // The first generation's sockets are those bound at the start.
        let own_sockets = if config.steering {
            HashSet::from([1])
        } else {
            HashSet::new()
        };
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
            roll_requests: HashSet::new(),
            answered: HashSet::new(),
            resize_requests: HashMap::new(),
            resize_answered: HashSet::new(),
            interrupts: 0,
            exit_requests: HashSet::new(),
            exit_answers: HashMap::new(),
            exit_reason: None,
            rolls: RollTally::default(),
            numbers: HashSet::new(),
            spawned_at: HashMap::new(),
            unseen: HashSet::new(),
            probed: None,
            generations: HashMap::new(),
            retiring: Vec::new(),
            switched_out: HashSet::new(),
            sockets_fail: false,
            own_sockets,
            shared_sockets: HashSet::new(),
            steered: None,
            draining: Vec::new(),
            refusing: false,
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
                    Action::Spawn {
                        key, generation, ..
                    } => {
                        let pid = Pid(self.next_pid);
                        self.next_pid += 1;
                        self.generations.insert(pid, generation);
                        self.running.push((key, pid));
                        self.spawned_at.insert(key, self.now);
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
                    Action::Exit(reason) => {
                        self.exits += 1;
                        self.exit_reason = Some(reason);
                    }
                    Action::ExitAnswered { request, reason } => {
                        assert!(self.exit_requests.contains(&request), "{request} unasked");
                        assert!(
                            self.exit_answers.insert(request, reason).is_none(),
                            "exit request {request} answered twice"
                        );
                    }
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
                        if end.aborted.is_some() {
                            self.rolls.aborted += 1;
                        } else {
                            self.rolls.completed += 1;
                            // The switch is complete: no process of an older generation can
                            // answer any more (gone, or seen switched out).
                            let alive = self.running.iter().map(|r| r.1).chain(self.groups.clone());
                            for pid in alive {
                                assert!(
                                    self.generations[&pid] >= end.generation
                                        || self.switched_out.contains(&pid),
                                    "roll to {} ended while {pid} of generation {} may answer",
                                    end.generation,
                                    self.generations[&pid]
                                );
                            }
                        }
                        assert_eq!(self.cluster.last_roll(), Some(&end));
                        for request in end.requests {
                            assert!(self.answered.insert(request), "{request} answered twice");
                        }
                    }
                    Action::RollRefused { request, .. } => {
                        assert!(self.answered.insert(request), "{request} answered twice");
                    }
                    Action::ResizeAnswered { request, answer } => {
                        let wanted = self.resize_requests[&request];
                        assert!(
                            self.resize_answered.insert(request),
                            "resize {request} answered twice"
                        );
                        let cluster = &self.cluster;
                        match answer {
                            ResizeAnswer::Resized => assert!(
                                cluster.all_ready() && cluster.config.size == wanted,
                                "resize {request} to {wanted} answered before it is done"
                            ),
                            ResizeAnswer::Superseded { size } => assert!(
                                size == cluster.config.size && size != wanted,
                                "resize {request} to {wanted} superseded by {size}"
                            ),
                            ResizeAnswer::Refused { .. } => assert!(
                                cluster.is_stopping() || wanted == 0,
                                "resize {request} to {wanted} refused while running"
                            ),
                        }
                    }
                    Action::RequestRoll => {
                        // As the driver does: a roll with a number of the core's.
                        let request = self.new_request();
                        self.roll_requests.insert(request);
                        pending.push(Event::Roll(request));
                    }
                    Action::ProbeStarting { .. } => {
                        assert!(
                            self.cluster.config.probe_starting
                                && self.cluster.probing().next().is_some(),
                            "a probe with nothing to probe"
                        );
                        self.probed = Some(self.now);
                    }
                    Action::ProbeRetiring { workers } => {
                        let rolling = self.cluster.roll.as_ref().map(|roll| roll.generation);
                        for (_, pid) in &workers {
                            assert!(
                                rolling.is_some_and(|g| self.generations[pid] < g)
                                    && self.stop_asked.contains_key(pid),
                                "{pid} looked at as retiring, but it is no old worker asked to stop"
                            );
                        }
                        self.retiring = workers;
                    }
                    Action::CheckGroups { .. } => {
                        assert!(!self.groups.is_empty(), "a check of no group");
                    }
                    Action::Unseen { key, after } => {
                        assert!(self.unseen.insert(key), "{key:?} reported unseen twice");
                        let index = self.cluster.index_of_key(key).unwrap();
                        assert!(
                            matches!(
                                self.cluster.workers[index].state,
                                WorkerState::Starting { .. }
                            ) && self.cluster.config.probe_starting,
                            "{key:?} reported unseen, but it is no starting worker"
                        );
                        assert_eq!(after, UNSEEN_HINT);
                        assert!(self.spawned_at[&key] + UNSEEN_HINT <= self.now);
                    }
                    Action::OpenListeners { generation } => {
                        assert!(
                            self.cluster.config.steering,
                            "sockets opened without steering"
                        );
                        assert!(
                            !self.own_sockets.contains(&generation),
                            "generation {generation}'s sockets opened twice"
                        );
                        if self.sockets_fail {
                            self.shared_sockets.insert(generation);
                            pending.push(Event::ListenersShared { generation });
                        } else {
                            self.own_sockets.insert(generation);
                        }
                    }
                    Action::Steer { generation } => {
                        assert!(
                            self.own_sockets.contains(&generation),
                            "steered to generation {generation}, which has no sockets of its own"
                        );
                        assert!(
                            self.steered.is_none_or(|before| before < generation),
                            "steered back from {:?} to {generation}",
                            self.steered
                        );
                        self.steered = Some(generation);
                    }
                    Action::CloseListeners { generation } => {
                        // A generation whose sockets could not be opened may be told closed before
                        // the core hears of it: the driver has nothing to close then.
                        assert!(
                            self.own_sockets.remove(&generation)
                                || self.shared_sockets.contains(&generation),
                            "generation {generation}'s sockets closed, but not open"
                        );
                        assert_ne!(self.steered, Some(generation), "closed the steered sockets");
                        let alive = self.running.iter().map(|r| r.1).chain(self.groups.clone());
                        for pid in alive {
                            assert_ne!(
                                self.generations[&pid], generation,
                                "generation {generation}'s sockets closed while {pid} runs it"
                            );
                        }
                    }
                    Action::StopAccepting => {
                        assert!(
                            self.cluster.config.steering
                                && matches!(
                                    self.cluster.phase,
                                    Phase::Stopping { .. } | Phase::Exited
                                ),
                            "new connections refused, but no graceful stop with steering"
                        );
                        self.refusing = true;
                    }
                    Action::ProbeDraining { workers } => {
                        for (_, pid, generation) in &workers {
                            assert_eq!(self.generations[pid], *generation);
                            assert!(
                                (self.refusing || self.steered.is_some_and(|to| *generation < to))
                                    && !self.stop_asked.contains_key(pid),
                                "{pid} looked at as draining, but it is no old worker steered \
                                 away from and not yet asked to stop"
                            );
                        }
                        self.draining = workers
                            .into_iter()
                            .map(|(key, pid, _)| (key, pid))
                            .collect();
                    }
                    Action::Report(_) | Action::Ready(_) | Action::Notify(_) => {}
                    Action::RollStarted { .. } => self.rolls.started += 1,
                }
            }
        }
        self.check_invariants();
    }

    /// A stop someone waits the end of.
    fn quit(&mut self, hard: bool) {
        let request = self.new_request();
        self.exit_requests.insert(request);
        self.feed(Event::Quit { hard, request });
    }

    /// A request number from the core: never one given before.
    fn new_request(&mut self) -> u64 {
        let request = self.cluster.new_request();
        assert!(
            self.numbers.insert(request),
            "request number {request} reused"
        );
        request
    }

    fn check_invariants(&mut self) {
        let cluster = &self.cluster;
        // The core's count of rolls is the one its actions tell; a roll ends at most once.
        assert_eq!(cluster.roll_tally(), self.rolls);
        let in_flight = u64::from(cluster.roll.is_some());
        assert!(self.rolls.completed + self.rolls.aborted + in_flight <= self.rolls.started);
        // A second Ctrl-C always ends in a hard stop; the first one in a stop.
        if self.interrupts > 1 {
            assert!(
                matches!(
                    cluster.phase,
                    Phase::Stopping { hard: true } | Phase::Exited
                ),
                "two Ctrl-C and no hard stop: {:?}",
                cluster.phase
            );
        } else if self.interrupts == 1 {
            assert!(cluster.is_stopping(), "a Ctrl-C and no stop");
        }
        // A starting worker is never left unprobed longer than the longest probe interval, nor
        // a leftover group unchecked longer than the group poll.
        let polled = cluster.polled.expect("polled since the first event");
        let deadline = cluster.next_deadline();
        if cluster.config.probe_starting && cluster.probing().next().is_some() {
            assert!(
                deadline.is_some_and(|at| at <= polled + PROBE_INTERVAL_MAX),
                "starting workers and no probe due"
            );
        }
        if cluster.workers.iter().any(|worker| worker.leader_exited) {
            assert!(
                deadline.is_some_and(|at| at <= polled + GROUP_POLL),
                "leftover groups and no check due"
            );
        }
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
        // A draining worker was never asked to stop; one with a deadline belongs to a
        // generation new connections no longer go to; one without waits for a switch to come.
        for worker in &cluster.workers {
            let WorkerState::Draining { deadline } = worker.state else {
                continue;
            };
            let pid = worker.pid.expect("a draining worker was ready");
            assert!(
                !self.stop_asked.contains_key(&pid),
                "{pid} drains after its stop signal"
            );
            if deadline.is_some() {
                assert!(
                    self.refusing || self.steered.is_some_and(|to| worker.generation < to),
                    "{pid} drains, but new connections still go to its generation"
                );
            } else {
                assert!(
                    cluster.roll.as_ref().is_some_and(|roll| roll.steers
                        && worker.generation < roll.generation
                        && self.steered != Some(roll.generation)),
                    "{pid} waits for a switch that no roll will make"
                );
            }
        }
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
        // Never more than size + surge workers that are not leaving (stopping, or draining
        // before their stop).
        let live = cluster.workers.iter().filter(|w| !w.leaving()).count();
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
            Step::SwitchOut(i) => {
                if let Some((key, pid)) = Self::pick(&self.retiring.clone(), i)
                    && self.cluster.index_of_key(key).is_some()
                {
                    self.switched_out.insert(pid);
                    self.feed(Event::SwitchedOut { key });
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
                let request = self.new_request();
                self.roll_requests.insert(request);
                self.feed(Event::Roll(request));
            }
            Step::Resize(size, wait) => {
                let request = wait.then(|| self.new_request());
                if let Some(request) = request {
                    self.resize_requests.insert(request, size);
                }
                self.feed(Event::Resize { size, request });
            }
            Step::Stop(hard, false) => self.feed(Event::Stop { hard }),
            Step::Stop(hard, true) => self.quit(hard),
            Step::Interrupt => {
                self.interrupts += 1;
                self.feed(Event::Interrupt);
            }
            Step::Hangup(terminal_lost) => {
                let was_stopping = self.cluster.is_stopping();
                self.feed(Event::Hangup { terminal_lost });
                let stops = self.cluster.config.hangup == Hangup::StopWithTerminal && terminal_lost;
                if stops {
                    assert!(self.cluster.is_stopping(), "the terminal hung up, no stop");
                } else if was_stopping {
                    assert!(self.cluster.is_stopping(), "a hangup ended a stop");
                } else if self.cluster.is_stopping() {
                    // The roll's replacements may fail to start while no worker was ever
                    // ready: then the never-ready rule ends the master, as a failed restart
                    // would have a moment later. Nothing else may stop it.
                    assert!(
                        self.cluster.config.never_ready == NeverReady::Exit
                            && matches!(
                                self.cluster.exit_reason,
                                Some(ExitReason::NeverReady { .. })
                            ),
                        "a hangup that rolls stopped the cluster: {:?}",
                        self.cluster.exit_reason
                    );
                }
            }
            Step::SpawnsFail(fail) => self.spawns_fail = fail,
            Step::SocketsFail(fail) => self.sockets_fail = fail,
            Step::Drained(i) => {
                if let Some((key, _)) = Self::pick(&self.draining.clone(), i)
                    && self.cluster.index_of_key(key).is_some()
                {
                    self.feed(Event::Drained { key });
                }
            }
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
        for key in self.keys_in(|s| matches!(s, WorkerState::Draining { deadline: Some(_) })) {
            self.feed(Event::Drained { key });
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

fn config(
    size: usize,
    never_ready: NeverReady,
    surge: Surge,
    probe_starting: bool,
    hangup: Hangup,
    steering: bool,
) -> ClusterConfig {
    ClusterConfig {
        steering,
        ready_delay: None,
        watchdog: Some(Duration::from_secs(5)),
        never_ready,
        surge,
        probe_starting,
        hangup,
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
        probe_starting in any::<bool>(),
        session in any::<bool>(),
        steering in any::<bool>(),
    ) {
        let never_ready = if wait { NeverReady::Wait } else { NeverReady::Exit };
        let hangup = if session { Hangup::StopWithTerminal } else { Hangup::Roll };
        let mut world = World::new(config(size, never_ready, surge, probe_starting, hangup, steering));
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
        world.quit(false);
        let mut rounds = 0;
        while world.exits == 0 {
            world.settle_once();
            rounds += 1;
            prop_assert!(rounds < 50, "the stop did not end");
        }
        prop_assert!(world.running.is_empty() && world.groups.is_empty());
        // A quit that arrives once the master ended still hears how; the driver's end answers
        // nothing twice.
        world.quit(true);
        world.feed(Event::Ended(ExitReason::Killed));
        // Every exit waiter heard how the master ended, once (checked as they came).
        let reason = world.exit_reason.clone().unwrap();
        prop_assert_eq!(world.exit_answers.len(), world.exit_requests.len());
        prop_assert!(world.exit_answers.values().all(|answer| *answer == reason));
        // Every roll request got its answer: a roll's end, or a refusal; every resize request
        // with a waiter too.
        prop_assert_eq!(&world.answered, &world.roll_requests);
        let resizes: HashSet<u64> = world.resize_requests.keys().copied().collect();
        prop_assert_eq!(&world.resize_answered, &resizes);
    }
}

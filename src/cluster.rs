//! The sans-IO core: every decision about workers, and nothing else.
//!
//! [`Cluster::handle`] takes the time and one [`Event`] and returns the [`Action`]s the driver
//! must carry out, in order. The core performs no I/O and never reads the clock, so its tests
//! are timelines of events that run in microseconds.
//!
//! A worker moves through these states:
//!
//! ```text
//!  Spawn ──> Spawning ──Spawned──> Starting ──READY=1 / ready delay──> Ready
//!               │                     │                                 │
//!          SpawnFailed        exit / ready deadline                   exit
//!               │                     │                                 │
//!               └───> failed start <──┘                      crash: restart with backoff
//!
//!  stop (roll, resize, shutdown, missed deadline): Stopping ──kill timeout──> SIGKILL ──> reaped
//! ```
//!
//! A roll replaces slot 0, then slot 1, and so on: it spawns the slot's replacement, waits until
//! it is ready, and only then stops the slot's old worker, so ready workers never drop below the
//! size. A replacement that fails aborts the roll; the old workers keep serving.

mod backoff;
mod event;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use backoff::Backoff;
pub use event::{
    Action, Event, ExitReason, MasterState, Pid, ProcessEnd, RollEnd, StopKind, WorkerKey,
    human_duration, signal_name,
};

/// The policy knobs of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How many workers to run.
    pub size: usize,
    /// A starting worker still alive after this long counts as ready; `None` waits for `READY=1`.
    pub ready_delay: Option<Duration>,
    /// A worker not ready by then has failed to start.
    pub ready_timeout: Duration,
    /// How long a stopping worker has before SIGKILL.
    pub kill_timeout: Duration,
    /// Delays between restarts of a crashing slot.
    pub backoff: Backoff,
    /// While no worker has ever been ready, a slot failing this many starts in a row ends the
    /// master.
    pub start_attempts: u32,
    /// A ready worker that sends no `WATCHDOG=1` for this long is replaced; `None`: no watchdog.
    pub watchdog: Option<Duration>,
}

impl ClusterConfig {
    /// The defaults of `mcluster start` for `size` workers.
    #[must_use]
    pub fn new(size: usize) -> Self {
        Self {
            size,
            ready_delay: Some(Duration::from_secs(1)),
            ready_timeout: Duration::from_mins(1),
            kill_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            start_attempts: 3,
            watchdog: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    /// Asked for, not yet spawned.
    Spawning,
    Starting {
        ready_at: Option<Instant>,
        deadline: Instant,
    },
    Ready,
    Stopping {
        kill_at: Option<Instant>,
    },
}

#[derive(Debug, Clone)]
struct Worker {
    key: WorkerKey,
    slot: usize,
    generation: u64,
    pid: Option<Pid>,
    state: WorkerState,
    since: Instant,
    /// When a ready worker's watchdog runs out, unless it sends `WATCHDOG=1` first.
    watchdog_at: Option<Instant>,
}

impl Worker {
    fn label(&self) -> String {
        match self.pid {
            Some(pid) => format!("w{} (pid {pid})", self.slot),
            None => format!("w{}", self.slot),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// Failures in a row; reset when a worker of the slot ran for the stable period.
    failures: u32,
    restart_at: Option<Instant>,
    restart_generation: u64,
}

#[derive(Debug, Clone)]
struct Roll {
    generation: u64,
    slot: usize,
    replacement: Option<WorkerKey>,
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Stopping { hard: bool },
    Exited,
}

/// The cluster's state and policy. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    next_key: u64,
    serving_generation: u64,
    next_generation: u64,
    phase: Phase,
    roll: Option<Roll>,
    roll_queued: bool,
    started: Option<Instant>,
    ever_ready: bool,
    announced_ready: bool,
    exit_reason: Option<ExitReason>,
}

impl Cluster {
    /// A cluster that does nothing until [`Event::Start`].
    #[must_use]
    pub fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            workers: Vec::new(),
            next_key: 0,
            serving_generation: 0,
            next_generation: 1,
            phase: Phase::Idle,
            roll: None,
            roll_queued: false,
            started: None,
            ever_ready: false,
            announced_ready: false,
            exit_reason: None,
        }
    }

    /// The configured number of workers.
    #[must_use]
    pub fn size(&self) -> usize {
        self.config.size
    }

    /// The generation crash restarts and new slots run: the last one fully rolled in.
    #[must_use]
    pub fn serving_generation(&self) -> u64 {
        self.serving_generation
    }

    /// Whether a roll is in progress.
    #[must_use]
    pub fn is_rolling(&self) -> bool {
        self.roll.is_some()
    }

    /// Whether a stop has begun.
    #[must_use]
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::Exited)
    }

    /// The earliest instant at which [`Event::Tick`] has work to do.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let worker_deadlines = self.workers.iter().flat_map(|worker| match worker.state {
            WorkerState::Starting { ready_at, deadline } => [ready_at, Some(deadline)],
            WorkerState::Stopping { kill_at } => [kill_at, None],
            WorkerState::Ready => [worker.watchdog_at, None],
            WorkerState::Spawning => [None, None],
        });
        let restarts = self.slots.iter().map(|slot| slot.restart_at);
        worker_deadlines.chain(restarts).flatten().min()
    }

    /// Advances the cluster by one event; returns what the driver must do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Start => self.start(now, &mut actions),
            Event::Spawned { key, pid } => self.spawned(now, key, pid, &mut actions),
            Event::SpawnFailed { key, reason } => {
                if let Some(index) = self.index_of_key(key) {
                    let worker = self.workers.remove(index);
                    let failure = format!("could not be spawned: {reason}");
                    self.failed_start(now, &worker, &failure, None, &mut actions);
                }
            }
            Event::Ready { key } => {
                if let Some(index) = self.index_of_key(key)
                    && matches!(self.workers[index].state, WorkerState::Starting { .. })
                {
                    self.mark_ready(now, index, &mut actions);
                }
            }
            Event::Watchdog { key } => {
                let watchdog = self.config.watchdog;
                if let Some(index) = self.index_of_key(key)
                    && self.workers[index].state == WorkerState::Ready
                {
                    self.workers[index].watchdog_at = watchdog.map(|limit| now + limit);
                }
            }
            Event::Stopping { key } => self.stopping_by_itself(now, key, &mut actions),
            Event::Exited { pid, end } => self.exited(now, pid, end, &mut actions),
            Event::Tick => self.tick(now, &mut actions),
            Event::Roll => self.request_roll(now, &mut actions),
            Event::Resize(size) => self.resize(now, size, &mut actions),
            Event::Stop { hard } => self.stop(now, hard, &mut actions),
        }
        self.check_exit(&mut actions);
        actions
    }

    fn start(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::Running;
        self.started = Some(now);
        self.serving_generation = self.next_generation;
        self.next_generation += 1;
        self.slots = vec![Slot::default(); self.config.size];
        for slot in 0..self.config.size {
            self.spawn(slot, self.serving_generation, actions);
        }
    }

    fn spawn(&mut self, slot: usize, generation: u64, actions: &mut Vec<Action>) -> WorkerKey {
        let key = WorkerKey(self.next_key);
        self.next_key += 1;
        self.slots[slot].restart_at = None;
        self.workers.push(Worker {
            key,
            slot,
            generation,
            pid: None,
            state: WorkerState::Spawning,
            // Replaced by the spawn time in `spawned`; a worker is never read before that.
            since: self.started.unwrap_or_else(Instant::now),
            watchdog_at: None,
        });
        actions.push(Action::Spawn {
            key,
            slot,
            generation,
            size: self.config.size,
        });
        key
    }

    fn spawned(&mut self, now: Instant, key: WorkerKey, pid: Pid, actions: &mut Vec<Action>) {
        let Some(index) = self.index_of_key(key) else {
            return;
        };
        let worker = &mut self.workers[index];
        worker.pid = Some(pid);
        worker.since = now;
        match worker.state {
            WorkerState::Spawning => {
                worker.state = WorkerState::Starting {
                    ready_at: self.config.ready_delay.map(|delay| now + delay),
                    deadline: now + self.config.ready_timeout,
                };
            }
            // Stopped while being spawned (a stop raced the spawn): finish the job now.
            WorkerState::Stopping { .. } => {
                let hard = self.phase == Phase::Stopping { hard: true };
                self.stop_worker(now, index, hard, actions);
            }
            WorkerState::Starting { .. } | WorkerState::Ready => {}
        }
    }

    fn exited(&mut self, now: Instant, pid: Pid, end: ProcessEnd, actions: &mut Vec<Action>) {
        let Some(index) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
            // Not ours (a reaped orphan when the master is PID 1): nothing to decide.
            return;
        };
        let worker = self.workers.remove(index);
        match worker.state {
            WorkerState::Stopping { .. } => {}
            WorkerState::Spawning | WorkerState::Starting { .. } => {
                let failure = format!("{end} before it was ready");
                self.failed_start(now, &worker, &failure, Some(end), actions);
            }
            WorkerState::Ready => self.crashed(now, &worker, end, actions),
        }
    }

    fn crashed(
        &mut self,
        now: Instant,
        worker: &Worker,
        end: ProcessEnd,
        actions: &mut Vec<Action>,
    ) {
        self.replace_failed(now, worker, &end.to_string(), actions);
    }

    /// A ready worker failed (it exited, or its watchdog ran out): its slot gets a new worker,
    /// with backoff, unless another worker already covers the slot.
    fn replace_failed(
        &mut self,
        now: Instant,
        worker: &Worker,
        failure: &str,
        actions: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running || worker.slot >= self.slots.len() {
            return;
        }
        let generation = self.restart_generation(worker);
        // A replacement already took over this slot (a roll in flight): nothing to restore.
        if self.slot_covered(worker) {
            actions.push(Action::Log(format!("{} {failure}", worker.label())));
            return;
        }
        if now.duration_since(worker.since) >= self.config.backoff.stable {
            self.slots[worker.slot].failures = 0;
        }
        self.schedule_restart(now, worker, generation, failure, actions);
    }

    /// The worker said `STOPPING=1` without being asked: it is leaving, so its slot gets a new
    /// worker at once, and its exit is no crash. It has the kill timeout to finish.
    fn stopping_by_itself(&mut self, now: Instant, key: WorkerKey, actions: &mut Vec<Action>) {
        let Some(index) = self.index_of_key(key) else {
            return;
        };
        if self.phase != Phase::Running || self.workers[index].state != WorkerState::Ready {
            return;
        }
        let worker = &mut self.workers[index];
        worker.state = WorkerState::Stopping {
            kill_at: Some(now + self.config.kill_timeout),
        };
        let worker = worker.clone();
        actions.push(Action::Log(format!(
            "{} is stopping by itself (STOPPING=1); starting its replacement",
            worker.label()
        )));
        if worker.slot >= self.slots.len() {
            return;
        }
        if !self.slot_covered(&worker) {
            let generation = self.restart_generation(&worker);
            self.spawn(worker.slot, generation, actions);
        }
    }

    /// Whether another worker, not stopping, serves (or is starting to serve) `worker`'s slot.
    fn slot_covered(&self, worker: &Worker) -> bool {
        self.workers.iter().any(|other| {
            other.key != worker.key
                && other.slot == worker.slot
                && !matches!(other.state, WorkerState::Stopping { .. })
        })
    }

    /// A worker of the roll in flight is restarted as that generation; any other as the
    /// serving one.
    fn restart_generation(&self, worker: &Worker) -> u64 {
        match &self.roll {
            Some(roll) if roll.generation == worker.generation => worker.generation,
            _ => self.serving_generation,
        }
    }

    fn schedule_restart(
        &mut self,
        now: Instant,
        worker: &Worker,
        generation: u64,
        failure: &str,
        actions: &mut Vec<Action>,
    ) {
        let slot = &mut self.slots[worker.slot];
        slot.failures += 1;
        let delay = self.config.backoff.delay(slot.failures);
        slot.restart_generation = generation;
        actions.push(Action::Log(format!(
            "{} {failure}; restarting in {}",
            worker.label(),
            human_duration(delay)
        )));
        if delay.is_zero() {
            self.spawn(worker.slot, generation, actions);
        } else {
            self.slots[worker.slot].restart_at = Some(now + delay);
        }
    }

    fn failed_start(
        &mut self,
        now: Instant,
        worker: &Worker,
        failure: &str,
        end: Option<ProcessEnd>,
        actions: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running {
            return;
        }
        if let Some(roll) = &self.roll
            && roll.replacement == Some(worker.key)
        {
            let end = RollEnd {
                generation: roll.generation,
                size: self.config.size,
                elapsed: now.duration_since(roll.started),
                aborted: Some(format!("{} {failure}", worker.label())),
                serving: self.serving_generation,
            };
            self.roll = None;
            actions.push(Action::RollEnded(end));
            actions.push(Action::Notify(MasterState::Ready));
            self.start_queued_roll(now, actions);
            return;
        }
        if worker.slot >= self.slots.len() {
            return;
        }
        let failures = self.slots[worker.slot].failures + 1;
        if !self.ever_ready && failures >= self.config.start_attempts {
            self.slots[worker.slot].failures = failures;
            let reason = ExitReason::NeverReady {
                slot: worker.slot,
                pid: worker.pid,
                failure: failure.to_owned(),
                end,
            };
            actions.push(Action::Log(format!(
                "error: no worker became ready after {failures} attempts: {} {failure}",
                worker.label()
            )));
            self.exit_reason = Some(reason);
            self.stop(now, true, actions);
            return;
        }
        let generation = self.restart_generation(worker);
        self.schedule_restart(now, worker, generation, failure, actions);
    }

    fn mark_ready(&mut self, now: Instant, index: usize, actions: &mut Vec<Action>) {
        let worker = &mut self.workers[index];
        worker.state = WorkerState::Ready;
        worker.watchdog_at = self.config.watchdog.map(|limit| now + limit);
        let (key, slot) = (worker.key, worker.slot);
        actions.push(Action::Detail(format!(
            "w{slot} ready (pid {}, generation {})",
            worker
                .pid
                .map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
            worker.generation
        )));
        self.ever_ready = true;
        if let Some(slot_state) = self.slots.get_mut(slot) {
            slot_state.restart_at = None;
        }
        if let Some(roll) = &mut self.roll
            && roll.replacement == Some(key)
        {
            roll.replacement = None;
            roll.slot += 1;
            let olds: Vec<usize> = (0..self.workers.len())
                .filter(|&i| {
                    let old = &self.workers[i];
                    old.slot == slot
                        && old.key != key
                        && !matches!(old.state, WorkerState::Stopping { .. })
                })
                .collect();
            for old in olds {
                self.stop_worker(now, old, false, actions);
            }
            self.advance_roll(now, actions);
        }
        if !self.announced_ready && self.ready_slots() == self.config.size {
            self.announced_ready = true;
            let elapsed = now.duration_since(self.started.unwrap_or(now));
            actions.push(Action::Log(format!(
                "all {} workers ready in {}",
                self.config.size,
                human_duration(elapsed)
            )));
            actions.push(Action::Notify(MasterState::Ready));
        }
    }

    fn ready_slots(&self) -> usize {
        (0..self.config.size)
            .filter(|&slot| {
                self.workers
                    .iter()
                    .any(|w| w.slot == slot && w.state == WorkerState::Ready)
            })
            .count()
    }

    fn tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut index = 0;
        while index < self.workers.len() {
            let worker = &self.workers[index];
            match worker.state {
                WorkerState::Starting { ready_at, deadline } => {
                    if ready_at.is_some_and(|at| at <= now) {
                        self.mark_ready(now, index, actions);
                    } else if deadline <= now {
                        // It may already have accepted connections: stop it like any worker.
                        let failure = format!(
                            "was not ready within {}",
                            human_duration(self.config.ready_timeout)
                        );
                        let worker = worker.clone();
                        self.stop_worker(now, index, false, actions);
                        self.failed_start(now, &worker, &failure, None, actions);
                    }
                }
                WorkerState::Ready if worker.watchdog_at.is_some_and(|at| at <= now) => {
                    let failure = format!(
                        "sent no WATCHDOG=1 for {}",
                        human_duration(self.config.watchdog.unwrap_or_default())
                    );
                    let worker = worker.clone();
                    self.workers[index].watchdog_at = None;
                    self.stop_worker(now, index, false, actions);
                    self.replace_failed(now, &worker, &failure, actions);
                }
                WorkerState::Stopping { kill_at } if kill_at.is_some_and(|at| at <= now) => {
                    if let Some(pid) = worker.pid {
                        actions.push(Action::Log(format!(
                            "{} did not stop within {}; sending SIGKILL",
                            worker.label(),
                            human_duration(self.config.kill_timeout)
                        )));
                        actions.push(Action::Signal {
                            pid,
                            kind: StopKind::Kill,
                        });
                    }
                    self.workers[index].state = WorkerState::Stopping { kill_at: None };
                }
                _ => {}
            }
            index += 1;
        }
        if self.phase == Phase::Running {
            for slot in 0..self.slots.len() {
                if self.slots[slot].restart_at.is_some_and(|at| at <= now) {
                    let generation = self.slots[slot].restart_generation;
                    self.spawn(slot, generation, actions);
                }
            }
        }
    }

    fn request_roll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        if self.roll.is_some() {
            // Many requests in a burst: one roll running, at most one queued.
            self.roll_queued = true;
            actions.push(Action::Log(
                "a roll is in progress; one more roll will follow it".to_owned(),
            ));
        } else {
            self.begin_roll(now, actions);
        }
    }

    fn start_queued_roll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if std::mem::take(&mut self.roll_queued) {
            self.begin_roll(now, actions);
        }
    }

    fn begin_roll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        actions.push(Action::Detail(format!(
            "rolling {} workers to generation {generation}",
            self.config.size
        )));
        actions.push(Action::Notify(MasterState::Reloading));
        self.roll = Some(Roll {
            generation,
            slot: 0,
            replacement: None,
            started: now,
        });
        self.advance_roll(now, actions);
    }

    fn advance_roll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(roll) = &self.roll else {
            return;
        };
        let (generation, slot) = (roll.generation, roll.slot);
        if slot < self.config.size {
            let key = self.spawn(slot, generation, actions);
            if let Some(roll) = &mut self.roll {
                roll.replacement = Some(key);
            }
            return;
        }
        let elapsed = now.duration_since(roll.started);
        self.roll = None;
        self.serving_generation = generation;
        for slot in &mut self.slots {
            slot.restart_generation = generation;
        }
        actions.push(Action::RollEnded(RollEnd {
            generation,
            size: self.config.size,
            elapsed,
            aborted: None,
            serving: generation,
        }));
        actions.push(Action::Notify(MasterState::Ready));
        self.start_queued_roll(now, actions);
    }

    fn resize(&mut self, now: Instant, size: usize, actions: &mut Vec<Action>) {
        if self.phase != Phase::Running || size == 0 || size == self.config.size {
            return;
        }
        actions.push(Action::Log(format!("resizing to {size} workers")));
        let old_size = self.config.size;
        self.config.size = size;
        if size > old_size {
            for slot in old_size..size {
                self.slots.push(Slot {
                    restart_generation: self.serving_generation,
                    ..Slot::default()
                });
                self.spawn(slot, self.serving_generation, actions);
            }
        } else {
            self.slots.truncate(size);
            let extra: Vec<usize> = (0..self.workers.len())
                .filter(|&i| {
                    self.workers[i].slot >= size
                        && !matches!(self.workers[i].state, WorkerState::Stopping { .. })
                })
                .collect();
            for index in extra {
                self.stop_worker(now, index, false, actions);
            }
            if self.roll.as_ref().is_some_and(|roll| roll.slot >= size) {
                self.advance_roll(now, actions);
            }
        }
    }

    fn stop(&mut self, now: Instant, hard: bool, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::Stopping { hard: true } | Phase::Exited => return,
            Phase::Idle => {
                self.phase = Phase::Stopping { hard };
                return;
            }
            Phase::Running => {
                actions.push(Action::Notify(MasterState::Stopping));
            }
            Phase::Stopping { hard: false } if !hard => return,
            Phase::Stopping { hard: false } => {}
        }
        self.phase = Phase::Stopping { hard };
        self.roll = None;
        self.roll_queued = false;
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let live = self.workers.len();
        actions.push(Action::Log(if hard {
            format!("stopping {live} workers hard")
        } else {
            format!("stopping {live} workers")
        }));
        for index in 0..self.workers.len() {
            let already_stopping =
                matches!(self.workers[index].state, WorkerState::Stopping { .. });
            if hard || !already_stopping {
                self.stop_worker(now, index, hard, actions);
            }
        }
    }

    /// Sends the stop signal (with a kill deadline) or SIGKILL.
    fn stop_worker(&mut self, now: Instant, index: usize, hard: bool, actions: &mut Vec<Action>) {
        let worker = &mut self.workers[index];
        let Some(pid) = worker.pid else {
            // Not spawned yet: `spawned` stops it as soon as it has a pid.
            worker.state = WorkerState::Stopping { kill_at: None };
            return;
        };
        if hard {
            actions.push(Action::Signal {
                pid,
                kind: StopKind::Kill,
            });
            worker.state = WorkerState::Stopping { kill_at: None };
        } else {
            actions.push(Action::Signal {
                pid,
                kind: StopKind::Graceful,
            });
            worker.state = WorkerState::Stopping {
                kill_at: Some(now + self.config.kill_timeout),
            };
        }
    }

    fn check_exit(&mut self, actions: &mut Vec<Action>) {
        if let Phase::Stopping { hard } = self.phase
            && self.workers.is_empty()
        {
            self.phase = Phase::Exited;
            let reason = self.exit_reason.take().unwrap_or(if hard {
                ExitReason::Killed
            } else {
                ExitReason::Stopped
            });
            actions.push(Action::Log("stopped".to_owned()));
            actions.push(Action::Exit(reason));
        }
    }

    fn index_of_key(&self, key: WorkerKey) -> Option<usize> {
        self.workers.iter().position(|worker| worker.key == key)
    }
}

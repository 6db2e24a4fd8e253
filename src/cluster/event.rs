//! What the driver tells the core, and what the core asks the driver to do.

use std::fmt;
use std::time::Duration;

/// A process id, carried by the core but never used by it to reach the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub i32);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One spawn of a worker: unique for the life of a [`Cluster`](super::Cluster), never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey(pub u64);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// It exited with this status.
    Code(i32),
    /// A signal (by number) killed it.
    Signal(i32),
}

impl ProcessEnd {
    /// The exit status a shell would report for this end: the code, or 128 + the signal.
    #[must_use]
    pub fn exit_status(self) -> i32 {
        match self {
            ProcessEnd::Code(code) => code,
            ProcessEnd::Signal(signal) => 128 + signal,
        }
    }
}

/// The conventional name of the common signals, for messages.
#[must_use]
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// Something that happened, fed to [`Cluster::handle`](super::Cluster::handle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start the first generation.
    Start,
    /// The driver spawned the worker asked for by [`Action::Spawn`].
    Spawned {
        /// The spawn.
        key: WorkerKey,
        /// Its process id.
        pid: Pid,
    },
    /// The driver could not spawn the worker asked for by [`Action::Spawn`].
    SpawnFailed {
        /// The spawn.
        key: WorkerKey,
        /// Why, for the log.
        reason: String,
    },
    /// The worker said `READY=1`.
    Ready {
        /// The worker.
        key: WorkerKey,
    },
    /// The driver saw the worker accepting on an inherited listener (automatic readiness).
    SeenAccepting {
        /// The worker.
        key: WorkerKey,
        /// How it was seen, for the log (`seen accepting (epoll)`).
        how: String,
    },
    /// An old worker a roll stopped ([`Action::ProbeRetiring`]) can no longer answer a request:
    /// no process of its group is seen accepting on a listener or holds a connection.
    SwitchedOut {
        /// The worker.
        key: WorkerKey,
    },
    /// A worker of a generation the listeners no longer send new connections to
    /// ([`Action::ProbeDraining`]) has taken every connection its generation's sockets held
    /// and has no request in progress: it gets the stop signal now.
    Drained {
        /// The worker.
        key: WorkerKey,
    },
    /// The driver could not open the roll's generation its own listening sockets
    /// ([`Action::OpenListeners`]): the generation shares the older ones, so the roll stops
    /// old workers as soon as their replacements are ready, as without steering.
    ListenersShared {
        /// The generation.
        generation: u64,
    },
    /// The worker said `WATCHDOG=1`: it is alive and well.
    Watchdog {
        /// The worker.
        key: WorkerKey,
    },
    /// The worker said `STOPPING=1`.
    Stopping {
        /// The worker.
        key: WorkerKey,
    },
    /// A worker process was reaped and nothing of its process group is left; or, after
    /// [`Event::LeaderExited`], the rest of its group is gone too.
    Exited {
        /// Its process id (its process group's id).
        pid: Pid,
        /// How it ended.
        end: ProcessEnd,
    },
    /// A worker process was reaped, but other processes of its group live on (children of a
    /// shell wrapper, helpers it started): the worker's exit counts now, and the rest of the
    /// group is stopped until [`Event::Exited`] reports it gone.
    LeaderExited {
        /// Its process id (its process group's id).
        pid: Pid,
        /// How it ended.
        end: ProcessEnd,
    },
    /// Time passed: the driver sends this when [`Cluster::next_deadline`](super::Cluster::next_deadline) is reached.
    Tick,
    /// Replace every worker with one of a new generation (SIGHUP). The number, given by
    /// [`Cluster::new_request`](super::Cluster::new_request), identifies the request in
    /// [`RollEnd::requests`] or [`Action::RollRefused`].
    Roll(u64),
    /// The driver's front made no roll of this request (dev mode before a generation serves):
    /// it is refused ([`Action::RollRefused`]).
    RollDeclined(u64),
    /// Change the number of workers.
    Resize {
        /// The size asked for.
        size: usize,
        /// Who waits for the outcome, numbered by
        /// [`Cluster::new_request`](super::Cluster::new_request): answered once by
        /// [`Action::ResizeAnswered`].
        request: Option<u64>,
    },
    /// Stop every worker and exit.
    Stop {
        /// SIGKILL at once instead of the stop signal and a grace period.
        hard: bool,
    },
    /// A stop whose end someone waits for: answered once by [`Action::ExitAnswered`].
    Quit {
        /// SIGKILL at once instead of the stop signal and a grace period.
        hard: bool,
        /// Who waits, numbered by [`Cluster::new_request`](super::Cluster::new_request).
        request: u64,
    },
    /// The master ends now, by the core's [`Action::Exit`] or for a reason outside it (its
    /// first build failed): whoever still waits for its end is answered with `reason`, and
    /// every other request still pending is refused.
    Ended(ExitReason),
    /// Ctrl-C (SIGINT): the first stops gracefully, the next one hard.
    Interrupt,
    /// SIGHUP: a roll, or the end of a terminal session (see [`Hangup`](super::Hangup)).
    Hangup {
        /// The master had a controlling terminal when it started and has none now.
        terminal_lost: bool,
    },
}

/// The answer to a resize request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeAnswer {
    /// Every slot of the size asked for has a ready worker.
    Resized,
    /// A later request asked for another size, which the cluster has now.
    Superseded {
        /// The size now.
        size: usize,
    },
    /// The request cannot be carried out.
    Refused {
        /// Why, for the requester.
        why: &'static str,
    },
}

/// Which signal the driver sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// The configured stop signal, to the worker's whole process group.
    Graceful,
    /// SIGKILL, to the worker's whole process group.
    Kill,
}

/// What the master tells its own service manager (systemd's notify protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterState {
    /// The cluster is serving (`READY=1`).
    Ready,
    /// A roll started (`RELOADING=1`).
    Reloading,
    /// The cluster is stopping (`STOPPING=1`).
    Stopping,
}

/// Why the cluster is exiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// A graceful stop completed.
    Stopped,
    /// A hard stop completed.
    Killed,
    /// The initial build failed and nothing will retry it (production mode).
    BuildFailed,
    /// No worker of the first generation ever became ready.
    NeverReady {
        /// The slot of the last worker that failed.
        slot: usize,
        /// Its process id, if it was spawned.
        pid: Option<Pid>,
        /// What happened to it.
        failure: Failure,
        /// How it ended, if it exited.
        end: Option<ProcessEnd>,
    },
}

impl ExitReason {
    /// The master's exit status for this reason.
    #[must_use]
    pub fn exit_status(&self) -> i32 {
        match self {
            ExitReason::Stopped => 0,
            ExitReason::Killed | ExitReason::BuildFailed => 1,
            ExitReason::NeverReady { end, .. } => match end {
                Some(end) if end.exit_status() != 0 => end.exit_status(),
                _ => 1,
            },
        }
    }
}

/// What the core asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a worker process; answer with [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn {
        /// The new spawn's key.
        key: WorkerKey,
        /// Its slot (`MCLUSTER_WORKER_ID`).
        slot: usize,
        /// Its generation (`MCLUSTER_GENERATION`).
        generation: u64,
        /// The cluster size (`MCLUSTER_WORKERS`).
        size: usize,
    },
    /// Send a signal.
    Signal {
        /// The worker.
        pid: Pid,
        /// Which signal, and to what.
        kind: StopKind,
    },
    /// Tell the user: one fact for the reporter (the crate's `report` module) to put in words.
    Report(Report),
    /// A worker became ready.
    Ready(WorkerReady),
    /// A roll started.
    RollStarted {
        /// The generation it rolls in.
        generation: u64,
        /// How many workers it replaces.
        size: usize,
    },
    /// A roll completed or was aborted.
    RollEnded(RollEnd),
    /// A roll request that no roll will answer: the cluster is stopping, or nothing has started
    /// yet, or the first generation starts again instead.
    RollRefused {
        /// The [`Event::Roll`] request.
        request: u64,
        /// Why, for the requester.
        why: &'static str,
    },
    /// A stopping worker is still alive a while after the stop signal.
    Lingering {
        /// The worker.
        pid: Pid,
        /// Its slot.
        slot: usize,
        /// Its generation.
        generation: u64,
        /// How long until SIGKILL; `None` if it was sent already.
        kill_in: Option<Duration>,
        /// A Ctrl-C began the stop: another one kills it now.
        ctrl_c_kills: bool,
    },
    /// Answer a resize request.
    ResizeAnswered {
        /// The [`Event::Resize`] request.
        request: u64,
        /// Its answer.
        answer: ResizeAnswer,
    },
    /// Answer a [`Event::Quit`] request: how the master ended.
    ExitAnswered {
        /// The request.
        request: u64,
        /// How the master ended.
        reason: ExitReason,
    },
    /// Ask for a roll the way SIGHUP does (in dev mode, through the build's front), with no
    /// one waiting for its outcome.
    RequestRoll,
    /// Probe the starting workers for accepting now; one seen accepting is
    /// [`Event::SeenAccepting`].
    ProbeStarting {
        /// A full round: first look again for the other members of their process groups (a
        /// shell wrapper's app) among their descendants, and list every fd of each process
        /// probed anew (a quick round reads only what changes while a worker waits); the core
        /// asks for one less often as workers take longer to start.
        full: bool,
        /// A full round that looks for the members in one pass over every process (`/proc`):
        /// also those no longer below the worker (a child of a member that exited). The
        /// core asks for one still less often.
        everyone: bool,
    },
    /// Look now whether these old workers, stopped by the roll under way, can still answer a
    /// request; one that cannot is [`Event::SwitchedOut`]. The roll ends once none can.
    ProbeRetiring {
        /// The old workers still retiring, each with its pid (its group).
        workers: Vec<(WorkerKey, Pid)>,
    },
    /// Give `generation` listening sockets of its own, in the listeners' `SO_REUSEPORT` groups,
    /// before its first worker is spawned; the new sockets receive no connection until
    /// [`Action::Steer`] sends them there. On failure, answer [`Event::ListenersShared`].
    OpenListeners {
        /// The generation a roll starts.
        generation: u64,
    },
    /// Send every new connection to `generation`'s sockets from now on (the switch): what
    /// older generations' sockets hold stays there for their workers to take.
    Steer {
        /// The generation.
        generation: u64,
    },
    /// No worker runs `generation` any more, nor will: take its sockets out of the groups.
    CloseListeners {
        /// The generation.
        generation: u64,
    },
    /// The master stops gracefully: take no new connection on any listener from now on; what
    /// the listeners hold stays for the workers, which drain before their stop signal.
    StopAccepting,
    /// Look now whether these workers, of generations the listeners no longer send new
    /// connections to, are drained: their generation's sockets hold no waiting connection,
    /// and no process of their group holds a connection with a request in progress. One that
    /// is drained is [`Event::Drained`].
    ProbeDraining {
        /// The workers draining, each with its pid (its group) and generation.
        workers: Vec<(WorkerKey, Pid, u64)>,
    },
    /// Check now whether the groups of exited workers are gone; one that is gone is
    /// [`Event::Exited`].
    CheckGroups {
        /// Also look for groups of zombies only (gone all the same), a pass over every process
        /// (`/proc`) that the core asks for less often as a group lingers longer.
        zombies: bool,
    },
    /// A starting worker is neither ready nor seen accepting this long after its spawn: tell
    /// the user once (unless a last probe sees it accepting now).
    Unseen {
        /// The worker.
        key: WorkerKey,
        /// How long since its spawn.
        after: Duration,
    },
    /// What is left of an exited worker's group outlived its SIGKILL by
    /// [`KILLED_GROUP_GRACE`](super::KILLED_GROUP_GRACE): zombies nobody reaps. It counts as
    /// gone: stop watching the group, and forget it (its pid may be reused once the zombies are
    /// reaped, and is then no longer ours).
    Abandon {
        /// The worker's pid (its process group's id).
        pid: Pid,
    },
    /// Tell the master's own service manager.
    Notify(MasterState),
    /// Every worker has exited: exit the master.
    Exit(ExitReason),
}

/// A worker that became ready, and the rule that made it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerReady {
    /// Its slot.
    pub slot: usize,
    /// Its process id.
    pub pid: Option<Pid>,
    /// Its generation.
    pub generation: u64,
    /// The rule that made it ready.
    pub how: ReadyBy,
}

/// The rule by which a worker became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyBy {
    /// It said `READY=1`.
    Notified,
    /// The driver saw it accepting, as [`Event::SeenAccepting`] describes (`seen accepting
    /// (epoll)`).
    Seen(String),
    /// It stayed alive this long (the ready delay).
    Alive(Duration),
}

/// How a roll ended, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollEnd {
    /// The generation rolled in, or not.
    pub generation: u64,
    /// The cluster's size.
    pub size: usize,
    /// How many slots (from slot 0) the roll moved to its generation.
    pub rolled: usize,
    /// From the roll's start to its end.
    pub elapsed: Duration,
    /// From the first replacement ready to the roll's end: how long old and new generations
    /// both served. `None` if no replacement got ready.
    pub switch: Option<Duration>,
    /// Why it was aborted: which replacement failed and how; `None` when it completed.
    pub aborted: Option<Aborted>,
    /// The process id of the replacement that failed, if it was spawned.
    pub failed: Option<Pid>,
    /// The generation serving after the roll: new slots run it.
    pub serving: u64,
    /// The generation each slot runs after the roll, slot 0 first.
    pub slots: Vec<u64>,
    /// The [`Event::Roll`] requests this roll answers: the one that started it, or every one
    /// merged into it while it was queued.
    pub requests: Vec<u64>,
}

/// Which replacement aborted a roll, and how it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aborted {
    /// The replacement.
    pub worker: WorkerId,
    /// How it failed.
    pub failure: Failure,
}

/// A worker as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerId {
    /// Its slot.
    pub slot: usize,
    /// Its process id, once spawned.
    pub pid: Option<Pid>,
    /// Its generation.
    pub generation: u64,
}

/// Why a worker counts as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The driver could not spawn it, for this reason ([`Event::SpawnFailed`]).
    NotSpawned(String),
    /// It ended before it was ready.
    EndedStarting(ProcessEnd),
    /// It ended after it was ready.
    Ended(ProcessEnd),
    /// It was not ready within the ready timeout, this long.
    NotReadyWithin(Duration),
    /// It was ready, and sent no `WATCHDOG=1` for this long.
    NoWatchdog(Duration),
}

/// What the core tells the user, as facts: the reporter (the crate's `report` module) puts them
/// in words for the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The terminal of a terminal session hung up: the master stops.
    TerminalLost,
    /// A worker exited and left processes in its group: they are stopped like a worker.
    LeftBehind(WorkerId),
    /// A ready worker said `STOPPING=1`: its replacement starts.
    StoppingByItself(WorkerId),
    /// A worker failed.
    Failed {
        /// The worker.
        worker: WorkerId,
        /// How.
        failure: Failure,
        /// When its slot restarts; `None` when another worker covers the slot.
        restart: Option<Restart>,
    },
    /// A slot was left with no worker (what covered it went away): one starts.
    Uncovered {
        /// The slot.
        slot: usize,
        /// The restart.
        restart: Restart,
    },
    /// No worker of the first generation became ready in the attempts allowed.
    NeverReady {
        /// The last worker that failed.
        worker: WorkerId,
        /// How.
        failure: Failure,
        /// The failures of its slot.
        attempts: u32,
        /// The cluster waits for a change to retry, instead of exiting.
        waits: bool,
    },
    /// Every slot has a ready worker for the first time.
    AllReady {
        /// The cluster's size.
        size: usize,
        /// Since the start.
        elapsed: Duration,
    },
    /// What is left of an exited worker's group outlived its SIGKILL by this long: zombies,
    /// taken for gone ([`Action::Abandon`]).
    Abandoned {
        /// The worker.
        worker: WorkerId,
        /// How long after SIGKILL.
        after: Duration,
    },
    /// A stopping worker (or what is left of its group) outlived the kill timeout: SIGKILL.
    Killing {
        /// The worker.
        worker: WorkerId,
        /// The worker process exited already; the rest of its group is killed.
        rest_of_group: bool,
        /// The kill timeout.
        after: Duration,
    },
    /// A draining worker still had connections in progress when its drain deadline passed (the
    /// kill timeout after the switch, half of it in a stop): it gets the stop signal anyway.
    NotDrained {
        /// The worker.
        worker: WorkerId,
        /// How long it was given.
        after: Duration,
    },
    /// A roll request arrived during a roll: one more roll follows it.
    RollQueued,
    /// The cluster resizes.
    Resizing {
        /// The new size.
        size: usize,
    },
    /// The cluster stops.
    Stopping {
        /// The workers still alive.
        live: usize,
        /// With SIGKILL.
        hard: bool,
    },
    /// Every worker is gone: the master exits.
    Stopped,
}

/// A slot's restart after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// After this backoff.
    pub delay: Duration,
    /// Of this generation.
    pub generation: u64,
}

/// Renders a duration for the log: `85ms`, `1.32s`.
#[must_use]
pub fn human_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.2}s", duration.as_secs_f64())
    }
}

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
//!  roll with steering: Ready ──replacement ready──> Draining ──drained / deadline──> Stopping
//! ```
//!
//! A roll replaces every slot, up to [`Surge`] replacements at a time (slot 0 first): it spawns
//! a slot's replacement, waits until it is ready, and only then stops the slot's old worker, so
//! ready workers never drop below the size. The roll ends when its switch is complete: every
//! slot rolled, and no worker of an older generation can answer a request any more — gone, or
//! seen switched out ([`Action::ProbeRetiring`], [`Event::SwitchedOut`]: no process of its group
//! accepting on a listener or holding a connection accepted on one); their kill timeout bounds
//! the wait. Whatever announces the new version (the roll's outcome, the pages' reload) follows
//! it.
//!
//! With steering ([`ClusterConfig::steering`]: each generation has listening sockets of its
//! own, one `SO_REUSEPORT` group per address), a roll opens its generation's sockets first
//! ([`Action::OpenListeners`]; they get no connection yet), and an old worker whose replacement
//! is ready is not stopped but *draining*: it serves on until the switch — as many replacements
//! ready as the surge starts at once, every one by default — when new connections go to the new
//! generation ([`Action::Steer`]); then it takes what its generation's sockets still hold and
//! gets the stop signal once it is drained ([`Action::ProbeDraining`], [`Event::Drained`]) or
//! the kill timeout after the switch. A worker that dies at once on SIGTERM thus loses nothing.
//! A generation no worker runs any more loses its sockets ([`Action::CloseListeners`]). A roll
//! aborted before its switch gives every slot back to its old worker and stops the new ones,
//! which never got a connection; one aborted after it keeps its ready replacements.
//!
//! A replacement that fails aborts the roll: the
//! replacements not yet ready are stopped, the slots not yet rolled keep their generation, and
//! the report says which slot runs which.
//!
//! Each slot runs one generation, and its crash restarts start that generation. While running,
//! every slot has a live worker or a scheduled restart after every event: whatever removed a
//! slot's worker (an aborted roll whose replacement had covered a crash, say), the end of
//! [`Cluster::handle`] puts one back.
//!
//! A worker is its process group. When the worker process exits while other processes of its
//! group live on ([`Event::LeaderExited`]), its slot is handled as for any exit, and the rest of
//! the group is stopped like a worker: the stop signal, SIGKILL at the kill deadline, gone at
//! [`Event::Exited`] — or [`KILLED_GROUP_GRACE`] after its SIGKILL, however the stop began:
//! what is left then are zombies that nobody reaps ([`Action::Abandon`]).
//!
//! Every deadline is `now` plus a configured duration, saturated (by `after`): a duration too
//! large for an [`Instant`] (`Duration::MAX`) means "never", not a panic.
//!
//! The core also keeps what the driver would otherwise keep beside it: the numbers of pending
//! requests ([`Cluster::new_request`]; the driver keeps only whoever waits under each number,
//! and the core says when to answer which with what: a roll's end or refusal, a resize done,
//! superseded or refused, the master's end), the clock on which starting workers are probed
//! and leftover groups checked ([`Action::ProbeStarting`], [`Action::CheckGroups`]), the one
//! line about a worker not seen accepting ([`Action::Unseen`]), and what a signal means: a
//! second Ctrl-C stops hard ([`Event::Interrupt`]), a hangup rolls or, for a terminal session
//! whose terminal is gone, stops ([`Event::Hangup`], [`Hangup`]).

mod backoff;
mod event;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use backoff::Backoff;
pub use event::{
    Aborted, Action, Event, ExitReason, Failure, MasterState, Pid, ProcessEnd, ReadyBy, Report,
    ResizeAnswer, Restart, RollEnd, StopKind, WorkerId, WorkerKey, WorkerReady, human_duration,
    signal_name,
};

/// After SIGKILL, how long what is left of an exited worker's group may still seem to exist
/// before it counts as gone. SIGKILL cannot be caught or ignored, so what remains after this
/// are zombies whose parent does not reap them (an init that does not reap orphans, a
/// container's shell as PID 1): waiting for them would never end.
pub const KILLED_GROUP_GRACE: Duration = Duration::from_secs(1);

/// How often the groups of exited workers are checked for being gone ([`Action::CheckGroups`]).
const GROUP_POLL: Duration = Duration::from_millis(50);

/// The longest pause between two passes over every process for groups of zombies only
/// ([`Action::CheckGroups`] with `zombies`): the pauses double from [`GROUP_POLL`] as groups
/// linger, up to this. A group of zombies only is gone at most this late; a pass costs a read
/// of every process's `stat`, too much for every 50 ms while a group lingers for its kill
/// timeout.
const ZOMBIE_SCAN_MAX: Duration = Duration::from_secs(1);

/// How often a starting worker is probed for accepting ([`Action::ProbeStarting`]; some
/// 25–120 µs a probe, more for a process with many threads).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// The longest pause between two rounds of probes, however many workers start at once.
const PROBE_INTERVAL_MAX: Duration = Duration::from_millis(50);

/// The longest pause between two looks for the other members of starting workers' groups
/// ([`Action::ProbeStarting`] with `full`): the pauses double from [`PROBE_INTERVAL_MAX`] while
/// workers start, up to this, and start over when a worker is spawned; a wrapper's app is seen
/// at most this late. A look follows each worker's children (a few reads a process of the
/// group); one in a while is a pass over every process instead (`everyone`), for a member whose
/// parent exited: its pauses double from [`EVERYONE_PASS_FIRST`] up to this. One pass serves
/// every starting worker and costs a read of every process's `stat` (some 5 µs a process: with
/// 1000 processes, 0.5 % of a core at one pass a second), far more than a round of probes.
const MEMBERS_SCAN_MAX: Duration = Duration::from_secs(1);

/// The first pause before a second pass over every process for the members of starting
/// workers' groups (see [`MEMBERS_SCAN_MAX`]).
const EVERYONE_PASS_FIRST: Duration = Duration::from_millis(500);

/// How long after an old worker's stop signal the first look at whether it can still answer
/// waits ([`Action::ProbeRetiring`]): time to handle the signal. The looks are on a clock of
/// their own, not the starting workers' probes' (40 ms apart with 8 starting): a worker whose
/// exit takes a while (an interpreter's teardown, 8 of them at once after a switch) ends the
/// switch as soon as it stops accepting, not when it is gone.
const RETIRE_LOOK_FIRST: Duration = Duration::from_millis(2);

/// The longest pause between two looks at the old workers of a roll that may still answer
/// ([`Action::ProbeRetiring`]): the pauses double from [`PROBE_INTERVAL`] while one lingers
/// (most are gone in milliseconds), up to this. Each look takes a pass over every process
/// (the members of their groups) and a read of the connection tables; the end of a switch is
/// seen at most this late for a worker that lingers without answering anything.
const RETIRE_ROUND_MAX: Duration = Duration::from_millis(200);

/// The first pause between two looks at the workers steered away from ([`Action::ProbeDraining`]);
/// the pauses double from it while one drains, up to [`RETIRE_ROUND_MAX`], on a clock of their
/// own. The first look, [`ClusterConfig::drain_settle`] after the switch, often finds a few connections still
/// waiting in the old generation's queue, which its workers accept within a millisecond or
/// two; a look reads the few sockets each holds (some 50–100 µs for two workers), or, where the
/// driver cannot, dumps every connection of the namespace (milliseconds: the doubling bounds
/// what that costs).
const DRAIN_LOOK_FIRST: Duration = Duration::from_millis(2);

/// How long after the switch (and after a graceful stop's [`Action::StopAccepting`]) the first
/// look at the workers steered away from waits by default ([`ClusterConfig::drain_settle`],
/// [`Action::ProbeDraining`]). A connection whose SYN reached the old generation's socket just
/// before the switch completes its handshake a round trip later, into that socket's queue, and
/// until then no look sees it (the kernel tells no listener's half-open connections). This
/// covers clients on the same host or network, even under load; a client farther away whose
/// handshake spans the switch is reset when the old sockets close, unless the kernel hands such
/// connections to another socket of the group at that close (`net.ipv4.tcp_migrate_req=1`,
/// Linux 5.14).
pub const DRAIN_SETTLE: Duration = Duration::from_millis(5);

/// [`DRAIN_SETTLE`] for sockets on loopback addresses, whose clients are on the same host:
/// there is no round trip to wait for. The loopback device hands each packet of a handshake to
/// the receiving socket in the same pass of the kernel's network processing, so a local
/// client's handshake ends within its `connect` call; the millisecond leaves room for that pass
/// deferred on a busy machine.
pub const LOOPBACK_DRAIN_SETTLE: Duration = Duration::from_millis(1);

/// After this long starting, a worker neither ready nor seen accepting gets one line of advice
/// ([`Action::Unseen`]).
const UNSEEN_HINT: Duration = Duration::from_secs(5);

/// How far ahead a deadline is put when `now + duration` cannot be represented: about a
/// century, for all purposes never.
const FAR_FUTURE: Duration = Duration::from_hours(100 * 365 * 24);

/// `now + duration`, saturated: a duration too large for an [`Instant`] gives an instant a
/// century ahead instead of a panic, so any duration the library is given works as "never".
#[must_use]
pub(crate) fn after(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration)
        .or_else(|| now.checked_add(FAR_FUTURE.min(duration)))
        .unwrap_or(now)
}

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
    /// What happens when no worker of the first generation ever becomes ready.
    pub never_ready: NeverReady,
    /// How many replacements a roll starts at once.
    pub surge: Surge,
    /// A stopping worker still alive this long after the stop signal is reported
    /// ([`Action::Lingering`]); `None`: never.
    pub linger_note: Option<Duration>,
    /// The driver can see whether a starting worker accepts: it is asked to look
    /// ([`Action::ProbeStarting`]), and told about one not seen for a while
    /// ([`Action::Unseen`]); and whether an old worker a roll stopped can still answer
    /// ([`Action::ProbeRetiring`]). Without, a roll's switch completes when its old workers
    /// are gone.
    pub probe_starting: bool,
    /// What SIGHUP does.
    pub hangup: Hangup,
    /// Each generation gets listening sockets of its own and the driver can send every new
    /// connection to one generation's ([`Action::OpenListeners`], [`Action::Steer`]): a roll
    /// then stops an old worker only once new connections go to its replacements' generation
    /// and it has drained what it held ([`Action::ProbeDraining`], [`Event::Drained`]).
    pub steering: bool,
    /// With steering, how long after the switch (and after a graceful stop refuses new
    /// connections) the first look at the old workers waits: the handshakes under way on the old
    /// sockets end in their queues first. [`DRAIN_SETTLE`] by default; a master whose listeners
    /// are all on loopback addresses takes [`LOOPBACK_DRAIN_SETTLE`].
    pub drain_settle: Duration,
}

/// What SIGHUP ([`Event::Hangup`]) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    /// A roll, always (a production master, as gunicorn and nginx do: a deploy's `kill -HUP`
    /// must never stop it, whatever became of the terminal it was started from).
    Roll,
    /// A stop when the terminal the master ran in is gone, a roll otherwise: an interactive
    /// session (`mcluster dev`) left running without its terminal would hold the port forever.
    StopWithTerminal,
}

/// How many replacements a roll runs at once beyond the cluster's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surge {
    /// This many (at least 1).
    Count(usize),
    /// This percentage of the size, rounded up (at least 1).
    Percent(u32),
    /// One per slot: every replacement at once.
    All,
}

impl Surge {
    /// The number of replacements at once for a cluster of `size`.
    #[must_use]
    pub fn of(self, size: usize) -> usize {
        let count = match self {
            Surge::Count(count) => count,
            Surge::Percent(percent) => {
                (size * usize::try_from(percent).unwrap_or(usize::MAX)).div_ceil(100)
            }
            Surge::All => size,
        };
        count.clamp(1, size.max(1))
    }
}

/// How many rolls started, completed and were aborted ([`Cluster::roll_tally`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollTally {
    /// Rolls started.
    pub started: u64,
    /// Rolls that moved every slot to their generation.
    pub completed: u64,
    /// Rolls a failed replacement aborted.
    pub aborted: u64,
}

/// One worker (or a slot waiting to restart one), as [`Cluster::rows`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    /// The slot.
    pub slot: usize,
    /// Its process id, once spawned.
    pub pid: Option<Pid>,
    /// Its generation (for a slot backing off: the one it restarts).
    pub generation: u64,
    /// What it is doing.
    pub state: RowState,
    /// Since when it runs.
    pub since: Option<Instant>,
    /// The slot's restarts after failures, in all.
    pub restarts: u64,
}

/// The state of a [`WorkerRow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Spawned, not ready yet.
    Starting,
    /// Serving.
    Ready,
    /// Replaced, taking what its generation's sockets still hold before its stop.
    Draining,
    /// Asked to stop (or leaving by itself), not gone yet.
    Stopping,
    /// No worker: the slot restarts one after a backoff delay.
    BackingOff,
}

impl RowState {
    /// The state's name in status output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            RowState::Starting => "starting",
            RowState::Ready => "ready",
            RowState::Draining => "draining",
            RowState::Stopping => "stopping",
            RowState::BackingOff => "backing off",
        }
    }
}

/// What a cluster does when every slot of its first generation failed
/// [`start_attempts`](ClusterConfig::start_attempts) times in a row and no worker was ever ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeverReady {
    /// Stop hard and exit with the worker's status (`mcluster start`).
    Exit,
    /// Stop the workers and wait for [`Event::Start`] (a new build) or [`Event::Roll`]
    /// (`mcluster dev`, where the next save may fix it).
    Wait,
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
            never_ready: NeverReady::Exit,
            surge: Surge::All,
            linger_note: Some(Duration::from_secs(2)),
            probe_starting: false,
            hangup: Hangup::Roll,
            steering: false,
            drain_settle: DRAIN_SETTLE,
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
    /// A ready worker of an older generation whose slot has a ready replacement, not signalled
    /// yet: it takes what its generation's sockets still hold, then gets the stop signal
    /// (drained, or at the deadline). It is leaving, as a stopping worker is.
    Draining {
        /// The drain deadline, set at the switch (new connections go elsewhere from then on);
        /// `None` before it.
        deadline: Option<Instant>,
    },
    Stopping {
        kill_at: Option<Instant>,
        /// When it is reported as lingering, if it is still alive then.
        note_at: Option<Instant>,
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
    /// The worker process exited; what is tracked now is the rest of its process group.
    leader_exited: bool,
    /// Since when it is ready, if it got ready.
    ready_since: Option<Instant>,
    /// When, after its SIGKILL, what is left of its group counts as gone (once the worker
    /// process itself was reaped).
    gone_at: Option<Instant>,
    /// When a starting worker not seen accepting is reported ([`Action::Unseen`]), once.
    hint_at: Option<Instant>,
    /// A stopping worker that can no longer answer a request ([`Event::SwitchedOut`]).
    switched_out: bool,
}

impl Worker {
    /// Whether it was sent SIGKILL already.
    fn is_killed(&self) -> bool {
        matches!(self.state, WorkerState::Stopping { kill_at: None, .. })
    }

    /// Whether it is on its way out (stopping, or draining before its stop): it covers no
    /// slot, and its exit is no failure.
    fn leaving(&self) -> bool {
        matches!(
            self.state,
            WorkerState::Stopping { .. } | WorkerState::Draining { .. }
        )
    }

    /// The worker as reports name it.
    fn id(&self) -> WorkerId {
        WorkerId {
            slot: self.slot,
            pid: self.pid,
            generation: self.generation,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    /// Failures in a row; reset when a worker of the slot was ready for the stable period.
    failures: u32,
    restart_at: Option<Instant>,
    /// The restart waits because a worker that had been ready exited (not a failed start).
    waits_after_ready: bool,
    /// The generation the slot runs: the one its crash restarts start.
    generation: u64,
    /// Restarts after failures, in all.
    restarts: u64,
}

impl Slot {
    fn of(generation: u64) -> Self {
        Self {
            failures: 0,
            restart_at: None,
            waits_after_ready: false,
            generation,
            restarts: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Roll {
    generation: u64,
    /// Slots whose replacement is not spawned yet, next first.
    pending: std::collections::VecDeque<usize>,
    /// The replacements starting now.
    replacements: Vec<WorkerKey>,
    /// Slots moved to the roll's generation.
    rolled: usize,
    started: Instant,
    /// When the first replacement got ready: the switch starts.
    first_ready: Option<Instant>,
    /// The requests this roll answers.
    requests: Vec<u64>,
    /// Its generation has sockets of its own: old workers drain before they stop.
    steers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    /// No worker of the first generation became ready; waiting for a new start ([`NeverReady::Wait`]).
    Waiting,
    Stopping {
        hard: bool,
    },
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
    /// Requests for a roll after the running one (merged into one).
    roll_queued: Vec<u64>,
    started: Option<Instant>,
    ever_ready: bool,
    announced_ready: bool,
    exit_reason: Option<ExitReason>,
    /// The last request number given out ([`Cluster::new_request`]).
    requests: u64,
    /// Resize requests not answered yet, with the size each asked for.
    resize_waiters: Vec<(u64, usize)>,
    /// Ctrl-C presses so far.
    interrupts: u32,
    /// The rolls so far, and how the last one ended.
    tally: RollTally,
    last_roll: Option<RollEnd>,
    /// Who waits for the master's end ([`Event::Quit`]).
    exit_waiters: Vec<u64>,
    /// How the master ended, once it did.
    ended: Option<ExitReason>,
    /// When starting workers were last probed and leftover groups checked; set by the first
    /// event.
    polled: Option<Instant>,
    /// The pass for groups of zombies only; reset while no group lingers, or when a new one
    /// does (its first check takes a pass).
    zombie_scan: DoublingPause,
    /// The full round of probes (a pass for the members of starting workers' groups, every
    /// fd listed anew); reset until the first round of probes, and when a worker is spawned
    /// (the next round is full).
    full_round: DoublingPause,
    /// The full rounds that take a pass over every process for the members (see
    /// [`MEMBERS_SCAN_MAX`]); reset with `full_round`.
    everyone_pass: DoublingPause,
    /// The looks at retiring workers ([`Action::ProbeRetiring`]); reset when a worker starts
    /// retiring (the next round looks).
    retire_round: DoublingPause,
    /// The looks at draining workers ([`Action::ProbeDraining`]), on a clock of their own (see
    /// [`DRAIN_LOOK_FIRST`]); due [`ClusterConfig::drain_settle`] after a switch or a graceful stop, and at
    /// once when a worker starts draining after a switch.
    drain_round: DoublingPause,
    /// The generation new connections go to ([`Action::Steer`]); `None` before the first
    /// switch (the first generation's sockets get them) or without steering.
    steered: Option<u64>,
    /// The generations with sockets of their own ([`Action::OpenListeners`]) not closed yet.
    own_listeners: Vec<u64>,
}

/// A look that is taken at once, then again after pauses that double from `first` up to `max`
/// (the paced `/proc` passes); reset, the next look is taken at once.
#[derive(Debug, Clone, Copy, Default)]
struct DoublingPause {
    /// When the next look is due, and the pause before it; `None` after a reset.
    next: Option<(Instant, Duration)>,
}

impl DoublingPause {
    /// A look due at `now`, then after pauses that double from `first`: one whose time the
    /// core's next deadline says.
    fn at(now: Instant) -> Self {
        Self {
            next: Some((now, Duration::ZERO)),
        }
    }

    /// When the next look is due; `None` after a reset (the next look is taken at once).
    fn next_due(&self) -> Option<Instant> {
        self.next.map(|(due, _)| due)
    }

    /// Whether a look is due at `now`; if so, the next one is set a pause later.
    fn due(&mut self, now: Instant, first: Duration, max: Duration) -> bool {
        match self.next {
            Some((due, _)) if now < due => false,
            Some((_, pause)) => {
                let pause = if pause.is_zero() {
                    first
                } else {
                    (pause * 2).min(max)
                };
                self.next = Some((after(now, pause), pause));
                true
            }
            None => {
                self.next = Some((after(now, first), first));
                true
            }
        }
    }
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
            roll_queued: Vec::new(),
            started: None,
            ever_ready: false,
            announced_ready: false,
            exit_reason: None,
            requests: 0,
            resize_waiters: Vec::new(),
            interrupts: 0,
            tally: RollTally::default(),
            last_roll: None,
            exit_waiters: Vec::new(),
            ended: None,
            polled: None,
            zombie_scan: DoublingPause::default(),
            full_round: DoublingPause::default(),
            everyone_pass: DoublingPause::default(),
            retire_round: DoublingPause::default(),
            drain_round: DoublingPause::default(),
            steered: None,
            own_listeners: Vec::new(),
        }
    }

    /// A new request number, never one given before, for [`Event::Roll`],
    /// [`Event::RollDeclined`], [`Event::Resize`] or [`Event::Quit`]: the driver keeps whoever
    /// waits under it, and the core says which number to answer with what.
    pub fn new_request(&mut self) -> u64 {
        self.requests += 1;
        self.requests
    }

    /// The configured number of workers.
    #[must_use]
    pub fn size(&self) -> usize {
        self.config.size
    }

    /// The generation new slots run: the last one fully rolled in (0 before the first start).
    #[must_use]
    pub fn serving_generation(&self) -> u64 {
        self.serving_generation
    }

    /// The oldest generation any slot runs or a roll in flight starts: executables of older
    /// generations are no longer needed.
    #[must_use]
    pub fn oldest_generation_in_use(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.generation)
            .chain(self.roll.as_ref().map(|roll| roll.generation))
            .min()
            .unwrap_or(self.serving_generation)
    }

    /// The generation each slot runs, slot 0 first.
    #[must_use]
    pub fn slot_generations(&self) -> Vec<u64> {
        self.slots.iter().map(|slot| slot.generation).collect()
    }

    /// How long after the stop signal a stopping worker is reported as lingering.
    #[must_use]
    pub fn linger_note(&self) -> Option<Duration> {
        self.config.linger_note
    }

    /// One row per worker the cluster tracks, and one per slot waiting for a restart.
    #[must_use]
    pub fn rows(&self) -> Vec<WorkerRow> {
        let workers = self.workers.iter().map(|worker| WorkerRow {
            slot: worker.slot,
            pid: worker.pid,
            generation: worker.generation,
            state: match worker.state {
                WorkerState::Spawning | WorkerState::Starting { .. } => RowState::Starting,
                WorkerState::Ready => RowState::Ready,
                WorkerState::Draining { .. } => RowState::Draining,
                WorkerState::Stopping { .. } => RowState::Stopping,
            },
            since: Some(worker.since).filter(|_| worker.pid.is_some()),
            restarts: self.slots.get(worker.slot).map_or(0, |slot| slot.restarts),
        });
        let backing_off = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.restart_at.is_some())
            .map(|(index, slot)| WorkerRow {
                slot: index,
                pid: None,
                generation: slot.generation,
                state: RowState::BackingOff,
                since: None,
                restarts: slot.restarts,
            });
        let mut rows: Vec<WorkerRow> = workers.chain(backing_off).collect();
        rows.sort_by_key(|row| (row.slot, row.generation));
        rows
    }

    /// How many rolls started, completed and were aborted.
    #[must_use]
    pub fn roll_tally(&self) -> RollTally {
        self.tally
    }

    /// How the last roll ended, if one did.
    #[must_use]
    pub fn last_roll(&self) -> Option<&RollEnd> {
        self.last_roll.as_ref()
    }

    /// Whether every slot has a ready worker.
    #[must_use]
    pub fn all_ready(&self) -> bool {
        self.phase == Phase::Running && self.ready_slots() == self.config.size
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

    /// Whether the first generation failed and the cluster waits for a new start
    /// ([`NeverReady::Wait`]).
    #[must_use]
    pub fn is_waiting(&self) -> bool {
        self.phase == Phase::Waiting
    }

    /// The earliest instant at which [`Event::Tick`] has work to do.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let worker_deadlines = self.workers.iter().flat_map(|worker| match worker.state {
            WorkerState::Starting { ready_at, deadline } => [ready_at, Some(deadline)],
            WorkerState::Stopping { kill_at, note_at } => [kill_at, note_at],
            WorkerState::Draining { deadline } => [deadline, None],
            WorkerState::Ready => [worker.watchdog_at, None],
            WorkerState::Spawning => [None, None],
        });
        let gone = self
            .workers
            .iter()
            .filter(|worker| worker.leader_exited)
            .map(|worker| worker.gone_at);
        let restarts = self.slots.iter().map(|slot| slot.restart_at);
        let hints = self.workers.iter().map(|worker| worker.hint_at);
        let drain_look = self
            .draining()
            .next()
            .and_then(|_| self.drain_round.next_due());
        let retire_look = self
            .retiring_stopped()
            .next()
            .filter(|_| self.config.probe_starting)
            .and_then(|_| self.retire_round.next_due());
        worker_deadlines
            .chain(gone)
            .chain(restarts)
            .chain(hints)
            .chain([self.next_poll(), drain_look, retire_look])
            .flatten()
            .min()
    }

    /// When starting workers are to be probed and leftover groups checked next; `None`: there
    /// are none.
    fn next_poll(&self) -> Option<Instant> {
        let probed = if self.config.probe_starting {
            self.probing().count()
        } else {
            0
        };
        let interval = if probed > 0 {
            // Many workers starting at once (a roll with a surge) share one budget:
            // the probes of a round grow with their number, the rounds thin out (10 ms for 1 or
            // 2, 40 ms for 8, at most 50 ms).
            let rounds = u32::try_from(probed.div_ceil(2)).unwrap_or(u32::MAX);
            (PROBE_INTERVAL * rounds).min(PROBE_INTERVAL_MAX)
        } else if self.workers.iter().any(|worker| worker.leader_exited) {
            GROUP_POLL
        } else {
            return None;
        };
        Some(after(self.polled?, interval))
    }

    /// Whether a group check at `now` takes a pass for groups of zombies only: the first check
    /// after a group began to linger does, then the pauses double up to [`ZOMBIE_SCAN_MAX`].
    fn zombie_scan_due(&mut self, now: Instant) -> bool {
        self.zombie_scan.due(now, GROUP_POLL, ZOMBIE_SCAN_MAX)
    }

    /// Whether a round of probes at `now` is full (first looks for the members of the starting
    /// workers' groups, lists every fd anew): the first round after a worker was spawned is,
    /// then the pauses double up to [`MEMBERS_SCAN_MAX`].
    fn full_round_due(&mut self, now: Instant) -> bool {
        self.full_round
            .due(now, PROBE_INTERVAL_MAX, MEMBERS_SCAN_MAX)
    }

    /// The draining workers steered away from (past the switch), with their pids and
    /// generations: those the driver looks at ([`Action::ProbeDraining`]).
    fn draining(&self) -> impl Iterator<Item = (WorkerKey, Pid, u64)> + '_ {
        self.workers.iter().filter_map(|worker| {
            matches!(worker.state, WorkerState::Draining { deadline: Some(_) }).then_some((
                worker.key,
                worker.pid?,
                worker.generation,
            ))
        })
    }

    /// The workers of a generation older than the roll under way's that may still answer a
    /// request. Once every slot is rolled, every one of them was asked to stop.
    fn retiring(&self) -> impl Iterator<Item = &Worker> {
        let generation = self.roll.as_ref().map_or(0, |roll| roll.generation);
        self.workers
            .iter()
            .filter(move |worker| worker.generation < generation && !worker.switched_out)
    }

    /// The retiring workers asked to stop, with their pids: those the driver looks at for the
    /// end of the switch ([`Action::ProbeRetiring`]).
    fn retiring_stopped(&self) -> impl Iterator<Item = (WorkerKey, Pid)> + '_ {
        self.retiring().filter_map(|worker| {
            matches!(worker.state, WorkerState::Stopping { .. })
                .then_some((worker.key, worker.pid?))
        })
    }

    /// The spawned workers that are starting: those the driver probes.
    fn probing(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|worker| {
            worker.pid.is_some()
                && !worker.leader_exited
                && matches!(worker.state, WorkerState::Starting { .. })
        })
    }

    /// Advances the cluster by one event; returns what the driver must do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        self.polled.get_or_insert(now);
        match event {
            Event::Start => self.start(now, &mut actions),
            Event::Spawned { key, pid } => self.spawned(now, key, pid, &mut actions),
            Event::SpawnFailed { key, reason } => {
                if let Some(index) = self.index_of_key(key) {
                    let worker = self.workers.remove(index);
                    let failure = Failure::NotSpawned(reason);
                    self.failed_start(now, &worker, failure, None, &mut actions);
                }
            }
            Event::Ready { key } => {
                if let Some(index) = self.index_of_key(key)
                    && matches!(self.workers[index].state, WorkerState::Starting { .. })
                {
                    self.mark_ready(now, index, ReadyBy::Notified, &mut actions);
                }
            }
            Event::Drained { key } => {
                if let Some(index) = self.index_of_key(key)
                    && matches!(self.workers[index].state, WorkerState::Draining { .. })
                {
                    self.stop_worker(now, index, false, &mut actions);
                    self.retire_round = DoublingPause::at(after(now, RETIRE_LOOK_FIRST));
                }
            }
            Event::ListenersShared { generation } => {
                self.listeners_shared(now, generation, &mut actions);
            }
            Event::Watchdog { key } => {
                let watchdog = self.config.watchdog;
                if let Some(index) = self.index_of_key(key)
                    && self.workers[index].state == WorkerState::Ready
                {
                    self.workers[index].watchdog_at = watchdog.map(|limit| after(now, limit));
                }
            }
            Event::Stopping { key } => self.stopping_by_itself(now, key, &mut actions),
            Event::Exited { pid, end } => self.exited(now, pid, end, false, &mut actions),
            Event::LeaderExited { pid, end } => self.exited(now, pid, end, true, &mut actions),
            Event::Tick => self.tick(now, &mut actions),
            Event::Roll(request) => self.request_roll(now, request, &mut actions),
            Event::RollDeclined(request) => actions.push(Action::RollRefused {
                request,
                why: "no generation serves yet",
            }),
            Event::SwitchedOut { key } => {
                if let Some(index) = self.index_of_key(key)
                    && matches!(self.workers[index].state, WorkerState::Stopping { .. })
                {
                    self.workers[index].switched_out = true;
                    self.advance_roll(now, &mut actions);
                }
            }
            Event::SeenAccepting { key, how } => {
                if let Some(index) = self.index_of_key(key)
                    && matches!(self.workers[index].state, WorkerState::Starting { .. })
                {
                    self.mark_ready(now, index, ReadyBy::Seen(how), &mut actions);
                }
            }
            Event::Resize { size, request } => {
                match request {
                    // A cluster runs at least one worker: nothing would ever answer.
                    Some(request) if size == 0 => actions.push(Action::ResizeAnswered {
                        request,
                        answer: ResizeAnswer::Refused {
                            why: "a cluster runs at least 1 worker",
                        },
                    }),
                    Some(request) => self.resize_waiters.push((request, size)),
                    None => {}
                }
                self.resize(now, size, &mut actions);
            }
            Event::Stop { hard } => self.stop(now, hard, &mut actions),
            Event::Quit { hard, request } => {
                self.exit_waiters.push(request);
                self.stop(now, hard, &mut actions);
            }
            Event::Ended(reason) => {
                self.phase = Phase::Exited;
                self.cancel_rolls("the cluster is stopping", &mut actions);
                self.end(reason, &mut actions);
            }
            Event::Interrupt => {
                // The first Ctrl-C stops gracefully; the next one does not wait any more.
                self.interrupts = self.interrupts.saturating_add(1);
                self.stop(now, self.interrupts > 1, &mut actions);
            }
            Event::Hangup { terminal_lost } => match self.config.hangup {
                Hangup::StopWithTerminal if terminal_lost => {
                    actions.push(Action::Report(Report::TerminalLost));
                    self.stop(now, false, &mut actions);
                }
                Hangup::StopWithTerminal | Hangup::Roll => actions.push(Action::RequestRoll),
            },
        }
        self.restore_coverage(now, &mut actions);
        self.close_unused_listeners(&mut actions);
        self.check_exit(&mut actions);
        self.answer_resizes(&mut actions);
        actions
    }

    /// The roll's generation shares the older sockets: steering cannot separate it, so old
    /// workers waiting for the switch stop now, as without steering.
    fn listeners_shared(&mut self, now: Instant, generation: u64, actions: &mut Vec<Action>) {
        self.own_listeners.retain(|&own| own != generation);
        let Some(roll) = &mut self.roll else {
            return;
        };
        if roll.generation != generation || !roll.steers {
            return;
        }
        roll.steers = false;
        let waiting: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                self.workers[i].state == WorkerState::Draining { deadline: None }
                    && self.workers[i].generation < generation
            })
            .collect();
        for index in waiting {
            self.stop_worker(now, index, false, actions);
        }
        self.retire_round = DoublingPause::at(after(now, RETIRE_LOOK_FIRST));
    }

    /// Takes the sockets of generations no worker runs any more, nor will (no slot restarts
    /// one, no roll starts one), out of the groups. The generation new connections go to keeps
    /// its sockets.
    fn close_unused_listeners(&mut self, actions: &mut Vec<Action>) {
        if self.own_listeners.is_empty() {
            return;
        }
        let in_use = |generation: u64| {
            self.steered == Some(generation)
                || self
                    .roll
                    .as_ref()
                    .is_some_and(|roll| roll.generation == generation)
                || self
                    .workers
                    .iter()
                    .any(|worker| worker.generation == generation)
                || self.slots.iter().any(|slot| slot.generation == generation)
        };
        let unused: Vec<u64> = self
            .own_listeners
            .iter()
            .copied()
            .filter(|&generation| !in_use(generation))
            .collect();
        for generation in unused {
            self.own_listeners.retain(|&own| own != generation);
            actions.push(Action::CloseListeners { generation });
        }
    }

    /// Gives every resize waiter its answer once there is one: refused when the cluster stops,
    /// superseded when its size is another one now (a later request won), resized once every
    /// slot of its size has a ready worker.
    fn answer_resizes(&mut self, actions: &mut Vec<Action>) {
        if self.resize_waiters.is_empty() {
            return;
        }
        let stopping = self.is_stopping();
        let size = self.config.size;
        let all_ready = self.all_ready();
        self.resize_waiters.retain(|&(request, wanted)| {
            let answer = if stopping {
                ResizeAnswer::Refused {
                    why: "the master is stopping",
                }
            } else if wanted != size {
                ResizeAnswer::Superseded { size }
            } else if all_ready {
                ResizeAnswer::Resized
            } else {
                return true;
            };
            actions.push(Action::ResizeAnswered { request, answer });
            false
        });
    }

    fn start(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let first = match self.phase {
            Phase::Idle => {
                self.started = Some(now);
                true
            }
            Phase::Waiting => false,
            _ => return,
        };
        self.phase = Phase::Running;
        self.serving_generation = self.next_generation;
        self.next_generation += 1;
        // The first generation serves on the listeners bound at the start: with steering,
        // they are its own sockets, closed when it is gone (a later start after a first
        // generation that never got ready shares them).
        if first && self.config.steering {
            self.own_listeners.push(self.serving_generation);
        }
        self.slots = vec![Slot::of(self.serving_generation); self.config.size];
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
            leader_exited: false,
            ready_since: None,
            gone_at: None,
            hint_at: None,
            switched_out: false,
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
                    ready_at: self.config.ready_delay.map(|delay| after(now, delay)),
                    deadline: after(now, self.config.ready_timeout),
                };
                worker.hint_at = self.config.probe_starting.then(|| after(now, UNSEEN_HINT));
                // Its group's other members (a wrapper's app) are looked for at the next round.
                self.full_round = DoublingPause::default();
                self.everyone_pass = DoublingPause::default();
            }
            // Stopped while being spawned (a stop raced the spawn): finish the job now.
            WorkerState::Stopping { .. } => {
                let hard = matches!(self.phase, Phase::Stopping { hard: true } | Phase::Waiting);
                self.stop_worker(now, index, hard, actions);
            }
            WorkerState::Starting { .. } | WorkerState::Ready | WorkerState::Draining { .. } => {}
        }
    }

    /// A worker process exited. With `tree_left`, other processes of its group live on: they
    /// are tracked, and stopped, under the worker's pid until [`Event::Exited`] says they are
    /// gone.
    fn exited(
        &mut self,
        now: Instant,
        pid: Pid,
        end: ProcessEnd,
        tree_left: bool,
        actions: &mut Vec<Action>,
    ) {
        let Some(index) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
            // Not ours (a reaped orphan when the master is PID 1): nothing to decide.
            return;
        };
        if self.workers[index].leader_exited {
            if !tree_left {
                self.workers.remove(index);
                self.advance_roll(now, actions);
            }
            return;
        }
        let worker = self.workers.remove(index);
        if tree_left {
            // A new group lingers: its first check looks for zombies too.
            self.zombie_scan = DoublingPause::default();
            let mut rest = worker.clone();
            rest.leader_exited = true;
            rest.watchdog_at = None;
            rest.hint_at = None;
            if !matches!(worker.state, WorkerState::Stopping { .. }) {
                // Draining too: its group's rest is stopped now, the rest cannot drain alone.
                actions.push(Action::Report(Report::LeftBehind(worker.id())));
                actions.push(Action::Signal {
                    pid,
                    kind: StopKind::Graceful,
                });
                rest.state = self.stopping(now);
            }
            self.workers.push(rest);
        }
        match worker.state {
            // An old worker of a roll may have been the last that could still answer.
            WorkerState::Stopping { .. } | WorkerState::Draining { .. } if !tree_left => {
                self.advance_roll(now, actions);
            }
            WorkerState::Stopping { .. } | WorkerState::Draining { .. } => {}
            WorkerState::Spawning | WorkerState::Starting { .. } => {
                let failure = Failure::EndedStarting(end);
                self.failed_start(now, &worker, failure, Some(end), actions);
            }
            WorkerState::Ready => self.replace_failed(now, &worker, Failure::Ended(end), actions),
        }
    }

    /// A ready worker failed (it exited, or its watchdog ran out): its slot gets a new worker of
    /// the slot's generation, with backoff, unless another worker already covers the slot.
    fn replace_failed(
        &mut self,
        now: Instant,
        worker: &Worker,
        failure: Failure,
        actions: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running || worker.slot >= self.slots.len() {
            return;
        }
        // A worker that served for the stable period is no crash loop (an OOM killer, a chaos
        // test, an operator's kill): its restart is immediate.
        let served = worker
            .ready_since
            .is_some_and(|at| now.saturating_duration_since(at) >= self.config.backoff.stable);
        if served {
            self.slots[worker.slot].failures = 0;
        }
        self.slots[worker.slot].failures += 1;
        self.schedule_restart(now, worker, failure, true, actions);
    }

    /// How many slots may wait at once for the restart of a worker that had been ready: half
    /// of them (at least one, so a single worker that crashes as soon as it is ready is no
    /// tight loop). Beyond it a slot restarts at once: the program can start, and capacity
    /// matters more than backoff. Failed starts back off whatever the count.
    fn after_ready_limit(&self) -> usize {
        (self.config.size / 2).max(1)
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
        self.workers[index].state = self.stopping(now);
        let worker = self.workers[index].clone();
        actions.push(Action::Report(Report::StoppingByItself(worker.id())));
        if worker.slot < self.slots.len() && !self.slot_covered(&worker) {
            let generation = self.slots[worker.slot].generation;
            self.spawn(worker.slot, generation, actions);
        }
    }

    /// Whether another worker, not stopping, serves (or is starting to serve) `worker`'s slot.
    fn slot_covered(&self, worker: &Worker) -> bool {
        self.workers
            .iter()
            .any(|other| other.key != worker.key && other.slot == worker.slot && !other.leaving())
    }

    /// Whether `slot` has a worker that is not stopping.
    #[cfg(test)]
    fn has_live_worker(&self, slot: usize) -> bool {
        self.workers
            .iter()
            .any(|worker| worker.slot == slot && !worker.leaving())
    }

    /// Restarts a failed worker's slot after the backoff its failures (already counted) call
    /// for, unless another worker already covers the slot (a roll's replacement): should that
    /// one fail, `restore_coverage` starts the slot again.
    fn schedule_restart(
        &mut self,
        now: Instant,
        worker: &Worker,
        failure: Failure,
        after_ready: bool,
        actions: &mut Vec<Action>,
    ) {
        if self.slot_covered(worker) {
            actions.push(Action::Report(Report::Failed {
                worker: worker.id(),
                failure,
                restart: None,
            }));
            return;
        }
        self.slots[worker.slot].restarts += 1;
        let waiting = self
            .slots
            .iter()
            .filter(|slot| slot.restart_at.is_some())
            .count();
        let slot = &self.slots[worker.slot];
        let mut delay = self.config.backoff.delay(slot.failures);
        if after_ready && waiting >= self.after_ready_limit() {
            delay = Duration::ZERO;
        }
        let generation = slot.generation;
        actions.push(Action::Report(Report::Failed {
            worker: worker.id(),
            failure,
            restart: Some(Restart { delay, generation }),
        }));
        if delay.is_zero() {
            self.spawn(worker.slot, generation, actions);
        } else {
            self.slots[worker.slot].restart_at = Some(after(now, delay));
            self.slots[worker.slot].waits_after_ready = after_ready;
        }
    }

    /// Keeps "every slot has a live worker or a scheduled restart" true while running, whatever
    /// the event did: a slot left empty is started again, with the slot's backoff.
    fn restore_coverage(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        // This runs after every event: one pass over the workers, not one per slot.
        let live = self.slots_where(|worker| !worker.leaving());
        for slot in 0..self.slots.len() {
            if self.slots[slot].restart_at.is_some() || live.get(slot).copied().unwrap_or(false) {
                continue;
            }
            self.slots[slot].restarts += 1;
            let failures = self.slots[slot].failures;
            let delay = self.config.backoff.delay(failures);
            let generation = self.slots[slot].generation;
            actions.push(Action::Report(Report::Uncovered {
                slot,
                restart: Restart { delay, generation },
            }));
            if delay.is_zero() {
                self.spawn(slot, generation, actions);
            } else {
                self.slots[slot].restart_at = Some(after(now, delay));
                self.slots[slot].waits_after_ready = false;
            }
        }
    }

    fn failed_start(
        &mut self,
        now: Instant,
        worker: &Worker,
        failure: Failure,
        end: Option<ProcessEnd>,
        actions: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running {
            return;
        }
        if self
            .roll
            .as_ref()
            .is_some_and(|roll| roll.replacements.contains(&worker.key))
        {
            self.abort_roll(now, worker, failure, actions);
            return;
        }
        if worker.slot >= self.slots.len() {
            return;
        }
        self.slots[worker.slot].failures += 1;
        let attempts = self.config.start_attempts;
        let exhausted = self.slots.iter().all(|slot| slot.failures >= attempts);
        if !self.ever_ready && exhausted {
            let failures = self.slots[worker.slot].failures;
            self.give_up(now, worker, failure, failures, end, actions);
            return;
        }
        self.schedule_restart(now, worker, failure, false, actions);
    }

    /// Every slot of the first generation failed its start attempts.
    fn give_up(
        &mut self,
        now: Instant,
        worker: &Worker,
        failure: Failure,
        failures: u32,
        end: Option<ProcessEnd>,
        actions: &mut Vec<Action>,
    ) {
        let waits = self.config.never_ready == NeverReady::Wait;
        actions.push(Action::Report(Report::NeverReady {
            worker: worker.id(),
            failure: failure.clone(),
            attempts: failures,
            waits,
        }));
        match self.config.never_ready {
            NeverReady::Exit => {
                self.exit_reason = Some(ExitReason::NeverReady {
                    slot: worker.slot,
                    pid: worker.pid,
                    failure,
                    end,
                });
                self.stop(now, true, actions);
            }
            NeverReady::Wait => {
                self.phase = Phase::Waiting;
                self.cancel_rolls("no generation ever got ready", actions);
                for slot in &mut self.slots {
                    slot.restart_at = None;
                }
                for index in 0..self.workers.len() {
                    if !self.workers[index].is_killed() {
                        self.stop_worker(now, index, true, actions);
                    }
                }
            }
        }
    }

    /// A replacement failed: the roll ends where it is. The replacements not yet ready are
    /// stopped; the slots it rolled keep the new generation, the others their own.
    fn abort_roll(
        &mut self,
        now: Instant,
        worker: &Worker,
        failure: Failure,
        actions: &mut Vec<Action>,
    ) {
        let Some(mut roll) = self.roll.take() else {
            return;
        };
        for key in &roll.replacements {
            if let Some(index) = self.index_of_key(*key)
                && !self.workers[index].leaving()
            {
                self.stop_worker(now, index, false, actions);
            }
        }
        if roll.steers && self.steered != Some(roll.generation) {
            roll.rolled -= self.revert_unswitched(now, roll.generation, actions);
        }
        let end = RollEnd {
            generation: roll.generation,
            size: self.config.size,
            rolled: roll.rolled,
            elapsed: now.duration_since(roll.started),
            switch: roll.first_ready.map(|first| now.duration_since(first)),
            aborted: Some(Aborted {
                worker: worker.id(),
                failure,
            }),
            failed: worker.pid,
            serving: self.serving_generation,
            slots: self.slot_generations(),
            requests: roll.requests,
        };
        self.tally.aborted += 1;
        self.last_roll = Some(end.clone());
        actions.push(Action::RollEnded(end));
        actions.push(Action::Notify(MasterState::Ready));
        self.start_queued_roll(now, actions);
    }

    /// An aborted roll that had not switched yet: no connection ever went to its generation,
    /// so each old worker waiting for the switch serves on and its slot goes back to it, and
    /// the roll's ready workers in those slots stop. Returns how many slots went back.
    fn revert_unswitched(
        &mut self,
        now: Instant,
        generation: u64,
        actions: &mut Vec<Action>,
    ) -> usize {
        let mut reverted = 0;
        for index in 0..self.workers.len() {
            let old = &self.workers[index];
            if old.state != (WorkerState::Draining { deadline: None })
                || old.generation >= generation
            {
                continue;
            }
            let (slot, old_generation) = (old.slot, old.generation);
            self.workers[index].state = WorkerState::Ready;
            self.workers[index].watchdog_at = self.config.watchdog.map(|limit| after(now, limit));
            if let Some(slot_state) = self.slots.get_mut(slot) {
                slot_state.generation = old_generation;
            }
            let replacements: Vec<usize> = (0..self.workers.len())
                .filter(|&i| {
                    let new = &self.workers[i];
                    new.slot == slot && new.generation == generation && !new.leaving()
                })
                .collect();
            for replacement in replacements {
                self.stop_worker(now, replacement, false, actions);
            }
            reverted += 1;
        }
        reverted
    }

    fn mark_ready(&mut self, now: Instant, index: usize, how: ReadyBy, actions: &mut Vec<Action>) {
        let worker = &mut self.workers[index];
        worker.state = WorkerState::Ready;
        worker.hint_at = None;
        worker.watchdog_at = self.config.watchdog.map(|limit| after(now, limit));
        worker.ready_since = Some(now);
        let (key, slot, generation) = (worker.key, worker.slot, worker.generation);
        actions.push(Action::Ready(WorkerReady {
            slot,
            pid: worker.pid,
            generation,
            how,
        }));
        self.ever_ready = true;
        if let Some(slot_state) = self.slots.get_mut(slot) {
            slot_state.restart_at = None;
        }
        if let Some(roll) = &mut self.roll
            && let Some(position) = roll.replacements.iter().position(|&k| k == key)
        {
            roll.replacements.swap_remove(position);
            roll.rolled += 1;
            roll.first_ready.get_or_insert(now);
            if let Some(slot_state) = self.slots.get_mut(slot) {
                slot_state.generation = generation;
            }
            let olds: Vec<usize> = (0..self.workers.len())
                .filter(|&i| {
                    let old = &self.workers[i];
                    old.slot == slot && old.key != key && !old.leaving()
                })
                .collect();
            let steers = roll.steers;
            let switched = self.steered == Some(generation);
            for old in olds {
                if steers && self.workers[old].state == WorkerState::Ready {
                    // It serves until new connections go elsewhere, then drains.
                    let deadline = switched.then(|| after(now, self.config.kill_timeout));
                    self.workers[old].state = WorkerState::Draining { deadline };
                    self.workers[old].watchdog_at = None;
                    self.drain_round = DoublingPause::at(now);
                } else {
                    self.stop_worker(now, old, false, actions);
                    // It retires: a look soon tells whether it can still answer.
                    self.retire_round = DoublingPause::at(after(now, RETIRE_LOOK_FIRST));
                }
            }
            self.switch_when_batch_ready(now, actions);
            self.advance_roll(now, actions);
        }
        if !self.announced_ready && self.ready_slots() == self.config.size {
            self.announced_ready = true;
            let elapsed = now.duration_since(self.started.unwrap_or(now));
            actions.push(Action::Report(Report::AllReady {
                size: self.config.size,
                elapsed,
            }));
            actions.push(Action::Notify(MasterState::Ready));
        }
    }

    /// The switch of a steered roll: once as many replacements are ready as the surge starts at
    /// once (every one, by default), or once none is left to wait for (a resize down took the
    /// others away), new connections go to their generation.
    fn switch_when_batch_ready(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(roll) = &self.roll else {
            return;
        };
        let surge = self.config.surge.of(self.config.size);
        let none_left = roll.replacements.is_empty() && roll.pending.is_empty();
        let batch_ready = roll.rolled >= surge || (none_left && roll.first_ready.is_some());
        if roll.steers && batch_ready && self.steered != Some(roll.generation) {
            self.switch(now, roll.generation, actions);
        }
    }

    /// Sends new connections to `generation` from now on: the workers waiting for it start to
    /// drain, their deadline the kill timeout from now.
    fn switch(&mut self, now: Instant, generation: u64, actions: &mut Vec<Action>) {
        self.steered = Some(generation);
        actions.push(Action::Steer { generation });
        let deadline = Some(after(now, self.config.kill_timeout));
        for worker in &mut self.workers {
            if worker.state == (WorkerState::Draining { deadline: None }) {
                worker.state = WorkerState::Draining { deadline };
            }
        }
        self.drain_round = DoublingPause::at(after(now, self.config.drain_settle));
    }

    /// How many slots have a ready worker: one pass over the workers (this runs at every
    /// worker that gets ready, so it must not grow with size × workers).
    fn ready_slots(&self) -> usize {
        self.slots_where(|worker| worker.state == WorkerState::Ready)
            .into_iter()
            .filter(|&ready| ready)
            .count()
    }

    /// For each slot of the size, whether one of its workers is `wanted`.
    fn slots_where(&self, wanted: impl Fn(&Worker) -> bool) -> Vec<bool> {
        let mut found = vec![false; self.config.size];
        for worker in &self.workers {
            if let Some(slot) = found.get_mut(worker.slot)
                && wanted(worker)
            {
                *slot = true;
            }
        }
        found
    }

    fn tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut index = 0;
        while index < self.workers.len() {
            let worker = &self.workers[index];
            if worker.leader_exited && worker.gone_at.is_some_and(|at| at <= now) {
                // SIGKILL cannot be caught: what is left are zombies nobody reaps.
                let worker = self.workers.remove(index);
                if let Some(pid) = worker.pid {
                    actions.push(Action::Report(Report::Abandoned {
                        worker: worker.id(),
                        after: KILLED_GROUP_GRACE,
                    }));
                    actions.push(Action::Abandon { pid });
                }
                // It may have been the last old worker a roll's switch waited for.
                self.advance_roll(now, actions);
                continue;
            }
            match worker.state {
                WorkerState::Starting { ready_at, deadline } => {
                    if ready_at.is_some_and(|at| at <= now) {
                        let how = ReadyBy::Alive(self.config.ready_delay.unwrap_or_default());
                        self.mark_ready(now, index, how, actions);
                    } else if deadline <= now {
                        // It may already have accepted connections: stop it like any worker.
                        let failure = Failure::NotReadyWithin(self.config.ready_timeout);
                        let worker = worker.clone();
                        self.stop_worker(now, index, false, actions);
                        self.failed_start(now, &worker, failure, None, actions);
                    }
                }
                WorkerState::Ready if worker.watchdog_at.is_some_and(|at| at <= now) => {
                    let failure = Failure::NoWatchdog(self.config.watchdog.unwrap_or_default());
                    let worker = worker.clone();
                    self.workers[index].watchdog_at = None;
                    self.stop_worker(now, index, false, actions);
                    self.replace_failed(now, &worker, failure, actions);
                }
                WorkerState::Draining { deadline } if deadline.is_some_and(|at| at <= now) => {
                    let drained_for = if self.is_stopping() {
                        self.stop_drain()
                    } else {
                        self.config.kill_timeout
                    };
                    actions.push(Action::Report(Report::NotDrained {
                        worker: worker.id(),
                        after: drained_for,
                    }));
                    self.stop_worker(now, index, false, actions);
                    self.retire_round = DoublingPause::at(after(now, RETIRE_LOOK_FIRST));
                }
                WorkerState::Stopping { kill_at, .. } if kill_at.is_some_and(|at| at <= now) => {
                    if let Some(pid) = worker.pid {
                        actions.push(Action::Report(Report::Killing {
                            worker: worker.id(),
                            rest_of_group: worker.leader_exited,
                            after: self.config.kill_timeout,
                        }));
                        actions.push(Action::Signal {
                            pid,
                            kind: StopKind::Kill,
                        });
                    }
                    self.workers[index].state = WorkerState::Stopping {
                        kill_at: None,
                        note_at: None,
                    };
                    self.workers[index].gone_at = Some(after(now, KILLED_GROUP_GRACE));
                }
                WorkerState::Stopping { kill_at, note_at }
                    if note_at.is_some_and(|at| at <= now) =>
                {
                    if let Some(pid) = worker.pid {
                        actions.push(Action::Lingering {
                            pid,
                            slot: worker.slot,
                            generation: worker.generation,
                            kill_in: kill_at.map(|at| at.saturating_duration_since(now)),
                            ctrl_c_kills: self.interrupts > 0,
                        });
                    }
                    self.workers[index].state = WorkerState::Stopping {
                        kill_at,
                        note_at: None,
                    };
                }
                _ => {}
            }
            index += 1;
        }
        if self.phase == Phase::Running {
            for slot in 0..self.slots.len() {
                if self.slots[slot].restart_at.is_some_and(|at| at <= now) {
                    let generation = self.slots[slot].generation;
                    self.spawn(slot, generation, actions);
                }
            }
        }
        // Starting workers are probed, and leftover groups checked, on a clock of their own;
        // last, as the hints, so that only the workers still starting are probed or reported.
        if self.next_poll().is_some_and(|at| at <= now) {
            self.polled = Some(now);
            if self.config.probe_starting && self.probing().next().is_some() {
                let full = self.full_round_due(now);
                let everyone = self
                    .everyone_pass
                    .due(now, EVERYONE_PASS_FIRST, MEMBERS_SCAN_MAX);
                actions.push(Action::ProbeStarting {
                    full: full || everyone,
                    everyone,
                });
            }
            if self.workers.iter().any(|worker| worker.leader_exited) {
                let zombies = self.zombie_scan_due(now);
                actions.push(Action::CheckGroups { zombies });
            }
        }
        let retiring: Vec<(WorkerKey, Pid)> = self.retiring_stopped().collect();
        if self.config.probe_starting
            && !retiring.is_empty()
            && self.retire_round.due(now, PROBE_INTERVAL, RETIRE_ROUND_MAX)
        {
            actions.push(Action::ProbeRetiring { workers: retiring });
        }
        let draining: Vec<(WorkerKey, Pid, u64)> = self.draining().collect();
        if !draining.is_empty()
            && self
                .drain_round
                .due(now, DRAIN_LOOK_FIRST, RETIRE_ROUND_MAX)
        {
            actions.push(Action::ProbeDraining { workers: draining });
        }
        for worker in &mut self.workers {
            if worker.hint_at.is_some_and(|at| at <= now) {
                worker.hint_at = None;
                if worker.pid.is_some()
                    && !worker.leader_exited
                    && matches!(worker.state, WorkerState::Starting { .. })
                {
                    actions.push(Action::Unseen {
                        key: worker.key,
                        after: UNSEEN_HINT,
                    });
                }
            }
        }
    }

    fn request_roll(&mut self, now: Instant, request: u64, actions: &mut Vec<Action>) {
        let why = match self.phase {
            Phase::Running => None,
            // Nothing of the first generation ever served: a roll request is a new start.
            Phase::Waiting => {
                self.start(now, actions);
                Some("no generation ever got ready: the first one starts again instead")
            }
            Phase::Idle => Some("the cluster has not started yet"),
            Phase::Stopping { .. } | Phase::Exited => Some("the cluster is stopping"),
        };
        if let Some(why) = why {
            actions.push(Action::RollRefused { request, why });
            return;
        }
        if self.roll.is_some() {
            // Many requests in a burst: one roll running, at most one queued.
            actions.push(Action::Report(Report::RollQueued));
            self.roll_queued.push(request);
        } else {
            self.begin_roll(now, vec![request], actions);
        }
    }

    /// Drops the roll in flight and the queued one; their requests are refused.
    fn cancel_rolls(&mut self, why: &'static str, actions: &mut Vec<Action>) {
        let running = self
            .roll
            .take()
            .map(|roll| roll.requests)
            .unwrap_or_default();
        for request in running.into_iter().chain(self.roll_queued.drain(..)) {
            actions.push(Action::RollRefused { request, why });
        }
    }

    fn start_queued_roll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let requests = std::mem::take(&mut self.roll_queued);
        if !requests.is_empty() {
            self.begin_roll(now, requests, actions);
        }
    }

    fn begin_roll(&mut self, now: Instant, requests: Vec<u64>, actions: &mut Vec<Action>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.tally.started += 1;
        actions.push(Action::RollStarted {
            generation,
            size: self.config.size,
        });
        actions.push(Action::Notify(MasterState::Reloading));
        self.roll = Some(Roll {
            generation,
            pending: (0..self.config.size).collect(),
            replacements: Vec::new(),
            rolled: 0,
            started: now,
            first_ready: None,
            requests,
            steers: self.config.steering,
        });
        if self.config.steering {
            self.own_listeners.push(generation);
            actions.push(Action::OpenListeners { generation });
        }
        self.advance_roll(now, actions);
    }

    /// Starts replacements up to the surge; ends the roll when every slot is rolled.
    fn advance_roll(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let surge = self.config.surge.of(self.config.size);
        loop {
            let Some(roll) = &mut self.roll else {
                return;
            };
            if roll.replacements.len() >= surge {
                return;
            }
            let Some(slot) = roll.pending.pop_front() else {
                break;
            };
            let generation = roll.generation;
            let key = self.spawn(slot, generation, actions);
            if let Some(roll) = &mut self.roll {
                roll.replacements.push(key);
            }
        }
        let Some(roll) = &mut self.roll else {
            return;
        };
        if !roll.replacements.is_empty() {
            return;
        }
        // Every slot is rolled; the switch is complete once no worker of an older generation
        // can answer (gone, or seen switched out): their kill timeout bounds the wait.
        if self.retiring().next().is_some() {
            return;
        }
        let Some(roll) = self.roll.take() else {
            return;
        };
        self.serving_generation = roll.generation;
        for slot in &mut self.slots {
            slot.generation = roll.generation;
        }
        let end = RollEnd {
            generation: roll.generation,
            size: self.config.size,
            rolled: roll.rolled,
            elapsed: now.duration_since(roll.started),
            switch: roll.first_ready.map(|first| now.duration_since(first)),
            aborted: None,
            failed: None,
            serving: roll.generation,
            slots: self.slot_generations(),
            requests: roll.requests,
        };
        self.tally.completed += 1;
        self.last_roll = Some(end.clone());
        actions.push(Action::RollEnded(end));
        actions.push(Action::Notify(MasterState::Ready));
        self.start_queued_roll(now, actions);
    }

    fn resize(&mut self, now: Instant, size: usize, actions: &mut Vec<Action>) {
        if size == 0 || size == self.config.size {
            return;
        }
        match self.phase {
            Phase::Running => {}
            // Nothing runs: the next start uses the new size.
            Phase::Waiting | Phase::Idle => {
                self.config.size = size;
                return;
            }
            Phase::Stopping { .. } | Phase::Exited => return,
        }
        actions.push(Action::Report(Report::Resizing { size }));
        let old_size = self.config.size;
        self.config.size = size;
        if size > old_size {
            for slot in old_size..size {
                self.slots.push(Slot::of(self.serving_generation));
                self.spawn(slot, self.serving_generation, actions);
                // A roll in flight moves the new slot to its generation too.
                if let Some(roll) = &mut self.roll {
                    roll.pending.push_back(slot);
                }
            }
        } else {
            self.slots.truncate(size);
            if let Some(roll) = &mut self.roll {
                roll.pending.retain(|&slot| slot < size);
            }
            let extra: Vec<usize> = (0..self.workers.len())
                .filter(|&i| self.workers[i].slot >= size && !self.workers[i].leaving())
                .collect();
            for index in extra {
                let key = self.workers[index].key;
                if let Some(roll) = &mut self.roll {
                    roll.replacements.retain(|&k| k != key);
                }
                self.stop_worker(now, index, false, actions);
            }
            // The replacements it stopped may have been those the switch waited for.
            self.switch_when_batch_ready(now, actions);
            self.advance_roll(now, actions);
        }
    }

    fn stop(&mut self, now: Instant, hard: bool, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::Stopping { hard: true } | Phase::Exited => return,
            Phase::Idle => {
                self.phase = Phase::Stopping { hard };
                return;
            }
            Phase::Running | Phase::Waiting => {
                actions.push(Action::Notify(MasterState::Stopping));
            }
            Phase::Stopping { hard: false } if !hard => return,
            Phase::Stopping { hard: false } => {}
        }
        self.phase = Phase::Stopping { hard };
        self.cancel_rolls("the cluster is stopping", actions);
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        let live = self.workers.len();
        actions.push(Action::Report(Report::Stopping { live, hard }));
        // With sockets of the master's own, a graceful stop first refuses new connections and
        // lets the ready workers drain what the queues hold, as a roll does: a worker that dies
        // at once on its stop signal loses nothing then either.
        let drain = !hard && self.config.steering;
        if drain {
            actions.push(Action::StopAccepting);
        }
        let deadline = Some(after(now, self.stop_drain()));
        for index in 0..self.workers.len() {
            let state = self.workers[index].state;
            let serving = matches!(state, WorkerState::Ready | WorkerState::Draining { .. });
            if drain && serving && !self.workers[index].leader_exited {
                self.workers[index].state = WorkerState::Draining { deadline };
                self.workers[index].watchdog_at = None;
                // As at a switch: the handshakes under way end in the queues first.
                self.drain_round = DoublingPause::at(after(now, self.config.drain_settle));
            } else if hard || !matches!(state, WorkerState::Stopping { .. }) {
                self.stop_worker(now, index, hard, actions);
            }
        }
    }

    /// How long a graceful stop lets ready workers drain before their stop signal: half the
    /// kill timeout (the stop then takes at most one and a half).
    fn stop_drain(&self) -> Duration {
        self.config.kill_timeout / 2
    }

    /// Sends the stop signal (with a kill deadline) or SIGKILL.
    fn stop_worker(&mut self, now: Instant, index: usize, hard: bool, actions: &mut Vec<Action>) {
        let stopping = self.stopping(now);
        let worker = &mut self.workers[index];
        worker.hint_at = None;
        let killed = WorkerState::Stopping {
            kill_at: None,
            note_at: None,
        };
        let Some(pid) = worker.pid else {
            // Not spawned yet: `spawned` stops it as soon as it has a pid.
            worker.state = killed;
            return;
        };
        if hard {
            actions.push(Action::Signal {
                pid,
                kind: StopKind::Kill,
            });
            worker.state = killed;
            worker.gone_at = Some(after(now, KILLED_GROUP_GRACE));
        } else {
            actions.push(Action::Signal {
                pid,
                kind: StopKind::Graceful,
            });
            worker.state = stopping;
        }
    }

    /// The state of a worker asked to stop now: SIGKILL at the kill deadline, a note if it
    /// lingers.
    fn stopping(&self, now: Instant) -> WorkerState {
        WorkerState::Stopping {
            kill_at: Some(after(now, self.config.kill_timeout)),
            note_at: self
                .config
                .linger_note
                .filter(|note| *note < self.config.kill_timeout)
                .map(|note| after(now, note)),
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
            actions.push(Action::Report(Report::Stopped));
            self.end(reason.clone(), actions);
            actions.push(Action::Exit(reason));
        }
        // A quit that arrives once the master ended (before the driver saw its end).
        if let Some(reason) = self.ended.clone() {
            self.end(reason, actions);
        }
    }

    /// The master ended: every exit waiter hears how, once.
    fn end(&mut self, reason: ExitReason, actions: &mut Vec<Action>) {
        for request in self.exit_waiters.drain(..) {
            actions.push(Action::ExitAnswered {
                request,
                reason: reason.clone(),
            });
        }
        self.ended.get_or_insert(reason);
    }

    fn index_of_key(&self, key: WorkerKey) -> Option<usize> {
        self.workers.iter().position(|worker| worker.key == key)
    }
}

//! The reporter: the one place where what the master tells is put in words. Five kinds of
//! facts come here: what the cores tell ([`Report`], [`DevReport`]), what the driver saw itself
//! ([`DriverReport`]: a worker's status or its silence, the guard process, a stderr tail), what
//! the master's start set up ([`StartReport`]: where it listens, serves metrics, reloads
//! pages), what the file watcher saw ([`WatchReport`]: its fallback to polling, a root removed
//! or back), and the lifecycle facts of the master ([`Lifecycle`]). Each becomes a line for the
//! terminal, the [`Record`] that `mcluster events` prints as JSON and
//! [`Handle::events`](crate::master::Handle::events) returns, or both. Deriving both from one
//! fact keeps them from drifting apart. The driver builds the fact and writes what it gets back;
//! it writes no words of its own (`tests/layout.rs` fails on a line formatted where it is
//! written).
//!
//! The cores carry facts (slots, pids, generations, durations, how a process ended, why a
//! build failed) and no English; this module depends on them, never the reverse. So does the
//! watcher, which is below this module: it hands its facts to a callback that the master gives
//! it ([`watch_line`] then words them).
//!
//! Not here: cargo's own lines, passed on as cargo wrote them (its lock wait, `builder.rs`);
//! the command line's (`cli`), which are a client's answers to its user and the errors of its
//! arguments, not reports of a master; and, by design, the writer's own `… N lines dropped`
//! ([`output`](crate::output)), written by the writer thread because the queue that every other
//! line goes through had no room for it.

use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path};
use std::time::Duration;

use crate::cluster::{
    Aborted, Failure, Pid, ProcessEnd, ReadyBy, Report, RollEnd, WorkerId, WorkerReady,
    human_duration, signal_name,
};
use crate::config::describe_io;
use crate::dev::lifecycle::{Before, BuildFailure, Changes, DevReport, Keeps};
use crate::status::{self, Record, RestartOutcome, Sender};
use crate::watch::WatchReport;

/// How many changed files a line names before it counts the rest.
const NAMED_FILES: usize = 3;

impl fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProcessEnd::Code(code) => write!(f, "exited with status {code}"),
            ProcessEnd::Signal(signal) => match signal_name(signal) {
                Some(name) => write!(f, "killed by signal {name}"),
                None => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotSpawned(reason) => write!(f, "could not be spawned: {reason}"),
            Failure::EndedStarting(end) => write!(f, "{end} before it was ready"),
            Failure::Ended(end) => end.fmt(f),
            Failure::NotReadyWithin(timeout) => {
                write!(f, "was not ready within {}", human_duration(*timeout))
            }
            Failure::NoWatchdog(limit) => {
                write!(f, "sent no WATCHDOG=1 for {}", human_duration(*limit))
            }
        }
    }
}

impl fmt::Display for ReadyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyBy::Notified => f.write_str("READY=1"),
            ReadyBy::Seen(how) => f.write_str(how),
            ReadyBy::Alive(delay) => write!(f, "alive {}", human_duration(*delay)),
        }
    }
}

/// Which replacement failed and how: `w1 (pid 42) exited with status 1 before it was ready`.
impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", short(self.worker), self.failure)
    }
}

impl fmt::Display for Keeps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keeps::Nothing => f.write_str("nothing rebuilds in production mode"),
            Keeps::NothingYet => f.write_str("no generation is serving yet; save a fix to retry"),
            Keeps::Generation(generation) => write!(f, "generation {generation} keeps serving"),
        }
    }
}

/// `w1 (pid 42)`: a worker among the workers of its generation.
fn short(worker: WorkerId) -> String {
    match worker.pid {
        Some(pid) => format!("w{} (pid {pid})", worker.slot),
        None => format!("w{}", worker.slot),
    }
}

/// `w1 (pid 42, generation 3)`: with the generation, where a slot's old and new workers differ
/// by it.
fn long(worker: WorkerId) -> String {
    match worker.pid {
        Some(pid) => format!(
            "w{} (pid {pid}, generation {})",
            worker.slot, worker.generation
        ),
        None => format!("w{} (generation {})", worker.slot, worker.generation),
    }
}

/// `1 worker`, `4 workers`.
fn workers(count: usize) -> String {
    if count == 1 {
        "1 worker".to_owned()
    } else {
        format!("{count} workers")
    }
}

/// The terminal line of a report of the cluster core.
pub(crate) fn line(report: &Report) -> String {
    match report {
        Report::TerminalLost => "the terminal hung up".to_owned(),
        Report::LeftBehind(worker) => format!(
            "{} left processes behind in its group; stopping them",
            short(*worker)
        ),
        Report::StoppingByItself(worker) => format!(
            "{} is stopping by itself (STOPPING=1); starting its replacement",
            short(*worker)
        ),
        Report::Failed {
            worker,
            failure,
            restart: None,
        } => format!("{} {failure}", short(*worker)),
        Report::Failed {
            worker,
            failure,
            restart: Some(restart),
        } => format!(
            "{} {failure}; restarting in {} (generation {})",
            short(*worker),
            human_duration(restart.delay),
            restart.generation
        ),
        Report::Uncovered { slot, restart } => format!(
            "w{slot} has no worker; starting one in {} (generation {})",
            human_duration(restart.delay),
            restart.generation
        ),
        Report::NeverReady {
            worker,
            failure,
            attempts,
            waits,
        } => format!(
            "error: no worker became ready after {attempts} attempts: {} {failure}{}",
            short(*worker),
            if *waits {
                "; waiting for a change to retry"
            } else {
                ""
            }
        ),
        Report::AllReady { size: 1, elapsed } => {
            format!("the worker is ready in {}", human_duration(*elapsed))
        }
        Report::AllReady { size, elapsed } => {
            format!("all {size} workers ready in {}", human_duration(*elapsed))
        }
        Report::Abandoned { worker, after } => format!(
            "what is left of {} still exists {} after SIGKILL (zombies that its parent does \
             not reap); taken for gone",
            long(*worker),
            human_duration(*after)
        ),
        Report::Killing {
            worker,
            rest_of_group,
            after,
        } => format!(
            "{}{} did not stop within {}; sending SIGKILL",
            if *rest_of_group {
                "what is left of "
            } else {
                ""
            },
            long(*worker),
            human_duration(*after)
        ),
        Report::NotDrained { worker, after } => format!(
            "{} still had requests in progress after {} of draining; sending the stop signal",
            long(*worker),
            human_duration(*after)
        ),
        Report::RollQueued => "a roll is in progress; one more roll will follow it".to_owned(),
        Report::Resizing { size } => format!("resizing to {}", workers(*size)),
        Report::Stopping { live: 0, .. } => "stopping".to_owned(),
        Report::Stopping { live, hard: true } => format!("stopping {} hard", workers(*live)),
        Report::Stopping { live, hard: false } => format!("stopping {}", workers(*live)),
        Report::Stopped => "stopped".to_owned(),
    }
}

/// The terminal line of a report of the dev core.
pub(crate) fn dev_line(report: &DevReport) -> String {
    match report {
        DevReport::BuildNotStarted {
            why,
            serving: Some(generation),
        } => format!("error: cannot run the build: {why}; generation {generation} keeps serving"),
        DevReport::BuildNotStarted { why, serving: None } => {
            format!("error: cannot run the build: {why}")
        }
        DevReport::Refused { culprit } => format!("error: {culprit}"),
        DevReport::BuildFailed {
            changed,
            end,
            built_in,
            keeps,
        } => {
            let failed = build_failed(*end, *built_in);
            if changed.0.is_empty() {
                format!("{failed}; {keeps}")
            } else {
                format!("{} → {failed}; {keeps}", describe(changed))
            }
        }
        DevReport::Unchanged {
            changed,
            built_in,
            keeps,
        } => format!(
            "{} → {}; {keeps}",
            describe(changed),
            match built_in {
                None => "nothing to rebuild".to_owned(),
                Some(built_in) =>
                    format!("built in {}, the same binary", human_duration(*built_in)),
            }
        ),
        DevReport::Unusable {
            changed,
            why,
            keeps,
        } => format!("{} → {why}; {keeps}", describe(changed)),
        DevReport::NotKept {
            changed,
            executable,
            why,
            keeps,
        } => format!(
            "{} → built, but {} cannot be kept: {why}; {keeps}",
            describe(changed),
            executable.display()
        ),
        DevReport::Built { built_in } => format!("built in {}", human_duration(*built_in)),
        DevReport::StartingAgain { changed } => format!("{} → starting again", describe(changed)),
        DevReport::Assets { changed, css: true } => {
            format!("{} → stylesheets reloaded in the pages", describe(changed))
        }
        DevReport::Assets {
            changed,
            css: false,
        } => format!("{} → pages reloaded", describe(changed)),
        DevReport::BuildWrites { file, rounds } => {
            let name = file_name(file);
            // `-i` globs match a path relative to its own root, or a file name: a file outside
            // the workspace root (`../dep/src/stamp.rs`) is matched by its name.
            let outside = file
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::RootDir));
            let glob = match file.file_name() {
                Some(base) if outside => file_name(Path::new(base)),
                _ => name.clone(),
            };
            format!(
                "{name} changed during each of the last {rounds} builds it triggered: the build \
                 writes it (a build script?); its changes while a build runs are ignored from \
                 now on (to ignore it always: -i '{glob}')"
            )
        }
        DevReport::Rolled { reload: None, end } => roll_ended(end),
        DevReport::Rolled {
            reload: Some((changed, before)),
            end,
        } => {
            let mut line = describe(changed);
            // What ran, then how the roll went: `→ built in 1.2s → rolled …`, or `→ not a
            // build input: rolled …`.
            let then = match before {
                Before::Nothing => " →",
                Before::Build(built_in) => {
                    let _ = write!(line, " → built in {}", human_duration(*built_in));
                    " →"
                }
                Before::NotInput => " → not a build input:",
            };
            line.push_str(then);
            match &end.aborted {
                None => {
                    let _ = write!(
                        line,
                        " rolled {} in {}",
                        workers(end.size),
                        human_duration(end.elapsed)
                    );
                    if let Some(switch) = end.switch {
                        let _ = write!(line, " (switch {})", human_duration(switch));
                    }
                }
                Some(aborted) => {
                    let _ = write!(line, " not rolled: {aborted}; {}", keeps_serving(end));
                }
            }
            line
        }
    }
}

/// What the pages show of a failed build: how it ended, and its diagnostics.
pub(crate) fn failed_page(failure: &BuildFailure) -> String {
    let failed = build_failed(failure.end, failure.built_in);
    if failure.diagnostics.is_empty() {
        format!("{failed}: see the terminal")
    } else {
        format!("{failed}\n\n{}", failure.diagnostics)
    }
}

/// `build failed (exited with status 101) after 1.20s`.
fn build_failed(end: ProcessEnd, built_in: Duration) -> String {
    format!("build failed ({end}) after {}", human_duration(built_in))
}

/// Describes changed files: the first few and how many more; `roll requested` for none.
fn describe(changed: &Changes) -> String {
    let names: Vec<String> = changed
        .0
        .iter()
        .take(NAMED_FILES)
        .map(|path| file_name(path))
        .collect();
    match changed.0.len() {
        0 => "roll requested".to_owned(),
        n if n <= NAMED_FILES => format!("{} changed", names.join(", ")),
        n => format!("{} and {} more changed", names.join(", "), n - NAMED_FILES),
    }
}

/// A file name as it can go into one line: quoted and escaped as `{:?}` does when it holds a
/// character that would break the line or hide (a newline, a control character, an invisible
/// format character); as it is otherwise, quotes and backslashes included.
fn file_name(path: &Path) -> String {
    let name = path.display().to_string();
    let needs_quotes = name
        .chars()
        .any(|c| !matches!(c, '"' | '\\' | '\'') && c.escape_debug().nth(1).is_some());
    if needs_quotes {
        format!("{name:?}")
    } else {
        name
    }
}

/// How a roll ended, on its own (no reload of the dev core asked for it).
pub(crate) fn roll_ended(end: &RollEnd) -> String {
    match &end.aborted {
        None => format!(
            "rolled {} to generation {} in {}",
            workers(end.size),
            end.generation,
            human_duration(end.elapsed)
        ),
        Some(aborted) => format!(
            "roll to generation {} aborted: {aborted}; {}",
            end.generation,
            keeps_serving(end)
        ),
    }
}

/// Which slots run which generation, when they do not all run one: `slots 0–1 run generation
/// 3, slots 2–3 generation 2`; `None` when every slot runs the same one.
fn slot_summary(end: &RollEnd) -> Option<String> {
    let mut runs: Vec<(usize, usize, u64)> = Vec::new();
    for (slot, &generation) in end.slots.iter().enumerate() {
        match runs.last_mut() {
            Some((_, last, run_generation)) if *run_generation == generation => *last = slot,
            _ => runs.push((slot, slot, generation)),
        }
    }
    if runs.len() < 2 {
        return None;
    }
    let parts: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(index, &(first, last, generation))| {
            let slots = if first == last {
                format!("slot {first}")
            } else {
                format!("slots {first}–{last}")
            };
            let verb = match (index, first == last) {
                (0, true) => " runs",
                (0, false) => " run",
                _ => "",
            };
            format!("{slots}{verb} generation {generation}")
        })
        .collect();
    Some(parts.join(", "))
}

/// What keeps serving after an aborted roll: one generation, or which slot runs which.
fn keeps_serving(end: &RollEnd) -> String {
    match slot_summary(end) {
        None => format!("generation {} keeps serving", end.serving),
        Some(summary) => format!(
            "rolled {} of {} slots to generation {}; {summary}",
            end.rolled, end.size, end.generation
        ),
    }
}

/// What a restart request hears of the roll that answers it; `stderr`: the failed
/// replacement's last lines.
pub(crate) fn restart_outcome(end: &RollEnd, stderr: Vec<String>) -> RestartOutcome {
    match &end.aborted {
        None => RestartOutcome::Rolled {
            generation: end.generation,
            duration_ms: status::millis(end.elapsed),
        },
        Some(aborted) => RestartOutcome::Aborted {
            generation: end.generation,
            why: format!("{aborted}; {}", keeps_serving(end)),
            stderr,
            slots: end.slots.clone(),
        },
    }
}

/// A stopping worker still alive a while after the stop signal (the core's
/// `Action::Lingering`, with what the driver read of its connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lingering {
    /// The worker.
    pub(crate) worker: WorkerId,
    /// How long since the stop signal.
    pub(crate) since: Duration,
    /// Its open TCP connections, as the driver counted them.
    pub(crate) connections: usize,
    /// How long until SIGKILL; `None` if it was sent already.
    pub(crate) kill_in: Option<Duration>,
    /// Another Ctrl-C kills it now.
    pub(crate) ctrl_c_kills: bool,
}

/// The line of a lingering worker, so that a wait is never unexplained.
fn lingering_line(lingering: &Lingering) -> String {
    let mut line = format!(
        "{} is still stopping {} after the stop signal",
        long(lingering.worker),
        human_duration(lingering.since)
    );
    if lingering.connections > 0 {
        let _ = write!(
            line,
            " with {} open connection{}",
            lingering.connections,
            if lingering.connections == 1 { "" } else { "s" }
        );
    }
    if let Some(kill_in) = lingering.kill_in {
        let _ = write!(line, "; SIGKILL in {}", human_duration(kill_in));
    }
    if lingering.ctrl_c_kills {
        line.push_str(" (Ctrl-C again to kill it now)");
    }
    line
}

/// A fact the driver saw itself, not told by a core: a line for the terminal (none has a
/// record of `mcluster events`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum DriverReport<'a> {
    /// The building page could not start answering on the listeners (dev mode).
    BuildingPageFailed(&'a io::Error),
    /// A generation's own listening sockets could not be opened: it shares the older ones.
    ListenersShared {
        /// The generation.
        generation: u64,
        /// Why.
        error: &'a io::Error,
    },
    /// The steering program could not be attached: connections may still reach older
    /// generations.
    SteeringFailed {
        /// The generation new connections were to go to.
        generation: u64,
        /// Why.
        error: &'a io::Error,
    },
    /// The listeners could not be made to refuse new connections at a stop: the workers drain
    /// until their deadline.
    StillAccepting {
        /// Why.
        error: &'a io::Error,
    },
    /// An unused generation's listening sockets could not all be taken out of their groups.
    ListenersNotClosed {
        /// The generation.
        generation: u64,
        /// Why.
        error: &'a io::Error,
    },
    /// SIGTTIN asked for one more worker than the bound allows.
    SigttinIgnored {
        /// Why the size is refused.
        why: &'a str,
    },
    /// A worker's latest `STATUS=`.
    Status {
        /// The worker's slot.
        slot: usize,
        /// The status, as sent.
        status: &'a str,
    },
    /// A worker sent notify messages faster than the driver took them: some were not passed
    /// on to the message handler and the followers.
    NotifyFlood {
        /// The worker.
        worker: WorkerId,
        /// How many were not passed on.
        dropped: u64,
    },
    /// Lines a worker sent on its channel that were not messages: too long, or not JSON.
    ChannelDropped {
        /// The worker.
        worker: WorkerId,
        /// The longest line kept, in bytes.
        max_line: usize,
        /// How many were too long.
        too_long: u64,
        /// How many were not JSON.
        invalid: u64,
    },
    /// The message handler's reply could not be queued for the worker.
    ReplyFailed {
        /// The worker.
        worker: WorkerId,
        /// Why.
        why: &'a str,
    },
    /// A starting worker is not ready `after` its spawn, and a process of its group is
    /// stopped (SIGSTOP).
    StoppedStarting {
        /// The worker.
        worker: WorkerId,
        /// How long since its spawn.
        after: Duration,
        /// The stopped process: the worker's own pid, or another of its group.
        stopped: Pid,
    },
    /// A starting worker is not seen accepting `after` its spawn, and sent no `READY=1`.
    NotSeenAccepting {
        /// The worker.
        worker: WorkerId,
        /// How long since its spawn.
        after: Duration,
    },
    /// The guard process died (killed from outside); a new one took every live group.
    GuardReplaced {
        /// How the old one ended; `None` when it is gone without a status.
        ended: Option<ProcessEnd>,
        /// The new guard's pid.
        pid: i32,
        /// How many live process groups it guards.
        groups: usize,
    },
    /// The guard process died, and a new one cannot start: no worker starts until one does.
    GuardNotReplaced {
        /// How the old one ended; `None` when it is gone without a status.
        ended: Option<ProcessEnd>,
        /// Why the new one cannot start.
        error: &'a io::Error,
    },
    /// A new guard process started before a spawn (the last one had died).
    GuardStarted {
        /// Its pid.
        pid: i32,
    },
    /// A stopping worker is still alive a while after the stop signal.
    Lingering(Lingering),
    /// One of the last stderr lines of a worker that never got ready.
    StderrLine {
        /// The worker's slot.
        slot: usize,
        /// The line, as the worker wrote it.
        line: &'a str,
    },
}

/// How the guard process ended, as its lines say it.
fn guard_ended(ended: Option<ProcessEnd>) -> String {
    ended.map_or_else(|| "is gone".to_owned(), |end| end.to_string())
}

/// The terminal line of a fact the driver saw itself.
pub(crate) fn driver_line(report: &DriverReport<'_>) -> String {
    match *report {
        DriverReport::BuildingPageFailed(error) => format!(
            "cannot answer with the building page: {}",
            describe_io(error)
        ),
        DriverReport::ListenersShared { generation, error } => format!(
            "cannot open listening sockets for generation {generation} ({}); it shares the older \
             ones, and old workers stop as their replacements get ready",
            describe_io(error)
        ),
        DriverReport::SteeringFailed { generation, error } => format!(
            "cannot send new connections to generation {generation} ({}); old workers may get \
             some until they stop",
            describe_io(error)
        ),
        DriverReport::StillAccepting { error } => format!(
            "cannot make the listeners refuse new connections ({}); workers stop at their drain \
             deadline",
            describe_io(error)
        ),
        DriverReport::ListenersNotClosed { generation, error } => format!(
            "cannot close the listening sockets of generation {generation}: {}",
            describe_io(error)
        ),
        DriverReport::SigttinIgnored { why } => format!("SIGTTIN ignored: {why}"),
        DriverReport::Status { slot, status } => format!("w{slot} status: {status}"),
        DriverReport::NotifyFlood { worker, dropped } => format!(
            "{} sent notify messages faster than they were handled: {dropped} not passed on \
             (its READY, WATCHDOG, STOPPING and latest STATUS still count)",
            short(worker)
        ),
        DriverReport::ChannelDropped {
            worker,
            max_line,
            too_long,
            invalid,
        } => format!(
            "{} sent lines on its channel that are not messages, dropped: {too_long} longer \
             than {max_line} bytes, {invalid} not JSON",
            short(worker),
        ),
        DriverReport::ReplyFailed { worker, why } => {
            format!("cannot reply to {}: {why}", short(worker))
        }
        DriverReport::StoppedStarting {
            worker,
            after,
            stopped,
        } => format!(
            "{} is not ready after {}: {} is stopped (SIGSTOP or a job control signal), and \
             can neither accept nor send READY=1 until it gets SIGCONT",
            short(worker),
            human_duration(after),
            if Some(stopped) == worker.pid {
                "it".to_owned()
            } else {
                format!("its process {stopped}")
            }
        ),
        DriverReport::NotSeenAccepting { worker, after } => format!(
            "{} is not seen accepting after {} and sent no READY=1; if it serves, it accepts \
             in a way mcluster cannot see (it sees accept, epoll and poll on its listeners, and \
             connections accepted on them): have it send READY=1, or give --ready-delay",
            short(worker),
            human_duration(after)
        ),
        DriverReport::GuardReplaced { ended, pid, groups } => format!(
            "the guard process {}; a new one (pid {pid}) guards the {groups} live process \
             group{}",
            guard_ended(ended),
            if groups == 1 { "" } else { "s" }
        ),
        DriverReport::GuardNotReplaced { ended, error } => format!(
            "error: the guard process {}, and a new one cannot start ({error}); no worker \
             starts until one does",
            guard_ended(ended)
        ),
        DriverReport::GuardStarted { pid } => format!("a new guard process (pid {pid}) runs"),
        DriverReport::Lingering(lingering) => lingering_line(&lingering),
        DriverReport::StderrLine { slot, line } => format!("w{slot} stderr: {line}"),
    }
}

/// What the master's start set up: a line for the terminal each (none has a record of
/// `mcluster events`: they come before the control socket answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartReport<'a> {
    /// The master listens on one of its listeners.
    Listening {
        /// The listener's address, as shown (`127.0.0.1:3000`, a socket's path, an inherited
        /// one's name).
        address: &'a str,
        /// The master's own pid.
        master_pid: u32,
    },
    /// The live-reload channel answers (dev mode).
    LiveReload {
        /// Where it answers.
        address: SocketAddr,
        /// The `<script>` tag that pages include to get it.
        script_tag: &'a str,
    },
    /// The live-reload channel's port was taken (another dev master?): it answers on
    /// another one.
    LiveReloadMoved {
        /// The address asked for.
        taken: SocketAddr,
        /// Where it answers instead.
        address: SocketAddr,
    },
    /// Every generation shares the listening sockets (no steering): an old worker may get a
    /// connection until it stops.
    Shared {
        /// Why (`unix:/run/app.sock is a unix socket`).
        why: &'a str,
    },
    /// The metrics endpoint answers.
    Metrics {
        /// Where it answers.
        address: SocketAddr,
    },
    /// This system cannot show whether a worker accepts (no `/proc`): a worker that sends no
    /// `READY=1` counts as ready once alive `alive`.
    AcceptingUnseen {
        /// How long a worker must be alive to count as ready.
        alive: Duration,
    },
}

/// The terminal line of a fact of the master's start.
pub(crate) fn start_line(report: &StartReport<'_>) -> String {
    match *report {
        StartReport::Listening {
            address,
            master_pid,
        } => format!("listening on {address} (master pid {master_pid})"),
        StartReport::LiveReload {
            address,
            script_tag,
        } => format!("live reload on {address}: pages get it with {script_tag}"),
        StartReport::LiveReloadMoved { taken, address } => {
            format!("{taken} is taken (another dev master?): live reload on {address} instead")
        }
        StartReport::Shared { why } => format!(
            "every generation shares the listening sockets ({why}): an old worker may get new \
             connections until its stop signal, so it should finish what it accepted"
        ),
        StartReport::Metrics { address } => format!("metrics on http://{address}/metrics"),
        StartReport::AcceptingUnseen { alive } => format!(
            "this system cannot show whether a worker accepts: one that does not send READY=1 \
             counts as ready once alive {}",
            human_duration(alive)
        ),
    }
}

/// A watched directory as the user would name it: relative to the current directory when it
/// is below it.
fn shown(root: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    match root.strip_prefix(&cwd) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.display().to_string(),
        _ => root.display().to_string(),
    }
}

/// The terminal line of a fact of the file watcher.
pub(crate) fn watch_line(report: &WatchReport<'_>) -> String {
    match *report {
        WatchReport::InotifyUnavailable { error } => {
            format!("cannot use inotify ({error}); falling back to polling")
        }
        WatchReport::LimitReached => "the inotify watch limit is reached; falling back to \
                                      polling (raise it with: sudo sysctl \
                                      fs.inotify.max_user_watches=524288)"
            .to_owned(),
        WatchReport::CannotPollEither { error } => {
            format!("cannot poll for changes either: {error}")
        }
        WatchReport::BlindPolled {
            root,
            file_system,
            every,
        } => format!(
            "{} is on {file_system}, where inotify sees no change made from the other side: \
             polling it every {} (--poll=INTERVAL polls everything)",
            shown(root),
            human_duration(every)
        ),
        WatchReport::BlindNotPolled {
            root,
            file_system,
            error,
        } => format!(
            "{} is on {file_system}, where inotify sees no change made from the other side, \
             and it cannot be polled: {error}",
            shown(root)
        ),
        WatchReport::RootRemoved { root } => format!(
            "watched directory {} was removed; waiting for it to come back",
            shown(root)
        ),
        WatchReport::RootBack { root } => format!(
            "watched directory {} is back; watching it again",
            shown(root)
        ),
    }
}

/// A lifecycle fact of the master: a line for the terminal and a record for the followers,
/// from the same fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle<'a> {
    /// A worker became ready.
    Ready(&'a WorkerReady),
    /// A roll started.
    RollStarted {
        /// The generation it rolls in.
        generation: u64,
        /// How many workers it replaces.
        size: usize,
    },
    /// A roll ended.
    RollEnded(&'a RollEnd),
    /// The master began to stop (its line is the core's [`Report::Stopping`]).
    Stopping,
    /// A worker process was started (no line: its readiness has one).
    Spawned {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: i32,
        /// Its generation.
        generation: u64,
    },
    /// A worker process exited (no line: the core's reports say what its end means).
    Exited {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: i32,
        /// Its generation.
        generation: u64,
        /// How it ended.
        end: ProcessEnd,
    },
    /// A worker sent a notify message (no line: only its latest `STATUS=` has one,
    /// [`DriverReport::Status`]).
    Notify {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: i32,
        /// The message, as sent.
        message: &'a str,
    },
    /// A worker sent a message on its channel (no line).
    Message {
        /// The worker.
        sender: Sender,
        /// The message.
        message: &'a serde_json::Value,
    },
}

impl Lifecycle<'_> {
    /// Its terminal line, if it has one of its own.
    pub(crate) fn line(&self) -> Option<String> {
        match self {
            Lifecycle::Ready(ready) => Some(format!(
                "w{} ready (pid {}, generation {}): {}",
                ready.slot,
                ready
                    .pid
                    .map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
                ready.generation,
                ready.how
            )),
            Lifecycle::RollStarted { generation, size } => Some(format!(
                "rolling {} to generation {generation}",
                workers(*size)
            )),
            Lifecycle::RollEnded(end) => Some(roll_ended(end)),
            Lifecycle::Stopping
            | Lifecycle::Spawned { .. }
            | Lifecycle::Exited { .. }
            | Lifecycle::Notify { .. }
            | Lifecycle::Message { .. } => None,
        }
    }

    /// Whether its line is a detail about one worker or one step, which a quieter front end
    /// (dev mode, which says the same in its own lines) leaves out.
    pub(crate) fn is_detail(&self) -> bool {
        matches!(self, Lifecycle::Ready(_) | Lifecycle::RollStarted { .. })
    }

    /// Its record, for `mcluster events` and [`Handle::events`](crate::master::Handle::events).
    pub(crate) fn record(&self) -> Record {
        match self {
            Lifecycle::Ready(ready) => Record::WorkerReady {
                slot: ready.slot,
                pid: ready.pid.map(|pid| pid.0),
                generation: ready.generation,
                how: ready.how.to_string(),
            },
            Lifecycle::RollStarted { generation, .. } => Record::RollStarted {
                generation: *generation,
            },
            Lifecycle::RollEnded(end) => Record::RollEnded {
                generation: end.generation,
                completed: end.aborted.is_none(),
                duration_ms: status::millis(end.elapsed),
                aborted: end.aborted.as_ref().map(ToString::to_string),
            },
            Lifecycle::Stopping => Record::Stopping,
            Lifecycle::Spawned {
                slot,
                pid,
                generation,
            } => Record::WorkerSpawned {
                slot: *slot,
                pid: *pid,
                generation: *generation,
            },
            Lifecycle::Exited {
                slot,
                pid,
                generation,
                end,
            } => Record::WorkerExited {
                slot: *slot,
                pid: *pid,
                generation: *generation,
                end: end.to_string(),
            },
            Lifecycle::Notify { slot, pid, message } => Record::Notify {
                slot: *slot,
                pid: *pid,
                message: (*message).to_owned(),
            },
            Lifecycle::Message { sender, message } => Record::Message {
                slot: sender.slot,
                pid: sender.pid,
                generation: sender.generation,
                message: (*message).clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests;

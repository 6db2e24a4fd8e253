//! The driver: owns every handle (children, pipes, sockets). Every decision about workers
//! (how many, when to restart, stop, kill, or take a killed group for gone), when starting
//! workers are probed and leftover groups polled, what a signal means (a second Ctrl-C, a
//! hangup) and when a waiter has its answer is the core's: the driver keeps whoever waits under
//! the request number the core gave, and answers it when the core says so. What the driver
//! still decides is which requests it refuses before they reach the core (a size beyond
//! [`SizeBound`]).
//!
//! Nor does it write words of its own: what it tells — the cores' reports, what it saw itself
//! ([`DriverReport`]: a worker's status or its silence, the guard, a stderr tail), the lifecycle
//! facts of `mcluster events` ([`Lifecycle`]) — is a typed value that the reporter
//! ([`report`]) makes into the terminal line and the followers' record.
//!
//! One loop: wait on one channel, the inbox, with the core's next deadline as a timer, turn
//! what arrives into an [`Event`], hand it to [`Cluster::handle`], carry out the actions. A
//! spawn is answered at once with `Spawned` or `SpawnFailed`.
//!
//! # Threads and queues
//!
//! The driver is a task ([`Supervisor::run`]) on the master's I/O loop
//! ([`IoLoop`](crate::http::IoLoop): a single-threaded tokio runtime on one thread), beside
//! everything else the master reads and serves: the workers' output pipes and notify sockets
//! (and a build's output, in dev mode: see [`builder`](crate::builder)),
//! the signals ([`watch_signals`]: one task per signal, no thread), the control socket, the
//! HTTP servers, the metrics' follower. [`Master::run`](crate::master::Master::run) starts it
//! there and waits for its end on the caller's thread, which does nothing else meanwhile. The
//! loop's thread rather than the caller's: the loop is one for the whole process (two masters
//! of one process are two driver tasks on it), it outlives a run (the control socket's last
//! replies and the workers' last lines are written after the driver ended), and an embedder
//! may call `run` from a thread of its own tokio runtime, where no other runtime can be driven.
//!
//! On the loop, nothing the driver does may wait for the loop's own tasks: what waits for a
//! reader (the last lines of an exited worker, a failure report's stderr) is awaited, or
//! answered by a task of its own. What it does synchronously is short: fork/exec (in
//! [`sys`](crate::sys)), `waitpid` without waiting, a look at `/proc`, and the embedder's
//! message handler, which must return quickly. Besides the loop, the master runs one writer
//! thread per standard stream it writes to ([`output`]: the stream's file description is
//! shared with other processes, never made non-blocking) and, in dev mode, the watcher's
//! thread and its backend's, and at most two threads of the loop's blocking pool for the slow
//! work of dev mode (`cargo metadata`, a build's outcome: see [`dev`](crate::dev)). None of them
//! grows with the number of workers or clients.
//! Every queue between them has a bound and a policy:
//!
//! - **The inbox** is a tokio channel that any thread sends to without blocking and without
//!   a runtime (the embedder's [`Handle`](crate::master::Handle), the watcher's thread, the
//!   tasks of the loop). Unbounded as a channel, it is bounded by its producers: it holds at
//!   most one [`Input::Notify`] per worker (its messages wait coalesced in its notify socket
//!   until the driver takes them, see [`sd_notify`](crate::sd_notify)) and one
//!   [`Input::Channel`] (its channel messages wait likewise, see [`channel`]); one [`Input::Signal`]
//!   per watched signal (a signal that arrives meanwhile is counted in it); one
//!   [`Input::Changed`] per debounced batch of the watcher; one [`Input::BuildOutputEnded`]
//!   per build, when its output ends; one [`Input::Found`] per slow work the dev core asked for
//!   (a build's outcome, a roots lookup: one at a time each); and the requests of the
//!   [`Handle`](crate::master::Handle)s, one per call of the embedder, the control socket and
//!   the metrics endpoint, which each answer a bounded number of clients at once. Nothing that
//!   a worker or a stalled stream does can make it grow. (A bounded channel would have to
//!   refuse or block a call of the embedder's when full: neither is better than the bound by
//!   producers.)
//! - **A worker's notify messages**: the latest `STATUS=`, the `READY=1`, `WATCHDOG=1` and
//!   `STOPPING=1` facts, and [`MESSAGES_KEPT`](crate::sd_notify::MESSAGES_KEPT) messages between
//!   two turns of the driver for the message handler and the followers; beyond, counted and
//!   dropped, with one line saying how many.
//! - **A worker's channel messages**: [`MESSAGES_KEPT`](crate::channel::MESSAGES_KEPT) (and one
//!   read's worth) wait for the driver; beyond, the worker's channel is not read until the
//!   driver took them, so a worker that sends faster waits in its writes. What the master sends
//!   a worker waits in a queue of [`SEND_QUEUE_BYTES`](crate::channel::SEND_QUEUE_BYTES); a
//!   send to a full one fails at once.
//! - **The master's stdout and stderr**: a bounded queue each (see [`output`]). A worker's line
//!   waits for room while the stream is slow; when it is stalled, lines are dropped and
//!   counted, and the driver, which never waits for either stream, keeps supervising.
//! - **Followers** ([`Control::Subscribe`]) get one record per event on a channel of their own
//!   of [`FOLLOWER_QUEUE`](crate::status::FOLLOWER_QUEUE) records; a follower that falls that far
//!   behind is dropped (its channel ends), never waited for. Waiters get one answer each,
//!   through a [`Reply`]: answering never blocks, and the waiter is woken whether it blocks a
//!   thread of the embedder's or is awaited on the loop (the control socket).
//!
//! A worker is its process group: signals go to the group, and when the worker process exits
//! while its group lives on, the core hears [`Event::LeaderExited`], and [`Event::Exited`] once
//! the group is gone (polled with `kill(-pgid, 0)`) or the core gives it up a grace after its
//! SIGKILL ([`Action::Abandon`]: zombies nobody reaps). Only our own children are reaped, by pid
//! (workers, builds); `waitpid(-1)` only when the master is PID 1, where every orphan is ours.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use nix::libc::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid as NixPid;

use crate::channel::{self, WorkerChannel};
use crate::cluster::{
    Action, Cluster, Event, ExitReason, MasterState, Pid, ProcessEnd, ResizeAnswer, RollEnd,
    StopKind, WorkerId, WorkerKey, after,
};
use crate::config::SizeBound;
use crate::dev::lifecycle::{DevAction, DevEvent, Page, Served};
use crate::dev::{DevLoop, Found};
use crate::handle::{Control, Inbox, Input, Reply, Subscriber, ToDriver};
use crate::listener::{Generations, Listener};
use crate::livereload::{BuildingPage, LiveReload, Message};
use crate::output::{self, Readers, Tail, WorkerOutput};
use crate::procfs;
use crate::readiness::{self, ListenerInodes, Round};
use crate::report::{self, DriverReport, Lifecycle};
use crate::sd_notify::{NotifyDir, NotifySocket};
use crate::status::{
    self, LastRoll, Record, ResizeOutcome, RestartOutcome, RollCounts, SendOutcome, Sender, Status,
    WorkerStatus,
};
use crate::sys::{Forked, GUARD_CAPACITY, Guard, Program, SpawnRequest, fork_worker};

/// How many queued inputs are handled before a due deadline: a `READY=1` sent just before its
/// deadline counts, while a stream of messages cannot starve the deadline.
const QUEUED_BEFORE_DEADLINE: usize = 64;

/// A notify message handler: the worker's slot and the notify message.
pub(crate) type NotifyHandler = Box<dyn FnMut(usize, &str) + Send>;

/// A channel message handler: who sent it, the message; what it returns is the reply.
pub(crate) type MessageHandler =
    Box<dyn FnMut(&Sender, serde_json::Value) -> Option<serde_json::Value> + Send>;

/// How every worker is started.
pub(crate) struct WorkerSpec {
    /// What a new generation runs; `None` until the first build in dev mode.
    pub(crate) latest: Option<Program>,
    /// What each generation runs: crash restarts of an old generation run its own executable.
    pub(crate) generations: BTreeMap<u64, Program>,
    /// The arguments after `argv[0]`.
    pub(crate) args: Vec<CString>,
    /// The master's environment with the `--env` pairs, without the per-worker variables.
    pub(crate) env: Vec<CString>,
    pub(crate) silent: bool,
    pub(crate) stop_signal: Signal,
}

/// A spawned worker's handles.
struct RunningWorker {
    slot: usize,
    pid: i32,
    generation: u64,
    /// The last `STATUS=` text it sent.
    status: Option<String>,
    /// Watches it for accepting while it starts; `None` once ready (or without probing).
    probe: Option<readiness::Starting>,
    /// Its notify socket, with the messages the driver has not taken yet.
    notify: NotifySocket,
    /// The master's end of its message channel.
    channel: WorkerChannel,
    stderr_tail: Tail,
    output: Readers,
}

/// A worker forked in a batch of spawns, its exec not yet confirmed: it joins the running
/// workers once it is ([`Supervisor::finish_spawns`]).
struct ForkedWorker {
    key: WorkerKey,
    forked: Forked,
    /// The running worker it becomes, but for its pid.
    worker: RunningWorker,
    /// The inode of the worker's end of its channel (for its probe to leave out).
    channel_inode: Option<u64>,
}

impl RunningWorker {
    /// The worker as reports name it.
    fn id(&self) -> WorkerId {
        WorkerId {
            slot: self.slot,
            pid: Some(Pid(self.pid)),
            generation: self.generation,
        }
    }
}

/// Queues `message` on the channel of the newest worker of `slot` (`None`: of every slot);
/// answered at once, never waiting for a worker to read.
fn send_to_workers(state: &DriverState, slot: Option<usize>, message: &Value) -> SendOutcome {
    // The newest worker of each slot: during a roll, the replacement.
    let mut newest: BTreeMap<usize, (&WorkerKey, &RunningWorker)> = BTreeMap::new();
    for (key, worker) in &state.workers {
        if slot.is_some_and(|slot| slot != worker.slot) {
            continue;
        }
        let entry = newest.entry(worker.slot).or_insert((key, worker));
        if (worker.generation, key.0) > (entry.1.generation, entry.0.0) {
            *entry = (key, worker);
        }
    }
    if newest.is_empty() {
        return SendOutcome::Failed {
            why: match slot {
                Some(slot) => format!("no worker runs in slot {slot}"),
                None => "no worker runs".to_owned(),
            },
            delivered: Vec::new(),
        };
    }
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    for (slot, (_, worker)) in newest {
        match worker.channel.send(message) {
            Ok(()) => delivered.push(slot),
            Err(why) => failed.push(format!("w{slot} (pid {}): {why}", worker.pid)),
        }
    }
    if failed.is_empty() {
        SendOutcome::Delivered { slots: delivered }
    } else {
        SendOutcome::Failed {
            why: failed.join("; "),
            delivered,
        }
    }
}

/// A worker that exited, kept for a failure report.
struct ExitedWorker {
    slot: usize,
    pid: i32,
    stderr_tail: Tail,
    output: Readers,
}

pub(crate) struct Supervisor {
    pub(crate) cluster: Cluster,
    pub(crate) spec: WorkerSpec,
    /// Every generation's listening sockets (the first set shared with
    /// [`Master::run`](crate::master::Master::run), which drops it last).
    pub(crate) generations: Generations,
    pub(crate) notify_dir: NotifyDir,
    pub(crate) events: ToDriver,
    pub(crate) inbox: Inbox,
    pub(crate) on_notify: Option<NotifyHandler>,
    pub(crate) on_message: Option<MessageHandler>,
    /// Whether the master's own service manager (systemd) listens on `NOTIFY_SOCKET`.
    pub(crate) notify_manager: bool,
    /// Dev mode's watcher and build.
    pub(crate) dev: Option<DevLoop>,
    /// Leave out per-worker detail lines (dev mode prints one line per reload).
    pub(crate) quiet: bool,
    /// Kills every worker's group should the master die.
    pub(crate) guard: Guard,
    /// The listeners as the readiness probe knows them; `None`: no probing (`--ready notify`, or
    /// no `/proc`).
    pub(crate) probe: Option<ListenerInodes>,
    /// The listeners of every generation, to tell the connections accepted on them (a draining
    /// worker's).
    pub(crate) inodes: ListenerInodes,
    /// Dev mode's live-reload channel.
    pub(crate) livereload: Option<LiveReload>,
    /// Answers on the listeners while no generation serves (dev mode with live reload).
    pub(crate) building: Option<BuildingPage>,
    /// The most workers this master can run.
    pub(crate) size_bound: SizeBound,
}

impl Supervisor {
    /// Runs the cluster until it exits. The supervisor stays the caller's, to drop where it
    /// waits for nothing on the loop: its guard, its dev loop (the watcher's thread, the kept
    /// builds) and its servers take a moment to end.
    pub(crate) async fn run(&mut self) -> io::Result<ExitReason> {
        let devnull = File::open("/dev/null")?;
        let mut state = DriverState {
            workers: HashMap::new(),
            exited: VecDeque::new(),
            pids: HashMap::new(),
            groups: HashMap::new(),
            strays: Vec::new(),
            reap_all: nix::unistd::getpid().as_raw() == 1,
            waiters: HashMap::new(),
            roll_waiter: None,
            subscribers: Vec::new(),
            resize_waiters: HashMap::new(),
            exit_waiters: HashMap::new(),
            started: Instant::now(),
            had_terminal: has_terminal(),
            exit: None,
            devnull,
        };
        if let Some(dev) = &self.dev {
            let begin = DevEvent::Begin {
                building: dev.plan.is_some(),
                watching: dev.watcher.is_some(),
                livereload: self.livereload.is_some(),
            };
            if dev.plan.is_some() {
                // A tab opened during the first build gets a page that follows the build.
                self.answer_while_building();
            }
            // The first generation runs what the initial build produces.
            self.dev_event(&mut state, begin);
        } else {
            self.feed(&mut state, Event::Start);
        }
        while state.exit.is_none() {
            let deadline = self.cluster.next_deadline();
            if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                for _ in 0..QUEUED_BEFORE_DEADLINE {
                    let Ok(input) = self.inbox.try_recv() else {
                        break;
                    };
                    self.dispatch(&mut state, input);
                }
                if state.exit.is_none() {
                    self.feed(&mut state, Event::Tick);
                }
                // The loop's other tasks (the readers, the servers) get their turn between two
                // due deadlines, however many are due.
                tokio::task::yield_now().await;
                continue;
            }
            // Dev mode: the dev core's own deadline (a build's output grace).
            let dev_deadline = self.dev.as_ref().and_then(|dev| dev.core.next_deadline());
            if dev_deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                self.dev_event(&mut state, DevEvent::Tick);
                continue;
            }
            let wake = [deadline, dev_deadline].into_iter().flatten().min();
            let timer = async {
                match wake {
                    Some(wake) => tokio::time::sleep_until(wake.into()).await,
                    None => std::future::pending().await,
                }
            };
            // The driver holds a sender itself (for the notify sockets): the inbox cannot end
            // while it runs.
            let input = tokio::select! {
                biased;
                input = self.inbox.recv() => match input {
                    Some(input) => Some(input),
                    None => break,
                },
                // A deadline or a poll due now is handled at the top of the loop.
                () = timer => None,
            };
            if let Some(input) = input {
                self.dispatch(&mut state, input);
            }
        }
        let reason = state.exit.take().unwrap_or(ExitReason::Killed);
        // Whatever ended the master (the core, a failed first build), whoever still waits
        // hears how, or that nothing more will happen.
        self.feed(&mut state, Event::Ended(reason.clone()));
        if let ExitReason::NeverReady { pid: Some(pid), .. } = &reason {
            report_stderr_tail(&mut state, pid.0).await;
        }
        // Let the last lines of every worker reach the terminal before the master exits.
        let deadline = after(Instant::now(), Duration::from_secs(2));
        for exited in state.exited.drain(..) {
            exited.output.wait(deadline).await;
        }
        Ok(reason)
    }

    /// Answers HTTP on the listeners with the live-reload channel's building page, until the
    /// first workers start (dev mode with live reload).
    fn answer_while_building(&mut self) {
        let Some(live) = &self.livereload else {
            return;
        };
        let listeners: Vec<_> = self
            .generations
            .for_generation(0)
            .iter()
            .filter_map(Listener::tcp_duplicate)
            .collect();
        if listeners.is_empty() {
            return;
        }
        let page = live.page_source();
        match BuildingPage::start(listeners, page) {
            Ok(building) => self.building = Some(building),
            Err(error) => output::master_line(&report::driver_line(
                &DriverReport::BuildingPageFailed(&error),
            )),
        }
    }

    /// Hands an event to the dev core and carries out its actions, including the events they
    /// cause (a build's start, its outcome, a kept executable).
    fn dev_event(&mut self, state: &mut DriverState, event: DevEvent) {
        // What slow work off the loop finds comes back through the inbox.
        let found = |events: &ToDriver| -> Found {
            let events = events.clone();
            Box::new(move |event| {
                let _ = events.send(Input::Found(Box::new(event)));
            })
        };
        let mut pending = VecDeque::from([event]);
        while let Some(event) = pending.pop_front() {
            let now = Instant::now();
            let served = self.served();
            let Some(dev) = &mut self.dev else {
                return;
            };
            for action in dev.core.handle(now, served, event) {
                let Some(dev) = &mut self.dev else {
                    return;
                };
                match action {
                    DevAction::StartBuild(build) => {
                        let events = self.events.clone();
                        let on_output_end = Box::new(move || {
                            let _ = events.send(Input::BuildOutputEnded(build));
                        });
                        let started = dev.start_build(build, &mut self.guard, on_output_end);
                        pending.push_back(started);
                    }
                    DevAction::CancelBuild(build) => {
                        // Its exit is reaped later as a stray.
                        if let Some(pid) = dev.cancel_build(build) {
                            state.adopt_stray(pid);
                        }
                    }
                    DevAction::Collect { build, end } => {
                        let found = found(&self.events);
                        dev.collect(build, end, self.spec.latest.as_ref(), found);
                    }
                    DevAction::Install { build, executable } => {
                        let installed = match dev.install(&executable) {
                            Ok(program) => {
                                let replaced = self.spec.latest.replace(program);
                                self.discard_unused_builds(replaced);
                                DevEvent::Installed { build }
                            }
                            Err(why) => DevEvent::NotInstalled { build, why },
                        };
                        pending.push_back(installed);
                    }
                    DevAction::WatchInputs { inputs, since } => dev.watch_inputs(inputs, since),
                    DevAction::FindRoots { lookup } => dev.find_roots(lookup, found(&self.events)),
                    DevAction::AddRoots(roots) => dev.add_roots(roots),
                    DevAction::Start => self.feed(state, Event::Start),
                    DevAction::Roll => {
                        // The core learns the request before the cluster, which may refuse it
                        // at once.
                        let request = self.cluster.new_request();
                        let served = self.served();
                        if let Some(dev) = &mut self.dev {
                            dev.core
                                .handle(Instant::now(), served, DevEvent::RollSent { request });
                        }
                        self.feed(state, Event::Roll(request));
                    }
                    DevAction::Pages(page) => self.tell_pages(&match page {
                        Page::Reload => Message::Reload,
                        Page::Css => Message::Css,
                        Page::Failed(failure) => Message::Failed(report::failed_page(&failure)),
                        Page::Clear => Message::Clear,
                    }),
                    DevAction::Report(told) => output::master_line(&report::dev_line(&told)),
                    // Each outcome has its line already.
                    DevAction::Ended { .. } => {}
                    DevAction::Exit(reason) => state.exit = Some(reason),
                }
            }
        }
    }

    /// The cluster core's state, as the dev core needs it.
    fn served(&self) -> Served {
        Served {
            generation: self.cluster.serving_generation(),
            waiting: self.cluster.is_waiting(),
            stopping: self.cluster.is_stopping(),
        }
    }

    /// Removes the kept builds among `programs` that no generation runs any more (a build kept
    /// for every reload would otherwise pile up until the master exits).
    fn discard_unused_builds(&self, programs: impl IntoIterator<Item = Program>) {
        let Some(dev) = &self.dev else {
            return;
        };
        dev.discard_unused_builds(programs, |program| {
            self.spec
                .latest
                .as_ref()
                .is_some_and(|latest| latest.path == program.path)
                || self
                    .spec
                    .generations
                    .values()
                    .any(|kept| kept.path == program.path)
        });
    }

    /// Tells the pages of the live-reload channel (dev mode).
    pub(crate) fn tell_pages(&self, message: &Message) {
        if let Some(live) = &self.livereload {
            live.send(message);
        }
    }

    fn dispatch(&mut self, state: &mut DriverState, input: Input) {
        match input {
            Input::Signal { signal, count } => {
                // One reap collects every exited child; each other signal is a request of its own
                // (a second Ctrl-C, another TTIN).
                let count = match count.swap(0, Ordering::AcqRel) {
                    _ if signal == SIGCHLD => 1,
                    count => count,
                };
                for _ in 0..count {
                    self.on_signal(state, signal);
                }
            }
            Input::Notify { key } => self.on_notify(state, key),
            Input::Channel { key } => self.on_channel(state, key),
            Input::Control(control) => match control {
                Control::Roll(outcome) => self.roll_requested(state, outcome),
                Control::Status(reply) => {
                    reply.send(self.status(state));
                }
                Control::Subscribe(subscriber) => state.subscribers.push(subscriber),
                Control::Resize(size, reply) => {
                    if let Err(why) = self.check_size(size) {
                        if let Some(reply) = reply {
                            reply.send(ResizeOutcome::Refused { why });
                        }
                        return;
                    }
                    let request = reply.map(|reply| {
                        let request = self.cluster.new_request();
                        state.resize_waiters.insert(request, reply);
                        request
                    });
                    self.feed(state, Event::Resize { size, request });
                }
                Control::Send {
                    slot,
                    message,
                    reply,
                } => reply.send(send_to_workers(state, slot, &message)),
                Control::Quit(reply) => self.quit(state, false, reply),
                Control::QuitHard(reply) => self.quit(state, true, reply),
            },
            Input::Changed(paths) => self.dev_event(state, DevLoop::changed(paths)),
            Input::BuildOutputEnded(build) => {
                self.dev_event(state, DevEvent::BuildOutputEnded { build });
            }
            Input::Found(event) => self.dev_event(state, *event),
        }
    }

    /// A stop from the handle; whoever waits is answered with how the master ended.
    fn quit(&mut self, state: &mut DriverState, hard: bool, reply: Option<Reply<ExitReason>>) {
        let event = match reply {
            Some(reply) => {
                let request = self.cluster.new_request();
                state.exit_waiters.insert(request, reply);
                Event::Quit { hard, request }
            }
            None => Event::Stop { hard },
        };
        self.feed(state, event);
    }

    fn on_signal(&mut self, state: &mut DriverState, signal: i32) {
        let event = match signal {
            SIGCHLD => {
                self.reap(state);
                return;
            }
            // What a hangup means is the core's ([`Hangup`](crate::cluster::Hangup)).
            SIGHUP => Event::Hangup {
                terminal_lost: state.had_terminal && !has_terminal(),
            },
            SIGINT => Event::Interrupt,
            SIGTERM => Event::Stop { hard: false },
            SIGQUIT => Event::Stop { hard: true },
            SIGTTIN => {
                let size = self.cluster.size().saturating_add(1);
                if let Err(why) = self.check_size(size) {
                    output::master_line(&report::driver_line(&DriverReport::SigttinIgnored {
                        why: &why,
                    }));
                    return;
                }
                Event::Resize {
                    size,
                    request: None,
                }
            }
            SIGTTOU => Event::Resize {
                size: self.cluster.size().saturating_sub(1),
                request: None,
            },
            _ => return,
        };
        self.feed(state, event);
    }

    /// Takes a worker's notify messages: every message kept goes to the message handler and
    /// the followers, the latest status is shown, the facts go to the core.
    fn on_notify(&mut self, state: &mut DriverState, key: WorkerKey) {
        let Some(worker) = state.workers.get_mut(&key) else {
            return;
        };
        let (slot, pid) = (worker.slot, worker.pid);
        let id = worker.id();
        let taken = worker.notify.take();
        if let Some(status) = &taken.status {
            worker.status = Some(status.clone());
            output::master_line(&report::driver_line(&DriverReport::Status { slot, status }));
        }
        for text in &taken.messages {
            if let Some(handler) = &mut self.on_notify {
                handler(slot, text);
            }
            state.publish(
                &Lifecycle::Notify {
                    slot,
                    pid,
                    message: text,
                }
                .record(),
            );
        }
        if taken.dropped > 0 {
            output::master_line(&report::driver_line(&DriverReport::NotifyFlood {
                worker: id,
                dropped: taken.dropped,
            }));
        }
        if taken.facts.ready {
            self.feed(state, Event::Ready { key });
        }
        if taken.facts.watchdog {
            self.feed(state, Event::Watchdog { key });
        }
        if taken.facts.stopping {
            self.feed(state, Event::Stopping { key });
        }
    }

    /// Takes a worker's channel messages: each goes to the message handler, whose reply goes
    /// back to the worker, and to the followers.
    fn on_channel(&mut self, state: &mut DriverState, key: WorkerKey) {
        let Some(worker) = state.workers.get(&key) else {
            return;
        };
        let sender = Sender {
            slot: worker.slot,
            pid: worker.pid,
            generation: worker.generation,
        };
        let id = worker.id();
        let taken = worker.channel.take();
        for message in taken.messages {
            state.publish(
                &Lifecycle::Message {
                    sender,
                    message: &message,
                }
                .record(),
            );
            let Some(handler) = &mut self.on_message else {
                continue;
            };
            let Some(reply) = handler(&sender, message) else {
                continue;
            };
            // The worker may be gone by now only if it was before: the handler cannot remove it.
            if let Some(worker) = state.workers.get(&key)
                && let Err(why) = worker.channel.send(&reply)
            {
                output::master_line(&report::driver_line(&DriverReport::ReplyFailed {
                    worker: id,
                    why: &why.to_string(),
                }));
            }
        }
        if taken.too_long > 0 || taken.invalid > 0 {
            output::master_line(&report::driver_line(&DriverReport::ChannelDropped {
                worker: id,
                max_line: channel::MAX_LINE,
                too_long: taken.too_long,
                invalid: taken.invalid,
            }));
        }
    }

    /// SIGHUP or the handle's `restart`: in dev mode (watching), the roll's end is reported as
    /// a reload.
    fn roll_requested(&mut self, state: &mut DriverState, outcome: Option<Reply<RestartOutcome>>) {
        if !self.interactive() {
            // The waiter goes in before the request reaches the core, which may refuse it at
            // once.
            let request = self.cluster.new_request();
            if let Some(outcome) = outcome {
                state.waiters.insert(request, outcome);
            }
            self.feed(state, Event::Roll(request));
            return;
        }
        // Dev mode asks for a request number only when it makes a roll (none before its first
        // generation serves): the waiter goes with the first roll fed to the core.
        state.roll_waiter = outcome;
        self.dev_event(state, DevEvent::RollRequested);
        if let Some(waiter) = state.roll_waiter.take() {
            let request = self.cluster.new_request();
            state.waiters.insert(request, waiter);
            self.feed(state, Event::RollDeclined(request));
        }
    }

    /// Whether this master is `mcluster dev` watching files (an interactive session).
    fn interactive(&self) -> bool {
        self.dev.as_ref().is_some_and(|dev| dev.watcher.is_some())
    }

    /// Collects every exited child of ours: CHLD signals merge, so one may stand for many. Only
    /// our own children are waited for, by pid, so that a program embedding the master keeps
    /// its own; as PID 1, every orphan is ours to reap.
    fn reap(&mut self, state: &mut DriverState) {
        if state.reap_all {
            while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                match process_end(status) {
                    Some((pid, end)) => self.child_exited(state, pid, end),
                    None if status == WaitStatus::StillAlive => break,
                    None => {}
                }
            }
        } else {
            let mut ours: Vec<i32> = state.pids.keys().copied().collect();
            ours.extend(self.dev.as_ref().and_then(DevLoop::build_pid));
            ours.extend(state.strays.iter().copied());
            for pid in ours {
                if let Ok(status) = waitpid(NixPid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
                    && let Some((pid, end)) = process_end(status)
                {
                    self.child_exited(state, pid, end);
                }
            }
            self.replace_guard_if_exited(state);
        }
        self.check_groups(state);
    }

    /// Reaps the guard if it died, and replaces it ([`Supervisor::guard_exited`]).
    fn replace_guard_if_exited(&mut self, state: &DriverState) {
        if let Some(status) = self.guard.exited() {
            self.guard_exited(state, process_end(status).map(|(_, end)| end));
        }
    }

    /// The guard died: it never exits by itself while the master runs, so it was killed from
    /// outside. Says so in one line and starts a new guard, which learns every live group
    /// (workers, groups whose leader exited, builds). Should that fail, no worker starts until
    /// a new guard does (see [`Supervisor::ensure_guard`]): a roll's replacements fail to
    /// start, and the roll is aborted as any roll whose workers cannot start.
    fn guard_exited(&mut self, state: &DriverState, ended: Option<ProcessEnd>) {
        let live: Vec<i32> = self.live_groups(state).collect();
        let groups = live.len();
        let restarted = self.guard.restart(live);
        let told = match &restarted {
            Ok(()) => DriverReport::GuardReplaced {
                ended,
                pid: self.guard.pid().unwrap_or(0),
                groups,
            },
            Err(error) => DriverReport::GuardNotReplaced { ended, error },
        };
        output::master_line(&report::driver_line(&told));
    }

    /// Every process group of ours that may still have a process in it: what a guard must
    /// kill should the master die.
    fn live_groups<'s>(&'s self, state: &'s DriverState) -> impl Iterator<Item = i32> + 's {
        state
            .pids
            .keys()
            .chain(state.groups.keys())
            .chain(&state.strays)
            .copied()
            .chain(self.dev.as_ref().and_then(DevLoop::build_pid))
    }

    /// Before a worker starts: a guard must be there to take it (one killed from outside is
    /// replaced first), with room for one more group. `forked` are the workers of this batch
    /// not yet registered.
    fn ensure_guard(&mut self, state: &DriverState, forked: &[ForkedWorker]) -> io::Result<()> {
        self.replace_guard_if_exited(state);
        let forked_pids = forked.iter().map(|pending| pending.forked.pid());
        if self.guard.pid().is_none() {
            let live: Vec<i32> = self.live_groups(state).chain(forked_pids.clone()).collect();
            self.guard.restart(live).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("no guard process to kill the worker with the master: {error}"),
                )
            })?;
            output::master_line(&report::driver_line(&DriverReport::GuardStarted {
                pid: self.guard.pid().unwrap_or(0),
            }));
        }
        // Counted, not collected: this runs before every spawn.
        if Guard::full(self.live_groups(state).count() + forked_pids.len()) {
            return Err(io::Error::other(format!(
                "the guard process tracks at most {GUARD_CAPACITY} process groups"
            )));
        }
        Ok(())
    }

    fn child_exited(&mut self, state: &mut DriverState, pid: i32, end: ProcessEnd) {
        if self.guard.pid() == Some(pid) {
            // Reaped by `waitpid(-1)` (the master as PID 1).
            self.guard.reaped_elsewhere();
            self.guard_exited(state, Some(end));
            return;
        }
        if let Some(dev) = &mut self.dev
            && dev.build_pid() == Some(pid)
        {
            self.guard.forget(pid);
            if let Some(event) = dev.build_exited(end) {
                self.dev_event(state, event);
            }
            return;
        }
        if let Some(index) = state.strays.iter().position(|&stray| stray == pid) {
            state.strays.swap_remove(index);
            self.guard.forget(pid);
            return;
        }
        let Some(key) = state.pids.remove(&pid) else {
            // An orphan reaped as PID 1: the core ignores pids it does not know.
            self.feed(state, Event::Exited { pid: Pid(pid), end });
            return;
        };
        if let Some(worker) = state.workers.remove(&key) {
            state.publish(
                &Lifecycle::Exited {
                    slot: worker.slot,
                    pid,
                    generation: worker.generation,
                    end,
                }
                .record(),
            );
            state.remember_exited(worker);
        }
        if group_exists(pid) {
            state.groups.insert(pid, Group { end });
            self.feed(state, Event::LeaderExited { pid: Pid(pid), end });
        } else {
            self.guard.forget(pid);
            self.feed(state, Event::Exited { pid: Pid(pid), end });
        }
    }

    /// Looks at every starting worker: one seen accepting on a listener is ready. A `full`
    /// round first looks for the other members of each group below its worker (or, with
    /// `everyone` or a kernel without children files, in one pass over `/proc`), and lists
    /// every fd anew.
    fn probe_starting(&self, state: &mut DriverState, full: bool, everyone: bool) -> Vec<Event> {
        let Some(listeners) = &self.probe else {
            return Vec::new();
        };
        // Without /proc (it was there when probing began), the members known stay.
        let pass = if full {
            let leaders = state
                .workers
                .values()
                .filter(|worker| worker.probe.is_some())
                .map(|worker| worker.pid);
            (!everyone)
                .then(|| procfs::descendant_groups(leaders))
                .flatten()
                .or_else(procfs::live_groups)
        } else {
            None
        };
        let round = if full {
            Round::Full(pass.as_ref())
        } else {
            Round::Quick
        };
        // The files the probes keep open come from the fds no worker needs.
        let kept: usize = state
            .workers
            .values()
            .filter_map(|worker| worker.probe.as_ref())
            .map(readiness::Starting::kept_fds)
            .sum();
        let mut allowance = SizeBound::spare_fds(self.cluster.size()).saturating_sub(kept);
        let mut seen = Vec::new();
        for (key, worker) in &mut state.workers {
            let Some(probe) = &mut worker.probe else {
                continue;
            };
            if let Some(accepting) = probe.probe(listeners, round, &mut allowance) {
                seen.push(Event::SeenAccepting {
                    key: *key,
                    how: accepting.to_string(),
                });
                worker.probe = None;
            }
        }
        seen
    }

    /// Looks at the old workers a roll stopped: one whose group has no process seen accepting
    /// on a listener nor holding a connection accepted on one can no longer answer. One pass
    /// over `/proc` gives the members of every group (a member reparented away is found too);
    /// each process's own sockets tell its connections.
    fn probe_retiring(&self, workers: &[(WorkerKey, Pid)]) -> Vec<Event> {
        let Some(listeners) = &self.probe else {
            return Vec::new();
        };
        let master = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let table = std::cell::OnceCell::new();
        let groups = procfs::live_groups();
        workers
            .iter()
            .filter(|(_, pid)| {
                let members = group_members(groups.as_ref(), *pid);
                readiness::switched_out(&members, listeners, master, &table)
            })
            .map(|&(key, _)| Event::SwitchedOut { key })
            .collect()
    }

    /// The generations' sockets changed: the probes know the new ones' inodes. An `fstat` of our
    /// own sockets that fails keeps what was known (a worker on a new socket is then not seen
    /// accepting, only ready by its other rules).
    fn listeners_changed(&mut self) {
        let Ok(inodes) = ListenerInodes::of(&self.generations.all_fds()) else {
            return;
        };
        if let Some(probe) = &mut self.probe {
            probe.clone_from(&inodes);
        }
        self.inodes = inodes;
    }

    /// Looks at the workers steered away from: one is drained once its generation's sockets
    /// hold no waiting connection and no process of its group holds a connection with a
    /// request in progress. The members of each group are found below its leader (a pass over
    /// every process where the kernel cannot tell children); a group that holds no socket is
    /// drained at once; the state of the sockets it holds is read through duplicates of their
    /// fds ([`readiness::HeldSockets::request_in_progress`]), or, where they cannot be
    /// duplicated, from one dump of the kernel's connections for every such group
    /// ([`readiness::requests_in_progress`], which walks the whole table). Where neither tells
    /// the requests in progress, the empty queue alone counts.
    fn probe_draining(&self, workers: &[(WorkerKey, Pid, u64)]) -> Vec<Event> {
        let emptied: Vec<(WorkerKey, Pid)> = workers
            .iter()
            .filter(|&&(_, _, generation)| self.generations.queued(generation) == Some(0))
            .map(|&(key, pid, _)| (key, pid))
            .collect();
        if emptied.is_empty() {
            return Vec::new();
        }
        let groups = procfs::descendant_groups(emptied.iter().map(|&(_, pid)| pid.0))
            .or_else(procfs::live_groups);
        let held: Vec<(WorkerKey, Option<readiness::HeldSockets>)> = emptied
            .iter()
            .map(|&(key, pid)| {
                let members = group_members(groups.as_ref(), pid);
                (key, readiness::held_sockets(&members, &self.inodes))
            })
            .collect();
        let mut dump = readiness::Dump::new(i32::try_from(std::process::id()).unwrap_or(i32::MAX));
        held.into_iter()
            .filter(|(_, held)| readiness::drained(held.as_ref(), &self.inodes, &mut dump))
            .map(|(key, _)| Event::Drained { key })
            .collect()
    }

    /// A starting worker is not seen accepting `after` its spawn: one last look, then one
    /// line of advice.
    fn unseen(&self, state: &mut DriverState, key: WorkerKey, after: Duration) -> Option<Event> {
        let listeners = self.probe.as_ref()?;
        let worker = state.workers.get_mut(&key)?;
        let probe = worker.probe.as_mut()?;
        // One look, at 5 s: nothing worth keeping open.
        if let Some(accepting) = probe.probe(listeners, Round::Full(None), &mut 0) {
            worker.probe = None;
            return Some(Event::SeenAccepting {
                key,
                how: accepting.to_string(),
            });
        }
        let told = match probe.stopped() {
            Some(stopped) => DriverReport::StoppedStarting {
                worker: worker.id(),
                after,
                stopped: Pid(stopped),
            },
            None => DriverReport::NotSeenAccepting {
                worker: worker.id(),
                after,
            },
        };
        output::master_line(&report::driver_line(&told));
        None
    }

    /// The groups of exited workers that are gone now end for the core.
    fn check_groups(&mut self, state: &mut DriverState) {
        for event in self.gone_groups(state, false) {
            self.feed(state, event);
        }
    }

    /// The groups of exited workers that are gone now, forgotten, as events for the core; with
    /// `zombies` (as often as the core asks), also those of zombies only.
    fn gone_groups(&mut self, state: &mut DriverState, zombies: bool) -> Vec<Event> {
        let mut gone: Vec<(i32, ProcessEnd)> = Vec::new();
        let mut existing = Vec::new();
        for (pid, group) in &state.groups {
            if group_exists(*pid) {
                existing.push((*pid, group.end));
            } else {
                gone.push((*pid, group.end));
            }
        }
        // Zombies that their parent does not reap (an init that does not reap, a subreaper)
        // keep a group in existence for kill(2): a group of zombies only is gone all the same,
        // whatever stop is under way. One pass over /proc answers for every such group; the
        // core paces it.
        if zombies
            && !existing.is_empty()
            && let Some(live) = readiness::groups_with_live_processes()
        {
            gone.extend(existing.into_iter().filter(|(pid, _)| !live.contains(pid)));
        }
        gone.into_iter()
            .map(|(pid, end)| {
                state.groups.remove(&pid);
                self.guard.forget(pid);
                Event::Exited { pid: Pid(pid), end }
            })
            .collect()
    }

    /// Hands an event to the core and carries out the actions, including the events they
    /// cause (a spawn's result).
    pub(crate) fn feed(&mut self, state: &mut DriverState, event: Event) {
        if event == Event::Start {
            // The first workers start: nothing else may accept on the listeners now.
            self.building = None;
        }
        let mut pending = VecDeque::from([event]);
        while let Some(event) = pending.pop_front() {
            if let Event::Roll(request) = event
                && let Some(waiter) = state.roll_waiter.take()
            {
                // Dev mode made a roll of the handle's request.
                state.waiters.insert(request, waiter);
            }
            // Spawns in a row are forked first, then confirmed: their execs run side by side.
            // Any other action waits for them, so it sees every worker as before.
            let mut forked: Vec<ForkedWorker> = Vec::new();
            for action in self.cluster.handle(Instant::now(), event) {
                if !matches!(action, Action::Spawn { .. }) {
                    self.finish_spawns(state, &mut forked, &mut pending);
                }
                match action {
                    Action::Spawn {
                        key,
                        slot,
                        generation,
                        size,
                    } => match self.fork(state, &forked, key, slot, generation, size) {
                        Ok(worker) => forked.push(worker),
                        Err(error) => {
                            // Its failure comes after the results of the spawns before it.
                            self.finish_spawns(state, &mut forked, &mut pending);
                            pending.push_back(Event::SpawnFailed {
                                key,
                                reason: crate::config::describe_spawn_error(&error),
                            });
                        }
                    },
                    Action::Signal { pid, kind } => {
                        self.send_signal(state, pid, kind);
                        // A worker asked to stop is no longer probed for accepting.
                        if let Some(key) = state.pids.get(&pid.0)
                            && let Some(worker) = state.workers.get_mut(key)
                        {
                            worker.probe = None;
                        }
                    }
                    Action::Abandon { pid } => {
                        state.groups.remove(&pid.0);
                        self.guard.forget(pid.0);
                    }
                    Action::Report(told) => output::master_line(&report::line(&told)),
                    Action::Ready(ready) => {
                        // Ready by another rule: nothing left to probe.
                        if let Some(pid) = ready.pid
                            && let Some(key) = state.pids.get(&pid.0)
                            && let Some(worker) = state.workers.get_mut(key)
                        {
                            worker.probe = None;
                        }
                        let told = Lifecycle::Ready(&ready);
                        if let Some(line) = told.line()
                            && !(self.quiet && told.is_detail())
                        {
                            output::master_line(&line);
                        }
                        state.publish(&told.record());
                    }
                    Action::RollStarted { generation, size } => {
                        let told = Lifecycle::RollStarted { generation, size };
                        if let Some(line) = told.line()
                            && !(self.quiet && told.is_detail())
                        {
                            output::master_line(&line);
                        }
                        state.publish(&told.record());
                    }
                    Action::RollEnded(end) => {
                        self.forget_old_generations();
                        // In dev mode, the one line of the reload that caused it.
                        if self.dev.is_some() {
                            self.dev_event(state, DevEvent::RollEnded(end.clone()));
                        } else {
                            output::master_line(&report::roll_ended(&end));
                        }
                        Self::roll_ended(state, &end);
                    }
                    Action::RollRefused { request, why } => {
                        if let Some(waiter) = state.waiters.remove(&request) {
                            waiter.send(RestartOutcome::Refused {
                                why: why.to_owned(),
                            });
                        }
                        self.dev_event(state, DevEvent::RollRefused { request });
                    }
                    Action::Notify(master_state) => {
                        if master_state == MasterState::Stopping {
                            state.publish(&Lifecycle::Stopping.record());
                        }
                        // The first generation is up.
                        if master_state == MasterState::Ready && !self.cluster.is_rolling() {
                            self.dev_event(state, DevEvent::Serving);
                        }
                        self.notify_manager(master_state);
                    }
                    Action::Lingering {
                        pid,
                        slot,
                        generation,
                        kill_in,
                        ctrl_c_kills,
                    } => self.report_lingering(pid.0, slot, generation, kill_in, ctrl_c_kills),
                    Action::ResizeAnswered { request, answer } => {
                        if let Some(waiter) = state.resize_waiters.remove(&request) {
                            waiter.send(match answer {
                                ResizeAnswer::Resized => {
                                    ResizeOutcome::Resized(Box::new(self.status(state)))
                                }
                                ResizeAnswer::Superseded { size } => {
                                    ResizeOutcome::Superseded { size }
                                }
                                ResizeAnswer::Refused { why } => ResizeOutcome::Refused {
                                    why: why.to_owned(),
                                },
                            });
                        }
                    }
                    Action::ExitAnswered { request, reason } => {
                        if let Some(waiter) = state.exit_waiters.remove(&request) {
                            waiter.send(reason);
                        }
                    }
                    Action::RequestRoll => self.roll_requested(state, None),
                    Action::ProbeStarting { full, everyone } => {
                        pending.extend(self.probe_starting(state, full, everyone));
                    }
                    Action::CheckGroups { zombies } => {
                        pending.extend(self.gone_groups(state, zombies));
                    }
                    Action::ProbeRetiring { workers } => {
                        pending.extend(self.probe_retiring(&workers));
                    }
                    Action::Unseen { key, after } => pending.extend(self.unseen(state, key, after)),
                    Action::OpenListeners { generation } => {
                        if let Err(error) = self.generations.open(generation) {
                            output::master_line(&report::driver_line(
                                &DriverReport::ListenersShared {
                                    generation,
                                    error: &error,
                                },
                            ));
                            // Before the spawns' outcomes: no replacement is ready before it.
                            pending.push_front(Event::ListenersShared { generation });
                        }
                        self.listeners_changed();
                    }
                    Action::Steer { generation } => {
                        if let Err(error) = self.generations.steer(Some(generation)) {
                            output::master_line(&report::driver_line(
                                &DriverReport::SteeringFailed {
                                    generation,
                                    error: &error,
                                },
                            ));
                        }
                    }
                    Action::CloseListeners { generation } => {
                        if let Err(error) = self.generations.close(generation) {
                            output::master_line(&report::driver_line(
                                &DriverReport::ListenersNotClosed {
                                    generation,
                                    error: &error,
                                },
                            ));
                        }
                        self.listeners_changed();
                    }
                    Action::StopAccepting => {
                        if let Err(error) = self.generations.refuse_new() {
                            output::master_line(&report::driver_line(
                                &DriverReport::StillAccepting { error: &error },
                            ));
                        }
                    }
                    Action::ProbeDraining { workers } => {
                        pending.extend(self.probe_draining(&workers));
                    }
                    Action::Exit(reason) => state.exit = Some(reason),
                }
            }
            self.finish_spawns(state, &mut forked, &mut pending);
        }
    }

    /// Waits for the exec of each forked worker, in order: one that exec'd joins the running
    /// workers and the core hears its pid; one that failed is reaped, and the core hears why.
    fn finish_spawns(
        &mut self,
        state: &mut DriverState,
        forked: &mut Vec<ForkedWorker>,
        events: &mut VecDeque<Event>,
    ) {
        for ForkedWorker {
            key,
            forked,
            mut worker,
            channel_inode,
        } in forked.drain(..)
        {
            let pid = match forked.exec_result(Some(&mut self.guard)) {
                Ok(pid) => pid,
                Err(error) => {
                    events.push_back(Event::SpawnFailed {
                        key,
                        reason: crate::config::describe_spawn_error(&error),
                    });
                    continue;
                }
            };
            worker.pid = pid;
            worker.probe = self
                .probe
                .as_ref()
                .map(|_| readiness::Starting::new(pid, channel_inode));
            state.publish(
                &Lifecycle::Spawned {
                    slot: worker.slot,
                    pid,
                    generation: worker.generation,
                }
                .record(),
            );
            state.pids.insert(pid, key);
            state.workers.insert(key, worker);
            events.push_back(Event::Spawned { key, pid: Pid(pid) });
        }
    }

    /// Forks a worker (see [`Supervisor::finish_spawns`] for the rest): its notify socket,
    /// channel and output readers exist before, so that nothing can fail after the fork that
    /// would leave it running untracked with the listeners.
    fn fork(
        &mut self,
        state: &DriverState,
        forked: &[ForkedWorker],
        key: WorkerKey,
        slot: usize,
        generation: u64,
        size: usize,
    ) -> io::Result<ForkedWorker> {
        self.ensure_guard(state, forked)?;
        let notify = self.notify_dir.open(key, slot, self.events.clone())?;
        let listeners = self.generations.for_generation(generation);
        let (channel, channel_end) = WorkerChannel::open(key, self.events.clone())?;
        let names: Vec<&str> = listeners.iter().map(Listener::name).collect();
        let mut env = self.spec.env.clone();
        let per_worker = [
            ("LISTEN_FDS", listeners.len().to_string()),
            ("LISTEN_FDNAMES", names.join(":")),
            ("NOTIFY_SOCKET", notify.path().display().to_string()),
            ("MCLUSTER_WORKER_ID", slot.to_string()),
            ("MCLUSTER_GENERATION", generation.to_string()),
            ("MCLUSTER_WORKERS", size.to_string()),
        ];
        for (name, value) in per_worker {
            env.push(CString::new(format!("{name}={value}")).map_err(io::Error::other)?);
        }
        // The readers start before the fork: once a worker runs, nothing can fail that would
        // leave it running untracked with the listeners.
        let (worker_output, stderr_tail, output) =
            WorkerOutput::start(self.spec.silent, slot, generation)?;
        let mut fds: Vec<BorrowedFd<'_>> = vec![state.devnull.as_fd()];
        fds.extend(worker_output.worker_fds());
        fds.extend(listeners.iter().map(AsFd::as_fd));
        // The channel's end goes right after the listeners (see `channel`), at the number the
        // fds before it leave.
        let channel_fd = fds.len();
        fds.push(channel_end.as_fd());
        for (name, value) in [
            ("MCLUSTER_CHANNEL_FD", channel_fd.to_string()),
            ("NODE_CHANNEL_FD", channel_fd.to_string()),
            ("NODE_CHANNEL_SERIALIZATION_MODE", "json".to_owned()),
        ] {
            env.push(CString::new(format!("{name}={value}")).map_err(io::Error::other)?);
        }
        let program = self.program_for(generation)?;
        let argv: Vec<CString> = std::iter::once(program.argv0.clone())
            .chain(self.spec.args.iter().cloned())
            .collect();
        let channel_inode = nix::sys::stat::fstat(&channel_end)
            .ok()
            .map(|stat| stat.st_ino);
        let forked = fork_worker(
            &SpawnRequest {
                program: &program.path,
                argv: &argv,
                env: &env,
                fds: &fds,
            },
            Some(&self.guard),
        )?;
        drop(fds);
        drop(channel_end);
        // The worker holds the write ends now; ours must close for the readers to see EOF (and
        // before the next fork, which would hold them until its exec).
        drop(worker_output);
        Ok(ForkedWorker {
            key,
            forked,
            channel_inode,
            worker: RunningWorker {
                slot,
                pid: 0,
                generation,
                status: None,
                probe: None,
                notify,
                channel,
                stderr_tail,
                output,
            },
        })
    }

    /// The executable of a generation; a new generation takes the latest.
    fn program_for(&mut self, generation: u64) -> io::Result<Program> {
        if let Some(program) = self.spec.generations.get(&generation) {
            return Ok(program.clone());
        }
        let latest = self
            .spec
            .latest
            .clone()
            .ok_or_else(|| io::Error::other("nothing was built yet"))?;
        self.spec.generations.insert(generation, latest.clone());
        Ok(latest)
    }

    /// Generations older than every slot's no longer start workers.
    fn forget_old_generations(&mut self) {
        let oldest = self.cluster.oldest_generation_in_use();
        let newer = self.spec.generations.split_off(&oldest);
        let older = std::mem::replace(&mut self.spec.generations, newer);
        self.discard_unused_builds(older.into_values());
    }

    /// Signals a worker's whole group: a shell wrapper that does not `exec` passes nothing on,
    /// so the app behind it must hear the stop signal itself (as systemd's
    /// `KillMode=control-group` does). Only what is still known to be ours: a worker not yet
    /// reaped, or the group of one whose leader was reaped while others of its group lived on
    /// (until that group is seen gone). Anything else gets no signal.
    fn send_signal(&self, state: &DriverState, pid: Pid, kind: StopKind) {
        let signal = match kind {
            StopKind::Graceful => self.spec.stop_signal,
            StopKind::Kill => Signal::SIGKILL,
        };
        let leader = if state.pids.contains_key(&pid.0) {
            Leader::Unreaped
        } else if state.groups.contains_key(&pid.0) {
            Leader::Reaped
        } else {
            return;
        };
        signal_worker(pid.0, leader, signal);
    }

    /// A snapshot of the master for [`Control::Status`].
    fn status(&self, state: &DriverState) -> Status {
        let by_pid: HashMap<i32, &RunningWorker> = state
            .workers
            .values()
            .map(|worker| (worker.pid, worker))
            .collect();
        let now = Instant::now();
        let tally = self.cluster.roll_tally();
        let workers = self
            .cluster
            .rows()
            .into_iter()
            .map(|row| {
                let pid = row.pid.map(|pid| pid.0);
                WorkerStatus {
                    slot: row.slot,
                    pid,
                    generation: row.generation,
                    state: row.state.name(),
                    uptime_ms: row.since.map(|since| status::millis(now - since)),
                    restarts: row.restarts,
                    rss_bytes: pid.and_then(status::rss_bytes),
                    status: pid
                        .and_then(|pid| by_pid.get(&pid))
                        .and_then(|worker| worker.status.clone()),
                }
            })
            .collect();
        Status {
            pid: std::process::id(),
            mode: if self.interactive() { "dev" } else { "start" },
            listeners: self
                .generations
                .for_generation(0)
                .iter()
                .map(|l| l.address().to_string())
                .collect(),
            size: self.cluster.size(),
            serving_generation: self.cluster.serving_generation(),
            rolling: self.cluster.is_rolling(),
            ready: self.cluster.all_ready(),
            uptime_ms: status::millis(state.started.elapsed()),
            rss_bytes: i32::try_from(std::process::id())
                .ok()
                .and_then(status::rss_bytes),
            rolls: RollCounts {
                started: tally.started,
                completed: tally.completed,
                aborted: tally.aborted,
            },
            last_roll: self.cluster.last_roll().map(|end| LastRoll {
                generation: end.generation,
                duration_ms: status::millis(end.elapsed),
                aborted: end.aborted.as_ref().map(ToString::to_string),
            }),
            workers,
        }
    }

    /// A size a resize may ask for: at least 1, within the bound.
    fn check_size(&self, size: usize) -> Result<(), String> {
        self.size_bound
            .check(size)
            .map_err(|why| format!("invalid size {size}: {why}"))
    }

    /// Publishes a roll's end, and answers whoever waits for it. An aborted roll's answer
    /// carries the failed worker's last stderr lines: when that worker has exited, its reader
    /// may still be draining the pipe on the loop, so the answer waits for it (at most 1 s) on
    /// a task of its own, never holding up the driver.
    fn roll_ended(state: &mut DriverState, end: &RollEnd) {
        state.publish(&Lifecycle::RollEnded(end).record());
        let waiters: Vec<Reply<RestartOutcome>> = end
            .requests
            .iter()
            .filter_map(|request| state.waiters.remove(request))
            .collect();
        if waiters.is_empty() {
            return;
        }
        let tail = match (&end.aborted, end.failed) {
            (Some(_), Some(pid)) => state.stderr_tail(pid.0),
            _ => None,
        };
        let Some((readers, tail)) = tail else {
            let outcome = report::restart_outcome(end, Vec::new());
            for waiter in waiters {
                waiter.send(outcome.clone());
            }
            return;
        };
        let end = end.clone();
        tokio::spawn(async move {
            readers
                .wait(after(Instant::now(), Duration::from_secs(1)))
                .await;
            let outcome = report::restart_outcome(&end, tail_lines(&tail));
            for waiter in waiters {
                waiter.send(outcome.clone());
            }
        });
    }

    /// A stopping worker still alive: one line, so that a wait is never unexplained.
    fn report_lingering(
        &self,
        pid: i32,
        slot: usize,
        generation: u64,
        kill_in: Option<Duration>,
        ctrl_c_kills: bool,
    ) {
        output::master_line(&report::driver_line(&DriverReport::Lingering(
            report::Lingering {
                worker: WorkerId {
                    slot,
                    pid: Some(Pid(pid)),
                    generation,
                },
                since: self.cluster.linger_note().unwrap_or_default(),
                connections: readiness::open_connections(pid),
                kill_in,
                ctrl_c_kills,
            },
        )));
    }

    fn notify_manager(&self, master_state: MasterState) {
        if !self.notify_manager {
            return;
        }
        let size = self.cluster.size();
        let message = match master_state {
            MasterState::Ready => format!("READY=1\nSTATUS={size} workers ready"),
            // `Type=notify-reload` wants the monotonic time with RELOADING=1.
            MasterState::Reloading => {
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                    .map(|t| Duration::from(t).as_micros())
                    .unwrap_or_default();
                format!("RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS=rolling {size} workers")
            }
            MasterState::Stopping => "STOPPING=1\nSTATUS=stopping".to_owned(),
        };
        let _ = crate::worker::notify(&message);
    }
}

/// The driver's handles, apart from the supervisor's settings.
pub(crate) struct DriverState {
    workers: HashMap<WorkerKey, RunningWorker>,
    exited: VecDeque<ExitedWorker>,
    /// The running workers' pids.
    pids: HashMap<i32, WorkerKey>,
    /// The process groups of exited workers that still have members, by the worker's pid.
    groups: HashMap<i32, Group>,
    /// Children that are no worker and no current build (a cancelled build), to reap.
    strays: Vec<i32>,
    /// The master is PID 1: every orphan in its namespace becomes its child, to reap.
    reap_all: bool,
    /// Who waits for the outcome of which roll request (numbered by the core).
    waiters: HashMap<u64, Reply<RestartOutcome>>,
    /// Dev mode: who waits for the outcome of the handle's roll request until it is made.
    roll_waiter: Option<Reply<RestartOutcome>>,
    /// Who follows the lifecycle events.
    subscribers: Vec<Subscriber>,
    /// Who waits for the answer to which resize request (numbered by the core).
    resize_waiters: HashMap<u64, Reply<ResizeOutcome>>,
    /// Who waits for the master to end, under which request (numbered by the core).
    exit_waiters: HashMap<u64, Reply<ExitReason>>,
    started: Instant,
    /// Whether the master had a controlling terminal when it started.
    had_terminal: bool,
    pub(crate) exit: Option<ExitReason>,
    devnull: File,
}

/// The rest of an exited worker's process group.
struct Group {
    /// How the worker itself ended.
    end: ProcessEnd,
}

/// How many exited workers' output readers and stderr tails are kept.
const EXITED_KEPT: usize = 32;

impl DriverState {
    /// The stderr tail of a worker, running or exited, with its readers (those of a running
    /// one are still reading: nothing to wait for).
    fn stderr_tail(&self, pid: i32) -> Option<(Readers, Tail)> {
        if let Some(worker) = self.workers.values().find(|worker| worker.pid == pid) {
            return Some((Readers::default(), Arc::clone(&worker.stderr_tail)));
        }
        self.exited
            .iter()
            .find(|exited| exited.pid == pid)
            .map(|exited| (exited.output.clone(), Arc::clone(&exited.stderr_tail)))
    }

    /// Sends a lifecycle event to every subscriber still listening.
    fn publish(&mut self, record: &Record) {
        publish_to(&mut self.subscribers, record);
    }

    /// A child that is no worker (a cancelled build) is reaped when it exits.
    pub(crate) fn adopt_stray(&mut self, pid: i32) {
        self.strays.push(pid);
    }

    fn remember_exited(&mut self, worker: RunningWorker) {
        if self.exited.len() == EXITED_KEPT {
            self.exited.pop_front();
        }
        self.exited.push_back(ExitedWorker {
            slot: worker.slot,
            pid: worker.pid,
            stderr_tail: worker.stderr_tail,
            output: worker.output,
        });
    }
}

/// Sends `record` to every follower that listens and keeps up; one that hung up or has
/// [`FOLLOWER_QUEUE`](crate::status::FOLLOWER_QUEUE) records unread is dropped, never waited for.
fn publish_to(followers: &mut Vec<Subscriber>, record: &Record) {
    followers.retain(|follower| follower.send(record));
}

/// Shows the last stderr lines of an exited worker (the one that never got ready), once its
/// reader has drained its pipe.
async fn report_stderr_tail(state: &mut DriverState, pid: i32) {
    let Some(index) = state.exited.iter().position(|exited| exited.pid == pid) else {
        return;
    };
    let Some(exited) = state.exited.remove(index) else {
        return;
    };
    // Its stderr reader may still be draining the pipe.
    exited
        .output
        .wait(after(Instant::now(), Duration::from_secs(2)))
        .await;
    for line in tail_lines(&exited.stderr_tail) {
        output::master_line(&report::driver_line(&DriverReport::StderrLine {
            slot: exited.slot,
            line: &line,
        }));
    }
}

/// The lines a stderr tail holds now.
fn tail_lines(tail: &Tail) -> Vec<String> {
    tail.lock()
        .map(|lines| lines.iter().cloned().collect())
        .unwrap_or_default()
}

/// A reaped child's pid and how it ended; `None` for a stop or continue report.
fn process_end(status: WaitStatus) -> Option<(i32, ProcessEnd)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ProcessEnd::Code(code))),
        WaitStatus::Signaled(pid, signal, _) => {
            Some((pid.as_raw(), ProcessEnd::Signal(signal as i32)))
        }
        _ => None,
    }
}

/// Whether a worker's process, the leader of its group, is still the master's child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// Not reaped yet: its pid is nobody else's (the kernel reuses a pid only once it is
    /// reaped), nor is the group it leads.
    Unreaped,
    /// Reaped while others of its group lived on: the group's id stays in use, and so nobody
    /// else's, while any process is in it; the pid alone may be someone else's already.
    Reaped,
}

/// Sends `signal` to the group `pgid`. The worker process itself too if it is still our child
/// but left its group (`setsid`): the group is gone then (ESRCH). ESRCH otherwise only means
/// the group is gone; its leader's exit is on the way as SIGCHLD, or the group is seen gone at
/// the next poll. Never the pid alone of a reaped leader: it may be another process's now.
fn signal_worker(pgid: i32, leader: Leader, signal: Signal) {
    let pgid = NixPid::from_raw(pgid);
    if killpg(pgid, signal) == Err(nix::errno::Errno::ESRCH) && leader == Leader::Unreaped {
        let _ = kill(pgid, signal);
    }
}

/// Whether any process is left in the process group `pgid` (one of another user counts).
fn group_exists(pgid: i32) -> bool {
    !matches!(
        killpg(NixPid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Whether this process has a controlling terminal (after a hangup it has none).
fn has_terminal() -> bool {
    File::open("/dev/tty").is_ok()
}

/// The tasks that turn the master's signals into [`Input::Signal`]; dropping it ends them.
pub(crate) struct Signals(Vec<tokio::task::AbortHandle>);

impl Drop for Signals {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts, on the loop `io_loop`, one task per signal that turns the master's signals into
/// [`Input::Signal`]. CHLD is always watched; the others only when `all` is set (an embedder
/// may handle them itself). A signal received while the same signal waits in the inbox only
/// counts there, so the inbox holds at most one input per signal however many arrive. Like
/// any handler, tokio's merges the signals that arrive between two turns of its task: a count
/// is of the signals seen apart, which two Ctrl-C of a person always are.
///
/// The handlers are installed before this returns, so that no child's exit is missed. They
/// stay installed for the life of the process (tokio's, as signal-hook's did): once the run has
/// ended and these tasks with it, a signal of the embedder's still reaches a handler it
/// installed before, and the master no longer hears it.
pub(crate) fn watch_signals(
    io_loop: &tokio::runtime::Handle,
    events: &ToDriver,
    all: bool,
) -> io::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut wanted = vec![SIGCHLD];
    if all {
        wanted.extend([SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGTTIN, SIGTTOU]);
    }
    let _entered = io_loop.enter();
    // Dropped on an error: the tasks started so far end.
    let mut signals = Signals(Vec::with_capacity(wanted.len()));
    for signal_number in wanted {
        let mut arrivals = signal(SignalKind::from_raw(signal_number))?;
        let count = Arc::new(AtomicU32::new(0));
        let events = events.clone();
        let task = io_loop.spawn(async move {
            while arrivals.recv().await.is_some() {
                if count.fetch_add(1, Ordering::AcqRel) == 0 {
                    let input = Input::Signal {
                        signal: signal_number,
                        count: Arc::clone(&count),
                    };
                    if events.send(input).is_err() {
                        return;
                    }
                }
            }
        });
        signals.0.push(task.abort_handle());
    }
    Ok(signals)
}

/// The live processes of the group of worker `pid` in a pass over `/proc` (none: not in the
/// pass, no live process left in its group); without a pass, the worker itself.
fn group_members(pass: Option<&procfs::Groups>, pid: Pid) -> Vec<i32> {
    match pass {
        Some(groups) => groups.get(&pid.0).cloned().unwrap_or_default(),
        None => vec![pid.0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    /// A process that blocks SIGUSR1, so that one sent to it stays pending where
    /// `/proc/PID/status` shows it, the moment `kill` returns. It stays in the test's process
    /// group: its pid is no group's id, as a reaped leader's number is once someone else's
    /// process took it.
    fn stranger() -> std::process::Child {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import signal, sys, time\n\
                 signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n\
                 print('blocked', flush=True)\n\
                 time.sleep(1000)",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "blocked\n");
        child
    }

    /// Whether SIGUSR1 is pending for the process `pid`.
    fn usr1_pending(pid: i32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let pending = status
            .lines()
            .find_map(|line| line.strip_prefix("ShdPnd:"))
            .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
            .unwrap();
        pending & (1 << (Signal::SIGUSR1 as i32 - 1)) != 0
    }

    /// The next input in `inbox`, within 10 s.
    fn next_input(inbox: &mut Inbox) -> Input {
        let deadline = after(Instant::now(), Duration::from_secs(10));
        loop {
            if let Ok(input) = inbox.try_recv() {
                return input;
            }
            assert!(Instant::now() < deadline, "no input");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A signal that arrives while the same signal waits in the inbox is counted there: the
    /// inbox holds one input per signal, however many arrive (issue 17). The signal is heard
    /// by a task on the loop, no thread of its own.
    #[test]
    fn a_signal_waiting_in_the_inbox_only_counts_the_next() {
        let (events, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        let io_loop = crate::http::IoLoop::handle().unwrap();
        let signals = watch_signals(&io_loop, &events, false).unwrap();
        let deadline = after(Instant::now(), Duration::from_secs(10));
        nix::sys::signal::raise(Signal::SIGCHLD).unwrap();
        let Input::Signal { signal, count } = next_input(&mut inbox) else {
            panic!("expected a signal");
        };
        assert_eq!(signal, SIGCHLD);
        // Not handled yet: the next ones only count.
        for _ in 0..3 {
            let before = count.load(Ordering::Acquire);
            nix::sys::signal::raise(Signal::SIGCHLD).unwrap();
            while count.load(Ordering::Acquire) == before {
                assert!(Instant::now() < deadline, "the signal was not counted");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(count.load(Ordering::Acquire) >= 4);
        assert!(
            inbox.try_recv().is_err(),
            "a second input for a waiting signal"
        );
        // Handled: the next one is an input again.
        count.swap(0, Ordering::AcqRel);
        nix::sys::signal::raise(Signal::SIGCHLD).unwrap();
        assert!(matches!(
            next_input(&mut inbox),
            Input::Signal {
                signal: SIGCHLD,
                ..
            }
        ));
        // Dropped: its tasks end, and with them their senders.
        drop(signals);
        drop(events);
        let deadline = after(Instant::now(), Duration::from_secs(10));
        while !matches!(
            inbox.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ) {
            assert!(Instant::now() < deadline, "the signal tasks did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A follower that does not read costs the master at most its queue: it is dropped once
    /// that is full (issue 17), while one that reads stays.
    #[test]
    fn a_follower_that_does_not_read_is_dropped() {
        let queue = crate::status::FOLLOWER_QUEUE;
        let (idle, unread) = std::sync::mpsc::sync_channel(queue);
        let (reading, read) = std::sync::mpsc::sync_channel(queue);
        let mut followers = vec![Subscriber::Channel(idle), Subscriber::Channel(reading)];
        for _ in 0..=queue {
            publish_to(&mut followers, &Record::Stopping);
            assert!(read.try_recv().is_ok());
        }
        assert_eq!(followers.len(), 1, "the idle follower is dropped");
        assert_eq!(unread.try_iter().count(), queue);
        assert!(unread.recv().is_err(), "its channel ends");
        publish_to(&mut followers, &Record::Stopping);
        assert!(read.try_recv().is_ok(), "the reading one stays");
    }

    /// Item 7 of issue 16: a signal for a worker whose leader was reaped goes to its group only,
    /// never to the pid alone, which may be another process's by now. A worker not yet reaped
    /// that left its group gets the signal itself: its pid is still ours.
    #[test]
    fn a_reaped_leader_s_pid_is_never_signalled_alone() {
        let mut other = stranger();
        let pid = i32::try_from(other.id()).unwrap();
        signal_worker(pid, Leader::Reaped, Signal::SIGUSR1);
        let reaped_leader_signalled = usr1_pending(pid);
        signal_worker(pid, Leader::Unreaped, Signal::SIGUSR1);
        let own_child_signalled = usr1_pending(pid);
        let _ = other.kill();
        let _ = other.wait();
        assert!(
            !reaped_leader_signalled,
            "a reaped leader's pid got the signal"
        );
        assert!(own_child_signalled, "an unreaped worker out of its group");
    }
}

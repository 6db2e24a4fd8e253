//! What a running master tells about itself: its status, the outcome of a restart, and its
//! lifecycle events. The library's [`Handle`](crate::master::Handle) returns these; the control
//! socket and the metrics endpoint serialize them.

use std::time::Duration;

use serde::Serialize;

pub(crate) use crate::procfs::rss_bytes;
/// The most records waiting for one follower of the master's events
/// ([`Handle::events`](crate::master::Handle::events)); one more ends its subscription.
pub(crate) const FOLLOWER_QUEUE: usize = 4096;

/// A snapshot of a running master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The master's process id.
    pub pid: u32,
    /// `start`, or `dev` (watching and rebuilding).
    pub mode: &'static str,
    /// The addresses the master listens on.
    pub listeners: Vec<String>,
    /// The configured number of workers.
    pub size: usize,
    /// The generation new slots run: the last one fully rolled in (0 before the first).
    pub serving_generation: u64,
    /// Whether a roll is in progress.
    pub rolling: bool,
    /// Whether every slot has a ready worker.
    pub ready: bool,
    /// Since the master started, in milliseconds.
    pub uptime_ms: u64,
    /// The master's resident memory, in bytes, where `/proc` tells it.
    pub rss_bytes: Option<u64>,
    /// Rolls started, completed and aborted since the master started.
    pub rolls: RollCounts,
    /// How the last roll ended, if one did.
    pub last_roll: Option<LastRoll>,
    /// One row per worker, and per slot waiting to restart one, by slot.
    pub workers: Vec<WorkerStatus>,
}

/// Counts of rolls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RollCounts {
    /// Rolls started.
    pub started: u64,
    /// Rolls that moved every slot to their generation.
    pub completed: u64,
    /// Rolls a failed replacement aborted.
    pub aborted: u64,
}

/// How the last roll ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRoll {
    /// The generation it rolled in (or tried to).
    pub generation: u64,
    /// From its start to its end, in milliseconds.
    pub duration_ms: u64,
    /// Why it was aborted; `None` when it completed.
    pub aborted: Option<String>,
}

/// One worker of a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// Its slot (`MCLUSTER_WORKER_ID`).
    pub slot: usize,
    /// Its process id; `None` for a slot backing off.
    pub pid: Option<i32>,
    /// Its generation.
    pub generation: u64,
    /// `starting`, `ready`, `stopping` or `backing off`.
    pub state: &'static str,
    /// Since it started, in milliseconds.
    pub uptime_ms: Option<u64>,
    /// Its slot's restarts after failures.
    pub restarts: u64,
    /// Its resident memory, in bytes, where `/proc` tells it.
    pub rss_bytes: Option<u64>,
    /// The last `STATUS=` text it sent.
    pub status: Option<String>,
}

/// The outcome of a resize asked for through a [`Handle`](crate::master::Handle) or the control
/// socket: every request gets one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResizeOutcome {
    /// Every slot of the new size has a ready worker: the master's status then.
    Resized(Box<Status>),
    /// Another size was asked for (a later resize, TTIN or TTOU) before this one was reached.
    Superseded {
        /// The size that won.
        size: usize,
    },
    /// Nothing was done: the size is 0 or beyond the bound, or the master is stopping.
    Refused {
        /// Why.
        why: String,
    },
}

/// The worker a message came from, as [`Master::on_message`](crate::master::Master::on_message)
/// receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// Its slot (`MCLUSTER_WORKER_ID`).
    pub slot: usize,
    /// Its process id.
    pub pid: i32,
    /// Its generation (`MCLUSTER_GENERATION`).
    pub generation: u64,
}

/// The outcome of a message sent through a [`Handle`](crate::master::Handle) or the control
/// socket (`mcluster send`), known at once: queued on the channel of every worker addressed,
/// or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    /// Queued on the channel of every worker addressed.
    Delivered {
        /// Their slots.
        slots: Vec<usize>,
    },
    /// Not queued for some (or any) worker addressed.
    Failed {
        /// Why, for each worker it failed for (one line).
        why: String,
        /// The slots of the workers it was queued for nevertheless.
        delivered: Vec<usize>,
    },
}

/// The outcome of a rolling restart asked for through a [`Handle`](crate::master::Handle) or the
/// control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestartOutcome {
    /// Every slot runs the new generation.
    Rolled {
        /// The generation rolled in.
        generation: u64,
        /// From the roll's start to its end, in milliseconds.
        duration_ms: u64,
    },
    /// A replacement failed: the roll stopped where it was.
    Aborted {
        /// The generation that was not rolled in.
        generation: u64,
        /// Which replacement failed and how (its exit status, the signal that killed it, or a
        /// missed ready deadline), and which slot runs which generation now.
        why: String,
        /// The failed replacement's last stderr lines.
        stderr: Vec<String>,
        /// The generation each slot runs now, slot 0 first.
        slots: Vec<u64>,
    },
    /// No roll answers the request.
    Refused {
        /// Why: the master is stopping, or has not started yet.
        why: String,
    },
}

impl RestartOutcome {
    /// Whether every slot runs the new generation.
    #[must_use]
    pub fn is_rolled(&self) -> bool {
        matches!(self, RestartOutcome::Rolled { .. })
    }
}

/// A lifecycle event of a running master, as `mcluster events` prints it (one JSON object per
/// line, with its kind in `event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// A worker process was started.
    WorkerSpawned {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: i32,
        /// Its generation.
        generation: u64,
    },
    /// A worker became ready.
    WorkerReady {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: Option<i32>,
        /// Its generation.
        generation: u64,
        /// The rule that made it ready.
        how: String,
    },
    /// A worker process exited.
    WorkerExited {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: i32,
        /// Its generation.
        generation: u64,
        /// How it ended (`exited with status 1`, `killed by signal SIGKILL`).
        end: String,
    },
    /// A worker sent a notify message (as the handler of
    /// [`Master::on_message`](crate::master::Master::on_message) sees them: a flood is cut
    /// short).
    Notify {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: i32,
        /// The message, as sent (`READY=1`, `STATUS=…`, several lines).
        message: String,
    },
    /// A worker sent a message on its channel (`MCLUSTER_CHANNEL_FD`, Node's `process.send`).
    Message {
        /// Its slot.
        slot: usize,
        /// Its process id.
        pid: i32,
        /// Its generation.
        generation: u64,
        /// The message, a JSON value.
        message: serde_json::Value,
    },
    /// A roll started.
    RollStarted {
        /// The generation it rolls in.
        generation: u64,
    },
    /// A roll ended.
    RollEnded {
        /// The generation it rolled in, or tried to.
        generation: u64,
        /// Whether every slot runs it.
        completed: bool,
        /// From its start to its end, in milliseconds.
        duration_ms: u64,
        /// Why it was aborted.
        aborted: Option<String>,
    },
    /// The master began to stop.
    Stopping,
}

/// Milliseconds, saturated, for the JSON of durations.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

//! mcluster runs a cluster of worker processes on listening sockets it owns, keeps them alive,
//! and replaces them one by one without dropping a request; in development it rebuilds the
//! project on every save and rolls the new build in.
//!
//! # Theory of operation
//!
//! ```text
//!   signals   child exits   notify sockets   handle   watcher   build
//!       \          |              |             |        |        /
//!        +---------+--------------+-------------+--------+-------+
//!                                  |  driver (supervisor): a task on the master's one
//!                                  v  I/O loop (a single-threaded tokio runtime)
//!             Event  --->  Cluster::handle(now, event)  --->  Vec<Action>
//!                          (the sans-IO core: all policy,     (Spawn, Signal, Report,
//!                           no syscalls, no clock)             Notify, Exit)
//! ```
//!
//! - `cluster` owns every decision: how many workers, what a roll does, when a crash becomes
//!   backoff, when a stop becomes SIGKILL. It takes time as an argument and returns actions.
//! - The driver owns every handle (children, pipes, sockets) and no decision about workers. It
//!   waits on one channel with the core's next deadline as a timer, turns what arrives into an
//!   event, and carries out the actions. A worker is its process group. It runs on the one
//!   thread that does all of the master's I/O (worker pipes, notify sockets, signals, the
//!   control socket, the HTTP servers): the master's threads are a small constant, whatever the
//!   number of workers or clients.
//! - `sys` is the only module with `unsafe`: fork/exec with the fds placed at 3.., the
//!   parent-death signal, the guard that kills every worker's group when the master dies,
//!   adopting inherited fds, and what differs between Linux, macOS and the BSDs.
//! - Dev mode adds two event sources, the debounced watcher and the build, and a second sans-IO
//!   core, `dev::lifecycle::DevCore`, with every decision of the build lifecycle (start, cancel on a
//!   save, the loop rule, the same binary), the reloads and the pages; a successful build is a
//!   roll of the same cluster core.
//! - The cores tell what happened as typed reports (slots, pids, durations, how a process
//!   ended), never as sentences: `report`, the one reporter, puts them in words for the terminal
//!   and derives from the same facts the lifecycle records that `mcluster events` prints as JSON.
//!
//! A roll, in five steps: (1) a new generation number; (2) spawn the replacements of the first
//! slots, up to the surge (all, by default); (3) when one is ready, send the stop signal to its
//! slot's old worker, and spawn the next replacement; (4) on until every slot is replaced; (5)
//! the new generation is the serving one. A replacement that exits or misses its ready deadline
//! aborts the roll: the replacements not yet ready are stopped, and the slots not yet replaced
//! keep their old workers.
//!
//! The worker side ([`worker`]) needs no feature beyond the default-less crate: depend on
//! `mcluster` with `default-features = false` to get only the helpers. The optional features
//! `hyper` and `axum` add `mcluster::serve`, a tokio server for workers that drains without
//! losing a request; `channel` (part of `master`) adds the worker's message channel to the
//! master, `mcluster::worker::channel()`, and `serde_json` with it.
#![cfg(unix)]

#[cfg(feature = "master")]
pub mod cli;
#[cfg(feature = "master")]
pub mod cluster;
#[cfg(feature = "master")]
mod config;
#[cfg(feature = "master")]
mod control;
#[cfg(feature = "master")]
mod listener;
#[cfg(feature = "master")]
pub mod master;
#[cfg(feature = "master")]
mod metrics;
#[cfg(feature = "master")]
mod readiness;
#[cfg(feature = "hyper")]
pub mod serve;
#[cfg(feature = "master")]
mod status;
pub mod worker;

#[cfg(feature = "master")]
mod builder;
#[cfg(feature = "master")]
mod channel;
#[cfg(feature = "master")]
mod dev;
#[cfg(feature = "master")]
mod handle;
#[cfg(feature = "master")]
mod http;
#[cfg(feature = "master")]
mod leftover;
#[cfg(feature = "master")]
mod livereload;
#[cfg(feature = "master")]
mod output;
#[cfg(feature = "master")]
mod procfs;
#[cfg(feature = "master")]
mod report;
#[cfg(feature = "master")]
mod sd_notify;
#[cfg(feature = "master")]
mod supervisor;
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "master")]
mod watch;

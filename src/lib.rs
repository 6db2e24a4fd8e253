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
//!                                  |  driver (supervisor): one loop, no async runtime
//!                                  v
//!             Event  --->  Cluster::handle(now, event)  --->  Vec<Action>
//!                          (the sans-IO core: all policy,     (Spawn, Signal, Log,
//!                           no syscalls, no clock)             Notify, Exit)
//! ```
//!
//! - [`cluster`] owns every decision: how many workers, what a roll does, when a crash becomes
//!   backoff, when a stop becomes SIGKILL. It takes time as an argument and returns actions.
//! - The driver owns every handle (children, pipes, sockets) and no policy. It waits on one
//!   channel with the core's next deadline as timeout, turns what arrives into an event, and
//!   carries out the actions.
//! - `sys` is the only module with `unsafe`: fork/exec with the fds placed at 3.., the
//!   parent-death signal, adopting inherited fds.
//! - Dev mode adds two event sources, the debounced watcher and the build; a successful build is
//!   a roll of the same core.
//!
//! A roll, in five steps: (1) a new generation number; (2) spawn the replacement of slot 0;
//! (3) when it is ready, send the stop signal to slot 0's old worker; (4) the same for slot 1,
//! 2, …; (5) when the last slot is replaced, the new generation is the serving one. A
//! replacement that exits or misses its ready deadline aborts the roll at that step, and the old
//! workers of the remaining slots keep serving.
//!
//! The worker side ([`worker`]) needs no feature beyond the default-less crate: depend on
//! `mcluster` with `default-features = false` to get only the helpers.
#![cfg(unix)]

#[cfg(feature = "master")]
pub mod cli;
#[cfg(feature = "master")]
pub mod cluster;
#[cfg(feature = "master")]
pub mod config;
#[cfg(feature = "master")]
pub mod control;
#[cfg(feature = "master")]
pub mod listener;
#[cfg(feature = "master")]
pub mod master;
#[cfg(feature = "master")]
pub mod metrics;
#[cfg(feature = "master")]
#[doc(hidden)]
pub mod readiness;
#[cfg(feature = "master")]
pub mod status;
pub mod worker;

#[cfg(feature = "master")]
mod builder;
#[cfg(feature = "master")]
mod dev;
#[cfg(feature = "master")]
mod notify;
#[cfg(feature = "master")]
mod output;
#[cfg(feature = "master")]
mod supervisor;
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "master")]
mod watch;

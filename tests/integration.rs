//! End-to-end tests of `mcluster start` and `mcluster dev`: real processes, real sockets, real signals.
//!
//! Every test starts its own master on `127.0.0.1:0` (or a unix socket in a temp dir), waits on
//! what the master prints with a generous deadline, and kills everything it started on the way
//! out, passing or not.
//!
//! - `start`   workers share the master's sockets; the environment contract (`LISTEN_*`,
//!   `NOTIFY_SOCKET`, `MCLUSTER_*`, signal mask, process group); unmodified apps (`listenfd`,
//!   strict Python); unix and named listeners; as PID 1 (in a PID namespace), orphans reaped
//! - `roll`    HUP rolls: every pid replaced, no request dropped, aborted rolls keep the old
//!   generation, bursts coalesce
//! - `resize`  TTIN / TTOU
//! - `crash`   restart after a crash, backoff of a crash loop, a first generation that never
//!   becomes ready
//! - `stop`    graceful and hard stops, the kill timeout, the stop signal, SIGKILL of the master
//! - `tree`    a worker is its process tree: shell wrappers without `exec` and background
//!   children through rolls, crashes, TTOU, stops and SIGKILL of the master; HUP after the
//!   terminal closed; an aborted roll never empties a slot; an embedder's children stay its own
//! - `environment` `--env` pairs once each, none of the master's service-manager variables
//!   (`WATCHDOG_PID`, …) in a worker; the master's pid in the listening lines
//! - `seccomp` where `close_range` fails (old kernels, seccomp profiles: ENOSYS, EPERM, EINVAL
//!   for `CLOSE_RANGE_CLOEXEC`): stops end, a killed master's trees die and the port is
//!   freed, workers and the guard hold only their own fds
//! - `guard`   the guard kills only what is the master's (a failed spawn's pid, reused by
//!   someone else's group, survives the master's stop) and is replaced when killed from outside
//! - `errors`  bad input: one line, non-zero exit, nothing spawned or left behind
//! - `output`  worker output prefixed by slot, long lines cut, the master's memory bounded;
//!   `--silent` (workers write to /dev/null)
//! - `socket_files` unix socket files (only a stale one replaced, the mode, racing masters, OS
//!   refusals) and the notify directory in `$TMPDIR` (swept after a killed master, with proof)
//! - `channel` the message channel: Node workers' `process.send` unmodified, `mcluster send
//!   --all`/`--slot`, a Python worker answered by an embedder's `on_message`, a flood, a line of
//!   100 MB and a worker that never reads kept bounded
//! - `library` the master embedded in a program: its `Handle`, `on_message`, signals off
//! - `dev`     `mcluster dev` on a copy of the bundled example project: edits served, broken
//!   builds keep the old generation, no failed request across reloads, `APP_ENV`, cancelled
//!   builds, `--no-build`, a watched directory removed and made again, what a save cannot fix
//!   (no cargo, options cargo refuses), the builds a killed master left, options in
//!   `Cargo.toml`
//! - `dev_workspace` `mcluster dev` on a copy of `fixtures/workspace` (an app, a path
//!   dependency, a build script, an `include_str!` template, an unrelated member): what the
//!   build reads is watched, from the member's directory and from the workspace root; `-- ARGS`
//!   reach the app; no roll for an unchanged binary; a build loop named and broken; a build
//!   waiting for cargo's lock
//! - `readiness` the probe behind `--ready auto` on real apps: blocked in `accept`, tokio and
//!   asyncio epolls, `poll` (socketserver) and `select` loops, a listener moved to another fd,
//!   a shell wrapper's child; holding the listener, or waiting on it for output only, is no sign
//! - `config`  `mcluster.toml` (flags over `MCLUSTER_*` over the file), unknown keys refused,
//!   `mcluster init`
//! - `browser` live reload in headless Chromium: a page follows every save by itself (the
//!   failed first build's page turns into the app, edits show after their switch, a broken
//!   build shows in an overlay)
//! - `http`    the dev master's HTTP servers against hostile and careless clients: fds bounded
//!   by never-read and closed streams, foreign origins and hosts refused, no open redirect,
//!   pages that never read do not hold up supervision
//! - `io_loop` the master's I/O on one loop: a few threads for 32 workers; a notify flood with
//!   the master's stderr unread leaves it small, replacing workers and answering `status`, and
//!   the dropped lines counted once stderr is read
//! - `control` the control socket and `mcluster status`, `restart`, `resize`, `stop`, `events`
//!   against real masters (rolls that fail, two masters on one socket, stale sockets, other
//!   users, bad and many clients), and the metrics endpoint scraped and parsed
//! - `systemd` the master as a systemd service: its own `READY=1` / `RELOADING=1` / `STOPPING=1`
//!   (never the workers' `NOTIFY_SOCKET`), socket activation with and without `LISTEN_PID`
//!
//! - `layout`  no module cycles in `src/` (read from the code's `crate::` paths)
//! - `hot_text` the master's production path laid out in front of the rest of its code
//!   (`link/hot-text.ld`), and the script still naming the crate's functions
//!
//! - `axum`    `mcluster::serve` in `examples/axum-app` (built here with the feature): no request
//!   lost across rolls under load (plain `axum::serve` counted beside it), SSE and WebSocket
//!   clients ended properly within 0.5 s, a panic answered with a 500 and its worker replaced
//!
//! The worker programs are in `fixtures/workers/` (see `support/fixture.rs`).

// The behaviour lives in Linux's processes, signals and /proc: the tests run there (other
// platforms are compile-checked for the crate itself, see the README's platform table).
#![cfg(target_os = "linux")]

mod support;

mod axum;
mod browser;
mod channel;
mod config;
mod control;
mod crash;
mod dev;
mod dev_workspace;
mod environment;
mod errors;
mod guard;
mod hot_text;
mod http;
mod io_loop;
mod layout;
mod library;
mod output;
mod readiness;
mod resize;
mod roll;
mod seccomp;
mod socket_files;
mod start;
mod stop;
mod systemd;
mod tree;

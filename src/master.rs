//! The master you can embed: the library form of `mcluster start`.
//!
//! ```no_run
//! use std::time::Duration;
//! use mcluster::master::{Master, Readiness};
//!
//! let master = Master::new("./target/release/my-server")
//!     .args(["--verbose"])
//!     .env("RUST_LOG", "info")
//!     .size(4)
//!     .listen("127.0.0.1:8080".parse().unwrap())
//!     .readiness(Readiness::Notify)
//!     .kill_timeout(Duration::from_secs(10))
//!     .on_notify(|worker, message| eprintln!("w{worker} says {message:?}"))
//!     .on_message(|from, message| {
//!         eprintln!("w{} sent {message}", from.slot);
//!         Some(serde_json::json!({"ack": true})) // the reply, to that worker
//!     });
//! let handle = master.handle();
//! std::thread::spawn(move || {
//!     std::thread::sleep(Duration::from_mins(1));
//!     handle.restart(); // a rolling restart, as SIGHUP does
//! });
//! let outcome = master.run().expect("the master could not start");
//! std::process::exit(outcome.exit_status());
//! ```

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

pub use crate::config::{Error, MAX_SIZE};
pub use crate::handle::{Handle, Waiter};
pub use crate::listener::{ListenAddr, ListenKind};
pub use crate::status::{
    LastRoll, Record, ResizeOutcome, RestartOutcome, RollCounts, SendOutcome, Sender, Status,
    WorkerStatus,
};

use crate::builder::BuildPlan;
use crate::cluster::{Backoff, Cluster, ClusterConfig, ExitReason, Hangup, NeverReady, Surge};
use crate::config::{self, SizeBound};
use crate::control::ControlServer;
use crate::dev::DevLoop;
use crate::handle::{Inbox, Input, ToDriver};
use crate::http::IoLoop;
use crate::listener::{Generations, Listener};
use crate::livereload::LiveReload;
use crate::metrics::MetricsServer;
use crate::output;
use crate::readiness;
use crate::report::{self, StartReport};
use crate::sd_notify::NotifyDir;
use crate::supervisor::{MessageHandler, NotifyHandler, Supervisor, WorkerSpec, watch_signals};
use crate::sys::Program;
use crate::watch::{self, WatchConfig};

/// When a starting worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// At `READY=1`, or when the master sees it accepting on one of its inherited listeners
    /// (Linux: blocked in `accept`, the listener in one of its epoll sets, or in its `poll`);
    /// only where that cannot be seen (no `/proc`), once it has been alive this long.
    Auto(Duration),
    /// As [`Auto`](Readiness::Auto), and also, wherever it runs, once it has been alive this
    /// long (`--ready-delay` given explicitly): for apps that accept in a way no probe sees.
    AutoOrDelay(Duration),
    /// Only at `READY=1`.
    Notify,
}

/// What dev mode adds to a master.
pub(crate) struct DevSettings {
    /// How to build; `None` for `--no-build`.
    pub(crate) plan: Option<BuildPlan>,
    /// What to watch; `None` in production mode (`APP_ENV`), where only the initial build runs.
    pub(crate) watch: Option<WatchConfig>,
    /// Clear the screen before each build.
    pub(crate) clear: bool,
    /// Where changed files are shown relative to: the watched directories.
    pub(crate) roots: Vec<PathBuf>,
    /// Where the live-reload channel listens; `None`: none (`--no-livereload`, production mode).
    pub(crate) livereload: Option<std::net::SocketAddr>,
    /// Directories of assets: their changes reload the pages with no build.
    pub(crate) assets: Vec<PathBuf>,
}

/// How a master's run ended.
pub type Outcome = ExitReason;

/// A cluster master: configure with the builder methods, then [`run`](Master::run).
pub struct Master {
    /// `None` in dev mode without a PROGRAM: the workers run what the build produces.
    program: Option<PathBuf>,
    dev: Option<DevSettings>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    listen: Vec<ListenAddr>,
    size: usize,
    silent: bool,
    signals: bool,
    readiness: Readiness,
    ready_timeout: Duration,
    kill_timeout: Duration,
    stop_signal: i32,
    watchdog: Option<Duration>,
    surge: Surge,
    steering: bool,
    on_notify: Option<NotifyHandler>,
    on_message: Option<MessageHandler>,
    control: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    events: ToDriver,
    inbox: Inbox,
}

impl Master {
    /// A master running `program` with the defaults of `mcluster start`: one worker per CPU
    /// available to the process, `127.0.0.1:3000` unless sockets are inherited or
    /// [`listen`](Master::listen) is called, automatic readiness after 1 s, a 60 s ready timeout,
    /// a 30 s kill timeout, SIGTERM to stop, and the master handling its signals.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self::with_program(Some(program.into()))
    }

    /// A master for dev mode: `program` is `None` when the workers run what the build produces.
    pub(crate) fn for_dev(program: Option<PathBuf>, dev: DevSettings) -> Self {
        let mut master = Self::with_program(program);
        master.dev = Some(dev);
        master
    }

    fn with_program(program: Option<PathBuf>) -> Self {
        let (events, inbox) = tokio::sync::mpsc::unbounded_channel();
        Self {
            program,
            dev: None,
            args: Vec::new(),
            env: Vec::new(),
            listen: Vec::new(),
            size: default_size(),
            silent: false,
            signals: true,
            readiness: Readiness::Auto(Duration::from_secs(1)),
            ready_timeout: Duration::from_mins(1),
            kill_timeout: Duration::from_secs(30),
            stop_signal: nix::libc::SIGTERM,
            watchdog: None,
            surge: Surge::All,
            steering: true,
            on_notify: None,
            on_message: None,
            control: None,
            metrics: None,
            events,
            inbox,
        }
    }

    /// Arguments passed to every worker.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for every worker (on top of the master's environment). Set
    /// again, a key keeps its last value. A variable mcluster sets for each worker or keeps from
    /// them (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`, `MCLUSTER_*`, `SYSTEMD_EXEC_PID`,
    /// `FDSTORE`, `JOURNAL_STREAM`), an empty key, or one with `=` or NUL makes
    /// [`run`](Master::run) fail with a usage error naming it.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How many workers to run.
    #[must_use]
    pub fn size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// Hides the workers' stdout and stderr.
    #[must_use]
    pub fn silent(mut self, silent: bool) -> Self {
        self.silent = silent;
        self
    }

    /// Whether the master handles HUP, INT, TERM, QUIT, TTIN and TTOU itself (the default).
    /// Without, use a [`Handle`].
    #[must_use]
    pub fn signals(mut self, signals: bool) -> Self {
        self.signals = signals;
        self
    }

    /// Adds a listening address.
    #[must_use]
    pub fn listen(mut self, addr: ListenAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// When a starting worker counts as ready.
    #[must_use]
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// A worker not ready this long after its start has failed.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a stopping worker has before SIGKILL reaches its process group.
    #[must_use]
    pub fn kill_timeout(mut self, timeout: Duration) -> Self {
        self.kill_timeout = timeout;
        self
    }

    /// The signal (by number) that asks a worker to stop.
    #[must_use]
    pub fn stop_signal(mut self, signal: i32) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Gives every worker `WATCHDOG_USEC`: a ready worker that then sends no `WATCHDOG=1` for
    /// this long is replaced (stopped like any worker, its slot restarted with backoff).
    #[must_use]
    pub fn watchdog(mut self, limit: Duration) -> Self {
        self.watchdog = Some(limit);
        self
    }

    /// How many replacements a roll starts at once (default: all). Ready workers never drop
    /// below the size either way; fewer at once costs less memory and CPU at the roll's peak.
    #[must_use]
    pub fn surge(mut self, surge: Surge) -> Self {
        self.surge = surge;
        self
    }

    /// Whether each generation gets listening sockets of its own on the TCP addresses the
    /// master binds, new connections going to the newest generation once its workers are
    /// ready, and each old worker stopped only once it has drained what its generation's
    /// sockets held (default: on, where the system allows it; see the README's guarantees). Off,
    /// every generation shares one socket per address, and an old worker may get connections
    /// until its stop signal.
    #[must_use]
    pub fn steering(mut self, on: bool) -> Self {
        self.steering = on;
        self
    }

    /// Called with the worker's slot and the text of every notify message it sends, in order.
    /// A worker that sends faster than the master handles them (more than 64 messages between
    /// two turns of its loop) has the rest counted in one line of the master's instead: its
    /// `READY=1`, `WATCHDOG=1`, `STOPPING=1` and latest `STATUS=` still count.
    ///
    /// It runs on the master's one I/O thread, in the supervision loop: it must return quickly
    /// (hand the message to a thread or a channel of your own for anything slow). While it runs,
    /// the master supervises nothing, serves no request and reads no worker's output; and it
    /// must never wait for this master (a [`Handle::status`], a [`Waiter::wait`]), which cannot
    /// answer before it returns.
    #[must_use]
    pub fn on_notify(mut self, handler: impl FnMut(usize, &str) + Send + 'static) -> Self {
        self.on_notify = Some(Box::new(handler));
        self
    }

    /// Called with every message a worker sends on its channel (a JSON value: see the README's
    /// "Writing a worker"; a Node worker's `process.send`), in order, with who sent it (slot,
    /// pid, generation: a draining worker of an old generation still has its messages
    /// delivered). What it returns, if anything, is the reply, sent to that worker alone; a
    /// reply the worker's channel cannot take (full: it does not read; closed) is dropped with
    /// one line of the master's. [`Handle::send`] and [`Handle::broadcast`] send at other times.
    ///
    /// It runs on the master's I/O thread, as [`on_notify`](Master::on_notify)'s handler does,
    /// with the same rules: return quickly, never wait for this master. A worker that sends
    /// faster than it returns is slowed down (its channel is read no further meanwhile), never
    /// the master.
    #[must_use]
    pub fn on_message(
        mut self,
        handler: impl FnMut(&Sender, serde_json::Value) -> Option<serde_json::Value> + Send + 'static,
    ) -> Self {
        self.on_message = Some(Box::new(handler));
        self
    }

    /// Answers `mcluster status`, `restart`, `resize`, `stop` and `events` on a unix socket at
    /// `path`, speaking the control protocol of the README's "Operating a running master" (the
    /// command line's default path is `$XDG_RUNTIME_DIR/mcluster/<hash>.sock`, or under `/tmp`,
    /// per working directory). Without, the master has no control socket.
    #[must_use]
    pub fn control(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = Some(path.into());
        self
    }

    /// Serves Prometheus metrics over HTTP at `addr` (`GET /metrics`; the README's "Metrics"
    /// lists them).
    #[must_use]
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics = Some(addr);
        self
    }

    /// A handle to control the running master from another thread.
    #[must_use]
    pub fn handle(&self) -> Handle {
        Handle::new(self.events.clone())
    }

    /// Validates the settings, binds the listeners, runs the cluster until it is stopped, and
    /// removes what it created. Bad input is an error before any worker is spawned.
    ///
    /// The cluster runs on the master's I/O thread (one for the whole process, shared by every
    /// master it runs); the calling thread waits for the end. Any thread may call it, a thread
    /// of a tokio runtime too (it then blocks that thread, as any blocking call does).
    pub fn run(self) -> Result<Outcome, Error> {
        // From here to the return, a stalled stderr or stdout never holds up supervision: lines
        // are queued, and dropped with a count when the queue is full.
        let _queued = output::Queued::start();
        let handle = self.handle();
        let bound = SizeBound::here();
        bound
            .check(self.size)
            .map_err(|why| Error::usage(format!("invalid --size {}: {why}", self.size)))?;
        // The same rule as the command line's: 0 only where it means "at once".
        if self.ready_timeout.is_zero() {
            return Err(Error::usage(
                "invalid --ready-timeout 0: a worker needs some time to get ready",
            ));
        }
        if self.watchdog.is_some_and(|limit| limit.is_zero()) {
            return Err(Error::usage(
                "invalid --watchdog 0: a worker needs some time between pings",
            ));
        }
        let stop_signal = nix::sys::signal::Signal::try_from(self.stop_signal)
            .map_err(|_| Error::usage(format!("invalid stop signal {}", self.stop_signal)))?;
        let latest = match &self.program {
            Some(program) => {
                let path = config::resolve_program(program)?;
                Some(Program {
                    path: c_string(path.as_os_str())?,
                    argv0: c_string(program.as_os_str())?,
                })
            }
            None if self.dev.as_ref().is_some_and(|dev| dev.plan.is_some()) => None,
            None => return Err(Error::usage("missing PROGRAM: nothing builds one either")),
        };
        let mut spec = WorkerSpec {
            latest,
            generations: BTreeMap::new(),
            args: self
                .args
                .iter()
                .map(|arg| c_string(arg))
                .collect::<Result<_, _>>()?,
            env: worker_environment(&self.env, self.watchdog)?,
            silent: self.silent,
            stop_signal,
        };
        let mut dev = None;
        let mut quiet = false;
        let livereload_address = self.dev.as_ref().and_then(|dev| {
            dev.watch.as_ref()?;
            dev.livereload
        });
        if let Some(settings) = self.dev {
            let mut dev_loop = DevLoop::new(
                settings.plan,
                settings.clear,
                settings.roots,
                settings.assets,
            );
            if let Some(watch_config) = settings.watch {
                let events = self.events.clone();
                dev_loop.watcher = Some(watch::watch(
                    watch_config,
                    move |changed| {
                        let _ = events.send(Input::Changed(changed));
                    },
                    |told| output::master_line(&report::watch_line(told)),
                )?);
                quiet = true;
            }
            dev = Some(dev_loop);
        }
        let mut listeners = Listener::inherited()?;
        let mut addresses = self.listen;
        if addresses.is_empty() && listeners.is_empty() {
            addresses.push(ListenAddr {
                name: None,
                kind: crate::listener::ListenKind::Tcp(([127, 0, 0, 1], 3000).into()),
            });
        }
        for addr in &addresses {
            // On an error, the listeners bound so far are dropped, which removes their files.
            listeners.push(Listener::bind_steerable(addr, self.steering)?);
        }
        // The first generation (the core's first number) serves on the listeners bound or
        // inherited; each roll opens its own when they can be steered.
        let generations = Generations::new(listeners, 1, self.steering);
        let listeners = generations.for_generation(1);
        // Before the listening lines: an unusable directory is then the one line of a failed start.
        let notify_dir = NotifyDir::create()?;
        // Servers on the I/O loop, talking to the supervision loop through a handle only.
        let control = match &self.control {
            Some(path) => Some(ControlServer::start(path, handle.clone())?),
            None => None,
        };
        let metrics = match self.metrics {
            Some(addr) => Some(MetricsServer::start(addr, handle)?),
            None => None,
        };
        let app: Vec<std::net::SocketAddr> = listeners
            .iter()
            .filter_map(|listener| listener.address().parse().ok())
            .collect();
        // Before the listening lines too: an address in use is the one line of a failed start.
        let livereload = livereload_address
            .map(|address| start_livereload(address, &app))
            .transpose()?;
        for listener in listeners.iter() {
            output::master_line(&report::start_line(&StartReport::Listening {
                address: listener.address(),
                master_pid: std::process::id(),
            }));
        }
        if let Some(why) = generations.why_not() {
            let why = if self.steering { why } else { "--no-steering" };
            output::master_line(&report::start_line(&StartReport::Shared { why }));
        }
        if let Some((live, moved_from)) = &livereload {
            if let Some(taken) = moved_from {
                output::master_line(&report::start_line(&StartReport::LiveReloadMoved {
                    taken: *taken,
                    address: live.address(),
                }));
            }
            output::master_line(&report::start_line(&StartReport::LiveReload {
                address: live.address(),
                script_tag: &live.script_tag(),
            }));
            // Workers get the script's URL, so that a template can include it in dev only.
            spec.env.push(c_string(OsStr::new(&format!(
                "MCLUSTER_LIVERELOAD={}",
                live.script_url()
            )))?);
        }
        if let Some(metrics) = &metrics {
            output::master_line(&report::start_line(&StartReport::Metrics {
                address: metrics.address(),
            }));
        }
        let io_loop = IoLoop::handle().map_err(|e| Error::io("cannot start the I/O loop", e))?;
        let signals = watch_signals(&io_loop, &self.events, self.signals)
            .map_err(|e| Error::io("cannot watch signals", e))?;
        let probing = !matches!(self.readiness, Readiness::Notify) && readiness::available();
        if let Readiness::Auto(delay) = self.readiness
            && !probing
        {
            output::master_line(&report::start_line(&StartReport::AcceptingUnseen {
                alive: delay,
            }));
        }
        let cluster = Cluster::new(ClusterConfig {
            size: self.size,
            ready_delay: match self.readiness {
                Readiness::Auto(_) if probing => None,
                Readiness::Auto(delay) | Readiness::AutoOrDelay(delay) => Some(delay),
                Readiness::Notify => None,
            },
            ready_timeout: self.ready_timeout,
            kill_timeout: self.kill_timeout,
            backoff: Backoff::default(),
            start_attempts: 3,
            watchdog: self.watchdog,
            // In dev mode the next save may fix a worker that never gets ready: wait for it.
            surge: self.surge,
            linger_note: Some(Duration::from_secs(2)),
            never_ready: if quiet {
                NeverReady::Wait
            } else {
                NeverReady::Exit
            },
            probe_starting: probing,
            steering: generations.steerable(),
            drain_settle: if generations.loopback_only() {
                crate::cluster::LOOPBACK_DRAIN_SETTLE
            } else {
                crate::cluster::DRAIN_SETTLE
            },
            // Dev mode watching files is an interactive session of its terminal.
            hangup: if quiet {
                Hangup::StopWithTerminal
            } else {
                Hangup::Roll
            },
        });
        // Forked before any worker, so that no worker is ever unknown to it.
        let guard = crate::sys::Guard::start()
            .map_err(|e| Error::io("cannot start the guard process", e))?;
        let inodes = readiness::ListenerInodes::of(&generations.all_fds())
            .map_err(|e| Error::io("cannot read the listeners' inodes", e))?;
        let supervisor = Supervisor {
            livereload: livereload.map(|(live, _)| live),
            building: None,
            probe: probing.then(|| inodes.clone()),
            inodes,
            guard,
            cluster,
            spec,
            generations,
            notify_dir,
            events: self.events,
            inbox: self.inbox,
            on_notify: self.on_notify,
            on_message: self.on_message,
            notify_manager: std::env::var_os("NOTIFY_SOCKET").is_some(),
            dev,
            quiet,
            size_bound: bound,
        };
        let outcome = drive(&io_loop, supervisor).map_err(|e| Error::io("the master failed", e));
        drop(signals);
        // Removes the control socket: from here on, nobody can mistake this master for a live one.
        drop(control);
        drop(metrics);
        drop(listeners);
        outcome
    }
}

/// Runs the driver as a task on the I/O loop, and waits on this thread until it ends. A panic
/// of the driver is this thread's again.
///
/// The loop's thread, not this one, runs it: the loop is the process's one (two masters of one
/// process share it), it outlives a run (the control socket's last replies and the readers'
/// last lines are written after the driver ends), and an embedder may call `run` from a thread
/// of its own tokio runtime, where no runtime can be driven.
fn drive(io_loop: &tokio::runtime::Handle, supervisor: Supervisor) -> std::io::Result<ExitReason> {
    if tokio::runtime::Handle::try_current().is_ok_and(|here| here.id() == io_loop.id()) {
        // It would wait for itself forever.
        return Err(std::io::Error::other(
            "Master::run was called on the master's own I/O loop",
        ));
    }
    let (done, ended) = mpsc::sync_channel(1);
    let driver = io_loop.spawn(async move {
        let mut supervisor = supervisor;
        let outcome = supervisor.run().await;
        (outcome, supervisor)
    });
    io_loop.spawn(async move {
        let _ = done.send(driver.await);
    });
    match ended.recv() {
        // Dropped here, on the caller's thread (see `Supervisor::run`).
        Ok(Ok((outcome, supervisor))) => {
            drop(supervisor);
            outcome
        }
        Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Ok(Err(_)) | Err(_) => Err(std::io::Error::other("the master's I/O loop stopped")),
    }
}

/// Starts the live-reload channel at `address`; when it is the `LiveReload` protocol's port and that is
/// taken (another dev master), on a free port: then with the address it was taken at, to say so.
fn start_livereload(
    address: std::net::SocketAddr,
    app: &[std::net::SocketAddr],
) -> Result<(LiveReload, Option<std::net::SocketAddr>), Error> {
    match LiveReload::start(address, app) {
        Ok(live) => Ok((live, None)),
        Err(error)
            if error.kind() == std::io::ErrorKind::AddrInUse
                && address.port() == crate::livereload::DEFAULT_PORT =>
        {
            let live = LiveReload::start(std::net::SocketAddr::new(address.ip(), 0), app)
                .map_err(|e| cannot_listen_for_livereload(address, &e))?;
            Ok((live, Some(address)))
        }
        Err(error) => Err(cannot_listen_for_livereload(address, &error)),
    }
}

/// The live-reload channel cannot listen: the one line of a failed start says how to run
/// without it, or elsewhere.
fn cannot_listen_for_livereload(address: std::net::SocketAddr, error: &std::io::Error) -> Error {
    let hint = std::io::Error::new(
        error.kind(),
        format!(
            "{}; give another --livereload address, or --no-livereload to run without live \
             reload",
            crate::config::describe_io(error)
        ),
    );
    Error::io(format!("cannot listen for live reload on {address}"), hint)
}

/// The CPU count available to this process, cgroup limits included.
#[must_use]
pub fn default_size() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn c_string(text: &OsStr) -> Result<CString, Error> {
    CString::new(text.as_bytes()).map_err(|_| {
        Error::usage(format!(
            "invalid argument {}: it contains a NUL byte",
            text.display()
        ))
    })
}

/// The environment every worker starts with (the per-worker variables come on top): the
/// master's, without [`config::WORKER_VARIABLES`] and [`config::MANAGER_VARIABLES`], with `extra` (a repeated key
/// once, its last value) and `WATCHDOG_USEC`. A reserved or malformed `extra` key is an error.
fn worker_environment(
    extra: &[(OsString, OsString)],
    watchdog: Option<Duration>,
) -> Result<Vec<CString>, Error> {
    environment_from(std::env::vars_os(), extra, watchdog)
}

fn environment_from(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[(OsString, OsString)],
    watchdog: Option<Duration>,
) -> Result<Vec<CString>, Error> {
    let mut chosen: Vec<(OsString, OsString)> = Vec::new();
    for (key, value) in extra {
        config::check_env(key, value)
            .map_err(|why| Error::usage(format!("invalid worker environment: {why}")))?;
        match chosen.iter_mut().find(|(chosen_key, _)| chosen_key == key) {
            Some(entry) => entry.1.clone_from(value),
            None => chosen.push((key.clone(), value.clone())),
        }
    }
    let mut vars: Vec<(OsString, OsString)> = Vec::new();
    for (key, value) in parent {
        // A key twice in the master's own environment: the master's getenv sees the first.
        let taken = chosen.iter().chain(&vars).any(|(other, _)| *other == key);
        if !taken && config::reserved_variable(&key).is_none() {
            vars.push((key, value));
        }
    }
    vars.extend(chosen);
    if let Some(limit) = watchdog {
        vars.push(("WATCHDOG_USEC".into(), limit.as_micros().to_string().into()));
    }
    vars.iter()
        .map(|(key, value)| {
            let mut entry = key.clone();
            entry.push("=");
            entry.push(value);
            c_string(&entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(key, value)| (OsString::from(key), OsString::from(value)))
            .collect()
    }

    fn entries(env: &[CString]) -> Vec<&str> {
        env.iter().map(|entry| entry.to_str().unwrap()).collect()
    }

    #[test]
    fn workers_get_none_of_the_masters_service_manager_variables() {
        let parent = pairs(&[
            ("PATH", "/bin"),
            ("WATCHDOG_PID", "1"),
            ("WATCHDOG_USEC", "30000000"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_PID", "1"),
            ("LISTEN_FDNAMES", "web"),
            ("SYSTEMD_EXEC_PID", "1"),
            ("FDSTORE", "16"),
            ("JOURNAL_STREAM", "8:1234"),
            ("MCLUSTER_WORKER_ID", "3"),
            ("INVOCATION_ID", "abc"),
        ]);
        let env = environment_from(parent.clone(), &[], None).unwrap();
        assert_eq!(entries(&env), ["PATH=/bin", "INVOCATION_ID=abc"]);
        let env = environment_from(parent, &[], Some(Duration::from_secs(2))).unwrap();
        assert_eq!(
            entries(&env),
            ["PATH=/bin", "INVOCATION_ID=abc", "WATCHDOG_USEC=2000000"]
        );
    }

    #[test]
    fn a_repeated_key_is_one_entry_with_its_last_value() {
        let parent = pairs(&[("A", "parent"), ("B", "parent"), ("B", "second")]);
        let extra = pairs(&[("A", "1"), ("C", "1"), ("A", "2")]);
        let env = environment_from(parent, &extra, None).unwrap();
        assert_eq!(entries(&env), ["B=parent", "A=2", "C=1"]);
    }

    #[test]
    fn a_reserved_or_malformed_key_is_a_usage_error_naming_it() {
        for (key, reason) in [
            ("MCLUSTER_WORKER_ID", "MCLUSTER_WORKER_ID is reserved"),
            ("LISTEN_FDS", "LISTEN_FDS is reserved"),
            ("WATCHDOG_PID", "WATCHDOG_PID is reserved"),
            ("", "the name is empty"),
            ("A=B", "'A=B': it contains '='"),
        ] {
            let error = environment_from(Vec::new(), &pairs(&[(key, "1")]), None).unwrap_err();
            assert_eq!(error.exit_status(), 2, "{error}");
            assert!(error.to_string().contains(reason), "{error}");
        }
    }

    #[test]
    fn run_refuses_a_reserved_env_key_before_it_binds_or_spawns() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listen: ListenAddr = format!("unix:{}", socket.display()).parse().unwrap();
        // Were the key accepted, these workers would exit at once, and the master with them.
        let error = Master::new("/bin/true")
            .env("LISTEN_FDS", "2")
            .size(1)
            .signals(false)
            .listen(listen)
            .readiness(Readiness::Notify)
            .run()
            .map(|outcome| outcome.exit_status())
            .unwrap_err();
        assert_eq!(error.exit_status(), 2, "{error}");
        assert!(
            error.to_string().contains("LISTEN_FDS is reserved"),
            "{error}"
        );
        assert!(!socket.exists());
    }

    #[test]
    fn run_refuses_zero_durations_that_cannot_mean_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listen: ListenAddr = format!("unix:{}", socket.display()).parse().unwrap();
        let master = || {
            Master::new("/bin/true")
                .size(1)
                .signals(false)
                .listen(listen.clone())
        };
        for (master, option) in [
            (master().ready_timeout(Duration::ZERO), "--ready-timeout 0"),
            (master().watchdog(Duration::ZERO), "--watchdog 0"),
        ] {
            let error = master.run().map(|o| o.exit_status()).unwrap_err();
            assert_eq!(error.exit_status(), 2, "{error}");
            assert!(error.to_string().contains(option), "{error}");
            assert!(!socket.exists());
        }
    }

    /// Two masters of one process share the one I/O loop, each with its own driver task, one
    /// of them run from a thread of a tokio runtime: both supervise, and both stop.
    #[test]
    fn two_masters_run_in_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let master = |name: &str| {
            let listen: ListenAddr = format!("unix:{}", dir.path().join(name).display())
                .parse()
                .unwrap();
            Master::new("/bin/sleep")
                .args(["1000"])
                .size(1)
                .signals(false)
                .listen(listen)
                .readiness(Readiness::AutoOrDelay(Duration::from_millis(50)))
        };
        let (first, second) = (master("a.sock"), master("b.sock"));
        let handles = [first.handle(), second.handle()];
        let followers: Vec<_> = handles.iter().map(Handle::events).collect();
        let runs = [
            std::thread::spawn(move || first.run().map(|outcome| outcome.exit_status())),
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(async move { second.run().map(|outcome| outcome.exit_status()) })
            }),
        ];
        for (follower, handle) in followers.iter().zip(&handles) {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match follower.recv_timeout(left) {
                    Ok(Record::WorkerReady { .. }) => break,
                    Ok(_) => {}
                    Err(error) => {
                        drop(handle.quit_hard());
                        panic!("no worker got ready: {error}");
                    }
                }
            }
            let status = handle.status().expect("a status");
            assert_eq!(status.size, 1);
        }
        for handle in &handles {
            assert_eq!(
                handle.quit().wait_timeout(Duration::from_secs(30)).unwrap(),
                Some(ExitReason::Stopped)
            );
        }
        for run in runs {
            assert_eq!(run.join().unwrap().unwrap(), 0);
        }
    }
}

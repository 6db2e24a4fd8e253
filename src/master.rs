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
//!     .on_message(|worker, message| eprintln!("w{worker} says {message:?}"));
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
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use crate::builder::BuildPlan;
use crate::cluster::{Backoff, Cluster, ClusterConfig, ExitReason, NeverReady};
use crate::config::{self, Error};
use crate::dev::DevLoop;
use crate::listener::{ListenAddr, Listener};
use crate::notify::NotifyDir;
use crate::output;
use crate::supervisor::{
    Control, Input, MessageHandler, Program, Supervisor, WorkerSpec, watch_signals,
};
use crate::watch::{self, WatchConfig};

/// The variables the master sets for each worker; the master's own values are not passed on.
const WORKER_VARIABLES: [&str; 8] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "MCLUSTER_WORKER_ID",
    "MCLUSTER_GENERATION",
    "MCLUSTER_WORKERS",
    "WATCHDOG_USEC",
];

/// When a starting worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// At `READY=1`, or once it has been alive this long.
    Auto(Duration),
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
    on_message: Option<MessageHandler>,
    events: Sender<Input>,
    inbox: Receiver<Input>,
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
        let (events, inbox) = mpsc::channel();
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
            on_message: None,
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

    /// Sets an environment variable for every worker (on top of the master's environment).
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

    /// Called with the worker's slot and the text of every notify message it sends.
    #[must_use]
    pub fn on_message(mut self, handler: impl FnMut(usize, &str) + Send + 'static) -> Self {
        self.on_message = Some(Box::new(handler));
        self
    }

    /// A handle to control the running master from another thread.
    #[must_use]
    pub fn handle(&self) -> Handle {
        Handle {
            events: self.events.clone(),
        }
    }

    /// Validates the settings, binds the listeners, runs the cluster until it is stopped, and
    /// removes what it created. Bad input is an error before any worker is spawned.
    pub fn run(self) -> Result<Outcome, Error> {
        if self.size == 0 {
            return Err(Error::usage(
                "invalid --size 0: the cluster needs at least one worker",
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
        let spec = WorkerSpec {
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
        if let Some(settings) = self.dev {
            let mut dev_loop = DevLoop::new(settings.plan, settings.clear, settings.roots);
            if let Some(watch_config) = settings.watch {
                let events = self.events.clone();
                dev_loop.watcher = Some(watch::watch(watch_config, move |changed| {
                    let _ = events.send(Input::Changed(changed));
                })?);
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
            listeners.push(Listener::bind(addr)?);
        }
        // Before the listening lines: an unusable directory is then the one line of a failed start.
        let notify_dir = NotifyDir::create()?;
        for listener in &listeners {
            output::master_line(&format!("listening on {}", listener.address()));
        }
        let signals = watch_signals(self.events.clone(), self.signals)
            .map_err(|e| Error::io("cannot watch signals", e))?;
        let cluster = Cluster::new(ClusterConfig {
            size: self.size,
            ready_delay: match self.readiness {
                Readiness::Auto(delay) => Some(delay),
                Readiness::Notify => None,
            },
            ready_timeout: self.ready_timeout,
            kill_timeout: self.kill_timeout,
            backoff: Backoff::default(),
            start_attempts: 3,
            watchdog: self.watchdog,
            // In dev mode the next save may fix a worker that never gets ready: wait for it.
            never_ready: if quiet {
                NeverReady::Wait
            } else {
                NeverReady::Exit
            },
        });
        // Forked before any worker, so that no worker is ever unknown to it.
        let guard = crate::sys::Guard::start()
            .map_err(|e| Error::io("cannot start the guard process", e))?;
        let supervisor = Supervisor {
            guard,
            cluster,
            spec,
            listeners: &listeners,
            notify_dir,
            events: self.events,
            inbox: self.inbox,
            on_message: self.on_message,
            notify_manager: std::env::var_os("NOTIFY_SOCKET").is_some(),
            dev,
            quiet,
        };
        let outcome = supervisor
            .run()
            .map_err(|e| Error::io("the master failed", e));
        signals.close();
        outcome
    }
}

/// Controls a running [`Master`] from any thread; each call is queued for the master's loop.
#[derive(Debug, Clone)]
pub struct Handle {
    events: Sender<Input>,
}

impl Handle {
    /// Sets the number of workers (at least 1).
    pub fn resize(&self, size: usize) {
        let _ = self.events.send(Input::Control(Control::Resize(size)));
    }

    /// Replaces every worker, one at a time, each only after its replacement is ready.
    pub fn restart(&self) {
        let _ = self.events.send(Input::Control(Control::Roll));
    }

    /// Stops gracefully: the stop signal, then SIGKILL after the kill timeout. `run` returns
    /// [`ExitReason::Stopped`].
    pub fn quit(&self) {
        let _ = self.events.send(Input::Control(Control::Quit));
    }

    /// SIGKILLs every worker. `run` returns [`ExitReason::Killed`].
    pub fn quit_hard(&self) {
        let _ = self.events.send(Input::Control(Control::QuitHard));
    }
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

fn worker_environment(
    extra: &[(OsString, OsString)],
    watchdog: Option<Duration>,
) -> Result<Vec<CString>, Error> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| !WORKER_VARIABLES.iter().any(|name| key == *name))
        .filter(|(key, _)| !extra.iter().any(|(extra_key, _)| extra_key == key))
        .collect();
    vars.extend(extra.iter().cloned());
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

//! The command line: clap types, turned into a [`Master`]; errors become one line and an exit
//! status.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::builder::{self, BuildPlan, MetadataTable};
use crate::cluster::Surge;
use crate::config::{self, Error};
use crate::listener::{ListenAddr, ListenKind};
use crate::master::{DevSettings, Master, Readiness, default_size};
use crate::output;
use crate::watch::WatchConfig;

/// Runs a cluster of worker processes on shared listening sockets.
#[derive(Debug, Parser)]
#[command(name = "mcluster", version, about, long_about = None)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Parses a command line (the program's name first), keeping which `dev` options it gives:
    /// they win over the project's `Cargo.toml` tables (a `Cli` from clap's own `parse` knows
    /// none, so the tables' options would win over its flags).
    pub(crate) fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        match (&mut cli.command, matches.subcommand()) {
            (Command::Dev(args), Some(("dev", sub))) => args.given = given_ids(sub),
            (Command::Start(args), Some(("start", sub))) => args.given = given_ids(sub),
            _ => {}
        }
        Ok(cli)
    }
}

/// The subcommands.
// Parsed once per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
// Each subcommand's arguments are built when it is the one used: a master does not run, and keep
// resident, the code that builds every other command's.
#[command(defer = true)]
pub(crate) enum Command {
    /// Run a cluster in production: N workers, crash restarts, rolling restarts on SIGHUP.
    #[command(override_usage = "mcluster start [OPTIONS] -- PROGRAM [ARGS]...")]
    Start(StartArgs),
    /// Run a cluster in development: rebuild on every save and roll the new build in.
    #[command(override_usage = "mcluster dev [OPTIONS] [-- ARGS...]")]
    Dev(DevArgs),
    /// Write a commented mcluster.toml (and, with --systemd, a service and a socket unit) here.
    Init(InitArgs),
    /// Show a running master and its workers.
    Status(StatusArgs),
    /// Roll every worker to a new generation; exit 0 only when every slot runs it.
    Restart(RestartArgs),
    /// Set the number of workers of a running master; return when every slot of the new size
    /// has a ready worker.
    Resize(ResizeArgs),
    /// Stop a running master; return when it is gone.
    Stop(StopArgs),
    /// Follow a running master's lifecycle events as JSON lines.
    Events(EventsArgs),
    /// Send a JSON message to a worker (--slot N) or every worker (--all) of a running master.
    Send(SendArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page (or write one per command into a directory).
    Man(ManArgs),
}

/// The options of `mcluster completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL", value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// The options of `mcluster man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write mcluster.1 and a mcluster-COMMAND.1 per command into DIR instead.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// How a client command finds the master.
// Doc comments here are `--help` text, where backticks would show.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// The master's control socket. [default: the one of the master started in this directory]
    #[arg(long, value_name = "PATH", env = "MCLUSTER_CONTROL")]
    pub(crate) control: Option<PathBuf>,

    /// Print the master's JSON reply instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The options of `mcluster init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Also write mcluster.service and mcluster.socket (systemd units to start from).
    #[arg(long)]
    pub(crate) systemd: bool,

    /// Where to write. [default: the working directory]
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// The options of `mcluster status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Where the master is, and how to print.
    #[command(flatten)]
    pub(crate) control: ControlArgs,

    /// Exit 0 only when every slot has a ready worker (a readiness probe); print only why not.
    #[arg(long)]
    pub(crate) ready: bool,
}

/// The options of `mcluster restart`.
#[derive(Debug, Args)]
pub(crate) struct RestartArgs {
    /// Where the master is, and how to print.
    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

/// The options of `mcluster resize`.
#[derive(Debug, Args)]
pub(crate) struct ResizeArgs {
    /// Where the master is, and how to print.
    #[command(flatten)]
    pub(crate) control: ControlArgs,

    /// The new number of workers.
    #[arg(value_name = "N", value_parser = utf8(config::parse_size), allow_negative_numbers = true)]
    pub(crate) size: usize,

    /// Return as soon as the master has taken the size, without waiting for it to be ready.
    #[arg(long)]
    pub(crate) no_wait: bool,
}

/// The options of `mcluster stop`.
#[derive(Debug, Args)]
pub(crate) struct StopArgs {
    /// Where the master is, and how to print.
    #[command(flatten)]
    pub(crate) control: ControlArgs,

    /// SIGKILL every worker instead of the stop signal and the kill timeout.
    #[arg(long)]
    pub(crate) hard: bool,
}

/// The options of `mcluster events`.
// `--json` is kept for the scripts that pass it to every command, and says it changes nothing.
// Set here rather than on the subcommand: the subcommands' arguments are added only when one is
// used (`defer`), so a change made from outside would find no `json` to change.
#[derive(Debug, Args)]
#[command(mut_arg("json", |arg| arg.help(
    "Changes nothing: events are JSON lines either way (accepted as every command does)"
)))]
pub(crate) struct EventsArgs {
    /// Where the master is (events are JSON lines either way).
    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

/// The options of `mcluster send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Where the master is, and how to print.
    #[command(flatten)]
    pub(crate) control: ControlArgs,

    /// The slot of the worker to send to (its newest worker, during a roll).
    #[arg(
        long,
        value_name = "N",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub(crate) slot: Option<usize>,

    /// Send to the worker of every slot.
    #[arg(long)]
    pub(crate) all: bool,

    /// The message: one JSON value.
    #[arg(value_name = "JSON", value_parser = parse_json)]
    pub(crate) message: serde_json::Value,
}

/// A command line's JSON value.
fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// Whether `--ready` waits for the worker's notification only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReadyMode {
    /// Ready at READY=1, when seen accepting on its listeners, or after --ready-delay alive.
    Auto,
    /// Ready only at READY=1.
    Notify,
}

/// The options of `mcluster start`.
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// The cluster's options.
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,

    /// The options given on the command line or in `MCLUSTER_*` variables (clap's ids), which
    /// win over the config file. Filled by [`Cli::try_parse_args`].
    #[arg(skip)]
    pub(crate) given: Vec<String>,

    /// The worker program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub(crate) program: Vec<OsString>,
}

/// The options `start` and `dev` share.
// Doc comments here are `--help` text, where backticks would show.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// Addresses to listen on.
    #[arg(
        short,
        long = "listen",
        value_name = "ADDR",
        value_parser = utf8(parse_listen),
        help = "Address to listen on: HOST:PORT, [V6]:PORT, :PORT or unix:PATH (socket mode 0600; \
                unix,mode=0660:PATH sets another), with an optional NAME= prefix for \
                LISTEN_FDNAMES. Repeatable. [default: 127.0.0.1:3000]"
    )]
    pub(crate) listen: Vec<ListenAddr>,

    /// Number of workers.
    #[arg(
        short = 'n',
        long,
        value_name = "N",
        value_parser = utf8(config::parse_size),
        allow_negative_numbers = true,
        env = "MCLUSTER_SIZE",
        help = "Number of workers. [default: the CPU count available]"
    )]
    pub(crate) size: Option<usize>,

    /// Environment variable for the workers. Repeatable; a repeated KEY gets its last VALUE. What
    /// mcluster sets for workers or withholds from them is refused: LISTEN_FDS, LISTEN_PID,
    /// LISTEN_FDNAMES, NOTIFY_SOCKET, WATCHDOG_USEC (see --watchdog), WATCHDOG_PID,
    /// MCLUSTER_WORKER_ID, MCLUSTER_GENERATION, MCLUSTER_WORKERS, SYSTEMD_EXEC_PID, FDSTORE,
    /// JOURNAL_STREAM.
    #[arg(
        short,
        long = "env",
        value_name = "KEY=VALUE",
        value_parser = clap::builder::OsStringValueParser::new()
            .try_map(|text| config::parse_env_pair(&text))
    )]
    pub(crate) env: Vec<(OsString, OsString)>,

    /// Do not show the workers' stdout and stderr.
    #[arg(long, env = "MCLUSTER_SILENT")]
    pub(crate) silent: bool,

    /// When a starting worker counts as ready: auto, at READY=1 or once it is seen accepting
    /// on one of its listeners (in accept, or waiting for them in epoll or poll, read from
    /// /proc), or after --ready-delay alive; notify, only at READY=1.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = ReadyMode::Auto, env = "MCLUSTER_READY")]
    pub(crate) ready: ReadyMode,

    /// With --ready auto: a worker alive this long counts as ready (0: at once). Without it, a
    /// worker is ready at READY=1 or when seen accepting on its listeners, and only where that
    /// cannot be seen (no /proc) after 1s.
    #[arg(long, value_name = "DUR", value_parser = utf8(config::parse_duration), allow_hyphen_values = true, env = "MCLUSTER_READY_DELAY")]
    pub(crate) ready_delay: Option<Duration>,

    /// A worker not ready by then has failed to start (at least 1ms).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = utf8(config::parse_nonzero_duration), allow_hyphen_values = true, env = "MCLUSTER_READY_TIMEOUT")]
    pub(crate) ready_timeout: Duration,

    /// How long a stopping worker has before SIGKILL (0: SIGKILL at once). [default: 30s; 5s
    /// for dev, where nothing is worth a long wait]
    #[arg(long, value_name = "DUR", value_parser = utf8(config::parse_duration), allow_hyphen_values = true, env = "MCLUSTER_KILL_TIMEOUT")]
    pub(crate) kill_timeout: Option<Duration>,

    /// How many replacements a roll starts at once: a count, a percentage of the size (25%), or
    /// all. Ready workers never drop below the size; each old worker stops as soon as its
    /// replacement is ready. [default: all]
    #[arg(long, value_name = "N|P%|all", value_parser = utf8(config::parse_surge), env = "MCLUSTER_SURGE")]
    pub(crate) surge: Option<Surge>,

    /// One listening socket per address for every generation: an old worker may then get new
    /// connections until its stop signal. By default each generation of workers gets sockets
    /// of its own on the TCP addresses the master binds, and an old worker stops only once new
    /// connections go elsewhere and it has drained what it held.
    #[arg(long, env = "MCLUSTER_NO_STEERING")]
    pub(crate) no_steering: bool,

    /// The signal that asks a worker to stop.
    #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = utf8(config::parse_signal), env = "MCLUSTER_STOP_SIGNAL")]
    pub(crate) stop_signal: i32,

    /// Give workers WATCHDOG_USEC: a ready worker that sends no WATCHDOG=1 for DUR is replaced
    /// (at least 1ms).
    #[arg(long, value_name = "DUR", value_parser = utf8(config::parse_nonzero_duration), allow_hyphen_values = true, env = "MCLUSTER_WATCHDOG")]
    pub(crate) watchdog: Option<Duration>,

    /// The control socket that mcluster status, restart, resize, stop and events talk to.
    /// [default: $XDG_RUNTIME_DIR/mcluster/HASH.sock, or /tmp/mcluster-UID/HASH.sock, HASH
    /// of the working directory]
    #[arg(long, value_name = "PATH", env = "MCLUSTER_CONTROL")]
    pub(crate) control: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT or :PORT).
    #[arg(long, value_name = "ADDR", value_parser = utf8(parse_metrics), env = "MCLUSTER_METRICS")]
    pub(crate) metrics: Option<SocketAddr>,

    /// A config file of options (TOML, the long option names as keys). [default: mcluster.toml
    /// in the working directory, if there is one] Options given as flags or in `MCLUSTER_*`
    /// variables win over it.
    #[arg(long, value_name = "PATH", env = "MCLUSTER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

/// The options of `mcluster dev`.
// Doc comments here are `--help` text, where backticks would show. Its flags are the command
// line's, one bool each.
#[allow(clippy::doc_markdown, clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
#[command(
    after_help = "Options can also live in Cargo.toml, under their long names: \
    [package.metadata.mcluster] (size = 2, listen = [\"127.0.0.1:8080\"], env = { RUST_LOG = \
    \"debug\" }, ...) or [workspace.metadata.mcluster]. Flags win."
)]
pub(crate) struct DevArgs {
    /// The cluster's options.
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,

    /// Extensions of the files that count, comma-separated (with a cargo build, every file
    /// the last build read counts too).
    #[arg(
        value_parser = utf8(text),
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "rs,toml"
    )]
    pub(crate) ext: Vec<String>,

    /// Quiet time after the last change before a rebuild (restarted by every change; 0: none).
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = utf8(config::parse_duration), allow_hyphen_values = true)]
    pub(crate) cooldown: Duration,

    /// Directories to watch.
    #[arg(
        short,
        long = "watch",
        value_name = "PATH",
        help = "A directory to watch. Repeatable. With a cargo build, in addition to the \
                workspace and every path dependency (from cargo metadata); with --build or \
                --no-build, instead of the package root."
    )]
    pub(crate) watch: Vec<PathBuf>,

    /// A glob of paths to ignore, matched against the path under its root and the file's
    /// name; no ignore file can bring it back. Repeatable. Ignored anyway: target/ (any
    /// directory with a CACHEDIR.TAG), $CARGO_TARGET_DIR, .git/, what .gitignore, .ignore,
    /// .git/info/exclude and git's global excludes file ignore, and editors' temporary files.
    #[arg(short, long = "ignore", value_name = "GLOB", value_parser = utf8(text))]
    pub(crate) ignore: Vec<String>,

    /// Poll for changes instead of inotify, every INTERVAL (at least 1ms). Automatic, every
    /// 500ms, on file systems inotify is blind on (9p, NFS, SMB, FUSE).
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "500ms", value_parser = utf8(config::parse_nonzero_duration), allow_negative_numbers = true)]
    pub(crate) poll: Option<Duration>,

    /// The binary to build and run.
    #[arg(long, value_name = "NAME", value_parser = utf8(text))]
    pub(crate) bin: Option<String>,

    /// The package to build.
    #[arg(short, long, value_name = "NAME", value_parser = utf8(text))]
    pub(crate) package: Option<String>,

    /// Build with the release profile.
    #[arg(long)]
    pub(crate) release: bool,

    /// Cargo features to enable.
    #[arg(long, value_name = "LIST", value_parser = utf8(text))]
    pub(crate) features: Option<String>,

    /// The Cargo.toml of the project.
    #[arg(long, value_name = "PATH")]
    pub(crate) manifest_path: Option<PathBuf>,

    /// Build with this shell command instead of cargo (needs a PROGRAM).
    #[arg(long, value_name = "CMD", conflicts_with = "no_build", value_parser = utf8(text))]
    pub(crate) build: Option<String>,

    /// Do not build: every change only rolls the workers (needs a PROGRAM).
    #[arg(long)]
    pub(crate) no_build: bool,

    /// Clear the screen before each build.
    #[arg(long)]
    pub(crate) clear: bool,

    /// Where the live-reload channel listens (its script reloads pages after each switch).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:35729",
        env = "MCLUSTER_LIVERELOAD_ADDR"
    )]
    pub(crate) livereload: std::net::SocketAddr,

    /// No live-reload channel, and no building page on the listeners (for apps that do not
    /// speak HTTP).
    #[arg(long)]
    pub(crate) no_livereload: bool,

    /// A directory of assets the app serves from disk at each request: a change there reloads
    /// the pages (a stylesheet in place) with no build and no roll, unless the build reads the
    /// file. Repeatable. [default: static, assets and public in the package root] (Files of
    /// templates/ in the package root, and of --ext, that the build does not read roll the
    /// workers with no build.)
    #[arg(long = "assets", value_name = "DIR")]
    pub(crate) assets: Vec<PathBuf>,

    /// The options given on the command line (clap's ids), which win over `Cargo.toml`'s
    /// `[package.metadata.mcluster]` and `[workspace.metadata.mcluster]`. Filled by
    /// [`Cli::try_parse_args`].
    #[arg(skip)]
    pub(crate) given: Vec<String>,

    /// After `--`: the app's arguments with a cargo build; the program and its arguments with
    /// `--build` or `--no-build`.
    #[arg(
        last = true,
        value_name = "ARGS",
        help = "With a cargo build (the default): the app's arguments, as with cargo run -- ARGS; \
                the workers run the executable cargo builds. With --build or --no-build: \
                PROGRAM [ARGS], the program the workers run."
    )]
    pub(crate) program: Vec<OsString>,
}

/// A value parser for a text option: `parse` on the text, and one that is not UTF-8 refused
/// naming the option (clap's own words name none).
fn utf8<T: Clone + Send + Sync + 'static>(
    parse: fn(&str) -> Result<T, String>,
) -> impl clap::builder::TypedValueParser<Value = T> {
    clap::builder::OsStringValueParser::new().try_map(move |value| match value.to_str() {
        Some(text) => parse(text),
        None => Err("it is not UTF-8 text".to_owned()),
    })
}

/// A text option as it is.
// The signature of a value parser.
#[allow(clippy::unnecessary_wraps)]
fn text(text: &str) -> Result<String, String> {
    Ok(text.to_owned())
}

fn parse_listen(text: &str) -> Result<ListenAddr, String> {
    text.parse()
}

fn parse_metrics(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<ListenAddr>() {
        Ok(ListenAddr {
            name: None,
            kind: ListenKind::Tcp(addr),
        }) => Ok(addr),
        Ok(_) => Err(format!(
            "invalid metrics address '{text}': expected HOST:PORT, [V6]:PORT or :PORT"
        )),
        Err(why) => Err(why.replacen("listen address", "metrics address", 1)),
    }
}

impl StartArgs {
    /// The master these options describe.
    pub(crate) fn into_master(mut self) -> Result<Master, Error> {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?;
        if let Some(file) = config_file(&cwd, self.cluster.config.as_deref())? {
            let (mut from_file, in_file) = parse_table(&file)?;
            for id in in_file {
                if !self.given.contains(&id) {
                    self.cluster.take_option(&mut from_file.cluster, &id);
                }
            }
        }
        let mut program = self.program.into_iter();
        let Some(name) = program.next() else {
            return Err(Error::usage(
                "missing PROGRAM: usage is mcluster start [OPTIONS] -- PROGRAM [ARGS]...",
            ));
        };
        self.cluster
            .configure(Master::new(name).args(program), KILL_TIMEOUT)
    }
}

/// `--kill-timeout` of `mcluster start` (and of `dev` in production mode).
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// `--kill-timeout` of `mcluster dev`: a developer waits for nothing in a stopping worker.
const DEV_KILL_TIMEOUT: Duration = Duration::from_secs(5);

impl ClusterArgs {
    /// Takes the option `id` (clap's id) of `other`; `false` if it is no cluster option.
    fn take_option(&mut self, other: &mut ClusterArgs, id: &str) -> bool {
        use std::mem::take;
        match id {
            "listen" => self.listen = take(&mut other.listen),
            "size" => self.size = other.size,
            "env" => self.env = take(&mut other.env),
            "silent" => self.silent = other.silent,
            "ready" => self.ready = other.ready,
            "ready_delay" => self.ready_delay = other.ready_delay,
            "ready_timeout" => self.ready_timeout = other.ready_timeout,
            "kill_timeout" => self.kill_timeout = other.kill_timeout,
            "surge" => self.surge = other.surge,
            "no_steering" => self.no_steering = other.no_steering,
            "stop_signal" => self.stop_signal = other.stop_signal,
            "watchdog" => self.watchdog = other.watchdog,
            "control" => self.control = other.control.take(),
            "metrics" => self.metrics = other.metrics,
            _ => return false,
        }
        true
    }

    fn configure(self, master: Master, kill_timeout: Duration) -> Result<Master, Error> {
        let size = self.size.unwrap_or_else(default_size);
        if size == 0 {
            return Err(Error::usage(
                "invalid --size 0: the cluster needs at least one worker",
            ));
        }
        let mut master = master
            .size(size)
            .silent(self.silent)
            .readiness(match self.ready {
                ReadyMode::Auto => match self.ready_delay {
                    Some(delay) => Readiness::AutoOrDelay(delay),
                    None => Readiness::Auto(Duration::from_secs(1)),
                },
                ReadyMode::Notify => Readiness::Notify,
            })
            .ready_timeout(self.ready_timeout)
            .kill_timeout(self.kill_timeout.unwrap_or(kill_timeout))
            .surge(self.surge.unwrap_or(Surge::All))
            .steering(!self.no_steering)
            .stop_signal(self.stop_signal);
        if let Some(limit) = self.watchdog {
            master = master.watchdog(limit);
        }
        master = master.control(match self.control {
            Some(path) => path,
            None => crate::control::default_path()?,
        });
        if let Some(addr) = self.metrics {
            master = master.metrics(addr);
        }
        for (key, value) in self.env {
            master = master.env(key, value);
        }
        for addr in self.listen {
            master = master.listen(addr);
        }
        Ok(master)
    }
}

/// Whether `APP_ENV` asks for dev mode: unset, empty, `dev` or `development`.
#[must_use]
pub(crate) fn is_dev_env(app_env: Option<&str>) -> bool {
    matches!(app_env, None | Some("" | "dev" | "development"))
}

impl DevArgs {
    /// The master these options describe; `APP_ENV` other than dev falls back to production.
    pub(crate) fn into_master(mut self) -> Result<Master, Error> {
        let app_env = std::env::var("APP_ENV").ok();
        let dev = is_dev_env(app_env.as_deref());
        let cwd = std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?;
        let package = package_root(&cwd, self.manifest_path.as_deref())?;
        let mut tables = match &package {
            Some(root) => {
                builder::mcluster_tables(self.manifest_path.as_deref(), &root.join("Cargo.toml"))
            }
            None => Vec::new(),
        };
        // The config file wins over the manifest's tables (the later ones win).
        tables.extend(config_file(&cwd, self.cluster.config.as_deref())?);
        self.take_file_options(&tables)?;
        // With cargo, what follows `--` is the app's arguments, as with `cargo run -- ARGS`.
        let uses_cargo = !self.no_build && self.build.is_none();
        let mut program = self.program.into_iter();
        let name = if uses_cargo { None } else { program.next() };
        if name.is_none() && !uses_cargo {
            let flag = if self.no_build {
                "--no-build"
            } else {
                "--build"
            };
            return Err(Error::usage(format!(
                "{flag} needs a PROGRAM to run: mcluster dev {flag} ... -- PROGRAM [ARGS]..."
            )));
        }
        if uses_cargo && package.is_none() {
            return Err(Error::usage(format!(
                "no Cargo.toml in {} or above: run mcluster dev in a cargo project, pass \
                 --manifest-path, or use --build CMD / --no-build with a PROGRAM",
                cwd.display()
            )));
        }
        let root = package.unwrap_or_else(|| cwd.clone());
        if !dev {
            if let Some(name) = &name {
                // A bad PROGRAM is the one line, not one after this mode's.
                config::resolve_program(Path::new(name))?;
            }
            output::master_line(&format!(
                "APP_ENV={}: production mode, as mcluster start (no watcher, no rebuilds)",
                app_env.unwrap_or_default()
            ));
            // `--build` or `--no-build` with a PROGRAM builds nothing here: as mcluster start.
            if let Some(name) = name {
                return self
                    .cluster
                    .configure(Master::new(name).args(program), KILL_TIMEOUT);
            }
        }
        let plan = if self.no_build {
            None
        } else if let Some(command) = self.build {
            Some(BuildPlan::Shell(command))
        } else {
            let mut args: Vec<OsString> = Vec::new();
            if let Some(bin) = &self.bin {
                args.extend(["--bin".into(), bin.into()]);
            }
            if let Some(package) = self.package {
                args.extend(["--package".into(), package.into()]);
            }
            if self.release {
                args.push("--release".into());
            }
            if let Some(features) = self.features {
                args.extend(["--features".into(), features.into()]);
            }
            if let Some(manifest) = &self.manifest_path {
                args.extend(["--manifest-path".into(), manifest.into()]);
            }
            Some(BuildPlan::Cargo {
                args,
                bin: self.bin,
            })
        };
        // With cargo: where cargo builds from (the workspace and every path dependency), and
        // the -w directories too. Otherwise the -w directories, or the package root.
        let from_cargo = if dev {
            plan.as_ref().and_then(BuildPlan::watch_roots)
        } else {
            None
        };
        let given = self.watch.iter().map(|path| cwd.join(path));
        let roots: Vec<PathBuf> = match from_cargo {
            Some(mut roots) => {
                roots.extend(given);
                roots
            }
            None if self.watch.is_empty() => vec![root],
            None => given.collect(),
        };
        let package = roots.first().cloned().unwrap_or_else(|| cwd.clone());
        let package = package_root(&cwd, self.manifest_path.as_deref())
            .ok()
            .flatten()
            .unwrap_or(package);
        // Assets matter only to pages that live reload.
        let assets: Vec<PathBuf> = if self.no_livereload {
            Vec::new()
        } else if self.assets.is_empty() {
            ["static", "assets", "public"]
                .iter()
                .map(|dir| package.join(dir))
                .collect()
        } else {
            self.assets.iter().map(|dir| cwd.join(dir)).collect()
        };
        // The package's templates count whatever their extension, as assets do: one the build
        // does not read (askama's are compiled in) is read by the app, which the dev core rolls
        // for.
        let mut counted = assets.clone();
        counted.push(package.join("templates"));
        let watch = dev.then(|| WatchConfig {
            assets: counted,
            roots: roots.clone(),
            extensions: self
                .ext
                .iter()
                .map(|ext| ext.trim_start_matches('.').to_owned())
                .collect(),
            ignore: self.ignore,
            cooldown: self.cooldown,
            poll: self.poll,
        });
        let settings = DevSettings {
            assets,
            livereload: (!self.no_livereload).then_some(self.livereload),
            plan,
            watch,
            clear: self.clear,
            roots,
        };
        let master = Master::for_dev(name.map(PathBuf::from), settings).args(program);
        let kill_timeout = if dev { DEV_KILL_TIMEOUT } else { KILL_TIMEOUT };
        self.cluster.configure(master, kill_timeout)
    }
}

impl DevArgs {
    /// Takes the options of the manifest tables (the later ones win) that the command line
    /// does not give.
    fn take_file_options(&mut self, tables: &[MetadataTable]) -> Result<(), Error> {
        let mut taken = self.given.clone();
        // Either one of these given means the other is not taken from a file.
        for (one, other) in [("build", "no_build")] {
            if taken.iter().any(|id| id == one || id == other) {
                taken.extend([one.to_owned(), other.to_owned()]);
            }
        }
        for table in tables.iter().rev() {
            let (mut from_file, given) = parse_table(table)?;
            // A table that builds one way (`build = "…"`, `no-build = true`) overrides the
            // other way below it; `no-build = false` says only "do build", whichever way.
            let picks_build = from_file.build.is_some() || from_file.no_build;
            for id in given {
                if !taken.contains(&id) {
                    self.take_option(&mut from_file, &id);
                    taken.push(id);
                }
            }
            if picks_build {
                taken.extend(["build".to_owned(), "no_build".to_owned()]);
            }
        }
        Ok(())
    }

    /// Takes the option `id` (clap's id: the field's name) of `other`.
    fn take_option(&mut self, other: &mut DevArgs, id: &str) {
        use std::mem::take;
        if self.cluster.take_option(&mut other.cluster, id) {
            return;
        }
        match id {
            "ext" => self.ext = take(&mut other.ext),
            "cooldown" => self.cooldown = other.cooldown,
            "watch" => self.watch = take(&mut other.watch),
            "ignore" => self.ignore = take(&mut other.ignore),
            "poll" => self.poll = other.poll,
            "bin" => self.bin = other.bin.take(),
            "package" => self.package = other.package.take(),
            "release" => self.release = other.release,
            "features" => self.features = other.features.take(),
            "build" => self.build = other.build.take(),
            "no_build" => self.no_build = other.no_build,
            "clear" => self.clear = other.clear,
            "livereload" => self.livereload = other.livereload,
            "no_livereload" => self.no_livereload = other.no_livereload,
            "assets" => self.assets = take(&mut other.assets),
            _ => {}
        }
    }
}

/// The options of one manifest table, parsed as the command line would be, and which of them
/// it gives.
fn parse_table(table: &MetadataTable) -> Result<(DevArgs, Vec<String>), Error> {
    let place = if table.section.is_empty() {
        table.manifest.display().to_string()
    } else {
        format!("[{}] of {}", table.section, table.manifest.display())
    };
    let invalid = |why: String| Error::usage(format!("invalid {place}: {why}"));
    let serde_json::Value::Object(entries) = &table.table else {
        return Err(invalid("not a table".to_owned()));
    };
    let base = table.manifest.parent().unwrap_or(Path::new("/"));
    let mut argv: Vec<OsString> = vec!["mcluster".into(), "dev".into()];
    // The flags set to `false` (clap's ids): given, at their default.
    let mut falses: Vec<String> = Vec::new();
    for (key, value) in entries {
        if !options::is_file_key(key) {
            return Err(Error::usage(format!("unknown key '{key}' in {place}")));
        }
        let scalar = |value: &serde_json::Value| match value {
            serde_json::Value::String(text) => Some(text.clone()),
            serde_json::Value::Number(number) => Some(number.to_string()),
            _ => None,
        };
        let mut values: Vec<String> = Vec::new();
        match value {
            serde_json::Value::Bool(true) => argv.push(format!("--{key}").into()),
            // The command line has no way to say "not this flag", but a file must have one:
            // `false` over a `true` in a table below it (or in the workspace's) wins.
            serde_json::Value::Bool(false) if may_be_false(key) => {
                falses.push(key.replace('-', "_"));
            }
            serde_json::Value::Object(vars) if key == "env" => {
                for (name, value) in vars {
                    let value = scalar(value)
                        .ok_or_else(|| invalid(format!("env.{name} is not a string")))?;
                    // `"A=B" = "c"` would become `A=B=c`: the variable A.
                    config::check_env(OsStr::new(name), OsStr::new(&value))
                        .map_err(|why| invalid(format!("env: {why}")))?;
                    values.push(format!("{name}={value}"));
                }
            }
            // No value at all is the default, without a word: no list can say "none" here.
            serde_json::Value::Array(items) if items.is_empty() => {
                return Err(invalid(format!(
                    "{key} = [] is empty: give at least one value, or leave {key} out for the \
                     default"
                )));
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    values.push(
                        scalar(item)
                            .ok_or_else(|| invalid(format!("{key} holds a non-string value")))?,
                    );
                }
            }
            other => values
                .push(scalar(other).ok_or_else(|| invalid(format!("{key} has an invalid value")))?),
        }
        for value in values {
            // A directory to watch or of assets is relative to the file, not to where mcluster
            // runs.
            let value = if key == "watch" || key == "assets" {
                base.join(value).into_os_string()
            } else {
                value.into()
            };
            let mut arg = OsString::from(format!("--{key}="));
            arg.push(value);
            argv.push(arg);
        }
    }
    let matches = Cli::command()
        .try_get_matches_from(argv)
        .map_err(|error| invalid(one_line(&error.render().to_string())))?;
    let Some(("dev", sub)) = matches.subcommand() else {
        return Err(invalid("not dev options".to_owned()));
    };
    let options = DevArgs::from_arg_matches(sub)
        .map_err(|error| invalid(one_line(&error.render().to_string())))?;
    let mut given = given_ids(sub);
    given.extend(falses);
    Ok((options, given))
}

/// Whether `key = false` has a meaning: the key is a flag (`silent`, `release`, `clear`,
/// `no-build`), off by default, or an option whose value is optional and off by default
/// (`poll`: no polling).
fn may_be_false(key: &str) -> bool {
    let mut command = Cli::command();
    // The subcommands' arguments are there once built (they are deferred).
    command.build();
    command
        .find_subcommand("dev")
        .and_then(|dev| dev.get_arguments().find(|arg| arg.get_long() == Some(key)))
        .is_some_and(|arg| {
            !arg.get_action().takes_values()
                || arg.get_num_args().is_some_and(|n| n.min_values() == 0)
        })
}

/// The config file: `explicit` (`--config`, `MCLUSTER_CONFIG`), else `mcluster.toml` in `cwd`
/// if there is one. Its keys are the long option names, as in `[package.metadata.mcluster]`.
fn config_file(cwd: &Path, explicit: Option<&Path>) -> Result<Option<MetadataTable>, Error> {
    let path = if let Some(path) = explicit {
        cwd.join(path)
    } else {
        let default = cwd.join(CONFIG_FILE);
        // Anything by that name is the config file: only nothing at all is no config file.
        if std::fs::symlink_metadata(&default).is_err() {
            return Ok(None);
        }
        default
    };
    let text = read_config_file(&path).map_err(|why| {
        Error::usage(format!(
            "cannot read the config file {}: {why}",
            path.display()
        ))
    })?;
    let table: serde_json::Value = toml::from_str(&text).map_err(|e| {
        Error::usage(format!(
            "invalid config file {}: {}",
            path.display(),
            one_line(&e.to_string())
        ))
    })?;
    Ok(Some(MetadataTable {
        section: "",
        manifest: path,
        table,
    }))
}

/// The config file read from the working directory by default.
const CONFIG_FILE: &str = "mcluster.toml";

/// The largest config file read: far beyond any set of options, and a bound on what a wrong
/// path (`/dev/zero`, a log file) can cost.
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// The text of a config file, which must be a regular file (or a symbolic link to one) of at
/// most [`MAX_CONFIG_FILE`] bytes; otherwise what it is instead. A FIFO is opened without
/// waiting for a writer, and nothing is read from anything but a regular file.
fn read_config_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let describe = |e: &std::io::Error| config::describe_io(e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(
            |e| match (std::fs::read_link(path), std::fs::metadata(path)) {
                (Ok(target), _) if e.kind() == std::io::ErrorKind::NotFound => format!(
                    "it is a symbolic link to {}, which does not exist",
                    target.display()
                ),
                // A socket cannot be opened (ENXIO): say what it is.
                (_, Ok(meta)) if meta.file_type().is_socket() => {
                    "it is a socket, not a regular file".to_owned()
                }
                _ => describe(&e),
            },
        )?;
    let meta = file.metadata().map_err(|e| describe(&e))?;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("no regular file")
    };
    if let Some(what) = what {
        return Err(format!("it is {what}, not a regular file"));
    }
    let too_large = || format!("it is larger than {} KiB", MAX_CONFIG_FILE / 1024);
    if meta.len() > MAX_CONFIG_FILE {
        return Err(too_large());
    }
    // It may grow while read: never more than the limit.
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| describe(&e))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_owned())
}

/// `mcluster init`: a commented `mcluster.toml` (and, with `--systemd`, a unit and a socket
/// unit), each only where no file of its name exists: it writes what is missing and never
/// overwrites (`init --systemd` after `init` adds the units). Nothing missing is an error.
fn init(args: &InitArgs) -> ExitCode {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let mut files = vec![(CONFIG_FILE, options::template())];
    if args.systemd {
        files.push((
            "mcluster.service",
            include_str!("../templates/mcluster.service").to_owned(),
        ));
        files.push((
            "mcluster.socket",
            include_str!("../templates/mcluster.socket").to_owned(),
        ));
    }
    let mut lines = Vec::new();
    let mut kept = Vec::new();
    let mut failed = false;
    for (name, text) in files {
        let path = dir.join(name);
        // `create_new`: a file made since any check is not overwritten either.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
        match written {
            Ok(()) => lines.push(format!("wrote {}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                kept.push(path.display().to_string());
            }
            Err(error) => {
                lines.push(format!(
                    "error: cannot write {}: {}",
                    path.display(),
                    config::describe_io(&error)
                ));
                failed = true;
                break;
            }
        }
    }
    let wrote_any = lines.iter().any(|line| line.starts_with("wrote "));
    if !kept.is_empty() {
        let (are, them) = if kept.len() == 1 {
            ("exists", "it")
        } else {
            ("exist", "them")
        };
        let kept = kept.join(", ");
        lines.push(if wrote_any || failed {
            format!("kept {kept}: mcluster init never overwrites a file")
        } else {
            format!(
                "error: {kept} {are}: mcluster init never overwrites a file (remove {them} first)"
            )
        });
    }
    for line in &lines {
        output::master_line(line);
    }
    if wrote_any && !failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The ids of the options given on a command line (not defaults).
fn given_ids(matches: &ArgMatches) -> Vec<String> {
    matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// The directory of `--manifest-path`, or of the nearest `Cargo.toml` at or above `cwd`.
fn package_root(cwd: &Path, manifest: Option<&Path>) -> Result<Option<PathBuf>, Error> {
    if let Some(manifest) = manifest {
        let manifest = cwd.join(manifest);
        let problem = if manifest.file_name() != Some(OsStr::new("Cargo.toml")) {
            Some("cargo takes the path of a Cargo.toml")
        } else if manifest.is_dir() {
            Some("it is a directory")
        } else if !manifest.is_file() {
            Some("no such file")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::usage(format!(
                "invalid --manifest-path {}: {problem}",
                manifest.display()
            )));
        }
        return Ok(Some(manifest.parent().unwrap_or(cwd).to_path_buf()));
    }
    Ok(cwd
        .ancestors()
        .find(|dir| dir.join("Cargo.toml").is_file())
        .map(Path::to_path_buf))
}

/// The `mcluster` command: parses `std::env::args`, runs, and returns the exit status.
#[must_use]
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => return clap_error(&error),
    };
    let result = match cli.command {
        Command::Start(args) => args.into_master().and_then(Master::run),
        Command::Dev(args) => args.into_master().and_then(Master::run),
        Command::Init(args) => return init(&args),
        Command::Status(args) => return client::status(&args),
        Command::Restart(args) => return client::restart(&args),
        Command::Resize(args) => return client::resize(&args),
        Command::Stop(args) => return client::stop(&args),
        Command::Events(args) => return client::events(&args),
        Command::Send(args) => return client::send(&args),
        Command::Completions(args) => {
            use clap::CommandFactory as _;
            let mut stdout = std::io::stdout().lock();
            clap_complete::generate(args.shell, &mut Cli::command(), "mcluster", &mut stdout);
            return ExitCode::SUCCESS;
        }
        Command::Man(args) => return man(&args),
    };
    match result {
        Ok(outcome) => ExitCode::from(u8::try_from(outcome.exit_status()).unwrap_or(1)),
        Err(error) => {
            output::master_line(&format!("error: {error}"));
            ExitCode::from(error.exit_status())
        }
    }
}

mod client;
mod options;

/// `mcluster man`: the page of `mcluster` on stdout, or every command's page into `--dir`
/// (made if missing), naming each file written.
fn man(args: &ManArgs) -> ExitCode {
    use clap::CommandFactory as _;
    // No page for clap's `help` command, so none links to it: `mcluster help` is `--help`.
    let command = Cli::command().disable_help_subcommand(true);
    let written = match &args.dir {
        Some(dir) => write_man_pages(command, dir),
        None => clap_mangen::Man::new(command)
            .render(&mut std::io::stdout().lock())
            .map(|()| Vec::new())
            .map_err(|e| Error::io("cannot write the man page", e)),
    };
    let (lines, status) = match written {
        Ok(paths) => (
            paths
                .iter()
                .map(|path| format!("wrote {}", path.display()))
                .collect(),
            ExitCode::SUCCESS,
        ),
        Err(error) => (
            vec![format!("error: {error}")],
            ExitCode::from(error.exit_status()),
        ),
    };
    for line in &lines {
        output::master_line(line);
    }
    status
}

/// Writes `mcluster.1` and a `mcluster-COMMAND.1` per command into `dir`, made if missing;
/// the paths written.
fn write_man_pages(mut command: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let failed = |e| {
        Error::io(
            format!("cannot write the man pages to {}", dir.display()),
            e,
        )
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    // Built, the commands have their display names: `mcluster-status`.
    command.build();
    let mut written = vec![
        clap_mangen::Man::new(command.clone())
            .generate_to(dir)
            .map_err(failed)?,
    ];
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        written.push(
            clap_mangen::Man::new(sub.clone())
                .generate_to(dir)
                .map_err(failed)?,
        );
    }
    Ok(written)
}

/// Help and version go out as clap renders them; an error becomes one line.
fn clap_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) || error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    output::master_line(&format!("error: {}", one_line(&error.render().to_string())));
    ExitCode::from(2)
}

/// Clap's rendered error as one line: the message, what it lists on the next lines (the
/// arguments not provided, `[possible values: …]`), and its tips after a `;`, all before the
/// usage. With no tip, a pointer to `--help` instead.
fn one_line(rendered: &str) -> String {
    let mut message = String::new();
    let mut tips: Vec<&str> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if message.is_empty() {
            message.push_str(line.strip_prefix("error: ").unwrap_or(line));
        } else if line.starts_with("tip: to pass '") {
            // "use '-- -1'": after `--` comes the PROGRAM, so this tip would run the value.
        } else if line.starts_with("tip:") {
            tips.push(line);
        } else {
            message.push(' ');
            message.push_str(line);
        }
    }
    if message.is_empty() {
        message.push_str("invalid arguments");
    }
    if tips.is_empty() {
        message.push_str(" (see mcluster --help)");
    }
    for tip in tips {
        message.push_str("; ");
        message.push_str(tip);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn start_takes_the_program_after_a_double_dash() {
        let cli = Cli::try_parse_from([
            "mcluster", "start", "-n", "2", "-l", ":0", "--", "app", "--port",
        ])
        .unwrap();
        let Command::Start(args) = cli.command else {
            panic!("expected start");
        };
        assert_eq!(args.cluster.size, Some(2));
        assert_eq!(args.program, ["app", "--port"]);
        assert_eq!(args.cluster.kill_timeout, None);
        assert_eq!(args.cluster.surge, None);
    }

    #[test]
    fn dev_takes_cargo_and_watch_options_and_an_optional_program() {
        let cli = Cli::try_parse_from([
            "mcluster",
            "dev",
            "--ext",
            "rs,html",
            "--cooldown",
            "150",
            "--poll",
            "--bin",
            "app",
        ])
        .unwrap();
        let Command::Dev(args) = cli.command else {
            panic!("expected dev");
        };
        assert_eq!(args.ext, ["rs", "html"]);
        assert_eq!(args.cooldown, Duration::from_millis(150));
        assert_eq!(args.poll, Some(Duration::from_millis(500)));
        assert_eq!(args.bin.as_deref(), Some("app"));
        assert!(args.program.is_empty());
        assert!(Cli::try_parse_from(["mcluster", "dev", "--build", "make", "--no-build"]).is_err());
    }

    #[test]
    fn the_systemd_unit_template_runs_a_valid_command() {
        let unit = include_str!("../templates/mcluster.service");
        let exec_start = unit
            .lines()
            .find_map(|line| line.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let words: Vec<&str> = exec_start.split_whitespace().collect();
        assert!(words[0].ends_with("/mcluster"), "{exec_start}");
        let cli = Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{exec_start}: {e}"));
        let Command::Start(args) = cli.command else {
            panic!("the unit runs mcluster start");
        };
        // systemd must wait longer than mcluster's own kill timeout.
        let timeout_stop: u64 = unit
            .lines()
            .find_map(|line| line.strip_prefix("TimeoutStopSec="))
            .and_then(|value| value.parse().ok())
            .expect("a TimeoutStopSec in seconds");
        assert!(
            Duration::from_secs(timeout_stop) > args.cluster.kill_timeout.unwrap_or(KILL_TIMEOUT)
        );
        for line in [
            "Type=notify",
            "KillMode=mixed",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} is missing");
        }
    }

    #[test]
    fn app_env_selects_dev_mode() {
        for dev in [None, Some(""), Some("dev"), Some("development")] {
            assert!(is_dev_env(dev), "{dev:?}");
        }
        for production in [Some("production"), Some("staging"), Some("prod")] {
            assert!(!is_dev_env(production), "{production:?}");
        }
    }

    /// The one line `mcluster` prints for a command line clap rejects.
    fn error_line(args: &[&str]) -> String {
        let mut command_line = vec!["mcluster"];
        command_line.extend(args);
        one_line(
            &Cli::try_parse_from(command_line)
                .unwrap_err()
                .render()
                .to_string(),
        )
    }

    #[test]
    fn clap_hints_stay_on_the_one_line() {
        assert_eq!(
            error_line(&["start", "--ready", "x", "--", "app"]),
            "invalid value 'x' for '--ready <MODE>' [possible values: auto, notify] \
             (see mcluster --help)"
        );
        assert_eq!(
            error_line(&["strat"]),
            "unrecognized subcommand 'strat'; tip: some similar subcommands exist: 'status', \
             'restart', 'start'"
        );
        // The tip to pass a value after `--` is left out: there, it would be the PROGRAM.
        assert_eq!(
            error_line(&["start", "--sizee", "3", "--", "app"]),
            "unexpected argument '--sizee' found; tip: a similar argument exists: '--size'"
        );
        let line = error_line(&["start", "-n", "-1", "--", "app"]);
        assert!(
            line.starts_with("invalid value '-1' for '--size <N>'"),
            "{line}"
        );
        let line = error_line(&["start"]);
        assert_eq!(
            line,
            "the following required arguments were not provided: <PROGRAM>... \
             (see mcluster --help)"
        );
        for args in [
            &["start", "--ready", "x", "--", "app"][..],
            &["strat"],
            &["start", "--kill-timeout", "-5s", "--", "app"],
            &["start", "--bogus"],
        ] {
            let line = error_line(args);
            assert!(!line.contains('\n') && !line.contains("Usage"), "{line}");
        }
    }

    #[test]
    fn every_duration_refuses_zero_unless_it_means_at_once() {
        let parse = |option: &str, value: &str| {
            Cli::try_parse_from(["mcluster", "dev", option, value, "--", "app"])
                .map(|_| ())
                .map_err(|e| one_line(&e.render().to_string()))
        };
        for option in ["--ready-delay", "--kill-timeout", "--cooldown"] {
            assert_eq!(parse(option, "0"), Ok(()), "{option}");
        }
        for option in ["--ready-timeout", "--watchdog", "--poll"] {
            let option_eq = format!("{option}=0");
            let error = Cli::try_parse_from(["mcluster", "dev", &option_eq, "--", "app"])
                .map(|_| ())
                .map_err(|e| one_line(&e.render().to_string()))
                .unwrap_err();
            assert!(
                error.contains(&format!("'{option} <")) || error.contains(&format!("'{option} [<")),
                "{error}"
            );
            assert!(error.contains("at least 1ms"), "{error}");
        }
        for option in [
            "--ready-delay",
            "--ready-timeout",
            "--kill-timeout",
            "--watchdog",
        ] {
            let error = parse(option, "-1s").unwrap_err();
            assert!(
                error.contains(option) && error.contains("negative"),
                "{error}"
            );
        }
    }

    /// Clap's own words for a value that is not UTF-8 named no option.
    #[test]
    fn a_value_that_is_not_utf8_is_refused_naming_the_option() {
        use std::os::unix::ffi::OsStringExt as _;
        let latin1 = OsString::from_vec(b"caf\xe9".to_vec());
        for (command, option) in [
            ("start", "--listen <ADDR>"),
            ("start", "--size <N>"),
            ("start", "--stop-signal <SIG>"),
            ("start", "--kill-timeout <DUR>"),
            ("start", "--surge <N|P%|all>"),
            ("start", "--metrics <ADDR>"),
            ("dev", "--cooldown <DUR>"),
            ("dev", "--ext <LIST>"),
            ("dev", "--ignore <GLOB>"),
            ("dev", "--bin <NAME>"),
            ("dev", "--package <NAME>"),
            ("dev", "--features <LIST>"),
            ("dev", "--build <CMD>"),
        ] {
            let flag = option.split(' ').next().unwrap();
            let args: Vec<OsString> = vec![
                "mcluster".into(),
                command.into(),
                flag.into(),
                latin1.clone(),
                "--".into(),
                "app".into(),
            ];
            let error = one_line(&Cli::try_parse_args(args).unwrap_err().render().to_string());
            assert_eq!(
                error,
                format!(
                    "invalid value 'caf\u{fffd}' for '{option}': it is not UTF-8 text \
                     (see mcluster --help)"
                )
            );
        }
        let args: Vec<OsString> = vec!["mcluster".into(), "resize".into(), latin1];
        let error = one_line(&Cli::try_parse_args(args).unwrap_err().render().to_string());
        assert!(error.contains("'<N>': it is not UTF-8 text"), "{error}");
    }

    #[test]
    fn the_manifest_path_is_a_cargo_toml_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "").unwrap();
        let manifest = dir.path().join("Cargo.toml");
        std::fs::create_dir(&manifest).unwrap();
        let missing = dir.path().join("missing/Cargo.toml");
        for (path, problem) in [
            (&other, "cargo takes the path of a Cargo.toml"),
            (&manifest, "it is a directory"),
            (&missing, "no such file"),
        ] {
            let error = package_root(dir.path(), Some(path))
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                format!("invalid --manifest-path {}: {problem}", path.display())
            );
        }
    }

    #[test]
    fn bad_values_name_the_flag_or_value() {
        for (argv, culprit) in [
            (vec!["--kill-timeout", "5x"], "5x"),
            (vec!["--env", "NOEQUALS"], "NOEQUALS"),
            (vec!["--listen", "nope"], "nope"),
            (vec!["--stop-signal", "BOGUS"], "BOGUS"),
        ] {
            let mut full = vec!["mcluster", "start"];
            full.extend(argv);
            full.extend(["--", "app"]);
            let error = Cli::try_parse_from(full).unwrap_err().to_string();
            assert!(error.contains(culprit), "{error}");
        }
    }

    fn table(section: &'static str, json: &str) -> MetadataTable {
        MetadataTable {
            section,
            manifest: PathBuf::from("/w/app/Cargo.toml"),
            table: serde_json::from_str(json).unwrap(),
        }
    }

    /// `mcluster dev ARGS` as `main` parses it.
    fn dev_args(args: &[&str]) -> DevArgs {
        let mut command_line = vec!["mcluster", "dev"];
        command_line.extend(args);
        let Command::Dev(dev) = Cli::try_parse_args(command_line).unwrap().command else {
            panic!("expected dev");
        };
        dev
    }

    #[test]
    fn cargo_toml_options_apply_unless_a_flag_gives_them() {
        let workspace = table(
            "workspace.metadata.mcluster",
            r#"{"size": 4, "ext": ["rs", "html"], "cooldown": "300ms", "release": true}"#,
        );
        let package = table(
            "package.metadata.mcluster",
            r#"{"size": 3, "listen": ["127.0.0.1:4000", "unix:/tmp/s"],
                "env": {"RUST_LOG": "debug", "N": 2}, "watch": ["../templates"],
                "poll": "200ms", "build": "make"}"#,
        );
        let mut args = dev_args(&["-n", "2", "--cooldown", "50", "--no-build", "--", "app"]);
        args.take_file_options(&[workspace, package]).unwrap();
        // Flags win; the package's table wins over the workspace's.
        assert_eq!(args.cluster.size, Some(2));
        assert_eq!(args.cooldown, Duration::from_millis(50));
        assert!(
            args.no_build && args.build.is_none(),
            "--no-build beats build"
        );
        assert_eq!(args.ext, ["rs", "html"]);
        assert!(args.release);
        assert_eq!(args.cluster.listen.len(), 2);
        assert_eq!(
            args.cluster.env,
            [
                (OsString::from("N"), OsString::from("2")),
                ("RUST_LOG".into(), "debug".into())
            ]
        );
        // Relative to the manifest.
        assert_eq!(args.watch, [PathBuf::from("/w/app/../templates")]);
        assert_eq!(args.poll, Some(Duration::from_millis(200)));
    }

    /// `false` in a table wins over `true` in the tables below it, for every key that may be
    /// `false`; it was dropped, so a `true` below could never be overridden.
    #[test]
    fn false_in_a_higher_table_wins_over_true_below() {
        let flags = |args: &DevArgs| {
            [
                args.cluster.silent,
                args.release,
                args.clear,
                args.no_build,
                args.poll.is_some(),
            ]
        };
        let keys = ["silent", "release", "clear", "no-build", "poll"];
        let all = |value: bool| {
            let entries: Vec<String> = keys
                .iter()
                .map(|key| format!("\"{key}\": {value}"))
                .collect();
            format!("{{{}}}", entries.join(", "))
        };
        // The package's table over the workspace's, and the config file over the package's.
        for (below, above) in [
            ("workspace.metadata.mcluster", "package.metadata.mcluster"),
            ("package.metadata.mcluster", ""),
        ] {
            let mut args = dev_args(&[]);
            args.take_file_options(&[table(below, &all(true)), table(above, &all(false))])
                .unwrap();
            assert_eq!(flags(&args), [false; 5], "{above} over {below}");
            // And `true` over `false`, as before.
            let mut args = dev_args(&[]);
            args.take_file_options(&[table(below, &all(false)), table(above, &all(true))])
                .unwrap();
            assert_eq!(flags(&args), [true; 5], "{above} over {below}");
        }
        // Each key on its own: only that one is turned off.
        for (index, key) in keys.iter().enumerate() {
            let mut args = dev_args(&[]);
            args.take_file_options(&[
                table("workspace.metadata.mcluster", &all(true)),
                table(
                    "package.metadata.mcluster",
                    &format!("{{\"{key}\": false}}"),
                ),
            ])
            .unwrap();
            let mut expected = [true; 5];
            expected[index] = false;
            assert_eq!(flags(&args), expected, "{key} = false");
        }
        // A flag still wins over a file's `false`.
        let mut args = dev_args(&["--silent", "--release"]);
        args.take_file_options(&[table("package.metadata.mcluster", &all(false))])
            .unwrap();
        assert!(args.cluster.silent && args.release);
        // A table that builds one way overrides the other way below it.
        let mut args = dev_args(&[]);
        args.take_file_options(&[
            table("workspace.metadata.mcluster", r#"{"no-build": true}"#),
            table("package.metadata.mcluster", r#"{"build": "make"}"#),
        ])
        .unwrap();
        assert!(!args.no_build && args.build.as_deref() == Some("make"));
        let mut args = dev_args(&[]);
        args.take_file_options(&[
            table("workspace.metadata.mcluster", r#"{"build": "make"}"#),
            table("package.metadata.mcluster", r#"{"no-build": false}"#),
        ])
        .unwrap();
        assert!(!args.no_build && args.build.as_deref() == Some("make"));
    }

    #[test]
    fn false_is_refused_where_it_means_nothing() {
        for key in ["size", "listen", "env", "build", "watchdog", "cooldown"] {
            let mut args = dev_args(&[]);
            let error = args
                .take_file_options(&[table(
                    "package.metadata.mcluster",
                    &format!("{{\"{key}\": false}}"),
                )])
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn bad_cargo_toml_options_name_the_key_and_the_file() {
        let error = |json: &str| {
            let mut args = dev_args(&[]);
            args.take_file_options(&[table("package.metadata.mcluster", json)])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error(r#"{"colour": true}"#),
            "unknown key 'colour' in [package.metadata.mcluster] of /w/app/Cargo.toml"
        );
        assert_eq!(
            error(r#"{"manifest-path": "x"}"#),
            "unknown key 'manifest-path' in [package.metadata.mcluster] of /w/app/Cargo.toml"
        );
        for (json, culprit) in [
            (r#"{"size": 0}"#, "'0'"),
            (r#"{"size": "many"}"#, "'many'"),
            (r#"{"cooldown": "5x"}"#, "'5x'"),
            (r#"{"env": {"LISTEN_FDS": "3"}}"#, "LISTEN_FDS"),
            (r#"{"listen": [["x"]]}"#, "listen"),
            (r#"{"listen": []}"#, "listen = [] is empty"),
            (r#"{"watch": []}"#, "watch = [] is empty"),
            (r#"{"env": {"A=B": "c"}}"#, "'A=B': it contains '='"),
            (r#"{"env": {"": "c"}}"#, "the name is empty"),
            ("[1]", "not a table"),
        ] {
            let error = error(json);
            assert!(
                error.starts_with("invalid [package.metadata.mcluster] of /w/app/Cargo.toml: ")
                    && error.contains(culprit),
                "{json}: {error}"
            );
        }
    }

    /// The `- item` lines right after the line `key:` in a YAML text.
    fn yaml_list(text: &str, key: &str) -> Vec<String> {
        text.lines()
            .skip_while(|line| line.trim() != key)
            .skip(1)
            .map_while(|line| line.trim().strip_prefix("- ").map(str::to_owned))
            .collect()
    }

    /// The deploy examples run commands mcluster takes, and their timeouts nest: mcluster's kill
    /// timeout ends before the container runtime's SIGKILL.
    #[test]
    fn the_deploy_examples_agree_with_the_command_line() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let kill_timeout = |argv: &[String]| -> Duration {
            match <Cli as clap::Parser>::try_parse_from(argv)
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
                .command
            {
                Command::Start(args) => args
                    .cluster
                    .kill_timeout
                    .expect("an explicit --kill-timeout"),
                other => panic!("{argv:?} is {other:?}, not mcluster start"),
            }
        };

        let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
        let exec_form = |instruction: &str| -> Vec<String> {
            let line = dockerfile
                .lines()
                .find_map(|line| line.strip_prefix(instruction))
                .unwrap_or_else(|| panic!("no {instruction}"));
            serde_json::from_str(line).unwrap()
        };
        let mut argv = exec_form("ENTRYPOINT ");
        argv.extend(exec_form("CMD "));
        // `docker stop` sends SIGKILL after 10 s.
        assert!(kill_timeout(&argv) < Duration::from_secs(10), "{argv:?}");

        let manifest = std::fs::read_to_string(root.join("kubernetes.yaml")).unwrap();
        let mut argv = yaml_list(&manifest, "command:");
        argv.extend(yaml_list(&manifest, "args:"));
        let grace: u64 = manifest
            .lines()
            .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds: "))
            .and_then(|value| value.parse().ok())
            .expect("terminationGracePeriodSeconds");
        let pre_stop = Duration::from_secs(5);
        assert!(manifest.contains(r#"command: ["sleep", "5"]"#));
        assert!(
            pre_stop + kill_timeout(&argv) < Duration::from_secs(grace),
            "{argv:?} and {grace} s"
        );
        for probe in [
            r#"command: ["mcluster", "status", "--ready"]"#,
            r#"command: ["mcluster", "status", "--json"]"#,
        ] {
            assert!(manifest.contains(probe), "{probe}");
            let argv: Vec<String> =
                serde_json::from_str(probe.strip_prefix("command: ").unwrap()).unwrap();
            assert!(matches!(
                <Cli as clap::Parser>::try_parse_from(&argv).map(|cli| cli.command),
                Ok(Command::Status(_))
            ));
        }
    }
}

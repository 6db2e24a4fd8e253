//! The command line: clap types, turned into a [`Master`]; errors become one line and an exit
//! status.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Error};
use crate::listener::ListenAddr;
use crate::master::{Master, Readiness, default_size};
use crate::output;

/// Runs a cluster of worker processes on shared listening sockets.
#[derive(Debug, Parser)]
#[command(name = "mcluster", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cluster in production: N workers, crash restarts, rolling restarts on SIGHUP.
    Start(StartArgs),
}

/// Whether `--ready` waits for the worker's notification only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadyMode {
    /// Ready at READY=1, or after --ready-delay alive.
    Auto,
    /// Ready only at READY=1.
    Notify,
}

/// The options of `mcluster start`.
// Doc comments here are `--help` text, where backticks would show.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Address to listen on: HOST:PORT, [V6]:PORT, :PORT or unix:PATH, with an optional NAME=
    /// prefix for LISTEN_FDNAMES. Repeatable. [default: 127.0.0.1:3000]
    #[arg(short, long = "listen", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Vec<ListenAddr>,

    /// Number of workers. [default: the CPU count available]
    #[arg(short = 'n', long, value_name = "N")]
    pub size: Option<usize>,

    /// Environment variable for the workers. Repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = config::parse_env_pair)]
    pub env: Vec<(String, String)>,

    /// Do not show the workers' stdout and stderr.
    #[arg(long)]
    pub silent: bool,

    /// When a starting worker counts as ready.
    #[arg(long, value_enum, default_value_t = ReadyMode::Auto)]
    pub ready: ReadyMode,

    /// With --ready auto: a worker alive this long counts as ready.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = config::parse_duration)]
    pub ready_delay: Duration,

    /// A worker not ready by then has failed to start.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = config::parse_duration)]
    pub ready_timeout: Duration,

    /// How long a stopping worker has before SIGKILL.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = config::parse_duration)]
    pub kill_timeout: Duration,

    /// The signal that asks a worker to stop.
    #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = config::parse_signal)]
    pub stop_signal: i32,

    /// The worker program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub program: Vec<OsString>,
}

fn parse_listen(text: &str) -> Result<ListenAddr, String> {
    text.parse()
}

impl StartArgs {
    /// The master these options describe.
    pub fn into_master(self) -> Result<Master, Error> {
        let mut program = self.program.into_iter();
        let Some(name) = program.next() else {
            return Err(Error::usage(
                "missing PROGRAM: usage is mcluster start [OPTIONS] -- PROGRAM [ARGS]...",
            ));
        };
        let size = self.size.unwrap_or_else(default_size);
        if size == 0 {
            return Err(Error::usage(
                "invalid --size 0: the cluster needs at least one worker",
            ));
        }
        let mut master = Master::new(name)
            .args(program)
            .size(size)
            .silent(self.silent)
            .readiness(match self.ready {
                ReadyMode::Auto => Readiness::Auto(self.ready_delay),
                ReadyMode::Notify => Readiness::Notify,
            })
            .ready_timeout(self.ready_timeout)
            .kill_timeout(self.kill_timeout)
            .stop_signal(self.stop_signal);
        for (key, value) in self.env {
            master = master.env(key, value);
        }
        for addr in self.listen {
            master = master.listen(addr);
        }
        Ok(master)
    }
}

/// The `mcluster` command: parses `std::env::args`, runs, and returns the exit status.
#[must_use]
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return clap_error(&error),
    };
    let result = match cli.command {
        Command::Start(args) => args.into_master().and_then(Master::run),
    };
    match result {
        Ok(outcome) => ExitCode::from(u8::try_from(outcome.exit_status()).unwrap_or(1)),
        Err(error) => {
            output::master_line(&format!("error: {error}"));
            ExitCode::from(error.exit_status())
        }
    }
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
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let message = first.strip_prefix("error: ").unwrap_or(first);
    output::master_line(&format!("error: {message} (see mcluster --help)"));
    ExitCode::from(2)
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
        let Command::Start(args) = cli.command;
        assert_eq!(args.size, Some(2));
        assert_eq!(args.program, ["app", "--port"]);
        assert_eq!(args.kill_timeout, Duration::from_secs(30));
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
}

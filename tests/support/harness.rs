//! A running `mcluster` master: its output as lines, the waits tests make on it, and cleanup.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::fixture::mcluster;
use super::process::{self, DEADLINE, is_alive, stat, wait_until_or};

/// Variables of the test's own environment that would change what the master does.
const SCRUBBED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "MCLUSTER_WORKER_ID",
    "MCLUSTER_GENERATION",
    "MCLUSTER_WORKERS",
    "MCLUSTER_CHANNEL_FD",
    "NODE_CHANNEL_FD",
    "NODE_CHANNEL_SERIALIZATION_MODE",
    "EXTRA",
    "MCLUSTER_CONFIG",
    "MCLUSTER_SIZE",
    "MCLUSTER_READY",
    "MCLUSTER_READY_DELAY",
    "MCLUSTER_READY_TIMEOUT",
    "MCLUSTER_KILL_TIMEOUT",
    "MCLUSTER_SURGE",
    "MCLUSTER_SILENT",
    "MCLUSTER_STOP_SIGNAL",
    "MCLUSTER_WATCHDOG",
    "MCLUSTER_METRICS",
    "ECHO_NO_READY",
];

/// How to start a master; [`MasterBuilder::start`] runs it.
#[must_use]
pub(crate) struct MasterBuilder {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// A program that runs first and execs `mcluster`, with its own arguments.
    wrapper: Option<(OsString, Vec<OsString>)>,
    /// A program that embeds the library's master, run instead of `mcluster`.
    embedder: Option<OsString>,
    /// The master's working directory (default: the test's).
    current_dir: Option<PathBuf>,
    /// Where the master's stdout goes instead of being collected.
    stdout: Option<Stdio>,
    /// Where the master's stderr goes instead of being collected.
    stderr: Option<Stdio>,
}

impl MasterBuilder {
    /// `mcluster` with exactly `args` (for bad-input tests).
    pub(crate) fn raw(args: &[&str]) -> Self {
        Self::with_args(args.iter().map(OsString::from).collect())
    }

    /// `mcluster start OPTIONS -- PROGRAM ARGS…` without checking that `options` choose the
    /// listeners: for a master that inherits its sockets (`LISTEN_FDS`, see
    /// [`MasterBuilder::via`]). Any other test uses [`Master::builder`].
    pub(crate) fn inheriting(options: &[&str], program: impl AsRef<OsStr>, args: &[&str]) -> Self {
        let mut all: Vec<OsString> = vec!["start".into()];
        all.extend(options.iter().map(OsString::from));
        all.push("--".into());
        all.push(program.as_ref().to_owned());
        all.extend(args.iter().map(OsString::from));
        Self::with_args(all)
    }

    /// `EMBEDDER ARGS…`: a program that embeds the library's master and prints what `mcluster`
    /// would, run instead of `mcluster`. Its stdin is the test's, through [`Master::send`].
    pub(crate) fn embedded(embedder: impl AsRef<OsStr>, args: &[impl AsRef<OsStr>]) -> Self {
        let mut builder = Self::with_args(args.iter().map(|a| a.as_ref().to_owned()).collect());
        builder.embedder = Some(embedder.as_ref().to_owned());
        builder
    }

    fn with_args(args: Vec<OsString>) -> Self {
        Self {
            args,
            env: Vec::new(),
            wrapper: None,
            embedder: None,
            current_dir: None,
            stdout: None,
            stderr: None,
        }
    }

    /// Runs the master in `dir`.
    pub(crate) fn current_dir(mut self, dir: &Path) -> Self {
        self.current_dir = Some(dir.to_owned());
        self
    }

    /// Sends the master's stdout to `stdout` instead of collecting it, for output too big to
    /// keep in the test's memory; [`Master::stdout_lines`] is then empty.
    pub(crate) fn stdout(mut self, stdout: impl Into<Stdio>) -> Self {
        self.stdout = Some(stdout.into());
        self
    }

    /// Sends the master's stderr to `stderr` instead of collecting it (a pipe the test does not
    /// read); [`Master::stderr_lines`] is then empty, and every wait on stderr fails: the test
    /// learns what the master does some other way (its control socket, `/proc`).
    pub(crate) fn stderr(mut self, stderr: impl Into<Stdio>) -> Self {
        self.stderr = Some(stderr.into());
        self
    }

    /// Sets `key=value` in the master's environment.
    pub(crate) fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.into(), value.as_ref().to_owned()));
        self
    }

    /// Runs `WRAPPER WRAPPER_ARGS… <mcluster> ARGS…` instead of `<mcluster> ARGS…`. The wrapper
    /// must exec the rest of its command line (in the same process), so that the process spawned
    /// is the master: its pid, signals, exit status and output are then the master's, and
    /// everything [`Master`] does applies. What the wrapper prints before the exec comes first
    /// in the master's output.
    pub(crate) fn via(
        mut self,
        wrapper: impl AsRef<OsStr>,
        wrapper_args: &[impl AsRef<OsStr>],
    ) -> Self {
        self.wrapper = Some((
            wrapper.as_ref().to_owned(),
            wrapper_args.iter().map(|a| a.as_ref().to_owned()).collect(),
        ));
        self
    }

    /// Spawns the master with its stdout and stderr collected line by line.
    #[track_caller]
    pub(crate) fn start(self) -> Master {
        let tmp = TempDir::new().unwrap();
        let (mut command, spawned) = match (&self.wrapper, &self.embedder) {
            (_, Some(embedder)) => (
                Command::new(embedder),
                embedder.to_string_lossy().into_owned(),
            ),
            (None, None) => (Command::new(mcluster()), "mcluster".to_owned()),
            (Some((wrapper, wrapper_args)), None) => {
                let mut command = Command::new(wrapper);
                command.args(wrapper_args).arg(mcluster());
                (command, wrapper.to_string_lossy().into_owned())
            }
        };
        command
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(self.stdout.unwrap_or_else(Stdio::piped))
            .stderr(self.stderr.unwrap_or_else(Stdio::piped))
            // Whatever the master keeps on disk goes here, so tests can see what it leaves.
            .env("TMPDIR", tmp.path())
            .env("XDG_RUNTIME_DIR", tmp.path())
            // Dev masters run side by side: each its own live-reload port.
            .env("MCLUSTER_LIVERELOAD_ADDR", "127.0.0.1:0");
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        command.envs(self.env);
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {spawned}: {e}"));
        let stdin = child.stdin.take();
        let stdout: Box<dyn Read + Send> = match child.stdout.take() {
            Some(pipe) => Box::new(pipe),
            None => Box::new(io::empty()),
        };
        let stdout = Output::collect(stdout, None);
        let workers = Arc::new(Mutex::new(Vec::new()));
        let stderr: Box<dyn Read + Send> = match child.stderr.take() {
            Some(pipe) => Box::new(pipe),
            None => Box::new(io::empty()),
        };
        let stderr = Output::collect(stderr, Some(Arc::clone(&workers)));
        Master {
            child,
            stdin,
            wrapper: self.wrapper.is_some().then_some(spawned),
            stdout,
            stderr,
            workers,
            status: None,
            tmp,
        }
    }
}

/// A worker as the master announced it: `mcluster: w<slot> ready (pid <pid>, generation <g>)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Worker {
    pub(crate) slot: usize,
    pub(crate) pid: i32,
    pub(crate) generation: u64,
}

impl Worker {
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("mcluster: w")?;
        let (slot, rest) = rest.split_once(" ready (pid ")?;
        let (pid, rest) = rest.split_once(", generation ")?;
        // `…, generation 2): READY=1` — the rule that made it ready follows.
        let (generation, _) = rest.split_once(')')?;
        Some(Self {
            slot: slot.parse().ok()?,
            pid: pid.parse().ok()?,
            generation: generation.parse().ok()?,
        })
    }
}

/// The pids of `workers`, in order.
pub(crate) fn pids(workers: &[Worker]) -> Vec<i32> {
    workers.iter().map(|w| w.pid).collect()
}

/// Processes seen, as (pid, start time): enough to kill the very process later, never another
/// one that got its pid.
type Seen = Arc<Mutex<Vec<(i32, u64)>>>;

/// A position in an output stream: waits after it look only at later lines.
pub(crate) type Mark = usize;

/// A running (or exited) `mcluster` master. Dropping it SIGKILLs the master and its workers.
pub(crate) struct Master {
    /// The master, or the wrapper that execs it: the same process.
    child: Child,
    /// The master's stdin, for an embedder's commands ([`Master::send`]).
    stdin: Option<ChildStdin>,
    /// The wrapper's name, if the master was started through one.
    wrapper: Option<String>,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    /// Every worker announced ready, identified by pid and start time (to kill it safely later).
    workers: Seen,
    status: Option<ExitStatus>,
    tmp: TempDir,
}

impl Master {
    /// Starts `mcluster start OPTIONS -- PROGRAM ARGS…`. `options` must choose the listeners
    /// (`-l 127.0.0.1:0`): no test may use the default port.
    #[track_caller]
    pub(crate) fn start(options: &[&str], program: impl AsRef<OsStr>, args: &[&str]) -> Self {
        Self::builder(options, program, args).start()
    }

    /// Like [`Master::start`], for tests that change the master's environment first.
    #[track_caller]
    pub(crate) fn builder(
        options: &[&str],
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> MasterBuilder {
        assert!(
            options
                .iter()
                .any(|o| matches!(*o, "-l" | "--listen") || o.starts_with("--listen=")),
            "tests must choose their listeners (`-l 127.0.0.1:0`), not the default port"
        );
        MasterBuilder::inheriting(options, program, args)
    }

    /// Starts the master and waits until its first generation of `size` workers is ready.
    #[track_caller]
    pub(crate) fn start_ready(
        options: &[&str],
        program: impl AsRef<OsStr>,
        args: &[&str],
        size: usize,
    ) -> (Self, Vec<Worker>) {
        let master = Self::start(options, program, args);
        let workers = master.wait_ready(size);
        (master, workers)
    }

    /// The master's pid (through a wrapper, the wrapper's: it execs the master).
    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// The directory given to the master as `TMPDIR` and `XDG_RUNTIME_DIR`.
    pub(crate) fn tmpdir(&self) -> &Path {
        self.tmp.path()
    }

    /// Writes `line` to the master's stdin (an embedder reads its commands there).
    #[track_caller]
    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the master's stdin");
        writeln!(stdin, "{line}").expect("write to the master's stdin");
    }

    /// Sends `signal` to the master.
    #[track_caller]
    pub(crate) fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the master");
    }

    /// Waits for `count` `mcluster: listening on <addr> (master pid <pid>)` lines and returns
    /// the addresses.
    #[track_caller]
    pub(crate) fn listening(&self, count: usize) -> Vec<String> {
        let mut mark = 0;
        (0..count)
            .map(|_| {
                let (next, line) = self.wait_for_stderr_after(mark, "mcluster: listening on ");
                mark = next;
                let rest = &line["mcluster: listening on ".len()..];
                rest.rsplit_once(" (master pid ")
                    .map_or(rest, |(addr, _)| addr)
                    .to_owned()
            })
            .collect()
    }

    /// The port of the first listener (which must be TCP).
    #[track_caller]
    pub(crate) fn port(&self) -> u16 {
        let addr = &self.listening(1)[0];
        addr.rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("not a TCP address: {addr:?}"))
    }

    /// Waits for `mcluster: all <size> workers ready` (`the worker is ready` for one), then
    /// returns the workers announced so far (one per slot, all of generation 1).
    #[track_caller]
    pub(crate) fn wait_ready(&self, size: usize) -> Vec<Worker> {
        self.wait_for_stderr(&all_ready(size));
        let workers = self.generation(1);
        assert_eq!(
            workers.len(),
            size,
            "ready lines of generation 1: {workers:?}\n{}",
            self.dump()
        );
        workers
    }

    /// Every `w<slot> ready` line so far, in order.
    pub(crate) fn ready_workers(&self) -> Vec<Worker> {
        self.stderr_lines()
            .iter()
            .filter_map(|line| Worker::parse(line))
            .collect()
    }

    /// The workers announced ready with `generation`, sorted by slot; checks slots are distinct.
    #[track_caller]
    pub(crate) fn generation(&self, generation: u64) -> Vec<Worker> {
        let mut workers: Vec<Worker> = self
            .ready_workers()
            .into_iter()
            .filter(|w| w.generation == generation)
            .collect();
        workers.sort_by_key(|w| w.slot);
        let mut slots: Vec<usize> = workers.iter().map(|w| w.slot).collect();
        slots.dedup();
        assert_eq!(
            slots.len(),
            workers.len(),
            "two workers of generation {generation} in one slot: {workers:?}\n{}",
            self.dump()
        );
        workers
    }

    /// Waits for a stderr line containing `needle` and returns it.
    #[track_caller]
    pub(crate) fn wait_for_stderr(&self, needle: &str) -> String {
        self.wait_for_stderr_after(0, needle).1
    }

    /// Waits for a stderr line after `mark` containing `needle`; returns the mark after it and it.
    #[track_caller]
    pub(crate) fn wait_for_stderr_after(&self, mark: Mark, needle: &str) -> (Mark, String) {
        let what = format!("a line containing {needle:?}");
        self.wait_in(&self.stderr, mark, &what, &|line| line.contains(needle))
    }

    /// Waits for a stderr line after `mark` that satisfies `condition` (described by `what`);
    /// returns the mark after it and it.
    #[track_caller]
    pub(crate) fn wait_for_stderr_where(
        &self,
        mark: Mark,
        what: &str,
        condition: impl Fn(&str) -> bool,
    ) -> (Mark, String) {
        self.wait_in(&self.stderr, mark, what, &condition)
    }

    /// Waits for a stdout line containing `needle` and returns it.
    #[track_caller]
    pub(crate) fn wait_for_stdout(&self, needle: &str) -> String {
        let what = format!("a line containing {needle:?}");
        self.wait_in(&self.stdout, 0, &what, &|line| line.contains(needle))
            .1
    }

    /// The mark after the last stderr line so far.
    pub(crate) fn stderr_mark(&self) -> Mark {
        self.stderr.lines().len()
    }

    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines().into_iter().map(|l| l.text).collect()
    }

    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines().into_iter().map(|l| l.text).collect()
    }

    /// The stderr lines with the time each one was read.
    pub(crate) fn stderr_timed(&self) -> Vec<(Instant, String)> {
        self.stderr
            .lines()
            .into_iter()
            .map(|l| (l.at, l.text))
            .collect()
    }

    /// Polls `condition` until it holds, failing with the master's output after [`DEADLINE`].
    #[track_caller]
    pub(crate) fn wait_until(&self, what: &str, condition: impl FnMut() -> bool) {
        wait_until_or(what, condition, || self.dump());
    }

    /// Waits until the process `pid` is gone.
    #[track_caller]
    pub(crate) fn wait_dead(&self, pid: i32) {
        self.wait_until(&format!("pid {pid} to exit"), || !is_alive(pid));
    }

    /// Waits for the master to exit and for its output to end; returns its exit status.
    #[track_caller]
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the master did not exit within {DEADLINE:?}\n{}",
                self.dump()
            );
            thread::sleep(Duration::from_millis(10));
        };
        self.status = Some(status);
        // The pipes close when the last process holding them exits: if a worker outlived the
        // master, this fails, as it should.
        for output in [&self.stdout, &self.stderr] {
            assert!(
                output.wait_closed(DEADLINE.saturating_sub(start.elapsed())),
                "the master exited ({status}) but its {} is still open: something outlived it\n{}",
                output.name(),
                self.dump()
            );
        }
        status
    }

    /// Waits for the master to exit with a code (not killed by a signal) and returns it.
    #[track_caller]
    pub(crate) fn wait_exit_code(&mut self) -> i32 {
        let status = self.wait_exit();
        status
            .code()
            .unwrap_or_else(|| panic!("the master was killed: {status}\n{}", self.dump()))
    }

    /// Both output streams so far, for failure messages.
    pub(crate) fn dump(&self) -> String {
        let mut text = match &self.wrapper {
            None => String::from("--- master stderr ---\n"),
            Some(wrapper) => format!("--- wrapper ({wrapper}) and master stderr ---\n"),
        };
        for line in self.stderr_lines() {
            let _ = writeln!(text, "{line}");
        }
        text.push_str("--- master stdout ---\n");
        for line in self.stdout_lines() {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    #[track_caller]
    fn wait_in(
        &self,
        output: &Output,
        mark: Mark,
        what: &str,
        condition: &dyn Fn(&str) -> bool,
    ) -> (Mark, String) {
        match output.wait_for(mark, condition, DEADLINE) {
            Ok(found) => found,
            Err(WaitError::Closed) => panic!(
                "the master's {} ended without {what}\n{}",
                output.name(),
                self.dump()
            ),
            Err(WaitError::TimedOut) => panic!(
                "timed out after {DEADLINE:?} waiting for {what} on the master's {}\n{}",
                output.name(),
                self.dump()
            ),
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Workers die with the master (PDEATHSIG), but a test must not count on what it tests:
        // note the master's children (while it still runs, so the pid is surely its own) and
        // every worker it announced, then kill them all.
        let mut doomed: Vec<(i32, u64)> = self.workers.lock().unwrap().clone();
        if self.status.is_none() {
            doomed.extend(
                process::children_of(self.pid())
                    .into_iter()
                    .filter_map(|pid| Some((pid, stat(pid)?.start_time))),
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for (pid, start_time) in doomed {
            // Only the very process we saw: pids are reused.
            if stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z') {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The start of the line a master prints once its first generation is ready.
pub(crate) fn all_ready(size: usize) -> String {
    if size == 1 {
        "mcluster: the worker is ready in ".to_owned()
    } else {
        format!("mcluster: all {size} workers ready in ")
    }
}

/// One line of output and when the test read it.
#[derive(Clone)]
struct Line {
    text: String,
    at: Instant,
}

/// One output stream of the master, read into lines by a thread.
struct Output {
    name: &'static str,
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    lines: Vec<Line>,
    closed: bool,
}

impl Output {
    /// Reads `pipe` line by line on a thread. With `workers`, it is stderr: each worker announced
    /// ready is recorded there at once, while its process can still be identified.
    fn collect(pipe: impl Read + Send + 'static, workers: Option<Seen>) -> Arc<Self> {
        let output = Arc::new(Self {
            name: if workers.is_some() {
                "stderr"
            } else {
                "stdout"
            },
            state: Mutex::new(OutputState::default()),
            changed: Condvar::new(),
        });
        let writer = Arc::clone(&output);
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                if let (Some(workers), Some(worker)) = (&workers, Worker::parse(&text))
                    && let Some(s) = stat(worker.pid)
                {
                    workers.lock().unwrap().push((worker.pid, s.start_time));
                }
                let at = Instant::now();
                writer.state.lock().unwrap().lines.push(Line { text, at });
                writer.changed.notify_all();
            }
            writer.state.lock().unwrap().closed = true;
            writer.changed.notify_all();
        });
        output
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn lines(&self) -> Vec<Line> {
        self.state.lock().unwrap().lines.clone()
    }

    fn wait_for(
        &self,
        mark: Mark,
        condition: &dyn Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<(Mark, String), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some((i, line)) = state
                .lines
                .iter()
                .enumerate()
                .skip(mark)
                .find(|(_, line)| condition(&line.text))
            {
                return Ok((i + 1, line.text.clone()));
            }
            if state.closed {
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
        true
    }
}

enum WaitError {
    /// The stream ended (the master and everything holding its pipe exited).
    Closed,
    TimedOut,
}

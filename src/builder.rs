//! Building the project while the old generation keeps serving.
//!
//! A cargo build runs as `cargo build --message-format=json-render-diagnostics`: cargo renders
//! its diagnostics on stderr itself (shown as they come, in colour on a terminal), and stdout
//! carries only JSON messages. The executable comes from the `compiler-artifact` message of the
//! binary target, so the workers run the binary directly, with no `cargo run` wrapper process.
//! `--build CMD` runs any command with `sh -c` instead; success is exit status 0.
//!
//! The build runs in its own process group (a cancelled build is killed as a whole), dies
//! with the master, and is reaped by the driver like every child. Cargo's stderr passes through
//! mcluster as it comes (with its progress bar on a terminal), to say why a build waits when
//! cargo blocks on a lock.
//!
//! # Its output, on the I/O loop
//!
//! A cargo build's stdout and stderr are read by two tasks on the master's I/O loop
//! ([`IoLoop`]), never a thread, each through a fixed buffer of [`output::READ_CHUNK`], and
//! what is kept of them is bounded whatever the build writes:
//!
//! - **stdout** (cargo's JSON messages) is read up to cargo's last message (`build-finished`),
//!   a line at a time of at most [`MESSAGE_CAP`]: a longer line is skipped whole (and counted as
//!   a message); only the binaries' artifacts are kept.
//! - **stderr** is read to its end and passed on through the master's bounded writer
//!   ([`output::build_output`]): while the master's stderr is slow the task waits for room (the
//!   build then waits on its pipe); once it is stalled, what does not fit is dropped and
//!   counted. Its last [`DIAGNOSTICS_KEPT`] bytes are kept for the pages; the lock wait is looked
//!   for in lines of at most [`LOCK_LINE_CAP`].
//!
//! The output is complete when both pipes have ended (stderr passed on to the last byte, so that
//! the line about the build comes after cargo's): the callback given to [`BuildPlan::start`] is
//! called then, once, from the loop (the driver turns it into an input of its inbox).
//! [`RunningBuild::take_messages`] never waits: it takes what was read so far. How long the
//! outcome waits for the output after the build exited is the dev core's decision
//! ([`OUTPUT_GRACE`](crate::dev::lifecycle::OUTPUT_GRACE)): this module keeps no timer. A shell
//! build's stdout and stderr are the master's own: nothing is read, and its output is complete
//! from the start.
//!
//! Cargo also says what to watch: `cargo metadata` where its packages are
//! ([`BuildPlan::watch_roots`]) and the `[….metadata.mcluster]` tables ([`mcluster_tables`]),
//! and the dep-info file of the binary which files the build read ([`build_inputs`]).
//!
//! A failed cargo build that printed no JSON message at all stopped before compiling anything:
//! a `--bin`, `--package` or `--features` the project does not have, or a manifest or
//! dependency cargo cannot read or resolve. Only the options are beyond a save, and
//! `cargo metadata` of the workspace tells which it was (see [`BuildPlan::refused_option`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;
use tokio::net::unix::pipe::Receiver;

use crate::http::IoLoop;
use crate::{output, sys};

/// How the project is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildPlan {
    /// `cargo build` with these extra arguments (`--bin`, `-p`, `--release`, …); `bin` picks
    /// the executable when cargo builds several.
    Cargo {
        args: Vec<OsString>,
        bin: Option<String>,
    },
    /// Any shell command.
    Shell(String),
}

/// A build in flight.
pub(crate) struct RunningBuild {
    pub(crate) pid: i32,
    /// What the loop's tasks read of its output.
    output: Arc<Output>,
}

impl std::fmt::Debug for RunningBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBuild")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// What cargo said on stdout.
#[derive(Debug, Default)]
pub(crate) struct Messages {
    artifacts: Vec<Artifact>,
    /// How many JSON messages came: none means cargo stopped before compiling anything.
    count: usize,
    /// The end of what the build wrote on stderr (its diagnostics), for the pages of dev
    /// mode's live reload.
    pub(crate) diagnostics: String,
}

/// How much of a build's stderr is kept for the pages (the end of it).
const DIAGNOSTICS_KEPT: usize = 64 * 1024;

/// The longest line of cargo's messages read, in bytes: a longer one is skipped whole (and
/// counted as a message). The one that matters, a binary's `compiler-artifact`, is far shorter.
const MESSAGE_CAP: usize = 1024 * 1024;

/// The longest piece of a line of the build's stderr looked at for cargo's wait on a lock.
const LOCK_LINE_CAP: usize = 4 * 1024;

/// Called once, when a build's output is complete: from the I/O loop when its pipes end, at
/// its start for a build whose output is not read; never once the build is dropped. The
/// driver's callback carries the build's identity.
pub(crate) type OnOutputEnd = Box<dyn FnOnce() + Send>;

impl RunningBuild {
    /// Cargo's messages (none for a shell build) and the end of the build's stderr, as read so
    /// far: all of it once the output is complete (its stdout read up to cargo's last message
    /// and its stderr to its end, passed on to ours first); less when the outcome did not wait
    /// for the output (a process the build started holds a pipe open). Never waits; takes the
    /// artifacts (the readers go on, keeping nothing more for anyone).
    pub(crate) fn take_messages(&self) -> Messages {
        let mut output = self.output.lock();
        let diagnostics = readable_diagnostics(output.diagnostics.make_contiguous());
        Messages {
            artifacts: std::mem::take(&mut output.messages.artifacts),
            count: output.messages.count,
            diagnostics,
        }
    }
}

impl Drop for RunningBuild {
    /// A cancelled build's output ends with nobody waiting for it: its readers go on to the end
    /// of its pipes (passing on its stderr), and say nothing.
    fn drop(&mut self) {
        self.output.lock().on_end = None;
    }
}

/// What the loop's tasks read of a build's output, shared with the driver's
/// [`RunningBuild`]. Bounded: cargo's messages are read a line of at most [`MESSAGE_CAP`] at a
/// time and only the artifacts kept; of stderr, the last [`DIAGNOSTICS_KEPT`] bytes.
struct Output {
    state: Mutex<OutputState>,
}

struct OutputState {
    /// The pipes whose end makes the output complete: stdout (up to cargo's last message) and
    /// stderr.
    open: u8,
    /// Told once, when the last pipe ends.
    on_end: Option<OnOutputEnd>,
    messages: Messages,
    /// The end of the build's stderr so far.
    diagnostics: VecDeque<u8>,
}

impl Output {
    /// The output of a build with `open` pipes read, each of which calls
    /// [`pipe_ended`](Self::pipe_ended) at its end.
    fn new(open: u8, on_end: OnOutputEnd) -> Self {
        Self {
            state: Mutex::new(OutputState {
                open,
                on_end: Some(on_end),
                messages: Messages::default(),
                diagnostics: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One pipe ended: the output is complete when it was the last.
    fn pipe_ended(&self) {
        let mut state = self.lock();
        state.open = state.open.saturating_sub(1);
        if state.open == 0 {
            Self::told(state);
        }
    }

    /// The output is complete: the driver is told, once.
    fn told(mut state: MutexGuard<'_, OutputState>) {
        let on_end = state.on_end.take();
        drop(state);
        if let Some(on_end) = on_end {
            on_end();
        }
    }

    /// Keeps the end of the build's stderr, at most [`DIAGNOSTICS_KEPT`] bytes.
    fn keep(&self, bytes: &[u8]) {
        let mut state = self.lock();
        let kept = &mut state.diagnostics;
        let bytes = &bytes[bytes.len().saturating_sub(DIAGNOSTICS_KEPT)..];
        let over = (kept.len() + bytes.len()).saturating_sub(DIAGNOSTICS_KEPT);
        kept.drain(..over);
        kept.extend(bytes);
    }
}

/// A binary cargo built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Artifact {
    pub(crate) name: String,
    pub(crate) executable: PathBuf,
    /// Cargo found it up to date and built nothing for it.
    pub(crate) fresh: bool,
}

#[derive(Debug, Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    executable: Option<PathBuf>,
    #[serde(default)]
    fresh: bool,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    #[serde(default)]
    kind: Vec<String>,
}

impl BuildPlan {
    /// Starts the build; its output is read by tasks on the I/O loop, and `on_end` is called
    /// when it is complete (see [`RunningBuild::messages`]).
    pub(crate) fn start(&self, colour: bool, on_end: OnOutputEnd) -> io::Result<RunningBuild> {
        // The pipes are open and on the loop before the build is spawned, so that nothing can
        // fail once it runs.
        let mut pipes = None;
        let mut command = match self {
            BuildPlan::Cargo { args, .. } => {
                let io_loop = IoLoop::handle()?;
                let (stdout_read, stdout) = sys::pipe()?;
                let (stderr_read, stderr) = sys::pipe()?;
                pipes = Some((
                    output::loop_pipe(&io_loop, stdout_read)?,
                    output::loop_pipe(&io_loop, stderr_read)?,
                    io_loop,
                ));
                let mut command = Command::new(cargo());
                command
                    .arg("build")
                    .arg("--message-format=json-render-diagnostics")
                    .arg(if colour {
                        "--color=always"
                    } else {
                        "--color=never"
                    })
                    .args(args)
                    .stdout(stdout)
                    // Passed on as it comes, watched for cargo waiting on a lock.
                    .stderr(stderr);
                // Cargo shows its progress bar only on a terminal, which its stderr no longer is.
                if std::env::var_os("CARGO_TERM_PROGRESS_WHEN").is_none()
                    && let Some((_, width)) = console::Term::stderr().size_checked()
                {
                    command
                        .env("CARGO_TERM_PROGRESS_WHEN", "always")
                        .env("CARGO_TERM_PROGRESS_WIDTH", width.to_string());
                }
                command
            }
            BuildPlan::Shell(line) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(line)
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit());
                command
            }
        };
        command.stdin(Stdio::null()).process_group(0);
        sys::prepare_child(&mut command);
        let child = command.spawn()?;
        // The write ends are the build's alone now: the readers see their end when it (and
        // whatever it started) is gone.
        drop(command);
        let pid = child.id().cast_signed();
        // The driver reaps every child itself; std's handle is not needed past this point.
        drop(child);
        let Some((stdout, stderr, io_loop)) = pipes else {
            // Nothing is read: the output is complete from the start.
            let output = Output::new(0, on_end);
            Output::told(output.lock());
            return Ok(RunningBuild {
                pid,
                output: Arc::new(output),
            });
        };
        let output = Arc::new(Output::new(2, on_end));
        io_loop.spawn(read_messages(stdout, Arc::clone(&output)));
        io_loop.spawn(forward_stderr(stderr, Arc::clone(&output)));
        Ok(RunningBuild { pid, output })
    }

    /// The program that builds, for messages: `cargo` (or `$CARGO`), or `sh`.
    pub(crate) fn program(&self) -> String {
        match self {
            BuildPlan::Cargo { .. } => cargo().to_string_lossy().into_owned(),
            BuildPlan::Shell(_) => "sh".to_owned(),
        }
    }

    /// Picks the executable the workers run from what the build produced. `Ok(None)` for a
    /// shell build, whose workers run the given program.
    pub(crate) fn executable(&self, messages: &Messages) -> Result<Option<Artifact>, String> {
        let BuildPlan::Cargo { bin, .. } = self else {
            return Ok(None);
        };
        choose_executable(&messages.artifacts, bin.as_deref()).map(Some)
    }

    /// For a failed build: the option cargo refused (a `--bin`, `--package` or `--features`
    /// this project does not have), which no save can fix; `None` when in doubt.
    ///
    /// Cargo then said nothing on stdout, and `cargo metadata` (offline, workspace only) reads
    /// the project and shows the option names nothing in it. A manifest cargo cannot read makes
    /// `cargo metadata` fail too; an unresolvable dependency or a network failure leaves the
    /// options valid: all of those wait for a save.
    pub(crate) fn refused_option(&self, messages: &Messages) -> Option<String> {
        let BuildPlan::Cargo { args, .. } = self else {
            return None;
        };
        if messages.count > 0 {
            return None;
        }
        let value_of = |flag: &str| {
            args.iter()
                .position(|arg| arg == flag)
                .and_then(|at| args.get(at + 1))
                .map(|value| value.to_string_lossy().into_owned())
        };
        let (bin, package, features) = (
            value_of("--bin"),
            value_of("--package"),
            value_of("--features"),
        );
        if bin.is_none() && package.is_none() && features.is_none() {
            return None;
        }
        let manifest = args
            .iter()
            .position(|arg| arg == "--manifest-path")
            .and_then(|at| args.get(at + 1));
        let metadata: Metadata = cargo_metadata(manifest.map(Path::new), &["--no-deps"])?;
        metadata.refused(bin.as_deref(), package.as_deref(), features.as_deref())
    }
}

impl BuildPlan {
    /// The directories cargo builds from: the workspace root first, then every local package
    /// (the members and every path dependency, wherever it is), from `cargo metadata` (offline).
    /// `None` for a shell build, or when cargo cannot read the project (the build then says
    /// why).
    pub(crate) fn watch_roots(&self) -> Option<Vec<PathBuf>> {
        let BuildPlan::Cargo { args, .. } = self else {
            return None;
        };
        let manifest = args
            .iter()
            .position(|arg| arg == "--manifest-path")
            .and_then(|at| args.get(at + 1));
        // The whole resolve needs the dependencies' manifests and an up-to-date Cargo.lock
        // (`--locked`: mcluster writes nothing, even when a bad option ends it next); without
        // them, the workspace alone still names the path dependencies of its members.
        let metadata = [&["--locked"][..], &["--no-deps"][..]]
            .iter()
            .find_map(|extra| cargo_metadata::<LocalPackages>(manifest.map(Path::new), extra))?;
        Some(metadata.roots())
    }
}

/// `cargo metadata --offline` of the project (of `manifest`, else of the working directory),
/// with `extra` arguments, parsed; `None` when cargo cannot read it. It takes as long as cargo
/// reads the manifests: never on the I/O loop (dev mode runs it on the loop's blocking pool,
/// see [`dev`](crate::dev); at the start, before the loop). Waited for by pid; the driver, which
/// reaps only its own children, never reaps it, except as PID 1 (`waitpid(-1)`): then its
/// output, read to its end, says whether it succeeded.
fn cargo_metadata<T: serde::de::DeserializeOwned>(
    manifest: Option<&Path>,
    extra: &[&str],
) -> Option<T> {
    let mut command = Command::new(cargo());
    command
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(extra);
    if let Some(manifest) = manifest {
        command.arg("--manifest-path").arg(manifest);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    sys::prepare_child(&mut command);
    let mut child = command.spawn().ok()?;
    let mut stdout = Vec::new();
    let read = child.stdout.take()?.read_to_end(&mut stdout);
    match child.wait() {
        Ok(status) if !status.success() => return None,
        Err(error) if error.raw_os_error() != Some(nix::libc::ECHILD) => return None,
        _ => {}
    }
    read.ok()?;
    serde_json::from_slice(&stdout).ok()
}

/// A `[….metadata.mcluster]` table of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetadataTable {
    /// `workspace.metadata.mcluster` or `package.metadata.mcluster`.
    pub(crate) section: &'static str,
    /// The `Cargo.toml` it is in.
    pub(crate) manifest: PathBuf,
    pub(crate) table: serde_json::Value,
}

/// The `[workspace.metadata.mcluster]` and `[package.metadata.mcluster]` tables of the
/// project, in that order (the package's win), from `cargo metadata --no-deps` (offline). The
/// package is the one whose manifest is `package_manifest`. Empty when cargo cannot read the
/// project: the build then says why.
pub(crate) fn mcluster_tables(
    manifest: Option<&Path>,
    package_manifest: &Path,
) -> Vec<MetadataTable> {
    #[derive(Debug, Deserialize)]
    struct Project {
        workspace_root: PathBuf,
        #[serde(default)]
        metadata: Option<serde_json::Value>,
        packages: Vec<Package>,
    }
    #[derive(Debug, Deserialize)]
    struct Package {
        manifest_path: PathBuf,
        #[serde(default)]
        metadata: Option<serde_json::Value>,
    }
    let Some(project) = cargo_metadata::<Project>(manifest, &["--no-deps"]) else {
        return Vec::new();
    };
    let mut tables = Vec::new();
    if let Some(table) = project.metadata.and_then(|m| m.get("mcluster").cloned()) {
        tables.push(MetadataTable {
            section: "workspace.metadata.mcluster",
            manifest: project.workspace_root.join("Cargo.toml"),
            table,
        });
    }
    if let Some(package) = project
        .packages
        .into_iter()
        .find(|package| package.manifest_path == package_manifest)
        && let Some(table) = package.metadata.and_then(|m| m.get("mcluster").cloned())
    {
        tables.push(MetadataTable {
            section: "package.metadata.mcluster",
            manifest: package.manifest_path,
            table,
        });
    }
    tables
}

/// What `cargo metadata` says of where the local packages are.
#[derive(Debug, Deserialize)]
struct LocalPackages {
    workspace_root: PathBuf,
    packages: Vec<LocalPackage>,
}

#[derive(Debug, Deserialize)]
struct LocalPackage {
    manifest_path: PathBuf,
    /// `None` for a local package (a member or a path dependency).
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    dependencies: Vec<LocalDependency>,
}

#[derive(Debug, Deserialize)]
struct LocalDependency {
    /// The directory of a path dependency.
    #[serde(default)]
    path: Option<PathBuf>,
}

impl LocalPackages {
    /// The workspace root, then the other local package directories not inside it, sorted.
    fn roots(&self) -> Vec<PathBuf> {
        let mut others: Vec<PathBuf> = self
            .packages
            .iter()
            .filter(|package| package.source.is_none())
            .filter_map(|package| package.manifest_path.parent().map(Path::to_path_buf))
            .chain(
                self.packages
                    .iter()
                    .flat_map(|package| &package.dependencies)
                    .filter_map(|dependency| dependency.path.clone()),
            )
            .filter(|dir| !dir.starts_with(&self.workspace_root))
            .collect();
        others.sort();
        others.dedup();
        let nested: Vec<PathBuf> = others
            .iter()
            .filter(|dir| others.iter().any(|o| o != *dir && dir.starts_with(o)))
            .cloned()
            .collect();
        others.retain(|dir| !nested.contains(dir));
        let mut roots = vec![self.workspace_root.clone()];
        roots.extend(others);
        roots
    }
}

/// The files a cargo build of `executable` read, from the dep-info file cargo writes next to it
/// (`target/debug/app.d`): every source file, every `include_str!`/`include_bytes!` file, every
/// `rerun-if-changed` path, whatever its extension. Relative paths (`build.dep-info-basedir`)
/// are taken from `base`. `None` without such a file.
pub(crate) fn build_inputs(executable: &Path, base: &Path) -> Option<Vec<PathBuf>> {
    let mut name = executable.file_name()?.to_owned();
    name.push(".d");
    let text = std::fs::read_to_string(executable.with_file_name(name)).ok()?;
    Some(
        parse_dep_info(&text)
            .into_iter()
            .map(|path| base.join(path))
            .collect(),
    )
}

/// The prerequisites of the first rule of a Makefile-style dep-info file: after the first
/// `: `, split at unescaped whitespace; `\ ` is a space and `\\` a backslash in a name.
fn parse_dep_info(text: &str) -> Vec<PathBuf> {
    // A rule continued on the next line.
    let text = text.replace("\\\n", " ");
    let Some(line) = text.lines().find(|line| !line.trim().is_empty()) else {
        return Vec::new();
    };
    let mut chars = line.chars().peekable();
    // The target (the executable), up to the first unescaped colon followed by a space or
    // the end of the line.
    let mut escaped = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if !escaped => escaped = true,
            ':' if !escaped && chars.peek().is_none_or(|next| next.is_whitespace()) => break,
            _ => escaped = false,
        }
    }
    let mut paths = Vec::new();
    let mut current = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars
                .peek()
                .is_some_and(|next| *next == ' ' || *next == '\\') =>
            {
                current.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}

/// What `cargo metadata --no-deps` says of the workspace.
#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<PackageMetadata>,
}

#[derive(Debug, Deserialize)]
struct PackageMetadata {
    name: String,
    #[serde(default)]
    targets: Vec<Target>,
    #[serde(default)]
    features: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

#[derive(Debug, Deserialize)]
struct Dependency {
    name: String,
    #[serde(default)]
    rename: Option<String>,
    #[serde(default)]
    optional: bool,
}

impl Metadata {
    /// The first option that names nothing in the workspace, as one line's culprit.
    fn refused(
        &self,
        bin: Option<&str>,
        package: Option<&str>,
        features: Option<&str>,
    ) -> Option<String> {
        if let Some(bin) = bin
            && !self.packages.iter().any(|package| {
                package
                    .targets
                    .iter()
                    .any(|t| t.name == bin && t.kind.iter().any(|kind| kind == "bin"))
            })
        {
            return Some(format!(
                "invalid --bin {bin}: the project has no binary target of that name"
            ));
        }
        // A plain name only: a spec with a version or a URL is beyond this check.
        if let Some(spec) = package
            && !spec.contains(['@', ':', '/', '#'])
            && !self.packages.iter().any(|p| p.name == spec)
        {
            return Some(format!(
                "invalid --package {spec}: the project has no package of that name"
            ));
        }
        let features = features.unwrap_or_default();
        for feature in features.split([',', ' ']).filter(|f| !f.is_empty()) {
            // `package/feature` and `dep:` names are beyond this check.
            if feature.contains(['/', ':']) {
                continue;
            }
            let known = self.packages.iter().any(|package| {
                package.features.contains_key(feature)
                    || package.dependencies.iter().any(|dep| {
                        dep.optional && dep.rename.as_deref().unwrap_or(&dep.name) == feature
                    })
            });
            if !known {
                return Some(format!(
                    "invalid --features {features}: the project has no feature {feature}"
                ));
            }
        }
        None
    }
}

/// `$CARGO` (as set when run by cargo itself), else `cargo` from `PATH`.
fn cargo() -> OsString {
    std::env::var_os("CARGO")
        .filter(|cargo| !cargo.is_empty())
        .unwrap_or_else(|| "cargo".into())
}

/// Passes the build's stderr on to ours as it comes (colours and progress bar included, through
/// the bounded writer of [`output`]: while ours is slow, the build waits on its pipe; once ours
/// is stalled, what does not fit is dropped and counted), keeps its end for the pages, and says
/// once in a line of its own why the build waits when cargo blocks on a lock. Reads to the end
/// of the pipe, even past the outcome (a process the build started may hold it).
async fn forward_stderr(pipe: Receiver, shared: Arc<Output>) {
    let mut buffer = vec![0u8; output::READ_CHUNK];
    // Cargo's lines, in pieces of a bounded size, until a lock wait has been said.
    let mut lines = Some(output::Lines::new(LOCK_LINE_CAP));
    while let Some(read) = output::read_chunk(&pipe, &mut buffer).await {
        let bytes = &buffer[..read];
        shared.keep(bytes);
        output::build_output(bytes.to_vec()).await;
        if let Some(pending) = &mut lines {
            let mut waits = None;
            pending.push(bytes, &mut |text, _| {
                if waits.is_none() {
                    waits = lock_wait_line(text);
                }
            });
            if let Some(line) = waits {
                output::master_line(&line);
                lines = None;
            }
        }
    }
    shared.pipe_ended();
}

/// A build's stderr as a page shows it: colours removed, of a progress bar (a line redrawn
/// with `\r`) only its last state, and cargo's `Compiling …` lines left out.
fn readable_diagnostics(raw: &[u8]) -> String {
    let text = crate::livereload::strip_ansi(&String::from_utf8_lossy(raw));
    text.lines()
        .map(|line| line.rsplit('\r').next().unwrap_or_default())
        .filter(|line| {
            let trimmed = line.trim_start();
            !(trimmed.starts_with("Compiling ")
                || trimmed.starts_with("Building ")
                || trimmed.starts_with("Checking ")
                || trimmed.starts_with("Blocking "))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// The line that says why the build waits, for a line of cargo's output that says it blocks on
/// a lock (`Blocking waiting for file lock on artifact directory`).
fn lock_wait_line(cargo_line: &str) -> Option<String> {
    const WAITING: &str = "waiting for file lock on ";
    let at = cargo_line.find(WAITING)?;
    let what = cargo_line[at + WAITING.len()..].trim();
    if what.contains("directory") {
        Some(format!(
            "the build waits for cargo's lock on the {what}: another cargo uses this target \
             directory (rust-analyzer checking the project?); give rust-analyzer one of its own \
             (\"rust-analyzer.cargo.targetDir\": true)"
        ))
    } else {
        Some(format!(
            "the build waits for cargo's lock on the {what}: another cargo is downloading or \
             updating dependencies"
        ))
    }
}

/// Reads cargo's messages from its stdout up to its last one (`build-finished`), keeping the
/// artifacts.
async fn read_messages(pipe: Receiver, shared: Arc<Output>) {
    let mut buffer = vec![0u8; output::READ_CHUNK];
    let mut lines = output::Lines::new(MESSAGE_CAP);
    let mut reader = MessageLines::default();
    while !reader.finished {
        let Some(read) = output::read_chunk(&pipe, &mut buffer).await else {
            lines.finish(&mut |text, cut| reader.line(text, cut, &mut shared.lock().messages));
            break;
        };
        let mut state = shared.lock();
        lines.push(&buffer[..read], &mut |text, cut| {
            reader.line(text, cut, &mut state.messages);
        });
    }
    shared.pipe_ended();
}

/// Turns the lines of cargo's stdout into [`Messages`].
#[derive(Debug, Default)]
struct MessageLines {
    /// In a line longer than [`MESSAGE_CAP`], which comes in pieces: skipped.
    skipping: bool,
    /// Cargo's last message came: what follows is not cargo's (a daemon a build script started,
    /// a compiler cache server say, may hold the pipe open).
    finished: bool,
}

impl MessageLines {
    /// A line (or a `cut` piece of a longer one, see [`output::Lines`]).
    fn line(&mut self, text: &str, cut: bool, messages: &mut Messages) {
        if self.finished {
            return;
        }
        if cut || self.skipping {
            if !self.skipping {
                messages.count += 1;
            }
            self.skipping = cut;
            return;
        }
        let Ok(message) = serde_json::from_str::<Message>(text) else {
            return;
        };
        messages.count += 1;
        match message.reason.as_str() {
            "compiler-artifact" => {
                if let (Some(target), Some(executable)) = (message.target, message.executable)
                    && target.kind.iter().any(|kind| kind == "bin")
                {
                    messages.artifacts.push(Artifact {
                        name: target.name,
                        executable,
                        fresh: message.fresh,
                    });
                }
            }
            "build-finished" => self.finished = true,
            _ => {}
        }
    }
}

fn choose_executable(artifacts: &[Artifact], bin: Option<&str>) -> Result<Artifact, String> {
    if let Some(bin) = bin {
        return artifacts
            .iter()
            .find(|artifact| artifact.name == bin)
            .cloned()
            .ok_or_else(|| format!("cargo built no binary named '{bin}'"));
    }
    match artifacts {
        [] => Err(
            "cargo built no binary: is this a binary package? (or run --no-build -- PROGRAM)"
                .to_owned(),
        ),
        [only] => Ok(only.clone()),
        several => {
            let names: Vec<&str> = several.iter().map(|a| a.name.as_str()).collect();
            Err(format!(
                "cargo built several binaries ({}); choose one with --bin",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str) -> Artifact {
        Artifact {
            name: name.to_owned(),
            executable: PathBuf::from(format!("/t/{name}")),
            fresh: false,
        }
    }

    #[test]
    fn the_only_binary_is_chosen_or_the_named_one() {
        assert_eq!(
            choose_executable(&[artifact("app")], None),
            Ok(artifact("app"))
        );
        let two = [artifact("app"), artifact("tool")];
        assert_eq!(choose_executable(&two, Some("tool")), Ok(artifact("tool")));
        assert!(choose_executable(&two, None).unwrap_err().contains("--bin"));
        assert!(
            choose_executable(&two, Some("x"))
                .unwrap_err()
                .contains("'x'")
        );
        assert!(choose_executable(&[], None).is_err());
    }

    #[test]
    fn options_that_name_nothing_in_the_workspace_are_refused() {
        let metadata: Metadata = serde_json::from_str(
            r#"{"packages":[{"name":"app","targets":[
                {"name":"app","kind":["bin"]},{"name":"applib","kind":["lib"]}],
              "features":{"default":[],"fast":[]},
              "dependencies":[{"name":"serde","optional":true,"rename":null},
                {"name":"nix","optional":false,"rename":null}]}]}"#,
        )
        .unwrap();
        let refused = |bin, package, features| metadata.refused(bin, package, features);
        assert_eq!(refused(Some("app"), Some("app"), Some("fast,serde")), None);
        assert_eq!(refused(None, Some("app@0.1.0"), Some("app/x dep:y")), None);
        assert!(refused(Some("applib"), None, None).is_some_and(|e| e.contains("--bin applib")));
        assert!(refused(None, Some("nosuch"), None).is_some_and(|e| e.contains("--package")));
        assert!(
            refused(None, None, Some("fast nix"))
                .is_some_and(|e| e.ends_with("has no feature nix"))
        );
    }

    #[test]
    fn diagnostics_lose_colours_progress_and_compiling_lines() {
        let raw = "\u{1b}[1m\u{1b}[32m   Compiling\u{1b}[0m app v0.1.0\n    Building [=> ] 1/2\r    Building [==>] 2/2\r\u{1b}[1m\u{1b}[31merror\u{1b}[0m: expected `;`\n  --> src/main.rs:3:5\n";
        assert_eq!(
            readable_diagnostics(raw.as_bytes()),
            "error: expected `;`\n  --> src/main.rs:3:5"
        );
    }

    #[test]
    fn a_wait_for_cargo_s_lock_is_explained() {
        let build_dir = lock_wait_line(
            "\u{1b}[1m\u{1b}[36m    Blocking\u{1b}[0m waiting for file lock on artifact directory\n",
        )
        .unwrap();
        assert!(
            build_dir.starts_with("the build waits for cargo's lock on the artifact directory: ")
                && build_dir.contains("rust-analyzer.cargo.targetDir"),
            "{build_dir}"
        );
        let cache = lock_wait_line("    Blocking waiting for file lock on package cache").unwrap();
        assert!(cache.contains("downloading"), "{cache}");
        assert_eq!(lock_wait_line("   Compiling app v0.1.0"), None);
    }

    #[test]
    fn dep_info_names_every_input_spaces_included() {
        let text = "/t/debug/my\\ app: /w/app/src/main.rs /w/app/static/a\\ b.html \\
                    /w/common/src/lib.rs rel/build.txt\n\n/w/other: /x\n";
        assert_eq!(
            parse_dep_info(text),
            [
                PathBuf::from("/w/app/src/main.rs"),
                "/w/app/static/a b.html".into(),
                "/w/common/src/lib.rs".into(),
                "rel/build.txt".into(),
            ]
        );
        assert!(parse_dep_info("").is_empty());
    }

    #[test]
    fn the_workspace_root_comes_first_then_path_dependencies_outside_it() {
        let metadata: LocalPackages = serde_json::from_str(
            r#"{"workspace_root":"/w","packages":[
              {"manifest_path":"/w/app/Cargo.toml","source":null,"dependencies":[
                {"path":"/w/common"},{"path":"/shared/lib"},{}]},
              {"manifest_path":"/w/common/Cargo.toml","source":null},
              {"manifest_path":"/reg/serde/Cargo.toml","source":"registry+https://x"},
              {"manifest_path":"/shared/lib/Cargo.toml","source":null},
              {"manifest_path":"/shared/lib/sub/Cargo.toml","source":null},
              {"manifest_path":"/a/Cargo.toml","source":null}]}"#,
        )
        .unwrap();
        assert_eq!(
            metadata.roots(),
            [PathBuf::from("/w"), "/a".into(), "/shared/lib".into()]
        );
    }

    /// The messages in `stdout`, read `chunk` bytes at a time, lines of at most `cap` bytes.
    fn messages_of(stdout: &[u8], chunk: usize, cap: usize) -> Messages {
        let mut messages = Messages::default();
        let mut lines = output::Lines::new(cap);
        let mut reader = MessageLines::default();
        for piece in stdout.chunks(chunk) {
            lines.push(piece, &mut |text, cut| {
                reader.line(text, cut, &mut messages);
            });
        }
        lines.finish(&mut |text, cut| reader.line(text, cut, &mut messages));
        messages
    }

    #[test]
    fn artifacts_are_read_from_cargo_json_messages() {
        let stdout = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"serde","kind":["lib"]},"executable":null}"#,
            "\nnot json\n",
            r#"{"reason":"compiler-artifact","target":{"name":"app","kind":["bin"]},"executable":"/t/app","fresh":true}"#,
            "\r\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n",
            // Not cargo's: after its last message.
            r#"{"reason":"compiler-artifact","target":{"name":"late","kind":["bin"]},"executable":"/t/late"}"#,
        );
        let fresh = Artifact {
            fresh: true,
            ..artifact("app")
        };
        for chunk in [1, 7, 8192] {
            let messages = messages_of(stdout.as_bytes(), chunk, MESSAGE_CAP);
            assert_eq!(
                messages.artifacts,
                std::slice::from_ref(&fresh),
                "chunk {chunk}"
            );
            assert_eq!(messages.count, 3, "chunk {chunk}");
        }
    }

    #[test]
    fn a_message_longer_than_the_cap_is_skipped_whole_and_counted() {
        let app = r#"{"reason":"compiler-artifact","target":{"name":"app","kind":["bin"]},"executable":"/t/app"}"#;
        let long = format!(
            r#"{{"reason":"build-script-executed","env":"{}"}}"#,
            "x".repeat(300)
        );
        // A long line that would parse as an artifact were it not cut.
        let long_artifact = format!(
            r#"{{"reason":"compiler-artifact","target":{{"name":"{}","kind":["bin"]}},"executable":"/t/x"}}"#,
            "y".repeat(300)
        );
        let stdout = format!("{long}\n{long_artifact}\n{app}\n{long}");
        let messages = messages_of(stdout.as_bytes(), 64, 128);
        assert_eq!(messages.artifacts, [artifact("app")]);
        assert_eq!(messages.count, 4);
    }

    #[test]
    fn the_end_of_stderr_is_kept_within_its_bound() {
        let output = Output::new(1, Box::new(|| {}));
        output.keep(&vec![b'a'; DIAGNOSTICS_KEPT - 3]);
        output.keep(b"bcdef");
        output.keep(b"");
        {
            let mut state = output.lock();
            let kept = state.diagnostics.make_contiguous();
            assert_eq!(kept.len(), DIAGNOSTICS_KEPT);
            assert!(kept.starts_with(b"aaa") && kept.ends_with(b"aabcdef"));
        }
        let mut flood = vec![b'x'; DIAGNOSTICS_KEPT * 3];
        flood.extend_from_slice(b"end");
        output.keep(&flood);
        let mut state = output.lock();
        let kept = state.diagnostics.make_contiguous();
        assert_eq!(kept.len(), DIAGNOSTICS_KEPT);
        assert!(kept.ends_with(b"xxend"));
    }

    #[test]
    fn the_output_s_end_is_told_once_when_its_last_pipe_ends() {
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = || {
            let told = Arc::clone(&told);
            Box::new(move || {
                told.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }) as OnOutputEnd
        };
        let count = || told.load(std::sync::atomic::Ordering::SeqCst);
        let output = Output::new(2, counter());
        output.pipe_ended();
        assert_eq!(count(), 0);
        output.pipe_ended();
        assert_eq!(count(), 1);
        // Once only.
        output.pipe_ended();
        assert_eq!(count(), 1);
        // A dropped build's output ends with nobody told.
        let dropped = Arc::new(Output::new(1, counter()));
        drop(RunningBuild {
            pid: 0,
            output: Arc::clone(&dropped),
        });
        dropped.pipe_ended();
        assert_eq!(count(), 1);
    }
}

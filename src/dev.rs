//! Dev mode: the master of `mcluster start` with two more event sources, the debounced watcher
//! and the build. No new mechanism: a successful build is a roll of the same core.
//!
//! A change starts a build while the old generation keeps serving; a change during a build
//! cancels it and starts another. Success rolls the new executable in; failure leaves the
//! serving generation untouched; a binary that did not change is not rolled. Each reload ends in
//! one line: what changed, the build time, the roll time. A file that the builds themselves keep
//! changing (a build script writing into the watched tree) is named, and its changes during
//! builds are ignored from then on.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid as NixPid;

use crate::builder::{self, Artifact, BuildPlan, RunningBuild};
use crate::cluster::{Event, ExitReason, ProcessEnd, RollEnd, human_duration};
use crate::leftover::{self, Here};
use crate::output;
use crate::supervisor::{DriverState, Program, Supervisor};
use crate::watch::Watcher;

/// The dev loop's settings and state, owned by the driver.
pub(crate) struct DevLoop {
    /// `None`: `--no-build`.
    pub(crate) plan: Option<BuildPlan>,
    /// Clear the screen before each build.
    pub(crate) clear: bool,
    /// Paths in messages are shown relative to the one of these they are in.
    pub(crate) roots: Vec<PathBuf>,
    /// Kept alive for as long as the loop runs; `None` in production mode.
    pub(crate) watcher: Option<Watcher>,
    /// Where copies of built executables are kept, one per generation.
    pub(crate) builds_dir: Option<PathBuf>,
    build: Option<Build>,
    /// The reloads whose rolls have not ended, by roll request (the core says which requests
    /// the core queues at most one roll).
    reloads: HashMap<u64, Reload>,
    copies: u64,
    /// A build succeeded: its options are good for this project, so a later failure is the
    /// project's, which a save can fix.
    built_once: bool,
    /// The last build that ran to its end: what triggered it, and when it ran.
    last_build: Option<(Vec<PathBuf>, SystemTime, SystemTime)>,
    /// Files that changed during a build they triggered, and in how many builds in a row.
    loop_rounds: HashMap<PathBuf, u32>,
    /// Files the builds write (named once): their changes made while a build runs are ignored.
    written_by_builds: BTreeSet<PathBuf>,
    /// Directories of assets the app serves from disk (live reload).
    pub(crate) assets: Vec<PathBuf>,
    /// The files the last build read (its dep-info): never mere assets.
    build_inputs: BTreeSet<PathBuf>,
}

/// After how many builds in a row that a file's own change triggered and during which it
/// changed again, the file is named as one the build writes.
const LOOP_ROUNDS: u32 = 2;

/// A file's modification time (the kernel's coarse clock) may lag the clock read when a build
/// starts or ends by a clock tick.
const MTIME_SLACK: Duration = Duration::from_millis(20);

struct Build {
    running: RunningBuild,
    changed: Vec<PathBuf>,
    /// When it started, to compare with the modification times of the files it may write.
    started_at: SystemTime,
}

/// A reload waiting for its roll to end, for the one-line summary.
pub(crate) struct Reload {
    /// The files that changed; none for a roll asked for by SIGHUP or the handle.
    changed: Vec<PathBuf>,
    built_in: Option<Duration>,
}

impl Reload {
    /// A roll asked for by SIGHUP or [`Handle::restart`](crate::master::Handle::restart).
    pub(crate) fn requested() -> Self {
        Self {
            changed: Vec::new(),
            built_in: None,
        }
    }
}

impl DevLoop {
    pub(crate) fn new(plan: Option<BuildPlan>, clear: bool, roots: Vec<PathBuf>) -> Self {
        Self {
            plan,
            clear,
            roots,
            watcher: None,
            builds_dir: None,
            build: None,
            reloads: HashMap::new(),
            copies: 0,
            built_once: false,
            last_build: None,
            loop_rounds: HashMap::new(),
            written_by_builds: BTreeSet::new(),
            assets: Vec::new(),
            build_inputs: BTreeSet::new(),
        }
    }

    /// Whether every changed file is an asset: under an asset directory, no Rust or manifest
    /// file, and not read by the last build (an `include_str!`ed file rebuilds). Before any
    /// build succeeded nothing is known of what it reads: then nothing is a mere asset.
    fn only_assets(&self, changed: &[PathBuf]) -> bool {
        self.built_once
            && !changed.is_empty()
            && changed.iter().all(|path| {
                self.assets.iter().any(|dir| path.starts_with(dir))
                    && !path
                        .extension()
                        .is_some_and(|ext| ext == "rs" || ext == "toml")
                    && !self.build_inputs.contains(path)
            })
    }

    /// A roll request that no roll will answer.
    pub(crate) fn forget_reload(&mut self, request: u64) {
        self.reloads.remove(&request);
    }

    /// The pid of the build in flight.
    pub(crate) fn build_pid(&self) -> Option<i32> {
        self.build.as_ref().map(|build| build.running.pid)
    }

    /// The changes that are not a build's own writes. A file that changes while a build runs,
    /// during builds its own change triggered, [`LOOP_ROUNDS`] times in a row, is one the build
    /// writes (a build script writing into the watched tree): one line names it, and its
    /// changes made while a build runs are ignored from then on.
    fn without_build_writes(&mut self, changed: Vec<PathBuf>) -> Vec<PathBuf> {
        let now = SystemTime::now();
        let mut builds: Vec<(&[PathBuf], SystemTime, SystemTime)> = Vec::new();
        if let Some(build) = &self.build {
            builds.push((&build.changed, build.started_at, now));
        }
        if let Some((triggers, started, ended)) = &self.last_build {
            // A save right after the build ended may carry an mtime a tick before the end (the
            // kernel's coarse clock): only what is older than that is surely the build's.
            let ended = ended.checked_sub(MTIME_SLACK).unwrap_or(*ended);
            builds.push((triggers, *started, ended));
        }
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        // `ended` is read once the build has exited: its writes are all older. A save right
        // after a build is not one of them.
        let during = |mtime: Option<SystemTime>, started: SystemTime, ended: SystemTime| {
            mtime.is_some_and(|mtime| {
                // An mtime near the end of time (`touch -d`) must not overflow.
                mtime
                    .checked_add(MTIME_SLACK)
                    .is_none_or(|slackened| slackened >= started)
                    && mtime <= ended
            })
        };
        let mut kept = Vec::new();
        for path in changed {
            let mtime = modified(&path);
            let in_a_build = builds
                .iter()
                .any(|(_, started, ended)| during(mtime, *started, *ended));
            if in_a_build && self.written_by_builds.contains(&path) {
                continue;
            }
            let own_round = builds.iter().any(|(triggers, started, ended)| {
                triggers.contains(&path) && during(mtime, *started, *ended)
            });
            if !own_round {
                self.loop_rounds.remove(&path);
                kept.push(path);
                continue;
            }
            let rounds = self.loop_rounds.entry(path.clone()).or_insert(0);
            *rounds += 1;
            if *rounds < LOOP_ROUNDS {
                kept.push(path);
                continue;
            }
            self.loop_rounds.remove(&path);
            let name = self.describe_one(&path);
            output::master_line(&format!(
                "{name} changed during each of the last {LOOP_ROUNDS} builds it triggered: the \
                 build writes it (a build script?); its changes while a build runs are ignored \
                 from now on (to ignore it always: -i '{name}')"
            ));
            self.written_by_builds.insert(path);
        }
        kept
    }

    /// A file as reload lines name it: relative to its root.
    fn describe_one(&self, path: &Path) -> String {
        let relative = self
            .roots
            .iter()
            .find_map(|root| path.strip_prefix(root).ok());
        quoted_if_needed(&relative.unwrap_or(path).display().to_string())
    }

    /// Describes changed files: the first few, relative to their root, and how many more.
    fn describe(&self, changed: &[PathBuf]) -> String {
        const SHOWN: usize = 3;
        let names: Vec<String> = changed
            .iter()
            .take(SHOWN)
            .map(|path| self.describe_one(path))
            .collect();
        match changed.len() {
            0 => "roll requested".to_owned(),
            n if n <= SHOWN => format!("{} changed", names.join(", ")),
            n => format!("{} and {} more changed", names.join(", "), n - SHOWN),
        }
    }

    /// Keeps a private link (or copy) of a built executable, so that cargo's next build cannot
    /// replace the file a generation's crash restarts exec.
    fn keep_executable(&mut self, executable: &Path) -> std::io::Result<PathBuf> {
        let dir = if let Some(dir) = &self.builds_dir {
            dir.clone()
        } else {
            let parent = executable.parent().unwrap_or(Path::new("."));
            // Those of masters that died without cleaning up (SIGKILL), ours too if this pid
            // was a dead master's before.
            sweep_leftovers(parent);
            let dir = parent.join(format!("{BUILDS_PREFIX}{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            // Without it this directory is never swept: no reason to fail the reload.
            let _ = leftover::mark(&dir.join(OWNER_FILE), OWNER_KIND);
            self.builds_dir = Some(dir.clone());
            dir
        };
        self.copies += 1;
        // A directory per copy, so that the copy has the binary's own name: `ps`, `top` and
        // `ss -p` show the workers as `app`.
        let name = executable.file_name().unwrap_or(executable.as_os_str());
        let copy_dir = dir.join(self.copies.to_string());
        std::fs::create_dir(&copy_dir)?;
        let kept = copy_dir.join(name);
        if std::fs::hard_link(executable, &kept).is_err() {
            std::fs::copy(executable, &kept)?;
        }
        Ok(kept)
    }
}

impl Drop for DevLoop {
    fn drop(&mut self) {
        if let Some(build) = &self.build {
            let _ = killpg(NixPid::from_raw(build.running.pid), Signal::SIGKILL);
        }
        if let Some(dir) = &self.builds_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Supervisor<'_> {
    /// Files changed: rebuild (cancelling a build in flight), or roll at once with no build.
    pub(crate) fn on_change(&mut self, state: &mut DriverState, changed: Vec<PathBuf>) {
        let Some(dev) = &mut self.dev else {
            return;
        };
        if self.cluster.is_stopping() {
            return;
        }
        if dev.plan.is_none() {
            let reload = Reload {
                changed,
                built_in: None,
            };
            self.roll_for(state, reload);
            return;
        }
        let mut changed = dev.without_build_writes(changed);
        if changed.is_empty() {
            return;
        }
        // Only assets changed (files the app serves from disk, which no build reads): the pages
        // reload, a stylesheet in place; no build, no roll.
        if self.livereload.is_some() && dev.only_assets(&changed) {
            let css = changed
                .iter()
                .all(|path| path.extension().is_some_and(|ext| ext == "css"));
            let what = dev.describe(&changed);
            if css {
                output::master_line(&format!("{what} → stylesheets reloaded in the pages"));
                self.tell_pages(&crate::livereload::Message::Css);
            } else {
                output::master_line(&format!("{what} → pages reloaded"));
                self.tell_pages(&crate::livereload::Message::Reload);
            }
            return;
        }
        if let Some(build) = dev.build.take() {
            // A save during a build: the build is stale, start over with both sets of changes.
            // Its exit is reaped later as a stray.
            let _ = killpg(NixPid::from_raw(build.running.pid), Signal::SIGKILL);
            state.adopt_stray(build.running.pid);
            changed.extend(build.changed);
            changed.sort();
            changed.dedup();
        }
        self.start_build(state, changed);
    }

    /// Starts a build for these changes (none: the initial build).
    pub(crate) fn start_build(&mut self, state: &mut DriverState, changed: Vec<PathBuf>) {
        let Some(dev) = &mut self.dev else {
            return;
        };
        let Some(plan) = &dev.plan else {
            return;
        };
        if dev.clear {
            let _ = console::Term::stderr().clear_screen();
        }
        match plan.start(console::colors_enabled_stderr()) {
            Ok(running) => {
                // Its own group, killed with the workers' should the master die.
                self.guard.watch(running.pid);
                dev.build = Some(Build {
                    running,
                    changed,
                    started_at: SystemTime::now(),
                });
            }
            Err(error) => {
                let program = plan.program();
                let why = if error.kind() == std::io::ErrorKind::NotFound {
                    format!("{program} is not installed or not in PATH")
                } else {
                    format!("{program}: {error}")
                };
                // Before any build succeeded, no save can make the build program appear.
                if dev.watcher.is_none() || !dev.built_once {
                    output::master_line(&format!("error: cannot run the build: {why}"));
                    state.exit = Some(ExitReason::BuildFailed);
                } else {
                    let serving = self.cluster.serving_generation();
                    output::master_line(&format!(
                        "error: cannot run the build: {why}; generation {serving} keeps serving"
                    ));
                }
            }
        }
    }

    /// The build process exited.
    pub(crate) fn build_exited(&mut self, state: &mut DriverState, end: ProcessEnd) {
        let Some(dev) = &mut self.dev else {
            return;
        };
        let Some(build) = dev.build.take() else {
            return;
        };
        dev.last_build = Some((build.changed.clone(), build.started_at, SystemTime::now()));
        let built_in = build.running.started.elapsed();
        let what = dev.describe(&build.changed);
        let serving = self.cluster.serving_generation();
        let keeps = if serving == 0 && dev.watcher.is_none() {
            "nothing rebuilds in production mode".to_owned()
        } else if serving == 0 {
            "no generation is serving yet; save a fix to retry".to_owned()
        } else {
            format!("generation {serving} keeps serving")
        };
        let messages = build.running.messages();
        let (ProcessEnd::Code(0), Some(plan)) = (&end, dev.plan.clone()) else {
            let refused = (dev.watcher.is_some() && !dev.built_once)
                .then(|| dev.plan.as_ref()?.refused_option(&messages))
                .flatten();
            if let Some(culprit) = refused {
                output::master_line(&format!("error: {culprit}"));
                state.exit = Some(ExitReason::BuildFailed);
                return;
            }
            let failed = format!("build failed ({end}) after {}", human_duration(built_in));
            let shown = if messages.diagnostics.is_empty() {
                format!("{failed}: see the terminal")
            } else {
                format!("{failed}\n\n{}", messages.diagnostics)
            };
            self.tell_pages(&crate::livereload::Message::Failed(shown));
            if build.changed.is_empty() {
                output::master_line(&format!("{failed}; {keeps}"));
            } else {
                output::master_line(&format!("{what} → {failed}; {keeps}"));
            }
            self.end_if_nothing_can_fix_it(state);
            return;
        };
        let executable = plan.executable(&messages);
        // What this build read joins the watched files, whatever their extension.
        if let (Ok(Some(artifact)), Some(watcher), Some(base)) =
            (&executable, &dev.watcher, dev.roots.first())
            && let Some(inputs) = builder::build_inputs(&artifact.executable, base)
        {
            dev.build_inputs = inputs.iter().cloned().collect();
            watcher.set_build_inputs(inputs, build.started_at);
        }
        // A manifest changed: perhaps a new path dependency, watched from now on too.
        if build
            .changed
            .iter()
            .any(|path| path.file_name() == Some(std::ffi::OsStr::new("Cargo.toml")))
            && let Some(watcher) = &dev.watcher
            && let Some(roots) = plan.watch_roots()
        {
            let new: Vec<PathBuf> = roots
                .into_iter()
                .filter(|root| !dev.roots.iter().any(|known| root.starts_with(known)))
                .collect();
            if !new.is_empty() {
                dev.roots.extend(new.iter().cloned());
                watcher.add_roots(new);
            }
        }
        let rolling = self.cluster.serving_generation() > 0 && !self.cluster.is_waiting();
        if let (Ok(Some(artifact)), Some(latest), true) = (&executable, &self.spec.latest, rolling)
            && same_file_content(
                Path::new(std::ffi::OsStr::from_bytes(latest.path.as_bytes())),
                &artifact.executable,
            )
        {
            // Nothing a roll would change: the workers keep their connections.
            dev.built_once = true;
            let why = if artifact.fresh {
                "nothing to rebuild".to_owned()
            } else {
                format!("built in {}, the same binary", human_duration(built_in))
            };
            output::master_line(&format!("{what} → {why}; {keeps}"));
            return;
        }
        match executable {
            Ok(Some(Artifact {
                executable: path, ..
            })) => match dev.keep_executable(&path) {
                Ok(kept) => {
                    dev.built_once = true;
                    let argv0 = path
                        .file_name()
                        .map_or_else(|| kept.as_os_str().to_owned(), ToOwned::to_owned);
                    let replaced = self.spec.latest.replace(Program {
                        path: c_path(&kept),
                        argv0: c_path(Path::new(&argv0)),
                    });
                    self.discard_unused_builds(replaced);
                }
                Err(error) => {
                    output::master_line(&format!(
                        "{what} → built, but {} cannot be kept: {error}; {keeps}",
                        path.display()
                    ));
                    self.end_if_nothing_can_fix_it(state);
                    return;
                }
            },
            Ok(None) => dev.built_once = true,
            Err(why) => {
                output::master_line(&format!("{what} → {why}; {keeps}"));
                self.end_if_nothing_can_fix_it(state);
                return;
            }
        }
        if self.cluster.serving_generation() == 0 || self.cluster.is_waiting() {
            output::master_line(&format!("built in {}", human_duration(built_in)));
            self.feed(state, Event::Start);
        } else {
            let reload = Reload {
                changed: build.changed,
                built_in: Some(built_in),
            };
            self.roll_for(state, reload);
        }
    }

    /// Asks the core for a roll and remembers why, for the line that reports its end.
    pub(crate) fn roll_for(&mut self, state: &mut DriverState, reload: Reload) {
        // The core ignores a roll before its first generation and while it stops.
        if self.cluster.is_stopping() || self.cluster.serving_generation() == 0 {
            return;
        }
        // The first generation never became ready: a new start, not a roll.
        if self.cluster.is_waiting() {
            if let Some(dev) = &self.dev {
                output::master_line(&format!(
                    "{} → starting again",
                    dev.describe(&reload.changed)
                ));
            }
            self.feed(state, Event::Start);
            return;
        }
        let request = state.roll_request();
        if let Some(dev) = &mut self.dev {
            dev.reloads.insert(request, reload);
        }
        self.feed(state, Event::Roll(request));
    }

    /// Removes the kept copies among `programs` that no generation runs any more (a build kept
    /// for every reload would otherwise pile up until the master exits).
    pub(crate) fn discard_unused_builds(&self, programs: impl IntoIterator<Item = Program>) {
        let Some(builds_dir) = self.dev.as_ref().and_then(|dev| dev.builds_dir.as_deref()) else {
            return;
        };
        let in_use = |program: &Program| {
            self.spec
                .latest
                .as_ref()
                .is_some_and(|latest| latest.path == program.path)
                || self
                    .spec
                    .generations
                    .values()
                    .any(|kept| kept.path == program.path)
        };
        for program in programs {
            let path = Path::new(std::ffi::OsStr::from_bytes(program.path.as_bytes()));
            if path.starts_with(builds_dir) && !in_use(&program) {
                let _ = std::fs::remove_file(path);
                if let Some(copy_dir) = path.parent().filter(|dir| *dir != builds_dir) {
                    let _ = std::fs::remove_dir(copy_dir);
                }
            }
        }
    }

    /// Without a watcher (production mode), a failed initial build can never be retried.
    fn end_if_nothing_can_fix_it(&mut self, state: &mut DriverState) {
        let watching = self.dev.as_ref().is_some_and(|dev| dev.watcher.is_some());
        if !watching && self.cluster.serving_generation() == 0 {
            state.exit = Some(ExitReason::BuildFailed);
        }
    }

    /// Prints how a roll ended: in dev mode, as the one line of the reload that caused it.
    pub(crate) fn report_roll(&mut self, end: &RollEnd) {
        // The roll answers every request merged into it: one line for all their changes.
        let reload = self.dev.as_mut().and_then(|dev| {
            let mut answered = end
                .requests
                .iter()
                .filter_map(|request| dev.reloads.remove(request));
            let mut reload = answered.next()?;
            for more in answered {
                reload.changed.extend(more.changed);
                reload.built_in = more.built_in.or(reload.built_in);
            }
            reload.changed.sort();
            reload.changed.dedup();
            Some(reload)
        });
        let (Some(reload), Some(dev)) = (reload, &self.dev) else {
            output::master_line(&end.to_string());
            return;
        };
        let mut line = dev.describe(&reload.changed);
        if let Some(built_in) = reload.built_in {
            let _ = write!(line, " → built in {}", human_duration(built_in));
        }
        let _ = match &end.aborted {
            None => write!(
                line,
                " → rolled {} in {}{}",
                if end.size == 1 {
                    "1 worker".to_owned()
                } else {
                    format!("{} workers", end.size)
                },
                human_duration(end.elapsed),
                end.switch
                    .map(|switch| format!(" (switch {})", human_duration(switch)))
                    .unwrap_or_default()
            ),
            Some(why) => write!(line, " → not rolled: {why}; {}", end.keeps_serving()),
        };
        output::master_line(&line);
    }
}

/// Whether two files hold the same bytes: the same file (a kept link to a build cargo found
/// fresh), or equal contents (a build that produced the same binary again). `false` when in
/// doubt.
fn same_file_content(a: &Path, b: &Path) -> bool {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta_a), Ok(meta_b)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    if (meta_a.dev(), meta_a.ino()) == (meta_b.dev(), meta_b.ino()) {
        return true;
    }
    if meta_a.len() != meta_b.len() {
        return false;
    }
    let (Ok(mut file_a), Ok(mut file_b)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let mut buf_a = vec![0; 1 << 16];
    let mut buf_b = vec![0; 1 << 16];
    loop {
        let Ok(n) = file_a.read(&mut buf_a) else {
            return false;
        };
        if n == 0 {
            return file_b.read(&mut buf_b[..1]).is_ok_and(|m| m == 0);
        }
        if file_b.read_exact(&mut buf_b[..n]).is_err() || buf_a[..n] != buf_b[..n] {
            return false;
        }
    }
}

/// The name of a master's builds directory, before its pid: `target/<profile>/.mcluster-PID/`.
const BUILDS_PREFIX: &str = ".mcluster-";

/// The file in a builds directory that says which master made it. Its name cannot be a kept
/// build's directory (`N`).
const OWNER_FILE: &str = ".mcluster-owner";

/// The first line of a builds directory's owner file.
const OWNER_KIND: &str = "mcluster builds directory";

/// Removes the builds directories in `parent` that masters now gone left behind, and only what
/// is provably theirs: a real directory `.mcluster-PID` (no symlink) of our uid, holding an
/// owner file of ours naming that pid, whose owner is gone, and nothing but kept builds
/// (directories `N` of ours holding nothing but regular files of ours). Anything else is left as
/// it is.
fn sweep_leftovers(parent: &Path) {
    let Some(here) = Here::now() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(BUILDS_PREFIX))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if let Some(copies) = leftover_files(&dir, pid, &here) {
            for (copy_dir, files) in copies {
                for file in files {
                    let _ = std::fs::remove_file(file);
                }
                let _ = std::fs::remove_dir(copy_dir);
            }
            let _ = std::fs::remove_file(dir.join(OWNER_FILE));
            // Not `remove_dir_all`: whatever appeared meanwhile stays, and so does the directory.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The kept builds in `dir` (each copy's directory and its files) if it is a builds directory
/// of `pid` whose owner is gone and that holds nothing else; `None` when anything about it is
/// not provably ours.
fn leftover_files(dir: &Path, pid: u32, here: &Here) -> Option<Vec<(PathBuf, Vec<PathBuf>)>> {
    use std::os::unix::fs::MetadataExt;
    let ours = |metadata: &std::fs::Metadata| metadata.uid() == here.uid;
    let metadata = std::fs::symlink_metadata(dir).ok()?;
    if !metadata.is_dir() || !ours(&metadata) {
        return None;
    }
    if !leftover::proves_gone(&dir.join(OWNER_FILE), OWNER_KIND, pid, here) {
        return None;
    }
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name();
        if name == OWNER_FILE {
            continue;
        }
        let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
        if !metadata.is_dir() || !ours(&metadata) || !is_copy_dir_name(&name) {
            return None;
        }
        let mut files = Vec::new();
        for file in std::fs::read_dir(entry.path()).ok()? {
            let file = file.ok()?;
            let metadata = std::fs::symlink_metadata(file.path()).ok()?;
            if !metadata.is_file() || !ours(&metadata) {
                return None;
            }
            files.push(file.path());
        }
        copies.push((entry.path(), files));
    }
    Some(copies)
}

/// `N`, as [`DevLoop::keep_executable`] names the directory of a kept build.
fn is_copy_dir_name(name: &std::ffi::OsStr) -> bool {
    let name = name.as_bytes();
    !name.is_empty() && name.iter().all(u8::is_ascii_digit)
}

/// A file name as it can go into one line: quoted and escaped as `{:?}` does when it holds a
/// character that would break the line or hide (a newline, a control character, an invisible
/// format character); as it is otherwise, quotes and backslashes included.
fn quoted_if_needed(name: &str) -> String {
    let needs_quotes = name
        .chars()
        .any(|c| !matches!(c, '"' | '\\' | '\'') && c.escape_debug().nth(1).is_some());
    if needs_quotes {
        format!("{name:?}")
    } else {
        name.to_owned()
    }
}

fn c_path(path: &Path) -> CString {
    // Paths from the OS and cargo's JSON never contain NUL.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leftover::Owner;

    fn dev_loop() -> DevLoop {
        DevLoop::new(None, false, vec![PathBuf::from("/p")])
    }

    #[test]
    fn a_name_with_a_newline_or_control_character_is_quoted_in_the_one_line() {
        let dev = dev_loop();
        let line = dev.describe(&[
            PathBuf::from("/p/src/a\nb.rs"),
            PathBuf::from("/p/src/tab\there.rs"),
            PathBuf::from("/p/src/esc\u{1b}[31m.rs"),
        ]);
        assert_eq!(
            line,
            r#""src/a\nb.rs", "src/tab\there.rs", "src/esc\u{1b}[31m.rs" changed"#
        );
        assert!(!line.contains('\n'));
        assert_eq!(
            dev.describe(&[PathBuf::from("/p/src/\u{202e}sr.rs")]),
            r#""src/\u{202e}sr.rs" changed"#
        );
    }

    /// A pid no process has: a child's, once reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    /// `parent/.mcluster-PID` with an owner file (if given) and these files.
    fn builds_dir(parent: &Path, pid: u32, owner: Option<&Owner>, files: &[&str]) -> PathBuf {
        let dir = parent.join(format!("{BUILDS_PREFIX}{pid}"));
        std::fs::create_dir(&dir).unwrap();
        if let Some(owner) = owner {
            std::fs::write(dir.join(OWNER_FILE), owner.render(OWNER_KIND)).unwrap();
        }
        for file in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "ELF").unwrap();
        }
        dir
    }

    #[test]
    fn the_builds_of_a_gone_master_are_swept_and_nothing_else() {
        let parent = tempfile::tempdir().unwrap();
        let here = Owner::of_self().unwrap();
        let dead = dead_pid();
        let owner = |pid, start_time, boot_id: &str, pid_namespace: &str| Owner {
            pid,
            start_time,
            boot_id: boot_id.to_owned(),
            pid_namespace: pid_namespace.to_owned(),
        };
        let gone = owner(dead, 1, &here.boot_id, &here.pid_namespace);
        let swept = builds_dir(parent.path(), dead, Some(&gone), &["1/app", "2/app"]);

        // Left alone: no owner file; anything else inside; a live owner; a pid namespace we
        // cannot see into; an owner file naming another pid; a symlink.
        let dead2 = dead_pid();
        let user_own = builds_dir(parent.path(), dead2, None, &["1/app"]);
        let dead3 = dead_pid();
        let gone3 = owner(dead3, 1, &here.boot_id, &here.pid_namespace);
        let with_notes = builds_dir(parent.path(), dead3, Some(&gone3), &["1/app", "notes.txt"]);
        let live = builds_dir(parent.path(), here.pid, Some(&here), &["1/app"]);
        let dead4 = dead_pid();
        let elsewhere = owner(dead4, 1, &here.boot_id, "pid:[1]");
        let other_namespace = builds_dir(parent.path(), dead4, Some(&elsewhere), &["1/app"]);
        let dead5 = dead_pid();
        let misnamed = builds_dir(parent.path(), dead5, Some(&gone), &["1/app"]);
        let target = parent.path().join("real");
        std::fs::create_dir(&target).unwrap();
        let dead6 = dead_pid();
        let gone6 = owner(dead6, 1, &here.boot_id, &here.pid_namespace);
        std::fs::write(target.join(OWNER_FILE), gone6.render(OWNER_KIND)).unwrap();
        std::fs::create_dir(target.join("1")).unwrap();
        std::fs::write(target.join("1/app"), "ELF").unwrap();
        let link = parent.path().join(format!("{BUILDS_PREFIX}{dead6}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();

        sweep_leftovers(parent.path());
        assert!(!swept.exists());
        for kept in [
            &user_own,
            &with_notes,
            &live,
            &other_namespace,
            &misnamed,
            &link,
        ] {
            assert!(
                kept.join("1/app").exists() || kept == &link,
                "{}",
                kept.display()
            );
        }
        assert!(target.join(OWNER_FILE).exists());
        assert!(with_notes.join("notes.txt").exists());
    }

    #[test]
    fn a_reused_pid_or_an_earlier_boot_is_a_gone_owner() {
        let parent = tempfile::tempdir().unwrap();
        let here = Owner::of_self().unwrap();
        // Our own pid, but another process's start time: the master that had it is gone.
        let reused = Owner {
            start_time: here.start_time + 1,
            ..here.clone()
        };
        let dir = builds_dir(parent.path(), here.pid, Some(&reused), &["1/app"]);
        sweep_leftovers(parent.path());
        assert!(!dir.exists());
        // A live pid, and even another pid namespace, in an earlier boot.
        let earlier = Owner {
            boot_id: "00000000-0000-0000-0000-000000000000".to_owned(),
            pid_namespace: "pid:[1]".to_owned(),
            ..here.clone()
        };
        let dir = builds_dir(parent.path(), here.pid, Some(&earlier), &["3/app"]);
        sweep_leftovers(parent.path());
        assert!(!dir.exists());
    }

    #[test]
    fn the_owner_file_replaces_a_symlink_at_its_place_instead_of_writing_through_it() {
        let parent = tempfile::tempdir().unwrap();
        let executable = parent.path().join("app");
        std::fs::write(&executable, "ELF").unwrap();
        // A builds directory of this pid left over (a dead master had it) that was not swept,
        // with a symlink where the owner file goes.
        let dir = parent
            .path()
            .join(format!("{BUILDS_PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "keeps it from the sweep").unwrap();
        let victim = parent.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(OWNER_FILE)).unwrap();
        let mut dev = dev_loop();
        let kept = dev.keep_executable(&executable).unwrap();
        assert!(kept.starts_with(&dir), "{}", kept.display());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap();
        assert_eq!(Owner::parse(&owner, OWNER_KIND), Owner::of_self());
        drop(dev);
        assert!(!dir.exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn the_same_file_or_the_same_bytes_is_the_same_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(path("a"), &big).unwrap();
        std::fs::hard_link(path("a"), path("link")).unwrap();
        std::fs::write(path("copy"), &big).unwrap();
        let mut changed = big.clone();
        changed[150_000] ^= 1;
        std::fs::write(path("changed"), &changed).unwrap();
        std::fs::write(path("shorter"), &big[..100]).unwrap();
        assert!(same_file_content(&path("a"), &path("link")));
        assert!(same_file_content(&path("a"), &path("copy")));
        assert!(!same_file_content(&path("a"), &path("changed")));
        assert!(!same_file_content(&path("a"), &path("shorter")));
        assert!(!same_file_content(&path("a"), &path("missing")));
    }

    #[test]
    fn a_file_changed_during_two_builds_it_triggered_is_named_and_then_ignored_during_builds() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("src/stamp.rs");
        std::fs::create_dir(dir.path().join("src")).unwrap();
        // Every time here is set, never read from the wall clock: a file's mtime comes from the
        // kernel's coarse clock, which may lag `SystemTime::now()` by a tick.
        let at =
            |seconds: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds);
        let write_at = |contents: &str, mtime: SystemTime| {
            std::fs::write(&stamp, contents).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&stamp)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        };
        let mut dev = DevLoop::new(None, false, vec![dir.path().to_path_buf()]);
        let mut clock = 0;
        let mut write_during_a_build = |dev: &mut DevLoop| {
            clock += 10;
            write_at(&format!("build {clock}"), at(clock + 1));
            dev.last_build = Some((vec![stamp.clone()], at(clock), at(clock + 2)));
            dev.without_build_writes(vec![stamp.clone()])
        };
        // A save right after a build it triggered is no round.
        dev.last_build = Some((vec![stamp.clone()], at(0), at(1)));
        write_at("saved", at(2));
        assert_eq!(
            dev.without_build_writes(vec![stamp.clone()]),
            vec![stamp.clone()]
        );
        assert!(dev.loop_rounds.is_empty());
        // Nor one whose mtime, from the coarse clock, reads a few milliseconds before the end.
        write_at("saved again", at(1) - Duration::from_millis(5));
        assert_eq!(
            dev.without_build_writes(vec![stamp.clone()]),
            vec![stamp.clone()]
        );
        assert!(dev.loop_rounds.is_empty(), "{:?}", dev.loop_rounds);

        assert_eq!(
            write_during_a_build(&mut dev),
            vec![stamp.clone()],
            "round 1 still counts"
        );
        assert!(
            write_during_a_build(&mut dev).is_empty(),
            "round 2 names it"
        );
        assert!(dev.written_by_builds.contains(&stamp));
        assert!(
            write_during_a_build(&mut dev).is_empty(),
            "ignored during builds"
        );
        // The user's own save, between builds, still counts.
        write_at("mine", at(100));
        assert_eq!(
            dev.without_build_writes(vec![stamp.clone()]),
            vec![stamp.clone()]
        );
    }

    #[test]
    fn kept_build_directories_are_numbers() {
        for name in ["1", "12"] {
            assert!(is_copy_dir_name(std::ffi::OsStr::new(name)), "{name}");
        }
        for name in ["", "app", "1-app", "x1", OWNER_FILE] {
            assert!(!is_copy_dir_name(std::ffi::OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn a_kept_build_has_the_binary_s_own_name_in_a_directory_per_copy() {
        let target = tempfile::tempdir().unwrap();
        let built = target.path().join("app");
        std::fs::write(&built, "ELF 1").unwrap();
        let mut dev = dev_loop();
        let first = dev.keep_executable(&built).unwrap();
        std::fs::remove_file(&built).unwrap();
        std::fs::write(&built, "ELF 2").unwrap();
        let second = dev.keep_executable(&built).unwrap();
        let builds = dev.builds_dir.clone().unwrap();
        assert_eq!(first, builds.join("1/app"));
        assert_eq!(second, builds.join("2/app"));
        assert_eq!(std::fs::read_to_string(first).unwrap(), "ELF 1");
        drop(dev);
        assert!(!builds.exists());
    }

    #[test]
    fn ordinary_names_are_shown_as_they_are() {
        let dev = dev_loop();
        assert_eq!(
            dev.describe(&[
                PathBuf::from("/p/src/main.rs"),
                PathBuf::from("/p/it's \"ok\" é.rs"),
                PathBuf::from("/elsewhere/x.rs"),
                PathBuf::from("/p/d.rs"),
            ]),
            r#"src/main.rs, it's "ok" é.rs, /elsewhere/x.rs and 1 more changed"#
        );
    }
}

//! The dev core: every decision of dev mode's build lifecycle, sans I/O. It takes what happened
//! ([`DevEvent`], with the time as an argument and the facts the driver read from the OS) and
//! the cluster core's state ([`Served`]), and answers with what to do ([`DevAction`]).
//!
//! It owns every `Instant`, counter and pending request of the lifecycle: the build in flight
//! (at most one; a save during it cancels it and starts another with both sets of changes), when
//! its outcome is read (once its process exited and its output ended, or [`OUTPUT_GRACE`] after
//! the exit), how each build ends (exactly one [`Outcome`]), the loop rule (a file the builds
//! themselves write is named once and its changes during builds ignored), what a change means (a
//! build input, an asset the pages reload, or a file the app reads that no build does: a roll
//! with no build), when a failed build's overlay goes (a build succeeds), the reloads waiting for their rolls to end (one
//! line each), when pages reload (at the end of a roll, when the switch is complete: no old worker
//! can answer any more), turn into the app, or show a
//! failed build, the lookups of the project's directories after a manifest changed (one at a time, a change
//! meanwhile coalesced into one more; the build ends once they are watched), and when the
//! session ends because nothing can fix it.
//!
//! The driver ([`crate::dev`] and the supervisor) reads file times, build messages, dep-info and
//! binaries, spawns and kills the build, keeps the executables, and asks the cluster to roll.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::{ExitReason, ProcessEnd, RollEnd, after};

/// How long the output of a build whose process exited may still take to end: a process the
/// build started (a compiler cache server, say) may hold its pipes open for ever, and the
/// outcome does not wait for it longer. It then comes from what was read of the output so far.
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// After how many builds in a row that a file's own change triggered and during which it
/// changed again, the file is named as one the build writes.
const LOOP_ROUNDS: u32 = 2;

/// A file's modification time (the kernel's coarse clock) may lag the clock read when a build
/// starts or ends by a clock tick.
const MTIME_SLACK: Duration = Duration::from_millis(20);

/// Whether a changed file is a manifest, which may name new path dependencies.
fn is_manifest(path: &Path) -> bool {
    path.file_name() == Some(std::ffi::OsStr::new("Cargo.toml"))
}

/// A build, numbered from 1 in the order the core asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BuildId(pub(crate) u64);

/// What the cluster core says of itself when an event arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Served {
    /// The generation serving; 0 before the first one is up.
    pub(crate) generation: u64,
    /// The first generation never became ready and waits for a new start.
    pub(crate) waiting: bool,
    /// The master stops.
    pub(crate) stopping: bool,
}

/// A changed file as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangedFile {
    pub(crate) path: PathBuf,
    /// Its modification time, if it could be read.
    pub(crate) modified: Option<SystemTime>,
}

/// The executable a successful build produced, with the facts the driver read about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Built {
    pub(crate) executable: PathBuf,
    /// Cargo found it up to date and built nothing.
    pub(crate) fresh: bool,
    /// It holds the same bytes as what a new generation would run now.
    pub(crate) same_as_latest: bool,
}

/// How a build process ended, with what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildResult {
    /// It failed (or was killed from outside).
    Failed {
        end: ProcessEnd,
        /// The end of its stderr, for the pages.
        diagnostics: String,
        /// An option of ours the build program refused, if that is why it failed.
        refused: Option<String>,
    },
    /// It succeeded.
    Succeeded {
        /// The executable; `Ok(None)`: a build with nothing to run (`PROGRAM` given); `Err`:
        /// why no executable can be used.
        executable: Result<Option<Built>, String>,
        /// The files it read (its dep-info), when the driver could read them.
        inputs: Option<Vec<PathBuf>>,
    },
}

/// What happened, in dev mode.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DevEvent {
    /// The master starts: the initial build, or the first generation at once.
    Begin {
        /// A build runs before each generation (no `--no-build`).
        building: bool,
        /// Files are watched (a save can fix what fails).
        watching: bool,
        /// Pages are connected through the live-reload channel.
        livereload: bool,
    },
    /// A debounced batch of changed files, at the wall-clock time `wall`.
    Changed {
        files: Vec<ChangedFile>,
        wall: SystemTime,
    },
    /// A roll asked for by SIGHUP or the handle.
    RollRequested,
    /// The build asked for runs, since `wall`.
    BuildStarted { build: BuildId, wall: SystemTime },
    /// The build asked for could not start.
    BuildNotStarted { build: BuildId, why: String },
    /// The build process exited (reaped), at `wall`, as `end` says.
    BuildExited {
        build: BuildId,
        end: ProcessEnd,
        wall: SystemTime,
    },
    /// The build's output is complete: its pipes ended (cargo's stderr passed on to the last
    /// byte). At once for a build whose output is not read.
    BuildOutputEnded { build: BuildId },
    /// The outcome of a build, as [`DevAction::Collect`] asked for it.
    BuildEnded { build: BuildId, result: BuildResult },
    /// Time passed: a deadline of [`DevCore::next_deadline`] may be due.
    Tick,
    /// The executable of [`DevAction::Install`] is what new generations run now.
    Installed { build: BuildId },
    /// It could not be kept.
    NotInstalled { build: BuildId, why: String },
    /// The directories the project's manifests name now, as the lookup
    /// [`DevAction::FindRoots`] numbered `lookup` found them.
    Roots { lookup: u64, roots: Vec<PathBuf> },
    /// The roll of [`DevAction::Roll`] was sent as this request.
    RollSent { request: u64 },
    /// The cluster refused a roll request.
    RollRefused { request: u64 },
    /// A roll ended.
    RollEnded(RollEnd),
    /// Every worker of the first generation is ready.
    Serving,
}

/// What a page of the live-reload channel is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Page {
    Reload,
    Css,
    /// A build failed.
    Failed(BuildFailure),
    /// A build succeeded after one failed: the overlay goes, the page stays (it shows what
    /// serves; a roll that follows reloads it).
    Clear,
}

/// A failed build, as the pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildFailure {
    /// How the build process ended.
    pub(crate) end: ProcessEnd,
    /// How long it ran.
    pub(crate) built_in: Duration,
    /// The end of its stderr; empty if it said nothing.
    pub(crate) diagnostics: String,
}

/// Changed files, relative to the root they are in (none: a roll asked for by SIGHUP or the
/// handle, or the initial build).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Changes(pub(crate) Vec<PathBuf>);

/// What keeps serving after a build that rolls nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keeps {
    /// No generation serves, and nothing rebuilds (production mode).
    Nothing,
    /// No generation serves yet; a save may fix the build.
    NothingYet,
    /// This generation keeps serving.
    Generation(u64),
}

/// What the dev core tells the user, as facts: the reporter ([`crate::report`]) puts them in
/// words for the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DevReport {
    /// The build program could not start.
    BuildNotStarted {
        /// Why.
        why: String,
        /// The generation that keeps serving, when a save can still fix it.
        serving: Option<u64>,
    },
    /// Before any build succeeded, the build program refused an option of ours: nothing a
    /// save can fix.
    Refused {
        /// The option, as the build program named it.
        culprit: String,
    },
    /// A build failed.
    BuildFailed {
        /// What triggered it.
        changed: Changes,
        /// How the build process ended.
        end: ProcessEnd,
        /// How long it ran.
        built_in: Duration,
        /// What keeps serving.
        keeps: Keeps,
    },
    /// A build made the binary that runs already: nothing rolls.
    Unchanged {
        /// What triggered it.
        changed: Changes,
        /// How long it ran; `None`: cargo found nothing to rebuild.
        built_in: Option<Duration>,
        /// What keeps serving.
        keeps: Keeps,
    },
    /// A build's executable cannot be used.
    Unusable {
        /// What triggered it.
        changed: Changes,
        /// Why.
        why: String,
        /// What keeps serving.
        keeps: Keeps,
    },
    /// A build's executable cannot be kept for new generations.
    NotKept {
        /// What triggered it.
        changed: Changes,
        /// The executable.
        executable: PathBuf,
        /// Why.
        why: String,
        /// What keeps serving.
        keeps: Keeps,
    },
    /// A build succeeded: the first generation starts with it.
    Built {
        /// How long it ran.
        built_in: Duration,
    },
    /// The first generation never became ready: it starts again for these changes.
    StartingAgain {
        /// What changed.
        changed: Changes,
    },
    /// Only assets changed: the pages reload them, with no build.
    Assets {
        /// What changed.
        changed: Changes,
        /// Only stylesheets: reloaded in place.
        css: bool,
    },
    /// A file changed during each of the last [`LOOP_ROUNDS`] builds it triggered: the build
    /// writes it, and its changes while a build runs are ignored from now on.
    BuildWrites {
        /// The file, relative to its root.
        file: PathBuf,
        /// The rounds.
        rounds: u32,
    },
    /// A roll ended.
    Rolled {
        /// The reload that asked for it, if it came from this core: what changed and what ran
        /// before the roll.
        reload: Option<(Changes, Before)>,
        /// How it ended.
        end: RollEnd,
    },
}

/// What ran before a roll the dev core asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Before {
    /// No build: a roll asked for by SIGHUP or the handle, or a session without builds.
    Nothing,
    /// A build that ran this long.
    Build(Duration),
    /// No build: the changed files are no build's inputs (files the app reads at run time).
    NotInput,
}

/// How a build ended: exactly one per build asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A save came during it.
    Cancelled,
    /// The build program could not start.
    NotStarted,
    /// It failed; nothing changes.
    Failed,
    /// The binary is the one running (or cargo built nothing): nothing rolls.
    Unchanged,
    /// Its executable cannot be used or kept.
    Unusable,
    /// New generations run it: a start or a roll follows.
    Installed,
}

/// What the driver does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DevAction {
    /// Start a build; answered with [`DevEvent::BuildStarted`] or [`DevEvent::BuildNotStarted`].
    StartBuild(BuildId),
    /// Kill the build (its exit is reaped as a stray's), or forget it if it exited already.
    CancelBuild(BuildId),
    /// Read the outcome of a build whose process exited as `end` says, from what was read of
    /// its output so far (all of it, unless [`OUTPUT_GRACE`] passed); answered with
    /// [`DevEvent::BuildEnded`].
    Collect { build: BuildId, end: ProcessEnd },
    /// Keep a copy of this executable for new generations; answered with
    /// [`DevEvent::Installed`] or [`DevEvent::NotInstalled`].
    Install { build: BuildId, executable: PathBuf },
    /// The watcher takes these files as build inputs, changed if modified since `since`.
    WatchInputs {
        inputs: Vec<PathBuf>,
        since: SystemTime,
    },
    /// Ask cargo for the project's directories (slow: off the loop); answered with
    /// [`DevEvent::Roots`] of the same `lookup`. At most one is in flight; a build of a changed
    /// manifest ends once none is.
    FindRoots { lookup: u64 },
    /// Watch these directories too.
    AddRoots(Vec<PathBuf>),
    /// The cluster starts its first generation (again).
    Start,
    /// The cluster rolls; answered with [`DevEvent::RollSent`].
    Roll,
    /// Tell the pages.
    Pages(Page),
    /// Tell the user.
    Report(DevReport),
    /// How a build ended.
    Ended { build: BuildId, outcome: Outcome },
    /// The master exits.
    Exit(ExitReason),
}

/// The build in flight.
#[derive(Debug)]
struct Build {
    id: BuildId,
    changed: Vec<PathBuf>,
    started: Instant,
    /// When it started by the wall clock, to compare with the times of the files it may write;
    /// `None` until [`DevEvent::BuildStarted`].
    started_at: Option<SystemTime>,
    /// Its process exited: when, and how.
    exited: Option<Exit>,
    /// Its output is complete.
    output_ended: bool,
    /// Its outcome was asked for ([`DevAction::Collect`]): it is in flight until it comes.
    collecting: bool,
    /// Its outcome, read, waiting for the roots lookup its changed manifest asked for.
    outcome: Option<BuildResult>,
}

/// How and when a build process exited.
#[derive(Debug, Clone, Copy)]
struct Exit {
    now: Instant,
    /// By the wall clock: every file the build wrote is older.
    wall: SystemTime,
    end: ProcessEnd,
}

/// A reload waiting for its roll to end, for the one-line summary.
#[derive(Debug)]
struct Reload {
    /// The files that changed; none for a roll asked for by SIGHUP or the handle.
    changed: Vec<PathBuf>,
    before: Before,
}

impl Default for Reload {
    fn default() -> Self {
        Self {
            changed: Vec::new(),
            before: Before::Nothing,
        }
    }
}

/// A build that succeeded, waiting for its executable to be kept.
#[derive(Debug)]
struct Installing {
    id: BuildId,
    changed: Vec<PathBuf>,
    built_in: Duration,
    executable: PathBuf,
}

/// How the session runs, from [`DevEvent::Begin`].
#[derive(Debug, Default, Clone, Copy)]
struct Mode {
    building: bool,
    watching: bool,
    livereload: bool,
}

/// Dev mode's state.
// Its flags are independent facts of the session, each read on its own.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default)]
pub(crate) struct DevCore {
    mode: Mode,
    /// Paths in messages are shown relative to the one of these they are in.
    roots: Vec<PathBuf>,
    /// Directories of assets the app serves from disk (live reload).
    assets: Vec<PathBuf>,
    builds: u64,
    build: Option<Build>,
    installing: Option<Installing>,
    /// The reload of a [`DevAction::Roll`] not yet sent.
    unsent: Option<Reload>,
    /// The reloads whose rolls have not ended, by roll request.
    reloads: HashMap<u64, Reload>,
    /// A build succeeded: its options are good for this project, so a later failure is the
    /// project's, which a save can fix.
    built_once: bool,
    /// The last build that ran to its end: what triggered it, and when it ran.
    last_build: Option<(Vec<PathBuf>, SystemTime, SystemTime)>,
    /// Files that changed during a build they triggered, and in how many builds in a row.
    loop_rounds: HashMap<PathBuf, u32>,
    /// Files the builds write (named once): their changes made while a build runs are ignored.
    written_by_builds: BTreeSet<PathBuf>,
    /// The files the last build read (its dep-info): never mere assets. `None` until a
    /// successful build's dep-info was read; then a file out of it is no build input.
    build_inputs: Option<BTreeSet<PathBuf>>,
    /// Pages were told to turn into the app once.
    served: bool,
    /// The pages show a failed build's overlay (told [`Page::Failed`], not told since to clear
    /// it): it stays over reloads until a build succeeds.
    overlay: bool,
    /// The roots lookups asked for so far.
    lookups: u64,
    /// The roots lookup in flight.
    looking_up: Option<u64>,
    /// A manifest changed again while a lookup was in flight (which may have read it before
    /// the change): one more follows it, however many changes came meanwhile.
    look_up_again: bool,
}

impl DevCore {
    pub(crate) fn new(roots: Vec<PathBuf>, assets: Vec<PathBuf>) -> Self {
        Self {
            roots,
            assets,
            ..Self::default()
        }
    }

    /// When [`DevEvent::Tick`] is due: the end of a build's [`OUTPUT_GRACE`], while its
    /// process exited and its output has not ended.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let build = self.build.as_ref()?;
        let exit = build.exited?;
        (!build.output_ended && !build.collecting).then(|| after(exit.now, OUTPUT_GRACE))
    }

    /// Handles one event at `now`, the cluster being as `served` says.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        served: Served,
        event: DevEvent,
    ) -> Vec<DevAction> {
        let mut out = Vec::new();
        match event {
            DevEvent::Begin {
                building,
                watching,
                livereload,
            } => {
                self.mode = Mode {
                    building,
                    watching,
                    livereload,
                };
                if building {
                    self.start_build(now, Vec::new(), &mut out);
                } else {
                    out.push(DevAction::Start);
                }
            }
            DevEvent::Changed { files, wall } => self.changed(now, served, files, wall, &mut out),
            DevEvent::RollRequested => self.roll_for(served, Reload::default(), &mut out),
            DevEvent::BuildStarted { build, wall } => {
                if let Some(running) = self.build.as_mut().filter(|running| running.id == build) {
                    running.started_at = Some(wall);
                }
            }
            DevEvent::BuildNotStarted { build, why } => {
                if self
                    .build
                    .as_ref()
                    .is_some_and(|running| running.id == build)
                {
                    self.build = None;
                    // Before any build succeeded, no save can make the build program appear.
                    if self.mode.watching && self.built_once {
                        out.push(DevAction::Report(DevReport::BuildNotStarted {
                            why,
                            serving: Some(served.generation),
                        }));
                    } else {
                        out.push(DevAction::Report(DevReport::BuildNotStarted {
                            why,
                            serving: None,
                        }));
                        out.push(DevAction::Exit(ExitReason::BuildFailed));
                    }
                    out.push(DevAction::Ended {
                        build,
                        outcome: Outcome::NotStarted,
                    });
                }
            }
            DevEvent::BuildExited { build, end, wall } => {
                if let Some(running) = self
                    .build
                    .as_mut()
                    .filter(|running| running.id == build && running.exited.is_none())
                {
                    running.exited = Some(Exit { now, wall, end });
                    self.collect_when_due(now, &mut out);
                }
            }
            DevEvent::BuildOutputEnded { build } => {
                if let Some(running) = self.build.as_mut().filter(|running| running.id == build) {
                    running.output_ended = true;
                    self.collect_when_due(now, &mut out);
                }
            }
            DevEvent::Tick => self.collect_when_due(now, &mut out),
            DevEvent::BuildEnded { build, result } => {
                let Some(running) = self.build.as_mut().filter(|running| {
                    running.id == build && running.collecting && running.outcome.is_none()
                }) else {
                    return out;
                };
                // A manifest changed: perhaps a new path dependency, watched from now on too.
                // The build ends once the lookup is done, so that the pages reload onto an app
                // whose every file is watched.
                if self.mode.watching
                    && matches!(result, BuildResult::Succeeded { .. })
                    && running.changed.iter().any(|path| is_manifest(path))
                {
                    running.outcome = Some(result);
                    self.find_roots(&mut out);
                } else {
                    self.build_ended(served, build, result, &mut out);
                }
            }
            DevEvent::Installed { build } => {
                if let Some(installing) = self.installing.take_if(|i| i.id == build) {
                    self.built_once = true;
                    self.installed(
                        served,
                        installing.id,
                        installing.changed,
                        installing.built_in,
                        &mut out,
                    );
                }
            }
            DevEvent::NotInstalled { build, why } => {
                if let Some(installing) = self.installing.take_if(|i| i.id == build) {
                    out.push(DevAction::Report(DevReport::NotKept {
                        changed: self.relative(&installing.changed),
                        executable: installing.executable,
                        why,
                        keeps: self.keeps(served),
                    }));
                    self.end_if_nothing_can_fix_it(served, &mut out);
                    out.push(DevAction::Ended {
                        build,
                        outcome: Outcome::Unusable,
                    });
                }
            }
            DevEvent::Roots { lookup, roots } => {
                if self.looking_up.take_if(|asked| *asked == lookup).is_none() {
                    return out;
                }
                let new: Vec<PathBuf> = roots
                    .into_iter()
                    .filter(|root| !self.roots.iter().any(|known| root.starts_with(known)))
                    .collect();
                if !new.is_empty() {
                    self.roots.extend(new.iter().cloned());
                    out.push(DevAction::AddRoots(new));
                }
                if std::mem::take(&mut self.look_up_again) {
                    self.find_roots(&mut out);
                }
                // The build that waits for the roots ends once no lookup is in flight (the one
                // that followed read its manifest).
                if self.looking_up.is_none()
                    && let Some(running) = &mut self.build
                    && let Some(result) = running.outcome.take()
                {
                    let build = running.id;
                    self.build_ended(served, build, result, &mut out);
                }
            }
            DevEvent::RollSent { request } => {
                if let Some(reload) = self.unsent.take() {
                    self.reloads.insert(request, reload);
                }
            }
            DevEvent::RollRefused { request } => {
                self.reloads.remove(&request);
            }
            DevEvent::RollEnded(end) => {
                // The cluster ends a roll when its switch is complete: no worker of an older
                // generation can answer any more, so a page that reloads now gets the new one.
                let reload_pages = end.aborted.is_none() && self.mode.livereload;
                let reload = self.reload_of(&end);
                out.push(DevAction::Report(DevReport::Rolled { reload, end }));
                if reload_pages {
                    out.push(DevAction::Pages(Page::Reload));
                }
            }
            DevEvent::Serving => {
                // Pages showing the building page (or waiting for the app) turn into it.
                if !self.served {
                    self.served = true;
                    if self.mode.livereload {
                        out.push(DevAction::Pages(Page::Reload));
                    }
                }
            }
        }
        out
    }

    /// Files changed: rebuild (cancelling a build in flight), or roll at once with no build.
    fn changed(
        &mut self,
        now: Instant,
        served: Served,
        files: Vec<ChangedFile>,
        wall: SystemTime,
        out: &mut Vec<DevAction>,
    ) {
        if served.stopping {
            return;
        }
        if !self.mode.building {
            let reload = Reload {
                changed: files.into_iter().map(|file| file.path).collect(),
                before: Before::Nothing,
            };
            self.roll_for(served, reload, out);
            return;
        }
        let changed = self.without_build_writes(files, wall, out);
        if changed.is_empty() {
            return;
        }
        // Only assets changed (files the app serves from disk, which no build reads): the pages
        // reload, a stylesheet in place; no build, no roll.
        if self.mode.livereload && self.only_assets(&changed) {
            let css = changed
                .iter()
                .all(|path| path.extension().is_some_and(|ext| ext == "css"));
            out.push(DevAction::Report(DevReport::Assets {
                changed: self.relative(&changed),
                css,
            }));
            out.push(DevAction::Pages(if css { Page::Css } else { Page::Reload }));
            return;
        }
        // Files no build reads (the app's templates, say): the app reads them, at start-up
        // most likely, so the workers roll at once, with no build. With no app yet, a build
        // makes one.
        let (run_time, mut changed): (Vec<PathBuf>, Vec<PathBuf>) = changed
            .into_iter()
            .partition(|path| served.generation > 0 && self.read_at_run_time(path));
        if !run_time.is_empty() {
            let reload = Reload {
                changed: run_time,
                before: Before::NotInput,
            };
            self.roll_for(served, reload, out);
        }
        if changed.is_empty() {
            return;
        }
        if let Some(build) = self.build.take() {
            // A save during a build: the build is stale, start over with both sets of changes.
            out.push(DevAction::CancelBuild(build.id));
            out.push(DevAction::Ended {
                build: build.id,
                outcome: Outcome::Cancelled,
            });
            changed.extend(build.changed);
            changed.sort();
            changed.dedup();
        }
        self.start_build(now, changed, out);
    }

    /// Asks for the project's directories, unless a lookup is in flight: then one more follows
    /// it (coalesced: never more than one waits).
    fn find_roots(&mut self, out: &mut Vec<DevAction>) {
        if self.looking_up.is_some() {
            self.look_up_again = true;
            return;
        }
        self.lookups += 1;
        self.looking_up = Some(self.lookups);
        out.push(DevAction::FindRoots {
            lookup: self.lookups,
        });
    }

    /// Starts a build for these changes (none: the initial build).
    fn start_build(&mut self, now: Instant, changed: Vec<PathBuf>, out: &mut Vec<DevAction>) {
        self.builds += 1;
        let id = BuildId(self.builds);
        self.build = Some(Build {
            id,
            changed,
            started: now,
            started_at: None,
            exited: None,
            output_ended: false,
            collecting: false,
            outcome: None,
        });
        out.push(DevAction::StartBuild(id));
    }

    /// The outcome of the build in flight is asked for once its process exited and its output
    /// ended, or [`OUTPUT_GRACE`] after the exit, whichever comes first; once.
    fn collect_when_due(&mut self, now: Instant, out: &mut Vec<DevAction>) {
        let Some(build) = &mut self.build else {
            return;
        };
        let Some(exit) = build.exited else {
            return;
        };
        if build.collecting || !(build.output_ended || now >= after(exit.now, OUTPUT_GRACE)) {
            return;
        }
        build.collecting = true;
        out.push(DevAction::Collect {
            build: build.id,
            end: exit.end,
        });
    }

    /// The outcome of a build: it took as long as its process ran, and wrote its files before
    /// its exit.
    fn build_ended(
        &mut self,
        served: Served,
        id: BuildId,
        result: BuildResult,
        out: &mut Vec<DevAction>,
    ) {
        let Some(build) = self
            .build
            .take_if(|build| build.id == id && build.collecting)
        else {
            return;
        };
        let Some(exit) = build.exited else {
            return;
        };
        let wall = exit.wall;
        self.last_build = Some((
            build.changed.clone(),
            build.started_at.unwrap_or(wall),
            wall,
        ));
        let built_in = exit.now.saturating_duration_since(build.started);
        let changed = self.relative(&build.changed);
        let keeps = self.keeps(served);
        let ended = |outcome| DevAction::Ended { build: id, outcome };
        let executable = match result {
            BuildResult::Failed {
                end,
                diagnostics,
                refused,
            } => {
                if self.mode.watching
                    && !self.built_once
                    && let Some(culprit) = refused
                {
                    out.push(DevAction::Report(DevReport::Refused { culprit }));
                    out.push(DevAction::Exit(ExitReason::BuildFailed));
                    out.push(ended(Outcome::Failed));
                    return;
                }
                if self.mode.livereload {
                    self.overlay = true;
                    out.push(DevAction::Pages(Page::Failed(BuildFailure {
                        end,
                        built_in,
                        diagnostics,
                    })));
                }
                out.push(DevAction::Report(DevReport::BuildFailed {
                    changed,
                    end,
                    built_in,
                    keeps,
                }));
                self.end_if_nothing_can_fix_it(served, out);
                out.push(ended(Outcome::Failed));
                return;
            }
            BuildResult::Succeeded { executable, inputs } => {
                // The build is fixed, whether or not it rolls: the overlay goes at once (over
                // the version that still serves, which a roll then reloads).
                self.clear_overlay(out);
                // What this build read joins the watched files, whatever their extension.
                if self.mode.watching
                    && let Some(inputs) = inputs
                {
                    self.build_inputs = Some(inputs.iter().cloned().collect());
                    out.push(DevAction::WatchInputs {
                        inputs,
                        since: build.started_at.unwrap_or(wall),
                    });
                }
                executable
            }
        };
        let rolling = served.generation > 0 && !served.waiting;
        match executable {
            Ok(Some(artifact)) if rolling && artifact.same_as_latest => {
                // Nothing a roll would change: the workers keep their connections.
                self.built_once = true;
                out.push(DevAction::Report(DevReport::Unchanged {
                    changed,
                    built_in: (!artifact.fresh).then_some(built_in),
                    keeps,
                }));
                out.push(ended(Outcome::Unchanged));
            }
            Ok(Some(artifact)) => {
                out.push(DevAction::Install {
                    build: id,
                    executable: artifact.executable.clone(),
                });
                self.installing = Some(Installing {
                    id,
                    changed: build.changed,
                    built_in,
                    executable: artifact.executable,
                });
            }
            Ok(None) => {
                self.built_once = true;
                self.installed(served, id, build.changed, built_in, out);
            }
            Err(why) => {
                out.push(DevAction::Report(DevReport::Unusable {
                    changed,
                    why,
                    keeps,
                }));
                self.end_if_nothing_can_fix_it(served, out);
                out.push(ended(Outcome::Unusable));
            }
        }
    }

    /// A build's executable is what new generations run: the first start, or a roll.
    fn installed(
        &mut self,
        served: Served,
        id: BuildId,
        changed: Vec<PathBuf>,
        built_in: Duration,
        out: &mut Vec<DevAction>,
    ) {
        out.push(DevAction::Ended {
            build: id,
            outcome: Outcome::Installed,
        });
        if served.generation == 0 || served.waiting {
            out.push(DevAction::Report(DevReport::Built { built_in }));
            out.push(DevAction::Start);
        } else {
            let reload = Reload {
                changed,
                before: Before::Build(built_in),
            };
            self.roll_for(served, reload, out);
        }
    }

    /// Asks for a roll and remembers why, for the line that reports its end.
    fn roll_for(&mut self, served: Served, reload: Reload, out: &mut Vec<DevAction>) {
        // The cluster ignores a roll before its first generation and while it stops.
        if served.stopping || served.generation == 0 {
            return;
        }
        // The first generation never became ready: a new start, not a roll.
        if served.waiting {
            out.push(DevAction::Report(DevReport::StartingAgain {
                changed: self.relative(&reload.changed),
            }));
            out.push(DevAction::Start);
            return;
        }
        self.unsent = Some(reload);
        out.push(DevAction::Roll);
    }

    /// The pages' overlay of a failed build goes, if they show one.
    fn clear_overlay(&mut self, out: &mut Vec<DevAction>) {
        if std::mem::take(&mut self.overlay) {
            out.push(DevAction::Pages(Page::Clear));
        }
    }

    /// Without a watcher (production mode), a failed initial build can never be retried.
    fn end_if_nothing_can_fix_it(&self, served: Served, out: &mut Vec<DevAction>) {
        if !self.mode.watching && served.generation == 0 {
            out.push(DevAction::Exit(ExitReason::BuildFailed));
        }
    }

    /// What keeps serving after a build that rolls nothing.
    fn keeps(&self, served: Served) -> Keeps {
        if served.generation == 0 && !self.mode.watching {
            Keeps::Nothing
        } else if served.generation == 0 {
            Keeps::NothingYet
        } else {
            Keeps::Generation(served.generation)
        }
    }

    /// The reload(s) a roll answers: their changes, and how long the last build ran; `None`
    /// when the roll answers none of this core's reloads.
    fn reload_of(&mut self, end: &RollEnd) -> Option<(Changes, Before)> {
        // The roll answers every request merged into it: one line for all their changes.
        let mut answered = end
            .requests
            .iter()
            .filter_map(|request| self.reloads.remove(request))
            .collect::<Vec<_>>()
            .into_iter();
        let mut reload = answered.next()?;
        for more in answered {
            reload.changed.extend(more.changed);
            // A build's time is worth the line most, then that no build ran for these files.
            reload.before = match (reload.before, more.before) {
                (_, Before::Build(built_in)) | (Before::Build(built_in), _) => {
                    Before::Build(built_in)
                }
                (Before::NotInput, _) | (_, Before::NotInput) => Before::NotInput,
                (Before::Nothing, Before::Nothing) => Before::Nothing,
            };
        }
        reload.changed.sort();
        reload.changed.dedup();
        Some((self.relative(&reload.changed), reload.before))
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
                    && !self
                        .build_inputs
                        .as_ref()
                        .is_some_and(|inputs| inputs.contains(path))
            })
    }

    /// Whether a changed file is read by the app rather than the build: the last build's
    /// inputs are known and it is none of them, nor a file cargo decides about (Rust sources,
    /// manifests and `Cargo.lock`: a source of another workspace member, say, which cargo then
    /// proves unused), nor an asset (read at each request: no roll is needed for it). Before
    /// the inputs are known, every file goes to a build.
    fn read_at_run_time(&self, path: &Path) -> bool {
        self.build_inputs
            .as_ref()
            .is_some_and(|inputs| !inputs.contains(path))
            && !self.assets.iter().any(|dir| path.starts_with(dir))
            && !path
                .extension()
                .is_some_and(|ext| ext == "rs" || ext == "toml")
            && path.file_name() != Some(std::ffi::OsStr::new("Cargo.lock"))
    }

    /// The changes that are not a build's own writes. A file that changes while a build runs,
    /// during builds its own change triggered, [`LOOP_ROUNDS`] times in a row, is one the build
    /// writes (a build script writing into the watched tree): one line names it, and its
    /// changes made while a build runs are ignored from then on.
    fn without_build_writes(
        &mut self,
        changed: Vec<ChangedFile>,
        wall: SystemTime,
        out: &mut Vec<DevAction>,
    ) -> Vec<PathBuf> {
        let mut builds: Vec<(&[PathBuf], SystemTime, SystemTime)> = Vec::new();
        if let Some(build) = &self.build
            && let Some(started_at) = build.started_at
        {
            builds.push((&build.changed, started_at, wall));
        }
        if let Some((triggers, started, ended)) = &self.last_build {
            // A save right after the build ended may carry an mtime a tick before the end (the
            // kernel's coarse clock): only what is older than that is surely the build's.
            let ended = ended.checked_sub(MTIME_SLACK).unwrap_or(*ended);
            builds.push((triggers, *started, ended));
        }
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
        let mut named = Vec::new();
        for ChangedFile { path, modified } in changed {
            let in_a_build = builds
                .iter()
                .any(|(_, started, ended)| during(modified, *started, *ended));
            if in_a_build && self.written_by_builds.contains(&path) {
                continue;
            }
            let own_round = builds.iter().any(|(triggers, started, ended)| {
                triggers.contains(&path) && during(modified, *started, *ended)
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
            named.push(path);
        }
        for path in named {
            out.push(DevAction::Report(DevReport::BuildWrites {
                file: self.relative_one(&path).to_path_buf(),
                rounds: LOOP_ROUNDS,
            }));
            self.written_by_builds.insert(path);
        }
        kept
    }

    /// A file as reports name it: relative to the first root (the workspace root with a cargo
    /// build), as a shell there would name it: `app/src/main.rs`, and `../axum-core/src/lib.rs`
    /// for a path dependency outside it (its own root's relative path, `src/lib.rs`, would not
    /// say which crate; its directory's name first would look like a member of the workspace).
    /// A path that shares nothing but `/` with the first root is named in full.
    fn relative_one<'p>(&self, path: &'p Path) -> Cow<'p, Path> {
        let Some(base) = self.roots.first() else {
            return Cow::Borrowed(path);
        };
        if let Ok(inside) = path.strip_prefix(base) {
            return Cow::Borrowed(inside);
        }
        let Some(common) = base.ancestors().find(|dir| path.starts_with(dir)) else {
            return Cow::Borrowed(path);
        };
        // Climbing out of a root given with `..` in it would count those as directories.
        if common.parent().is_none() || base.components().any(|c| c == Component::ParentDir) {
            return Cow::Borrowed(path);
        }
        let up = base.components().count() - common.components().count();
        let mut relative: PathBuf = std::iter::repeat_n(Component::ParentDir, up).collect();
        relative.push(path.strip_prefix(common).unwrap_or(path));
        Cow::Owned(relative)
    }

    /// Changed files as reports name them: relative to the first root (see
    /// [`relative_one`](Self::relative_one)).
    fn relative(&self, changed: &[PathBuf]) -> Changes {
        Changes(
            changed
                .iter()
                .map(|path| self.relative_one(path).to_path_buf())
                .collect(),
        )
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

//! Property tests of the dev core: random sequences of saves, build ends (the process's exit,
//! its output's end, the grace passing, the outcome read, in any order, and late facts of
//! cancelled builds), rolls and stops, with its invariants checked after every step: at most one
//! build runs, every build ends in exactly one outcome, its outcome is asked for once and only
//! once its process exited and its output ended or the grace passed, and a save is never lost
//! (every save is covered by a build that started after it, or reported as no build input: an
//! asset the pages reload, or a file the builds write).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;

use super::{
    BuildId, BuildResult, Built, ChangedFile, DevAction, DevCore, DevEvent, OUTPUT_GRACE, Outcome,
    Page, Served,
};
use crate::cluster::{Aborted, Failure, ProcessEnd, RollEnd, WorkerId};

/// The files a save can touch: sources, a manifest, assets (one also read by the build), a
/// template the app reads.
const FILES: [&str; 7] = [
    "src/main.rs",
    "src/gen.rs",
    "Cargo.toml",
    "static/app.css",
    "static/index.html",
    "static/inline.html",
    "templates/index.html",
];

#[derive(Debug, Clone)]
enum Step {
    /// A save of these files (indices into [`FILES`]); each one's mtime is now, `back`
    /// milliseconds ago (perhaps during a build), or unreadable.
    Save(Vec<(usize, Option<u16>)>),
    Advance(u16),
    /// The process of the build in flight exits, for an outcome of this kind: 0 fails, 1 a new
    /// binary, 2 the same binary, 3 fresh, 4 no usable executable, 5 an option refused.
    Exits(u8),
    /// The output of the build in flight ends.
    OutputEnds,
    /// The driver's timer for the core's deadline.
    Tick,
    /// The outcome the core asked for is read.
    Collected,
    /// A fact of the last cancelled build arrives late: 0 its exit, 1 its output's end, 2 its
    /// outcome.
    StaleEnd(u8),
    /// The roots lookup in flight answers (`false`), or one answered already answers again.
    RootsFound(bool),
    /// From now on builds fail to start / executables cannot be kept.
    StartsFail(bool),
    InstallsFail(bool),
    /// Every roll request outstanding is answered by one roll, aborted or not.
    RollEnds(bool),
    /// The oldest outstanding roll request is refused.
    RollRefused,
    RollRequested,
    Serving,
    /// The first generation waits for a new start (it never became ready), or not.
    Waiting(bool),
    Stop,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec((0..FILES.len(), prop::option::of(0..800u16)), 1..4)
            .prop_map(Step::Save),
        4 => (0..1500u16).prop_map(Step::Advance),
        3 => (0..6u8).prop_map(Step::Exits),
        3 => Just(Step::OutputEnds),
        1 => Just(Step::Tick),
        3 => Just(Step::Collected),
        1 => (0..3u8).prop_map(Step::StaleEnd),
        2 => any::<bool>().prop_map(Step::RootsFound),
        1 => prop::bool::weighted(0.2).prop_map(Step::StartsFail),
        1 => prop::bool::weighted(0.2).prop_map(Step::InstallsFail),
        2 => any::<bool>().prop_map(Step::RollEnds),
        1 => Just(Step::RollRefused),
        1 => Just(Step::RollRequested),
        1 => Just(Step::Serving),
        1 => prop::bool::weighted(0.2).prop_map(Step::Waiting),
        1 => prop::bool::weighted(0.1).prop_map(|stop| if stop { Step::Stop } else { Step::Serving }),
    ]
}

/// A dev core under random events, and what the test knows of its builds and rolls.
// Its flags are independent facts the test keeps, each checked on its own.
#[allow(clippy::struct_excessive_bools)]
struct World {
    core: DevCore,
    now: Instant,
    wall: SystemTime,
    served: Served,
    starts_fail: bool,
    installs_fail: bool,
    /// The build the core asked for and has not ended or cancelled.
    running: Option<BuildId>,
    /// What each build was asked for, when it was asked for.
    triggers: HashMap<BuildId, BTreeSet<PathBuf>>,
    /// Every build asked for, and the outcomes each got.
    outcomes: HashMap<BuildId, Vec<Outcome>>,
    /// The builds whose process exited: when, and the kind of outcome it makes (see
    /// [`Step::Exits`]).
    exits: HashMap<BuildId, (Instant, u8)>,
    /// The builds whose output ended.
    outputs_ended: HashSet<BuildId>,
    /// The builds whose outcome the core asked for, and those whose outcome was read.
    collects: HashSet<BuildId>,
    read: HashSet<BuildId>,
    /// Steps run so far.
    clock: u64,
    /// The roots lookup in flight, and the last one asked for.
    looking_up: Option<u64>,
    last_lookup: u64,
    /// When the last lookup was asked for, and when the last build of a changed manifest
    /// succeeded (in steps).
    lookup_started: u64,
    manifest_built: u64,
    cancelled: Vec<BuildId>,
    /// Saved build inputs no build has covered yet (ended, other than cancelled).
    owed: BTreeSet<PathBuf>,
    requests: u64,
    outstanding: BTreeSet<u64>,
    exited: bool,
    /// The pages show a failed build's overlay.
    overlay: bool,
}

impl World {
    fn new(livereload: bool) -> Self {
        let mut world = Self {
            core: DevCore::new(vec![PathBuf::from("/p")], vec![PathBuf::from("/p/static")]),
            now: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            served: Served::default(),
            starts_fail: false,
            installs_fail: false,
            running: None,
            triggers: HashMap::new(),
            outcomes: HashMap::new(),
            exits: HashMap::new(),
            outputs_ended: HashSet::new(),
            collects: HashSet::new(),
            read: HashSet::new(),
            clock: 0,
            looking_up: None,
            last_lookup: 0,
            lookup_started: 0,
            manifest_built: 0,
            cancelled: Vec::new(),
            owed: BTreeSet::new(),
            requests: 0,
            outstanding: BTreeSet::new(),
            exited: false,
            overlay: false,
        };
        world.feed(DevEvent::Begin {
            building: true,
            watching: true,
            livereload,
        });
        world
    }

    /// Feeds an event, answers what asks for an answer, checks each action against what the
    /// test knows; returns every action.
    fn feed(&mut self, event: DevEvent) -> Vec<DevAction> {
        let mut pending = vec![event];
        let mut all = Vec::new();
        while let Some(event) = pending.pop() {
            let stopping = self.served.stopping;
            for action in self.core.handle(self.now, self.served, event) {
                match &action {
                    DevAction::StartBuild(build) => {
                        assert!(!stopping, "a build starts while the master stops");
                        assert_eq!(
                            self.running, None,
                            "{build:?} starts while another build runs"
                        );
                        assert!(!self.outcomes.contains_key(build), "{build:?} asked twice");
                        self.running = Some(*build);
                        self.outcomes.insert(*build, Vec::new());
                        // The core's record of the build it asked for, before any answer.
                        let changed = &self.core.build.as_ref().expect("a build").changed;
                        self.triggers
                            .insert(*build, changed.iter().cloned().collect());
                        pending.push(if self.starts_fail {
                            DevEvent::BuildNotStarted {
                                build: *build,
                                why: "cargo: Too many open files".to_owned(),
                            }
                        } else {
                            DevEvent::BuildStarted {
                                build: *build,
                                wall: self.wall,
                            }
                        });
                    }
                    DevAction::CancelBuild(build) => {
                        assert_eq!(self.running, Some(*build), "cancels no running build");
                        self.cancelled.push(*build);
                    }
                    DevAction::Collect { build, end } => {
                        assert_eq!(self.running, Some(*build), "collects no running build");
                        let (exited, kind) = self
                            .exits
                            .get(build)
                            .copied()
                            .unwrap_or_else(|| panic!("{build:?} collected before its exit"));
                        assert_eq!(*end, end_of(kind));
                        assert!(
                            self.outputs_ended.contains(build) || self.now >= exited + OUTPUT_GRACE,
                            "{build:?} collected before its output ended or its grace passed"
                        );
                        assert!(self.collects.insert(*build), "{build:?} collected twice");
                    }
                    DevAction::Ended { build, outcome } => {
                        let seen = self
                            .outcomes
                            .get_mut(build)
                            .unwrap_or_else(|| panic!("{build:?} never asked for"));
                        seen.push(*outcome);
                        assert_eq!(seen.len(), 1, "{build:?} ended twice: {seen:?}");
                        if self.running == Some(*build) {
                            self.running = None;
                        }
                        if *outcome != Outcome::Cancelled {
                            for path in &self.triggers[build] {
                                self.owed.remove(path);
                            }
                        }
                    }
                    DevAction::Install { build, .. } => pending.push(if self.installs_fail {
                        DevEvent::NotInstalled {
                            build: *build,
                            why: "No space left on device".to_owned(),
                        }
                    } else {
                        DevEvent::Installed { build: *build }
                    }),
                    DevAction::Roll => {
                        assert!(self.served.generation > 0 && !stopping);
                        self.requests += 1;
                        self.outstanding.insert(self.requests);
                        pending.push(DevEvent::RollSent {
                            request: self.requests,
                        });
                    }
                    DevAction::FindRoots { lookup } => {
                        assert_eq!(self.looking_up, None, "two roots lookups in flight");
                        assert_eq!(*lookup, self.last_lookup + 1, "lookups in order");
                        self.looking_up = Some(*lookup);
                        self.last_lookup = *lookup;
                        self.lookup_started = self.clock;
                    }
                    DevAction::Start => {
                        self.served.generation = self.served.generation.max(1);
                        self.served.waiting = false;
                    }
                    DevAction::Exit(_) => self.exited = true,
                    DevAction::Pages(Page::Failed(_)) => self.overlay = true,
                    DevAction::Pages(Page::Clear) => {
                        assert!(self.overlay, "an overlay cleared that no page shows");
                        self.overlay = false;
                    }
                    DevAction::WatchInputs { .. }
                    | DevAction::AddRoots(_)
                    | DevAction::Pages(_)
                    | DevAction::Report(_) => {}
                }
                all.push(action);
            }
        }
        all
    }

    fn run(&mut self, step: Step) {
        self.clock += 1;
        match step {
            Step::Save(files) => {
                let files: Vec<ChangedFile> = files
                    .into_iter()
                    .map(|(index, back)| ChangedFile {
                        path: PathBuf::from("/p").join(FILES[index]),
                        modified: back.map(|back| self.wall - Duration::from_millis(back.into())),
                    })
                    .collect();
                let saved: Vec<PathBuf> = files.iter().map(|file| file.path.clone()).collect();
                let stopping = self.served.stopping;
                let wall = self.wall;
                let actions = self.feed(DevEvent::Changed { files, wall });
                let started = actions
                    .iter()
                    .any(|action| matches!(action, DevAction::StartBuild(_)));
                let pages = actions
                    .iter()
                    .any(|action| matches!(action, DevAction::Pages(_)));
                // A file no build reads rolls the workers (or starts the generation waiting
                // for a start), which read it again.
                let restarted = actions.contains(&DevAction::Start);
                let rolled: Vec<PathBuf> = self
                    .core
                    .reloads
                    .values()
                    .flat_map(|reload| reload.changed.iter().cloned())
                    .collect();
                if stopping {
                    assert!(actions.is_empty(), "{actions:?}");
                    return;
                }
                // Each file saved is a build input unless named as one the builds write, or
                // rolled as one no build reads, or every file of the save is an asset the pages
                // were told of.
                let inputs: Vec<PathBuf> = saved
                    .into_iter()
                    .filter(|path| {
                        !(self.core.written_by_builds.contains(path)
                            || restarted
                            || rolled.contains(path))
                    })
                    .collect();
                if !started {
                    assert!(
                        inputs.is_empty() || pages,
                        "a save of {inputs:?} started no build: {actions:?}"
                    );
                    return;
                }
                // A build that could not start ended at once: the save got its line.
                let ended_now = self.running.is_none();
                if !ended_now {
                    self.owed.extend(inputs);
                }
            }
            Step::Advance(ms) => {
                let by = Duration::from_millis(ms.into());
                self.now += by;
                self.wall += by;
            }
            Step::Exits(kind) => {
                let Some(build) = self.running.filter(|build| !self.exits.contains_key(build))
                else {
                    return;
                };
                self.exits.insert(build, (self.now, kind));
                let wall = self.wall;
                self.feed(DevEvent::BuildExited {
                    build,
                    end: end_of(kind),
                    wall,
                });
            }
            Step::OutputEnds => {
                let Some(build) = self
                    .running
                    .filter(|build| !self.outputs_ended.contains(build))
                else {
                    return;
                };
                self.outputs_ended.insert(build);
                self.feed(DevEvent::BuildOutputEnded { build });
            }
            Step::Tick => {
                self.feed(DevEvent::Tick);
                // A build whose grace passed has its outcome asked for.
                if let Some(build) = self.running
                    && let Some((exited, _)) = self.exits.get(&build)
                {
                    assert!(
                        self.now < *exited + OUTPUT_GRACE || self.collects.contains(&build),
                        "{build:?}'s grace passed, its outcome was not asked for"
                    );
                }
            }
            Step::Collected => {
                let Some(build) = self
                    .running
                    .filter(|build| self.collects.contains(build) && !self.read.contains(build))
                else {
                    return;
                };
                self.read.insert(build);
                let kind = self.exits[&build].1;
                // A build of a changed manifest that succeeds owes a roots lookup after it.
                if matches!(kind, 1..=4)
                    && self.triggers[&build].contains(&PathBuf::from("/p/Cargo.toml"))
                {
                    self.manifest_built = self.clock;
                }
                let actions = self.feed(DevEvent::BuildEnded {
                    build,
                    result: result_of(kind),
                });
                // Unless it waits for a roots lookup (its manifest changed), it ended.
                let waits = self
                    .core
                    .build
                    .as_ref()
                    .is_some_and(|running| running.outcome.is_some());
                if !waits {
                    assert_eq!(self.running, None, "{build:?} ended: {actions:?}");
                    assert_eq!(self.outcomes[&build].len(), 1);
                    // A build that succeeded leaves no overlay, whether or not it rolls.
                    if matches!(kind, 1..=4) {
                        assert!(!self.overlay, "{build:?} succeeded: {actions:?}");
                    }
                }
            }
            Step::StaleEnd(which) => {
                if let Some(&build) = self.cancelled.last() {
                    let wall = self.wall;
                    let actions = self.feed(match which {
                        0 => DevEvent::BuildExited {
                            build,
                            end: ProcessEnd::Signal(9),
                            wall,
                        },
                        1 => DevEvent::BuildOutputEnded { build },
                        _ => DevEvent::BuildEnded {
                            build,
                            result: result_of(1),
                        },
                    });
                    assert!(actions.is_empty(), "a cancelled build's end: {actions:?}");
                }
            }
            Step::RootsFound(stale) => {
                // A stale answer: of the lookup before the one in flight, or of the last one.
                let lookup = if stale {
                    self.looking_up
                        .map_or(self.last_lookup, |lookup| lookup - 1)
                } else {
                    let Some(lookup) = self.looking_up.take() else {
                        return;
                    };
                    lookup
                };
                let actions = self.feed(DevEvent::Roots {
                    lookup,
                    roots: vec![PathBuf::from("/lib/y")],
                });
                if stale {
                    assert!(actions.is_empty(), "a stale lookup's roots: {actions:?}");
                }
            }
            Step::StartsFail(fail) => self.starts_fail = fail,
            Step::InstallsFail(fail) => self.installs_fail = fail,
            Step::RollEnds(aborted) => {
                if self.outstanding.is_empty() {
                    return;
                }
                let requests: Vec<u64> =
                    std::mem::take(&mut self.outstanding).into_iter().collect();
                let generation = self.served.generation + 1;
                if !aborted {
                    self.served.generation = generation;
                }
                self.feed(DevEvent::RollEnded(RollEnd {
                    generation,
                    size: 2,
                    rolled: if aborted { 0 } else { 2 },
                    elapsed: Duration::from_millis(80),
                    switch: None,
                    aborted: aborted.then_some(Aborted {
                        worker: WorkerId {
                            slot: 0,
                            pid: None,
                            generation,
                        },
                        failure: Failure::Ended(ProcessEnd::Code(1)),
                    }),
                    failed: None,
                    serving: self.served.generation,
                    slots: vec![self.served.generation; 2],
                    requests,
                }));
            }
            Step::RollRefused => {
                if let Some(request) = self.outstanding.pop_first() {
                    self.feed(DevEvent::RollRefused { request });
                }
            }
            Step::RollRequested => {
                self.feed(DevEvent::RollRequested);
            }
            Step::Serving => {
                if self.served.generation > 0 {
                    self.feed(DevEvent::Serving);
                }
            }
            Step::Waiting(waiting) => {
                if self.served.generation > 0 {
                    self.served.waiting = waiting;
                }
            }
            Step::Stop => self.served.stopping = true,
        }
    }

    /// The build in flight runs to its end, as a new binary unless its process exited already,
    /// and every roots lookup answers.
    fn finish_build(&mut self) {
        self.run(Step::Exits(1));
        self.run(Step::OutputEnds);
        self.run(Step::Collected);
        while self.looking_up.is_some() {
            self.run(Step::RootsFound(false));
        }
    }

    fn check_invariants(&self) {
        // The core and the test agree on the build in flight: at most one.
        assert_eq!(
            self.core.build.as_ref().map(|build| build.id),
            self.running,
            "the build in flight"
        );
        // Every save not yet covered is in the build that runs.
        if !self.owed.is_empty() {
            let running = self.running.expect("saves owed, but no build runs");
            let changed: HashSet<&PathBuf> =
                self.core.build.as_ref().unwrap().changed.iter().collect();
            for path in &self.owed {
                assert!(
                    changed.contains(path),
                    "{path:?} is in no build ({running:?})"
                );
            }
        }
        // Every reload the core keeps waits for a roll request that is not answered yet.
        for request in self.core.reloads.keys() {
            assert!(self.outstanding.contains(request), "reload {request} kept");
        }
        assert!(self.core.unsent.is_none(), "a roll never sent");
        assert!(self.core.installing.is_none(), "an executable never kept");
        // The core's deadline is the grace of a build that exited, while its output is awaited.
        let awaited = self.running.and_then(|build| {
            let (exited, _) = self.exits.get(&build)?;
            (!self.outputs_ended.contains(&build) && !self.collects.contains(&build))
                .then(|| *exited + OUTPUT_GRACE)
        });
        assert_eq!(self.core.next_deadline(), awaited);
    }
}

/// How a build process of this kind (see [`Step::Exits`]) ends.
fn end_of(kind: u8) -> ProcessEnd {
    if matches!(kind, 0 | 5) {
        ProcessEnd::Code(101)
    } else {
        ProcessEnd::Code(0)
    }
}

/// The outcome read of a build of this kind (see [`Step::Exits`]).
fn result_of(kind: u8) -> BuildResult {
    let executable = |same: bool, fresh: bool| {
        Ok(Some(Built {
            executable: PathBuf::from("/p/target/debug/app"),
            fresh,
            same_as_latest: same,
        }))
    };
    match kind {
        0 | 5 => BuildResult::Failed {
            end: end_of(kind),
            diagnostics: "error".to_owned(),
            refused: (kind == 5).then(|| "cargo refused --bn".to_owned()),
        },
        4 => BuildResult::Succeeded {
            executable: Err("no binary".to_owned()),
            inputs: None,
        },
        _ => BuildResult::Succeeded {
            executable: executable(kind >= 2, kind == 3),
            inputs: Some(vec![PathBuf::from("/p/static/inline.html")]),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn builds_and_saves_hold_their_invariants(
        livereload in any::<bool>(),
        steps in prop::collection::vec(step(), 0..80),
    ) {
        let mut world = World::new(livereload);
        world.check_invariants();
        for step in steps {
            if world.exited {
                break;
            }
            world.run(step);
            world.check_invariants();
        }
        if world.exited || world.served.stopping {
            return Ok(());
        }
        // The last build ends: every save is covered, every build ended exactly once.
        world.starts_fail = false;
        world.finish_build();
        world.check_invariants();
        if world.exited {
            return Ok(());
        }
        prop_assert!(world.owed.is_empty(), "saves never built: {:?}", world.owed);
        // The last lookup started after the last manifest change built.
        prop_assert!(
            world.lookup_started >= world.manifest_built,
            "a changed manifest never looked up (lookup at step {}, manifest built at {})",
            world.lookup_started,
            world.manifest_built
        );
        for (build, outcomes) in &world.outcomes {
            prop_assert_eq!(outcomes.len(), 1, "{:?}: {:?}", build, outcomes);
        }
    }
}

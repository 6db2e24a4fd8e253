//! Timelines of events against the dev core: no processes, no files, no clock.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{
    Before, BuildFailure, BuildId, BuildResult, Built, ChangedFile, Changes, DevAction, DevCore,
    DevEvent, DevReport, Keeps, OUTPUT_GRACE, Outcome, Page, Served,
};
use crate::cluster::{Aborted, ExitReason, Failure, ProcessEnd, RollEnd, WorkerId};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn path(name: &str) -> PathBuf {
    PathBuf::from("/p").join(name)
}

/// Owns a dev core, a fake clock (monotonic and wall), and the cluster's state as the test
/// sets it. Builds start, executables are kept and rolls are sent as soon as asked.
struct Timeline {
    core: DevCore,
    now: Instant,
    wall: SystemTime,
    served: Served,
    requests: u64,
    /// Every action, for assertions on the whole run.
    log: Vec<DevAction>,
}

impl Timeline {
    /// A session: building, watching, with live reload; `/p/static` holds assets.
    fn new() -> Self {
        Self::with(true, true, true)
    }

    fn with(building: bool, watching: bool, livereload: bool) -> Self {
        let mut timeline = Self {
            core: DevCore::new(vec![PathBuf::from("/p")], vec![path("static")]),
            now: Instant::now(),
            // Never read from the wall clock: every time here is set.
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            served: Served::default(),
            requests: 0,
            log: Vec::new(),
        };
        timeline.feed(DevEvent::Begin {
            building,
            watching,
            livereload,
        });
        timeline
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.wall += by;
    }

    /// Feeds an event and answers the actions that ask for one; returns every action.
    fn feed(&mut self, event: DevEvent) -> Vec<DevAction> {
        let mut pending = vec![event];
        let mut out = Vec::new();
        while let Some(event) = pending.pop() {
            for action in self.core.handle(self.now, self.served, event) {
                match &action {
                    DevAction::StartBuild(build) => pending.push(DevEvent::BuildStarted {
                        build: *build,
                        wall: self.wall,
                    }),
                    DevAction::Install { build, .. } => {
                        pending.push(DevEvent::Installed { build: *build });
                    }
                    DevAction::Roll => {
                        self.requests += 1;
                        pending.push(DevEvent::RollSent {
                            request: self.requests,
                        });
                    }
                    DevAction::Start if self.served.generation == 0 => {
                        self.served.generation = 1;
                    }
                    _ => {}
                }
                self.log.push(action.clone());
                out.push(action);
            }
        }
        out
    }

    /// The user saves these files now.
    fn save(&mut self, names: &[&str]) -> Vec<DevAction> {
        let files = names
            .iter()
            .map(|name| ChangedFile {
                path: path(name),
                modified: Some(self.wall),
            })
            .collect();
        self.feed(DevEvent::Changed {
            files,
            wall: self.wall,
        })
    }

    fn running(&self) -> Option<BuildId> {
        self.core.build.as_ref().map(|build| build.id)
    }

    /// The process of the build in flight exits as `end` says, and its output ends: the core
    /// asks for its outcome, and nothing else.
    fn exit_build(&mut self, end: ProcessEnd) -> BuildId {
        let build = self.running().expect("a build runs");
        let exited = self.feed(DevEvent::BuildExited {
            build,
            end,
            wall: self.wall,
        });
        assert_eq!(exited, []);
        let collect = self.feed(DevEvent::BuildOutputEnded { build });
        assert_eq!(collect, [DevAction::Collect { build, end }]);
        build
    }

    /// The build in flight ends with `result` (its process exits, its output ends, its outcome
    /// is read); the actions of its outcome.
    fn end_build(&mut self, result: BuildResult) -> Vec<DevAction> {
        let end = match &result {
            BuildResult::Failed { end, .. } => *end,
            BuildResult::Succeeded { .. } => ProcessEnd::Code(0),
        };
        let build = self.exit_build(end);
        self.feed(DevEvent::BuildEnded { build, result })
    }

    /// The build in flight succeeds with a new binary.
    fn build_ok(&mut self) -> Vec<DevAction> {
        self.end_build(succeeded(false, false))
    }
}

fn succeeded(fresh: bool, same_as_latest: bool) -> BuildResult {
    BuildResult::Succeeded {
        executable: Ok(Some(Built {
            executable: PathBuf::from("/p/target/debug/app"),
            fresh,
            same_as_latest,
        })),
        inputs: Some(vec![path("src/main.rs"), path("static/inline.html")]),
    }
}

fn failed(diagnostics: &str) -> BuildResult {
    BuildResult::Failed {
        end: ProcessEnd::Code(101),
        diagnostics: diagnostics.to_owned(),
        refused: None,
    }
}

fn reports(actions: &[DevAction]) -> Vec<&DevReport> {
    actions
        .iter()
        .filter_map(|action| match action {
            DevAction::Report(report) => Some(report),
            _ => None,
        })
        .collect()
}

/// Changed files as reports name them (relative to their root).
fn changes(names: &[&str]) -> Changes {
    Changes(names.iter().map(PathBuf::from).collect())
}

/// The report of a roll that a reload of these changes asked for.
fn rolled(names: &[&str], built_in: Option<Duration>, end: RollEnd) -> DevReport {
    DevReport::Rolled {
        reload: Some((
            changes(names),
            built_in.map_or(Before::Nothing, Before::Build),
        )),
        end,
    }
}

fn pages(actions: &[DevAction]) -> Vec<&Page> {
    actions
        .iter()
        .filter_map(|action| match action {
            DevAction::Pages(page) => Some(page),
            _ => None,
        })
        .collect()
}

fn outcomes(actions: &[DevAction]) -> Vec<(BuildId, Outcome)> {
    actions
        .iter()
        .filter_map(|action| match action {
            DevAction::Ended { build, outcome } => Some((*build, *outcome)),
            _ => None,
        })
        .collect()
}

/// A roll's end: completed, or aborted by slot 0's replacement exiting.
fn roll_end(generation: u64, requests: Vec<u64>, aborted: bool) -> RollEnd {
    RollEnd {
        generation,
        size: 2,
        rolled: if aborted { 0 } else { 2 },
        elapsed: ms(80),
        switch: (!aborted).then(|| ms(20)),
        aborted: aborted.then_some(Aborted {
            worker: WorkerId {
                slot: 0,
                pid: None,
                generation,
            },
            failure: Failure::Ended(ProcessEnd::Code(1)),
        }),
        failed: None,
        serving: if aborted { generation - 1 } else { generation },
        slots: vec![generation; 2],
        requests,
    }
}

/// A session whose first generation serves.
fn serving() -> Timeline {
    let mut timeline = Timeline::new();
    timeline.advance(ms(1500));
    let actions = timeline.build_ok();
    assert!(actions.contains(&DevAction::Start), "{actions:?}");
    assert_eq!(
        reports(&actions),
        [&DevReport::Built { built_in: ms(1500) }]
    );
    timeline.feed(DevEvent::Serving);
    timeline
}

#[test]
fn the_first_build_starts_the_first_generation_and_pages_turn_into_the_app_once() {
    let mut timeline = Timeline::new();
    assert_eq!(timeline.log, [DevAction::StartBuild(BuildId(1))]);
    timeline.advance(ms(300));
    let actions = timeline.build_ok();
    assert_eq!(
        actions,
        [
            DevAction::WatchInputs {
                inputs: vec![path("src/main.rs"), path("static/inline.html")],
                since: timeline.wall - ms(300),
            },
            DevAction::Install {
                build: BuildId(1),
                executable: PathBuf::from("/p/target/debug/app"),
            },
            DevAction::Ended {
                build: BuildId(1),
                outcome: Outcome::Installed,
            },
            DevAction::Report(DevReport::Built { built_in: ms(300) }),
            DevAction::Start,
        ]
    );
    assert_eq!(
        timeline.feed(DevEvent::Serving),
        [DevAction::Pages(Page::Reload)]
    );
    assert!(
        timeline.feed(DevEvent::Serving).is_empty(),
        "only the first"
    );
}

/// The first build's process exits after 300 ms: the actions of its exit and of its output's
/// end, in the order given, once the timeline reached each.
fn first_build_exits(output_first: bool) -> (Timeline, Vec<DevAction>, Vec<DevAction>) {
    let mut timeline = Timeline::new();
    let exit = DevEvent::BuildExited {
        build: BuildId(1),
        end: ProcessEnd::Code(0),
        wall: timeline.wall + ms(300),
    };
    let output = DevEvent::BuildOutputEnded { build: BuildId(1) };
    if output_first {
        timeline.advance(ms(250));
        let ended = timeline.feed(output);
        timeline.advance(ms(50));
        let exited = timeline.feed(exit);
        (timeline, exited, ended)
    } else {
        timeline.advance(ms(300));
        let exited = timeline.feed(exit);
        timeline.advance(ms(400));
        let ended = timeline.feed(output);
        (timeline, exited, ended)
    }
}

#[test]
fn the_outcome_is_asked_for_once_the_exit_and_the_output_s_end_are_both_in() {
    let collect = DevAction::Collect {
        build: BuildId(1),
        end: ProcessEnd::Code(0),
    };
    // The output ends before the exit: the exit asks for the outcome at once.
    let (mut timeline, exited, ended) = first_build_exits(true);
    assert_eq!(ended, []);
    assert_eq!(exited, std::slice::from_ref(&collect));
    assert_eq!(timeline.core.next_deadline(), None);
    let actions = timeline.feed(DevEvent::BuildEnded {
        build: BuildId(1),
        result: succeeded(false, false),
    });
    assert_eq!(reports(&actions), [&DevReport::Built { built_in: ms(300) }]);

    // The output ends 400 ms after the exit: the build took as long as its process ran.
    let (mut timeline, exited, ended) = first_build_exits(false);
    assert_eq!(exited, []);
    assert_eq!(ended, [collect]);
    // Asked for once: a late fact asks for nothing more.
    assert_eq!(
        timeline.feed(DevEvent::BuildOutputEnded { build: BuildId(1) }),
        []
    );
    assert_eq!(timeline.feed(DevEvent::Tick), []);
    let actions = timeline.feed(DevEvent::BuildEnded {
        build: BuildId(1),
        result: succeeded(false, false),
    });
    assert_eq!(reports(&actions), [&DevReport::Built { built_in: ms(300) }]);
    assert!(
        actions.contains(&DevAction::WatchInputs {
            inputs: vec![path("src/main.rs"), path("static/inline.html")],
            since: timeline.wall - ms(700),
        }),
        "{actions:?}"
    );
    // Its outcome, once only.
    assert_eq!(
        timeline.feed(DevEvent::BuildEnded {
            build: BuildId(1),
            result: succeeded(false, false),
        }),
        []
    );
}

#[test]
fn an_output_that_never_ends_gives_the_outcome_exactly_a_grace_after_the_exit() {
    let mut timeline = serving();
    timeline.save(&["src/main.rs"]);
    timeline.advance(ms(200));
    let exited_at = timeline.now;
    assert_eq!(
        timeline.feed(DevEvent::BuildExited {
            build: BuildId(2),
            end: ProcessEnd::Code(101),
            wall: timeline.wall,
        }),
        []
    );
    assert_eq!(
        timeline.core.next_deadline(),
        Some(exited_at + OUTPUT_GRACE)
    );
    timeline.advance(OUTPUT_GRACE.saturating_sub(ms(1)));
    assert_eq!(timeline.feed(DevEvent::Tick), [], "before the grace");
    timeline.advance(ms(1));
    assert_eq!(
        timeline.feed(DevEvent::Tick),
        [DevAction::Collect {
            build: BuildId(2),
            end: ProcessEnd::Code(101),
        }]
    );
    assert_eq!(timeline.core.next_deadline(), None);
    // The output's end comes too late to matter.
    assert_eq!(
        timeline.feed(DevEvent::BuildOutputEnded { build: BuildId(2) }),
        []
    );
    let actions = timeline.feed(DevEvent::BuildEnded {
        build: BuildId(2),
        result: failed("error: half of it"),
    });
    assert_eq!(outcomes(&actions), [(BuildId(2), Outcome::Failed)]);
    assert_eq!(
        reports(&actions),
        [&DevReport::BuildFailed {
            changed: changes(&["src/main.rs"]),
            end: ProcessEnd::Code(101),
            built_in: ms(200),
            keeps: Keeps::Generation(1),
        }]
    );
}

#[test]
fn a_save_while_a_build_s_output_or_outcome_is_awaited_cancels_it() {
    let mut timeline = serving();
    timeline.save(&["src/a.rs"]);
    timeline.feed(DevEvent::BuildExited {
        build: BuildId(2),
        end: ProcessEnd::Code(0),
        wall: timeline.wall,
    });
    timeline.advance(ms(500));
    // Waiting for the output: the save cancels it (its process is gone: the driver forgets it).
    assert_eq!(
        timeline.save(&["src/b.rs"]),
        [
            DevAction::CancelBuild(BuildId(2)),
            DevAction::Ended {
                build: BuildId(2),
                outcome: Outcome::Cancelled,
            },
            DevAction::StartBuild(BuildId(3)),
        ]
    );
    // Its grace passes, its output ends, its outcome comes: nothing for it.
    assert_eq!(timeline.core.next_deadline(), None);
    timeline.advance(OUTPUT_GRACE);
    assert_eq!(timeline.feed(DevEvent::Tick), []);
    assert_eq!(
        timeline.feed(DevEvent::BuildOutputEnded { build: BuildId(2) }),
        []
    );
    assert_eq!(
        timeline.feed(DevEvent::BuildEnded {
            build: BuildId(2),
            result: succeeded(false, false),
        }),
        []
    );
    // Its late output's end does not stand for the next build's: build 3 exits, and the core
    // waits for its own output.
    assert_eq!(
        timeline.feed(DevEvent::BuildExited {
            build: BuildId(3),
            end: ProcessEnd::Code(0),
            wall: timeline.wall,
        }),
        []
    );
    // Once its outcome is asked for, a save still cancels it: the outcome read is ignored.
    assert_eq!(
        timeline.feed(DevEvent::BuildOutputEnded { build: BuildId(3) }),
        [DevAction::Collect {
            build: BuildId(3),
            end: ProcessEnd::Code(0),
        }]
    );
    let actions = timeline.save(&["src/c.rs"]);
    assert_eq!(
        outcomes(&actions),
        [(BuildId(3), Outcome::Cancelled)],
        "{actions:?}"
    );
    assert_eq!(
        timeline.feed(DevEvent::BuildEnded {
            build: BuildId(3),
            result: succeeded(false, false),
        }),
        []
    );
    // Build 4 covers every save.
    timeline.advance(ms(100));
    timeline.build_ok();
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![1], false)));
    assert_eq!(
        reports(&actions),
        [&rolled(
            &["src/a.rs", "src/b.rs", "src/c.rs"],
            Some(ms(100)),
            roll_end(2, vec![1], false)
        )]
    );
}

#[test]
fn the_late_output_s_end_of_a_build_cancelled_while_it_ran_is_ignored() {
    let mut timeline = serving();
    timeline.save(&["src/a.rs"]);
    timeline.save(&["src/b.rs"]);
    assert_eq!(timeline.running(), Some(BuildId(3)));
    // Build 2 was killed: its output ends (its exit is reaped as a stray's, never told).
    assert_eq!(
        timeline.feed(DevEvent::BuildOutputEnded { build: BuildId(2) }),
        []
    );
    assert_eq!(
        timeline.feed(DevEvent::BuildExited {
            build: BuildId(2),
            end: ProcessEnd::Signal(9),
            wall: timeline.wall,
        }),
        []
    );
    assert_eq!(
        timeline.feed(DevEvent::BuildExited {
            build: BuildId(3),
            end: ProcessEnd::Code(0),
            wall: timeline.wall,
        }),
        [],
        "build 3's output has not ended"
    );
    assert_eq!(
        timeline.feed(DevEvent::BuildOutputEnded { build: BuildId(3) }),
        [DevAction::Collect {
            build: BuildId(3),
            end: ProcessEnd::Code(0),
        }]
    );
}

#[test]
fn a_save_builds_and_rolls_and_the_roll_s_end_is_one_line() {
    let mut timeline = serving();
    timeline.advance(ms(5000));
    let actions = timeline.save(&["src/main.rs"]);
    assert_eq!(actions, [DevAction::StartBuild(BuildId(2))]);
    timeline.advance(ms(250));
    let actions = timeline.build_ok();
    assert!(actions.ends_with(&[DevAction::Roll]), "{actions:?}");
    assert!(reports(&actions).is_empty(), "{actions:?}");
    timeline.served.generation = 2;
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![1], false)));
    assert_eq!(
        reports(&actions),
        [&rolled(
            &["src/main.rs"],
            Some(ms(250)),
            roll_end(2, vec![1], false)
        )]
    );
}

#[test]
fn pages_reload_at_the_end_of_a_roll_when_its_switch_is_complete_and_not_after_an_abort() {
    let mut timeline = serving();
    timeline.save(&["src/main.rs"]);
    timeline.build_ok();
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![1], false)));
    assert_eq!(pages(&actions), [&Page::Reload]);
    assert!(
        matches!(actions.last(), Some(DevAction::Pages(Page::Reload))),
        "after the line: {actions:?}"
    );
    // An aborted roll reloads nothing.
    timeline.save(&["src/main.rs"]);
    timeline.build_ok();
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(3, vec![2], true)));
    assert_eq!(
        reports(&actions),
        [&rolled(
            &["src/main.rs"],
            Some(ms(0)),
            roll_end(3, vec![2], true)
        )]
    );
    assert!(pages(&actions).is_empty(), "{actions:?}");
}

#[test]
fn a_save_during_a_build_cancels_it_and_the_next_build_covers_both_saves() {
    let mut timeline = serving();
    timeline.save(&["src/a.rs"]);
    timeline.advance(ms(100));
    let actions = timeline.save(&["src/b.rs"]);
    assert_eq!(
        actions,
        [
            DevAction::CancelBuild(BuildId(2)),
            DevAction::Ended {
                build: BuildId(2),
                outcome: Outcome::Cancelled,
            },
            DevAction::StartBuild(BuildId(3)),
        ]
    );
    // The cancelled build's exit, should it be reported, changes nothing.
    assert!(
        timeline
            .feed(DevEvent::BuildEnded {
                build: BuildId(2),
                result: failed("killed"),
            })
            .is_empty()
    );
    assert_eq!(timeline.running(), Some(BuildId(3)));
    timeline.advance(ms(200));
    timeline.build_ok();
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![1], false)));
    assert_eq!(
        reports(&actions),
        [&rolled(
            &["src/a.rs", "src/b.rs"],
            Some(ms(200)),
            roll_end(2, vec![1], false)
        )]
    );
    let ended = outcomes(&timeline.log);
    assert_eq!(
        ended,
        [
            (BuildId(1), Outcome::Installed),
            (BuildId(2), Outcome::Cancelled),
            (BuildId(3), Outcome::Installed),
        ]
    );
}

#[test]
fn the_same_binary_or_a_fresh_build_rolls_nothing() {
    let mut timeline = serving();
    // A Rust file the build does not read (of another member, say): cargo proves it unused.
    timeline.save(&["other/src/lib.rs"]);
    timeline.advance(ms(40));
    let actions = timeline.end_build(succeeded(true, true));
    assert_eq!(
        reports(&actions),
        [&DevReport::Unchanged {
            changed: changes(&["other/src/lib.rs"]),
            built_in: None,
            keeps: Keeps::Generation(1)
        }]
    );
    assert!(!actions.contains(&DevAction::Roll));
    timeline.save(&["src/main.rs"]);
    timeline.advance(ms(900));
    let actions = timeline.end_build(succeeded(false, true));
    assert_eq!(
        reports(&actions),
        [&DevReport::Unchanged {
            changed: changes(&["src/main.rs"]),
            built_in: Some(ms(900)),
            keeps: Keeps::Generation(1)
        }]
    );
    assert_eq!(
        outcomes(&actions),
        [(BuildId(3), Outcome::Unchanged)],
        "{actions:?}"
    );
    // Before any generation serves, the same binary starts again.
    let mut waiting = serving();
    waiting.served.waiting = true;
    waiting.save(&["src/main.rs"]);
    let actions = waiting.end_build(succeeded(false, true));
    assert!(actions.contains(&DevAction::Start), "{actions:?}");
}

#[test]
fn a_failed_build_shows_its_diagnostics_in_the_pages_and_keeps_the_generation() {
    let mut timeline = serving();
    timeline.save(&["src/main.rs"]);
    timeline.advance(ms(700));
    let actions = timeline.end_build(failed("error[E0308]: mismatched types"));
    assert_eq!(
        pages(&actions),
        [&Page::Failed(BuildFailure {
            end: ProcessEnd::Code(101),
            built_in: ms(700),
            diagnostics: "error[E0308]: mismatched types".to_owned(),
        })]
    );
    assert_eq!(
        reports(&actions),
        [&DevReport::BuildFailed {
            changed: changes(&["src/main.rs"]),
            end: ProcessEnd::Code(101),
            built_in: ms(700),
            keeps: Keeps::Generation(1)
        }]
    );
    assert!(!actions.iter().any(|a| matches!(a, DevAction::Exit(_))));
    // Without diagnostics the page points at the terminal.
    timeline.save(&["src/main.rs"]);
    let actions = timeline.end_build(failed(""));
    assert_eq!(
        pages(&actions),
        [&Page::Failed(BuildFailure {
            end: ProcessEnd::Code(101),
            built_in: ms(0),
            diagnostics: String::new(),
        })]
    );
}

#[test]
fn without_a_watcher_a_failed_first_build_ends_the_session() {
    let mut production = Timeline::with(true, false, false);
    let actions = production.end_build(failed("error"));
    assert_eq!(
        reports(&actions),
        [&DevReport::BuildFailed {
            changed: Changes::default(),
            end: ProcessEnd::Code(101),
            built_in: ms(0),
            keeps: Keeps::Nothing
        }]
    );
    assert!(actions.contains(&DevAction::Exit(ExitReason::BuildFailed)));
    // Watching, a save can fix it: the session goes on.
    let mut dev = Timeline::new();
    let actions = dev.end_build(failed("error"));
    assert_eq!(
        reports(&actions),
        [&DevReport::BuildFailed {
            changed: Changes::default(),
            end: ProcessEnd::Code(101),
            built_in: ms(0),
            keeps: Keeps::NothingYet
        }]
    );
    assert!(!actions.iter().any(|a| matches!(a, DevAction::Exit(_))));
}

#[test]
fn an_option_the_build_refuses_before_any_success_ends_the_session_in_one_line() {
    let mut timeline = Timeline::new();
    let actions = timeline.end_build(BuildResult::Failed {
        end: ProcessEnd::Code(1),
        diagnostics: "error: unexpected argument '--bn'".to_owned(),
        refused: Some("cargo does not know --bn".to_owned()),
    });
    assert_eq!(
        actions,
        [
            DevAction::Report(DevReport::Refused {
                culprit: "cargo does not know --bn".to_owned(),
            }),
            DevAction::Exit(ExitReason::BuildFailed),
            DevAction::Ended {
                build: BuildId(1),
                outcome: Outcome::Failed,
            },
        ]
    );
    // Once a build succeeded, the same failure is the project's: a save can fix it.
    let mut timeline = serving();
    timeline.save(&["Cargo.toml"]);
    let actions = timeline.end_build(BuildResult::Failed {
        end: ProcessEnd::Code(1),
        diagnostics: String::new(),
        refused: Some("cargo does not know --bn".to_owned()),
    });
    assert!(!actions.iter().any(|a| matches!(a, DevAction::Exit(_))));
}

#[test]
fn a_build_program_that_cannot_start_ends_the_session_until_a_build_succeeded() {
    let mut timeline = Timeline::new();
    let build = timeline.running().unwrap();
    let actions = timeline.feed(DevEvent::BuildNotStarted {
        build,
        why: "cargo is not installed or not in PATH".to_owned(),
    });
    assert_eq!(
        reports(&actions),
        [&DevReport::BuildNotStarted {
            why: "cargo is not installed or not in PATH".to_owned(),
            serving: None
        }]
    );
    assert!(actions.contains(&DevAction::Exit(ExitReason::BuildFailed)));
    assert_eq!(timeline.running(), None);

    let mut timeline = serving();
    timeline.save(&["src/main.rs"]);
    let build = timeline.running().unwrap();
    let actions = timeline.feed(DevEvent::BuildNotStarted {
        build,
        why: "cargo: Too many open files".to_owned(),
    });
    assert_eq!(
        reports(&actions),
        [&DevReport::BuildNotStarted {
            why: "cargo: Too many open files".to_owned(),
            serving: Some(1)
        }]
    );
    assert_eq!(outcomes(&actions), [(build, Outcome::NotStarted)]);
    // The next save tries again.
    assert_eq!(
        timeline.save(&["src/main.rs"]),
        [DevAction::StartBuild(BuildId(3))]
    );
}

#[test]
fn an_executable_that_cannot_be_kept_rolls_nothing() {
    let mut timeline = serving();
    timeline.save(&["src/main.rs"]);
    let build = timeline.exit_build(ProcessEnd::Code(0));
    // Answered by hand: this Install fails.
    let actions = timeline.core.handle(
        timeline.now,
        timeline.served,
        DevEvent::BuildEnded {
            build,
            result: succeeded(false, false),
        },
    );
    assert!(matches!(actions.last(), Some(DevAction::Install { .. })));
    let actions = timeline.feed(DevEvent::NotInstalled {
        build,
        why: "No space left on device".to_owned(),
    });
    assert_eq!(
        reports(&actions),
        [&DevReport::NotKept {
            changed: changes(&["src/main.rs"]),
            executable: PathBuf::from("/p/target/debug/app"),
            why: "No space left on device".to_owned(),
            keeps: Keeps::Generation(1)
        }]
    );
    assert_eq!(outcomes(&actions), [(build, Outcome::Unusable)]);
    assert!(!actions.contains(&DevAction::Roll));
}

#[test]
fn only_assets_changed_reloads_the_pages_without_a_build() {
    let mut timeline = serving();
    let actions = timeline.save(&["static/app.css"]);
    assert_eq!(
        actions,
        [
            DevAction::Report(DevReport::Assets {
                changed: changes(&["static/app.css"]),
                css: true,
            }),
            DevAction::Pages(Page::Css),
        ]
    );
    let actions = timeline.save(&["static/app.css", "static/index.html"]);
    assert_eq!(
        reports(&actions),
        [&DevReport::Assets {
            changed: changes(&["static/app.css", "static/index.html"]),
            css: false
        }]
    );
    assert_eq!(pages(&actions), [&Page::Reload]);
    // A file the build reads (`include_str!`), or a Rust file, builds.
    for name in ["static/inline.html", "static/gen.rs"] {
        assert!(
            matches!(
                timeline.save(&[name]).last(),
                Some(DevAction::StartBuild(_))
            ),
            "{name}"
        );
        timeline.build_ok();
    }
    // Before any build succeeded nothing is known of what the build reads.
    let mut first = Timeline::new();
    first.advance(ms(10));
    assert!(matches!(
        first.save(&["static/app.css"]).last(),
        Some(DevAction::StartBuild(_))
    ));
}

#[test]
fn a_file_changed_during_two_builds_it_triggered_is_named_and_then_ignored_during_builds() {
    let mut timeline = serving();
    let stamp = path("src/stamp.rs");
    let at = |timeline: &Timeline, before: u64| ChangedFile {
        path: stamp.clone(),
        modified: Some(timeline.wall - ms(before)),
    };
    // A save right after a build it triggered is no round.
    timeline.save(&["src/stamp.rs"]);
    timeline.advance(ms(500));
    timeline.build_ok();
    timeline.advance(ms(1));
    let wall = timeline.wall;
    let actions = timeline.feed(DevEvent::Changed {
        files: vec![at(&timeline, 0)],
        wall,
    });
    assert_eq!(actions, [DevAction::StartBuild(BuildId(3))]);
    assert!(timeline.core.loop_rounds.is_empty());
    timeline.advance(ms(500));
    timeline.build_ok();
    // Nor one whose mtime, from the coarse clock, reads a few milliseconds before the end.
    let wall = timeline.wall;
    let actions = timeline.feed(DevEvent::Changed {
        files: vec![at(&timeline, 5)],
        wall,
    });
    assert_eq!(actions, [DevAction::StartBuild(BuildId(4))]);
    assert!(timeline.core.loop_rounds.is_empty());

    // The build writes the file it was triggered by, while it runs: round 1 still counts (a
    // save during the build, which it cancels).
    timeline.advance(ms(300));
    let wall = timeline.wall;
    let actions = timeline.feed(DevEvent::Changed {
        files: vec![at(&timeline, 100)],
        wall,
    });
    assert_eq!(
        outcomes(&actions),
        [(BuildId(4), Outcome::Cancelled)],
        "round 1 still counts"
    );
    // Round 2 names it, once.
    timeline.advance(ms(300));
    let wall = timeline.wall;
    let actions = timeline.feed(DevEvent::Changed {
        files: vec![at(&timeline, 100)],
        wall,
    });
    assert_eq!(
        reports(&actions),
        [&DevReport::BuildWrites {
            file: PathBuf::from("src/stamp.rs"),
            rounds: 2
        }]
    );
    assert!(outcomes(&actions).is_empty(), "the build goes on");
    assert!(timeline.core.written_by_builds.contains(&stamp));
    // From then on its changes during a build are ignored.
    timeline.advance(ms(300));
    let wall = timeline.wall;
    assert!(
        timeline
            .feed(DevEvent::Changed {
                files: vec![at(&timeline, 100)],
                wall,
            })
            .is_empty()
    );
    // The user's own save, between builds, still counts.
    timeline.build_ok();
    timeline.advance(ms(5000));
    assert_eq!(
        timeline.save(&["src/stamp.rs"]),
        [DevAction::StartBuild(BuildId(6))]
    );
}

#[test]
fn a_roll_refused_or_asked_while_waiting_or_stopping() {
    let mut timeline = serving();
    // SIGHUP: the roll's end is reported as a reload.
    assert_eq!(timeline.feed(DevEvent::RollRequested), [DevAction::Roll]);
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![1], false)));
    assert_eq!(
        reports(&actions),
        [&DevReport::Rolled {
            reload: Some((Changes::default(), Before::Nothing)),
            end: roll_end(2, vec![1], false)
        }]
    );
    // A refused request is forgotten: a roll answering it is no reload of ours.
    timeline.feed(DevEvent::RollRequested);
    timeline.feed(DevEvent::RollRefused { request: 2 });
    assert!(timeline.core.reloads.is_empty());
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(3, vec![2], false)));
    assert_eq!(
        reports(&actions),
        [&DevReport::Rolled {
            reload: None,
            end: roll_end(3, vec![2], false)
        }]
    );
    // The first generation never became ready: a new start.
    timeline.served.waiting = true;
    let actions = timeline.save(&["src/main.rs"]);
    timeline.build_ok();
    assert!(matches!(actions[..], [DevAction::StartBuild(_)]));
    assert_eq!(
        timeline.feed(DevEvent::RollRequested),
        [
            DevAction::Report(DevReport::StartingAgain {
                changed: Changes::default(),
            }),
            DevAction::Start,
        ]
    );
    // Stopping: saves and rolls are ignored.
    timeline.served.stopping = true;
    assert!(timeline.save(&["src/main.rs"]).is_empty());
    assert!(timeline.feed(DevEvent::RollRequested).is_empty());
}

#[test]
fn without_a_build_a_save_rolls_at_once() {
    let mut timeline = Timeline::with(false, true, true);
    assert_eq!(timeline.log, [DevAction::Start]);
    timeline.feed(DevEvent::Serving);
    assert_eq!(timeline.save(&["app.py"]), [DevAction::Roll]);
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![1], false)));
    assert_eq!(
        reports(&actions),
        [&DevReport::Rolled {
            reload: Some((changes(&["app.py"]), Before::Nothing)),
            end: roll_end(2, vec![1], false)
        }]
    );
}

#[test]
fn manifest_changes_during_a_roots_lookup_make_one_more_lookup_after_it() {
    let mut timeline = serving();
    timeline.save(&["Cargo.toml"]);
    // The build of a changed manifest ends once the lookup is done.
    assert_eq!(timeline.build_ok(), [DevAction::FindRoots { lookup: 1 }]);
    assert_eq!(timeline.running(), Some(BuildId(2)));
    // A save meanwhile cancels it; the next build of both changes ends while lookup 1 still
    // runs (slow: cargo reads the manifests): no second lookup in flight, and the change is
    // not lost: one more lookup follows.
    let actions = timeline.save(&["src/main.rs"]);
    assert_eq!(outcomes(&actions), [(BuildId(2), Outcome::Cancelled)]);
    timeline.advance(ms(100));
    assert_eq!(timeline.build_ok(), []);
    assert_eq!(timeline.running(), Some(BuildId(3)));
    // Lookup 1 ends: its roots are watched, and lookup 2 follows; the build still waits.
    assert_eq!(
        timeline.feed(DevEvent::Roots {
            lookup: 1,
            roots: vec![PathBuf::from("/lib/y")],
        }),
        [
            DevAction::AddRoots(vec![PathBuf::from("/lib/y")]),
            DevAction::FindRoots { lookup: 2 },
        ]
    );
    assert_eq!(timeline.running(), Some(BuildId(3)));
    // A stale answer (of lookup 1 again) is ignored.
    assert!(
        timeline
            .feed(DevEvent::Roots {
                lookup: 1,
                roots: vec![PathBuf::from("/lib/z")],
            })
            .is_empty()
    );
    // Lookup 2's roots are watched, then the build ends: a roll, reported once it ends.
    let actions = timeline.feed(DevEvent::Roots {
        lookup: 2,
        roots: vec![PathBuf::from("/lib/z")],
    });
    assert_eq!(
        actions.first(),
        Some(&DevAction::AddRoots(vec![PathBuf::from("/lib/z")]))
    );
    assert_eq!(outcomes(&actions), [(BuildId(3), Outcome::Installed)]);
    assert!(actions.ends_with(&[DevAction::Roll]), "{actions:?}");
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![1], false)));
    assert_eq!(
        reports(&actions),
        [&rolled(
            &["Cargo.toml", "src/main.rs"],
            Some(ms(100)),
            roll_end(2, vec![1], false)
        )]
    );
    // The next manifest change: the next lookup.
    timeline.save(&["Cargo.toml"]);
    assert_eq!(timeline.build_ok(), [DevAction::FindRoots { lookup: 3 }]);
}

#[test]
fn a_changed_manifest_watches_the_new_path_dependencies() {
    let mut timeline = serving();
    timeline.save(&["Cargo.toml"]);
    assert_eq!(timeline.build_ok(), [DevAction::FindRoots { lookup: 1 }]);
    let actions = timeline.feed(DevEvent::Roots {
        lookup: 1,
        roots: vec![
            PathBuf::from("/p"),
            PathBuf::from("/p/crates/x"),
            PathBuf::from("/lib/y"),
        ],
    });
    // The new directory is watched before the build's inputs are given and the roll asked for.
    assert_eq!(
        actions[..2],
        [
            DevAction::AddRoots(vec![PathBuf::from("/lib/y")]),
            DevAction::WatchInputs {
                inputs: vec![path("src/main.rs"), path("static/inline.html")],
                since: timeline.wall,
            },
        ]
    );
    assert!(actions.ends_with(&[DevAction::Roll]), "{actions:?}");
    // An answer nobody waits for (a lookup answered already) changes nothing.
    assert!(
        timeline
            .feed(DevEvent::Roots {
                lookup: 1,
                roots: vec![PathBuf::from("/lib/z")],
            })
            .is_empty()
    );
    // Files there count now (named in full: `/lib/y` shares nothing but `/` with `/p`).
    let files = vec![ChangedFile {
        path: PathBuf::from("/lib/y/src/lib.rs"),
        modified: None,
    }];
    let wall = timeline.wall;
    timeline.feed(DevEvent::Changed { files, wall });
    timeline.build_ok();
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![2], false)));
    assert_eq!(
        reports(&actions),
        [&rolled(
            &["/lib/y/src/lib.rs"],
            Some(ms(0)),
            roll_end(2, vec![2], false)
        )]
    );
}

#[test]
fn a_typo_then_undo_clears_the_overlay_whether_or_not_a_roll_follows() {
    let mut timeline = serving();
    // A success with no overlay shown tells the pages nothing.
    timeline.save(&["src/main.rs"]);
    assert_eq!(
        pages(&timeline.end_build(succeeded(false, true))),
        [] as [&Page; 0]
    );
    // The typo: the overlay.
    timeline.save(&["src/main.rs"]);
    let actions = timeline.end_build(failed("error: expected `;`"));
    assert!(
        matches!(pages(&actions)[..], [Page::Failed(_)]),
        "{actions:?}"
    );
    // Undone: the same binary as the one serving, nothing rolls; the overlay goes.
    timeline.save(&["src/main.rs"]);
    timeline.advance(ms(400));
    let actions = timeline.end_build(succeeded(false, true));
    assert_eq!(pages(&actions), [&Page::Clear]);
    assert!(!actions.contains(&DevAction::Roll));
    assert!(matches!(
        reports(&actions)[..],
        [DevReport::Unchanged { .. }]
    ));
    // Once: a later success has nothing to clear.
    timeline.save(&["src/main.rs"]);
    assert_eq!(
        pages(&timeline.end_build(succeeded(true, true))),
        [] as [&Page; 0]
    );
    // Cargo finds nothing to rebuild after a failure (a save of a file it does not read).
    timeline.save(&["src/main.rs"]);
    timeline.end_build(failed("error"));
    timeline.save(&["other/src/lib.rs"]);
    assert_eq!(
        pages(&timeline.end_build(succeeded(true, true))),
        [&Page::Clear]
    );
    // A fix that rolls: the overlay goes at the build's end, the pages reload at the roll's.
    timeline.save(&["src/main.rs"]);
    timeline.end_build(failed("error"));
    timeline.save(&["src/main.rs"]);
    let actions = timeline.build_ok();
    assert_eq!(pages(&actions), [&Page::Clear]);
    assert!(actions.contains(&DevAction::Roll));
    let request = timeline.requests;
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![request], false)));
    assert_eq!(pages(&actions), [&Page::Reload]);
    // Without live reload, the pages are told nothing.
    let mut quiet = Timeline::with(true, true, false);
    quiet.build_ok();
    quiet.feed(DevEvent::Serving);
    quiet.save(&["src/main.rs"]);
    quiet.end_build(failed("error"));
    quiet.save(&["src/main.rs"]);
    quiet.end_build(succeeded(false, true));
    assert_eq!(pages(&quiet.log), [] as [&Page; 0]);
}

#[test]
fn a_file_no_build_reads_rolls_the_workers_without_a_build() {
    let mut timeline = serving();
    // A template the app reads at start-up: no build, a roll at once.
    assert_eq!(timeline.save(&["templates/index.html"]), [DevAction::Roll]);
    let request = timeline.requests;
    let actions = timeline.feed(DevEvent::RollEnded(roll_end(2, vec![request], false)));
    assert_eq!(
        reports(&actions),
        [&DevReport::Rolled {
            reload: Some((changes(&["templates/index.html"]), Before::NotInput)),
            end: roll_end(2, vec![request], false),
        }]
    );
    assert_eq!(pages(&actions), [&Page::Reload]);
    // With sources: the template rolls now, the sources build (and roll if they change).
    let actions = timeline.save(&["src/main.rs", "templates/index.html"]);
    assert_eq!(
        actions,
        [DevAction::Roll, DevAction::StartBuild(BuildId(2))],
        "{actions:?}"
    );
    timeline.build_ok();
    // An asset beside a source: it goes with the source to the build (an asset is read at
    // each request, no roll is needed for it).
    assert_eq!(
        timeline.save(&["src/main.rs", "static/app.css"]),
        [DevAction::StartBuild(BuildId(3))]
    );
    timeline.build_ok();
    // What cargo decides about builds, whether the last build read it or not: Rust sources,
    // manifests, the lock file; and files the build reads, whatever their extension.
    for name in [
        "other/src/lib.rs",
        "Cargo.toml",
        "Cargo.lock",
        "static/inline.html",
    ] {
        let next = BuildId(timeline.core.builds + 1);
        assert_eq!(
            timeline.save(&[name]),
            [DevAction::StartBuild(next)],
            "{name}"
        );
        timeline.end_build(succeeded(true, true));
        while timeline.core.looking_up.is_some() {
            let lookup = timeline.core.lookups;
            timeline.feed(DevEvent::Roots {
                lookup,
                roots: Vec::new(),
            });
        }
    }
    // Before a build said what it reads, every file builds.
    let mut first = Timeline::new();
    first.advance(ms(10));
    assert_eq!(
        first.save(&["templates/index.html"]),
        [
            DevAction::CancelBuild(BuildId(1)),
            DevAction::Ended {
                build: BuildId(1),
                outcome: Outcome::Cancelled
            },
            DevAction::StartBuild(BuildId(2)),
        ]
    );
    // Nor when a build's inputs could not be read (a build command of the user's).
    let mut unknown = Timeline::new();
    unknown.end_build(BuildResult::Succeeded {
        executable: Ok(None),
        inputs: None,
    });
    unknown.feed(DevEvent::Serving);
    assert!(matches!(
        unknown.save(&["templates/index.html"])[..],
        [DevAction::StartBuild(_)]
    ));
}

#[test]
fn files_outside_the_workspace_root_are_named_from_it_with_their_crate() {
    let core = DevCore::new(
        vec![
            PathBuf::from("/home/u/shop"),
            PathBuf::from("/home/u/axum-core"),
            PathBuf::from("/home/u/shop/crates/x"),
            PathBuf::from("/opt/vendor/y"),
        ],
        Vec::new(),
    );
    assert_eq!(
        core.relative(&[
            PathBuf::from("/home/u/shop/app/src/main.rs"),
            PathBuf::from("/home/u/shop/crates/x/src/lib.rs"),
            // A path dependency beside the workspace: its crate's directory, from the root.
            PathBuf::from("/home/u/axum-core/src/lib.rs"),
            PathBuf::from("/home/elsewhere/z/src/lib.rs"),
            // Nothing but `/` in common: in full.
            PathBuf::from("/opt/vendor/y/src/lib.rs"),
        ]),
        changes(&[
            "app/src/main.rs",
            "crates/x/src/lib.rs",
            "../axum-core/src/lib.rs",
            "../../elsewhere/z/src/lib.rs",
            "/opt/vendor/y/src/lib.rs",
        ])
    );
    // A root given with `..` is not climbed out of by counting: the path in full.
    let core = DevCore::new(vec![PathBuf::from("/w/a/../b")], Vec::new());
    assert_eq!(
        core.relative(&[PathBuf::from("/w/c/f.rs")]),
        changes(&["/w/c/f.rs"])
    );
}

//! `mcluster dev` on a copy of `fixtures/workspace`: an app, the path-dependency crate `common`,
//! a build script reading `build.txt`, a template pulled in with `include_str!`, and the
//! unrelated member `other`.
//!
//! Every build goes to the shared target directory of the `dev` tests, under their lock; each
//! test runs one master through several edits, so that the builds are few.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};
use tempfile::TempDir;

use crate::dev::{cargo_lock, count, get, shared_target, stop_gracefully};
use crate::support::{Master, MasterBuilder};

/// A copy of the fixture workspace, depending on this checkout by absolute path.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    /// A fresh copy, whose dependencies (mcluster's worker helpers, nix) are already in the
    /// shared target directory: its builds in the test compile only the workspace's crates.
    fn new() -> Self {
        static PREBUILT: OnceLock<()> = OnceLock::new();
        PREBUILT.get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--manifest-path"])
                .arg(Self::copy().path("Cargo.toml"))
                .env("CARGO_TARGET_DIR", shared_target())
                .status()
                .expect("run cargo");
            assert!(status.success(), "the fixture workspace does not build");
        });
        Self::copy()
    }

    /// A copy of the fixture, with nothing built for it yet.
    fn copy() -> Self {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workspace");
        let dir = TempDir::new().unwrap();
        copy_tree(&source, dir.path());
        let manifest = dir.path().join("app/Cargo.toml");
        let text = fs::read_to_string(&manifest).unwrap().replace(
            r#"path = "../../..""#,
            &format!("path = {:?}", env!("CARGO_MANIFEST_DIR")),
        );
        fs::write(&manifest, text).unwrap();
        Self { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Replaces `from` with `to` in a file, as an editor saving in place would.
    #[track_caller]
    fn edit(&self, relative: &str, from: &str, to: &str) {
        let path = self.path(relative);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} is not in {relative}");
        fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// `mcluster dev` of one worker on a free port, run in `relative` (`""`: the workspace root).
    fn master(&self, relative: &str, args: &[&str]) -> MasterBuilder {
        let mut all = vec!["dev", "-l", "127.0.0.1:0", "-n", "1"];
        all.extend(args);
        MasterBuilder::raw(&all)
            .current_dir(&self.path(relative))
            .env("CARGO_TARGET_DIR", shared_target())
            .env("APP_ENV", "dev")
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "target" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What the app answers: `banner common build args=… generation=N`. The app dies at once on
/// SIGTERM: a connection the old worker took just before is reset, and asked again.
#[track_caller]
fn served(master: &Master) -> String {
    let mut body = None;
    master.wait_until("an answer", || {
        body = get(master.port()).ok();
        body.is_some()
    });
    body.unwrap_or_default().trim_end().to_owned()
}

/// Edits the path dependency, the `include_str!` template and the build script's input in
/// turn: each is one rebuild and one roll, served next. `generation` is the one serving.
#[track_caller]
fn each_input_rolls_once(workspace: &Workspace, master: &Master, generation: u64) {
    let mut generation = generation;
    for (file, from, to) in [
        ("common/src/lib.rs", "common-1", "common-2"),
        ("app/static/banner.txt", "banner-1", "banner-2"),
        ("app/build.txt", "build-1", "build-2"),
    ] {
        let mark = master.stderr_mark();
        workspace.edit(file, from, to);
        let (_, line) = master.wait_for_stderr_after(mark, &format!("mcluster: {file} changed → "));
        assert!(
            line.contains(" → built in ") && line.contains(" → rolled 1 worker in "),
            "{line}\n{}",
            master.dump()
        );
        generation += 1;
        let body = served(master);
        assert!(
            body.to_lowercase().contains(to) && body.ends_with(&format!("generation={generation}")),
            "{file}: {body}\n{}",
            master.dump()
        );
        assert_eq!(
            master.stderr_lines()[mark..]
                .iter()
                .filter(|l| l.starts_with("mcluster: ") && l.contains(" changed → "))
                .count(),
            1,
            "one reload for {file}\n{}",
            master.dump()
        );
    }
}

#[test]
fn from_the_workspace_root_args_reach_the_app_and_edits_roll() {
    let _cargo = cargo_lock();
    let workspace = Workspace::new();
    let mut master = workspace.master("", &["--", "--flag", "x"]).start();
    master.wait_for_stderr(&crate::support::all_ready(1));
    assert_eq!(
        served(&master),
        "banner-1 common-1 build-1 args=--flag,x generation=1",
        "{}",
        master.dump()
    );

    // The worker runs its generation's copy of the build, under the binary's own name.
    // Every child, whichever thread forked it (the driver forks on the master's I/O thread).
    let workers: Vec<(String, PathBuf)> = crate::support::process::children_of(master.pid())
        .into_iter()
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            Some((comm.trim_end().to_owned(), exe))
        })
        .filter(|(_, exe)| exe.starts_with(shared_target()))
        .collect();
    let copy = shared_target().join(format!("debug/.mcluster-{}/1/app", master.pid()));
    assert_eq!(workers, [("app".to_owned(), copy)], "{}", master.dump());

    workspace.edit(
        "app/src/main.rs",
        "BANNER.trim(),",
        "BANNER.trim().to_uppercase(),",
    );
    master.wait_for_stderr("mcluster: app/src/main.rs changed → built in ");
    assert_eq!(
        served(&master),
        "BANNER-1 common-1 build-1 args=--flag,x generation=2",
        "{}",
        master.dump()
    );
    assert_eq!(
        count(&master, " → rolled 1 worker in "),
        1,
        "{}",
        master.dump()
    );

    // cargo builds the unrelated member; the app's binary is fresh: no roll.
    workspace.edit("other/src/lib.rs", "other-1", "other-2");
    let line = master.wait_for_stderr("mcluster: other/src/lib.rs changed → ");
    assert_eq!(
        line,
        "mcluster: other/src/lib.rs changed → nothing to rebuild; generation 2 keeps serving",
        "{}",
        master.dump()
    );
    assert_eq!(count(&master, " → rolled "), 1, "{}", master.dump());
    assert!(
        served(&master).ends_with("generation=2"),
        "{}",
        master.dump()
    );

    each_input_rolls_once(&workspace, &master, 2);
    stop_gracefully(&mut master);
}

#[test]
fn from_a_member_directory_what_the_build_reads_is_watched_new_files_too() {
    let _cargo = cargo_lock();
    let workspace = Workspace::new();
    let mut master = workspace.master("app", &[]).start();
    master.wait_for_stderr(&crate::support::all_ready(1));
    assert_eq!(
        served(&master),
        "banner-1 common-1 build-1 args= generation=1",
        "{}",
        master.dump()
    );
    each_input_rolls_once(&workspace, &master, 1);

    // A new module file, not used yet: nothing to rebuild.
    fs::write(workspace.path("app/static/extra.txt"), "extra-1\n").unwrap();
    fs::write(
        workspace.path("app/src/extra.rs"),
        "pub const EXTRA: &str = include_str!(\"../static/extra.txt\");\n",
    )
    .unwrap();
    // (The text file is under `static/`, an asset directory: it may come in the same batch.)
    let line = master.wait_for_stderr("app/src/extra.rs");
    assert!(
        line.starts_with("mcluster: app/src/extra.rs")
            && line.ends_with(" → nothing to rebuild; generation 4 keeps serving"),
        "{line}\n{}",
        master.dump()
    );
    // Used, with the template it pulls in: that template is watched from the next build on.
    workspace.edit(
        "app/src/main.rs",
        "const BANNER",
        "mod extra;\n\nconst BANNER",
    );
    workspace.edit("app/src/main.rs", "BANNER.trim(),", "extra::EXTRA.trim(),");
    master.wait_for_stderr("mcluster: app/src/main.rs changed → built in ");
    assert!(served(&master).starts_with("extra-1 "), "{}", master.dump());
    workspace.edit("app/static/extra.txt", "extra-1", "extra-2");
    master.wait_for_stderr("mcluster: app/static/extra.txt changed → built in ");
    let body = served(&master);
    assert!(
        body.starts_with("extra-2 ") && body.ends_with("generation=6"),
        "{body}\n{}",
        master.dump()
    );
    assert_eq!(
        count(&master, " → rolled 1 worker in "),
        5,
        "{}",
        master.dump()
    );

    // A new path dependency outside the workspace is watched once the manifest names it.
    let shared = TempDir::new().unwrap();
    fs::create_dir(shared.path().join("src")).unwrap();
    fs::write(
        shared.path().join("Cargo.toml"),
        "[package]\nname = \"shared\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    )
    .unwrap();
    fs::write(
        shared.path().join("src/lib.rs"),
        "pub const TEXT: &str = \"shared-1\";\n",
    )
    .unwrap();
    workspace.edit(
        "app/Cargo.toml",
        "[dependencies]\n",
        &format!(
            "[dependencies]\nshared = {{ path = {:?} }}\n",
            shared.path()
        ),
    );
    workspace.edit("app/src/main.rs", "common::TEXT,", "shared::TEXT,");
    master.wait_until("the new dependency to be served", || {
        get(master.port()).is_ok_and(|body| body.contains(" shared-1 "))
    });
    fs::write(
        shared.path().join("src/lib.rs"),
        "pub const TEXT: &str = \"shared-2\";\n",
    )
    .unwrap();
    // Named from the workspace root, with its crate's directory (a sibling temporary one).
    let name = shared.path().file_name().unwrap().to_str().unwrap();
    master.wait_for_stderr(&format!(
        "mcluster: ../{name}/src/lib.rs changed → built in "
    ));
    assert!(served(&master).contains(" shared-2 "), "{}", master.dump());
    stop_gracefully(&mut master);
}

#[test]
fn a_build_script_writing_into_the_watched_tree_is_named_and_the_app_serves() {
    let _cargo = cargo_lock();
    let workspace = Workspace::new();
    let mut master = workspace
        .master("", &[])
        .env("FIXTURE_BUILD_LOOP", "1")
        .start();
    let named = master.wait_for_stderr(" builds it triggered: the build writes it");
    assert_eq!(
        named,
        "mcluster: app/src/stamp.rs changed during each of the last 2 builds it triggered: the \
         build writes it (a build script?); its changes while a build runs are ignored from now \
         on (to ignore it always: -i 'app/src/stamp.rs')",
        "{}",
        master.dump()
    );
    master.wait_for_stderr(&crate::support::all_ready(1));
    assert!(
        served(&master).starts_with("banner-1 "),
        "{}",
        master.dump()
    );
    // The initial build and two rounds of its own change, then the loop is broken.
    let builds = count(&master, "Compiling app ");
    assert!(
        (1..=3).contains(&builds),
        "{builds} builds\n{}",
        master.dump()
    );

    // An edit still reloads, and the build's own write during it is no second reload.
    workspace.edit("common/src/lib.rs", "common-1", "common-2");
    master.wait_for_stderr("mcluster: common/src/lib.rs changed → built in ");
    assert!(served(&master).contains(" common-2 "), "{}", master.dump());
    assert_eq!(count(&master, " changed → "), 1, "{}", master.dump());
    stop_gracefully(&mut master);
}

/// Also: polling (as on file systems inotify is blind on) watches what the build reads too.
#[test]
fn a_build_waiting_for_cargo_s_lock_says_why_and_polling_sees_templates() {
    let _cargo = cargo_lock();
    let workspace = Workspace::new();
    // What rust-analyzer's `cargo check` does to the same target directory.
    let debug = shared_target().join("debug");
    fs::create_dir_all(&debug).unwrap();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(debug.join(".cargo-lock"))
        .unwrap();
    let held = Flock::lock(file, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("{e}"));
    let mut master = workspace.master("", &["--poll=100ms"]).start();
    // (Another test's cargo may hold the package cache's lock a moment first: that line is
    // allowed, once.)
    let line = master.wait_for_stderr("another cargo uses this target directory");
    assert!(
        line.starts_with("mcluster: the build waits for cargo's lock on the "),
        "{line}"
    );
    assert!(
        line.ends_with(
            "directory: another cargo uses this target directory (rust-analyzer checking the \
             project?); give rust-analyzer one of its own (\"rust-analyzer.cargo.targetDir\": \
             true)"
        ),
        "{line}"
    );
    drop(held);
    master.wait_for_stderr(&crate::support::all_ready(1));
    assert_eq!(
        count(&master, "another cargo uses this target directory"),
        1,
        "{}",
        master.dump()
    );
    assert!(count(&master, "cargo's lock") <= 2, "{}", master.dump());

    workspace.edit("app/static/banner.txt", "banner-1", "banner-2");
    master.wait_for_stderr("mcluster: app/static/banner.txt changed → built in ");
    assert!(
        served(&master).starts_with("banner-2 "),
        "{}",
        master.dump()
    );
    stop_gracefully(&mut master);
}

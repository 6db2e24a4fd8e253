//! `mcluster dev` on a copy of `fixtures/workspace`: an app, the path-dependency crate `common`,
//! a build script reading `build.txt`, a template pulled in with `include_str!`, and the
//! unrelated member `other`.
//!
//! Every build goes to the shared target directory of the `dev` tests, under their lock; each
//! test runs one master through several edits, so that the builds are few.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::dev::{cargo_lock, count, get_ok, shared_target, stop_gracefully};
use crate::support::{Master, MasterBuilder};

/// A copy of the fixture workspace, depending on this checkout by absolute path.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    fn new() -> Self {
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

/// What the app answers: `banner common build args=… generation=N`.
#[track_caller]
fn served(master: &Master) -> String {
    get_ok(master.port()).trim_end().to_owned()
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
    stop_gracefully(&mut master);
}

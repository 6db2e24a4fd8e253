//! The README's install and dependency lines, run as written (none is copied here: each is
//! extracted from README.md, and any Markdown page under `docs/` and `deploy/`, at test time).
//!
//! - Every `mcluster = { … }` dependency line (in a `toml` block, inline, or in a code comment)
//!   is a `git` or a `path` dependency, or the published `version` form marked "not yet". A
//!   throwaway app (a renamed copy of `examples/hello-app`, or of `examples/axum-app` for the
//!   `axum` feature) depends on mcluster through each distinct line and is built.
//! - Every `cargo install` line installs a `mcluster` that runs.
//!
//! GitHub is not reachable from the machines these tests run on, so a `git` line's URL (which
//! must be `Cargo.toml`'s `repository`) is rewritten to a `file://` URL of a fresh git
//! repository holding this checkout's files (tracked and new, as the working tree has them):
//! what is tested is the line's shape and the crate as a git dependency, not GitHub itself. A
//! `path` line's path is rewritten to this checkout.
//!
//! The builds are incremental: the apps build into the target directories the dev and axum
//! tests fill (`target/dev-tests`, `target/axum-tests`), with the examples' lock files (offline
//! for a `path` line; cargo refuses a `git` one offline), so only mcluster and the app
//! compile. The installs are `--debug`, into a target directory of their own
//! (`target/debug/mcluster`, which the other tests run, is never replaced); the release
//! profile is built by the container check, deploy/check.sh.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, then every Markdown page under `docs/` and `deploy/`: where a user reads
/// dependency and install lines.
fn readme() -> String {
    let mut text = fs::read_to_string(root().join("README.md")).unwrap();
    for dir in ["docs", "deploy"] {
        let mut pages: Vec<_> = fs::read_dir(root().join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "md"))
            .collect();
        pages.sort();
        for page in pages {
            text.push('\n');
            text.push_str(&fs::read_to_string(page).unwrap());
        }
    }
    text
}

/// Every `mcluster = { … }` in the README: the inline table, with the text before it.
fn dependency_lines(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("mcluster = {") {
        let start = at + "mcluster = ".len();
        let end = start + rest[start..].find('}').expect("an unclosed `mcluster = {`") + 1;
        let before = rest[at.saturating_sub(300)..at].to_owned();
        found.push((rest[start..end].replace('\n', " "), before));
        rest = &rest[end..];
    }
    found
}

/// Every `cargo install …` line of the README's `sh` blocks.
fn install_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| line.starts_with("cargo install "))
        .map(str::to_owned)
        .collect()
}

fn repository() -> String {
    let manifest: toml::Table =
        toml::from_str(&fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    manifest["package"]["repository"]
        .as_str()
        .expect("Cargo.toml's package.repository")
        .to_owned()
}

/// A git repository of this checkout's files (tracked, and new ones not ignored), committed:
/// what a clone of the repository would hold. Made once per test run.
fn git_clone() -> &'static str {
    static URL: OnceLock<(TempDir, String)> = OnceLock::new();
    let (_, url) = URL.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let repo = dir.path().join("mcluster");
        let files = Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(root())
            .output()
            .expect("run git");
        assert!(
            files.status.success(),
            "git ls-files in {}",
            root().display()
        );
        for name in files.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let name = std::str::from_utf8(name).unwrap();
            let from = root().join(name);
            // A tracked file deleted in the working tree is not part of it.
            if !from.is_file() {
                continue;
            }
            let to = repo.join(name);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(&from, &to).unwrap();
        }
        for args in [
            &["init", "--quiet"][..],
            &["add", "--all"],
            &[
                "-c",
                "user.name=readme test",
                "-c",
                "user.email=readme@test.invalid",
                "commit",
                "--quiet",
                "--message",
                "this checkout",
            ],
        ] {
            let status = Command::new("git")
                .args(args)
                .current_dir(&repo)
                .status()
                .expect("run git");
            assert!(status.success(), "git {args:?}");
        }
        let url = format!("file://{}", repo.display());
        (dir, url)
    });
    url
}

/// The line with its `git` URL or `path` pointing at this checkout.
fn rewritten(line: &str) -> String {
    let table: toml::Table = toml::from_str(&format!("mcluster = {line}"))
        .unwrap_or_else(|e| panic!("README: `mcluster = {line}` is not TOML: {e}"));
    let mut spec = table["mcluster"].as_table().unwrap().clone();
    if let Some(url) = spec.get("git") {
        assert_eq!(
            url.as_str(),
            Some(repository().as_str()),
            "README: `mcluster = {line}` names another repository than Cargo.toml"
        );
        spec.insert("git".into(), git_clone().into());
    } else if spec.contains_key("path") {
        spec.insert("path".into(), root().to_str().unwrap().into());
    } else {
        panic!("README: `mcluster = {line}` is neither a git nor a path dependency");
    }
    toml::Value::Table(spec).to_string()
}

/// Builds a copy of `example`, renamed, with `dependency` in place of its `mcluster` line, into
/// `target`; offline, with the example's lock file for every other crate.
fn build_app(example: &str, dependency: &str, target: &Path) {
    let source = root().join("examples").join(example);
    let dir = TempDir::new().unwrap();
    let manifest = fs::read_to_string(source.join("Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("mcluster = "))
        .expect("the example's mcluster line");
    let manifest = manifest
        .replace(line, &format!("mcluster = {dependency}"))
        .replace(
            &format!("name = \"{example}\""),
            &format!("name = \"readme-{example}\""),
        );
    fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    fs::copy(source.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    fs::create_dir(dir.path().join("src")).unwrap();
    fs::copy(source.join("src/main.rs"), dir.path().join("src/main.rs")).unwrap();
    fs::create_dir_all(target).unwrap();
    // Cargo refuses a git dependency offline, even a file:// one; with every other crate in the
    // lock file and cached, the online build fetches only that repository.
    let offline = !dependency.contains("git =");
    let output = Command::new(env!("CARGO"))
        .args(["build", "--quiet"])
        .args(offline.then_some("--offline"))
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "an app with `mcluster = {dependency}` does not build:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_dependency_line_builds_an_app() {
    let text = readme();
    let lines = dependency_lines(&text);
    let mut builds = BTreeSet::new();
    let (mut git, mut path) = (false, false);
    for (line, before) in &lines {
        if line.contains("version =") {
            assert!(
                before.contains("(not yet"),
                "README: the published form `mcluster = {line}` must be marked \"(not yet…\""
            );
            continue;
        }
        git |= line.contains("git =");
        path |= line.contains("path =");
        let example = if line.contains("\"axum\"") {
            "axum-app"
        } else {
            "hello-app"
        };
        builds.insert((example, rewritten(line)));
    }
    assert!(
        git && path,
        "README: a git and a path dependency line, found {lines:?}"
    );
    for (example, dependency) in &builds {
        let target = if *example == "axum-app" {
            "target/axum-tests"
        } else {
            "target/dev-tests"
        };
        build_app(example, dependency, &root().join(target));
    }
}

#[test]
fn every_install_line_installs_mcluster() {
    let lines = install_lines(&readme());
    assert!(
        lines.iter().any(|l| l.contains("--path .")) && lines.iter().any(|l| l.contains("--git")),
        "README: a `cargo install` line from the checkout and one from git, found {lines:?}"
    );
    let url = repository();
    for line in lines {
        let installed = TempDir::new().unwrap();
        let mut args: Vec<String> = line
            .split_whitespace()
            .skip(2)
            .map(|word| {
                if word == url {
                    git_clone().to_owned()
                } else {
                    word.to_owned()
                }
            })
            .collect();
        assert!(
            !args.iter().any(|a| a.starts_with("https://")),
            "README: `{line}` installs from another repository than Cargo.toml's"
        );
        args.extend(["--debug", "--quiet", "--root"].map(String::from));
        args.push(installed.path().to_str().unwrap().to_owned());
        let output = Command::new(env!("CARGO"))
            .arg("install")
            .args(&args)
            .current_dir(root())
            .env("CARGO_TARGET_DIR", root().join("target/readme-tests"))
            .output()
            .expect("run cargo");
        assert!(
            output.status.success(),
            "`{line}` fails:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let bin = installed.path().join("bin/mcluster");
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .expect("run the installed mcluster");
        assert!(
            version.status.success()
                && String::from_utf8_lossy(&version.stdout).starts_with("mcluster "),
            "`{line}`: the installed mcluster does not run"
        );
    }
}

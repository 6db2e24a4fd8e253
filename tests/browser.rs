//! Live reload in a real browser: headless Chromium (driven by `tests/browser/driver.py` through
//! Selenium; `.ci/run` installs both) on a copy of the bundled example under `mcluster dev`.
//! The page follows every save by itself: the failed first build's page turns into the app, an
//! edit shows after its switch with no request failed, a stylesheet edit applies in place with
//! no build and no reload, a broken build shows its error (file and line) in an overlay, the
//! fix clears it. And with the apps users write — an HTML page on `mcluster::serve` with its
//! live-reload middleware, and a plain `listenfd` axum app that includes the script by hand,
//! both keeping connections alive as every framework does —, every one of five saves is shown
//! and still shown a second later: no reload lands on an old worker.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nix::fcntl::{Flock, FlockArg};
use tempfile::TempDir;

use crate::support::load::{Load, StopOnDrop};
use crate::support::{Master, MasterBuilder, python3};

/// The dev tests' shared target directory and its lock (`tests/dev.rs`): one cargo build at a
/// time across test processes.
fn shared_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dev-tests")
}

fn cargo_lock() -> Flock<std::fs::File> {
    std::fs::create_dir_all(shared_target()).unwrap();
    let file = std::fs::File::create(shared_target().join("tests.lock")).unwrap();
    Flock::lock(file, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("lock: {e}"))
}

/// A copy of the bundled example (sources and `static/`), depending on this checkout.
fn example_copy() -> TempDir {
    app_copy("examples/hello-app", &["src", "static"])
}

/// A copy of the app project at `source` (relative to the repository): its manifest (a path
/// dependency on `../..` pointed at this checkout), its lock file and the directories `dirs`.
fn app_copy(source: &str, dirs: &[&str]) -> TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let dir = TempDir::new().unwrap();
    let manifest = std::fs::read_to_string(source.join("Cargo.toml"))
        .unwrap()
        .replace(
            r#"path = "../..""#,
            &format!("path = {:?}", env!("CARGO_MANIFEST_DIR")),
        );
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(source.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    for sub in dirs {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(source.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// The axum tests' target directory (`tests/axum.rs`): axum and tokio are built there once.
fn axum_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/axum-tests")
}

/// Builds `project` into the axum tests' target directory, under their build lock, so that the
/// dev master's first build finds everything built.
fn prebuild(project: &Path) {
    std::fs::create_dir_all(axum_target()).unwrap();
    let lock = std::fs::File::create(axum_target().join("build.lock")).unwrap();
    let _lock =
        Flock::lock(lock, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("lock: {e}"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(project.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", axum_target())
        .status()
        .expect("run cargo");
    assert!(status.success(), "{} does not build", project.display());
}

/// `mcluster dev -n 2` with live reload on the project of `manifest`, building into `target`.
fn dev_master(manifest: &Path, target: &Path) -> Master {
    MasterBuilder::raw(&[
        "dev",
        "-l",
        "127.0.0.1:0",
        "-n",
        "2",
        "--livereload",
        "127.0.0.1:0",
        "--manifest-path",
        manifest.to_str().unwrap(),
    ])
    .env("CARGO_TARGET_DIR", target)
    .env("APP_ENV", "dev")
    .start()
}

/// `mcluster dev -n 2` on `project`, its page at `path` open in the browser showing
/// `PAGE_TEXT` (`first`): five saves of `src/main.rs`, each shown, and still shown a second
/// later.
fn five_saves_each_shown_and_still_shown(project: &Path, path: &str, first: &str) {
    prebuild(project);
    let manifest = project.join("Cargo.toml");
    let master = dev_master(&manifest, &axum_target());
    master.wait_for_stderr(&crate::support::all_ready(2));
    let port = master.port();
    let mut browser = Browser::open(&format!("http://127.0.0.1:{port}{path}"));
    browser.expect(&format!("text {first}"), &master);
    let main_rs = project.join("src/main.rs");
    let mut shown = first.to_owned();
    for save in 1..=5 {
        let next = format!("{first} (save {save})");
        edit(
            &main_rs,
            &format!("const PAGE_TEXT: &str = {shown:?};"),
            &format!("const PAGE_TEXT: &str = {next:?};"),
        );
        browser.expect(&format!("text {next}"), &master);
        browser.expect(&format!("still {next}"), &master);
        shown = next;
    }
}

/// An HTML page of `examples/axum-app`, on `mcluster::serve` with its live-reload middleware.
#[test]
fn a_page_of_the_axum_example_shows_every_save_and_keeps_showing_it() {
    let project = app_copy("examples/axum-app", &["src"]);
    five_saves_each_shown_and_still_shown(project.path(), "/page", "A page served by axum");
}

/// A plain axum app on a `listenfd` socket (axum's own graceful shutdown), whose page includes
/// the live-reload script by hand.
#[test]
fn a_page_of_a_plain_listenfd_axum_app_shows_every_save_and_keeps_showing_it() {
    let project = app_copy("fixtures/plain-axum", &["src"]);
    five_saves_each_shown_and_still_shown(project.path(), "/", "plain axum v1");
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} is not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Headless Chromium on a page, steered by [`Browser::expect`].
struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Browser {
    fn open(url: &str) -> Self {
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/driver.py");
        let mut child = Command::new(python3())
            .arg(driver)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3 tests/browser/driver.py");
        let commands = child.stdin.take().unwrap();
        let answers = BufReader::new(child.stdout.take().unwrap());
        let mut browser = Self {
            child,
            commands,
            answers,
        };
        let opened = browser.answer();
        assert_eq!(
            opened, "ok opened",
            "the browser did not start (are chromium, chromium-driver and selenium installed? \
             .ci/run installs them)"
        );
        browser
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.answers.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    /// Sends one command and checks that it succeeded.
    #[track_caller]
    fn expect(&mut self, command: &str, master: &Master) {
        writeln!(self.commands, "{command}").unwrap();
        self.commands.flush().unwrap();
        let answer = self.answer();
        assert!(
            answer.starts_with("ok"),
            "{command}: {answer}\n{}",
            master.dump()
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.commands, "quit");
        let _ = self.commands.flush();
        if self.child.try_wait().ok().flatten().is_none() {
            // The driver quits Chromium on `quit`; give it a moment, then make sure.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline
                && self.child.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn the_page_follows_every_save_by_itself() {
    let project = example_copy();
    let main_rs = project.path().join("src/main.rs");
    // The first build fails: the tab opened now must turn into the app once it is fixed.
    edit(&main_rs, "fn main()", "fn broken() {\nfn main()");
    let _lock = cargo_lock();
    let manifest = project.path().join("Cargo.toml");
    let master = dev_master(&manifest, &shared_target());
    let port = master.port();
    master.wait_for_stderr("mcluster: build failed");
    let mut browser = Browser::open(&format!("http://127.0.0.1:{port}/"));
    browser.expect("body the build failed", &master);
    // The build's own error, with its file and line.
    browser.expect("body --> src/main.rs:", &master);

    edit(&main_rs, "fn broken() {\n", "");
    browser.expect("text Hello from worker", &master);
    browser.expect("no-overlay", &master);

    // An edit: the page shows it after the switch, by itself, and no request fails meanwhile.
    let (load, threads) = Load::start_http(port, 4);
    let _stop = StopOnDrop(Arc::clone(&load));
    edit(&main_rs, "Hello from worker", "Howdy from worker");
    browser.expect("text Howdy from worker", &master);
    master.wait_for_stderr("src/main.rs changed → built in ");
    load.stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(load.failures(), Vec::<String>::new());

    // A stylesheet edit: applied in place, no build, no reload (the page's state survives).
    browser.expect("mark", &master);
    let css = project.path().join("static/style.css");
    edit(&css, "color: #222;", "color: rgb(200, 0, 0);");
    browser.expect("style color rgb(200, 0, 0)", &master);
    browser.expect("marked", &master);
    master
        .wait_for_stderr("mcluster: static/style.css changed → stylesheets reloaded in the pages");

    // A broken build: its error in an overlay; the fix clears it.
    edit(&main_rs, "fn main()", "fn broken() {\nfn main()");
    browser.expect("overlay the build failed", &master);
    browser.expect("overlay --> src/main.rs:", &master);
    browser.expect("text Howdy from worker", &master);
    // Readable over any page: one whose stylesheet hides, clears and moves everything.
    browser.expect("hostile-css", &master);
    browser.expect("overlay-readable", &master);
    edit(&main_rs, "fn broken() {\n", "");
    edit(&main_rs, "Howdy from worker", "Hello again from worker");
    browser.expect("text Hello again from worker", &master);
    browser.expect("no-overlay", &master);
}

/// While the first build runs, the app's address answers with the building page (no hanging
/// client); the first workers then get the socket back as it was (blocking: an app that blocks
/// in `accept` must not find it non-blocking).
#[test]
fn the_building_page_answers_until_the_first_workers_start() {
    let dir = TempDir::new().unwrap();
    let gate = dir.path().join("gate");
    let build = format!(
        "while [ ! -f {} ]; do sleep 0.05; done",
        crate::support::script::quote(&gate)
    );
    let accept = crate::support::fixture("fixture-accept");
    let master = MasterBuilder::raw(&[
        "dev",
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--livereload",
        "127.0.0.1:0",
        "-w",
        dir.path().to_str().unwrap(),
        "--build",
        &build,
        "--",
        accept.to_str().unwrap(),
        "block",
    ])
    .start();
    let port = master.port();
    let page = crate::support::net::http_get(port).unwrap();
    assert!(
        page.starts_with("HTTP/1.1 503") && page.contains("building…"),
        "{page}"
    );
    assert!(page.contains("/livereload.js\"></script>"), "{page}");
    std::fs::write(&gate, "").unwrap();
    master.wait_for_stderr("mcluster: the worker is ready in ");
    // The app accepts (and drops) a connection, and lives on.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    master.wait_for_stdout("accepting");
    assert!(
        !master.stderr_lines().iter().any(|l| l.contains("exited")),
        "{}",
        master.dump()
    );
}

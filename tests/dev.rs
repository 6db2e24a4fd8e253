//! `mcluster dev`: a real cargo project (a copy of `examples/hello-app`) rebuilt on every edit
//! while the old generation serves.
//!
//! The cargo builds are few and small: every copy builds into one shared target directory, which
//! a setup step fills once, so each build in a test is an incremental build of one crate. The
//! tests that build take a lock, so two of them never race for that directory.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::support::process::proc_status;
use crate::support::{Master, MasterBuilder, Script, echo, fixture};

/// Cargo builds in these tests share one target directory, one test at a time, across test
/// processes too (nextest runs each test in a process of its own): a build of another copy
/// would replace `target/debug/hello-app` under a master about to keep it.
pub(crate) fn cargo_lock() -> Flock<fs::File> {
    fs::create_dir_all(shared_target()).unwrap();
    let file = fs::File::create(shared_target().join("tests.lock")).unwrap();
    Flock::lock(file, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("lock: {e}"))
}

pub(crate) fn shared_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dev-tests")
}

/// A copy of the bundled example project, depending on this checkout by absolute path.
struct Project {
    dir: TempDir,
}

impl Project {
    /// A fresh copy, whose dependencies are already in the shared target directory: its
    /// builds in the test compile only the project itself.
    #[track_caller]
    fn new() -> Self {
        prebuild_dependencies();
        Self::copy()
    }

    /// A copy of the project, with nothing built for it yet.
    fn copy() -> Self {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-app");
        let dir = TempDir::new().unwrap();
        fs::create_dir(dir.path().join("src")).unwrap();
        let manifest = fs::read_to_string(source.join("Cargo.toml"))
            .unwrap()
            .replace(
                r#"path = "../..""#,
                &format!("path = {:?}", env!("CARGO_MANIFEST_DIR")),
            );
        fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
        fs::copy(source.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
        fs::copy(source.join("src/main.rs"), dir.path().join("src/main.rs")).unwrap();
        Self { dir }
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("Cargo.toml")
    }

    fn main_rs(&self) -> PathBuf {
        self.dir.path().join("src/main.rs")
    }

    /// Replaces `from` with `to` in `src/main.rs`, as an editor saving in place would.
    #[track_caller]
    fn edit(&self, from: &str, to: &str) {
        let text = fs::read_to_string(self.main_rs()).unwrap();
        assert!(text.contains(from), "{from:?} is not in main.rs");
        fs::write(self.main_rs(), text.replacen(from, to, 1)).unwrap();
    }

    /// `mcluster dev` on this project, 2 workers, on a free port.
    fn master(&self) -> MasterBuilder {
        self.master_with(&[])
    }

    /// `mcluster dev` on this project, 2 workers, on a free port, with more options.
    fn master_with(&self, options: &[&str]) -> MasterBuilder {
        self.master_of("2", options)
    }

    /// `mcluster dev` on this project, `size` workers, on a free port, with more options.
    fn master_of(&self, size: &str, options: &[&str]) -> MasterBuilder {
        let manifest = self.manifest();
        let mut args = vec![
            "dev",
            "-l",
            "127.0.0.1:0",
            "-n",
            size,
            "--manifest-path",
            manifest.to_str().unwrap(),
        ];
        args.extend(options);
        MasterBuilder::raw(&args)
            .env("CARGO_TARGET_DIR", shared_target())
            .env("APP_ENV", "dev")
    }
}

/// Builds the dependencies into the shared target directory once, outside any deadline, from a
/// copy of its own (so that every test's copy still compiles the project once).
fn prebuild_dependencies() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--manifest-path"])
            .arg(Project::copy().manifest())
            .env("CARGO_TARGET_DIR", shared_target())
            .status()
            .expect("run cargo");
        assert!(status.success(), "the example project does not build");
    });
}

/// `GET /` on a fresh connection; the response body.
pub(crate) fn get(port: u16) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    // The address as `Host`, as a browser sends it (the dev master's building page answers
    // only its own names).
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!("bad response {response:?}"))),
    }
}

#[track_caller]
pub(crate) fn get_ok(port: u16) -> String {
    get(port).unwrap_or_else(|e| panic!("GET / on port {port} failed: {e}"))
}

/// `mcluster dev -l 127.0.0.1:0 --ready notify ARGS…`, for fixture workers.
fn dev_with(args: &[&str]) -> MasterBuilder {
    let mut all = vec!["dev", "-l", "127.0.0.1:0", "--ready", "notify"];
    all.extend(args);
    MasterBuilder::raw(&all)
}

/// `mcluster dev --no-build` of `size` script workers, rolling on every change in `watched`;
/// returns once they are ready.
#[track_caller]
fn rolling_on_changes(size: usize, watched: &Path, script: &Script) -> Master {
    let size_arg = size.to_string();
    let master = dev_with(&[
        "-n",
        &size_arg,
        "-w",
        watched.to_str().unwrap(),
        "--no-build",
        "--",
        "/bin/sh",
        script.arg(),
    ])
    .start();
    master.wait_for_stderr(&crate::support::all_ready(size));
    master
}

/// How many stderr lines contain `needle`.
pub(crate) fn count(master: &Master, needle: &str) -> usize {
    master
        .stderr_lines()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn an_edit_is_served_after_the_rebuild_and_a_broken_one_keeps_the_old_generation() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let mut master = project.master().start();
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let port = master.port();
    assert!(
        get_ok(port).starts_with("Hello from worker"),
        "{}",
        master.dump()
    );

    project.edit("Hello from", "Howdy from");
    let line = master.wait_for_stderr(" → rolled 2 workers in ");
    assert!(
        line.starts_with("mcluster: src/main.rs changed → built in "),
        "one line names the file and the build time: {line}"
    );
    let body = get_ok(port);
    assert!(body.starts_with("Howdy from worker"), "{body}");
    assert!(body.contains("generation 2"), "{body}");

    // A broken edit: the diagnostics are shown, and generation 2 keeps serving.
    let mark = master.stderr_mark();
    project.edit("fn main()", "fn main( {");
    let (_, failed) = master.wait_for_stderr_after(mark, "build failed");
    assert!(failed.ends_with("generation 2 keeps serving"), "{failed}");
    assert!(
        master.stderr_lines()[mark..]
            .iter()
            .any(|l| l.contains("error") && !l.starts_with("mcluster:")),
        "cargo's diagnostics are shown\n{}",
        master.dump()
    );
    assert!(get_ok(port).starts_with("Howdy from worker"));

    // The fix is served.
    project.edit("fn main( {", "fn main()");
    project.edit("Howdy from", "Hi from");
    master.wait_until("the fix to be served", || {
        get(port).is_ok_and(|body| body.starts_with("Hi from worker"))
    });
    assert_eq!(count(&master, "build failed"), 1, "{}", master.dump());
    stop_gracefully(&mut master);
}

/// `cargo update` (or a `git pull` that moves only the lock file) changes `Cargo.lock` alone:
/// a build runs for it. Cargo rewrites it only when its resolution differs, so neither an
/// untouched lock nor one cargo rewrites once during a build makes a build loop.
#[test]
fn a_change_of_cargo_lock_alone_starts_a_build_and_no_loop() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let mut master = project.master().start();
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let lock = project.dir.path().join("Cargo.lock");
    let original = fs::read_to_string(&lock).unwrap();

    // A comment cargo keeps: the lock is consistent, cargo writes nothing.
    let pinned = original.replacen(
        "# It is not intended for manual editing.\n",
        "# It is not intended for manual editing.\n# pinned by the test\n",
        1,
    );
    assert_ne!(pinned, original);
    let mark = master.stderr_mark();
    fs::write(&lock, &pinned).unwrap();
    let (_, line) = master.wait_for_stderr_after(mark, "mcluster: Cargo.lock changed → ");
    assert_eq!(
        line,
        "mcluster: Cargo.lock changed → nothing to rebuild; generation 1 keeps serving",
        "{}",
        master.dump()
    );
    assert_eq!(fs::read_to_string(&lock).unwrap(), pinned, "cargo kept it");

    // A lock cargo must fix (a path dependency's version that its manifest does not say):
    // cargo rewrites it during the build it triggered, once; the build after that finds it
    // as written.
    let stale = pinned.replacen(
        "name = \"mcluster\"\nversion = \"0.1.0\"",
        "name = \"mcluster\"\nversion = \"0.0.9\"",
        1,
    );
    assert_ne!(stale, pinned);
    let mark = master.stderr_mark();
    fs::write(&lock, &stale).unwrap();
    master.wait_for_stderr_after(mark, "mcluster: Cargo.lock changed → ");
    master.wait_until("cargo to fix the lock file", || {
        fs::read_to_string(&lock).is_ok_and(|text| {
            text.contains("name = \"mcluster\"\nversion = \"0.1.0\"")
                && text.contains("# pinned by the test\n")
        })
    });

    // Cargo's rewrite is one more change (named with the next edit if it comes within the
    // cooldown), and no more: the build after it finds the lock as written.
    project.edit("Hello from", "Howdy from");
    let (mark, line) = master.wait_for_stderr_after(mark, " → rolled 2 workers in ");
    assert!(line.contains("src/main.rs"), "{line}\n{}", master.dump());
    project.edit("Howdy from", "Hi from");
    let (_, line) = master.wait_for_stderr_after(mark, " changed → ");
    assert!(
        line.starts_with("mcluster: src/main.rs changed → built in "),
        "nothing of the lock is left: {line}\n{}",
        master.dump()
    );
    let lock_lines = count(&master, "Cargo.lock");
    assert!(
        (2..=3).contains(&lock_lines),
        "one line for the pin, one or two for the fix\n{}",
        master.dump()
    );
    assert_eq!(
        count(&master, "the build writes it"),
        0,
        "{}",
        master.dump()
    );
    assert!(get_ok(master.port()).starts_with("Hi from worker"));
    stop_gracefully(&mut master);
}

/// A crate of the vendored registry, at `version`, exporting it.
fn vendored_crate(vendor: &Path, version: &str) {
    let dir = vendor.join(format!("lockdep-{version}"));
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"lockdep\"\nversion = \"{version}\"\nedition = \"2021\"\n"),
    )
    .unwrap();
    fs::write(
        dir.join("src/lib.rs"),
        format!("pub const VERSION: &str = \"{version}\";\n"),
    )
    .unwrap();
    fs::write(dir.join(".cargo-checksum.json"), "{\"files\":{}}").unwrap();
}

/// `cargo update -p lockdep --precise VERSION` in `dir`, offline.
#[track_caller]
fn pin_lockdep(dir: &Path, version: &str) {
    let status = Command::new(env!("CARGO"))
        .args([
            "update",
            "--quiet",
            "--offline",
            "-p",
            "lockdep",
            "--precise",
            version,
        ])
        .current_dir(dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo update to {version}");
}

/// `cargo update -p dep --precise …` changes nothing but `Cargo.lock`: the app is rebuilt with
/// that version and served. (A vendored registry: offline, as the suite runs.)
#[test]
fn cargo_update_of_a_dependency_rebuilds_and_serves_it() {
    let root = TempDir::new().unwrap();
    let vendor = root.path().join("vendor");
    vendored_crate(&vendor, "1.0.0");
    vendored_crate(&vendor, "1.0.1");
    let app = root.path().join("app");
    fs::create_dir_all(app.join("src")).unwrap();
    fs::create_dir_all(app.join(".cargo")).unwrap();
    fs::write(
        app.join(".cargo/config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"vendored\"\n\n[source.vendored]\ndirectory = {:?}\n",
            vendor.to_str().unwrap()
        ),
    )
    .unwrap();
    fs::write(
        app.join("Cargo.toml"),
        "[package]\nname = \"lockapp\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nlockdep = \"1\"\n",
    )
    .unwrap();
    // Serves the dependency's version on the listener mcluster hands over (fd 3).
    fs::write(
        app.join("src/main.rs"),
        "use std::io::{Read, Write};\nuse std::os::fd::FromRawFd;\n\n\
         fn main() {\n    let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };\n    \
         for stream in listener.incoming() {\n        let Ok(mut stream) = stream else { continue };\n        \
         let mut request = [0u8; 1024];\n        let _ = stream.read(&mut request);\n        \
         let body = format!(\"lockdep {}\\n\", lockdep::VERSION);\n        \
         let _ = write!(stream, \"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nContent-Length: {}\\r\\n\\r\\n{body}\", body.len());\n    \
         }\n}\n",
    )
    .unwrap();
    pin_lockdep_after_resolving(&app);
    let mut master = MasterBuilder::raw(&["dev", "-l", "127.0.0.1:0", "-n", "1"])
        .current_dir(&app)
        .env("APP_ENV", "dev")
        .start();
    master.wait_for_stderr(&crate::support::all_ready(1));
    // What the app serves, asked again after a reset (it dies at once on SIGTERM, and reads
    // only the start of a request).
    let serves = |version: &str| {
        let want = format!("lockdep {version}\n");
        master.wait_until(&format!("{version} served"), || {
            get(master.port()).is_ok_and(|body| body == want)
        });
    };
    serves("1.0.0");

    pin_lockdep(&app, "1.0.1");
    let line = master.wait_for_stderr("mcluster: Cargo.lock changed → ");
    assert!(
        line.contains(" → built in ") && line.contains(" → rolled 1 worker in "),
        "{line}\n{}",
        master.dump()
    );
    serves("1.0.1");
    assert_eq!(count(&master, " changed → "), 1, "{}", master.dump());
    stop_gracefully(&mut master);
}

/// Resolves the app's dependencies (the newest: 1.0.1), then pins 1.0.0 in `Cargo.lock`, as a
/// `git pull` would (`cargo update --precise` does not downgrade here).
#[track_caller]
fn pin_lockdep_after_resolving(app: &Path) {
    let status = Command::new(env!("CARGO"))
        .args(["generate-lockfile", "--quiet", "--offline"])
        .current_dir(app)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo generate-lockfile");
    let lock = app.join("Cargo.lock");
    let text = fs::read_to_string(&lock).unwrap();
    let resolved = "name = \"lockdep\"\nversion = \"1.0.1\"";
    assert!(text.contains(resolved), "{text}");
    fs::write(
        &lock,
        text.replace(resolved, "name = \"lockdep\"\nversion = \"1.0.0\""),
    )
    .unwrap();
}

/// Ctrl-C during a build: the master's line does not go on the line cargo's progress bar left
/// unfinished (drawn, then `\r`), here a pipe, where it is kept on a line of its own.
#[test]
fn a_line_after_cargo_s_progress_bar_starts_on_a_line_of_its_own() {
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    let drawn = dir.path().join("drawn");
    // A cargo that draws a progress bar as cargo does, and builds for ever.
    let cargo = dir.path().join("cargo");
    fs::write(
        &cargo,
        format!(
            "#!/bin/sh\n[ \"$1\" = build ] || exit 1\nprintf '    Building [=>   ] 1/2: app\\r' >&2\n\
             touch '{}'\nexec sleep 60\n",
            drawn.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
    let mut master = MasterBuilder::raw(&["dev", "-l", "127.0.0.1:0", "-n", "1"])
        .current_dir(dir.path())
        .env("CARGO", cargo.to_str().unwrap())
        .env("APP_ENV", "dev")
        .start();
    master.wait_until("the progress bar", || drawn.exists());
    master.signal(Signal::SIGINT);
    master.wait_exit_code();
    let lines = master.stderr_lines();
    let bar = lines
        .iter()
        .position(|line| line.contains("Building [=>   ] 1/2: app"))
        .unwrap_or_else(|| panic!("no progress bar\n{}", master.dump()));
    assert!(
        !lines[bar].contains("mcluster:")
            && lines[bar + 1..].iter().any(|l| l.starts_with("mcluster: ")),
        "{}",
        master.dump()
    );
}

/// Stops the master gracefully, so that it removes its kept builds from the shared target.
#[track_caller]
pub(crate) fn stop_gracefully(master: &mut Master) {
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
}

#[test]
fn no_request_fails_under_load_across_five_reloads() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let master = project.master().start();
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let port = master.port();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(port) {
                        Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e.to_string());
                            0
                        }
                    };
                }
            })
        })
        .collect();

    let mut version = "Hello from".to_owned();
    for reload in 1..=5 {
        let next = format!("Reload {reload} from");
        project.edit(&version, &next);
        master.wait_until(&format!("reload {reload} to roll"), || {
            count(&master, " → rolled 2 workers in ") >= reload
        });
        assert!(get_ok(port).starts_with(&next), "{}", master.dump());
        version = next;
    }
    stop.store(true, Ordering::Relaxed);
    for handle in loops {
        handle.join().unwrap();
    }
    // Each reload kept a private link to its build; only what can still run is kept.
    let builds = shared_target().join(format!("debug/.mcluster-{}", master.pid()));
    let kept = fs::read_dir(&builds).unwrap().count();
    assert!(
        (1..=2).contains(&kept),
        "{kept} builds kept in {}",
        builds.display()
    );
    let mut master = master;
    stop_gracefully(&mut master);
    assert!(!builds.exists(), "the kept builds are removed on exit");

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answered.load(Ordering::Relaxed) > 0);
}

#[test]
fn app_env_production_builds_once_and_never_watches() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let mut master = project.master().env("APP_ENV", "production").start();
    master.wait_for_stderr("APP_ENV=production: production mode");
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let port = master.port();
    let inotify = fs::read_dir(format!("/proc/{}/fd", master.pid()))
        .unwrap()
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("inotify"))
        .count();
    assert_eq!(inotify, 0, "production mode watches nothing");

    // An edit, then a roll: the new generation still runs the one build.
    project.edit("Hello from", "Howdy from");
    master.signal(Signal::SIGHUP);
    master.wait_for_stderr("mcluster: rolled 2 workers to generation 2 in ");
    let body = get_ok(port);
    assert!(body.starts_with("Hello from worker"), "{body}");
    assert!(body.contains("generation 2"), "{body}");
    assert_eq!(
        count(&master, "Compiling hello-app"),
        1,
        "{}",
        master.dump()
    );
    stop_gracefully(&mut master);
}

/// A build command that waits for a gate file, so the test decides when a build ends.
struct GatedBuild {
    dir: TempDir,
}

impl GatedBuild {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        fs::write(dir.path().join("gate"), "").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> String {
        format!(
            "echo started >> {log}; while [ ! -f {gate} ]; do sleep 0.02; done",
            log = self.path("builds.log").display(),
            gate = self.path("gate").display()
        )
    }

    fn builds_started(&self) -> usize {
        fs::read_to_string(self.path("builds.log")).map_or(0, |log| log.lines().count())
    }
}

#[test]
fn a_save_during_a_build_restarts_it_and_one_roll_follows() {
    let build = GatedBuild::new();
    let command = build.command();
    let worker = fixture("fixture-echo");
    let dir = build.dir.path().to_str().unwrap();
    let master = dev_with(&[
        "-n",
        "1",
        "-w",
        dir,
        "--build",
        &command,
        "--",
        worker.to_str().unwrap(),
    ])
    .start();
    master.wait_for_stderr(&crate::support::all_ready(1));
    let port = master.port();

    fs::remove_file(build.path("gate")).unwrap();
    fs::write(build.path("a.rs"), "fn a() {}").unwrap();
    master.wait_until("the first build to start", || build.builds_started() == 2);
    fs::write(build.path("b.rs"), "fn b() {}").unwrap();
    master.wait_until("the build to restart", || build.builds_started() == 3);
    fs::write(build.path("gate"), "").unwrap();

    let line = master.wait_for_stderr(" → rolled 1 worker in ");
    assert!(
        line.contains("a.rs") && line.contains("b.rs"),
        "both saves are in the one reload: {line}"
    );
    assert_eq!(echo(port, "x").generation, 2, "{}", master.dump());
    assert_eq!(
        count(&master, "build failed"),
        0,
        "a cancelled build is no failure\n{}",
        master.dump()
    );
    assert_eq!(build.builds_started(), 3, "{}", master.dump());
}

/// A project of one package `app` whose `main` does nothing: what the stand-in cargos build
/// nothing of (they write their own binaries).
fn empty_app() -> TempDir {
    let project = TempDir::new().unwrap();
    fs::create_dir(project.path().join("src")).unwrap();
    fs::write(
        project.path().join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    fs::write(project.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    project
}

/// A stand-in for cargo (`$CARGO`): `cargo build` waits for a gate file, floods its stderr,
/// writes one endless line on stdout, then says it built a binary (a copy of `fixture-echo`,
/// another one each build) and ends its stderr with a line of its own; anything else is the
/// real cargo's.
struct FloodingCargo {
    /// The gate, the builds' log and the binaries: not watched.
    control: TempDir,
    /// The project the master watches.
    project: TempDir,
}

/// How much the stand-in cargo writes to stderr per build, in lines of 64 KiB: 16 times the
/// queue of the master's stderr.
const FLOOD_STDERR_LINES: usize = 64;

/// How long the one line the stand-in cargo writes to stdout before its messages is.
const FLOOD_STDOUT_LINE: usize = 32 * 1024 * 1024;

/// The master's memory budget while builds flood it: what it holds of a build's output is
/// bounded far below the flood (a line of cargo's messages, the end of its stderr, the queue of
/// the master's stderr).
const BUILD_FLOOD_PEAK_MAX: u64 = 32 * 1024 * 1024;

impl FloodingCargo {
    fn new() -> Self {
        let control = TempDir::new().unwrap();
        let project = empty_app();
        fs::write(control.path().join("gate"), "").unwrap();
        let ctl = crate::support::script::quote(control.path());
        let fixture = crate::support::script::quote(&fixture("fixture-echo"));
        let script = format!(
            r#"#!/bin/sh
[ "$1" = build ] || exec "$REAL_CARGO" "$@"
echo started >> {ctl}/builds.log
n=$(wc -l < {ctl}/builds.log)
while [ ! -e {ctl}/gate ]; do sleep 0.02; done
yes "$(head -c 65535 /dev/zero | tr '\0' e)" | head -n {FLOOD_STDERR_LINES} >&2
head -c {FLOOD_STDOUT_LINE} /dev/zero | tr '\0' o
echo
mkdir -p {ctl}/b$n
cat {fixture} > {ctl}/b$n/app
echo "$n" >> {ctl}/b$n/app
chmod +x {ctl}/b$n/app
printf '{{"reason":"compiler-artifact","target":{{"name":"app","kind":["bin"]}},"executable":"%s/b%s/app","fresh":false}}\n' {ctl} "$n"
echo '{{"reason":"build-finished","success":true}}'
echo "stand-in cargo: build $n done" >&2
"#
        );
        let cargo = control.path().join("cargo");
        fs::write(&cargo, script).unwrap();
        fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
        Self { control, project }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.control.path().join(name)
    }

    fn builds_started(&self) -> usize {
        fs::read_to_string(self.path("builds.log")).map_or(0, |log| log.lines().count())
    }

    fn master(&self) -> MasterBuilder {
        let manifest = self.project.path().join("Cargo.toml");
        MasterBuilder::raw(&[
            "dev",
            "-l",
            "127.0.0.1:0",
            "-n",
            "1",
            "--ready",
            "notify",
            "--manifest-path",
            manifest.to_str().unwrap(),
        ])
        .env("CARGO", self.path("cargo"))
        .env("REAL_CARGO", env!("CARGO"))
        .env("APP_ENV", "dev")
    }
}

/// Whether the master's stderr shows a line containing `first` before one containing `then`.
/// Lines the master dropped (its stderr, read by the harness, stalled on a busy machine) may be
/// either: then only `then` is looked for.
#[track_caller]
fn comes_before(master: &Master, first: &str, then: &str) -> bool {
    let lines = master.stderr_lines();
    let at = |needle: &str| lines.iter().position(|line| line.contains(needle));
    let dropped = at(" dropped: stderr did not keep up").is_some();
    match (at(first), at(then)) {
        (Some(first), Some(then)) => first < then,
        (None, Some(_)) => dropped,
        _ => false,
    }
}

/// The build's output is read on the master's I/O loop: a build adds no thread to the master,
/// a flood on its stderr and an endless line on its stdout leave the master small, its binary is
/// still found and rolled in, and cargo's stderr is all passed on before the build's outcome.
#[test]
fn a_flooding_build_costs_the_master_no_thread_and_little_memory() {
    let cargo = FloodingCargo::new();
    let master = cargo.master().start();
    master.wait_for_stderr(&crate::support::all_ready(1));
    let pid = master.pid();
    assert!(
        comes_before(&master, "stand-in cargo: build 1 done", "built in "),
        "cargo's stderr comes before the outcome\n{}",
        master.dump()
    );
    let threads = proc_status(pid, "Threads:");

    fs::remove_file(cargo.path("gate")).unwrap();
    fs::write(cargo.project.path().join("src/main.rs"), "fn main() { }\n").unwrap();
    master.wait_until("the second build to start", || cargo.builds_started() == 2);
    let during = proc_status(pid, "Threads:");
    eprintln!("master threads: {threads} before a build, {during} during it");
    assert!(
        during <= threads,
        "the master runs {during} threads during a build, {threads} before\n{}",
        master.dump()
    );

    fs::write(cargo.path("gate"), "").unwrap();
    let rolled = master.wait_for_stderr(" → rolled 1 worker in ");
    assert!(rolled.contains("main.rs changed → built in "), "{rolled}");
    assert!(
        comes_before(
            &master,
            "stand-in cargo: build 2 done",
            " → rolled 1 worker in "
        ),
        "{}",
        master.dump()
    );
    assert_eq!(echo(master.port(), "x").generation, 2, "{}", master.dump());
    let flood_lines = master
        .stderr_lines()
        .iter()
        .filter(|line| line.starts_with("eeee"))
        .count();
    // A line of the master's own may come between two pieces of one of cargo's; fewer only if
    // the harness stalled the master's stderr and the master said it dropped some.
    let dropped = count(&master, " dropped: stderr did not keep up");
    eprintln!("cargo's flood lines passed on: {flood_lines}, drop notices: {dropped}");
    assert!(
        flood_lines >= 2 * FLOOD_STDERR_LINES || dropped > 0,
        "{flood_lines} of cargo's lines passed on, none said dropped"
    );
    let peak = proc_status(pid, "VmHWM:") * 1024;
    eprintln!(
        "master peak RSS after two flooding builds: {} KiB",
        peak / 1024
    );
    assert!(
        peak < BUILD_FLOOD_PEAK_MAX,
        "the master peaked at {} KiB\n{}",
        peak / 1024,
        master.dump()
    );
}

/// A stand-in for cargo (`$CARGO`) whose `cargo metadata` is slow once a `slow` file exists: it
/// waits for a `release` file (at most a minute), then is the real cargo's. `cargo build` says it
/// built a binary at once: a fresh copy of `fixture-echo`, the same bytes each time (nothing
/// rolls). Anything else is the real cargo's.
struct SlowMetadataCargo {
    /// The files that drive it and the binaries: not watched.
    control: TempDir,
    /// The project the master watches.
    project: TempDir,
}

impl SlowMetadataCargo {
    fn new() -> Self {
        let control = TempDir::new().unwrap();
        let project = empty_app();
        let ctl = crate::support::script::quote(control.path());
        let fixture = crate::support::script::quote(&fixture("fixture-echo"));
        let script = format!(
            r#"#!/bin/sh
case "$1" in
metadata)
    if [ -e {ctl}/slow ]; then
        : > {ctl}/metadata-waiting
        i=0
        while [ ! -e {ctl}/release ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
        : > {ctl}/metadata-done
    fi
    exec "$REAL_CARGO" "$@";;
build)
    echo started >> {ctl}/builds.log
    mkdir -p {ctl}/b
    cp {fixture} {ctl}/b/app.new
    mv {ctl}/b/app.new {ctl}/b/app
    printf '{{"reason":"compiler-artifact","target":{{"name":"app","kind":["bin"]}},"executable":"%s/b/app","fresh":false}}\n' {ctl}
    echo '{{"reason":"build-finished","success":true}}';;
*)
    exec "$REAL_CARGO" "$@";;
esac
"#
        );
        let cargo = control.path().join("cargo");
        fs::write(&cargo, script).unwrap();
        fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
        Self { control, project }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.control.path().join(name)
    }

    fn master(&self, size: usize, control: &Path) -> MasterBuilder {
        let manifest = self.project.path().join("Cargo.toml");
        MasterBuilder::raw(&[
            "dev",
            "-l",
            "127.0.0.1:0",
            "-n",
            &size.to_string(),
            "--ready",
            "notify",
            "--manifest-path",
            manifest.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ])
        .env("CARGO", self.path("cargo"))
        .env("REAL_CARGO", env!("CARGO"))
        .env("APP_ENV", "dev")
    }
}

/// The ready worker of `slot` in a status, if any: its pid.
fn ready_in_slot(status: &serde_json::Value, slot: u64) -> Option<i64> {
    status["status"]["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|worker| worker["slot"] == slot && worker["state"] == "ready")
        .and_then(|worker| worker["pid"].as_i64())
}

/// Slow work of dev mode runs off the master's loop: while `cargo metadata` reads the project
/// after a manifest changed (seconds, for a large workspace), the master answers `status` and
/// replaces a worker killed by SIGKILL. (On a driver that ran `cargo metadata` itself, neither
/// happens until it ends: a minute here.)
#[test]
fn a_slow_cargo_metadata_after_a_manifest_change_does_not_stop_supervising() {
    let cargo = SlowMetadataCargo::new();
    let sockets = TempDir::new().unwrap();
    let control = sockets.path().join("control.sock");
    let mut master = cargo.master(2, &control).start();
    master.wait_for_stderr(&crate::support::all_ready(2));
    let victim =
        ready_in_slot(&control_request(&control, "status"), 0).expect("a ready worker in slot 0");

    // A changed manifest: the build (the same binary, nothing rolls), then a roots lookup.
    fs::write(cargo.path("slow"), "").unwrap();
    let manifest = cargo.project.path().join("Cargo.toml");
    let mut text = fs::read_to_string(&manifest).unwrap();
    text.push_str("# changed\n");
    fs::write(&manifest, text).unwrap();
    master.wait_until("the roots lookup's cargo metadata to run", || {
        cargo.path("metadata-waiting").exists()
    });
    // It runs on the loop's blocking pool, of at most two threads.
    let slow = fs::read_dir(format!("/proc/{}/task", master.pid()))
        .unwrap()
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "mcluster-slow")
        .count();
    assert!(
        (1..=2).contains(&slow),
        "{slow} threads of the blocking pool"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    master.wait_until("the killed worker's replacement to be ready", || {
        ready_in_slot(&control_request(&control, "status"), 0).is_some_and(|pid| pid != victim)
    });
    assert!(
        !cargo.path("metadata-done").exists(),
        "the worker was replaced only once cargo metadata ended\n{}",
        master.dump()
    );

    // The build of the manifest ends once its roots are known (watched before any roll).
    fs::write(cargo.path("release"), "").unwrap();
    let built = master.wait_for_stderr("Cargo.toml changed → ");
    assert!(built.contains("the same binary"), "{built}");
    stop_gracefully(&mut master);
}

#[test]
fn no_build_rolls_on_every_change() {
    let dir = TempDir::new().unwrap();
    let worker = fixture("fixture-echo");
    let master = dev_with(&[
        "-n",
        "2",
        "--ext",
        "html",
        "-w",
        dir.path().to_str().unwrap(),
        "--no-build",
        "--",
        worker.to_str().unwrap(),
    ])
    .start();
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let port = master.port();
    fs::write(dir.path().join("index.html"), "<p>hi</p>").unwrap();
    let line = master.wait_for_stderr(" → rolled 2 workers in ");
    assert!(
        line.starts_with("mcluster: index.html changed → rolled"),
        "{line}"
    );
    assert_eq!(echo(port, "x").generation, 2);
}

#[test]
fn dev_outside_a_cargo_project_says_so() {
    let elsewhere = TempDir::new().unwrap();
    let mut master = MasterBuilder::raw(&["dev", "-l", "127.0.0.1:0"])
        .current_dir(elsewhere.path())
        .start();
    assert_eq!(master.wait_exit_code(), 2);
    let lines = master.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("mcluster: error: no Cargo.toml in "),
        "{lines:?}"
    );
}

#[test]
fn bad_watch_options_get_one_line_naming_them() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-app/Cargo.toml");
    for (option, value, culprit) in [
        ("--ignore", "[abc", "'[abc'"),
        ("--watch", "/no/such/dir", "/no/such/dir"),
        ("--cooldown", "5x", "'5x'"),
    ] {
        let mut master = MasterBuilder::raw(&[
            "dev",
            "-l",
            "127.0.0.1:0",
            option,
            value,
            "--manifest-path",
            manifest.to_str().unwrap(),
        ])
        .start();
        assert_eq!(master.wait_exit_code(), 2, "{option} {value}");
        let lines = master.stderr_lines();
        assert_eq!(lines.len(), 1, "{option} {value}: {lines:?}");
        assert!(
            lines[0].starts_with("mcluster: error: ") && lines[0].contains(culprit),
            "{option} {value}: {lines:?}"
        );
    }
}

#[test]
fn dev_needs_a_program_with_no_build() {
    let mut master = MasterBuilder::raw(&["dev", "-l", "127.0.0.1:0", "--no-build"]).start();
    assert_eq!(master.wait_exit_code(), 2);
    let lines = master.stderr_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("mcluster: error: --no-build needs a PROGRAM"),
        "{lines:?}"
    );
}

#[test]
fn a_reload_whose_workers_never_get_ready_is_not_rolled_in() {
    let script = Script::exec(&fixture("fixture-echo"));
    let watched = TempDir::new().unwrap();
    let master = rolling_on_changes(2, watched.path(), &script);
    let port = master.port();
    let serving = echo(port, "x").pid;

    script.rewrite("echo 'app: config error' >&2; exit 1");
    fs::write(watched.path().join("main.rs"), "fn main() {}").unwrap();
    let line = master.wait_for_stderr(" → not rolled: ");
    assert!(
        line.starts_with("mcluster: main.rs changed → not rolled: w")
            && line.contains("exited with status 1 before it was ready")
            && line.ends_with("; generation 1 keeps serving"),
        "{line}"
    );
    // Both old workers still serve: the one that answered before, and its generation.
    let reply = echo(port, "x");
    assert_eq!(reply.generation, 1, "{}", master.dump());
    assert!(crate::support::is_alive(serving), "{}", master.dump());
}

#[test]
fn a_change_during_a_roll_is_rolled_next_and_each_reload_reports_its_own_files() {
    let watched = TempDir::new().unwrap();
    let gates = watched.path().join("gates");
    fs::create_dir(&gates).unwrap();
    fs::write(gates.join("1"), "").unwrap();
    // Each generation's worker waits for its gate, so the test decides when a roll can end.
    let script = Script::new(&format!(
        "echo \"waiting at gate $MCLUSTER_GENERATION\"\n\
         while [ ! -f {gates}/$MCLUSTER_GENERATION ]; do sleep 0.02; done\n{exec}",
        gates = crate::support::script::quote(&gates),
        exec = crate::support::script::exec_line(&fixture("fixture-echo")),
    ));
    let master = rolling_on_changes(1, watched.path(), &script);
    let port = master.port();

    fs::write(watched.path().join("a.rs"), "fn a() {}").unwrap();
    master.wait_for_stdout("[w0·g2] waiting at gate 2");
    fs::write(watched.path().join("b.rs"), "fn b() {}").unwrap();
    master.wait_for_stderr("mcluster: a roll is in progress; one more roll will follow it");
    fs::write(gates.join("2"), "").unwrap();
    master.wait_for_stderr("mcluster: a.rs changed → rolled 1 worker in ");
    master.wait_for_stdout("[w0·g3] waiting at gate 3");
    fs::write(gates.join("3"), "").unwrap();
    master.wait_for_stderr("mcluster: b.rs changed → rolled 1 worker in ");
    assert_eq!(echo(port, "x").generation, 3, "{}", master.dump());

    // A roll asked for by SIGHUP is reported as such.
    fs::write(gates.join("4"), "").unwrap();
    master.signal(Signal::SIGHUP);
    master.wait_for_stderr("mcluster: roll requested → rolled 1 worker in ");
    assert_eq!(echo(port, "x").generation, 4, "{}", master.dump());
}

/// `rm -rf` of a watched directory is said, and so is its return; an edit in it then reloads.
fn a_removed_watched_directory_is_watched_again(poll: &[&str]) {
    let project = TempDir::new().unwrap();
    let extra = project.path().join("extra");
    fs::create_dir(&extra).unwrap();
    fs::write(extra.join("a.rs"), "fn a() {}").unwrap();
    let worker = fixture("fixture-echo");
    let mut args = vec!["-n", "1", "-w", "extra"];
    args.extend(poll);
    args.extend(["--no-build", "--", worker.to_str().unwrap()]);
    let master = dev_with(&args).current_dir(project.path()).start();
    master.wait_for_stderr(&crate::support::all_ready(1));
    let port = master.port();

    fs::remove_dir_all(&extra).unwrap();
    master.wait_for_stderr(
        "mcluster: watched directory extra was removed; waiting for it to come back",
    );
    // Its files are gone: that is a change.
    master.wait_for_stderr("mcluster: a.rs changed → rolled 1 worker in ");
    fs::create_dir(&extra).unwrap();
    master.wait_for_stderr("mcluster: watched directory extra is back; watching it again");
    fs::write(extra.join("b.rs"), "fn b() {}").unwrap();
    master.wait_for_stderr("mcluster: b.rs changed → rolled 1 worker in ");
    assert_eq!(echo(port, "x").generation, 3, "{}", master.dump());
    assert_eq!(count(&master, "was removed"), 1, "{}", master.dump());
}

#[test]
fn a_watched_directory_removed_and_made_again_is_watched_again() {
    a_removed_watched_directory_is_watched_again(&[]);
}

#[test]
fn a_watched_directory_removed_and_made_again_is_watched_again_when_polling() {
    a_removed_watched_directory_is_watched_again(&["--poll=100ms"]);
}

#[test]
fn without_cargo_the_master_exits_with_one_line() {
    let project = Project::copy();
    let empty = TempDir::new().unwrap();
    for app_env in ["production", "dev"] {
        let mut master = project
            .master()
            .env("APP_ENV", app_env)
            .env("CARGO", "")
            .env("PATH", empty.path())
            .start();
        assert_eq!(master.wait_exit_code(), 1, "{app_env}\n{}", master.dump());
        let lines = master.stderr_lines();
        let errors: Vec<&String> = lines.iter().filter(|l| l.contains("error")).collect();
        assert_eq!(
            errors,
            ["mcluster: error: cannot run the build: cargo is not installed or not in PATH"],
            "{app_env}\n{}",
            master.dump()
        );
        assert_eq!(lines.last(), errors.last().copied(), "{}", master.dump());
    }
}

#[test]
fn options_cargo_refuses_end_dev_mode_with_one_line_naming_them() {
    let _cargo = cargo_lock();
    let project = Project::copy();
    for (options, cargo_says, culprit) in [
        (
            &["--bin", "nosuch"][..],
            "no bin target named `nosuch`",
            "invalid --bin nosuch: the project has no binary target of that name",
        ),
        (
            &["--features", "nosuch"],
            "nosuch",
            "invalid --features nosuch: the project has no feature nosuch",
        ),
        (
            &["--package", "nosuch"],
            "`nosuch` did not match any packages",
            "invalid --package nosuch: the project has no package of that name",
        ),
    ] {
        let mut master = project.master_with(options).start();
        assert_eq!(master.wait_exit_code(), 1, "{options:?}\n{}", master.dump());
        let lines = master.stderr_lines();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("error: ") && l.contains(cargo_says)),
            "cargo's message is shown\n{}",
            master.dump()
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some(format!("mcluster: error: {culprit}").as_str()),
            "{}",
            master.dump()
        );
        assert_eq!(count(&master, "mcluster: error:"), 1, "{}", master.dump());
    }
}

#[test]
fn a_broken_manifest_waits_for_the_save_that_fixes_it() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let manifest = fs::read_to_string(project.manifest()).unwrap();
    fs::write(
        project.manifest(),
        manifest.replacen("[package]", "[package", 1),
    )
    .unwrap();
    let mut master = project.master().start();
    let failed = master.wait_for_stderr("build failed");
    assert!(
        failed.ends_with("no generation is serving yet; save a fix to retry"),
        "{failed}"
    );
    fs::write(project.manifest(), manifest).unwrap();
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    assert!(get_ok(master.port()).starts_with("Hello from worker"));
    assert_eq!(count(&master, "mcluster: error:"), 0, "{}", master.dump());
    stop_gracefully(&mut master);
}

/// A pid no process has: a child's, once reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

#[test]
fn the_builds_a_killed_master_left_are_swept_by_the_next_one() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let builds = shared_target().join("debug");
    let mut killed = project.master().start();
    killed.wait_for_stderr("mcluster: all 2 workers ready in ");
    let left = builds.join(format!(".mcluster-{}", killed.pid()));
    killed.signal(Signal::SIGKILL);
    killed.wait_exit();
    assert!(
        fs::read_dir(&left).unwrap().count() >= 2,
        "a kept build and the owner file are left in {}",
        left.display()
    );
    // A directory of the same name that mcluster did not make (no owner file) stays.
    let users = builds.join(format!(".mcluster-{}", dead_pid()));
    fs::create_dir(&users).unwrap();
    fs::write(users.join("1-hello-app"), "mine").unwrap();

    let mut next = project.master().start();
    next.wait_for_stderr("mcluster: all 2 workers ready in ");
    let users_left = fs::read_to_string(users.join("1-hello-app"));
    fs::remove_dir_all(&users).unwrap();
    assert!(!left.exists(), "{} is still there", left.display());
    assert_eq!(users_left.unwrap(), "mine");
    assert!(
        builds.join(format!(".mcluster-{}", next.pid())).exists(),
        "the new master keeps its own builds"
    );
    stop_gracefully(&mut next);
}

/// A first generation whose worker crashes at start does not end a dev session: like a failed
/// build, it waits for the save that fixes it, and says so.
#[test]
fn a_worker_crashing_at_start_waits_for_the_save_that_fixes_it() {
    let watched = TempDir::new().unwrap();
    let script = Script::new("echo 'app: broken config' >&2\nexit 3");
    let master = dev_with(&[
        "-n",
        "2",
        "-w",
        watched.path().to_str().unwrap(),
        "--no-build",
        "--",
        "/bin/sh",
        script.arg(),
    ])
    .start();
    let gave_up =
        master.wait_for_stderr("mcluster: error: no worker became ready after 3 attempts: ");
    assert!(
        gave_up.ends_with("; waiting for a change to retry"),
        "{gave_up}"
    );
    script.rewrite(&crate::support::script::exec_line(&fixture("fixture-echo")));
    fs::write(watched.path().join("main.rs"), "fn main() {}").unwrap();
    master.wait_for_stderr("mcluster: main.rs changed → starting again");
    master.wait_for_stderr(&crate::support::all_ready(2));
    assert_eq!(echo(master.port(), "fixed").generation, 2);
}

/// A project whose `Cargo.toml` holds `[package.metadata.mcluster]` with these lines.
fn configured_project(table: &str) -> TempDir {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("src")).unwrap();
    fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(
        dir.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"configured\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [package.metadata.mcluster]\n{table}"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn cargo_toml_holds_dev_options_and_flags_win() {
    let project = configured_project(
        "listen = [\"127.0.0.1:0\"]\nsize = 3\nready = \"notify\"\nno-build = true\n\
         env = { EXTRA = \"from-cargo-toml\" }\n",
    );
    let worker = fixture("fixture-print-env");
    // No -l: the address is the file's; -n beats its size; with its no-build, `--` is PROGRAM.
    let master = MasterBuilder::raw(&["dev", "-n", "1", "--", worker.to_str().unwrap()])
        .current_dir(project.path())
        .start();
    master.wait_for_stderr(&crate::support::all_ready(1));
    let line = master.wait_for_stdout("EXTRA=");
    assert!(
        line.contains("MCLUSTER_WORKERS=1 ") && line.ends_with("EXTRA=from-cargo-toml"),
        "{line}"
    );
    assert_eq!(
        count(&master, "mcluster: the worker is ready"),
        1,
        "{}",
        master.dump()
    );
}

#[test]
fn an_unknown_key_in_cargo_toml_is_one_line_naming_it_and_the_file() {
    let project = configured_project("colour = true\n");
    let mut master = MasterBuilder::raw(&["dev", "-l", "127.0.0.1:0", "--no-build", "--", "x"])
        .current_dir(project.path())
        .start();
    assert_eq!(master.wait_exit_code(), 2, "{}", master.dump());
    let manifest = project.path().join("Cargo.toml");
    assert_eq!(
        master.stderr_lines(),
        [format!(
            "mcluster: error: unknown key 'colour' in [package.metadata.mcluster] of {}",
            manifest.display()
        )]
    );
}

#[test]
fn a_dev_master_that_cannot_start_writes_nothing_into_the_project() {
    let project = configured_project("");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut master = MasterBuilder::raw(&["dev", "-l", &address])
        .current_dir(project.path())
        .start();
    assert_eq!(master.wait_exit_code(), 1, "{}", master.dump());
    let mut left: Vec<String> = fs::read_dir(project.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["Cargo.toml", "src"], "{}", master.dump());
}

/// The address of the dev master's live-reload channel, from its `live reload on` line.
#[track_caller]
fn livereload_address(master: &Master) -> SocketAddr {
    let line = master.wait_for_stderr("mcluster: live reload on ");
    line.strip_prefix("mcluster: live reload on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.trim_end_matches(['(', ',', ':']).parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// A function of `main.rs` with `count` type errors, each naming `round`: a build of it fails
/// with long diagnostics (far more than the 64 KiB the master keeps for the pages).
fn broken_function(round: usize, count: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::from("\nfn broken() {\n");
    for error in 0..count {
        writeln!(
            text,
            "    let _: u32 = \"round {round}, error {error} of a long diagnostic\";"
        )
        .unwrap();
    }
    text.push_str("}\n");
    text
}

/// One request to the master's control socket `control`; its (first) reply.
fn control_request(control: &Path, command: &str) -> serde_json::Value {
    use std::io::BufRead as _;
    let mut stream = std::os::unix::net::UnixStream::connect(control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    writeln!(stream, "{{\"command\":\"{command}\"}}").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// The master's events (`mcluster events`, on its control socket), each with when it was read,
/// as they come; collected by a thread of their own until the master closes the stream.
fn follow_events(control: &Path) -> Arc<Mutex<Vec<(Instant, serde_json::Value)>>> {
    use std::io::BufRead as _;
    let mut stream = std::os::unix::net::UnixStream::connect(control).unwrap();
    writeln!(stream, "{{\"command\":\"events\"}}").unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert!(reply.contains("\"following\":true"), "{reply}");
    let records = Arc::new(Mutex::new(Vec::new()));
    let collected = Arc::clone(&records);
    thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let record = serde_json::from_str(&line).unwrap_or_default();
            collected.lock().unwrap().push((Instant::now(), record));
        }
    });
    records
}

/// Reads the response to `GET /events` on `page` until `wanted` `error-overlay` events came (or
/// the master closed the stream, or nothing came for a long while); returns their data.
fn overlays_read(page: &mut TcpStream, wanted: usize) -> Vec<String> {
    use std::io::BufRead as _;
    page.set_read_timeout(Some(Duration::from_mins(1))).unwrap();
    let mut reader = std::io::BufReader::new(page);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        match reader.read_line(&mut head) {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(_) => {}
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let mut body = Vec::new();
    let mut overlays = Vec::new();
    while overlays.len() < wanted {
        // One chunk (or, unchunked, what comes) at a time.
        let mut piece = vec![0; 64 * 1024];
        let read = if chunked {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            piece.resize(size + 2, 0);
            if size == 0 || reader.read_exact(&mut piece).is_err() {
                break;
            }
            size
        } else {
            match reader.read(&mut piece) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            }
        };
        body.extend_from_slice(&piece[..read]);
        // Complete events only: each ends with a blank line.
        while let Some(end) = body.windows(2).position(|pair| pair == b"\n\n") {
            let event = String::from_utf8_lossy(&body[..end]).into_owned();
            body.drain(..end + 2);
            if let Some(data) = event
                .strip_prefix("event: error-overlay\ndata: ")
                .map(ToOwned::to_owned)
            {
                overlays.push(data);
            }
        }
    }
    overlays
}

/// Issue 17's acceptance: with 8 pages that never read (a small receive window) and broken
/// cargo builds with long diagnostics, a worker killed (SIGKILL) right after each build's last
/// line is replaced, and every page still gets every build's overlay once it reads. How long
/// each replacement took is printed (the issue's figure: within 2 s; 6.5 s before it, when the
/// master's driver wrote to each page itself, waiting up to 500 ms for each): the timed target
/// is the benchmark's, this test asserts what makes it possible.
///
/// A driver that waited for the pages without a bound would never replace the worker (the
/// pages read only at the end); one that waited with a bound and then gave up on them, as the
/// old one did, cuts the first overlay off in the middle (`628d801`'s master: replaced after
/// 12 s, and no page got one whole overlay). Three overlays are well within a page's queue
/// (`QUEUE` in `src/http.rs`), so none is dropped here: each page has all three.
#[test]
fn pages_that_never_read_do_not_hold_up_replacing_a_worker_after_broken_builds() {
    const PAGES: usize = 8;
    const ROUNDS: usize = 3;
    const ERRORS: usize = 400;
    let _cargo = cargo_lock();
    let project = Project::new();
    let original = fs::read_to_string(project.main_rs()).unwrap();
    let sockets = TempDir::new().unwrap();
    let control = sockets.path().join("control.sock");
    // A slot per round: each killed worker is its slot's first failure, restarted at once (a
    // second one in a row would wait for the crash-loop backoff).
    let mut master = project
        .master_of(
            &ROUNDS.to_string(),
            &["--control", control.to_str().unwrap()],
        )
        .start();
    let live = livereload_address(&master);
    master.wait_for_stderr(&format!("mcluster: all {ROUNDS} workers ready in "));
    // The dev master says nothing of single workers: their births are in its events.
    let events = follow_events(&control);

    let events_request = format!(
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        live.port()
    );
    let mut pages: Vec<TcpStream> = (0..PAGES)
        .map(|_| crate::support::net::stalled_client(live, &events_request))
        .collect();
    // Two LiveReload extensions beside them (the protocol has no overlay: they hear nothing
    // of a failed build, and must cost nothing either).
    let websocket = format!(
        "GET /livereload HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        live.port()
    );
    let mut extensions: Vec<TcpStream> = (0..2)
        .map(|_| crate::support::net::stalled_client(live, &websocket))
        .collect();
    // Every client answered (so subscribed: a page is, before its answer is written); peeking
    // reads nothing, the windows stay as they are.
    for client in pages.iter().chain(&extensions) {
        client.set_nonblocking(true).unwrap();
        master.wait_until("the live-reload channel to answer a client", || {
            client.peek(&mut [0; 1]).is_ok_and(|read| read > 0)
        });
        client.set_nonblocking(false).unwrap();
    }

    let mut took = Vec::new();
    for round in 1..=ROUNDS {
        let mark = master.stderr_mark();
        fs::write(
            project.main_rs(),
            format!("{original}{}", broken_function(round, ERRORS)),
        )
        .unwrap();
        // cargo's last line: the build is ending, and the master is about to tell the pages.
        // (Its own `build failed` line instead, in case the master dropped cargo's line.)
        let (mark, last) =
            master.wait_for_stderr_where(mark, "the broken build's last line", |line| {
                line.contains("could not compile") || line.contains("mcluster: build failed")
            });
        let slot = round - 1;
        let status = control_request(&control, "status");
        let victim = status["status"]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|worker| worker["slot"] == slot && worker["state"] == "ready")
            .and_then(|worker| worker["pid"].as_i64())
            .and_then(|pid| i32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no ready worker in slot {slot}: {status}"));
        let seen = events.lock().unwrap().len();
        // Taken first: the test may lose the CPU right after kill(2).
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut replaced = None;
        master.wait_until("the killed worker's replacement to be ready", || {
            replaced = events.lock().unwrap()[seen..]
                .iter()
                .find(|(_, record)| {
                    record["event"] == "worker_ready"
                        && record["slot"] == slot
                        && record["pid"]
                            .as_i64()
                            .is_some_and(|pid| pid != i64::from(victim))
                })
                .cloned();
            replaced.is_some()
        });
        let (at, record) = replaced.unwrap();
        took.push(at.saturating_duration_since(killed));
        eprintln!(
            "round {round}: slot {slot}'s worker (pid {victim}) SIGKILLed after {last:?}, \
             replaced in {:?}: {record}",
            took[round - 1]
        );
        let (_, failed) = master.wait_for_stderr_after(mark, "build failed");
        assert!(failed.ends_with("generation 1 keeps serving"), "{failed}");
    }
    eprintln!(
        "{PAGES} pages that never read, {ROUNDS} broken builds with {ERRORS} errors: a worker \
         SIGKILLed right after each build replaced in {took:?}"
    );
    assert!(get_ok(master.port()).starts_with("Hello from worker"));

    // The pages read at last: each gets the three overlays, in order, whole.
    for (index, page) in pages.iter_mut().enumerate() {
        let overlays = overlays_read(page, ROUNDS);
        assert_eq!(
            overlays.len(),
            ROUNDS,
            "page {index} got {} whole overlays of {ROUNDS}\n{}",
            overlays.len(),
            master.dump()
        );
        for (round, overlay) in (1..).zip(&overlays) {
            assert!(
                overlay.contains("build failed") && overlay.contains(&format!("round {round}, ")),
                "page {index}, overlay {round}: {}",
                overlay.chars().take(300).collect::<String>()
            );
        }
    }
    for extension in &mut extensions {
        extension
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = [0; 12];
        extension.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 101");
    }
    stop_gracefully(&mut master);
}

/// A page of the live-reload channel at `live`: `GET /events`, its bytes collected as they come
/// by a thread of its own (until the master closes the stream).
fn follow_page(live: SocketAddr) -> Arc<Mutex<String>> {
    let mut page = TcpStream::connect(live).unwrap();
    write!(
        page,
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        live.port()
    )
    .unwrap();
    let read = Arc::new(Mutex::new(String::new()));
    let collected = Arc::clone(&read);
    thread::spawn(move || {
        let mut piece = [0; 16 * 1024];
        while let Ok(count) = page.read(&mut piece) {
            if count == 0 {
                break;
            }
            collected
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&piece[..count]));
        }
    });
    read
}

/// What a page that connects to `live` now is told first: the first chunk of its `/events`
/// stream (`hello`, and the overlay of a failed build if the master shows one), written at once.
fn first_told(live: SocketAddr) -> String {
    use std::io::BufRead as _;
    let mut page = TcpStream::connect(live).unwrap();
    page.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        page,
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        live.port()
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(page);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    let size = usize::from_str_radix(size.trim(), 16).unwrap();
    let mut chunk = vec![0; size];
    reader.read_exact(&mut chunk).unwrap();
    String::from_utf8(chunk).unwrap()
}

/// Issue 18, item 2: a typo, then undo (the file's exact previous content) builds the binary
/// that serves already: nothing rolls, and the overlay must still go, for the pages that show
/// it and for those that connect afterwards. Before, it stayed until some real change.
#[test]
fn a_typo_then_undo_clears_the_overlay_with_no_roll() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let original = fs::read_to_string(project.main_rs()).unwrap();
    let mut master = project.master().start();
    let live = livereload_address(&master);
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let page = follow_page(live);
    master.wait_until("the page to hear hello", || {
        page.lock().unwrap().contains("event: hello")
    });

    let mark = master.stderr_mark();
    project.edit("fn main()", "fn main( {");
    let (mark, failed) = master.wait_for_stderr_after(mark, "build failed");
    assert!(failed.ends_with("generation 1 keeps serving"), "{failed}");
    master.wait_until("the page to show the overlay", || {
        page.lock().unwrap().contains("event: error-overlay")
    });
    assert!(first_told(live).contains("event: error-overlay"));

    fs::write(project.main_rs(), &original).unwrap();
    master.wait_until("the page to clear the overlay", || {
        page.lock().unwrap().contains("event: clear")
    });
    let (_, fixed) = master.wait_for_stderr_after(mark, "src/main.rs changed → ");
    assert!(
        fixed.contains("the same binary; generation 1 keeps serving")
            || fixed.contains("nothing to rebuild; generation 1 keeps serving"),
        "the undo rolls nothing: {fixed}\n{}",
        master.dump()
    );
    let told = page.lock().unwrap().clone();
    assert!(!told.contains("event: reload"), "{told}");
    let first = first_told(live);
    assert!(first.contains("event: hello"), "{first}");
    assert!(!first.contains("error-overlay"), "{first}");
    stop_gracefully(&mut master);
}

/// Issue 18, item 4: an app that reads `templates/index.html` once, at start-up (as tera's
/// apps do), serves an edit of it: the template is watched by default, no build reads it, so
/// the workers roll with no build. Before, its edit went unnoticed.
#[test]
fn a_template_the_app_reads_at_start_up_is_served_after_an_edit() {
    let _cargo = cargo_lock();
    let project = Project::new();
    let templates = project.dir.path().join("templates");
    fs::create_dir(&templates).unwrap();
    fs::write(templates.join("index.html"), "<p>template one</p>").unwrap();
    // Read once, at start-up, from beside Cargo.toml: no build input (no `include_str!`).
    project.edit(
        "fn main() -> std::io::Result<()> {",
        "static TEMPLATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();\n\n\
         fn main() -> std::io::Result<()> {\n    \
         let _ = TEMPLATE.set(std::fs::read_to_string(concat!(env!(\"CARGO_MANIFEST_DIR\"), \
         \"/templates/index.html\"))?);",
    );
    project.edit(
        "\"Hello from worker {} (pid {}, generation {})\",",
        "\"Hello from worker {} (pid {}, generation {}) {}\",",
    );
    project.edit(
        "worker::generation().map_or_else(|| \"-\".into(), |g| g.to_string()),",
        "worker::generation().map_or_else(|| \"-\".into(), |g| g.to_string()),\n        \
         TEMPLATE.get().map_or(\"\", String::as_str),",
    );
    let mut master = project.master().start();
    master.wait_for_stderr("mcluster: all 2 workers ready in ");
    let port = master.port();
    let body = get_ok(port);
    assert!(body.contains("template one"), "{body}\n{}", master.dump());

    let mark = master.stderr_mark();
    fs::write(templates.join("index.html"), "<p>template two</p>").unwrap();
    let (_, line) = master.wait_for_stderr_after(mark, "templates/index.html changed → ");
    assert!(
        line.contains("templates/index.html changed → not a build input: rolled 2 workers in "),
        "{line}\n{}",
        master.dump()
    );
    // The roll's line comes once the switch is complete: a fresh request gets the new text.
    master.wait_until("the new template to be served", || {
        get(port).is_ok_and(|body| body.contains("template two"))
    });
    assert!(
        !master.stderr_lines()[mark..]
            .iter()
            .any(|l| l.contains("Compiling") || l.contains("built in")),
        "no build: {}",
        master.dump()
    );
    stop_gracefully(&mut master);
}

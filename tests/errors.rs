//! Guarantee 8: bad input, and a hostile environment, get one clear line naming the culprit, a
//! non-zero exit status (2 for bad input, 1 when the OS refuses), no worker, and nothing created,
//! changed or removed on disk.
//!
//! One table ([`bad_invocations`]) holds the cases; each runs a real `mcluster` in a scene
//! directory full of things to trip over (a regular file, a FIFO, a directory, a script without
//! its exec bit), and the scene and the master's `$TMPDIR` are compared, entry by entry (kind,
//! size, modification time), before and after.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::stat::Mode;
use nix::unistd::mkfifo;

use crate::support::process::DEADLINE;
use crate::support::script::quote;
use crate::support::{MasterBuilder, Script, is_alive};

/// The state of a directory tree: every entry's path (relative), kind, size and mtime.
type Snapshot = BTreeMap<String, (char, u64, i64, i64)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut entries = Snapshot::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = match meta.file_type() {
            t if t.is_dir() => 'd',
            t if t.is_file() => 'f',
            t if t.is_fifo() => 'p',
            t if t.is_socket() => 's',
            t if t.is_symlink() => 'l',
            _ => '?',
        };
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        entries.insert(
            format!("/{name}"),
            (kind, meta.size(), meta.mtime(), meta.mtime_nsec()),
        );
        if kind == 'd' {
            pending.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    entries
}

/// What differs between two snapshots, one line per entry. The modification time of the
/// directory `/sock` does not count: a listener bound there before the error (which only binding
/// the next one can reveal, as a port in use) is removed, and that changes its directory.
fn changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut changes = Vec::new();
    for (name, old) in before {
        match after.get(name) {
            None => changes.push(format!("removed {name}")),
            Some(new) if name == "/sock" && new.0 == old.0 => {}
            Some(new) if new != old => changes.push(format!("changed {name}: {old:?} → {new:?}")),
            Some(_) => {}
        }
    }
    for name in after.keys().filter(|name| !before.contains_key(*name)) {
        changes.push(format!("created {name}"));
    }
    changes
}

/// A worker program that leaves a mark if it ever runs, next to things to trip over: `file` (a
/// regular file), `fifo`, `dir/`, and the worker script itself, which has no exec bit; and
/// `sock/`, for the listeners bound before an error; `loop`, a symbolic link to itself; and
/// executable files that cannot run: `no-shebang`, `empty`, `missing-interpreter` (its `#!`
/// names one that does not exist), `garbage-elf`.
struct Scene {
    script: Script,
}

impl Scene {
    fn new() -> Self {
        let script = Script::new("");
        let spawned = script.dir().join("spawned");
        script.rewrite(&format!("touch {}\nexec sleep 60", quote(&spawned)));
        fs::write(script.dir().join("file"), "not a socket, not a manifest\n").unwrap();
        mkfifo(&script.dir().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        fs::create_dir(script.dir().join("dir")).unwrap();
        fs::create_dir(script.dir().join("sock")).unwrap();
        std::os::unix::fs::symlink("loop", script.dir().join("loop")).unwrap();
        // Executable files the kernel cannot run.
        for (name, content) in [
            ("no-shebang", &b"echo not a script\n"[..]),
            ("empty", b""),
            (
                "missing-interpreter",
                b"#!/nonexistent/interpreter -x\necho hi\n",
            ),
            ("garbage-elf", b"\x7fELF garbage, not a binary"),
        ] {
            use std::os::unix::fs::PermissionsExt as _;
            let path = script.dir().join(name);
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { script }
    }

    /// A path in the scene, as text.
    fn path(&self, name: &str) -> String {
        self.script.dir().join(name).to_str().unwrap().to_owned()
    }

    /// `unix:<path>` of a socket in the scene (which must not be left behind).
    fn unix(&self, name: &str) -> String {
        format!("unix:{}", self.path(name))
    }

    fn worker(&self) -> &str {
        self.script.arg()
    }

    /// `start OPTIONS -- /bin/sh <worker>`: a good command line, but for what `options` hold.
    fn start<'a>(&'a self, options: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["start"];
        args.extend_from_slice(options);
        args.extend(["--", "/bin/sh", self.worker()]);
        args
    }

    /// Runs `mcluster ARGS`; checks it fails with `code` (or any non-zero code), one stderr line
    /// `mcluster: error: …` containing each of `culprits` (ignoring case), and that nothing ran or
    /// was left behind.
    #[track_caller]
    fn rejects(&self, args: &[&str], code: Option<i32>, culprits: &[&str]) {
        let case = Case {
            args: args.iter().map(|&a| a.to_owned()).collect(),
            env: Vec::new(),
            fd3: None,
            code,
            culprits: culprits.iter().map(|&c| c.to_owned()).collect(),
        };
        if let Err(failure) = self.run(&case) {
            panic!("{failure}");
        }
    }

    /// Runs one case in the scene (its working directory); what went wrong, if anything.
    fn run(&self, case: &Case) -> Result<(), String> {
        let before = snapshot(self.script.dir());
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let mut builder = MasterBuilder::raw(&args).current_dir(self.script.dir());
        for (key, value) in &case.env {
            builder = builder.env(key, value);
        }
        if let Some(file) = &case.fd3 {
            // fd 3 open on `file`, and LISTEN_PID the master's own pid unless the case sets it
            // (the shell execs the master: its pid is the master's).
            builder = builder.via(
                "/bin/sh",
                &[
                    "-c",
                    "exec 3<\"$0\" && export LISTEN_PID=\"${LISTEN_PID:-$$}\" && exec \"$@\"",
                    file,
                ],
            );
        }
        let mut master = builder.start();
        let what = format!("mcluster {args:?} (environment {:?})", case.env);
        // A master that took the input runs on: fail this case at its first worker, not the
        // whole table at the deadline.
        let spawned = Path::new(&self.path("spawned")).to_owned();
        let start = Instant::now();
        while is_alive(master.pid()) && !spawned.exists() && start.elapsed() < DEADLINE {
            thread::sleep(Duration::from_millis(10));
        }
        if is_alive(master.pid()) {
            let dump = master.dump();
            drop(master);
            let _ = fs::remove_file(&spawned);
            return Err(format!(
                "{what}:\n  the master runs (a worker was spawned)\n{dump}"
            ));
        }
        let status = master.wait_exit_code();
        let mut failures = Vec::new();
        match case.code {
            Some(code) if status != code => {
                failures.push(format!("exit status {status}, not {code}"));
            }
            None if status == 0 => failures.push("exit status 0".to_owned()),
            _ => {}
        }
        let lines = master.stderr_lines();
        if let [line] = &lines[..] {
            if !line.starts_with("mcluster: error: ") {
                failures.push(format!("{line:?} is no error line"));
            }
            for culprit in &case.culprits {
                if !line.to_lowercase().contains(&culprit.to_lowercase()) {
                    failures.push(format!("{line:?} does not name {culprit:?}"));
                }
            }
        } else {
            failures.push(format!("{} lines on stderr, not one", lines.len()));
        }
        if !master.stdout_lines().is_empty() {
            failures.push("output on stdout".to_owned());
        }
        if Path::new(&self.path("spawned")).exists() {
            failures.push("a worker was spawned".to_owned());
            let _ = fs::remove_file(self.path("spawned"));
        }
        for change in changes(&before, &snapshot(self.script.dir())) {
            failures.push(format!("in the scene: {change}"));
        }
        for change in changes(&Snapshot::new(), &snapshot(master.tmpdir())) {
            if change != "created /" {
                failures.push(format!("in $TMPDIR: {change}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}:\n  {}\n{}",
                failures.join("\n  "),
                master.dump()
            ))
        }
    }
}

/// One bad invocation: the command line, the master's extra environment, and what must come out.
struct Case {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A file the master gets as fd 3, with `LISTEN_PID` its own pid unless `env` sets it.
    fd3: Option<String>,
    code: Option<i32>,
    culprits: Vec<String>,
}

impl Case {
    fn new(args: &[&str], code: i32, culprits: &[&str]) -> Self {
        Self {
            args: args.iter().map(|&a| a.to_owned()).collect(),
            env: Vec::new(),
            fd3: None,
            code: Some(code),
            culprits: culprits.iter().map(|&c| c.to_owned()).collect(),
        }
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn fd3(mut self, file: &str) -> Self {
        self.fd3 = Some(file.to_owned());
        self
    }
}

/// The table: bad flags, values, durations, sizes, addresses, socket paths, programs, `--env`
/// pairs, inherited sockets, temp directories, and dev-mode paths. `taken` is a TCP address in
/// use.
fn bad_invocations(scene: &Scene, taken: &str) -> Vec<Case> {
    let unix = scene.unix("sock/s.sock");
    let worker = scene.worker();
    // `start -l unix:… OPTIONS -- /bin/sh <worker>`: all good but `options`.
    let start = |options: &[&str], code: i32, culprits: &[&str]| {
        let mut args = vec!["start", "-l", &unix];
        args.extend_from_slice(options);
        args.extend(["--", "/bin/sh", worker]);
        Case::new(&args, code, culprits)
    };
    // The same for `dev`, with `--no-build` unless `options` say how to build.
    let dev = |options: &[&str], code: i32, culprits: &[&str]| {
        let mut args = vec!["dev", "-l", &unix, "-n", "1"];
        args.extend_from_slice(options);
        args.extend(["--", "/bin/sh", worker]);
        Case::new(&args, code, culprits)
    };
    // `start` running `program` instead of the worker.
    let run = |program: &str, code: i32, culprits: &[&str]| {
        Case::new(
            &["start", "-l", &unix, "-n", "1", "--", program],
            code,
            culprits,
        )
    };
    let listen = |addr: &str, code: i32, culprits: &[&str]| start(&["-l", addr], code, culprits);
    let (file, dir, fifo) = (scene.path("file"), scene.path("dir"), scene.path("fifo"));
    let missing = scene.path("missing");
    let symlink_loop = scene.path("loop");
    let (empty, missing_interpreter, garbage_elf) = (
        scene.path("empty"),
        scene.path("missing-interpreter"),
        scene.path("garbage-elf"),
    );
    let long = scene.unix(&"a".repeat(120));
    let mut cases = vec![
        // Flags and subcommands; clap's hints stay on the one line.
        start(&["--no-such-flag"], 2, &["'--no-such-flag'"]),
        start(
            &["--sizee", "3"],
            2,
            &["'--sizee'", "similar argument exists: '--size'"],
        ),
        Case::new(
            &["strat", "-n", "1"],
            2,
            &["'strat'", "similar subcommands exist: ", "'start'"],
        ),
        Case::new(&["start", "-l", &unix, "-n", "1"], 2, &["<PROGRAM>"]),
        Case::new(&["start", "-l", &unix, "--"], 2, &["<PROGRAM>"]),
        start(&["--silent=3"], 2, &["--silent", "'3'"]),
        start(
            &["--ready", "x"],
            2,
            &["'x'", "--ready", "[possible values: auto, notify]"],
        ),
        Case::new(
            &["start", "-l", &unix, "--ready"],
            2,
            &["--ready", "auto, notify"],
        ),
        dev(
            &["--build", "make", "--no-build"],
            2,
            &["--build", "--no-build"],
        ),
        Case::new(
            &["dev", "-l", &unix, "--no-build"],
            2,
            &["--no-build", "PROGRAM"],
        ),
        Case::new(
            &["dev", "-l", &unix, "--build", "true"],
            2,
            &["--build", "PROGRAM"],
        ),
        // Sizes.
        start(&["-n", "0"], 2, &["--size", "at least one worker"]),
        start(&["--size", "0"], 2, &["--size", "at least one worker"]),
        start(&["-n", "-1"], 2, &["--size", "'-1'"]),
        start(&["-n", "abc"], 2, &["--size", "'abc'"]),
        start(&["-n", "1.5"], 2, &["--size", "'1.5'"]),
        start(
            &["-n", "99999999999999999999999"],
            2,
            &["--size", "too large"],
        ),
        start(&["-n", ""], 2, &["--size"]),
        // Durations: a unit, not negative, and at least 1ms where 0 makes no sense.
        start(&["--kill-timeout", "5x"], 2, &["--kill-timeout", "5x"]),
        start(
            &["--kill-timeout", "-5s"],
            2,
            &["--kill-timeout", "'-5s'", "negative"],
        ),
        start(
            &["--ready-delay", "0.5.5s"],
            2,
            &["--ready-delay", "0.5.5s"],
        ),
        start(
            &["--ready-delay", "1h"],
            2,
            &["--ready-delay", "unknown unit 'h'"],
        ),
        start(
            &["--ready-timeout", "0"],
            2,
            &["--ready-timeout", "at least 1ms"],
        ),
        start(
            &["--ready-timeout", "0s"],
            2,
            &["--ready-timeout", "at least 1ms"],
        ),
        start(
            &["--ready-timeout", "99999999999999999999m"],
            2,
            &["--ready-timeout", "too large"],
        ),
        start(&["--watchdog", "0"], 2, &["--watchdog", "at least 1ms"]),
        // Beyond a year: once accepted, then a panic at the first deadline (exit 101).
        start(
            &["--ready-delay", "10000000000000000000s"],
            2,
            &["--ready-delay", "too large", "525600m"],
        ),
        start(
            &["--kill-timeout", "10000000000000000000s"],
            2,
            &["--kill-timeout", "too large", "525600m"],
        ),
        start(
            &["--watchdog", "525601m"],
            2,
            &["--watchdog", "too large", "525600m"],
        ),
        start(&[], 2, &["--ready-timeout", "too large", "525600m"])
            .env("MCLUSTER_READY_TIMEOUT", "10000000000000000000s"),
        start(&[], 2, &["--kill-timeout", "too large", "525600m"])
            .env("MCLUSTER_KILL_TIMEOUT", "31536001s"),
        dev(
            &["--no-build", "--cooldown", "10000000000000000000s"],
            2,
            &["--cooldown", "too large", "525600m"],
        ),
        dev(
            &["--no-build", "--poll=10000000000000000000s"],
            2,
            &["--poll", "too large", "525600m"],
        ),
        start(&["--watchdog", ""], 2, &["--watchdog", "''"]),
        dev(
            &["--no-build", "--cooldown", "5x"],
            2,
            &["--cooldown", "5x"],
        ),
        dev(&["--no-build", "--poll=0"], 2, &["--poll", "at least 1ms"]),
        dev(&["--no-build", "--poll=-1"], 2, &["--poll", "negative"]),
        // Signals.
        start(&["--stop-signal", "BOGUS"], 2, &["--stop-signal", "BOGUS"]),
        start(&["--stop-signal", "0"], 2, &["--stop-signal", "'0'"]),
        start(&["--stop-signal", "99"], 2, &["--stop-signal", "'99'"]),
        start(
            &["--stop-signal", "STOP"],
            2,
            &["--stop-signal", "SIGSTOP", "suspends"],
        ),
        start(&["--stop-signal", "CONT"], 2, &["--stop-signal", "SIGCONT"]),
        start(&[], 2, &["--stop-signal", "SIGCHLD"]).env("MCLUSTER_STOP_SIGNAL", "CHLD"),
        start(&["--stop-signal", "TTOU"], 2, &["--stop-signal", "SIGTTOU"]),
        // Addresses (a good unix listener comes first: it must be gone after the error).
        listen("127.0.0.1:notaport", 2, &["127.0.0.1:notaport"]),
        listen("127.0.0.1:99999", 2, &["127.0.0.1:99999"]),
        listen("127.0.0.1:-1", 2, &["127.0.0.1:-1"]),
        listen("127.0.0.1", 2, &["'127.0.0.1'"]),
        listen("[::1:80", 2, &["[::1:80"]),
        listen("[::1]", 2, &["'[::1]'"]),
        listen(":", 2, &["':'"]),
        listen("unix:", 2, &["unix:"]),
        listen("nope", 2, &["'nope'"]),
        listen("999.1.1.1:80", 2, &["999.1.1.1"]),
        listen("http://x:80", 2, &["http://x:80"]),
        listen("name=", 2, &["'name='"]),
        listen("=127.0.0.1:0", 2, &["'=127.0.0.1:0'"]),
        listen(taken, 1, &["address already in use", taken]),
        listen(
            "192.0.2.1:80",
            1,
            &["192.0.2.1:80", "cannot assign requested address"],
        ),
        // Unix socket paths: anything in the way that is no stale socket is a bad address.
        listen(
            &format!("unix:{file}"),
            2,
            &[&file, "is a regular file, not a socket"],
        ),
        listen(&format!("unix:{fifo}"), 2, &[&fifo, "not a socket"]),
        listen(&format!("unix:{dir}"), 2, &[&dir, "is a directory"]),
        listen(
            &scene.unix("missing/s.sock"),
            1,
            &["missing/s.sock", "no such file"],
        ),
        listen(&long, 2, &[&long, "more than the 107"]),
        // Programs.
        run(
            "mcluster-test-no-such-program",
            2,
            &["mcluster-test-no-such-program", "PATH"],
        ),
        run(&missing, 2, &[&missing, "not found"]),
        run(worker, 2, &[worker, "not executable"]),
        run(&dir, 2, &[&dir, "not executable"]),
        run("./dir", 2, &["./dir", "not executable"]),
        run(&fifo, 2, &[&fifo]),
        run("", 2, &["program", "empty"]),
        // Executable files that cannot run: exec said "exec format error" three times (or "no
        // such file or directory", naming neither the file nor the interpreter), then "no
        // worker became ready", exit 1.
        run(&empty, 2, &[&empty, "cannot run", "is empty"]),
        run(
            &missing_interpreter,
            2,
            &[
                &missing_interpreter,
                "the interpreter /nonexistent/interpreter",
                "does not exist",
            ],
        ),
        run(&garbage_elf, 2, &[&garbage_elf, "damaged ELF file"]),
        // `--env` pairs.
        start(&["-e", "NOEQUALS"], 2, &["--env", "NOEQUALS", "KEY=VALUE"]),
        start(&["-e", "=x"], 2, &["--env", "'=x'", "name is empty"]),
        start(&["--env", "A=1", "--env", "=x"], 2, &["--env", "'=x'"]),
    ];
    // Without binfmt_misc handlers, which may take any file, one without `#!` that is no
    // binary cannot run.
    let binfmt_misc = fs::read_dir("/proc/sys/fs/binfmt_misc").is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|entry| !matches!(entry.file_name().to_str(), Some("register" | "status")))
    });
    if binfmt_misc {
        eprintln!("binfmt_misc has handlers: a file without #! is left to exec");
    } else {
        let no_shebang = scene.path("no-shebang");
        cases.push(run(
            &no_shebang,
            2,
            &[
                &no_shebang,
                "neither a script starting with #! nor a binary",
            ],
        ));
    }
    for reserved in [
        "MCLUSTER_WORKER_ID",
        "MCLUSTER_GENERATION",
        "MCLUSTER_WORKERS",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "SYSTEMD_EXEC_PID",
    ] {
        let pair = format!("{reserved}=2");
        cases.push(start(
            &["-e", &pair],
            2,
            &["--env", &format!("{reserved} is reserved")],
        ));
    }
    cases.extend([
        start(
            &["-e", "WATCHDOG_USEC=5"],
            2,
            &["WATCHDOG_USEC", "--watchdog"],
        ),
        // Sockets from the parent (`LISTEN_FDS`).
        start(&[], 2, &["LISTEN_FDS", "'x'"]).env("LISTEN_FDS", "x"),
        start(&[], 2, &["LISTEN_FDS", "''"]).env("LISTEN_FDS", ""),
        start(&[], 2, &["LISTEN_FDS", "'1x'"]).env("LISTEN_FDS", "1x"),
        start(&[], 2, &["LISTEN_FDS", "'-1'", "0 or more"]).env("LISTEN_FDS", "-1"),
        start(&[], 1, &["fd 3", "not open"]).env("LISTEN_FDS", "1"),
        start(&[], 1, &["fd 3"]).env("LISTEN_FDS", "1").fd3(&file),
        start(&[], 1, &["fd 3"]).env("LISTEN_FDS", "2").fd3(&file),
        // LISTEN_PID of another process: the sockets are not the master's; it binds its own.
        listen(taken, 1, &[taken, "address already in use"])
            .env("LISTEN_FDS", "1")
            .env("LISTEN_PID", "1")
            .fd3(&file),
        // Temp and runtime directories that are missing or files, with bad input.
        run(&missing, 2, &[&missing])
            .env("TMPDIR", &missing)
            .env("XDG_RUNTIME_DIR", &file),
        listen(taken, 1, &[taken])
            .env("TMPDIR", &file)
            .env("XDG_RUNTIME_DIR", &missing),
        // A good command line, and nowhere to put the notify sockets.
        start(&[], 1, &[&file, "$XDG_RUNTIME_DIR", "not a directory"])
            .env("XDG_RUNTIME_DIR", &file),
        start(&[], 1, &[&missing, "$XDG_RUNTIME_DIR", "no such file"])
            .env("XDG_RUNTIME_DIR", &missing),
        start(&[], 1, &[&missing, "$TMPDIR", "no such file"])
            .env("XDG_RUNTIME_DIR", "")
            .env("TMPDIR", &missing),
        start(&[], 1, &[&file, "$TMPDIR", "not a directory"])
            .env("XDG_RUNTIME_DIR", "")
            .env("TMPDIR", &file),
        // Dev mode: the manifest, the watched directories, the ignore globs, APP_ENV.
        dev(
            &["--manifest-path", &format!("{missing}/Cargo.toml")],
            2,
            &[
                "--manifest-path",
                &format!("{missing}/Cargo.toml"),
                "no such file",
            ],
        ),
        dev(
            &["--manifest-path", &file],
            2,
            &["--manifest-path", &file, "Cargo.toml"],
        ),
        dev(&["--manifest-path", &dir], 2, &["--manifest-path", &dir]),
        dev(
            &[],
            2,
            &["no Cargo.toml", scene.script.dir().to_str().unwrap()],
        ),
        dev(&["--no-build", "-w", &missing], 2, &[&missing]),
        dev(&["--no-build", "-w", "missing"], 2, &[&missing]),
        dev(&["--no-build", "-w", &file], 2, &[&file, "not a directory"]),
        dev(
            &["--no-build", "-w", &symlink_loop],
            2,
            &[&symlink_loop, "symbolic links form a loop"],
        ),
        dev(&["--no-build", "-i", "["], 2, &["--ignore", "'['"]),
        // A live-reload address in use: how to do without it.
        dev(
            &["--no-build", "--livereload", taken],
            1,
            &[
                taken,
                "live reload",
                "address already in use",
                "--livereload",
                "--no-livereload",
            ],
        ),
        Case::new(
            &["dev", "-l", &unix, "--no-build", "--", &missing],
            2,
            &[&missing],
        )
        .env("APP_ENV", "production"),
    ]);
    cases
}

#[test]
fn bad_invocations_get_one_line_and_leave_everything_as_it_was() {
    let scene = Scene::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases = bad_invocations(&scene, &taken);
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| scene.run(case).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// `-e MCLUSTER_WORKER_ID=77` once made workers report id 77, and `-e LISTEN_FDS=2` crash-looped
/// them all: what mcluster sets for each worker is not the user's to set.
#[test]
fn env_cannot_set_what_mcluster_sets_for_each_worker() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    for pair in ["MCLUSTER_WORKER_ID=77", "LISTEN_FDS=2"] {
        let key = pair.split_once('=').unwrap().0;
        let args = scene.start(&["-l", &unix, "-n", "1", "-e", "A=1", "-e", pair]);
        scene.rejects(&args, Some(2), &["--env", &format!("{key} is reserved")]);
    }
}

/// Every duration follows one rule: 0 is refused where no time at all makes no sense, with the
/// option named; where 0 means "at once" it is accepted.
#[test]
fn a_zero_ready_timeout_is_refused_as_a_zero_watchdog_is() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    for option in ["--ready-timeout", "--watchdog"] {
        let args = scene.start(&["-l", &unix, "-n", "1", option, "0"]);
        scene.rejects(&args, Some(2), &[option, "at least 1ms"]);
    }
}

/// What a file is, to show it untouched: type and mode, inode, and its content, target or
/// entries.
fn describe_file(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).unwrap();
    let what = if meta.is_symlink() {
        fs::read_link(path).unwrap().display().to_string()
    } else if meta.is_file() {
        fs::read_to_string(path).unwrap()
    } else if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        format!("{names:?}")
    } else {
        String::new()
    };
    format!("{:o} {} {what}", meta.mode(), meta.ino())
}

#[test]
fn unix_path_that_is_not_a_socket_is_left_alone() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let scene = Scene::new();
    let files = tempfile::TempDir::new().unwrap();
    let file = files.path().join("config.toml");
    fs::write(&file, "port = 1\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let fifo = files.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let dir = files.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inside"), "x").unwrap();
    let link = files.path().join("link");
    symlink(&file, &link).unwrap();
    let dangling = files.path().join("dangling");
    symlink(files.path().join("nowhere"), &dangling).unwrap();
    let paths = [&file, &fifo, &dir, &link, &dangling];
    let before: Vec<String> = paths.iter().map(|p| describe_file(p)).collect();
    for (path, what) in paths.iter().zip([
        "a regular file",
        "a FIFO",
        "a directory",
        "a symbolic link",
        "a symbolic link",
    ]) {
        let listen = format!("unix:{}", path.display());
        let args = scene.start(&["-l", &listen]);
        scene.rejects(&args, Some(2), &[&listen, what]);
    }
    let after: Vec<String> = paths.iter().map(|p| describe_file(p)).collect();
    assert_eq!(after, before);
}

#[test]
fn unix_socket_in_use_is_left_alone() {
    use crate::support::net::request_unix;
    use crate::support::{Master, fixture};
    let scene = Scene::new();
    let sockets = tempfile::TempDir::new().unwrap();
    // A plain listener, not a master's.
    let plain = sockets.path().join("plain.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&plain).unwrap();
    let before = describe_file(&plain);
    let listen = format!("unix:{}", plain.display());
    scene.rejects(
        &scene.start(&["-l", &listen]),
        Some(1),
        &[&listen, "in use"],
    );
    assert_eq!(describe_file(&plain), before);
    // Another master's: it keeps serving on it.
    let served = sockets.path().join("served.sock");
    let listen = format!("unix:{}", served.display());
    let (_master, workers) =
        Master::start_ready(&["-l", &listen, "-n", "1"], fixture("fixture-echo"), &[], 1);
    let before = describe_file(&served);
    scene.rejects(
        &scene.start(&["-l", &listen]),
        Some(1),
        &[&listen, "in use"],
    );
    assert_eq!(describe_file(&served), before);
    let reply = request_unix(&served, "still here");
    assert!(
        reply.starts_with(&format!("pid={} ", workers[0].pid)),
        "{reply:?}"
    );
}

#[test]
fn unix_path_too_long() {
    let scene = Scene::new();
    let path = scene.script.dir().join("s".repeat(108));
    let listen = format!("unix:{}", path.display());
    scene.rejects(&scene.start(&["-l", &listen]), Some(2), &[&listen, "107"]);
}

/// `LISTEN_FDS=2147483000` made the worker helpers size a list of names by it (51 GB) and
/// abort; they refuse a count beyond the fds that are open, in one line naming it. (Under a
/// 2 GB address-space limit, so that the old behaviour aborts at once on any machine.)
#[test]
fn the_worker_helpers_refuse_more_fds_than_are_open() {
    use crate::support::fixture;
    let echo = fixture("fixture-echo");
    for count in ["2147483000", "100000"] {
        let mut worker = MasterBuilder::embedded(
            "/bin/sh",
            &[
                "-c".as_ref(),
                "ulimit -v 2000000 && exec \"$0\"".as_ref(),
                echo.as_os_str(),
            ],
        )
        .env("LISTEN_FDS", count)
        .start();
        assert_eq!(worker.wait_exit_code(), 1, "{}", worker.dump());
        let lines = worker.stderr_lines();
        assert_eq!(lines.len(), 1, "{}", worker.dump());
        assert!(
            lines[0].starts_with(&format!(
                "echo: listeners: LISTEN_FDS={count} names fds 3 to "
            )) && lines[0].ends_with("is not open: fewer fds were passed"),
            "{}",
            worker.dump()
        );
    }
}

/// An environment exec cannot take was reported as "argument list too long" (E2BIG).
#[test]
fn an_environment_too_large_for_exec_is_named_so() {
    let scene = Scene::new();
    let dir = tempfile::TempDir::new().unwrap();
    // One variable beyond what exec takes for a string (128 KiB with 4 KiB pages).
    fs::write(
        dir.path().join("mcluster.toml"),
        format!("env = {{ BIG = \"{}\" }}\n", "x".repeat(300_000)),
    )
    .unwrap();
    let mut master = MasterBuilder::raw(&[
        "start",
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--",
        "/bin/sh",
        scene.worker(),
    ])
    .current_dir(dir.path())
    .start();
    assert_eq!(master.wait_exit_code(), 1, "{}", master.dump());
    let lines = master.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("could not be spawned: environment too large"))
            && !lines
                .iter()
                .any(|line| line.contains("argument list too long")),
        "{}",
        master.dump()
    );
    assert!(!Path::new(&scene.path("spawned")).exists());
}

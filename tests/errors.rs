//! Guarantee 8: bad input gets one clear line naming the culprit, a non-zero exit status, no
//! worker, and nothing left on disk.

use std::fs;
use std::net::TcpListener;

use crate::support::script::quote;
use crate::support::{MasterBuilder, Script};

/// A worker program that leaves a mark if it ever runs, and a place for unix sockets.
struct Scene {
    script: Script,
}

impl Scene {
    fn new() -> Self {
        let script = Script::new("");
        let spawned = script.dir().join("spawned");
        script.rewrite(&format!("touch {}\nexec sleep 60", quote(&spawned)));
        Self { script }
    }

    /// `unix:<path>` of a socket in the scene (which must not be left behind).
    fn unix(&self, name: &str) -> String {
        format!("unix:{}", self.script.dir().join(name).display())
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
        let mut master = MasterBuilder::raw(args).start();
        let status = master.wait_exit_code();
        match code {
            Some(code) => assert_eq!(status, code, "{args:?}\n{}", master.dump()),
            None => assert_ne!(status, 0, "{args:?}\n{}", master.dump()),
        }
        let lines = master.stderr_lines();
        assert_eq!(lines.len(), 1, "{args:?}: not one line\n{}", master.dump());
        let line = &lines[0];
        assert!(line.starts_with("mcluster: error: "), "{line:?}");
        for culprit in culprits {
            assert!(
                line.to_lowercase().contains(&culprit.to_lowercase()),
                "{args:?}: {line:?} does not name {culprit:?}"
            );
        }
        assert_eq!(master.stdout_lines(), Vec::<String>::new(), "{args:?}");
        assert!(
            !self.script.dir().join("spawned").exists(),
            "{args:?}: a worker was spawned"
        );
        let mut leftovers: Vec<String> = fs::read_dir(self.script.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "worker.sh")
            .collect();
        leftovers.extend(
            fs::read_dir(master.tmpdir())
                .unwrap()
                .map(|e| format!("$TMPDIR/{}", e.unwrap().file_name().to_string_lossy())),
        );
        assert_eq!(leftovers, Vec::<String>::new(), "{args:?}: left behind");
    }
}

#[test]
fn unknown_flag() {
    let scene = Scene::new();
    let args = scene.start(&["--no-such-flag", "-l", "127.0.0.1:0"]);
    scene.rejects(&args, Some(2), &["--no-such-flag"]);
}

#[test]
fn missing_program() {
    let scene = Scene::new();
    scene.rejects(
        &["start", "-l", "127.0.0.1:0", "-n", "1"],
        Some(2),
        &["program"],
    );
}

#[test]
fn zero_size() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    let args = scene.start(&["-l", &unix, "--size", "0"]);
    scene.rejects(&args, None, &["--size"]);
    let args = scene.start(&["-l", &unix, "-n", "0"]);
    scene.rejects(&args, None, &["--size"]);
}

#[test]
fn malformed_addresses() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    for bad in [
        "127.0.0.1:notaport",
        "127.0.0.1:99999",
        "127.0.0.1",
        "[::1:80",
        "unix:",
    ] {
        let args = scene.start(&["-l", &unix, "-l", bad]);
        scene.rejects(&args, None, &[bad]);
    }
}

#[test]
fn port_already_in_use() {
    let scene = Scene::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // The unix socket is bound first, so the error must also clean it up.
    let unix = scene.unix("s.sock");
    let args = scene.start(&["-l", &unix, "-l", &addr]);
    scene.rejects(&args, Some(1), &["address already in use", &addr]);
}

#[test]
fn program_not_found() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    let args = ["start", "-l", &unix, "--", "mcluster-test-no-such-program"];
    scene.rejects(&args, None, &["mcluster-test-no-such-program"]);
    let missing = scene.script.dir().join("missing");
    let missing = missing.to_str().unwrap();
    scene.rejects(&["start", "-l", &unix, "--", missing], None, &[missing]);
}

#[test]
fn program_not_executable() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    // The script itself has no exec bit (tests run it through /bin/sh).
    let args = ["start", "-l", &unix, "--", scene.worker()];
    scene.rejects(&args, None, &[scene.worker()]);
}

#[test]
fn malformed_env() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    let args = scene.start(&["-l", &unix, "-e", "NOEQUALS"]);
    scene.rejects(&args, None, &["--env", "NOEQUALS"]);
}

#[test]
fn bad_duration() {
    let scene = Scene::new();
    let unix = scene.unix("s.sock");
    let args = scene.start(&["-l", &unix, "--kill-timeout", "5x"]);
    scene.rejects(&args, None, &["--kill-timeout", "5x"]);
}

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

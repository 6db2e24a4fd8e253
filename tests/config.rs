//! The config file: `mcluster.toml` in the working directory (or `--config`), with flags over
//! `MCLUSTER_*` variables over the file over the defaults; unknown keys refused naming the key
//! and the file; `mcluster init` writes a file that reads back, and never overwrites one.

use std::fs;

use tempfile::TempDir;

use crate::support::{MasterBuilder, all_ready, fixture};

/// `mcluster start` in `dir` with `options`, running the echo fixture.
fn start_in(dir: &TempDir, options: &[&str]) -> MasterBuilder {
    let echo = fixture("fixture-echo");
    let mut args = vec!["start"];
    args.extend_from_slice(options);
    args.extend(["--", echo.to_str().unwrap()]);
    MasterBuilder::raw(&args).current_dir(dir.path())
}

#[test]
fn flags_win_over_variables_which_win_over_the_file() {
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join("mcluster.toml"),
        "size = 3\nready = \"notify\"\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    // The file alone.
    let master = start_in(&dir, &[]).start();
    master.wait_for_stderr(&all_ready(3));
    drop(master);
    // A variable over the file.
    let master = start_in(&dir, &[]).env("MCLUSTER_SIZE", "2").start();
    master.wait_for_stderr(&all_ready(2));
    drop(master);
    // A flag over both.
    let master = start_in(&dir, &["-n", "1"])
        .env("MCLUSTER_SIZE", "2")
        .start();
    master.wait_for_stderr(&all_ready(1));
    drop(master);
    // Another file named on the command line.
    let other = dir.path().join("other.toml");
    fs::write(&other, "size = 4\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
    let master = start_in(&dir, &["--config", other.to_str().unwrap()]).start();
    master.wait_for_stderr(&all_ready(4));
}

#[test]
fn an_unknown_key_or_a_bad_value_is_one_line_naming_it_and_the_file() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("mcluster.toml");
    for (text, culprit) in [
        ("sise = 3\n", "unknown key 'sise'"),
        ("size = 0\n", "--size"),
        ("size = [\n", "invalid config file"),
        (
            "kill-timeout = \"10000000000000000000s\"\n",
            "--kill-timeout",
        ),
        (
            "watchdog = \"525601m\"\n",
            "the largest accepted is 525600m",
        ),
        ("listen = []\n", "listen = [] is empty"),
        ("env = { \"A=B\" = \"c\" }\n", "'A=B': it contains '='"),
    ] {
        fs::write(&file, text).unwrap();
        let mut master = start_in(&dir, &[]).start();
        assert_eq!(master.wait_exit_code(), 2, "{text}\n{}", master.dump());
        let lines = master.stderr_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("mcluster: error: ")
                && lines[0].contains(culprit)
                && lines[0].contains(file.to_str().unwrap()),
            "{lines:?}"
        );
    }
}

#[test]
fn init_writes_a_file_that_reads_back_and_never_overwrites_one() {
    let dir = TempDir::new().unwrap();
    let mut init = MasterBuilder::raw(&["init"])
        .current_dir(dir.path())
        .start();
    assert_eq!(init.wait_exit_code(), 0, "{}", init.dump());
    let written = fs::read_to_string(dir.path().join("mcluster.toml")).unwrap();
    // Every key, one line each, at its default: no example values.
    for line in [
        "# size ",
        "# ready-delay ",
        "# watchdog ",
        "# kill-timeout ",
        "# listen = [\"127.0.0.1:3000\"] ",
        "# livereload = \"127.0.0.1:35729\" ",
        "# no-livereload = false ",
        "# assets ",
    ] {
        assert_eq!(
            written.lines().filter(|l| l.starts_with(line)).count(),
            1,
            "{line}\n{written}"
        );
    }
    // `init --systemd` after `init` adds the units and keeps the file.
    fs::write(dir.path().join("mcluster.toml"), "size = 1\n").unwrap();
    let mut units = MasterBuilder::raw(&["init", "--systemd"])
        .current_dir(dir.path())
        .start();
    assert_eq!(units.wait_exit_code(), 0, "{}", units.dump());
    for name in ["mcluster.service", "mcluster.socket"] {
        assert!(dir.path().join(name).is_file(), "{name}");
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("mcluster.toml")).unwrap(),
        "size = 1\n"
    );
    assert_eq!(
        units.stderr_lines(),
        [
            "mcluster: wrote ./mcluster.service".to_owned(),
            "mcluster: wrote ./mcluster.socket".to_owned(),
            "mcluster: kept ./mcluster.toml: mcluster init never overwrites a file".to_owned(),
        ]
    );
    // The file as written (every key commented out, at its default) runs.
    let mut written = written;
    written.push_str("listen = [\"127.0.0.1:0\"]\nsize = 2\n");
    fs::write(dir.path().join("mcluster.toml"), &written).unwrap();
    let master = start_in(&dir, &[]).start();
    master.wait_for_stderr(&all_ready(2));
    drop(master);
    // With nothing missing, init changes nothing and says so.
    let before = fs::read_to_string(dir.path().join("mcluster.toml")).unwrap();
    let mut again = MasterBuilder::raw(&["init", "--systemd"])
        .current_dir(dir.path())
        .start();
    assert_eq!(again.wait_exit_code(), 1);
    let lines = again.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", again.dump());
    assert!(
        lines[0].starts_with("mcluster: error: ") && lines[0].contains("never overwrites"),
        "{}",
        again.dump()
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("mcluster.toml")).unwrap(),
        before
    );
}

/// Issue 21, item 3: `livereload`, `no-livereload` and `assets` were refused as unknown keys.
/// Each is taken from `mcluster.toml` and from `[package.metadata.mcluster]`: a dev master
/// whose file says `no-livereload = true` runs no channel and serves no building page.
#[test]
fn the_live_reload_options_are_keys_too() {
    let echo = fixture("fixture-echo");
    for (file, text) in [
        (
            "mcluster.toml",
            "no-livereload = true\nassets = [\"www\"]\n",
        ),
        (
            "Cargo.toml",
            "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [package.metadata.mcluster]\nno-livereload = true\nlivereload = \"127.0.0.1:1\"\n",
        ),
    ] {
        let dir = TempDir::new().unwrap();
        fs::write(dir.path().join(file), text).unwrap();
        fs::create_dir(dir.path().join("src")).unwrap();
        fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
        let master = MasterBuilder::raw(&[
            "dev",
            "-l",
            "127.0.0.1:0",
            "-n",
            "1",
            "--no-build",
            "--",
            echo.to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .start();
        master.wait_for_stderr(&all_ready(1));
        let lines = master.stderr_lines();
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("unknown key") || l.contains("live reload")),
            "{file}\n{}",
            master.dump()
        );
    }
    // And a bad value is named as for any key.
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("mcluster.toml"), "livereload = \"nope\"\n").unwrap();
    let mut master = MasterBuilder::raw(&["dev", "--no-build", "--", "/bin/true"])
        .current_dir(dir.path())
        .start();
    assert_eq!(master.wait_exit_code(), 2, "{}", master.dump());
    let lines = master.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].contains("--livereload") && lines[0].contains("'nope'"),
        "{lines:?}"
    );
}

/// `livereload` and `assets` from `mcluster.toml` take effect: the channel listens where the
/// file says, and a stylesheet in the file's asset directory is reloaded in the pages.
#[test]
fn live_reload_keys_of_the_file_take_effect() {
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join("mcluster.toml"),
        "livereload = \"127.0.0.1:0\"\nassets = [\"www\"]\n",
    )
    .unwrap();
    fs::create_dir(dir.path().join("www")).unwrap();
    fs::write(dir.path().join("www/style.css"), "body {}\n").unwrap();
    let echo = fixture("fixture-echo");
    let master = MasterBuilder::raw(&[
        "dev",
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--build",
        "true",
        "--",
        echo.to_str().unwrap(),
    ])
    .current_dir(dir.path())
    // Without the harness's MCLUSTER_LIVERELOAD_ADDR, which wins over the file.
    .via("/usr/bin/env", &["-u", "MCLUSTER_LIVERELOAD_ADDR"])
    .start();
    master.wait_for_stderr(&all_ready(1));
    let channel = master.wait_for_stderr("mcluster: live reload on 127.0.0.1:");
    assert!(!channel.contains(":35729"), "{channel}");
    fs::write(dir.path().join("www/style.css"), "body { color: red }\n").unwrap();
    master.wait_for_stderr("www/style.css changed → stylesheets reloaded in the pages");
}

/// Issue 21, item 4: the help says what the program does.
#[test]
fn the_help_says_what_the_program_does() {
    let help = |args: &[&str]| {
        let mut run = MasterBuilder::raw(args).start();
        assert_eq!(run.wait_exit_code(), 0, "{}", run.dump());
        run.stdout_lines().join("\n")
    };
    let start = help(&["start", "--help"]);
    let ready = start
        .split("--ready <MODE>")
        .nth(1)
        .and_then(|rest| rest.split("--ready-delay").next())
        .unwrap();
    assert!(ready.contains("seen accepting"), "{ready}");
    let dev = help(&["dev", "--help"]);
    let ignore = dev
        .split("--ignore <GLOB>")
        .nth(1)
        .and_then(|rest| rest.split("--poll").next())
        .unwrap();
    for ignored in [
        "CARGO_TARGET_DIR",
        ".ignore",
        ".gitignore",
        "target/",
        ".git/",
    ] {
        assert!(ignore.contains(ignored), "{ignored}: {ignore}");
    }
    let events = help(&["events", "--help"]);
    let json = events.split("--json").nth(1).unwrap();
    assert!(
        json.contains("Changes nothing: events are JSON lines either way"),
        "{json}"
    );
    let status = help(&["status", "--help"]);
    let json = status.split("--json").nth(1).unwrap();
    assert!(json.contains("instead of text"), "{json}");
    let resize = help(&["resize", "--help"]);
    assert!(resize.contains("--no-wait"), "{resize}");
}

/// A config-file case: what it is, the master it starts in a fresh directory, and what the one
/// line says.
type FileCase<'a> = (&'a str, Box<dyn Fn(&TempDir) -> MasterBuilder + 'a>, String);

/// Only a regular file of at most 1 MiB is a config file. A dangling symbolic link, a
/// directory or a FIFO named `mcluster.toml` was ignored without a word, `--config FIFO` waited
/// for a writer for ever, and `MCLUSTER_CONFIG=/dev/zero` read until memory ran out: each is one
/// line naming the file and what it is. (Under an address-space limit, so that a master that
/// reads on fails at once on any machine.)
#[test]
fn a_config_file_must_be_a_regular_file_of_a_sane_size() {
    use std::os::unix::fs::symlink;
    let scene = TempDir::new().unwrap();
    let fifo = scene.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = scene.path().join("big.toml");
    fs::write(&big, "# a comment line of a config file\n".repeat(40_000)).unwrap();
    let nowhere = scene.path().join("nowhere.toml");
    let cases: Vec<FileCase<'_>> = vec![
        (
            "a dangling symbolic link",
            Box::new(|dir| {
                symlink(&nowhere, dir.path().join("mcluster.toml")).unwrap();
                start_in(dir, &["-l", "127.0.0.1:0"])
            }),
            format!(
                "it is a symbolic link to {}, which does not exist",
                nowhere.display()
            ),
        ),
        (
            "a directory",
            Box::new(|dir| {
                fs::create_dir(dir.path().join("mcluster.toml")).unwrap();
                start_in(dir, &["-l", "127.0.0.1:0"])
            }),
            "it is a directory, not a regular file".to_owned(),
        ),
        (
            "a FIFO",
            Box::new(|dir| {
                symlink(&fifo, dir.path().join("mcluster.toml")).unwrap();
                start_in(dir, &["-l", "127.0.0.1:0"])
            }),
            "it is a FIFO, not a regular file".to_owned(),
        ),
        (
            "--config FIFO",
            Box::new(|dir| {
                start_in(
                    dir,
                    &["-l", "127.0.0.1:0", "--config", fifo.to_str().unwrap()],
                )
            }),
            "it is a FIFO, not a regular file".to_owned(),
        ),
        (
            "MCLUSTER_CONFIG=/dev/zero",
            Box::new(|dir| {
                start_in(dir, &["-l", "127.0.0.1:0"]).env("MCLUSTER_CONFIG", "/dev/zero")
            }),
            "it is a character device, not a regular file".to_owned(),
        ),
        (
            "1.3 MB",
            Box::new(|dir| {
                symlink(&big, dir.path().join("mcluster.toml")).unwrap();
                start_in(dir, &["-l", "127.0.0.1:0"])
            }),
            "it is larger than 1024 KiB".to_owned(),
        ),
    ];
    for (what, builder, problem) in cases {
        let dir = TempDir::new().unwrap();
        let mut master = builder(&dir)
            .via("/bin/sh", &["-c", "ulimit -v 4000000 && exec \"$@\"", "sh"])
            .start();
        assert_eq!(master.wait_exit_code(), 2, "{what}\n{}", master.dump());
        let lines = master.stderr_lines();
        assert_eq!(lines.len(), 1, "{what}\n{}", master.dump());
        assert!(
            lines[0].starts_with("mcluster: error: cannot read the config file ")
                && lines[0].ends_with(&format!(": {problem}"))
                && [
                    dir.path().join("mcluster.toml").as_path(),
                    &fifo,
                    "/dev/zero".as_ref()
                ]
                .iter()
                .any(|path| lines[0].contains(&format!(" {}: ", path.display()))),
            "{what}\n{}",
            master.dump()
        );
    }
}

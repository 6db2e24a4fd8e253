//! Worker output: each line prefixed with the worker's slot, or hidden by `--silent`; long lines
//! cut into marked pieces; the master's memory bounded whatever the workers write.

use std::fs;
use std::io::{self, BufRead, BufReader, PipeReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use nix::sys::signal::Signal;

use crate::support::process::proc_status;
use crate::support::script::quote;
use crate::support::{Master, Script, fixture};

#[test]
fn worker_output_is_prefixed_with_its_slot() {
    // stderr of a worker goes to the master's stderr…
    let (master, _) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "2"],
        fixture("fixture-echo"),
        &[],
        2,
    );
    master.wait_for_stderr("[w0·g1] echo: listening");
    master.wait_for_stderr("[w1·g1] echo: listening");
    assert!(
        !master
            .stdout_lines()
            .iter()
            .any(|l| l.contains("echo: listening")),
        "{}",
        master.dump()
    );
    drop(master);

    // … and its stdout to the master's stdout.
    let (master, workers) = Master::start_ready(
        &["-l", "127.0.0.1:0", "-n", "1"],
        fixture("fixture-print-env"),
        &[],
        1,
    );
    let line = master.wait_for_stdout(&format!("[w0·g1] pid={} ", workers[0].pid));
    assert!(line.starts_with("[w0·g1] pid="), "{line:?}");
    assert!(
        !master.stderr_lines().iter().any(|l| l.contains("pid=")),
        "{}",
        master.dump()
    );
}

#[test]
fn silent_hides_worker_output() {
    for program in ["fixture-echo", "fixture-print-env"] {
        let (mut master, _) = Master::start_ready(
            &["-l", "127.0.0.1:0", "-n", "2", "--silent"],
            fixture(program),
            &[],
            2,
        );
        master.signal(Signal::SIGTERM);
        assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
        // The master still speaks; the workers (which printed at start and on stop) do not.
        let stderr = master.stderr_lines();
        assert!(
            stderr.iter().any(|l| l == "mcluster: stopped"),
            "{}",
            master.dump()
        );
        assert!(
            stderr.iter().all(|l| l.starts_with("mcluster: ")),
            "{program}:\n{}",
            master.dump()
        );
        assert_eq!(master.stdout_lines(), Vec::<String>::new(), "{program}");
    }
}

/// The longest piece of a worker's line the master shows as one line, in bytes.
const LINE_CAP: usize = 16 * 1024;
/// What ends such a piece when the line goes on.
const CUT: &str = "…[cut]";
/// The longest line of a failure report's stderr tail, in bytes (the prefix aside).
const TAIL_LINE_CAP: usize = 4 * 1024;
/// What a worker writes without a newline: far more than the master may hold.
const FLOOD: usize = 300_000_000;
/// The master's memory budget, whatever its workers write.
const MASTER_PEAK_MAX: u64 = 32 * 1024 * 1024;

/// Shell that writes `FLOOD` bytes of `char` without a newline.
fn flood(char: char) -> String {
    format!("head -c {FLOOD} /dev/zero | tr '\\0' {char}")
}

/// The peak resident memory of `pid` so far (`VmHWM`), in bytes.
#[track_caller]
fn peak_rss(pid: i32) -> u64 {
    proc_status(pid, "VmHWM:") * 1024
}

/// What a reader saw of an output too big to keep, without ever holding more than a chunk.
#[derive(Debug, Default)]
struct Summary {
    /// The length in bytes of the longest line.
    longest: usize,
    /// Lines exactly like `piece`.
    pieces: usize,
    /// The lines shorter than 1 KiB.
    short: Vec<String>,
    /// The lengths of the other lines.
    other: Vec<usize>,
}

/// Reads `pipe` on a thread into a [`Summary`]; a line counts as a `piece` if it is exactly
/// `piece`.
fn summarize(pipe: PipeReader, piece: Vec<u8>) -> Arc<Mutex<Summary>> {
    let summary = Arc::new(Mutex::new(Summary::default()));
    let writer = Arc::clone(&summary);
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut chunk = Vec::new();
        // The length of the line so far: a line longer than a chunk comes in several.
        let mut length = 0;
        loop {
            chunk.clear();
            let read = reader
                .by_ref()
                .take(64 * 1024)
                .read_until(b'\n', &mut chunk)
                .unwrap_or(0);
            if read == 0 {
                return;
            }
            let whole = length == 0 && chunk.last() == Some(&b'\n');
            length += chunk.len();
            if chunk.last() != Some(&b'\n') {
                continue;
            }
            let line = &chunk[..chunk.len() - 1];
            let length = std::mem::take(&mut length) - 1;
            let mut summary = writer.lock().unwrap();
            summary.longest = summary.longest.max(length);
            if whole && line == piece.as_slice() {
                summary.pieces += 1;
            } else if whole && length < 1024 {
                summary
                    .short
                    .push(String::from_utf8_lossy(line).into_owned());
            } else if summary.other.len() < 100 {
                summary.other.push(length);
            }
        }
    });
    summary
}

/// The prefix of the first worker's lines, with its space.
const PREFIX: &str = "[w0·g1] ";

/// A worker writes 300 MB without a newline on stdout, and a progress bar drawn with `\r` only
/// on stderr: the master stays small, shows them cut into marked pieces, and the lines around
/// them intact.
#[test]
fn a_line_without_newline_is_cut_and_the_master_stays_small() {
    let script = Script::new(&format!(
        "echo before\n\
         {flood}\n\
         printf '\\nafter\\n'\n\
         echo 'progress start' >&2\n\
         yes 'progress 42%' | head -c 4000000 | tr '\\n' '\\r' >&2\n\
         printf '\\nprogress done\\n' >&2\n\
         exec sleep 600",
        flood = flood('x')
    ));
    let (stdout_read, stdout_write) = io::pipe().unwrap();
    let master = Master::builder(
        &["-l", "127.0.0.1:0", "-n", "1"],
        "/bin/sh",
        &[script.arg()],
    )
    .stdout(stdout_write)
    .start();
    let piece = format!("[w0·g1] {}{CUT}", "x".repeat(LINE_CAP)).into_bytes();
    let stdout = summarize(stdout_read, piece);
    master.wait_until("[w0·g1] after on the master's stdout", || {
        stdout
            .lock()
            .unwrap()
            .short
            .iter()
            .any(|l| l == "[w0·g1] after")
    });
    master.wait_for_stderr("[w0·g1] progress done");

    let peak = peak_rss(master.pid());
    assert!(
        peak < MASTER_PEAK_MAX,
        "the master's peak RSS is {} MiB",
        peak / 1024 / 1024
    );
    let stdout = stdout.lock().unwrap();
    assert_eq!(
        stdout.short,
        ["[w0·g1] before", "[w0·g1] after"],
        "{stdout:?}"
    );
    assert_eq!(stdout.pieces, FLOOD / LINE_CAP, "{stdout:?}");
    // The end of the long line, shorter than a piece, comes whole.
    assert_eq!(
        stdout.other,
        [PREFIX.len() + FLOOD % LINE_CAP],
        "{stdout:?}"
    );
    assert!(
        stdout.longest <= PREFIX.len() + LINE_CAP + CUT.len(),
        "{stdout:?}"
    );

    // The worker's lines on the master's stderr, between the master's own.
    let stderr = master.stderr_lines();
    let progress: Vec<&String> = stderr
        .iter()
        .filter(|l| l.starts_with("[w0·g1] "))
        .skip_while(|l| *l != "[w0·g1] progress start")
        .skip(1)
        .take_while(|l| *l != "[w0·g1] progress done")
        .collect();
    let (cut, end) = progress.split_at(progress.len().saturating_sub(1));
    assert_eq!(cut.len(), 4_000_000 / LINE_CAP, "{} lines", progress.len());
    for line in cut {
        let text = line.strip_prefix("[w0·g1] ").unwrap();
        let text = text.strip_suffix(CUT).unwrap();
        assert_eq!(text.len(), LINE_CAP);
        assert!(text.contains("\rprogress 42%\r"), "{:?}", &text[..40]);
    }
    assert_eq!(end[0].len(), PREFIX.len() + 4_000_000 % LINE_CAP);
}

/// With `--silent`, the worker writes to /dev/null: the master reads nothing, however much the
/// worker writes.
#[test]
fn silent_gives_workers_dev_null() {
    let script = Script::new("");
    let done = script.dir().join("done");
    script.rewrite(&format!(
        "{flood_out}\n{flood_err} >&2\ntouch {done}\nexec sleep 600",
        flood_out = flood('x'),
        flood_err = flood('y'),
        done = quote(&done),
    ));
    let (mut master, workers) = Master::start_ready(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            "1",
            "--silent",
            "--ready-delay",
            "100ms",
        ],
        "/bin/sh",
        &[script.arg()],
        1,
    );
    master.wait_until("the worker to have written its output", || done.exists());

    let peak = peak_rss(master.pid());
    assert!(
        peak < MASTER_PEAK_MAX,
        "the master's peak RSS is {} MiB",
        peak / 1024 / 1024
    );
    for fd in [1, 2] {
        let target = fs::read_link(format!("/proc/{}/fd/{fd}", workers[0].pid)).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
    master.signal(Signal::SIGTERM);
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
    assert!(
        master
            .stderr_lines()
            .iter()
            .all(|l| l.starts_with("mcluster: ")),
        "{}",
        master.dump()
    );
    assert_eq!(master.stdout_lines(), Vec::<String>::new());
}

/// A worker that never becomes ready and writes long stderr lines: the failure report shows
/// its last 20 lines, each cut to a bounded length.
#[test]
fn the_failure_report_keeps_stderr_lines_short() {
    let script = Script::new(
        "echo 'first words' >&2\n\
         head -c 1000000 /dev/zero | tr '\\0' y >&2\n\
         printf '\\nlast words\\n' >&2\n\
         exit 3",
    );
    let mut master = Master::start(
        &["-l", "127.0.0.1:0", "-n", "1"],
        "/bin/sh",
        &[script.arg()],
    );
    assert_eq!(master.wait_exit_code(), 3, "{}", master.dump());
    let report: Vec<String> = master
        .stderr_lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix("mcluster: w0 stderr: ").map(str::to_owned))
        .collect();
    let mut expected = vec![format!("{}{CUT}", "y".repeat(TAIL_LINE_CAP)); 18];
    expected.push("y".repeat(1_000_000 % LINE_CAP));
    expected.push("last words".to_owned());
    let seen: Vec<(usize, String)> = report
        .iter()
        .map(|line| (line.len(), line.chars().take(20).collect()))
        .collect();
    assert!(
        report == expected,
        "the report's lines (length, start): {seen:?}"
    );
}

/// With `--silent`, there is no stderr tail: the failure report says so.
#[test]
fn the_failure_report_of_a_silent_worker_says_it_was_silenced() {
    let script = Script::new("echo 'last words' >&2\nexit 3");
    let mut master = Master::start(
        &["-l", "127.0.0.1:0", "-n", "1", "--silent"],
        "/bin/sh",
        &[script.arg()],
    );
    assert_eq!(master.wait_exit_code(), 3, "{}", master.dump());
    let report: Vec<String> = master
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("mcluster: w0 stderr: "))
        .collect();
    assert_eq!(
        report,
        ["mcluster: w0 stderr: not kept: --silent sends the workers' output to /dev/null"],
        "{}",
        master.dump()
    );
    assert!(!master.dump().contains("last words"), "{}", master.dump());
}

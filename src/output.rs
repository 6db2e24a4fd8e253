//! Worker output, line-prefixed with the worker's slot (`[w0] …`), and the master's own lines
//! (`mcluster: …`). A line is written with one call under the stream's lock, so lines of
//! different workers never interleave mid-line.
//!
//! The master's memory does not depend on what a worker writes. A pipe is read through a
//! fixed buffer into a line of at most [`LINE_CAP`] bytes: a longer line (a `\r` progress bar, a
//! binary dump) is shown in pieces of that size, each but the last ending in [`CUT_MARKER`].
//! With `--silent` the worker writes to `/dev/null` and the master reads nothing at all.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use console::Style;

/// The longest piece of a worker's line shown as one line, in bytes (the line ending and the
/// `[wN] ` prefix aside).
const LINE_CAP: usize = 16 * 1024;

/// Ends a piece of a line that was longer than [`LINE_CAP`]; the rest follows on the next line.
const CUT_MARKER: &str = "…[cut]";

/// How many of a worker's last stderr lines are kept for a failure report.
const TAIL_LINES: usize = 20;

/// The longest line kept in a stderr tail, in bytes: a report needs the gist, and the tails of
/// every running and recently exited worker stay in memory.
const TAIL_LINE_CAP: usize = 4 * 1024;

/// What a `--silent` worker's failure report shows instead of its last stderr lines.
const SILENCED: &str = "not kept: --silent sends the workers' output to /dev/null";

/// The last lines a worker wrote to stderr.
pub(crate) type Tail = Arc<Mutex<VecDeque<String>>>;

/// Which of the master's streams a worker stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Prints one line of the master's own on stderr.
pub(crate) fn master_line(text: &str) {
    let prefix = Style::new().for_stderr().bold().apply_to("mcluster:");
    let line = format!("{prefix} {text}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// The master's side of a worker's stdout and stderr: the ends the worker gets at fd 1 and 2.
/// The readers start before the worker is spawned, so that nothing can fail once it runs;
/// dropping this after the spawn leaves the write ends to the worker alone (or the readers
/// never see EOF).
pub(crate) enum WorkerOutput {
    /// The write ends of the stdout and stderr pipes.
    Piped { stdout: OwnedFd, stderr: OwnedFd },
    /// `--silent`: `/dev/null`, never read.
    Discarded(File),
}

impl WorkerOutput {
    /// Opens the pipes and starts a reader thread per pipe, or opens `/dev/null` when `silent`.
    /// Returns the worker's stderr tail and the threads too.
    pub(crate) fn start(
        silent: bool,
        slot: usize,
        generation: u64,
    ) -> io::Result<(Self, Tail, Vec<JoinHandle<()>>)> {
        if silent {
            let devnull = OpenOptions::new().write(true).open("/dev/null")?;
            let tail = Arc::new(Mutex::new(VecDeque::from([SILENCED.to_owned()])));
            return Ok((Self::Discarded(devnull), tail, Vec::new()));
        }
        let (stdout_read, stdout) = pipe()?;
        let (stderr_read, stderr) = pipe()?;
        let tail = Tail::default();
        let threads = vec![
            forward_lines(stdout_read, slot, generation, Stream::Stdout, None)?,
            forward_lines(
                stderr_read,
                slot,
                generation,
                Stream::Stderr,
                Some(Arc::clone(&tail)),
            )?,
        ];
        Ok((Self::Piped { stdout, stderr }, tail, threads))
    }

    /// The worker's stdout and stderr, to be placed at fd 1 and 2.
    pub(crate) fn worker_fds(&self) -> [BorrowedFd<'_>; 2] {
        match self {
            Self::Piped { stdout, stderr } => [stdout.as_fd(), stderr.as_fd()],
            Self::Discarded(devnull) => [devnull.as_fd(), devnull.as_fd()],
        }
    }
}

/// A worker's line prefix: its slot and generation, `[w0·g2]`, so that a slot's old and new
/// workers are told apart during a roll.
pub(crate) fn prefix(slot: usize, generation: u64) -> String {
    format!("[w{slot}·g{generation}]")
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    crate::sys::pipe()
}

/// Starts a thread that copies `pipe` line by line to `stream`, prefixed with `[w<slot>]`,
/// keeping the last lines in `tail` when given.
fn forward_lines(
    pipe: OwnedFd,
    slot: usize,
    generation: u64,
    stream: Stream,
    tail: Option<Tail>,
) -> io::Result<JoinHandle<()>> {
    let colours = [
        Style::new().cyan(),
        Style::new().magenta(),
        Style::new().yellow(),
        Style::new().green(),
        Style::new().blue(),
    ];
    let style = match stream {
        Stream::Stdout => colours[slot % colours.len()].clone().for_stdout(),
        Stream::Stderr => colours[slot % colours.len()].clone().for_stderr(),
    };
    let prefix = style.apply_to(prefix(slot, generation)).to_string();
    thread::Builder::new()
        .name(format!("output-w{slot}"))
        .spawn(move || {
            for_each_line(File::from(pipe), LINE_CAP, |text, cut| {
                let marker = if cut { CUT_MARKER } else { "" };
                if let Some(tail) = &tail
                    && let Ok(mut tail) = tail.lock()
                {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(capped(text, TAIL_LINE_CAP, marker));
                }
                let out = format!("{prefix} {text}{marker}\n");
                let _ = match stream {
                    Stream::Stdout => io::stdout().lock().write_all(out.as_bytes()),
                    Stream::Stderr => io::stderr().lock().write_all(out.as_bytes()),
                };
            });
        })
}

/// `text` and `marker`, or at most `cap` bytes of `text` and [`CUT_MARKER`].
fn capped(text: &str, cap: usize, marker: &str) -> String {
    if text.len() <= cap {
        return format!("{text}{marker}");
    }
    format!("{}{CUT_MARKER}", &text[..text.floor_char_boundary(cap)])
}

/// Reads `input` to its end and calls `each(text, cut)` for every line, without its `\n` or
/// `\r\n`, invalid UTF-8 replaced. A line longer than `cap` bytes comes in pieces of at most
/// `cap` bytes, cut between characters, each but the last with `cut` set. Memory stays
/// bounded by `cap`: the read buffer and the line are both about that size, whatever `input`
/// holds. A read error ends the input.
fn for_each_line(input: impl Read, cap: usize, mut each: impl FnMut(&str, bool)) {
    // Room for a whole line of `cap` bytes with its `\r\n`, so that it is not taken for a
    // longer one.
    let room = cap + 2;
    let mut reader = BufReader::with_capacity(cap, input);
    let mut line: Vec<u8> = Vec::with_capacity(room);
    loop {
        let limit = u64::try_from(room - line.len()).unwrap_or(u64::MAX);
        let read = reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut line)
            .unwrap_or(0);
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            emit_pieces(&mut line, cap, &mut each);
            each(&String::from_utf8_lossy(&line), false);
            line.clear();
        } else if line.len() == room {
            emit_pieces(&mut line, cap, &mut each);
        } else if read == 0 {
            // The end: the last line had no newline.
            emit_pieces(&mut line, cap, &mut each);
            if !line.is_empty() {
                each(&String::from_utf8_lossy(&line), false);
            }
            return;
        }
    }
}

/// Passes the first `cap` bytes of `line` (fewer, to not split a character) as a cut piece
/// while it is longer than `cap`, and leaves the rest in `line`.
fn emit_pieces(line: &mut Vec<u8>, cap: usize, each: &mut impl FnMut(&str, bool)) {
    while line.len() > cap {
        let end = char_start(line, cap);
        each(&String::from_utf8_lossy(&line[..end]), true);
        line.drain(..end);
    }
}

/// The start of the character that byte `at` of `bytes` belongs to, if it begins at most 3
/// bytes earlier and after the start (UTF-8 characters are at most 4 bytes); else `at`.
fn char_start(bytes: &[u8], at: usize) -> usize {
    let is_continuation = |byte: u8| byte & 0b1100_0000 == 0b1000_0000;
    (at.saturating_sub(3)..=at)
        .rev()
        .find(|&index| !is_continuation(bytes[index]))
        .filter(|&index| index > 0)
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `for_each_line` gives for `input` with `cap`, a cut piece followed by `|`.
    fn lines(input: &[u8], cap: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for_each_line(input, cap, |text, cut| {
            lines.push(format!("{text}{}", if cut { "|" } else { "" }));
        });
        lines
    }

    #[test]
    fn lines_lose_their_endings() {
        assert_eq!(lines(b"a\nb\r\n\nc", 8), ["a", "b", "", "c"]);
        assert_eq!(lines(b"", 8), Vec::<String>::new());
        assert_eq!(lines(b"a\rb\n", 8), ["a\rb"]);
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_whole() {
        assert_eq!(
            lines(b"12345678\n12345678\r\nx", 8),
            ["12345678", "12345678", "x"]
        );
    }

    #[test]
    fn a_longer_line_comes_in_cut_pieces() {
        assert_eq!(lines(b"123456789\nab", 8), ["12345678|", "9", "ab"]);
        assert_eq!(
            lines(b"12345678123456781234\n", 8),
            ["12345678|", "12345678|", "1234"]
        );
        // No newline at all, as a progress bar drawn with `\r`.
        assert_eq!(lines(b"1%\r2%\r3%\r4%\r5%", 8), ["1%\r2%\r3%|", "\r4%\r5%"]);
        assert_eq!(
            lines(&b"x".repeat(8 * 1000 + 3), 8).len(),
            1001,
            "one line per piece"
        );
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is 2 bytes, "€" 3, "😀" 4.
        assert_eq!(lines("1234567é\n".as_bytes(), 8), ["1234567|", "é"]);
        assert_eq!(lines("123456€\n".as_bytes(), 8), ["123456|", "€"]);
        assert_eq!(lines("12345😀\n".as_bytes(), 8), ["12345|", "😀"]);
        assert_eq!(lines("1234😀5\n".as_bytes(), 8), ["1234😀|", "5"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let stray = "\u{fffd}";
        assert_eq!(
            lines(b"a\xffb\n\x80\x80\x80\x80\x80\x80\x80\x80\x80", 8),
            [
                format!("a{stray}b"),
                format!("{}|", stray.repeat(8)),
                stray.to_owned()
            ]
        );
    }

    #[test]
    fn a_kept_tail_line_is_capped() {
        assert_eq!(capped("short", 8, ""), "short");
        assert_eq!(capped("short", 8, CUT_MARKER), "short…[cut]");
        assert_eq!(capped("1234567890", 8, ""), "12345678…[cut]");
        assert_eq!(capped("1234567é", 8, ""), "1234567…[cut]");
    }
}

//! Worker output, line-prefixed with the worker's slot (`[w0] …`), and the master's own lines
//! (`mcluster: …`). A line is written with one call under the stream's lock, so lines of
//! different workers never interleave mid-line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use console::Style;

/// How many of a worker's last stderr lines are kept for a failure report.
const TAIL_LINES: usize = 20;

/// The last lines a worker wrote to stderr.
pub(crate) type Tail = Arc<Mutex<VecDeque<String>>>;

/// Which of the master's streams a worker stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Prints one line of the master's own on stderr.
pub(crate) fn master_line(text: &str) {
    let prefix = Style::new().for_stderr().bold().apply_to("mcluster:");
    let line = format!("{prefix} {text}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

/// Starts a thread that copies `pipe` line by line to `stream`, prefixed with `[w<slot>]`
/// (unless `silent`), keeping the last lines in `tail` when given.
pub(crate) fn forward_lines(
    pipe: OwnedFd,
    slot: usize,
    stream: Stream,
    silent: bool,
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
    let prefix = style.apply_to(format!("[w{slot}]")).to_string();
    thread::Builder::new()
        .name(format!("output-w{slot}"))
        .spawn(move || {
            let mut reader = BufReader::new(File::from(pipe));
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if let Some(tail) = &tail
                    && let Ok(mut tail) = tail.lock()
                {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(text.to_owned());
                }
                if !silent {
                    let out = format!("{prefix} {text}\n");
                    let _ = match stream {
                        Stream::Stdout => io::stdout().lock().write_all(out.as_bytes()),
                        Stream::Stderr => io::stderr().lock().write_all(out.as_bytes()),
                    };
                }
            }
        })
}

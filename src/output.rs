//! Worker output, line-prefixed with the worker's slot (`[w0] …`), and the master's own lines
//! (`mcluster: …`), all written by one writer per stream, so lines of different workers never
//! interleave mid-line.
//!
//! The master's memory does not depend on what a worker writes, nor does its supervision on
//! whether its own stdout and stderr are read:
//!
//! - **Readers.** A worker's stdout and stderr pipes are read by tasks on the master's I/O loop
//!   ([`IoLoop`]), never a thread per pipe, through a fixed buffer into a line of at most
//!   [`LINE_CAP`] bytes: a longer line (a `\r` progress bar, a binary dump) is shown in pieces of
//!   that size, each but the last ending in [`CUT_MARKER`]. With `--silent` the worker writes to
//!   `/dev/null` and the master reads nothing at all.
//! - **Writers.** While a master runs ([`Queued`]), every line for the master's stdout or stderr
//!   (its own, its workers', and cargo's output in dev mode) goes into that stream's queue,
//!   written by a thread of the
//!   stream's own with blocking writes (the stream's file description is shared with other
//!   processes: it is never made non-blocking). The queue holds at most [`QUEUE_BYTES`] of
//!   workers' lines, and [`MASTER_RESERVE`] more for the master's own, so that a chatty worker
//!   never crowds them out.
//! - **When a stream is slow**, a worker's reader waits for room (the worker then waits on its
//!   pipe, as it would writing to a slow terminal itself), and so does the build's: nothing is
//!   lost. The master's own lines never wait: beyond the queue and its reserve they are dropped
//!   and counted.
//! - **When a stream is stalled** (one write has taken [`STALLED`]: a paused terminal, a log pipe
//!   nobody reads), nobody waits for it: every line that does not fit is dropped and counted, the
//!   workers' too, and the master goes on supervising.
//!
//! Once the stream takes writes again, one line in the place of a gap says how many lines it
//! lost (`mcluster: 1,234 lines dropped: stderr did not keep up`).
//!
//! Outside a run (the client commands, errors before a run) lines are written at once.
//!
//! A line always starts on a line of its own: when the last thing written to the stream was
//! an unfinished line (a piece of the build's output: cargo's progress bar ends with `\r`, and
//! a killed build may stop mid-line), the line is preceded by what finishes it ([`Column`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use console::Style;

use crate::http::IoLoop;

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

/// The most bytes of workers' lines waiting for one of the master's streams.
const QUEUE_BYTES: usize = 256 * 1024;

/// The room beyond [`QUEUE_BYTES`] for the master's own lines.
const MASTER_RESERVE: usize = 64 * 1024;

/// How long one write to a stream may take before the stream counts as stalled.
const STALLED: Duration = Duration::from_secs(1);

/// How much of a child's pipe (a worker's, the build's) is read at once.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// How long the end of a run waits for the queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The last lines a worker wrote to stderr.
pub(crate) type Tail = Arc<Mutex<VecDeque<String>>>;

/// Which of the master's streams a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    fn writer(self) -> &'static Writer {
        match self {
            Self::Stdout => &STDOUT,
            Self::Stderr => &STDERR,
        }
    }

    fn column(self) -> &'static Column {
        match self {
            Self::Stdout => &STDOUT_COLUMN,
            Self::Stderr => &STDERR_COLUMN,
        }
    }

    fn is_terminal(self) -> bool {
        match self {
            Self::Stdout => io::stdout().is_terminal(),
            Self::Stderr => io::stderr().is_terminal(),
        }
    }

    /// Writes `bytes` now, blocking while the stream does: a whole line on a line of its own
    /// (see [`Column`]), a piece of output as it is.
    fn write_now(self, bytes: &[u8], kind: Kind) {
        let column = self.column();
        let before = match kind {
            Kind::Line => column.before_line(|| self.is_terminal()),
            Kind::Piece => b"",
        };
        let written = match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(before)
                    .and_then(|()| out.write_all(bytes))
                    .and_then(|()| out.flush())
            }
            Self::Stderr => {
                let mut err = io::stderr().lock();
                err.write_all(before).and_then(|()| err.write_all(bytes))
            }
        };
        if written.is_ok() {
            column.wrote(bytes);
        }
    }
}

/// What is written: a whole line (ending with `\n`), or a piece of a child's output as it
/// comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Line,
    Piece,
}

/// Where a stream's cursor was left: the last byte written to it, for a line to start on a
/// line of its own after a piece of output that did not end one.
#[derive(Debug)]
struct Column {
    /// The last byte written; `\n` before anything is.
    last: AtomicU8,
}

impl Column {
    const fn new() -> Self {
        Self {
            last: AtomicU8::new(b'\n'),
        }
    }

    /// Records what was written.
    fn wrote(&self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.last.store(last, Ordering::Relaxed);
        }
    }

    /// What a line needs before it: nothing at the start of a line; after a progress bar on a
    /// terminal (drawn, then `\r`), erasing it, as cargo itself does before its next line (the
    /// bar is only ever its latest state); after anything else unfinished, a newline, which
    /// keeps what was written.
    fn before_line(&self, is_terminal: impl FnOnce() -> bool) -> &'static [u8] {
        match self.last.load(Ordering::Relaxed) {
            b'\n' => b"",
            // From the line's start: a `^C` the terminal echoed may have moved the cursor.
            b'\r' if is_terminal() => b"\r\x1b[K",
            _ => b"\n",
        }
    }
}

/// Prints one line of the master's own on stderr.
pub(crate) fn master_line(text: &str) {
    write_line(Stream::Stderr, format!("{} {text}\n", master_prefix()));
}

fn master_prefix() -> String {
    Style::new()
        .for_stderr()
        .bold()
        .apply_to("mcluster:")
        .to_string()
}

/// How many masters run in this process: while any does, lines go through the queues.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

static STDOUT: Writer = Writer::new(Stream::Stdout);
static STDERR: Writer = Writer::new(Stream::Stderr);
static STDOUT_COLUMN: Column = Column::new();
static STDERR_COLUMN: Column = Column::new();

/// A line of the master's own: queued, or dropped when there is no room; never waited for.
fn write_line(stream: Stream, line: String) {
    if QUEUED.load(Ordering::Acquire) == 0 {
        stream.write_now(line.as_bytes(), Kind::Line);
        return;
    }
    if let Err(Full(line)) =
        stream
            .writer()
            .try_push(line.into_bytes(), Kind::Line, QUEUE_BYTES + MASTER_RESERVE)
    {
        stream.writer().drop_lines(&line);
    }
}

/// A worker's line: waits for room while the stream is only slow, dropped once it is stalled.
async fn write_worker_line(stream: Stream, line: String) {
    write_waiting(stream, line.into_bytes(), Kind::Line).await;
}

/// Output of a child of the master's (a worker's line, a piece of the build's output): waits for
/// room while the stream is only slow, dropped and counted once it is stalled.
async fn write_waiting(stream: Stream, mut line: Vec<u8>, kind: Kind) {
    if QUEUED.load(Ordering::Acquire) == 0 {
        stream.write_now(&line, kind);
        return;
    }
    let writer = stream.writer();
    loop {
        let room = writer.room.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        match writer.try_push(line, kind, QUEUE_BYTES) {
            Ok(()) => return,
            Err(Full(back)) => line = back,
        }
        // The stream may stall meanwhile: nothing would make room then.
        let _ = tokio::time::timeout(STALLED, room).await;
    }
}

/// A piece of the build's stderr for the master's stderr, as it comes (not cut into lines, to
/// keep cargo's colours and progress bar), from a task on the I/O loop: waits for room while
/// stderr is only slow (the build then waits on its pipe), dropped and counted once stderr is
/// stalled.
pub(crate) async fn build_output(piece: Vec<u8>) {
    write_waiting(Stream::Stderr, piece, Kind::Piece).await;
}

/// Output given back: no room for it, and the stream is not stalled.
struct Full(Vec<u8>);

/// While alive, the master's lines go through the bounded queues (see the module's doc);
/// dropping it waits a little ([`FLUSH_WAIT`]) for them to be written, then lines are written
/// at once again (unless another master of this process runs).
pub(crate) struct Queued(());

impl Queued {
    pub(crate) fn start() -> Self {
        QUEUED.fetch_add(1, Ordering::AcqRel);
        Self(())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        STDERR.flush(deadline);
        STDOUT.flush(deadline);
        QUEUED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What waits for a stream: lines, and in place of the lines dropped there, how many.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Line(Vec<u8>, Kind),
    Dropped(u64),
}

/// A stream's queue: lines, and the counts of lines dropped between them.
#[derive(Debug)]
struct Queue {
    entries: VecDeque<Entry>,
    /// The bytes of the lines in `entries`.
    bytes: usize,
    /// An entry is being written.
    writing: bool,
    /// Since when the entry being written is.
    writing_since: Option<Instant>,
    thread: Thread,
}

/// A stream's writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Thread {
    NotStarted,
    Running,
    /// It could not start: lines are written at once, as outside a run.
    Failed,
}

impl Queue {
    const fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            writing: false,
            writing_since: None,
            thread: Thread::NotStarted,
        }
    }

    /// Whether a line of `len` bytes fits within `limit` bytes. A line alone always fits: a
    /// stream that takes writes loses nothing.
    fn fits(&self, len: usize, limit: usize) -> bool {
        self.entries.is_empty() || self.bytes + len <= limit
    }

    fn push(&mut self, line: Vec<u8>, kind: Kind) {
        self.bytes += line.len();
        self.entries.push_back(Entry::Line(line, kind));
    }

    /// Counts the lines of `output` dropped (one at least), in the place they would have had.
    fn drop_lines(&mut self, output: &[u8]) {
        let lines = output
            .iter()
            .fold(0, |lines, &byte| lines + usize::from(byte == b'\n'))
            .max(1);
        let lines = u64::try_from(lines).unwrap_or(u64::MAX);
        match self.entries.back_mut() {
            Some(Entry::Dropped(count)) => *count = count.saturating_add(lines),
            _ => self.entries.push_back(Entry::Dropped(lines)),
        }
    }

    /// Whether the stream has taken [`STALLED`] for one write already.
    fn stalled(&self, now: Instant) -> bool {
        self.writing_since
            .is_some_and(|since| now.saturating_duration_since(since) >= STALLED)
    }

    fn pop(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        if let Entry::Line(line, _) = &entry {
            self.bytes -= line.len();
        }
        Some(entry)
    }
}

/// One of the master's streams: its queue and the thread that writes it.
struct Writer {
    stream: Stream,
    queue: Mutex<Queue>,
    /// Signalled when an entry is queued, and when the queue is written out.
    changed: Condvar,
    /// Notified when an entry was taken off the queue.
    room: tokio::sync::Notify,
}

impl Writer {
    const fn new(stream: Stream) -> Self {
        Self {
            stream,
            queue: Mutex::new(Queue::new()),
            changed: Condvar::new(),
            room: tokio::sync::Notify::const_new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line` if it fits within `limit` bytes. When it does not: dropped and counted if
    /// the stream is stalled, else given back.
    fn try_push(&'static self, line: Vec<u8>, kind: Kind, limit: usize) -> Result<(), Full> {
        let mut queue = self.lock();
        if queue.thread == Thread::NotStarted {
            let spawned = std::thread::Builder::new()
                .name(format!("mcluster-{}", self.stream.name()))
                .spawn(move || self.write_forever());
            queue.thread = if spawned.is_ok() {
                Thread::Running
            } else {
                Thread::Failed
            };
        }
        if queue.thread == Thread::Failed {
            // No thread to write: the old way, at once.
            drop(queue);
            self.stream.write_now(&line, kind);
            return Ok(());
        }
        if queue.fits(line.len(), limit) {
            queue.push(line, kind);
        } else if queue.stalled(Instant::now()) {
            queue.drop_lines(&line);
            return Ok(());
        } else {
            return Err(Full(line));
        }
        drop(queue);
        self.changed.notify_all();
        Ok(())
    }

    fn drop_lines(&self, output: &[u8]) {
        self.lock().drop_lines(output);
        self.changed.notify_all();
    }

    fn write_forever(&self) {
        let mut queue = self.lock();
        loop {
            let Some(entry) = queue.pop() else {
                queue.writing = false;
                queue.writing_since = None;
                self.changed.notify_all();
                queue = self
                    .changed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            queue.writing = true;
            queue.writing_since = Some(Instant::now());
            drop(queue);
            self.room.notify_waiters();
            self.changed.notify_all();
            match entry {
                Entry::Line(line, kind) => self.stream.write_now(&line, kind),
                // The writer's own words, not the reporter's: its accounting of the stream it
                // writes, written here because the queue that `master_line` goes through is
                // the one that had no room.
                Entry::Dropped(count) => self.stream.write_now(
                    format!(
                        "{} {} dropped: {} did not keep up\n",
                        master_prefix(),
                        count_lines(count),
                        self.stream.name()
                    )
                    .as_bytes(),
                    Kind::Line,
                ),
            }
            queue = self.lock();
        }
    }

    /// Waits until everything queued is written, or `deadline`.
    fn flush(&self, deadline: Instant) {
        let mut queue = self.lock();
        while queue.thread == Thread::Running && (queue.writing || !queue.entries.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            queue = self
                .changed
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// `1 line` or `1,234 lines`.
fn count_lines(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{grouped} line{}", if count == 1 { "" } else { "s" })
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

/// The tasks reading a worker's pipes, as a count of those still reading. Cloned to wait for
/// them elsewhere (a failure report waits on a task of its own).
#[derive(Clone, Default)]
pub(crate) struct Readers(Option<tokio::sync::watch::Receiver<usize>>);

impl Readers {
    /// Resolves when every reader has seen the end of its pipe, or at `deadline` (a
    /// grandchild of a worker may hold its pipe open forever: its reader goes on, detached).
    /// Awaited on the loop, never blocking it: the readers run there.
    pub(crate) async fn wait(&self, deadline: Instant) {
        let Some(left) = &self.0 else {
            return;
        };
        let mut left = left.clone();
        let _ = tokio::time::timeout_at(deadline.into(), left.wait_for(|left| *left == 0)).await;
    }
}

/// Held by a reader task: its end (however it ends, an abort too) counts in [`Readers`].
struct Reading(tokio::sync::watch::Sender<usize>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.send_modify(|left| *left = left.saturating_sub(1));
    }
}

impl WorkerOutput {
    /// Opens the pipes and starts a reader task per pipe on the I/O loop, or opens `/dev/null`
    /// when `silent`. Returns the worker's stderr tail and the readers too.
    pub(crate) fn start(
        silent: bool,
        slot: usize,
        generation: u64,
    ) -> io::Result<(Self, Tail, Readers)> {
        if silent {
            let devnull = OpenOptions::new().write(true).open("/dev/null")?;
            let tail = Arc::new(Mutex::new(VecDeque::from([SILENCED.to_owned()])));
            return Ok((Self::Discarded(devnull), tail, Readers::default()));
        }
        let (stdout_read, stdout) = pipe()?;
        let (stderr_read, stderr) = pipe()?;
        let tail = Tail::default();
        let handle = IoLoop::handle()?;
        let (stdout_read, stderr_read) = (
            loop_pipe(&handle, stdout_read)?,
            loop_pipe(&handle, stderr_read)?,
        );
        let (left, readers) = tokio::sync::watch::channel(2);
        let stdout_reading = Reading(left.clone());
        let stderr_reading = Reading(left);
        let stdout_sink = Sink::new(slot, generation, Stream::Stdout, None);
        let stderr_sink = Sink::new(slot, generation, Stream::Stderr, Some(Arc::clone(&tail)));
        handle.spawn(async move {
            let _reading = stdout_reading;
            forward_lines(stdout_read, stdout_sink).await;
        });
        handle.spawn(async move {
            let _reading = stderr_reading;
            forward_lines(stderr_read, stderr_sink).await;
        });
        Ok((Self::Piped { stdout, stderr }, tail, Readers(Some(readers))))
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

/// Where a worker's lines go: one of the master's streams, prefixed, and its stderr tail.
struct Sink {
    prefix: String,
    stream: Stream,
    tail: Option<Tail>,
}

impl Sink {
    fn new(slot: usize, generation: u64, stream: Stream, tail: Option<Tail>) -> Self {
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
        Self {
            prefix: style.apply_to(prefix(slot, generation)).to_string(),
            stream,
            tail,
        }
    }

    /// Keeps the line in the tail, and gives it back as written to the stream.
    fn line(&self, text: &str, cut: bool) -> String {
        let marker = if cut { CUT_MARKER } else { "" };
        if let Some(tail) = &self.tail
            && let Ok(mut tail) = tail.lock()
        {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(capped(text, TAIL_LINE_CAP, marker));
        }
        format!("{} {text}{marker}\n", self.prefix)
    }
}

/// Copies `pipe` line by line to the sink, until its end (or a read error).
async fn forward_lines(pipe: tokio::net::unix::pipe::Receiver, sink: Sink) {
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut lines = Lines::new(LINE_CAP);
    // The lines of one chunk, written before the next chunk is read.
    let mut ready = Vec::new();
    while let Some(read) = read_chunk(&pipe, &mut buffer).await {
        lines.push(&buffer[..read], &mut |text, cut| {
            ready.push(sink.line(text, cut));
        });
        for line in ready.drain(..) {
            write_worker_line(sink.stream, line).await;
        }
    }
    lines.finish(&mut |text, cut| ready.push(sink.line(text, cut)));
    for line in ready {
        write_worker_line(sink.stream, line).await;
    }
}

/// The read end of a pipe (the master's side of a child's output), made non-blocking and
/// registered with the I/O loop behind `handle`, to be read by [`read_chunk`] in a task there.
pub(crate) fn loop_pipe(
    handle: &tokio::runtime::Handle,
    read_end: OwnedFd,
) -> io::Result<tokio::net::unix::pipe::Receiver> {
    let _entered = handle.enter();
    tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)
}

/// Reads what `pipe` holds into `buffer`, waiting on the loop (never blocking it) until it
/// holds something: how many bytes came, or `None` at its end or on a read error.
pub(crate) async fn read_chunk(
    pipe: &tokio::net::unix::pipe::Receiver,
    buffer: &mut [u8],
) -> Option<usize> {
    loop {
        pipe.readable().await.ok()?;
        match pipe.try_read(buffer) {
            Ok(0) => return None,
            Ok(read) => return Some(read),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return None,
        }
    }
}

/// `text` and `marker`, or at most `cap` bytes of `text` and [`CUT_MARKER`].
fn capped(text: &str, cap: usize, marker: &str) -> String {
    if text.len() <= cap {
        return format!("{text}{marker}");
    }
    format!("{}{CUT_MARKER}", &text[..text.floor_char_boundary(cap)])
}

/// Splits bytes into lines, as they come: [`push`](Lines::push) calls `each(text, cut)` for
/// every line, without its `\n` or `\r\n`, invalid UTF-8 replaced. A line longer than `cap`
/// bytes comes in pieces of at most `cap` bytes, cut between characters, each but the last with
/// `cut` set. Memory stays bounded by `cap`, whatever comes.
pub(crate) struct Lines {
    cap: usize,
    line: Vec<u8>,
}

impl Lines {
    pub(crate) fn new(cap: usize) -> Self {
        // Room for a whole line of `cap` bytes with its `\r\n`, so that it is not taken for a
        // longer one.
        Self {
            cap,
            line: Vec::with_capacity(cap + 2),
        }
    }

    pub(crate) fn push(&mut self, mut bytes: &[u8], each: &mut impl FnMut(&str, bool)) {
        let room = self.cap + 2;
        while !bytes.is_empty() {
            let take = (room - self.line.len()).min(bytes.len());
            if let Some(newline) = bytes[..take].iter().position(|&byte| byte == b'\n') {
                self.line.extend_from_slice(&bytes[..newline]);
                bytes = &bytes[newline + 1..];
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                emit_pieces(&mut self.line, self.cap, each);
                each(&String::from_utf8_lossy(&self.line), false);
                self.line.clear();
            } else {
                self.line.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.line.len() == room {
                    emit_pieces(&mut self.line, self.cap, each);
                }
            }
        }
    }

    /// The end: the last line had no newline.
    pub(crate) fn finish(&mut self, each: &mut impl FnMut(&str, bool)) {
        emit_pieces(&mut self.line, self.cap, each);
        if !self.line.is_empty() {
            each(&String::from_utf8_lossy(&self.line), false);
        }
        self.line.clear();
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
    use std::io::Read;

    /// Reads `input` to its end in chunks of 5 bytes through [`Lines`].
    fn for_each_line(mut input: impl Read, cap: usize, mut each: impl FnMut(&str, bool)) {
        let mut lines = Lines::new(cap);
        let mut chunk = [0u8; 5];
        loop {
            let read = input.read(&mut chunk).unwrap();
            if read == 0 {
                break;
            }
            lines.push(&chunk[..read], &mut each);
        }
        lines.finish(&mut each);
    }

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
    fn a_line_that_does_not_fit_is_dropped_and_counted_in_its_place() {
        let mut queue = Queue::new();
        queue.push(b"12345678".to_vec(), Kind::Line);
        assert!(!queue.fits(3, 10));
        queue.drop_lines(b"abc\n");
        queue.drop_lines(b"d\ne\nf\n");
        assert!(queue.fits(2, 10));
        queue.push(b"xy".to_vec(), Kind::Piece);
        // A piece of output without a newline counts as a line.
        queue.drop_lines(b"progress");
        assert_eq!(
            queue.pop(),
            Some(Entry::Line(b"12345678".to_vec(), Kind::Line))
        );
        assert_eq!(queue.pop(), Some(Entry::Dropped(4)));
        assert_eq!(queue.pop(), Some(Entry::Line(b"xy".to_vec(), Kind::Piece)));
        assert_eq!(queue.pop(), Some(Entry::Dropped(1)));
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.bytes, 0);
        // Alone, a line longer than the queue still goes.
        assert!(queue.fits(13, 10));
    }

    #[test]
    fn a_line_after_an_unfinished_one_starts_on_a_line_of_its_own() {
        let column = Column::new();
        let never = || panic!("asked whether the stream is a terminal");
        assert_eq!(column.before_line(never), b"");
        column.wrote(b"   Compiling app v0.1.0\n");
        assert_eq!(column.before_line(never), b"");
        // Cargo's progress bar: drawn, then the cursor back at its start.
        column.wrote(b"    Building [=====>     ] 12/40: serde\r");
        assert_eq!(
            column.before_line(|| true),
            b"\r\x1b[K",
            "erased on a terminal"
        );
        assert_eq!(column.before_line(|| false), b"\n", "kept elsewhere");
        // Nothing written changes nothing.
        column.wrote(b"");
        assert_eq!(column.before_line(|| false), b"\n");
        // A build killed mid-line.
        column.wrote(b"   Compil");
        assert_eq!(column.before_line(|| true), b"\n");
        column.wrote(b"ing app\n");
        assert_eq!(column.before_line(never), b"");
    }

    #[test]
    fn a_stream_is_stalled_after_one_long_write() {
        let mut queue = Queue::new();
        let start = Instant::now();
        assert!(!queue.stalled(start + STALLED));
        queue.writing_since = Some(start);
        assert!(!queue.stalled(start + STALLED / 2));
        assert!(queue.stalled(start + STALLED));
    }

    #[test]
    fn dropped_lines_are_counted_with_separators() {
        assert_eq!(count_lines(1), "1 line");
        assert_eq!(count_lines(999), "999 lines");
        assert_eq!(count_lines(1_234), "1,234 lines");
        assert_eq!(count_lines(1_234_567), "1,234,567 lines");
    }

    #[test]
    fn a_kept_tail_line_is_capped() {
        assert_eq!(capped("short", 8, ""), "short");
        assert_eq!(capped("short", 8, CUT_MARKER), "short…[cut]");
        assert_eq!(capped("1234567890", 8, ""), "12345678…[cut]");
        assert_eq!(capped("1234567é", 8, ""), "1234567…[cut]");
    }
}

//! The message channel between the master and each worker: JSON values, both ways.
//!
//! # Protocol
//!
//! Each worker gets one end of its own Unix stream socket pair (`AF_UNIX`, `SOCK_STREAM`); the
//! master keeps the other. The worker's end is at the fd named by `MCLUSTER_CHANNEL_FD` (the
//! first fd after the listeners, `3 + LISTEN_FDS`), also named by `NODE_CHANNEL_FD` with
//! `NODE_CHANNEL_SERIALIZATION_MODE=json`, so that a Node program's `process.send()` and
//! `process.on('message')` use it unmodified.
//!
//! - A message is one JSON value (any: object, array, string, number…) on one line: UTF-8,
//!   without a raw newline inside (JSON escapes them in strings), ending in `\n`. Both ways.
//!   Blank lines are ignored.
//! - A line longer than [`MAX_LINE`] bytes is dropped, read but not kept, and so is a line that
//!   is not JSON; the master counts them in one line of its own per turn.
//! - Node's internal messages (objects whose `cmd` is a string starting with `NODE_`) are not
//!   messages for the master: they are ignored, except `NODE_HANDLE` (a `process.send(message,
//!   handle)`): handles are not taken (the socket's ancillary data is discarded, which closes
//!   the fds), so it is answered `{"cmd":"NODE_HANDLE_NACK"}`, after which Node retries a few
//!   times, warns, and goes on with its next message. Node sends nothing when it opens the
//!   channel, and the master sends nothing but the messages it is asked to.
//! - A worker that closes its end (or never uses it) is fine: messages to it fail, as below.
//!
//! # Bounds
//!
//! Both directions are served on the master's I/O loop ([`IoLoop`]), one reading and one
//! writing task per worker, never a thread.
//!
//! - **From a worker**: at most [`MESSAGES_KEPT`] messages wait for the driver (plus what one
//!   read of [`READ_CHUNK`] bytes holds); then the reader stops reading until the driver takes
//!   them. A worker that sends faster than the master handles its messages fills the socket's
//!   kernel buffer and its writes wait (Node's `process.send` queues in the worker): no message
//!   is lost for speed, and the master's memory stays bounded. A line being read is at most
//!   [`MAX_LINE`] bytes; the rest of a longer one is skipped as it arrives. The driver is woken
//!   with one [`Input::Channel`] per worker at most until it takes the messages, and takes them
//!   all in one turn.
//! - **To a worker**: a queue of [`SEND_QUEUE_BYTES`] bytes (one message is queued whenever
//!   less is waiting, so a message of up to [`MAX_LINE`] bytes always fits an empty queue),
//!   written as the worker reads. A message to a worker whose queue is full, or whose channel
//!   is closed, fails at once with the reason; the master never waits for a worker to read.
//!
//! # Inheritance
//!
//! The master's end is close-on-exec. The worker's end is placed at its fd by the spawn
//! without close-on-exec, as it must be to reach the worker's program. What the worker does
//! with it is the worker's: `mcluster::worker::channel()` marks it close-on-exec when it takes
//! it, so a Rust worker's children never hold it; Node takes the fd at startup and removes
//! `NODE_CHANNEL_FD` from its environment, so a child of a Node worker does not open it. A
//! wrapper such as `npm start` is a Node process itself: the channel is npm's, not the app's
//! that npm starts (the app gets no `NODE_CHANNEL_FD`), so run `node server.js` directly for
//! `process.send` to reach the master, as under PM2.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::socket::{MsgFlags, send};
use serde_json::Value;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::cluster::WorkerKey;
use crate::handle::{Input, ToDriver};
use crate::http::IoLoop;

/// The longest line (message) read or sent, in bytes, its newline excluded: the worker side's.
pub(crate) const MAX_LINE: usize = crate::worker::CHANNEL_MAX_LINE;

/// How many messages of one worker wait for the driver before its channel is read on.
pub(crate) const MESSAGES_KEPT: usize = 64;

/// How many bytes may wait to be written to one worker before a message to it fails.
pub(crate) const SEND_QUEUE_BYTES: usize = 256 * 1024;

/// A worker gone is an error of the write, never a SIGPIPE for an embedder that did not ignore
/// it (the `mcluster` binary ignores it, as every Rust program does). macOS has no
/// `MSG_NOSIGNAL`: there, an embedder must ignore SIGPIPE itself.
#[cfg(not(target_vendor = "apple"))]
const NO_SIGPIPE: MsgFlags = MsgFlags::MSG_NOSIGNAL;
#[cfg(target_vendor = "apple")]
const NO_SIGPIPE: MsgFlags = MsgFlags::empty();

/// How much one read takes from a worker's socket.
const READ_CHUNK: usize = 16 * 1024;

/// Why a message could not be queued for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// More than [`SEND_QUEUE_BYTES`] wait already: the worker does not read.
    Full,
    /// The worker closed its end, or writing to it failed.
    Closed(String),
    /// The message is longer than [`MAX_LINE`] bytes.
    TooLong(usize),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full => write!(
                f,
                "its channel is full ({SEND_QUEUE_BYTES} bytes wait: it does not read them)"
            ),
            Self::Closed(why) => write!(f, "its channel is closed ({why})"),
            Self::TooLong(len) => write!(
                f,
                "the message is {len} bytes, more than the {MAX_LINE} a line may have"
            ),
        }
    }
}

/// The messages of a worker taken by the driver.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// In the order sent.
    pub(crate) messages: Vec<Value>,
    /// Lines dropped for their length since the last take.
    pub(crate) too_long: u64,
    /// Lines dropped for not being JSON since the last take.
    pub(crate) invalid: u64,
}

/// What the reader keeps for the driver.
#[derive(Debug, Default)]
struct Incoming {
    messages: VecDeque<Value>,
    too_long: u64,
    invalid: u64,
    /// An [`Input::Channel`] waits in the inbox.
    woken: bool,
}

/// What waits to be written.
#[derive(Debug, Default)]
struct Outgoing {
    lines: VecDeque<Vec<u8>>,
    /// The bytes of `lines`, the one being written included.
    bytes: usize,
    /// Why nothing more can be written.
    closed: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    incoming: Mutex<Incoming>,
    /// The driver took the messages: the reader may read on.
    taken: Notify,
    outgoing: Mutex<Outgoing>,
    /// A line was queued.
    queued: Notify,
}

impl Shared {
    fn incoming(&self) -> MutexGuard<'_, Incoming> {
        self.incoming.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn outgoing(&self) -> MutexGuard<'_, Outgoing> {
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line` (newline included) unless the queue is full or closed.
    fn queue(&self, line: Vec<u8>) -> Result<(), SendError> {
        let mut outgoing = self.outgoing();
        if let Some(why) = &outgoing.closed {
            return Err(SendError::Closed(why.clone()));
        }
        if outgoing.bytes >= SEND_QUEUE_BYTES {
            return Err(SendError::Full);
        }
        outgoing.bytes += line.len();
        outgoing.lines.push_back(line);
        drop(outgoing);
        self.queued.notify_one();
        Ok(())
    }
}

/// The master's end of a worker's channel; its tasks end when it is dropped.
#[derive(Debug)]
pub(crate) struct WorkerChannel {
    shared: Arc<Shared>,
    reader: AbortHandle,
    writer: AbortHandle,
}

impl WorkerChannel {
    /// Makes the socket pair and starts the tasks serving the master's end; returns the
    /// worker's end, to be passed to the worker (and closed here once it is).
    pub(crate) fn open(key: WorkerKey, events: ToDriver) -> io::Result<(Self, OwnedFd)> {
        let (ours, theirs) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let handle = IoLoop::handle()?;
        let stream = {
            let _entered = handle.enter();
            Arc::new(UnixStream::from_std(ours)?)
        };
        let shared = Arc::new(Shared::default());
        let reader = handle.spawn(read_messages(
            Arc::clone(&stream),
            key,
            Arc::clone(&shared),
            events,
        ));
        let writer = handle.spawn(write_messages(stream, Arc::clone(&shared)));
        Ok((
            Self {
                shared,
                reader: reader.abort_handle(),
                writer: writer.abort_handle(),
            },
            theirs.into(),
        ))
    }

    /// Takes the messages waiting; the reader reads on.
    pub(crate) fn take(&self) -> Taken {
        let mut incoming = self.shared.incoming();
        let taken = Taken {
            messages: incoming.messages.drain(..).collect(),
            too_long: std::mem::take(&mut incoming.too_long),
            invalid: std::mem::take(&mut incoming.invalid),
        };
        incoming.woken = false;
        drop(incoming);
        self.shared.taken.notify_one();
        taken
    }

    /// Queues `message` for the worker; never waits.
    pub(crate) fn send(&self, message: &Value) -> Result<(), SendError> {
        let mut line = serde_json::to_vec(message).map_err(|e| SendError::Closed(e.to_string()))?;
        if line.len() > MAX_LINE {
            return Err(SendError::TooLong(line.len()));
        }
        line.push(b'\n');
        self.shared.queue(line)
    }
}

impl Drop for WorkerChannel {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// What one line from a worker is.
#[derive(Debug, PartialEq)]
enum Line {
    Blank,
    Message(Value),
    /// Node's own (`NODE_…`), ignored.
    NodeInternal,
    /// Node's `NODE_HANDLE`: answered with a NACK.
    NodeHandle,
    Invalid,
}

fn classify(line: &[u8]) -> Line {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return Line::Invalid;
    };
    match value.get("cmd").and_then(Value::as_str) {
        Some("NODE_HANDLE") => Line::NodeHandle,
        Some(cmd) if cmd.starts_with("NODE_") => Line::NodeInternal,
        _ => Line::Message(value),
    }
}

/// Splits what is read into lines, at most [`MAX_LINE`] bytes kept of one.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
    /// The line being read is too long: skipped up to its newline.
    skipping: bool,
}

impl Lines {
    /// Feeds `bytes`; calls `line` with every complete line, `Err(())` for one too long.
    fn feed(&mut self, mut bytes: &[u8], mut line: impl FnMut(Result<&[u8], ()>)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let piece = &bytes[..end.unwrap_or(bytes.len())];
            if !self.skipping {
                if self.partial.len() + piece.len() > MAX_LINE {
                    self.skipping = true;
                    self.partial = Vec::new();
                    line(Err(()));
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            let Some(end) = end else {
                break;
            };
            if !self.skipping {
                line(Ok(&self.partial));
            }
            self.partial.clear();
            self.skipping = false;
            bytes = &bytes[end + 1..];
        }
    }
}

/// Reads a worker's messages until its end closes (see the module's doc for the bounds).
async fn read_messages(
    stream: Arc<UnixStream>,
    key: WorkerKey,
    shared: Arc<Shared>,
    events: ToDriver,
) {
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut lines = Lines::default();
    loop {
        while shared.incoming().messages.len() >= MESSAGES_KEPT {
            shared.taken.notified().await;
        }
        if stream.readable().await.is_err() {
            return;
        }
        let read = match stream.try_read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        let mut incoming = shared.incoming();
        let mut nack = false;
        lines.feed(&buffer[..read], |line| match line.map(classify) {
            Err(()) => incoming.too_long += 1,
            Ok(Line::Invalid) => incoming.invalid += 1,
            Ok(Line::Message(value)) => incoming.messages.push_back(value),
            Ok(Line::NodeHandle) => nack = true,
            Ok(Line::Blank | Line::NodeInternal) => {}
        });
        let pending = !incoming.messages.is_empty() || incoming.too_long + incoming.invalid > 0;
        let wake = pending && !incoming.woken;
        if wake {
            incoming.woken = true;
        }
        drop(incoming);
        if nack {
            // A full queue: the worker does not read, it will not see the NACK either.
            let _ = shared.queue(b"{\"cmd\":\"NODE_HANDLE_NACK\"}\n".to_vec());
        }
        if wake && events.send(Input::Channel { key }).is_err() {
            // The driver is gone.
            return;
        }
    }
}

/// Writes the queued lines as the worker takes them; on a write error, closes the queue.
async fn write_messages(stream: Arc<UnixStream>, shared: Arc<Shared>) {
    loop {
        let line = loop {
            if let Some(line) = shared.outgoing().lines.pop_front() {
                break line;
            }
            shared.queued.notified().await;
        };
        let mut written = 0;
        while written < line.len() {
            let sent = match stream.writable().await {
                Ok(()) => stream.try_io(Interest::WRITABLE, || {
                    send(stream.as_raw_fd(), &line[written..], NO_SIGPIPE).map_err(io::Error::from)
                }),
                Err(e) => Err(e),
            };
            match sent {
                Ok(sent) => written += sent,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    let mut outgoing = shared.outgoing();
                    outgoing.closed = Some(e.to_string());
                    outgoing.lines.clear();
                    outgoing.bytes = 0;
                    return;
                }
            }
        }
        let mut outgoing = shared.outgoing();
        outgoing.bytes = outgoing.bytes.saturating_sub(line.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines_of(chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ()>> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.feed(chunk, |line| out.push(line.map(<[u8]>::to_vec)));
        }
        out
    }

    #[test]
    fn lines_are_split_across_reads_and_a_long_one_is_skipped_whole() {
        assert_eq!(
            lines_of(&[b"{\"a\":", b"1}\n2\n", b"3"]),
            vec![Ok(b"{\"a\":1}".to_vec()), Ok(b"2".to_vec())]
        );
        let long = vec![b'x'; MAX_LINE];
        let out = lines_of(&[b"\"", &long, b"\"\n", b"4\n"]);
        assert_eq!(out, vec![Err(()), Ok(b"4".to_vec())]);
        // Exactly MAX_LINE bytes is kept.
        let fits = vec![b'7'; MAX_LINE];
        assert_eq!(lines_of(&[&fits, b"\n"]), vec![Ok(fits.clone())]);
    }

    #[test]
    fn node_s_internal_messages_are_not_the_master_s() {
        assert_eq!(
            classify(br#"{"hello":1}"#),
            Line::Message(json!({"hello": 1}))
        );
        assert_eq!(
            classify(br#"{"cmd":"hi"}"#),
            Line::Message(json!({"cmd": "hi"}))
        );
        assert_eq!(classify(br#"{"cmd":"NODE_CLUSTER"}"#), Line::NodeInternal);
        assert_eq!(
            classify(br#"{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{}}"#),
            Line::NodeHandle
        );
        assert_eq!(classify(b"  "), Line::Blank);
        assert_eq!(classify(b"{nope"), Line::Invalid);
    }

    /// Waits for `condition` (the reader and writer run on the I/O loop's thread).
    #[track_caller]
    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// A worker that sends faster than the driver takes its messages waits for the driver:
    /// its writes block once [`MESSAGES_KEPT`] messages (and one read) wait and the kernel's
    /// buffers are full, and go on once the driver took them.
    #[test]
    fn a_worker_sending_faster_than_the_driver_takes_is_held_back() {
        use std::io::Write as _;
        let (events, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        let (channel, theirs) = WorkerChannel::open(WorkerKey(3), events).unwrap();
        let theirs = StdUnixStream::from(theirs);
        theirs.set_nonblocking(true).unwrap();
        let line = format!("{}\n", json!({"pad": "x".repeat(100)}));
        // Unbounded, the reader would take all 64 MiB.
        let budget = 64 * 1024 * 1024;
        let mut written = 0;
        while written < budget {
            match (&theirs).write(line.as_bytes()) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Full, and the reader holds what it may: it has stopped reading.
                    if channel.shared.incoming().messages.len() >= MESSAGES_KEPT {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(written < budget, "the reader never stopped reading");
        let kept = channel.shared.incoming().messages.len();
        assert!(
            (MESSAGES_KEPT..=MESSAGES_KEPT + READ_CHUNK / line.len() + 1).contains(&kept),
            "{kept} kept"
        );
        // The reader sends the wake-up after it lets go of the messages, which this thread may
        // see first.
        let mut woken = None;
        wait_for("the driver woken", || {
            woken = inbox.try_recv().ok();
            woken.is_some()
        });
        assert!(matches!(woken, Some(Input::Channel { key: WorkerKey(3) })));
        assert!(inbox.try_recv().is_err(), "woken twice before a take");
        // The driver takes them: the reader reads on, and the worker can write again.
        let taken = channel.take();
        assert_eq!(taken.messages.len(), kept);
        assert_eq!(taken.messages[0], json!({"pad": "x".repeat(100)}));
        wait_for("the reader reading on", || {
            !channel.shared.incoming().messages.is_empty()
        });
    }

    /// What the master sends reaches the worker's end, in order; a worker that closed its end
    /// makes the next sends fail with why.
    #[test]
    fn messages_reach_the_worker_and_a_closed_end_is_an_error() {
        use std::io::BufRead as _;
        let (events, _inbox) = tokio::sync::mpsc::unbounded_channel();
        let (channel, theirs) = WorkerChannel::open(WorkerKey(4), events).unwrap();
        let theirs = StdUnixStream::from(theirs);
        channel.send(&json!({"a": 1})).unwrap();
        channel.send(&json!("two\nlines")).unwrap();
        let mut reader = std::io::BufReader::new(&theirs);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"a\":1}\n");
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "\"two\\nlines\"\n");
        drop(reader);
        drop(theirs);
        wait_for("a send to a closed end failing", || {
            matches!(channel.send(&json!(3)), Err(SendError::Closed(_)))
        });
        assert_eq!(
            channel.send(&json!("x".repeat(MAX_LINE))),
            Err(SendError::TooLong(MAX_LINE + 2))
        );
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_says_why() {
        let shared = Shared::default();
        let line = vec![b'1'; 4096];
        let mut queued = 0;
        while shared.queue(line.clone()).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, SEND_QUEUE_BYTES / 4096);
        assert_eq!(shared.queue(line.clone()), Err(SendError::Full));
        shared.outgoing().closed = Some("Broken pipe".to_owned());
        assert_eq!(
            shared.queue(line),
            Err(SendError::Closed("Broken pipe".to_owned()))
        );
    }
}

//! The control socket: how `mcluster status`, `restart`, `resize`, `stop`, `send` and `events` reach a
//! running master.
//!
//! # Where it is
//!
//! `--control PATH` (or `MCLUSTER_CONTROL`) names it. Without, it is found from the working
//! directory, so that the commands run where the master was started reach it:
//! `$XDG_RUNTIME_DIR/mcluster/<hash>.sock`, or `/tmp/mcluster-<uid>/<hash>.sock` without
//! `XDG_RUNTIME_DIR`, where `<hash>` is 16 hex digits of the FNV-1a hash of the canonical working
//! directory. One directory maps to one path; the path is short enough for a socket address
//! whatever the working directory is; and the directory holding it is the user's own: made with
//! mode 0700, and refused, by master and client alike, unless it is a real directory (not a
//! symlink) owned by our uid that no one else may enter. The socket file itself is mode 0600, and
//! the master answers only clients of its own uid or root (`SO_PEERCRED`). The master removes
//! the socket when it exits, and the directory too if that leaves it empty.
//!
//! A socket file at the path that nobody accepts on (a master killed by SIGKILL) is replaced. If
//! a master answers on it, the second master refuses to start, naming the first one's pid.
//!
//! # Protocol
//!
//! A client connects, writes one request — a JSON object on one line, ending in `\n` — and reads
//! replies, one JSON object per line, until the master closes the connection. Every reply has
//! `"ok"`: `true`, or `false` with the reason in `"error"` (then the connection ends).
//!
//! | request | replies |
//! | --- | --- |
//! | `{"command":"status"}` | `{"ok":true,"status":{…}}`: [`Status`](crate::status::Status) |
//! | `{"command":"restart"}` | when the roll has ended, `{"ok":true,"restart":{"outcome":"rolled"…}}`: [`RestartOutcome`](crate::status::RestartOutcome) (`rolled`, `aborted` or `refused`) |
//! | `{"command":"resize","size":N}` | once every slot of size N has a ready worker, `{"ok":true,"resize":{"outcome":"resized","size":N}}`; `{"ok":true,"resize":{"outcome":"superseded","size":M}}` when another size M was asked for first; an error when N is 0 or beyond the master's bound, or the master is stopping. With `"wait":false`, `{"ok":true,"resize":{"outcome":"taken","size":N}}` as soon as the master has taken the size (the same error if it refuses it) |
//! | `{"command":"stop","hard":false}` | `{"ok":true,"stopping":true,"pid":P}`, then `{"ok":true,"stopped":true,"pid":P}` when the master has stopped every worker; the process exits right after |
//! | `{"command":"send","slot":N,"message":V}` | `{"ok":true,"send":{"outcome":"delivered","slots":[N]}}` once V (any JSON value) is queued on the channel of slot N's newest worker ([`channel`](crate::channel)); without `"slot"`, on that of every slot's; an error naming each worker it could not be queued for (no worker in the slot, its channel full or closed); never a wait for a worker to read |
//! | `{"command":"events"}` | `{"ok":true,"following":true,"pid":P}` once subscribed, then one [`Record`](crate::status::Record) per line (`{"event":"worker_ready",…}`) until the master stops |
//!
//! # How the master serves it
//!
//! The socket is served on the master's I/O loop (`crate::http::IoLoop`, one thread
//! shared with the HTTP servers): the listener and every client are tasks on it, never a thread
//! of their own, and a client reaches the supervision loop only through a
//! [`Handle`], so no client can hold that loop up. Every bound:
//!
//! - **Requests.** A connection holds one of [`MAX_REQUESTS`] places from its accept on, while
//!   it sends its request and while it is answered. One beyond them is not refused: it waits
//!   in the listen backlog (no fd of the master's) until a place is free, so a `status` (the
//!   probes in `deploy/`) is always answered, late at worst. The request must arrive within
//!   [`REQUEST_DEADLINE`] and be at most [`MAX_REQUEST`] bytes up to its newline; else one
//!   error line.
//! - **Waiting requests.** A `restart`, a `resize` or a `stop` that waits for the master (the
//!   end of a roll, a ready size, the stop) moves to one of [`MAX_WAITING`] places while it
//!   waits, freeing its request place; when none is free it keeps its request place.
//! - **Followers.** An `events` client moves to one of [`MAX_FOLLOWERS`] places once its
//!   request is read; one more gets one line, `busy: …`, and is closed. Followers never take
//!   the request places, so however many follow, `status`, `restart` and `stop` are answered.
//! - **A follower's queue.** The master hands each record to each follower's queue without
//!   ever waiting: a queue holds [`FOLLOWER_QUEUE`] records, and a follower whose queue is full
//!   (it does not read) is dropped: the records queued are still written, then one last line
//!   `{"ok":false,"error":"dropped: …"}`, and the connection ends. The kernel buffer of a
//!   follower's connection is kept small (16 KiB).
//! - **Writes.** A reply, a record or a last line that the client takes none of for 10 s ends the
//!   connection (a follower that does not read is dropped so, its last line unwritten).
//! - **Answers of the supervision loop** are awaited: the driver, a task on the same loop,
//!   wakes the request's task when it answers (no polling, and never a blocking wait on the
//!   loop).
//! - **Out of fds.** An accept that fails for a reason that is not the client's (no fd left)
//!   waits 100 ms (`crate::http::ACCEPT_BACKOFF`) before the next, as the HTTP
//!   servers do: a socket at the fd limit costs ten accepts a second, not a core.
//! - **The end of a connection.** The master shuts its side for writing and reads and drops
//!   what the client still sends until the client closes (for at most 1 s, at most 1024
//!   connections at once), so that a client refused before its whole request was read gets
//!   its reply, not a reset. Its place is free before the client sees the end.
//! - **Exit.** When the master exits, it stops accepting and gives the connections being
//!   answered at most 1 s for their last replies (`stopped`, the end of the event streams).

use std::fs;
use std::hash::Hasher;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::socket::{Shutdown, shutdown};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::Error;
use crate::handle::Handle;
use crate::http::{ACCEPT_BACKOFF, IoLoop};
use crate::listener::{ListenAddr, ListenKind, Listener, MAX_UNIX_PATH};
use crate::status::{ResizeOutcome, SendOutcome};

/// The longest request line, in bytes.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;

/// How long a client has to send its whole request.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How many connections send a request or are answered at once; more wait in the listen
/// backlog until a place is free.
pub(crate) const MAX_REQUESTS: usize = 64;

/// How many requests that wait for the master (`restart`, `resize`, `stop`) leave their place
/// among the [`MAX_REQUESTS`] while they wait; beyond, they keep it.
pub(crate) const MAX_WAITING: usize = 64;

/// How many clients follow the events at once; one more is refused, with one line.
pub(crate) const MAX_FOLLOWERS: usize = 64;

/// How many records wait for one follower; one more and the follower is dropped.
pub(crate) const FOLLOWER_QUEUE: usize = 256;

/// The kernel's send buffer for a follower's connection, in bytes (the kernel may double it).
const FOLLOWER_SEND_BUFFER: usize = 16 * 1024;

/// How long an exiting master waits for its clients' last replies.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How long a reply, a record or a last line may wait for a client that takes none of it.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a connection ended by the master stays open for what its client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// How many connections linger at once; beyond, they close at once.
const MAX_LINGERING: usize = 1024;

/// A request, as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// A snapshot of the master and its workers.
    Status,
    /// A rolling restart; answered when it has ended.
    Restart,
    /// Run this many workers.
    Resize {
        /// The new number of workers (at least 1).
        size: usize,
        /// Whether the answer waits for the new size to be ready (the default); `false`
        /// answers once the master has taken the size.
        #[serde(default = "yes", skip_serializing_if = "is_yes")]
        wait: bool,
    },
    /// Stop the master; answered again when it has stopped.
    Stop {
        /// SIGKILL every worker instead of the stop signal.
        #[serde(default)]
        hard: bool,
    },
    /// Follow the lifecycle events.
    Events,
    /// A message for the worker of a slot, or of every slot.
    Send {
        /// The slot; without, every slot's worker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<usize>,
        /// The message, any JSON value.
        message: Value,
    },
}

/// The default of a request's `wait`.
fn yes() -> bool {
    true
}

/// Whether `wait` is its default, which is left out of a request.
// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_yes(wait: &bool) -> bool {
    *wait
}

/// The default control socket of the working directory (see the module's doc).
pub(crate) fn default_path() -> Result<PathBuf, Error> {
    let cwd = std::env::current_dir()
        .and_then(fs::canonicalize)
        .map_err(|e| Error::io("cannot read the current directory", e))?;
    let mut hash = Fnv1a::default();
    hash.write(cwd.as_os_str().as_encoded_bytes());
    Ok(default_dir().join(format!("{:016x}.sock", hash.finish())))
}

/// The directory of default control sockets.
fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("mcluster"),
        None => PathBuf::from(format!("/tmp/mcluster-{}", nix::unistd::geteuid())),
    }
}

/// A stable hash (the same in every build of mcluster), unlike std's.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Checks that `dir` is ours alone: a directory, not a symlink, of our uid, mode 0700 or less.
fn check_private_dir(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let uid = nix::unistd::geteuid().as_raw();
    let why = if meta.file_type().is_symlink() {
        "it is a symbolic link".to_owned()
    } else if !meta.is_dir() {
        "it is not a directory".to_owned()
    } else if meta.uid() != uid {
        format!("it belongs to uid {}, not to uid {uid}", meta.uid())
    } else if meta.mode() & 0o077 != 0 {
        format!(
            "its mode is {:04o}: others may enter it",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("unsafe directory {}: {why}", dir.display()),
    ))
}

/// The master's end: the socket and the task accepting on it. Dropping it stops accepting and
/// removes the socket file (and the default directory, if that empties it).
pub(crate) struct ControlServer {
    listener: Option<Listener>,
    stop: watch::Sender<bool>,
    /// Connections being served (lingering ones aside).
    open: Arc<AtomicUsize>,
    path: PathBuf,
}

impl ControlServer {
    /// Makes the control socket at `path` and starts answering on it through `handle`.
    pub(crate) fn start(path: &Path, handle: Handle) -> Result<Self, Error> {
        let shown = path.display();
        if path.as_os_str().len() > MAX_UNIX_PATH {
            return Err(Error::usage(format!(
                "invalid --control {shown}: the path is {} bytes, more than the {MAX_UNIX_PATH} \
                 a unix socket address holds",
                path.as_os_str().len()
            )));
        }
        let context = || format!("cannot make the control socket {shown}");
        let default = path.parent() == Some(default_dir().as_path());
        let mut created = false;
        let listener = bind(path, default, &mut created).inspect_err(|_| {
            if created {
                let _ = fs::remove_dir(path.parent().unwrap_or(path));
            }
        })?;
        let io_loop = IoLoop::handle().map_err(|e| Error::io(context(), e))?;
        let socket = std::os::fd::AsFd::as_fd(&listener)
            .try_clone_to_owned()
            .map(std::os::unix::net::UnixListener::from)
            .and_then(|socket| {
                socket.set_nonblocking(true)?;
                let _entered = io_loop.enter();
                tokio::net::UnixListener::from_std(socket)
            })
            .map_err(|e| Error::io(context(), e))?;
        let (stop, stopping) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            handle,
            requests: Arc::new(Semaphore::new(MAX_REQUESTS)),
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            open: Arc::clone(&open),
            lingering: AtomicUsize::new(0),
        });
        io_loop.spawn(accept_loop(socket, stopping, shared));
        Ok(Self {
            listener: Some(listener),
            stop,
            open,
            path: path.to_owned(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // The last replies (`stopped`, a refused restart, the end of an event stream) are
        // written once the supervision loop has ended: give them a moment before the process
        // exits and takes the loop with it. Only a client still sending its request can make
        // this wait the whole grace.
        let deadline = std::time::Instant::now() + EXIT_GRACE;
        while self.open.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Removes the socket file, if it still is ours.
        drop(self.listener.take());
        if let Some(dir) = self.path.parent()
            && dir == default_dir()
        {
            // Fails, as it should, while another master's socket is in it.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Binds the control socket at `path`, making its directory first if it is the default one
/// (`created` tells whether this call made it).
fn bind(path: &Path, default: bool, created: &mut bool) -> Result<Listener, Error> {
    let shown = path.display();
    let context = || format!("cannot make the control socket {shown}");
    let mut attempts = 0;
    loop {
        attempts += 1;
        if default {
            *created |= make_private_dir(path.parent().unwrap_or(path))
                .map_err(|e| Error::io(context(), e))?;
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if let Some(pid) = answering_master(path) {
                    return Err(Error::io(
                        context(),
                        io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!(
                                "master pid {pid} answers on it (stop it first, or give this \
                                 master another --control PATH)"
                            ),
                        ),
                    ));
                }
            }
            Ok(_) => {
                return Err(Error::usage(format!(
                    "invalid --control {shown}: the path exists and is not a socket"
                )));
            }
            Err(_) => {}
        }
        let addr = ListenAddr {
            name: None,
            kind: ListenKind::Unix {
                path: path.to_owned(),
                mode: 0o600,
            },
        };
        match Listener::bind(&addr) {
            Ok(listener) => return Ok(listener),
            // Another master removed the emptied default directory just now: make it again.
            Err(Error::Io { source, .. })
                if default && source.kind() == io::ErrorKind::NotFound && attempts < 3 => {}
            Err(Error::Io { source, .. }) => return Err(Error::io(context(), source)),
            Err(Error::Usage(message)) => return Err(Error::Usage(message)),
        }
    }
}

/// Makes `dir` (0700) if it is missing, then checks it is ours alone; whether it made it.
fn make_private_dir(dir: &Path) -> io::Result<bool> {
    let created = match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    check_private_dir(dir)?;
    Ok(created)
}

/// The pid of the master answering at `path`, if one does within a second.
fn answering_master(path: &Path) -> Option<u32> {
    let stream = StdUnixStream::connect(path).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    (&stream).write_all(b"{\"command\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(16 * 1024 * 1024)
        .read_line(&mut line)
        .ok()?;
    let reply: Value = serde_json::from_str(&line).ok()?;
    reply
        .pointer("/status/pid")
        .and_then(Value::as_u64)
        .and_then(|pid| u32::try_from(pid).ok())
}

/// What the connections of one control socket share: the way to the master, the places.
struct Shared {
    handle: Handle,
    /// Places of connections sending a request or being answered ([`MAX_REQUESTS`]).
    requests: Arc<Semaphore>,
    /// Places of requests waiting for the master ([`MAX_WAITING`]).
    waiting: Arc<Semaphore>,
    /// Places of `events` followers ([`MAX_FOLLOWERS`]).
    followers: Arc<Semaphore>,
    /// Connections being served, for the exit grace.
    open: Arc<AtomicUsize>,
    /// Connections lingering ([`MAX_LINGERING`] at most).
    lingering: AtomicUsize,
}

/// One connection counted in [`Shared::open`] until it is dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(open))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    mut stopping: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    loop {
        // A place first: a client beyond the places waits in the listen backlog (no fd of
        // ours) until one is free, instead of being refused.
        let place = tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            place = Arc::clone(&shared.requests).acquire_owned() => place,
        };
        let Ok(place) = place else { return };
        let accepted = tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) if crate::http::client_error(&error) => continue,
            // Out of fds (or memory): let a client leave first, without spinning.
            Err(_) => {
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let open = Open::new(&shared.open);
        tokio::spawn(serve(stream, place, Arc::clone(&shared), open));
    }
}

/// Answers one client, then ends its connection.
async fn serve(stream: UnixStream, place: OwnedSemaphorePermit, shared: Arc<Shared>, open: Open) {
    let mut place = place;
    answer(&stream, &mut place, &shared).await;
    // The places are free before the client sees the connection end.
    drop(place);
    drop(open);
    linger(stream, &shared).await;
}

/// Answers the request on `stream`; `place` is the place it holds, moved to another pool when
/// it waits for the master or follows.
async fn answer(stream: &UnixStream, place: &mut OwnedSemaphorePermit, shared: &Shared) {
    if let Err(why) = check_peer(stream) {
        return refuse(stream, &why).await;
    }
    let request = match read_request(stream).await {
        Ok(request) => request,
        Err(why) => return refuse(stream, &why).await,
    };
    let handle = &shared.handle;
    let stopping = "the master is stopping";
    // A request that waits for the master leaves its short place, if another is free.
    let mut wait_elsewhere = || {
        if let Ok(waiting) = Arc::clone(&shared.waiting).try_acquire_owned() {
            *place = waiting;
        }
    };
    match request {
        Request::Status => match answer_of(handle.ask_status()).await {
            Some(status) => {
                let _ = write_reply(stream, "status", &status).await;
            }
            None => refuse(stream, stopping).await,
        },
        Request::Restart => {
            wait_elsewhere();
            let outcome = handle.restart().answer().await.unwrap_or_else(|| {
                crate::status::RestartOutcome::Refused {
                    why: "the master stopped".to_owned(),
                }
            });
            let _ = write_reply(stream, "restart", &outcome).await;
        }
        Request::Resize { size: 0, .. } => {
            refuse(
                stream,
                "invalid size 0: the cluster needs at least one worker",
            )
            .await;
        }
        Request::Resize { size, wait } => {
            let waiter = handle.resize(size);
            let outcome = if wait {
                wait_elsewhere();
                waiter.answer().await
            } else {
                // The driver takes its inputs in order: once it answers a status asked after
                // the resize, it has taken the size, and answered already if it refuses it.
                let taken = answer_of(handle.ask_status()).await.is_some();
                match waiter.wait_timeout(Duration::ZERO) {
                    Ok(outcome) => outcome,
                    Err(_) if taken => {
                        let reply = json!({"outcome": "taken", "size": size});
                        let _ = write_line(stream, &json!({"ok": true, "resize": reply})).await;
                        return;
                    }
                    Err(_) => None,
                }
            };
            match outcome {
                Some(ResizeOutcome::Resized(_)) => {
                    let reply = json!({"outcome": "resized", "size": size});
                    let _ = write_line(stream, &json!({"ok": true, "resize": reply})).await;
                }
                Some(ResizeOutcome::Superseded { size }) => {
                    let reply = json!({"outcome": "superseded", "size": size});
                    let _ = write_line(stream, &json!({"ok": true, "resize": reply})).await;
                }
                Some(ResizeOutcome::Refused { why }) => refuse(stream, &why).await,
                None => refuse(stream, stopping).await,
            }
        }
        Request::Stop { hard } => {
            wait_elsewhere();
            // Subscribed before the stop: the subscription ends when the master has stopped.
            let (mut records, mut overflowed) = handle.follow(FOLLOWER_QUEUE);
            if hard {
                drop(handle.quit_hard());
            } else {
                drop(handle.quit());
            }
            let pid = std::process::id();
            let _ = write_line(stream, &json!({"ok": true, "stopping": true, "pid": pid})).await;
            loop {
                if records.recv().await.is_some() {
                    continue;
                }
                if !overflowed.load(Ordering::Acquire) {
                    break;
                }
                // Records came faster than this loop took them: only the end matters here.
                (records, overflowed) = handle.follow(FOLLOWER_QUEUE);
            }
            let _ = write_line(stream, &json!({"ok": true, "stopped": true, "pid": pid})).await;
        }
        Request::Send { slot, message } => match handle.send_to(slot, message).answer().await {
            Some(SendOutcome::Delivered { slots }) => {
                let reply = json!({"outcome": "delivered", "slots": slots});
                let _ = write_line(stream, &json!({"ok": true, "send": reply})).await;
            }
            Some(SendOutcome::Failed { why, .. }) => refuse(stream, &why).await,
            None => refuse(stream, stopping).await,
        },
        Request::Events => {
            let Ok(following) = Arc::clone(&shared.followers).try_acquire_owned() else {
                let why = format!(
                    "busy: {MAX_FOLLOWERS} clients follow the events already, try again later"
                );
                return refuse(stream, &why).await;
            };
            *place = following;
            follow(stream, handle).await;
        }
    }
}

/// Streams every record to the client until the master stops, the client leaves, or it does
/// not keep up.
async fn follow(stream: &UnixStream, handle: &Handle) {
    // A small kernel buffer: what a follower costs stays small, and one that does not read is
    // noticed after a few records rather than hundreds of kilobytes.
    let _ = nix::sys::socket::setsockopt(
        stream,
        nix::sys::socket::sockopt::SndBuf,
        &FOLLOWER_SEND_BUFFER,
    );
    let (mut records, overflowed) = handle.follow(FOLLOWER_QUEUE);
    // Answered after the subscription in the one queue of the master: once the client has this
    // reply, it misses no event.
    if answer_of(handle.ask_status()).await.is_none() {
        return refuse(stream, "the master is stopping").await;
    }
    let pid = std::process::id();
    if write_line(stream, &json!({"ok": true, "following": true, "pid": pid}))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let record = tokio::select! {
            record = records.recv() => record,
            () = peer_gone(stream) => return,
        };
        match record {
            Some(record) => {
                let Ok(mut line) = serde_json::to_string(&record) else {
                    continue;
                };
                line.push('\n');
                if write_all(stream, line.as_bytes()).await.is_err() {
                    return;
                }
            }
            None if overflowed.load(Ordering::Acquire) => {
                let why = format!(
                    "dropped: this client did not read the events as they came \
                     ({FOLLOWER_QUEUE} were waiting)"
                );
                return refuse(stream, &why).await;
            }
            // The master stopped.
            None => return,
        }
    }
}

/// Resolves when the client has closed its end (what it sends meanwhile is read and dropped).
async fn peer_gone(stream: &UnixStream) {
    let mut buffer = [0u8; 1024];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// The answer to a request of the supervision loop's, once it is there; `None` when the master
/// stopped without one (or before it was asked). Awaited: the driver's answer wakes this task.
async fn answer_of<T>(waiter: Option<crate::handle::Waiter<T>>) -> Option<T> {
    waiter?.answer().await
}

/// Ends `stream` so that its client reads every reply: a socket closed with unread input (a
/// request the master refused without reading all of it: busy, another uid, too long) makes
/// the client's next read fail with "connection reset" instead of the end, and its write fail
/// with "broken pipe" before it reads the reply. So the master ends its side for writing, and
/// reads and discards what the client still sends until it closes its side, for at most
/// [`LINGER`]; at most [`MAX_LINGERING`] connections at once, beyond which they close at once.
async fn linger(stream: UnixStream, shared: &Shared) {
    let _ = shutdown(stream.as_raw_fd(), Shutdown::Write);
    if shared.lingering.fetch_add(1, Ordering::AcqRel) < MAX_LINGERING {
        let _ = tokio::time::timeout(LINGER, peer_gone(&stream)).await;
    }
    shared.lingering.fetch_sub(1, Ordering::AcqRel);
}

/// Only our own uid, and root, may control the master.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let ours = nix::unistd::geteuid().as_raw();
    match crate::sys::peer_uid(stream) {
        Ok(peer) if peer == ours || peer == 0 => Ok(()),
        Ok(peer) => Err(format!(
            "permission denied: uid {peer} may not control a master of uid {ours}"
        )),
        Err(e) => Err(format!("cannot tell who the client is: {e}")),
    }
}

/// Writes an error reply; the connection ends when the client is served.
async fn refuse(stream: &UnixStream, why: &str) {
    let _ = write_line(stream, &json!({"ok": false, "error": why})).await;
}

async fn write_line(stream: &UnixStream, value: &Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    write_all(stream, line.as_bytes()).await
}

/// Writes `{"ok":true,"<key>":<value>}`, the value's fields in their declared order.
async fn write_reply(
    stream: &UnixStream,
    key: &str,
    value: &impl serde::Serialize,
) -> io::Result<()> {
    let value = serde_json::to_string(value).map_err(io::Error::other)?;
    write_all(
        stream,
        format!("{{\"ok\":true,\"{key}\":{value}}}\n").as_bytes(),
    )
    .await
}

/// Writes all of `bytes`, unless the client takes none of it for [`WRITE_DEADLINE`].
async fn write_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        tokio::time::timeout(WRITE_DEADLINE, stream.writable())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        match stream.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the one request line: within [`REQUEST_DEADLINE`], at most [`MAX_REQUEST`] bytes.
async fn read_request(stream: &UnixStream) -> Result<Request, String> {
    let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
            Err(_) => return Err(timeout_message()),
        }
        let read = match stream.try_read(&mut buffer) {
            Ok(read) => read,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(format!("cannot read the request: {e}")),
        };
        if read == 0 {
            return Err(if line.is_empty() {
                "empty request: expected one JSON object and a newline".to_owned()
            } else {
                "truncated request: the connection ended before its newline".to_owned()
            });
        }
        let piece = &buffer[..read];
        let end = piece.iter().position(|&b| b == b'\n');
        line.extend_from_slice(&piece[..end.unwrap_or(read)]);
        if line.len() > MAX_REQUEST {
            return Err(format!(
                "request too long: more than {MAX_REQUEST} bytes before its newline"
            ));
        }
        if end.is_some() {
            break;
        }
    }
    Request::parse(&line)
}

impl Request {
    /// Parses a request line; an unknown command or field is an error naming it.
    pub(crate) fn parse(line: &[u8]) -> Result<Self, String> {
        let request: Self =
            serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
        // serde lets unknown fields of a variant without fields through: none may go unseen.
        let fields: serde_json::Map<String, Value> =
            serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
        let known: &[&str] = match request {
            Request::Resize { .. } => &["command", "size", "wait"],
            Request::Stop { .. } => &["command", "hard"],
            Request::Send { .. } => &["command", "slot", "message"],
            Request::Status | Request::Restart | Request::Events => &["command"],
        };
        match fields.keys().find(|key| !known.contains(&key.as_str())) {
            Some(key) => Err(format!("malformed request: unknown field `{key}`")),
            None => Ok(request),
        }
    }
}

fn timeout_message() -> String {
    format!("no complete request within {}s", REQUEST_DEADLINE.as_secs())
}

/// Why a client could not reach a master, as one line, and the exit status for it.
#[derive(Debug)]
pub(crate) struct ClientError {
    /// The line after `mcluster: error: `.
    pub message: String,
    /// The exit status.
    pub status: u8,
}

impl ClientError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: 1,
        }
    }
}

/// A connection to a master, its request sent.
pub(crate) struct Connection {
    reader: BufReader<StdUnixStream>,
    path: PathBuf,
}

impl Connection {
    /// Connects to the master at `path` (the default one when `None`) and sends `request`.
    pub(crate) fn open(path: Option<&Path>, request: &Request) -> Result<Self, ClientError> {
        let (path, default) = match path {
            Some(path) => (path.to_owned(), false),
            None => (
                default_path().map_err(|e| ClientError::new(e.to_string()))?,
                true,
            ),
        };
        let shown = path.display();
        if default && let Some(dir) = path.parent() {
            match check_private_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(no_master_here(&path));
                }
                Err(e) => {
                    return Err(ClientError::new(format!(
                        "cannot trust the control socket {shown}: {e}"
                    )));
                }
            }
        }
        let stream = match StdUnixStream::connect(&path) {
            Ok(stream) => stream,
            Err(e) if e.kind() == io::ErrorKind::NotFound && default => {
                return Err(no_master_here(&path));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ClientError::new(format!(
                    "no master at {shown}: no such socket"
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                use std::os::unix::fs::FileTypeExt as _;
                let is_socket =
                    std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_socket());
                return Err(ClientError::new(if is_socket {
                    format!(
                        "no master answers at {shown}: the socket is left from a master that \
                         was killed"
                    )
                } else {
                    format!("no master at {shown}: it is not a socket")
                }));
            }
            Err(e) => {
                return Err(ClientError::new(format!(
                    "cannot reach the master at {shown}: {}",
                    crate::config::describe_io(&e)
                )));
            }
        };
        let mut line = serde_json::to_string(request).unwrap_or_default();
        line.push('\n');
        let written = (&stream).write_all(line.as_bytes());
        let mut connection = Self {
            reader: BufReader::new(stream),
            path,
        };
        if let Err(e) = written {
            // A master that turns a client away (busy, another uid) answers before it reads.
            connection.set_timeout(Some(Duration::from_secs(1)));
            connection.next_reply()?;
            return Err(lost(&connection.path, &e));
        }
        Ok(connection)
    }

    /// Limits how long [`next_reply`](Connection::next_reply) waits for a reply.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(timeout);
    }

    /// The next reply; `None` when the master closed the connection. A reply with
    /// `"ok": false` is an error with its reason.
    pub(crate) fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(lost(&self.path, &e)),
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| {
            ClientError::new(format!(
                "the master at {} sent a malformed reply: {e}",
                self.path.display()
            ))
        })?;
        if value.get("ok") == Some(&Value::Bool(false)) {
            let why = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(ClientError::new(format!(
                "the master at {} refused: {why}",
                self.path.display()
            )));
        }
        Ok(Some(Reply { value, line }))
    }

    /// The next reply, which must come.
    pub(crate) fn reply(&mut self) -> Result<Reply, ClientError> {
        self.next_reply()?.ok_or_else(|| {
            ClientError::new(format!(
                "the master at {} closed the connection without a reply",
                self.path.display()
            ))
        })
    }
}

/// One reply of the master.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The reply.
    pub value: Value,
    /// Its line as sent (without reordering the fields, as `value` does).
    line: String,
}

impl Reply {
    /// The JSON text of `key`'s value, its fields in the order the master sent them; the whole
    /// reply for `None`.
    #[must_use]
    pub(crate) fn raw(&self, key: Option<&str>) -> String {
        let raw = key.and_then(|key| {
            serde_json::from_str::<
                std::collections::HashMap<String, Box<serde_json::value::RawValue>>,
            >(&self.line)
            .ok()?
            .remove(key)
        });
        raw.map_or_else(
            || self.line.trim_end().to_owned(),
            |raw| raw.get().to_owned(),
        )
    }
}

fn no_master_here(path: &Path) -> ClientError {
    let cwd = std::env::current_dir().unwrap_or_default();
    ClientError::new(format!(
        "no master runs in {} (no control socket at {}); start one here, or name its socket \
         with --control PATH",
        cwd.display(),
        path.display()
    ))
}

fn lost(path: &Path, error: &io::Error) -> ClientError {
    if matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        ClientError::new(format!(
            "the master at {} did not answer in time",
            path.display()
        ))
    } else {
        ClientError::new(format!(
            "lost the master at {}: {}",
            path.display(),
            crate::config::describe_io(error)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_with_a_command() {
        let parse = |text: &str| Request::parse(text.as_bytes());
        assert_eq!(parse(r#"{"command":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse(r#"{"command":"resize","size":3}"#),
            Ok(Request::Resize {
                size: 3,
                wait: true
            })
        );
        assert_eq!(
            parse(r#"{"command":"stop"}"#),
            Ok(Request::Stop { hard: false })
        );
        assert!(parse(r#"{"command":"launch"}"#).is_err());
        assert_eq!(
            parse(r#"{"command":"stop","hrad":true}"#),
            Err("malformed request: unknown field `hrad`, expected `hard`".to_owned())
        );
        assert_eq!(
            parse(r#"{"command":"status","x":1}"#),
            Err("malformed request: unknown field `x`".to_owned())
        );
        assert!(parse(r#"{"command":"resize","size":-1}"#).is_err());
        assert!(parse("[]").is_err());
    }

    #[test]
    fn the_default_path_is_short_and_one_per_directory() {
        let mut a = Fnv1a::default();
        a.write(b"/srv/app");
        let mut b = Fnv1a::default();
        b.write(b"/srv/app2");
        assert_ne!(a.finish(), b.finish());
        // The FNV-1a test vector: the same in every build.
        let mut empty = Fnv1a::default();
        empty.write(b"a");
        assert_eq!(empty.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_private_directory_is_ours_alone() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("p");
        make_private_dir(&private).unwrap();
        make_private_dir(&private).unwrap();
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let error = check_private_dir(&private).unwrap_err().to_string();
        assert!(error.contains("mode is 0755"), "{error}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let error = check_private_dir(&link).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
    }
}

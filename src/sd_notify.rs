//! The master's side of systemd's notify protocol: one private datagram socket per worker.
//!
//! Each worker gets `NOTIFY_SOCKET=<dir>/w<slot>-<n>.sock`, a socket of its own in a 0700
//! directory of the master's, so every message is attributed to exactly one worker without
//! trusting credentials. A message is newline-separated `KEY=VALUE` lines: `READY=1` marks the
//! worker ready, `STATUS=…` is its status line, and every message is passed to the embedder's
//! message handler.
//!
//! # Reading, coalesced
//!
//! Each socket is read by a task on the master's I/O loop ([`IoLoop`]), never a thread per
//! worker. What a worker sends is coalesced ([`Coalesced`]) before it reaches the driver, so
//! that a worker flooding its socket costs the master a fixed amount of memory and the driver
//! one wake-up per turn: the latest `STATUS=`, whether `READY=1`, `WATCHDOG=1` and `STOPPING=1`
//! were seen, the messages themselves up to [`MESSAGES_KEPT`] between two turns of the driver
//! (for the embedder's message handler and the `events` followers), and a count of the
//! messages dropped beyond. The driver is woken with one [`Input::Notify`] per worker at most
//! until it takes the worker's messages. The driver runs on the same loop: a reader whose kept
//! messages just filled up yields to it once before reading on, so that a burst is taken whole
//! when the driver keeps up, and only a worker that sends faster than the driver's turns loses
//! messages (never their facts).
//!
//! # The directory
//!
//! `mcluster-<pid>-<12 random hex digits>` in `$XDG_RUNTIME_DIR`, or without it in `$TMPDIR`
//! (`/tmp`): made by `mkdir`, so a name someone else took first is never used (another one is
//! drawn), and unpredictable, so nobody can take it first on purpose. It holds a marker file
//! written at its creation, naming the master ([`crate::leftover`]), and is removed when the
//! master exits. A master killed by SIGKILL cannot remove it, so each master first sweeps the
//! directories of dead masters — only those it can prove are: the name's pattern, a directory
//! (not a symlink) of our uid with mode 0700, nothing else inside but the marker and notify
//! sockets, none of them read, and a marker that proves its master, the pid in the name, gone
//! (the leftover module's one rule: a free or reused pid, or another boot). Anything else, such
//! as a user's own `mcluster-1234` or a master's in another pid namespace, stays.

use std::fs;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cluster::WorkerKey;
use crate::config::Error;
use crate::handle::{Input, ToDriver};
use crate::http::IoLoop;
use crate::leftover::{self, Here};
use crate::listener::MAX_UNIX_PATH;

/// The file that marks a directory as a master's notify directory.
const MARKER: &str = "mcluster-notify";

/// The first line of the marker (an owner file, see [`crate::leftover`]).
const MARKER_KIND: &str = "mcluster notify directory";

/// The random part of a directory's name, in hex digits.
const SUFFIX_DIGITS: usize = 12;

/// The longest socket name the length check of a directory allows for (slot and key).
const LONGEST_SOCKET_NAME: &str = "w9999-9999999999.sock";

/// The most messages of one worker kept between two turns of the driver; the others are
/// counted (their facts and latest `STATUS=` still count).
pub(crate) const MESSAGES_KEPT: usize = 64;

/// The longest message read whole, in bytes (the rest of a longer datagram is cut off).
const MESSAGE_MAX: usize = 4096;

/// The master's private directory of notify sockets, removed when dropped.
#[derive(Debug)]
pub(crate) struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    /// Makes the directory (see the module's doc) in `$XDG_RUNTIME_DIR` or the temp directory.
    pub(crate) fn create() -> Result<Self, Error> {
        let (base, from) = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => (PathBuf::from(dir), "$XDG_RUNTIME_DIR"),
            None if std::env::var_os("TMPDIR").is_some_and(|d| !d.is_empty()) => {
                (std::env::temp_dir(), "$TMPDIR")
            }
            None => (PathBuf::from("/tmp"), "the default temp directory"),
        };
        Self::create_in(&base).map_err(|e| {
            Error::io(
                format!(
                    "cannot make the notify socket directory in {} ({from})",
                    base.display()
                ),
                e,
            )
        })
    }

    fn create_in(base: &Path) -> io::Result<Self> {
        // Workers may change directory: their NOTIFY_SOCKET must not be relative.
        let base = std::path::absolute(base)?;
        if !fs::metadata(&base)?.is_dir() {
            return Err(io::ErrorKind::NotADirectory.into());
        }
        let pid = std::process::id();
        let name = |suffix: u64| format!("mcluster-{pid}-{suffix:0SUFFIX_DIGITS$x}");
        let longest = base.join(name(0)).join(LONGEST_SOCKET_NAME);
        if longest.as_os_str().len() > MAX_UNIX_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidFilename,
                format!(
                    "the path is too long: a notify socket's path in it would be {} bytes, more \
                     than the {MAX_UNIX_PATH} a socket address holds",
                    longest.as_os_str().len()
                ),
            ));
        }
        for attempt in 0..16 {
            let path = base.join(name(random_suffix(attempt)));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            // From here on, an error removes the directory.
            let dir = Self { path };
            // The umask may have taken the owner's bits too.
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))?;
            leftover::mark(&dir.path.join(MARKER), MARKER_KIND)?;
            if let Some(here) = Here::now() {
                remove_dead_masters_dirs(&base, &here);
            }
            return Ok(dir);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "every name drawn for it was taken",
        ))
    }

    /// Binds a worker's socket and starts the task that reads it, which wakes the driver with
    /// [`Input::Notify`] when it has messages.
    pub(crate) fn open(
        &self,
        key: WorkerKey,
        slot: usize,
        events: ToDriver,
    ) -> io::Result<NotifySocket> {
        let path = self.path.join(format!("w{slot}-{}.sock", key.0));
        let socket = UnixDatagram::bind(&path)?;
        // From here on, an error removes the file.
        let removes = RemoveOnDrop(path);
        socket.set_nonblocking(true)?;
        let handle = IoLoop::handle()?;
        let socket = {
            let _entered = handle.enter();
            tokio::net::UnixDatagram::from_std(socket)?
        };
        let pending = Arc::new(Mutex::new(Coalesced::default()));
        let reader = handle.spawn(read_messages(socket, key, Arc::clone(&pending), events));
        Ok(NotifySocket {
            path: removes,
            reader: reader.abort_handle(),
            pending,
        })
    }
}

/// A path removed when dropped.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Random bits for a directory's name: std's `RandomState` keys come from the OS's random source.
fn random_suffix(attempt: u32) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.finish() & ((1 << (4 * SUFFIX_DIGITS)) - 1)
}

/// Removes the directories of masters killed before they could (see the module's doc).
fn remove_dead_masters_dirs(base: &Path, here: &Here) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(sockets) = dead_masters_dir(&entry, here) {
            for socket in sockets {
                let _ = fs::remove_file(socket);
            }
            let _ = fs::remove_file(entry.path().join(MARKER));
            // Not `remove_dir_all`: whatever appeared in the meantime stays, and so does the
            // directory.
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// The sockets in `entry` if it is provably the notify directory of a master that is gone.
fn dead_masters_dir(entry: &fs::DirEntry, here: &Here) -> Option<Vec<PathBuf>> {
    let name = entry.file_name();
    let (pid, suffix) = name.to_str()?.strip_prefix("mcluster-")?.split_once('-')?;
    if !is_decimal(pid)
        || suffix.len() != SUFFIX_DIGITS
        || !suffix
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    // `DirEntry::metadata` does not follow a symlink.
    let meta = entry.metadata().ok()?;
    if !meta.is_dir() || meta.uid() != here.uid || meta.mode() & 0o7777 != 0o700 {
        return None;
    }
    if !leftover::proves_gone(
        &entry.path().join(MARKER),
        MARKER_KIND,
        pid.parse().ok()?,
        here,
    ) {
        return None;
    }
    let mut sockets = Vec::new();
    for inner in fs::read_dir(entry.path()).ok()? {
        let inner = inner.ok()?;
        let kind = inner.file_type().ok()?;
        let name = inner.file_name();
        match name.to_str()? {
            MARKER => {}
            name if kind.is_socket() && is_socket_name(name) => sockets.push(inner.path()),
            _ => return None,
        }
    }
    // Belt and braces: a socket that still has a reader is in use, whatever the marker says.
    (!sockets.iter().any(|socket| has_reader(socket))).then_some(sockets)
}

fn is_decimal(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` is the name of a notify socket: `w<slot>-<n>.sock`.
fn is_socket_name(name: &str) -> bool {
    name.strip_prefix('w')
        .and_then(|rest| rest.strip_suffix(".sock"))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(slot, key)| is_decimal(slot) && is_decimal(key))
}

/// Whether the notify socket at `path` still has a reader.
fn has_reader(path: &Path) -> bool {
    UnixDatagram::unbound().is_ok_and(|probe| probe.connect(path).is_ok())
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One worker's notify socket; dropping it ends its reader task and removes the file.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    path: RemoveOnDrop,
    reader: tokio::task::AbortHandle,
    pending: Arc<Mutex<Coalesced>>,
}

impl NotifySocket {
    /// The value of the worker's `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path.0
    }

    /// What the worker sent since the last call; the next message wakes the driver again.
    pub(crate) fn take(&self) -> Coalesced {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *pending)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        // The task owns the socket: aborted, it closes it.
        self.reader.abort();
    }
}

/// Which of the assignments the core hears about a worker sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// `READY=1`
    pub(crate) ready: bool,
    /// `WATCHDOG=1`
    pub(crate) watchdog: bool,
    /// `STOPPING=1`
    pub(crate) stopping: bool,
}

/// A worker's notify messages since the driver last took them (see the module's doc).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Coalesced {
    /// The latest `STATUS=` text.
    pub(crate) status: Option<String>,
    pub(crate) facts: Facts,
    /// The messages, oldest first, at most [`MESSAGES_KEPT`].
    pub(crate) messages: Vec<String>,
    /// Messages beyond [`MESSAGES_KEPT`], not kept.
    pub(crate) dropped: u64,
    /// The driver was woken for these and has not taken them yet.
    woken: bool,
}

impl Coalesced {
    /// Adds a message; `true` when the driver is to be woken for it (it was not yet).
    fn add(&mut self, message: String) -> bool {
        if let Some(status) = status(&message) {
            self.status = Some(status.to_owned());
        }
        self.facts.ready |= says(&message, "READY=1");
        self.facts.watchdog |= says(&message, "WATCHDOG=1");
        self.facts.stopping |= says(&message, "STOPPING=1");
        if self.messages.len() < MESSAGES_KEPT {
            self.messages.push(message);
        } else {
            self.dropped += 1;
        }
        !std::mem::replace(&mut self.woken, true)
    }
}

/// Reads a worker's socket into `pending`, waking the driver when there is something new for
/// it; ends when the driver is gone, or on an error of the socket.
async fn read_messages(
    socket: tokio::net::UnixDatagram,
    key: WorkerKey,
    pending: Arc<Mutex<Coalesced>>,
    events: ToDriver,
) {
    let mut buffer = vec![0u8; MESSAGE_MAX];
    loop {
        let Ok(len) = socket.recv(&mut buffer).await else {
            return;
        };
        let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
        let (wake, full) = {
            let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
            let wake = pending.add(message);
            (
                wake,
                pending.messages.len() == MESSAGES_KEPT && pending.dropped == 0,
            )
        };
        if wake && events.send(Input::Notify { key }).is_err() {
            return;
        }
        if full {
            // The driver runs on this same loop, woken already: a burst that fills what is
            // kept lets it take those before the next are read, so that only a worker sending
            // faster than the driver's turns loses messages, not one whose burst came whole.
            tokio::task::yield_now().await;
        }
    }
}

/// Whether a notify message holds the assignment `line` (`READY=1`, `WATCHDOG=1`, …).
pub(crate) fn says(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// The `STATUS=` text of a notify message, if any.
pub(crate) fn status(message: &str) -> Option<&str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix("STATUS="))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leftover::Owner;
    use std::time::Duration;

    /// The next input, within 10 s; `None` once every sender is gone.
    fn next_input(inbox: &mut crate::handle::Inbox) -> Option<Input> {
        use tokio::sync::mpsc::error::TryRecvError;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match inbox.try_recv() {
                Ok(input) => return Some(input),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            assert!(std::time::Instant::now() < deadline, "no input");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn messages_are_coalesced_and_closing_ends_the_reader() {
        let dir = NotifyDir::create().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let socket = dir.open(WorkerKey(7), 0, tx).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client
            .send_to(b"READY=1\nSTATUS=up", socket.path())
            .unwrap();
        let Input::Notify { key } = next_input(&mut rx).unwrap() else {
            panic!("expected a notify message");
        };
        assert_eq!(key, WorkerKey(7));
        // More messages before the driver takes them: no other wake-up.
        let more = MESSAGES_KEPT + 10;
        for n in 0..more {
            client
                .send_to(format!("STATUS={n}").as_bytes(), socket.path())
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let held = || {
            let pending = socket.pending.lock().unwrap();
            pending.messages.len() + usize::try_from(pending.dropped).unwrap()
        };
        while held() < more + 1 {
            assert!(std::time::Instant::now() < deadline, "{} held", held());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            rx.try_recv().is_err(),
            "woken again before the driver took any"
        );
        let taken = socket.take();
        assert!(taken.facts.ready);
        assert_eq!(taken.status.as_deref(), Some(&*format!("{}", more - 1)));
        assert_eq!(taken.messages[0], "READY=1\nSTATUS=up");
        assert_eq!(taken.messages.len(), MESSAGES_KEPT);
        assert_eq!(
            taken.dropped,
            u64::try_from(more + 1 - MESSAGES_KEPT).unwrap()
        );
        // Taken: the next message wakes the driver again.
        client.send_to(b"WATCHDOG=1", socket.path()).unwrap();
        assert!(matches!(
            next_input(&mut rx),
            Some(Input::Notify { key: WorkerKey(7) })
        ));
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists());
        // The reader task dropped its sender: the channel disconnects.
        assert!(next_input(&mut rx).is_none());
        let dir_path = dir.path.clone();
        drop(dir);
        assert!(!dir_path.exists());
    }

    #[test]
    fn a_flood_keeps_the_facts_the_latest_status_and_a_count() {
        let mut pending = Coalesced::default();
        assert!(
            pending.add("READY=1".to_owned()),
            "the first wakes the driver"
        );
        for n in 0..1000 {
            assert!(!pending.add(format!("STATUS={n}\nWATCHDOG=1")));
        }
        assert!(!pending.add("STOPPING=1".to_owned()));
        assert_eq!(
            pending.facts,
            Facts {
                ready: true,
                watchdog: true,
                stopping: true
            }
        );
        assert_eq!(pending.status.as_deref(), Some("999"));
        assert_eq!(pending.messages.len(), MESSAGES_KEPT);
        assert_eq!(pending.dropped, 1002 - MESSAGES_KEPT as u64);
        let taken = std::mem::take(&mut pending);
        assert_eq!(taken.messages[0], "READY=1");
        assert!(
            pending.add("READY=1".to_owned()),
            "taken: the next wakes it again"
        );
    }

    /// A directory as the master `owner` makes it in `base`, with a stale socket inside.
    fn made_by(base: &Path, owner: &Owner, suffix: &str) -> PathBuf {
        let dir = base.join(format!("mcluster-{}-{suffix}", owner.pid));
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join(MARKER), owner.render(MARKER_KIND)).unwrap();
        drop(UnixDatagram::bind(dir.join("w0-1.sock")).unwrap());
        dir
    }

    /// A master of this boot and pid namespace that is gone: its pid is free.
    fn dead_master() -> Owner {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        Owner {
            pid: child.id(),
            start_time: 1,
            ..Owner::of_self().unwrap()
        }
    }

    #[test]
    fn only_provably_dead_masters_directories_are_removed() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path();
        let dead = dead_master();
        let made_by_a_master = |base: &Path, pid: u32, suffix: &str| {
            made_by(
                base,
                &Owner {
                    pid,
                    ..dead.clone()
                },
                suffix,
            )
        };
        let dead = dead.pid;
        let stale = made_by_a_master(base, dead, "0123456789ab");
        let mut kept = Vec::new();
        // A master in another PID namespace: its pid means nothing here, whether its sockets
        // are read or not.
        let elsewhere = Owner {
            pid: i32::MAX.cast_unsigned(),
            pid_namespace: "pid:[1]".to_owned(),
            ..dead_master()
        };
        let read_elsewhere = made_by(base, &elsewhere, "0123456789ab");
        let _reader = UnixDatagram::bind(read_elsewhere.join("w1-2.sock")).unwrap();
        kept.push(read_elsewhere);
        kept.push(made_by(base, &elsewhere, "0123456789ac"));
        // A live master's (this process stands in for one).
        kept.push(made_by(base, &Owner::of_self().unwrap(), "0123456789ab"));
        // A user's own directories, named like ours.
        let users = base.join(format!("mcluster-{dead}"));
        fs::create_dir(&users).unwrap();
        fs::write(users.join("Cargo.toml"), "[package]").unwrap();
        kept.push(users.clone());
        let with_more = made_by_a_master(base, dead, "00000000000a");
        fs::write(with_more.join("notes.txt"), "mine").unwrap();
        kept.push(with_more);
        let unmarked = made_by_a_master(base, dead, "00000000000b");
        fs::remove_file(unmarked.join(MARKER)).unwrap();
        kept.push(unmarked);
        let other_text = made_by_a_master(base, dead, "00000000000c");
        fs::write(other_text.join(MARKER), "something else").unwrap();
        kept.push(other_text);
        // The marker of an earlier version, which named nobody.
        let unnamed = made_by_a_master(base, dead, "000000000012");
        fs::write(
            unnamed.join(MARKER),
            "notify sockets of an mcluster master, removed when it exits\n",
        )
        .unwrap();
        kept.push(unnamed);
        // A marker naming another pid than the directory's name.
        let misnamed = made_by_a_master(base, dead, "000000000013");
        fs::write(
            misnamed.join(MARKER),
            Owner {
                pid: dead + 1,
                ..dead_master()
            }
            .render(MARKER_KIND),
        )
        .unwrap();
        kept.push(misnamed);
        let open_mode = made_by_a_master(base, dead, "00000000000d");
        fs::set_permissions(&open_mode, fs::Permissions::from_mode(0o755)).unwrap();
        kept.push(open_mode);
        let upper_case = made_by_a_master(base, dead, "00000000000E");
        kept.push(upper_case);
        // A symlink to a directory that would qualify, and that directory.
        let elsewhere_base = tempfile::tempdir().unwrap();
        let target = made_by_a_master(elsewhere_base.path(), dead, "00000000000f");
        let link = base.join(format!("mcluster-{dead}-000000000010"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        kept.push(link);
        // Another user's (root can hand it over; anyone else skips this case).
        let others = made_by_a_master(base, dead, "000000000011");
        if std::os::unix::fs::chown(&others, Some(65534), None).is_ok() {
            kept.push(others);
        } else {
            fs::remove_dir_all(&others).unwrap();
        }

        let dir = NotifyDir::create_in(base).unwrap();
        assert!(!stale.exists(), "a dead master's directory is removed");
        for path in &kept {
            assert!(
                fs::symlink_metadata(path).is_ok(),
                "{} removed",
                path.display()
            );
        }
        assert!(target.join(MARKER).exists() && target.join("w0-1.sock").exists());
        assert_eq!(
            fs::read_to_string(users.join("Cargo.toml")).unwrap(),
            "[package]"
        );
        assert!(dir.path.is_dir());
        let name = dir.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with(&format!("mcluster-{}-", std::process::id())),
            "{name}"
        );
        let mode = fs::metadata(&dir.path).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o700, "{mode:o}");
        let marker = fs::read_to_string(dir.path.join(MARKER)).unwrap();
        assert_eq!(Owner::parse(&marker, MARKER_KIND), Owner::of_self());
        // The name is drawn anew each time.
        let again = NotifyDir::create_in(base).unwrap();
        assert_ne!(again.path, dir.path);
    }

    #[test]
    fn a_reused_pid_or_an_earlier_boot_is_a_dead_master() {
        let base = tempfile::tempdir().unwrap();
        let here = Owner::of_self().unwrap();
        // This process's pid, but another process's start time: the master that had it is
        // gone, though its pid runs.
        let reused = made_by(
            base.path(),
            &Owner {
                start_time: here.start_time + 1,
                ..here.clone()
            },
            "0123456789ab",
        );
        // A live pid, in an earlier boot.
        let earlier = made_by(
            base.path(),
            &Owner {
                boot_id: "00000000-0000-0000-0000-000000000000".to_owned(),
                pid: std::os::unix::process::parent_id(),
                ..here.clone()
            },
            "0123456789ab",
        );
        let dir = NotifyDir::create_in(base.path()).unwrap();
        assert!(!reused.exists(), "{}", reused.display());
        assert!(!earlier.exists(), "{}", earlier.display());
        assert!(dir.path.is_dir());
    }

    #[test]
    fn an_unusable_base_is_an_error() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("file");
        fs::write(&file, "").unwrap();
        let long = base.path().join("d".repeat(100));
        fs::create_dir(&long).unwrap();
        for (path, words) in [
            (base.path().join("missing"), "no such file"),
            (file, "not a directory"),
            (long, "too long"),
        ] {
            let error = NotifyDir::create_in(&path).unwrap_err().to_string();
            assert!(
                error.to_lowercase().contains(words),
                "{}: {error}",
                path.display()
            );
        }
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 2);
    }

    #[test]
    fn ready_must_be_a_whole_line() {
        assert!(says("STATUS=x\nREADY=1\n", "READY=1"));
        assert!(!says("READY=10", "READY=1"));
        assert_eq!(status("READY=1"), None);
    }
}

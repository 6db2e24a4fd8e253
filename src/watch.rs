//! Dev mode's file watcher: which files count, when a burst of events is over, and whether
//! anything really changed.
//!
//! # How it works
//!
//! - **Pruned before watched.** Each root is walked with [`ignore::WalkBuilder`] (`.gitignore`,
//!   `.ignore`, `.git/info/exclude`, the global excludes file; hidden files included). Ignored
//!   trees are never entered, so they cost no inotify watch: `target/` at a root, any directory
//!   holding a `CACHEDIR.TAG` (cargo's target directories), `$CARGO_TARGET_DIR`, `.git/` and the
//!   `--ignore` globs. Every directory kept gets one non-recursive watch.
//! - **Filtered.** An event counts only for a file in a watched directory, with a wanted
//!   extension (or read by the last build, whatever its extension: [`Watcher::set_build_inputs`]),
//!   not named like an editor's temporary file, not matched by an `--ignore` glob (which no
//!   ignore file can bring back) and not ignored by the ignore files. Those are judged by the
//!   ignore crate's own matcher of single paths ([`ignore::IncrementalIgnore`]), with the walk's
//!   rules and precedence: a deeper file's rule before a shallower one's, `.ignore` before
//!   `.gitignore` before `.git/info/exclude` before the global file, and nothing inside an
//!   ignored directory. Reads (`EventKind::Access`) never count. The first root's `Cargo.lock`
//!   (the workspace's, with a cargo build) is a build input that no dep-info names: it counts
//!   whatever `--ext` and the ignore files say (a library-style `.gitignore` lists it, and
//!   cargo still builds from it); only an `--ignore` glob leaves it out.
//! - **Debounced.** A trailing [`Debouncer`]: every event that counts restarts the cooldown; the
//!   batch is due once the files have been quiet for a whole cooldown. One save in any editor
//!   (vim's `4913` probe and backup rename, `JetBrains`' safe write, VS Code's
//!   truncate-then-write, `sed -i`) and a `git checkout` of many files are one batch.
//! - **Checked against a snapshot.** The walk records `(mtime, length, inode)` of every wanted
//!   file. A due batch keeps only the files whose stamp differs (created, deleted, changed), and
//!   the snapshot is updated; a batch left empty is not reported. Opening, reading, `chmod` or
//!   renaming a file away and back are not changes.
//! - **Never silent.** New directories are walked and watched, and the wanted files already in
//!   them count as changed. On a queue overflow (`need_rescan`) every root is walked again and the
//!   whole snapshot compared. When the inotify watch limit is reached, the watcher tells it once and
//!   falls back to polling. A root that is removed (or moved away) is told once and checked for
//!   every [`ROOT_CHECK_INTERVAL`]; when it is back, that is told too, it is walked and watched
//!   again, and the wanted files in it count as changed. A root on a file system inotify is
//!   blind on (9p, NFS, SMB, FUSE: changes made from the other side raise no event) is polled
//!   without being asked, and told once.
//!
//! What the watcher tells is a [`WatchReport`], handed to the `tell` callback its starter
//! gives: the reporter words it (`report::watch_line`), which this module, below the reporter,
//! does not reach.
//!
//! One thread (`mcluster-watch`) owns the state: it receives notify's events over a channel, adds
//! watches (which notify's own thread cannot do from inside its handler), and calls `on_change`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::mem;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use ::notify::event::{CreateKind, ModifyKind, RenameMode};
use ::notify::{
    Config as NotifyConfig, ErrorKind as NotifyErrorKind, Event, EventKind, PollWatcher,
    RecommendedWatcher, RecursiveMode, Watcher as _,
};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::{IncrementalIgnore, WalkBuilder};

use crate::config::Error;

/// The poll interval after falling back from inotify.
const FALLBACK_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The shortest poll interval: a zero interval would make the poller spin.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How often a removed root is looked for. A stat per missing root: cheap enough to be prompt.
const ROOT_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The most messages handled in a row before a due batch is flushed.
const DRAIN_LIMIT: usize = 4096;

/// What to watch.
#[derive(Debug, Clone)]
pub(crate) struct WatchConfig {
    /// Directories to watch (default: the package root); made absolute against the current
    /// directory if they are not, with `..` resolved. Batches name files under them. The first
    /// is the workspace root with a cargo build: its `Cargo.lock` counts (see the module docs).
    pub(crate) roots: Vec<PathBuf>,
    /// Only files with one of these extensions count (`rs`, `toml`; a leading `.` is allowed).
    /// Empty: every file counts.
    pub(crate) extensions: Vec<String>,
    /// `--ignore` globs, matched against a path relative to its root and against its file name.
    /// `*` does not cross a `/`; use `**` for that.
    pub(crate) ignore: Vec<String>,
    /// The trailing debounce: a batch is due once no event counted for this long.
    pub(crate) cooldown: Duration,
    /// `Some(interval)`: poll instead of using inotify.
    pub(crate) poll: Option<Duration>,
    /// Directories whose files count whatever their extension (dev mode's assets: pages reload
    /// without a build when only they change).
    pub(crate) assets: Vec<PathBuf>,
}

/// What the watcher tells besides its batches: facts for the user, which the reporter words
/// (`report::watch_line`). Each is told once where it is a state (the limit, a removed root).
#[derive(Debug, Clone, Copy)]
pub(crate) enum WatchReport<'a> {
    /// inotify cannot be used at all (usually the limit of inotify instances,
    /// `fs.inotify.max_user_instances`): the watcher polls instead.
    InotifyUnavailable {
        /// Why.
        error: &'a ::notify::Error,
    },
    /// The inotify watch limit is reached (`fs.inotify.max_user_watches`): the watcher polls
    /// from now on.
    LimitReached,
    /// Falling back to polling failed too: changes go unseen.
    CannotPollEither {
        /// Why.
        error: &'a ::notify::Error,
    },
    /// A root is on a file system inotify is blind on: it is polled.
    BlindPolled {
        /// The root.
        root: &'a Path,
        /// Its file system (`9p`, `NFS`, …).
        file_system: &'a str,
        /// How often it is polled.
        every: Duration,
    },
    /// A root is on a file system inotify is blind on, and it cannot be polled either:
    /// changes made from the other side go unseen.
    BlindNotPolled {
        /// The root.
        root: &'a Path,
        /// Its file system.
        file_system: &'a str,
        /// Why it cannot be polled.
        error: &'a ::notify::Error,
    },
    /// A root was removed (or moved away): it is looked for until it is back.
    RootRemoved {
        /// The root.
        root: &'a Path,
    },
    /// A removed root is back: it is watched again.
    RootBack {
        /// The root.
        root: &'a Path,
    },
}

/// Where the watcher's facts go: called from the watcher's own thread (or from [`watch`],
/// before it returns).
type Tell = Box<dyn Fn(&WatchReport<'_>) + Send>;

/// A running watcher; dropping it stops its thread and its watches.
pub(crate) struct Watcher {
    /// To the watcher's thread.
    tx: Sender<Msg>,
    /// The watcher's thread.
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            // Dropped from inside `on_change`: the thread ends after the callback returns.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Watcher {
    /// The files the last build read (cargo's dep-info): each counts whatever its extension,
    /// when it is in a watched directory and not ignored. Replaces the previous set; files
    /// that join it are taken as they are now, not as changed, unless modified since the build
    /// started (`since`): the build may have read them before that change.
    pub(crate) fn set_build_inputs(
        &self,
        files: impl IntoIterator<Item = PathBuf>,
        since: SystemTime,
    ) {
        let _ = self
            .tx
            .send(Msg::Inputs(files.into_iter().collect(), since));
    }

    /// Watches more directories (absolute), as the roots given at the start are: a new path
    /// dependency. Their files are taken as they are now, not as changed. Those that are not
    /// directories, or already under a root, are left out.
    pub(crate) fn add_roots(&self, roots: Vec<PathBuf>) {
        let _ = self.tx.send(Msg::AddRoots(roots));
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

/// Starts watching. `on_change` is called from the watcher's own thread with each debounced batch
/// of files whose content really changed: absolute paths, sorted, without duplicates, never
/// empty. It should return quickly (send the batch on), since no event is handled meanwhile.
/// `tell` gets what the watcher tells besides (its fallback to polling, a root removed), from
/// the same thread or from this call; it should return as quickly.
///
/// When this returns, every watch is in place: a later change is seen.
pub(crate) fn watch(
    config: WatchConfig,
    on_change: impl FnMut(Vec<PathBuf>) + Send + 'static,
    tell: impl Fn(&WatchReport<'_>) + Send + 'static,
) -> Result<Watcher, Error> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let mode = match config.poll {
        Some(interval) => Mode::Poll(interval.max(MIN_POLL_INTERVAL)),
        None => Mode::Native,
    };
    start(
        config,
        target_dir,
        mode,
        blind_at,
        Box::new(on_change),
        Box::new(tell),
    )
}

/// What a directory's file system is called if inotify is blind on it.
type BlindCheck = fn(&Path) -> Option<&'static str>;

/// The file system of `dir`, if the native watcher is blind on it (the platform layer knows
/// which those are).
fn blind_at(dir: &Path) -> Option<&'static str> {
    crate::sys::blind_file_system(dir)
}

/// A pure trailing debouncer with the time passed in: each push restarts the cooldown, and the
/// pushed paths are due together once the cooldown has passed since the last push.
#[derive(Debug)]
pub(crate) struct Debouncer {
    cooldown: Duration,
    pending: BTreeSet<PathBuf>,
    deadline: Option<Instant>,
}

impl Debouncer {
    /// A debouncer with nothing pending.
    pub(crate) fn new(cooldown: Duration) -> Self {
        Debouncer {
            cooldown,
            pending: BTreeSet::new(),
            deadline: None,
        }
    }

    /// Adds a path and restarts the cooldown at `now`.
    pub(crate) fn push(&mut self, now: Instant, path: PathBuf) {
        self.pending.insert(path);
        self.touch(now);
    }

    /// Restarts the cooldown at `now` without adding a path (a batch may then be due empty).
    pub(crate) fn touch(&mut self, now: Instant) {
        let deadline = now
            .checked_add(self.cooldown)
            .unwrap_or_else(|| now + Duration::from_hours(24 * 365));
        self.deadline = Some(self.deadline.map_or(deadline, |old| old.max(deadline)));
    }

    /// Changes the cooldown for pushes from now on.
    pub(crate) fn set_cooldown(&mut self, cooldown: Duration) {
        self.cooldown = cooldown;
    }

    /// When the pending batch is due; `None` when nothing is pending.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The pending paths (sorted, without duplicates) if they are due at `now`; the debouncer is
    /// then empty.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        match self.deadline {
            Some(deadline) if deadline <= now => {
                self.deadline = None;
                Some(mem::take(&mut self.pending).into_iter().collect())
            }
            _ => None,
        }
    }
}

/// Which notify backend watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// inotify.
    Native,
    /// `notify::PollWatcher` with this interval.
    Poll(Duration),
    /// No events at all (tests inject them).
    #[cfg(test)]
    Null,
}

/// A message to the watcher's thread.
enum Msg {
    /// From notify.
    Event(::notify::Result<Event>),
    /// The [`Watcher`] was dropped.
    Stop,
    /// The files the last build read, and when it started (see [`Watcher::set_build_inputs`]).
    Inputs(BTreeSet<PathBuf>, SystemTime),
    /// More directories to watch (see [`Watcher::add_roots`]).
    AddRoots(Vec<PathBuf>),
    /// Tests: reply with the state once every earlier message is handled.
    #[cfg(test)]
    Sync(Sender<Status>),
}

/// What tests can see of the thread's state.
#[cfg(test)]
#[derive(Debug, Clone)]
struct Status {
    polling: bool,
    watched: Vec<PathBuf>,
    /// Roots removed and not back yet.
    missing: Vec<PathBuf>,
    /// Every watch ever added, to show that ignored trees never got one.
    watch_calls: usize,
    /// The roots polled because inotify is blind there.
    blind: Vec<PathBuf>,
}

/// A wanted file's metadata, compared to tell a real change from a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamp of a regular file (following symlinks); `None` if there is none.
fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = fs::metadata(path).ok().filter(fs::Metadata::is_file)?;
    Some(Stamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

/// The limit of inotify watches was reached while adding one.
#[derive(Debug)]
struct LimitReached;

/// Whether a file name is an editor's temporary file: Emacs locks and autosaves, vim swap
/// files and its `4913` probe, backups ending in `~`, `JetBrains`' safe-write files.
fn is_editor_temp(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b".#")
        || (name.len() >= 2 && name.starts_with(b"#") && name.ends_with(b"#"))
        || name.ends_with(b".swp")
        || name.ends_with(b".swx")
        || name == b"4913"
        || name.ends_with(b"~")
        || name.ends_with(b"___jb_tmp___")
        || name.ends_with(b"___jb_old___")
}

/// The fixed rules: roots, extensions, globs, cargo's target directory. Shared with the walker.
#[derive(Clone)]
struct Filter {
    roots: Vec<PathBuf>,
    extensions: Vec<OsString>,
    /// Directories whose files count whatever their extension.
    assets: Vec<PathBuf>,
    globs: GlobSet,
    /// `$CARGO_TARGET_DIR`, absolute, and its device and inode if it existed at start.
    target_dir: Option<(PathBuf, Option<(u64, u64)>)>,
    /// The first root's `Cargo.lock`: a build input whatever the extensions and ignore files.
    lock_file: Option<PathBuf>,
}

impl Filter {
    /// The root a path is under.
    fn root_of(&self, path: &Path) -> Option<&Path> {
        self.roots
            .iter()
            .map(PathBuf::as_path)
            .find(|root| path.starts_with(root))
    }

    /// Whether an `--ignore` glob matches the path (relative to its root) or its file name.
    fn glob_ignored(&self, path: &Path) -> bool {
        if self.globs.is_empty() {
            return false;
        }
        let relative = self
            .root_of(path)
            .and_then(|root| path.strip_prefix(root).ok())
            .unwrap_or(path);
        self.globs.is_match(relative)
            || path
                .file_name()
                .is_some_and(|name| self.globs.is_match(Path::new(name)))
    }

    /// Whether a directory may be watched, by the fixed rules (not the ignore files).
    fn dir_allowed(&self, dir: &Path) -> bool {
        if self.roots.iter().any(|root| root == dir) {
            return true;
        }
        let Some(name) = dir.file_name() else {
            return true;
        };
        if name == ".git" {
            return false;
        }
        if name == "target"
            && dir
                .parent()
                .is_some_and(|parent| self.roots.iter().any(|root| root == parent))
        {
            return false;
        }
        if let Some((target, id)) = &self.target_dir {
            if dir == target {
                return false;
            }
            if let Some(id) = id
                && fs::metadata(dir).is_ok_and(|m| (m.dev(), m.ino()) == *id)
            {
                return false;
            }
        }
        !self.glob_ignored(dir) && !dir.join("CACHEDIR.TAG").exists()
    }

    /// Whether a file the build reads passes the fixed rules: any extension, but not an
    /// editor's temporary file nor an ignored path.
    fn input_allowed(&self, path: &Path) -> bool {
        path.file_name().is_some_and(|name| !is_editor_temp(name)) && !self.glob_ignored(path)
    }

    /// Whether a path is the workspace's `Cargo.lock`, unless an `--ignore` glob names it.
    fn is_lock_file(&self, path: &Path) -> bool {
        self.lock_file.as_deref() == Some(path) && !self.glob_ignored(path)
    }

    /// Whether a file name passes the fixed rules: extension, editor temp names, globs.
    fn file_allowed(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return false;
        };
        if is_editor_temp(name) {
            return false;
        }
        if !self.extensions.is_empty()
            && !path
                .extension()
                .is_some_and(|ext| self.extensions.iter().any(|wanted| wanted == ext))
            && !self.assets.iter().any(|dir| path.starts_with(dir))
        {
            return false;
        }
        !self.glob_ignored(path)
    }
}

/// A walk of `root` as the watcher makes it: every ignore file (`.gitignore`, `.ignore`,
/// `.git/info/exclude`, the global excludes file, those of the root's parents too), in a
/// repository or not; hidden files included; symlinks not followed.
fn ignore_walk(root: &Path) -> WalkBuilder {
    let mut builder = WalkBuilder::new(root);
    builder.hidden(false).require_git(false).follow_links(false);
    builder
}

/// The ignore crate's matcher of single paths under `root`, with the walk's rules and
/// precedence (see [`ignore_walk`]).
fn ignore_matcher(root: &Path) -> Option<IncrementalIgnore> {
    ignore_walk(root).build_matchers().pop()
}

/// The watcher thread's state.
struct State {
    filter: Arc<Filter>,
    /// The cooldown asked for (polling may lengthen the effective one).
    cooldown: Duration,
    mode: Mode,
    backend: Box<dyn ::notify::Watcher + Send>,
    /// For new backends.
    tx: Sender<Msg>,
    /// Directories with a watch.
    watched: BTreeSet<PathBuf>,
    /// What the ignore files say, one matcher per root. A matcher reads a directory's ignore
    /// files once, when it first judges a path there: [`State::reload_ignores`] makes new ones
    /// whenever they may have changed.
    ignores: Vec<IncrementalIgnore>,
    /// Every wanted file, as last reported.
    snapshot: BTreeMap<PathBuf, Stamp>,
    /// The files the last build read: wanted whatever their extension.
    inputs: BTreeSet<PathBuf>,
    debouncer: Debouncer,
    /// Walk everything again when the batch is due.
    rescan: bool,
    /// The limit was told.
    warned: bool,
    /// Roots that were removed, looked for again when `root_check` is due.
    missing: BTreeSet<PathBuf>,
    root_check: Instant,
    /// Polls the directories under `blind` while the backend is inotify.
    poller: Option<Box<dyn ::notify::Watcher + Send>>,
    /// The roots on a file system the native watcher is blind on (see `sys::blind_file_system`).
    blind: Vec<PathBuf>,
    blind_check: BlindCheck,
    /// Where the watcher's facts go.
    tell: Tell,
    #[cfg(test)]
    watch_calls: usize,
}

/// Validates the config, walks and watches every root, and starts the thread.
fn start(
    config: WatchConfig,
    target_dir: Option<PathBuf>,
    mode: Mode,
    blind_check: BlindCheck,
    mut on_change: Box<dyn FnMut(Vec<PathBuf>) + Send>,
    tell: Tell,
) -> Result<Watcher, Error> {
    let WatchConfig {
        roots: given_roots,
        extensions,
        ignore,
        cooldown,
        poll: _,
        assets,
    } = config;
    let mut roots: Vec<PathBuf> = Vec::new();
    for root in &given_roots {
        let mut root = std::path::absolute(root)
            .map_err(|err| Error::io(format!("cannot watch {}", root.display()), err))?;
        // Matching is by path prefix: resolve `..` (only then, to keep the user's view of
        // symlinked directories otherwise).
        if root
            .components()
            .any(|part| part == std::path::Component::ParentDir)
            && let Ok(resolved) = fs::canonicalize(&root)
        {
            root = resolved;
        }
        match fs::metadata(&root) {
            Ok(metadata) if metadata.is_dir() => roots.push(root),
            Ok(_) => {
                return Err(Error::usage(format!(
                    "cannot watch {}: not a directory",
                    root.display()
                )));
            }
            Err(err) => {
                let why = match err.raw_os_error() {
                    Some(nix::libc::ENOENT) => "no such directory".to_owned(),
                    Some(nix::libc::ELOOP) => "its symbolic links form a loop".to_owned(),
                    _ => crate::config::describe_io(&err),
                };
                return Err(Error::usage(format!(
                    "cannot watch {}: {why}",
                    root.display()
                )));
            }
        }
    }
    if roots.is_empty() {
        return Err(Error::usage("nothing to watch: no directory given"));
    }
    // The workspace root comes first (cargo's roots), before the roots are sorted.
    let lock_file = roots.first().map(|root| root.join("Cargo.lock"));
    // A root inside another root is already watched through it.
    roots.sort();
    roots.dedup();
    let nested: Vec<PathBuf> = roots
        .iter()
        .filter(|root| {
            roots
                .iter()
                .any(|other| other != *root && root.starts_with(other))
        })
        .cloned()
        .collect();
    roots.retain(|root| !nested.contains(root));

    let mut globs = GlobSetBuilder::new();
    for pattern in &ignore {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|err| {
                Error::usage(format!("invalid --ignore glob '{pattern}': {}", err.kind()))
            })?;
        globs.add(glob);
    }
    let globs = globs
        .build()
        .map_err(|err| Error::usage(format!("invalid --ignore globs: {err}")))?;

    let target_dir = match target_dir {
        Some(dir) => {
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let id = fs::metadata(&dir).ok().map(|m| (m.dev(), m.ino()));
            Some((dir, id))
        }
        None => None,
    };
    let filter = Filter {
        roots,
        extensions: extensions
            .iter()
            .map(|ext| ext.trim_start_matches('.'))
            .filter(|ext| !ext.is_empty())
            .map(OsString::from)
            .collect(),
        assets: assets
            .iter()
            .map(|dir| std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
            .collect(),
        globs,
        target_dir,
        lock_file,
    };

    let (tx, rx) = mpsc::channel();
    let (mode, backend) = match make_backend(mode, &tx) {
        Ok(backend) => (mode, backend),
        Err(error) => {
            tell(&WatchReport::InotifyUnavailable { error: &error });
            let mode = Mode::Poll(FALLBACK_POLL_INTERVAL);
            let backend = make_backend(mode, &tx)
                .map_err(|err| Error::io("cannot watch files", notify_to_io(err)))?;
            (mode, backend)
        }
    };
    let mut state = State {
        filter: Arc::new(filter),
        cooldown,
        mode,
        backend,
        tx: tx.clone(),
        watched: BTreeSet::new(),
        ignores: Vec::new(),
        snapshot: BTreeMap::new(),
        inputs: BTreeSet::new(),
        debouncer: Debouncer::new(effective_cooldown(cooldown, mode)),
        rescan: false,
        warned: false,
        missing: BTreeSet::new(),
        root_check: Instant::now(),
        poller: None,
        blind: Vec::new(),
        blind_check,
        tell,
        #[cfg(test)]
        watch_calls: 0,
    };
    if !matches!(state.mode, Mode::Poll(_)) {
        for root in state.filter.roots.clone() {
            state.note_if_blind(&root);
        }
    }
    for root in state.filter.roots.clone() {
        // Watch each root here to report why one cannot be watched.
        match state.add_watch(&root) {
            Ok(()) => {
                state.watched.insert(root);
            }
            Err(err) if matches!(err.kind, NotifyErrorKind::MaxFilesWatch) => {
                state.switch_to_polling();
            }
            Err(err) => {
                return Err(Error::io(
                    format!("cannot watch {}", root.display()),
                    notify_to_io(err),
                ));
            }
        }
    }
    state.snapshot = state.full_scan();

    let thread = thread::Builder::new()
        .name("mcluster-watch".into())
        .spawn(move || state.run(&rx, &mut on_change))
        .map_err(|err| Error::io("cannot start the file watcher", err))?;
    Ok(Watcher {
        tx,
        thread: Some(thread),
    })
}

/// A notify backend sending its events to the watcher's thread.
fn make_backend(
    mode: Mode,
    tx: &Sender<Msg>,
) -> ::notify::Result<Box<dyn ::notify::Watcher + Send>> {
    let tx = tx.clone();
    let handler = move |event: ::notify::Result<Event>| {
        let _ = tx.send(Msg::Event(event));
    };
    Ok(match mode {
        Mode::Native => Box::new(RecommendedWatcher::new(handler, NotifyConfig::default())?),
        // Content hashes: the poller's mtimes have whole seconds, so a second save within the
        // same second would go unnoticed otherwise.
        Mode::Poll(interval) => Box::new(PollWatcher::new(
            handler,
            NotifyConfig::default()
                .with_poll_interval(interval)
                .with_compare_contents(true),
        )?),
        #[cfg(test)]
        Mode::Null => Box::new(::notify::NullWatcher),
    })
}

/// When polling, one save can be seen by two polls an interval apart: the cooldown must span
/// that to keep them one batch.
fn effective_cooldown(cooldown: Duration, mode: Mode) -> Duration {
    match mode {
        Mode::Poll(interval) => cooldown.max(interval.saturating_mul(3) / 2),
        Mode::Native => cooldown,
        #[cfg(test)]
        Mode::Null => cooldown,
    }
}

/// A notify error as an `io::Error`.
fn notify_to_io(err: ::notify::Error) -> io::Error {
    match err.kind {
        NotifyErrorKind::Io(err) => err,
        _ => io::Error::other(err.to_string()),
    }
}

impl State {
    /// The thread: handle messages, flush due batches, until the [`Watcher`] is dropped.
    fn run(mut self, rx: &Receiver<Msg>, on_change: &mut dyn FnMut(Vec<PathBuf>)) {
        loop {
            let root_check = (!self.missing.is_empty()).then_some(self.root_check);
            let first = match self
                .debouncer
                .deadline()
                .into_iter()
                .chain(root_check)
                .min()
            {
                None => match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => return,
                },
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(msg) => Some(msg),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            if let Some(msg) = first {
                if !self.handle(msg) {
                    return;
                }
                // Handle whatever is already queued before deciding a batch is due, so a late
                // wake-up cannot split one burst in two.
                for _ in 0..DRAIN_LIMIT {
                    match rx.try_recv() {
                        Ok(msg) => {
                            if !self.handle(msg) {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            if !self.missing.is_empty() && self.root_check <= Instant::now() {
                self.look_for_missing_roots(Instant::now());
            }
            if let Some(paths) = self.debouncer.take_due(Instant::now()) {
                let changed = self.flush(paths);
                if !changed.is_empty() {
                    on_change(changed);
                }
            }
        }
    }

    /// Handles one message; `false` to stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Stop => return false,
            Msg::Inputs(inputs, since) => self.set_inputs(inputs, since),
            Msg::AddRoots(roots) => self.add_roots(roots),
            Msg::Event(Ok(event)) => self.on_event(event, Instant::now()),
            Msg::Event(Err(err)) => self.on_error(&err, Instant::now()),
            #[cfg(test)]
            Msg::Sync(reply) => {
                let _ = reply.send(Status {
                    polling: matches!(self.mode, Mode::Poll(_)),
                    watched: self.watched.iter().cloned().collect(),
                    missing: self.missing.iter().cloned().collect(),
                    watch_calls: self.watch_calls,
                    blind: self.blind.clone(),
                });
            }
        }
        true
    }

    fn on_error(&mut self, err: &::notify::Error, now: Instant) {
        if matches!(err.kind, NotifyErrorKind::MaxFilesWatch) {
            if !matches!(self.mode, Mode::Poll(_)) {
                self.fall_back_to_polling(now);
            }
            return;
        }
        // The poller reports a watched directory that vanished on every poll until unwatched.
        for path in &err.paths {
            if self.watched.contains(path) && !path.is_dir() {
                self.dir_gone(path, now);
            }
        }
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        if event.need_rescan() {
            self.rescan = true;
            self.debouncer.touch(now);
        }
        match event.kind {
            // Reads never count; a rename's two halves also come as `From` and `To`.
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {}
            kind => {
                for path in event.paths {
                    self.on_path(kind, path, now);
                }
            }
        }
    }

    fn on_path(&mut self, kind: EventKind, path: PathBuf, now: Instant) {
        let gone = matches!(
            kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
        );
        if gone && self.watched.contains(&path) {
            self.dir_gone(&path, now);
            return;
        }
        let maybe_dir = match kind {
            EventKind::Create(CreateKind::Folder) => true,
            // inotify's rename target and the poller's creations do not say what they are.
            EventKind::Create(CreateKind::Any | CreateKind::Other)
            | EventKind::Modify(ModifyKind::Name(
                RenameMode::To | RenameMode::Any | RenameMode::Other,
            )) => fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()),
            _ => false,
        };
        if maybe_dir {
            if !self.watched.contains(&path) {
                self.add_new_dir(&path, now);
            }
            return;
        }
        let parent_watched = path.parent().is_some_and(|p| self.watched.contains(p));
        if !parent_watched {
            return;
        }
        let name = path.file_name().unwrap_or_default();
        if name == "CACHEDIR.TAG" {
            // Cargo marks a target directory it just created.
            if let Some(parent) = path.parent()
                && !self.filter.roots.iter().any(|root| root == parent)
                && parent.join("CACHEDIR.TAG").exists()
            {
                let parent = parent.to_path_buf();
                self.prune(&parent);
            }
            return;
        }
        if name == ".gitignore" || name == ".ignore" {
            // Events until the rescan are judged by the new rules too.
            self.reload_ignores();
            self.rescan = true;
            self.debouncer.touch(now);
        }
        if self.is_wanted_file(&path) {
            self.debouncer.push(now, path);
        }
    }

    /// Adds one non-recursive watch.
    fn add_watch(&mut self, dir: &Path) -> ::notify::Result<()> {
        #[cfg(test)]
        {
            self.watch_calls += 1;
        }
        if let Some(poller) = &mut self.poller
            && self.blind.iter().any(|root| dir.starts_with(root))
        {
            return poller.watch(dir, RecursiveMode::NonRecursive);
        }
        self.backend.watch(dir, RecursiveMode::NonRecursive)
    }

    /// Removes the watch of one directory, from whichever backend has it.
    fn unwatch(&mut self, dir: &Path) {
        if let Some(poller) = &mut self.poller
            && self.blind.iter().any(|root| dir.starts_with(root))
        {
            let _ = poller.unwatch(dir);
            return;
        }
        let _ = self.backend.unwatch(dir);
    }

    /// Polls `root` from now on if inotify is blind on its file system, and says so once.
    fn note_if_blind(&mut self, root: &Path) {
        let Some(file_system) = (self.blind_check)(root) else {
            return;
        };
        if self.poller.is_none() {
            match make_backend(Mode::Poll(FALLBACK_POLL_INTERVAL), &self.tx) {
                Ok(poller) => self.poller = Some(poller),
                Err(error) => {
                    (self.tell)(&WatchReport::BlindNotPolled {
                        root,
                        file_system,
                        error: &error,
                    });
                    return;
                }
            }
            self.debouncer.set_cooldown(effective_cooldown(
                self.cooldown,
                Mode::Poll(FALLBACK_POLL_INTERVAL),
            ));
        }
        self.blind.push(root.to_path_buf());
        (self.tell)(&WatchReport::BlindPolled {
            root,
            file_system,
            every: FALLBACK_POLL_INTERVAL,
        });
    }

    /// Whether a file counts: in a watched directory, allowed by the fixed rules (or read by the
    /// last build) and not ignored; or the workspace's `Cargo.lock`.
    fn is_wanted_file(&mut self, path: &Path) -> bool {
        if !path.parent().is_some_and(|p| self.watched.contains(p)) {
            return false;
        }
        self.filter.is_lock_file(path)
            || ((self.filter.file_allowed(path)
                || (self.inputs.contains(path) && self.filter.input_allowed(path)))
                && !self.gitignored(path, false))
    }

    /// Adds roots: each is walked and watched, its files taken as they are; a root that was
    /// inside it is one no longer.
    fn add_roots(&mut self, roots: Vec<PathBuf>) {
        for root in roots {
            if !root.is_absolute()
                || !root.is_dir()
                || self
                    .filter
                    .roots
                    .iter()
                    .any(|known| root.starts_with(known))
            {
                continue;
            }
            let mut filter = (*self.filter).clone();
            filter.roots.retain(|known| !known.starts_with(&root));
            filter.roots.push(root.clone());
            filter.roots.sort();
            self.filter = Arc::new(filter);
            self.reload_ignores();
            if !matches!(self.mode, Mode::Poll(_)) {
                self.note_if_blind(&root);
            }
            let mut kept = BTreeSet::new();
            let mut found = BTreeMap::new();
            match self.walk(&root, &mut kept, &mut found) {
                Ok(()) => {
                    for (path, stamp) in found {
                        self.snapshot.entry(path).or_insert(stamp);
                    }
                }
                Err(LimitReached) => self.fall_back_to_polling(Instant::now()),
            }
        }
    }

    /// A new set of build inputs: the files joining it are recorded as they are now (as changed
    /// if modified since the build started), those leaving it (and no longer wanted otherwise)
    /// are forgotten.
    fn set_inputs(&mut self, inputs: BTreeSet<PathBuf>, since: SystemTime) {
        let old = mem::replace(&mut self.inputs, inputs);
        let left: Vec<PathBuf> = old.difference(&self.inputs).cloned().collect();
        for path in left {
            if !self.is_wanted_file(&path) {
                self.snapshot.remove(&path);
            }
        }
        let joined: Vec<PathBuf> = self.inputs.difference(&old).cloned().collect();
        for path in joined {
            if self.is_wanted_file(&path)
                && let Some(stamp) = stamp(&path)
                && !self.snapshot.contains_key(&path)
            {
                if stamp.modified.is_some_and(|modified| modified >= since) {
                    // Not in the snapshot: the batch reports it.
                    self.debouncer.push(Instant::now(), path);
                } else {
                    self.snapshot.insert(path, stamp);
                }
            }
        }
    }

    /// Whether the ignore files say so, as the walk would: the ignore crate's own matcher.
    fn gitignored(&mut self, path: &Path, is_dir: bool) -> bool {
        self.ignores.iter_mut().any(|matcher| {
            path.strip_prefix(matcher.root())
                .is_ok_and(|relative| matcher.matched(relative, is_dir).is_ignore())
        })
    }

    /// Forgets what the ignore files said: the next paths judged read them again.
    fn reload_ignores(&mut self) {
        self.ignores = self
            .filter
            .roots
            .iter()
            .filter_map(|root| ignore_matcher(root))
            .collect();
    }

    /// Walks `start` (a directory already allowed): adds a watch per directory kept (before
    /// listing it, so nothing created meanwhile is missed) and records the wanted files in it.
    fn walk(
        &mut self,
        start: &Path,
        kept: &mut BTreeSet<PathBuf>,
        found: &mut BTreeMap<PathBuf, Stamp>,
    ) -> Result<(), LimitReached> {
        let filter = Arc::clone(&self.filter);
        let mut builder = ignore_walk(start);
        builder.filter_entry(move |entry| {
            entry.file_type().is_some_and(|kind| kind.is_dir()) && filter.dir_allowed(entry.path())
        });
        for entry in builder.build() {
            let Ok(entry) = entry else {
                // Unreadable or vanished: nothing to watch there.
                continue;
            };
            if entry.file_type().is_some_and(|kind| kind.is_dir()) {
                self.add_dir(entry.path(), start, kept, found)?;
            }
        }
        Ok(())
    }

    /// Watches one directory of a walk and lists its wanted files.
    fn add_dir(
        &mut self,
        dir: &Path,
        start: &Path,
        kept: &mut BTreeSet<PathBuf>,
        found: &mut BTreeMap<PathBuf, Stamp>,
    ) -> Result<(), LimitReached> {
        // The walker may enter a directory this walk gave up on; its children are skipped too.
        if dir != start && !dir.parent().is_some_and(|parent| kept.contains(parent)) {
            return Ok(());
        }
        if !self.watched.contains(dir) {
            match self.add_watch(dir) {
                Ok(()) => {
                    self.watched.insert(dir.to_path_buf());
                }
                Err(err) if matches!(err.kind, NotifyErrorKind::MaxFilesWatch) => {
                    return Err(LimitReached);
                }
                Err(_) => return Ok(()),
            }
        }
        // Cargo may have marked it as a target directory since the walker looked.
        if !self.filter.dir_allowed(dir) {
            self.prune(dir);
            return Ok(());
        }
        kept.insert(dir.to_path_buf());
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let path = entry.path();
            if self.is_wanted_file(&path)
                && let Some(stamp) = stamp(&path)
            {
                found.insert(path, stamp);
            }
        }
        Ok(())
    }

    /// Walks every root again; watches directories not yet watched, unwatches those no longer
    /// kept, and returns every wanted file with its stamp. Falls back to polling at the limit.
    fn full_scan(&mut self) -> BTreeMap<PathBuf, Stamp> {
        self.reload_ignores();
        loop {
            let mut kept = BTreeSet::new();
            let mut found = BTreeMap::new();
            let mut result = Ok(());
            for root in self.filter.roots.clone() {
                if self.missing.contains(&root) {
                    continue;
                }
                if !root.is_dir() {
                    self.note_missing_root(&root);
                    continue;
                }
                result = self.walk(&root, &mut kept, &mut found);
                if result.is_err() {
                    break;
                }
            }
            if result.is_err() {
                self.switch_to_polling();
                continue;
            }
            let stale: Vec<PathBuf> = self.watched.difference(&kept).cloned().collect();
            for dir in stale {
                self.unwatch(&dir);
                self.watched.remove(&dir);
            }
            return found;
        }
    }

    /// A directory appeared: unless ignored, walk and watch it; the wanted files in it count.
    fn add_new_dir(&mut self, dir: &Path, now: Instant) {
        // It may be one that was there before, with other ignore files.
        self.reload_ignores();
        if !dir
            .parent()
            .is_some_and(|parent| self.watched.contains(parent))
            || !self.filter.dir_allowed(dir)
            || self.gitignored(dir, true)
        {
            return;
        }
        let mut kept = BTreeSet::new();
        let mut found = BTreeMap::new();
        match self.walk(dir, &mut kept, &mut found) {
            Ok(()) => {
                for path in found.into_keys() {
                    self.debouncer.push(now, path);
                }
            }
            Err(LimitReached) => self.fall_back_to_polling(now),
        }
    }

    /// A watched directory is gone: a root is then looked for until it is back.
    fn dir_gone(&mut self, dir: &Path, now: Instant) {
        self.forget_dir(dir, now);
        if self.filter.roots.iter().any(|root| root == dir) {
            self.note_missing_root(dir);
        }
    }

    /// A root is gone: say so once, and look for it from now on (nothing else would tell: its
    /// parent is not watched).
    fn note_missing_root(&mut self, root: &Path) {
        if self.missing.insert(root.to_path_buf()) {
            (self.tell)(&WatchReport::RootRemoved { root });
            self.root_check = Instant::now() + ROOT_CHECK_INTERVAL;
        }
    }

    /// Watches again the missing roots that are back; the wanted files in them count as changed,
    /// as in any new directory.
    fn look_for_missing_roots(&mut self, now: Instant) {
        self.root_check = now + ROOT_CHECK_INTERVAL;
        for root in self.missing.clone() {
            if !root.is_dir() {
                continue;
            }
            let mut kept = BTreeSet::new();
            let mut found = BTreeMap::new();
            let walked = self.walk(&root, &mut kept, &mut found);
            // A watch that could not be added (permissions, or gone again): try again later.
            if walked.is_ok() && !self.watched.contains(&root) {
                continue;
            }
            self.missing.remove(&root);
            (self.tell)(&WatchReport::RootBack { root: &root });
            match walked {
                Ok(()) => {
                    for path in found.into_keys() {
                        self.debouncer.push(now, path);
                    }
                }
                // Polling walks every root again, this one included.
                Err(LimitReached) => self.fall_back_to_polling(now),
            }
        }
    }

    /// A watched directory is gone (deleted or moved away): drop its watches; the files it held
    /// count as changed.
    fn forget_dir(&mut self, dir: &Path, now: Instant) {
        for path in self.unwatch_tree(dir) {
            self.debouncer.push(now, path);
        }
    }

    /// A watched directory became ignored (a `CACHEDIR.TAG` appeared): drop its watches and its
    /// files, silently.
    fn prune(&mut self, dir: &Path) {
        for path in self.unwatch_tree(dir) {
            self.snapshot.remove(&path);
        }
    }

    /// Drops the watches of `dir` and every directory below it; returns the snapshot's files
    /// under it.
    fn unwatch_tree(&mut self, dir: &Path) -> Vec<PathBuf> {
        for sub in self.take_subtree(dir) {
            // The inotify watch is usually gone already; the poller needs telling.
            self.unwatch(&sub);
        }
        self.snapshot
            .range(dir.to_path_buf()..)
            .map(|(path, _)| path)
            .take_while(|path| path.starts_with(dir))
            .cloned()
            .collect()
    }

    /// Removes a directory and everything under it from the watched set, returning them.
    fn take_subtree(&mut self, dir: &Path) -> Vec<PathBuf> {
        let subtree: Vec<PathBuf> = self
            .watched
            .range(dir.to_path_buf()..)
            .take_while(|path| path.starts_with(dir))
            .cloned()
            .collect();
        for sub in &subtree {
            self.watched.remove(sub);
        }
        subtree
    }

    /// Replaces the backend by a poller: tells the limit once.
    fn switch_to_polling(&mut self) {
        if !self.warned {
            (self.tell)(&WatchReport::LimitReached);
            self.warned = true;
        }
        let mode = Mode::Poll(FALLBACK_POLL_INTERVAL);
        match make_backend(mode, &self.tx) {
            Ok(backend) => {
                // Dropping the inotify watcher frees its watches.
                self.backend = backend;
                self.mode = mode;
                self.watched.clear();
                self.debouncer
                    .set_cooldown(effective_cooldown(self.cooldown, mode));
            }
            Err(error) => (self.tell)(&WatchReport::CannotPollEither { error: &error }),
        }
    }

    /// Falls back to polling while running: watch everything again, and let whatever changed
    /// meanwhile count.
    fn fall_back_to_polling(&mut self, now: Instant) {
        self.switch_to_polling();
        let found = self.full_scan();
        for path in self.diff(&found) {
            self.debouncer.push(now, path);
        }
    }

    /// What a full scan found that differs from the snapshot: created or changed files, and files
    /// that are gone. A file that still exists but is ignored now (a new `.gitignore` rule) is no
    /// change.
    fn diff(&self, found: &BTreeMap<PathBuf, Stamp>) -> BTreeSet<PathBuf> {
        let mut changed: BTreeSet<PathBuf> = found
            .iter()
            .filter(|(path, stamp)| self.snapshot.get(*path) != Some(*stamp))
            .map(|(path, _)| path.clone())
            .collect();
        changed.extend(
            self.snapshot
                .keys()
                .filter(|path| !found.contains_key(*path) && stamp(path).is_none())
                .cloned(),
        );
        changed
    }

    /// A batch is due: the files whose stamp differs from the snapshot (all files after a
    /// rescan). Updates the snapshot.
    fn flush(&mut self, paths: Vec<PathBuf>) -> Vec<PathBuf> {
        if mem::take(&mut self.rescan) {
            let found = self.full_scan();
            let changed = self.diff(&found);
            self.snapshot = found;
            return changed.into_iter().collect();
        }
        let mut changed = Vec::new();
        for path in paths {
            let now = if self.is_wanted_file(&path) {
                stamp(&path)
            } else {
                None
            };
            let before = match now {
                Some(stamp) => self.snapshot.insert(path.clone(), stamp),
                None => self.snapshot.remove(&path),
            };
            if before != now {
                changed.push(path);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs::OpenOptions;
    use std::io::{Read, Write};
    use std::os::unix::fs::{PermissionsExt, symlink};

    use tempfile::TempDir;

    /// Long enough that a busy machine does not split one replayed save in two.
    const COOLDOWN: Duration = Duration::from_millis(200);
    /// How long to wait for a batch before failing.
    const PATIENCE: Duration = Duration::from_secs(20);

    // ---- the debouncer, with synthetic time ----

    fn at(base: Instant, millis: u64) -> Instant {
        base + Duration::from_millis(millis)
    }

    #[test]
    fn debouncer_is_trailing_each_push_moves_the_deadline() {
        let t0 = Instant::now();
        let mut debouncer = Debouncer::new(Duration::from_millis(100));
        assert_eq!(debouncer.deadline(), None);
        assert_eq!(debouncer.take_due(at(t0, 1000)), None);

        debouncer.push(at(t0, 0), PathBuf::from("a.rs"));
        assert_eq!(debouncer.deadline(), Some(at(t0, 100)));
        debouncer.push(at(t0, 60), PathBuf::from("a.rs"));
        assert_eq!(debouncer.deadline(), Some(at(t0, 160)));
        // Not at the first push's deadline, nor just before the last one's.
        assert_eq!(debouncer.take_due(at(t0, 100)), None);
        assert_eq!(debouncer.take_due(at(t0, 159)), None);
        debouncer.push(at(t0, 150), PathBuf::from("a.rs"));
        assert_eq!(debouncer.take_due(at(t0, 249)), None);
        assert_eq!(
            debouncer.take_due(at(t0, 250)),
            Some(vec![PathBuf::from("a.rs")])
        );
    }

    #[test]
    fn debouncer_merges_distinct_paths_sorted_and_is_empty_after_take() {
        let t0 = Instant::now();
        let mut debouncer = Debouncer::new(Duration::from_millis(100));
        debouncer.push(at(t0, 0), PathBuf::from("b.rs"));
        debouncer.push(at(t0, 10), PathBuf::from("a.rs"));
        debouncer.push(at(t0, 20), PathBuf::from("b.rs"));
        assert_eq!(
            debouncer.take_due(at(t0, 500)),
            Some(vec![PathBuf::from("a.rs"), PathBuf::from("b.rs")])
        );
        assert_eq!(debouncer.deadline(), None);
        assert_eq!(debouncer.take_due(at(t0, 10_000)), None);
        // A push with an older clock never moves the deadline back.
        debouncer.push(at(t0, 1000), PathBuf::from("c.rs"));
        debouncer.push(at(t0, 900), PathBuf::from("d.rs"));
        assert_eq!(debouncer.deadline(), Some(at(t0, 1100)));
        // A touch (rescan) is due with no path.
        let mut touched = Debouncer::new(Duration::from_millis(100));
        touched.touch(at(t0, 0));
        assert_eq!(touched.take_due(at(t0, 100)), Some(vec![]));
    }

    /// What a watcher told, by kind (`LimitReached`, `RootRemoved`), in order.
    type Told = Arc<std::sync::Mutex<Vec<String>>>;

    /// A `tell` that keeps the kind of each fact told, and what it keeps them in.
    fn telling() -> (Tell, Told) {
        let told = Told::default();
        let keep = told.clone();
        let tell = Box::new(move |report: &WatchReport<'_>| {
            let kind = format!("{report:?}");
            let kind = kind.split([' ', '{']).next().unwrap_or_default().to_owned();
            keep.lock().unwrap().push(kind);
        });
        (tell, told)
    }

    /// Pretends the directories named `remote` are on a file system inotify is blind on.
    fn remote_is_blind(dir: &Path) -> Option<&'static str> {
        (dir.file_name() == Some(OsStr::new("remote"))).then_some("a test file system")
    }

    #[test]
    fn a_root_where_inotify_is_blind_is_polled_and_only_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (local, remote) = (dir.path().join("local"), dir.path().join("remote"));
        write_file(&local.join("a.rs"), OLD);
        write_file(&remote.join("src/b.rs"), OLD);
        let (tx, rx) = mpsc::channel();
        let (tell, told) = telling();
        // The backend sees nothing: whatever is reported, the poller saw.
        let watcher = start(
            WatchConfig {
                assets: Vec::new(),
                roots: vec![local.clone(), remote.clone()],
                extensions: vec!["rs".into()],
                ignore: Vec::new(),
                cooldown: COOLDOWN,
                poll: None,
            },
            None,
            Mode::Null,
            remote_is_blind,
            Box::new(move |batch| {
                let _ = tx.send(batch);
            }),
            tell,
        )
        .expect("watch");
        assert_eq!(
            *told.lock().unwrap(),
            ["BlindPolled"],
            "told once, at the start"
        );
        write_file(&remote.join("src/b.rs"), NEW);
        assert_eq!(
            rx.recv_timeout(PATIENCE).expect("a batch"),
            [remote.join("src/b.rs")]
        );
        write_file(&local.join("a.rs"), NEW);
        write_file(&remote.join("src/c.rs"), NEW);
        assert_eq!(
            rx.recv_timeout(PATIENCE).expect("a batch"),
            [remote.join("src/c.rs")],
            "the local root is left to inotify"
        );
        let (reply, status) = mpsc::channel();
        watcher.tx.send(Msg::Sync(reply)).expect("watcher thread");
        let status = status.recv_timeout(PATIENCE).expect("watcher thread");
        assert_eq!(status.blind, [remote]);
        assert!(!status.polling);
        assert_eq!(*told.lock().unwrap(), ["BlindPolled"]);
    }

    #[test]
    fn editor_temp_names_are_recognised() {
        for name in [
            ".#main.rs",
            "#main.rs#",
            ".main.rs.swp",
            ".main.rs.swx",
            "4913",
            "main.rs~",
            "main.rs___jb_tmp___",
            "main.rs___jb_old___",
        ] {
            assert!(is_editor_temp(OsStr::new(name)), "{name}");
        }
        for name in ["main.rs", "#", "a#b.rs", "49130", "mod.rs.bak"] {
            assert!(!is_editor_temp(OsStr::new(name)), "{name}");
        }
    }

    // ---- the real watcher in a temporary directory ----

    /// A watcher on a temporary directory whose batches arrive on a channel.
    struct Harness {
        // Dropped first: no batch while the directory is removed.
        watcher: Watcher,
        rx: Receiver<Vec<PathBuf>>,
        told: Told,
        dir: TempDir,
        sentinels: usize,
    }

    /// How to start a harness.
    struct Setup {
        extensions: Vec<String>,
        ignore: Vec<String>,
        target_dir: Option<&'static str>,
        mode: Mode,
    }

    impl Default for Setup {
        fn default() -> Self {
            Setup {
                extensions: vec!["rs".into(), "toml".into()],
                ignore: Vec::new(),
                target_dir: None,
                mode: Mode::Native,
            }
        }
    }

    impl Harness {
        /// Lays out files with `files` (path, content), then starts watching.
        fn new(files: &[(&str, &str)]) -> Self {
            Self::with(files, Setup::default())
        }

        fn with(files: &[(&str, &str)], setup: Setup) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            assert_eq!(
                fs::canonicalize(dir.path()).expect("canonicalize"),
                dir.path(),
                "the temporary directory should have no symlink in its path"
            );
            for (path, content) in files {
                write_file(&dir.path().join(path), content);
            }
            let config = WatchConfig {
                assets: Vec::new(),
                roots: vec![dir.path().to_path_buf()],
                extensions: setup.extensions,
                ignore: setup.ignore,
                cooldown: COOLDOWN,
                poll: None,
            };
            let (tx, rx) = mpsc::channel();
            let (tell, told) = telling();
            let watcher = start(
                config,
                setup.target_dir.map(|target| dir.path().join(target)),
                setup.mode,
                blind_at,
                Box::new(move |batch| {
                    let _ = tx.send(batch);
                }),
                tell,
            )
            .expect("watch");
            Harness {
                watcher,
                rx,
                told,
                dir,
                sentinels: 0,
            }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// What the watcher told so far, by kind.
        fn told(&self) -> Vec<String> {
            self.told.lock().unwrap().clone()
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.dir.path().join(relative)
        }

        fn write(&self, relative: &str, content: &str) {
            write_file(&self.path(relative), content);
        }

        fn next_batch(&self) -> Vec<PathBuf> {
            self.rx
                .recv_timeout(PATIENCE)
                .expect("no batch within 20 s")
        }

        /// The next batch is exactly these files.
        fn expect_batch(&self, relatives: &[&str]) {
            let mut expected: Vec<PathBuf> = relatives.iter().map(|r| self.path(r)).collect();
            expected.sort();
            assert_eq!(self.next_batch(), expected);
        }

        /// Nothing is pending: a write of `sentinel.rs` is the next batch, alone. Events are
        /// ordered, so any batch still due for earlier edits would come first or with it.
        fn expect_quiet(&mut self) {
            self.sentinels += 1;
            self.write("sentinel.rs", &"// sentinel\n".repeat(self.sentinels));
            self.expect_batch(&["sentinel.rs"]);
        }

        /// The thread's state once it has handled everything sent so far.
        fn status(&self) -> Status {
            let (tx, rx) = mpsc::channel();
            self.watcher.tx.send(Msg::Sync(tx)).expect("watcher thread");
            rx.recv_timeout(PATIENCE).expect("watcher thread")
        }

        /// Pretends notify sent this.
        fn inject(&self, event: ::notify::Result<Event>) {
            self.watcher
                .tx
                .send(Msg::Event(event))
                .expect("watcher thread");
        }

        fn watched(&self) -> Vec<String> {
            self.status()
                .watched
                .iter()
                .map(|dir| {
                    dir.strip_prefix(self.root())
                        .expect("under the root")
                        .display()
                        .to_string()
                })
                .collect()
        }
    }

    fn write_file(path: &Path, content: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create_dir_all");
        }
        fs::write(path, content).expect("write");
    }

    const OLD: &str = "fn main() {}\n";
    const NEW: &str = "fn main() {\n    println!(\"saved\");\n}\n";

    // ---- one save in each editor is one batch ----

    #[test]
    fn vim_save_is_one_batch() {
        let mut h = Harness::new(&[("file.rs", OLD)]);
        let file = h.path("file.rs");
        let backup = h.path("file.rs~");
        // Vim checks it may create a file with the right owner: the `4913` probe.
        let probe = h.path("4913");
        drop(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
                .expect("probe"),
        );
        fs::remove_file(&probe).expect("remove probe");
        // Backup by rename, then a new file, then the backup goes.
        fs::rename(&file, &backup).expect("backup");
        let mut new = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .expect("new file");
        new.write_all(NEW.as_bytes()).expect("write");
        drop(new);
        let permissions = fs::metadata(&backup).expect("backup").permissions();
        fs::set_permissions(&file, permissions).expect("chmod");
        fs::remove_file(&backup).expect("remove backup");

        h.expect_batch(&["file.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn jetbrains_safe_write_is_one_batch() {
        let mut h = Harness::new(&[("file.rs", OLD)]);
        let file = h.path("file.rs");
        let tmp = h.path("file.rs___jb_tmp___");
        let old = h.path("file.rs___jb_old___");
        fs::write(&tmp, NEW).expect("tmp");
        fs::rename(&file, &old).expect("old");
        fs::rename(&tmp, &file).expect("tmp to file");
        fs::remove_file(&old).expect("remove old");

        h.expect_batch(&["file.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn vscode_truncate_then_write_is_one_batch() {
        let mut h = Harness::new(&[("file.rs", OLD)]);
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(h.path("file.rs"))
            .expect("open");
        let (first, second) = NEW.split_at(10);
        file.write_all(first.as_bytes()).expect("write");
        file.flush().expect("flush");
        file.write_all(second.as_bytes()).expect("write");
        drop(file);

        h.expect_batch(&["file.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn emacs_save_is_one_batch() {
        let mut h = Harness::new(&[("file.rs", OLD)]);
        let lock = h.path(".#file.rs");
        symlink("user@host.4242:1700000000", &lock).expect("lock");
        h.write("file.rs", NEW);
        fs::remove_file(&lock).expect("unlock");

        h.expect_batch(&["file.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn sed_in_place_is_one_batch() {
        let mut h = Harness::new(&[("file.rs", OLD)]);
        let tmp = h.path("sedQx81Tz");
        fs::write(&tmp, NEW).expect("tmp");
        let permissions = fs::metadata(h.path("file.rs")).expect("file").permissions();
        fs::set_permissions(&tmp, permissions).expect("chmod");
        fs::rename(&tmp, h.path("file.rs")).expect("rename");

        h.expect_batch(&["file.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn checkout_burst_of_fifty_files_is_one_batch() {
        let existing: Vec<(String, String)> = (0..25)
            .map(|i| (format!("src/f{i:02}.rs"), format!("// {i}\n")))
            .collect();
        let files: Vec<(&str, &str)> = existing
            .iter()
            .map(|(path, content)| (path.as_str(), content.as_str()))
            .collect();
        let mut h = Harness::new(&files);
        let names: Vec<String> = (0..50).map(|i| format!("src/f{i:02}.rs")).collect();
        for name in &names {
            h.write(name, &format!("// checked out {name}\n"));
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        h.expect_batch(&names);
        h.expect_quiet();
    }

    // ---- what does not count ----

    #[test]
    fn emacs_lock_and_autosave_files_are_not_changes() {
        // Where symlinks fail Emacs writes its lock as a regular file, and `.#file.rs` ends in
        // `.rs`.
        let mut h = Harness::new(&[("file.rs", OLD)]);
        h.write(".#file.rs", "user@host.4242:1700000000");
        h.write("#file.rs#", NEW);
        h.expect_quiet();
        fs::remove_file(h.path(".#file.rs")).expect("unlock");
        fs::remove_file(h.path("#file.rs#")).expect("autosave");
        h.expect_quiet();
    }

    #[test]
    fn editor_temp_files_do_not_count_even_without_an_extension_filter() {
        let mut h = Harness::with(
            &[("file.rs", OLD)],
            Setup {
                extensions: Vec::new(),
                ..Setup::default()
            },
        );
        for name in [
            "4913",
            "file.rs~",
            ".file.rs.swp",
            ".file.rs.swx",
            "file.rs___jb_tmp___",
            "file.rs___jb_old___",
            "#file.rs#",
            ".#file.rs",
        ] {
            h.write(name, NEW);
        }
        h.expect_quiet();
        // Without a filter, any other file counts.
        h.write("notes.txt", "hello");
        h.expect_batch(&["notes.txt"]);
    }

    #[test]
    fn a_read_only_open_is_not_a_change() {
        let mut h = Harness::new(&[("file.rs", OLD), ("Cargo.toml", "[package]\n")]);
        let mut text = String::new();
        fs::File::open(h.path("file.rs"))
            .expect("open")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, OLD);
        fs::read(h.path("Cargo.toml")).expect("read");
        fs::read_dir(h.root()).expect("list").for_each(drop);
        h.expect_quiet();
    }

    #[test]
    fn reads_do_not_delay_a_batch() {
        // An editor or rust-analyzer reading files all the time must not hold a save back:
        // reads are not events that restart the cooldown.
        let mut h = Harness::new(&[("file.rs", OLD), ("lib.rs", OLD)]);
        h.write("file.rs", NEW);
        let started = Instant::now();
        let batch = loop {
            fs::read(h.path("lib.rs")).expect("read");
            fs::read(h.path("file.rs")).expect("read");
            match h.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(batch) => break batch,
                Err(RecvTimeoutError::Timeout) => {
                    assert!(started.elapsed() < PATIENCE, "reads held the batch back");
                }
                Err(RecvTimeoutError::Disconnected) => panic!("watcher gone"),
            }
        };
        assert_eq!(batch, vec![h.path("file.rs")]);
        h.expect_quiet();
    }

    #[test]
    fn metadata_only_changes_are_not_changes() {
        let mut h = Harness::new(&[("file.rs", OLD)]);
        let file = h.path("file.rs");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        // Renamed away and back: same inode, size and mtime.
        fs::rename(&file, h.path("file.rs.moved")).expect("away");
        fs::rename(h.path("file.rs.moved"), &file).expect("back");
        h.expect_quiet();
    }

    #[test]
    fn ignored_trees_get_no_watch_and_writes_there_do_not_count() {
        let mut h = Harness::with(
            &[
                ("src/main.rs", OLD),
                (".gitignore", "gen/\n"),
                ("target/debug/build.rs", OLD),
                (".git/HEAD", "ref: refs/heads/main\n"),
                (".git/hooks/hook.rs", OLD),
                ("gen/out.rs", OLD),
                (
                    "cache/CACHEDIR.TAG",
                    "Signature: 8a477f597d28d172789f06886806bc55\n",
                ),
                ("cache/x.rs", OLD),
                ("build/x.rs", OLD),
                ("scratch/x.rs", OLD),
            ],
            Setup {
                ignore: vec!["scratch".into()],
                target_dir: Some("build"),
                ..Setup::default()
            },
        );
        // Pruned before any watch was added: no watch was wasted on an ignored tree.
        assert_eq!(h.watched(), vec![String::new(), "src".to_owned()]);
        let status = h.status();
        assert!(!status.polling);
        assert_eq!(status.watch_calls, 2);

        for path in [
            "target/debug/build.rs",
            "target/new.rs",
            ".git/hooks/hook.rs",
            ".git/new.rs",
            "gen/out.rs",
            "gen/new.rs",
            "cache/x.rs",
            "cache/new.rs",
            "build/x.rs",
            "scratch/x.rs",
        ] {
            h.write(path, NEW);
        }
        h.expect_quiet();
        h.write("src/main.rs", NEW);
        h.expect_batch(&["src/main.rs"]);
    }

    #[test]
    fn ignored_files_and_other_extensions_do_not_count() {
        let mut h = Harness::with(
            &[
                (".gitignore", "*.gen.rs\n!keep.gen.rs\n"),
                ("src/.gitignore", "local.rs\n"),
                ("src/main.rs", OLD),
                ("src/generated/a.rs", OLD),
                ("Cargo.toml", "[package]\n"),
            ],
            Setup {
                ignore: vec!["*.tmp.rs".into(), "src/generated/*.rs".into()],
                ..Setup::default()
            },
        );
        h.write("a.gen.rs", NEW);
        h.write("src/b.gen.rs", NEW);
        h.write("src/local.rs", NEW);
        h.write("notes.txt", NEW);
        h.write("README", NEW);
        h.write("x.tmp.rs", NEW);
        h.write("src/y.tmp.rs", NEW);
        h.write("src/generated/a.rs", NEW);
        h.expect_quiet();

        h.write("keep.gen.rs", NEW);
        h.write("Cargo.toml", "[package]\nname = \"x\"\n");
        h.write("src/generated/deeper/c.rs", NEW);
        h.expect_batch(&["Cargo.toml", "keep.gen.rs", "src/generated/deeper/c.rs"]);
        h.expect_quiet();
    }

    /// `.ignore` brings back a directory `.gitignore` ignores (to watch generated code that git
    /// does not keep): the `.gitignore`'s rules for the files in it still apply, as in ripgrep.
    /// Bringing back a directory brings back no file that a rule names.
    #[test]
    fn a_directory_brought_back_by_dot_ignore_keeps_gitignore_s_rules_for_its_files() {
        let mut h = Harness::new(&[
            (".gitignore", "gen/\n*.tmp.rs\n"),
            (".ignore", "!gen/\n"),
            ("gen/a.rs", OLD),
            ("gen/b.tmp.rs", OLD),
        ]);
        assert_eq!(h.watched(), vec![String::new(), "gen".to_owned()]);
        h.write("gen/b.tmp.rs", NEW);
        h.write("gen/c.tmp.rs", NEW);
        h.expect_quiet();
        h.write("gen/a.rs", NEW);
        h.write("gen/d.rs", NEW);
        h.expect_batch(&["gen/a.rs", "gen/d.rs"]);
    }

    /// The same across levels, as git has it: a nested `.gitignore` brings back a directory the
    /// root's ignores, and the root's rule for file names still applies inside it.
    #[test]
    fn a_directory_brought_back_by_a_nested_gitignore_keeps_the_rules_above_for_its_files() {
        let mut h = Harness::new(&[
            (".gitignore", "out/\n*.generated.rs\n"),
            ("app/.gitignore", "!out/\n"),
            ("app/out/lib.rs", OLD),
            ("app/out/x.generated.rs", OLD),
            ("out/y.rs", OLD),
        ]);
        assert_eq!(h.watched(), vec!["", "app", "app/out"]);
        h.write("app/out/x.generated.rs", NEW);
        h.write("out/y.rs", NEW);
        h.expect_quiet();
        h.write("app/out/lib.rs", NEW);
        h.expect_batch(&["app/out/lib.rs"]);
    }

    /// An `--ignore` glob is a fixed rule: no `!pattern` of an ignore file brings its files back.
    #[test]
    fn no_ignore_file_brings_back_what_an_ignore_glob_names() {
        let mut h = Harness::with(
            &[
                (".gitignore", "!keep.gen.rs\n"),
                (".ignore", "!*.gen.rs\n"),
                ("keep.gen.rs", OLD),
                ("src/main.rs", OLD),
            ],
            Setup {
                ignore: vec!["*.gen.rs".into()],
                ..Setup::default()
            },
        );
        h.write("keep.gen.rs", NEW);
        h.write("src/other.gen.rs", NEW);
        h.expect_quiet();
        h.write("src/main.rs", NEW);
        h.expect_batch(&["src/main.rs"]);
    }

    /// The matcher keeps what a directory's ignore files said: a directory that comes back with
    /// other ignore files is judged by those.
    #[test]
    fn a_directory_that_comes_back_with_other_ignore_files_is_judged_by_them() {
        let mut h = Harness::new(&[
            ("sub/.gitignore", "a.rs\n"),
            ("sub/a.rs", OLD),
            ("sub/b.rs", OLD),
        ]);
        h.write("sub/a.rs", NEW);
        h.expect_quiet();
        let away = tempfile::tempdir().expect("tempdir");
        fs::rename(h.path("sub"), away.path().join("old")).expect("mv");
        h.expect_batch(&["sub/b.rs"]);
        let staged = away.path().join("new");
        write_file(&staged.join(".gitignore"), "b.rs\n");
        write_file(&staged.join("a.rs"), OLD);
        write_file(&staged.join("b.rs"), OLD);
        fs::rename(&staged, h.path("sub")).expect("mv");
        h.expect_batch(&["sub/a.rs"]);
        h.write("sub/b.rs", NEW);
        h.expect_quiet();
    }

    #[test]
    fn the_workspace_lock_file_counts_whatever_the_extensions_and_ignore_files() {
        // A library-style `.gitignore` lists `Cargo.lock`; cargo builds from it all the same.
        let mut h = Harness::with(
            &[
                (".gitignore", "/target\nCargo.lock\n"),
                ("Cargo.toml", "[package]\n"),
                ("Cargo.lock", "version = 4\n"),
                ("src/main.rs", OLD),
                ("member/Cargo.lock", "version = 4\n"),
            ],
            Setup {
                extensions: vec!["rs".into()],
                ..Setup::default()
            },
        );
        h.write("Cargo.lock", "# pinned\nversion = 4\n");
        h.expect_batch(&["Cargo.lock"]);
        // Only the first root's: another lock file is no build input of this workspace.
        h.write("member/Cargo.lock", "# pinned\nversion = 4\n");
        h.expect_quiet();

        // An `--ignore` glob leaves it out, as it does any file.
        let mut h = Harness::with(
            &[("Cargo.lock", "version = 4\n"), ("src/main.rs", OLD)],
            Setup {
                ignore: vec!["Cargo.lock".into()],
                ..Setup::default()
            },
        );
        h.write("Cargo.lock", "# pinned\nversion = 4\n");
        h.expect_quiet();
    }

    #[test]
    fn files_the_build_read_count_whatever_their_extension() {
        let mut h = Harness::with(
            &[
                (".gitignore", "/dist/\n"),
                ("src/main.rs", OLD),
                ("static/banner.html", "<p>1</p>"),
                ("static/other.html", "<p>1</p>"),
                ("queries/q.sql", "select 1"),
                ("dist/bundle.js", "1"),
                ("secret/x.sql", "select 1"),
            ],
            Setup {
                ignore: vec!["secret".into()],
                ..Setup::default()
            },
        );
        h.write("static/banner.html", "<p>2</p>");
        h.expect_quiet();
        let inputs = [
            "src/main.rs",
            "static/banner.html",
            "queries/q.sql",
            "dist/bundle.js",
            "secret/x.sql",
            "outside/none.txt",
        ];
        // A build that started after every write so far (after the newest mtime: a file's
        // time is never compared with the wall clock, which the kernel's coarse clock may lag).
        let mtime = |path: PathBuf| fs::metadata(path).unwrap().modified().unwrap();
        let after_every_write = inputs
            .iter()
            .filter_map(|input| fs::metadata(h.path(input)).ok()?.modified().ok())
            .max()
            .unwrap()
            + Duration::from_secs(1);
        h.watcher
            .set_build_inputs(inputs.iter().map(|input| h.path(input)), after_every_write);
        // Taken as they are now: the earlier write is no change.
        h.expect_quiet();
        h.write("static/banner.html", "<p>3</p>");
        h.write("queries/q.sql", "select 2");
        h.write("static/other.html", "<p>2</p>");
        // Ignored trees stay ignored, inputs or not.
        h.write("dist/bundle.js", "2");
        h.write("secret/x.sql", "select 2");
        h.expect_batch(&["queries/q.sql", "static/banner.html"]);

        // A later build no longer reads the template: it no longer counts.
        h.watcher.set_build_inputs(
            [h.path("src/main.rs")],
            mtime(h.path("static/banner.html")) + Duration::from_secs(1),
        );
        h.write("static/banner.html", "<p>4</p>");
        h.expect_quiet();

        // Changed after the build that read it started, before the watcher heard of it.
        h.write("queries/other.sql", "select 3");
        h.watcher.set_build_inputs(
            [h.path("src/main.rs"), h.path("queries/other.sql")],
            mtime(h.path("queries/other.sql")),
        );
        h.expect_batch(&["queries/other.sql"]);
    }

    #[test]
    fn ignore_files_edited_while_running_take_effect() {
        let mut h = Harness::new(&[("file.rs", OLD), ("old.rs", OLD), ("gen/x.rs", OLD)]);
        h.write(".gitignore", "extra.rs\ngen/\n");
        h.expect_quiet();
        h.write("extra.rs", NEW);
        h.write("gen/x.rs", NEW);
        h.expect_quiet();
        assert_eq!(h.watched(), vec![String::new()]);
        // And back: files edited while ignored come into view (they count), and the directory
        // is watched again.
        fs::remove_file(h.path(".gitignore")).expect("rm");
        h.expect_batch(&["extra.rs", "gen/x.rs"]);
        h.write("gen/x.rs", OLD);
        h.expect_batch(&["gen/x.rs"]);
    }

    // ---- directories that come and go ----

    #[test]
    fn new_directories_are_watched_and_their_files_count() {
        let mut h = Harness::new(&[("file.rs", OLD)]);
        fs::create_dir(h.path("sub")).expect("mkdir");
        h.write("sub/new.rs", NEW);
        h.expect_batch(&["sub/new.rs"]);

        // Nested directories created at once, faster than watches can be added.
        h.write("deep/a/b/x.rs", NEW);
        h.write("deep/a/y.rs", NEW);
        h.expect_batch(&["deep/a/b/x.rs", "deep/a/y.rs"]);

        // The new directories are watched: an edit there is seen.
        h.write("sub/new.rs", OLD);
        h.expect_batch(&["sub/new.rs"]);
        h.write("deep/a/b/x.rs", OLD);
        h.expect_batch(&["deep/a/b/x.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn new_cargo_target_directories_are_ignored() {
        let mut h = Harness::new(&[("file.rs", OLD), ("member/lib.rs", OLD)]);
        // `target/` at a root, created after the start.
        h.write("target/debug/build/out.rs", NEW);
        h.write("target/x.rs", NEW);
        h.expect_quiet();

        // A new directory is watched, until cargo marks it with CACHEDIR.TAG.
        h.write("member/tgt/a.rs", NEW);
        h.expect_batch(&["member/tgt/a.rs"]);
        h.write(
            "member/tgt/CACHEDIR.TAG",
            "Signature: 8a477f597d28d172789f06886806bc55\n",
        );
        h.write("member/tgt/a.rs", OLD);
        h.write("member/tgt/b.rs", NEW);
        h.write("member/tgt/debug/out.rs", NEW);
        h.expect_quiet();
        // Its files left the snapshot silently: `cargo clean` is no change either.
        fs::remove_dir_all(h.path("member/tgt")).expect("rm -rf");
        h.expect_quiet();
        let watched = h.watched();
        assert_eq!(watched, vec![String::new(), "member".to_owned()]);
    }

    #[test]
    fn removed_and_renamed_directories_report_their_files() {
        let mut h = Harness::new(&[("gone/a.rs", OLD), ("gone/b.rs", OLD), ("old/c.rs", OLD)]);
        fs::remove_dir_all(h.path("gone")).expect("rm -rf");
        h.expect_batch(&["gone/a.rs", "gone/b.rs"]);

        fs::rename(h.path("old"), h.path("new")).expect("mv");
        h.expect_batch(&["new/c.rs", "old/c.rs"]);
        h.write("new/c.rs", NEW);
        h.expect_batch(&["new/c.rs"]);
        assert!(!h.watched().contains(&"old".to_owned()));
        h.expect_quiet();
    }

    /// Waits until the thread's state satisfies `condition`.
    fn wait_for_status(h: &Harness, what: &str, condition: impl Fn(&Status) -> bool) {
        let started = Instant::now();
        while !condition(&h.status()) {
            assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `rm -rf ROOT`, `mkdir ROOT`, then an edit in it is a batch again.
    fn removed_root_comes_back(mode: Mode) {
        let mut h = Harness::with(
            &[("a.rs", OLD), ("sub/b.rs", OLD)],
            Setup {
                mode,
                ..Setup::default()
            },
        );
        fs::remove_dir_all(h.root()).expect("rm -rf");
        h.expect_batch(&["a.rs", "sub/b.rs"]);
        let root = h.root().to_path_buf();
        wait_for_status(&h, "the root to be missing", |s| {
            s.missing == [root.clone()]
        });
        assert_eq!(h.told(), ["RootRemoved"]);

        fs::create_dir(h.root()).expect("mkdir");
        wait_for_status(&h, "the root to be back", |s| {
            s.missing.is_empty() && s.watched == [root.clone()]
        });
        assert_eq!(h.told(), ["RootRemoved", "RootBack"]);
        h.write("a.rs", NEW);
        h.expect_batch(&["a.rs"]);
        h.write("sub/c.rs", NEW);
        h.expect_batch(&["sub/c.rs"]);
        h.write("sub/c.rs", OLD);
        h.expect_batch(&["sub/c.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn a_removed_root_is_watched_again_when_it_comes_back() {
        removed_root_comes_back(Mode::Native);
    }

    #[test]
    fn a_removed_root_is_watched_again_when_it_comes_back_when_polling() {
        removed_root_comes_back(Mode::Poll(Duration::from_millis(100)));
    }

    #[test]
    fn a_root_moved_away_and_back_is_watched_again_and_its_files_count() {
        let mut h = Harness::new(&[("a.rs", OLD), ("b.rs", OLD)]);
        let parked = tempfile::tempdir().expect("tempdir");
        let away = parked.path().join("away");
        // Its files left with it, and come back with one more.
        fs::rename(h.root(), &away).expect("mv away");
        h.expect_batch(&["a.rs", "b.rs"]);
        let root = h.root().to_path_buf();
        wait_for_status(&h, "the root to be missing", |s| {
            s.missing == [root.clone()]
        });
        fs::write(away.join("new.rs"), NEW).expect("write");
        fs::rename(&away, h.root()).expect("mv back");
        h.expect_batch(&["a.rs", "b.rs", "new.rs"]);
        h.write("b.rs", NEW);
        h.expect_batch(&["b.rs"]);
        h.expect_quiet();
    }

    // ---- overflow and the watch limit ----

    fn rescan_event() -> Event {
        Event::new(EventKind::Other).set_flag(::notify::event::Flag::Rescan)
    }

    #[test]
    fn queue_overflow_rescans_and_reports_the_real_changes() {
        // No backend events at all: only the rescan can find the changes.
        let h = Harness::with(
            &[("a.rs", OLD), ("b.rs", OLD), ("same.rs", OLD)],
            Setup {
                mode: Mode::Null,
                ..Setup::default()
            },
        );
        h.write("a.rs", NEW);
        fs::remove_file(h.path("b.rs")).expect("rm");
        h.write("c.rs", NEW);
        h.write("d/e.rs", NEW);
        h.write("notes.txt", NEW);
        fs::read(h.path("same.rs")).expect("read");
        h.inject(Ok(rescan_event()));
        h.expect_batch(&["a.rs", "b.rs", "c.rs", "d/e.rs"]);
        assert!(h.watched().contains(&"d".to_owned()));

        // The snapshot is up to date: the next rescan reports only what changed since.
        h.write("f.rs", NEW);
        h.inject(Ok(rescan_event()));
        h.expect_batch(&["f.rs"]);
    }

    #[test]
    fn queue_overflow_without_changes_reports_nothing() {
        let mut h = Harness::new(&[("a.rs", OLD), ("sub/b.rs", OLD)]);
        h.inject(Ok(rescan_event()));
        h.expect_quiet();
        h.write("sub/b.rs", NEW);
        h.expect_batch(&["sub/b.rs"]);
    }

    #[test]
    fn watch_limit_falls_back_to_polling() {
        let mut h = Harness::new(&[("file.rs", OLD), ("sub/x.rs", OLD)]);
        h.inject(Err(::notify::Error::new(NotifyErrorKind::MaxFilesWatch)));
        let status = h.status();
        assert!(status.polling);
        assert_eq!(h.watched(), vec![String::new(), "sub".to_owned()]);
        assert_eq!(h.told(), ["LimitReached"]);
        h.inject(Err(::notify::Error::new(NotifyErrorKind::MaxFilesWatch)));
        h.status();
        assert_eq!(h.told(), ["LimitReached"], "told once");

        // The inotify watcher is gone: the poller sees these.
        h.write("file.rs", NEW);
        h.expect_batch(&["file.rs"]);
        h.write("new/y.rs", NEW);
        h.expect_batch(&["new/y.rs"]);
        h.expect_quiet();
    }

    #[test]
    fn polling_mode_sees_saves_and_new_directories() {
        let mut h = Harness::with(
            &[("file.rs", OLD)],
            Setup {
                mode: Mode::Poll(Duration::from_millis(100)),
                ..Setup::default()
            },
        );
        assert!(h.status().polling);
        // Same second as the first write, so the poller's whole-second mtimes cannot tell.
        let tmp = h.path("file.rs___jb_tmp___");
        fs::write(&tmp, NEW).expect("tmp");
        fs::rename(&tmp, h.path("file.rs")).expect("rename");
        h.expect_batch(&["file.rs"]);
        h.write("sub/x.rs", NEW);
        h.expect_batch(&["sub/x.rs"]);
        h.expect_quiet();
    }

    // ---- errors ----

    fn start_failure(config: WatchConfig) -> Error {
        start(
            config,
            None,
            Mode::Null,
            blind_at,
            Box::new(|_| {}),
            Box::new(|_| {}),
        )
        .expect_err("should fail")
    }

    fn start_error(config: WatchConfig) -> String {
        start_failure(config).to_string()
    }

    #[test]
    fn a_bad_ignore_glob_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = WatchConfig {
            assets: Vec::new(),
            roots: vec![dir.path().to_path_buf()],
            extensions: vec!["rs".into()],
            ignore: vec!["ok/*.rs".into(), "[abc".into()],
            cooldown: COOLDOWN,
            poll: None,
        };
        let message = start_error(config.clone());
        assert!(
            message.contains("--ignore") && message.contains("'[abc'"),
            "{message}"
        );
        assert_eq!(start_failure(config).exit_status(), 2);
    }

    #[test]
    fn roots_with_dot_dot_are_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("a")).expect("mkdir");
        fs::write(dir.path().join("file.rs"), OLD).expect("write");
        let (tx, rx) = mpsc::channel();
        let _watcher = watch(
            WatchConfig {
                assets: Vec::new(),
                roots: vec![dir.path().join("a/..")],
                extensions: vec!["rs".into()],
                ignore: Vec::new(),
                cooldown: COOLDOWN,
                poll: None,
            },
            move |batch| {
                let _ = tx.send(batch);
            },
            |_| {},
        )
        .expect("watch");
        fs::write(dir.path().join("file.rs"), NEW).expect("write");
        assert_eq!(
            rx.recv_timeout(PATIENCE).expect("a batch"),
            vec![dir.path().join("file.rs")]
        );
    }

    #[test]
    fn a_missing_root_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let file = dir.path().join("file.rs");
        fs::write(&file, OLD).expect("write");
        let config = |root: &Path| WatchConfig {
            assets: Vec::new(),
            roots: vec![dir.path().to_path_buf(), root.to_path_buf()],
            extensions: vec!["rs".into()],
            ignore: Vec::new(),
            cooldown: COOLDOWN,
            poll: None,
        };
        let message = start_error(config(&missing));
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        assert!(message.contains("no such directory"), "{message}");
        let message = start_error(config(&file));
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains("not a directory"), "{message}");
    }
}

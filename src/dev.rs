//! Dev mode's driver: the master of `mcluster start` with two more event sources, the
//! debounced watcher and the build. Every decision is the dev core's ([`lifecycle::DevCore`]); this
//! module reads what the core needs to know from the OS (file times, cargo's messages, dep-info,
//! whether a binary changed) and does what it asks that touches the OS (spawn and kill the
//! build, keep a copy of each executable). The supervisor holds a [`DevLoop`], feeds its core
//! and carries out the cluster's part of its actions (a start, a roll, the pages, the lines).
//!
//! # Slow work, off the loop
//!
//! The driver runs on the master's I/O loop, which nothing may hold up. What may take seconds
//! runs on the loop's blocking pool instead ([`IoLoop`], a bound of threads): reading a build's
//! outcome ([`DevLoop::collect`]: `cargo metadata` for an option cargo refused, the dep-info, the
//! byte compare of two binaries) and the project's directories ([`DevLoop::find_roots`]:
//! `cargo metadata`). Each answers once, through the callback it is given (the driver's inbox),
//! with an event tagged as the core asked (the build, the lookup), so that the core ignores an
//! answer it no longer waits for. What runs there is bounded by the core: one roots lookup at a
//! time, and one outcome per build; a cancelled build's outcome stops at its next step.

pub(crate) mod lifecycle;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid as NixPid;

use crate::builder::{self, BuildPlan, OnOutputEnd, RunningBuild};
use crate::cluster::ProcessEnd;
use crate::http::IoLoop;
use crate::leftover::{self, Here};
use crate::sys::{Guard, Program};
use crate::watch::Watcher;

use self::lifecycle::{BuildId, BuildResult, Built, ChangedFile, DevCore, DevEvent};

/// Dev mode's settings, handles and core, owned by the supervisor.
pub(crate) struct DevLoop {
    /// `None`: `--no-build`.
    pub(crate) plan: Option<BuildPlan>,
    /// Clear the screen before each build.
    clear: bool,
    /// Where a build's dep-info paths are relative to: the first watched root.
    base: Option<PathBuf>,
    /// Kept alive for as long as the loop runs; `None` in production mode.
    pub(crate) watcher: Option<Watcher>,
    /// Where copies of built executables are kept, one per generation.
    builds_dir: Option<PathBuf>,
    /// The build process in flight, as the core numbered it.
    running: Option<(BuildId, RunningBuild)>,
    /// The build whose process exited, its output still read, until the core asks for its
    /// outcome ([`collect`](Self::collect)) or cancels it.
    exited: Option<(BuildId, RunningBuild)>,
    copies: u64,
    /// The build whose outcome is being read off the loop (0: none); a cancelled one's reading
    /// stops at its next step.
    reading: Arc<AtomicU64>,
    /// Every decision.
    pub(crate) core: DevCore,
}

/// Where slow work done off the loop hands its event for the dev core: called once, from a
/// thread of the loop's blocking pool.
pub(crate) type Found = Box<dyn FnOnce(DevEvent) + Send>;

impl DevLoop {
    pub(crate) fn new(
        plan: Option<BuildPlan>,
        clear: bool,
        roots: Vec<PathBuf>,
        assets: Vec<PathBuf>,
    ) -> Self {
        Self {
            plan,
            clear,
            base: roots.first().cloned(),
            watcher: None,
            builds_dir: None,
            running: None,
            exited: None,
            copies: 0,
            reading: Arc::new(AtomicU64::new(0)),
            core: DevCore::new(roots, assets),
        }
    }

    /// The pid of the build in flight.
    pub(crate) fn build_pid(&self) -> Option<i32> {
        self.running.as_ref().map(|(_, build)| build.pid)
    }

    /// A debounced batch of changed files, with their modification times.
    pub(crate) fn changed(paths: Vec<PathBuf>) -> DevEvent {
        let files = paths
            .into_iter()
            .map(|path| ChangedFile {
                modified: std::fs::metadata(&path).and_then(|m| m.modified()).ok(),
                path,
            })
            .collect();
        DevEvent::Changed {
            files,
            wall: SystemTime::now(),
        }
    }

    /// Starts the build the core asked for; its own group, killed with the workers' should
    /// the master die. `on_output_end` is called (from the I/O loop, once) when the build's
    /// output is complete, for [`DevEvent::BuildOutputEnded`].
    pub(crate) fn start_build(
        &mut self,
        build: BuildId,
        guard: &mut Guard,
        on_output_end: OnOutputEnd,
    ) -> DevEvent {
        let Some(plan) = &self.plan else {
            return DevEvent::BuildNotStarted {
                build,
                why: "nothing to build".to_owned(),
            };
        };
        if self.clear {
            let _ = console::Term::stderr().clear_screen();
        }
        match plan.start(console::colors_enabled_stderr(), on_output_end) {
            Ok(running) => {
                guard.watch(running.pid);
                self.running = Some((build, running));
                DevEvent::BuildStarted {
                    build,
                    wall: SystemTime::now(),
                }
            }
            Err(error) => {
                let program = plan.program();
                let why = if error.kind() == std::io::ErrorKind::NotFound {
                    format!("{program} is not installed or not in PATH")
                } else {
                    format!("{program}: {error}")
                };
                DevEvent::BuildNotStarted { build, why }
            }
        }
    }

    /// Kills the build the core cancelled; its pid, to be reaped as a stray (none when its
    /// process exited already: only its output is forgotten).
    pub(crate) fn cancel_build(&mut self, build: BuildId) -> Option<i32> {
        // Its outcome, if being read, is read no further.
        let _ = self
            .reading
            .compare_exchange(build.0, 0, Ordering::AcqRel, Ordering::Acquire);
        if self.exited.take_if(|(id, _)| *id == build).is_some() {
            return None;
        }
        let (_, running) = self.running.take_if(|(id, _)| *id == build)?;
        let _ = killpg(NixPid::from_raw(running.pid), Signal::SIGKILL);
        Some(running.pid)
    }

    /// The build process exited (reaped): its output is still read until the core asks for
    /// its outcome. `None` when no build runs.
    pub(crate) fn build_exited(&mut self, end: ProcessEnd) -> Option<DevEvent> {
        let (build, running) = self.running.take()?;
        self.exited = Some((build, running));
        Some(DevEvent::BuildExited {
            build,
            end,
            wall: SystemTime::now(),
        })
    }

    /// Reads the outcome of the build the core asks for ([`DevAction::Collect`]), off the
    /// loop: how its process ended, what it said so far, its executable (the same bytes as
    /// `latest`?) and what it read; `found` gets it as [`DevEvent::BuildEnded`]. Nothing when
    /// that build is not the one that exited, or is cancelled meanwhile.
    ///
    /// [`DevAction::Collect`]: lifecycle::DevAction::Collect
    pub(crate) fn collect(
        &mut self,
        build: BuildId,
        end: ProcessEnd,
        latest: Option<&Program>,
        found: Found,
    ) {
        let Some((_, running)) = self.exited.take_if(|(id, _)| *id == build) else {
            return;
        };
        // What was read so far, taken on the loop (a copy of at most a few KiB).
        let messages = running.take_messages();
        // Dropped: its readers go on to the end of its pipes, and tell nobody.
        drop(running);
        self.reading.store(build.0, Ordering::Release);
        let reading = Arc::clone(&self.reading);
        let job = OutcomeRead {
            build,
            end,
            plan: self.plan.clone(),
            messages,
            base: self.watcher.as_ref().and(self.base.clone()),
            latest: latest
                .map(|latest| PathBuf::from(std::ffi::OsStr::from_bytes(latest.path.as_bytes()))),
        };
        off_loop(move || {
            let wanted = || reading.load(Ordering::Acquire) == build.0;
            if let Some(event) = job.read(&wanted) {
                found(event);
            }
        });
    }

    /// Tells the watcher what the last build read.
    pub(crate) fn watch_inputs(&self, inputs: Vec<PathBuf>, since: SystemTime) {
        if let Some(watcher) = &self.watcher {
            watcher.set_build_inputs(inputs, since);
        }
    }

    /// Asks cargo, off the loop, for the directories the project's manifests name now;
    /// `found` gets them as [`DevEvent::Roots`] of this `lookup`.
    pub(crate) fn find_roots(&self, lookup: u64, found: Found) {
        let plan = self.plan.clone();
        off_loop(move || {
            let roots = plan
                .as_ref()
                .and_then(BuildPlan::watch_roots)
                .unwrap_or_default();
            found(DevEvent::Roots { lookup, roots });
        });
    }

    /// Watches more directories.
    pub(crate) fn add_roots(&self, roots: Vec<PathBuf>) {
        if let Some(watcher) = &self.watcher {
            watcher.add_roots(roots);
        }
    }

    /// Keeps a copy of a built executable as the program of new generations.
    pub(crate) fn install(&mut self, executable: &Path) -> Result<Program, String> {
        let kept = self
            .keep_executable(executable)
            .map_err(|error| error.to_string())?;
        let argv0 = executable
            .file_name()
            .map_or_else(|| kept.as_os_str().to_owned(), ToOwned::to_owned);
        Ok(Program {
            path: c_path(&kept),
            argv0: c_path(Path::new(&argv0)),
        })
    }

    /// Keeps a private link (or copy) of a built executable, so that cargo's next build cannot
    /// replace the file a generation's crash restarts exec.
    fn keep_executable(&mut self, executable: &Path) -> std::io::Result<PathBuf> {
        let dir = if let Some(dir) = &self.builds_dir {
            dir.clone()
        } else {
            let parent = executable.parent().unwrap_or(Path::new("."));
            // Those of masters that died without cleaning up (SIGKILL), ours too if this pid
            // was a dead master's before.
            sweep_leftovers(parent);
            let dir = parent.join(format!("{BUILDS_PREFIX}{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            // Without it this directory is never swept: no reason to fail the reload.
            let _ = leftover::mark(&dir.join(OWNER_FILE), OWNER_KIND);
            self.builds_dir = Some(dir.clone());
            dir
        };
        self.copies += 1;
        // A directory per copy, so that the copy has the binary's own name: `ps`, `top` and
        // `ss -p` show the workers as `app`.
        let name = executable.file_name().unwrap_or(executable.as_os_str());
        let copy_dir = dir.join(self.copies.to_string());
        std::fs::create_dir(&copy_dir)?;
        let kept = copy_dir.join(name);
        if std::fs::hard_link(executable, &kept).is_err() {
            std::fs::copy(executable, &kept)?;
        }
        Ok(kept)
    }

    /// Removes the kept copies among `programs` that no generation runs any more (`in_use`
    /// says which do).
    pub(crate) fn discard_unused_builds(
        &self,
        programs: impl IntoIterator<Item = Program>,
        in_use: impl Fn(&Program) -> bool,
    ) {
        let Some(builds_dir) = self.builds_dir.as_deref() else {
            return;
        };
        for program in programs {
            let path = Path::new(std::ffi::OsStr::from_bytes(program.path.as_bytes()));
            if path.starts_with(builds_dir) && !in_use(&program) {
                let _ = std::fs::remove_file(path);
                if let Some(copy_dir) = path.parent().filter(|dir| *dir != builds_dir) {
                    let _ = std::fs::remove_dir(copy_dir);
                }
            }
        }
    }
}

/// Runs slow work on the I/O loop's blocking pool, never on the loop itself.
fn off_loop(job: impl FnOnce() + Send + 'static) {
    match IoLoop::handle() {
        Ok(io_loop) => drop(io_loop.spawn_blocking(job)),
        // The loop runs the driver that asks for this: it cannot fail to start now.
        Err(_) => job(),
    }
}

/// What reading a build's outcome needs, moved off the loop.
struct OutcomeRead {
    build: BuildId,
    end: ProcessEnd,
    plan: Option<BuildPlan>,
    messages: builder::Messages,
    /// Where dep-info paths are relative to, when files are watched.
    base: Option<PathBuf>,
    /// What new generations run now.
    latest: Option<PathBuf>,
}

impl OutcomeRead {
    /// The build's outcome; `None` once `wanted` says it is cancelled (asked before each slow
    /// step).
    fn read(self, wanted: &dyn Fn() -> bool) -> Option<DevEvent> {
        let Self {
            build,
            end,
            plan,
            messages,
            base,
            latest,
        } = self;
        let Some(plan) = plan.as_ref().filter(|_| end == ProcessEnd::Code(0)) else {
            let refused = plan
                .as_ref()
                .filter(|_| wanted())
                .and_then(|plan| plan.refused_option(&messages));
            return wanted().then_some(DevEvent::BuildEnded {
                build,
                result: BuildResult::Failed {
                    end,
                    diagnostics: messages.diagnostics,
                    refused,
                },
            });
        };
        let executable = plan.executable(&messages);
        let inputs = match (&executable, &base) {
            (Ok(Some(artifact)), Some(base)) if wanted() => {
                builder::build_inputs(&artifact.executable, base)
            }
            _ => None,
        };
        let executable = executable.map(|artifact| {
            artifact.map(|artifact| Built {
                same_as_latest: latest.as_deref().is_some_and(|latest| {
                    wanted() && same_file_content(latest, &artifact.executable)
                }),
                fresh: artifact.fresh,
                executable: artifact.executable,
            })
        });
        wanted().then_some(DevEvent::BuildEnded {
            build,
            result: BuildResult::Succeeded { executable, inputs },
        })
    }
}

impl Drop for DevLoop {
    fn drop(&mut self) {
        if let Some(pid) = self.build_pid() {
            let _ = killpg(NixPid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(dir) = &self.builds_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether two files hold the same bytes: the same file (a kept link to a build cargo found
/// fresh), or equal contents (a build that produced the same binary again). `false` when in
/// doubt.
fn same_file_content(a: &Path, b: &Path) -> bool {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta_a), Ok(meta_b)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    if (meta_a.dev(), meta_a.ino()) == (meta_b.dev(), meta_b.ino()) {
        return true;
    }
    if meta_a.len() != meta_b.len() {
        return false;
    }
    let (Ok(mut file_a), Ok(mut file_b)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let mut buf_a = vec![0; 1 << 16];
    let mut buf_b = vec![0; 1 << 16];
    loop {
        let Ok(n) = file_a.read(&mut buf_a) else {
            return false;
        };
        if n == 0 {
            return file_b.read(&mut buf_b[..1]).is_ok_and(|m| m == 0);
        }
        if file_b.read_exact(&mut buf_b[..n]).is_err() || buf_a[..n] != buf_b[..n] {
            return false;
        }
    }
}

/// The name of a master's builds directory, before its pid: `target/<profile>/.mcluster-PID/`.
const BUILDS_PREFIX: &str = ".mcluster-";

/// The file in a builds directory that says which master made it. Its name cannot be a kept
/// build's directory (`N`).
const OWNER_FILE: &str = ".mcluster-owner";

/// The first line of a builds directory's owner file.
const OWNER_KIND: &str = "mcluster builds directory";

/// Removes the builds directories in `parent` that masters now gone left behind, and only what
/// is provably theirs: a real directory `.mcluster-PID` (no symlink) of our uid, holding an
/// owner file of ours naming that pid, whose owner is gone, and nothing but kept builds
/// (directories `N` of ours holding nothing but regular files of ours). Anything else is left as
/// it is.
fn sweep_leftovers(parent: &Path) {
    let Some(here) = Here::now() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(BUILDS_PREFIX))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if let Some(copies) = leftover_files(&dir, pid, &here) {
            for (copy_dir, files) in copies {
                for file in files {
                    let _ = std::fs::remove_file(file);
                }
                let _ = std::fs::remove_dir(copy_dir);
            }
            let _ = std::fs::remove_file(dir.join(OWNER_FILE));
            // Not `remove_dir_all`: whatever appeared meanwhile stays, and so does the directory.
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The kept builds in `dir` (each copy's directory and its files) if it is a builds directory
/// of `pid` whose owner is gone and that holds nothing else; `None` when anything about it is
/// not provably ours.
fn leftover_files(dir: &Path, pid: u32, here: &Here) -> Option<Vec<(PathBuf, Vec<PathBuf>)>> {
    use std::os::unix::fs::MetadataExt;
    let ours = |metadata: &std::fs::Metadata| metadata.uid() == here.uid;
    let metadata = std::fs::symlink_metadata(dir).ok()?;
    if !metadata.is_dir() || !ours(&metadata) {
        return None;
    }
    if !leftover::proves_gone(&dir.join(OWNER_FILE), OWNER_KIND, pid, here) {
        return None;
    }
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name();
        if name == OWNER_FILE {
            continue;
        }
        let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
        if !metadata.is_dir() || !ours(&metadata) || !is_copy_dir_name(&name) {
            return None;
        }
        let mut files = Vec::new();
        for file in std::fs::read_dir(entry.path()).ok()? {
            let file = file.ok()?;
            let metadata = std::fs::symlink_metadata(file.path()).ok()?;
            if !metadata.is_file() || !ours(&metadata) {
                return None;
            }
            files.push(file.path());
        }
        copies.push((entry.path(), files));
    }
    Some(copies)
}

/// `N`, as [`DevLoop::keep_executable`] names the directory of a kept build.
fn is_copy_dir_name(name: &std::ffi::OsStr) -> bool {
    let name = name.as_bytes();
    !name.is_empty() && name.iter().all(u8::is_ascii_digit)
}

/// A file name as it can go into one line: quoted and escaped as `{:?}` does when it holds a
/// character that would break the line or hide (a newline, a control character, an invisible
/// format character); as it is otherwise, quotes and backslashes included.
fn c_path(path: &Path) -> CString {
    // Paths from the OS and cargo's JSON never contain NUL.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leftover::Owner;

    fn dev_loop() -> DevLoop {
        DevLoop::new(None, false, vec![PathBuf::from("/p")], Vec::new())
    }

    /// A pid no process has: a child's, once reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    /// `parent/.mcluster-PID` with an owner file (if given) and these files.
    fn builds_dir(parent: &Path, pid: u32, owner: Option<&Owner>, files: &[&str]) -> PathBuf {
        let dir = parent.join(format!("{BUILDS_PREFIX}{pid}"));
        std::fs::create_dir(&dir).unwrap();
        if let Some(owner) = owner {
            std::fs::write(dir.join(OWNER_FILE), owner.render(OWNER_KIND)).unwrap();
        }
        for file in files {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "ELF").unwrap();
        }
        dir
    }

    #[test]
    fn the_builds_of_a_gone_master_are_swept_and_nothing_else() {
        let parent = tempfile::tempdir().unwrap();
        let here = Owner::of_self().unwrap();
        let dead = dead_pid();
        let owner = |pid, start_time, boot_id: &str, pid_namespace: &str| Owner {
            pid,
            start_time,
            boot_id: boot_id.to_owned(),
            pid_namespace: pid_namespace.to_owned(),
        };
        let gone = owner(dead, 1, &here.boot_id, &here.pid_namespace);
        let swept = builds_dir(parent.path(), dead, Some(&gone), &["1/app", "2/app"]);

        // Left alone: no owner file; anything else inside; a live owner; a pid namespace we
        // cannot see into; an owner file naming another pid; a symlink.
        let dead2 = dead_pid();
        let user_own = builds_dir(parent.path(), dead2, None, &["1/app"]);
        let dead3 = dead_pid();
        let gone3 = owner(dead3, 1, &here.boot_id, &here.pid_namespace);
        let with_notes = builds_dir(parent.path(), dead3, Some(&gone3), &["1/app", "notes.txt"]);
        let live = builds_dir(parent.path(), here.pid, Some(&here), &["1/app"]);
        let dead4 = dead_pid();
        let elsewhere = owner(dead4, 1, &here.boot_id, "pid:[1]");
        let other_namespace = builds_dir(parent.path(), dead4, Some(&elsewhere), &["1/app"]);
        let dead5 = dead_pid();
        let misnamed = builds_dir(parent.path(), dead5, Some(&gone), &["1/app"]);
        let target = parent.path().join("real");
        std::fs::create_dir(&target).unwrap();
        let dead6 = dead_pid();
        let gone6 = owner(dead6, 1, &here.boot_id, &here.pid_namespace);
        std::fs::write(target.join(OWNER_FILE), gone6.render(OWNER_KIND)).unwrap();
        std::fs::create_dir(target.join("1")).unwrap();
        std::fs::write(target.join("1/app"), "ELF").unwrap();
        let link = parent.path().join(format!("{BUILDS_PREFIX}{dead6}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();

        sweep_leftovers(parent.path());
        assert!(!swept.exists());
        for kept in [
            &user_own,
            &with_notes,
            &live,
            &other_namespace,
            &misnamed,
            &link,
        ] {
            assert!(
                kept.join("1/app").exists() || kept == &link,
                "{}",
                kept.display()
            );
        }
        assert!(target.join(OWNER_FILE).exists());
        assert!(with_notes.join("notes.txt").exists());
    }

    #[test]
    fn a_reused_pid_or_an_earlier_boot_is_a_gone_owner() {
        let parent = tempfile::tempdir().unwrap();
        let here = Owner::of_self().unwrap();
        // Our own pid, but another process's start time: the master that had it is gone.
        let reused = Owner {
            start_time: here.start_time + 1,
            ..here.clone()
        };
        let dir = builds_dir(parent.path(), here.pid, Some(&reused), &["1/app"]);
        sweep_leftovers(parent.path());
        assert!(!dir.exists());
        // A live pid, and even another pid namespace, in an earlier boot.
        let earlier = Owner {
            boot_id: "00000000-0000-0000-0000-000000000000".to_owned(),
            pid_namespace: "pid:[1]".to_owned(),
            ..here.clone()
        };
        let dir = builds_dir(parent.path(), here.pid, Some(&earlier), &["3/app"]);
        sweep_leftovers(parent.path());
        assert!(!dir.exists());
    }

    #[test]
    fn the_owner_file_replaces_a_symlink_at_its_place_instead_of_writing_through_it() {
        let parent = tempfile::tempdir().unwrap();
        let executable = parent.path().join("app");
        std::fs::write(&executable, "ELF").unwrap();
        // A builds directory of this pid left over (a dead master had it) that was not swept,
        // with a symlink where the owner file goes.
        let dir = parent
            .path()
            .join(format!("{BUILDS_PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "keeps it from the sweep").unwrap();
        let victim = parent.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(OWNER_FILE)).unwrap();
        let mut dev = dev_loop();
        let kept = dev.keep_executable(&executable).unwrap();
        assert!(kept.starts_with(&dir), "{}", kept.display());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap();
        assert_eq!(Owner::parse(&owner, OWNER_KIND), Owner::of_self());
        drop(dev);
        assert!(!dir.exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn the_same_file_or_the_same_bytes_is_the_same_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(path("a"), &big).unwrap();
        std::fs::hard_link(path("a"), path("link")).unwrap();
        std::fs::write(path("copy"), &big).unwrap();
        let mut changed = big.clone();
        changed[150_000] ^= 1;
        std::fs::write(path("changed"), &changed).unwrap();
        std::fs::write(path("shorter"), &big[..100]).unwrap();
        assert!(same_file_content(&path("a"), &path("link")));
        assert!(same_file_content(&path("a"), &path("copy")));
        assert!(!same_file_content(&path("a"), &path("changed")));
        assert!(!same_file_content(&path("a"), &path("shorter")));
        assert!(!same_file_content(&path("a"), &path("missing")));
    }

    #[test]
    fn kept_build_directories_are_numbers() {
        for name in ["1", "12"] {
            assert!(is_copy_dir_name(std::ffi::OsStr::new(name)), "{name}");
        }
        for name in ["", "app", "1-app", "x1", OWNER_FILE] {
            assert!(!is_copy_dir_name(std::ffi::OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn a_kept_build_has_the_binary_s_own_name_in_a_directory_per_copy() {
        let target = tempfile::tempdir().unwrap();
        let built = target.path().join("app");
        std::fs::write(&built, "ELF 1").unwrap();
        let mut dev = dev_loop();
        let first = dev.keep_executable(&built).unwrap();
        std::fs::remove_file(&built).unwrap();
        std::fs::write(&built, "ELF 2").unwrap();
        let second = dev.keep_executable(&built).unwrap();
        let builds = dev.builds_dir.clone().unwrap();
        assert_eq!(first, builds.join("1/app"));
        assert_eq!(second, builds.join("2/app"));
        assert_eq!(std::fs::read_to_string(first).unwrap(), "ELF 1");
        drop(dev);
        assert!(!builds.exists());
    }
}

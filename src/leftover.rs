//! The one proof that something a master left on disk belongs to a master that is gone.
//!
//! A master killed by SIGKILL cannot clean up: its notify directory ([`crate::sd_notify`]) and
//! its builds directory (dev mode) stay. Each is marked at its creation with an owner file that
//! names the master as a process: its pid, its start time (which tells a reused pid from the
//! first), and the boot and pid namespace both were read in (outside them they mean nothing).
//! A later master sweeps such a leftover only if the owner file proves the owner gone:
//!
//! - the file is a regular file (not a symlink) of our uid, small, of the kind expected, and
//!   names the pid in the leftover's name;
//! - its owner ran in another boot, or in this boot and pid namespace its pid is free or now
//!   another process's (another start time).
//!
//! Anything else is not proven ours, and stays: an owner in another pid namespace (a container
//! sharing the directory) whose pids we cannot check, a file we cannot read or parse, and
//! everything where this process cannot tell who it is itself (no `/proc`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::procfs;

/// The largest owner file read; a real one is about 150 bytes.
const MAX_OWNER_FILE: u64 = 4096;

/// A master as a process: what an owner file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    /// Clock ticks since boot, from `/proc/PID/stat`.
    pub(crate) start_time: u64,
    pub(crate) boot_id: String,
    pub(crate) pid_namespace: String,
}

impl Owner {
    /// This process, or `None` without `/proc`.
    pub(crate) fn of_self() -> Option<Self> {
        let pid = std::process::id();
        Some(Self {
            pid,
            start_time: procfs::stat(i32::try_from(pid).ok()?)?.start_time,
            boot_id: procfs::boot_id()?,
            pid_namespace: procfs::pid_namespace()?,
        })
    }

    /// The owner file's text: `kind` on the first line, then one `name value` line per field.
    pub(crate) fn render(&self, kind: &str) -> String {
        format!(
            "{kind}\npid {}\nstart_time {}\nboot_id {}\npid_namespace {}\n",
            self.pid, self.start_time, self.boot_id, self.pid_namespace
        )
    }

    /// Reads back what [`Owner::render`] wrote for `kind`; `None` for anything else.
    pub(crate) fn parse(text: &str, kind: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != kind {
            return None;
        }
        let mut field = |name: &str| {
            let line = lines.next()?;
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            (!value.is_empty() && !value.contains(char::is_whitespace)).then(|| value.to_owned())
        };
        let owner = Self {
            pid: field("pid")?.parse().ok()?,
            start_time: field("start_time")?.parse().ok()?,
            boot_id: field("boot_id")?,
            pid_namespace: field("pid_namespace")?,
        };
        (lines.next().is_none() && text.ends_with('\n')).then_some(owner)
    }

    /// Whether this owner has surely exited, seen from `here`: it ran in another boot, or in
    /// this boot and pid namespace its pid is free or now another process's. An owner in
    /// another pid namespace cannot be checked: it is taken as alive.
    pub(crate) fn is_gone(&self, here: &Owner) -> bool {
        if self.boot_id != here.boot_id {
            return true;
        }
        if self.pid_namespace != here.pid_namespace {
            return false;
        }
        let now = i32::try_from(self.pid).ok().and_then(procfs::stat);
        now.is_none_or(|now| now.start_time != self.start_time)
    }
}

/// Who judges leftovers: this process, and the uid it creates files as.
#[derive(Debug, Clone)]
pub(crate) struct Here {
    pub(crate) owner: Owner,
    pub(crate) uid: u32,
}

impl Here {
    /// This process; `None` where it cannot tell (no `/proc`): then nothing is swept.
    pub(crate) fn now() -> Option<Self> {
        Some(Self {
            owner: Owner::of_self()?,
            uid: nix::unistd::geteuid().as_raw(),
        })
    }
}

/// Writes the owner file of a leftover-to-be at `path`, naming this process (mode 0600). What
/// was at `path` is replaced, not written through: a symlink there is removed, not followed.
/// Where this process cannot tell who it is, the file holds `kind` alone and proves nothing.
pub(crate) fn mark(path: &Path, kind: &str) -> io::Result<()> {
    let text = Owner::of_self().map_or_else(|| format!("{kind}\n"), |owner| owner.render(kind));
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Whether the owner file at `path` proves that what it marks was left by the master `pid`,
/// and that this master is gone (see the module's doc).
pub(crate) fn proves_gone(path: &Path, kind: &str, pid: u32, here: &Here) -> bool {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return false;
    };
    if !metadata.is_file() || metadata.uid() != here.uid || metadata.len() > MAX_OWNER_FILE {
        return false;
    }
    let Some(owner) = fs::read_to_string(path)
        .ok()
        .and_then(|text| Owner::parse(&text, kind))
    else {
        return false;
    };
    owner.pid == pid && owner.is_gone(&here.owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: &str = "mcluster test leftover";

    /// A pid no process has: a child's, once reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    #[test]
    fn the_owner_file_reads_back_and_rejects_anything_else() {
        let here = Owner::of_self().unwrap();
        let text = here.render(KIND);
        assert_eq!(Owner::parse(&text, KIND), Some(here.clone()));
        assert!(!here.is_gone(&here));
        for bad in [
            String::new(),
            "pid 1\n".to_owned(),
            format!("{KIND}\n"),
            text.replace("pid ", "pid x"),
            text.replace("boot_id ", "boot_id  "),
            format!("{text}x\n"),
            text.trim_end().to_owned(),
        ] {
            assert_eq!(Owner::parse(&bad, KIND), None, "{bad:?}");
        }
        assert_eq!(Owner::parse(&text, "mcluster other leftover"), None);
    }

    #[test]
    fn gone_means_a_free_or_reused_pid_or_another_boot_and_never_another_namespace() {
        let here = Owner::of_self().unwrap();
        let dead = Owner {
            pid: dead_pid(),
            ..here.clone()
        };
        assert!(dead.is_gone(&here), "a free pid");
        let reused = Owner {
            start_time: here.start_time + 1,
            ..here.clone()
        };
        assert!(reused.is_gone(&here), "our pid, another start time");
        let earlier_boot = Owner {
            boot_id: "00000000-0000-0000-0000-000000000000".to_owned(),
            pid_namespace: "pid:[1]".to_owned(),
            ..here.clone()
        };
        assert!(earlier_boot.is_gone(&here), "a live pid, in another boot");
        let elsewhere = Owner {
            pid_namespace: "pid:[1]".to_owned(),
            ..dead
        };
        assert!(!elsewhere.is_gone(&here), "a pid of another namespace");
    }

    #[test]
    fn only_an_owner_file_of_ours_naming_the_pid_proves_a_gone_owner() {
        let dir = tempfile::tempdir().unwrap();
        let here = Here::now().unwrap();
        let pid = dead_pid();
        let gone = Owner {
            pid,
            ..here.owner.clone()
        };
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("gone"), gone.render(KIND)).unwrap();
        assert!(proves_gone(&path("gone"), KIND, pid, &here));
        assert!(
            !proves_gone(&path("gone"), KIND, pid + 1, &here),
            "another pid"
        );
        assert!(
            !proves_gone(&path("gone"), "other", pid, &here),
            "another kind"
        );
        let other_uid = Here {
            uid: here.uid + 1,
            ..here.clone()
        };
        assert!(
            !proves_gone(&path("gone"), KIND, pid, &other_uid),
            "not ours"
        );
        std::os::unix::fs::symlink(path("gone"), path("link")).unwrap();
        assert!(!proves_gone(&path("link"), KIND, pid, &here), "a symlink");
        let big = format!("{}{}", gone.render(KIND), " ".repeat(5000));
        std::fs::write(path("big"), big).unwrap();
        assert!(!proves_gone(&path("big"), KIND, pid, &here), "too big");
        assert!(!proves_gone(&path("missing"), KIND, pid, &here));
        // This process's own mark proves nothing while it runs.
        mark(&path("mine"), KIND).unwrap();
        assert!(!proves_gone(&path("mine"), KIND, here.owner.pid, &here));
        assert_eq!(
            Owner::parse(&std::fs::read_to_string(path("mine")).unwrap(), KIND),
            Some(here.owner.clone())
        );
    }

    #[test]
    fn a_mark_replaces_what_is_there_and_never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("owner");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        mark(&path, KIND).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert!(metadata.is_file());
        assert_eq!(metadata.mode() & 0o777, 0o600);
        // An earlier master's file (this pid reused) is replaced by ours.
        std::fs::remove_file(&path).unwrap();
        let earlier = Owner {
            start_time: 1,
            ..Owner::of_self().unwrap()
        };
        std::fs::write(&path, earlier.render(KIND)).unwrap();
        mark(&path, KIND).unwrap();
        assert_eq!(
            Owner::parse(&std::fs::read_to_string(&path).unwrap(), KIND),
            Owner::of_self()
        );
    }
}

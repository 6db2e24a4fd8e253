//! The small readers of Linux `/proc` that several modules share: one parser per file.
//!
//! Each function reads one file once and returns `None` when it cannot be read or parsed (no
//! `/proc`, another platform, a process that exited meanwhile, a file of another format): the
//! callers treat that as "not known", never as a fact about the process.
//!
//! `/proc/PID/stat` is the one with a trap: its second field is the command name in
//! parentheses, and that name is the process's own choice (`prctl(PR_SET_NAME)`, the file name
//! it was run as), so it may hold spaces and parentheses, `)` included. The fields after it are
//! read after the *last* `)` of the line, which no name can move.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

/// The fields of `/proc/PID/stat` that are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `D`, `T`, `t`, `Z`, `X`, …
    pub(crate) state: char,
    /// Field 5: the process group.
    pub(crate) pgrp: i32,
    /// Field 22: when the process started, in clock ticks since boot. With the pid, it names
    /// one process of one boot: a pid reused later has another start time.
    pub(crate) start_time: u64,
}

impl Stat {
    /// Parses the text of a `/proc/PID/stat` file.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(')')?;
        // From the state (field 3) on, one field each, none of them empty.
        let mut fields = rest.split_ascii_whitespace();
        let mut state = fields.next()?.chars();
        let state = state.next().filter(|_| state.next().is_none())?;
        let pgrp = fields.nth(1)?.parse().ok()?;
        // Field 22 is the 20th after the state (field 3); the 3rd (pgrp) is taken.
        let start_time = fields.nth(16)?.parse().ok()?;
        Some(Self {
            state,
            pgrp,
            start_time,
        })
    }

    /// Whether the process has exited (a zombie not yet reaped, or dead).
    pub(crate) fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// Whether the process is stopped (`SIGSTOP`, a job-control signal, a tracer): it runs no
    /// code until it is continued.
    pub(crate) fn stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }
}

/// `/proc/PID/stat` of `pid`.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    Stat::parse(&read_single(format!("/proc/{pid}/stat"))?)
}

/// The text of a `/proc` file the kernel writes in one piece (`stat`, `status`, a task's
/// `syscall`, an fd's `fdinfo`: one `show` of a `single_open` file), in as few system calls as
/// it takes: `open`, one read ([`read_open`]) and `close` for any text under 4 KiB. `fs::read_to_string`
/// takes twice as many (a `statx` for a size that `/proc` gives as 0, a probing read, the read
/// that finds the end), and probes read every starting worker's files every few milliseconds.
/// Such a file's whole text is ready at the first `read`, so a `read` that does not fill the
/// buffer has it all. Bytes that are not UTF-8 (a process may name itself anything) are
/// replaced, never an error.
pub(crate) fn read_single(path: impl AsRef<std::path::Path>) -> Option<String> {
    read_open(&fs::File::open(path).ok()?)
}

/// The text of an open `/proc` file, rendered anew from its start (`pread` at offset 0 makes a
/// `/proc` file render again, so a file kept open is read again for one system call); `None`
/// when it no longer reads (its process, thread or fd is gone).
pub(crate) fn read_open(file: &fs::File) -> Option<String> {
    use std::os::unix::fs::FileExt as _;
    const FIRST_READ: usize = 4096;
    let mut text = vec![0_u8; FIRST_READ];
    let mut len = 0;
    loop {
        let read = loop {
            match file.read_at(&mut text[len..], len as u64) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                read => break read.ok()?,
            }
        };
        len += read;
        if read == 0 || len < text.len() {
            break;
        }
        // Full: a longer text (an epoll watching many fds), read on to its end.
        text.resize(text.len() * 2, 0);
    }
    text.truncate(len);
    Some(match String::from_utf8(text) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

/// The open fds of `pid`, each with what it refers to (the target of `/proc/PID/fd/N`: a path,
/// `socket:[INODE]`, `anon_inode:[eventpoll]`, …); `None` when they cannot be listed. An fd
/// closed between the listing and the reading of its link is no fd.
pub(crate) fn fds(pid: i32) -> Option<impl Iterator<Item = (i32, PathBuf)>> {
    let entries = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd = entry.file_name().to_str()?.parse().ok()?;
        Some((fd, fs::read_link(entry.path()).ok()?))
    }))
}

/// The pids of every process this pid namespace shows, in no order (empty without `/proc`).
pub(crate) fn pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid > 0)
        .collect()
}

/// Pids by process group.
pub(crate) type Groups = HashMap<i32, Vec<i32>>;

/// The live (not exited) processes of this pid namespace by process group, from one pass over
/// `/proc` that reads each process's `stat` once; `None` without `/proc`.
///
/// Some 5 µs a process: one pass answers for every group the caller wants to know about.
pub(crate) fn live_groups() -> Option<Groups> {
    // Where /proc is mounted, it shows this process at least.
    let pids = pids();
    if pids.is_empty() {
        return None;
    }
    let mut groups = Groups::new();
    for pid in pids {
        if let Some(stat) = stat(pid).filter(|stat| !stat.exited()) {
            groups.entry(stat.pgrp).or_default().push(pid);
        }
    }
    Some(groups)
}

/// The live processes of the groups led by `leaders` found below them: each leader (if alive)
/// and its descendants of the same group, through `/proc/PID/task/TID/children` (the children
/// each thread forked); a few reads a process of the group, where a pass over every process
/// ([`live_groups`]) reads them all. A member whose parent exited (reparented to an init) is not
/// found. `None` when the kernel has no children files (`CONFIG_PROC_CHILDREN`).
pub(crate) fn descendant_groups(leaders: impl IntoIterator<Item = i32>) -> Option<Groups> {
    if !children_files() {
        return None;
    }
    let mut groups = Groups::new();
    for leader in leaders {
        let mut members = Vec::new();
        let mut below = vec![leader];
        // A fork bomb in a group costs a bounded walk: beyond, the members found are enough.
        while let Some(pid) = below.pop()
            && members.len() < MAX_GROUP_WALK
        {
            if !stat(pid).is_some_and(|stat| stat.pgrp == leader && !stat.exited()) {
                continue;
            }
            members.push(pid);
            let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                if let Some(children) = read_single(task.path().join("children")) {
                    below.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<i32>().ok()),
                    );
                }
            }
        }
        if !members.is_empty() {
            groups.insert(leader, members);
        }
    }
    Some(groups)
}

/// The most processes [`descendant_groups`] visits in one group.
const MAX_GROUP_WALK: usize = 1_000;

/// Whether this kernel has `/proc/PID/task/TID/children` files (looked at once).
fn children_files() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        let this = std::process::id();
        fs::metadata(format!("/proc/{this}/task/{this}/children")).is_ok()
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): a new random one at every boot.
pub(crate) fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// This process's pid namespace (`pid:[INODE]`, the target of `/proc/self/ns/pid`): pids mean
/// something only inside it.
pub(crate) fn pid_namespace() -> Option<String> {
    let link = fs::read_link("/proc/self/ns/pid").ok()?;
    let link = link.to_str()?;
    (!link.is_empty()).then(|| link.to_owned())
}

/// The resident memory of `pid`, in bytes (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_bytes(pid: i32) -> Option<u64> {
    let text = read_single(format!("/proc/{pid}/status"))?;
    status_kib(&text, "VmRSS")
}

/// A `NAME:  N kB` line of a `/proc/PID/status` text, in bytes.
fn status_kib(text: &str, name: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    /// A stat line as the kernel writes it, with `comm` as the command name.
    fn line(comm: &str) -> String {
        format!(
            "4242 ({comm}) S 1 4240 4240 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 \
             10092544 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"
        )
    }

    #[test]
    fn the_fields_are_read_after_the_last_parenthesis_whatever_the_name() {
        for comm in [
            "app",
            "my app",
            "a) S 1 2 3 4",
            ")",
            "(",
            "((x))",
            ") Z 9 9 9 ) T 7 7 ",
            "",
            "tab\there",
            "new\nline",
        ] {
            let stat = Stat::parse(&line(comm)).unwrap_or_else(|| panic!("{comm:?}"));
            assert_eq!(
                stat,
                Stat {
                    state: 'S',
                    pgrp: 4240,
                    start_time: 987_654
                },
                "{comm:?}"
            );
            assert!(!stat.exited() && !stat.stopped());
        }
    }

    #[test]
    fn states_are_told_apart() {
        let with = |state: &str| Stat::parse(&line("x").replacen(" S ", &format!(" {state} "), 1));
        assert!(with("Z").unwrap().exited());
        assert!(with("X").unwrap().exited());
        assert!(with("T").unwrap().stopped());
        assert!(with("t").unwrap().stopped());
        assert!(!with("R").unwrap().exited());
        assert!(!with("D").unwrap().stopped());
    }

    #[test]
    fn anything_else_is_not_a_stat() {
        for text in [
            String::new(),
            "4242 app S 1 2 3".to_owned(),
            "4242 (app)".to_owned(),
            "4242 (app) S 1 x 3".to_owned(),
            line("x").replacen(" S ", " SS ", 1),
            line("x").replace(" 987654 ", " -1 "),
            // Cut before the start time.
            line("x")[..line("x").find(" 987654").unwrap()].to_owned(),
        ] {
            assert_eq!(Stat::parse(&text), None, "{text:?}");
        }
    }

    #[test]
    fn a_real_process_with_a_tricky_name_is_read() {
        // A copy of `sleep` named with a space and parentheses: the kernel takes its command
        // name from the file name.
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("x) R 1 (y");
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap();
        std::fs::copy(sleep, &program).unwrap();
        let mut child = std::process::Command::new(&program)
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let seen = stat(pid);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(comm.unwrap(), "x) R 1 (y\n");
        let seen = seen.unwrap();
        assert_eq!(seen.pgrp, pid, "{seen:?}");
        assert!(matches!(seen.state, 'R' | 'S'), "{seen:?}");
        let this = stat(i32::try_from(std::process::id()).unwrap()).unwrap();
        // Started after this process, in the same boot.
        assert!(seen.start_time >= this.start_time, "{seen:?} {this:?}");
    }

    #[test]
    fn this_process_is_in_the_list_and_has_a_boot_and_a_namespace() {
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(pids().contains(&pid));
        let own_group = stat(pid).unwrap().pgrp;
        assert!(live_groups().unwrap()[&own_group].contains(&pid));
        assert_eq!(boot_id().unwrap().len(), 36);
        assert!(pid_namespace().unwrap().starts_with("pid:["));
        assert!(rss_bytes(pid).unwrap() > 0);
    }

    #[test]
    fn the_members_below_a_leader_are_found_without_a_pass_but_an_orphan_only_with_one() {
        use std::io::BufRead as _;
        // A group: the shell, its child `sleep 61`, an orphan `sleep 62` (its subshell exited),
        // and a child that left for a session of its own (`setsid sleep 63`, its pid printed).
        let script = "sleep 61 & (sleep 62 &); setsid sleep 63 & echo $!; wait";
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let leader = i32::try_from(child.id()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let named = |pids: &[i32]| -> Vec<String> {
            let mut names: Vec<String> = pids
                .iter()
                .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/cmdline")).ok())
                .map(|cmdline| cmdline.replace('\0', " ").trim().to_owned())
                .collect();
            names.sort();
            names
        };
        let shell = format!("sh -c {script}");
        let in_group = |groups: Option<Groups>| {
            named(groups.unwrap().get(&leader).map_or(&[][..], Vec::as_slice))
        };
        let wanted = [shell.clone(), "sleep 61".to_owned(), "sleep 62".to_owned()];
        // The orphan shows up, and the setsid child leaves the group, a moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut everyone = in_group(live_groups());
        while everyone != wanted && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            everyone = in_group(live_groups());
        }
        let below = in_group(descendant_groups([leader]));
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(leader),
            nix::sys::signal::Signal::SIGKILL,
        );
        // The setsid child left the group: it is killed on its own.
        if let Ok(pid) = line.trim().parse() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
        assert_eq!(everyone, wanted);
        assert_eq!(below, [shell, "sleep 61".to_owned()]);
        assert_eq!(
            descendant_groups([i32::MAX]),
            Some(Groups::new()),
            "no such process"
        );
    }

    #[test]
    fn this_process_s_fds_are_listed_with_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open");
        let file = std::fs::File::create(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let pid = i32::try_from(std::process::id()).unwrap();
        let listed: Vec<(i32, PathBuf)> = fds(pid).unwrap().collect();
        assert!(listed.contains(&(fd, path)), "{listed:?}");
        assert!(fds(i32::MAX).is_none());
    }

    #[test]
    fn the_status_line_is_read_in_kib() {
        let text = "Name:\tx\nVmRSSx:\t9 kB\nVmRSS:\t  1234 kB\n";
        assert_eq!(status_kib(text, "VmRSS"), Some(1234 * 1024));
        assert_eq!(status_kib(text, "VmHWM"), None);
        assert_eq!(status_kib("VmRSS:\t12 MB\n", "VmRSS"), None);
    }
}

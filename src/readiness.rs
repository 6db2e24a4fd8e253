//! Whether a starting worker is accepting on a listener it inherited from the master, seen from
//! outside through Linux `/proc`, so that `--ready auto` needs no help from an unmodified app.
//!
//! A listener is "ours" when a worker's fd refers to the same socket inode as one of the
//! master's listeners, whatever its fd number (a `dup` to another number still counts). Four
//! signs make a worker accepting:
//!
//! - **epoll**: one of its epoll instances has our listener registered for input (`EPOLLIN`),
//!   read from the `tfd:` lines of `/proc/PID/fdinfo/EPFD`. Event loops register the listener
//!   when they start serving it: tokio and mio, Go's netpoller, Node (libuv), Python's asyncio
//!   and `selectors.EpollSelector`. A registration for output only does not count.
//! - **blocked in accept**: a thread of it sits in `accept`/`accept4` on our listener, read from
//!   `/proc/PID/task/TID/syscall` (syscall number, then the fd as the first argument): std's
//!   `TcpListener::accept` loops, `tiny_http`, blocking Python `socket.accept`.
//! - **poll**: a thread of it waits in `poll`/`ppoll` (or `select`/`pselect6`) for input on our
//!   listener: the syscall's arguments point to the fd array (or set) in the worker's memory,
//!   read from `/proc/PID/mem` with the same access `syscall` needs. Python's `socketserver`
//!   (`PollSelector`), C servers with a `poll` loop, the `fixture-echo` worker.
//! - **accepted**: it holds a connection accepted on our listener (connected, with the
//!   listener's address), read through a duplicate of each of its other sockets
//!   (`pidfd_getfd`). A worker busy on a socket it shares with others under load never waits
//!   for the next connection (one is always queued), so it is never seen waiting; it is seen
//!   with what it accepted.
//!
//! Not seen: `io_uring` accepts, and a thread that is between two waits at the moment of the
//! probe (the next probe sees it). Such workers become ready at `READY=1` or, failing that,
//! after `--ready-delay`. A registration in epoll is a commitment rather than proof (tokio
//! registers a listener when it adopts it, one `await` before the first `accept`); close
//! enough, as the connection waits in the backlog for that `accept`.
//!
//! A worker is its process group (the master makes each worker a group leader), so a shell
//! wrapper without `exec` is ready when the app it started is: [`Starting`] probes the leader
//! and the other members of its group. Those are found by a pass over every process of `/proc`
//! (each one's `stat`, [`procfs::live_groups`]), far dearer than a probe on a host with many
//! processes: one pass serves every starting worker, and the core says which rounds of probes
//! take one (often at first, then at most once a second while workers take long to start).
//!
//! Reading `syscall` and `mem` needs ptrace access to the worker (same user, or root; Yama's
//! `ptrace_scope=1` allows it to an ancestor such as the master); without it only the epoll
//! sign is seen. Every probe is a handful of small reads of `/proc`, meant to run every
//! 10–50 ms only while a worker is starting.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use nix::sys::socket::{SockaddrStorage, UnixAddr};

use crate::procfs;

/// What the master knows of its listeners: their socket inodes, and the device of the socket
/// file system they live on (the same for every socket); and where they listen, to tell the
/// connections accepted on them from others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ListenerInodes {
    /// `st_dev` of the sockets (user-space encoding), when known.
    device: Option<u64>,
    inodes: Vec<u64>,
    /// The local ports of the TCP listeners.
    ports: Vec<u16>,
    /// The address families of the TCP listeners, each once.
    families: Vec<crate::sys::Family>,
    /// The paths of the named unix listeners, as `/proc/net/unix` shows them.
    paths: Vec<String>,
}

impl ListenerInodes {
    /// The inodes of the master's listening sockets `fds` (from `fstat`).
    pub(crate) fn of(fds: &[BorrowedFd<'_>]) -> io::Result<Self> {
        let mut listeners = Self::default();
        for fd in fds {
            let stat = nix::sys::stat::fstat(fd)?;
            // `dev_t` is an i32 on macOS, a u64 on Linux and the BSDs.
            #[allow(clippy::useless_conversion)]
            let device = u64::try_from(stat.st_dev).unwrap_or(u64::MAX);
            listeners.device = Some(device);
            listeners.inodes.push(stat.st_ino);
            // Where it listens: not known only costs the end of a switch its shortcut (see
            // `switched_out`), so a failure here is no error.
            if let Ok(address) = nix::sys::socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()) {
                if let Some((port, family)) = crate::sys::tcp_address(&address) {
                    listeners.ports.push(port);
                    if !listeners.families.contains(&family) {
                        listeners.families.push(family);
                    }
                } else if let Some(path) = address.as_unix_addr().and_then(UnixAddr::path) {
                    listeners.paths.push(path.to_string_lossy().into_owned());
                }
            }
        }
        Ok(listeners)
    }

    /// Sockets known by device (their `st_dev`) and inode number (the `N` of `socket:[N]`).
    #[cfg(test)]
    fn new(device: u64, inodes: impl IntoIterator<Item = u64>) -> Self {
        Self {
            device: Some(device),
            inodes: inodes.into_iter().collect(),
            ports: Vec::new(),
            families: Vec::new(),
            paths: Vec::new(),
        }
    }

    fn contains(&self, inode: u64) -> bool {
        self.inodes.contains(&inode)
    }

    /// Whether a file on the device `sdev` (the kernel's encoding, as in fdinfo) with inode
    /// `inode` is one of ours: inode numbers are unique per file system only, and a worker may
    /// also watch a terminal or a file of another one.
    fn contains_file(&self, sdev: Option<u64>, inode: u64) -> bool {
        let same_device = match (self.device, sdev) {
            // The kernel's dev_t is MAJOR << 20 | MINOR; stat's is glibc's makedev encoding.
            (Some(device), Some(sdev)) => kernel_dev(sdev) == device,
            _ => true,
        };
        same_device && self.contains(inode)
    }
}

/// A device number as the kernel encodes it in fdinfo (`MAJOR << 20 | MINOR`), in `stat`'s
/// encoding (glibc's `makedev`). Only Linux has fdinfo.
#[cfg(target_os = "linux")]
fn kernel_dev(sdev: u64) -> u64 {
    nix::sys::stat::makedev(sdev >> 20, sdev & 0xf_ffff)
}

#[cfg(not(target_os = "linux"))]
fn kernel_dev(sdev: u64) -> u64 {
    sdev
}

/// How a worker was seen accepting on one of our listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepting {
    /// Registered for input in one of its epoll instances.
    Epoll,
    /// A thread blocked in `accept`/`accept4` on it.
    BlockedInAccept,
    /// A thread waiting in `poll`/`ppoll`/`select`/`pselect6` for input on it.
    Polling,
    /// It holds a connection accepted on it: a worker busy with a shared socket under load
    /// never waits for the next one long enough to be seen waiting.
    Accepted,
}

impl fmt::Display for Accepting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Epoll => "seen accepting (epoll)",
            Self::Accepted => "seen holding a connection it accepted",
            Self::BlockedInAccept => "seen blocked in accept",
            Self::Polling => "seen accepting (poll)",
        })
    }
}

/// Whether probing can work here: Linux with `/proc` mounted and our own `/proc/self/fdinfo`
/// readable. When it cannot, `--ready auto` falls back to `--ready-delay`.
#[must_use]
pub(crate) fn available() -> bool {
    cfg!(target_os = "linux")
        && fs::read_dir("/proc/self/fd").is_ok()
        && fs::read_dir("/proc/self/fdinfo").is_ok()
}

/// Probes one process and its threads (not its children: see [`Starting`]).
///
/// `None` when it is not seen accepting (yet), or when its `/proc` entries cannot be read (it
/// exited, or belongs to another user).
#[must_use]
pub(crate) fn probe(pid: i32, listeners: &ListenerInodes) -> Option<Accepting> {
    signs(pid, &Fds::of(pid, listeners)?, listeners)
}

/// The signs that `pid`, whose fds are `fds`, accepts on one of our listeners.
fn signs(pid: i32, fds: &Fds, listeners: &ListenerInodes) -> Option<Accepting> {
    if fds.ours.is_empty() {
        // It holds none of our listeners: nothing it does can be accepting on one.
        return None;
    }
    if let Some(accepting) = seen_in_syscall(pid, &fds.ours) {
        return Some(accepting);
    }
    fds.epolls
        .iter()
        .any(|&epfd| epoll_watches(pid, epfd, fds, listeners))
        .then_some(Accepting::Epoll)
}

/// What a round of probes reads anew.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Round<'p> {
    /// Only what changes while a worker waits: its threads' system calls and its epoll
    /// instances. The fd tables are those read before, as long as each keeps its size (see
    /// [`Starting`]).
    Quick,
    /// Everything, fd tables included; with a pass over `/proc` ([`procfs::live_groups`]),
    /// which gives the members of each group (`None`: the pass could not be made, the members
    /// known stay).
    Full(Option<&'p procfs::Groups>),
}

/// A starting worker being watched: its process group (the worker is its leader).
///
/// The leader is probed every time; the other members (a shell wrapper's app, a pre-fork
/// server's children) are those of the last pass over `/proc` it was given (one pass for every
/// starting worker, as often as the core asks: [`Action::ProbeStarting`]), and are probed every
/// time.
///
/// Listing a process's fds is the dearest part of a probe (a `readlink` per fd), and what it
/// finds (which fds are our listeners, which are epoll instances) rarely changes while a worker
/// starts: a quick round ([`Round::Quick`]) keeps the list of a process whose fd table has the
/// size it had and whose threads their number ([`Watched`]: `/proc/PID/fd`, whose size is the
/// number of open fds since Linux 6.2, and the files it reads, kept open; older kernels say 0,
/// and the fds are listed every time). An fd replaced by another
/// without a change of size goes unseen until the next full round, which the core makes often
/// at first and at least once a second. A stale list cannot make a worker seen accepting when
/// it is not: an epoll instance is matched by the inode of the file it watches, whatever the
/// fd number, and a sign seen through a kept list is checked again with a fresh one.
///
/// [`Action::ProbeStarting`]: crate::cluster::Action::ProbeStarting
#[derive(Debug)]
pub(crate) struct Starting {
    pgid: i32,
    /// The inode of the worker's end of its channel to the master: a socket, never one it
    /// accepted.
    channel: Option<u64>,
    /// The sockets of the group read and found to be no connection accepted on a listener of
    /// ours, by inode: none becomes one later (see [`Accepting::Accepted`]).
    not_accepted: HashSet<u64>,
    /// The group's fds cannot be duplicated (no `pidfd_getfd`, no `ptrace` access, a seccomp
    /// filter): the sign of a connection it accepted is not looked for any more.
    duplicates_refused: bool,
    members: Vec<i32>,
    /// What the last probe of each process of the group listed, with the `/proc` files a quick
    /// round reads again kept open; emptied at every full round, so at most one entry per
    /// member.
    known: HashMap<i32, Watched>,
}

impl Starting {
    /// Watches the worker `pid`, the leader of its own process group, whose channel to the
    /// master is the socket `channel` (its inode).
    #[must_use]
    pub(crate) fn new(pid: i32, channel: Option<u64>) -> Self {
        Self {
            pgid: pid,
            channel,
            not_accepted: HashSet::new(),
            duplicates_refused: false,
            members: Vec::new(),
            known: HashMap::new(),
        }
    }

    /// Whether the worker or another process of its group is seen accepting.
    ///
    /// `allowance` is how many more fds the probes may keep open between rounds (each probe
    /// takes what it keeps from it); a process probed when it is spent is read by path.
    pub(crate) fn probe(
        &mut self,
        listeners: &ListenerInodes,
        round: Round<'_>,
        allowance: &mut usize,
    ) -> Option<Accepting> {
        let full = matches!(round, Round::Full(_));
        if let Round::Full(pass) = round {
            if let Some(groups) = pass {
                self.members = groups
                    .get(&self.pgid)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|&pid| pid != self.pgid)
                    .collect();
            }
            let (pgid, members) = (self.pgid, &self.members);
            self.known
                .retain(|pid, _| *pid == pgid || members.contains(pid));
        }
        let pids: Vec<i32> = std::iter::once(self.pgid)
            .chain(self.members.iter().copied())
            .collect();
        pids.into_iter()
            .find_map(|pid| self.probe_one(pid, listeners, full, allowance))
    }

    /// The fds the probes of this worker keep open between rounds.
    #[must_use]
    pub(crate) fn kept_fds(&self) -> usize {
        self.known.values().map(Watched::kept_fds).sum()
    }

    /// Probes one process of the group, with the fds listed before if its fd table kept its
    /// size and its threads their number; `list` lists them anew all the same (a full round),
    /// keeping the files open if the list names the same epoll instances.
    fn probe_one(
        &mut self,
        pid: i32,
        listeners: &ListenerInodes,
        list: bool,
        allowance: &mut usize,
    ) -> Option<Accepting> {
        let mut listed = None;
        if let Some(watched) = self.known.get_mut(&pid) {
            if list {
                // Counted before the listing: an fd opened in between changes the count the
                // next round reads, which lists anew.
                let count = watched.fd_dir.metadata().map(|meta| meta.len());
                let fds = Fds::of(pid, listeners);
                match (count, fds) {
                    (Ok(count), Some(mut fds)) if fds.epolls == watched.fds.epolls => {
                        fds.others.retain(|&(_, inode)| Some(inode) != self.channel);
                        watched.fds = fds;
                        watched.fd_count = count;
                    }
                    (_, fds) => listed = Some(fds),
                }
            }
            match (listed.is_some(), watched.signs(pid, listeners)) {
                (false, KeptSigns::NotSeen) => {
                    let others = watched.fds.others.clone();
                    return self.accepted(pid, &others, listeners);
                }
                // The list was made just now: what it shows is so.
                (false, KeptSigns::Seen(accepting)) if list => return Some(accepting),
                (false, KeptSigns::Seen(_)) => {
                    // Seen with a kept list: seen for sure only with a fresh one.
                    self.known.remove(&pid);
                    return probe(pid, listeners);
                }
                _ => {
                    self.known.remove(&pid);
                }
            }
        }
        let mut fds = match listed {
            Some(fds) => fds?,
            None => Fds::of(pid, listeners)?,
        };
        fds.others.retain(|&(_, inode)| Some(inode) != self.channel);
        let others = fds.others.clone();
        let waiting = match Watched::open(pid, fds, allowance) {
            Ok(watched) => match watched.signs(pid, listeners) {
                KeptSigns::Seen(accepting) => Some(accepting),
                KeptSigns::NotSeen => {
                    self.known.insert(pid, watched);
                    None
                }
                // Changed since it was opened, a moment ago: the next round lists it anew.
                KeptSigns::Stale => None,
            },
            Err(fds) => signs(pid, &fds, listeners),
        };
        waiting.or_else(|| self.accepted(pid, &others, listeners))
    }

    /// The last sign, the dearest (a duplicate of each socket): `pid`, seen waiting for no
    /// connection, holds one it accepted on one of our listeners. Each socket is read once.
    fn accepted(
        &mut self,
        pid: i32,
        others: &[(i32, u64)],
        listeners: &ListenerInodes,
    ) -> Option<Accepting> {
        if self.duplicates_refused || (listeners.ports.is_empty() && listeners.paths.is_empty()) {
            return None;
        }
        // Bounded: sockets a starting worker opened and closed are read again at worst.
        if self.not_accepted.len() > 4 * MAX_OTHER_SOCKETS {
            self.not_accepted.clear();
        }
        let unread: Vec<(i32, u64)> = others
            .iter()
            .copied()
            .filter(|(_, inode)| !self.not_accepted.contains(inode))
            .take(MAX_OTHER_SOCKETS)
            .collect();
        if unread.is_empty() {
            return None;
        }
        let mut not_accepted = Vec::new();
        match crate::sys::accepted_connection_among(
            pid,
            &unread,
            &listeners.ports,
            &listeners.paths,
            &mut not_accepted,
        ) {
            Ok(true) => Some(Accepting::Accepted),
            Ok(false) => {
                self.not_accepted.extend(not_accepted);
                None
            }
            Err(_) => {
                self.duplicates_refused = true;
                None
            }
        }
    }

    /// A process of the worker (the leader, or a member found by a pass) that is stopped
    /// (state `T` or `t` in `/proc/PID/stat`: `SIGSTOP`, a job-control signal, a tracer): it
    /// cannot accept, nor become ready, until it is continued.
    #[must_use]
    pub(crate) fn stopped(&self) -> Option<i32> {
        std::iter::once(self.pgid)
            .chain(self.members.iter().copied())
            .find(|&pid| procfs::stat(pid).is_some_and(|stat| stat.stopped()))
    }
}

/// What a quick round reads again of a process probed before, kept open: reading an open
/// `/proc` file again is one `pread` (it renders anew from offset 0), opening it a walk of its
/// path, most of a probe's cost (some 17 µs instead of 66 for a tokio app of three threads).
/// Any change it cannot follow (a thread more or less, an fd more or less, a file that no longer
/// reads) makes it stale: the process is listed anew.
#[derive(Debug)]
struct Watched {
    fds: Fds,
    /// `/proc/PID/fd`, whose size is the number of open fds (Linux 6.2), and that number.
    fd_dir: fs::File,
    fd_count: u64,
    /// `/proc/PID/task`, whose link count is the number of threads plus two, and that count.
    task_dir: fs::File,
    task_links: u64,
    /// `/proc/PID/task/TID/syscall` of each thread.
    syscalls: Vec<fs::File>,
    /// `/proc/PID/fdinfo/EPFD` of each epoll instance of `fds`.
    epolls: Vec<fs::File>,
}

impl Watched {
    /// Opens what a quick round of `pid` reads, if `allowance` has room for it (taken from it
    /// then) and the kernel tells the size of fd tables; otherwise gives `fds` back.
    fn open(pid: i32, fds: Fds, allowance: &mut usize) -> Result<Self, Fds> {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return Err(fds);
        };
        let tids: Vec<std::ffi::OsString> = tasks
            .filter_map(|task| Some(task.ok()?.file_name()))
            .collect();
        let wanted = 2 + tids.len() + fds.epolls.len();
        if wanted > *allowance {
            return Err(fds);
        }
        let opened = (|| {
            let fd_dir = fs::File::open(format!("/proc/{pid}/fd")).ok()?;
            let task_dir = fs::File::open(format!("/proc/{pid}/task")).ok()?;
            let syscalls = tids
                .iter()
                .map(|tid| fs::File::open(format!("/proc/{pid}/task/{}/syscall", tid.display())))
                .collect::<io::Result<Vec<_>>>()
                .ok()?;
            let epolls = fds
                .epolls
                .iter()
                .map(|epfd| fs::File::open(format!("/proc/{pid}/fdinfo/{epfd}")))
                .collect::<io::Result<Vec<_>>>()
                .ok()?;
            let fd_count = fd_dir.metadata().ok()?.len();
            let task_links = task_dir.metadata().ok()?.nlink();
            // A thread started or ended since the listing: the list is not the whole.
            (fd_count > 0 && task_links == 2 + tids.len() as u64)
                .then_some((fd_dir, fd_count, task_dir, task_links, syscalls, epolls))
        })();
        let Some((fd_dir, fd_count, task_dir, task_links, syscalls, epolls)) = opened else {
            return Err(fds);
        };
        *allowance -= wanted;
        Ok(Self {
            fds,
            fd_dir,
            fd_count,
            task_dir,
            task_links,
            syscalls,
            epolls,
        })
    }

    fn kept_fds(&self) -> usize {
        2 + self.syscalls.len() + self.epolls.len()
    }

    /// The signs that `pid` accepts, read through the kept files.
    fn signs(&self, pid: i32, listeners: &ListenerInodes) -> KeptSigns {
        use std::os::unix::fs::MetadataExt as _;
        let unchanged = self
            .fd_dir
            .metadata()
            .is_ok_and(|meta| meta.len() == self.fd_count)
            && self
                .task_dir
                .metadata()
                .is_ok_and(|meta| meta.nlink() == self.task_links);
        if !unchanged {
            return KeptSigns::Stale;
        }
        if self.fds.ours.is_empty() {
            return KeptSigns::NotSeen;
        }
        for file in &self.syscalls {
            let Some(line) = read_again(file) else {
                return KeptSigns::Stale;
            };
            if let Some(accepting) = syscall_sign(pid, &line, &self.fds.ours) {
                return KeptSigns::Seen(accepting);
            }
        }
        for file in &self.epolls {
            let Some(info) = read_again(file) else {
                return KeptSigns::Stale;
            };
            if epoll_info_watches(&info, &self.fds.ours, listeners) {
                return KeptSigns::Seen(Accepting::Epoll);
            }
        }
        KeptSigns::NotSeen
    }
}

/// What the files a [`Watched`] keeps open say.
enum KeptSigns {
    /// A change they cannot follow: the process is to be listed anew.
    Stale,
    NotSeen,
    Seen(Accepting),
}

/// The text of a kept `/proc` file, rendered anew; `None` when it no longer reads (its thread
/// or fd is gone: such a file reads empty).
fn read_again(file: &fs::File) -> Option<String> {
    procfs::read_open(file).filter(|text| !text.is_empty())
}

/// The fds of a process that matter: those referring to our listeners, and its epoll instances.
#[derive(Debug, PartialEq, Eq)]
struct Fds {
    /// Fd numbers (in the worker) of our listeners.
    ours: Vec<i32>,
    /// Fd numbers of its epoll instances.
    epolls: Vec<i32>,
    /// Its other sockets, by fd number and inode: where connections it accepted may be.
    others: Vec<(i32, u64)>,
}

/// How many sockets besides our listeners a probe of a starting worker reads in a round,
/// looking for a connection accepted on one (each costs a few system calls, once).
const MAX_OTHER_SOCKETS: usize = 64;

impl Fds {
    fn of(pid: i32, listeners: &ListenerInodes) -> Option<Self> {
        let mut fds = Self {
            ours: Vec::new(),
            epolls: Vec::new(),
            others: Vec::new(),
        };
        for (fd, target) in procfs::fds(pid)? {
            let Some(target) = target.to_str() else {
                continue;
            };
            if target == "anon_inode:[eventpoll]" {
                fds.epolls.push(fd);
            } else if let Some(inode) = socket_inode(target) {
                if listeners.contains(inode) {
                    fds.ours.push(fd);
                } else {
                    fds.others.push((fd, inode));
                }
            }
        }
        Some(fds)
    }
}

/// How many connections `pid` holds open: its established TCP sockets, and its unix stream
/// sockets connected through a named socket (an accepted connection of a `unix:` listener). 0
/// when `/proc` cannot tell.
///
/// Linear in the worker's fds plus the namespace's sockets: a lingering worker may hold
/// thousands of connections, and this runs on the driver's thread.
pub(crate) fn open_connections(pid: i32) -> usize {
    let Some(fds) = procfs::fds(pid) else {
        return 0;
    };
    let inodes: HashSet<u64> = fds
        .filter_map(|(_, target)| socket_inode(target.to_str()?))
        .collect();
    let table =
        |name: &str| fs::read_to_string(format!("/proc/{pid}/net/{name}")).unwrap_or_default();
    connected_sockets(&table("tcp"), &table("tcp6"), &table("unix"))
        .filter(|inode| inodes.contains(inode))
        .count()
}

/// The connections accepted on the master's listeners that are open now, by socket inode: from
/// the tables of `/proc/PID/net/` (the network namespace of `pid`), read once for a round of
/// looks at retiring workers. TCP: established, or closed by the peer but not yet by the worker
/// (it can still answer), with the local port of one of our listeners; unix: connected stream
/// sockets named after one of our listeners' paths.
pub(crate) struct AcceptedConnections {
    inodes: HashSet<u64>,
    /// Those with bytes waiting either way: a request not read yet, or an answer not yet
    /// acknowledged by the client (TCP only: the unix table tells no queues).
    busy: HashSet<u64>,
}

/// The most TCP sockets (in use, and in `TIME_WAIT`: a busy server's fresh connections leave tens
/// of thousands) for which the tables are read: each line is text the kernel writes and the
/// master parses on its loop (40,000 sockets: some 30 ms a read). Beyond, the connections are
/// not known, and a retiring worker's switch ends when it is gone.
const MAX_TABLE_SOCKETS: u64 = 2_000;

impl AcceptedConnections {
    /// Those of the network namespace of `pid`; `None` when its tables cannot be read, or are
    /// too long to read ([`MAX_TABLE_SOCKETS`], from `/proc/PID/net/sockstat`).
    pub(crate) fn of(pid: i32, listeners: &ListenerInodes) -> Option<Self> {
        let sockstat = procfs::read_single(format!("/proc/{pid}/net/sockstat"))?;
        if tcp_sockets(&sockstat)? > MAX_TABLE_SOCKETS {
            return None;
        }
        let table = |name: &str| fs::read_to_string(format!("/proc/{pid}/net/{name}"));
        let tcp = table("tcp").ok()?;
        // No IPv6 (a kernel without it) is no error; an unreadable unix table is.
        let tcp6 = table("tcp6").unwrap_or_default();
        let unix = table("unix").ok()?;
        let mut inodes = HashSet::new();
        let mut busy = HashSet::new();
        for (inode, queued) in accepted_sockets(&tcp, &tcp6, &unix, listeners) {
            inodes.insert(inode);
            if queued {
                busy.insert(inode);
            }
        }
        Some(Self { inodes, busy })
    }
}

/// How many TCP sockets a `/proc/net/sockstat` text counts: in use and in `TIME_WAIT` (`TCP:
/// inuse 5 orphan 0 tw 40599 alloc 9 mem 1`).
fn tcp_sockets(sockstat: &str) -> Option<u64> {
    let line = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))?;
    let mut words = line.split_whitespace();
    let mut count = |name: &str| -> Option<u64> {
        words.find(|word| *word == name)?;
        words.next()?.parse().ok()
    };
    Some(count("inuse")?.saturating_add(count("tw")?))
}

/// Whether a retiring worker, the processes `pids` of its group, can no longer answer a request
/// on our listeners: none of them is seen accepting on one, nor holds a connection accepted on
/// one. The connections are read through duplicates of each process's sockets (a few system
/// calls a socket, where the tables of `/proc/net` take a walk of the kernel's whole connection
/// table, milliseconds); where they cannot be duplicated, from those tables, read once for a
/// round of looks (`table`, in the namespace of `master`: see [`AcceptedConnections`]). `false`
/// when in doubt (a process whose fds cannot be read, tables too long to read): the switch then
/// ends when the worker is gone.
pub(crate) fn switched_out(
    pids: &[i32],
    listeners: &ListenerInodes,
    master: i32,
    table: &std::cell::OnceCell<Option<AcceptedConnections>>,
) -> bool {
    pids.iter().all(|&pid| {
        let Some(fds) = Fds::of(pid, listeners) else {
            // Gone meanwhile answers nothing; not ours to read may.
            return procfs::stat(pid).is_none_or(|stat| stat.exited());
        };
        if signs(pid, &fds, listeners).is_some() {
            return false;
        }
        let mut not_accepted = Vec::new();
        match crate::sys::accepted_connection_among(
            pid,
            &fds.others,
            &listeners.ports,
            &listeners.paths,
            &mut not_accepted,
        ) {
            Ok(holds_one) => !holds_one,
            Err(_) => table
                .get_or_init(|| AcceptedConnections::of(master, listeners))
                .as_ref()
                .is_some_and(|accepted| {
                    !fds.others
                        .iter()
                        .any(|(_, inode)| accepted.inodes.contains(inode))
                }),
        }
    })
}

/// The connections accepted on our TCP listeners that have a request in progress, by socket
/// inode: from the kernel's socket diagnostics where it answers (`sys::sock_diag`:
/// bytes unread or unacknowledged, a request read and not answered, a connection that came in
/// less than a second ago and sent nothing yet), else from the tables of `/proc/PID/net/`
/// (bytes waiting either way only; `pid`'s namespace, within [`MAX_TABLE_SOCKETS`]). `None`
/// when neither can tell.
pub(crate) fn requests_in_progress(pid: i32, listeners: &ListenerInodes) -> Option<HashSet<u64>> {
    match crate::sys::accepted_connections(&listeners.ports, &listeners.families) {
        Ok(connections) => Some(
            connections
                .into_iter()
                .filter(|(_, state)| state.is_in_progress())
                .map(|(inode, _)| inode)
                .collect(),
        ),
        Err(_) => AcceptedConnections::of(pid, listeners).map(|accepted| accepted.busy),
    }
}

/// The sockets that the processes of a worker's group hold, other than our listeners: those
/// that may carry a request in progress. See [`held_sockets`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HeldSockets {
    /// By process: its pid, and the fd number and socket inode of each.
    by_process: Vec<(i32, Vec<(i32, u64)>)>,
}

impl HeldSockets {
    /// Whether no process holds a socket.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_process
            .iter()
            .all(|(_, sockets)| sockets.is_empty())
    }

    /// Whether one of them is among `in_progress` ([`requests_in_progress`]).
    pub(crate) fn any_of(&self, in_progress: &HashSet<u64>) -> bool {
        self.by_process
            .iter()
            .flat_map(|(_, sockets)| sockets)
            .any(|(_, inode)| in_progress.contains(inode))
    }

    /// Whether one of them is a connection accepted on our TCP listeners with a request in
    /// progress, read through a duplicate of each fd until one is found
    /// ([`crate::sys::held_request_in_progress`]): a few system calls a socket, where
    /// [`requests_in_progress`] walks every socket of the namespace. `None` when the fds cannot
    /// be duplicated.
    pub(crate) fn request_in_progress(&self, listeners: &ListenerInodes) -> Option<bool> {
        for (pid, sockets) in &self.by_process {
            if sockets.is_empty() {
                continue;
            }
            if crate::sys::held_request_in_progress(*pid, sockets, &listeners.ports).ok()? {
                return Some(true);
            }
        }
        Some(false)
    }
}

/// The connections accepted on our TCP listeners with a request in progress, from one dump
/// ([`requests_in_progress`]) taken the first time a worker needs it, if one does: one dump
/// answers for every worker of a look.
#[derive(Debug)]
pub(crate) struct Dump {
    /// The process in whose network namespace the tables are read, where the dump is not.
    pid: i32,
    taken: Option<Taken>,
}

impl Dump {
    /// No dump yet; `pid`: see [`requests_in_progress`].
    pub(crate) fn new(pid: i32) -> Self {
        Self { pid, taken: None }
    }

    /// Whether the dump was taken.
    #[cfg(all(test, target_os = "linux"))]
    fn taken(&self) -> bool {
        self.taken.is_some()
    }

    fn get(&mut self, listeners: &ListenerInodes) -> Option<&HashSet<u64>> {
        let pid = self.pid;
        self.taken
            .get_or_insert_with(|| requests_in_progress(pid, listeners))
            .as_ref()
    }
}

/// What a dump told: `None` when neither the kernel's socket diagnostics nor short enough
/// tables tell the requests in progress.
type Taken = Option<HashSet<u64>>;

/// Whether a worker steered away from whose group holds `held` ([`held_sockets`]; `None`: in
/// doubt) is drained: it holds no socket, or none of them carries a request in progress,
/// read through duplicates of its fds or, where they cannot be duplicated, from `dump`. Where
/// nothing tells the requests in progress, `true`: the caller's empty queue alone counts.
pub(crate) fn drained(
    held: Option<&HeldSockets>,
    listeners: &ListenerInodes,
    dump: &mut Dump,
) -> bool {
    let Some(held) = held else {
        return dump.get(listeners).is_none();
    };
    if held.is_empty() {
        return true;
    }
    if let Some(busy) = held.request_in_progress(listeners) {
        return !busy;
    }
    dump.get(listeners)
        .is_none_or(|in_progress| !held.any_of(in_progress))
}

/// The sockets that the processes `pids` of a worker's group hold, other than our listeners
/// (see [`HeldSockets`]). A worker steered away from that holds none is drained without asking
/// the kernel about any connection. `None` when in doubt (the fds of a process still alive
/// cannot be read).
pub(crate) fn held_sockets(pids: &[i32], listeners: &ListenerInodes) -> Option<HeldSockets> {
    let mut held = HeldSockets::default();
    for &pid in pids {
        let Some(fds) = procfs::fds(pid) else {
            if procfs::stat(pid).is_none_or(|stat| stat.exited()) {
                continue;
            }
            return None;
        };
        let sockets = fds
            .filter_map(|(fd, target)| Some((fd, socket_inode(target.to_str()?)?)))
            .filter(|&(_, inode)| !listeners.contains(inode))
            .collect();
        held.by_process.push((pid, sockets));
    }
    Some(held)
}

/// The inodes of the sockets of connections accepted on our listeners in the tables of
/// `/proc/PID/net/` (see [`AcceptedConnections`]), each with whether bytes wait in its queues:
/// TCP established or closed by the peer only (`CLOSE_WAIT`: the worker can still answer) on a
/// listener's port, unix ones of a listener's path.
fn accepted_sockets<'a>(
    tcp: &'a str,
    tcp6: &'a str,
    unix: &'a str,
    listeners: &'a ListenerInodes,
) -> impl Iterator<Item = (u64, bool)> + 'a {
    table_sockets(tcp, tcp6, unix).filter_map(|socket| match socket {
        TableSocket::Tcp {
            inode,
            state,
            port,
            queued,
        } => (matches!(state, "01" | "08") && listeners.ports.contains(&port))
            .then_some((inode, queued)),
        TableSocket::ConnectedUnix { inode, path } => listeners
            .paths
            .iter()
            .any(|ours| ours == path)
            .then_some((inode, false)),
    })
}

/// The inodes of the connected sockets in the tables of `/proc/PID/net/`: TCP established, and
/// unix ones connected through a named socket.
fn connected_sockets<'a>(
    tcp: &'a str,
    tcp6: &'a str,
    unix: &'a str,
) -> impl Iterator<Item = u64> + 'a {
    table_sockets(tcp, tcp6, unix).filter_map(|socket| match socket {
        TableSocket::Tcp { inode, state, .. } => (state == "01").then_some(inode),
        TableSocket::ConnectedUnix { inode, .. } => Some(inode),
    })
}

/// A socket of the tables of `/proc/PID/net/`.
enum TableSocket<'a> {
    /// A TCP socket: its state (`01` established, `08` `CLOSE_WAIT`, …), its local port, and
    /// whether bytes wait in its send or receive queue.
    Tcp {
        inode: u64,
        state: &'a str,
        port: u16,
        queued: bool,
    },
    /// A connected unix stream socket with a path: the named socket it was accepted on.
    ConnectedUnix { inode: u64, path: &'a str },
}

/// The sockets of the tables of `/proc/PID/net/`: columns are `sl local remote st tx:rx … inode` for
/// TCP (`tcp`, `tcp6`), `Num RefCount Protocol Flags Type St Inode Path` for unix sockets, of
/// which only connected stream sockets with a path are told.
fn table_sockets<'a>(
    tcp: &'a str,
    tcp6: &'a str,
    unix: &'a str,
) -> impl Iterator<Item = TableSocket<'a>> + 'a {
    let tcp = [tcp, tcp6].into_iter().flat_map(|text| {
        text.lines().skip(1).filter_map(|line| {
            let mut columns = line.split_whitespace();
            let (_, port) = columns.nth(1)?.rsplit_once(':')?;
            let state = columns.nth(1)?;
            let (tx, rx) = columns.next()?.split_once(':')?;
            let queued = [tx, rx]
                .iter()
                .any(|queue| queue.bytes().any(|b| b != b'0'));
            Some(TableSocket::Tcp {
                inode: columns.nth(4)?.parse().ok()?,
                state,
                port: u16::from_str_radix(port, 16).ok()?,
                queued,
            })
        })
    });
    let unix = unix.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Type 0001 (stream), state 03 (connected), with a path.
        (fields.get(4) == Some(&"0001") && fields.get(5) == Some(&"03")).then_some(())?;
        Some(TableSocket::ConnectedUnix {
            inode: fields.get(6)?.parse().ok()?,
            path: fields.get(7)?,
        })
    });
    tcp.chain(unix)
}

/// The inode of a `socket:[INODE]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The syscalls that wait for a connection, on the architectures whose numbers we know: they
/// take the listener's fd as their first argument.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
const ACCEPT_SYSCALLS: &[i64] = &[nix::libc::SYS_accept, nix::libc::SYS_accept4];
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
const ACCEPT_SYSCALLS: &[i64] = &[];

/// `poll`-like syscalls: an array of `struct pollfd` (pointer, count) in the first two arguments.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const POLL_SYSCALLS: &[i64] = &[nix::libc::SYS_poll, nix::libc::SYS_ppoll];
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
const POLL_SYSCALLS: &[i64] = &[nix::libc::SYS_ppoll];
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
const POLL_SYSCALLS: &[i64] = &[];

/// `select`-like syscalls: the number of fds, then a pointer to the set of fds to read.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const SELECT_SYSCALLS: &[i64] = &[nix::libc::SYS_select, nix::libc::SYS_pselect6];
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
const SELECT_SYSCALLS: &[i64] = &[nix::libc::SYS_pselect6];
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
const SELECT_SYSCALLS: &[i64] = &[];

/// At most this many fds of a `poll`/`select` are looked at (more would only cost time).
const MAX_POLLED_FDS: u64 = 1024;

/// How a thread of `pid` waits on one of the fds `ours`, if it does: blocked in
/// `accept`/`accept4` on it, or in `poll`/`ppoll`/`select`/`pselect6` for input on it.
fn seen_in_syscall(pid: i32, ours: &[i32]) -> Option<Accepting> {
    if ACCEPT_SYSCALLS.is_empty() {
        return None;
    }
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.filter_map(Result::ok).find_map(|task| {
        let line = procfs::read_single(task.path().join("syscall"))?;
        syscall_sign(pid, &line, ours)
    })
}

/// The sign that a thread of `pid` whose `/proc/PID/task/TID/syscall` reads `line` waits for a
/// connection on one of the fds `ours`.
fn syscall_sign(pid: i32, line: &str, ours: &[i32]) -> Option<Accepting> {
    if ACCEPT_SYSCALLS.is_empty() {
        return None;
    }
    // "NR ARG0 ARG1 … SP PC" while in a syscall; "running" or "-1 SP PC" otherwise.
    let mut fields = line.split_ascii_whitespace();
    let nr = fields.next()?.parse::<i64>().ok()?;
    let arg0 = fields.next().and_then(parse_hex)?;
    let arg1 = fields.next().and_then(parse_hex);
    if ACCEPT_SYSCALLS.contains(&nr) {
        let fd = i32::try_from(arg0).ok()?;
        ours.contains(&fd).then_some(Accepting::BlockedInAccept)
    } else if POLL_SYSCALLS.contains(&nr) {
        polls_for_input(pid, arg0, arg1?, ours).then_some(Accepting::Polling)
    } else if SELECT_SYSCALLS.contains(&nr) {
        selects_for_input(pid, arg1?, arg0, ours).then_some(Accepting::Polling)
    } else {
        None
    }
}

/// Whether the `struct pollfd` array at `address` (`count` long) in `pid` asks for input on one
/// of the fds `ours`. The array is read from `/proc/PID/mem` (the same ptrace-read access as
/// `syscall`); the kernel copied it at the call, and the process leaves it alone while it waits.
fn polls_for_input(pid: i32, address: u64, count: u64, ours: &[i32]) -> bool {
    /// `struct pollfd { int fd; short events; short revents; }`
    const POLLFD_SIZE: usize = 8;
    const POLLIN: i16 = 0x1;
    let Ok(count) = usize::try_from(count.min(MAX_POLLED_FDS)) else {
        return false;
    };
    let mut array = vec![0_u8; count * POLLFD_SIZE];
    if read_memory(pid, address, &mut array).is_err() {
        return false;
    }
    array.chunks_exact(POLLFD_SIZE).any(|pollfd| {
        let fd = i32::from_ne_bytes([pollfd[0], pollfd[1], pollfd[2], pollfd[3]]);
        let events = i16::from_ne_bytes([pollfd[4], pollfd[5]]);
        ours.contains(&fd) && events & POLLIN != 0
    })
}

/// Whether the read `fd_set` at `address` (for fds below `nfds`) in `pid` holds one of the fds
/// `ours`.
fn selects_for_input(pid: i32, address: u64, nfds: u64, ours: &[i32]) -> bool {
    if address == 0 {
        return false;
    }
    let Ok(nfds) = usize::try_from(nfds.min(MAX_POLLED_FDS)) else {
        return false;
    };
    // An fd_set is an array of native-endian `unsigned long`s: bit `fd % bits` of word `fd / bits`.
    let mut set = vec![0_u8; nfds.div_ceil(usize::BITS as usize) * size_of::<usize>()];
    if read_memory(pid, address, &mut set).is_err() {
        return false;
    }
    let word_bytes = size_of::<usize>();
    let words: Vec<usize> = set
        .chunks_exact(word_bytes)
        .map(|word| {
            let mut bytes = [0_u8; size_of::<usize>()];
            bytes.copy_from_slice(word);
            usize::from_ne_bytes(bytes)
        })
        .collect();
    ours.iter().any(|&fd| {
        usize::try_from(fd).is_ok_and(|fd| {
            fd < nfds
                && words
                    .get(fd / usize::BITS as usize)
                    .is_some_and(|word| word >> (fd % usize::BITS as usize) & 1 == 1)
        })
    })
}

/// Reads `buf.len()` bytes at `address` of `pid`'s memory.
fn read_memory(pid: i32, address: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    fs::File::open(format!("/proc/{pid}/mem"))?.read_exact_at(buf, address)
}

/// Whether the epoll instance `epfd` of `pid` watches one of our listeners for input.
fn epoll_watches(pid: i32, epfd: i32, fds: &Fds, listeners: &ListenerInodes) -> bool {
    procfs::read_single(format!("/proc/{pid}/fdinfo/{epfd}"))
        .is_some_and(|info| epoll_info_watches(&info, &fds.ours, listeners))
}

/// Whether an epoll instance's fdinfo `info` has one of our listeners registered for input.
///
/// A `tfd:` line reads `tfd: FD events: HEX data: HEX pos:N ino:HEX sdev:HEX`. `ino` and `sdev`
/// (kernels since 3.8) name the file itself, so they are used when present; the `tfd` number (checked
/// against `ours`, the fds of our listeners) only names the fd it was added under, which may
/// since have been closed and reused.
fn epoll_info_watches(info: &str, ours: &[i32], listeners: &ListenerInodes) -> bool {
    const EPOLLIN: u64 = 0x1;
    info.lines().any(|line| {
        let Some(rest) = line.strip_prefix("tfd:") else {
            return false;
        };
        let mut events = None;
        let mut inode = None;
        let mut device = None;
        let mut words = rest.split_ascii_whitespace();
        // The first word is the tfd; then `events:` and `data:` are followed by their value
        // as a separate word, `pos:N`, `ino:X` and `sdev:X` are one word each.
        let tfd = words.next().and_then(|word| word.parse::<i32>().ok());
        while let Some(word) = words.next() {
            if word == "events:" {
                events = words.next().and_then(parse_hex);
            } else if let Some(hex) = word.strip_prefix("ino:") {
                inode = parse_hex(hex);
            } else if let Some(hex) = word.strip_prefix("sdev:") {
                device = parse_hex(hex);
            }
        }
        let watched = match inode {
            Some(inode) => listeners.contains_file(device, inode),
            None => tfd.is_some_and(|tfd| ours.contains(&tfd)),
        };
        watched && events.is_some_and(|events| events & EPOLLIN != 0)
    })
}

/// A hexadecimal number, with or without `0x`.
fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
}

/// The process groups that have a live (not zombie) process, from one pass over `/proc`; `None`
/// without `/proc`.
pub(crate) fn groups_with_live_processes() -> Option<HashSet<i32>> {
    Some(procfs::live_groups()?.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt as _;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn connected_sockets_are_read_from_the_namespace_s_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0
   1: 0100007F:0BB8 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0 20 4 30 10 -1
   2: 0100007F:0BB8 0100007F:D2F2 06 00000000:00000000 03:00000D1A 00000000     0        0 0 3 0
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000001000000:D300 01 00000000:00000000 00:00000000 00000000     0        0 102 1 0 20 4 30 10 -1
";
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 200 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 201 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 202
0000000000000000: 00000002 00000000 00000000 0002 01 203 /run/log.sock
";
        assert_eq!(
            connected_sockets(tcp, tcp6, unix).collect::<Vec<_>>(),
            vec![101, 102, 201],
            "established TCP, and accepted connections of a named unix socket"
        );
        assert_eq!(connected_sockets("", "", "").count(), 0);
        // Accepted on our listeners: port 3000 (0BB8) and /run/app.sock; and one the peer
        // closed, which the worker can still answer.
        let close_wait = "   3: 0100007F:0BB8 0100007F:D2F4 08 00000000:00000000 00:00000000 00000000     0        0 103 1 0 20 4 30 10 -1\n";
        let other_port = "   4: 0100007F:1F90 0100007F:D2F6 01 00000000:00000000 00:00000000 00000000     0        0 104 1 0 20 4 30 10 -1\n";
        let unread = "   5: 0100007F:0BB8 0100007F:D2F8 01 00000000:0000004E 00:00000000 00000000     0        0 105 1 0 20 4 30 10 -1\n";
        let unacked = "   6: 0100007F:0BB8 0100007F:D2FA 01 00000A00:00000000 01:00000014 00000000     0        0 106 1 0 20 4 30 10 -1\n";
        let tcp = format!("{tcp}{close_wait}{other_port}{unread}{unacked}");
        let listeners = ListenerInodes {
            ports: vec![3000],
            paths: vec!["/run/app.sock".to_owned()],
            ..ListenerInodes::default()
        };
        assert_eq!(
            accepted_sockets(&tcp, tcp6, unix, &listeners).collect::<Vec<_>>(),
            vec![
                (101, false),
                (103, false),
                (105, true),
                (106, true),
                (102, false),
                (201, false)
            ],
            "with whether a request waits unread or an answer unacknowledged"
        );
    }

    /// Waits (up to 10 s) until `done`.
    #[cfg(target_os = "linux")]
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Set in the copy of this test binary run under `fixtures/seccomp_pidfd_getfd.py`.
    #[cfg(target_os = "linux")]
    const UNDER_SECCOMP: &str = "MCLUSTER_TEST_PIDFD_GETFD_REFUSED";

    /// A worker holding a request in progress is not drained until it answers, whether its
    /// connections are read through duplicates of its fds or, where `pidfd_getfd` is refused
    /// (this very test runs again in a child of this test binary under a seccomp filter making
    /// it fail with `EPERM`), from a dump of every connection.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn a_request_in_progress_holds_the_drain_with_or_without_pidfd_getfd() {
        use std::io::{Read as _, Write as _};
        const NAME: &str =
            "readiness::tests::a_request_in_progress_holds_the_drain_with_or_without_pidfd_getfd";
        let refused = std::env::var_os(UNDER_SECCOMP).is_some();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let this = i32::try_from(std::process::id()).unwrap();
        let look = || {
            let held = held_sockets(&[this], &listeners).expect("this process's fds");
            assert_eq!(
                held.request_in_progress(&listeners).is_none(),
                refused,
                "duplicates refused only under the filter"
            );
            let mut dump = Dump::new(this);
            let drained = drained(Some(&held), &listeners, &mut dump);
            assert_eq!(
                dump.taken(),
                refused,
                "a dump only where duplicates are refused"
            );
            drained
        };
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        crate::sys::wait_until_sending_is_old(&server);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(!look(), "the request waits unread");
        let mut request = [0; 18];
        server.read_exact(&mut request).unwrap();
        assert!(!look(), "read, not answered");
        server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap();
        let mut answer = [0; 27];
        client.read_exact(&mut answer).unwrap();
        eventually("answered and acknowledged", look);
        if refused {
            return;
        }
        crate::sys::rerun_test_under_seccomp("seccomp_pidfd_getfd.py", NAME, UNDER_SECCOMP);
    }

    /// A retiring worker holding a connection it accepted can still answer; one holding only
    /// our listener, waiting on none, cannot. Read through duplicates of its fds, or where
    /// `pidfd_getfd` is refused (this test runs again under the seccomp filter), from the
    /// tables of `/proc/net`.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn a_retiring_worker_holding_a_connection_it_accepted_is_not_switched_out() {
        const NAME: &str = "readiness::tests::a_retiring_worker_holding_a_connection_it_accepted_is_not_switched_out";
        let refused = std::env::var_os(UNDER_SECCOMP).is_some();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let this = i32::try_from(std::process::id()).unwrap();
        // Whether switched out, whether the tables were read, whether in doubt (tables too
        // long to read).
        let look = || {
            let table = std::cell::OnceCell::new();
            let out = switched_out(&[this], &listeners, this, &table);
            assert!(
                refused || table.get().is_none(),
                "the tables only where duplicates are refused"
            );
            (
                out,
                table.get().is_some(),
                table.get().is_some_and(Option::is_none),
            )
        };
        let (out, _, doubt) = look();
        assert!(out || doubt, "it holds only our listener");
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (out, tables, _) = look();
        assert!(!out, "it holds a connection it accepted");
        assert_eq!(
            tables, refused,
            "a socket to read: duplicated, or else the tables"
        );
        drop(server);
        let (out, _, doubt) = look();
        assert!(out || doubt, "the connection closed");
        if !refused {
            crate::sys::rerun_test_under_seccomp("seccomp_pidfd_getfd.py", NAME, UNDER_SECCOMP);
        }
    }

    /// A child killed and reaped when the test ends, even when it fails.
    #[cfg(target_os = "linux")]
    struct Killed(std::process::Child);

    #[cfg(target_os = "linux")]
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_process_holding_only_our_listener_holds_no_socket_that_could_carry_a_request() {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        // Inherited for this spawn only; other tests of this binary clear close-on-exec for
        // their own spawns at times, so the child closes every other fd but its stdio (null,
        // and a pipe), then says so.
        fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let spawned = std::process::Command::new("python3")
            .args([
                "-c",
                "import os, sys, time\n\
                 keep = int(sys.argv[1])\n\
                 os.closerange(3, keep)\n\
                 os.closerange(keep + 1, 65536)\n\
                 print('alone', flush=True)\n\
                 time.sleep(1000)",
                &listener.as_raw_fd().to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        fcntl(&listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        let mut child = Killed(spawned.expect("python3"));
        let pid = i32::try_from(child.0.id()).unwrap();
        let mut said = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
            &mut said,
        )
        .unwrap();
        assert_eq!(said, "alone\n");
        assert!(
            procfs::fds(pid).unwrap().any(|(_, target)| {
                target
                    .to_str()
                    .and_then(socket_inode)
                    .is_some_and(|inode| listeners.contains(inode))
            }),
            "the child holds our listener"
        );
        assert!(held_sockets(&[pid], &listeners).unwrap().is_empty());
        // This process holds the listener and a connection accepted on it: the connection
        // counts, the listener does not.
        let this = i32::try_from(std::process::id()).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let held = held_sockets(&[this, pid], &listeners).unwrap();
        let inode_of = |fd: i32| {
            let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            HashSet::from([socket_inode(link.to_str().unwrap()).unwrap()])
        };
        assert!(held.any_of(&inode_of(server.as_raw_fd())));
        assert!(!held.any_of(&inode_of(listener.as_raw_fd())));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert!(
            held_sockets(&[pid], &listeners).unwrap().is_empty(),
            "a process gone holds nothing"
        );
    }

    #[test]
    fn open_connections_counts_this_process_s_own() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let before = open_connections(std::process::id().cast_signed());
        let clients: Vec<_> = (0..50)
            .map(|_| std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap())
            .collect();
        let servers: Vec<_> = (0..50).map(|_| listener.accept().unwrap().0).collect();
        let during = open_connections(std::process::id().cast_signed());
        // Other tests of this binary may open or close connections meanwhile: a margin.
        assert!(during >= before + 90, "{before} → {during}");
        drop((clients, servers));
    }

    #[test]
    fn the_tcp_sockets_of_sockstat_count_those_in_time_wait() {
        let text =
            "sockets: used 7\nTCP: inuse 3 orphan 0 tw 40599 alloc 5 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(tcp_sockets(text), Some(40_602));
        assert_eq!(tcp_sockets("sockets: used 7\n"), None);
        assert_eq!(tcp_sockets("TCP: inuse x tw 1\n"), None);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let this = i32::try_from(std::process::id()).unwrap();
        let sockstat = procfs::read_single(format!("/proc/{this}/net/sockstat")).unwrap();
        assert_eq!(
            AcceptedConnections::of(this, &listeners).is_some(),
            tcp_sockets(&sockstat).unwrap() <= MAX_TABLE_SOCKETS,
            "{sockstat}"
        );
    }

    #[test]
    fn socket_inodes_are_read_from_link_targets() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("anon_inode:[eventpoll]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn epoll_registrations_count_for_input_on_our_listeners_only() {
        let ours = ListenerInodes::new(9, [0x1f2e]);
        let line = |tfd: i32, events: &str, ino: &str| {
            format!(
                "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
                 tfd: {tfd:>8} events: {events:>8} data: {tfd:>16x}  pos:0 ino:{ino} sdev:9\n"
            )
        };
        // tokio: EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET.
        assert!(epoll_info_watches(&line(7, "80002005", "1f2e"), &[], &ours));
        assert!(
            !epoll_info_watches(&line(7, "4", "1f2e"), &[7], &ours),
            "output only"
        );
        assert!(
            !epoll_info_watches(&line(7, "19", "abc"), &[7], &ours),
            "another file at 7"
        );
        // Without `ino:` (old kernels) the tfd names it.
        let old = "tfd:        3 events:       19 data:                3\n";
        assert!(epoll_info_watches(old, &[3], &ours));
        assert!(!epoll_info_watches(old, &[4], &ours));
        assert!(!epoll_info_watches("", &[3], &ours));
    }

    #[test]
    fn listener_inodes_are_those_of_the_links_in_proc() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let inodes = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let inode = socket_inode(link.to_str().unwrap()).unwrap();
        assert!(inodes.contains(inode), "{inodes:?} vs {link:?}");
    }

    /// A child holding `listener` as its fd 3 in a group of its own, running `script` (Python):
    /// each line it reads on stdin is a command, answered by a line on stdout once done.
    struct Child {
        process: std::process::Child,
        answers: std::io::BufReader<std::process::ChildStdout>,
    }

    impl Child {
        fn start(listener: &TcpListener) -> Self {
            use nix::fcntl::{FcntlArg, FdFlag, fcntl};
            let script = "
import os, select, socket, sys, threading
if int(sys.argv[1]) != 3:
    os.dup2(int(sys.argv[1]), 3)
    os.close(int(sys.argv[1]))
# For 'swap': another listening socket, and a thread that polls fd 3 for input once told
# (not accept: a thread blocked in accept holds the number of the fd it is to return, which
# the size of the fd table counts).
other = socket.socket()
other.bind(('127.0.0.1', 0))
other.listen()
go = threading.Event()
def wait():
    go.wait()
    waiting = select.poll()
    waiting.register(3, select.POLLIN)
    waiting.poll()
threading.Thread(target=wait, daemon=True).start()
for command in sys.stdin:
    command = command.strip()
    if command == 'epoll':
        # An epoll instance (a new fd) watching fd 3, our listener, for input.
        e = select.epoll()
        e.register(3, select.EPOLLIN)
    elif command == 'accept':
        # Takes the connection waiting on fd 3 and keeps it; nothing waits on fd 3 after.
        kept = socket.socket(fileno=os.dup(3)).accept()
    elif command == 'connect':
        # A connection of its own to our listener's address (the test process accepts none).
        out = socket.create_connection(socket.socket(fileno=os.dup(3)).getsockname())
    elif command == 'poll':
        # A new thread waiting in poll on fd 3, our listener.
        def poll3():
            waiting = select.poll()
            waiting.register(3, select.POLLIN)
            waiting.poll()
        threading.Thread(target=poll3, daemon=True).start()
    elif command == 'swap':
        # fd 3 becomes the other listening socket (the number of fds stays the same), and
        # the thread waits on it.
        os.dup2(other.fileno(), 3)
        go.set()
    print('done', flush=True)
";
            // Inherited for this spawn only (other tests of this binary spawn too).
            fcntl(listener, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
            let spawned = std::process::Command::new("python3")
                .args(["-c", script, &listener.as_raw_fd().to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .process_group(0)
                .spawn();
            fcntl(listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
            let mut process = spawned.expect("python3");
            let answers = std::io::BufReader::new(process.stdout.take().unwrap());
            Self { process, answers }
        }

        fn pid(&self) -> i32 {
            i32::try_from(self.process.id()).unwrap()
        }

        fn run(&mut self, command: &str) {
            use std::io::{BufRead as _, Write as _};
            let stdin = self.process.stdin.as_mut().unwrap();
            writeln!(stdin, "{command}").unwrap();
            let mut line = String::new();
            self.answers.read_line(&mut line).unwrap();
            assert_eq!(line, "done\n", "{command}");
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }

    #[test]
    fn a_quick_round_sees_an_epoll_instance_made_after_the_last_full_round() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let mut child = Child::start(&listener);
        let mut starting = Starting::new(child.pid(), None);
        child.run("ready");
        let mut room = 100;
        assert_eq!(
            starting.probe(&listeners, Round::Full(None), &mut room),
            None
        );
        assert!(starting.known.contains_key(&child.pid()), "its fds kept");
        assert_eq!(room, 100 - starting.kept_fds(), "taken from the allowance");
        child.run("epoll");
        assert_eq!(
            starting.probe(&listeners, Round::Quick, &mut room),
            Some(Accepting::Epoll),
            "the fd table grew: listed anew"
        );
    }

    #[test]
    fn a_quick_round_sees_a_thread_started_after_the_last_round_and_works_without_allowance() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        for mut room in [usize::MAX, 0] {
            let mut child = Child::start(&listener);
            let mut starting = Starting::new(child.pid(), None);
            child.run("ready");
            assert_eq!(
                starting.probe(&listeners, Round::Full(None), &mut room),
                None
            );
            assert_eq!(starting.known.is_empty(), room == 0, "kept only with room");
            assert_eq!(starting.probe(&listeners, Round::Quick, &mut room), None);
            // A new thread (not a new fd) waits in poll on fd 3, our listener.
            child.run("poll");
            let deadline = Instant::now() + Duration::from_secs(30);
            while starting.probe(&listeners, Round::Quick, &mut room) != Some(Accepting::Polling) {
                assert!(
                    Instant::now() < deadline,
                    "never seen polling (room {room})"
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn a_worker_holding_a_connection_it_accepted_is_seen_accepting_though_it_waits_for_none() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let mut child = Child::start(&listener);
        let mut starting = Starting::new(child.pid(), None);
        child.run("ready");
        let mut room = usize::MAX;
        assert_eq!(
            starting.probe(&listeners, Round::Full(None), &mut room),
            None
        );
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        child.run("accept");
        assert_eq!(
            starting.probe(&listeners, Round::Quick, &mut room),
            Some(Accepting::Accepted)
        );
        // A connection it made itself is none it accepted.
        let mut child = Child::start(&listener);
        let mut starting = Starting::new(child.pid(), None);
        child.run("connect");
        assert_eq!(
            starting.probe(&listeners, Round::Full(None), &mut room),
            None
        );
    }

    #[test]
    fn a_kept_fd_list_that_is_stale_never_makes_a_worker_seen_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let mut child = Child::start(&listener);
        let pid = child.pid();
        let mut starting = Starting::new(pid, None);
        child.run("ready");
        let mut room = usize::MAX;
        assert_eq!(
            starting.probe(&listeners, Round::Full(None), &mut room),
            None
        );
        let size = starting.known[&pid].fd_count;
        // Its fd 3 is another socket now, with a thread waiting in poll on it; same size.
        child.run("swap");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if signs(pid, &starting.known[&pid].fds, &listeners).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the thread never waited in poll");
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            fs::metadata(format!("/proc/{pid}/fd")).unwrap().len(),
            size,
            "the same number of fds"
        );
        assert_eq!(
            starting.probe(&listeners, Round::Quick, &mut room),
            None,
            "what the kept list says is checked with a fresh one"
        );
    }

    /// This process blocked in `accept` on a listener of its own, in a thread: the probe sees
    /// it, and reports what one probe costs (printed, not asserted: the machine may be busy).
    #[test]
    fn a_thread_blocked_in_accept_is_seen_and_a_probe_is_cheap() {
        assert!(available());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let listeners = ListenerInodes::of(&[listener.as_fd()]).unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        assert_eq!(probe(pid, &listeners), None, "nobody accepts yet");
        let rounds = 2000;
        let start = Instant::now();
        for _ in 0..rounds {
            assert!(probe(pid, &listeners).is_none());
        }
        let holding = start.elapsed() / rounds;

        let acceptor = thread::spawn(move || listener.accept().map(|_| ()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while probe(pid, &listeners).is_none() {
            assert!(Instant::now() < deadline, "never seen blocked in accept");
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(probe(pid, &listeners), Some(Accepting::BlockedInAccept));

        let start = Instant::now();
        for _ in 0..rounds {
            assert!(probe(pid, &listeners).is_some());
        }
        let hit = start.elapsed() / rounds;
        let nobody = ListenerInodes::new(0, [u64::MAX]);
        let start = Instant::now();
        for _ in 0..rounds {
            assert!(probe(pid, &nobody).is_none());
        }
        let miss = start.elapsed() / rounds;
        let start = Instant::now();
        for _ in 0..20 {
            assert!(procfs::live_groups().is_some());
        }
        let pass = start.elapsed() / 20;
        // A starting worker probed every 10 ms; one pass over /proc for the members of every
        // starting worker's group at most every 50 ms (while they start), every second at
        // least (once they take long).
        let every = Duration::from_millis(10);
        let share = |cost: Duration, every: Duration| cost.div_duration_f64(every) * 100.0;
        eprintln!(
            "one probe: {holding:?} (holds our listener, not accepting), {hit:?} (seen), \
             {miss:?} (holds no listener of ours); one pass over /proc for the groups: {pass:?}; \
             a worker probed every 10 ms: {:.2}% of a core; the passes: {:.2}% at most (every \
             50 ms), {:.2}% once workers take long (every second), for all workers",
            share(holding, every),
            share(pass, Duration::from_millis(50)),
            share(pass, Duration::from_secs(1)),
        );

        std::net::TcpStream::connect(addr).unwrap();
        acceptor.join().unwrap().unwrap();
    }
}

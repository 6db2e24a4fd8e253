//! The guard: a small process that outlives the master just long enough to kill every process
//! group the master started.
//!
//! `PR_SET_PDEATHSIG` reaches a worker process only, never what it started (the app behind a
//! shell wrapper that does not `exec`, a helper it forked). So each master forks one guard
//! before any worker. The guard holds the read end of a pipe and the master the only write end
//! (the guard closes its own copy at once, and every other process gets it close-on-exec). Each
//! worker writes its own pid, which is its process group's id since it leads one, into the pipe
//! between fork and exec, so no worker is ever unknown to the guard, however the master dies;
//! the master writes the pids of groups it started without that (a build), and the negated pid
//! once a group is gone or a spawn failed, so that the number, free again, is never killed in
//! someone else's hands. When the master exits, even by SIGKILL, the kernel closes its end of
//! the pipe: the guard reads end-of-file, SIGKILLs every group it still knows, and exits.
//!
//! The guard is a fork without exec (so it works inside any program that embeds the master):
//! it only calls async-signal-safe functions on memory of its own stack. It runs in its own
//! process group and ignores the signals a terminal or a group kill sends, so that a Ctrl-C or
//! `kill -- -PGID` aimed at the master's group cannot take it down first. Should it die anyway
//! (`kill -9`), the master reaps it as its child, says so, and starts a new guard that it tells
//! every live group (see [`Guard::restart`]). Not covered: a process that left its worker's
//! group (`setsid`, `setpgid`) is not in any group the guard knows.

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::platform;

/// How many process groups the guard tracks at once. The master refuses to start a worker
/// while this many groups are live (see [`Guard::full`]): a worker the guard could not hold
/// would outlive a killed master.
pub(crate) const CAPACITY: usize = 4096;

/// How long the master waits for its guard to exit at the end; a guard that is stuck (stopped
/// by `SIGSTOP`) is killed then, so that the master's exit never hangs on it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The master's side of its guard. Dropping it (or the master's death) makes the guard kill
/// every group it was told about and exit.
#[derive(Debug)]
pub(crate) struct Guard {
    /// The guard process: the master's child until it is reaped (`None` then).
    pid: Option<i32>,
    /// Where pids are written: close-on-exec, so no worker or build holds it open, and
    /// non-blocking, so that a guard that stopped reading (SIGSTOP) never blocks the master.
    /// `None` once dropped.
    write: Option<OwnedFd>,
    /// What the pipe had no room for (a stopped guard), sent before anything else.
    unsent: Vec<i32>,
}

impl Guard {
    /// Forks the guard.
    pub(crate) fn start() -> io::Result<Self> {
        let (read, write) = platform::pipe()?;
        set_nonblocking(&write)?;
        let devnull = std::fs::File::open("/dev/null")?;
        let plan = GuardPlan {
            read: read.as_raw_fd(),
            write: write.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
            fd_limit: platform::fd_limit(),
        };
        // SAFETY: fork duplicates only the calling thread. The child runs `GuardPlan::run`,
        // which calls only async-signal-safe functions (close, setpgid, prctl, signal, fcntl,
        // dup2, close_range or a /proc/self/fd walk, read, kill, _exit) on its own stack and the
        // fd numbers captured above, allocates nothing, takes no lock and never returns. The
        // parent continues normally.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            plan.run();
        }
        drop(read);
        Ok(Self {
            pid: Some(pid),
            write: Some(write),
            unsent: Vec::new(),
        })
    }

    /// The guard process's pid, while it is the master's unreaped child.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// The fd a worker writes its own pid to between fork and exec (see [`announce`]).
    pub(crate) fn fd(&self) -> RawFd {
        self.write.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Whether `live` groups fill the guard: no further worker may start.
    pub(crate) fn full(live: usize) -> bool {
        live >= CAPACITY
    }

    /// Tells the guard about a process group started without [`announce`] (a build).
    pub(crate) fn watch(&mut self, pgid: i32) {
        self.send(pgid);
    }

    /// Tells the guard that a group is gone, or never started: its id may be reused by someone
    /// else's group.
    pub(crate) fn forget(&mut self, pgid: i32) {
        self.send(-pgid);
    }

    fn send(&mut self, value: i32) {
        let Some(write) = &self.write else {
            return;
        };
        // A write of 4 bytes to a pipe is atomic. Order matters (a pid forgotten, then reused
        // and watched again), so what is left unsent goes first.
        self.unsent.push(value);
        let mut sent = 0;
        for value in &self.unsent {
            match nix::unistd::write(write, &value.to_ne_bytes()) {
                Ok(_) => sent += 1,
                // A full pipe: the guard does not read (stopped). Try again at the next send.
                Err(Errno::EAGAIN) => break,
                // EPIPE: the guard is gone, and is reaped and replaced by the master, which
                // tells the new guard every live group; nothing of the old queue matters.
                Err(_) => {
                    sent = self.unsent.len();
                    break;
                }
            }
        }
        // Bounded: while the pipe is full, workers cannot announce themselves and do not
        // start, so no more than the groups alive when it filled wait here.
        self.unsent.drain(..sent);
    }

    /// Whether the guard has exited (killed from outside: it never exits by itself while the
    /// master runs); reaps it then, and returns how it ended.
    pub(crate) fn exited(&mut self) -> Option<WaitStatus> {
        let pid = self.pid?;
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                self.pid = None;
                Some(status)
            }
            // Still running, stopped or continued: still there.
            Ok(_) | Err(Errno::EINTR) => None,
            // ECHILD: someone else reaped it (`waitpid(-1)` as PID 1 goes through
            // `reaped_elsewhere`): gone all the same.
            Err(_) => {
                self.pid = None;
                Some(WaitStatus::StillAlive)
            }
        }
    }

    /// The guard was reaped by a `waitpid(-1)` (the master as PID 1): it is gone.
    pub(crate) fn reaped_elsewhere(&mut self) {
        self.pid = None;
    }

    /// A new guard in place of one that died, told every group in `live`.
    pub(crate) fn restart(&mut self, live: impl IntoIterator<Item = i32>) -> io::Result<()> {
        let mut new = Self::start()?;
        for pgid in live {
            new.watch(pgid);
        }
        // The old one is reaped (or its `Drop` reaps it); its pipe closes here.
        *self = new;
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe tells the guard to finish: every group is gone by now (a clean
        // stop), so its kills find nothing. Then it is reaped by pid, which is its own until
        // then (an unreaped child's pid is never reused).
        drop(self.write.take());
        let Some(pid) = self.pid.take() else {
            return;
        };
        let pid = Pid::from_raw(pid);
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return,
                Ok(_) => {}
            }
            if Instant::now() >= deadline {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Writes the calling process's pid to the guard's pipe; `false` if the guard did not get it
/// (its pipe is full or it is gone: the worker must not start unguarded). Async-signal-safe:
/// called in a forked child before exec.
///
/// # Safety
/// `fd` must be the guard's pipe (or -1, which does nothing).
pub(crate) unsafe fn announce(fd: RawFd) -> bool {
    if fd < 0 {
        return true;
    }
    // SAFETY: getpid and write are async-signal-safe; the bytes live on this stack frame.
    unsafe {
        let bytes = libc::getpid().to_ne_bytes();
        loop {
            let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            if written >= 0 || platform::errno() != libc::EINTR {
                return written == 4;
            }
        }
    }
}

/// The fd numbers the guard child needs, captured before fork.
struct GuardPlan {
    read: RawFd,
    /// The master's end of the pipe: the guard's copy must close, or it never reads EOF.
    write: RawFd,
    devnull: RawFd,
    fd_limit: c_int,
}

impl GuardPlan {
    fn run(&self) -> ! {
        let mut groups = [0 as c_int; CAPACITY];
        let mut count = 0usize;
        // SAFETY: we are the single thread of a freshly forked child. Every call is
        // async-signal-safe and works on fds inherited from the parent or on this stack frame;
        // every path ends in _exit.
        unsafe {
            // Before anything else: while the guard holds a write end, it never reads EOF (a
            // stop would wait for it for ever, a killed master's groups would live on). The
            // sweep below would close it too, were nothing to go wrong on the way.
            if libc::close(self.write) != 0 {
                libc::_exit(1);
            }
            // Out of the master's group, and deaf to what a terminal or a group kill sends.
            libc::setpgid(0, 0);
            // Named, so that `ps` explains the master's one child that is no worker.
            platform::set_name(c"mcluster-guard");
            for signal in [
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGHUP,
                libc::SIGQUIT,
                libc::SIGTSTP,
                libc::SIGTTIN,
                libc::SIGTTOU,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGPIPE,
            ] {
                libc::signal(signal, libc::SIG_IGN);
            }
            // Only the pipe's read end stays open (as fd 3) and /dev/null as 0–2: the guard
            // must hold no listener (the port would outlive the master) and no pipe a reader
            // waits on for EOF. Both sources move above 0–3 first, so that neither is
            // overwritten before it is placed (a master started with its low fds closed).
            let read = libc::fcntl(self.read, libc::F_DUPFD, 4);
            let devnull = libc::fcntl(self.devnull, libc::F_DUPFD, 4);
            if read < 0 || devnull < 0 || libc::dup2(read, 3) < 0 {
                libc::_exit(1);
            }
            for target in 0..3 {
                libc::dup2(devnull, target);
            }
            platform::sweep_fds_from(4, self.fd_limit, platform::Sweep::Close);
            loop {
                let mut bytes = [0u8; 4];
                let mut got = 0usize;
                while got < bytes.len() {
                    let n = libc::read(3, bytes.as_mut_ptr().add(got).cast(), bytes.len() - got);
                    if n > 0 {
                        got += n.unsigned_abs();
                    } else if n == 0 || platform::errno() != libc::EINTR {
                        // End of file: the master is gone. Kill what is left of every group.
                        for &group in &groups[..count] {
                            libc::kill(-group, libc::SIGKILL);
                        }
                        libc::_exit(0);
                    }
                }
                let value = c_int::from_ne_bytes(bytes);
                if value > 0 {
                    // The master refuses to start a worker beyond CAPACITY live groups.
                    if !groups[..count].contains(&value) && count < CAPACITY {
                        groups[count] = value;
                        count += 1;
                    }
                } else if let Some(index) = groups[..count]
                    .iter()
                    .position(|&g| g == value.wrapping_neg())
                {
                    count -= 1;
                    groups[index] = groups[count];
                }
            }
        }
    }
}

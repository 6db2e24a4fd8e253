//! The guard: a small process that outlives the master just long enough to kill every process
//! group the master started.
//!
//! `PR_SET_PDEATHSIG` reaches a worker process only, never what it started (the app behind a
//! shell wrapper that does not `exec`, a helper it forked). So each master forks one guard
//! before any worker. The guard holds the read end of a pipe; every worker writes its own pid
//! (its process group, since it leads one) into the pipe between fork and exec, so no worker is
//! ever unknown to the guard, however the master dies; the master writes the negated pid once
//! the group is gone. When the master exits, even by SIGKILL, the kernel closes its end of the
//! pipe: the guard reads end-of-file, SIGKILLs every group it still knows, and exits.
//!
//! The guard is a fork without exec (so it works inside any program that embeds the master):
//! it only calls async-signal-safe functions on memory of its own stack. It runs in its own
//! process group and ignores the signals a terminal or a group kill sends, so that a Ctrl-C or
//! `kill -- -PGID` aimed at the master's group cannot take it down first. Not covered: a process
//! that left its worker's group (`setsid`, `setpgid`) is not in any group the guard knows.

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::libc;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::platform;

/// How many process groups the guard tracks at once; more live groups than this are not
/// guarded (a cluster of this many workers is far beyond one machine's sense).
const CAPACITY: usize = 4096;

/// The master's side of its guard. Dropping it (or the master's death) makes the guard kill
/// every group it was told about and exit.
#[derive(Debug)]
pub(crate) struct Guard {
    pid: i32,
    /// Where pids are written: close-on-exec, so no worker or build holds it open. `None` once
    /// dropped.
    write: Option<OwnedFd>,
}

impl Guard {
    /// Forks the guard.
    pub(crate) fn start() -> io::Result<Self> {
        let (read, write) = platform::pipe()?;
        let devnull = std::fs::File::open("/dev/null")?;
        let plan = GuardPlan {
            read: read.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
            fd_limit: platform::fd_limit(),
        };
        // SAFETY: fork duplicates only the calling thread. The child runs `GuardPlan::run`,
        // which calls only async-signal-safe functions (setpgid, prctl, signal, dup2, fcntl,
        // close_range or close, read, kill, _exit) on its own stack and the two fd numbers captured
        // above, allocates nothing, takes no lock and never returns. The parent continues
        // normally.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            plan.run();
        }
        drop(read);
        Ok(Self {
            pid,
            write: Some(write),
        })
    }

    /// The fd a worker writes its own pid to between fork and exec (see [`announce`]).
    pub(crate) fn fd(&self) -> RawFd {
        self.write.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Tells the guard about a process group started without [`announce`] (a build).
    pub(crate) fn watch(&self, pgid: i32) {
        self.send(pgid);
    }

    /// Tells the guard that a group is gone: its id may be reused by someone else's group.
    pub(crate) fn forget(&self, pgid: i32) {
        self.send(-pgid);
    }

    fn send(&self, value: i32) {
        // A write of 4 bytes to a pipe is atomic. Should the guard be gone (killed by hand),
        // the write fails with EPIPE, and there is nobody left to tell.
        if let Some(write) = &self.write {
            let _ = nix::unistd::write(write, &value.to_ne_bytes());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe tells the guard to finish: every group is gone by now (a clean
        // stop), so its kills find nothing. Then it is reaped by pid.
        drop(self.write.take());
        let _ = waitpid(Pid::from_raw(self.pid), None);
    }
}

/// Writes the calling process's pid to the guard's pipe. Async-signal-safe: called in a forked
/// child before exec.
///
/// # Safety
/// `fd` must be the guard's pipe (or -1, which does nothing).
pub(crate) unsafe fn announce(fd: RawFd) {
    if fd < 0 {
        return;
    }
    // SAFETY: getpid and write are async-signal-safe; the bytes live on this stack frame.
    unsafe {
        let bytes = libc::getpid().to_ne_bytes();
        libc::write(fd, bytes.as_ptr().cast(), bytes.len());
    }
}

/// The fd numbers the guard child needs, captured before fork.
struct GuardPlan {
    read: RawFd,
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
            // Only the pipe's read end stays open (as fd 3): the guard must hold no listener
            // (the port would outlive the master) and no pipe a reader waits on for EOF.
            let read = libc::fcntl(self.read, libc::F_DUPFD, 3);
            if read < 0 || libc::dup2(read, 3) < 0 {
                libc::_exit(1);
            }
            for target in 0..3 {
                libc::dup2(self.devnull, target);
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
                    if !groups[..count].contains(&value) && count < CAPACITY {
                        groups[count] = value;
                        count += 1;
                    }
                } else if let Some(index) = groups[..count].iter().position(|&g| g == -value) {
                    count -= 1;
                    groups[index] = groups[count];
                }
            }
        }
    }
}

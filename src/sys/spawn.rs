//! Starting a worker: fork, then only async-signal-safe calls, then exec.
//!
//! `std::process::Command` cannot set `LISTEN_PID` to the child's own pid: the environment is
//! built before fork, and the pid exists only after it. So the environment block is built here
//! before fork with room for the digits, and the child writes its pid into its own copy of that
//! buffer before `execve`. Everything else the child does is a plain syscall: its own process
//! group, the parent-death signal, a clean signal mask, the fds moved into place.

use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::Guard;
use super::platform;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for any pid's digits and the NUL.
const PID_DIGITS: usize = 21;

/// What to start.
pub(crate) struct SpawnRequest<'a> {
    /// The resolved path of the program.
    pub(crate) program: &'a CStr,
    /// Its arguments, `argv[0]` included.
    pub(crate) argv: &'a [CString],
    /// Its environment, without `LISTEN_PID`, which is added with the child's pid.
    pub(crate) env: &'a [CString],
    /// The fds the child gets at 0, 1, 2, 3, … (stdin, stdout, stderr, then the listeners).
    pub(crate) fds: &'a [BorrowedFd<'a>],
}

/// An executable and the `argv[0]` it is started with.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub(crate) path: CString,
    pub(crate) argv0: CString,
}

/// A worker forked, its `execve` not yet confirmed: [`Forked::exec_result`] tells.
///
/// Forking several workers before asking for any result lets their set-up and `execve` run
/// side by side (each takes a millisecond or more): a roll of N workers then waits for the
/// slowest one instead of the sum.
#[must_use = "a forked child's result must be read: a failed one must be reaped"]
pub(crate) struct Forked {
    pid: i32,
    /// Closes (EOF) when the child execs; carries its errno when a step before failed.
    error_read: OwnedFd,
}

/// Forks a worker that sets itself up and execs: everything it needs is prepared here, before
/// fork. The child announces its process group to `guard` before exec, so that it dies with the
/// master however the master dies.
pub(crate) fn fork_worker(request: &SpawnRequest<'_>, guard: Option<&Guard>) -> io::Result<Forked> {
    // Everything the child touches is allocated before fork: after fork only the thread that
    // forked exists, and another thread may have held the allocator's lock.
    let argv: Vec<*const c_char> = request
        .argv
        .iter()
        .map(|arg| arg.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut listen_pid = LISTEN_PID_PREFIX.to_vec();
    listen_pid.resize(LISTEN_PID_PREFIX.len() + PID_DIGITS, 0);
    let listen_pid_ptr = listen_pid.as_mut_ptr();
    let envp: Vec<*const c_char> = request
        .env
        .iter()
        .map(|entry| entry.as_ptr())
        .chain([
            listen_pid_ptr.cast_const().cast::<c_char>(),
            std::ptr::null(),
        ])
        .collect();
    let sources: Vec<RawFd> = request.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut scratch: Vec<RawFd> = vec![-1; sources.len()];
    let empty_mask = SigSet::empty();
    let (error_read, error_write) = platform::pipe()?;
    let fd_limit = platform::fd_limit();
    let parent = std::process::id();
    let child = ChildPlan {
        program: request.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        listen_pid_digits: listen_pid_ptr.wrapping_add(LISTEN_PID_PREFIX.len()),
        sources: &sources,
        scratch: scratch.as_mut_ptr(),
        mask: empty_mask.as_ref(),
        parent: c_int::try_from(parent).unwrap_or(c_int::MAX),
        error_fd: error_write.as_raw_fd(),
        guard_fd: guard.map_or(-1, Guard::fd),
        fd_limit,
    };

    // SAFETY: fork duplicates only the calling thread. The child runs `ChildPlan::exec`, which
    // calls only async-signal-safe functions (fcntl, setpgid, getpid, write, prctl or procctl,
    // getppid, sigprocmask, signal, dup2, close_range or fcntl, execve, _exit) on memory allocated
    // before the fork, and never returns: it execs or `_exit`s. The parent continues normally.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        child.exec();
    }
    // Closed before any other fork: a later child must not hold this write end open, or this
    // child's exec would not read as one.
    drop(error_write);
    Ok(Forked { pid, error_read })
}

impl Forked {
    /// The child's pid (its exec not yet confirmed).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until the child exec'd and returns its pid, or returns the error of whatever step
    /// failed in it. A child that failed is taken back from `guard`, then reaped (in that order:
    /// until it is reaped, its pid is nobody else's).
    pub(crate) fn exec_result(self, guard: Option<&mut Guard>) -> io::Result<i32> {
        let Self { pid, error_read } = self;
        let mut errno = [0u8; 4];
        let mut read = 0;
        let mut failure = None;
        while read < errno.len() {
            match nix::unistd::read(&error_read, &mut errno[read..]) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    // Whether it exec'd cannot be known: it must not run untracked. It is our
                    // unreaped child, so its pid and its group are still ours to kill.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    failure = Some(io::Error::from(e));
                    break;
                }
            }
        }
        if read == 0 && failure.is_none() {
            // The pipe closed on a successful exec.
            return Ok(pid);
        }
        // The child wrote why it failed and `_exit`ed (or was killed above).
        if let Some(guard) = guard {
            guard.forget(pid);
        }
        while let Err(Errno::EINTR) = waitpid(Pid::from_raw(pid), None) {}
        Err(failure.unwrap_or_else(|| io::Error::from_raw_os_error(i32::from_ne_bytes(errno))))
    }
}

/// Raw pointers into memory prepared before fork, for the child alone.
struct ChildPlan<'a> {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    listen_pid_digits: *mut u8,
    sources: &'a [RawFd],
    scratch: *mut RawFd,
    mask: &'a libc::sigset_t,
    parent: c_int,
    error_fd: RawFd,
    guard_fd: RawFd,
    /// From [`platform::fd_limit`], read before fork.
    fd_limit: c_int,
}

impl ChildPlan<'_> {
    /// Runs in the forked child: sets the process up and execs, or reports errno and exits.
    fn exec(&self) -> ! {
        // SAFETY: we are the single thread of a freshly forked child. Every call below is
        // async-signal-safe and takes pointers into buffers the parent built before fork, which
        // the child owns as a private copy: the argv/envp arrays stay NUL-terminated, the
        // LISTEN_PID buffer has room for 20 digits and a NUL, `scratch` has one slot per
        // source fd. No allocation, no lock, no unwinding: every path ends in execve or _exit.
        unsafe {
            let count = self.sources.len();
            let above = c_int::try_from(count).unwrap_or(c_int::MAX).max(3);
            // The error pipe and the guard pipe go above every target first: one sitting on a
            // target's number (a process that had closed its low fds) would be overwritten by
            // dup2 below, and an exec failure would then read as success.
            let error_fd = libc::fcntl(self.error_fd, libc::F_DUPFD_CLOEXEC, above);
            if error_fd < 0 {
                fail(self.error_fd);
            }
            let guard_fd = if self.guard_fd < 0 {
                -1
            } else {
                libc::fcntl(self.guard_fd, libc::F_DUPFD_CLOEXEC, above)
            };
            if self.guard_fd >= 0 && guard_fd < 0 {
                fail(error_fd);
            }
            // Our own process group, so a terminal's Ctrl-C reaches only the master, and the
            // worker's whole tree can be signalled and killed as one.
            if libc::setpgid(0, 0) != 0 {
                fail(error_fd);
            }
            // Before anything else can go wrong, the guard learns of the group: however the
            // master dies from now on, the group dies with it. A guard that did not get it
            // (gone, or its pipe full) cannot guard it: no start then.
            if !super::guard::announce(guard_fd) {
                fail(error_fd);
            }
            if platform::die_with_parent().is_err() {
                fail(error_fd);
            }
            // The master may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != self.parent {
                libc::_exit(1);
            }
            // A clean start: no blocked signals, SIGPIPE back to its default (Rust ignores it,
            // and an ignored disposition survives exec).
            if libc::sigprocmask(libc::SIG_SETMASK, self.mask, std::ptr::null_mut()) != 0 {
                fail(error_fd);
            }
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            // Move every source above the targets first, so that a source sitting on another
            // target's number is not overwritten; then dup2 into place (dup2 clears CLOEXEC).
            for (index, &source) in self.sources.iter().enumerate() {
                let moved = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above);
                if moved < 0 {
                    fail(error_fd);
                }
                *self.scratch.add(index) = moved;
            }
            for index in 0..count {
                let target = c_int::try_from(index).unwrap_or(c_int::MAX);
                if libc::dup2(*self.scratch.add(index), target) < 0 {
                    fail(error_fd);
                }
            }
            // Fds the master itself inherited without CLOEXEC must not reach the worker.
            platform::sweep_fds_from(
                c_int::try_from(count).unwrap_or(c_int::MAX),
                self.fd_limit,
                platform::Sweep::Cloexec,
            );
            write_decimal(self.listen_pid_digits, libc::getpid());
            libc::execve(self.program, self.argv, self.envp);
            fail(error_fd);
        }
    }
}

/// Reports errno to the parent through the error pipe's write end `error_fd` and exits; runs in
/// the forked child.
fn fail(error_fd: RawFd) -> ! {
    // SAFETY: async-signal-safe calls only; the errno bytes live on this stack frame and
    // `error_fd` is the pipe's write end, open in the child until exec.
    unsafe {
        let bytes = platform::errno().to_ne_bytes();
        libc::write(error_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127);
    }
}

/// Writes `value` in decimal followed by a NUL at `out`, without allocating.
///
/// # Safety
/// `out` must be valid for writes of `PID_DIGITS` bytes.
unsafe fn write_decimal(out: *mut u8, value: c_int) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    let mut rest = value.unsigned_abs();
    loop {
        digits[len] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for index in 0..len {
        // SAFETY: `len` is at most 10 for a c_int, well inside the caller's PID_DIGITS bytes.
        unsafe { *out.add(index) = digits[len - 1 - index] };
    }
    // SAFETY: as above; `len` < PID_DIGITS.
    unsafe { *out.add(len) = 0 };
}

/// Makes a child started by `command` (a build, `cargo metadata`) die with the master (SIGKILL
/// when the master's thread exits), so that it never outlives it, and inherit none of the
/// master's fds but its stdio: not one the master's own parent leaked to it without
/// close-on-exec (a listener's port, a pipe someone waits on for EOF).
pub(crate) fn prepare_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid().as_raw();
    let fd_limit = platform::fd_limit();
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it calls prctl (or procctl), getppid and the fd sweep (close_range, or
    // open, getdents64 and fcntl), allocates nothing and takes no lock. The io::Error it may
    // return is built from errno without allocating. std has placed the child's stdio at 0–2
    // by then; its own error pipe is close-on-exec already.
    unsafe {
        command.pre_exec(move || {
            platform::sweep_fds_from(3, fd_limit, platform::Sweep::Cloexec);
            // Where the OS has no parent-death signal (macOS), the guard covers the build.
            if platform::die_with_parent()? && libc::getppid() != parent {
                // The master died before the request took effect: do not start an orphan.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// An exec failure must come back as the error, also when the error pipe's fd number is
    /// one of the targets the child fills (a process with many listeners, or one that closed
    /// its low fds): were the pipe overwritten by dup2, the failure would read as success.
    #[test]
    fn an_exec_failure_is_reported_whatever_the_error_pipe_s_number() {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        // More targets than this test process has fds open: the error pipe's number is one.
        let fds: Vec<BorrowedFd<'_>> = (0..256).map(|_| devnull.as_fd()).collect();
        let program = CString::new("/nonexistent/mcluster-test-program").unwrap();
        let result = fork_worker(
            &SpawnRequest {
                program: &program,
                argv: std::slice::from_ref(&program),
                env: &[],
                fds: &fds,
            },
            None,
        )
        .and_then(|forked| forked.exec_result(None));
        let error = result.expect_err("exec of a missing program must fail");
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT), "{error}");
    }
}

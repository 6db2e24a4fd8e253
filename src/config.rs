//! Validated settings: parsing of durations, environment pairs, signals and programs, with one
//! clear error message naming the culprit for each kind of bad input.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::Surge;

/// An error of the master: bad input, or the OS refusing something at start.
#[derive(Debug)]
pub enum Error {
    /// Bad input: a flag, an address, a program, an environment pair.
    Usage(String),
    /// The OS refused something the master needed.
    Io {
        /// What the master was doing.
        context: String,
        /// What the OS said.
        source: io::Error,
    },
}

impl Error {
    /// A usage error with this message.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    /// Wraps an OS error with what the master was doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The exit status for this error: 2 for bad input, 1 otherwise.
    #[must_use]
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Io { .. } => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) => f.write_str(message),
            Error::Io { context, source } => write!(f, "{context}: {}", describe_io(source)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Usage(_) => None,
            Error::Io { source, .. } => Some(source),
        }
    }
}

/// The OS's words for an error, without Rust's `(os error N)` suffix, and starting in lower case
/// as the rest of a line does (`too many open files`), unless it starts with an acronym.
pub(crate) fn describe_io(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(end) => &text[..end],
        None => text.as_str(),
    };
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && !second.is_uppercase() => {
            format!("{}{}", first.to_lowercase(), &text[first.len_utf8()..])
        }
        _ => text.to_owned(),
    }
}

/// Parses a duration: a number with `ms`, `s` or `m`; a bare number is milliseconds. 0 is
/// accepted, for the options where it means "at once" (see [`parse_nonzero_duration`]); a
/// year (`525600m`) at most.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') && text[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(format!("invalid duration '{text}': it cannot be negative"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("invalid duration '{text}': expected a number with ms, s or m"))?;
    let millis = match unit {
        "" | "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => {
            return Err(format!(
                "invalid duration '{text}': unknown unit '{unit}' (use ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(millis / 1000.0)
        .ok()
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| {
            format!(
                "invalid duration '{text}': too large, the largest accepted is {}m (a year)",
                MAX_DURATION.as_secs() / 60
            )
        })
}

/// The longest duration any option takes: a year. Nothing mcluster waits for (a worker's
/// start, its stop, a watchdog ping, a quiet time) is worth longer, and a deadline this far
/// from now is representable on every clock, with room to add to it: `Instant` (whose range
/// beyond now is not promised, and panics when left), `WATCHDOG_USEC` in microseconds, and
/// timeouts in milliseconds. A value beyond it is a typo or a test of the limits.
pub(crate) const MAX_DURATION: Duration = Duration::from_hours(365 * 24);

/// [`parse_duration`] for the options where no time at all makes no sense (`--ready-timeout`,
/// `--watchdog`, `--poll`): anything under a millisecond, 0 included, is refused.
pub(crate) fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_millis(1) {
        return Err(format!(
            "invalid duration '{}': it must be at least 1ms",
            text.trim()
        ));
    }
    Ok(duration)
}

/// Parses `--surge`: a count of at least 1 (`2`), a percentage of the size (`25%`, more than 0),
/// or `all`.
pub(crate) fn parse_surge(text: &str) -> Result<Surge, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(Surge::All);
    }
    let invalid = || format!("invalid surge '{text}': a count (2), a percentage (25%) or all");
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.parse::<u32>() {
            Ok(0) => Err(format!("invalid surge '{text}': it must be more than 0%")),
            Ok(percent) => Ok(Surge::Percent(percent)),
            Err(_) => Err(invalid()),
        };
    }
    match text.parse::<usize>() {
        Ok(0) => Err(format!(
            "invalid surge '{text}': a roll needs at least 1 replacement at a time"
        )),
        Ok(count) => Ok(Surge::Count(count)),
        Err(_) => Err(invalid()),
    }
}

/// Parses the number of workers: a whole number, at least 1, at most
/// [`MAX_SIZE`] (a master refuses more than its limits allow too).
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let digits = text.trim();
    match digits.parse::<usize>() {
        Ok(0) => Err("the cluster needs at least one worker".to_owned()),
        Ok(size) if size > MAX_SIZE => Err(format!(
            "invalid size '{text}': at most {MAX_SIZE} workers (the most one master runs)"
        )),
        Ok(size) => Ok(size),
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("invalid size '{text}': too large"))
        }
        Err(_) => Err(format!(
            "invalid size '{text}': expected a whole number of workers, at least 1"
        )),
    }
}

/// Parses a `KEY=VALUE` pair for a worker's environment (not necessarily UTF-8): a non-empty
/// `KEY` that is none of the variables mcluster sets for each worker or keeps from them (the
/// error names it).
pub(crate) fn parse_env_pair(text: &OsStr) -> Result<(OsString, OsString), String> {
    let bytes = text.as_bytes();
    let Some(equals) = bytes.iter().position(|&b| b == b'=') else {
        return Err(format!(
            "invalid environment pair '{}': expected KEY=VALUE",
            text.display()
        ));
    };
    let (key, value) = (
        OsStr::from_bytes(&bytes[..equals]),
        OsStr::from_bytes(&bytes[equals + 1..]),
    );
    check_env(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Whether `key=value` may be given to the workers: a non-empty name without `=` or NUL, a
/// value without NUL, and a name that is none of the variables mcluster sets for each worker or
/// keeps from them (see [`crate::master`]). The error names the variable.
pub(crate) fn check_env(key: &OsStr, value: &OsStr) -> Result<(), String> {
    let shown = key.display();
    if key.is_empty() {
        return Err(format!(
            "invalid environment pair '={}': the name is empty",
            value.display()
        ));
    }
    if key.as_encoded_bytes().contains(&b'=') {
        return Err(format!(
            "invalid environment variable name '{shown}': it contains '='"
        ));
    }
    if key.as_encoded_bytes().contains(&0) || value.as_encoded_bytes().contains(&0) {
        return Err(format!(
            "invalid environment variable {shown}: it contains a NUL byte"
        ));
    }
    if let Some(why) = reserved_variable(key) {
        return Err(format!("{shown} is reserved: {why}"));
    }
    Ok(())
}

/// Parses a signal name (`TERM`, `SIGTERM`, `term`) or number into its number: a signal that
/// can ask a process to stop. One that suspends a process (`STOP`, `TSTP`, `TTIN`, `TTOU`),
/// resumes it (`CONT`) or is ignored unless handled and means something else (`CHLD`, `URG`)
/// is refused: the old workers would sit frozen or untouched until the kill timeout's SIGKILL.
/// (`WINCH`, ignored by default too, is accepted: Apache's graceful stop is `WINCH`.)
pub(crate) fn parse_signal(text: &str) -> Result<i32, String> {
    use nix::sys::signal::Signal;
    let signal = if let Ok(number) = text.parse::<i32>() {
        Signal::try_from(number).map_err(|_| format!("invalid signal '{text}'"))?
    } else {
        let upper = text.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        name.parse::<Signal>()
            .map_err(|_| format!("invalid signal '{text}': expected a name like TERM or INT"))?
    };
    let why = match signal {
        Signal::SIGSTOP => "it suspends a worker, which cannot catch it, instead of stopping it",
        Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => {
            "it suspends a worker that does not handle it, instead of stopping it"
        }
        Signal::SIGCONT => "it resumes a suspended process; a running worker carries on",
        Signal::SIGCHLD | Signal::SIGURG => {
            "a worker ignores it unless it handles it, and then not as a request to stop"
        }
        _ => return Ok(signal as i32),
    };
    Err(format!(
        "invalid signal '{text}': {}: {why}",
        signal.as_str()
    ))
}

/// Finds the program a worker runs: a path with a `/` as it is, anything else on `PATH`.
/// It must be an executable file.
pub(crate) fn resolve_program(program: &Path) -> Result<PathBuf, Error> {
    let shown = program.display();
    if program.as_os_str().is_empty() {
        return Err(Error::usage("the program to run is empty"));
    }
    let candidate = if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        program.to_path_buf()
    } else {
        let path = env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| Error::usage(format!("program not found: {shown} (not on PATH)")))?
    };
    let metadata = std::fs::metadata(&candidate)
        .map_err(|_| Error::usage(format!("program not found: {shown}")))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(Error::usage(format!("program is not executable: {shown}")));
    }
    check_runnable(&candidate, 0)
        .map_err(|why| Error::usage(format!("program cannot run: {shown} {why}")))?;
    Ok(candidate)
}

/// How many interpreters deep a `#!` chain may go: Linux's limit (`BINPRM_MAX_RECURSION`).
const MAX_INTERPRETER_DEPTH: usize = 4;

/// Whether the kernel can run the executable file `path`, as far as its first bytes tell:
/// not empty; a `#!` line naming an interpreter that exists and can run itself; or an ELF
/// binary, whole enough to have its header, whose loader (`PT_INTERP`) exists. Anything else
/// cannot run (`exec` says "exec format error", or "no such file or directory" naming neither
/// the file nor what is missing) — unless `binfmt_misc` has handlers, which may take it. A file
/// that cannot be read (mode 0111) is left to `exec`. The error completes "program cannot run:
/// PATH …".
fn check_runnable(path: &Path, depth: usize) -> Result<(), String> {
    use std::io::Read as _;
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let mut head = Vec::new();
    if file.take(64 * 1024).read_to_end(&mut head).is_err() {
        return Ok(());
    }
    if head.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
        let line = String::from_utf8_lossy(line);
        let Some(interpreter) = line.split([' ', '\t']).find(|word| !word.is_empty()) else {
            return Err("has a #! line naming no interpreter".to_owned());
        };
        let interpreter = Path::new(interpreter);
        let runnable = std::fs::metadata(interpreter)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        if !runnable {
            let problem = if interpreter.exists() {
                "is not an executable file"
            } else {
                "does not exist"
            };
            return Err(format!(
                "names the interpreter {} on its #! line, which {problem}",
                interpreter.display()
            ));
        }
        if depth + 1 >= MAX_INTERPRETER_DEPTH {
            return Err("is a script whose interpreters are scripts too deep down".to_owned());
        }
        return check_runnable(interpreter, depth + 1).map_err(|why| {
            format!(
                "names the interpreter {}, which {why}",
                interpreter.display()
            )
        });
    }
    if head.starts_with(b"\x7fELF") {
        return match elf_interpreter(&head) {
            Err(why) => Err(format!("is a damaged ELF file ({why})")),
            Ok(Some(loader)) if !Path::new(&loader).exists() => Err(format!(
                "needs the loader {loader}, which does not exist (built for another system?)"
            )),
            Ok(_) => Ok(()),
        };
    }
    if binfmt_misc_handlers() {
        return Ok(());
    }
    Err("is neither a script starting with #! nor a binary (exec format error)".to_owned())
}

/// The loader (`PT_INTERP`) an ELF file names, if any and if it lies within `head`; an error
/// for a header too short or malformed to be run.
fn elf_interpreter(head: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: u64 = 3;
    let class64 = match head.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err("an unknown class".to_owned()),
    };
    let little = match head.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err("an unknown byte order".to_owned()),
    };
    let header_size = if class64 { 64 } else { 52 };
    if head.len() < header_size {
        return Err(format!("{} bytes, shorter than its header", head.len()));
    }
    let number = |at: usize, size: usize| -> Option<u64> {
        let bytes = head.get(at..at + size)?;
        let mut value = 0u64;
        for index in 0..size {
            let byte = if little {
                bytes[size - 1 - index]
            } else {
                bytes[index]
            };
            value = value << 8 | u64::from(byte);
        }
        Some(value)
    };
    let (phoff, phentsize, phnum) = if class64 {
        (number(0x20, 8), number(0x36, 2), number(0x38, 2))
    } else {
        (number(0x1c, 4), number(0x2a, 2), number(0x2c, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("no program headers".to_owned());
    };
    // p_type first; p_offset after it (64-bit: after p_flags too); p_filesz two words on.
    for index in 0..phnum {
        let Some(at) = usize::try_from(phoff + index * phentsize).ok() else {
            return Ok(None);
        };
        if number(at, 4) != Some(PT_INTERP) {
            if number(at, 4).is_none() {
                // Beyond what was read: nothing to say.
                return Ok(None);
            }
            continue;
        }
        let (offset, size) = if class64 {
            (number(at + 8, 8), number(at + 32, 8))
        } else {
            (number(at + 4, 4), number(at + 16, 4))
        };
        let (Some(offset), Some(size)) = (offset, size) else {
            return Ok(None);
        };
        let (Ok(offset), Ok(size)) = (usize::try_from(offset), usize::try_from(size)) else {
            return Ok(None);
        };
        let Some(name) = head.get(offset..offset.saturating_add(size)) else {
            return Ok(None);
        };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(None)
}

/// Whether `binfmt_misc` has handlers, which may run files that are neither `#!` scripts nor
/// ELF binaries (Java archives, Wine, other machines' binaries through QEMU).
fn binfmt_misc_handlers() -> bool {
    std::fs::read_dir("/proc/sys/fs/binfmt_misc").is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|entry| !matches!(entry.file_name().to_str(), Some("register" | "status")))
    })
}

/// The words for a failed spawn of a worker: what `fork` or `exec` said, with what it means
/// here where the OS's words mislead.
pub(crate) fn describe_spawn_error(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(nix::libc::E2BIG) => {
            "environment too large: with the arguments, more than exec takes (E2BIG)".to_owned()
        }
        Some(nix::libc::EAGAIN) => {
            "the process limit is reached (RLIMIT_NPROC, ulimit -u): no process to run it"
                .to_owned()
        }
        Some(nix::libc::ENOEXEC) => {
            "exec format error: the program is neither a script starting with #! nor a binary \
             for this machine"
                .to_owned()
        }
        Some(nix::libc::ENOENT) => {
            "no such file or directory: the program, or the interpreter or loader it names"
                .to_owned()
        }
        _ => describe_io(error),
    }
}

/// The variables the master sets for each worker (`WATCHDOG_USEC` only with a watchdog). The
/// master's own values of them are not passed on, and `--env` cannot set them.
pub(crate) const WORKER_VARIABLES: [&str; 9] = [
    "MCLUSTER_LIVERELOAD",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "MCLUSTER_WORKER_ID",
    "MCLUSTER_GENERATION",
    "MCLUSTER_WORKERS",
    "WATCHDOG_USEC",
];

/// What the master's own service manager (systemd) sets for it besides [`WORKER_VARIABLES`] and
/// would be wrong for a worker: they name the master's pid (a worker that sees another pid in
/// `WATCHDOG_PID` ignores its `WATCHDOG_USEC`), the fd store of the master's manager, or the
/// master's stderr (a worker's is a pipe to the master). They are not passed on either, and
/// `--env` cannot set them.
pub(crate) const MANAGER_VARIABLES: [&str; 4] = [
    "WATCHDOG_PID",
    "SYSTEMD_EXEC_PID",
    "FDSTORE",
    "JOURNAL_STREAM",
];

/// Why `key` is not the workers' to set with `--env` or [`Master::env`](crate::master::Master::env), if it is not.
pub(crate) fn reserved_variable(key: &OsStr) -> Option<&'static str> {
    if key == "WATCHDOG_USEC" {
        Some("mcluster sets it for each worker, from --watchdog")
    } else if WORKER_VARIABLES.iter().any(|name| key == *name) {
        Some("mcluster sets it for each worker")
    } else if MANAGER_VARIABLES.iter().any(|name| key == *name) {
        Some("it is the master's own, from its service manager, and never reaches a worker")
    } else {
        None
    }
}

/// The most workers any master runs: its guard tracks 4096 process groups, and a roll runs a
/// replacement beside each worker (twice the size). Far beyond what one machine serves well.
pub const MAX_SIZE: usize = 2048;

/// What each worker costs the master: its notify socket and two output pipes.
const FDS_PER_WORKER: u64 = 3;

/// What each worker is counted for against `RLIMIT_NPROC` (which counts threads): the worker
/// process and a few threads of its own (the master's threads do not grow with the workers).
const TASKS_PER_WORKER: u64 = 4;

/// The fds the master keeps for itself (listeners, control and metrics sockets, the guard's
/// pipe, a build's pipes, the standard streams).
const FDS_RESERVED: u64 = 64;

/// How many workers this master can run, and which limit says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SizeBound {
    pub(crate) max: usize,
    /// The limit that sets `max`.
    limit: SizeLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeLimit {
    Ceiling,
    /// The soft `RLIMIT_NOFILE`.
    Files(u64),
    /// The soft `RLIMIT_NPROC`.
    Processes(u64),
}

impl SizeBound {
    /// The bound under this process's limits, read now. Every worker counts twice: a roll
    /// runs a replacement beside each. A size that fits starts; one that does not would fail
    /// spawns (or leave the master deaf to everything while it retries them), so it is
    /// refused with the limit named.
    pub(crate) fn here() -> Self {
        use nix::sys::resource::{Resource, getrlimit};
        // `rlim_t` is signed on FreeBSD (`RLIM_INFINITY` is its largest value).
        #[allow(clippy::useless_conversion)]
        let soft = |resource| {
            getrlimit(resource)
                .ok()
                .map(|(soft, _)| u64::try_from(soft).unwrap_or(u64::MAX))
        };
        // macOS has the limit too, but nix does not name it there: the ceiling and the fd
        // limit bound the size alone.
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        let processes = soft(Resource::RLIMIT_NPROC);
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        let processes = None;
        Self::of(soft(Resource::RLIMIT_NOFILE), processes)
    }

    fn of(files: Option<u64>, processes: Option<u64>) -> Self {
        let mut bound = Self {
            max: MAX_SIZE,
            limit: SizeLimit::Ceiling,
        };
        let by_files = files.map(|files| {
            let max = files.saturating_sub(FDS_RESERVED) / (2 * FDS_PER_WORKER);
            (max, SizeLimit::Files(files))
        });
        let by_processes = processes.map(|processes| {
            (
                processes / (2 * TASKS_PER_WORKER),
                SizeLimit::Processes(processes),
            )
        });
        for (max, limit) in [by_files, by_processes].into_iter().flatten() {
            let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
            if max < bound.max {
                bound = Self { max, limit };
            }
        }
        bound
    }

    /// The fds this process may open beyond what the bound sets aside for `size` workers (a
    /// roll's replacements included) and for the master's own: room for what can do without
    /// (the `/proc` files the probes of starting workers keep open between rounds), which can
    /// then never take an fd a spawn needs.
    pub(crate) fn spare_fds(size: usize) -> usize {
        use nix::sys::resource::{Resource, getrlimit};
        // `rlim_t` is signed on FreeBSD (`RLIM_INFINITY` is its largest value).
        #[allow(clippy::useless_conversion)]
        let Some(files) = getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| u64::try_from(soft).unwrap_or(u64::MAX))
        else {
            return 0;
        };
        let set_aside = (size as u64)
            .saturating_mul(2 * FDS_PER_WORKER)
            .saturating_add(FDS_RESERVED);
        usize::try_from(files.saturating_sub(set_aside)).unwrap_or(usize::MAX)
    }

    /// Whether a cluster may have `size` workers: at least 1, at most this bound. The error
    /// says why not, for a line that names the size.
    pub(crate) fn check(self, size: usize) -> Result<(), String> {
        if size == 0 {
            Err("the cluster needs at least one worker".to_owned())
        } else if size > self.max {
            Err(self.describe())
        } else {
            Ok(())
        }
    }

    /// `at most N workers (…why)`, for an error line.
    fn describe(self) -> String {
        let why = match self.limit {
            SizeLimit::Ceiling => "the most one master runs".to_owned(),
            SizeLimit::Files(files) => format!(
                "under the open-file limit of {files} (ulimit -n), {FDS_PER_WORKER} per worker \
                 and twice as many during a roll"
            ),
            SizeLimit::Processes(processes) => format!(
                "under the process limit of {processes} (ulimit -u), {TASKS_PER_WORKER} per \
                 worker and twice as many during a roll"
            ),
        };
        format!("at most {} workers ({why})", self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_bound_is_the_lowest_of_the_ceiling_the_fd_limit_and_the_process_limit() {
        let bound = |files, processes| SizeBound::of(files, processes).max;
        assert_eq!(bound(None, None), MAX_SIZE);
        assert_eq!(bound(Some(u64::MAX), Some(u64::MAX)), MAX_SIZE);
        // 1024 fds: (1024 - 64) / 6.
        assert_eq!(bound(Some(1024), Some(u64::MAX)), 160);
        // 4000 tasks: 4000 / 8.
        assert_eq!(bound(Some(1 << 20), Some(4000)), 500);
        assert_eq!(bound(Some(10), Some(3)), 1, "one worker is always allowed");
        let described = SizeBound::of(Some(1024), None).describe();
        assert!(
            described.starts_with("at most 160 workers (under the open-file limit of 1024"),
            "{described}"
        );
    }

    #[test]
    fn durations_take_units_and_bare_numbers_are_milliseconds() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert!(parse_duration("5x").unwrap_err().contains("'5x'"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    /// `10000000000000000000s` was accepted and then panicked on its first deadline.
    #[test]
    fn durations_beyond_a_year_are_refused_naming_the_largest() {
        assert_eq!(parse_duration("525600m"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("31536000s"), Ok(MAX_DURATION));
        for text in [
            "525600.001m",
            "31536001s",
            "31536000001",
            "10000000000000000000s",
            "99999999999999999999m",
        ] {
            let error = parse_duration(text).unwrap_err();
            assert_eq!(
                error,
                format!(
                    "invalid duration '{text}': too large, the largest accepted is 525600m \
                     (a year)"
                )
            );
            assert!(parse_nonzero_duration(text).is_err());
        }
    }

    #[test]
    fn env_pairs_need_a_key_and_an_equals_sign() {
        let pair = |text: &str| parse_env_pair(OsStr::new(text));
        assert_eq!(pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(pair("A="), Ok(("A".into(), OsString::new())));
        assert!(pair("A").unwrap_err().contains("'A'"));
        assert!(pair("=x").unwrap_err().contains("name is empty"));
        let latin1 = OsStr::from_bytes(b"A=caf\xe9");
        assert_eq!(
            parse_env_pair(latin1),
            Ok(("A".into(), OsStr::from_bytes(b"caf\xe9").to_owned()))
        );
    }

    #[test]
    fn env_pairs_cannot_set_what_mcluster_sets_or_keeps_from_workers() {
        for key in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
            "MCLUSTER_WORKER_ID",
            "MCLUSTER_GENERATION",
            "MCLUSTER_WORKERS",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "SYSTEMD_EXEC_PID",
        ] {
            let error = parse_env_pair(OsStr::new(&format!("{key}=1"))).unwrap_err();
            assert!(
                error.starts_with(&format!("{key} is reserved: ")),
                "{error}"
            );
        }
        assert!(parse_env_pair(OsStr::new("LISTEN_FDSX=1")).is_ok());
        assert!(parse_env_pair(OsStr::new("listen_fds=1")).is_ok());
        assert!(
            check_env(OsStr::new("A=B"), OsStr::new("c"))
                .unwrap_err()
                .contains("'='")
        );
        assert!(
            check_env(OsStr::new("A\0"), OsStr::new("c"))
                .unwrap_err()
                .contains("NUL")
        );
        assert!(
            check_env(OsStr::new("A"), OsStr::new("c\0"))
                .unwrap_err()
                .contains("NUL")
        );
    }

    #[test]
    fn zero_is_refused_where_no_time_at_all_makes_no_sense() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for zero in ["0", "0ms", "0s", "0.0001s", "0m"] {
            let error = parse_nonzero_duration(zero).unwrap_err();
            assert!(error.contains("at least 1ms"), "{zero}: {error}");
        }
        assert_eq!(parse_nonzero_duration("1"), Ok(Duration::from_millis(1)));
        assert!(parse_duration("-5").unwrap_err().contains("negative"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(
            parse_duration("--silent")
                .unwrap_err()
                .contains("expected a number")
        );
    }

    #[test]
    fn sizes_are_whole_numbers_from_one() {
        assert_eq!(parse_size("4"), Ok(4));
        assert!(parse_size("0").unwrap_err().contains("at least one"));
        assert!(parse_size("-1").unwrap_err().contains("'-1'"));
        assert!(parse_size("1.5").unwrap_err().contains("whole number"));
        assert!(
            parse_size("99999999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn os_errors_read_as_words_without_the_error_number() {
        let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
        assert_eq!(describe_io(&emfile), "too many open files");
        let custom = io::Error::other("NUL in /Path");
        assert_eq!(describe_io(&custom), "NUL in /Path");
        let sentence = io::Error::other("Gone from /Path");
        assert_eq!(describe_io(&sentence), "gone from /Path");
        let error = Error::io("cannot watch signals", emfile);
        assert_eq!(
            error.to_string(),
            "cannot watch signals: too many open files"
        );
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("sigint"), Ok(2));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(parse_signal("WINCH"), Ok(28));
        assert_eq!(parse_signal("USR1"), Ok(10));
    }

    /// `--stop-signal STOP` froze the old workers of every roll until SIGKILL.
    #[test]
    fn signals_that_cannot_stop_a_worker_are_refused() {
        for (text, name) in [
            ("STOP", "SIGSTOP"),
            ("19", "SIGSTOP"),
            ("tstp", "SIGTSTP"),
            ("SIGTTIN", "SIGTTIN"),
            ("TTOU", "SIGTTOU"),
            ("CONT", "SIGCONT"),
            ("CHLD", "SIGCHLD"),
            ("17", "SIGCHLD"),
            ("URG", "SIGURG"),
        ] {
            let error = parse_signal(text).unwrap_err();
            assert!(
                error.starts_with(&format!("invalid signal '{text}': {name}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn spawn_errors_say_what_they_mean_here() {
        let error = |errno| describe_spawn_error(&io::Error::from_raw_os_error(errno));
        assert!(error(nix::libc::E2BIG).starts_with("environment too large"));
        assert!(error(nix::libc::EAGAIN).starts_with("the process limit is reached (RLIMIT_NPROC"));
        assert!(error(nix::libc::ENOEXEC).contains("neither a script starting with #!"));
        assert_eq!(error(nix::libc::EMFILE), "too many open files");
    }

    /// A loader that does not exist, as a binary built for another system names.
    #[test]
    fn an_elf_binary_whose_loader_is_missing_cannot_run() {
        let sh = std::fs::read("/bin/sh").unwrap();
        let Ok(Some(loader)) = elf_interpreter(&sh) else {
            eprintln!("/bin/sh names no loader: nothing to test");
            return;
        };
        assert!(Path::new(&loader).exists(), "{loader}");
        assert_eq!(check_runnable(Path::new("/bin/sh"), 0), Ok(()));
        // The same binary naming a loader one letter off.
        let at = sh
            .windows(loader.len())
            .position(|window| window == loader.as_bytes())
            .unwrap();
        let mut patched = sh.clone();
        patched[at + loader.len() - 1] = b'~';
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other-system");
        std::fs::write(&path, &patched).unwrap();
        let missing = format!("{}~", &loader[..loader.len() - 1]);
        assert_eq!(
            check_runnable(&path, 0),
            Err(format!(
                "needs the loader {missing}, which does not exist (built for another system?)"
            ))
        );
        // Cut short of its header.
        std::fs::write(&path, &sh[..40]).unwrap();
        assert!(
            check_runnable(&path, 0)
                .unwrap_err()
                .starts_with("is a damaged ELF file")
        );
    }

    #[test]
    fn programs_are_found_on_path_and_must_be_executable() {
        assert!(resolve_program(Path::new("sh")).is_ok());
        let missing = resolve_program(Path::new("no-such-program-xyz")).unwrap_err();
        assert!(missing.to_string().contains("no-such-program-xyz"));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let error = resolve_program(&plain).unwrap_err().to_string();
        assert!(error.contains("not executable"), "{error}");
    }
}

//! Facts about processes read from `/proc`, and waiting for conditions with a deadline.

use std::fs;
use std::time::{Duration, Instant};

/// How long any condition may take before the test fails. Generous: it only bounds failures, a
/// passing test never waits for it.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// How often a polled condition is checked again.
const POLL: Duration = Duration::from_millis(10);

/// The fields of `/proc/<pid>/stat` the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `R`, `S`, `Z`, …
    pub(crate) state: char,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    /// Clock ticks after boot; with the pid it identifies a process even if the pid is reused.
    pub(crate) start_time: u64,
}

/// The stat of `pid`, or `None` if there is no such process.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// A field of `/proc/PID/status` (`Threads:`, `VmHWM:` in kB) as a number.
#[track_caller]
pub(crate) fn proc_status(pid: i32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

/// Whether `pid` is a running process (a zombie is not: it has exited and holds no resources).
pub(crate) fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// The live children of `parent`, but for a master's guard process (`mcluster-guard`).
pub(crate) fn children_of(parent: i32) -> Vec<i32> {
    every_child_of(parent)
        .into_iter()
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c != "mcluster-guard\n")
        })
        .collect()
}

/// The live processes whose process group is `pgid`.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    live_pids()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
        .collect()
}

fn live_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Every live child of `parent`, the guard included.
pub(crate) fn every_child_of(parent: i32) -> Vec<i32> {
    live_pids()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent && s.state != 'Z'))
        .collect()
}

/// Polls `condition` until it holds; panics naming `what` (and `context()`) after [`DEADLINE`].
#[track_caller]
pub(crate) fn wait_until_or(
    what: &str,
    mut condition: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(POLL);
    }
}

/// Polls `condition` until it holds; panics naming `what` after [`DEADLINE`].
#[track_caller]
pub(crate) fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_or(what, condition, String::new);
}

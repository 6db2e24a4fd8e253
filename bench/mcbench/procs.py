"""Processes: started in their own session, tracked, always killed; and what this package reads
of them in /proc (exit, RSS, CPU time, context switches).

Importing this module installs the cleanup: every server still running is killed at exit and
on SIGTERM or SIGHUP to the script."""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import WAIT


ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")

LIVE: list["Server"] = []


def proc_stats():
    """(pid, fields of /proc/PID/stat after the command name) of every process: fields[0] is
    the state, [1] the ppid, [2] the pgrp, [3] the session."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield int(entry), stat[stat.rfind(")") + 2 :].split()


def start_on_free_port(spawn, wait_ready, attempts: int = 3) -> "Server":
    """Starts a server that binds a port chosen beforehand (`spawn(port)`), and waits until it
    serves (`wait_ready(server)` raises RuntimeError or TimeoutError if it does not): the port
    can be taken between the choice and the bind, so a failure is retried on a fresh port."""
    for attempt in range(attempts):
        server = spawn(free_port())
        try:
            wait_ready(server)
            return server
        except (RuntimeError, TimeoutError):
            server.kill()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def session_members(sid: int) -> list[int]:
    """Pids of every process whose session id is `sid` (a session we created)."""
    return [pid for pid, fields in proc_stats() if len(fields) > 3 and int(fields[3]) == sid]


def descendants(root: int) -> set[int]:
    """Pids of every living descendant of `root` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid, fields in proc_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def scoped(directory: Path) -> set[int]:
    """Pids of the processes whose working directory or executable lies under `directory` (a
    temp dir of this script's): catches what left our sessions (cargo-watch starts its command
    in a session of its own) and was orphaned."""
    prefix = str(directory) + "/"
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for link in ("cwd", "exe"):
            try:
                target = os.readlink(f"/proc/{entry}/{link}")
            except OSError:
                continue
            if (target + "/").startswith(prefix):
                out.add(int(entry))
                break
    return out


def exited(pid: int) -> bool:
    """True once `pid` has exited (gone, or a zombie not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat[stat.rfind(")") + 2 :].split()[0]
    return state in ("Z", "X")


def threads(pid: int) -> int:
    """How many threads the process has (`Threads:` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """A master process, its stderr (and stdout if merged) read line by line, with arrival
    times, on a thread."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        scope: Path | None = None,
        merge_stdout: bool = False,
        pass_fds: tuple[int, ...] = (),
        stdin_pipe: bool = False,
    ):
        self.name = name
        self.scope = scope  # also kill every process running in or from this directory
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.t_launch = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if merge_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self.stream = self.proc.stdout if merge_stdout else self.proc.stderr
        LIVE.append(self)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.stream is not None
        for raw in iter(self.stream.readline, b""):
            now = time.monotonic()
            text = ANSI.sub(b"", raw).decode(errors="replace").rstrip("\r\n")
            with self.cond:
                self.lines.append((now, text))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern: str, start: int = 0, timeout: float = WAIT):
        """The first line from index `start` on that matches `pattern`: (index, time, match)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self.cond:
            while True:
                while index < len(self.lines):
                    t, text = self.lines[index]
                    m = regex.search(text)
                    if m:
                        return index, t, m
                    index += 1
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no line matching {pattern!r}:\n{self.tail()}")
                self.cond.wait(min(left, 0.5))

    def tail(self, n: int = 12) -> str:
        with self.cond:
            return "\n".join("    " + text for _, text in self.lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master; SIGKILL everything left in its session after `timeout`."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        for _ in range(3):
            members = set(session_members(self.pid))
            if self.proc.returncode is None:  # not reaped yet: the pid is still ours
                members |= descendants(self.pid)
            if self.scope is not None:
                members |= scoped(self.scope)
            if self.proc.poll() is None:
                members.add(self.pid)
            if not members:
                break
            for pid in set(members):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdin:
            self.proc.stdin.close()
        if self.stream:
            self.reader.join(2)
            self.stream.close()
        if self in LIVE:
            LIVE.remove(self)


def kill_all() -> None:
    for server in list(LIVE):
        try:
            server.kill()
        except Exception as e:  # cleanup must go on
            print(f"bench: cleanup of {server.name} failed: {e}", file=sys.stderr)


atexit.register(kill_all)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))


def wait_exited(pids: set[int], since: float, timeout: float = WAIT) -> float:
    """Polls /proc every 2 ms until every pid has exited; returns the time it was seen."""
    deadline = since + timeout
    left = set(pids)
    while True:
        left = {pid for pid in left if not exited(pid)}
        now = time.monotonic()
        if not left:
            return now
        if now > deadline:
            raise TimeoutError(f"workers {sorted(left)} still running after {timeout}s")
        time.sleep(0.002)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads, living and exited), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process's main thread: a voluntary one
    is a sleep, in `poll`, `epoll_wait`, `accept` or `read`, so each wake-up is one, including
    those that find nothing and sleep again inside the kernel, unseen by the program."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key] = value.strip()
    return int(values["voluntary_ctxt_switches"]), int(values["nonvoluntary_ctxt_switches"])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of `pid` so far, in ns (`/proc/PID/task/*/schedstat`, whose first
    field is nanoseconds on a CPU); None once it is gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class CpuSampler:
    """Samples cpu_ns(pid) every `every` seconds, with the time of each sample."""

    def __init__(self, pid: int, every: float = 0.010) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            ns = cpu_ns(self.pid)
            if ns is None:
                return
            self.samples.append((time.monotonic(), ns))
            time.sleep(self.every)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(2)

    def between(self, t0: float, t1: float) -> tuple[float, float] | None:
        """(CPU seconds, wall seconds) from the last sample at or before t0 to the first at or
        after t1 (a window a sample period wider, at most, than asked)."""
        samples = list(self.samples)
        before = [s for s in samples if s[0] <= t0]
        after = [s for s in samples if s[0] >= t1]
        if not before or not after:
            return None
        (a_t, a_ns), (b_t, b_ns) = before[-1], after[0]
        if b_t <= a_t:
            return None
        return (b_ns - a_ns) / 1e9, b_t - a_t
